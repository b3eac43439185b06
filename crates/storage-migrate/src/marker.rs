//! One project, one migration, whatever the store.
//!
//! Before a migration publishes anything it writes a marker into the
//! project's `.prodigy/` ([`MARKER`]) naming its store; committing or undoing
//! the migration removes it. Another store (`sudo` with another home, a
//! changed `PRODIGY_HOME`) that finds the marker refuses to touch the
//! project and names the store that must finish or undo its migration
//! first: two stores never move the same legacy files.
//!
//! A store is recognised by the device and inode of its root, never by its
//! path: one store can be reached by two paths (a bind mount, a link).
//!
//! Writing the marker is also how the migration learns, by trying, whether
//! a rename between the store and the project works (it does not across
//! file systems, nor across two mounts of one file system).

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use storage_fs::{FsStorage, fsx};

use crate::error::{Error, Result};
use crate::manifest::RelPath;
use crate::plan::MARKER;

/// The marker's content.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Marker {
    /// The store's root, as that store's migration saw it.
    pub store: RelPath,
    /// Device and inode of the store's root: its identity.
    pub dev: u64,
    /// See `dev`.
    pub ino: u64,
    /// The repository key in that store.
    pub repo: String,
    /// The migration.
    pub txid: String,
}

fn identity(root: &Path) -> Result<(u64, u64)> {
    let meta = std::fs::metadata(root).map_err(|e| Error::io("stat", root, e))?;
    Ok((meta.dev(), meta.ino()))
}

/// The marker in `legacy`, if there is one.
pub(crate) fn read(legacy: &Path) -> Result<Option<Marker>> {
    let path = legacy.join(MARKER);
    let Some(bytes) = fsx::read_optional(&path)? else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| Error::Record {
            path,
            reason: e.to_string(),
            next: "it is written atomically, so it was changed by hand; check which store \
                   migrated this project (`prodigy-storage --home <store> status`), then remove it"
                .into(),
        })
}

/// Refuses to `action` the project when another store's migration of it is
/// unfinished.
pub(crate) fn check(store: &FsStorage, legacy: &Path, action: &'static str) -> Result<()> {
    let Some(m) = read(legacy)? else {
        return Ok(());
    };
    if std::fs::metadata(store.root()).is_ok() && identity(store.root())? == (m.dev, m.ino) {
        return Ok(());
    }
    let other = m.store.as_path();
    let project = legacy.parent().unwrap_or(legacy);
    let gone =
        std::fs::metadata(other).map_or(true, |meta| (meta.dev(), meta.ino()) != (m.dev, m.ino));
    let next = if gone {
        format!(
            "that store is no longer at `{}`: reach it again (mount it, set PRODIGY_HOME) and finish \
             or undo the migration there; if it is lost for good, the legacy files still in \
             `{}` and its backup are all there is: remove `{}` by hand to go on",
            other.display(),
            legacy.display(),
            legacy.join(MARKER).display()
        )
    } else {
        format!(
            "finish it with `prodigy-storage --home {} migrate {}` or undo it with \
             `prodigy-storage --home {} rollback {}`, then run this command again",
            crate::shell_quote(other),
            crate::shell_quote(project),
            crate::shell_quote(other),
            crate::shell_quote(project)
        )
    };
    Err(Error::Refused {
        action,
        path: project.to_owned(),
        reason: format!(
            "migration {} of this project into another store, `{}`, is unfinished; {next}",
            m.txid,
            other.display()
        ),
    })
}

/// Writes the marker for migration `txid` of `repo` (through `tx_dir`, in
/// the store). Returns whether it could be renamed from the store into the
/// project: `false` means legacy files must be copied into the backup.
pub(crate) fn write(
    store: &FsStorage,
    tx_dir: &Path,
    legacy: &Path,
    repo: &str,
    txid: &str,
    owner: Option<(u32, u32)>,
) -> Result<bool> {
    let (dev, ino) = identity(store.root())?;
    let marker = Marker {
        store: RelPath(store.root().to_owned()),
        dev,
        ino,
        repo: repo.to_owned(),
        txid: txid.to_owned(),
    };
    let mut bytes = serde_json::to_vec_pretty(&marker).expect("a marker serializes");
    bytes.push(b'\n');
    let dest = legacy.join(MARKER);
    let staged = tx_dir.join("marker.json");
    write_new(&staged, &bytes, owner)?;
    match fsx::rename_noreplace(&staged, &dest) {
        Ok(()) => {
            fsx::fsync_dir(legacy)?;
            Ok(true)
        }
        Err(storage_core::Error::Io { source, .. })
            if source.kind() == std::io::ErrorKind::CrossesDevices =>
        {
            fsx::remove_file_durable(&staged)?;
            // Written under this tool's own prefix, then renamed: a crash
            // leaves no temp file that could pass for the user's.
            let tmp = legacy.join(".prodigy-storage-marker.tmp");
            let _ = std::fs::remove_file(&tmp);
            write_new(&tmp, &bytes, owner)?;
            std::fs::rename(&tmp, &dest).map_err(|e| Error::io("rename into place", &dest, e))?;
            fsx::fsync_dir(legacy)?;
            Ok(false)
        }
        Err(storage_core::Error::Io { source, .. })
            if source.kind() == std::io::ErrorKind::AlreadyExists =>
        {
            // An earlier run of this same migration wrote it (`check` passed).
            fsx::remove_file_durable(&staged)?;
            let probe = tx_dir.join("rename-probe");
            write_new(&probe, b"", None)?;
            let back = legacy.join(".prodigy-storage-rename-probe");
            let same = fsx::rename_noreplace(&probe, &back).is_ok();
            let _ = fsx::remove_file_durable(if same { &back } else { &probe });
            Ok(same)
        }
        Err(e) => Err(e.into()),
    }
}

fn write_new(path: &Path, bytes: &[u8], owner: Option<(u32, u32)>) -> Result<()> {
    let _ = std::fs::remove_file(path);
    let mut f = fsx::create_new(path)?;
    f.write_all(bytes)
        .map_err(|e| Error::io("write", path, e))?;
    f.sync_all().map_err(|e| Error::io("fsync", path, e))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::fchown(&f, Some(uid), Some(gid))
            .map_err(|e| Error::io("change the owner of", path, e))?;
    }
    Ok(())
}

/// Removes the marker of this store's migration (committed or undone).
pub(crate) fn remove(store: &FsStorage, legacy: &Path) -> Result<()> {
    match read(legacy) {
        Ok(Some(m)) if identity(store.root())? != (m.dev, m.ino) => return Ok(()),
        Ok(None) => return Ok(()),
        Ok(Some(_)) | Err(_) => {}
    }
    let path: PathBuf = legacy.join(MARKER);
    fsx::remove_file_durable(&path)?;
    Ok(())
}
