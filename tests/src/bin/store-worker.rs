//! The other process in multi-process store tests.
//!
//! ```text
//! store-worker append    <root> <project> <job> <count> <writer>   one event per append
//! store-worker save-loop <root> <project> <session> <writer> <pad-bytes>  forever
//! store-worker hold-lock <root> <key>     prints `locked` once held, then sleeps
//! store-worker ensure    <root> <project> prints what Prodigy's start-up hook did
//! store-worker read      <root> <project> <job>   prints `records <n> torn <bytes>...`
//! store-worker hold-temp <root> <dir> <name>  a locked temp file in <dir>, renamed to
//!                                   <name>; prints `holding` then sleeps
//! ```
//!
//! With `STORE_WORKER_PEAK=1` in its environment, the worker prints
//! `peak-rss-kib <VmHWM>` as its last stdout line (from `/proc/self/status`).

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::json;
use storage_core::{EventRecord, JobId, LockKey, LockWait, SessionRecord, Storage, StorageExt};
use storage_fs::FsStorage;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg =
        |i: usize| -> Result<&str> { args.get(i).map(String::as_str).context("missing argument") };
    let store = FsStorage::open(PathBuf::from(arg(1)?))?;
    match arg(0)? {
        "append" => {
            let repo = store.repo_key(&PathBuf::from(arg(2)?))?;
            let job = JobId::new(arg(3)?)?;
            let count: u64 = arg(4)?.parse()?;
            let writer: u64 = arg(5)?.parse()?;
            for seq in 0..count {
                let event = EventRecord::from_json(json!({
                    "id": format!("w{writer}-{seq}"),
                    "timestamp": "2025-09-06T08:31:02.907114Z",
                    "correlation_id": "c",
                    "event": {"event_type": "agent_completed", "job_id": job.as_str(),
                              "writer": writer, "seq": seq, "pad": "x".repeat(200)},
                    "metadata": {"host": "h", "pid": std::process::id()}
                }))?;
                store.append_events(&repo, &job, &[event])?;
            }
        }
        "save-loop" => {
            let repo = store.repo_key(&PathBuf::from(arg(2)?))?;
            let session = arg(3)?;
            let writer: u64 = arg(4)?.parse()?;
            let pad: usize = arg(5)?.parse()?;
            let mut n = 0u64;
            loop {
                // The pad length is derived from the writer, so a reader can
                // check that a document it reads is whole and not a mix.
                let doc = json!({"session_id": session, "writer": writer, "n": n,
                                 "pad": "w".repeat(pad), "pad_len": pad});
                store.save_session(&repo, &SessionRecord::from_json(doc)?)?;
                n += 1;
                if n == 1 {
                    println!("saving");
                    std::io::stdout().flush()?;
                }
            }
        }
        "hold-lock" => {
            let key = LockKey::new(arg(2)?)?;
            let holder = storage_fs::lock::this_process(key.as_str());
            let _guard = store.lock(&key, &holder, LockWait::Timeout(Duration::from_secs(30)))?;
            println!("locked");
            std::io::stdout().flush()?;
            loop {
                std::thread::park();
            }
        }
        "ensure" => match storage_migrate::ensure_migrated(&store, &PathBuf::from(arg(2)?)) {
            storage_migrate::AutoOutcome::NothingToDo => println!("nothing"),
            storage_migrate::AutoOutcome::Migrated(r) => println!("migrated {}", r.legacy_files),
            storage_migrate::AutoOutcome::Skipped { reason } => println!("skipped {reason}"),
            storage_migrate::AutoOutcome::Failed(e) => println!("failed {e}"),
            _ => println!("other"),
        },
        "read" => {
            let repo = store.repo_key(&PathBuf::from(arg(2)?))?;
            let job = JobId::new(arg(3)?)?;
            let summary = store.read_events(&repo, &job, &mut |_| {})?;
            let torn: Vec<String> = summary
                .torn_tails
                .iter()
                .map(|t| t.bytes.to_string())
                .collect();
            println!("records {} torn {}", summary.records, torn.join(" "));
        }
        "hold-temp" => {
            // A writer in the middle of a write: its temp file stays locked
            // (under whatever name, e.g. one with a pid not alive here).
            let dir = PathBuf::from(arg(2)?);
            let (tmp, _writing) = storage_fs::fsx::create_temp(&dir, "session-9.json")?;
            std::fs::rename(&tmp, dir.join(arg(3)?))?;
            println!("holding");
            std::io::stdout().flush()?;
            loop {
                std::thread::park();
            }
        }
        other => bail!("unknown command {other}"),
    }
    if std::env::var_os("STORE_WORKER_PEAK").is_some() {
        let status = std::fs::read_to_string("/proc/self/status")?;
        let peak = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .context("no VmHWM in /proc/self/status")?;
        println!("peak-rss-kib {}", peak.trim().trim_end_matches("kB").trim());
    }
    Ok(())
}
