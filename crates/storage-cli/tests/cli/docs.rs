//! What the docs say a command prints, checked against the command (issue
//! 23: five of fifteen claims had drifted). Each check reads the doc's own
//! text, so an edit to either side that breaks the claim fails here.

use std::path::Path;

use crate::support::{Sandbox, cmd, fixture_sandbox, json_of, run};

fn doc(name: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    fs_err::read_to_string(root.join(name)).expect("doc")
}

/// The first `text` code block after the line containing `marker`.
fn block_after(text: &str, marker: &str) -> String {
    let from = text.find(marker).unwrap_or_else(|| panic!("no `{marker}`"));
    let rest = &text[from..];
    let start = rest.find("```text\n").expect("a text block") + "```text\n".len();
    let end = rest[start..].find("```").expect("its end");
    rest[start..start + end].to_owned()
}

/// docs/storage-layout.md: "`prodigy-storage layout` prints this tree".
/// Every top-level entry of the tree is a row of `layout` (or the
/// directory of one), and every row is in the tree; its layout version is
/// the store's.
#[test]
fn the_layout_tree_in_the_docs_is_what_layout_prints() {
    let text = doc("docs/storage-layout.md");
    assert!(text.contains("`prodigy-storage layout` prints this tree"));
    let tree = block_after(&text, "`prodigy-storage layout` prints this tree");
    let documented: Vec<String> = tree
        .lines()
        .filter_map(|l| l.strip_prefix("├── ").or_else(|| l.strip_prefix("└── ")))
        .map(|l| l.split_whitespace().next().unwrap_or_default().to_owned())
        .map(|p| {
            p.trim_end_matches("*.jsonl")
                .trim_end_matches("...")
                .to_owned()
        })
        .collect();
    let sb = Sandbox::new();
    let printed = String::from_utf8_lossy(&run(&sb, &["layout"], true).stdout).into_owned();
    let rows: Vec<String> = printed
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect();
    let related = |a: &str, b: &str| a.starts_with(b) || b.starts_with(a);
    for d in &documented {
        assert!(
            rows.iter().any(|r| related(r, d)),
            "`{d}` is in the docs' tree, not in `layout`:\n{printed}"
        );
    }
    for r in &rows {
        assert!(
            documented.iter().any(|d| related(r, d)),
            "`{r}` is printed by `layout`, not in the docs' tree:\n{tree}"
        );
    }
    assert!(
        tree.contains(&format!(
            "{{\"layout_version\": {}}}",
            storage_fs::LAYOUT_VERSION
        )),
        "the tree's layout.json names another version:\n{tree}"
    );
}

/// docs/migration.md's message for a store of a newer layout is the one
/// the command prints for it (the path aside).
#[test]
fn the_newer_layout_message_in_the_docs_is_the_one_printed() {
    let text = doc("docs/migration.md");
    let line = text
        .lines()
        .find(|l| l.contains("this build understands up to"))
        .expect("the documented message");
    let documented = line
        .trim_start_matches("- `")
        .trim_end_matches('`')
        .replace("/home/dev/.prodigy", "<store>");
    let sb = Sandbox::new();
    fs_err::create_dir_all(sb.store()).expect("store");
    fs_err::write(
        sb.store().join("layout.json"),
        format!(
            "{{\"layout_version\": {}}}\n",
            storage_fs::LAYOUT_VERSION + 1
        ),
    )
    .expect("a newer layout");
    let out = run(&sb, &["list"], false);
    let printed = String::from_utf8_lossy(&out.stderr)
        .trim_end()
        .replace(&sb.store().display().to_string(), "<store>");
    assert_eq!(printed, documented);
}

/// README: the progress labels it names are the steps' labels.
#[test]
fn the_readme_names_the_progress_labels() {
    let text = doc("README.md");
    let sentence = text
        .lines()
        .find(|l| l.contains("progress bars for"))
        .expect("the sentence");
    for step in [
        storage_migrate::Step::Plan,
        storage_migrate::Step::Copy,
        storage_migrate::Step::Verify,
        storage_migrate::Step::Publish,
        storage_migrate::Step::Retire,
    ] {
        assert!(
            sentence.contains(step.label()),
            "`{}` not in: {sentence}",
            step.label()
        );
    }
}

/// docs/cli.md's `status --json` example has exactly the keys the command
/// prints, and the values it names for `store_source` are the real ones.
#[test]
fn the_status_json_example_has_the_printed_keys() {
    let text = doc("docs/cli.md");
    let from = text.find("## `status --json`").expect("the section");
    let example = &text[from..];
    let example = &example[example.find("```json\n").expect("block") + 8..];
    let example = &example[..example.find("```").expect("end")];
    let documented: Vec<&str> = example
        .lines()
        .filter(|l| l.starts_with("  \""))
        .filter_map(|l| l.trim_start().strip_prefix('"')?.split('"').next())
        .collect();
    let sb = fixture_sandbox();
    let s = json_of(
        &cmd(&sb, &sb.project(), &["status", "--json"])
            .output()
            .expect("run"),
    );
    let printed: Vec<&str> = s
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(documented, printed, "the keys of `status --json`, in order");
    for source in ["flag", "env", "default", "store_flag", "store_env"] {
        assert!(
            example.contains(&format!("\"{source}\"")),
            "{source} not documented"
        );
    }
}

/// The first JSON block of the section of docs/cli.md headed `heading`.
fn json_example(heading: &str) -> String {
    let text = doc("docs/cli.md");
    let from = text
        .find(&format!("## {heading}"))
        .unwrap_or_else(|| panic!("no section {heading}"));
    let rest = &text[from..];
    // Within the section: up to the next heading.
    let rest = &rest[..rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3)];
    let start = rest
        .find("```json\n")
        .unwrap_or_else(|| panic!("no JSON block in {heading}"))
        + "```json\n".len();
    let end = rest[start..].find("```").expect("its end");
    rest[start..start + end].to_owned()
}

/// The example of `heading` names every top-level key `printed` has, and
/// `printed` has every key the example shows, but those it marks as
/// present only sometimes ("only when …", "absent …").
#[track_caller]
fn check_keys(heading: &str, printed: &serde_json::Value) {
    let example = json_example(heading);
    let printed = printed.as_object().expect("a JSON object");
    for key in printed.keys() {
        assert!(
            example.contains(&format!("\"{key}\":")),
            "`{key}` is printed but not in docs/cli.md's {heading}:\n{example}"
        );
    }
    for line in example.lines().filter(|l| l.starts_with("  \"")) {
        let key = line.trim_start()[1..].split('"').next().unwrap_or_default();
        let sometimes = line.contains("only") || line.contains("absent");
        assert!(
            sometimes || printed.contains_key(key),
            "docs/cli.md's {heading} shows `{key}`, which is not printed"
        );
    }
}

/// Every JSON document docs/cli.md shows has the keys the command prints.
#[test]
fn every_documented_json_document_has_the_printed_keys() {
    let sb = fixture_sandbox();
    let json = |args: &[&str]| {
        let mut all = args.to_vec();
        all.push("--json");
        json_of(&run(&sb, &all, true))
    };
    check_keys("`migrate --json`", &json(&["migrate"]));
    check_keys("`verify --json`", &json(&["verify"]));
    check_keys("`list --json`", &json(&["list"]));
    check_keys("`backups list --json`", &json(&["backups", "list"]));
    let to = sb.path().join("copy");
    check_keys(
        "`copy-store --json`",
        &json(&["copy-store", "--to", to.to_str().expect("utf-8")]),
    );
    check_keys("`rollback --json`", &json(&["rollback"]));
    let sb = Sandbox::new();
    storage_tests::layout0::store(&sb.store());
    // docs/cli.md: "`upgrade` prints the same document as `migrate --json`".
    let up = json_of(&run(&sb, &["upgrade", "--json"], true));
    check_keys("`migrate --json`", &up);
    // … "`downgrade` prints the same document as `rollback --json`", with
    // the fields it names besides.
    let down = json_of(&run(&sb, &["downgrade", "--json"], true));
    let mut rollback_like = down.clone();
    for extra in ["also_undone", "kept_newer", "not_read_by_older"] {
        rollback_like.as_object_mut().expect("object").remove(extra);
    }
    check_keys("`rollback --json`", &rollback_like);
}
