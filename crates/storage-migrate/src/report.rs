//! Reports: what a migration, rollback or verification did, for people
//! (the CLI renders them) and for machines (`--json`, documented in `docs/cli.md`).

use std::path::{Path, PathBuf};

use serde::{Serialize, Serializer};
use storage_fs::FsStorage;

use crate::manifest::Paths;
use crate::manifest::{Category, Manifest, Special, Summary};

// Every path in a report is written by `manifest::serialize_path`: a
// string when it is UTF-8, else `hex:<bytes>` (documented in `docs/cli.md`),
// so a report never fails on a path's encoding, even after the migration
// has moved the originals.
pub(crate) use crate::manifest::serialize_path as lossless;

/// A path serialised by [`lossless`].
struct Lossless<'a>(&'a Path);

impl Serialize for Lossless<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        lossless(&self.0, s)
    }
}

/// [`lossless`] for an optional path.
// Reason: `serialize_with` calls it with a reference to the field's type.
#[allow(clippy::ref_option)]
pub(crate) fn lossless_option<S: Serializer>(p: &Option<PathBuf>, s: S) -> Result<S::Ok, S::Error> {
    p.as_deref().map(Lossless).serialize(s)
}

/// [`lossless`] for a list of paths.
pub(crate) fn lossless_list<S: Serializer>(p: &[PathBuf], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(p.iter().map(|p| Lossless(p)))
}

/// The version of the JSON shape of reports.
pub const REPORT_SCHEMA_VERSION: u32 = 1;

/// How a migration ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Legacy storage was moved into the store.
    Migrated,
    /// There was no legacy storage to move.
    NothingToMigrate,
    /// A dry run: the plan only; nothing changed.
    DryRun,
}

/// Files and bytes of one category, and where they went.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CategoryReport {
    /// The category.
    pub category: Category,
    /// Files written to the store (per-job logs count one each).
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Where in the store they went (relative to the store root).
    pub destination: String,
}

/// A store file that existed with other content: both were kept.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ConflictReport {
    /// Where the migrated file would have gone (relative to the store root).
    #[serde(serialize_with = "lossless")]
    pub dest: PathBuf,
    /// Where it was kept instead (relative to the store root).
    #[serde(serialize_with = "lossless")]
    pub kept_at: PathBuf,
}

/// What a migration did (or, in a dry run, would do).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MigrationReport {
    /// JSON shape version.
    pub schema_version: u32,
    /// How it ended.
    pub outcome: Outcome,
    /// The transaction id, when one ran (or would run).
    pub txid: Option<String>,
    /// The project (canonical).
    #[serde(serialize_with = "lossless")]
    pub project: PathBuf,
    /// The legacy directory.
    #[serde(serialize_with = "lossless")]
    pub legacy_dir: PathBuf,
    /// The repository key in the store.
    pub repo: String,
    /// The store's root.
    #[serde(serialize_with = "lossless")]
    pub store: PathBuf,
    /// Legacy storage files found.
    pub legacy_files: u64,
    /// Their bytes.
    pub legacy_bytes: u64,
    /// Per category: files and bytes and where they went.
    pub categories: Vec<CategoryReport>,
    /// The user's own files in `.prodigy/`, left untouched.
    pub user_files_untouched: u64,
    /// Links and special files: reported, not followed, left in place.
    pub specials: Vec<Special>,
    /// Store files that already existed with other content.
    pub conflicts: Vec<ConflictReport>,
    /// Outputs whose identical content was already in the store.
    pub already_present: u64,
    /// Session files stored once because another copy was identical.
    pub duplicates_stored_once: u64,
    /// Things worth knowing that did not stop the migration.
    pub warnings: Vec<String>,
    /// Where the legacy files were moved (the backup).
    #[serde(serialize_with = "lossless_option")]
    pub backup: Option<PathBuf>,
    /// The command that undoes this migration.
    pub rollback_command: Option<String>,
    /// What recovery of an earlier interrupted run did first, if anything.
    pub recovered: Option<String>,
    /// The legacy directories found below the project root
    /// (`services/worker/.prodigy`), each imported by its own transaction in
    /// the same run, after the project's own: their reports. Absent when none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub subdirectories: Vec<MigrationReport>,
}

impl MigrationReport {
    /// This report and its sub-directories' reports.
    pub fn all(&self) -> impl Iterator<Item = &MigrationReport> {
        std::iter::once(self).chain(&self.subdirectories)
    }
}

/// Quotes `p` for a POSIX shell, losslessly: a path that is not UTF-8 is
/// written as `$'…'` with `\xHH` escapes (POSIX.1-2024, bash, zsh, ksh).
#[must_use]
pub fn shell_quote(p: &Path) -> String {
    let Some(s) = p.to_str() else {
        use std::fmt::Write as _;
        use std::os::unix::ffi::OsStrExt;
        let mut out = String::from("$'");
        for &b in p.as_os_str().as_bytes() {
            match b {
                b'\'' | b'\\' => {
                    out.push('\\');
                    out.push(char::from(b));
                }
                0x20..=0x7e => out.push(char::from(b)),
                _ => {
                    let _ = write!(out, "\\x{b:02x}");
                }
            }
        }
        out.push('\'');
        return out;
    };
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+:@".contains(&b))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

fn destination(category: Category, repo: &str) -> String {
    match category {
        Category::Sessions => format!("state/{repo}/sessions/"),
        Category::Events => format!("events/{repo}/<job>/"),
        Category::JobState => format!("state/{repo}/mapreduce/jobs/"),
        Category::DeadLetters => format!("dlq/{repo}/<job>/"),
        Category::Checkpoints => format!("state/{repo}/checkpoints/"),
        Category::LegacyPreserved if repo == crate::layout0::REPO_LABEL => {
            "legacy/.layout-0/".to_owned()
        }
        Category::LegacyPreserved => format!("legacy/{repo}/"),
    }
}

pub(crate) fn from_manifest(
    store: &FsStorage,
    paths: &Paths,
    m: &Manifest,
    summary: &Summary,
    outcome: Outcome,
    recovered: Option<String>,
) -> MigrationReport {
    let categories = Category::ALL
        .iter()
        .filter_map(|c| {
            summary
                .categories
                .get(c)
                .map(|(files, bytes)| CategoryReport {
                    category: *c,
                    files: *files,
                    bytes: *bytes,
                    destination: destination(*c, &m.repo),
                })
        })
        .collect();
    let mut conflicts: Vec<ConflictReport> = summary
        .conflicts
        .iter()
        .map(|(dest, alt)| ConflictReport {
            dest: dest.0.clone(),
            kept_at: alt.0.clone(),
        })
        .collect();
    conflicts.sort_by(|a, b| a.dest.cmp(&b.dest));
    // In the order of the legacy file each names (the first path in
    // backticks): a dry run finds some warnings while planning and a real
    // run while staging, and both list them alike.
    let mut warnings = m.warnings.clone();
    warnings.sort_by(|a, b| a.split('`').nth(1).cmp(&b.split('`').nth(1)));
    if m.warnings_omitted > 0 {
        warnings.push(format!(
            "{} more warning(s) like these are not listed",
            m.warnings_omitted
        ));
    }
    if summary.conflicts_omitted > 0 {
        warnings.push(format!(
            "{} more conflict(s) are not listed; each is kept under `legacy/{}/conflicts/`",
            summary.conflicts_omitted, m.repo
        ));
    }
    let migrated = outcome == Outcome::Migrated;
    MigrationReport {
        schema_version: REPORT_SCHEMA_VERSION,
        outcome,
        txid: (outcome == Outcome::Migrated).then(|| m.txid.clone()),
        project: m.project.0.clone(),
        legacy_dir: m.legacy_dir.0.clone(),
        repo: m.repo.clone(),
        store: store.root().to_owned(),
        legacy_files: summary.sources,
        legacy_bytes: summary.source_bytes,
        categories,
        user_files_untouched: m.user_files,
        specials: m.specials.clone(),
        conflicts,
        already_present: summary.already_present,
        duplicates_stored_once: summary.duplicates,
        warnings,
        backup: migrated.then(|| paths.backup(&m.txid)),
        rollback_command: migrated.then(|| {
            format!(
                "prodigy-storage --home {} rollback {}",
                shell_quote(store.root()),
                shell_quote(&m.project.0)
            )
        }),
        recovered,
        subdirectories: Vec::new(),
    }
}

/// What a rollback did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RollbackReport {
    /// JSON shape version.
    pub schema_version: u32,
    /// The migration that was undone.
    pub txid: String,
    /// The project.
    #[serde(serialize_with = "lossless")]
    pub project: PathBuf,
    /// Legacy files restored (byte-identical, with modes and mtimes).
    pub restored_files: u64,
    /// Their bytes.
    pub restored_bytes: u64,
    /// Files the migration had published that were removed from the store.
    pub removed_from_store: u64,
    /// With `--force`: changed files moved aside instead of removed.
    #[serde(serialize_with = "lossless_list")]
    pub displaced: Vec<PathBuf>,
    /// Files it had published that changed since and were left where they
    /// are (finishing an interrupted rollback, which has no `--force` to
    /// ask for). Absent when none.
    #[serde(
        serialize_with = "lossless_list",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub kept_changed: Vec<PathBuf>,
    /// The backup, which stays until pruned.
    #[serde(serialize_with = "lossless")]
    pub backup: PathBuf,
    /// What recovery of an earlier interrupted run did first, if anything.
    pub recovered: Option<String>,
    /// The other transactions of the same `migrate` run (one per legacy
    /// directory: the project's and its sub-directories'), or the earlier
    /// runs of an upgrade, undone after this one, newest first. Absent
    /// when none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub also_undone: Vec<RollbackReport>,
    /// A downgrade: layout-0 files an older Prodigy wrote again since the
    /// upgrade, newer versions of files the upgrade had moved. They stay
    /// where they are (layout 0 holds one version there); the upgrade's
    /// originals stay in its backup. Absent when none.
    #[serde(
        serialize_with = "lossless_list",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub kept_newer: Vec<PathBuf>,
    /// A downgrade: files left in places only the current layout has (a
    /// session's workflow checkpoints in `sessions/<id>/checkpoints/`, a
    /// repository's sessions by id, `ext/`, `archive/`), written after the
    /// upgrade: they stay, and an older Prodigy does not read them.
    #[serde(skip_serializing_if = "is_zero")]
    pub not_read_by_older: u64,
}

#[allow(clippy::trivially_copy_pass_by_ref)] // Reason: serde's `skip_serializing_if` passes a reference.
fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// What `verify` found.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// JSON shape version.
    pub schema_version: u32,
    /// The project.
    #[serde(serialize_with = "lossless")]
    pub project: PathBuf,
    /// Its repository key, if it was ever registered.
    pub repo: Option<String>,
    /// The latest migration checked.
    pub txid: Option<String>,
    /// The migration whose rollback is the latest recorded event, if it is
    /// (then `txid` is an earlier migration still in place, or `None`).
    pub rolled_back: Option<String>,
    /// Published files still byte-identical to what was migrated.
    pub published_intact: u64,
    /// Published files changed since (normal once Prodigy has run).
    pub published_changed: u64,
    /// Published files gone since (normal when Prodigy prunes old checkpoints).
    pub published_missing: u64,
    /// Backup files intact.
    pub backup_intact: u64,
    /// Backup files missing or damaged (a problem unless pruned).
    #[serde(serialize_with = "lossless_list")]
    pub backup_damaged: Vec<PathBuf>,
    /// Whether the backup was pruned on purpose.
    pub backup_pruned: bool,
    /// Legacy storage files still in the project (run `migrate`).
    pub legacy_files_left: u64,
    /// Problems: a non-empty list makes `verify` fail.
    pub problems: Vec<String>,
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::manifest::{MAX_LISTED, RelPath};

    #[test]
    fn a_report_says_how_many_warnings_and_conflicts_it_does_not_list() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FsStorage::peek(dir.path().join("store")).expect("store");
        let paths = Paths {
            dir: dir.path().join("migrations/r"),
            root: dir.path().join("store"),
        };
        let mut m = Manifest::new("t", Path::new("/p"), Path::new("/p/.prodigy"), "r");
        for i in 0..MAX_LISTED + 2 {
            m.warn(format!("w{i}"));
        }
        let summary = Summary {
            conflicts: vec![
                (RelPath(PathBuf::from("b")), RelPath(PathBuf::from("alt/b"))),
                (RelPath(PathBuf::from("a")), RelPath(PathBuf::from("alt/a"))),
            ],
            conflicts_omitted: 7,
            ..Summary::default()
        };
        let r = from_manifest(&store, &paths, &m, &summary, Outcome::Migrated, None);
        assert_eq!(r.warnings.len(), MAX_LISTED + 2);
        assert_eq!(
            r.warnings[MAX_LISTED..],
            [
                "2 more warning(s) like these are not listed".to_owned(),
                "7 more conflict(s) are not listed; each is kept under `legacy/r/conflicts/`"
                    .to_owned()
            ]
        );
        let listed: Vec<_> = r.conflicts.iter().map(|c| c.dest.clone()).collect();
        assert_eq!(listed, [PathBuf::from("a"), PathBuf::from("b")], "sorted");
    }

    #[test]
    fn paths_in_reports_and_commands_survive_any_encoding() {
        use std::ffi::OsStr;
        use std::os::unix::ffi::OsStrExt;
        let odd = Path::new(OsStr::from_bytes(b"/tmp/proj-\xff's"));
        assert_eq!(shell_quote(odd), r"$'/tmp/proj-\xff\'s'");
        assert_eq!(shell_quote(Path::new("/tmp/a b")), "'/tmp/a b'");
        let r = RollbackReport {
            schema_version: REPORT_SCHEMA_VERSION,
            also_undone: Vec::new(),
            kept_newer: Vec::new(),
            not_read_by_older: 0,
            txid: "t".into(),
            project: odd.to_owned(),
            restored_files: 0,
            restored_bytes: 0,
            removed_from_store: 0,
            kept_changed: Vec::new(),
            displaced: vec![odd.to_owned(), PathBuf::from("plain")],
            backup: PathBuf::from("b"),
            recovered: None,
        };
        let v = serde_json::to_value(&r).expect("a non-UTF-8 path serialises");
        assert_eq!(v["project"], "hex:2f746d702f70726f6a2dff2773");
        assert_eq!(v["displaced"][1], "plain");
    }
}
