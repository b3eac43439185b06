//! The global store as Prodigy's own code wrote it before this storage
//! layer ("layout 0"): the only module that knows it.
//!
//! Most of layout 0 is already where the `Storage` API reads it (job
//! checkpoints, workflow checkpoints, mappings, event logs, resume locks):
//! those files stay where they are, untouched. The upgrade moves only what
//! is somewhere else (the doubly nested dead letters, the one-per-repository
//! `session_state.json`, rotated logs named `.gz` that are plain text, a
//! session's workflow checkpoints in a repository slot) and
//! keeps verbatim, under `legacy/.layout-0/<its layout-0 path>`, what the
//! API has no home for yet (reduce-phase checkpoints, the
//! retention archive, orphan registries, agent logs, crash leftovers, names
//! that are not valid identifiers). `worktrees/`, `config.yml` and anything
//! not on this allow-list are never moved, rewritten or deleted.
//!
//! Every move goes through the same transaction as a project's import
//! (`protocol`): staged, verified, published without overwriting, the
//! originals renamed into the upgrade's backup, and `layout.json` written
//! as the commit. `downgrade` gives the exact layout-0 tree back.
//!
//! See the table in `docs/storage-layout.md`, "Upgrading from Prodigy's own
//! layout".

// Reason: Prodigy wrote these exact lowercase names; another case is not its file.
#![allow(clippy::case_sensitive_file_extension_comparisons)]

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use storage_core::{ItemId, JobId, LockKey, RepoKey, SessionId, WorkflowId};
use storage_fs::{Layout, fsx};

use crate::copy::{mtime_of, open_regular};
use crate::error::{Error, Result};
use crate::manifest::{
    Category, Entry, Fate, Fingerprint, Manifest, Output, Produce, RelPath, Source, Special,
};
use crate::plan::rel_in_store;
use crate::supersede::Newer;

/// The repository label in an upgrade's manifest and report: one upgrade
/// spans every repository of the store.
pub(crate) const REPO_LABEL: &str = "<repo>";

/// What happens to one layout-0 file.
#[derive(Debug, PartialEq, Eq)]
enum Fate0 {
    /// Already where the API reads it: left exactly as it is.
    InPlace,
    /// Moved to `dest` (relative to the store root).
    Move(PathBuf, Category),
    /// Kept verbatim in the layout-0 area; the reason is reported.
    Preserve(&'static str),
    /// Not on the allow-list: never touched.
    NotOurs,
}

fn valid_repo(s: &str) -> bool {
    RepoKey::new(s).is_ok()
}

fn valid_job(s: &str) -> bool {
    JobId::new(s).is_ok()
}

/// Decides the fate of the file at `parts` (its path's components, from
/// the store root); `path` is where it is on disk. Only the shapes of the
/// table in `docs/storage-layout.md` are Prodigy's; anything else is not
/// ours and stays where it is.
fn fate(parts: &[&str], path: &Path) -> Result<Fate0> {
    const BAD_ID: &str = "a path component is not a valid identifier";
    let ids = |repo: &str, job: &str| valid_repo(repo) && valid_job(job);
    Ok(match parts {
        // The retention archive (real gzip); `events/archive/<job>/` is a
        // repository called `archive` and falls through to the next arm.
        ["events", "archive", name]
            if name.starts_with("events_archive_") && name.ends_with(".jsonl.gz") =>
        {
            Fate0::Preserve("the retention archive: the API reads no archive")
        }
        ["events", repo, job, name] if name.starts_with("events-") => {
            if !ids(repo, job) {
                Fate0::Preserve(BAD_ID)
            } else if name.ends_with(".jsonl") {
                Fate0::InPlace
            } else if let Some(stem) = name.strip_suffix(".gz")
                && stem.ends_with(".jsonl")
            {
                if is_real_gzip(path)? {
                    Fate0::Preserve("a compressed log: the store reads plain JSONL")
                } else {
                    // Rotated at 100 MB: plain JSONL despite the name.
                    Fate0::Move(
                        ["events", repo, job, stem].iter().collect(),
                        Category::Events,
                    )
                }
            } else {
                Fate0::NotOurs
            }
        }
        // The accident's two job slots name one job; dead letters of
        // another job nested there (J2 and J3 under J1) have no one home:
        // kept aside (moving both to J1's would collide).
        ["dlq", repo, job, "mapreduce", "dlq", inner, ..] if inner != job => Fate0::Preserve(
            "dead letters of another job nested under this job's directory: the API cannot tell \
             which job they belong to",
        ),
        ["dlq", repo, job, "mapreduce", "dlq", _, rest @ ..] => {
            let dest = match rest {
                ["items", item] if item.ends_with(".json") => Some(vec!["items", *item]),
                ["index.json"] => Some(vec!["index.json"]),
                _ => None,
            };
            match dest {
                None => Fate0::NotOurs,
                Some(_) if !ids(repo, job) => Fate0::Preserve(BAD_ID),
                Some(tail) if tail.len() == 2 && !is_item(tail[1]) => Fate0::Preserve(BAD_ID),
                Some(tail) => {
                    let mut dest: PathBuf = ["dlq", repo, job].iter().collect();
                    dest.extend(tail);
                    Fate0::Move(dest, Category::DeadLetters)
                }
            }
        }
        ["dlq", repo, job, "items", item] if item.ends_with(".json") => {
            if ids(repo, job) && is_item(item) {
                Fate0::InPlace
            } else {
                Fate0::Preserve(BAD_ID)
            }
        }
        ["dlq", repo, job, "index.json"] => {
            if ids(repo, job) {
                Fate0::InPlace
            } else {
                Fate0::Preserve(BAD_ID)
            }
        }
        ["state", "reduce_checkpoints", _, name] if name.starts_with("reduce-checkpoint-v") => {
            Fate0::Preserve("a reduce-phase checkpoint: the API has no home for it yet")
        }
        ["state", repo, "mapreduce", "jobs", job, name] => {
            let known =
                storage_fs::layout::checkpoint_version(name).is_some() || *name == "metadata.json";
            if name.starts_with("checkpoint-v") && name.ends_with(".tmp") {
                Fate0::Preserve("a crash leftover of a checkpoint write")
            } else if !known {
                Fate0::NotOurs
            } else if ids(repo, job) {
                Fate0::InPlace
            } else {
                Fate0::Preserve(BAD_ID)
            }
        }
        // Also `state/<session-id>/checkpoints/`: Prodigy's session-scoped
        // workflow checkpoints share the repository slot. The slot is a
        // session when the store says so (a unified session of that id, in
        // `sessions/`): then they go where the API reads a session's
        // workflow checkpoints. Otherwise the slot stays a repository key.
        ["state", slot, "checkpoints", name] if name.ends_with(".checkpoint.json") => {
            let wf = name.trim_end_matches(".checkpoint.json");
            if !valid_repo(slot) || WorkflowId::new(wf).is_err() {
                Fate0::Preserve(BAD_ID)
            } else if SessionId::new(*slot).is_ok() && is_unified_session(path, slot) {
                Fate0::Move(
                    ["sessions", slot, "checkpoints", name].iter().collect(),
                    Category::Checkpoints,
                )
            } else {
                Fate0::InPlace
            }
        }
        ["state", repo, "sessions", "session_state.json"] => {
            match (valid_repo(repo), session_id_of(path)) {
                (true, Some(id)) => Fate0::Move(
                    ["state", repo, "sessions", &format!("{id}.json")]
                        .iter()
                        .collect(),
                    Category::Sessions,
                ),
                (true, None) => Fate0::Preserve("a session state without a valid `session_id`"),
                (false, _) => Fate0::Preserve(BAD_ID),
            }
        }
        ["state", repo, "mappings", name] if name.ends_with(".json") => {
            let id = name.trim_end_matches(".json");
            if valid_repo(repo) && SessionId::new(id).is_ok() {
                Fate0::InPlace
            } else {
                Fate0::Preserve(BAD_ID)
            }
        }
        // Unified sessions: already where the API reads them (a torn one
        // too: the API's listing skips it and says so; it is not moved).
        ["sessions", name] if name.ends_with(".json") => {
            if SessionId::new(name.trim_end_matches(".json")).is_ok() {
                Fate0::InPlace
            } else {
                Fate0::Preserve(BAD_ID)
            }
        }
        ["sessions", id, "checkpoint.json"] => {
            if SessionId::new(*id).is_ok() {
                Fate0::InPlace
            } else {
                Fate0::Preserve(BAD_ID)
            }
        }
        ["resume_locks", name] if name.ends_with(".lock") => {
            if LockKey::new(name.trim_end_matches(".lock")).is_ok() {
                Fate0::InPlace
            } else {
                Fate0::Preserve(BAD_ID)
            }
        }
        ["orphaned_worktrees", _, name] if name.ends_with(".json") => {
            Fate0::Preserve("the orphaned-worktree registry: the API has no home for it yet")
        }
        ["logs", _, _, ..] => Fate0::Preserve("agent logs: the API has no home for them yet"),
        _ => Fate0::NotOurs,
    })
}

/// Whether the store holding `path` (`<root>/state/<slot>/checkpoints/<name>`)
/// has a unified session `slot` (`sessions/<slot>.json` or `sessions/<slot>/`).
fn is_unified_session(path: &Path, slot: &str) -> bool {
    let Some(root) = path.ancestors().nth(4) else {
        return false;
    };
    let sessions = root.join("sessions");
    [sessions.join(format!("{slot}.json")), sessions.join(slot)]
        .iter()
        .any(|p| std::fs::symlink_metadata(p).is_ok())
}

fn is_item(name: &str) -> bool {
    name.strip_suffix(".json")
        .is_some_and(|stem| ItemId::new(stem).is_ok())
}

fn session_id_of(path: &Path) -> Option<SessionId> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    if meta.len() > 64 * 1024 * 1024 {
        return None;
    }
    let (mut f, _) = open_regular(path).ok()?;
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut f, &mut bytes).ok()?;
    crate::plan::session_id_in(&bytes)
}

fn is_real_gzip(path: &Path) -> Result<bool> {
    let (mut f, _) = open_regular(path)?;
    let mut magic = [0u8; 2];
    let n = std::io::Read::read(&mut f, &mut magic).map_err(|e| Error::io("read", path, e))?;
    Ok(n == 2 && magic == [0x1f, 0x8b])
}

/// What a layout-0 store holds, by fate (for reports).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Layout0Counts {
    /// Files already where the API reads them (left in place).
    pub in_place: u64,
    /// Files moved to where the API reads them.
    pub moved: u64,
    /// Files kept verbatim under `legacy/.layout-0/`, by reason.
    pub preserved: BTreeMap<String, u64>,
    /// Files not on the allow-list (left in place).
    pub not_ours: u64,
    /// On a re-run (the store was upgraded before): files the store has no
    /// home for, left where older Prodigy code reads and writes them.
    pub left_for_older: u64,
    /// Current-layout documents that a newer layout-0 copy supersedes, as
    /// (layout-0 source, current document), relative to the root; they go
    /// aside first (see [`plan_superseded`]). A root served as it is holds
    /// both before its first upgrade too.
    #[serde(skip)]
    pub superseded: Vec<(PathBuf, PathBuf)>,
}

/// Whether this is the first upgrade of the store, or a re-run that
/// imports what older Prodigy code wrote since (the store has
/// `layout.json`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Run {
    /// No `layout.json`: everything of layout 0 is planned.
    First,
    /// `layout.json`: only what the store reads in a new place moves; what
    /// it has no home for stays where older code uses it.
    Again,
}

/// Plans the upgrade of the layout-0 store at `layout`, handing each moved
/// or preserved file to `sink` as an [`Entry`]; returns the manifest and
/// the counts. Never follows a link; never enters `worktrees/`.
pub(crate) fn plan(
    layout: &Layout,
    txid: &str,
    run: Run,
    sink: &mut dyn FnMut(&Entry) -> Result<()>,
) -> Result<(Manifest, Layout0Counts)> {
    let root = layout.root();
    // The records name the store by its real path: rollback and downgrade
    // never follow a link, and `--home` may well be one.
    let real_root = std::fs::canonicalize(root).map_err(|e| Error::io("resolve", root, e))?;
    let mut m = Manifest::new(txid, &real_root, &real_root, REPO_LABEL);
    let mut counts = Layout0Counts::default();
    let area = layout.layout_0_area();
    let mut dir_modes: BTreeMap<PathBuf, u32> = BTreeMap::new();
    let mut recorded: std::collections::HashSet<PathBuf> = std::collections::HashSet::new();
    // Directories holding anything that stays, or that publishing puts a
    // file into (and their ancestors): the others hold only files the
    // upgrade moves, and go into the backup with one rename each.
    let mut impure: std::collections::HashSet<PathBuf> = std::collections::HashSet::new();
    let taint = |rel: &Path, impure: &mut std::collections::HashSet<PathBuf>| {
        let mut p = Some(rel);
        while let Some(d) = p.filter(|d| !d.as_os_str().is_empty() && !impure.contains(*d)) {
            impure.insert(d.to_owned()); // and so are its ancestors, once it is
            p = d.parent();
        }
    };
    let mut index = 0;
    for top in Layout::LAYOUT_0_DATA_DIRS {
        let mut stack = vec![PathBuf::from(top)];
        while let Some(rel_dir) = stack.pop() {
            let dir = root.join(&rel_dir);
            let meta = match std::fs::symlink_metadata(&dir) {
                Ok(meta) => meta,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io("stat", &dir, e)),
            };
            if !meta.is_dir() {
                if meta.is_file() {
                    counts.not_ours += 1; // a file named like a data directory
                }
                continue;
            }
            dir_modes.insert(rel_dir.clone(), meta.mode() & 0o7777);
            let mut entries = fsx::read_dir_sorted(&dir)?;
            if entries.is_empty() {
                taint(&rel_dir, &mut impure);
            }
            entries.reverse(); // the stack pops them in name order
            for e in entries {
                let rel = rel_dir.join(&e.name);
                if e.file_type.is_dir() {
                    stack.push(rel);
                    continue;
                }
                if !e.file_type.is_file() {
                    taint(&rel_dir, &mut impure);
                    m.specials.push(Special {
                        rel: RelPath(rel.clone()),
                        kind: if e.file_type.is_symlink() {
                            "symlink".into()
                        } else {
                            "special file".into()
                        },
                        target: std::fs::read_link(&e.path).ok().map(RelPath),
                    });
                    continue;
                }
                let parts: Option<Vec<&str>> = rel.iter().map(|c| c.to_str()).collect();
                let fate = match parts {
                    Some(parts) => fate(&parts, &e.path)?,
                    None => Fate0::Preserve("a name that is not UTF-8"),
                };
                // A move onto its own path (a `session_state.json` whose
                // session is called `session_state`) is no move: moving it,
                // then retiring its source, left it only in the backup.
                let fate = match fate {
                    Fate0::Move(dest, _) if dest == rel => Fate0::InPlace,
                    // With `layout.json`, `state/<slot>/checkpoints/` is a
                    // repository's own (the store writes it): never moved
                    // into a session of the same name.
                    Fate0::Move(_, Category::Checkpoints) if run == Run::Again => Fate0::InPlace,
                    // A re-run moves nothing the store has no home for:
                    // older code, still running, reads and writes it there.
                    Fate0::Preserve(_) if run == Run::Again => {
                        counts.left_for_older += 1;
                        taint(&rel_dir, &mut impure);
                        continue;
                    }
                    f => f,
                };
                if let Fate0::Move(dest, _) = &fate
                    && crate::supersede::supersedes(&e.path, root, dest, false)?
                {
                    counts.superseded.push((rel.clone(), dest.clone()));
                }
                let (dest, category, produce) = match fate {
                    Fate0::InPlace => {
                        counts.in_place += 1;
                        taint(&rel_dir, &mut impure);
                        continue;
                    }
                    Fate0::NotOurs => {
                        counts.not_ours += 1;
                        taint(&rel_dir, &mut impure);
                        continue;
                    }
                    Fate0::Move(dest, category) => {
                        counts.moved += 1;
                        // The store is its own legacy tree: a directory that
                        // receives a published file does not hold only planned
                        // files when retiring comes (`dlq/<repo>/<job>/` gets
                        // `items/`), so it is not moved whole.
                        if let Some(d) = dest.parent() {
                            taint(d, &mut impure);
                        }
                        (dest, category, Produce::Copy)
                    }
                    Fate0::Preserve(reason) => {
                        *counts.preserved.entry(reason.to_owned()).or_default() += 1;
                        let abs = Layout::under(&area, &rel).expect("walked paths are relative");
                        (
                            rel_in_store(layout, &abs).0,
                            Category::LegacyPreserved,
                            Produce::Copy,
                        )
                    }
                };
                let meta = std::fs::symlink_metadata(&e.path)
                    .map_err(|err| Error::io("stat", &e.path, err))?;
                let entry = copy_entry(index, &rel, &meta, dest, produce, category);
                index += 1;
                // Only the directories that hold moved files are recorded:
                // emptied ones are removed, and a downgrade recreates them.
                let mut p = rel.parent();
                while let Some(d) = p.filter(|d| !d.as_os_str().is_empty()) {
                    if !recorded.insert(d.to_owned()) {
                        break; // and so are its ancestors
                    }
                    if let Some(mode) = dir_modes.get(d) {
                        m.dirs.push((RelPath(d.to_owned()), *mode));
                    }
                    p = d.parent();
                }
                sink(&entry)?;
            }
        }
    }
    m.user_files = counts.not_ours;
    m.kept_dirs = dir_modes.keys().map(|d| RelPath(d.clone())).collect();
    // The largest directories holding only planned files (never a whole
    // top-level data directory: Prodigy expects those to exist).
    m.pure_dirs = m
        .dirs
        .iter()
        .map(|(d, _)| d.as_path())
        .filter(|d| d.components().count() > 1 && !impure.contains(*d))
        .filter(|d| {
            d.parent()
                .is_none_or(|p| p.components().count() <= 1 || impure.contains(p))
        })
        .map(|d| RelPath(d.to_owned()))
        .collect();
    for (reason, n) in &counts.preserved {
        m.warn(format!(
            "{n} file(s) kept verbatim under `legacy/.layout-0/` (their layout-0 paths): {reason}"
        ));
    }
    if counts.in_place > 0 {
        m.warn(format!(
            "{} file(s) were already where the store reads them and stay there",
            counts.in_place
        ));
    }
    if counts.left_for_older > 0 {
        m.warn(format!(
            "{} file(s) the store has no home for (reduce checkpoints, archives, orphan \
             registries, agent logs, names it cannot address) stay where older Prodigy code \
             reads them",
            counts.left_for_older
        ));
    }
    Ok((m, counts))
}

/// The entry that copies (or links) the file at `rel`, as `meta` describes
/// it, to `dest`: one source, one output of the same size.
pub(crate) fn copy_entry(
    index: usize,
    rel: &Path,
    meta: &std::fs::Metadata,
    dest: PathBuf,
    produce: Produce,
    category: Category,
) -> Entry {
    Entry {
        index,
        sources: vec![Source {
            rel: RelPath(rel.to_owned()),
            size: meta.len(),
            mtime: mtime_of(meta),
            mode: meta.mode() & 0o7777,
            hash: None,
            split: false,
            split_lines: None,
            fingerprint: Fingerprint::of(meta),
            linked: false,
            left: None,
            skip: None,
        }],
        outputs: vec![Output {
            dest: RelPath(dest),
            produce,
            category,
            // A byte-for-byte copy: known before staging (dry runs).
            size: Some(meta.len()),
            hash: None,
            lines: None,
            fate: Fate::Pending,
        }],
    }
}

/// Plans moving the current-layout documents that newer layout-0 copies
/// supersede (`pairs`: layout-0 path, destination, both relative to the
/// root) to `legacy/.layout-0/superseded/<txid>/<dest>`; see
/// [`crate::supersede::plan`].
pub(crate) fn plan_superseded(
    layout: &Layout,
    txid: &str,
    pairs: &[(PathBuf, PathBuf)],
    sink: &mut dyn FnMut(&Entry) -> Result<()>,
) -> Result<Manifest> {
    let root = layout.root();
    let real_root = std::fs::canonicalize(root).map_err(|e| Error::io("resolve", root, e))?;
    let newer: Vec<Newer> = pairs
        .iter()
        .map(|(source, dest)| Newer {
            source: root.join(source),
            dest: dest.clone(),
            rewrite: false,
        })
        .collect();
    crate::supersede::plan(
        layout,
        &layout.layout_0_area().join("superseded").join(txid),
        &Manifest::new(txid, &real_root, &real_root, REPO_LABEL),
        &newer,
        "an older Prodigy wrote at their layout-0 paths",
        sink,
    )
}

/// Whether the upgraded store at `layout` holds files an older Prodigy
/// wrote since at layout-0 paths the store reads in a new place (what a
/// re-run of the upgrade imports): doubly nested dead letters, a
/// repository's `session_state.json` naming a session, a rotated log named
/// `.gz` (a session's workflow checkpoints in a repository slot are the
/// repository's own once the store has `layout.json`). Reads
/// directory listings and `stat`s, never a file's content but a
/// `session_state.json`'s; writes nothing.
pub(crate) fn has_leftovers(layout: &Layout) -> Result<bool> {
    let root = layout.root();
    let dirs_in = |dir: &Path| -> Result<Vec<fsx::Entry>> {
        Ok(fsx::read_dir_sorted(dir)?
            .into_iter()
            .filter(|e| e.file_type.is_dir())
            .collect())
    };
    let has_file_under = |dir: &Path| -> Result<bool> {
        let mut stack = vec![dir.to_owned()];
        while let Some(d) = stack.pop() {
            for e in fsx::read_dir_sorted(&d)? {
                if e.file_type.is_dir() {
                    stack.push(e.path);
                } else {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    };
    for repo in dirs_in(&root.join("dlq"))? {
        for job in dirs_in(&repo.path)? {
            // `mapreduce/dlq/<the same job>/`: another job's letters nested
            // there stay (a re-run leaves what it cannot place).
            let nested = job.path.join("mapreduce").join("dlq").join(&job.name);
            if has_file_under(&nested)? {
                return Ok(true);
            }
        }
    }
    for slot in dirs_in(&root.join("state"))? {
        let state = slot.path.join("sessions").join("session_state.json");
        if session_id_of(&state).is_some_and(|id| id.as_str() != "session_state") {
            return Ok(true);
        }
    }
    for repo in dirs_in(&root.join("events"))? {
        for job in dirs_in(&repo.path)? {
            for f in fsx::read_dir_sorted(&job.path)? {
                let name = f.name.to_string_lossy();
                if f.file_type.is_file()
                    && name.starts_with("events-")
                    && name.ends_with(".jsonl.gz")
                    && !is_real_gzip(&f.path)?
                {
                    return Ok(true);
                }
            }
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A superseded copy is decided again when its transaction plans it: a
    /// store write since the probe makes the store's copy the newer one,
    /// and it is not moved aside.
    #[test]
    fn a_store_copy_written_since_the_probe_is_not_set_aside() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        let (source, dest) = (
            PathBuf::from("dlq/api/job-1/mapreduce/dlq/job-1/items/item-1.json"),
            PathBuf::from("dlq/api/job-1/items/item-1.json"),
        );
        for rel in [&dest, &source] {
            std::fs::create_dir_all(root.join(rel).parent().expect("parent")).expect("mkdir");
        }
        let at = |rel: &Path, secs: u64, text: &str| {
            std::fs::write(root.join(rel), text).expect("write");
            std::fs::File::options()
                .write(true)
                .open(root.join(rel))
                .expect("open")
                .set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
                .expect("mtime");
        };
        at(&dest, 1_700_000_001, r#"{"v": "store, older"}"#);
        at(&source, 1_700_000_002, r#"{"v": "layout 0, newer"}"#);
        let layout = Layout::new(root);
        let pairs = vec![(source.clone(), dest.clone())];
        let mut planned = Vec::new();
        plan_superseded(&layout, "t1", &pairs, &mut |e| {
            planned.push(e.sources[0].rel.0.clone());
            Ok(())
        })
        .expect("plan");
        assert_eq!(
            planned,
            std::slice::from_ref(&dest),
            "the older store copy goes aside"
        );
        // The store writes it again after the probe: now it is the newer.
        at(&dest, 1_700_000_003, r#"{"v": "store, newest"}"#);
        let mut planned = Vec::new();
        plan_superseded(&layout, "t2", &pairs, &mut |e| {
            planned.push(e.sources[0].rel.0.clone());
            Ok(())
        })
        .expect("plan");
        assert!(planned.is_empty(), "the newer store copy stays");
    }
}
