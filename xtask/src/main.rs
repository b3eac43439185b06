//! `cargo xtask`: project chores, run through the `.cargo/config.toml` alias.
//!
//! Depends on no workspace crate: it drives `cargo` and the built binaries,
//! as a user would.
//!
//! ```text
//! cargo xtask demo     migrate a copy of samples/legacy-project and print the report
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("demo") => demo(),
        Some("help" | "--help" | "-h") | None => {
            println!("{}", HELP.trim());
            Ok(())
        }
        Some(other) => bail!("unknown task `{other}`\n\n{}", HELP.trim()),
    }
}

const HELP: &str = "
cargo xtask <task>

tasks:
  demo     copy samples/legacy-project into target/demo/ and migrate it (the README's first command)
";

/// The workspace root (xtask lives one level below it).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is inside the workspace")
        .to_owned()
}

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn demo() -> Result<()> {
    let root = root();
    let sample = root.join("samples/legacy-project");
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let scratch = root.join("target/demo").join(format!("run-{secs}"));
    let project = scratch.join("project");
    let store = scratch.join("store");
    fs_err::create_dir_all(&scratch)?;
    // `cp -a` keeps links as links and the files' modes and times.
    run(Command::new("cp").arg("-a").arg(&sample).arg(&project))?;
    run(cargo()
        .args(["build", "--quiet", "--package", "storage-cli"])
        .current_dir(&root))?;
    let bin = target_dir(&root).join("debug/prodigy-storage");
    let step = |args: &[&str]| -> Result<()> {
        println!(
            "\n$ prodigy-storage --home {} {}",
            store.display(),
            args.join(" ")
        );
        run(Command::new(&bin)
            .arg("--home")
            .arg(&store)
            .args(args)
            .arg(&project))
    };
    println!("sample copied to {}", project.display());
    step(&["migrate", "--dry-run"])?;
    step(&["migrate"])?;
    step(&["verify"])?;
    step(&["migrate"])?;
    println!(
        "\nThe sample's user files are still in {}/.prodigy; the store is {}.\nTry `{} --home {} rollback {}` to put everything back.",
        project.display(),
        store.display(),
        bin.display(),
        store.display(),
        project.display()
    );
    Ok(())
}

/// The target directory, honouring `CARGO_TARGET_DIR` (as cargo does).
fn target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => {
            let d = PathBuf::from(d);
            if d.is_absolute() { d } else { root.join(d) }
        }
        None => root.join("target"),
    }
}
