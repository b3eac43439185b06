//! Commit and recovery: what the journal says decides whether an
//! interrupted transaction is finished or undone.

use super::{
    Error, HistoryEntry, Manifest, Owner, PathBuf, Phase, Recovered, Result, Summary, Tx,
    append_history, fault, fsx, manifest, marker, read_journal, read_json, read_manifest,
    remove_dir_all_if_exists, set_journal, write_json, write_json_in,
};

impl Tx<'_> {
    pub fn commit(
        &self,
        m: &Manifest,
        summary: &Summary,
        report: &crate::MigrationReport,
    ) -> Result<()> {
        set_journal(&self.paths, &m.txid, Phase::Committed, false)?;
        fault::point("after-commit-journal");
        self.finish_commit(m, summary, Some(report))
    }

    pub(super) fn finish_commit(
        &self,
        m: &Manifest,
        summary: &Summary,
        report: Option<&crate::MigrationReport>,
    ) -> Result<()> {
        // The report, the removals and `layout.json` are made durable by
        // one `syncfs` before the journal goes: a crash before that leaves
        // the journal saying `committed`, whose recovery does them again
        // (docs/reliability.md, "Durability barriers"). The history line
        // is durable by itself.
        let path = self.paths.report(&m.txid);
        match report {
            Some(r) => write_json_in(&self.batch, &path, r)?,
            // Recovery: a report that a crash lost is written again from
            // the records, as recovery of an unfinished migration does.
            None if read_json::<serde_json::Value>(&path, "")
                .ok()
                .flatten()
                .is_none() =>
            {
                let r = crate::report::from_manifest(
                    self.store,
                    &self.paths,
                    m,
                    summary,
                    crate::Outcome::Migrated,
                    None,
                );
                write_json_in(&self.batch, &path, &r)?;
            }
            None => {}
        }
        append_history(
            &self.paths,
            &HistoryEntry {
                txid: m.txid.clone(),
                event: "migrated".into(),
                at: storage_fs::time::now(),
                files: summary.outputs,
                bytes: summary.source_bytes,
            },
        )?;
        let tx = self.paths.tx(&m.txid);
        remove_dir_all_if_exists(&self.paths.staging(&m.txid))?;
        match std::fs::remove_file(self.paths.reserve(&m.txid)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(Error::io("remove", self.paths.reserve(&m.txid), e));
            }
            _ => self.batch.dir_changed(&tx),
        }
        match self.owner {
            Owner::Project(_) => marker::remove(self.store, &m.legacy_dir.0)?,
            // The upgrade's commit: from now on the store is the current layout.
            Owner::Store => self.store.stamp_layout_version_in(&self.batch)?,
        }
        self.sync(self.layout().root())?;
        fsx::remove_file_durable(&self.paths.journal())?;
        Ok(())
    }

    /// Finishes or undoes the transaction a crash left behind; returns what
    /// it did.
    pub fn recover(&self) -> Result<Option<String>> {
        Ok(self.recover_tx()?.map(|r| r.what))
    }

    /// [`Tx::recover`], also naming the migration it finished, if it did.
    pub fn recover_tx(&self) -> Result<Option<Recovered>> {
        // Under the migration lock no live writer has temp files here: any
        // are a crashed writer's (e.g. a journal replaced half-way).
        // Only `migrations/<repo>/` and `<txid>/` hold them: `staging/` and
        // `backup/` hold legacy files under their own names, which may look
        // like temp files.
        let temps = self.sweep_temps()?;
        let Some(journal) = read_journal(&self.paths)? else {
            return Ok(self.sweep_debris(temps)?.map(|what| Recovered {
                what,
                finished: None,
            }));
        };
        let mut finished = None;
        let txid = journal.txid.clone();
        let what = match journal.phase {
            Phase::Staging => {
                // The marker is written at the end of this phase.
                if let Ok(m) = read_manifest(&self.paths, &txid) {
                    marker::remove(self.store, &m.legacy_dir.0)?;
                }
                remove_dir_all_if_exists(&self.paths.tx(&txid))?;
                fsx::remove_file_durable(&self.paths.journal())?;
                format!(
                    "undid interrupted migration {txid} (nothing had been published; legacy files untouched)"
                )
            }
            Phase::Publishing | Phase::Retiring => {
                let mut m = read_manifest(&self.paths, &txid)?;
                let project = m.project.0.clone();
                let wrap = |e| self.unfinished(&txid, &project, e);
                let mut summary = manifest::summarize(&self.paths.entries(&txid))?;
                if journal.phase == Phase::Publishing {
                    summary = self.publish(&m, &summary).map_err(wrap)?;
                    set_journal(&self.paths, &txid, Phase::Retiring, false).map_err(wrap)?;
                }
                self.retire(&mut m, &summary).map_err(wrap)?;
                write_json(&self.paths.manifest(&txid), &m.to_disk()).map_err(wrap)?;
                let report = crate::report::from_manifest(
                    self.store,
                    &self.paths,
                    &m,
                    &summary,
                    crate::Outcome::Migrated,
                    None,
                );
                set_journal(&self.paths, &txid, Phase::Committed, false)?;
                self.finish_commit(&m, &summary, Some(&report))?;
                finished = Some(txid.clone());
                format!("finished interrupted migration {txid}")
            }
            Phase::Committed => {
                let m = read_manifest(&self.paths, &txid)?;
                let summary = manifest::summarize(&self.paths.entries(&txid))?;
                self.finish_commit(&m, &summary, None)?;
                finished = Some(txid.clone());
                format!("cleaned up after migration {txid}")
            }
            Phase::RollingBack => {
                let m = read_manifest(&self.paths, &txid)?;
                self.finish_rollback(&m, journal.force, true)?;
                format!("finished interrupted rollback of {txid}")
            }
        };
        tracing::warn!("{what}");
        Ok(Some(Recovered { what, finished }))
    }

    /// Removes crashed writers' temp files from `migrations/<repo>/` and
    /// `<txid>/` (call under the migration lock).
    pub fn sweep_temps(&self) -> Result<Vec<PathBuf>> {
        let mut swept = fsx::sweep_temp_files_within(&self.paths.dir, 1)?;
        if matches!(self.owner, Owner::Store) {
            // The upgrade's commit writes `layout.json` at the store's root.
            swept.extend(fsx::sweep_temp_files_here(self.layout().root())?);
        }
        Ok(swept)
    }

    /// With no transaction in progress, removes what only a crash can leave:
    /// staging areas (a journal always names the one in use), and the whole
    /// directory of a transaction that neither a history line nor a backup
    /// names (a power loss while it staged took its journal, which staging's
    /// `syncfs` had not made durable yet), besides the temp files `recover`
    /// swept already. Backups are never touched.
    pub(super) fn sweep_debris(&self, temps: Vec<PathBuf>) -> Result<Option<String>> {
        let mut swept = temps;
        // A damaged history stops here, with the line to remove, before any
        // change (every caller would append to it at its end).
        let history = super::read_history(&self.paths)?;
        for tx in fsx::read_dir_sorted(&self.paths.dir)? {
            if !tx.file_type.is_dir() {
                continue;
            }
            let name = tx.name.to_string_lossy();
            let unrecorded = history.iter().all(|h| h.txid != name);
            if unrecorded && std::fs::symlink_metadata(tx.path.join("backup")).is_err() {
                remove_dir_all_if_exists(&tx.path)?;
                swept.push(tx.path);
                continue;
            }
            let staging = tx.path.join("staging");
            if std::fs::symlink_metadata(&staging).is_ok() {
                remove_dir_all_if_exists(&staging)?;
                swept.push(staging);
            }
        }
        if swept.is_empty() {
            return Ok(None);
        }
        let what = format!(
            "removed {} leftover(s) of an earlier crash, first `{}`",
            swept.len(),
            swept[0].display()
        );
        tracing::warn!("{what}");
        Ok(Some(what))
    }
}
