//! What a person sees: `--help` for every command (snapshots, so the help
//! cannot drift from the code), progress bars in a real pseudo-terminal,
//! plain lines when not on a terminal, colour rules, and the JSON documents.

use std::process::Command;

use crate::support::{Sandbox, bin, cmd, fixture_sandbox, redact, run, run_json};

fn help(args: &[&str]) -> String {
    let out = Command::new(bin())
        .args(args)
        .arg("--help")
        .env("NO_COLOR", "1")
        .output()
        .expect("run");
    assert!(out.status.success(), "{args:?} --help failed");
    String::from_utf8(out.stdout).expect("utf8")
}

#[test]
fn every_command_documents_itself_truthfully() {
    for args in [
        &[][..],
        &["status"],
        &["migrate"],
        &["verify"],
        &["rollback"],
        &["backups"],
        &["backups", "list"],
        &["backups", "prune"],
        &["layout"],
        &["list"],
        &["show"],
        &["events"],
        &["upgrade"],
        &["downgrade"],
        &["copy-store"],
    ] {
        let name = if args.is_empty() {
            "help".to_owned()
        } else {
            format!("help_{}", args.join("_"))
        };
        insta::assert_snapshot!(name, help(args));
    }
    let top = help(&[]);
    assert!(
        top.contains("~/.prodigy"),
        "the help names the global store"
    );
    for args in [&[][..], &["migrate"], &["rollback"], &["backups", "prune"]] {
        let text = help(args);
        assert!(
            text.contains("\nExamples:\n  prodigy-storage "),
            "{args:?} --help has no examples:\n{text}"
        );
    }
}

/// Runs `prodigy-storage` inside a pseudo-terminal with `script`; `None` where `script` is missing.
fn in_pty(sb: &Sandbox, args: &str, no_color: bool) -> Option<String> {
    in_pty_of(sb, args, no_color, 80)
}

/// [`in_pty`] on a terminal `columns` wide.
fn in_pty_of(sb: &Sandbox, args: &str, no_color: bool, columns: u16) -> Option<String> {
    if Command::new("script").arg("--version").output().is_err() {
        crate::support::skip(
            "`script` (util-linux) is not installed; the pseudo-terminal test did not run",
        );
        return None;
    }
    let log = sb.path().join("typescript");
    let line = format!(
        "stty rows 24 cols {columns}; {} --home {} {args} {}",
        bin().display(),
        sb.store().display(),
        sb.project().display()
    );
    let mut c = Command::new("script");
    c.args(["-qec", &line])
        .arg(&log)
        .env("TERM", "xterm-256color")
        .env("HOME", sb.home());
    if no_color {
        c.env("NO_COLOR", "1");
    } else {
        c.env_remove("NO_COLOR");
    }
    let status = c.output().expect("script");
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    Some(String::from_utf8_lossy(&fs_err::read(&log).expect("typescript")).into_owned())
}

#[test]
fn on_a_terminal_progress_bars_render_and_the_report_is_coloured() {
    let sb = fixture_sandbox();
    let Some(screen) = in_pty(&sb, "migrate", false) else {
        return;
    };
    for label in [
        "planning",
        "staging [",
        "verifying [",
        "publishing [",
        "backing up [",
    ] {
        assert!(screen.contains(label), "no `{label}` bar in:\n{screen}");
    }
    assert!(
        screen.contains("\u{1b}[1m\u{1b}[32mMigrated 25 legacy storage file(s)"),
        "green bold headline:\n{screen}"
    );
    assert!(
        screen.contains("To undo this migration: prodigy-storage --home"),
        "{screen}"
    );
}

/// On an 80-column terminal, and on a 60-column one, no progress line is
/// wider than the terminal (a wider one wraps and is redrawn below itself:
/// `ESC [1A` cursor moves), every bar keeps a bar (at 60 columns it once
/// shrank to nothing), and a run of a second shows no time left (a first
/// guess said "eta 47m").
#[test]
fn progress_lines_fit_an_80_column_terminal() {
    for columns in [80, 60] {
        let sb = fixture_sandbox();
        let Some(screen) = in_pty_of(&sb, "migrate", true, columns) else {
            return;
        };
        check_bars(&screen, columns.into());
    }
}

fn check_bars(screen: &str, columns: usize) {
    assert!(
        !screen.contains("\u{1b}[1A"),
        "a progress line wrapped:\n{screen}"
    );
    let mut plain = String::new();
    let mut chars = screen.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ params final-byte
            if chars.peek() == Some(&'[') {
                chars.next();
                for d in chars.by_ref() {
                    if d.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else {
            plain.push(c);
        }
    }
    let bars: Vec<&str> = plain
        .split(['\r', '\n'])
        .filter(|l| l.contains(" [") && l.contains("] "))
        .collect();
    assert!(bars.len() > 4, "no progress bars:\n{plain}");
    for line in bars {
        assert!(
            line.chars().count() <= columns,
            "{} columns of {columns}: {line}",
            line.chars().count()
        );
        let bar = line
            .split_once(" [")
            .and_then(|(_, rest)| rest.split_once("] "))
            .map_or(0, |(bar, _)| bar.chars().count());
        assert!(bar >= 10, "a bar of {bar} columns at {columns}: {line}");
        assert!(
            !line.contains(" eta "),
            "a guess of the time left after a moment: {line}"
        );
    }
    assert!(
        !plain
            .split(['\r', '\n'])
            .any(|l| l.contains("verifying") && l.contains(" 0 B/")),
        "the verify bar shows a byte counter stuck at 0 B:\n{plain}"
    );
}

#[test]
fn no_color_means_no_colour_even_on_a_terminal() {
    let sb = fixture_sandbox();
    let Some(screen) = in_pty(&sb, "migrate --dry-run", true) else {
        return;
    };
    let report = screen
        .lines()
        .skip_while(|l| !l.contains("Would migrate"))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(!report.is_empty(), "{screen}");
    assert!(
        !report.contains("\u{1b}[3"),
        "colour despite NO_COLOR:\n{report}"
    );
}

/// Off a terminal (a pipe, a script), no progress unless `-v` asks for
/// plain lines: what each step starts with (bytes only where there are
/// some: publishing renames), and the files it did; verification counts
/// each file once.
#[test]
fn off_a_terminal_progress_is_plain_lines_and_the_report_has_no_escapes() {
    let sb = fixture_sandbox();
    let out = cmd(&sb, &sb.project(), &["migrate"])
        .env_remove("NO_COLOR")
        .output()
        .expect("run");
    assert!(out.status.success());
    let quiet = String::from_utf8(out.stderr).expect("utf8");
    assert!(
        !quiet.contains("staging"),
        "no progress without -v: {quiet}"
    );
    let sb = fixture_sandbox();
    let out = cmd(&sb, &sb.project(), &["-v", "migrate"])
        .env_remove("NO_COLOR")
        .output()
        .expect("run");
    assert!(out.status.success());
    let stderr = String::from_utf8(out.stderr).expect("utf8");
    let stdout = String::from_utf8(out.stdout).expect("utf8");
    assert!(
        stderr.contains("staging: 25 file(s), 6.7 KiB\n"),
        "{stderr}"
    );
    assert!(stderr.contains("staging: 25 file(s) done in "), "{stderr}");
    let verify = stderr
        .lines()
        .find(|l| l.starts_with("verifying: "))
        .unwrap_or_else(|| panic!("{stderr}"));
    let outputs: u64 = verify["verifying: ".len()..]
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{verify}"));
    assert!(
        outputs < 40,
        "each file once, not its source and its copy: {verify}"
    );
    assert!(
        !stderr
            .lines()
            .any(|l| l.starts_with("publishing") && l.ends_with(" 0 B")),
        "{stderr}"
    );
    assert!(
        !stderr.contains('\u{1b}') && !stdout.contains('\u{1b}'),
        "escape codes off a terminal"
    );
    assert!(
        stdout.starts_with("Migrated 25 legacy storage file(s)"),
        "{stdout}"
    );
    // -q: errors only.
    let sb = fixture_sandbox();
    let out = cmd(&sb, &sb.project(), &["-q", "migrate"])
        .output()
        .expect("run");
    assert!(out.status.success());
    assert!(
        out.stdout.is_empty() && out.stderr.is_empty(),
        "-q printed something"
    );
}

#[test]
fn verbose_and_rust_log_show_diagnostics_on_stderr() {
    let sb = fixture_sandbox();
    let out = cmd(&sb, &sb.project(), &["-vv", "migrate"])
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("DEBUG staged file="), "{stderr}");
    assert!(stderr.contains("INFO migrating legacy storage"), "{stderr}");
    let sb = fixture_sandbox();
    let out = cmd(&sb, &sb.project(), &["migrate"])
        .env("RUST_LOG", "info")
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("INFO migrating legacy storage"), "{stderr}");
    assert!(!stderr.contains("DEBUG"), "{stderr}");
}

/// `-v` says what each command is doing; `-vv` names every file: each of
/// the 25 moves into the backup, each restore and removal of a rollback.
#[test]
fn verbose_covers_verify_and_rollback_and_vv_names_every_file() {
    let sb = fixture_sandbox();
    let stderr = |args: &[&str]| {
        let out = cmd(&sb, &sb.project(), args).output().expect("run");
        assert!(out.status.success(), "{args:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let migrate = stderr(&["-vv", "migrate"]);
    assert_eq!(
        migrate.matches("moved into the backup").count(),
        25,
        "{migrate}"
    );
    let verify = stderr(&["-v", "verify"]);
    assert!(verify.contains("INFO verifying migration"), "{verify}");
    let rollback = stderr(&["-vv", "rollback"]);
    assert!(
        rollback.contains("INFO rolling back migration"),
        "{rollback}"
    );
    assert_eq!(
        rollback.matches("restored from the backup").count(),
        25,
        "{rollback}"
    );
    assert!(
        rollback.matches("removed from the store").count() >= 20,
        "{rollback}"
    );
}

#[test]
fn the_json_documents_have_their_documented_shape() {
    let sb = fixture_sandbox();
    let status = run_json(&sb, &["status"]);
    insta::assert_snapshot!(
        "status_json_before",
        redact(&sb, &serde_json::to_string_pretty(&status).expect("json"))
    );
    run(&sb, &["migrate"], true);
    let verify = run_json(&sb, &["verify"]);
    insta::assert_snapshot!(
        "verify_json",
        redact(&sb, &serde_json::to_string_pretty(&verify).expect("json"))
    );
    let rollback = run_json(&sb, &["rollback"]);
    insta::assert_snapshot!(
        "rollback_json",
        redact(&sb, &serde_json::to_string_pretty(&rollback).expect("json"))
    );
    let list = run_json(&sb, &["backups", "list"]);
    assert_eq!(list["schema_version"], 1);
    assert_eq!(list["backups"][0]["rolled_back"], true);
    let layout = String::from_utf8(run(&sb, &["layout"], true).stdout).expect("utf8");
    insta::assert_snapshot!("layout", redact(&sb, &layout));
}

fn assets_bin() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_BIN_EXE_prodigy-storage-assets"))
}

/// Runs `prodigy-storage-assets` into a fresh directory and returns it.
fn assets(sb: &Sandbox) -> std::path::PathBuf {
    let dir = sb.path().join("assets");
    let out = Command::new(assets_bin()).arg(&dir).output().expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

#[test]
fn generated_completions_and_man_page_exist() {
    let sb = Sandbox::new();
    let dir = assets(&sb);
    for f in [
        "prodigy-storage.bash",
        "_prodigy-storage",
        "prodigy-storage.fish",
        "prodigy-storage.1",
    ] {
        let text = fs_err::read_to_string(dir.join(f)).expect(f);
        assert!(text.contains("migrate"), "{f} lacks the migrate command");
    }
}

#[test]
fn the_assets_tool_answers_help_and_refuses_options_instead_of_writing_a_directory_named_after_them()
 {
    let sb = Sandbox::new();
    let out = Command::new(assets_bin())
        .arg("--help")
        .current_dir(sb.path())
        .output()
        .expect("run");
    assert!(out.status.success(), "--help failed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("Usage: prodigy-storage-assets <DIR>"),
        "{stdout}"
    );
    let out = Command::new(assets_bin())
        .arg("--bogus")
        .current_dir(sb.path())
        .output()
        .expect("run");
    assert_eq!(
        out.status.code(),
        Some(2),
        "an unknown option is a usage error"
    );
    let created: Vec<_> = fs_err::read_dir(sb.path())
        .expect("ls")
        .map(|e| e.expect("entry").file_name())
        .filter(|n| n.to_string_lossy().starts_with('-'))
        .collect();
    assert!(created.is_empty(), "created {created:?}");
}

#[test]
fn every_man_page_the_man_pages_refer_to_is_generated_and_synopses_name_option_values() {
    let sb = Sandbox::new();
    let dir = assets(&sb);
    let mut pages = Vec::new();
    for entry in fs_err::read_dir(&dir).expect("ls") {
        let name = entry
            .expect("entry")
            .file_name()
            .to_string_lossy()
            .into_owned();
        if let Some(stem) = name.strip_suffix(".1") {
            pages.push(stem.to_owned());
        }
    }
    for cmd in [
        "status",
        "migrate",
        "verify",
        "rollback",
        "backups",
        "backups-list",
        "backups-prune",
        "layout",
    ] {
        assert!(
            pages.contains(&format!("prodigy-storage-{cmd}")),
            "no page for {cmd}: {pages:?}"
        );
    }
    for page in &pages {
        let text = fs_err::read_to_string(dir.join(format!("{page}.1"))).expect("page");
        // Every `name(1)` reference (roff escapes `-` as `\-`) names a generated page.
        for (i, _) in text.match_indices("(1)") {
            let name: String = text[..i]
                .replace("\\-", "-")
                .chars()
                .rev()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect::<String>()
                .chars()
                .rev()
                .collect();
            assert!(
                pages.contains(&name),
                "{page}.1 refers to {name}(1), not generated"
            );
        }
        assert!(
            text.contains("[\\fB\\-\\-home\\fR \\fIDIR\\fR]"),
            "{page}.1 synopsis lacks `--home DIR`:\n{text}"
        );
    }
    let migrate = fs_err::read_to_string(dir.join("prodigy-storage-migrate.1")).expect("page");
    assert!(
        migrate.contains("\\fB\\-\\-wait\\fR \\fISECS\\fR"),
        "{migrate}"
    );
}

/// What `bash` completes for `words` (the last one being completed), using
/// the generated script the way bash-completion calls it.
fn bash_complete(script: &std::path::Path, words: &[&str]) -> Vec<String> {
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let cword = words.len() - 1;
    let prev = if cword > 0 { words[cword - 1] } else { "" };
    let program = format!(
        "source '{}'\nCOMP_WORDS=({})\nCOMP_CWORD={cword}\nCOMP_LINE='{}'\nCOMP_POINT=${{#COMP_LINE}}\n\
         _prodigy__storage prodigy-storage '{}' '{prev}'\nprintf '%s\\n' \"${{COMPREPLY[@]}}\"\n",
        script.display(),
        quoted.join(" "),
        words.join(" "),
        words[cword],
    );
    let out = Command::new("bash")
        .args(["--norc", "--noprofile", "-c", &program])
        .output()
        .expect("run bash");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

#[test]
fn bash_completes_commands_and_the_options_of_every_command() {
    let sb = Sandbox::new();
    let script = assets(&sb).join("prodigy-storage.bash");
    let top = bash_complete(&script, &["prodigy-storage", ""]);
    for c in [
        "status", "migrate", "verify", "rollback", "backups", "layout",
    ] {
        assert!(top.iter().any(|w| w == c), "no `{c}` in {top:?}");
    }
    assert_eq!(
        bash_complete(&script, &["prodigy-storage", "migrate", "--d"]),
        ["--dry-run"]
    );
    assert_eq!(
        bash_complete(&script, &["prodigy-storage", "rollback", "--f"]),
        ["--force"]
    );
    assert_eq!(
        bash_complete(&script, &["prodigy-storage", "backups", "prune", "--o"]),
        ["--older-than"]
    );
    assert_eq!(
        bash_complete(&script, &["prodigy-storage", "status", "--j"]),
        ["--json"]
    );
    assert_eq!(
        bash_complete(&script, &["prodigy-storage", "backups", "l"]),
        ["list"]
    );
}

#[test]
fn fish_completes_the_options_of_every_command() {
    if Command::new("fish").arg("--version").output().is_err() {
        crate::support::skip("`fish` is not installed; fish completions were not run");
        return;
    }
    let sb = Sandbox::new();
    let script = assets(&sb).join("prodigy-storage.fish");
    let complete = |line: &str| -> Vec<String> {
        let out = Command::new("fish")
            .args(["--no-config", "-c"])
            .arg(format!(
                "source '{}'; complete -C '{line}'",
                script.display()
            ))
            .output()
            .expect("run fish");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.split('\t').next().unwrap_or_default().to_owned())
            .collect()
    };
    assert_eq!(complete("prodigy-storage migrate --d"), ["--dry-run"]);
    assert_eq!(
        complete("prodigy-storage backups prune --o"),
        ["--older-than"]
    );
    let top = complete("prodigy-storage ");
    assert!(top.iter().any(|w| w == "rollback"), "{top:?}");
}

/// Issue 23, item 3: output into a pipe whose reader has gone
/// (`prodigy-storage list | head -2`) ends quietly with success, instead of
/// "error: Broken pipe" and exit 1.
#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    use std::process::Stdio;
    let sb = fixture_sandbox();
    run(&sb, &["migrate"], true);
    for args in [&["list"][..], &["layout"], &["status"], &["help"]] {
        let mut child = crate::support::cmd(&sb, &sb.project(), args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start");
        // The reader exits before reading anything.
        drop(child.stdout.take());
        let out = child.wait_with_output().expect("wait");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {:?}: {err}", out.status);
        assert!(!err.contains("Broken pipe"), "{args:?}: {err}");
    }
}

/// Issue 23, item 8: `list` keeps its columns in line whatever the length
/// of an id (the SIZE column stays aligned), and `--repo` of a repository
/// the store does not have says so by name.
#[test]
fn list_keeps_its_columns_in_line_and_names_an_unknown_repository() {
    let sb = fixture_sandbox();
    run(&sb, &["migrate"], true);
    let store = storage_fs::FsStorage::open(sb.store()).expect("open");
    let repo = storage_core::RepoKey::new("project").expect("valid");
    let long = storage_core::JobId::new(format!("mapreduce-{}", "9".repeat(60))).expect("valid");
    let e = storage_core::EventRecord::from_json(serde_json::json!({"n": 1})).expect("event");
    storage_core::Storage::append_events(&store, &repo, &long, &[e]).expect("append");
    let text = String::from_utf8(run(&sb, &["list"], true).stdout).expect("utf8");
    let rows: Vec<&str> = text
        .lines()
        .filter(|l| !l.ends_with(')') && l.contains("  "))
        .collect();
    // The SIZE column ends at the same place on every row (it is right-aligned).
    let size_end = |l: &str| {
        let head = &l[..l.trim_end().rfind("  ").expect("the time column")];
        head.trim_end().len()
    };
    let ends: std::collections::BTreeSet<usize> = rows.iter().map(|l| size_end(l)).collect();
    assert_eq!(ends.len(), 1, "SIZE out of line:\n{text}");
    let out = run(&sb, &["list", "--repo", "nope"], true);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("repository `nope`"), "{text}");
}
