//! Upgrading the store Prodigy's own code wrote (layout 0) to the current
//! layout, and the way back (`downgrade`): the same transaction as a
//! project's import, fed by `layout0`. See `docs/migration.md`, "Upgrading
//! a store Prodigy wrote".

use std::time::Duration;

use storage_fs::FsStorage;

use crate::error::{Error, Result};
use crate::manifest::{self, HistoryEntry, Manifest, Phase, Summary};
use crate::progress::{NoProgress, Progress};
use crate::protocol::{self, Owner, Tx};
use crate::report::{self, MigrationReport, Outcome, REPORT_SCHEMA_VERSION, RollbackReport};
use crate::{layout0, plan, shell_quote};

/// Options for [`upgrade`].
#[derive(Clone, Copy)]
pub struct UpgradeOptions<'a> {
    /// Plan only: report what would happen and change nothing.
    pub dry_run: bool,
    /// How long to wait for another process upgrading the store.
    pub wait: Duration,
    /// Where progress goes.
    pub progress: &'a dyn Progress,
    /// Called by Prodigy's start-up rather than by a person: a store that a
    /// person downgraded is then left alone (refused, with the command).
    pub automatic: bool,
}

impl Default for UpgradeOptions<'_> {
    fn default() -> Self {
        Self {
            dry_run: false,
            wait: Duration::from_secs(120),
            progress: &NoProgress,
            automatic: false,
        }
    }
}

/// Options for [`downgrade`].
#[derive(Clone, Copy)]
pub struct DowngradeOptions<'a> {
    /// Downgrade even if upgraded files changed since, moving those aside.
    pub force: bool,
    /// How long to wait for another process upgrading the store.
    pub wait: Duration,
    /// Where progress goes.
    pub progress: &'a dyn Progress,
}

impl Default for DowngradeOptions<'_> {
    fn default() -> Self {
        Self {
            force: false,
            wait: Duration::from_secs(120),
            progress: &NoProgress,
        }
    }
}

fn tx<'a>(store: &'a FsStorage, progress: &'a dyn Progress) -> Result<Tx<'a>> {
    Ok(Tx {
        store,
        owner: Owner::Store,
        paths: Owner::Store.paths(store.layout()),
        progress,
        batch: storage_fs::fsx::Batch::new(store.root())?,
    })
}

/// An upgrade or downgrade of the store that was interrupted (a crash, a
/// kill, a full disk): what its journal says.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct InterruptedUpgrade {
    /// Its transaction.
    pub txid: String,
    /// `staging`, `publishing`, `retiring` or `committed` (an upgrade), or
    /// `rolling_back` (a downgrade).
    pub phase: String,
    /// Whether it is a downgrade.
    pub downgrade: bool,
}

/// The upgrade or downgrade of the store that was interrupted, if one was:
/// `upgrade` (or any writing command, or Prodigy's start-up) finishes or
/// undoes an upgrade, `downgrade` finishes a downgrade. Reads the journal
/// only.
pub fn interrupted_upgrade(store: &FsStorage) -> Result<Option<InterruptedUpgrade>> {
    let paths = Owner::Store.paths(store.layout());
    Ok(protocol::read_journal(&paths)?.map(|j| InterruptedUpgrade {
        phase: serde_json::to_value(j.phase)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
        downgrade: j.phase == crate::manifest::Phase::RollingBack,
        txid: j.txid,
    }))
}

/// Whether the store needs [`upgrade`]: it holds layout-0 data and no
/// `layout.json`, or it was upgraded and an older Prodigy wrote files
/// since at layout-0 paths the store reads in a new place
/// (`layout0::has_leftovers`), or an upgrade was interrupted. Reads
/// directory listings; writes nothing.
pub fn upgrade_due(store: &FsStorage) -> Result<bool> {
    let paths = Owner::Store.paths(store.layout());
    Ok(paths.journal().exists() || due(store)?)
}

/// What `upgrade` would do, and under which rules.
fn due(store: &FsStorage) -> Result<bool> {
    Ok(match run_kind(store)? {
        layout0::Run::First => storage_fs::has_layout_0_data(store.root())?,
        layout0::Run::Again => layout0::has_leftovers(store.layout())?,
    })
}

/// A first upgrade (no `layout.json`) or a re-run over an upgraded store.
fn run_kind(store: &FsStorage) -> Result<layout0::Run> {
    Ok(if storage_fs::layout_version(store.root())?.is_some() {
        layout0::Run::Again
    } else {
        layout0::Run::First
    })
}

fn downgraded_by_request(tx: &Tx<'_>) -> Result<bool> {
    Ok(protocol::read_history(&tx.paths)?
        .last()
        .is_some_and(|h| h.event == "rolled_back"))
}

/// The refusal of an automatic upgrade of a store a person downgraded.
fn downgraded(root: &std::path::Path) -> Error {
    Error::Refused {
        action: "upgrade",
        path: root.to_owned(),
        reason: "it was downgraded to layout 0 on request; Prodigy's start-up leaves it so. \
                 Run `prodigy-storage upgrade` to upgrade it again"
            .into(),
    }
}

fn finish_report(store: &FsStorage, mut r: MigrationReport) -> MigrationReport {
    if r.outcome == Outcome::Migrated {
        r.rollback_command = Some(format!(
            "prodigy-storage --home {} downgrade",
            shell_quote(store.root())
        ));
    }
    r
}

/// Upgrades the store Prodigy's own code wrote (layout 0) to the current
/// layout, moving what is not where the `Storage` API reads it (see
/// `layout0`), and writing `layout.json` as the commit. Cheap and
/// write-free when there is nothing to upgrade. Safe when many processes
/// start at once: one upgrades, the others wait and find it done.
///
/// It can run any number of times. Over a store upgraded before, it imports
/// what an older Prodigy (still running beside the new one) wrote since at
/// the layout-0 paths the store reads in a new place, and leaves what the
/// store has no home for where that older code reads it. A document an
/// older Prodigy wrote again since, newer than the store's copy, is
/// imported as the newer version: the store's older copy goes to
/// `legacy/.layout-0/superseded/<txid>/` first, in a transaction of its
/// own; an older layout-0 copy is kept aside as a conflict. Nothing is
/// dropped, and `downgrade` undoes every run.
pub fn upgrade(store: &FsStorage, opts: &UpgradeOptions<'_>) -> Result<MigrationReport> {
    let tx = tx(store, opts.progress)?;
    let root = store.root();
    if !upgrade_due(store)? && !opts.dry_run {
        // Upgraded already (or nothing of layout 0): a few `stat`s, no walk.
        let m = Manifest::new("none", root, root, layout0::REPO_LABEL);
        return Ok(report::from_manifest(
            store,
            &tx.paths,
            &m,
            &Summary::default(),
            Outcome::NothingToMigrate,
            None,
        ));
    }
    if opts.dry_run {
        let txid = plan::new_txid();
        let mut summary = Summary::default();
        let area = store.layout().layout_0_area();
        let (m, _) = layout0::plan(store.layout(), &txid, run_kind(store)?, &mut |e| {
            // What publishing will find: a conflict where the store's copy
            // is not older (a newer layout-0 copy is already in the plan's
            // warnings, as superseding the store's).
            let (marked, _) =
                crate::supersede::preview(e, store.root(), store.layout(), &area, &txid)?;
            summary.add(marked.as_ref().unwrap_or(e));
            Ok(())
        })?;
        let outcome = if due(store)? && summary.outputs > 0 {
            Outcome::DryRun
        } else {
            Outcome::NothingToMigrate
        };
        return Ok(report::from_manifest(
            store, &tx.paths, &m, &summary, outcome, None,
        ));
    }
    if opts.automatic && downgraded_by_request(&tx)? {
        return Err(downgraded(root));
    }
    let _lock = tx.lock(opts.wait)?;
    crate::fault::point("after-lock");
    let recovery = tx.recover_tx()?;
    let recovered = recovery.as_ref().map(|r| r.what.clone());
    if opts.automatic && downgraded_by_request(&tx)? {
        // Recovery may just have finished a downgrade a person asked for.
        return Err(downgraded(root));
    }
    if !due(store)? {
        // Another process upgraded it while this one waited, or recovery
        // just finished an interrupted upgrade.
        if let Some(finished) = recovery.and_then(|r| r.finished) {
            let m = protocol::read_manifest(&tx.paths, &finished)?;
            let summary = manifest::summarize(&tx.paths.entries(&finished))?;
            let r =
                report::from_manifest(store, &tx.paths, &m, &summary, Outcome::Migrated, recovered);
            return Ok(finish_report(store, r));
        }
        return Ok(nothing(store, &tx, recovered));
    }
    let run = run_kind(store)?;
    {
        // The store's copies that newer layout-0 copies supersede go aside
        // first, in a transaction of their own, so that the import below
        // publishes the newer ones without overwriting anything (a root
        // served as it is holds both before its first upgrade too).
        let (_, counts) = layout0::plan(store.layout(), "probe", run, &mut |_| Ok(()))?;
        if !counts.superseded.is_empty() {
            let txid = plan::new_txid();
            let done = tx.run(&txid, |sink| {
                layout0::plan_superseded(store.layout(), &txid, &counts.superseded, sink)
            })?;
            if let Some((m, summary)) = done {
                let r =
                    report::from_manifest(store, &tx.paths, &m, &summary, Outcome::Migrated, None);
                tx.commit(&m, &summary, &r)?;
            }
        }
    }
    let txid = plan::new_txid();
    let mut in_place = None;
    let done = tx.run(&txid, |sink| {
        let (m, counts) = layout0::plan(store.layout(), &txid, run, sink)?;
        in_place = Some((m.clone(), counts));
        Ok(m)
    })?;
    let Some((m, summary)) = done else {
        if run == layout0::Run::Again {
            // Nothing to move after all (what the probe saw stays, or
            // another process moved it): nothing to record.
            return Ok(nothing(store, &tx, recovered));
        }
        // Everything is already where the store reads it: the upgrade is
        // `layout.json` alone, recorded so that a downgrade removes it.
        let (m, _) = in_place.expect("planned");
        tx.record_upgrade_in_place(&txid)?;
        store.stamp_layout_version()?;
        let mut m = m;
        m.txid.clone_from(&txid);
        let r = report::from_manifest(
            store,
            &tx.paths,
            &m,
            &Summary::default(),
            Outcome::Migrated,
            recovered,
        );
        return Ok(finish_report(store, r));
    };
    let r = report::from_manifest(store, &tx.paths, &m, &summary, Outcome::Migrated, recovered);
    let r = finish_report(store, r);
    tx.commit(&m, &summary, &r)?;
    Ok(r)
}

/// The report of an upgrade with nothing to do.
fn nothing(store: &FsStorage, tx: &Tx<'_>, recovered: Option<String>) -> MigrationReport {
    let root = store.root();
    let m = Manifest::new("none", root, root, layout0::REPO_LABEL);
    report::from_manifest(
        store,
        &tx.paths,
        &m,
        &Summary::default(),
        Outcome::NothingToMigrate,
        recovered,
    )
}

/// Gives back the layout-0 store an [`upgrade`] started from, byte for byte
/// (modes and modification times too), so that an older Prodigy works
/// again; `layout.json` is removed last. Refuses, changing nothing of that
/// run, when a file it moved changed since (`force`: moved aside instead,
/// as rollback does); runs are undone newest first, and a refusal by an
/// earlier run names the later ones already undone. Prodigy's start-up then leaves the store alone until
/// `upgrade` is run by hand.
///
/// A store upgraded more than once (re-runs importing what an older
/// Prodigy wrote since) is given back through every run, newest first;
/// the report is the newest's, with the others in `also_undone`.
pub fn downgrade(store: &FsStorage, opts: &DowngradeOptions<'_>) -> Result<RollbackReport> {
    let mut first = downgrade_one(store, opts)?;
    let paths = Owner::Store.paths(store.layout());
    while protocol::read_journal(&paths)?.is_none() && crate::latest_migration(&paths)?.is_some() {
        // An earlier run can refuse (a file it moved changed since) after
        // the later ones were undone: those stay undone, and the refusal
        // says so, so that `--force` is run knowing where things are.
        let next = match downgrade_one(store, opts) {
            Ok(next) => next,
            Err(Error::RollbackRefused { reason, paths }) => {
                let done: Vec<&str> = std::iter::once(first.txid.as_str())
                    .chain(first.also_undone.iter().map(|r| r.txid.as_str()))
                    .collect();
                return Err(Error::RollbackRefused {
                    reason: format!(
                        "the later upgrade run(s) {} were undone (their files are back at their \
                         layout-0 paths), then an earlier run refused: {reason}",
                        done.join(", ")
                    ),
                    paths,
                });
            }
            Err(e) => return Err(e),
        };
        first.also_undone.push(next);
    }
    first.not_read_by_older = not_read_by_older(store)?;
    Ok(first)
}

/// How many files are in places only the current layout has, which an
/// older Prodigy never reads (see [`RollbackReport::not_read_by_older`]).
fn not_read_by_older(store: &FsStorage) -> Result<u64> {
    use storage_fs::fsx::read_dir_sorted;
    fn count(dir: &std::path::Path) -> Result<u64> {
        let mut n = 0;
        let mut stack = vec![dir.to_owned()];
        while let Some(d) = stack.pop() {
            for e in read_dir_sorted(&d)? {
                if e.file_type.is_dir() {
                    stack.push(e.path);
                } else {
                    n += 1;
                }
            }
        }
        Ok(n)
    }
    let root = store.root();
    let mut n = count(&root.join("ext"))? + count(&root.join("archive"))?;
    for s in read_dir_sorted(&root.join("sessions"))? {
        if s.file_type.is_dir() {
            n += count(&s.path.join("checkpoints"))?;
        }
    }
    for r in read_dir_sorted(&root.join("state"))? {
        if r.file_type.is_dir() {
            for f in read_dir_sorted(&r.path.join("sessions"))? {
                if f.file_type.is_file() && f.name != "session_state.json" {
                    n += 1;
                }
            }
        }
    }
    Ok(n)
}

/// Undoes the latest upgrade not undone yet (see [`downgrade`]).
fn downgrade_one(store: &FsStorage, opts: &DowngradeOptions<'_>) -> Result<RollbackReport> {
    let tx = tx(store, opts.progress)?;
    let root = store.root().to_owned();
    let _lock = tx.lock(opts.wait)?;
    let journal = protocol::read_journal(&tx.paths)?;
    let unfinished = journal
        .clone()
        .filter(|j| matches!(j.phase, Phase::Publishing | Phase::Retiring));
    let recovered = if unfinished.is_some() {
        tx.sweep_temps()?;
        None
    } else {
        tx.recover()?
    };
    if let Some(j) = journal.filter(|j| j.phase == Phase::RollingBack) {
        // Recovery just finished the downgrade this command was asked for.
        let summary = manifest::summarize(&tx.paths.entries(&j.txid))?;
        return Ok(RollbackReport {
            schema_version: REPORT_SCHEMA_VERSION,
            also_undone: Vec::new(),
            kept_newer: Vec::new(),
            not_read_by_older: 0,
            txid: j.txid.clone(),
            project: root,
            restored_files: summary.sources,
            restored_bytes: summary.source_bytes,
            removed_from_store: summary.published,
            kept_changed: Vec::new(),
            displaced: Vec::new(),
            backup: tx.paths.backup(&j.txid),
            recovered,
        });
    }
    if unfinished.is_none()
        && crate::latest_migration(&tx.paths)?.is_none()
        && let Some(done) = protocol::read_history(&tx.paths)?.pop()
        && storage_fs::layout_version(&root)?.is_none()
    {
        // Already downgraded (a re-run after a kill late in a downgrade).
        return Ok(RollbackReport {
            schema_version: REPORT_SCHEMA_VERSION,
            also_undone: Vec::new(),
            kept_newer: Vec::new(),
            not_read_by_older: 0,
            txid: done.txid.clone(),
            project: root,
            restored_files: 0,
            restored_bytes: 0,
            removed_from_store: 0,
            kept_changed: Vec::new(),
            displaced: Vec::new(),
            backup: tx.paths.backup(&done.txid),
            recovered: Some(format!(
                "nothing to do: upgrade {} was already downgraded",
                done.txid
            )),
        });
    }
    let txid = match &unfinished {
        Some(j) => j.txid.clone(),
        None => crate::latest_migration(&tx.paths)?.ok_or_else(|| Error::RollbackRefused {
            reason: format!(
                "the store at `{}` has no upgrade from layout 0 to undo (no record in `{}`)",
                root.display(),
                tx.paths.dir.display()
            ),
            paths: Vec::new(),
        })?,
    };
    if unfinished.is_some() {
        tx.release_reserve(&txid)?;
    }
    // Only a manifest that does not exist means an upgrade that moved
    // nothing; one that cannot be read (damaged, or of a newer build's
    // format) stops the downgrade before anything changes.
    let Some(m) = protocol::read_manifest_if_any(&tx.paths, &txid)? else {
        // An upgrade that moved nothing: it only wrote `layout.json`.
        tx.record_downgrade(&txid)?;
        store.remove_layout_version()?;
        return Ok(RollbackReport {
            schema_version: REPORT_SCHEMA_VERSION,
            also_undone: Vec::new(),
            kept_newer: Vec::new(),
            not_read_by_older: 0,
            txid,
            project: root,
            restored_files: 0,
            restored_bytes: 0,
            removed_from_store: 0,
            kept_changed: Vec::new(),
            displaced: Vec::new(),
            backup: tx.paths.backup("none"),
            recovered,
        });
    };
    let (changed, kept_newer) = tx.rollback_check_keeping(&m, true)?;
    if !changed.is_empty() && !opts.force {
        return Err(Error::RollbackRefused {
            reason: format!(
                "{} file(s) that the upgrade {txid} moved have changed since (first `{}`), probably \
                 because Prodigy ran with them; downgrading would lose those changes. To downgrade \
                 anyway, run with --force: the changed files are then moved to `{}` instead",
                changed.len(),
                changed[0].display(),
                store
                    .layout()
                    .layout_0_area()
                    .join("rollback-displaced")
                    .join(&txid)
                    .display()
            ),
            paths: changed,
        });
    }
    let undone = tx.start_rollback(&m, opts.force)?;
    let summary = &undone.summary;
    Ok(RollbackReport {
        schema_version: REPORT_SCHEMA_VERSION,
        also_undone: Vec::new(),
        txid: txid.clone(),
        project: root,
        restored_files: summary.sources.saturating_sub(kept_newer.len() as u64),
        kept_newer,
        not_read_by_older: 0,
        restored_bytes: summary.source_bytes,
        removed_from_store: undone.removed,
        kept_changed: undone.kept,
        displaced: if opts.force { changed } else { Vec::new() },
        backup: tx.paths.backup(&txid),
        recovered,
    })
}

impl Tx<'_> {
    /// Records an upgrade that moved nothing (only `layout.json` is new).
    pub(crate) fn record_upgrade_in_place(&self, txid: &str) -> Result<()> {
        self.record(txid, "migrated")
    }

    /// Records the downgrade of such an upgrade.
    pub(crate) fn record_downgrade(&self, txid: &str) -> Result<()> {
        self.record(txid, "rolled_back")
    }

    fn record(&self, txid: &str, event: &str) -> Result<()> {
        storage_fs::fsx::create_dir_all(&self.paths.dir)?;
        protocol::append_history(
            &self.paths,
            &HistoryEntry {
                txid: txid.to_owned(),
                event: event.into(),
                at: storage_fs::time::now(),
                files: 0,
                bytes: 0,
            },
        )
    }
}
