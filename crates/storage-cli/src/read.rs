//! `show` and `events`: reading what the store holds, on either store,
//! through the `Storage` API only (so what they print is what Prodigy
//! reads back, with the API's cursor guarantees).

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use storage_core::{
    DocKey, EventCursor, EventRecord, ExtKind, ItemId, JobId, ReadMode, RepoKey, SessionId,
    Storage, WorkflowId,
};

use crate::cli::ShowKind;

/// How long one wait of `events --follow` lasts before it looks again
/// (the store wakes it earlier when the log grows).
const WAIT_SLICE: Duration = Duration::from_secs(1);

/// The key `kind` and `ids` name in `repo` (`None`: the kind is global).
pub fn doc_key(kind: ShowKind, repo: Option<&RepoKey>, ids: &[String]) -> Result<DocKey> {
    let want = kind.ids();
    if ids.len() != want.len() {
        bail!(
            "`show {}` takes {} id(s), {}; got {}",
            kind.name(),
            want.len(),
            want.join(" "),
            ids.len()
        );
    }
    let repo = || -> Result<RepoKey> {
        repo.cloned().context(
            "name the repository with --repo (or run it in a project registered in this store; \
             `prodigy-storage list` shows every repository)",
        )
    };
    let id = |i: usize| ids[i].as_str();
    let job = |i: usize| JobId::new(id(i)).map_err(anyhow::Error::from);
    let session = |i: usize| SessionId::new(id(i)).map_err(anyhow::Error::from);
    let workflow = |i: usize| WorkflowId::new(id(i)).map_err(anyhow::Error::from);
    Ok(match kind {
        ShowKind::Session => DocKey::Session {
            repo: repo()?,
            session: session(0)?,
        },
        ShowKind::JobCheckpoint => DocKey::JobCheckpoint {
            repo: repo()?,
            job: job(0)?,
            // `3`, or `v3` as `list` shows it.
            version: id(1)
                .strip_prefix('v')
                .unwrap_or(id(1))
                .parse()
                .with_context(|| {
                    format!(
                        "`{}` is not a checkpoint version (a number, or v<N> as `list` shows it)",
                        id(1)
                    )
                })?,
        },
        ShowKind::JobMetadata => DocKey::JobMetadata {
            repo: repo()?,
            job: job(0)?,
        },
        ShowKind::WorkflowCheckpoint => DocKey::WorkflowCheckpoint {
            repo: repo()?,
            workflow: workflow(0)?,
        },
        ShowKind::DeadLetter => DocKey::DeadLetter {
            repo: repo()?,
            job: job(0)?,
            item: ItemId::new(id(1))?,
        },
        ShowKind::DeadLetterIndex => DocKey::DeadLetterIndex {
            repo: repo()?,
            job: job(0)?,
        },
        ShowKind::SessionJob => DocKey::SessionJob {
            repo: repo()?,
            session: session(0)?,
        },
        ShowKind::UnifiedSession => DocKey::UnifiedSession {
            session: session(0)?,
        },
        ShowKind::SessionCheckpoint => DocKey::SessionCheckpoint {
            session: session(0)?,
        },
        ShowKind::SessionWorkflowCheckpoint => DocKey::SessionWorkflowCheckpoint {
            session: session(0)?,
            workflow: workflow(1)?,
        },
        ShowKind::Ext => DocKey::Extension {
            repo: repo()?,
            kind: ExtKind::new(id(0))?,
            name: storage_core::DocName::new(id(1))?,
        },
    })
}

/// `show` or `events` (`command`) on `store`, in `repo` (`--repo`, or the
/// default the caller found); `no_repo` says why there is none.
pub fn run(
    command: &crate::cli::Command,
    store: &dyn Storage,
    repo: Option<RepoKey>,
    no_repo: &str,
) -> Result<ExitCode> {
    use crate::cli::Command;
    match command {
        Command::Show {
            kind, ids, compact, ..
        } => {
            let key = doc_key(*kind, repo.as_ref(), ids)?;
            show(
                store,
                &key,
                &show_label(*kind, repo.as_ref(), ids),
                *compact,
            )
        }
        Command::Events {
            job,
            follow,
            since,
            after,
            json,
            ..
        } => {
            let Some(repo) = repo else {
                bail!("name the repository with --repo ({no_repo})");
            };
            let opts = EventsOptions {
                follow: *follow,
                since: *since,
                after: after.clone(),
                json: *json,
            };
            events(store, &repo, &JobId::new(job)?, &opts)
        }
        _ => unreachable!("only show and events read this way"),
    }
}

/// "session `s1` of repository `api`": what `show` looked for.
fn show_label(kind: ShowKind, repo: Option<&storage_core::RepoKey>, ids: &[String]) -> String {
    let ids: Vec<String> = ids.iter().map(|i| format!("`{i}`")).collect();
    match repo {
        Some(r)
            if !matches!(
                kind,
                ShowKind::UnifiedSession
                    | ShowKind::SessionCheckpoint
                    | ShowKind::SessionWorkflowCheckpoint
            ) =>
        {
            format!("{} {} of repository `{r}`", kind.name(), ids.join(" "))
        }
        _ => format!("{} {}", kind.name(), ids.join(" ")),
    }
}

/// `show`: the document, indented (or on one line), or exit 1 naming it
/// (`what`: its kind and ids as given).
pub fn show(store: &dyn Storage, key: &DocKey, what: &str, compact: bool) -> Result<ExitCode> {
    let Some(doc) = store.get(key)? else {
        let mut err = anstream::stderr().lock();
        let _ = writeln!(
            err,
            "error: this store holds no {what}; `prodigy-storage list` shows what it holds"
        );
        return Ok(ExitCode::FAILURE);
    };
    let text = if compact {
        serde_json::to_string(&doc)?
    } else {
        serde_json::to_string_pretty(&doc)?
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")?;
    Ok(ExitCode::SUCCESS)
}

/// What `events` prints and from where.
pub struct EventsOptions {
    pub follow: bool,
    pub since: Option<SystemTime>,
    pub after: Option<EventCursor>,
    pub json: bool,
}

/// `events`: the log of `job` from its start (or after a cursor), one
/// record per line; with `follow`, then every record appended, until
/// interrupted. Records are read leniently: a corrupt line is skipped and
/// said on stderr, a torn last line waits for its end.
pub fn events(
    store: &dyn Storage,
    repo: &RepoKey,
    job: &JobId,
    opts: &EventsOptions,
) -> Result<ExitCode> {
    if !opts.follow && store.event_log_entry(repo, job)?.is_none() {
        let mut err = anstream::stderr().lock();
        let _ = writeln!(
            err,
            "error: repository `{repo}` has no event log of job `{job}`; `prodigy-storage list --repo {repo}` shows its logs"
        );
        return Ok(ExitCode::FAILURE);
    }
    let mut cursor = opts.after.clone().unwrap_or(EventCursor::START);
    let mut out = std::io::stdout().lock();
    let mut failed: Option<std::io::Error> = None;
    loop {
        let start = cursor.clone();
        // The last record of a pass is printed with the pass's end, the
        // only exact cursor (as the API's followers do).
        let mut held: Option<EventRecord> = None;
        let mut print = |record: &EventRecord, at: &EventCursor, exact: bool| {
            if failed.is_some() || !opts.since.is_none_or(|t| recent(record, t)) {
                return;
            }
            let line = if opts.json {
                serde_json::json!({"record": record.json(), "cursor": at, "exact": exact})
                    .to_string()
            } else {
                serde_json::to_string(record.json()).unwrap_or_default()
            };
            if let Err(e) = writeln!(out, "{line}") {
                failed = Some(e);
            }
        };
        let summary =
            store.read_events_from(repo, job, &start, ReadMode::Lenient, &mut |record| {
                if let Some(previous) = held.replace(record) {
                    print(&previous, &start, false);
                }
            })?;
        if let Some(last) = held {
            print(&last, &summary.next, true);
        }
        if let Some(e) = failed {
            // A closed pipe (`events … | head`) ends quietly.
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                return Ok(ExitCode::SUCCESS);
            }
            return Err(e).context("cannot write to standard output");
        }
        out.flush().ok();
        report(&summary);
        cursor = summary.next;
        if !opts.follow {
            return Ok(ExitCode::SUCCESS);
        }
        while !store.wait_for_events(repo, job, &cursor, WAIT_SLICE)? {}
    }
}

/// Says on stderr what a read skipped or started over.
fn report(summary: &storage_core::EventLogSummary) {
    let mut err = anstream::stderr().lock();
    if summary.restarted {
        let _ = writeln!(
            err,
            "note: the cursor no longer fits this log (it was deleted and begun again, or \
             the cursor is from elsewhere): read from the log's start"
        );
    }
    for skipped in &summary.skipped {
        let _ = writeln!(err, "warning: skipped a corrupt line: {skipped}");
    }
}

/// Whether `record`'s `timestamp` is at or after `since` (a record without a
/// readable one is shown: it is never hidden for a time it does not have).
fn recent(record: &EventRecord, since: SystemTime) -> bool {
    record
        .json()
        .get("timestamp")
        .and_then(serde_json::Value::as_str)
        .and_then(storage_core::parse_rfc3339)
        .is_none_or(|t| t >= since)
}

/// One document or event log of a store read through the API (a team's
/// store: no path to show), as `list --json` prints it.
#[cfg(feature = "postgres")]
#[derive(Clone, Debug, serde::Serialize)]
pub struct Item {
    pub kind: String,
    pub repo: Option<String>,
    pub job: Option<String>,
    pub id: Option<String>,
    pub size: u64,
    pub modified: String,
}

/// Every document and event log of `store` (of `repo` only, if given),
/// through the `Storage` API: what `list` shows for a team's store, in the
/// file store's order (repository, kind, job, id).
#[cfg(feature = "postgres")]
pub fn inventory(store: &dyn Storage, repo: Option<&RepoKey>) -> Result<Vec<Item>> {
    let mut out = Vec::new();
    let push = |key: &DocKey, out: &mut Vec<Item>| -> Result<()> {
        let Some(entry) = store.entry(key)? else {
            return Ok(());
        };
        let (job, id) = storage_fs::list_columns(key);
        out.push(Item {
            kind: key.kind().to_owned(),
            repo: key.repo().map(ToString::to_string),
            job,
            id,
            size: entry.bytes,
            modified: storage_fs::time::rfc3339(entry.modified),
        });
        Ok(())
    };
    if repo.is_none() {
        for key in store.list(&storage_core::Scope::UnifiedSessions)? {
            push(&key, &mut out)?;
            if let DocKey::UnifiedSession { session } = &key {
                push(
                    &DocKey::SessionCheckpoint {
                        session: session.clone(),
                    },
                    &mut out,
                )?;
                for k in store.list(&storage_core::Scope::SessionWorkflowCheckpoints(
                    session.clone(),
                ))? {
                    push(&k, &mut out)?;
                }
            }
        }
    }
    let repos = match repo {
        Some(r) => vec![r.clone()],
        None => store.repos()?,
    };
    for repo in &repos {
        use storage_core::Scope;
        for kind in store.extension_kinds(repo)? {
            for key in store.list(&Scope::Extension(repo.clone(), kind))? {
                push(&key, &mut out)?;
            }
        }
        for scope in [
            Scope::Sessions(repo.clone()),
            Scope::WorkflowCheckpoints(repo.clone()),
            Scope::SessionJobs(repo.clone()),
        ] {
            for key in store.list(&scope)? {
                push(&key, &mut out)?;
            }
        }
        for job in store.jobs(repo)? {
            for key in store.list(&Scope::JobCheckpoints(repo.clone(), job.clone()))? {
                push(&key, &mut out)?;
            }
            push(
                &DocKey::JobMetadata {
                    repo: repo.clone(),
                    job,
                },
                &mut out,
            )?;
        }
        for job in store.jobs_with_dead_letters(repo)? {
            for key in store.list(&Scope::DeadLetters(repo.clone(), job.clone()))? {
                push(&key, &mut out)?;
            }
            push(
                &DocKey::DeadLetterIndex {
                    repo: repo.clone(),
                    job,
                },
                &mut out,
            )?;
        }
        for job in store.event_logs(repo)? {
            if let Some(log) = store.event_log_entry(repo, &job)? {
                out.push(Item {
                    kind: "event log".to_owned(),
                    repo: Some(repo.to_string()),
                    job: Some(job.to_string()),
                    id: None,
                    size: log.bytes,
                    modified: storage_fs::time::rfc3339(log.modified),
                });
            }
        }
    }
    Ok(out)
}
