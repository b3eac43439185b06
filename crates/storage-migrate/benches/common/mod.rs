//! What the benchmarks share: shell steps, peak memory, a fresh file
//! system per round, medians.

#![allow(dead_code)] // Reason: each benchmark uses a part of this module.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Rounds per side; the median is reported.
pub const ROUNDS: usize = 5;

pub fn sh(cmd: &str) {
    let ok = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "`{cmd}` failed");
}

pub fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

/// A fresh loop-mounted ext4 (with its journal, as users have it) for one
/// round: files created right after mass deletions are several times slower
/// to create on ext4, which would measure the previous round, not this one.
pub struct FreshFs {
    pub mnt: PathBuf,
    img: PathBuf,
}

impl FreshFs {
    pub fn new(base: &Path, name: &str, size_mb: u64) -> Option<Self> {
        let img = base.join(format!("{name}.img"));
        let mnt = base.join(name);
        std::fs::create_dir_all(&mnt).ok()?;
        let ok = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "truncate -s {size_mb}M '{img}' && mkfs.ext4 -q -F '{img}' && mount -o loop '{img}' '{mnt}'",
                img = img.display(),
                mnt = mnt.display()
            ))
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Self { mnt, img })
    }
}

impl Drop for FreshFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mnt).status();
        let _ = std::fs::remove_file(&self.img);
        let _ = std::fs::remove_dir(&self.mnt);
    }
}

pub fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Prints how long each step took (to stderr) when `BENCH_PHASES` is set.
pub struct Phases {
    pub start: Instant,
    pub last: std::sync::Mutex<Instant>,
}

impl storage_migrate::Progress for Phases {
    fn start(&self, step: storage_migrate::Step, files: u64, bytes: u64) {
        let mut last = self.last.lock().expect("lock");
        eprintln!(
            "  {:>8.1} ms  (+{:.1}) start {} ({files} files, {bytes} bytes)",
            self.start.elapsed().as_secs_f64() * 1e3,
            last.elapsed().as_secs_f64() * 1e3,
            step.label()
        );
        *last = Instant::now();
    }
    fn finish(&self, step: storage_migrate::Step) {
        let mut last = self.last.lock().expect("lock");
        eprintln!(
            "  {:>8.1} ms  (+{:.1}) done {}",
            self.start.elapsed().as_secs_f64() * 1e3,
            last.elapsed().as_secs_f64() * 1e3,
            step.label()
        );
        *last = Instant::now();
    }
}

/// `ROUNDS` rounds of `ours` beside `cp -a <dir>/<cp_src> <dir>/cp-dst &&
/// sync`, each round on a fresh file system of `fs_mb` MiB with pristine
/// copies of `template` at `<dir>/<sides.0>` and `<dir>/<sides.1>`, in
/// alternating order so neither side always pays the other's writeback.
/// Returns the medians and the largest peak memory `ours` reported.
pub fn side_by_side(
    base: &Path,
    template: &Path,
    fs_mb: u64,
    sides: (&str, &str),
    cp_src: &str,
    ours: impl Fn(&Path) -> (Duration, u64),
) -> (Duration, Duration, u64) {
    let (mut mine, mut cp, mut rss) = (Vec::new(), Vec::new(), 0);
    let mut fresh = true;
    for round in 0..ROUNDS {
        let fs = FreshFs::new(base, &format!("round-{round}"), fs_mb);
        if fs.is_none() && fresh {
            eprintln!(
                "note: cannot loop-mount a fresh ext4 here (needs root and mkfs.ext4); measuring in {} instead",
                base.display()
            );
            fresh = false;
        }
        let dir = fs
            .as_ref()
            .map_or_else(|| base.join(format!("round-{round}")), |f| f.mnt.clone());
        std::fs::create_dir_all(&dir).expect("round dir");
        for side in [sides.0, sides.1] {
            sh(&format!(
                "cp -a '{}' '{}' && sync",
                template.display(),
                dir.join(side).display()
            ));
        }
        // Start each timed run with no dirty pages from the previous one.
        let settle = || {
            sh("sync");
            std::thread::sleep(Duration::from_millis(500));
        };
        let mut run_ours = || {
            settle();
            let (t, r) = ours(&dir);
            mine.push(t);
            rss = rss.max(r);
        };
        let mut run_cp = || {
            settle();
            let t = Instant::now();
            sh(&format!(
                "cp -a '{}' '{}' && sync",
                dir.join(cp_src).display(),
                dir.join("cp-dst").display()
            ));
            cp.push(t.elapsed());
        };
        if round % 2 == 0 {
            run_ours();
            run_cp();
        } else {
            run_cp();
            run_ours();
        }
        if fs.is_none() {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    (median(mine), median(cp), rss)
}

/// In a child process: runs `work` with the step timer of `BENCH_PHASES`
/// (or no progress) and prints its elapsed microseconds and peak memory,
/// which [`in_child`] reads back.
pub fn child_run(work: impl FnOnce(&dyn storage_migrate::Progress)) {
    let t = Instant::now();
    let phases = Phases {
        start: t,
        last: std::sync::Mutex::new(t),
    };
    let quiet = storage_migrate::NoProgress;
    let progress: &dyn storage_migrate::Progress = if std::env::var_os("BENCH_PHASES").is_some() {
        &phases
    } else {
        &quiet
    };
    work(progress);
    println!("{} {}", t.elapsed().as_micros(), peak_rss_kib());
}

/// Runs this benchmark again as `--child <args>` (which calls
/// [`child_run`]) and returns its elapsed time and peak memory (KiB).
pub fn in_child(args: &[&Path]) -> (Duration, u64) {
    let out = Command::new(std::env::current_exe().expect("self"))
        .arg("--child")
        .args(args)
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("child");
    assert!(out.status.success(), "the benchmark's child failed");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut it = text
        .split_whitespace()
        .map(|s| s.parse::<u64>().expect("number"));
    (
        Duration::from_micros(it.next().expect("us")),
        it.next().expect("rss"),
    )
}
