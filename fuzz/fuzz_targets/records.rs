//! The migration's own records (manifest, journal, history) read from any
//! bytes: an error, never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    storage_migrate::fuzzing::parse_records(data);
});
