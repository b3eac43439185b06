/work/main/target-old/release/deps/storage_core-30179c9790f9b738.d: crates/storage-core/src/lib.rs crates/storage-core/src/error.rs crates/storage-core/src/id.rs crates/storage-core/src/memory.rs crates/storage-core/src/record.rs crates/storage-core/src/storage.rs

/work/main/target-old/release/deps/libstorage_core-30179c9790f9b738.rlib: crates/storage-core/src/lib.rs crates/storage-core/src/error.rs crates/storage-core/src/id.rs crates/storage-core/src/memory.rs crates/storage-core/src/record.rs crates/storage-core/src/storage.rs

/work/main/target-old/release/deps/libstorage_core-30179c9790f9b738.rmeta: crates/storage-core/src/lib.rs crates/storage-core/src/error.rs crates/storage-core/src/id.rs crates/storage-core/src/memory.rs crates/storage-core/src/record.rs crates/storage-core/src/storage.rs

crates/storage-core/src/lib.rs:
crates/storage-core/src/error.rs:
crates/storage-core/src/id.rs:
crates/storage-core/src/memory.rs:
crates/storage-core/src/record.rs:
crates/storage-core/src/storage.rs:
