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
    let page = finish_page(&page, cmd.get_name() == "prodigy-storage");
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

/// What every page says about the environment and the exit status.
const ENVIRONMENT: &str = r".SH ENVIRONMENT
.TP
\fBPRODIGY_HOME\fR
The file store's directory when \fB\-\-home\fR is not given (an empty value is ignored); else \fI~/.prodigy\fR.
.TP
\fBPRODIGY_STORE\fR
The store when neither \fB\-\-store\fR nor \fB\-\-home\fR is given: a \fIpostgres://\fR URL or libpq connection string (a team's store), or a directory.
.TP
\fBHOME\fR
Where \fI~/.prodigy\fR is.
.TP
\fBRUST_LOG\fR
The level of diagnostics on standard error (\fIwarn\fR by default; \fB\-v\fR and \fB\-vv\fR raise it).
.TP
\fBNO_COLOR\fR
Set (to anything): no colours, also on a terminal.
";

const EXIT_STATUS: &str = r#".SH "EXIT STATUS"
.TP
\fB0\fR
Success, including "nothing to migrate".
.TP
\fB1\fR
The command failed (the error on standard error names the path and the next step); \fBverify\fR found a problem; \fBshow\fR or \fBevents\fR found nothing of that name; \fBcopy\-store\fR (or \fBmigrate\fR and \fBupgrade\fR with a team's store) left a conflict.
.TP
\fB2\fR
A usage error (an unknown option, a missing argument).
"#;

/// Finishes a page `clap_mangen` rendered: inline code (`` `x` ``) in
/// bold instead of literal backticks; the help's "Examples:" as an
/// EXAMPLES section printed as written (roff would fill the lines into
/// one paragraph, cutting comments in the middle); and the ENVIRONMENT
/// and EXIT STATUS sections (`top`: the page of `prodigy-storage` itself).
fn finish_page(page: &str, top: bool) -> String {
    let mut out = String::with_capacity(page.len() + 2048);
    let mut in_examples = false;
    let mut tail_added = false;
    for line in page.split_inclusive('\n') {
        if line.starts_with(".SH ") {
            if in_examples {
                out.push_str(".fi\n");
                in_examples = false;
            }
            if line.starts_with(".SH VERSION") || line.starts_with(".SH AUTHORS") {
                out.push_str(ENVIRONMENT);
                out.push_str(EXIT_STATUS);
                tail_added = true;
            }
            if line.starts_with(".SH EXTRA") {
                out.push_str(".SH EXAMPLES\n.nf\n");
                in_examples = true;
                continue;
            }
        }
        if in_examples && line.trim_end() == "Examples:" {
            continue;
        }
        if line.starts_with('.') || line.starts_with('\'') {
            out.push_str(line);
        } else {
            out.push_str(&code_in_bold(line));
        }
    }
    if in_examples {
        out.push_str(".fi\n");
    }
    if !tail_added && top {
        out.push_str(ENVIRONMENT);
        out.push_str(EXIT_STATUS);
    } else if !tail_added {
        out.push_str(EXIT_STATUS);
    }
    out
}

/// `` `x` `` as `\fBx\fR`; an unpaired backtick stays.
fn code_in_bold(line: &str) -> String {
    let parts: Vec<&str> = line.split('`').collect();
    if parts.len() < 3 {
        return line.to_owned();
    }
    let mut out = String::with_capacity(line.len() + 16);
    let pairs = (parts.len() - 1) / 2;
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            let closing = i % 2 == 0;
            if i <= pairs * 2 {
                out.push_str(if closing { "\\fR" } else { "\\fB" });
            } else {
                out.push('`');
            }
        }
        out.push_str(part);
    }
    out
}
