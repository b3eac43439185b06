//! The file-system steps the phases share: moving by trying (rename,
//! else a verified durable copy), directories without following links,
//! ownership, the `metadata.json` rewrite.

use super::{BTreeMap, Error, Manifest, Path, PathBuf, Read, Result, Write, fsx, open_regular};

pub(super) fn crosses_devices(e: &storage_core::Error) -> bool {
    matches!(e, storage_core::Error::Io { source, .. } if source.kind() == std::io::ErrorKind::CrossesDevices)
}

pub(super) fn is_kind(e: &storage_core::Error, kind: std::io::ErrorKind) -> bool {
    matches!(e, storage_core::Error::Io { source, .. } if source.kind() == kind)
}

/// Points `path` in a legacy `metadata.json` at `new_dir`; returns the new
/// bytes and a warning when the file had to be copied verbatim instead.
pub(crate) fn rewrite_metadata_path(bytes: &[u8], new_dir: &Path) -> (Vec<u8>, Option<String>) {
    let mut doc = match serde_json::from_slice(bytes) {
        Ok(serde_json::Value::Object(doc)) => doc,
        Ok(_) => return (bytes.to_vec(), Some("not a JSON object".into())),
        Err(e) => return (bytes.to_vec(), Some(format!("not decodable as JSON ({e})"))),
    };
    let Some(old) = doc.get("path").and_then(serde_json::Value::as_str) else {
        return (bytes.to_vec(), Some("no string `path` field".into()));
    };
    let Some(name) = Path::new(old).file_name() else {
        return (bytes.to_vec(), Some("`path` names no file".into()));
    };
    // Only a file of this job's own legacy directory moves with it; any
    // other `path` (`/etc/passwd`) is not the job's and stays as written.
    let job = new_dir.file_name();
    let dir = Path::new(old).parent();
    let in_job = dir.is_none_or(|d| d.as_os_str().is_empty())
        || job.is_some()
            && dir.and_then(Path::file_name) == job
            && dir.and_then(Path::parent).and_then(Path::file_name)
                == Some(std::ffi::OsStr::new("jobs"));
    if !in_job {
        return (
            bytes.to_vec(),
            Some(format!(
                "`path` (`{old}`) points outside the job's own directory"
            )),
        );
    }
    let new = new_dir.join(name);
    doc.insert(
        "path".into(),
        serde_json::Value::String(new.to_string_lossy().into_owned()),
    );
    let mut out = serde_json::to_vec_pretty(&doc).expect("a JSON map serializes");
    if bytes.ends_with(b"\n") {
        out.push(b'\n');
    }
    (out, None)
}

pub(super) fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io("set permissions of", path, e))
}

/// The recorded mode of each legacy directory.
pub(super) fn dir_modes(m: &Manifest) -> BTreeMap<PathBuf, u32> {
    m.dirs
        .iter()
        .map(|(d, mode)| (d.0.clone(), *mode))
        .collect()
}

/// Checks that `dir` is a directory and not a link to one.
pub(super) fn real_dir(dir: &Path) -> Result<()> {
    match std::fs::symlink_metadata(dir) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(Error::Link {
            path: dir.to_owned(),
        }),
        Err(e) => Err(Error::io("stat", dir, e)),
    }
}

/// Creates the missing ancestors of `rel` under `base` with their recorded
/// modes (and, when run as root, the owner of `base`). Never follows a
/// link: a link (or a file) where a directory belongs is refused by name.
pub(super) fn make_dirs(
    base: &Path,
    rel: Option<&Path>,
    modes: &BTreeMap<PathBuf, u32>,
    owner: Option<(u32, u32)>,
) -> Result<()> {
    real_dir(base)?;
    let Some(rel) = rel else { return Ok(()) };
    let mut cur = PathBuf::new();
    for c in rel.components() {
        cur.push(c);
        let dir = base.join(&cur);
        match std::fs::symlink_metadata(&dir) {
            Ok(meta) if meta.is_dir() => continue,
            Ok(_) => return Err(Error::Link { path: dir }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("stat", &dir, e)),
        }
        match std::fs::create_dir(&dir) {
            Ok(()) => {
                set_mode(&dir, modes.get(&cur).copied().unwrap_or(0o755))?;
                chown(&dir, owner)?;
                fsx::fsync_dir(fsx::parent(&dir))?;
            }
            // Created meanwhile: checked again (a link is refused).
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => real_dir(&dir)?,
            Err(e) => return Err(Error::io("create directory", &dir, e)),
        }
    }
    Ok(())
}

/// The owner that files created in the project must get: `Some` only when
/// this process runs as root and the legacy directory belongs to someone
/// else (a root-owned file in a user's project breaks their old Prodigy).
pub(crate) fn project_owner(legacy: &Path) -> Option<(u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    if !rustix::process::geteuid().is_root() {
        return None;
    }
    let meta = std::fs::symlink_metadata(legacy).ok()?;
    (meta.uid() != 0).then(|| (meta.uid(), meta.gid()))
}

/// Gives `path` (not following a link) to `owner`, if any.
pub(super) fn chown(path: &Path, owner: Option<(u32, u32)>) -> Result<()> {
    let Some((uid, gid)) = owner else {
        return Ok(());
    };
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
        .map_err(|e| Error::io("change the owner of", path, e))
}

/// Moves a file to `to` without replacing anything, by trying a rename
/// first; where the rename says "another file system", by a durable copy
/// beside `to` (mode and mtime kept; its BLAKE3 checked against `expect`
/// when given), a no-replace rename, then removing `from`.
pub(super) fn move_file(
    batch: &fsx::Batch,
    from: &Path,
    to: &Path,
    expect: Option<&str>,
) -> storage_core::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fn io<'a>(
        op: &'static str,
        p: &'a Path,
    ) -> impl FnOnce(std::io::Error) -> storage_core::Error + 'a {
        move |e| storage_core::Error::io(op, p, e)
    }
    match batch.rename_noreplace(from, to) {
        Err(e) if crosses_devices(&e) => {}
        other => return other,
    }
    let meta = std::fs::symlink_metadata(from).map_err(io("stat", from))?;
    let tmp = fsx::parent(to).join(fsx::temp_name("move"));
    let copied = (|| {
        let (mut f, _) = open_regular(from).map_err(|e| match e {
            Error::Store(e) => e,
            other => {
                storage_core::Error::io("open", from, std::io::Error::other(other.to_string()))
            }
        })?;
        let mut out = fsx::create_new(&tmp)?;
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = f.read(&mut buf).map_err(io("read", from))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n]).map_err(io("write", &tmp))?;
        }
        if expect.is_some_and(|want| hasher.finalize().to_hex().as_str() != want) {
            return Err(storage_core::Error::io(
                "copy into",
                &tmp,
                std::io::Error::other("the copy does not match the verified hash"),
            ));
        }
        out.set_permissions(std::fs::Permissions::from_mode(meta.permissions().mode()))
            .map_err(io("set permissions of", &tmp))?;
        out.set_modified(meta.modified().map_err(io("stat", from))?)
            .map_err(io("set the modification time of", &tmp))?;
        fsx::sync_file(&out, &tmp)?;
        fsx::rename_noreplace(&tmp, to)
    })();
    if let Err(e) = copied {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    fsx::fsync_dir(fsx::parent(to))?;
    fsx::remove_file_durable(from)?;
    Ok(())
}

pub(crate) fn remove_dir_all_if_exists(path: &Path) -> Result<()> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove", path, e)),
    }
}

/// Free bytes for unprivileged users on the file system of `path`.
pub(super) fn free_bytes(path: &Path) -> Result<u64> {
    let st = rustix::fs::statvfs(path).map_err(|e| Error::io("statvfs", path, e.into()))?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}
