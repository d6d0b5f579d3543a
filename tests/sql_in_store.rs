//! Layering check: SQL and rusqlite live only in src/store/ (issue 12), so the schema's
//! invariants have one owner and a second backend replaces one directory. Reads the sources;
//! starts no daemon.

mod common;

use std::path::Path;

use common::source::{rust_files, split};

/// SQL words that only a statement uses, matched as whole upper-case words inside string
/// literals.
const SQL_WORDS: &[&str] = &["SELECT", "INSERT", "UPDATE", "DELETE", "PRAGMA", "CREATE", "ALTER", "DROP", "VACUUM"];

/// rusqlite's name and the methods of its `Connection` that run SQL, matched in code (not in
/// comments or strings).
const DRIVER_WORDS: &[&str] =
    &["rusqlite", "query_row", "query_map", "prepare_cached", "execute_batch", "last_insert_rowid", "pragma_update"];

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
