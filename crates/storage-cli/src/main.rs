//! `prodigy-storage`: the command-line front end of Prodigy's storage.
//!
//! This is the only place that reads the environment, the terminal and the
//! home directory; the libraries take all of that as arguments.

mod cli;
#[cfg(feature = "legacy-import")]
mod progress;
mod read;
mod render;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use storage_fs::{FsStorage, RootChoice, resolve_root};

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli);
    match run(&cli) {
        Ok(code) => code,
        // The reader of our output went away (`prodigy-storage list | head`):
        // there is no one left to tell, and nothing failed; end quietly, as
        // ripgrep and git do.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            let mut err = anstream::stderr().lock();
            let red = anstyle::AnsiColor::Red.on_default().bold();
            let _ = writeln!(err, "{red}error:{red:#} {e}");
            for cause in e.chain().skip(1) {
                let _ = writeln!(err, "  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

/// Whether `e` is a write to a closed pipe (stdout's reader exited).
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Diagnostics on stderr: warnings by default, `-v` info, `-vv` debug (every
/// file), `-q` errors only; `RUST_LOG=<level>` overrides all of them.
fn init_logging(cli: &Cli) {
    use std::io::IsTerminal;
    use tracing_subscriber::filter::LevelFilter;
    let from_flags = match (cli.quiet, cli.verbose) {
        (true, _) => LevelFilter::ERROR,
        (false, 0) => LevelFilter::WARN,
        (false, 1) => LevelFilter::INFO,
        (false, 2) => LevelFilter::DEBUG,
        (false, _) => LevelFilter::TRACE,
    };
    let level = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| v.trim().parse::<LevelFilter>().ok())
        .unwrap_or(from_flags);
    let colour = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .with_target(false)
        .without_time()
        .init();
}

/// Which store a command works on: the file store (a directory), or a
/// team's store on PostgreSQL.
enum Target {
    File(RootChoice),
    Postgres {
        url: String,
        /// `--store` or `PRODIGY_STORE`.
        source: &'static str,
    },
}

fn is_postgres_url(s: &str) -> bool {
    s.starts_with("postgres://") || s.starts_with("postgresql://")
}

/// What a `--store` / `PRODIGY_STORE` value is.
#[derive(Debug, PartialEq, Eq)]
enum StoreValue {
    /// A PostgreSQL URL or libpq `key=value` connection string.
    Postgres,
    /// A directory: the file store.
    Directory,
    /// Neither: another scheme (`mysql://`, `http://`), or `key=value`
    /// words that are not a PostgreSQL connection string. The reason.
    Refused(String),
}

/// The parameters of a libpq connection string (`host=… dbname=…`).
const LIBPQ_KEYS: &[&str] = &[
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "passfile",
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "connect_timeout",
    "application_name",
    "options",
    "target_session_attrs",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_retries",
    "channel_binding",
    "load_balance_hosts",
];

/// Classifies a store value by its form only (no file-system access): a
/// value with a URL scheme or in `key=value` form is never a directory, so
/// a mistyped URL cannot become a store built inside the current directory.
fn classify_store(value: &str) -> StoreValue {
    if is_postgres_url(value) {
        return StoreValue::Postgres;
    }
    let scheme = value.split_once("://").map(|(s, _)| s).filter(|s| {
        !s.is_empty()
            && s.starts_with(|c: char| c.is_ascii_alphabetic())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "+.-".contains(c))
    });
    if let Some(scheme) = scheme {
        return StoreValue::Refused(format!(
            "`{scheme}://` is not a store: give a directory (the file store) or a PostgreSQL \
             URL (`postgres://user@host/db`)"
        ));
    }
    let words: Vec<&str> = value.split_whitespace().collect();
    let keyed: Vec<&str> = words
        .iter()
        .filter_map(|w| w.split_once('=').map(|(k, _)| k))
        .collect();
    if keyed.is_empty() {
        return StoreValue::Directory;
    }
    if keyed.len() == words.len() && keyed.iter().all(|k| LIBPQ_KEYS.contains(k)) {
        return StoreValue::Postgres;
    }
    // One word with an `=` may be a directory's name; several, or a known
    // parameter among them, is a connection string gone wrong.
    if words.len() == 1 && !LIBPQ_KEYS.contains(&keyed[0]) {
        return StoreValue::Directory;
    }
    let unknown: Vec<&str> = keyed
        .iter()
        .copied()
        .filter(|k| !LIBPQ_KEYS.contains(k))
        .collect();
    StoreValue::Refused(if unknown.is_empty() {
        "it looks like a PostgreSQL connection string but not every word is `key=value`: \
         give a directory, a URL (`postgres://user@host/db`) or `host=… dbname=… user=…`"
            .to_owned()
    } else {
        format!(
            "it looks like a connection string, but `{}` is no PostgreSQL parameter: give a \
             directory, a URL (`postgres://user@host/db`) or `host=… dbname=… user=…`",
            unknown.join("`, `")
        )
    })
}

/// `value` with any password in it replaced by `***` (a URL's `user:pass@`,
/// a `password=` word, a `password=` query parameter), for messages.
fn redact(value: &str) -> String {
    let mut out = value.to_owned();
    if let Some((scheme, rest)) = value.split_once("://") {
        let (auth_end, _) = rest
            .char_indices()
            .find(|(_, c)| *c == '/' || *c == '?')
            .unwrap_or((rest.len(), ' '));
        if let Some(at) = rest[..auth_end].rfind('@')
            && let Some(colon) = rest[..at].find(':')
        {
            out = format!("{scheme}://{}:***{}", &rest[..colon], &rest[at..]);
        }
    }
    let mut words: Vec<String> = Vec::new();
    for w in out.split(' ') {
        words.push(match w.split_once("password=") {
            Some((before, _)) if before.is_empty() || before.ends_with(['?', '&']) => {
                format!("{before}password=***")
            }
            _ => w.to_owned(),
        });
    }
    words.join(" ")
}

/// Connects to the team's store at `url`, in `--schema`'s PostgreSQL schema.
#[cfg(feature = "postgres")]
fn pg_connect(cli: &Cli, url: &str) -> Result<storage_postgres::PgStorage> {
    let mut options = storage_postgres::PgOptions::default();
    if let Some(schema) = &cli.schema {
        options = options.schema(schema.clone());
    }
    Ok(storage_postgres::PgStorage::connect_with(url, options)?)
}

/// `--schema` names a PostgreSQL schema: with a file store it is a mistake.
fn check_schema_use(cli: &Cli, postgres: bool) -> Result<()> {
    if cli.schema.is_some() && !postgres {
        anyhow::bail!(
            "--schema names the PostgreSQL schema of a team's store; this command uses the \
             file store (choose a PostgreSQL store with --store or PRODIGY_STORE, or copy-store \
             --to a postgres:// URL)"
        );
    }
    Ok(())
}

/// `--store`, then `--home`, then `PRODIGY_STORE`, then `PRODIGY_HOME`,
/// then `~/.prodigy`: an option beats a variable; a `postgres://` URL is a
/// database store, anything else a directory.
fn target(cli: &Cli) -> Result<Target> {
    let chosen = match (&cli.store, &cli.home) {
        (Some(s), _) => Some((s.clone(), true)),
        (None, Some(_)) => None,
        (None, None) => std::env::var("PRODIGY_STORE")
            .ok()
            .filter(|s| !s.is_empty())
            .map(|s| (s, false)),
    };
    let Some((value, flag)) = chosen else {
        return Ok(Target::File(store_root(cli)?));
    };
    let source = if flag { "--store" } else { "PRODIGY_STORE" };
    match classify_store(&value) {
        StoreValue::Postgres => return Ok(Target::Postgres { url: value, source }),
        StoreValue::Refused(why) => anyhow::bail!(
            "the store `{}` (chosen by {source}) is refused: {why}",
            redact(&value)
        ),
        StoreValue::Directory => {}
    }
    let path = std::path::absolute(&value)
        .with_context(|| format!("cannot resolve the store path `{}`", redact(&value)))?;
    Ok(Target::File(RootChoice {
        path,
        source: if flag {
            storage_fs::RootSource::StoreFlag
        } else {
            storage_fs::RootSource::StoreEnv
        },
    }))
}

/// The file store of `--home` / `PRODIGY_HOME` / `~/.prodigy`, whatever
/// `--store` says: where migrations run and what `copy-store` copies.
fn store_root(cli: &Cli) -> Result<RootChoice> {
    let env = std::env::var_os("PRODIGY_HOME");
    // `--home` and `PRODIGY_HOME` name a directory: a URL there is a
    // mistake (a PostgreSQL store is `--store`), never a directory to make.
    for (value, source) in [
        (cli.home.as_deref().map(Path::as_os_str), "--home"),
        (env.as_deref(), "PRODIGY_HOME"),
    ] {
        if let Some(value) = value.and_then(std::ffi::OsStr::to_str)
            && value.contains("://")
        {
            let hint = if is_postgres_url(value) {
                "a PostgreSQL store is chosen with --store or PRODIGY_STORE".to_owned()
            } else {
                "give a directory".to_owned()
            };
            anyhow::bail!(
                "the store `{}` (chosen by {source}) is a URL, not a directory; {hint}",
                redact(value)
            );
        }
    }
    let home = dirs::home_dir();
    let mut choice = resolve_root(cli.home.as_deref(), env.as_deref(), home.as_deref())?;
    choice.path = std::path::absolute(&choice.path)
        .with_context(|| format!("cannot resolve the store path `{}`", choice.path.display()))?;
    Ok(choice)
}

/// The project: the argument, else the git top level of the current directory, else it.
fn project_dir(arg: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = arg {
        return Ok(p.to_owned());
    }
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let top = std::process::Command::new("git")
        .args(["rev-parse", "--show-toplevel"])
        .current_dir(&cwd)
        .stderr(std::process::Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| PathBuf::from(s.trim_end_matches('\n')));
    Ok(top.unwrap_or(cwd))
}

/// A path for a JSON document, lossless: a string when it is UTF-8, else
/// `hex:` and its bytes, the form the library's reports use (`docs/cli.md`).
/// `serde_json::json!` would panic on a non-UTF-8 `PathBuf`.
fn json_path(p: &Path) -> serde_json::Value {
    use std::os::unix::ffi::OsStrExt;
    p.to_str().map_or_else(
        || {
            let hex = p
                .as_os_str()
                .as_bytes()
                .iter()
                .fold(String::from("hex:"), |mut s, b| {
                    use std::fmt::Write as _;
                    let _ = write!(s, "{b:02x}");
                    s
                });
            serde_json::Value::String(hex)
        },
        |s| serde_json::Value::String(s.to_owned()),
    )
}

fn print_json(value: &impl serde::Serialize) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

/// Prints `value` as the one JSON document of `--json`, or `human()` as the
/// human report.
fn emit(
    cli: &Cli,
    json: bool,
    value: &impl serde::Serialize,
    human: impl FnOnce() -> String,
) -> Result<()> {
    if json {
        print_json(value)
    } else {
        say(cli, &human())
    }
}

/// Prints a human report: colour on a terminal only, never with `NO_COLOR`
/// (`anstream` strips the styles otherwise); nothing with `-q`.
fn say(cli: &Cli, text: &str) -> Result<()> {
    if !cli.quiet {
        let mut out = anstream::stdout().lock();
        out.write_all(render::paint(text).as_bytes())?;
    }
    Ok(())
}

/// Refuses a store path that cannot be a directory: it, or the nearest
/// ancestor that exists, is a file. Said here with the choice to change,
/// instead of as `Not a directory` on `<store>/layout.json`.
fn check_store_path(root: &RootChoice) -> Result<()> {
    let fix = match root.source {
        storage_fs::RootSource::Flag => "pass a directory to `--home`",
        storage_fs::RootSource::Env => "set `PRODIGY_HOME` to a directory",
        storage_fs::RootSource::Default => "move that file aside, or choose a store with `--home`",
        storage_fs::RootSource::StoreFlag => "pass a directory or a `postgres://` URL to `--store`",
        storage_fs::RootSource::StoreEnv => {
            "set `PRODIGY_STORE` to a directory or a `postgres://` URL"
        }
    };
    let mut at = root.path.as_path();
    loop {
        match std::fs::metadata(at) {
            Ok(m) if m.is_dir() => return Ok(()),
            Ok(_) if at == root.path => anyhow::bail!(
                "the store `{}` (chosen by {}) is a file, not a directory; {fix}",
                root.path.display(),
                root.source
            ),
            Ok(_) => anyhow::bail!(
                "the store `{}` (chosen by {}) cannot be a directory: `{}` is a file; {fix}",
                root.path.display(),
                root.source,
                at.display()
            ),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                ) =>
            {
                match at.parent() {
                    Some(parent) => at = parent,
                    None => return Ok(()),
                }
            }
            // Permission problems and the like are reported, with the
            // path, by whatever reads the store first.
            Err(_) => return Ok(()),
        }
    }
}

/// The repository `show` and `events` read: `--repo`, else the current
/// project's key if this store registered it.
fn file_repo(store: &FsStorage, repo: Option<&str>) -> Result<Option<storage_core::RepoKey>> {
    if let Some(r) = repo {
        return Ok(Some(storage_core::RepoKey::new(r)?));
    }
    let project = project_dir(None)?;
    Ok(store.find_repo_key(&project).ok().flatten())
}

/// `status` of a path that is not a directory: an error, not a report that
/// it "cannot be read" with exit status 0 (a mistyped path looked fine).
fn check_project_dir(project: &Path) -> Result<()> {
    match std::fs::metadata(project) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => anyhow::bail!(
            "the project `{}` is not a directory; give the project's directory",
            project.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => anyhow::bail!(
            "the project `{}` does not exist; check the path (without one, the git top level of the current directory is used)",
            project.display()
        ),
        Err(e) => {
            Err(e).with_context(|| format!("cannot read the project `{}`", project.display()))
        }
    }
}

fn run(cli: &Cli) -> Result<ExitCode> {
    let target = target(cli)?;
    let postgres = matches!(target, Target::Postgres { .. })
        || matches!(&cli.command, Command::CopyStore { to, .. } if is_postgres_url(to));
    check_schema_use(cli, postgres)?;
    let root = match target {
        Target::File(root) => root,
        // `copy-store` copies the file store wherever `--to` says.
        Target::Postgres { .. } if matches!(cli.command, Command::CopyStore { .. }) => {
            store_root(cli)?
        }
        Target::Postgres { url, source } => {
            let file_root = store_root(cli)?;
            return team::run(cli, &url, source, &file_root);
        }
    };
    check_store_path(&root)?;
    match &cli.command {
        Command::Layout => {
            say(cli, &render::layout(&root))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::List { repo, json } => {
            let store = FsStorage::peek(&root.path)?;
            let repo = repo
                .as_deref()
                .map(storage_core::RepoKey::new)
                .transpose()?;
            let items = store.inventory(repo.as_ref())?;
            // Half upgraded or half downgraded: say so, the list may miss
            // what is between the two layouts until it is finished.
            #[cfg(feature = "legacy-import")]
            if !cli.quiet
                && let Some(i) = storage_migrate::interrupted_upgrade(&store)?
            {
                eprint!(
                    "note: what is listed may be incomplete: {}",
                    render::interrupted_line(&i).trim_start()
                );
            }
            emit(
                cli,
                *json,
                // 2: `repo` is null for global documents (unified sessions), and
                // the kinds of layout 2 (extension kinds by their own names).
                &serde_json::json!({"schema_version": 2, "store": json_path(&root.path), "items": items}),
                || render::list(&items, repo.as_ref().map(storage_core::RepoKey::as_str)),
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { project, json } => {
            let project = project_dir(project.project.as_deref())?;
            check_project_dir(&project)?;
            let store = FsStorage::peek(&root.path)?;
            status(cli, &root, &store, &project, *json)
        }
        Command::Show { repo, .. } | Command::Events { repo, .. } => {
            let store = FsStorage::peek(&root.path)?;
            let repo = file_repo(&store, repo.as_deref())?;
            read::run(
                &cli.command,
                &store,
                repo,
                "or run it in a project registered in this store; `prodigy-storage list` shows \
                 every repository",
            )
        }
        #[cfg(feature = "legacy-import")]
        other => import::run(cli, &root, other),
        #[cfg(not(feature = "legacy-import"))]
        _ => anyhow::bail!(
            "this build of prodigy-storage has no legacy import (built without the `legacy-import` feature); \
             use a build with it to migrate, verify or roll back per-project `.prodigy/` storage"
        ),
    }
}

#[cfg(not(feature = "legacy-import"))]
fn status(
    cli: &Cli,
    root: &RootChoice,
    store: &FsStorage,
    project: &Path,
    json: bool,
) -> Result<ExitCode> {
    let repo = store
        .find_repo_key(project)
        .ok()
        .flatten()
        .map(|k| k.to_string());
    let layout_version = storage_fs::layout_version(&root.path)?;
    let value = serde_json::json!({
        "schema_version": 1,
        "store": json_path(&root.path), "store_source": root.source, "layout_version": layout_version,
        "project": json_path(project), "repo": repo, "legacy_import": false,
    });
    emit(cli, json, &value, || {
        format!(
            "{}project: {}\nrepository key: {}\nthis build has no legacy import\n",
            render::store_line(root, layout_version),
            project.display(),
            repo.as_deref().unwrap_or("(not registered)")
        )
    })?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(feature = "legacy-import")]
fn status(
    cli: &Cli,
    root: &RootChoice,
    store: &FsStorage,
    project: &Path,
    json: bool,
) -> Result<ExitCode> {
    let s = storage_migrate::status(store, project)?;
    let backups: Vec<_> = storage_migrate::backups(store)?
        .into_iter()
        // The project's, and the store's own from its upgrades.
        .filter(|b| Some(&b.repo) == s.repo.as_ref() || b.repo == storage_migrate::UPGRADE_BACKUPS)
        .collect();
    let layout_version = storage_fs::layout_version(&root.path)?;
    emit(
        cli,
        json,
        &serde_json::json!({
            "schema_version": storage_migrate::REPORT_SCHEMA_VERSION,
            "store": json_path(&root.path), "store_source": root.source, "layout_version": layout_version,
            "upgrade_due": storage_migrate::upgrade_due(store)?,
            "upgrade_interrupted": storage_migrate::interrupted_upgrade(store)?,
            "legacy_import": true, "project": s, "backups": backups,
        }),
        || render::status(root, layout_version, &s, &backups),
    )?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(feature = "legacy-import")]
mod import {
    //! The commands that need the legacy import.

    use std::process::ExitCode;
    use std::time::Duration;

    use anyhow::Result;
    use storage_fs::{FsStorage, RootChoice};
    use storage_migrate::fault::{self, Fault};
    use storage_migrate::{MigrateOptions, RollbackOptions};

    use crate::progress::Display;

    use anyhow::Context;

    use super::{emit, project_dir, render};
    use crate::cli::{BackupsAction, Cli, Command};

    /// The fault-injection hooks of the test suite (see `docs/reliability.md`),
    /// read only by a build with them (`storage_migrate::fault::ENABLED`: test
    /// builds); the binary users get ignores the variables.
    fn arm_test_hooks() {
        if !fault::ENABLED {
            return;
        }
        if let Some(point) = std::env::var_os("PRODIGY_STORAGE_CRASH_AT") {
            fault::arm(Fault::CrashAt(point.to_string_lossy().into_owned()));
        } else if let (Some(point), Some(file)) = (
            std::env::var_os("PRODIGY_STORAGE_PAUSE_AT"),
            std::env::var_os("PRODIGY_STORAGE_PAUSE_FILE"),
        ) {
            fault::arm(Fault::PauseAt(
                point.to_string_lossy().into_owned(),
                file.into(),
            ));
        } else if std::env::var_os("PRODIGY_STORAGE_FAULT").is_some_and(|v| v == "corrupt-staged") {
            fault::arm(Fault::CorruptStaged);
        }
    }

    /// A command that writes upgrades a layout-0 store first, and says so
    /// on stderr (as Prodigy's start-up does; a store a person downgraded
    /// is refused instead, naming `upgrade`).
    /// `wait` is how long the command waits for another process (its
    /// `--wait`), which an upgrade another process is running counts too.
    fn upgrade_first(cli: &Cli, store: &FsStorage, wait: Duration) -> Result<()> {
        if !storage_migrate::upgrade_due(store)? {
            return Ok(());
        }
        let display = Display::choose(cli.quiet, cli.verbose > 0);
        let report = storage_migrate::upgrade(
            store,
            &storage_migrate::UpgradeOptions {
                progress: &display,
                automatic: true,
                wait,
                ..storage_migrate::UpgradeOptions::default()
            },
        )?;
        // Said only when this process upgraded something: another one that
        // finished while this waited is no news ("first, … needs no upgrade").
        if !cli.quiet && report.outcome == storage_migrate::Outcome::Migrated {
            eprint!("first, {}", render::upgrade(&report));
        }
        Ok(())
    }

    /// A team's store and its name for messages (without a password).
    #[cfg(feature = "postgres")]
    fn open_team_store(cli: &Cli, url: &str) -> Result<(Box<dyn storage_core::Storage>, String)> {
        let store = super::pg_connect(cli, url)?;
        let name = store.store().to_owned();
        Ok((Box::new(store), name))
    }

    #[cfg(not(feature = "postgres"))]
    fn open_team_store(_cli: &Cli, _url: &str) -> Result<(Box<dyn storage_core::Storage>, String)> {
        anyhow::bail!(
            "--to names a PostgreSQL store, and this build of prodigy-storage has no PostgreSQL \
             support (built without the `postgres` feature); use a build with it"
        )
    }

    /// Copies the file store `source` into `dest`, with progress.
    fn copy(
        cli: &Cli,
        source: &FsStorage,
        dest: &dyn storage_core::Storage,
        label: &str,
        json: bool,
        overwrite: bool,
    ) -> Result<storage_migrate::CopyReport> {
        let display = Display::choose(cli.quiet || json, cli.verbose > 0);
        let opts = storage_migrate::CopyOptions {
            destination: label,
            progress: &display,
            overwrite,
        };
        Ok(storage_migrate::copy_store(source, dest, &opts)?)
    }

    /// The error after a copy's report when destination documents that
    /// differ from the source's were left as they were: the copy is not
    /// complete, and the user decides. `after_migrate`: the copy followed
    /// `migrate`/`upgrade --store`, which have no `--overwrite`.
    pub fn conflicts_left(report: &storage_migrate::CopyReport, after_migrate: bool) -> Result<()> {
        let n = report.conflicts_left().count();
        if n == 0 {
            return Ok(());
        }
        let next = if after_migrate {
            "then delete the destination's document and run `prodigy-storage copy-store --to \
             <URL>` (the team store's URL), or run that with --overwrite to replace them with \
             this store's"
        } else {
            "then delete the destination's document and run copy-store again, or run it again \
             with --overwrite to replace them with this store's"
        };
        anyhow::bail!(
            "{n} document(s) in the destination differ from this store's and were left as they \
             were, not copied (the report lists them as conflicts); everything else was copied. \
             Compare each with this store's, {next}"
        )
    }

    /// `migrate` or `upgrade` on the file store at `root`, then a copy of
    /// that store into a team's store; one report (one JSON document) for both.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub fn then_copy(
        cli: &Cli,
        root: &RootChoice,
        dest: &dyn storage_core::Storage,
        label: &str,
    ) -> Result<ExitCode> {
        let (json, first, human) = match &cli.command {
            Command::Migrate {
                project,
                dry_run,
                json,
                wait,
            } => {
                if *dry_run {
                    anyhow::bail!(
                        "--dry-run with a team's store: run `migrate --dry-run` without --store \
                         to see the plan (the migration itself runs on the file store)"
                    );
                }
                let project = project_dir(project.project.as_deref())?;
                let store = FsStorage::peek(&root.path)?;
                upgrade_first(cli, &store, Duration::from_secs(*wait))?;
                let display = Display::choose(cli.quiet || *json, cli.verbose > 0);
                let opts = MigrateOptions {
                    dry_run: false,
                    wait: Duration::from_secs(*wait),
                    progress: &display,
                };
                let report = storage_migrate::migrate(&store, &project, &opts)?;
                let human = render::migration(&report);
                (*json, serde_json::to_value(&report)?, human)
            }
            Command::Upgrade {
                dry_run,
                json,
                wait,
            } => {
                if *dry_run {
                    anyhow::bail!(
                        "--dry-run with a team's store: run `upgrade --dry-run` without --store \
                         to see the plan (the upgrade itself runs on the file store)"
                    );
                }
                let store = FsStorage::peek(&root.path)?;
                let display = Display::choose(cli.quiet || *json, cli.verbose > 0);
                let opts = storage_migrate::UpgradeOptions {
                    dry_run: false,
                    wait: Duration::from_secs(*wait),
                    progress: &display,
                    automatic: false,
                };
                let report = storage_migrate::upgrade(&store, &opts)?;
                let human = render::upgrade(&report);
                (*json, serde_json::to_value(&report)?, human)
            }
            _ => unreachable!("only migrate and upgrade are copied"),
        };
        let store = FsStorage::open(&root.path)?;
        let copied = copy(cli, &store, dest, label, json, false)?;
        emit(
            cli,
            json,
            &serde_json::json!({"schema_version": 1, "file_store": first, "copy": copied}),
            || format!("{human}{}", render::copied(&copied)),
        )?;
        conflicts_left(&copied, true)?;
        Ok(ExitCode::SUCCESS)
    }

    pub fn run(cli: &Cli, root: &RootChoice, command: &Command) -> Result<ExitCode> {
        arm_test_hooks();
        match command {
            Command::Migrate {
                project,
                dry_run,
                json,
                wait,
            } => {
                let project = project_dir(project.project.as_deref())?;
                // `migrate` creates the store only once its refusals have passed.
                let store = FsStorage::peek(&root.path)?;
                if !*dry_run {
                    upgrade_first(cli, &store, Duration::from_secs(*wait))?;
                }
                let display = Display::choose(cli.quiet || *json, cli.verbose > 0);
                let opts = MigrateOptions {
                    dry_run: *dry_run,
                    wait: Duration::from_secs(*wait),
                    progress: &display,
                };
                let report = storage_migrate::migrate(&store, &project, &opts)?;
                emit(cli, *json, &report, || render::migration(&report))?;
                Ok(ExitCode::SUCCESS)
            }
            Command::Verify { project, json } => {
                let project = project_dir(project.project.as_deref())?;
                let store = FsStorage::peek(&root.path)?;
                let report = storage_migrate::verify(&store, &project)?;
                emit(cli, *json, &report, || render::verify(&report))?;
                Ok(if report.problems.is_empty() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                })
            }
            Command::Rollback {
                project,
                force,
                json,
                wait,
            } => {
                let project = project_dir(project.project.as_deref())?;
                let store = FsStorage::peek(&root.path)?;
                let display = Display::choose(cli.quiet || *json, cli.verbose > 0);
                let opts = RollbackOptions {
                    txid: None,
                    force: *force,
                    wait: Duration::from_secs(*wait),
                    progress: &display,
                };
                let report = storage_migrate::rollback(&store, &project, &opts)?;
                emit(cli, *json, &report, || render::rollback(&report))?;
                Ok(ExitCode::SUCCESS)
            }
            Command::Backups { action } => {
                let store = FsStorage::peek(&root.path)?;
                match action {
                    BackupsAction::List { json } => {
                        let list = storage_migrate::backups(&store)?;
                        emit(
                            cli,
                            *json,
                            &serde_json::json!({"schema_version": 1, "backups": list}),
                            || render::backups(&list),
                        )?;
                    }
                    BackupsAction::Prune {
                        older_than,
                        dry_run,
                        force,
                        json,
                    } => {
                        let r =
                            storage_migrate::prune_backups(&store, *older_than, *dry_run, *force)?;
                        emit(
                            cli,
                            *json,
                            &serde_json::json!({
                                "schema_version": 1,
                                "dry_run": dry_run,
                                "pruned": r.pruned,
                                "kept": r.kept,
                            }),
                            || render::pruned(&r, *dry_run),
                        )?;
                    }
                }
                Ok(ExitCode::SUCCESS)
            }
            Command::Upgrade {
                dry_run,
                json,
                wait,
            } => {
                let store = FsStorage::peek(&root.path)?;
                let display = Display::choose(cli.quiet || *json, cli.verbose > 0);
                let opts = storage_migrate::UpgradeOptions {
                    dry_run: *dry_run,
                    wait: Duration::from_secs(*wait),
                    progress: &display,
                    automatic: false,
                };
                let report = storage_migrate::upgrade(&store, &opts)?;
                emit(cli, *json, &report, || render::upgrade(&report))?;
                Ok(ExitCode::SUCCESS)
            }
            Command::Downgrade { force, json, wait } => {
                let store = FsStorage::peek(&root.path)?;
                let display = Display::choose(cli.quiet || *json, cli.verbose > 0);
                let opts = storage_migrate::DowngradeOptions {
                    force: *force,
                    wait: Duration::from_secs(*wait),
                    progress: &display,
                };
                let report = storage_migrate::downgrade(&store, &opts)?;
                emit(cli, *json, &report, || render::downgrade(&report))?;
                Ok(ExitCode::SUCCESS)
            }
            Command::CopyStore {
                to,
                json,
                overwrite,
            } if super::is_postgres_url(to) => {
                let source = FsStorage::peek(&root.path)?;
                upgrade_first(cli, &source, Duration::from_secs(120))?;
                source.create()?;
                let (dest, label) = open_team_store(cli, to)?;
                let report = copy(cli, &source, dest.as_ref(), &label, *json, *overwrite)?;
                emit(cli, *json, &report, || render::copied(&report))?;
                conflicts_left(&report, false)?;
                Ok(ExitCode::SUCCESS)
            }
            Command::CopyStore {
                to,
                json,
                overwrite,
            } => {
                let source = FsStorage::peek(&root.path)?;
                upgrade_first(cli, &source, Duration::from_secs(120))?;
                source.create()?;
                let dest_path = std::path::absolute(to)
                    .with_context(|| format!("cannot resolve the destination `{to}`"))?;
                if dest_path == root.path {
                    anyhow::bail!(
                        "refusing to copy the store at `{}` into itself; name another directory with --to",
                        root.path.display()
                    );
                }
                let dest = FsStorage::open(&dest_path)?;
                let label = format!("file:{}", dest_path.display());
                let display = Display::choose(cli.quiet || *json, cli.verbose > 0);
                let opts = storage_migrate::CopyOptions {
                    destination: &label,
                    progress: &display,
                    overwrite: *overwrite,
                };
                let report = storage_migrate::copy_store(&source, &dest, &opts)?;
                emit(cli, *json, &report, || render::copied(&report))?;
                conflicts_left(&report, false)?;
                Ok(ExitCode::SUCCESS)
            }
            Command::Status { .. }
            | Command::Layout
            | Command::List { .. }
            | Command::Show { .. }
            | Command::Events { .. } => {
                unreachable!("handled by the caller")
            }
        }
    }
}

/// The commands on a team's store (`--store postgres://…`).
#[cfg(feature = "postgres")]
mod team {
    use std::process::ExitCode;

    use anyhow::Result;
    use storage_core::StorageExt;

    use super::{emit, render};
    use crate::cli::{Cli, Command};

    pub fn run(
        cli: &Cli,
        url: &str,
        source: &str,
        file_root: &storage_fs::RootChoice,
    ) -> Result<ExitCode> {
        match &cli.command {
            Command::Status { json, .. } => {
                let store = super::pg_connect(cli, url)?;
                let stats = store.stats()?;
                let kinds: Vec<serde_json::Value> = stats
                    .iter()
                    .map(|k| {
                        serde_json::json!({"repo": k.repo.as_ref().map(ToString::to_string),
                            "kind": k.kind, "count": k.count, "bytes": k.bytes})
                    })
                    .collect();
                emit(
                    cli,
                    *json,
                    &serde_json::json!({
                        "schema_version": 1, "store_kind": "postgres", "store": store.store(),
                        "store_source": source, "schema": store.schema(),
                        "postgres_schema_version": storage_postgres::SCHEMA_VERSION,
                        "kinds": kinds,
                    }),
                    || render::team_status(store.store(), source, &stats),
                )?;
                Ok(ExitCode::SUCCESS)
            }
            Command::List { repo, json } => {
                let store = super::pg_connect(cli, url)?;
                let repo = repo
                    .as_deref()
                    .map(storage_core::RepoKey::new)
                    .transpose()?;
                let items = super::read::inventory(&store, repo.as_ref())?;
                let rows: Vec<storage_fs::Listed> = items
                    .iter()
                    .map(|i| storage_fs::Listed {
                        kind: i.kind.clone(),
                        repo: i.repo.clone(),
                        job: i.job.clone(),
                        id: i.id.clone(),
                        path: std::path::PathBuf::new(),
                        size: i.size,
                        modified: i.modified.clone(),
                    })
                    .collect();
                emit(
                    cli,
                    *json,
                    &serde_json::json!({"schema_version": 2, "store_kind": "postgres",
                        "store": store.store(), "items": items}),
                    || render::list(&rows, repo.as_ref().map(storage_core::RepoKey::as_str)),
                )?;
                Ok(ExitCode::SUCCESS)
            }
            Command::Show { repo, .. } | Command::Events { repo, .. } => {
                let store = super::pg_connect(cli, url)?;
                let repo = repo
                    .as_deref()
                    .map(storage_core::RepoKey::new)
                    .transpose()?;
                super::read::run(
                    &cli.command,
                    &store,
                    repo,
                    &format!("a team's store ({source}) knows no project"),
                )
            }
            #[cfg(feature = "legacy-import")]
            Command::Migrate { .. } | Command::Upgrade { .. } => {
                // The migration's guarantees (staging, verification, backup,
                // rollback) rest on the file store: the command runs there,
                // then the file store is copied into the team's store.
                super::check_store_path(file_root)?;
                let store = super::pg_connect(cli, url)?;
                super::import::then_copy(cli, file_root, &store, store.store())
            }
            other => anyhow::bail!(
                "`{}` works on the file store, where migrations keep their journals and \
                 backups; run it without --store / PRODIGY_STORE (the file store is --home, \
                 PRODIGY_HOME or ~/.prodigy). With a team's store ({source}) this build runs \
                 status, list, show, events, migrate and upgrade (the last two on the file store, \
                 then copied into the team's store); `copy-store --to <URL>` copies the file \
                 store into it",
                command_name(other)
            ),
        }
    }

    fn command_name(c: &Command) -> &'static str {
        match c {
            Command::Status { .. } => "status",
            Command::Migrate { .. } => "migrate",
            Command::Verify { .. } => "verify",
            Command::Rollback { .. } => "rollback",
            Command::Backups { .. } => "backups",
            Command::Layout => "layout",
            Command::List { .. } => "list",
            Command::Show { .. } => "show",
            Command::Events { .. } => "events",
            Command::Upgrade { .. } => "upgrade",
            Command::Downgrade { .. } => "downgrade",
            Command::CopyStore { .. } => "copy-store",
        }
    }
}

#[cfg(not(feature = "postgres"))]
mod team {
    use std::process::ExitCode;

    use anyhow::Result;

    use crate::cli::Cli;

    pub fn run(
        _cli: &Cli,
        _url: &str,
        source: &str,
        _file_root: &storage_fs::RootChoice,
    ) -> Result<ExitCode> {
        anyhow::bail!(
            "{source} names a PostgreSQL store, and this build of prodigy-storage has no \
             PostgreSQL support (built without the `postgres` feature); use a build with it"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::{StoreValue, classify_store, redact};

    #[test]
    fn a_store_value_is_a_directory_a_postgresql_store_or_refused_by_its_form() {
        for pg in [
            "postgres://u@h/db",
            "postgresql://u:p@h:5433/db?sslmode=require",
            "host=/run/postgresql dbname=prodigy user=bob",
            "host=db.example password=s3cret",
        ] {
            assert_eq!(classify_store(pg), StoreValue::Postgres, "{pg}");
        }
        for dir in ["/home/dev/.prodigy", "store", "./a=b", "my store", "a:b"] {
            assert_eq!(classify_store(dir), StoreValue::Directory, "{dir}");
        }
        for bad in [
            "mysql://u:p@h/db",
            "http://example.com/store",
            "sqlite:///tmp/x",
            "host=h db=x",
            "host=h dbname",
        ] {
            assert!(
                matches!(classify_store(bad), StoreValue::Refused(_)),
                "{bad}"
            );
        }
    }

    #[test]
    fn passwords_are_never_shown() {
        assert_eq!(redact("mysql://u:s3cret@h/db"), "mysql://u:***@h/db");
        assert_eq!(
            redact("postgres://bob:p%40ss@db:5432/x?sslmode=require"),
            "postgres://bob:***@db:5432/x?sslmode=require"
        );
        assert_eq!(
            redact("host=h password=s3cret user=u"),
            "host=h password=*** user=u"
        );
        assert_eq!(
            redact("postgres://h/db?password=s3cret"),
            "postgres://h/db?password=***"
        );
        assert_eq!(redact("/home/dev/.prodigy"), "/home/dev/.prodigy");
    }
}
