//! The global event log split: no panic, and every input byte is routed
//! exactly once (the bytes of all routes add up to the input).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let (bytes, lines) = storage_migrate::fuzzing::split_log(data);
    assert_eq!(bytes, data.len() as u64, "bytes lost or duplicated by the split");
    let newlines = data.iter().filter(|&&b| b == b'\n').count() as u64;
    let torn = u64::from(!data.is_empty() && !data.ends_with(b"\n"));
    assert_eq!(lines, newlines + torn);
    for line in data.split(|&b| b == b'\n') {
        let _ = storage_migrate::fuzzing::route(line);
    }
});
