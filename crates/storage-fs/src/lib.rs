//! Prodigy's global store on disk (`~/.prodigy`, or `$PRODIGY_HOME`).
//!
//! [`FsStorage`] implements [`storage_core::Storage`] on a directory tree
//! whose every path and format is documented in `docs/storage-layout.md`.
//!
//! # Guarantees
//!
//! - **Atomic, durable documents**: temp file beside the target (0600,
//!   `O_EXCL`), `fsync`, `rename`, `fsync` of the directory, then `Ok`. A
//!   crash leaves the old or the new document ([`fsx`]).
//! - **Shared event logs**: concurrent appenders from many processes never
//!   lose or interleave lines; readers stream, report a torn last line, and
//!   reject a corrupt middle line with its number ([`events`]).
//! - **Locks that die with their holder**: kernel `flock` on dedicated lock
//!   files ([`lock`]).
//! - **One namespace per project**: two checkouts with the same directory
//!   name get distinct, stable repository keys ([`repo`]).
//! - **Versioned layout**: `layout.json` records the version; a newer one is
//!   refused ([`FsStorage::open`]).
//! - Directories 0700, files 0600, set at creation.
//!
//! # Example
//!
//! ```
//! use serde_json::json;
//! use storage_core::{JobId, EventRecord, Storage};
//! use storage_fs::FsStorage;
//!
//! let dir = tempfile::tempdir()?;
//! let store = FsStorage::open(dir.path().join("store"))?;
//! let repo = store.repo_key(dir.path())?;
//! let job = JobId::new("mapreduce-1757146800123")?;
//! let event = EventRecord::from_json(json!({"event": {"event_type": "job_started"}}))?;
//! store.append_events(&repo, &job, &[event])?;
//! let mut n = 0;
//! store.read_events(&repo, &job, &mut |_| n += 1)?;
//! assert_eq!(n, 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Limitations
//!
//! Linux, macOS and FreeBSD (checked in CI); other Unix systems take the
//! FreeBSD path and are not checked. Each keeps the same durability
//! promises in its own way, all inside [`fsx`] (see `docs/storage-layout.md`,
//! "Durability and concurrency"). `flock` and `rename` semantics on network
//! file systems are not relied upon to be correct. Windows is not supported.

pub mod events;
pub mod fsx;
mod inventory;
pub mod layout;
mod layout0;
pub mod lock;
pub mod repo;
mod root;
mod store;
pub mod time;

pub use inventory::{Listed, columns as list_columns};
pub use layout::{LAYOUT_VERSION, Layout};
pub use lock::FileLock;
pub use repo::RepoRecord;
pub use root::{RootChoice, RootSource, resolve_root};
pub use store::{FsStorage, SweepReport, has_layout_0_data, layout_version};

#[cfg(test)]
mod async_suite {
    storage_tokio::async_storage_tests!(|| {
        let dir = tempfile::tempdir().expect("a scratch directory");
        let store = crate::FsStorage::open(dir.path()).expect("a new store opens");
        storage_tokio::suite::TestStore::keeping(store, dir)
    });
}

#[cfg(test)]
mod adapter_suite {
    prodigy_adapter::adapter_tests!(|| {
        let dir = tempfile::tempdir().expect("a scratch directory");
        let store = crate::FsStorage::open(dir.path()).expect("a new store opens");
        prodigy_adapter::suite::TestStore::keeping(store, dir)
    });
}

#[cfg(test)]
mod conformance {
    storage_core::storage_conformance_tests!(|check: &dyn Fn(&dyn storage_core::Storage)| {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = crate::FsStorage::open(dir.path().join("store")).expect("open");
        check(&store);
    });
}
