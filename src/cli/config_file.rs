//! The TOML config file: `imd config init` / `check`, and the file's values under `start`.
//!
//! Keys are the ids of `Config`'s options (`max_frame_bytes`); each value is checked by the
//! same clap parser as the command line, so the file can never accept what a flag refuses.

use std::path::Path;

use clap::{Arg, ArgAction, Args, Command};

use crate::config::Config;

/// The options of `Config` as clap sees them (ids, help, defaults, parsers).
fn options() -> Command {
    Config::augment_args(Command::new("config").no_binary_name(true))
}

/// What a key's TOML value must be.
enum Kind {
    Flag,
    Integer,
    Choice(Vec<String>),
    List,
    Text,
}

fn kind(arg: &Arg) -> Kind {
    if !arg.get_action().takes_values() {
        return Kind::Flag;
    }
    let choices: Vec<String> = arg.get_possible_values().iter().map(|v| v.get_name().to_string()).collect();
    if !choices.is_empty() {
        return Kind::Choice(choices);
    }
    if matches!(arg.get_action(), ArgAction::Append) || arg.get_value_delimiter().is_some() {
        return Kind::List;
    }
    match arg.get_default_values().first().and_then(|d| d.to_str()) {
        Some(d) if d.parse::<u64>().is_ok() => Kind::Integer,
        _ => Kind::Text,
    }
}

fn expected(kind: &Kind) -> String {
    match kind {
        Kind::Flag => "true or false".into(),
        Kind::Integer => "a whole number".into(),
        Kind::Choice(choices) => {
            format!("one of {}", choices.iter().map(|c| format!("\"{c}\"")).collect::<Vec<_>>().join(", "))
        }
        Kind::List => "an array of strings".into(),
        Kind::Text => "a string".into(),
    }
}

/// A file's options as command-line arguments (`--max-frame-bytes=1024`), by id; or every
/// problem found, one line each (`line 3: ...`).
pub fn load(path: &Path) -> Result<Vec<(String, Vec<String>)>, Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| vec![format!("cannot read {}: {e}", path.display())])?;
    parse(&text)
}

/// See [`load`]; `text` is the file's content.
pub fn parse(text: &str) -> Result<Vec<(String, Vec<String>)>, Vec<String>> {
    let table: toml::Table = toml::from_str(text).map_err(|e| {
        let line = e.span().map(|span| line_of(text, span.start));
        let message = e.message().trim_end();
        vec![match line {
            Some(line) => format!("line {line}: {message}"),
            None => message.to_string(),
        }]
    })?;
    let command = options();
    // (line, problem): reported in the file's order, not the table's.
    let mut errors: Vec<(usize, String)> = Vec::new();
    let mut args = Vec::new();
    for (key, value) in &table {
        let number = key_line(text, key).unwrap_or(0);
        let line = if number > 0 { format!("line {number}: ") } else { String::new() };
        let Some(arg) = command.get_arguments().find(|a| a.get_id() == key.as_str() && a.get_long().is_some()) else {
            let hint = suggestion(&command, key).map(|s| format!(" (did you mean `{s}`?)")).unwrap_or_default();
            errors.push((number, format!("{line}unknown key `{key}`{hint}")));
            continue;
        };
        let kind = kind(arg);
        let long = arg.get_long().unwrap_or(key);
        let values = match (&kind, value) {
            (Kind::Flag, toml::Value::Boolean(true)) => vec![format!("--{long}")],
            (Kind::Flag, toml::Value::Boolean(false)) => vec![],
            (Kind::Integer, toml::Value::Integer(n)) => vec![format!("--{long}={n}")],
            (Kind::Choice(_) | Kind::Text, toml::Value::String(s)) => vec![format!("--{long}={s}")],
            (Kind::List, toml::Value::Array(items)) if items.iter().all(|i| i.is_str()) => {
                items.iter().filter_map(|i| i.as_str()).map(|s| format!("--{long}={s}")).collect()
            }
            (Kind::List, toml::Value::String(s)) => vec![format!("--{long}={s}")],
            _ => {
                errors
                    .push((number, format!("{line}`{key}`: expected {}, found {}", expected(&kind), value.type_str())));
                continue;
            }
        };
        // The command line's own parser checks the value (range, choices, conflicts).
        if let Err(e) = options().try_get_matches_from(&values) {
            let shown = if arg.is_hide_env_values_set() { "(secret)".to_string() } else { value.to_string() };
            let reason = clap_reason(&e);
            errors.push((number, format!("{line}`{key}` = {shown}: {reason}; expected {}", expected(&kind))));
            continue;
        }
        args.push((key.clone(), values));
    }
    if errors.is_empty() {
        let all: Vec<String> = args.iter().flat_map(|(_, v)| v.clone()).collect();
        if let Err(e) = options().try_get_matches_from(&all) {
            errors.push((0, clap_reason(&e)));
        }
    }
    errors.sort();
    if errors.is_empty() { Ok(args) } else { Err(errors.into_iter().map(|(_, e)| e).collect()) }
}

/// clap's message without its "error: " prefix and usage lines.
fn clap_reason(e: &clap::Error) -> String {
    let rendered = e.render().to_string();
    let first = rendered.lines().find(|l| !l.trim().is_empty()).unwrap_or("invalid value");
    first.trim_start_matches("error: ").trim().to_string()
}

/// 1-based line of byte offset `at`.
fn line_of(text: &str, at: usize) -> usize {
    text.as_bytes().iter().take(at).filter(|&&b| b == b'\n').count() + 1
}

/// Line where `key = ...` is written (top-level keys only, bare or quoted).
fn key_line(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|line| {
            let line = line.trim_start();
            let rest = line
                .strip_prefix(key)
                .or_else(|| line.strip_prefix(&format!("\"{key}\"")))
                .or_else(|| line.strip_prefix(&format!("'{key}'")));
            rest.is_some_and(|r| r.trim_start().starts_with('='))
        })
        .map(|i| i + 1)
}

/// The known key closest to a misspelt one, if it is close.
fn suggestion(command: &Command, key: &str) -> Option<String> {
    command
        .get_arguments()
        .filter(|a| a.get_long().is_some())
        .map(|a| a.get_id().to_string())
        .map(|id| (distance(&id, key), id))
        .filter(|(d, _)| *d <= 3)
        .min()
        .map(|(_, id)| id)
}

/// Levenshtein distance, for [`suggestion`].
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let old = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(row[j + 1] + 1);
            prev = old;
        }
    }
    row[b.len()]
}

/// A commented file with every option at its default; options without one and secrets are
/// commented out.
pub fn default_file() -> String {
    let mut out = String::from("# imd configuration (imd start PORT --config FILE).\n");
    out.push_str("# Command-line options and IMD_* variables override these values.\n");
    for arg in options().get_arguments() {
        if arg.is_hide_set() || arg.get_long().is_none() {
            continue;
        }
        let help = arg.get_long_help().or(arg.get_help()).map(|h| h.to_string()).unwrap_or_default();
        out.push('\n');
        for line in help.lines() {
            out.push_str(format!("# {line}").trim_end());
            out.push('\n');
        }
        let kind = kind(arg);
        let default = arg.get_default_values().first().and_then(|d| d.to_str()).map(|d| match kind {
            Kind::Integer => d.to_string(),
            _ => toml::Value::String(d.to_string()).to_string(),
        });
        let key = arg.get_id();
        match (default, &kind) {
            (Some(value), _) if !arg.is_hide_env_values_set() => out.push_str(&format!("{key} = {value}\n")),
            (_, Kind::List) => out.push_str(&format!("# {key} = []\n")),
            (_, Kind::Flag) => out.push_str(&format!("# {key} = false\n")),
            _ => out.push_str(&format!("# {key} = \"\"\n")),
        }
    }
    out
}

/// `imd config init`.
pub fn init() -> i32 {
    print!("{}", default_file());
    0
}

/// `imd config check FILE`.
pub fn check(path: &Path) -> i32 {
    match load(path) {
        Ok(_) => {
            println!("ok");
            0
        }
        Err(errors) => {
            for error in errors {
                eprintln!("{}: {error}", path.display());
            }
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_file_is_accepted_and_names_every_option() {
        let text = default_file();
        assert!(parse(&text).is_ok(), "{:?}", parse(&text));
        for id in ["max_frame_bytes", "db", "sync", "jwt_secret", "allowed_origins"] {
            assert!(text.contains(&format!("{id} = ")), "{id} missing:\n{text}");
        }
        assert!(text.contains("# jwt_secret = "), "secrets are commented out");
    }

    #[test]
    fn problems_name_line_and_key() {
        let errors = parse("db = \"x.db\"\n\nmax_fram_bytes = 10\n").unwrap_err();
        assert_eq!(errors, ["line 3: unknown key `max_fram_bytes` (did you mean `max_frame_bytes`?)"]);
        let errors = parse("token_ttl = \"long\"\n").unwrap_err();
        assert!(errors[0].starts_with("line 1: `token_ttl`") && errors[0].contains("whole number"), "{errors:?}");
        let errors = parse("\nsync = \"fast\"\n").unwrap_err();
        assert!(errors[0].starts_with("line 2: `sync`") && errors[0].contains("\"normal\""), "{errors:?}");
        let errors = parse("a = = 1\n").unwrap_err();
        assert!(errors[0].starts_with("line 1: "), "{errors:?}");
    }
}
