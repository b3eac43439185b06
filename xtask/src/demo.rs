//! `cargo xtask demo`: the README's first command. Migrates a scratch copy
//! of `samples/legacy-project` (never the sample itself) and prints what a
//! user would see.

use std::process::Command;

use anyhow::Result;

use crate::{cargo, root, run, target_dir};

pub fn run_demo() -> Result<()> {
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
    // Said before the build, with cargo's own progress after it: a cold
    // build takes about a minute, and a silent minute looks hung.
    eprintln!("building prodigy-storage (a first build takes a minute or two)...");
    run(cargo()
        .args([
            "build",
            "--package",
            "storage-cli",
            "--bin",
            "prodigy-storage",
        ])
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
