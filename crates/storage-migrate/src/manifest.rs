//! The journal and the manifest: what a migration plans, did, and can undo.
//!
//! The **journal** (`migrations/<repo>/journal.json`) is tiny and names the
//! one transaction in progress and its state; it is replaced atomically at
//! each state change, so a crash leaves the previous or the next state. The
//! **manifest** (`migrations/<repo>/<txid>/manifest.json`) lists every legacy
//! source file (size, mtime, mode, hash) and every output (where it goes, its
//! hash, what became of it). Both are JSON; paths relative to the legacy
//! directory or the store root are stored losslessly, non-UTF-8 ones as hex.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A relative path, stored as a string, or as hex bytes when not UTF-8.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RelPath(pub PathBuf);

impl Serialize for RelPath {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if let Some(text) = self.0.to_str() {
            return s.serialize_str(text);
        }
        let mut hex = String::from("hex:");
        for b in self.0.as_os_str().as_bytes() {
            use std::fmt::Write as _;
            let _ = write!(hex, "{b:02x}");
        }
        s.serialize_str(&hex)
    }
}

impl<'de> Deserialize<'de> for RelPath {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        if let Some(hex) = text.strip_prefix("hex:") {
            let bytes: Option<Vec<u8>> = (0..hex.len())
                .step_by(2)
                .map(|i| {
                    hex.get(i..i + 2)
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                })
                .collect();
            let bytes = bytes.ok_or_else(|| serde::de::Error::custom("bad hex path"))?;
            return Ok(RelPath(PathBuf::from(OsStr::from_bytes(&bytes))));
        }
        Ok(RelPath(PathBuf::from(text)))
    }
}

impl RelPath {
    /// The path.
    #[must_use]
    pub fn as_path(&self) -> &Path {
        &self.0
    }
}

/// The report categories.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    /// Session state files.
    Sessions,
    /// Event logs (split per job).
    Events,
    /// MapReduce job checkpoints and metadata.
    JobState,
    /// Dead-lettered items and their index.
    DeadLetters,
    /// Workflow checkpoints.
    Checkpoints,
    /// Other legacy storage files, kept verbatim.
    LegacyPreserved,
}

impl Category {
    /// All categories, in report order.
    pub const ALL: [Category; 6] = [
        Category::Sessions,
        Category::Events,
        Category::JobState,
        Category::DeadLetters,
        Category::Checkpoints,
        Category::LegacyPreserved,
    ];

    /// A label for people.
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Category::Sessions => "sessions",
            Category::Events => "events",
            Category::JobState => "job state",
            Category::DeadLetters => "dead letters",
            Category::Checkpoints => "checkpoints",
            Category::LegacyPreserved => "preserved legacy files",
        }
    }
}

/// One legacy storage file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    /// Path relative to the legacy directory.
    pub rel: RelPath,
    /// Size at planning time.
    pub size: u64,
    /// Modification time (seconds, nanoseconds since the epoch).
    pub mtime: (i64, u32),
    /// Permission bits.
    pub mode: u32,
    /// BLAKE3 of the content, filled in while staging.
    pub hash: Option<String>,
    /// Whether this is a global event log that is split per job.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub split: bool,
    /// For a split log: its lines, counted while staging (or previewing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split_lines: Option<u64>,
    /// Inode, size and change time at planning: any write changes the
    /// change time, so an equal fingerprint after staging proves the file
    /// was not written while it was copied.
    pub fingerprint: Fingerprint,
}

/// What identifies one version of a file without reading it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// Device.
    pub dev: u64,
    /// Inode.
    pub ino: u64,
    /// Size.
    pub size: u64,
    /// Change time (seconds, nanoseconds); no user call can set it back.
    pub ctime: (i64, i64),
}

impl Fingerprint {
    /// The fingerprint of `meta`.
    #[must_use]
    pub fn of(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

/// How an output is produced from its source.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Produce {
    /// A byte-for-byte copy.
    Copy,
    /// `metadata.json` with its `path` pointed at the new checkpoint location.
    RewriteMetadataPath,
    /// The lines of a global event log that belong to `job` (or to no job).
    SplitEvents {
        /// The job, or `None` for lines with no valid job id.
        job: Option<String>,
    },
}

/// What publishing did with an output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Fate {
    /// Not published yet.
    Pending,
    /// Published by this migration at `dest`.
    Published,
    /// `dest` already held identical content; nothing was written.
    AlreadyPresent,
    /// `dest` held different content; this output was published at `alt`.
    Conflict {
        /// Where this output went instead (relative to the store root).
        alt: RelPath,
    },
}

/// One file to publish into the store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Output {
    /// Destination relative to the store root.
    pub dest: RelPath,
    /// Index of the source in [`Manifest::sources`].
    pub source: usize,
    /// Other sources with identical content that this output also stands for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub duplicates: Vec<usize>,
    /// How it is produced.
    pub produce: Produce,
    /// Report category.
    pub category: Category,
    /// Size and hash, filled in while staging.
    pub size: Option<u64>,
    /// BLAKE3 of the content.
    pub hash: Option<String>,
    /// Lines, for split event logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lines: Option<u64>,
    /// What publishing did.
    pub fate: Fate,
}

/// A link, FIFO, socket or device found in the legacy tree: reported, left alone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Special {
    /// Path relative to the legacy directory.
    pub rel: RelPath,
    /// `symlink`, `fifo`, `socket`, `block device`, `char device`.
    pub kind: String,
    /// A link's target, as stored in the link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// Everything about one migration transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version of this file.
    #[serde(rename = "manifest_version")]
    pub format_version: u32,
    /// The transaction id (`YYYYmmddTHHMMSSZ-<hex>`), sortable by time.
    pub txid: String,
    /// The project directory (canonical).
    pub project: RelPath,
    /// The legacy directory (canonical).
    pub legacy_dir: RelPath,
    /// The repository key.
    pub repo: String,
    /// When it was planned (RFC 3339).
    pub created_at: String,
    /// Every legacy storage file.
    pub sources: Vec<Source>,
    /// Every file published into the store.
    pub outputs: Vec<Output>,
    /// Modes of the legacy directories that held sources (to recreate on rollback).
    pub dirs: Vec<(RelPath, u32)>,
    /// Storage directories holding only storage files, moved whole when retiring.
    #[serde(default)]
    pub pure_dirs: Vec<RelPath>,
    /// Links and special files, reported and left in place.
    pub specials: Vec<Special>,
    /// How many of the user's own files were left untouched.
    pub user_files: u64,
    /// Things worth knowing that did not stop the migration.
    pub warnings: Vec<String>,
}

/// The state of the one transaction in progress for a repository.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Copying into staging and verifying: nothing is published; recovery undoes.
    Staging,
    /// Publishing verified files: recovery finishes publishing.
    Publishing,
    /// Moving legacy files into the backup: recovery finishes.
    Retiring,
    /// Done; recovery only removes staging and the journal.
    Committed,
    /// A rollback is restoring legacy files: recovery finishes the rollback.
    RollingBack,
}

/// `migrations/<repo>/journal.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    /// The transaction.
    pub txid: String,
    /// Its state.
    pub phase: Phase,
    /// For a rollback: whether changed published files are moved aside.
    #[serde(default)]
    pub force: bool,
}

/// One line of `migrations/<repo>/history.jsonl`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// The transaction.
    pub txid: String,
    /// `migrated` or `rolled_back`.
    pub event: String,
    /// When (RFC 3339).
    pub at: String,
    /// Files published (migrated) or restored (rolled back).
    pub files: u64,
    /// Bytes of legacy storage concerned.
    pub bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_utf8_paths_round_trip() {
        let raw = OsStr::from_bytes(b"cache/\xff\xfe.json");
        let p = RelPath(PathBuf::from(raw));
        let text = serde_json::to_string(&p).expect("ser");
        assert_eq!(
            text,
            r#""hex:63616368652fff fe2e6a736f6e""#.replace(' ', "")
        );
        let back: RelPath = serde_json::from_str(&text).expect("de");
        assert_eq!(back, p);
        let plain: RelPath = serde_json::from_str(r#""a/b.json""#).expect("de");
        assert_eq!(plain.0, PathBuf::from("a/b.json"));
    }
}
