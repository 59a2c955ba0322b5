//! The fuzz corpus replayed: every file of `fuzz/seeds/` and `fuzz/corpus/`, through the
//! extractor of every format, with the fuzz targets' own checks (`fuzz/src/lib.rs`), so that
//! what the fuzzer found keeps guarding the parser against regressions. Needs no cluster:
//! hack/test.sh runs it with the unit tests. `FUZZ_STRICT_REASONS=1` also holds every error's
//! reason to the strict limit, as `hack/fuzz.sh --strict-reasons` does (docs/fuzzing.md).

#[path = "../fuzz/src/lib.rs"]
mod fuzz_check;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use fuzz_check::{FORMATS, check, format_dir, strict_reasons_from_env};

/// Every file of the seeds and the corpus, sorted.
fn corpus_files() -> Vec<PathBuf> {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut files = Vec::new();
    for top in ["seeds", "corpus"] {
        for format in FORMATS {
            let dir = fuzz.join(top).join(format_dir(format));
            let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
            files.extend(entries.map(|e| e.expect("a directory entry").path()));
        }
    }
    files.sort();
    files
}

#[test]
fn corpus_replays_through_every_format() {
    let files = corpus_files();
    // A corpus that went missing must not pass as an empty one.
    assert!(files.len() >= 40, "only {} corpus files", files.len());
    let strict = strict_reasons_from_env();
    let mut failures = Vec::new();
    for file in &files {
        let body = std::fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        for format in FORMATS {
            if catch_unwind(AssertUnwindSafe(|| check(format, &body, strict))).is_err() {
                failures.push(format!("{} with format {}", file.display(), format.as_str()));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} corpus files x {} formats failed (their panics are above):\n{}",
        failures.len(),
        files.len(),
        FORMATS.len(),
        failures.join("\n")
    );
}
