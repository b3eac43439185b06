//! `FsStorage` specifics: layout versions, debris in listings, sweeping, corrupt documents.

use std::fs;

use serde_json::json;
use storage_core::{SessionId, StorageExt};

use super::*;

/// A new store, and the resume-lock key the lock tests take.
fn store_with_lock_key() -> (tempfile::TempDir, FsStorage, storage_core::LockKey) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = FsStorage::open(dir.path()).expect("open");
    let key = storage_core::LockKey::new("mapreduce-1").expect("valid");
    (dir, store, key)
}

/// The session document the fenced-write tests write.
fn session_doc() -> DocKey {
    DocKey::Session {
        repo: RepoKey::new("proj").expect("valid"),
        session: SessionId::new("session-1").expect("valid"),
    }
}

#[test]
fn a_newer_layout_is_refused_with_the_versions_and_the_next_step() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(dir.path().join("layout.json"), r#"{"layout_version": 7}"#).expect("write");
    let err = FsStorage::open(dir.path()).expect_err("newer");
    assert!(
        matches!(
            err,
            Error::UnsupportedLayout {
                found: 7,
                supported: LAYOUT_VERSION,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("upgrade prodigy-storage"), "{err}");
    fs::write(dir.path().join("layout.json"), "{oops").expect("write");
    let err = FsStorage::open(dir.path()).expect_err("corrupt");
    assert!(matches!(err, Error::Corrupt { .. }), "{err:?}");
    assert_eq!(
        layout_version(&dir.path().join("absent")).expect("absent"),
        None
    );
}

#[test]
fn listings_skip_temp_files_and_foreign_names_and_sweep_removes_dead_writers_debris() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = FsStorage::open(dir.path()).expect("open");
    let repo = RepoKey::new("proj").expect("valid");
    let key = DocKey::Session {
        repo: repo.clone(),
        session: SessionId::new("session-1").expect("valid"),
    };
    store
        .put(&key, &json!({"session_id": "session-1"}))
        .expect("put");
    let sessions = store.layout().sessions_dir(&repo);
    // Abandoned: nobody holds its lock. In flight: a writer holds it.
    let dead = sessions.join(".tmp-4194305-0-session-2.json");
    fs::write(&dead, "{\"session_id\": \"sess").expect("debris");
    let (live, _writing) = crate::fsx::create_temp(&sessions, "session-3.json").expect("in flight");
    fs::write(sessions.join("notes.txt"), "user junk").expect("foreign");
    fs::write(sessions.join("session-4.json.bak"), "{}").expect("foreign");
    assert_eq!(
        store.list(&Scope::Sessions(repo.clone())).expect("list"),
        [key]
    );
    let report = store.sweep().expect("sweep");
    assert_eq!(report.removed, std::slice::from_ref(&dead));
    assert_eq!(report.kept_live, 1);
    assert!(!dead.exists() && live.exists());
    assert!(
        sessions.join("notes.txt").exists(),
        "sweep removes only temp files"
    );
}

#[test]
fn a_corrupt_document_names_its_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = FsStorage::open(dir.path()).expect("open");
    let repo = RepoKey::new("proj").expect("valid");
    let key = DocKey::Session {
        repo: repo.clone(),
        session: SessionId::new("session-1").expect("valid"),
    };
    store.put(&key, &json!({})).expect("put");
    fs::write(store.layout().document(&key), "{\n  \"session_id\": tor").expect("corrupt");
    let err = store.get(&key).expect_err("corrupt");
    assert!(
        err.to_string()
            .contains("session-1.json` at line 2 is corrupt"),
        "{err}"
    );
}

/// JSON nested 200 deep, as an older build or a hand could have written it
/// (no `Value` is built: its drop would recurse).
fn nested_200(inner: &str) -> String {
    format!("{}{inner}{}", "[".repeat(200), "]".repeat(200))
}

#[test]
fn a_line_nested_too_deep_on_disk_fails_a_strict_read_and_a_lenient_one_reads_past_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = FsStorage::open(dir.path()).expect("open");
    let (repo, job) = (
        RepoKey::new("proj").expect("valid"),
        JobId::new("mapreduce-1").expect("valid"),
    );
    let log = store.layout().active_event_log(&repo, &job);
    fs::create_dir_all(fsx::parent(&log)).expect("mkdir");
    let line = |n: u64| format!("{{\"id\":\"e{n}\",\"event\":{{\"n\":{n}}}}}\n");
    let deep = format!("{{\"id\":\"e1\",\"deep\":{}}}\n", nested_200("1"));
    fs::write(&log, [line(0), deep, line(2), line(3)].concat()).expect("write");
    let ns = |seen: &[EventRecord]| -> Vec<u64> {
        seen.iter()
            .map(|e| e.json()["event"]["n"].as_u64().expect("n"))
            .collect()
    };

    let mut seen = Vec::new();
    let err = store
        .read_events_from(
            &repo,
            &job,
            &EventCursor::START,
            ReadMode::Strict,
            &mut |e| {
                seen.push(e);
            },
        )
        .expect_err("a strict read stops at the deep line");
    match &err {
        Error::Corrupt { path, line, reason } => {
            assert_eq!(path, &log);
            assert_eq!(*line, Some(2));
            assert!(reason.contains("recursion limit"), "{reason}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }

    // A lenient reader (a follower that must not wedge) skips it, reports
    // it, and goes on, and its cursor is past it.
    let mut seen = Vec::new();
    let summary = store
        .read_events_from(
            &repo,
            &job,
            &EventCursor::START,
            ReadMode::Lenient,
            &mut |e| {
                seen.push(e);
            },
        )
        .expect("lenient read");
    assert_eq!(ns(&seen), [0, 2, 3]);
    assert_eq!(summary.skipped.len(), 1, "{:?}", summary.skipped);
    assert_eq!(summary.skipped[0].file, "events.jsonl");
    assert_eq!(summary.skipped[0].line, Some(2));
    store
        .append_events(
            &repo,
            &job,
            &[EventRecord::from_json(json!({"id": "e4", "event": {"n": 4}})).expect("object")],
        )
        .expect("append after it");
    let mut seen = Vec::new();
    store
        .read_events_from(&repo, &job, &summary.next, ReadMode::Strict, &mut |e| {
            seen.push(e);
        })
        .expect("from the cursor, strictly");
    assert_eq!(ns(&seen), [4], "the next read starts after the deep line");

    // A document nested that deep is corrupt, naming its file; a lenient
    // listing skips it.
    let key = DocKey::UnifiedSession {
        session: SessionId::new("session-deep").expect("valid"),
    };
    store
        .put(&key, &json!({"id": "session-deep"}))
        .expect("put");
    let path = store.layout().document(&key);
    fs::write(
        &path,
        format!("{{\"id\":\"session-deep\",\"deep\":{}}}", nested_200("1")),
    )
    .expect("write");
    let err = store.get(&key).expect_err("too deep to read");
    assert!(
        matches!(&err, Error::Corrupt { path: p, .. } if *p == path),
        "{err:?}"
    );
    let (sessions, skipped) = store.unified_sessions().expect("lenient listing");
    assert!(sessions.is_empty());
    assert_eq!(skipped.len(), 1, "{skipped:?}");
}

#[test]
fn an_unlocked_temp_file_is_swept_even_if_its_pid_is_alive() {
    // Pids are per namespace and get reused: only the lock says "in use".
    let dir = tempfile::tempdir().expect("tempdir");
    let store = FsStorage::open(dir.path()).expect("open");
    let sessions = store
        .layout()
        .sessions_dir(&RepoKey::new("proj").expect("valid"));
    fs::create_dir_all(&sessions).expect("mkdir");
    let ours = std::process::id();
    let abandoned = sessions.join(format!(".tmp-{ours}-1-session-1.json"));
    fs::write(&abandoned, "{").expect("w");
    let (fresh, _writing) = crate::fsx::create_temp(&sessions, "session-2.json").expect("temp");
    let report = store.sweep().expect("sweep");
    assert_eq!(report.removed, std::slice::from_ref(&abandoned));
    assert_eq!(report.kept_live, 1);
    assert!(fresh.exists(), "a live writer's temp file stays");
}

#[test]
fn directories_created_by_puts_registrations_and_locks_are_fsynced_in_their_parents() {
    use crate::fsx::tests::take_dir_fsyncs;
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("home/store");
    take_dir_fsyncs();
    let store = FsStorage::open(&root).expect("open");
    let synced = take_dir_fsyncs();
    for d in [dir.path().to_owned(), dir.path().join("home")] {
        assert!(
            synced.contains(&d),
            "{} not fsynced: {synced:?}",
            d.display()
        );
    }
    let project = dir.path().join("proj");
    fs::create_dir(&project).expect("mkdir");
    let repo = store.repo_key(&project).expect("register");
    let synced = take_dir_fsyncs();
    // `locks/` (for `repos.lock`) and `repos/` are new entries of the root.
    assert!(
        synced.iter().filter(|d| **d == root).count() >= 2,
        "{synced:?}"
    );
    let key = DocKey::Session {
        repo: repo.clone(),
        session: SessionId::new("session-1").expect("valid"),
    };
    store
        .put(&key, &json!({"session_id": "session-1"}))
        .expect("put");
    let synced = take_dir_fsyncs();
    for d in [
        root.clone(),
        root.join("state"),
        root.join("state").join(repo.as_str()),
    ] {
        assert!(
            synced.contains(&d),
            "{} not fsynced: {synced:?}",
            d.display()
        );
    }
}

#[test]
fn a_git_worktree_is_its_main_repository() {
    let dir = tempfile::tempdir().expect("tempdir");
    let main = dir.path().join("api");
    let git = |args: &[&str], cwd: &Path| {
        std::process::Command::new("git")
            .args(args)
            .current_dir(cwd)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@t")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@t")
            .output()
    };
    fs::create_dir_all(&main).expect("mkdir");
    match git(&["init", "-q"], &main) {
        Ok(o) if o.status.success() => {}
        _ => {
            eprintln!("skipped: git is not available");
            assert!(
                std::env::var_os("PRODIGY_REQUIRE_ALL_TESTS").is_none(),
                "git is required"
            );
            return;
        }
    }
    fs::write(main.join("a"), "a").expect("write");
    assert!(git(&["add", "a"], &main).expect("git").status.success());
    assert!(
        git(&["commit", "-qm", "a"], &main)
            .expect("git")
            .status
            .success()
    );
    let wt = dir.path().join("worktrees").join("session-0a1b");
    let out = git(
        &[
            "worktree",
            "add",
            "-q",
            wt.to_str().expect("utf-8"),
            "-b",
            "s",
        ],
        &main,
    )
    .expect("git");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let store = FsStorage::open(dir.path().join("store")).expect("open");
    let from_main = store.repo_key(&main).expect("main");
    let from_worktree = store.repo_key(&wt).expect("worktree");
    assert_eq!(
        from_main, from_worktree,
        "a worktree is its main repository"
    );
    assert_eq!(from_main.as_str(), "api");
    assert_eq!(store.registrations().expect("registrations").len(), 1);
    assert_eq!(
        Storage::repos(&store).expect("repos with data").len(),
        0,
        "registering writes no data"
    );
    // A plain directory with a `.git` file that is not a worktree is itself.
    let odd = dir.path().join("odd");
    fs::create_dir_all(&odd).expect("mkdir");
    fs::write(odd.join(".git"), "gitdir: /nowhere\n").expect("write");
    assert_eq!(store.repo_key(&odd).expect("odd").as_str(), "odd");
}

#[test]
fn appenders_lose_nothing_to_a_concurrent_retention() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use storage_core::{EventRetention, Retention};
    let dir = tempfile::tempdir().expect("tempdir");
    let store = FsStorage::open(dir.path()).expect("open");
    let (repo, job) = (
        RepoKey::new("proj").expect("repo"),
        JobId::new("job-1").expect("job"),
    );
    let stop = AtomicBool::new(false);
    let per_writer = 400u64;
    std::thread::scope(|s| {
        for w in 0..3u64 {
            let (store, repo, job) = (&store, &repo, &job);
            s.spawn(move || {
                for n in 0..per_writer {
                    let e = storage_core::EventRecord::from_json(json!({"w": w, "n": n}))
                        .expect("event");
                    store.append_events(repo, job, &[e]).expect("append");
                }
            });
        }
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                let keep = Retention::keep_all().with_max_count(50);
                store
                    .retain_events(&repo, &job, &EventRetention::new(keep))
                    .expect("retain");
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
        });
        // Let the writers finish, then stop the trimmer.
        std::thread::sleep(std::time::Duration::from_millis(50));
        while store.event_log_entry(&repo, &job).expect("entry").is_none() {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        s.spawn(|| {
            std::thread::sleep(std::time::Duration::from_millis(400));
            stop.store(true, Ordering::Relaxed);
        });
    });
    // Every event is in the log or in exactly one archive.
    let mut seen = std::collections::BTreeMap::new();
    store
        .read_events(&repo, &job, &mut |e| {
            let (w, n) = (e.json()["w"].as_u64(), e.json()["n"].as_u64());
            *seen.entry((w, n)).or_insert(0u32) += 1;
        })
        .expect("read");
    let archives = dir.path().join("archive/events/proj/job-1");
    for entry in fs::read_dir(&archives).expect("archives") {
        let f = fs::File::open(entry.expect("entry").path()).expect("open");
        let mut text = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(f), &mut text)
            .expect("gzip");
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).expect("json line");
            *seen
                .entry((v["w"].as_u64(), v["n"].as_u64()))
                .or_insert(0u32) += 1;
        }
    }
    assert_eq!(seen.len() as u64, 3 * per_writer, "no event lost");
    assert!(seen.values().all(|&n| n == 1), "none twice");
}

#[test]
fn appenders_lose_no_part_of_a_batch_to_a_concurrent_deletion() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempfile::tempdir().expect("tempdir");
    let store = FsStorage::open(dir.path()).expect("open");
    let (repo, job) = (
        RepoKey::new("proj").expect("repo"),
        JobId::new("job-1").expect("job"),
    );
    let stop = AtomicBool::new(false);
    let batch = 5u64;
    std::thread::scope(|s| {
        for w in 0..3u64 {
            let (store, repo, job) = (&store, &repo, &job);
            s.spawn(move || {
                for b in 0..200u64 {
                    let events: Vec<storage_core::EventRecord> = (0..batch)
                        .map(|i| {
                            storage_core::EventRecord::from_json(json!({"w": w, "b": b, "i": i}))
                                .expect("event")
                        })
                        .collect();
                    store.append_events(repo, job, &events).expect("append");
                }
            });
        }
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                store.delete_event_log(&repo, &job).expect("delete");
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        });
        s.spawn(|| {
            std::thread::sleep(std::time::Duration::from_millis(300));
            stop.store(true, Ordering::Relaxed);
        });
    });
    // Whatever survived the last deletion is whole batches: each batch's
    // events together and in order, never a part of one.
    let mut seen = Vec::new();
    store
        .read_events(&repo, &job, &mut |e| {
            let j = e.json();
            seen.push((j["w"].as_u64(), j["b"].as_u64(), j["i"].as_u64()));
        })
        .expect("a readable log: no torn or interleaved line");
    for chunk in seen.chunks(usize::try_from(batch).expect("small")) {
        assert_eq!(chunk.len() as u64, batch, "a partial batch: {chunk:?}");
        for (i, e) in chunk.iter().enumerate() {
            assert_eq!(
                (e.0, e.1),
                (chunk[0].0, chunk[0].1),
                "interleaved: {chunk:?}"
            );
            assert_eq!(e.2, Some(i as u64), "out of order: {chunk:?}");
        }
    }
}

#[test]
fn a_put_never_fails_because_a_deletion_removed_its_emptied_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = FsStorage::open(dir.path()).expect("open");
    let key = |n: u64| DocKey::Session {
        repo: RepoKey::new("proj").expect("repo"),
        session: SessionId::new(format!("session-{n}")).expect("id"),
    };
    std::thread::scope(|s| {
        for w in 0..2u64 {
            let store = &store;
            s.spawn(move || {
                for i in 0..300u64 {
                    let k = key(w * 1000 + i);
                    store
                        .put(
                            &k,
                            &json!({"session_id": format!("session-{}", w * 1000 + i)}),
                        )
                        .expect("put");
                    // Deleting the only document removes `sessions/` and `state/proj/`.
                    assert!(store.delete(&k).expect("delete"));
                }
            });
        }
    });
    assert!(
        !dir.path().join("state").join("proj").exists(),
        "emptied directories are removed"
    );
}

/// Reads every record of the log and of its archives, counting each `n`.
fn log_and_archives(store: &FsStorage, root: &Path, repo: &RepoKey, job: &JobId) -> Vec<u32> {
    let mut seen = Vec::new();
    let mut count = |n: u64| {
        let n = usize::try_from(n).expect("small");
        if seen.len() <= n {
            seen.resize(n + 1, 0);
        }
        seen[n] += 1;
    };
    store
        .read_events(repo, job, &mut |e| {
            count(e.json()["n"].as_u64().expect("n"));
        })
        .expect("read");
    let archives = root
        .join("archive/events")
        .join(repo.as_str())
        .join(job.as_str());
    if let Ok(entries) = fs::read_dir(&archives) {
        for entry in entries {
            let f = fs::File::open(entry.expect("entry").path()).expect("open");
            let mut text = String::new();
            std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(f), &mut text)
                .expect("gzip");
            for line in text.lines() {
                let v: serde_json::Value = serde_json::from_str(line).expect("json line");
                count(v["n"].as_u64().expect("n"));
            }
        }
    }
    seen
}

/// Issue 20, item 1: two retentions at once of a log that has no
/// `events.jsonl` (a migrated job's `events-0-legacy-*.jsonl`) used to take
/// no lock, and lost records from both the log and the archives.
#[test]
fn concurrent_retentions_of_a_log_without_an_active_file_lose_nothing() {
    use std::fmt::Write as _;
    use storage_core::{EventRetention, Retention};
    let total = 20_000u64;
    for round in 0..3 {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FsStorage::open(dir.path()).expect("open");
        let (repo, job) = (
            RepoKey::new("proj").expect("repo"),
            JobId::new("job-1").expect("job"),
        );
        let job_dir = store.layout().events_job_dir(&repo, &job);
        fs::create_dir_all(&job_dir).expect("mkdir");
        let mut text = String::new();
        for n in 0..total {
            writeln!(text, r#"{{"n":{n},"pad":"{}"}}"#, "x".repeat(40)).expect("fmt");
        }
        fs::write(job_dir.join("events-0-legacy-tx-1.jsonl"), text).expect("write");
        let barrier = std::sync::Barrier::new(2);
        std::thread::scope(|s| {
            for keep in [1_000u64, 1_500] {
                let (store, repo, job, barrier) = (&store, &repo, &job, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    let policy = EventRetention::new(Retention::keep_all().with_max_count(keep));
                    store.retain_events(repo, job, &policy).expect("retain");
                });
            }
        });
        let seen = log_and_archives(&store, dir.path(), &repo, &job);
        assert_eq!(
            seen.len() as u64,
            total,
            "round {round}: the newest record is kept"
        );
        let missing: Vec<usize> = (0..seen.len()).filter(|&n| seen[n] == 0).collect();
        assert!(
            missing.is_empty(),
            "round {round}: {} missing",
            missing.len()
        );
        let mut kept = 0u64;
        store
            .read_events(&repo, &job, &mut |_| kept += 1)
            .expect("read");
        assert_eq!(kept, 1_000, "round {round}: the stricter policy wins");
    }
}

/// Issue 20, item 3: a reader never delivers a batch whose append has not
/// finished (its `fdatasync` may still fail and the batch be cut back): it
/// waits for the log's lock, which the appender holds until then.
#[test]
fn a_reader_never_sees_a_batch_in_flight() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempfile::tempdir().expect("tempdir");
    let store = FsStorage::open(dir.path()).expect("open");
    let (repo, job) = (
        RepoKey::new("proj").expect("repo"),
        JobId::new("job-1").expect("job"),
    );
    let one = storage_core::EventRecord::from_json(json!({"n": 0})).expect("event");
    store.append_events(&repo, &job, &[one]).expect("append");
    let job_dir = store.layout().events_job_dir(&repo, &job);
    let active = job_dir.join("events.jsonl");
    // An appender mid-batch: it holds the lock, its bytes are in the file.
    let held = crate::events::ident::LogLock::exclusive(&job_dir).expect("lock");
    let before = fs::metadata(&active).expect("stat").len();
    fs::OpenOptions::new()
        .append(true)
        .open(&active)
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"{\"n\":1}\n"))
        .expect("write");
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        let reader = s.spawn(|| {
            let mut ns = Vec::new();
            store
                .read_events(&repo, &job, &mut |e| ns.push(e.json()["n"].clone()))
                .expect("read");
            done.store(true, Ordering::SeqCst);
            ns
        });
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(
            !done.load(Ordering::SeqCst),
            "the reader waits for the append to finish"
        );
        // Its fdatasync failed: the batch is cut back, then the lock released.
        fs::OpenOptions::new()
            .write(true)
            .open(&active)
            .and_then(|f| f.set_len(before))
            .expect("cut back");
        drop(held);
        assert_eq!(
            reader.join().expect("reader"),
            [json!(0)],
            "no phantom event"
        );
    });
}

/// Issue 20, item 5 (file store): a held lock whose file someone removes
/// lets another process lock a new file; the first holder's check says it
/// lost the lock, and its fenced writes are refused once the new holder
/// has its token.
#[test]
fn a_holder_whose_lock_file_was_replaced_learns_it_and_is_fenced_off() {
    use storage_core::LockWait;
    let (_dir, store, key) = store_with_lock_key();
    let doc = session_doc();
    let a = store
        .lock(&key, &this_process("a"), LockWait::NoWait)
        .expect("lock");
    let old = a.fence().expect("a token");
    assert!(a.check().expect("check") && !a.is_lost());
    // Someone clears the lock directory, as an older Prodigy's release does.
    fs::remove_file(store.layout().resume_lock(&key)).expect("remove");
    assert!(!a.check().expect("check"), "the holder learns it");
    assert!(a.is_lost(), "and it stays known");
    let b = store
        .lock(&key, &this_process("b"), LockWait::NoWait)
        .expect("the next process gets a new file");
    let new = b.fence().expect("a token");
    assert!(new.token > old.token);
    store
        .put_fenced(&doc, &json!({"session_id": "session-1", "by": "b"}), &new)
        .expect("the new holder writes");
    let err = store
        .put_fenced(&doc, &json!({"session_id": "session-1", "by": "a"}), &old)
        .expect_err("the old holder is fenced off");
    assert!(matches!(err, Error::LockLost { .. }), "{err:?}");
    assert_eq!(
        store.get(&doc).expect("get"),
        Some(json!({"session_id": "session-1", "by": "b"}))
    );
    drop((a, b));
}

/// Review of issue 20 (defect 1): a reader whose snapshot covers a torn
/// tail must not read what an appender writes in its place afterwards (the
/// appender cuts the tail off in place and writes there before its batch is
/// committed). The reader stops at the last whole line it saw, and its
/// cursor then continues exactly at the batch.
#[test]
fn a_reader_never_reads_what_an_appender_writes_over_a_torn_tail() {
    use std::sync::mpsc;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = FsStorage::open(dir.path()).expect("open");
    let (repo, job) = (
        RepoKey::new("proj").expect("repo"),
        JobId::new("job-1").expect("job"),
    );
    let ev = |n: u64| storage_core::EventRecord::from_json(json!({"n": n})).expect("event");
    store
        .append_events(&repo, &job, &[ev(0), ev(1)])
        .expect("append");
    // A writer killed mid-line: a long torn tail, room for many short lines.
    let active = store.layout().active_event_log(&repo, &job);
    fs::OpenOptions::new()
        .append(true)
        .open(&active)
        .and_then(|mut f| {
            std::io::Write::write_all(&mut f, "{\"n\":99,\"pad\":\"".repeat(40).as_bytes())
        })
        .expect("tear");
    let (seen_tx, seen_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    std::thread::scope(|s| {
        let (store_r, repo_r, job_r) = (&store, &repo, &job);
        let reader = s.spawn(move || {
            let mut ns = Vec::new();
            let summary = store_r
                .read_events(repo_r, job_r, &mut |e| {
                    if ns.is_empty() {
                        seen_tx.send(()).expect("send");
                        go_rx.recv().expect("go on");
                    }
                    ns.push(e.json()["n"].as_u64().expect("n"));
                })
                .expect("read");
            (ns, summary)
        });
        seen_rx.recv().expect("the reader has its snapshot");
        // Moves the tail aside and writes its batch where it was.
        store
            .append_events(&repo, &job, &(2..12).map(ev).collect::<Vec<_>>())
            .expect("append");
        go_tx.send(()).expect("go on");
        let (ns, summary) = reader.join().expect("reader");
        assert_eq!(ns, [0, 1], "only what the snapshot held");
        assert_eq!(summary.torn_tails.len(), 1, "the tail it saw is reported");
        let mut rest = Vec::new();
        let after = store
            .read_events_from(&repo, &job, &summary.next, ReadMode::Strict, &mut |e| {
                rest.push(e.json()["n"].as_u64().expect("n"));
            })
            .expect("read on");
        assert!(!after.restarted);
        assert_eq!(
            rest,
            (2..12).collect::<Vec<_>>(),
            "nothing skipped, nothing twice"
        );
    });
}

/// Review of issue 20 (defect 4): a first compare-and-append that failed and
/// was cut back leaves an empty `events.jsonl`; the log still ends at its
/// start, so the retry at the start lands.
#[test]
fn a_retry_at_the_start_after_a_failed_first_append_lands() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = FsStorage::open(dir.path()).expect("open");
    let (repo, job) = (
        RepoKey::new("proj").expect("repo"),
        JobId::new("job-1").expect("job"),
    );
    // What the failed attempt left: the log's `.log` and an empty active file.
    let job_dir = store.layout().events_job_dir(&repo, &job);
    drop(crate::events::ident::LogLock::exclusive(&job_dir).expect("lock"));
    fs::write(store.layout().active_event_log(&repo, &job), "").expect("empty");
    assert_eq!(
        store.event_log_end(&repo, &job).expect("end"),
        EventCursor::START
    );
    let e = storage_core::EventRecord::from_json(json!({"n": 0})).expect("event");
    let landed = store
        .append_events_at(&repo, &job, &EventCursor::START, std::slice::from_ref(&e))
        .expect("the retry lands");
    assert!(
        matches!(landed, storage_core::Appended::Now { .. }),
        "{landed:?}"
    );
    let mut n = 0;
    let summary = store
        .read_events(&repo, &job, &mut |_| n += 1)
        .expect("read");
    assert_eq!((n, summary.next), (1, landed.end().clone()));
}

/// Review of issue 20 (defects 2 and 3): a token is larger than the last
/// one even when the clock is behind it, and a lock of another key never
/// waits for a fenced write (which may wait on a log's lock).
#[test]
fn fencing_tokens_follow_the_count_and_other_keys_never_wait_for_a_fenced_write() {
    use storage_core::{LockKey, LockWait};
    let dir = tempfile::tempdir().expect("tempdir");
    let store = FsStorage::open(dir.path()).expect("open");
    let key = LockKey::new("job-1").expect("valid");
    let first = store
        .lock(&key, &this_process("a"), LockWait::NoWait)
        .expect("lock");
    let t1 = first.token();
    drop(first);
    // The last token was handed out while the clock was an hour ahead.
    let ahead = t1 + 3_600_000_000;
    let fence_file = crate::layout::lock_fence_file(&store.layout().resume_lock(&key));
    fs::write(&fence_file, format!("{ahead}\n")).expect("write");
    let second = store
        .lock(&key, &this_process("b"), LockWait::NoWait)
        .expect("lock");
    assert_eq!(second.token(), ahead + 1, "the count rules, not the clock");
    // A fenced append waits behind the log's lock (a long retention).
    let (repo, job) = (
        RepoKey::new("proj").expect("repo"),
        JobId::new("job-1").expect("job"),
    );
    let e = storage_core::EventRecord::from_json(json!({"n": 0})).expect("event");
    store
        .append_events(&repo, &job, std::slice::from_ref(&e))
        .expect("append");
    let held =
        crate::events::ident::LogLock::exclusive(&store.layout().events_job_dir(&repo, &job))
            .expect("lock the log");
    let fence = second.fence().expect("fence");
    std::thread::scope(|s| {
        let writer =
            s.spawn(|| store.append_events_fenced(&repo, &job, std::slice::from_ref(&e), &fence));
        std::thread::sleep(std::time::Duration::from_millis(200));
        let t = std::time::Instant::now();
        let other = store
            .lock(
                &LockKey::new("job-2").expect("valid"),
                &this_process("c"),
                LockWait::NoWait,
            )
            .expect("another key is free");
        assert!(
            t.elapsed() < std::time::Duration::from_millis(150),
            "another key's lock waited {:?}",
            t.elapsed()
        );
        drop(other);
        drop(held);
        writer
            .join()
            .expect("writer")
            .expect("the fenced append lands");
    });
}

/// A process waiting for a resume lock whose file is removed meanwhile (an
/// older Prodigy releases its locks so) must not count the removed file's
/// `flock` as the lock: it locks the file now at the path, and waits for its
/// holder like everyone else.
#[test]
fn a_waiter_whose_lock_file_was_removed_locks_the_file_there_now() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use storage_core::LockWait;
    let (_dir, store, key) = store_with_lock_key();
    let first = store
        .lock(&key, &this_process("a"), LockWait::NoWait)
        .expect("lock");
    let got = AtomicBool::new(false);
    std::thread::scope(|s| {
        let waiter = s.spawn(|| {
            let g = store
                .lock(
                    &key,
                    &this_process("b"),
                    LockWait::Timeout(Duration::from_secs(20)),
                )
                .expect("the waiter gets it in the end");
            got.store(true, Ordering::SeqCst);
            g.token()
        });
        std::thread::sleep(Duration::from_millis(200));
        fs::remove_file(store.layout().resume_lock(&key)).expect("remove");
        let third = store
            .lock(&key, &this_process("c"), LockWait::NoWait)
            .expect("a new file, free");
        // The waiter now gets the removed file's flock: it must not stop there.
        drop(first);
        std::thread::sleep(Duration::from_millis(500));
        assert!(!got.load(Ordering::SeqCst), "two holders at once");
        let third_token = third.token();
        drop(third);
        assert!(waiter.join().expect("waiter") > third_token);
    });
}

/// The fenced write's promise: no acquisition of the lock comes between
/// its check of the token and its write. An acquisition waits for a fenced
/// write in progress (the old holder's, finishing) before it hands out the
/// next token; the write lands, and the next holder's token is larger.
#[test]
fn an_acquisition_waits_for_a_fenced_write_in_progress() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::mpsc;
    use storage_core::LockWait;
    let (_dir, store, key) = store_with_lock_key();
    let doc = session_doc();
    let first = store
        .lock(&key, &this_process("a"), LockWait::NoWait)
        .expect("lock");
    let fence = first.fence().expect("a token");
    let (inside_tx, inside_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let acquired = AtomicBool::new(false);
    std::thread::scope(|s| {
        let (store_w, key_w, fence_w, doc_w) = (&store, &key, &fence, &doc);
        let writer = s.spawn(move || {
            crate::lock::with_fence(&store_w.layout().resume_lock(key_w), fence_w, || {
                inside_tx.send(()).expect("send");
                go_rx.recv().expect("go");
                store_w.put(doc_w, &json!({"session_id": "session-1", "by": "a"}))
            })
        });
        inside_rx.recv().expect("the write checked its token");
        drop(first);
        let next = s.spawn(|| {
            let g = store
                .lock(
                    &key,
                    &this_process("b"),
                    LockWait::Timeout(Duration::from_secs(20)),
                )
                .expect("lock");
            acquired.store(true, Ordering::SeqCst);
            g.token()
        });
        std::thread::sleep(Duration::from_millis(300));
        let early = acquired.load(Ordering::SeqCst);
        go_tx.send(()).expect("go");
        assert!(!early, "acquired between the write's check and its write");
        writer.join().expect("writer").expect("the write lands");
        assert!(next.join().expect("next") > fence.token);
    });
    assert_eq!(
        store.get(&doc).expect("get"),
        Some(json!({"session_id": "session-1", "by": "a"}))
    );
}

/// Issue 19: a released resume lock leaves no lock file (Prodigy's code and
/// tests look for it), and the next holder gets a fresh one.
#[test]
fn a_released_resume_lock_leaves_no_lock_file() {
    use storage_core::LockWait;
    let (_dir, store, key) = store_with_lock_key();
    let path = store.layout().resume_lock(&key);
    let a = store
        .lock(&key, &this_process("a"), LockWait::NoWait)
        .expect("lock");
    assert!(path.is_file(), "a held lock has its file");
    let held = crate::lock::read_holder(&path).expect("a holder, as Prodigy reads it");
    assert_eq!(held.process_id, std::process::id());
    drop(a);
    assert!(!path.exists(), "released: no lock file");
    let b = store
        .lock(&key, &this_process("b"), LockWait::NoWait)
        .expect("free again");
    assert!(path.is_file());
    drop(b);
    assert!(!path.exists());
}

/// Issue 19: an older Prodigy's resume lock (a file it created with
/// `O_EXCL`, no `flock`, no `"fence"`) is held while its process lives and
/// taken over once it does not, as that Prodigy decides it.
#[test]
fn an_older_prodigys_lock_is_honoured_while_its_process_lives() {
    use storage_core::LockWait;
    let (_dir, store, key) = store_with_lock_key();
    let path = store.layout().resume_lock(&key);
    fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    let mut child = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .expect("a live process");
    let older = |pid: u32| {
        json!({"job_id": "mapreduce-1", "process_id": pid, "hostname": "elsewhere",
               "acquired_at": "2026-12-07T10:00:00Z"})
        .to_string()
    };
    fs::write(&path, older(child.id())).expect("an older Prodigy's lock");
    let err = store
        .lock(
            &key,
            &this_process("a"),
            LockWait::Timeout(Duration::from_millis(200)),
        )
        .expect_err("held by a live process");
    match &err {
        Error::Locked {
            holder: Some(h), ..
        } => assert_eq!(h.process_id, child.id()),
        other => panic!("{other:?}"),
    }
    assert!(
        err.to_string().contains(&child.id().to_string()),
        "the refusal names the holder: {err}"
    );
    assert!(path.is_file(), "the older Prodigy's file is left alone");
    child.kill().expect("kill");
    child.wait().expect("reaped");
    let g = store
        .lock(&key, &this_process("a"), LockWait::NoWait)
        .expect("its process is gone: stale, taken over");
    assert_eq!(
        crate::lock::read_holder(&path).expect("holder").process_id,
        std::process::id()
    );
    drop(g);
    assert!(!path.exists());
}

/// Issue 19: a root an older Prodigy wrote (layout 0) opens without
/// refusing; dead letters and a session at their layout-0 paths are read,
/// writes go to the current layout, the newer copy of a document in both
/// wins, and a deletion removes both copies.
#[cfg(feature = "layout-0")]
#[test]
fn a_layout_0_root_is_served_reading_both_layouts_and_writing_the_current_one() {
    use storage_core::{ItemId, JobId};
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let nested = root.join("dlq/proj/job-1/mapreduce/dlq/job-1");
    fs::create_dir_all(nested.join("items")).expect("mkdir");
    fs::write(
        nested.join("items/item-1.json"),
        r#"{"item_id": "item-1", "by": "old"}"#,
    )
    .expect("old dead letter");
    fs::write(
        nested.join("items/item-2.json"),
        r#"{"item_id": "item-2", "by": "old"}"#,
    )
    .expect("old dead letter");
    fs::write(
        nested.join("index.json"),
        r#"{"item_ids": ["item-1", "item-2"]}"#,
    )
    .expect("index");
    fs::create_dir_all(root.join("state/proj/sessions")).expect("mkdir");
    fs::write(
        root.join("state/proj/sessions/session_state.json"),
        r#"{"session_id": "session-9", "status": "running"}"#,
    )
    .expect("session state");
    assert!(has_layout_0_data(root).expect("probe"));
    let store = FsStorage::open(root).expect("a layout-0 root opens");
    assert_eq!(
        layout_version(root).expect("version"),
        None,
        "nothing stamped"
    );
    assert!(
        has_layout_0_data(root).expect("probe"),
        "the upgrade stays due"
    );

    let (repo, job) = (
        RepoKey::new("proj").expect("valid"),
        JobId::new("job-1").expect("valid"),
    );
    let item = |id: &str| DocKey::DeadLetter {
        repo: repo.clone(),
        job: job.clone(),
        item: ItemId::new(id).expect("valid"),
    };
    let scope = Scope::DeadLetters(repo.clone(), job.clone());
    assert_eq!(
        store.list(&scope).expect("list"),
        [item("item-1"), item("item-2")]
    );
    assert_eq!(
        store.jobs_with_dead_letters(&repo).expect("jobs"),
        std::slice::from_ref(&job)
    );
    assert_eq!(
        store.get(&item("item-2")).expect("get"),
        Some(json!({"item_id": "item-2", "by": "old"}))
    );
    let sessions = store.list(&Scope::Sessions(repo.clone())).expect("list");
    let session = DocKey::Session {
        repo: repo.clone(),
        session: SessionId::new("session-9").expect("valid"),
    };
    assert_eq!(
        sessions,
        std::slice::from_ref(&session),
        "keyed by its session_id"
    );
    assert_eq!(
        store.get(&session).expect("get").expect("found")["status"],
        "running"
    );

    // A write goes to the current layout and, being newer, is what is read.
    store
        .put(&item("item-1"), &json!({"item_id": "item-1", "by": "new"}))
        .expect("put");
    assert!(store.layout().document(&item("item-1")).is_file());
    assert_eq!(
        fs::read_to_string(nested.join("items/item-1.json")).expect("old copy"),
        r#"{"item_id": "item-1", "by": "old"}"#,
        "the layout-0 file is not written"
    );
    assert_eq!(
        store.get(&item("item-1")).expect("get"),
        Some(json!({"item_id": "item-1", "by": "new"}))
    );
    // An older Prodigy writes it again later: its copy is now the newer one.
    std::thread::sleep(Duration::from_millis(20));
    fs::write(
        nested.join("items/item-1.json"),
        r#"{"item_id": "item-1", "by": "old again"}"#,
    )
    .expect("older Prodigy writes");
    assert_eq!(
        store.get(&item("item-1")).expect("get"),
        Some(json!({"item_id": "item-1", "by": "old again"}))
    );
    assert_eq!(store.list(&scope).expect("list").len(), 2, "each key once");
    let entries = store.list_entries(&scope).expect("entries");
    assert_eq!(entries.len(), 2);
    let mut scanned = Vec::new();
    store
        .scan_entries(&scope, &mut |e| scanned.push(e.key))
        .expect("scan");
    scanned.sort();
    assert_eq!(scanned, [item("item-1"), item("item-2")]);

    // A deletion removes both copies: a reprocessed item does not come back.
    assert!(store.delete(&item("item-1")).expect("delete"));
    assert!(store.delete(&item("item-2")).expect("delete"));
    assert_eq!(store.get(&item("item-1")).expect("get"), None);
    assert!(store.list(&scope).expect("list").is_empty());
    assert!(!nested.join("items/item-1.json").exists());
}

/// Without the feature `layout-0`, a root an older Prodigy wrote is refused
/// with the next step, and nothing is written.
#[cfg(not(feature = "layout-0"))]
#[test]
fn without_layout_0_reading_a_layout_0_root_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nested = dir.path().join("dlq/proj/job-1/mapreduce/dlq/job-1/items");
    fs::create_dir_all(&nested).expect("mkdir");
    fs::write(nested.join("item-1.json"), "{}").expect("write");
    let err = FsStorage::open(dir.path()).expect_err("refused");
    assert!(matches!(err, Error::UpgradeRequired { .. }), "{err:?}");
    assert!(err.to_string().contains("prodigy-storage upgrade"), "{err}");
    assert_eq!(layout_version(dir.path()).expect("version"), None);
}

/// Issue 19's rule for a document in both layouts, at its edges: on a tie
/// of modification times the current copy is read; a repository's
/// `session_state.json` is never removed by a deletion (the older
/// Prodigy's live file), and it is read only for the session it names.
#[cfg(feature = "layout-0")]
#[test]
fn a_tie_reads_the_current_copy_and_session_state_is_never_deleted() {
    use storage_core::{ItemId, JobId};
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let nested = root.join("dlq/proj/job-1/mapreduce/dlq/job-1/items");
    fs::create_dir_all(&nested).expect("mkdir");
    fs::write(nested.join("item-1.json"), r#"{"by": "old"}"#).expect("write");
    let store = FsStorage::open(root).expect("open");
    let item = DocKey::DeadLetter {
        repo: RepoKey::new("proj").expect("valid"),
        job: JobId::new("job-1").expect("valid"),
        item: ItemId::new("item-1").expect("valid"),
    };
    store.put(&item, &json!({"by": "new"})).expect("put");
    let when = fs::metadata(store.layout().document(&item))
        .and_then(|m| m.modified())
        .expect("mtime");
    fs::File::options()
        .write(true)
        .open(nested.join("item-1.json"))
        .and_then(|f| f.set_modified(when))
        .expect("same mtime");
    assert_eq!(store.get(&item).expect("get"), Some(json!({"by": "new"})));

    let sessions = root.join("state/proj/sessions");
    fs::create_dir_all(&sessions).expect("mkdir");
    let state = sessions.join("session_state.json");
    fs::write(&state, r#"{"session_id": "session-9"}"#).expect("write");
    let key = |id: &str| DocKey::Session {
        repo: RepoKey::new("proj").expect("valid"),
        session: SessionId::new(id).expect("valid"),
    };
    assert_eq!(
        store.get(&key("session-8")).expect("get"),
        None,
        "not its file"
    );
    assert!(store.get(&key("session-9")).expect("get").is_some());
    assert!(!store.delete(&key("session-9")).expect("delete"));
    assert!(state.is_file(), "the older Prodigy's live file stays");
}

/// A fenced write checks that the lock file still carries its token: an
/// older Prodigy that took the lock over by writing its own holder into the
/// very file (it found it empty, created by this store a moment before)
/// leaves the inode in place, so `check` cannot see it; the write is
/// refused all the same.
#[test]
fn a_fenced_write_is_refused_when_the_lock_file_holds_another_holder() {
    use storage_core::LockWait;
    let (_dir, store, key) = store_with_lock_key();
    let g = store
        .lock(&key, &this_process("a"), LockWait::NoWait)
        .expect("lock");
    let fence = g.fence().expect("a token");
    let doc = session_doc();
    store
        .put_fenced(&doc, &json!({"session_id": "session-1"}), &fence)
        .expect("ours to write");
    fs::write(
        store.layout().resume_lock(&key),
        json!({"job_id": "mapreduce-1", "process_id": 1, "hostname": "h",
               "acquired_at": "2026-12-07T10:00:00Z"})
        .to_string(),
    )
    .expect("an older Prodigy writes its holder in place");
    assert!(
        g.check().expect("check"),
        "the same file: check cannot tell"
    );
    let err = store
        .put_fenced(&doc, &json!({"session_id": "session-1", "v": 2}), &fence)
        .expect_err("refused");
    assert!(matches!(err, Error::LockLost { .. }), "{err:?}");
}

/// Issue 21, item 21: a corrupt `layout.json` says what to do, not only
/// that it is corrupt.
#[test]
fn a_corrupt_layout_file_says_what_to_do() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(dir.path().join("layout.json"), b"{\"layout_version\": ").expect("write");
    let err = FsStorage::open(dir.path()).expect_err("corrupt");
    let text = err.to_string();
    assert!(text.contains("layout.json` is corrupt"), "{text}");
    assert!(
        text.contains(&format!("write `{{\"layout_version\": {LAYOUT_VERSION}}}`")),
        "{text}"
    );
    assert!(text.contains("never delete it"), "{text}");
}
