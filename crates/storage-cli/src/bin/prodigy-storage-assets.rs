//! Writes shell completions (bash, zsh, fish) and the man pages of
//! `prodigy-storage` (one per command, as `prodigy-storage(1)` refers to
//! them) into a directory, from the very clap definitions the binary uses
//! (`cargo xtask assets` runs this). A separate binary, so the generators are
//! not linked into `prodigy-storage` itself.

#[allow(dead_code)] // Reason: only the definitions are used here, not the parser helpers.
#[path = "../cli.rs"]
mod cli;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{CommandFactory, Parser};

/// Write the shell completions and man pages of `prodigy-storage` into DIR.
///
/// Writes `prodigy-storage.bash`, `_prodigy-storage` (zsh),
/// `prodigy-storage.fish`, `prodigy-storage.1` and one
/// `prodigy-storage-<command>.1` per command. DIR is created if missing;
/// files of the same names in it are replaced.
#[derive(Debug, Parser)]
#[command(name = "prodigy-storage-assets", version, verbatim_doc_comment)]
struct Args {
    /// The directory to write into
    #[arg(value_name = "DIR")]
    dir: PathBuf,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match write_assets(&args.dir) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn write_assets(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create `{}`", dir.display()))?;
    let mut cmd = cli::Cli::command();
    for shell in [
        clap_complete::Shell::Bash,
        clap_complete::Shell::Zsh,
        clap_complete::Shell::Fish,
    ] {
        let path = clap_complete::generate_to(shell, &mut cmd, "prodigy-storage", dir)
            .with_context(|| {
                format!("cannot write {shell} completions into `{}`", dir.display())
            })?;
        if shell == clap_complete::Shell::Bash {
            fix_bash(&path)?;
        }
        println!("wrote {}", path.display());
    }
    // Pages for the commands, not for clap's `help` subcommands.
    let mut cmd = without_help_subcommands(cli::Cli::command());
    cmd.build();
    write_man_pages(&cmd, dir)
}

fn without_help_subcommands(cmd: clap::Command) -> clap::Command {
    let names: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_owned())
        .collect();
    names
        .into_iter()
        .fold(cmd.disable_help_subcommand(true), |cmd, name| {
            cmd.mut_subcommand(name, without_help_subcommands)
        })
}

/// `clap_complete`'s bash script names its states after the binary with `-`
/// mangled one way (`prodigy__storage__subcmd__migrate`) and matches them
/// against labels mangled another way (`prodigy__subcmd__storage__subcmd__migrate`),
/// so no option of any command completes. Rename the labels to the states.
fn fix_bash(path: &Path) -> Result<()> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read `{}`", path.display()))?;
    let fixed = text.replace("prodigy__subcmd__storage", "prodigy__storage");
    std::fs::write(path, fixed).with_context(|| format!("cannot write `{}`", path.display()))
}

/// One page per command, recursively: the top page's COMMANDS section
/// refers to `prodigy-storage-<command>(1)`.
fn write_man_pages(cmd: &clap::Command, dir: &Path) -> Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_man_pages(sub, dir)?;
    }
    let man = clap_mangen::Man::new(cmd.clone());
    let path = dir.join(man.get_filename());
    let mut buf = Vec::new();
    man.render(&mut buf)
        .with_context(|| format!("cannot render the man page `{}`", path.display()))?;
    let page = with_value_names(cmd, &String::from_utf8_lossy(&buf));
    std::fs::write(&path, page).with_context(|| format!("cannot write `{}`", path.display()))?;
    println!("wrote {}", path.display());
    Ok(())
}

/// `clap_mangen`'s SYNOPSIS names an option but not its value (`[--home]`);
/// add the value name, as `--help` shows it (`[--home DIR]`).
fn with_value_names(cmd: &clap::Command, page: &str) -> String {
    let mut out = String::with_capacity(page.len());
    let mut in_synopsis = false;
    for line in page.split_inclusive('\n') {
        if line.starts_with(".SH ") {
            in_synopsis = line.starts_with(".SH SYNOPSIS");
            out.push_str(line);
            continue;
        }
        let mut line = line.to_owned();
        if in_synopsis {
            for arg in cmd
                .get_arguments()
                .filter(|a| a.get_action().takes_values())
            {
                let (Some(long), Some(names)) = (arg.get_long(), arg.get_value_names()) else {
                    continue;
                };
                let bold = format!("\\fB\\-\\-{}\\fR", long.replace('-', "\\-"));
                let value = names
                    .iter()
                    .map(|n| format!("\\fI{n}\\fR"))
                    .collect::<Vec<_>>()
                    .join(" ");
                line = line.replace(&bold, &format!("{bold} {value}"));
            }
        }
        out.push_str(&line);
    }
    out
}
