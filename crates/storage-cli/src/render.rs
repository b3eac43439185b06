//! Human-readable output. Every function returns the text, so the tests can
//! snapshot it; `main` decides whether to print it.

use std::fmt::Write as _;

use storage_fs::RootChoice;

/// Adds colour to a report's key lines (headline green, warnings yellow,
/// problems red); `anstream` removes it where colour is not wanted.
pub fn paint(text: &str) -> String {
    use anstyle::AnsiColor::{Green, Red, Yellow};
    let mut out = String::with_capacity(text.len() + 64);
    for line in text.split_inclusive('\n') {
        let style = if ["Migrated ", "Rolled back ", "OK"]
            .iter()
            .any(|p| line.starts_with(p))
        {
            Some(Green.on_default().bold())
        } else if line.starts_with("Would migrate ") || line.starts_with("No legacy storage") {
            Some(anstyle::Style::new().bold())
        } else if line.starts_with("problem:") {
            Some(Red.on_default().bold())
        } else if line.trim_start().starts_with("warnings:")
            || line.trim_start().starts_with("conflicts ")
            || line.starts_with("conflict (")
            || line.starts_with("interrupted:")
        {
            Some(Yellow.on_default())
        } else {
            None
        };
        match style {
            Some(s) => {
                let body = line.trim_end_matches('\n');
                let _ = write!(out, "{s}{body}{s:#}");
                if line.ends_with('\n') {
                    out.push('\n');
                }
            }
            None => out.push_str(line),
        }
    }
    out
}

/// `1.5 KiB`-style sizes.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    // Reason: display only; a rounding error past 2^52 bytes is invisible here.
    #[allow(clippy::cast_precision_loss)]
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

pub fn store_line(root: &RootChoice, layout_version: Option<u64>) -> String {
    let state = match layout_version {
        Some(v) => format!("layout version {v}"),
        None if storage_fs::has_layout_0_data(&root.path).unwrap_or(false) => {
            "layout 0, written by an older Prodigy: an upgrade is due, run `prodigy-storage upgrade`"
                .to_owned()
        }
        None => "not created yet".to_owned(),
    };
    format!(
        "store: {} (chosen by {}; {state})\n",
        root.path.display(),
        root.source
    )
}

/// `list`: one line per document or log, grouped by repository; each
/// column as wide as its longest value, so that long ids never push the
/// sizes out of line. `repo` is the `--repo` filter, named when it
/// matched nothing.
pub fn list(items: &[storage_fs::Listed], repo: Option<&str>) -> String {
    let mut out = String::new();
    if items.is_empty() {
        match repo {
            Some(r) => {
                let _ = writeln!(
                    out,
                    "No documents or event logs of repository `{r}` in this store \
                     (`prodigy-storage list` shows every repository)."
                );
            }
            None => out.push_str("No documents or event logs in this store.\n"),
        }
        return out;
    }
    let rows: Vec<[String; 6]> = items
        .iter()
        .map(|i| {
            [
                i.repo.as_deref().unwrap_or("(global)").to_owned(),
                i.kind.clone(),
                i.job.as_deref().unwrap_or("-").to_owned(),
                i.id.as_deref().unwrap_or("-").to_owned(),
                bytes(i.size),
                i.modified.get(..19).unwrap_or(&i.modified).to_owned(),
            ]
        })
        .collect();
    let header = ["REPO", "KIND", "JOB", "ID", "SIZE", "MODIFIED"];
    let mut width = header.map(str::len);
    for row in &rows {
        for (w, cell) in width.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |out: &mut String, cells: [&str; 6]| {
        let _ = writeln!(
            out,
            "{:<w0$}  {:<w1$}  {:<w2$}  {:<w3$}  {:>w4$}  {}",
            cells[0],
            cells[1],
            cells[2],
            cells[3],
            cells[4],
            cells[5],
            w0 = width[0],
            w1 = width[1],
            w2 = width[2],
            w3 = width[3],
            w4 = width[4],
        );
    };
    line(&mut out, header);
    for row in &rows {
        line(&mut out, row.each_ref().map(String::as_str));
    }
    let total: u64 = items.iter().map(|i| i.size).sum();
    let _ = writeln!(out, "{} item(s), {}", items.len(), bytes(total));
    out
}

/// The store's layout, one line per directory.
pub fn layout(root: &RootChoice) -> String {
    let mut out = store_line(root, storage_fs::layout_version(&root.path).ok().flatten());
    let rows = [
        ("layout.json", "the layout version of this store"),
        (
            "repos/<repo>.json",
            "which project directory owns each repository key",
        ),
        (
            "sessions/<session>.json",
            "unified sessions: global, keyed by id",
        ),
        (
            "sessions/<session>/checkpoint.json",
            "a unified session's own checkpoint",
        ),
        (
            "sessions/<session>/checkpoints/<workflow>.checkpoint.json",
            "the session's workflow checkpoints",
        ),
        (
            "ext/<repo>/<kind>/<name>.json",
            "extension kinds (documents of kinds the API does not name)",
        ),
        (
            "archive/events/<repo>/<job>/",
            "what event-log retention dropped (gzip JSONL)",
        ),
        ("state/<repo>/sessions/<session>.json", "session state"),
        (
            "state/<repo>/mappings/<session>.json",
            "which MapReduce job a session runs",
        ),
        (
            "state/<repo>/checkpoints/<workflow>.checkpoint.json",
            "workflow checkpoints",
        ),
        (
            "state/<repo>/mapreduce/jobs/<job>/",
            "MapReduce job state: checkpoint-v<N>.json, metadata.json",
        ),
        (
            "dlq/<repo>/<job>/",
            "dead-lettered items (items/<item>.json) and index.json",
        ),
        (
            "events/<repo>/<job>/",
            "the job's event log: every *.jsonl, read in name order",
        ),
        (
            "events/<repo>/<job>/.log",
            "the log's lock and identity (cursors carry its generation)",
        ),
        (
            "legacy/<repo>/",
            "legacy files kept verbatim by migration (and conflicts, unrouted events)",
        ),
        (
            "migrations/<repo>/",
            "migration journal, history, manifests and backups",
        ),
        (
            "resume_locks/<key>.lock",
            "resume locks (flock); the holder is written inside for messages",
        ),
        (
            "resume_locks/<key>.fence",
            "each resume lock's newest fencing token",
        ),
        (
            "locks/<name>.lock",
            "the store's own locks (repository registry, migrations)",
        ),
        (
            "worktrees/<repo>/",
            "Prodigy's git worktrees (not managed by this tool)",
        ),
    ];
    let width = rows.iter().map(|(path, _)| path.len()).max().unwrap_or(0);
    for (path, what) in rows {
        let _ = writeln!(out, "  {path:<width$}  {what}");
    }
    out
}

#[cfg(feature = "legacy-import")]
pub use with_import::*;

#[cfg(feature = "legacy-import")]
mod with_import {
    use std::fmt::Write as _;

    use storage_fs::RootChoice;
    use storage_migrate::{
        BackupInfo, MigrationReport, Outcome, ProjectStatus, PruneReport, RollbackReport,
        VerifyReport,
    };

    use super::{bytes, store_line};

    fn age(secs: u64) -> String {
        match secs {
            s if s < 120 => format!("{s}s"),
            s if s < 7200 => format!("{}m", s / 60),
            s if s < 172_800 => format!("{}h", s / 3600),
            s => format!("{}d", s / 86_400),
        }
    }

    /// A migration's report, then its sub-directories' (each its own
    /// transaction of the same run).
    pub fn migration(r: &MigrationReport) -> String {
        let mut out = migration_of(r);
        for sub in &r.subdirectories {
            out.push_str(&migration_of(sub));
        }
        out
    }

    fn migration_of(r: &MigrationReport) -> String {
        let mut out = String::new();
        let legacy = r.legacy_dir.display();
        if let Some(rec) = &r.recovered {
            let _ = writeln!(out, "first, recovery: {rec}");
        }
        // The project's own `.prodigy/` held nothing; its sub-directories did.
        let outcome = if r.legacy_files == 0 {
            Outcome::NothingToMigrate
        } else {
            r.outcome
        };
        match outcome {
            Outcome::NothingToMigrate if r.outcome != Outcome::NothingToMigrate => {
                let _ = writeln!(out, "No legacy storage in {legacy}.");
                return out;
            }
            Outcome::NothingToMigrate => {
                let _ = writeln!(out, "No legacy storage in {legacy}; nothing to migrate.");
                if r.user_files_untouched > 0 {
                    let _ = writeln!(
                        out,
                        "  {} file(s) of yours there were left untouched.",
                        r.user_files_untouched
                    );
                }
                return out;
            }
            Outcome::DryRun => {
                let _ = writeln!(
                    out,
                    "Would migrate {} legacy storage file(s), {}, from {legacy}\n  into {} as repository `{}`:",
                    r.legacy_files,
                    bytes(r.legacy_bytes),
                    r.store.display(),
                    r.repo
                );
            }
            Outcome::Migrated => {
                let _ = writeln!(
                    out,
                    "Migrated {} legacy storage file(s), {}, from {legacy}\n  into {} as repository `{}` (migration {}):",
                    r.legacy_files,
                    bytes(r.legacy_bytes),
                    r.store.display(),
                    r.repo,
                    r.txid.as_deref().unwrap_or("?")
                );
            }
        }
        for c in &r.categories {
            let _ = writeln!(
                out,
                "  {:<24} {:>6} file(s) {:>11}  -> {}",
                c.category_label(),
                c.files,
                bytes(c.bytes),
                c.destination
            );
        }
        // The categories count files in the store (what `verify` checks),
        // the headline legacy files (what the backup holds): say why they differ.
        let in_store: u64 = r.categories.iter().map(|c| c.files).sum();
        if in_store != r.legacy_files {
            let _ = writeln!(
                out,
                "  = {in_store} file(s) in the store from {} legacy file(s) (event logs split per job)",
                r.legacy_files
            );
        }
        let _ = writeln!(
            out,
            "  your files in {legacy} left untouched: {}",
            r.user_files_untouched
        );
        if r.duplicates_stored_once > 0 {
            let _ = writeln!(
                out,
                "  identical session copies stored once: {}",
                r.duplicates_stored_once
            );
        }
        if r.already_present > 0 {
            let _ = writeln!(
                out,
                "  already in the store with the same content: {}",
                r.already_present
            );
        }
        if !r.specials.is_empty() {
            let _ = writeln!(
                out,
                "  links and special files (not followed, left in place): {}",
                r.specials.len()
            );
            for s in &r.specials {
                let target = s
                    .target
                    .as_ref()
                    .map(|t| format!(" -> {}", t.as_path().display()))
                    .unwrap_or_default();
                let _ = writeln!(
                    out,
                    "    {}{target} ({})",
                    s.rel.as_path().display(),
                    s.kind
                );
            }
        }
        if !r.conflicts.is_empty() {
            let _ = writeln!(
                out,
                "  conflicts (the store already had other content; both kept): {}",
                r.conflicts.len()
            );
            for c in &r.conflicts {
                let _ = writeln!(
                    out,
                    "    {} -> kept at {}",
                    c.dest.display(),
                    c.kept_at.display()
                );
            }
        }
        if !r.warnings.is_empty() {
            let _ = writeln!(out, "  warnings:");
            for w in &r.warnings {
                let _ = writeln!(out, "    {w}");
            }
        }
        match r.outcome {
            Outcome::DryRun => {
                let _ = writeln!(out, "Nothing was changed (dry run).");
            }
            Outcome::Migrated => {
                if let Some(b) = &r.backup {
                    let _ = writeln!(out, "The original files are in the backup: {}", b.display());
                }
                if let Some(cmd) = &r.rollback_command {
                    let _ = writeln!(out, "To undo this migration: {cmd}");
                }
            }
            Outcome::NothingToMigrate => {}
        }
        out
    }

    /// The report of `upgrade`: the migration report's body under its own
    /// head (the layout-0 store is both the source and the destination).
    pub fn upgrade(r: &MigrationReport) -> String {
        let mut out = String::new();
        if let Some(rec) = &r.recovered {
            let _ = writeln!(out, "first, recovery: {rec}");
        }
        let store = r.store.display();
        let head = match r.outcome {
            Outcome::NothingToMigrate => {
                let _ = writeln!(
                    out,
                    "The store at {store} needs no upgrade: it holds no data in the layout older Prodigy versions wrote."
                );
                return out;
            }
            Outcome::DryRun => format!(
                "Would upgrade the store at {store} from layout 0: move {} file(s), {}:",
                r.legacy_files,
                bytes(r.legacy_bytes)
            ),
            Outcome::Migrated => format!(
                "Upgraded the store at {store} from layout 0 (upgrade {}): moved {} file(s), {}:",
                r.txid.as_deref().unwrap_or("?"),
                r.legacy_files,
                bytes(r.legacy_bytes)
            ),
        };
        let body = migration(r);
        // The migration report's first line names a project; the rest fits.
        let body: String = body
            .lines()
            .skip_while(|l| l.starts_with("first, recovery"))
            .skip(2)
            .filter(|l| !l.starts_with("  your files in "))
            .map(|l| l.replace("To undo this migration:", "To undo this upgrade:") + "\n")
            .collect();
        let _ = writeln!(out, "{head}");
        let _ = writeln!(
            out,
            "  files of others (worktrees/, config.yml, unknown files) left untouched: {}",
            r.user_files_untouched
        );
        out.push_str(&body);
        out
    }

    /// The report of `downgrade`.
    pub fn downgrade(r: &RollbackReport) -> String {
        let mut out = String::new();
        if let Some(nothing) = r
            .recovered
            .as_deref()
            .filter(|rec| rec.starts_with("nothing to do"))
        {
            let _ = writeln!(out, "{}: {nothing}.", r.project.display());
            return out;
        }
        if let Some(rec) = &r.recovered {
            let _ = writeln!(out, "first, recovery: {rec}");
        }
        let _ = writeln!(
            out,
            "Downgraded the store at {} to layout 0 (undid upgrade {}):\n  restored {} file(s), {}, byte for byte with modes and times\n  removed {} file(s) the upgrade had written, and layout.json",
            r.project.display(),
            r.txid,
            r.restored_files,
            bytes(r.restored_bytes),
            r.removed_from_store
        );
        displaced(&mut out, r);
        kept_newer(&mut out, r, "  ");
        for other in &r.also_undone {
            let _ = writeln!(
                out,
                "  also undid the earlier upgrade {}: restored {} file(s), removed {} file(s)",
                other.txid, other.restored_files, other.removed_from_store
            );
            kept_newer(&mut out, other, "    ");
        }
        if r.not_read_by_older > 0 {
            let _ = writeln!(
                out,
                "An older Prodigy can use it again, except {} file(s) in places only the current layout \
                 has (sessions/<id>/checkpoints/, state/<repo>/sessions/<id>.json, ext/, archive/): \
                 they stay, and an older Prodigy does not read them. Prodigy's start-up leaves the \
                 store so until you run `prodigy-storage upgrade`.",
                r.not_read_by_older
            );
        } else {
            let _ = writeln!(
                out,
                "An older Prodigy can use it again. Prodigy's start-up leaves it so until you run `prodigy-storage upgrade`."
            );
        }
        out
    }

    /// The newer layout-0 versions a downgrade run left where they were.
    fn kept_newer(out: &mut String, r: &RollbackReport, indent: &str) {
        if let Some(first) = r.kept_newer.first() {
            let _ = writeln!(
                out,
                "{indent}kept {} newer version(s) an older Prodigy wrote since at the layout-0 path \
                 (layout 0 holds one there); upgrade {}'s originals stay in its backup, first `{}`",
                r.kept_newer.len(),
                r.txid,
                first.display()
            );
        }
    }

    /// The files a forced rollback or downgrade moved aside, if any.
    fn displaced(out: &mut String, r: &RollbackReport) {
        if !r.displaced.is_empty() {
            let _ = writeln!(
                out,
                "  moved aside because they had changed: {}",
                r.displaced.len()
            );
        }
        for d in &r.displaced {
            let _ = writeln!(out, "    {}", d.display());
        }
        if let Some(first) = r.kept_changed.first() {
            let _ = writeln!(
                out,
                "  left in the store because they had changed since they were published: {} (first `{}`)",
                r.kept_changed.len(),
                first.display()
            );
        }
    }

    trait Label {
        fn category_label(&self) -> &'static str;
    }

    impl Label for storage_migrate::CategoryReport {
        fn category_label(&self) -> &'static str {
            self.category.label()
        }
    }

    pub fn verify(r: &VerifyReport) -> String {
        let mut out = String::new();
        let Some(txid) = &r.txid else {
            if let Some(undone) = &r.rolled_back {
                let _ = writeln!(
                    out,
                    "{} (repository `{}`): migration {undone} was rolled back; its legacy files are back in the project.",
                    r.project.display(),
                    r.repo.as_deref().unwrap_or("?")
                );
            } else {
                let _ = writeln!(
                    out,
                    "{}: no migration recorded in this store.",
                    r.project.display()
                );
            }
            for p in &r.problems {
                let _ = writeln!(out, "problem: {p}");
            }
            return out;
        };
        let _ = writeln!(
            out,
            "{} (repository `{}`), latest migration {txid}:",
            r.project.display(),
            r.repo.as_deref().unwrap_or("?")
        );
        if let Some(undone) = &r.rolled_back {
            let _ = writeln!(out, "  (the later migration {undone} was rolled back)");
        }
        let _ = writeln!(
            out,
            "  published files: {} intact, {} changed since, {} gone since (changes by Prodigy are normal)",
            r.published_intact, r.published_changed, r.published_missing
        );
        if r.backup_pruned {
            let _ = writeln!(
                out,
                "  backup: pruned (this migration can no longer be rolled back)"
            );
        } else {
            let _ = writeln!(
                out,
                "  backup: {} file(s) intact, {} missing or damaged",
                r.backup_intact,
                r.backup_damaged.len()
            );
        }
        let _ = writeln!(
            out,
            "  legacy storage files waiting in the project: {}",
            r.legacy_files_left
        );
        if r.problems.is_empty() {
            let _ = writeln!(out, "OK");
        }
        for p in &r.problems {
            let _ = writeln!(out, "problem: {p}");
        }
        out
    }

    /// A rollback's report, then the other transactions of the same run.
    pub fn rollback(r: &RollbackReport) -> String {
        let mut out = rollback_of(r);
        for other in &r.also_undone {
            out.push_str(&rollback_of(other));
        }
        out
    }

    fn rollback_of(r: &RollbackReport) -> String {
        let mut out = String::new();
        if let Some(rec) = &r.recovered {
            let _ = writeln!(out, "first, recovery: {rec}");
        }
        let _ = writeln!(
            out,
            "Rolled back migration {} of {}:\n  restored {} legacy file(s), {}, byte for byte with modes and times\n  removed {} file(s) it had published from the store",
            r.txid,
            r.project.display(),
            r.restored_files,
            bytes(r.restored_bytes),
            r.removed_from_store
        );
        displaced(&mut out, r);
        let _ = writeln!(
            out,
            "The backup stays at {} until you run `prodigy-storage backups prune`.",
            r.backup.display()
        );
        out
    }

    pub fn backups(list: &[BackupInfo]) -> String {
        if list.is_empty() {
            return "No backups.\n".to_owned();
        }
        let row = |repo: &str,
                   txid: &str,
                   files: &str,
                   size: &str,
                   age: &str,
                   state: &str,
                   path: &str| {
            format!("{repo:<20} {txid:<24} {files:>6} {size:>11} {age:>6}  {state:<11}  {path}\n")
        };
        let mut out = row(
            "REPOSITORY",
            "MIGRATION",
            "FILES",
            "SIZE",
            "AGE",
            "STATE",
            "BACKUP",
        );
        for b in list {
            out.push_str(&row(
                &b.repo,
                &b.txid,
                &b.files.to_string(),
                &bytes(b.bytes),
                &age(b.age_secs),
                if b.rolled_back {
                    "rolled back"
                } else {
                    "migrated"
                },
                &b.path.display().to_string(),
            ));
        }
        out
    }

    pub fn pruned(r: &PruneReport, dry_run: bool) -> String {
        let verb = if dry_run { "Would delete" } else { "Deleted" };
        let mut out = format!("{verb} {} backup(s).\n", r.pruned.len());
        for b in &r.pruned {
            let _ = writeln!(
                out,
                "  {} {} ({} file(s), {})",
                b.repo,
                b.txid,
                b.files,
                bytes(b.bytes)
            );
        }
        if !r.kept.is_empty() {
            let _ = writeln!(out, "Kept {} backup(s):", r.kept.len());
            for k in &r.kept {
                let _ = writeln!(out, "  {} {}: {}", k.backup.repo, k.backup.txid, k.reason);
            }
        }
        out
    }

    /// What to do about an interrupted upgrade or downgrade of the store.
    pub fn interrupted_line(i: &storage_migrate::InterruptedUpgrade) -> String {
        if i.downgrade {
            format!(
                "  a downgrade ({}) was interrupted: run `prodigy-storage downgrade` to finish it; \
                 until then the store is part layout 0, part current\n",
                i.txid
            )
        } else {
            format!(
                "  an upgrade ({}) was interrupted while {}: run `prodigy-storage upgrade` to finish \
                 it (Prodigy's start-up and every writing command do too), or `prodigy-storage \
                 downgrade` to undo it\n",
                i.txid,
                i.phase.replace('_', " ")
            )
        }
    }

    pub fn status(
        root: &RootChoice,
        layout_version: Option<u64>,
        s: &ProjectStatus,
        backups: &[BackupInfo],
    ) -> String {
        let mut out = store_line(root, layout_version);
        let store = storage_fs::FsStorage::peek(&root.path).ok();
        let interrupted = store
            .as_ref()
            .and_then(|store| storage_migrate::interrupted_upgrade(store).ok())
            .flatten();
        if let Some(i) = &interrupted {
            out.push_str(&interrupted_line(i));
        }
        let since = interrupted.is_none()
            && layout_version.is_some()
            && store
                .as_ref()
                .and_then(|store| storage_migrate::upgrade_due(store).ok())
                == Some(true);
        if since {
            let _ = writeln!(
                out,
                "  an older Prodigy wrote files since the upgrade at layout-0 paths: the store reads \
                 them there; `prodigy-storage upgrade` imports them (Prodigy's start-up does too)"
            );
        }
        let _ = writeln!(out, "project: {}", s.project.display());
        match (&s.repo, &s.proposed_repo) {
            (Some(r), _) => {
                let _ = writeln!(out, "repository key: {r}");
            }
            (None, Some(p)) => {
                let _ = writeln!(out, "repository key: {p} (not registered yet)");
            }
            (None, None) => {}
        }
        if let Some(reason) = &s.refused {
            let _ = writeln!(out, "legacy storage: not migratable: {reason}");
        } else if let Some(top) = &s.legacy {
            for l in top.all() {
                if l.legacy_files == 0 {
                    let _ = writeln!(out, "legacy storage: none in {}", l.legacy_dir.display());
                } else {
                    let _ = writeln!(
                        out,
                        "legacy storage: {} file(s), {} in {} (run `prodigy-storage migrate`)",
                        l.legacy_files,
                        bytes(l.legacy_bytes),
                        l.legacy_dir.display()
                    );
                    for c in &l.categories {
                        let _ = writeln!(
                            out,
                            "  {:<24} {:>6} file(s) {:>11}",
                            c.category.label(),
                            c.files,
                            bytes(c.bytes)
                        );
                    }
                }
            }
        }
        if let Some(p) = &s.pending {
            let _ = writeln!(
                out,
                "interrupted: {p} (the next migrate or rollback finishes it)"
            );
        }
        if s.history.is_empty() {
            let _ = writeln!(out, "migrations: none");
        } else {
            let _ = writeln!(out, "migrations:");
            for h in &s.history {
                let _ = writeln!(
                    out,
                    "  {} {:<11} {} ({} file(s), {})",
                    h.at,
                    h.event,
                    h.txid,
                    h.files,
                    bytes(h.bytes)
                );
            }
        }
        if !backups.is_empty() {
            let _ = writeln!(out, "backups:");
            for b in backups {
                let _ = writeln!(
                    out,
                    "  {} {} file(s), {}, {} old: {}",
                    b.txid,
                    b.files,
                    bytes(b.bytes),
                    age(b.age_secs),
                    b.path.display()
                );
            }
        }
        out
    }
}

/// `copy-store`: what was copied, what a previous run had done, the journal.
#[cfg(feature = "legacy-import")]
pub fn copied(r: &storage_migrate::CopyReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Copied {} document(s) and {} event log(s) ({} event(s)) from {} to {}, each verified in the destination.",
        r.documents,
        r.event_logs,
        r.events,
        r.source.display(),
        r.destination
    );
    if r.already_done > 0 {
        let _ = writeln!(
            out,
            "{} item(s) were already copied by an earlier run and were skipped.",
            r.already_done
        );
    }
    if r.already_equal > 0 {
        let _ = writeln!(
            out,
            "{} document(s) were already in the destination, equal to this store's (not written again).",
            r.already_equal
        );
    }
    if r.vanished > 0 {
        let _ = writeln!(
            out,
            "{} document(s) disappeared from the source while copying (not copied).",
            r.vanished
        );
    }
    for s in &r.skipped {
        let _ = writeln!(
            out,
            "not copied (it stays in the source): {}: {}",
            s.path.display(),
            s.reason
        );
    }
    for c in &r.conflicts {
        let what = if c.overwritten {
            "overwritten with this store's document (--overwrite)"
        } else {
            "conflict (left as it is in the destination, not copied)"
        };
        let _ = writeln!(
            out,
            "{what}: {}: {}; this store's: {}",
            c.item,
            c.reason,
            c.path.display()
        );
    }
    let _ = writeln!(
        out,
        "Nothing was removed from the source. Journal: {}",
        r.journal.display()
    );
    out
}

/// `status` on a team's store: where it is, and what it holds per kind.
#[cfg(feature = "postgres")]
pub fn team_status(store: &str, source: &str, stats: &[storage_core::KindStats]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "store: {store} (PostgreSQL, chosen by {source})");
    if stats.is_empty() {
        out.push_str("It holds no documents or event logs yet.\n");
        return out;
    }
    for k in stats {
        let _ = writeln!(
            out,
            "  {:<16} {:<28} {:>8}  {:>10}",
            k.repo
                .as_ref()
                .map_or("(global)", storage_core::RepoKey::as_str),
            k.kind,
            k.count,
            bytes(k.bytes)
        );
    }
    out
}
