//! The legacy per-project layout: the only module that knows it.
//!
//! Legacy storage is recognised by an allow-list of names and directories
//! taken from what Prodigy's code really wrote (not what its docs promised);
//! see `docs/migration.md` for the table. Anything not on the list belongs to
//! the user and is never moved, rewritten or deleted.
//!
//! Inside the directories Prodigy owned outright (`mapreduce/`, and the
//! documented-but-unwritten `events/`, `dlq/`, `state/`), every regular file is
//! storage: known files are routed to their typed home in the store, unknown
//! ones are preserved verbatim in the repository's legacy area. In the shared
//! directories (`history/`, `cache/`, `progress/`, `checkpoints/`) only the
//! file names Prodigy wrote are storage.

use storage_core::{ItemId, JobId, SessionId, WorkflowId};

/// What a legacy file is, by its path relative to `.prodigy/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Class {
    /// `session_state.json`: the session id is read from its content.
    SessionState,
    /// `session-<uuid>.json`: a (non-atomic) copy of a session's state.
    SessionCopy(SessionId),
    /// `mapreduce/jobs/<job>/checkpoint-v<N>.json`.
    JobCheckpoint(JobId, u64),
    /// `mapreduce/jobs/<job>/metadata.json` (holds an absolute `path`).
    JobMetadata(JobId),
    /// `mapreduce/dlq/<job>/items/<item>.json`.
    DeadLetter(JobId, ItemId),
    /// `mapreduce/dlq/<job>/index.json`.
    DeadLetterIndex(JobId),
    /// `checkpoints/<workflow>.checkpoint.json`.
    WorkflowCheckpoint(WorkflowId),
    /// `mapreduce/events/global/events.jsonl` or a rotated `events.<ts>.jsonl.gz`
    /// (plain text despite the name; a real gzip is preserved instead).
    GlobalEventLog,
    /// Other storage files: kept verbatim in the store's legacy area.
    Preserved,
    /// Not storage: the user's, never touched.
    User,
}

impl Class {
    /// Whether the file is legacy storage (anything but [`Class::User`]).
    #[must_use]
    pub fn is_storage(&self) -> bool {
        *self != Class::User
    }
}

/// The top-level directories of `.prodigy/` that Prodigy owned outright.
const OWNED_DIRS: [&str; 4] = ["mapreduce", "events", "dlq", "state"];

/// Whether a directory (by its components) can hold storage files at all;
/// the walk still descends into others only to count user files.
#[must_use]
pub fn is_storage_dir(components: &[&str]) -> bool {
    match components.first() {
        Some(first) => {
            OWNED_DIRS.contains(first)
                || (components.len() == 1
                    && ["history", "cache", "progress", "checkpoints"].contains(first))
        }
        None => false,
    }
}

/// Classifies a regular file by its path components relative to `.prodigy/`.
// Reason: Prodigy wrote these exact lowercase names; `X.JSON` is not one of them.
#[allow(clippy::case_sensitive_file_extension_comparisons)]
/// `None` components (non-UTF-8 names) are storage only inside owned directories.
#[must_use]
pub fn classify(components: &[Option<&str>]) -> Class {
    let Some(first) = components.first() else {
        return Class::User;
    };
    let Some(first) = *first else {
        return Class::User;
    };
    if OWNED_DIRS.contains(&first) && components.len() > 1 {
        let utf8: Option<Vec<&str>> = components.iter().copied().collect();
        return utf8.map_or(Class::Preserved, |c| classify_owned(&c));
    }
    let name = match components {
        [_] => first,
        [_, Some(name)] => name,
        _ => return Class::User,
    };
    if components.len() == 1 {
        return classify_top(name);
    }
    match first {
        "history" | "progress" if name.ends_with(".json") => Class::Preserved,
        "cache" if name.ends_with(".json") || name.ends_with(".tmp") => Class::Preserved,
        "checkpoints" => {
            if let Some(stem) = name.strip_suffix(".checkpoint.json") {
                WorkflowId::new(stem).map_or(Class::Preserved, Class::WorkflowCheckpoint)
            } else if name.ends_with(".checkpoint.tmp") {
                Class::Preserved
            } else {
                Class::User
            }
        }
        _ => Class::User,
    }
}

fn classify_top(name: &str) -> Class {
    if name == "session_state.json" {
        return Class::SessionState;
    }
    if name.starts_with("session_state.tmp.")
        || name == "state.json"
        || name.starts_with("state.json.tmp.")
        || name.starts_with("state.json.corrupted.")
    {
        return Class::Preserved;
    }
    if let Some(stem) = name.strip_suffix(".json")
        && stem.starts_with("session-")
    {
        return SessionId::new(stem).map_or(Class::Preserved, Class::SessionCopy);
    }
    Class::User
}

fn classify_owned(c: &[&str]) -> Class {
    match c {
        ["mapreduce", "jobs", job, name] => {
            let Ok(job) = JobId::new(*job) else {
                return Class::Preserved;
            };
            if *name == "metadata.json" {
                return Class::JobMetadata(job);
            }
            match storage_fs::layout::checkpoint_version(name) {
                Some(v) => Class::JobCheckpoint(job, v),
                None => Class::Preserved,
            }
        }
        ["mapreduce", "dlq", job, "index.json"] => {
            JobId::new(*job).map_or(Class::Preserved, Class::DeadLetterIndex)
        }
        ["mapreduce", "dlq", job, "items", item] => {
            match (
                JobId::new(*job),
                item.strip_suffix(".json").map(ItemId::new),
            ) {
                (Ok(job), Some(Ok(item))) => Class::DeadLetter(job, item),
                _ => Class::Preserved,
            }
        }
        ["mapreduce", "events", "global", name]
            if *name == "events.jsonl"
                || (name.starts_with("events.") && name.ends_with(".jsonl.gz")) =>
        {
            Class::GlobalEventLog
        }
        _ => Class::Preserved,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(path: &str, expect: &Class) {
        let parts: Vec<Option<&str>> = path.split('/').map(Some).collect();
        assert_eq!(&classify(&parts), expect, "{path}");
    }

    #[test]
    fn storage_files_as_prodigy_wrote_them() {
        let job = JobId::new("mapreduce-1757146800123").expect("valid");
        check("session_state.json", &Class::SessionState);
        check(
            "session-0b9f3c9e-6f2d-4d57-a3c4-5a8e2b1d7f10.json",
            &Class::SessionCopy(
                SessionId::new("session-0b9f3c9e-6f2d-4d57-a3c4-5a8e2b1d7f10").expect("v"),
            ),
        );
        for p in [
            "session_state.tmp.1757146800123456789",
            "state.json",
            "state.json.tmp.1",
            "state.json.corrupted.1",
            "history/20250906_082000_0a1b2c3d.json",
            "cache/k.json",
            "cache/k.tmp",
            "progress/mapreduce-1.json",
            "progress/mapreduce-1_history.json",
            "checkpoints/workflow-1.checkpoint.tmp",
            "mapreduce/jobs/mapreduce-1757146800123/checkpoint-v3.tmp",
            "mapreduce/events/global/events.20250906_082000.jsonl.zst",
            "events/archive/events_archive_20250906_082000.jsonl.gz",
            "dlq/mapreduce-1.json",
            "state/anything/at/all.bin",
            "mapreduce/unknown/file",
        ] {
            check(p, &Class::Preserved);
        }
        check(
            "mapreduce/jobs/mapreduce-1757146800123/checkpoint-v3.json",
            &Class::JobCheckpoint(job.clone(), 3),
        );
        check(
            "mapreduce/jobs/mapreduce-1757146800123/metadata.json",
            &Class::JobMetadata(job.clone()),
        );
        check(
            "mapreduce/dlq/mapreduce-1757146800123/index.json",
            &Class::DeadLetterIndex(job.clone()),
        );
        check(
            "mapreduce/dlq/mapreduce-1757146800123/items/item_12.json",
            &Class::DeadLetter(job, ItemId::new("item_12").expect("v")),
        );
        check(
            "mapreduce/events/global/events.jsonl",
            &Class::GlobalEventLog,
        );
        check(
            "mapreduce/events/global/events.20250906_082000.jsonl.gz",
            &Class::GlobalEventLog,
        );
        check(
            "checkpoints/workflow-1757850041656.checkpoint.json",
            &Class::WorkflowCheckpoint(WorkflowId::new("workflow-1757850041656").expect("v")),
        );
    }

    #[test]
    fn the_users_files_are_not_storage() {
        for p in [
            "config.yml",
            "workflow.yml",
            "PROJECT.md",
            "context/analysis.json",
            "metrics/current.json",
            "book-analysis/chapters.json",
            "validation-result.json",
            "plan-1.md",
            "map-results.json",
            "helper.py",
            "history/notes.md",
            "cache/README",
            "checkpoints/my-notes.txt",
            "session_notes.json",
            "history/deeper/20250906_082000_0a1b2c3d.json",
        ] {
            check(p, &Class::User);
        }
    }

    #[test]
    fn odd_ids_in_storage_paths_are_preserved_not_dropped() {
        check(
            "mapreduce/jobs/.hidden/checkpoint-v1.json",
            &Class::Preserved,
        );
        check("mapreduce/dlq/job/items/.x.json", &Class::Preserved);
        check("checkpoints/.x.checkpoint.json", &Class::Preserved);
        check(
            "session-.json",
            &Class::SessionCopy(SessionId::new("session-").expect("v")),
        );
        assert_eq!(classify(&[Some("mapreduce"), None]), Class::Preserved);
        assert_eq!(classify(&[None]), Class::User);
    }
}
