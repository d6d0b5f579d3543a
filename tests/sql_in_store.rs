//! Layering check: SQL and rusqlite live only in src/store/ (issue 12), so the schema's
//! invariants have one owner and a second backend replaces one directory. Reads the sources;
//! starts no daemon.

use std::path::{Path, PathBuf};

/// SQL words that only a statement uses, matched as whole upper-case words inside string
/// literals.
const SQL_WORDS: &[&str] = &["SELECT", "INSERT", "UPDATE", "DELETE", "PRAGMA", "CREATE", "ALTER", "DROP", "VACUUM"];

/// rusqlite's name and the methods of its `Connection` that run SQL, matched in code (not in
/// comments or strings).
const DRIVER_WORDS: &[&str] =
    &["rusqlite", "query_row", "query_map", "prepare_cached", "execute_batch", "last_insert_rowid", "pragma_update"];

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
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
struct Split {
    strings: Vec<(usize, String)>,
    code: Vec<(usize, String)>,
}

/// Splits Rust source by a small scanner: `//` and `/* */` comments, `"…"` with escapes,
/// `r"…"`/`r#"…"#` raw strings, and char literals (so `'"'` opens no string).
fn split(source: &str) -> Split {
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

/// Whether `word` occurs in `text` with no identifier character on either side.
fn has_word(text: &str, word: &str) -> bool {
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    text.match_indices(word).any(|(at, _)| {
        !text[..at].chars().next_back().is_some_and(ident) && !text[at + word.len()..].chars().next().is_some_and(ident)
    })
}

/// Where SQL or the SQLite driver shows in `source`, as `line: what` strings.
fn findings(source: &str) -> Vec<String> {
    let split = split(source);
    let mut found = Vec::new();
    for (line, text) in &split.strings {
        for word in SQL_WORDS.iter().filter(|w| has_word(text, w)) {
            found.push(format!("{line}: SQL {word} in {:?}", text.chars().take(60).collect::<String>()));
        }
    }
    for (line, text) in &split.code {
        for word in DRIVER_WORDS.iter().filter(|w| has_word(text, w)) {
            found.push(format!("{line}: {word}: {}", text.trim()));
        }
    }
    found
}

#[test]
fn no_sql_or_rusqlite_outside_src_store() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let store = root.join("src").join("store");
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    files.sort();
    let mut offences = Vec::new();
    for file in files.iter().filter(|f| !f.starts_with(&store)) {
        let source = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let shown = file.strip_prefix(root).unwrap_or(file).display().to_string();
        offences.extend(findings(&source).into_iter().map(|f| format!("{shown}:{f}")));
    }
    assert!(files.len() > 20, "src/ not found: {} files", files.len());
    assert!(offences.is_empty(), "SQL belongs in src/store/:\n{}", offences.join("\n"));
}

/// The scanner itself: it must see SQL and the driver where they are, and not in comments,
/// char literals or prose.
#[test]
fn the_scanner_finds_sql_and_the_driver_and_nothing_else() {
    let caught = [
        "fn f(c: &C) { c.execute(\"DELETE FROM t WHERE x = ?1\", [1]); }",
        "const Q: &str = r#\"SELECT \"x\" FROM t\"#;",
        "let q = \"INSERT INTO t\n VALUES (1)\";",
        "use rusqlite::params;",
        "let n = conn.query_row(q, [], |r| r.get(0));",
        "let c = '\"'; let q = \"UPDATE t SET x = 1\";",
    ];
    for source in caught {
        assert!(!findings(source).is_empty(), "missed: {source}");
    }
    let clean = [
        "// SELECT x FROM t via rusqlite",
        "/* INSERT INTO t */ fn f() {}",
        "let s = \"Select a room to join\"; let t = \"updated\";",
        "let c = 'x'; fn g<'a>(s: &'a str) -> &'a str { s }",
        "let s = \"a store transaction, rusqlite-free\";",
        "daemon.execute();",
    ];
    for source in clean {
        assert_eq!(findings(source), Vec::<String>::new(), "false alarm: {source}");
    }
    assert_eq!(findings("let a = 1;\nlet q = \"SELECT 1\";")[0].split(':').next(), Some("2"), "line numbers");
}
