/work/main/target-old/release/deps/storage_fs-b30472e0cebec592.d: crates/storage-fs/src/lib.rs crates/storage-fs/src/events.rs crates/storage-fs/src/fsx.rs crates/storage-fs/src/layout.rs crates/storage-fs/src/lock.rs crates/storage-fs/src/repo.rs crates/storage-fs/src/root.rs crates/storage-fs/src/store.rs crates/storage-fs/src/time.rs

/work/main/target-old/release/deps/libstorage_fs-b30472e0cebec592.rlib: crates/storage-fs/src/lib.rs crates/storage-fs/src/events.rs crates/storage-fs/src/fsx.rs crates/storage-fs/src/layout.rs crates/storage-fs/src/lock.rs crates/storage-fs/src/repo.rs crates/storage-fs/src/root.rs crates/storage-fs/src/store.rs crates/storage-fs/src/time.rs

/work/main/target-old/release/deps/libstorage_fs-b30472e0cebec592.rmeta: crates/storage-fs/src/lib.rs crates/storage-fs/src/events.rs crates/storage-fs/src/fsx.rs crates/storage-fs/src/layout.rs crates/storage-fs/src/lock.rs crates/storage-fs/src/repo.rs crates/storage-fs/src/root.rs crates/storage-fs/src/store.rs crates/storage-fs/src/time.rs

crates/storage-fs/src/lib.rs:
crates/storage-fs/src/events.rs:
crates/storage-fs/src/fsx.rs:
crates/storage-fs/src/layout.rs:
crates/storage-fs/src/lock.rs:
crates/storage-fs/src/repo.rs:
crates/storage-fs/src/root.rs:
crates/storage-fs/src/store.rs:
crates/storage-fs/src/time.rs:
