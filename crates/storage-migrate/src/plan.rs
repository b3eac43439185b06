//! Planning: walk the legacy tree (never following links), classify every
//! file, and decide where each storage file goes.
//!
//! Planning reads only what routing needs (a session's id, the first bytes of
//! a `.gz` to tell real gzip from plain text, the job ids of event lines) and
//! changes nothing, so `migrate --dry-run` and `status` use it as is.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use storage_core::{DocKey, RepoKey, SessionId};
use storage_fs::Layout;

use crate::copy::{self, open_regular};
use crate::error::{Error, Result};
use crate::legacy::{self, Class};
use crate::manifest::{
    Category, Entry, Fate, Fingerprint, Manifest, Output, Produce, RelPath, Source, Special,
};
use crate::split;

/// The legacy directory's name inside a project.
pub const LEGACY_DIR_NAME: &str = ".prodigy";

/// The prefix of this tool's own names inside `.prodigy/`.
pub(crate) const OWN_PREFIX: &str = ".prodigy-storage-";

/// The marker of a migration that has begun publishing and is not finished
/// (`.prodigy/.prodigy-storage-migration.json`): it names the store, so
/// that no other store starts a migration of the same project meanwhile.
pub(crate) const MARKER: &str = ".prodigy-storage-migration.json";

/// Session files larger than this are not parsed for their id (kept verbatim instead).
const MAX_SESSION_PARSE: u64 = 256 * 1024 * 1024;

#[derive(Debug)]
struct Found {
    rel: PathBuf,
    class: Class,
    size: u64,
    mtime: (i64, u32),
    mode: u32,
    fingerprint: Fingerprint,
}

/// What a walk of the legacy tree found besides its storage files (which
/// it hands over one at a time). Its size grows with the number of
/// directories, links and special files, never with the number of files.
#[derive(Debug, Default)]
struct Walk {
    specials: Vec<Special>,
    user_files: u64,
    dir_modes: BTreeMap<PathBuf, u32>,
    /// User directories that could not be listed (warnings).
    unlisted: Vec<String>,
    /// Directories that directly hold something other than storage files
    /// (a user file, a link, a special file) or nothing at all.
    impure: std::collections::BTreeSet<PathBuf>,
}

/// Whether the directory at `rel` (relative to `.prodigy/`) is a storage directory.
fn storage_dir(rel: &Path) -> bool {
    let parts: Vec<&str> = rel.iter().filter_map(|c| c.to_str()).collect();
    parts.len() == rel.iter().count() && legacy::is_storage_dir(&parts)
}

/// Refuses, before anything changes, a legacy tree whose storage files
/// cannot be read or whose storage directories cannot be written (the files
/// must be moved out of them): permissions, a read-only file system.
pub fn check_access(legacy: &Path) -> Result<()> {
    use rustix::fs::Access;
    let refuse = |path: &Path, what: &str, e: std::io::Error| Error::Refused {
        action: "migrate",
        path: path.to_owned(),
        reason: format!("{what} ({e}); fix its permissions (or mount) and run again"),
    };
    let mut checked_dirs = std::collections::BTreeSet::new();
    // A file or directory that vanishes meanwhile (another process moving
    // it into its backup) is no reason to refuse.
    let gone =
        |r: &std::io::Result<()>| matches!(r, Err(e) if e.kind() == std::io::ErrorKind::NotFound);
    each_storage_file(legacy, false, |path| {
        let r = access(path, Access::READ_OK);
        if gone(&r) {
            return Ok(std::ops::ControlFlow::Continue(()));
        }
        r.map_err(|e| refuse(path, "it cannot be read", e))?;
        let dir = fsx_parent(path);
        if checked_dirs.insert(dir.to_owned()) {
            let r = access(dir, Access::WRITE_OK | Access::EXEC_OK);
            if !gone(&r) {
                r.map_err(|e| refuse(dir, "its storage files cannot be moved out of it", e))?;
            }
        }
        Ok(std::ops::ControlFlow::Continue(()))
    })
}

/// Calls `visit` with the path of every regular legacy storage file under
/// `legacy`, never following links, until it breaks. With
/// `storage_dirs_only`, user directories are not even listed. A missing
/// `legacy` has no files; an unlistable storage directory is a refusal; an
/// unlistable directory of the user's is skipped.
fn each_storage_file(
    legacy: &Path,
    storage_dirs_only: bool,
    mut visit: impl FnMut(&Path) -> Result<std::ops::ControlFlow<()>>,
) -> Result<()> {
    let mut stack = vec![PathBuf::new()];
    while let Some(rel_dir) = stack.pop() {
        let dir = legacy.join(&rel_dir);
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e)
                if rel_dir.as_os_str().is_empty()
                    && matches!(
                        e.kind(),
                        std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                    ) =>
            {
                return Ok(());
            }
            // Moved away meanwhile (a concurrent migration retiring it).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) if rel_dir.as_os_str().is_empty() || storage_dir(&rel_dir) => {
                return Err(Error::Refused {
                    action: "migrate",
                    path: dir,
                    reason: format!(
                        "it cannot be listed ({e}); fix its permissions (or mount) and run again"
                    ),
                });
            }
            Err(_) => continue,
        };
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("list", &dir, e))?;
            let rel = rel_dir.join(entry.file_name());
            let ft = match entry.file_type() {
                Ok(ft) => ft,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io("stat", entry.path(), e)),
            };
            if ft.is_dir() {
                if !storage_dirs_only || storage_dir(&rel) {
                    stack.push(rel);
                }
            } else if ft.is_file()
                && legacy::classify(&components(&rel)).is_storage()
                && visit(&legacy.join(&rel))?.is_break()
            {
                return Ok(());
            }
        }
    }
    Ok(())
}

fn fsx_parent(path: &Path) -> &Path {
    storage_fs::fsx::parent(path)
}

/// `faccessat` with the effective ids; an open where the kernel lacks that flag.
fn access(path: &Path, mode: rustix::fs::Access) -> std::io::Result<()> {
    use rustix::fs::{AtFlags, CWD, accessat};
    match accessat(CWD, path, mode, AtFlags::EACCESS) {
        Ok(()) => Ok(()),
        Err(e) if e == rustix::io::Errno::NOSYS || e == rustix::io::Errno::INVAL => {
            if mode.contains(rustix::fs::Access::WRITE_OK) {
                Ok(()) // cannot tell without trying; retiring reports it
            } else {
                std::fs::File::open(path).map(drop)
            }
        }
        Err(e) => Err(e.into()),
    }
}

fn components(rel: &Path) -> Vec<Option<&str>> {
    rel.iter().map(|c| c.to_str()).collect()
}

fn special_kind(ft: std::fs::FileType) -> &'static str {
    if ft.is_symlink() {
        "symlink"
    } else if ft.is_fifo() {
        "fifo"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_block_device() {
        "block device"
    } else if ft.is_char_device() {
        "char device"
    } else {
        "unknown"
    }
}

/// One directory's entries, sorted by name, so that the walk visits paths
/// in [`Path`] order (component by component).
type Listing = std::vec::IntoIter<(std::ffi::OsString, std::fs::FileType)>;

fn list(dir: &Path) -> std::io::Result<Listing> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        out.push((entry.file_name(), entry.file_type()?));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out.into_iter())
}

/// Walks `legacy` depth first in path order, never following links, and
/// calls `visit` with each storage file. Only the listings of the
/// directories on the current path are held in memory.
fn walk(legacy: &Path, mut visit: impl FnMut(Found) -> Result<()>) -> Result<Walk> {
    let mut out = Walk::default();
    let root = list(legacy).map_err(|e| Error::Refused {
        action: "migrate",
        path: legacy.to_owned(),
        reason: format!("cannot list it ({e}); fix its permissions and run again"),
    })?;
    // This tool's own files in `.prodigy/` (the pending-migration marker, a
    // rollback's restoring directory) are neither storage nor the user's.
    let root: Listing = root
        .filter(|(name, _)| !name.as_encoded_bytes().starts_with(OWN_PREFIX.as_bytes()))
        .collect::<Vec<_>>()
        .into_iter();
    if root.len() == 0 {
        out.impure.insert(PathBuf::new());
    }
    let mut stack: Vec<(PathBuf, Listing)> = vec![(PathBuf::new(), root)];
    while let Some((rel_dir, entries)) = stack.last_mut() {
        let Some((name, ft)) = entries.next() else {
            stack.pop();
            continue;
        };
        let rel_dir = rel_dir.clone();
        let rel = rel_dir.join(&name);
        let path = legacy.join(&rel);
        // The directory entry's type never follows a link out of the tree;
        // only storage files and directories need a `stat`.
        let stat = || std::fs::symlink_metadata(&path).map_err(|e| Error::io("stat", &path, e));
        if ft.is_dir() {
            match std::fs::symlink_metadata(&path) {
                Ok(meta) => {
                    out.dir_modes.insert(rel.clone(), meta.mode() & 0o7777);
                }
                // A directory of the user's that cannot even be looked at
                // (deeper than PATH_MAX: "File name too long") holds no
                // storage: note it and go on, as for one that cannot be listed.
                Err(e) if !storage_dir(&rel) => {
                    out.unlisted.push(format!(
                        "`{}` could not be looked at ({e}); it was left alone",
                        rel.display()
                    ));
                    out.impure.insert(rel);
                    continue;
                }
                Err(e) => return Err(Error::io("stat", &path, e)),
            }
            match list(&path) {
                Ok(sub) => {
                    if sub.len() == 0 {
                        out.impure.insert(rel.clone());
                    }
                    stack.push((rel, sub));
                }
                // A directory of the user's that we cannot list holds no
                // storage: note it and go on. A storage directory must be readable.
                Err(e) if !storage_dir(&rel) => {
                    out.unlisted.push(format!(
                        "`{}` could not be listed ({e}); it was left alone",
                        rel.display()
                    ));
                    out.impure.insert(rel);
                }
                Err(e) => {
                    return Err(Error::Refused {
                        action: "migrate",
                        path,
                        reason: format!("cannot list it ({e}); fix its permissions and run again"),
                    });
                }
            }
        } else if ft.is_file() {
            let class = legacy::classify(&components(&rel));
            if class.is_storage() {
                let meta = stat()?;
                visit(Found {
                    rel,
                    class,
                    size: meta.len(),
                    mtime: copy::mtime_of(&meta),
                    mode: meta.mode() & 0o7777,
                    fingerprint: Fingerprint::of(&meta),
                })?;
            } else {
                out.user_files += 1;
                out.impure.insert(rel_dir);
            }
        } else {
            out.impure.insert(rel_dir);
            let target = ft
                .is_symlink()
                .then(|| std::fs::read_link(&path).ok())
                .flatten()
                .map(RelPath);
            out.specials.push(Special {
                rel: RelPath(rel),
                kind: special_kind(ft).to_owned(),
                target,
            });
        }
    }
    Ok(out)
}

/// Refusals that must happen before anything changes (see `docs/migration.md`).
pub fn check_project(project: &Path, store_root: &Path) -> Result<(PathBuf, PathBuf)> {
    let meta = std::fs::metadata(project).map_err(|e| Error::Refused {
        action: "migrate",
        path: project.to_owned(),
        reason: format!("the project directory cannot be read ({e})"),
    })?;
    if !meta.is_dir() {
        return Err(Error::Refused {
            action: "migrate",
            path: project.to_owned(),
            reason: "it is not a directory; pass the project's directory".into(),
        });
    }
    let project = std::fs::canonicalize(project).map_err(|e| Error::io("resolve", project, e))?;
    let legacy = project.join(LEGACY_DIR_NAME);
    let store = std::fs::canonicalize(store_root).unwrap_or_else(|_| store_root.to_owned());
    // Identity by device and inode, never by path: a bind mount or a
    // second volume shows one directory under two paths.
    let store_id = identity(&store);
    let legacy_id = identity(&legacy);
    let within = |path: &Path, id: Option<(u64, u64)>| {
        id.is_some() && path.ancestors().any(|a| identity(a) == id)
    };
    if project.starts_with(&store) || within(&project, store_id) {
        return Err(Error::Refused {
            action: "migrate",
            path: project,
            reason: format!(
                "it is inside the store `{}` (a Prodigy worktree?); migrate the original project instead",
                store.display()
            ),
        });
    }
    if let Ok(m) = std::fs::symlink_metadata(&legacy)
        && m.file_type().is_symlink()
    {
        return Err(Error::Refused {
            action: "migrate",
            path: legacy,
            reason: "it is a symbolic link, which migration never follows; replace it with the directory it points to".into(),
        });
    }
    let is_store = legacy == store || legacy_id.is_some() && legacy_id == store_id;
    if is_store {
        return Err(Error::Refused {
            action: "migrate",
            path: legacy,
            reason: format!(
                "this `.prodigy` is the store itself (`{}`), not a project's legacy storage; run from your project directory",
                store.display()
            ),
        });
    }
    if is_a_store(&legacy) {
        return Err(Error::Refused {
            action: "migrate",
            path: legacy.clone(),
            reason: format!(
                "this `.prodigy` is a prodigy-storage store (it has `layout.json`), not legacy storage, \
                 so nothing in it is migrated; to use that store, pass --home {} or set PRODIGY_HOME",
                legacy.display()
            ),
        });
    }
    if store.starts_with(&legacy) || within(&store, legacy_id) {
        return Err(Error::Refused {
            action: "migrate",
            path: legacy,
            reason: format!(
                "the store `{}` is inside this `.prodigy`, so migrating would move the store into itself; \
                 choose a store outside the project (--home or PRODIGY_HOME)",
                store.display()
            ),
        });
    }
    if legacy.starts_with(&store) || within(&legacy, store_id) {
        return Err(Error::Refused {
            action: "migrate",
            path: legacy,
            reason: format!(
                "this `.prodigy` is inside the store `{}`, not a project's legacy storage; run from your project directory",
                store.display()
            ),
        });
    }
    Ok((project, legacy))
}

/// Whether `dir` is a store of this tool (it has a `layout.json`): a
/// current store's files are never a project's legacy storage, whatever
/// their names, even where a `.prodigy` of a project is expected.
#[must_use]
pub fn is_a_store(dir: &Path) -> bool {
    std::fs::symlink_metadata(dir.join("layout.json")).is_ok_and(|m| m.is_file())
}

/// Device and inode of `path` (following links, as a path lookup does).
fn identity(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Whether `legacy` holds any legacy storage file, reading as little as
/// possible: one listing of `.prodigy/`, and listings of storage directories
/// only. A missing directory is `false`.
pub fn has_legacy_storage(legacy: &Path) -> Result<bool> {
    let mut found = false;
    each_storage_file(legacy, true, |_| {
        found = true;
        Ok(std::ops::ControlFlow::Break(()))
    })?;
    Ok(found)
}

/// How deep below the project root [`discover`] looks for a `.prodigy/`
/// (the directory holding it, counted in components: `services/worker` is 2).
pub const DISCOVERY_DEPTH: usize = 8;

/// How many directories [`discover`] lists at most: it stops there (with a
/// warning) so that `status` run from `/` or a home directory answers in
/// a second rather than walking the whole disk.
pub const DISCOVERY_DIRS: usize = 20_000;

/// Directories [`discover`] never enters, besides links, the store and
/// other repositories: version control, and the two trees of generated
/// files that can hold millions of entries.
const NOT_ENTERED: [&str; 4] = [".git", "node_modules", "target", LEGACY_DIR_NAME];

/// The legacy directories below `project` (a canonical project root) that
/// hold legacy storage, in path order; the project's own `.prodigy/` is not
/// one of them.
///
/// Old Prodigy wrote some files relative to its working directory, so
/// running it from `services/worker/` left `services/worker/.prodigy/`. The
/// walk is bounded and cheap: at most [`DISCOVERY_DEPTH`] levels; it never
/// follows a link, never enters `.git`, `node_modules`, `target`, a
/// `.prodigy` (one is only looked into for storage files), the store (by
/// device and inode) or another repository or worktree (a directory with
/// its own `.git`, which is that project's business), and does not read
/// `.gitignore`: `.prodigy/` is usually ignored by git. A directory that
/// cannot be listed is skipped, and so is a `.prodigy` that is a store of
/// this tool ([`is_a_store`]).
#[must_use]
pub fn discover(project: &Path, store_root: &Path) -> Vec<PathBuf> {
    discover_within(project, store_root, DISCOVERY_DIRS)
}

/// [`discover`], listing at most `max_dirs` directories.
fn discover_within(project: &Path, store_root: &Path, max_dirs: usize) -> Vec<PathBuf> {
    let store = std::fs::canonicalize(store_root).unwrap_or_else(|_| store_root.to_owned());
    let store_id = identity(&store);
    let mut found = Vec::new();
    // Depth first in path order: (directory, its depth below the project).
    let mut stack = vec![(project.to_owned(), 0_usize)];
    let mut listed = 0_usize;
    while let Some((dir, depth)) = stack.pop() {
        listed += 1;
        if listed > max_dirs {
            tracing::warn!(project = %project.display(), "stopped looking for legacy `.prodigy` directories after {max_dirs} directories (is this a project's root?)");
            break;
        }
        let Ok(listing) = list(&dir) else { continue };
        let mut children = Vec::new();
        for (name, ft) in listing {
            if depth > 0 && name == LEGACY_DIR_NAME && ft.is_dir() {
                let legacy = dir.join(&name);
                let is_store = identity(&legacy).is_some_and(|id| Some(id) == store_id);
                if is_a_store(&legacy) {
                    // Another store of this tool (PRODIGY_HOME pointed
                    // there once): its files are its own, never legacy.
                    if !is_store {
                        tracing::warn!(dir = %legacy.display(), "a prodigy-storage store (it has layout.json) inside the project is not legacy storage: left alone");
                    }
                } else if !is_store
                    && !store.starts_with(&legacy)
                    && has_legacy_storage(&legacy).unwrap_or(false)
                {
                    found.push(legacy);
                }
                continue;
            }
            if !ft.is_dir() || depth >= DISCOVERY_DEPTH || NOT_ENTERED.iter().any(|n| name == *n) {
                continue;
            }
            let child = dir.join(&name);
            if child == store || identity(&child).is_some_and(|id| Some(id) == store_id) {
                continue;
            }
            // Another repository or a worktree (Prodigy's agents work in
            // git worktrees): its `.prodigy/` belongs to that project.
            if std::fs::symlink_metadata(child.join(".git")).is_ok() {
                continue;
            }
            children.push((child, depth + 1));
        }
        stack.extend(children.into_iter().rev());
    }
    found
}

/// A new transaction id: UTC time and a random suffix, sortable by time.
#[must_use]
pub fn new_txid() -> String {
    let now = storage_fs::time::now(); // 2025-09-06T08:31:02.907114Z
    let compact: String = now[..19]
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect();
    let noise = blake3::hash(format!("{now}{}", std::process::id()).as_bytes()).to_hex();
    format!("{compact}Z-{}", &noise[..6])
}

/// `abs`, a path the layout made, relative to the store root.
pub(crate) fn rel_in_store(layout: &Layout, abs: &Path) -> RelPath {
    RelPath(
        abs.strip_prefix(layout.root())
            .expect("layout paths are under the root")
            .to_owned(),
    )
}

/// Where the files kept verbatim of one legacy directory go, relative to
/// `legacy/<repo>/`: the project's own `.prodigy/` there, a sub-directory's
/// (`services/worker/.prodigy/`) under `subdirs/services/worker/`, so that
/// no two legacy directories share a destination (`subdirs` is no name on
/// the allow-list).
pub(crate) fn subdir_area(project: &Path, legacy: &Path) -> PathBuf {
    match legacy.parent().and_then(|p| p.strip_prefix(project).ok()) {
        Some(sub) if !sub.as_os_str().is_empty() => Path::new(SUBDIRS_AREA).join(sub),
        _ => PathBuf::new(),
    }
}

/// The directory of `legacy/<repo>/` that holds sub-directories' kept files.
pub const SUBDIRS_AREA: &str = "subdirs";

/// Where one legacy directory's files kept verbatim go.
struct KeptAt<'a> {
    layout: &'a Layout,
    repo: &'a RepoKey,
    area: &'a Path,
}

/// Where a legacy file kept verbatim goes (relative to the store root).
pub(crate) fn preserved_dest(layout: &Layout, repo: &RepoKey, rel: &Path) -> RelPath {
    let abs =
        Layout::under(&layout.legacy_dir(repo), rel).expect("walked paths are relative names");
    rel_in_store(layout, &abs)
}

fn session_id_of(path: &Path, size: u64) -> Option<SessionId> {
    if size > MAX_SESSION_PARSE {
        return None;
    }
    let (mut f, _) = open_regular(path).ok()?;
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes).ok()?;
    session_id_in(&bytes)
}

/// The valid `session_id` of a `session_state.json`'s bytes, if any.
pub(crate) fn session_id_in(bytes: &[u8]) -> Option<SessionId> {
    #[derive(serde::Deserialize)]
    struct Probe {
        session_id: Option<String>,
    }
    let p: Probe = serde_json::from_slice(bytes).ok()?;
    SessionId::new(p.session_id?).ok()
}

/// Whether the file is one whole JSON value (cheap: nothing is built).
/// The bytes of the regular file at `path` (never through a link or a FIFO).
fn read_regular(path: &Path) -> Option<Vec<u8>> {
    let (mut f, _) = open_regular(path).ok()?;
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes).ok()?;
    Some(bytes)
}

fn is_json(path: &Path) -> bool {
    let Ok((mut f, _)) = open_regular(path) else {
        return false;
    };
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes).is_ok()
        && serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).is_ok()
}

fn parses_as_object(path: &Path) -> bool {
    let Ok((mut f, _)) = open_regular(path) else {
        return false;
    };
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes).is_ok()
        && serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&bytes).is_ok()
}

fn is_real_gzip(path: &Path) -> Result<bool> {
    let (mut f, _) = open_regular(path)?;
    let mut magic = [0u8; 2];
    let mut got = 0;
    while got < 2 {
        let n = f
            .read(&mut magic[got..])
            .map_err(|e| Error::io("read", path, e))?;
        if n == 0 {
            break;
        }
        got += n;
    }
    Ok(got == 2 && magic == [0x1f, 0x8b])
}

/// Plans the migration of `legacy` into `repo` of the store at `layout`,
/// handing each [`Entry`] to `sink` as the walk finds it (a real run writes
/// them to `entries.jsonl`; a dry run only counts them), and returns the rest.
///
/// With `preview` (dry runs, status) it also reads what staging would read
/// to finish the plan: the job ids in event logs and the validity of JSON
/// documents. A real run leaves both to staging, which reads the files anyway.
///
/// `imported` names the split logs earlier migrations of this legacy
/// directory imported and left in the project because they grew after
/// verification (see [`imported_logs`]): only what was appended since is
/// planned from them.
#[allow(clippy::too_many_arguments)] // Reason: one call site per use; a struct would only rename them.
pub fn plan(
    project: &Path,
    legacy: &Path,
    layout: &Layout,
    repo: &RepoKey,
    txid: &str,
    preview: bool,
    imported: &Imported,
    sink: &mut dyn FnMut(&Entry) -> Result<()>,
) -> Result<Manifest> {
    let mut manifest = Manifest::new(txid, project, legacy, repo.as_str());
    if std::fs::symlink_metadata(legacy).is_err() {
        return Ok(manifest);
    }
    let area = subdir_area(project, legacy);
    let preserved = |rel: &Path| preserved_dest(layout, repo, &area.join(rel));
    let doc = |key: DocKey| rel_in_store(layout, &layout.document(&key));
    // Only `session_state.json` can share a destination with another file
    // (the `session-<id>.json` of its own session); those few are held back
    // and stored once if identical. Every other file goes straight to `sink`.
    let state = legacy.join("session_state.json");
    let shared_dest = std::fs::symlink_metadata(&state)
        .ok()
        .filter(std::fs::Metadata::is_file)
        .and_then(|meta| session_id_of(&state, meta.len()))
        .map(|session| {
            doc(DocKey::Session {
                repo: repo.clone(),
                session,
            })
        });
    let mut held: Vec<(usize, Source)> = Vec::new();
    let mut parents = std::collections::BTreeSet::new();
    let mut index = 0usize;
    let walked = walk(legacy, |found| {
        let path = legacy.join(&found.rel);
        let mut p = found.rel.parent();
        while let Some(dir) = p.filter(|d| !d.as_os_str().is_empty()) {
            if !parents.insert(dir.to_owned()) {
                break;
            }
            p = dir.parent();
        }
        let source = Source {
            rel: RelPath(found.rel.clone()),
            size: found.size,
            mtime: found.mtime,
            mode: found.mode,
            hash: None,
            split: false,
            split_lines: None,
            fingerprint: found.fingerprint,
            linked: false,
            left: None,
            skip: None,
        };
        let this = index;
        index += 1;
        let mut entry = Entry {
            index: this,
            sources: vec![source],
            outputs: Vec::new(),
        };
        let estimate = found.size;
        let out = |dest: RelPath, produce: Produce, category: Category| Output {
            dest,
            produce,
            category,
            // An estimate until staging records the real size.
            size: Some(estimate),
            hash: None,
            lines: None,
            fate: Fate::Pending,
        };
        let r = repo.clone();
        let typed_json = matches!(found.class, Class::SessionCopy(_))
            || preview
                && matches!(
                    found.class,
                    Class::JobCheckpoint(..)
                        | Class::JobMetadata(_)
                        | Class::DeadLetter(..)
                        | Class::DeadLetterIndex(_)
                        | Class::WorkflowCheckpoint(_)
                );
        let class = if typed_json && !is_json(&path) {
            // A torn or corrupt document must not sit where Prodigy loads it.
            manifest.warn(format!(
                "`{}` is not valid JSON (a torn or corrupt write); kept verbatim in the legacy area",
                found.rel.display()
            ));
            Class::Preserved
        } else {
            found.class
        };
        let output = match class {
            Class::SessionState | Class::SessionCopy(_) => {
                let id = match &class {
                    Class::SessionCopy(id) => Some(id.clone()),
                    _ => session_id_of(&path, found.size),
                };
                if let Some(session) = id {
                    let dest = doc(DocKey::Session { repo: r, session });
                    if shared_dest.as_ref() == Some(&dest) {
                        let source = entry.sources.pop().expect("one source");
                        held.push((this, source));
                        return Ok(());
                    }
                    out(dest, Produce::Copy, Category::Sessions)
                } else {
                    manifest.warn(format!(
                        "`{}` has no readable `session_id`; kept verbatim in the legacy area",
                        found.rel.display()
                    ));
                    out(
                        preserved(&found.rel),
                        Produce::Copy,
                        Category::LegacyPreserved,
                    )
                }
            }
            Class::JobCheckpoint(job, version) => out(
                doc(DocKey::JobCheckpoint {
                    repo: r,
                    job,
                    version,
                }),
                Produce::Copy,
                Category::JobState,
            ),
            Class::JobMetadata(job) => {
                let dest = doc(DocKey::JobMetadata { repo: r, job });
                let mut o = out(dest, Produce::RewriteMetadataPath, Category::JobState);
                if preview {
                    // The size the rewritten file will have, as a real run reports it.
                    let new_dir = layout.root().join(o.dest.as_path());
                    if let (Some(bytes), Some(new_dir)) = (read_regular(&path), new_dir.parent()) {
                        let (rewritten, _) =
                            crate::protocol::rewrite_metadata_path(&bytes, new_dir);
                        o.size = Some(rewritten.len() as u64);
                    }
                }
                o
            }
            Class::DeadLetter(job, item) => out(
                doc(DocKey::DeadLetter { repo: r, job, item }),
                Produce::Copy,
                Category::DeadLetters,
            ),
            Class::DeadLetterIndex(job) => out(
                doc(DocKey::DeadLetterIndex { repo: r, job }),
                Produce::Copy,
                Category::DeadLetters,
            ),
            Class::WorkflowCheckpoint(workflow) => out(
                doc(DocKey::WorkflowCheckpoint { repo: r, workflow }),
                Produce::Copy,
                Category::Checkpoints,
            ),
            Class::GlobalEventLog if is_real_gzip(&path)? => out(
                preserved(&found.rel),
                Produce::Copy,
                Category::LegacyPreserved,
            ),
            Class::GlobalEventLog => {
                if let Some((size, hash)) = imported.get(&found.rel) {
                    if let Some(skip) = prefix_skip(&path, *size, hash)? {
                        entry.sources[0].skip = Some(skip);
                        manifest.warn(format!(
                            "`{}` grew since an earlier migration imported its first {size} \
                             byte(s), which are unchanged: only what follows is imported",
                            found.rel.display()
                        ));
                    } else {
                        // Rewritten, not appended to: its lines cannot be
                        // told apart from those already imported.
                        manifest.warn(format!(
                            "`{}` changed (not only grew) since an earlier migration imported \
                             it: kept verbatim under the legacy area, not imported again",
                            found.rel.display()
                        ));
                        entry.outputs.push(out(
                            preserved(&found.rel),
                            Produce::Copy,
                            Category::LegacyPreserved,
                        ));
                        return sink(&entry);
                    }
                }
                entry.sources[0].split = true;
                if preview {
                    // Staging routes the lines and creates the outputs; a
                    // preview routes them now to show where they would go.
                    let (mut file, _) = open_regular(&path)?;
                    if let Some(skip) = entry.sources[0].skip {
                        std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(skip))
                            .map_err(|e| Error::io("seek", &path, e))?;
                    }
                    let routes = split::for_each_line(file, &path, |_, _| Ok(()))?;
                    entry.sources[0].split_lines = Some(routes.values().map(|t| t.lines).sum());
                    for (route, totals) in routes {
                        let dest = split_dest(layout, repo, txid, this, &found.rel, route.as_ref());
                        if route.is_none() {
                            manifest.warn(unrouted_warning(totals.lines, &found.rel, &dest));
                        }
                        let mut o = out(
                            dest,
                            Produce::SplitEvents {
                                job: route.map(|j| j.to_string()),
                            },
                            Category::Events,
                        );
                        o.lines = Some(totals.lines);
                        o.size = Some(totals.bytes);
                        entry.outputs.push(o);
                    }
                }
                return sink(&entry);
            }
            Class::Preserved => out(
                preserved(&found.rel),
                Produce::Copy,
                Category::LegacyPreserved,
            ),
            Class::User => unreachable!("user files are not in the walk's storage list"),
        };
        entry.outputs.push(output);
        sink(&entry)
    })?;
    if let Some(dest) = shared_dest
        && !held.is_empty()
    {
        let kept = KeptAt {
            layout,
            repo,
            area: &area,
        };
        add_sessions(legacy, &kept, &mut manifest, &dest, held, sink)?;
    }
    manifest.specials = walked.specials;
    for w in walked.unlisted {
        manifest.warn(w);
    }
    manifest.user_files = walked.user_files;
    manifest.pure_dirs = pure_dirs(&walked.dir_modes, &walked.impure);
    manifest.dirs = parents
        .into_iter()
        .map(|d| {
            let mode = walked.dir_modes.get(&d).copied().unwrap_or(0o755);
            (RelPath(d), mode)
        })
        .collect();
    Ok(manifest)
}

/// Where the lines of split log `rel` (entry `index`) for `route` go,
/// relative to the store root: the job's event directory, or the legacy
/// area for lines that name no job.
/// Split logs earlier migrations imported and left in the project, by path
/// relative to the legacy directory: the size and BLAKE3 of the version
/// they verified.
pub type Imported = std::collections::HashMap<PathBuf, (u64, String)>;

/// Where the lines not imported yet start in the log at `path`, an earlier
/// migration having imported a version of `size` bytes hashing to `hash`:
/// just past the last line break of that version (a torn last line it kept
/// verbatim is read again with what was appended to it). `None` if the
/// file's first `size` bytes are not that version any more.
pub(crate) fn prefix_skip(path: &Path, size: u64, hash: &str) -> Result<Option<u64>> {
    let (file, _) = open_regular(path)?;
    let mut reader = std::io::Read::take(file, size);
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 64 * 1024];
    let (mut read, mut last_break) = (0u64, 0u64);
    loop {
        let n =
            std::io::Read::read(&mut reader, &mut buf).map_err(|e| Error::io("read", path, e))?;
        if n == 0 {
            break;
        }
        if let Some(i) = buf[..n].iter().rposition(|b| *b == b'\n') {
            last_break = read + i as u64 + 1;
        }
        hasher.update(&buf[..n]);
        read += n as u64;
    }
    Ok((read == size && hasher.finalize().to_hex().as_str() == hash).then_some(last_break))
}

pub(crate) fn split_dest(
    layout: &Layout,
    repo: &RepoKey,
    txid: &str,
    index: usize,
    rel: &Path,
    route: Option<&storage_core::JobId>,
) -> RelPath {
    let abs = match route {
        Some(job) => layout
            .events_job_dir(repo, job)
            .join(format!("events-0-legacy-{txid}-{index:04}.jsonl")),
        None => layout
            .legacy_dir(repo)
            .join("unrouted-events")
            .join(txid)
            .join(path_name(rel)),
    };
    rel_in_store(layout, &abs)
}

/// The warning for the lines of a split log that name no job.
pub(crate) fn unrouted_warning(lines: u64, rel: &Path, dest: &RelPath) -> String {
    format!(
        "{lines} line(s) of `{}` name no valid job (or are not JSON, or torn); kept verbatim at `{}`",
        rel.display(),
        dest.as_path().display()
    )
}

/// The top-most storage directories that hold nothing but storage files
/// (at any depth): retiring moves each of them into the backup whole.
fn pure_dirs(
    all: &BTreeMap<PathBuf, u32>,
    impure: &std::collections::BTreeSet<PathBuf>,
) -> Vec<RelPath> {
    let mut tainted: std::collections::BTreeSet<&Path> = std::collections::BTreeSet::new();
    for d in impure {
        let mut p = Some(d.as_path());
        while let Some(dir) = p {
            tainted.insert(dir);
            p = dir.parent();
        }
    }
    let pure = |d: &Path| {
        let parts: Vec<&str> = d.iter().filter_map(|c| c.to_str()).collect();
        parts.len() == d.iter().count() && legacy::is_storage_dir(&parts) && !tainted.contains(d)
    };
    all.keys()
        .filter(|d| {
            pure(d)
                && d.parent()
                    .is_none_or(|p| p.as_os_str().is_empty() || !pure(p))
        })
        .map(|d| RelPath(d.clone()))
        .collect()
}

fn path_name(rel: &Path) -> String {
    rel.file_name()
        .map(|n| String::from_utf8_lossy(n.as_bytes()).into_owned())
        .unwrap_or_default()
}

/// One output per distinct content among the files of one session (at most
/// `session_state.json` and its `session-<id>.json`): identical copies are
/// stored once, differing ones are all kept (the best in `sessions/`, the
/// others in the legacy area).
fn add_sessions(
    legacy: &Path,
    kept: &KeptAt<'_>,
    manifest: &mut Manifest,
    dest: &RelPath,
    mut sources: Vec<(usize, Source)>,
    sink: &mut dyn FnMut(&Entry) -> Result<()>,
) -> Result<()> {
    // Prefer a file that parses; among those, `session_state.json` (written atomically).
    sources.sort_by_key(|(_, s)| {
        let rel = s.rel.as_path();
        let parses = parses_as_object(&legacy.join(rel));
        (
            !parses,
            rel != Path::new("session_state.json"),
            rel.to_owned(),
        )
    });
    let mut groups: Vec<(blake3::Hash, Vec<(usize, Source)>)> = Vec::new();
    for (i, s) in sources {
        let (_, h) = copy::hash_file(&legacy.join(s.rel.as_path()))?;
        match groups.iter_mut().find(|(g, _)| *g == h) {
            Some((_, members)) => members.push((i, s)),
            None => groups.push((h, vec![(i, s)])),
        }
    }
    for (n, (_, members)) in groups.into_iter().enumerate() {
        let index = members[0].0;
        let first = members[0].1.clone();
        let (out_dest, category) = if n == 0 {
            (dest.clone(), Category::Sessions)
        } else {
            let rel = first.rel.as_path();
            let moved = preserved_dest(kept.layout, kept.repo, &kept.area.join(rel));
            manifest.warn(format!(
                "`{}` differs from the session kept at `{}`; kept both (this one at `{}`)",
                rel.display(),
                dest.as_path().display(),
                moved.as_path().display()
            ));
            (moved, Category::LegacyPreserved)
        };
        sink(&Entry {
            index,
            sources: members.into_iter().map(|(_, s)| s).collect(),
            outputs: vec![Output {
                dest: out_dest,
                produce: Produce::Copy,
                category,
                size: Some(first.size),
                hash: None,
                lines: None,
                fate: Fate::Pending,
            }],
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod discovery_tests {
    use super::*;

    /// Issue 21, item 6: the walk is bounded by the number of directories
    /// it lists (`status` run from `/` walked for 10 s), and within the
    /// bound it finds what it always found.
    #[test]
    fn the_walk_stops_after_its_bound_of_directories() {
        let dir = tempfile::tempdir().expect("tempdir");
        let project = dir.path().join("project");
        for i in 0..200 {
            std::fs::create_dir_all(project.join(format!("a{i:03}"))).expect("mkdir");
        }
        // Last in path order: found only by a walk that gets that far.
        let legacy = project.join("z/.prodigy");
        std::fs::create_dir_all(&legacy).expect("mkdir");
        std::fs::write(legacy.join("state.json"), "{}").expect("write");
        let store = dir.path().join("store");
        assert_eq!(discover_within(&project, &store, 1_000), [legacy]);
        assert!(discover_within(&project, &store, 50).is_empty(), "stopped");
    }

    /// A grown log's lines not imported yet start after the last line break
    /// of the version imported: a torn last line is read again with what
    /// was appended to it; a changed or shortened prefix is no prefix.
    #[test]
    fn what_follows_an_imported_version_starts_after_its_last_whole_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("events.jsonl");
        let version = b"{\"a\":1}\n{\"b\":2}\n{\"c\":";
        let hash = blake3::hash(version).to_hex().to_string();
        let size = version.len() as u64;
        std::fs::write(&log, version).expect("write");
        assert_eq!(prefix_skip(&log, size, &hash).expect("read"), Some(16));
        let mut grown = version.to_vec();
        grown.extend_from_slice(b"3}\n{\"d\":4}\n");
        std::fs::write(&log, &grown).expect("write");
        assert_eq!(prefix_skip(&log, size, &hash).expect("read"), Some(16));
        grown[2] = b'x';
        std::fs::write(&log, &grown).expect("write");
        assert_eq!(prefix_skip(&log, size, &hash).expect("read"), None);
        std::fs::write(&log, &version[..10]).expect("write");
        assert_eq!(prefix_skip(&log, size, &hash).expect("read"), None);
    }
}
