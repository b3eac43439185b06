//! The async adapter's and the adoption example's generic suites (the
//! same ones `storage-fs` runs), each check on a fresh schema. They call
//! the store from tokio tasks as well as through the adapter's blocking
//! pool, and drop its guards and the store itself there.

mod async_adapter {
    storage_tokio::async_storage_tests!(crate::support::TestDb::for_suite);
}

mod adoption_example {
    prodigy_adapter::adapter_tests!(crate::support::TestDb::for_suite);
}
