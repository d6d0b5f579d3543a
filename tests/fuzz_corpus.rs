//! Replays every fuzz corpus and regression input (`fuzz/corpus/<target>/`,
//! `fuzz/regressions/<target>/`) through the same functions the fuzz targets call, on the stable
//! toolchain: an input that once crashed a target must never crash it again.

use std::path::{Path, PathBuf};

/// The files of `fuzz/<kind>/<target>/`, sorted; none when the folder does not exist.
fn inputs(kind: &str, target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz").join(kind).join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else { return Vec::new() };
    let mut files: Vec<PathBuf> = entries.flatten().map(|e| e.path()).filter(|p| p.is_file()).collect();
    files.sort();
    files
}

/// Runs `target` on each input, naming the file of any input that panics.
fn replay(target: &str, run: fn(&[u8])) {
    let corpus = inputs("corpus", target);
    assert!(corpus.len() >= 10, "fuzz/corpus/{target} holds {} files: the corpus is missing", corpus.len());
    let mut failed = Vec::new();
    for path in corpus.iter().chain(inputs("regressions", target).iter()) {
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if std::panic::catch_unwind(|| run(&data)).is_err() {
            failed.push(path.display().to_string());
        }
    }
    assert!(failed.is_empty(), "{target} panicked on: {failed:#?}");
}

#[test]
fn client_frame_corpus_and_regressions() {
    replay("client_frame", imd::fuzzing::client_frame);
}

#[test]
fn http_params_corpus_and_regressions() {
    replay("http_params", imd::fuzzing::http_params);
}
