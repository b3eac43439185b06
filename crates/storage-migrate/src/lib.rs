//! One-way, verified, all-or-nothing import of Prodigy's legacy per-project
//! storage (`<project>/.prodigy/`) into the global store.
//!
//! Prodigy's own 2025 migration deleted users' files. This crate exists to
//! make that impossible: it moves **only** the files on an allow-list of what
//! Prodigy really wrote ([`legacy`]), copies bytes instead of re-serializing
//! them, proves the copy before publishing it, publishes without overwriting,
//! keeps the legacy files in a backup, and can put them back byte for byte.
//!
//! # Main entry points
//!
//! - [`ensure_migrated`]: what Prodigy calls at start-up. Cheap when there is
//!   nothing to do, safe when many processes start at once, and it never
//!   fails the caller: problems come back as [`AutoOutcome::Failed`].
//! - [`migrate`] (with `dry_run`), [`rollback`], [`verify`], [`status`],
//!   [`backups`] and [`prune_backups`]: what `prodigy-storage` runs.
//!
//! # The protocol
//!
//! lock → plan → journal → stage (copy into `migrations/<repo>/<txid>/staging`
//! on the store's file system, one `syncfs`) → verify (re-hash sources and
//! staged files; re-split logs) → publish (`RENAME_NOREPLACE`) → retire
//! (legacy files into the backup) → commit. The journal names the phase; a
//! crash is recovered by the next run under the same lock: undone before
//! publishing, finished after. See `docs/migration.md`.
//!
//! # Invariants (checked by the fault tests)
//!
//! - I1 no loss: every legacy storage byte is in the project, the backup or
//!   the store, verified. I2 all-or-nothing, I3 idempotent re-runs, I4
//!   nothing outside the legacy storage files, the backup and the store is
//!   read through a link, written or deleted, I5 0700/0600, I6 no debris after
//!   recovery, I7 the tool stays usable.
//!
//! # Example
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use storage_migrate::{MigrateOptions, Outcome, migrate};
//!
//! let dir = tempfile::tempdir()?;
//! let project = dir.path().join("api");
//! std::fs::create_dir_all(project.join(".prodigy"))?;
//! std::fs::write(project.join(".prodigy/session_state.json"), r#"{"session_id": "session-1"}"#)?;
//! std::fs::write(project.join(".prodigy/config.yml"), "user: file\n")?;
//!
//! let store = storage_fs::FsStorage::open(dir.path().join("store"))?;
//! let report = migrate(&store, &project, &MigrateOptions::default())?;
//! assert_eq!(report.outcome, Outcome::Migrated);
//! assert_eq!(report.user_files_untouched, 1);
//! assert!(project.join(".prodigy/config.yml").exists());
//! assert!(!project.join(".prodigy/session_state.json").exists());
//! # Ok(()) }
//! ```
//!
//! # Limitations
//!
//! - Linux, macOS and FreeBSD (Unix only): no-replace renames, `flock`, and
//!   one `storage_fs::fsx::Batch` per transaction, which on Linux makes a
//!   phase durable with one `syncfs` and elsewhere with an `fsync` per file
//!   and per changed directory (`F_FULLFSYNC` on macOS); slower there, as
//!   safe.
//! - The pre-2025-09-01 `.mmm/` directory is not migrated (it never was).

mod copy;
mod copy_store;
mod error;
pub mod fault;
#[doc(hidden)]
pub mod fuzzing;
mod layout0;
pub mod legacy;
mod manifest;
mod marker;
mod plan;
mod progress;
mod protocol;
mod report;
mod split;
mod supersede;
mod upgrade;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use storage_core::RepoKey;
use storage_fs::{FsStorage, Layout};

pub use copy_store::{
    COPY_REPORT_SCHEMA_VERSION, CopyConflict, CopyOptions, CopyReport, SkippedItem, copy_store,
};
pub use error::{Error, Result};
pub use manifest::{Category, HistoryEntry, Phase, Special};
pub use plan::LEGACY_DIR_NAME;
pub use progress::{NoProgress, Progress, Step};
pub use report::{
    CategoryReport, ConflictReport, MigrationReport, Outcome, REPORT_SCHEMA_VERSION,
    RollbackReport, VerifyReport, shell_quote,
};
pub use upgrade::{
    DowngradeOptions, InterruptedUpgrade, UpgradeOptions, downgrade, interrupted_upgrade, upgrade,
    upgrade_due,
};

use crate::copy::{AtPath, probe};
use crate::manifest::{Fate, Summary};
use crate::protocol::{Paths, Tx};

/// Options for [`migrate`].
#[derive(Clone, Copy)]
pub struct MigrateOptions<'a> {
    /// Plan only: report what would happen and change nothing.
    pub dry_run: bool,
    /// How long to wait for another process migrating the same project.
    pub wait: Duration,
    /// Where progress goes.
    pub progress: &'a dyn Progress,
}

impl Default for MigrateOptions<'_> {
    fn default() -> Self {
        Self {
            dry_run: false,
            wait: Duration::from_secs(120),
            progress: &NoProgress,
        }
    }
}

/// Migrates the legacy storage of `project` into `store`.
///
/// Returns [`Outcome::NothingToMigrate`] (and changes nothing) when there is
/// no legacy storage. A crash of an earlier run is recovered first.
///
/// Besides the project's own `.prodigy/`, every legacy directory found
/// below it (found by a bounded walk that never follows links: an old Prodigy run from `services/worker/`
/// left `services/worker/.prodigy/`) is imported into the same repository,
/// each by its own transaction, in path order, under one lock; their
/// reports are in [`MigrationReport::subdirectories`], and one `rollback`
/// undoes them all.
pub fn migrate(
    store: &FsStorage,
    project: &Path,
    opts: &MigrateOptions<'_>,
) -> Result<MigrationReport> {
    let (project, legacy) = plan::check_project(project, store.root())?;
    let subdirs = plan::discover(&project, store.root());
    if opts.dry_run {
        let repo = store.proposed_repo_key(&project)?;
        let paths = Paths::new(store.layout(), &repo);
        let preview = |legacy: &Path, pending: Option<String>| {
            // Not a real transaction id: the one the real run uses is made then.
            let (m, summary) = plan_summary(&project, legacy, store, &repo, "<txid>", true)?;
            let outcome = if summary.sources == 0 {
                Outcome::NothingToMigrate
            } else {
                Outcome::DryRun
            };
            Ok::<_, Error>(report::from_manifest(
                store, &paths, &m, &summary, outcome, pending,
            ))
        };
        let pending = protocol::read_journal(&paths)?.map(|j| {
            format!(
                "an interrupted {:?} of {} will be recovered first",
                j.phase, j.txid
            )
        });
        let mut r = preview(&legacy, pending)?;
        for sub in &subdirs {
            r.subdirectories.push(preview(sub, None)?);
        }
        if r.all().any(|r| r.outcome == Outcome::DryRun) {
            r.outcome = Outcome::DryRun;
        }
        return Ok(r);
    }
    // Another store's unfinished migration of this project comes first.
    marker::check(store, &legacy, "migrate")?;
    for sub in &subdirs {
        marker::check(store, sub, "migrate")?;
    }
    // A project never registered here, with no legacy storage: answer
    // without writing anything (not even the store's own directory). A
    // registered one is decided under its lock: a rollback or migration
    // running now is waited for, and a crash's leftovers are swept.
    let registered = store.find_repo_key(&project)?;
    if registered.is_none() && subdirs.is_empty() && !plan::has_legacy_storage(&legacy)? {
        let repo = store.proposed_repo_key(&project)?;
        let paths = Paths::new(store.layout(), &repo);
        let (m, summary) = plan_summary(&project, &legacy, store, &repo, "none", false)?;
        return Ok(report::from_manifest(
            store,
            &paths,
            &m,
            &summary,
            Outcome::NothingToMigrate,
            None,
        ));
    }
    // Refuse unreadable or unmovable legacy files before anything changes
    // (a file moved away meanwhile by a concurrent migration is no refusal).
    plan::check_access(&legacy)?;
    for sub in &subdirs {
        plan::check_access(sub)?;
    }
    store.create()?;
    let repo = store.repo_key(&project)?;
    let tx = Tx {
        store,
        owner: protocol::Owner::Project(repo.clone()),
        paths: Paths::new(store.layout(), &repo),
        progress: opts.progress,
        batch: storage_fs::fsx::Batch::new(store.root())?,
    };
    let _lock = tx.lock(opts.wait)?;
    fault::point("after-lock");
    let recovery = tx.recover_tx()?;
    let recovered = recovery.as_ref().map(|r| r.what.clone());
    // One transaction per legacy directory; with several, each manifest
    // names the run (the first one's id) so that rollback undoes them together.
    // A run whose setting aside (`supersede`) committed but whose import
    // did not (a crash between them, finished by recovery just now): this
    // import joins it, so that one rollback undoes both.
    let mut run: Option<String> = unfinished_run(&tx.paths)?;
    let several = !subdirs.is_empty();
    // What setting the store's older copies aside said, for this run's report.
    let mut set_aside: Vec<String> = Vec::new();
    let mut import = |legacy: &Path| -> Result<Option<(manifest::Manifest, Summary)>> {
        // A process that waited for the lock usually finds the work done:
        // it answers without writing a journal.
        if !plan::has_legacy_storage(legacy)? {
            return Ok(None);
        }
        let imported = imported_logs(&tx.paths, legacy)?;
        // Documents an older Prodigy wrote again since the store's copies
        // were written are imported as the newer versions: the store's
        // older copies go aside first, in a transaction of the same run
        // (one rollback undoes both), since publishing never overwrites.
        let newer = supersede::probe_project(&project, legacy, store.layout(), &repo, &imported)?;
        if !newer.is_empty() {
            let txid = plan::new_txid();
            let group = run.get_or_insert_with(|| txid.clone()).clone();
            let real_root = std::fs::canonicalize(store.root())
                .map_err(|e| Error::io("resolve", store.root(), e))?;
            let done = tx.run(&txid, |sink| {
                let mut m = supersede::plan(
                    store.layout(),
                    &store
                        .layout()
                        .legacy_dir(&repo)
                        .join("superseded")
                        .join(&txid),
                    &manifest::Manifest::new(&txid, &project, &real_root, repo.as_str()),
                    &newer,
                    "an older Prodigy wrote again in the project since",
                    sink,
                )?;
                m.run = Some(group.clone());
                Ok(m)
            })?;
            if let Some((m, summary)) = done {
                let r =
                    report::from_manifest(store, &tx.paths, &m, &summary, Outcome::Migrated, None);
                tx.commit(&m, &summary, &r)?;
                set_aside.extend(m.warnings);
            }
        }
        let txid = plan::new_txid();
        let group =
            (several || run.is_some()).then(|| run.get_or_insert_with(|| txid.clone()).clone());
        tx.run(&txid, |sink| {
            let mut m = plan::plan(
                &project,
                legacy,
                store.layout(),
                &repo,
                &txid,
                false,
                &imported,
                sink,
            )?;
            m.run = group;
            Ok(m)
        })
    };
    // Each transaction commits before the next begins (one journal).
    let root = match import(&legacy)? {
        Some((m, summary)) => {
            let r = report::from_manifest(
                store,
                &tx.paths,
                &m,
                &summary,
                Outcome::Migrated,
                recovered.clone(),
            );
            tx.commit(&m, &summary, &r)?;
            Some(r)
        }
        None => None,
    };
    let mut subreports = Vec::new();
    let mut committed: Vec<String> = root.iter().filter_map(|r| r.txid.clone()).collect();
    for sub in &subdirs {
        let partly = |e: Error, committed: &[String]| {
            if committed.is_empty() {
                e
            } else {
                Error::PartlyMigrated {
                    dir: sub.clone(),
                    committed: committed.to_vec(),
                    source: Box::new(e),
                }
            }
        };
        let imported = import(sub).map_err(|e| partly(e, &committed))?;
        if let Some((m, summary)) = imported {
            let r = report::from_manifest(store, &tx.paths, &m, &summary, Outcome::Migrated, None);
            tx.commit(&m, &summary, &r)
                .map_err(|e| partly(e, &committed))?;
            committed.extend(r.txid.clone());
            subreports.push(r);
        }
    }
    // A set-aside copy whose newer version the import did not publish (it
    // left the project meanwhile) goes back where the store reads it.
    set_aside.extend(supersede::restore_unreplaced(store, &tx.paths, &tx.batch)?);
    let mut report = match root {
        Some(mut r) => {
            r.warnings.extend(set_aside);
            r
        }
        // The migration that recovery just finished is what this run did:
        // its report, not "nothing to migrate".
        None => {
            if let Some(finished) = recovery.and_then(|r| r.finished) {
                let m = protocol::read_manifest(&tx.paths, &finished)?;
                let summary = manifest::summarize(&tx.paths.entries(&finished))?;
                report::from_manifest(store, &tx.paths, &m, &summary, Outcome::Migrated, recovered)
            } else {
                let (m, summary) = plan_summary(&project, &legacy, store, &repo, "none", false)?;
                let mut r = report::from_manifest(
                    store,
                    &tx.paths,
                    &m,
                    &summary,
                    Outcome::NothingToMigrate,
                    recovered,
                );
                r.warnings.extend(set_aside);
                if subreports.is_empty() {
                    return Ok(r);
                }
                r.outcome = Outcome::Migrated;
                r
            }
        }
    };
    report.subdirectories = subreports;
    give_store_to_its_owner(store)?;
    Ok(report)
}

/// Run as root on a store that belongs to someone else (`sudo` with the
/// user's `PRODIGY_HOME`), gives what this run created there (owned by
/// root) to the store's owner: a root-owned file in a user's store makes
/// their Prodigy fail with "Permission denied". Never follows a link, and
/// leaves `worktrees/` (git's, not ours) alone.
fn give_store_to_its_owner(store: &FsStorage) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    if !rustix::process::geteuid().is_root() {
        return Ok(());
    }
    let root = store.root();
    let Ok(meta) = std::fs::symlink_metadata(root) else {
        return Ok(());
    };
    let (uid, gid) = (meta.uid(), meta.gid());
    if uid == 0 {
        return Ok(());
    }
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for e in storage_fs::fsx::read_dir_sorted(&dir)? {
            if dir == root && e.name == "worktrees" {
                continue;
            }
            let m = std::fs::symlink_metadata(&e.path)
                .map_err(|err| Error::io("stat", &e.path, err))?;
            if m.uid() == 0 {
                std::os::unix::fs::lchown(&e.path, Some(uid), Some(gid))
                    .map_err(|err| Error::io("change the owner of", &e.path, err))?;
            }
            if e.file_type.is_dir() {
                stack.push(e.path);
            }
        }
    }
    Ok(())
}

/// Plans without writing anything, counting the entries instead.
fn plan_summary(
    project: &Path,
    legacy: &Path,
    store: &FsStorage,
    repo: &RepoKey,
    txid: &str,
    preview: bool,
) -> Result<(manifest::Manifest, Summary)> {
    let mut summary = Summary::default();
    let imported = imported_logs(&Paths::new(store.layout(), repo), legacy)?;
    let area = store.layout().legacy_dir(repo);
    let mut newer = 0u64;
    let mut m = plan::plan(
        project,
        legacy,
        store.layout(),
        repo,
        txid,
        preview,
        &imported,
        &mut |e| {
            if preview {
                // What publishing will find: conflicts, and newer versions.
                let (marked, supersedes) =
                    supersede::preview(e, legacy, store.layout(), &area, txid)?;
                newer += u64::from(supersedes);
                summary.add(marked.as_ref().unwrap_or(e));
            } else {
                summary.add(e);
            }
            Ok(())
        },
    )?;
    if newer > 0 {
        m.warn(format!(
            "{newer} document(s) in the store are older than the versions an older Prodigy wrote \
             again in the project since: the store's copies would be kept under \
             `legacy/{repo}/superseded/`, and the newer versions imported in their place"
        ));
    }
    Ok((m, summary))
}

/// What [`ensure_migrated`] did.
#[derive(Debug)]
#[non_exhaustive]
pub enum AutoOutcome {
    /// No legacy storage and nothing to recover (the common case).
    NothingToDo,
    /// Legacy storage was migrated (or an interrupted migration finished).
    Migrated(Box<MigrationReport>),
    /// The project is not one to migrate (e.g. a worktree inside the store),
    /// or its latest migration was rolled back by hand: not redone until
    /// someone runs `migrate` (the reason names the command).
    Skipped {
        /// Why.
        reason: String,
    },
    /// Migration failed. What failed left everything of its own as it was;
    /// an [`Error::PartlyMigrated`] says which transactions of the run
    /// (the project's own, earlier sub-directories) had committed and stay
    /// migrated. Prodigy can go on using the store and should show this
    /// error to the user.
    Failed(Error),
}

/// Prodigy's start-up hook: migrates `project` if it has legacy storage.
///
/// Cheap when there is nothing to do: a `stat` of `.prodigy`, and when it
/// exists one directory listing (plus the listing of any storage directory),
/// and a lookup of the project's repository registration. Several processes
/// may call it at once: one migrates, the others wait for it and then find
/// nothing to do. It never returns an error; see [`AutoOutcome`].
#[must_use]
pub fn ensure_migrated(store: &FsStorage, project: &Path) -> AutoOutcome {
    // The store an older Prodigy wrote is upgraded first (once; concurrent
    // start-ups wait for the one that does it).
    match upgrade::upgrade_due(store) {
        Ok(false) => {}
        Ok(true) => {
            let opts = UpgradeOptions {
                automatic: true,
                ..UpgradeOptions::default()
            };
            if let Err(e) = upgrade::upgrade(store, &opts) {
                return AutoOutcome::Failed(e);
            }
        }
        Err(e) => return AutoOutcome::Failed(e),
    }
    let legacy = project.join(LEGACY_DIR_NAME);
    let has_legacy = match plan::has_legacy_storage(&legacy) {
        Ok(b) => b,
        Err(e) => return AutoOutcome::Failed(e),
    };
    let repo = store.find_repo_key(project).ok().flatten();
    let pending = repo
        .as_ref()
        .is_some_and(|repo| Paths::new(store.layout(), repo).journal().exists());
    if !has_legacy && !pending {
        // (A pending journal is still finished: a crash interrupted a
        // migration after the legacy files were moved out.)
        return AutoOutcome::NothingToDo;
    }
    let rolling_back = repo.as_ref().is_some_and(|r| {
        protocol::read_journal(&Paths::new(store.layout(), r))
            .ok()
            .flatten()
            .is_some_and(|j| j.phase == Phase::RollingBack)
    });
    if rolling_back {
        // A rollback a person started was interrupted: finish it, and then
        // respect it (do not migrate the restored files again).
        if let Err(e) = rollback(store, project, &RollbackOptions::default()) {
            return AutoOutcome::Failed(e);
        }
    }
    if let Some(reason) = repo
        .filter(|_| !pending || rolling_back)
        .and_then(|r| rolled_back_by_hand(store, &r, project))
    {
        return AutoOutcome::Skipped { reason };
    }
    if let Err(e @ Error::Refused { .. }) = plan::check_project(project, store.root()) {
        return AutoOutcome::Skipped {
            reason: e.to_string(),
        };
    }
    match migrate(store, project, &MigrateOptions::default()) {
        Ok(r) if r.outcome == Outcome::NothingToMigrate && r.recovered.is_none() => {
            AutoOutcome::NothingToDo
        }
        Ok(r) => AutoOutcome::Migrated(Box::new(r)),
        Err(e) => AutoOutcome::Failed(e),
    }
}

/// Why the start-up hook leaves `repo` alone, if its latest recorded event is
/// a rollback: a person undid the migration (often because something went
/// wrong), so it is not redone behind their back. An explicit `migrate`
/// records a new migration, after which the hook works again.
fn rolled_back_by_hand(store: &FsStorage, repo: &RepoKey, project: &Path) -> Option<String> {
    let history = protocol::read_history(&Paths::new(store.layout(), repo)).ok()?;
    let last = history.last()?;
    (last.event == "rolled_back").then(|| {
        format!(
            "migration {} of this project was rolled back, so it is not migrated automatically; \
             to migrate it again: prodigy-storage --home {} migrate {}",
            last.txid,
            report::shell_quote(store.root()),
            report::shell_quote(project)
        )
    })
}

/// A rollback refused for a missing backup, when the whole backup directory
/// is gone: `backups prune` deleted it (what `verify` reports as pruned), so
/// say that, not "missing or damaged ... may have been pruned".
fn pruned_backup(e: Error, backup: &Path, txid: &str) -> Error {
    match e {
        Error::RollbackRefused { paths, .. }
            if paths.first().is_some_and(|p| p.starts_with(backup)) && !backup.exists() =>
        {
            Error::RollbackRefused {
                reason: format!(
                    "the backup of migration {txid} was pruned (`prodigy-storage backups prune` deleted `{}`), \
                     so this migration can no longer be rolled back. The migrated data is still in the store, \
                     where Prodigy uses it",
                    backup.display()
                ),
                paths,
            }
        }
        e => e,
    }
}

/// Options for [`rollback`].
#[derive(Clone, Copy)]
pub struct RollbackOptions<'a> {
    /// The migration to undo; the latest one if `None` (only the latest can be undone).
    pub txid: Option<&'a str>,
    /// Roll back even if published files changed, moving the changed ones aside.
    pub force: bool,
    /// How long to wait for another process migrating the same project.
    pub wait: Duration,
    /// Where progress goes.
    pub progress: &'a dyn Progress,
}

impl Default for RollbackOptions<'_> {
    fn default() -> Self {
        Self {
            txid: None,
            force: false,
            wait: Duration::from_secs(120),
            progress: &NoProgress,
        }
    }
}

fn registered(store: &FsStorage, project: &Path) -> Result<(PathBuf, RepoKey)> {
    let canonical = std::fs::canonicalize(project).map_err(|e| Error::Refused {
        action: "roll back",
        path: project.to_owned(),
        reason: format!("the project directory cannot be read ({e})"),
    })?;
    let repo = store
        .find_repo_key(&canonical)?
        .ok_or_else(|| Error::Refused {
            action: "roll back",
            path: canonical.clone(),
            reason: "this project was never migrated into this store (check --home / PRODIGY_HOME)"
                .into(),
        })?;
    Ok((canonical, repo))
}

/// The migrations of a repository that have not been rolled back, oldest first.
/// The split logs of `legacy` that migrations not rolled back imported and
/// left in the project (they grew after verification,
/// [`manifest::Left::InProject`]), with the size and hash of the version
/// imported; the newest import of a path wins (it covers the older ones).
fn imported_logs(paths: &Paths, legacy: &Path) -> Result<plan::Imported> {
    let mut out = plan::Imported::new();
    for txid in live_migrations(paths)? {
        let Some(m) = protocol::read_manifest_if_any(paths, &txid)? else {
            continue;
        };
        if m.legacy_dir.0 != legacy {
            continue;
        }
        manifest::for_each_chunk(&paths.entries(&txid), |chunk| {
            for s in chunk.iter().flat_map(|e| &e.sources) {
                if s.split
                    && s.left == Some(manifest::Left::InProject)
                    && let Some(hash) = &s.hash
                {
                    out.insert(s.rel.0.clone(), (s.size, hash.clone()));
                }
            }
            Ok(())
        })?;
    }
    Ok(out)
}

/// The run of the latest migration of `paths`, when that migration only
/// set the store's older copies aside (`supersede`) and the import that
/// follows it in the same run has not committed.
fn unfinished_run(paths: &Paths) -> Result<Option<String>> {
    let Some(latest) = latest_migration(paths)? else {
        return Ok(None);
    };
    let m = protocol::read_manifest(paths, &latest)?;
    Ok(if m.in_store { m.run } else { None })
}

pub(crate) fn live_migrations(paths: &Paths) -> Result<Vec<String>> {
    let mut live: Vec<String> = Vec::new();
    for e in protocol::read_history(paths)? {
        match e.event.as_str() {
            "migrated" => live.push(e.txid),
            "rolled_back" => live.retain(|t| *t != e.txid),
            _ => {}
        }
    }
    Ok(live)
}

/// The latest migration (or upgrade) of these records that has not been
/// rolled back (or downgraded).
pub(crate) fn latest_migration(paths: &Paths) -> Result<Option<String>> {
    Ok(live_migrations(paths)?.pop())
}

/// The latest migration not rolled back and the others of its run (one
/// `migrate` that imported sub-directories too), newest first.
pub(crate) fn latest_run(paths: &Paths) -> Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    let mut run = None;
    for txid in live_migrations(paths)?.into_iter().rev() {
        let m = protocol::read_manifest(paths, &txid)?;
        if !out.is_empty() && (run.is_none() || m.run != run) {
            break;
        }
        run = m.run;
        out.push(txid);
    }
    Ok(out)
}

/// Undoes the latest migration of `project`: restores the legacy files
/// byte-identical (modes and mtimes too) and removes what it published.
pub fn rollback(
    store: &FsStorage,
    project: &Path,
    opts: &RollbackOptions<'_>,
) -> Result<RollbackReport> {
    let (project, repo) = registered(store, project)?;
    let tx = Tx {
        store,
        owner: protocol::Owner::Project(repo.clone()),
        paths: Paths::new(store.layout(), &repo),
        progress: opts.progress,
        batch: storage_fs::fsx::Batch::new(store.root())?,
    };
    marker::check(store, &project.join(LEGACY_DIR_NAME), "roll back")?;
    let _lock = tx.lock(opts.wait)?;
    let interrupted = protocol::read_journal(&tx.paths)?;
    if let Some(j) = interrupted
        .as_ref()
        .filter(|j| matches!(j.phase, Phase::Publishing | Phase::Retiring))
    {
        // A migration that stopped half-way is undone, not finished first:
        // undoing needs no space in the store (finishing may be what failed).
        let run = protocol::read_manifest(&tx.paths, &j.txid)?.run;
        let mut report = undo_unfinished(&tx, &project, &j.txid, opts)?;
        // The import of a run whose first transaction set the store's older
        // copies aside (`supersede`): that one is undone too, as one
        // rollback undoes a whole run.
        if unfinished_run(&tx.paths)?.is_some_and(|r| run.as_ref() == Some(&r))
            && let Some(latest) = latest_migration(&tx.paths)?
        {
            let m = protocol::read_manifest(&tx.paths, &latest)?;
            let changed = tx.rollback_check(&m)?;
            if !changed.is_empty() && !opts.force {
                return Err(Error::RollbackRefused {
                    reason: format!(
                        "undid the unfinished migration {}, but not {latest}, which set the \
                         store's older copies aside for it: {} of them changed since (first `{}`). \
                         To keep them, do not roll back further. To roll back anyway, run \
                         rollback again with --force",
                        report.txid,
                        changed.len(),
                        changed[0].display()
                    ),
                    paths: changed,
                });
            }
            let undone = tx.start_rollback(&m, opts.force)?;
            report.also_undone.push(RollbackReport {
                schema_version: REPORT_SCHEMA_VERSION,
                also_undone: Vec::new(),
                kept_newer: Vec::new(),
                not_read_by_older: 0,
                txid: latest.clone(),
                project: project.clone(),
                restored_files: undone.summary.sources,
                restored_bytes: undone.summary.source_bytes,
                removed_from_store: undone.removed,
                kept_changed: undone.kept,
                displaced: if opts.force { changed } else { Vec::new() },
                backup: tx.paths.backup(&latest),
                recovered: None,
            });
        }
        return Ok(report);
    }
    let recovered = tx.recover()?;
    if let Some(j) = interrupted.filter(|j| j.phase == Phase::RollingBack) {
        // Recovery just finished the rollback this command was asked for.
        let summary = manifest::summarize(&tx.paths.entries(&j.txid))?;
        return Ok(RollbackReport {
            schema_version: REPORT_SCHEMA_VERSION,
            also_undone: Vec::new(),
            kept_newer: Vec::new(),
            not_read_by_older: 0,
            txid: j.txid.clone(),
            project,
            restored_files: summary.sources,
            restored_bytes: summary.source_bytes,
            removed_from_store: summary.published,
            kept_changed: Vec::new(),
            displaced: Vec::new(),
            backup: tx.paths.backup(&j.txid),
            recovered,
        });
    }
    let latest = latest_migration(&tx.paths)?.ok_or_else(|| Error::RollbackRefused {
        reason: format!("`{}` has no migration to roll back", project.display()),
        paths: Vec::new(),
    })?;
    if let Some(want) = opts.txid
        && want != latest
        && !latest_run(&tx.paths)?.iter().any(|t| t == want)
    {
        return Err(Error::RollbackRefused {
            reason: format!(
                "only the latest migration can be rolled back; roll back {latest} first"
            ),
            paths: Vec::new(),
        });
    }
    // One `migrate` that imported sub-directories' `.prodigy/` too ran one
    // transaction each: all of them are undone, newest first, after every
    // one has been checked.
    let mut group = Vec::new();
    for txid in latest_run(&tx.paths)? {
        let m = protocol::read_manifest(&tx.paths, &txid)?;
        group.push((txid, m));
    }
    let mut checked = Vec::new();
    // What the later transactions of the run published, which undoing them
    // removes first: an earlier one that set the store's older copies
    // aside (`supersede`) restores them there.
    let mut freed = std::collections::BTreeSet::new();
    for (txid, m) in group {
        tracing::info!(project = %m.project.as_path().display(), txid = %txid, "rolling back migration");
        let (changed, _) = tx
            .rollback_check_freeing(&m, false, &freed)
            .map_err(|e| pruned_backup(e, &tx.paths.backup(&txid), &txid))?;
        manifest::for_each_chunk(&tx.paths.entries(&txid), |chunk| {
            for o in chunk.iter().flat_map(|e| &e.outputs) {
                if o.fate == manifest::Fate::Published {
                    freed.insert(o.dest.0.clone());
                }
            }
            Ok(())
        })?;
        if !changed.is_empty() && !opts.force {
            return Err(Error::RollbackRefused {
                reason: format!(
                    "{} file(s) that migration {txid} published have changed since (first `{}`), \
                     probably because Prodigy ran with them. Rolling back would lose those changes. \
                     To keep them, do not roll back. To roll back anyway, run with --force: the changed \
                     files are then moved to `{}` instead of being removed",
                    changed.len(),
                    changed[0].display(),
                    store
                        .layout()
                        .legacy_dir(&repo)
                        .join("rollback-displaced")
                        .join(&txid)
                        .display()
                ),
                paths: changed,
            });
        }
        checked.push((txid, m, changed));
    }
    let mut reports = Vec::new();
    for (txid, m, changed) in checked {
        let undone = tx.start_rollback(&m, opts.force)?;
        let summary = &undone.summary;
        reports.push(RollbackReport {
            schema_version: REPORT_SCHEMA_VERSION,
            also_undone: Vec::new(),
            kept_newer: Vec::new(),
            not_read_by_older: 0,
            txid: txid.clone(),
            project: project.clone(),
            restored_files: summary.sources,
            restored_bytes: summary.source_bytes,
            removed_from_store: undone.removed,
            kept_changed: undone.kept,
            displaced: if opts.force { changed } else { Vec::new() },
            backup: tx.paths.backup(&txid),
            recovered: None,
        });
    }
    give_store_to_its_owner(store)?;
    let mut reports = reports.into_iter();
    let mut first = reports.next().ok_or_else(|| Error::RollbackRefused {
        reason: format!("`{}` has no migration to roll back", project.display()),
        paths: Vec::new(),
    })?;
    first.recovered = recovered;
    first.also_undone = reports.collect();
    Ok(first)
}

/// Rolls back a migration that stopped after it began publishing.
fn undo_unfinished(
    tx: &Tx<'_>,
    project: &Path,
    txid: &str,
    opts: &RollbackOptions<'_>,
) -> Result<RollbackReport> {
    // Space first: what a crash left half-copied, and the reserve.
    tx.sweep_temps()?;
    tx.release_reserve(txid)?;
    let m = protocol::read_manifest(&tx.paths, txid)?;
    let changed = tx.rollback_check(&m)?;
    if !changed.is_empty() && !opts.force {
        return Err(Error::RollbackRefused {
            reason: format!(
                "{} file(s) that the unfinished migration {txid} published have changed since (first `{}`); \
                 rolling back would lose those changes. Run `prodigy-storage migrate` to finish the migration \
                 instead, or roll back with --force to move the changed files aside",
                changed.len(),
                changed[0].display()
            ),
            paths: changed,
        });
    }
    let undone = tx.start_rollback(&m, opts.force)?;
    let summary = &undone.summary;
    Ok(RollbackReport {
        schema_version: REPORT_SCHEMA_VERSION,
        also_undone: Vec::new(),
        kept_newer: Vec::new(),
        not_read_by_older: 0,
        txid: txid.to_owned(),
        project: project.to_owned(),
        restored_files: summary.sources,
        restored_bytes: summary.source_bytes,
        removed_from_store: undone.removed,
        kept_changed: undone.kept,
        displaced: if opts.force { changed } else { Vec::new() },
        backup: tx.paths.backup(txid),
        recovered: Some(format!(
            "undid unfinished migration {txid} (it had begun publishing)"
        )),
    })
}

/// Checks the latest migration of `project`: its published files, its
/// backup, and whether legacy storage appeared again.
pub fn verify(store: &FsStorage, project: &Path) -> Result<VerifyReport> {
    let canonical = std::fs::canonicalize(project).map_err(|e| Error::Refused {
        action: "verify",
        path: project.to_owned(),
        reason: format!("the project directory cannot be read ({e})"),
    })?;
    let mut r = VerifyReport {
        schema_version: REPORT_SCHEMA_VERSION,
        project: canonical.clone(),
        ..VerifyReport::default()
    };
    if let Ok((_, legacy_dir)) = plan::check_project(&canonical, store.root()) {
        let repo = store.proposed_repo_key(&canonical)?;
        let subdirs = plan::discover(&canonical, store.root());
        for legacy in std::iter::once(&legacy_dir).chain(&subdirs) {
            let (_, summary) = plan_summary(&canonical, legacy, store, &repo, "verify", false)?;
            r.legacy_files_left += summary.sources;
            if summary.sources > 0 {
                r.problems.push(format!(
                    "{} legacy storage file(s) in `{}` are not migrated yet; run `prodigy-storage migrate`",
                    summary.sources,
                    legacy.display()
                ));
            }
        }
    }
    // The problems so far are legacy files waiting in the project.
    let waiting = r.problems.len();
    let Some(repo) = store.find_repo_key(&canonical)? else {
        return Ok(r);
    };
    r.repo = Some(repo.to_string());
    let paths = Paths::new(store.layout(), &repo);
    let rolled_back = protocol::read_history(&paths)?
        .pop()
        .filter(|e| e.event == "rolled_back")
        .map(|e| e.txid);
    if rolled_back.is_some() {
        // A rollback on request put them back: that is its result, not a
        // problem (the report says it was rolled back, and how many wait).
        r.problems.drain(..waiting);
    }
    if let Some(j) = protocol::read_journal(&paths)? {
        r.problems.push(format!(
            "migration {} was interrupted ({:?}); run `prodigy-storage migrate` to finish or undo it",
            j.txid, j.phase
        ));
    }
    r.rolled_back = rolled_back;
    let run = latest_run(&paths)?;
    let Some(latest) = run.first() else {
        return Ok(r);
    };
    r.txid = Some(latest.clone());
    // Every transaction of the latest run (one per legacy directory).
    for txid in &run {
        verify_tx(store, &paths, txid, &mut r)?;
    }
    Ok(r)
}

/// Checks one migration's published files and backup into `r`.
fn verify_tx(store: &FsStorage, paths: &Paths, txid: &str, r: &mut VerifyReport) -> Result<()> {
    let m = protocol::read_manifest(paths, txid)?;
    tracing::info!(project = %m.project.as_path().display(), repo = %m.repo, txid = %txid, "verifying migration");
    let backup = paths.backup(txid);
    let pruned = !backup.exists();
    r.backup_pruned |= pruned;
    let damaged_before = r.backup_damaged.len();
    manifest::for_each_chunk(&paths.entries(txid), |chunk| {
        for o in chunk.iter().flat_map(|e| &e.outputs) {
            let rel = match &o.fate {
                Fate::Published | Fate::AlreadyPresent => &o.dest,
                Fate::Conflict { alt } => alt,
                Fate::Pending => continue,
            };
            let path = Layout::under(store.root(), rel.as_path()).unwrap_or_default();
            match probe(&path)? {
                AtPath::File(h) if Some(h.to_hex().to_string()) == o.hash => {
                    r.published_intact += 1;
                }
                AtPath::Missing => r.published_missing += 1,
                _ => r.published_changed += 1,
            }
        }
        if !pruned {
            for s in chunk.iter().flat_map(|e| &e.sources) {
                match &s.left {
                    None => {}
                    // Still in the project: counted among the legacy files left.
                    Some(manifest::Left::InProject | manifest::Left::Gone) => continue,
                    Some(manifest::Left::Displaced { at }) => {
                        let path = Layout::under(store.root(), at.as_path()).unwrap_or_default();
                        if std::fs::symlink_metadata(&path).is_err() {
                            r.problems.push(format!(
                                "`{}`, kept there because it changed during migration {txid}, is missing",
                                path.display()
                            ));
                        }
                        continue;
                    }
                }
                let path = Layout::under(&backup, s.rel.as_path()).unwrap_or_default();
                match probe(&path)? {
                    AtPath::File(h) if Some(h.to_hex().to_string()) == s.hash => {
                        r.backup_intact += 1;
                    }
                    _ => r.backup_damaged.push(path),
                }
            }
        }
        Ok(())
    })?;
    if let Some(first) = r.backup_damaged.get(damaged_before) {
        r.problems.push(format!(
            "{} backup file(s) of migration {txid} are missing or damaged, first `{}`; rollback is not possible",
            r.backup_damaged.len() - damaged_before,
            first.display()
        ));
    }
    Ok(())
}

/// What `status` shows about one project.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProjectStatus {
    /// JSON shape version.
    pub schema_version: u32,
    /// The project (canonical).
    #[serde(serialize_with = "report::lossless")]
    pub project: PathBuf,
    /// Its repository key, if registered.
    pub repo: Option<String>,
    /// The key it would get, if not registered yet.
    pub proposed_repo: Option<String>,
    /// What a migration would do now (a dry-run report); `None` if refused.
    pub legacy: Option<MigrationReport>,
    /// Why the project cannot be migrated, if it cannot.
    pub refused: Option<String>,
    /// Migrations and rollbacks so far.
    pub history: Vec<HistoryEntry>,
    /// An interrupted migration or rollback, if any.
    pub pending: Option<String>,
}

/// The migration state of `project` in `store`; changes nothing.
pub fn status(store: &FsStorage, project: &Path) -> Result<ProjectStatus> {
    let mut s = ProjectStatus {
        schema_version: REPORT_SCHEMA_VERSION,
        project: std::fs::canonicalize(project).unwrap_or_else(|_| project.to_owned()),
        repo: None,
        proposed_repo: None,
        legacy: None,
        refused: None,
        history: Vec::new(),
        pending: None,
    };
    match migrate(
        store,
        project,
        &MigrateOptions {
            dry_run: true,
            ..MigrateOptions::default()
        },
    ) {
        Ok(r) => s.legacy = Some(r),
        Err(e @ Error::Refused { .. }) => s.refused = Some(e.to_string()),
        Err(e) => return Err(e),
    }
    if let Some(repo) = store.find_repo_key(&s.project).ok().flatten() {
        let paths = Paths::new(store.layout(), &repo);
        s.history = protocol::read_history(&paths)?;
        s.pending = protocol::read_journal(&paths)?.map(|j| format!("{:?} of {}", j.phase, j.txid));
        s.repo = Some(repo.to_string());
    } else {
        s.proposed_repo = store
            .proposed_repo_key(&s.project)
            .ok()
            .map(|k| k.to_string());
    }
    Ok(s)
}

/// One backup of legacy files.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BackupInfo {
    /// The repository.
    pub repo: String,
    /// The migration it belongs to.
    pub txid: String,
    /// Its directory.
    #[serde(serialize_with = "report::lossless")]
    pub path: PathBuf,
    /// Files in it.
    pub files: u64,
    /// Bytes in it.
    pub bytes: u64,
    /// Whether that migration was rolled back since.
    pub rolled_back: bool,
    /// Age in seconds (from the backup directory's modification time).
    pub age_secs: u64,
}

/// The `repo` of an upgrade's backup in [`backups`]: the upgrades of a
/// layout-0 store span every repository.
pub const UPGRADE_BACKUPS: &str = "(upgrade)";

/// Every backup in the store, oldest first within each repository; the
/// backups of upgrades from layout 0 last, as repository
/// [`UPGRADE_BACKUPS`].
pub fn backups(store: &FsStorage) -> Result<Vec<BackupInfo>> {
    let mut out = Vec::new();
    for entry in storage_fs::fsx::read_dir_sorted(&store.root().join("migrations"))? {
        let Ok(repo) = RepoKey::new(entry.name.to_string_lossy()) else {
            continue;
        };
        backups_in(&Paths::new(store.layout(), &repo), repo.as_str(), &mut out)?;
    }
    backups_in(
        &protocol::Owner::Store.paths(store.layout()),
        UPGRADE_BACKUPS,
        &mut out,
    )?;
    Ok(out)
}

/// The backups of the transactions recorded in `paths`, as `label`'s.
fn backups_in(paths: &Paths, label: &str, out: &mut Vec<BackupInfo>) -> Result<()> {
    let history = protocol::read_history(paths)?;
    for tx in storage_fs::fsx::read_dir_sorted(&paths.dir)? {
        let txid = tx.name.to_string_lossy().into_owned();
        let backup = paths.backup(&txid);
        let Ok(meta) = std::fs::symlink_metadata(&backup) else {
            continue;
        };
        let (mut files, mut bytes) = (0, 0);
        let mut stack = vec![backup.clone()];
        while let Some(d) = stack.pop() {
            for e in storage_fs::fsx::read_dir_sorted(&d)? {
                if e.file_type.is_dir() {
                    stack.push(e.path);
                } else {
                    files += 1;
                    bytes += std::fs::symlink_metadata(&e.path).map_or(0, |m| m.len());
                }
            }
        }
        let age_secs = meta
            .modified()
            .ok()
            .and_then(|m| SystemTime::now().duration_since(m).ok())
            .map_or(0, |d| d.as_secs());
        out.push(BackupInfo {
            repo: label.to_owned(),
            rolled_back: history
                .iter()
                .any(|h| h.txid == txid && h.event == "rolled_back"),
            txid,
            path: backup,
            files,
            bytes,
            age_secs,
        });
    }
    Ok(())
}

/// A backup that [`prune_backups`] kept, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KeptBackup {
    /// The backup.
    #[serde(flatten)]
    pub backup: BackupInfo,
    /// Why it was kept.
    pub reason: String,
}

/// What [`prune_backups`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PruneReport {
    /// Removed (or, with `dry_run`, to be removed).
    pub pruned: Vec<BackupInfo>,
    /// Old enough, but kept.
    pub kept: Vec<KeptBackup>,
}

/// Removes backups older than `older_than` (all of them with `Duration::ZERO`).
///
/// Each repository's migration lock is taken before anything is decided,
/// so no migration or rollback is using a backup while it goes. Kept: the
/// backup of a migration in progress, and, unless `force`, the backup of
/// each repository's latest migration not rolled back (the only way to roll
/// it back) and a backup that holds bytes found nowhere else (legacy files whose content is neither in
/// the project nor published unchanged in the store: a split event log,
/// a rewritten `metadata.json`, a file changed since in the store). After
/// pruning, that migration cannot be rolled back.
pub fn prune_backups(
    store: &FsStorage,
    older_than: Duration,
    dry_run: bool,
    force: bool,
) -> Result<PruneReport> {
    let mut report = PruneReport::default();
    for b in backups(store)? {
        if b.age_secs < older_than.as_secs() {
            continue;
        }
        let upgrade = b.repo == UPGRADE_BACKUPS;
        let owner = if upgrade {
            protocol::Owner::Store
        } else {
            protocol::Owner::Project(
                RepoKey::new(b.repo.as_str()).map_err(storage_core::Error::from)?,
            )
        };
        let tx = Tx {
            store,
            paths: owner.paths(store.layout()),
            owner,
            progress: &NoProgress,
            batch: storage_fs::fsx::Batch::new(store.root())?,
        };
        let _lock = tx.lock(Duration::from_secs(120))?;
        if protocol::read_journal(&tx.paths)?.is_some_and(|j| j.txid == b.txid) {
            report.kept.push(KeptBackup {
                backup: b,
                reason: "its migration is in progress".into(),
            });
            continue;
        }
        if !force {
            let only_here = tx.files_only_in_backup(&b.txid)?;
            if only_here > 0 {
                report.kept.push(KeptBackup {
                    backup: b,
                    reason: format!(
                        "{only_here} file(s) in it are found nowhere else (not in the project, not unchanged in the store); \
                         prune with --force to delete them anyway"
                    ),
                });
                continue;
            }
        }
        // A downgrade undoes every upgrade not undone yet: each of their
        // backups is needed for it.
        if !force && upgrade && live_migrations(&tx.paths)?.contains(&b.txid) {
            report.kept.push(KeptBackup {
                reason: format!(
                    "it is needed to downgrade the store (a downgrade undoes every upgrade \
                     run, {} included); prune with --force to delete it anyway (the store can \
                     then no longer be downgraded)",
                    b.txid
                ),
                backup: b,
            });
            continue;
        }
        // The latest migration is undone with every transaction of its
        // run (one `migrate` that imported sub-directories ran one each):
        // each of their backups is needed to roll it back.
        if !force && !upgrade && latest_run(&tx.paths)?.contains(&b.txid) {
            report.kept.push(KeptBackup {
                reason: format!(
                    "it is needed to roll back migration {}, the latest of repository `{}`; \
                     prune with --force to delete it anyway (that migration can then no longer be rolled back)",
                    b.txid, b.repo
                ),
                backup: b,
            });
            continue;
        }
        if !dry_run {
            protocol::remove_dir_all_if_exists(&b.path)?;
            storage_fs::fsx::fsync_dir(&tx.paths.tx(&b.txid))?;
        }
        report.pruned.push(b);
    }
    Ok(report)
}

/// The crash points of the protocol, for the fault-injection tests.
pub use fault::CRASH_POINTS;
