//! Layering check (issue 12): every module of src/ imports only its own layer or those below,
//! and a few pairs that share a layer stay apart. Reads the sources; starts no daemon.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use common::source::{rust_files, split};

/// The layers, top first: a module may import its own layer and the layers below. Each
/// top-level module of src/ (a file or a directory) is in exactly one.
const LAYERS: &[(&str, &[&str])] = &[
    // Builds and runs everything: the binary, the server's start and stop, `imd` commands.
    ("entry", &["main", "lib", "server", "cli", "fuzzing"]),
    ("transport", &["http", "ws"]),
    // What the router hands a session after the upgrade, so http and ws need not meet.
    ("handoff", &["handoff"]),
    // `app` is the context the transports and services share (the next step narrows
    // what each action takes from it).
    // `node`: cluster mode's wiring of the bus to the store, the directory and the delivery.
    ("services", &["app", "actions", "service", "rooms", "revocations", "auth", "access", "node", "read_through"]),
    // `cluster`: the NATS bus between nodes (issue 13), beside the delivery it feeds.
    ("store and delivery", &["store", "fanout", "registry", "delivery", "directory", "unread", "cluster"]),
    // `rules`: pure functions (a valid message, which agent, who may read).
    ("domain", &["domain", "chat_id", "frames", "usernames", "passwords", "rules"]),
    // `now_ms` is a function of lib.rs.
    (
        "base",
        &["config", "metrics", "conn_limits", "throttle", "bcrypt_pool", "supervisor", "progress", "notify", "now_ms"],
    ),
];

/// Pairs that must not import one another although the layers would allow it: (importer,
/// imported, why).
const APART: &[(&str, &str, &str)] = &[
    ("http", "ws", "the router hands the upgraded connection over through `handoff`"),
    ("ws", "http", "the session builds no HTTP replies"),
    ("cli", "http", "`imd user` takes the account rules from the domain, not the router"),
    ("cli", "ws", "the command line has nothing to do with sessions"),
    ("delivery", "registry", "a connection's state lies below the registry that holds it"),
    ("store", "fanout", "the store emits committed messages; delivery resolves them"),
    ("store", "registry", "the store knows nothing of connections"),
    ("store", "delivery", "the store knows nothing of connections"),
];

/// Imports still wrong, each owned by a change under way: (file, imported module, owner);
/// none since the store emits tickets and the domain types moved to `domain/`.
/// The test fails when one is gone too, so that the list is kept short and true.
const KNOWN: &[(&str, &str, &str)] = &[];

/// The layer of a top-level module (its index in `LAYERS`), if the table has it.
fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|(_, modules)| modules.contains(&module))
}

/// The top-level module a file of src/ belongs to: `src/http/user.rs` -> `http`.
fn module_of(relative: &Path) -> String {
    let first = relative.components().nth(1).map(|c| c.as_os_str().to_string_lossy().into_owned()).unwrap_or_default();
    first.strip_suffix(".rs").unwrap_or(&first).to_string()
}

/// The top-level modules `source` names through `crate::`, with the line of each, comments
/// and strings left out. Handles `crate::a::b`, `crate::{a, b::c}` and paths in code.
fn imports(source: &str) -> Vec<(usize, String)> {
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    let mut found = Vec::new();
    for (line, code) in split(source).code {
        for (at, _) in code.match_indices("crate::") {
            // Not the tail of a longer name (`$crate::`, `my_crate::`).
            if code[..at].chars().next_back().is_some_and(|c| ident(c) || c == '$') {
                continue;
            }
            let rest = &code[at + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                // Top-level names of a group: those after `{` or a `,` at depth zero.
                let (mut depth, mut start) = (0, true);
                for (i, c) in group.char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 0 => break,
                        '}' => depth -= 1,
                        ',' if depth == 0 => start = true,
                        c if start && ident(c) => {
                            let name: String = group[i..].chars().take_while(|&c| ident(c)).collect();
                            found.push((line, name));
                            start = false;
                        }
                        _ => {}
                    }
                }
            } else {
                let name: String = rest.chars().take_while(|&c| ident(c)).collect();
                if !name.is_empty() {
                    found.push((line, name));
                }
            }
        }
    }
    found
}

/// Every import of src/ that breaks the rules, as `file:line: why` strings, and the known
/// exceptions seen.
fn offences(root: &Path) -> (Vec<String>, BTreeSet<(String, String)>) {
    let mut files: Vec<PathBuf> = Vec::new();
    rust_files(&root.join("src"), &mut files);
    files.sort();
    assert!(files.len() > 20, "src/ not found under {}: {} files", root.display(), files.len());
    let (mut wrong, mut known_seen) = (Vec::new(), BTreeSet::new());
    for file in &files {
        let relative = file.strip_prefix(root).unwrap_or(file);
        let shown = relative.display().to_string();
        let from = module_of(relative);
        let Some(from_layer) = layer_of(&from) else {
            wrong.push(format!("{shown}: module `{from}` is in no layer of LAYERS"));
            continue;
        };
        let source = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        for (line, to) in imports(&source) {
            if to == from {
                continue;
            }
            let why = match layer_of(&to) {
                None => format!("`{to}` is in no layer of LAYERS"),
                Some(to_layer) if to_layer < from_layer => {
                    format!("{} ({from}) imports {} ({to}), a layer above", LAYERS[from_layer].0, LAYERS[to_layer].0)
                }
                Some(_) => match APART.iter().find(|(a, b, _)| *a == from && *b == to) {
                    Some((_, _, why)) => format!("{from} must not import {to}: {why}"),
                    None => continue,
                },
            };
            if KNOWN.iter().any(|(f, m, _)| *f == shown && *m == to) {
                known_seen.insert((shown.clone(), to));
            } else {
                wrong.push(format!("{shown}:{line}: {why}"));
            }
        }
    }
    (wrong, known_seen)
}

#[test]
fn no_module_imports_a_layer_above_it() {
    // At run time, so that the check can be pointed at another tree (an older commit's src/).
    let root =
        std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    let (wrong, known_seen) = offences(&root);
    assert!(wrong.is_empty(), "imports against the layers (tests/layers.rs):\n{}", wrong.join("\n"));
    let stale: Vec<String> = KNOWN
        .iter()
        .filter(|(f, m, _)| !known_seen.contains(&(f.to_string(), m.to_string())))
        .map(|(f, m, owner)| format!("{f} -> {m} ({owner})"))
        .collect();
    assert!(stale.is_empty(), "fixed: take these out of KNOWN in tests/layers.rs:\n{}", stale.join("\n"));
}

/// The store's backends (`store/sqlite/`, `store/postgres/`) are internal to it: outside
/// src/store/ code names no backend path (`sqlite::…`, `postgres::…`), except the CLI's
/// offline commands, which open the SQLite file themselves (`imd backup`, `imd user`).
const BACKENDS: &[(&str, &[&str])] = &[("sqlite", &["cli"]), ("postgres", &[])];

/// The backend paths (`sqlite::` and such) named in the code of `source`, with their lines.
fn backend_paths(source: &str) -> Vec<(usize, &'static str)> {
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    let mut found = Vec::new();
    for (line, code) in split(source).code {
        for (backend, _) in BACKENDS {
            let path = format!("{backend}::");
            if code.match_indices(&path).any(|(at, _)| !code[..at].chars().next_back().is_some_and(ident)) {
                found.push((line, *backend));
            }
        }
    }
    found
}

#[test]
fn store_backends_are_internal_to_the_store() {
    let root =
        std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    let mut files: Vec<PathBuf> = Vec::new();
    rust_files(&root.join("src"), &mut files);
    files.sort();
    let mut wrong = Vec::new();
    for file in &files {
        let relative = file.strip_prefix(&root).unwrap_or(file);
        let from = module_of(relative);
        if from == "store" {
            continue;
        }
        let source = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        for (line, backend) in backend_paths(&source) {
            let allowed = BACKENDS.iter().any(|(b, who)| *b == backend && who.contains(&from.as_str()));
            if !allowed {
                wrong.push(format!("{}:{line}: names the store's {backend} backend", relative.display()));
            }
        }
    }
    assert!(files.len() > 20, "src/ not found under {}: {} files", root.display(), files.len());
    assert!(wrong.is_empty(), "go through `store::Store` instead (tests/layers.rs):\n{}", wrong.join("\n"));
    let scanned = |s: &str| backend_paths(s).into_iter().map(|(_, b)| b).collect::<Vec<_>>();
    assert_eq!(scanned("use crate::store::sqlite::offline;"), ["sqlite"]);
    assert_eq!(scanned("use crate::store::{postgres::PgStore, Store};"), ["postgres"]);
    assert_eq!(scanned("use rusqlite::params; // store::sqlite::x"), Vec::<&str>::new());
}

/// The table itself: each module in one layer, and the pairs apart name modules of the table.
#[test]
fn the_rule_table_is_consistent() {
    let mut seen = BTreeSet::new();
    for (_, modules) in LAYERS {
        for module in *modules {
            assert!(seen.insert(*module), "{module} is in two layers");
        }
    }
    for (a, b, _) in APART {
        assert!(layer_of(a).is_some() && layer_of(b).is_some(), "{a} -> {b}: not in LAYERS");
    }
}

/// The scanner: it must see `crate::` paths in code in each form, and none in comments or
/// strings.
#[test]
fn the_scanner_finds_imports_in_code_only() {
    let names = |source: &str| imports(source).into_iter().map(|(_, name)| name).collect::<Vec<_>>();
    assert_eq!(names("use crate::ws::outbox::Outbox;"), ["ws"]);
    assert_eq!(names("use crate::{app::App, store::{Kind, X}, now_ms};"), ["app", "store", "now_ms"]);
    assert_eq!(names("let t = crate::auth::now_secs();"), ["auth"]);
    assert_eq!(names("// see crate::http\n/// [`crate::ws`]\nlet s = \"crate::store\";"), Vec::<String>::new());
    assert_eq!(names("macro_rules! m { () => { $crate::x } }"), Vec::<String>::new());
    assert_eq!(imports("fn f() {}\nuse crate::http;")[0].0, 2, "line numbers");
    assert_eq!(module_of(Path::new("src/http/user.rs")), "http");
    assert_eq!(module_of(Path::new("src/chat_id.rs")), "chat_id");
}
