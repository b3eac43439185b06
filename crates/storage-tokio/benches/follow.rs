//! Follow latency and the idle follower's cost (issue 11's target): an
//! event appended by another process is seen by a follower within 100 ms
//! (median over 1,000 events), and a follower with nothing to read costs
//! no CPU (no busy loop).
//!
//! `cargo bench -p storage-tokio --bench follow [-- --json] [--store NAME]`.
//!
//! For each store in [`STORES`]: a follower ([`AsyncStorage::follow`]) is
//! started on an empty log; an appender appends 1,000 events, one every
//! 5 ms, each stamped with the wall-clock time just before its append; the
//! follower notes when it receives each. Latency is receipt minus stamp
//! (both processes read the same clock), so it includes the append itself.
//! Then, with the follower still running and nothing appended, the bench
//! measures its own CPU time (`CLOCK_PROCESS_CPUTIME_ID`, every thread of
//! the process) over a 2 s idle window.
//!
//! A store that other processes can open (`cross_process`) is appended to
//! by a child process: the bench runs itself again with `--child`. The
//! in-memory store cannot be shared, so its appender is a thread of the
//! same process (and has finished before the idle window).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;
use storage_core::{EventCursor, EventRecord, JobId, MemoryStorage, RepoKey, Storage};
use storage_tokio::AsyncStorage;

const EVENTS: usize = 1_000;
const SPACING: Duration = Duration::from_millis(5);
const IDLE_WINDOW: Duration = Duration::from_secs(2);
const TARGET_MEDIAN: Duration = Duration::from_millis(100);

/// A store the bench runs on.
struct Store {
    /// What `--store` and the output call it.
    name: &'static str,
    /// Whether another process opening the same directory sees the same
    /// store (then the appender is a child process).
    cross_process: bool,
    /// Opens the store kept in `dir` (an empty directory the first time).
    open: fn(&Path) -> Arc<dyn Storage>,
}

/// The stores measured: the file store with the appender in another process.
const STORES: &[Store] = &[
    Store {
        name: "memory",
        cross_process: false,
        open: |_| Arc::new(MemoryStorage::new()),
    },
    Store {
        name: "fs",
        cross_process: true,
        open: |dir| Arc::new(storage_fs::FsStorage::open(dir).expect("the bench store opens")),
    },
];

fn repo() -> RepoKey {
    RepoKey::new("bench").expect("valid repo")
}
fn job() -> JobId {
    JobId::new("mapreduce-follow").expect("valid job")
}

fn now_ns() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970");
    u64::try_from(since.as_nanos()).expect("nanoseconds fit in u64 until 2554")
}

fn stamped(n: usize) -> EventRecord {
    EventRecord::from_json(json!({
        "id": format!("evt-{n:06}"),
        "timestamp": "2025-09-06T08:31:02.907114Z",
        "event": {"event_type": "agent_completed", "job_id": "mapreduce-follow", "n": n},
        "sent_ns": now_ns(),
    }))
    .expect("an object")
}

/// Appends the events, one every `SPACING`.
fn append_all(store: &dyn Storage) {
    let (r, j) = (repo(), job());
    for n in 0..EVENTS {
        std::thread::sleep(SPACING);
        store.append_events(&r, &j, &[stamped(n)]).expect("append");
    }
}

/// CPU time of the whole process so far.
fn process_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(
        u64::try_from(t.tv_sec).expect("non-negative"),
        u32::try_from(t.tv_nsec).expect("below a second"),
    )
}

struct Figures {
    median: Duration,
    p99: Duration,
    max: Duration,
    idle_cpu: Duration,
}

fn measure(store: &Store, dir: &Path) -> Figures {
    let shared = (store.open)(dir);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime");
    rt.block_on(async {
        let s = AsyncStorage::from_arc(Arc::clone(&shared));
        let mut follow = s.follow(&repo(), &job(), EventCursor::START);
        let mut child = if store.cross_process {
            let exe = std::env::current_exe().expect("the bench's own path");
            let spawned = Command::new(exe)
                .args(["--child", store.name])
                .arg(dir)
                .spawn()
                .expect("start the appender process");
            Some(spawned)
        } else {
            let appender = Arc::clone(&shared);
            std::thread::spawn(move || append_all(&*appender));
            None
        };
        let mut latencies = Vec::with_capacity(EVENTS);
        for n in 0..EVENTS {
            let seen = tokio::time::timeout(Duration::from_secs(30), follow.next())
                .await
                .expect("each event arrives within 30 s")
                .expect("the follower runs")
                .expect("the follower reads");
            let received = now_ns();
            let json = seen.record.json();
            assert_eq!(json["event"]["n"].as_u64(), Some(n as u64), "in order");
            let sent = json["sent_ns"].as_u64().expect("stamped");
            latencies.push(Duration::from_nanos(received.saturating_sub(sent)));
        }
        if let Some(child) = child.as_mut() {
            assert!(child.wait().expect("the appender ends").success());
        }
        // Let the appender thread finish and everything settle.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let before = process_cpu();
        tokio::time::sleep(IDLE_WINDOW).await;
        let idle_cpu = process_cpu().saturating_sub(before);
        drop(follow);
        latencies.sort();
        Figures {
            median: latencies[EVENTS / 2],
            p99: latencies[EVENTS * 99 / 100],
            max: latencies[EVENTS - 1],
            idle_cpu,
        }
    })
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--child") {
        let name = &args[i + 1];
        let store = STORES
            .iter()
            .find(|s| s.name == name)
            .expect("a known store");
        append_all(&*(store.open)(Path::new(&args[i + 2])));
        return;
    }
    let json = args.iter().any(|a| a == "--json");
    let only = args
        .iter()
        .position(|a| a == "--store")
        .map(|i| args[i + 1].clone());
    let base = std::env::var_os("BENCH_DIR").map_or_else(
        || std::env::temp_dir().join("prodigy-follow-bench"),
        PathBuf::from,
    );
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    for store in STORES
        .iter()
        .filter(|s| only.as_deref().is_none_or(|o| o == s.name))
    {
        let dir = base.join(store.name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("the bench directory");
        let f = measure(store, &dir);
        let _ = std::fs::remove_dir_all(&dir);
        let appender = if store.cross_process {
            "another process"
        } else {
            "another thread"
        };
        let idle_pct = 100.0 * f.idle_cpu.as_secs_f64() / IDLE_WINDOW.as_secs_f64();
        if json {
            println!(
                r#"{{"bench":"follow-{}","appender":"{appender}","events":{EVENTS},"median_ms":{:.3},"p99_ms":{:.3},"max_ms":{:.3},"target_median_ms":{},"idle_window_s":{},"idle_cpu_ms":{:.3},"idle_cpu_percent":{idle_pct:.4}}}"#,
                store.name,
                ms(f.median),
                ms(f.p99),
                ms(f.max),
                TARGET_MEDIAN.as_millis(),
                IDLE_WINDOW.as_secs(),
                ms(f.idle_cpu)
            );
        } else {
            let verdict = if f.median <= TARGET_MEDIAN {
                "meets"
            } else {
                "MISSES"
            };
            println!(
                "follow {:<7} appended by {appender}: median {:.3} ms, p99 {:.3} ms, max {:.3} ms over {EVENTS} events ({verdict} the {} ms target); idle follower: {:.3} ms CPU in {} s ({idle_pct:.3}%)",
                store.name,
                ms(f.median),
                ms(f.p99),
                ms(f.max),
                TARGET_MEDIAN.as_millis(),
                ms(f.idle_cpu),
                IDLE_WINDOW.as_secs()
            );
        }
    }
}
