//! Legacy documents: the session-id probe, `metadata.json` rewriting and
//! path classification. A session id found is a valid identifier.
//! A rewritten metadata file is still one JSON object; an untouched one is
//! returned byte for byte.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let (out, rewritten) = storage_migrate::fuzzing::rewrite_metadata(data);
    if rewritten {
        let v: serde_json::Value = serde_json::from_slice(&out).expect("rewritten metadata is JSON");
        assert!(v.get("path").is_some_and(serde_json::Value::is_string));
    } else {
        assert_eq!(out, data, "a file that is not rewritten is copied verbatim");
    }
    let _ = storage_migrate::fuzzing::classify(data);
    if let Some(id) = storage_migrate::fuzzing::session_id(data) {
        assert!(!id.is_empty() && !id.contains('/') && !id.starts_with('.'), "{id:?}");
    }
});
