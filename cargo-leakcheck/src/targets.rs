//! Which test targets speak libtest's protocol (`--list`, `--exact`, a
//! `test result:` line), decided without running them.
//!
//! A target with `harness = false` in its manifest brings its own `main`.
//! Some such mains are libtest anyway (libtest-mimic, which this project's
//! own harness is built on), the others are not: calloop's
//! `tests/signals.rs`, a custom `fn main` that runs its checks and exits.
//! Listing those would run their tests (unchecked, and twice), so they are
//! never listed: each runs whole, as one test named by its target.

use std::path::Path;

use cargo_metadata::TargetKind;

/// Whether the target `name` of kind `kinds`, from the package whose
/// manifest is `manifest`, built into `executable`, speaks libtest.
pub(crate) fn speaks_libtest(manifest: &Path, kinds: &[TargetKind], name: &str, executable: &Path) -> bool {
    if !harness_disabled(manifest, kinds, name) {
        return true;
    }
    // libtest-mimic leaves its name in every binary it is linked into (its
    // panic locations and symbols).
    std::fs::read(executable).is_ok_and(|bytes| {
        memchr::memmem::find(&bytes, b"libtest-mimic").is_some()
            || memchr::memmem::find(&bytes, b"libtest_mimic").is_some()
    })
}

/// Whether the manifest sets `harness = false` on this target. An
/// unreadable manifest counts as libtest (cargo just built from it).
pub(crate) fn harness_disabled(manifest: &Path, kinds: &[TargetKind], name: &str) -> bool {
    let Ok(text) = crate::input::read_text(manifest) else { return false };
    let Ok(manifest) = text.parse::<toml::Table>() else { return false };
    let harness_of = |table: &toml::Table| table.get("harness").and_then(toml::Value::as_bool);
    let section = match kinds.first() {
        Some(TargetKind::Test) => "test",
        Some(TargetKind::Bench) => "bench",
        Some(TargetKind::Bin) => "bin",
        Some(TargetKind::Example) => "example",
        _ => {
            let lib = manifest.get("lib").and_then(toml::Value::as_table);
            return lib.and_then(harness_of) == Some(false);
        }
    };
    let targets = manifest.get(section).and_then(toml::Value::as_array).map(Vec::as_slice).unwrap_or_default();
    targets
        .iter()
        .filter_map(toml::Value::as_table)
        .filter(|target| {
            target.get("name").and_then(toml::Value::as_str).map(|n| n.replace('-', "_"))
                == Some(name.replace('-', "_"))
        })
        .any(|target| harness_of(target) == Some(false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn harness_false_is_read_per_target() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = dir.path().join("Cargo.toml");
        std::fs::write(
            &manifest,
            "[package]\nname = \"p\"\n[[test]]\nname = \"custom\"\nharness = false\n[[test]]\nname = \"plain\"\n",
        )
        .unwrap();
        assert!(harness_disabled(&manifest, &[TargetKind::Test], "custom"));
        assert!(!harness_disabled(&manifest, &[TargetKind::Test], "plain"));
        assert!(!harness_disabled(&manifest, &[TargetKind::Lib], "p"));
        // Not built with libtest-mimic (this file is no such binary): whole.
        assert!(!speaks_libtest(&manifest, &[TargetKind::Test], "custom", &manifest));
        assert!(speaks_libtest(&manifest, &[TargetKind::Test], "plain", &manifest));
    }
}
