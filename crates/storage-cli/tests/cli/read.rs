//! `show` and `events`: reading back what the store holds (issue 23).

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use storage_core::{DocKey, EventRecord, JobId, RepoKey, Storage};

use crate::support::{cmd, fixture, fixture_sandbox, run};

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `show` prints the document the API reads, indented or on one line,
/// defaulting to the current project's repository; a missing one exits 1
/// naming it, and a wrong number of ids names the ones the kind takes.
#[test]
fn show_prints_a_document_as_the_api_reads_it() {
    let sb = fixture_sandbox();
    run(&sb, &["migrate"], true);
    let store = storage_fs::FsStorage::open(sb.store()).expect("open");
    let repo = RepoKey::new("project").expect("repo");
    let key = DocKey::DeadLetter {
        repo: repo.clone(),
        job: JobId::new(fixture::JOB).expect("job"),
        item: "item_12".parse().expect("item"),
    };
    let doc = store.get(&key).expect("get").expect("the dead letter");
    // In the project: its repository is the default.
    let out = run(&sb, &["show", "dead-letter", fixture::JOB, "item_12"], true);
    let shown: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(shown, doc);
    assert!(stdout(&out).lines().count() > 1, "indented");
    let out = run(
        &sb,
        &[
            "show",
            "dead-letter",
            fixture::JOB,
            "item_12",
            "--repo",
            "project",
            "--compact",
        ],
        true,
    );
    assert_eq!(stdout(&out).lines().count(), 1, "one line");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&stdout(&out)).expect("json"),
        doc
    );

    let out = run(
        &sb,
        &["show", "dead-letter", fixture::JOB, "item_99"],
        false,
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no dead-letter `mapreduce-1757146800123` `item_99` of repository `project`"),
        "{err}"
    );
    let out = run(&sb, &["show", "job-checkpoint", fixture::JOB], false);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("takes 2 id(s), JOB VERSION; got 1"), "{err}");
}

/// `events` prints a log one record per line; `--json` gives each its
/// cursor, and `--after` the last exact one goes on with what was appended
/// since, never repeating or skipping; `--since` keeps recent records;
/// `--follow` prints appends as they come; a closed pipe ends quietly.
#[test]
fn events_reads_a_log_with_the_apis_cursors() {
    let sb = fixture_sandbox();
    run(&sb, &["migrate"], true);
    let store = storage_fs::FsStorage::open(sb.store()).expect("open");
    let repo = RepoKey::new("project").expect("repo");
    let job = JobId::new(fixture::JOB).expect("job");
    let mut all = Vec::new();
    store
        .read_events(&repo, &job, &mut |e| {
            all.push(serde_json::Value::Object(e.json().clone()));
        })
        .expect("read");
    assert!(!all.is_empty());

    let out = run(&sb, &["events", fixture::JOB], true);
    let printed: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON record per line"))
        .collect();
    assert_eq!(printed, all, "what the API reads, in order");

    let out = run(&sb, &["events", fixture::JOB, "--json"], true);
    let lines: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    let last = lines.last().expect("a last line");
    assert_eq!(last["exact"], true, "{last}");
    let cursor = last["cursor"].to_string();
    let out = run(&sb, &["events", fixture::JOB, "--after", &cursor], true);
    assert_eq!(stdout(&out), "", "nothing after the end");
    let new = |n: u64| {
        EventRecord::from_json(serde_json::json!({
            "id": format!("new-{n}"),
            "timestamp": storage_fs::time::now(),
            "event": {"job_id": fixture::JOB, "n": n}
        }))
        .expect("record")
    };
    store.append_events(&repo, &job, &[new(1)]).expect("append");
    let out = run(&sb, &["events", fixture::JOB, "--after", &cursor], true);
    let text = stdout(&out);
    let after: Vec<&str> = text.lines().collect();
    assert_eq!(after.len(), 1, "{after:?}");
    assert!(after[0].contains("new-1"), "{after:?}");

    // The fixture's records are from 2025: only the new one is recent.
    let out = run(&sb, &["events", fixture::JOB, "--since", "1h"], true);
    let text = stdout(&out);
    let recent: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("\"timestamp\""))
        .collect();
    assert_eq!(recent.len(), 1, "{text}");

    let mut follower = cmd(
        &sb,
        &sb.project(),
        &["events", fixture::JOB, "--follow", "--after", &cursor],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()
    .expect("spawn");
    let mut lines = BufReader::new(follower.stdout.take().expect("stdout")).lines();
    let first = lines.next().expect("a line").expect("read");
    assert!(first.contains("new-1"), "{first}");
    std::thread::sleep(Duration::from_millis(100));
    store.append_events(&repo, &job, &[new(2)]).expect("append");
    let second = lines.next().expect("a line").expect("read");
    assert!(second.contains("new-2"), "followed: {second}");
    follower.kill().expect("kill");
    let _ = follower.wait();

    // `events … | head -1`: a closed pipe ends it quietly.
    let mut child = cmd(&sb, &sb.project(), &["events", fixture::JOB])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = run(&sb, &["events", "mapreduce-404"], false);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("has no event log of job `mapreduce-404`"),
        "{out:?}"
    );
}
