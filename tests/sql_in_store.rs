//! Layering check: SQL lives only in src/store/ (issue 12), and each database driver only in
//! its backend's directory (rusqlite in src/store/sqlite/, tokio_postgres in
//! src/store/postgres/), so the schema's invariants have one owner per backend and the rest of
//! the store stays backend-neutral. Reads the sources; starts no daemon.

mod common;

use std::path::Path;

use common::source::{rust_files, split};

/// SQL words that only a statement uses, matched as whole upper-case words inside string
/// literals.
const SQL_WORDS: &[&str] = &["SELECT", "INSERT", "UPDATE", "DELETE", "PRAGMA", "CREATE", "ALTER", "DROP", "VACUUM"];

/// rusqlite's name and the methods of its `Connection` that run SQL, matched in code (not in
/// comments or strings).
const SQLITE_WORDS: &[&str] =
    &["rusqlite", "query_row", "query_map", "execute_batch", "last_insert_rowid", "pragma_update"];

/// The PostgreSQL driver's crates and the `Client` methods that only it has, matched in code.
const POSTGRES_WORDS: &[&str] =
    &["tokio_postgres", "deadpool_postgres", "postgres_types", "batch_execute", "query_one", "query_opt"];

/// Methods both drivers name (rusqlite's and deadpool-postgres's statement caches), matched
/// in code: at home in either backend's directory.
const DRIVER_WORDS: &[&str] = &["prepare_cached"];

/// What a finding is, and so where it may be: SQL anywhere in src/store/, a driver only in
/// its backend's directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Sql,
    Sqlite,
    Postgres,
    /// A method of either driver.
    Driver,
}

impl Kind {
    /// The directories under src/ (as path components) that may hold this kind.
    fn homes(self) -> &'static [&'static [&'static str]] {
        match self {
            Kind::Sql => &[&["store"]],
            Kind::Sqlite => &[&["store", "sqlite"]],
            Kind::Postgres => &[&["store", "postgres"]],
            Kind::Driver => &[&["store", "sqlite"], &["store", "postgres"]],
        }
    }
}

/// Whether `word` occurs in `text` with no identifier character on either side.
fn has_word(text: &str, word: &str) -> bool {
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    text.match_indices(word).any(|(at, _)| {
        !text[..at].chars().next_back().is_some_and(ident) && !text[at + word.len()..].chars().next().is_some_and(ident)
    })
}

/// Where SQL or a database driver shows in `source`, as (kind, `line: what`).
fn found(source: &str) -> Vec<(Kind, String)> {
    let split = split(source);
    let mut found = Vec::new();
    for (line, text) in &split.strings {
        for word in SQL_WORDS.iter().filter(|w| has_word(text, w)) {
            found.push((Kind::Sql, format!("{line}: SQL {word} in {:?}", text.chars().take(60).collect::<String>())));
        }
    }
    for (line, text) in &split.code {
        for (kind, words) in
            [(Kind::Sqlite, SQLITE_WORDS), (Kind::Postgres, POSTGRES_WORDS), (Kind::Driver, DRIVER_WORDS)]
        {
            for word in words.iter().filter(|w| has_word(text, w)) {
                found.push((kind, format!("{line}: {word}: {}", text.trim())));
            }
        }
    }
    found
}

/// Every finding in `source`, as `line: what` strings.
fn findings(source: &str) -> Vec<String> {
    found(source).into_iter().map(|(_, what)| what).collect()
}

/// The findings of the file at `relative` (to src/) that are outside their kind's home.
fn misplaced(relative: &Path, source: &str) -> Vec<String> {
    found(source)
        .into_iter()
        .filter(|(kind, _)| {
            !kind.homes().iter().any(|home| relative.starts_with(home.iter().collect::<std::path::PathBuf>()))
        })
        .map(|(kind, what)| {
            let homes: Vec<String> = kind.homes().iter().map(|home| format!("src/{}/", home.join("/"))).collect();
            format!("{what} (belongs under {})", homes.join(" or "))
        })
        .collect()
}

#[test]
fn sql_only_in_src_store_and_each_driver_only_in_its_backend() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let src = root.join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut offences = Vec::new();
    for file in &files {
        let source = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let relative = file.strip_prefix(&src).unwrap_or(file);
        let shown = file.strip_prefix(root).unwrap_or(file).display().to_string();
        offences.extend(misplaced(relative, &source).into_iter().map(|f| format!("{shown}:{f}")));
    }
    assert!(files.len() > 20, "src/ not found: {} files", files.len());
    assert!(offences.is_empty(), "SQL or a driver outside its place:\n{}", offences.join("\n"));
}

/// The places themselves: SQL is at home anywhere in the store, each driver only in its own
/// backend's directory, not in the other's nor in the store's backend-neutral files.
#[test]
fn each_kind_is_allowed_only_at_home() {
    let sql = "const Q: &str = \"SELECT 1\";";
    let sqlite = "use rusqlite::Connection;";
    let postgres = "use tokio_postgres::Client;";
    let at = |path: &str, source: &str| misplaced(Path::new(path), source).is_empty();
    assert!(at("store/mod.rs", sql) && at("store/sqlite/queries.rs", sql) && at("store/postgres/reads.rs", sql));
    assert!(!at("http/user.rs", sql) && !at("storefront.rs", sql));
    assert!(at("store/sqlite/mod.rs", sqlite) && at("store/sqlite/deep/x.rs", sqlite));
    assert!(!at("store/mod.rs", sqlite) && !at("store/postgres/mod.rs", sqlite) && !at("server.rs", sqlite));
    assert!(at("store/postgres/mod.rs", postgres));
    assert!(!at("store/facade.rs", postgres) && !at("store/sqlite/mod.rs", postgres) && !at("cli/mod.rs", postgres));
    let either = "let statement = client.prepare_cached(SQL).await?;";
    assert!(at("store/sqlite/writer.rs", either) && at("store/postgres/reads.rs", either));
    assert!(!at("store/facade.rs", either) && !at("store/mod.rs", either) && !at("http/user.rs", either));
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
        "use tokio_postgres::NoTls;",
        "let row = client.query_one(&stmt, &[&uid]).await?;",
        "let pool: deadpool_postgres::Pool = make();",
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
