//! `cargo xtask test-postgres [--bench] [-- ARGS]`: the PostgreSQL store's
//! tests (or, with `--bench`, its benchmarks) against a throwaway server.
//!
//! 1. Finds `initdb` and `pg_ctl` (under `/usr/lib/postgresql/*/bin`, the
//!    newest version, else on `PATH`); as root, installs the `postgresql`
//!    package when they are missing.
//! 2. Makes a private temporary directory and, when run as root, gives it
//!    to an unprivileged user (`prodigy-pg`, created if missing; `nobody`
//!    if it cannot be), because the server refuses to run as root.
//! 3. `initdb` (UTF-8, password authentication over TCP with a random
//!    password), then `pg_ctl start` on a free port of 127.0.0.1, with the
//!    server's Unix socket inside the directory.
//! 4. Runs `cargo test -p storage-postgres` (or `cargo bench`) with
//!    `PRODIGY_TEST_POSTGRES_URL` (the connection string) and
//!    `PRODIGY_TEST_POSTGRES_PG_CTL` (a JSON argv that runs this server's
//!    `pg_ctl` as its user, for the restart test); arguments after `--`
//!    are passed to cargo.
//! 5. Stops the server and removes the directory when it is done, whether
//!    the tests passed, failed or panicked (a drop guard); on failure the
//!    end of the server's log is printed first. A run killed before its
//!    guard ran (Ctrl-C) leaves its directory; the next run stops that
//!    server and removes it: every run holds a `flock` on its directory's
//!    `harness.lock`, and only directories whose lock is free are swept.

use std::fmt::Write as _;
use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};

use crate::{cargo, output, root, run};

/// The connection string the tests read.
const URL_VAR: &str = "PRODIGY_TEST_POSTGRES_URL";
/// A JSON array: the argv prefix that runs `pg_ctl` on the test server.
const PG_CTL_VAR: &str = "PRODIGY_TEST_POSTGRES_PG_CTL";
/// The prefix of the harness's temporary directories.
const DIR_PREFIX: &str = "prodigy-test-postgres-";
/// The unprivileged user that runs the server when the harness runs as root.
const SERVER_USER: &str = "prodigy-pg";

pub fn run_test_postgres(args: &[String]) -> Result<()> {
    let (own, passed) = match args.iter().position(|a| a == "--") {
        Some(i) => (&args[..i], &args[i + 1..]),
        None => (args, &[][..]),
    };
    let mut bench = false;
    for a in own {
        match a.as_str() {
            "--bench" => bench = true,
            other => bail!(
                "test-postgres takes `--bench` and, after `--`, arguments for cargo; not `{other}`"
            ),
        }
    }
    let bin = server_binaries()?;
    sweep_leftovers();
    let server = Server::start(&bin)?;
    eprintln!(
        "test-postgres: PostgreSQL ({}) on 127.0.0.1:{}, data in {}",
        bin.display(),
        server.port,
        server.dir.path().display()
    );
    let mut cmd = cargo();
    if bench {
        cmd.args([
            "bench",
            "--package",
            "storage-postgres",
            "--bench",
            "postgres",
        ]);
    } else {
        // The command-line test runs the `prodigy-storage` binary against
        // the server: build it, and tell the test where it is.
        run(cargo()
            .args([
                "build",
                "--package",
                "storage-cli",
                "--bin",
                "prodigy-storage",
                "--features",
                "postgres",
            ])
            .current_dir(root()))?;
        cmd.env(
            "PRODIGY_STORAGE_BIN",
            crate::target_dir(&root())
                .join("debug")
                .join("prodigy-storage"),
        );
        cmd.args(["test", "--package", "storage-postgres"]);
    }
    cmd.args(passed)
        .env(URL_VAR, server.url())
        .env(PG_CTL_VAR, serde_json::to_string(&server.pg_ctl_argv())?)
        .current_dir(root());
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !status.success() {
        server.print_log_tail();
        bail!(
            "the PostgreSQL store's {} failed ({status}); the server's log is above",
            if bench { "benchmarks" } else { "tests" }
        );
    }
    Ok(())
}

fn is_root() -> bool {
    output(Command::new("id").arg("-u")).is_ok_and(|uid| uid.trim() == "0")
}

/// The directory of `initdb` and `pg_ctl`, installing the server if needed (as root).
fn server_binaries() -> Result<PathBuf> {
    if let Some(bin) = find_server_binaries() {
        return Ok(bin);
    }
    if !is_root() {
        bail!(
            "PostgreSQL's server programs (initdb, pg_ctl) are not installed; install them \
             (Debian and Ubuntu: `sudo apt-get install postgresql`) or run this as root"
        );
    }
    eprintln!("test-postgres: installing the postgresql package (apt-get)");
    let install = || {
        run(Command::new("apt-get")
            .args([
                "install",
                "-y",
                "-q",
                "--no-install-recommends",
                "postgresql",
            ])
            .env("DEBIAN_FRONTEND", "noninteractive"))
    };
    if install().is_err() {
        // A fresh machine has no package lists yet.
        run(Command::new("apt-get").args(["update", "-q"]))?;
        install()?;
    }
    find_server_binaries()
        .context("the postgresql package installed, but no initdb and pg_ctl were found under /usr/lib/postgresql/*/bin")
}

fn find_server_binaries() -> Option<PathBuf> {
    let has_both = |d: &Path| d.join("initdb").is_file() && d.join("pg_ctl").is_file();
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            has_both(&bin).then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Some(bin);
    }
    std::env::split_paths(&std::env::var_os("PATH")?).find(|d| has_both(d))
}

/// The user that runs the server: `None` for this one (not root).
fn server_user() -> Option<String> {
    if !is_root() {
        return None;
    }
    let exists = |u: &str| {
        Command::new("id")
            .arg(u)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !exists(SERVER_USER) {
        let made = run(Command::new("useradd").args([
            "--system",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            SERVER_USER,
        ]));
        if let Err(e) = made {
            eprintln!(
                "test-postgres: cannot create user {SERVER_USER} ({e}); the server runs as nobody"
            );
            return Some("nobody".to_owned());
        }
    }
    Some(SERVER_USER.to_owned())
}

/// A running test server; dropping it stops the server and removes its directory.
struct Server {
    dir: tempfile::TempDir,
    bin: PathBuf,
    user: Option<String>,
    port: u16,
    password: String,
    _lock: File,
}

impl Server {
    fn start(bin: &Path) -> Result<Self> {
        let user = server_user();
        let dir = tempfile::Builder::new()
            .prefix(DIR_PREFIX)
            .tempdir()
            .context("cannot create the server's temporary directory")?;
        let lock = File::create(dir.path().join("harness.lock"))?;
        lock.lock()
            .context("cannot lock the harness's own directory")?;
        let password = random_hex(16)?;
        let pwfile = dir.path().join("pwfile");
        fs_err::write(&pwfile, format!("{password}\n"))?;
        if let Some(u) = &user {
            run(Command::new("chown")
                .args(["-R", &format!("{u}:")])
                .arg(dir.path()))?;
        }
        let mut server = Self {
            dir,
            bin: bin.to_owned(),
            user,
            port: 0,
            password,
            _lock: lock,
        };
        let data = server.data();
        run(server
            .as_server_user("initdb")
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--no-sync",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .stdout(std::process::Stdio::null()))?;
        fs_err::remove_file(&pwfile)?;
        // The Unix socket goes into the private directory; connections come
        // over TCP on 127.0.0.1 only, with the password.
        let conf = format!(
            "\n# cargo xtask test-postgres\nlisten_addresses = '127.0.0.1'\n\
             unix_socket_directories = '{}'\nmax_connections = 200\n",
            server.dir.path().display()
        );
        let mut text = fs_err::read_to_string(data.join("postgresql.conf"))?;
        text.push_str(&conf);
        fs_err::write(data.join("postgresql.conf"), text)?;
        // Another process may take the port between our probe and the
        // server's bind: try a few.
        let mut last = None;
        for _ in 0..3 {
            server.port = free_port()?;
            let started = run(server
                .pg_ctl()
                .args(["-w", "-t", "60", "-l"])
                .arg(server.log())
                .args(["-o", &format!("-p {}", server.port), "start"])
                .stdout(std::process::Stdio::null()));
            match started {
                Ok(()) => return Ok(server),
                Err(e) => last = Some(e),
            }
        }
        server.print_log_tail();
        Err(last.expect("tried")).context("the test server did not start; its log is above")
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    fn url(&self) -> String {
        format!(
            "postgresql://postgres:{}@127.0.0.1:{}/postgres",
            self.password, self.port
        )
    }

    fn argv(&self, program: &str) -> Vec<String> {
        let mut argv = Vec::new();
        if let Some(u) = &self.user {
            argv.extend(["runuser", "-u", u, "--"].map(str::to_owned));
        }
        argv.push(self.bin.join(program).display().to_string());
        argv
    }

    fn as_server_user(&self, program: &str) -> Command {
        let argv = self.argv(program);
        let mut c = Command::new(&argv[0]);
        c.args(&argv[1..]);
        c
    }

    fn pg_ctl_argv(&self) -> Vec<String> {
        let mut argv = self.argv("pg_ctl");
        argv.extend(["-D".to_owned(), self.data().display().to_string()]);
        argv
    }

    fn pg_ctl(&self) -> Command {
        let argv = self.pg_ctl_argv();
        let mut c = Command::new(&argv[0]);
        c.args(&argv[1..]);
        c
    }

    fn print_log_tail(&self) {
        if let Ok(text) = fs_err::read_to_string(self.log()) {
            let lines: Vec<&str> = text.lines().collect();
            eprintln!(
                "--- the end of the test server's log ({})",
                self.log().display()
            );
            for l in &lines[lines.len().saturating_sub(40)..] {
                eprintln!("{l}");
            }
            eprintln!("---");
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.data().join("postmaster.pid").exists() {
            stop(&self.pg_ctl_argv());
        }
        // The TempDir removes the directory when it drops, after this.
    }
}

/// Stops the server `pg_ctl_argv` names: fast, else immediate.
fn stop(pg_ctl_argv: &[String]) {
    for mode in ["fast", "immediate"] {
        let stopped = Command::new(&pg_ctl_argv[0])
            .args(&pg_ctl_argv[1..])
            .args(["-w", "-t", "30", "-m", mode, "stop"])
            .stdout(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if stopped {
            return;
        }
    }
    eprintln!("test-postgres: could not stop the server with {pg_ctl_argv:?}");
}

/// Removes what runs killed before their guard ran left behind (see the
/// module docs); best effort, never an error.
fn sweep_leftovers() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        if !name.to_string_lossy().starts_with(DIR_PREFIX) {
            continue;
        }
        let dir = e.path();
        // A directory seconds old may be a starting run that has not taken its lock yet.
        let young = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_none_or(|age| age < Duration::from_secs(90));
        if young {
            continue;
        }
        let Ok(lock) = File::open(dir.join("harness.lock")) else {
            continue;
        };
        if lock.try_lock().is_err() {
            continue; // a live run holds it
        }
        let data = dir.join("data");
        if data.join("postmaster.pid").exists() {
            let owner = owner_name(&data);
            let mut argv = Vec::new();
            if let Some(u) = owner.filter(|_| is_root()) {
                argv.extend(["runuser".to_owned(), "-u".to_owned(), u, "--".to_owned()]);
            }
            if let Some(bin) = find_server_binaries() {
                argv.push(bin.join("pg_ctl").display().to_string());
                argv.extend(["-D".to_owned(), data.display().to_string()]);
                stop(&argv);
            }
        }
        eprintln!(
            "test-postgres: removing {} (left by an interrupted run)",
            dir.display()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

fn owner_name(path: &Path) -> Option<String> {
    output(Command::new("stat").args(["-c", "%U"]).arg(path))
        .ok()
        .map(|s| s.trim().to_owned())
}

/// A port on 127.0.0.1 that was free a moment ago.
fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn random_hex(bytes: usize) -> Result<String> {
    use std::io::Read as _;
    let mut buf = vec![0u8; bytes];
    File::open("/dev/urandom")?.read_exact(&mut buf)?;
    let mut hex = String::with_capacity(bytes * 2);
    for b in buf {
        let _ = write!(hex, "{b:02x}");
    }
    Ok(hex)
}
