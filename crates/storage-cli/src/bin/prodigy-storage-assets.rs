//! Writes shell completions (bash, zsh, fish) and the man page of
//! `prodigy-storage` into a directory, from the very clap definitions the
//! binary uses (`cargo xtask assets` runs this). A separate binary, so the
//! generators are not linked into `prodigy-storage` itself.

#[allow(dead_code)] // Reason: only the definitions are used here, not the parser helpers.
#[path = "../cli.rs"]
mod cli;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::CommandFactory;

fn main() -> Result<()> {
    let dir = PathBuf::from(
        std::env::args_os()
            .nth(1)
            .context("usage: prodigy-storage-assets DIR")?,
    );
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create `{}`", dir.display()))?;
    let mut cmd = cli::Cli::command();
    for shell in [
        clap_complete::Shell::Bash,
        clap_complete::Shell::Zsh,
        clap_complete::Shell::Fish,
    ] {
        let path = clap_complete::generate_to(shell, &mut cmd, "prodigy-storage", &dir)
            .with_context(|| {
                format!("cannot write {shell} completions into `{}`", dir.display())
            })?;
        println!("wrote {}", path.display());
    }
    let man = dir.join("prodigy-storage.1");
    let mut buf = Vec::new();
    clap_mangen::Man::new(cmd)
        .render(&mut buf)
        .context("cannot render the man page")?;
    std::fs::write(&man, buf).with_context(|| format!("cannot write `{}`", man.display()))?;
    println!("wrote {}", man.display());
    Ok(())
}
