//! The other process of the multi-process tests: this test binary run with
//! `PRODIGY_PG_WORKER` set to a JSON array of arguments (see
//! `support::worker`). Without it, this test does nothing.
//!
//! - `append URL SCHEMA JOB COUNT WRITER`: COUNT appends of one event
//!   `{writer, seq}` each; says `done`.
//! - `save-loop URL SCHEMA SESSION WRITER PAD`: saves the session with a
//!   PAD-byte field again and again until killed; says `saving` after the first.
//! - `hold-lock URL SCHEMA KEY`: takes the lock and sleeps until killed; says `locked`.

use std::io::Write as _;

use serde_json::json;
use storage_core::{
    EventRecord, JobId, LockHolder, LockKey, LockWait, RepoKey, SessionRecord, Storage, StorageExt,
};
use storage_postgres::{PgOptions, PgStorage};

fn say(what: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "worker: {what}").expect("stdout");
    out.flush().expect("flush");
}

#[test]
fn run_when_spawned() {
    let Ok(spec) = std::env::var(crate::support::WORKER_VAR) else {
        return;
    };
    let args: Vec<String> = serde_json::from_str(&spec).expect("worker args");
    let store =
        PgStorage::connect_with(&args[1], PgOptions::default().schema(&args[2]).pool_size(1))
            .expect("worker connects");
    let repo = RepoKey::new("proj").expect("valid");
    match args[0].as_str() {
        "append" => {
            let job = JobId::new(args[3].as_str()).expect("valid");
            let count: u64 = args[4].parse().expect("count");
            let writer: u64 = args[5].parse().expect("writer");
            for seq in 0..count {
                let e = EventRecord::from_json(json!({
                    "id": format!("w{writer}-{seq}"),
                    "event": {"event_type": "agent_completed", "writer": writer, "seq": seq}
                }))
                .expect("object");
                store.append_events(&repo, &job, &[e]).expect("append");
            }
            say("done");
        }
        "save-loop" => {
            let writer: u64 = args[4].parse().expect("writer");
            let pad: usize = args[5].parse().expect("pad");
            for n in 0u64.. {
                let rec = SessionRecord::from_json(json!({
                    "session_id": args[3], "writer": writer, "n": n,
                    "pad": "x".repeat(pad), "pad_len": pad
                }))
                .expect("valid");
                store.save_session(&repo, &rec).expect("save");
                if n == 0 {
                    say("saving");
                }
            }
        }
        "hold-lock" => {
            let key = LockKey::new(args[3].as_str()).expect("valid");
            let me = LockHolder {
                job_id: args[3].clone(),
                process_id: std::process::id(),
                hostname: "worker-host".into(),
                acquired_at: "2026-12-01T00:00:00Z".into(),
            };
            let _guard = store.lock(&key, &me, LockWait::NoWait).expect("lock");
            say("locked");
            loop {
                std::thread::sleep(std::time::Duration::from_secs(60));
            }
        }
        other => panic!("unknown worker verb {other}"),
    }
}
