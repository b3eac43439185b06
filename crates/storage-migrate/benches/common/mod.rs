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
