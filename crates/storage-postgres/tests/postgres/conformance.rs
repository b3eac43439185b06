//! The conformance suite every `Storage` passes, on a fresh schema per check.

storage_core::storage_conformance_tests!(|check: &dyn Fn(&dyn storage_core::Storage)| {
    if let Some(db) = crate::support::TestDb::new() {
        check(&db.store);
    }
});
