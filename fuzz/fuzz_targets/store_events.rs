//! The store's event-log reader on any file content: records, a torn tail
//! or a corrupt-line error, never a panic, memory bounded by the longest line.
#![no_main]

use std::sync::OnceLock;

static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let dir = DIR.get_or_init(|| tempfile::tempdir().expect("tempdir"));
    let log = dir.path().join("events.jsonl");
    std::fs::write(&log, data).expect("write");
    let mut n = 0u64;
    match storage_fs::events::read_dir_for_fuzzing(dir.path(), &mut |_| n += 1) {
        Ok(summary) => assert_eq!(summary.records, n),
        Err(e) => assert!(e.to_string().contains("is corrupt"), "{e}"),
    }
});
