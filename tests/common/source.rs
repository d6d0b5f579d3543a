//! Reading the crate's own sources for the layering tests (sql_in_store, layers): the `.rs`
//! files under a directory, and each split into code and string literals, comments dropped.

use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`.
pub fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// A source file split into its string literals and its code (comments dropped), each with
/// the line it starts on.
#[derive(Default)]
pub struct Split {
    pub strings: Vec<(usize, String)>,
    pub code: Vec<(usize, String)>,
}

/// Splits Rust source by a small scanner: `//` and `/* */` comments, `"…"` with escapes,
/// `r"…"`/`r#"…"#` raw strings, and char literals (so `'"'` opens no string).
pub fn split(source: &str) -> Split {
    let chars: Vec<char> = source.chars().collect();
    let mut out = Split::default();
    let (mut i, mut line) = (0, 1);
    let mut code = String::new();
    let at = |i: usize, s: &str| s.chars().enumerate().all(|(k, c)| chars.get(i + k) == Some(&c));
    while i < chars.len() {
        let c = chars[i];
        if at(i, "//") {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if at(i, "/*") {
            let mut depth = 0;
            while i < chars.len() {
                if at(i, "/*") {
                    depth += 1;
                    i += 2;
                } else if at(i, "*/") {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    line += usize::from(chars[i] == '\n');
                    i += 1;
                }
            }
        } else if c == 'r' && (at(i + 1, "\"") || at(i + 1, "#\"") || at(i + 1, "##\"")) {
            let hashes = chars[i + 1..].iter().take_while(|&&h| h == '#').count();
            let close: String = std::iter::once('"').chain(std::iter::repeat_n('#', hashes)).collect();
            let (start, mut text) = (line, String::new());
            i += 2 + hashes;
            while i < chars.len() && !at(i, &close) {
                line += usize::from(chars[i] == '\n');
                text.push(chars[i]);
                i += 1;
            }
            i += close.len();
            out.strings.push((start, text));
        } else if c == '"' {
            let (start, mut text) = (line, String::new());
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    text.push(chars[i]);
                    i += 1;
                }
                if let Some(&next) = chars.get(i) {
                    line += usize::from(next == '\n');
                    text.push(next);
                }
                i += 1;
            }
            i += 1;
            out.strings.push((start, text));
        } else if c == '\''
            && (at(i + 2, "'") || (at(i + 1, "\\") && chars[i + 2..].iter().take(10).any(|&q| q == '\'')))
        {
            // A char literal ('x', '\n', '\u{..}'); a lifetime ('a) has no closing quote.
            i += 1;
            while i < chars.len() && chars[i] != '\'' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else {
            if c == '\n' {
                out.code.push((line, std::mem::take(&mut code)));
                line += 1;
            } else {
                code.push(c);
            }
            i += 1;
        }
    }
    out.code.push((line, code));
    out
}
