#![allow(clippy::cast_precision_loss)] // Reason: event and save counts are far below 2^52.
//! The PostgreSQL store against the bare SQL it does, through the same
//! client library, on the same server, in one run.
//!
//! `cargo xtask test-postgres --bench` (which starts a server and sets
//! `PRODIGY_TEST_POSTGRES_URL`); `-- --json` for one JSON object per line.
//! Both sides use the server's `synchronous_commit` (printed; `on` unless
//! the server says otherwise: the store only ever raises `off`).
//!
//! - `pg-append`: 8 processes append batches of 100 events (~300 bytes) to
//!   one log through `append_events`, against 8 processes inserting the
//!   same rows with one bare multi-row `INSERT` per batch into a table
//!   like `events` (each process with its own `seq` range, so nothing
//!   orders them). The ratio is the store's throughput over the bare
//!   inserts' (target at least 0.5x): the store serialises appends to one
//!   log to give every reader one order without gaps; the bare inserts
//!   promise nothing about order.
//! - `pg-append-own-logs`: the store again, each process appending to a
//!   log of its own (no target): what one log's turn-taking costs, and
//!   what remains (every append's `NOTIFY`; see docs/postgres.md).
//! - `pg-save`: durable session saves (~1 KB) through `put`, against a
//!   prepared `INSERT … ON CONFLICT DO UPDATE` of the same text into a table
//!   like `documents`, interleaved save by save. The ratio is time over the
//!   bare statement's (target at most 1.3x).
//! - `pg-append-at`: 1,000 batches of 100 events to one log through
//!   `append_events_at` (compare-and-append, each at the end the previous
//!   returned), against `append_events` to another log, alternating batch
//!   by batch: the cost of a retry-safe append (target at most 1.1x). The
//!   two logs swap names every round; `PG_BENCH_AA=1` makes both sides
//!   plain appends, to see what is left of the bench's own bias.
//! - `pg-follow`: append-to-delivery latency of a `Follower` (`LISTEN`),
//!   1,000 events appended by another process one every 5 ms: median, p99
//!   and max (target p99 at most 20 ms).
//! - `pg-get-blocking-pool`: gets of one session on a thread of tokio's
//!   blocking pool without a `BlockingSection` (where the store runs each
//!   call on a thread of its own, because tokio does not tell its blocking
//!   pool from the threads that drive it) against the same gets in a
//!   section (as `storage-tokio` makes them), alternating in blocks of 100
//!   (no target): what the section saves.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use storage_core::{BlockingSection, DocKey, EventRecord, JobId, RepoKey, SessionId, Storage};
use storage_postgres::{PgOptions, PgStorage};

const URL_VAR: &str = "PRODIGY_TEST_POSTGRES_URL";
const WORKER_VAR: &str = "PRODIGY_PG_BENCH_WORKER";
const PROCESSES: usize = 8;
const BATCH: usize = 100;
const BATCH_I64: i64 = 100;
const BATCHES_PER_PROCESS: usize = 25;
const SAVES: usize = 1_000;
const GETS: usize = 2_000;
const ROUNDS: usize = 7;
const FOLLOW_EVENTS: usize = 1_000;

fn event(writer: usize, n: usize) -> EventRecord {
    EventRecord::from_json(json!({
        "id": format!("evt-{writer}-{n:08}"),
        "timestamp": "2025-09-06T08:31:02.907114Z",
        "correlation_id": "corr-0001",
        "event": {"event_type": "agent_completed", "job_id": "mapreduce-1757146800123",
                  "agent_id": format!("agent_{}", n % 16), "item_id": format!("item_{n}"),
                  "duration": [12, 345_678_901], "commits": ["0123456789abcdef01234567"]},
        "metadata": {"host": "build-3", "pid": 4711, "thread": "tokio-runtime-worker"}
    }))
    .expect("object")
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0 * 10.0).round() / 10.0
}

fn main() {
    if let Ok(spec) = std::env::var(WORKER_VAR) {
        worker(&spec);
        return;
    }
    let json_out = std::env::args().any(|a| a == "--json");
    let Ok(url) = std::env::var(URL_VAR) else {
        eprintln!(
            "SKIP: storage-postgres benchmarks: {URL_VAR} is not set (run `cargo xtask test-postgres --bench`)"
        );
        return;
    };
    let schema = format!("bench_{}", std::process::id());
    let store =
        PgStorage::connect_with(&url, PgOptions::default().schema(&schema)).expect("connect");
    let mut raw = postgres::Client::connect(&url, postgres::NoTls).expect("connect");
    raw.batch_execute(&format!(
        "SET search_path TO \"{schema}\"; \
         CREATE TABLE raw_events (LIKE events INCLUDING ALL); \
         CREATE TABLE raw_docs (LIKE documents INCLUDING ALL)"
    ))
    .expect("baseline tables");
    let sync: String = raw
        .query_one("SHOW synchronous_commit", &[])
        .expect("show")
        .get(0);
    eprintln!("synchronous_commit = {sync} on both sides");

    let (ours, bare, own_logs) = bench_append(&url, &schema, &mut raw);
    let events = PROCESSES * BATCHES_PER_PROCESS * BATCH;
    let ratio = bare.as_secs_f64() / ours.as_secs_f64();
    report(
        json_out,
        &json!({"bench": "pg-append", "ours_ms": ms(ours), "baseline_ms": ms(bare),
                "ratio": (ratio * 100.0).round() / 100.0, "target": 0.5,
                "ratio_is": "throughput of ours over the bare INSERT's (higher is better)",
                "events": events, "processes": PROCESSES, "batch": BATCH,
                "synchronous_commit": sync}),
        &format!(
            "pg-append: {events} events, {PROCESSES} processes, batches of {BATCH}: store {:.1} ms ({:.0} events/s), bare INSERT {:.1} ms ({:.0} events/s): {ratio:.2}x the throughput (target >= 0.5x)",
            ms(ours),
            events as f64 / ours.as_secs_f64(),
            ms(bare),
            events as f64 / bare.as_secs_f64()
        ),
    );

    let own_ratio = bare.as_secs_f64() / own_logs.as_secs_f64();
    report(
        json_out,
        &json!({"bench": "pg-append-own-logs", "ours_ms": ms(own_logs), "baseline_ms": ms(bare),
                "ratio": (own_ratio * 100.0).round() / 100.0,
                "ratio_is": "throughput of ours over the bare INSERT's (higher is better)",
                "events": events, "processes": PROCESSES, "batch": BATCH}),
        &format!(
            "pg-append-own-logs: the same, each process to its own log: store {:.1} ms ({:.0} events/s): {own_ratio:.2}x the bare throughput (no target)",
            ms(own_logs),
            events as f64 / own_logs.as_secs_f64(),
        ),
    );

    let (ours, bare) = bench_save(&store, &mut raw);
    let ratio = ours.as_secs_f64() / bare.as_secs_f64();
    report(
        json_out,
        &json!({"bench": "pg-save", "ours_ms": ms(ours), "baseline_ms": ms(bare),
                "ratio": (ratio * 100.0).round() / 100.0, "target": 1.3,
                "ratio_is": "time of ours over the bare upsert's (lower is better)",
                "saves": SAVES, "synchronous_commit": sync}),
        &format!(
            "pg-save: {SAVES} saves: store {:.1} ms ({:.0} us each), bare upsert {:.1} ms ({:.0} us each): {ratio:.2}x the time (target <= 1.3x)",
            ms(ours),
            ours.as_secs_f64() * 1e6 / SAVES as f64,
            ms(bare),
            bare.as_secs_f64() * 1e6 / SAVES as f64
        ),
    );

    let (at, plain) = bench_append_at(&store);
    let ratio = at.as_secs_f64() / plain.as_secs_f64();
    report(
        json_out,
        &json!({"bench": "pg-append-at", "ours_ms": ms(at), "baseline_ms": ms(plain),
                "ratio": (ratio * 100.0).round() / 100.0, "target": 1.1,
                "ratio_is": "time of append_events_at over append_events (lower is better)",
                "batches": SAVES, "batch": BATCH}),
        &format!(
            "pg-append-at: {SAVES} batches of {BATCH} to one log: append_events_at {:.1} ms ({:.0} us each), append_events {:.1} ms ({:.0} us each): {ratio:.2}x the time (target <= 1.1x)",
            ms(at),
            at.as_secs_f64() * 1e6 / SAVES as f64,
            ms(plain),
            plain.as_secs_f64() * 1e6 / SAVES as f64
        ),
    );

    let (median_f, p99, max) = bench_follow(&url, &schema, &store);
    report(
        json_out,
        &json!({"bench": "pg-follow", "median_ms": ms(median_f), "p99_ms": ms(p99), "max_ms": ms(max),
                "target_p99_ms": 20, "events": FOLLOW_EVENTS,
                "what": "append (another process, one event every 5 ms) to delivery by a Follower (LISTEN)"}),
        &format!(
            "pg-follow: {FOLLOW_EVENTS} events appended by another process one every 5 ms, delivered by a Follower: median {:.2} ms, p99 {:.2} ms, max {:.2} ms (target p99 <= 20 ms)",
            ms(median_f),
            ms(p99),
            ms(max)
        ),
    );

    let (without, within) = bench_get_on_blocking_pool(&store);
    let extra_us = (without.as_secs_f64() - within.as_secs_f64()) * 1e6 / GETS as f64;
    let ratio = without.as_secs_f64() / within.as_secs_f64();
    report(
        json_out,
        &json!({"bench": "pg-get-blocking-pool", "ours_ms": ms(without), "baseline_ms": ms(within),
                "ratio": (ratio * 100.0).round() / 100.0,
                "ratio_is": "time of gets on tokio's blocking pool without a BlockingSection over gets in one (the extra thread per call)",
                "gets": GETS, "extra_us_per_call": extra_us.round()}),
        &format!(
            "pg-get-blocking-pool: {GETS} gets on tokio's blocking pool: without a BlockingSection {:.1} ms ({:.0} us each), in one {:.1} ms ({:.0} us each): {ratio:.2}x the time, {extra_us:.0} us more per call (no target)",
            ms(without),
            without.as_secs_f64() * 1e6 / GETS as f64,
            ms(within),
            within.as_secs_f64() * 1e6 / GETS as f64
        ),
    );
    raw.batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
        .expect("drop");
}

/// Median times of `GETS` gets of one ~1 KB session made on a thread of
/// tokio's blocking pool without and with a `BlockingSection` (see the
/// store's `runtime.rs`), alternating in blocks of 100.
fn bench_get_on_blocking_pool(store: &PgStorage) -> (Duration, Duration) {
    let key = DocKey::Session {
        repo: RepoKey::new("bench").expect("valid"),
        session: SessionId::new("session-get").expect("valid"),
    };
    store
        .put(
            &key,
            &json!({"session_id": "session-get", "pad": "x".repeat(1000)}),
        )
        .expect("put");
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let gets = |section: bool| {
        let (store, key) = (store.clone(), key.clone());
        rt.block_on(rt.spawn_blocking(move || {
            let _may_block = section.then(BlockingSection::enter);
            let start = Instant::now();
            for _ in 0..100 {
                store.get(&key).expect("get").expect("present");
            }
            start.elapsed()
        }))
        .expect("the blocking task")
    };
    let (mut without, mut within) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let (mut outside, mut inside) = (Duration::ZERO, Duration::ZERO);
        for _ in 0..GETS / 100 {
            outside += gets(false);
            inside += gets(true);
        }
        without.push(outside);
        within.push(inside);
    }
    (median(without), median(within))
}

fn report(json_out: bool, row: &serde_json::Value, text: &str) {
    if json_out {
        println!("{row}");
    } else {
        println!("{text}");
    }
}

/// Median wall times of the 8 processes: the store on one log, bare
/// inserts, the store with a log per process; rounds rotate the order.
fn bench_append(
    url: &str,
    schema: &str,
    raw: &mut postgres::Client,
) -> (Duration, Duration, Duration) {
    let mut times = [Vec::new(), Vec::new(), Vec::new()];
    for round in 0..ROUNDS {
        for side in (0..3).map(|i| (i + round) % 3) {
            let verb = ["store", "bare", "store-own-log"][side];
            times[side].push(run_processes(url, schema, verb, round));
        }
    }
    let n: i64 = raw
        .query_one("SELECT count(*) FROM events", &[])
        .expect("count")
        .get(0);
    let expected = 2 * ROUNDS * PROCESSES * BATCHES_PER_PROCESS * BATCH;
    assert_eq!(
        usize::try_from(n).expect("positive"),
        expected,
        "every event is in the logs"
    );
    let [ours, bare, own] = times;
    (median(ours), median(bare), median(own))
}

/// Starts the 8 workers, lets them go at once, returns the time until the last is done.
fn run_processes(url: &str, schema: &str, verb: &str, round: usize) -> Duration {
    let mut children: Vec<Child> = (0..PROCESSES)
        .map(|w| {
            Command::new(std::env::current_exe().expect("bench binary"))
                .env(WORKER_VAR, json!([verb, url, schema, w, round]).to_string())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("spawn")
        })
        .collect();
    let mut outs: Vec<_> = children
        .iter_mut()
        .map(|c| BufReader::new(c.stdout.take().expect("stdout")).lines())
        .collect();
    for out in &mut outs {
        assert_eq!(out.next().expect("a line").expect("read"), "ready");
    }
    let t = Instant::now();
    for c in &mut children {
        let mut stdin = c.stdin.take().expect("stdin");
        writeln!(stdin, "go").expect("go");
    }
    for out in &mut outs {
        assert_eq!(out.next().expect("a line").expect("read"), "done");
    }
    let elapsed = t.elapsed();
    for mut c in children {
        assert!(c.wait().expect("wait").success());
    }
    elapsed
}

fn worker(spec: &str) {
    let spec: serde_json::Value = serde_json::from_str(spec).expect("spec");
    let verb = spec[0].as_str().expect("verb");
    let (url, schema) = (
        spec[1].as_str().expect("url"),
        spec[2].as_str().expect("schema"),
    );
    let w = usize::try_from(spec[3].as_u64().expect("writer")).expect("small");
    let round = usize::try_from(spec[4].as_u64().expect("round")).expect("small");
    let repo = RepoKey::new("bench").expect("valid");
    let job = JobId::new("mapreduce-1757146800123").expect("valid");
    let batches: Vec<Vec<EventRecord>> = (0..BATCHES_PER_PROCESS)
        .map(|b| (0..BATCH).map(|i| event(w, b * BATCH + i)).collect())
        .collect();
    let go = || {
        println!("ready");
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).expect("go");
    };
    if verb == "follow" {
        let store = PgStorage::connect_with(url, PgOptions::default().schema(schema).pool_size(1))
            .expect("connect");
        store.event_logs(&repo).expect("warm");
        go();
        let job = JobId::new("mapreduce-follow").expect("valid");
        for n in 0..FOLLOW_EVENTS {
            std::thread::sleep(Duration::from_millis(5));
            let sent = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("after 1970")
                .as_nanos();
            let e = EventRecord::from_json(json!({
                "event": {"event_type": "agent_completed", "n": n},
                "sent_ns": u64::try_from(sent).expect("fits"),
            }))
            .expect("object");
            store.append_events(&repo, &job, &[e]).expect("append");
        }
        println!("done");
        return;
    }
    if verb.starts_with("store") {
        let job = if verb == "store-own-log" {
            JobId::new(format!("mapreduce-{w}")).expect("valid")
        } else {
            job
        };
        let store = PgStorage::connect_with(url, PgOptions::default().schema(schema).pool_size(1))
            .expect("connect");
        // Connect before the clock starts (the first append prepares its statement: one round trip).
        store.event_logs(&repo).expect("warm");
        go();
        for batch in &batches {
            store.append_events(&repo, &job, batch).expect("append");
        }
    } else {
        let mut client = postgres::Client::connect(url, postgres::NoTls).expect("connect");
        client
            .batch_execute(&format!("SET search_path TO \"{schema}\""))
            .expect("search path");
        let mut sql = String::from("INSERT INTO raw_events (repo, job, seq, line) VALUES ");
        for i in 0..BATCH {
            if i > 0 {
                sql.push_str(", ");
            }
            let _ = write!(sql, "($1, $2, ${}, ${})", 3 + 2 * i, 4 + 2 * i);
        }
        let insert = client.prepare(&sql).expect("prepare");
        go();
        // Each process and round has its own seq range: nothing orders them.
        let base = i64::try_from((round * PROCESSES + w) * 1_000_000).expect("fits");
        let mut seq = base;
        for batch in &batches {
            let lines: Vec<String> = batch
                .iter()
                .map(|e| serde_json::to_string(e.json()).expect("json"))
                .collect();
            let seqs: Vec<i64> = (0..BATCH_I64).map(|i| seq + i).collect();
            let (r, j) = (repo.as_str(), job.as_str());
            let mut params: Vec<&(dyn postgres::types::ToSql + Sync)> = vec![&r, &j];
            for (s, l) in seqs.iter().zip(&lines) {
                params.push(s);
                params.push(l);
            }
            client.execute(&insert, &params).expect("insert");
            seq += BATCH_I64;
        }
    }
    println!("done");
}

/// Median times of `SAVES` saves (store, bare), interleaved save by save.
/// Append-to-delivery latency: a worker process appends [`FOLLOW_EVENTS`]
/// events one every 5 ms, each stamped with the wall-clock time just before
/// its append; a `Follower` here notes when each arrives. Returns the
/// median, p99 and max (both processes read the same clock).
fn bench_follow(url: &str, schema: &str, store: &PgStorage) -> (Duration, Duration, Duration) {
    let repo = RepoKey::new("bench").expect("valid");
    let job = JobId::new("mapreduce-follow").expect("valid");
    let mut follower = store
        .follow(&repo, &job, &storage_core::EventCursor::START)
        .expect("follow");
    let mut child = Command::new(std::env::current_exe().expect("bench binary"))
        .env(WORKER_VAR, json!(["follow", url, schema, 0, 0]).to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut out = BufReader::new(child.stdout.take().expect("stdout")).lines();
    assert_eq!(out.next().expect("a line").expect("read"), "ready");
    writeln!(child.stdin.take().expect("stdin"), "go").expect("go");
    let mut latencies = Vec::with_capacity(FOLLOW_EVENTS);
    while latencies.len() < FOLLOW_EVENTS {
        follower
            .next(Duration::from_secs(30), &mut |_, e| {
                let received = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .expect("after 1970")
                    .as_nanos();
                let sent = u128::from(e.json()["sent_ns"].as_u64().expect("stamped"));
                latencies.push(Duration::from_nanos(
                    u64::try_from(received.saturating_sub(sent)).expect("fits"),
                ));
            })
            .expect("follow");
    }
    assert_eq!(out.next().expect("a line").expect("read"), "done");
    assert!(child.wait().expect("wait").success());
    latencies.sort();
    (
        latencies[FOLLOW_EVENTS / 2],
        latencies[FOLLOW_EVENTS * 99 / 100],
        latencies[FOLLOW_EVENTS - 1],
    )
}

/// Median times of `SAVES` batches appended one by one to a log through
/// `append_events_at` (each at the end the previous returned) and through
/// `append_events` to another log, batch by batch alternating (which goes
/// first alternates too), so that both see the same disk.
fn bench_append_at(store: &PgStorage) -> (Duration, Duration) {
    let repo = RepoKey::new("bench").expect("valid");
    let (mut ours, mut plain) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        // The two logs' names alternate between the sides from round to
        // round: an A/A run (`PG_BENCH_AA=1`, both sides `append_events`)
        // showed a log named `at-N` 1.18x slower than one named `plain-N`
        // (where their rows fall in the indexes), a bias as large as what
        // is measured.
        let (first, second) = (
            JobId::new(format!("a-{round}")).expect("valid"),
            JobId::new(format!("b-{round}")).expect("valid"),
        );
        let (at_job, plain_job) = if round % 2 == 0 {
            (first, second)
        } else {
            (second, first)
        };
        let batches: Vec<Vec<EventRecord>> = (0..SAVES)
            .map(|b| (0..BATCH).map(|n| event(b, n)).collect())
            .collect();
        let (mut o, mut p) = (Duration::ZERO, Duration::ZERO);
        let mut end = storage_core::EventCursor::START;
        for (n, batch) in batches.iter().enumerate() {
            for side in [n % 2, (n + 1) % 2] {
                let t = Instant::now();
                if side == 0 {
                    if std::env::var_os("PG_BENCH_AA").is_some() {
                        store.append_events(&repo, &at_job, batch).expect("append");
                    } else {
                        end = store
                            .append_events_at(&repo, &at_job, &end, batch)
                            .expect("append at")
                            .end()
                            .clone();
                    }
                    o += t.elapsed();
                } else {
                    store
                        .append_events(&repo, &plain_job, batch)
                        .expect("append");
                    p += t.elapsed();
                }
            }
        }
        ours.push(o);
        plain.push(p);
    }
    (median(ours), median(plain))
}

fn bench_save(store: &PgStorage, raw: &mut postgres::Client) -> (Duration, Duration) {
    let repo = RepoKey::new("bench").expect("valid");
    let doc = |n: usize| {
        json!({"session_id": format!("session-{}", n % 50), "status": "InProgress", "n": n,
               "started_at": "2025-09-06T08:31:02.907114Z", "workflow_state": {
                   "current_step": n % 7, "completed_steps": [0, 1, 2, 3],
                   "variables": {"a": "x".repeat(600)}}})
    };
    let keys: Vec<DocKey> = (0..50)
        .map(|i| DocKey::Session {
            repo: repo.clone(),
            session: SessionId::new(format!("session-{i}")).expect("valid"),
        })
        .collect();
    let upsert = raw
        .prepare(
            "INSERT INTO raw_docs (kind, repo, parent, id, version, body) \
             VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (kind, repo, parent, id, version) \
             DO UPDATE SET body = excluded.body, updated_at = excluded.updated_at",
        )
        .expect("prepare");
    let docs: Vec<serde_json::Value> = (0..SAVES).map(doc).collect();
    let ids: Vec<String> = (0..50).map(|i| format!("session-{i}")).collect();
    // Save by save, the two sides alternate (which goes first alternates
    // too), so that both see the same disk: a commit's flush on a shared
    // machine varies far more than what this compares.
    let (mut ours, mut bare) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let (mut o, mut b) = (Duration::ZERO, Duration::ZERO);
        for (n, d) in docs.iter().enumerate() {
            for side in [n % 2, (n + 1) % 2] {
                let t = Instant::now();
                if side == 0 {
                    store.put(&keys[n % 50], d).expect("put");
                    o += t.elapsed();
                } else {
                    let body = serde_json::to_string(d).expect("json");
                    raw.execute(
                        &upsert,
                        &[&"session", &"bench", &"", &ids[n % 50], &0i64, &body],
                    )
                    .expect("upsert");
                    b += t.elapsed();
                }
            }
        }
        ours.push(o);
        bare.push(b);
    }
    (median(ours), median(bare))
}
