//! The command line, as clap sees it. Help texts here are the user's manual:
//! keep them true to what the code does (they are snapshot-tested).

// Reason: these doc comments are clap help text, shown to users as written.
#![allow(clippy::doc_markdown)]

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Prodigy's storage: one global store, and the import of old per-project data.
///
/// Prodigy keeps all its data (sessions, MapReduce job state, event logs,
/// dead-letter queues, checkpoints) in one global store: `--home`, else
/// `$PRODIGY_HOME`, else `~/.prodigy`. Older versions wrote the same data
/// into each project's `.prodigy/` directory; `migrate` moves that data into
/// the store (verified, all or nothing, with a backup), and `rollback` puts
/// it back. Your own files in `.prodigy/` (config, docs, scripts) are never
/// touched.
#[derive(Debug, Parser)]
#[command(
    name = "prodigy-storage",
    version,
    max_term_width = 100,
    verbatim_doc_comment,
    after_help = "\
Examples:
  prodigy-storage status                    # where the store is, and this project's legacy data
  prodigy-storage migrate --dry-run         # what migrate would do; changes nothing
  prodigy-storage migrate                   # move this project's legacy storage into the store
  prodigy-storage verify                    # check the latest migration and its backup
  prodigy-storage rollback                  # undo the latest migration
  prodigy-storage backups prune --older-than 30d
  prodigy-storage --home /tmp/store migrate ~/work/api --json"
)]
pub struct Cli {
    /// The store's directory [default: $PRODIGY_HOME, else ~/.prodigy]
    #[arg(long, global = true, value_name = "DIR")]
    pub home: Option<PathBuf>,

    /// The store: a `postgres://…` URL for a team's shared store, or a directory (as --home)
    /// [default: $PRODIGY_STORE, else the file store of --home]
    #[arg(long, global = true, value_name = "URL|DIR", conflicts_with = "home")]
    pub store: Option<String>,

    /// The PostgreSQL schema that holds a team's store's tables [default: prodigy]
    #[arg(long, global = true, value_name = "NAME")]
    pub schema: Option<String>,

    /// Print only errors
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,

    /// Print diagnostics on stderr (-v: what is being done, -vv: every file); RUST_LOG=LEVEL overrides
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

/// A project directory argument.
#[derive(Debug, Args)]
pub struct ProjectArg {
    /// The project [default: the git top level of the current directory, else the current directory]
    #[arg(value_name = "PROJECT")]
    pub project: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show where the store is, the project's key, legacy data found, migrations and backups
    Status {
        #[command(flatten)]
        project: ProjectArg,
        /// Print one JSON document (see docs/cli.md)
        #[arg(long)]
        json: bool,
    },
    /// Move the project's legacy `.prodigy/` storage into the store
    ///
    /// Only files that older Prodigy versions wrote as storage are moved
    /// (sessions, MapReduce state, event logs, dead letters, checkpoints and
    /// a few older caches); everything else in `.prodigy/` stays. Files are
    /// copied, verified byte for byte, published without overwriting anything,
    /// and the originals are kept in a backup inside the store until you prune
    /// it. An interrupted run is finished or undone by the next one. Running it
    /// again when there is nothing left to move changes nothing.
    #[command(
        verbatim_doc_comment,
        after_help = "\
Examples:
  prodigy-storage migrate --dry-run         # the plan: what goes where, warnings
  prodigy-storage migrate                   # the project of the current directory
  prodigy-storage migrate ~/work/api --json # another project; one JSON document"
    )]
    Migrate {
        #[command(flatten)]
        project: ProjectArg,
        /// Print the plan and change nothing
        #[arg(long)]
        dry_run: bool,
        /// Print one JSON document (see docs/cli.md)
        #[arg(long)]
        json: bool,
        /// Seconds to wait for another process migrating the same project
        #[arg(long, value_name = "SECS", default_value_t = 120)]
        wait: u64,
    },
    /// Check the latest migration: published files, backup, and legacy files left over
    ///
    /// Exits non-zero if the backup is damaged, a migration was interrupted,
    /// or legacy storage files are waiting to be migrated. Files that Prodigy
    /// changed or removed since the migration are reported but are not errors.
    #[command(verbatim_doc_comment)]
    Verify {
        #[command(flatten)]
        project: ProjectArg,
        /// Print one JSON document (see docs/cli.md)
        #[arg(long)]
        json: bool,
    },
    /// Undo the latest migration: restore the legacy files, remove what it published
    ///
    /// Restores every migrated file to `.prodigy/` byte for byte, with its mode
    /// and modification time. Refuses (and changes nothing) if files it would
    /// remove from the store changed since; `--force` then moves those aside
    /// instead of removing them. The backup stays until `backups prune`.
    #[command(
        verbatim_doc_comment,
        after_help = "\
Examples:
  prodigy-storage rollback                  # refuses if Prodigy changed migrated files since
  prodigy-storage rollback --force          # then moves those files aside instead"
    )]
    Rollback {
        #[command(flatten)]
        project: ProjectArg,
        /// Roll back even if published files changed; they are moved aside, not deleted
        #[arg(long)]
        force: bool,
        /// Print one JSON document (see docs/cli.md)
        #[arg(long)]
        json: bool,
        /// Seconds to wait for another process migrating the same project
        #[arg(long, value_name = "SECS", default_value_t = 120)]
        wait: u64,
    },
    /// List or prune the backups of legacy files that migrations keep
    Backups {
        #[command(subcommand)]
        action: BackupsAction,
    },
    /// Print the store's directory layout, one line per directory
    Layout,
    /// List every document and event log the store holds, with its size and time
    ///
    /// What Prodigy can read back through the storage API: sessions, job
    /// checkpoints, workflow checkpoints, dead letters, session-job mappings
    /// and event logs, per repository.
    #[command(visible_alias = "ls", verbatim_doc_comment)]
    List {
        /// Only this repository key
        #[arg(long, value_name = "REPO")]
        repo: Option<String>,
        /// Print one JSON document (see docs/cli.md)
        #[arg(long)]
        json: bool,
    },
    /// Print one document the store holds, as JSON (indented; --compact for one line)
    ///
    /// The document as Prodigy reads it back through the storage API, from
    /// either store (`--store postgres://…` too). KIND and its ids are what
    /// `list` shows in its KIND, JOB and ID columns. Exits 1 if there is no
    /// such document.
    #[command(
        verbatim_doc_comment,
        after_help = "\
Examples:
  prodigy-storage show dead-letter mapreduce-1757146800123 item_12 --repo api
  prodigy-storage show job-checkpoint mapreduce-1757146800123 3
  prodigy-storage show unified-session session-0b9f3c9e --compact"
    )]
    Show {
        /// What it is (each takes the ids named in its help)
        #[arg(value_enum)]
        kind: ShowKind,
        /// Its ids: SESSION; JOB VERSION; JOB; WORKFLOW; JOB ITEM; SESSION WORKFLOW; KIND NAME
        #[arg(required = true, value_name = "ID")]
        ids: Vec<String>,
        /// The repository [default: the current project's, if this store has registered it]
        #[arg(long, value_name = "REPO")]
        repo: Option<String>,
        /// One line instead of indented
        #[arg(long)]
        compact: bool,
    },
    /// Print a job's event log, one JSON record per line (--follow: and what is appended)
    ///
    /// Reads the log as Prodigy does: in order, a corrupt line skipped and
    /// said on stderr, a torn last line left for its writer to finish. With
    /// --json each line is `{"record": …, "cursor": …, "exact": …}`: --after
    /// with a cursor marked exact goes on right after its record, with one
    /// not exact from a little before it (a record may come again, none is
    /// skipped). Ctrl-C ends --follow.
    #[command(
        verbatim_doc_comment,
        after_help = "\
Examples:
  prodigy-storage events mapreduce-1757146800123 --repo api
  prodigy-storage events mapreduce-1757146800123 --follow --since 10m
  prodigy-storage events mapreduce-1757146800123 --json | tail -1   # the cursor to go on from"
    )]
    Events {
        /// The job (or session) whose log to print
        #[arg(value_name = "JOB")]
        job: String,
        /// The repository [default: the current project's, if this store has registered it]
        #[arg(long, value_name = "REPO")]
        repo: Option<String>,
        /// Keep printing what is appended, until interrupted
        #[arg(short, long)]
        follow: bool,
        /// Only records whose `timestamp` is at or after this: an age (90s, 10m, 2h, 1d) or an
        /// RFC 3339 time; records without one are printed
        #[arg(long, value_name = "AGE|TIME", value_parser = parse_since)]
        since: Option<std::time::SystemTime>,
        /// Go on after this cursor, as --json prints it
        #[arg(long, value_name = "CURSOR", value_parser = parse_cursor)]
        after: Option<storage_core::EventCursor>,
        /// Print each record with its cursor
        #[arg(long)]
        json: bool,
    },
    /// Upgrade a store that an older Prodigy wrote (layout 0) to the current layout
    ///
    /// Files already where the store reads them stay untouched; the others
    /// (dead letters nested `dlq/<repo>/<job>/mapreduce/dlq/…`, the one
    /// `session_state.json` per repository, rotated logs named `.gz`) are
    /// moved, verified, with the originals kept in a backup; what the store
    /// has no place for yet is kept verbatim under `legacy/.layout-0/`.
    /// `worktrees/` and `config.yml` are never touched. Commands that write
    /// to the store, and Prodigy's start-up, upgrade it first by themselves.
    #[command(verbatim_doc_comment)]
    Upgrade {
        /// Print the plan and change nothing
        #[arg(long)]
        dry_run: bool,
        /// Print one JSON document (see docs/cli.md)
        #[arg(long)]
        json: bool,
        /// Seconds to wait for another process upgrading the store
        #[arg(long, value_name = "SECS", default_value_t = 120)]
        wait: u64,
    },
    /// Give back the layout-0 store an upgrade started from, for an older Prodigy
    ///
    /// Restores every file the upgrade moved, byte for byte with modes and
    /// times, removes what it wrote, and removes `layout.json` last. Refuses
    /// (and changes nothing) if files it would remove changed since;
    /// `--force` then moves those aside. Prodigy's start-up leaves a
    /// downgraded store alone until you run `upgrade` again.
    #[command(verbatim_doc_comment)]
    Downgrade {
        /// Downgrade even if upgraded files changed; they are moved aside, not deleted
        #[arg(long)]
        force: bool,
        /// Print one JSON document (see docs/cli.md)
        #[arg(long)]
        json: bool,
        /// Seconds to wait for another process upgrading the store
        #[arg(long, value_name = "SECS", default_value_t = 120)]
        wait: u64,
    },
    /// Copy every document and event log of this store into another store
    ///
    /// For a team moving to a shared store. Nothing is removed from this
    /// store. Each document and log is read back from the destination and
    /// compared after it is written; what is done is journalled in this
    /// store (`migrations/.copy-store/`), so a copy that was interrupted
    /// resumes where it stopped, never appending an event twice. Running it
    /// again after it finished copies nothing.
    ///
    /// A document the destination already holds is never replaced
    /// silently: equal to this store's, it is left as it is; different (or
    /// unreadable), it is left as it is and reported as a conflict, the
    /// rest is copied, and the command exits with status 1. Compare the
    /// two, then delete the destination's document and run copy-store
    /// again, or run it again with --overwrite.
    #[command(name = "copy-store")]
    CopyStore {
        /// The destination: a `postgres://…` URL, or a directory (another file store)
        #[arg(long, value_name = "URL|DIR")]
        to: String,
        /// Replace documents in the destination that differ from this store's (they are still listed as conflicts, overwritten)
        #[arg(long)]
        overwrite: bool,
        /// Print one JSON document (see docs/cli.md)
        #[arg(long)]
        json: bool,
    },
}

/// The kinds of document `show` prints, with the ids each takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ShowKind {
    /// A repository's session: SESSION
    Session,
    /// A MapReduce job's checkpoint: JOB VERSION
    JobCheckpoint,
    /// A MapReduce job's `metadata.json`: JOB
    JobMetadata,
    /// A repository's workflow checkpoint: WORKFLOW
    WorkflowCheckpoint,
    /// A dead letter: JOB ITEM
    DeadLetter,
    /// A job's dead-letter index: JOB
    DeadLetterIndex,
    /// A session's job: SESSION
    SessionJob,
    /// A unified session (global, no repository): SESSION
    UnifiedSession,
    /// A unified session's checkpoint (global): SESSION
    SessionCheckpoint,
    /// A unified session's workflow checkpoint (global): SESSION WORKFLOW
    SessionWorkflowCheckpoint,
    /// A document of an extension kind: KIND NAME
    Ext,
}

impl ShowKind {
    /// The ids it takes, in order.
    #[must_use]
    pub fn ids(self) -> &'static [&'static str] {
        match self {
            Self::Session | Self::SessionJob | Self::UnifiedSession | Self::SessionCheckpoint => {
                &["SESSION"]
            }
            Self::JobCheckpoint => &["JOB", "VERSION"],
            Self::JobMetadata | Self::DeadLetterIndex => &["JOB"],
            Self::WorkflowCheckpoint => &["WORKFLOW"],
            Self::DeadLetter => &["JOB", "ITEM"],
            Self::SessionWorkflowCheckpoint => &["SESSION", "WORKFLOW"],
            Self::Ext => &["KIND", "NAME"],
        }
    }

    /// Its name on the command line.
    #[must_use]
    pub fn name(self) -> String {
        clap::ValueEnum::to_possible_value(&self)
            .map(|v| v.get_name().to_owned())
            .unwrap_or_default()
    }
}

#[derive(Debug, Subcommand)]
pub enum BackupsAction {
    /// List every backup, with its size and age
    List {
        /// Print one JSON document (see docs/cli.md)
        #[arg(long)]
        json: bool,
    },
    /// Delete backups older than a given age (the migration can then no longer be rolled back)
    #[command(after_help = "\
Examples:
  prodigy-storage backups prune --older-than 30d --dry-run   # what would go
  prodigy-storage backups prune --older-than 30d")]
    Prune {
        /// Minimum age: a number with a unit, e.g. 30d, 12h, 90m, 0s (all)
        #[arg(long, value_name = "AGE", value_parser = parse_age)]
        older_than: std::time::Duration,
        /// Show what would be deleted, delete nothing
        #[arg(long)]
        dry_run: bool,
        /// Also delete the backups of each project's latest migration (the only
        /// way to roll it back: its own and its sub-directories') and backups
        /// that hold bytes found nowhere else
        /// (a split event log, a rewritten metadata.json); kept without it
        #[arg(long)]
        force: bool,
        /// Print one JSON document (see docs/cli.md)
        #[arg(long)]
        json: bool,
    },
}

/// Parses `30d`, `12h`, `90m`, `45s`.
pub fn parse_age(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    let (digits, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{text}` is not an age like 30d, 12h, 90m or 45s"))?;
    let secs = match unit {
        "d" => n.checked_mul(86_400),
        "h" => n.checked_mul(3_600),
        "m" => n.checked_mul(60),
        "s" => Some(n),
        _ => None,
    }
    .ok_or_else(|| format!("`{text}` is not an age like 30d, 12h, 90m or 45s"))?;
    Ok(std::time::Duration::from_secs(secs))
}

/// `--since`: an age (`90s`, `10m`, `2h`, `1d`) or an RFC 3339 time.
pub fn parse_since(text: &str) -> Result<std::time::SystemTime, String> {
    if let Ok(age) = parse_age(text) {
        return Ok(std::time::SystemTime::now()
            .checked_sub(age)
            .unwrap_or(std::time::UNIX_EPOCH));
    }
    storage_core::parse_rfc3339(text.trim()).ok_or_else(|| {
        format!(
            "`{text}` is neither an age (90s, 10m, 2h, 1d) nor an RFC 3339 time \
             (2026-12-07T10:00:00Z, 2026-12-07T11:00:00+01:00)"
        )
    })
}

/// `--after`: a cursor as `events --json` prints it.
pub fn parse_cursor(text: &str) -> Result<storage_core::EventCursor, String> {
    serde_json::from_str(text).map_err(|e| {
        format!("`{text}` is not a cursor as `events --json` prints it (`{{\"segment\": …}}`): {e}")
    })
}
