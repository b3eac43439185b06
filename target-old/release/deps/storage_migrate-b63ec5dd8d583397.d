/work/main/target-old/release/deps/storage_migrate-b63ec5dd8d583397.d: crates/storage-migrate/src/lib.rs crates/storage-migrate/src/copy.rs crates/storage-migrate/src/error.rs crates/storage-migrate/src/fault.rs crates/storage-migrate/src/fuzzing.rs crates/storage-migrate/src/legacy.rs crates/storage-migrate/src/manifest.rs crates/storage-migrate/src/plan.rs crates/storage-migrate/src/progress.rs crates/storage-migrate/src/protocol.rs crates/storage-migrate/src/report.rs crates/storage-migrate/src/split.rs

/work/main/target-old/release/deps/storage_migrate-b63ec5dd8d583397: crates/storage-migrate/src/lib.rs crates/storage-migrate/src/copy.rs crates/storage-migrate/src/error.rs crates/storage-migrate/src/fault.rs crates/storage-migrate/src/fuzzing.rs crates/storage-migrate/src/legacy.rs crates/storage-migrate/src/manifest.rs crates/storage-migrate/src/plan.rs crates/storage-migrate/src/progress.rs crates/storage-migrate/src/protocol.rs crates/storage-migrate/src/report.rs crates/storage-migrate/src/split.rs

crates/storage-migrate/src/lib.rs:
crates/storage-migrate/src/copy.rs:
crates/storage-migrate/src/error.rs:
crates/storage-migrate/src/fault.rs:
crates/storage-migrate/src/fuzzing.rs:
crates/storage-migrate/src/legacy.rs:
crates/storage-migrate/src/manifest.rs:
crates/storage-migrate/src/plan.rs:
crates/storage-migrate/src/progress.rs:
crates/storage-migrate/src/protocol.rs:
crates/storage-migrate/src/report.rs:
crates/storage-migrate/src/split.rs:
