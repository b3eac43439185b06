//! `prodigy-storage` with a team's store: `copy-store --to postgres://…`,
//! then `--store` for `status`, a refusal for file-store commands, and
//! `upgrade` that runs on the file store and copies the result.
//!
//! Needs the server and the binary: `cargo xtask test-postgres` passes
//! both (`PRODIGY_STORAGE_BIN`); without them the test says so and skips.

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::{Value, json};
use storage_core::{DocKey, EventRecord, JobId, RepoKey, Storage};
use storage_fs::FsStorage;
use storage_postgres::PgStorage;

use crate::support::{skip, url};

fn bin() -> Option<PathBuf> {
    match std::env::var_os("PRODIGY_STORAGE_BIN") {
        Some(p) if !p.is_empty() => Some(PathBuf::from(p)),
        _ => {
            skip("PRODIGY_STORAGE_BIN is not set (run `cargo xtask test-postgres`)");
            None
        }
    }
}

fn run(bin: &PathBuf, home: &std::path::Path, args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .env("HOME", home)
        .env_remove("PRODIGY_HOME")
        .env_remove("PRODIGY_STORE");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().expect("run prodigy-storage")
}

fn json_of(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON document")
}

#[test]
fn the_command_copies_a_file_store_into_postgres_and_works_on_it() {
    let Some(url) = url() else { return };
    let Some(bin) = bin() else { return };
    let home = tempfile::tempdir().expect("home");
    let root = home.path().join(".prodigy");
    let file = FsStorage::open(&root).expect("file store");
    let repo = RepoKey::new("api").expect("repo");
    let job = JobId::new("mapreduce-1").expect("job");
    let doc = json!({"session_id": "cook-7", "ünïcødé": [1, 2.5, null]});
    let key = DocKey::Session {
        repo: repo.clone(),
        session: "cook-7".parse().expect("id"),
    };
    file.put(&key, &doc).expect("put");
    let events: Vec<EventRecord> = (0..1500)
        .map(|n| {
            EventRecord::from_json(json!({"event": {"job_id": "mapreduce-1", "n": n}}))
                .expect("event")
        })
        .collect();
    file.append_events(&repo, &job, &events).expect("append");

    // copy-store --to the server (the default PostgreSQL schema, `prodigy`).
    let r = json_of(&run(
        &bin,
        home.path(),
        &["copy-store", "--to", &url, "--json"],
        &[],
    ));
    assert_eq!(
        (r["documents"].as_u64(), r["events"].as_u64()),
        (Some(1), Some(1500)),
        "{r:#}"
    );
    assert!(
        !r["destination"]
            .as_str()
            .expect("destination")
            .contains("password"),
        "the destination is named without its password: {r:#}"
    );
    let team = PgStorage::connect(&url).expect("connect");
    assert_eq!(team.get(&key).expect("get"), Some(doc.clone()));
    let mut n = 0;
    team.read_events(&repo, &job, &mut |_| n += 1)
        .expect("read");
    assert_eq!(n, 1500);
    // Again: nothing copied twice.
    let again = json_of(&run(
        &bin,
        home.path(),
        &["copy-store", "--to", &url, "--json"],
        &[],
    ));
    assert_eq!(again["already_done"].as_u64(), Some(2), "{again:#}");

    // A document the team's store holds with other content is left as it
    // is and reported, and the command exits 1; --overwrite replaces it.
    let other = DocKey::Session {
        repo: repo.clone(),
        session: "cook-8".parse().expect("id"),
    };
    let mine = json!({"session_id": "cook-8", "from": "me"});
    let theirs = json!({"session_id": "cook-8", "from": "teammate"});
    file.put(&other, &mine).expect("put");
    team.put(&other, &theirs).expect("put");
    let out = run(
        &bin,
        home.path(),
        &["copy-store", "--to", &url, "--json"],
        &[],
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let r: Value = serde_json::from_slice(&out.stdout).expect("the report");
    assert_eq!(r["conflicts"][0]["overwritten"], false, "{r:#}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--overwrite"),
        "{out:?}"
    );
    assert_eq!(team.get(&other).expect("get"), Some(theirs));
    let r = json_of(&run(
        &bin,
        home.path(),
        &["copy-store", "--to", &url, "--json", "--overwrite"],
        &[],
    ));
    assert_eq!(r["conflicts"][0]["overwritten"], true, "{r:#}");
    assert_eq!(team.get(&other).expect("get"), Some(mine));

    // --store (and PRODIGY_STORE) select the team's store for status.
    let s = json_of(&run(
        &bin,
        home.path(),
        &["--store", &url, "status", "--json"],
        &[],
    ));
    assert_eq!(s["store_kind"], "postgres", "{s:#}");
    assert_eq!(s["store_source"], "--store");
    // docs/cli.md shows this document: the same keys, in order.
    let docs = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/cli.md"),
    )
    .expect("docs/cli.md");
    let example = docs
        .split_once("`status --json` describes\nthat store instead:")
        .map(|(_, rest)| rest)
        .and_then(|rest| rest.split_once("```json\n"))
        .and_then(|(_, rest)| rest.split_once("```"))
        .map(|(block, _)| block)
        .expect("the documented example");
    let documented: Vec<&str> = example
        .lines()
        .filter(|l| l.starts_with("  \""))
        .filter_map(|l| l.trim_start().strip_prefix('"')?.split('"').next())
        .collect();
    // (This crate's serde_json sorts keys: compared as sets.)
    let mut documented = documented;
    documented.sort_unstable();
    let printed: Vec<&str> = s
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(documented, printed, "docs/cli.md's team status example");
    assert!(
        example.contains(&format!(
            "\"postgres_schema_version\": {},",
            storage_postgres::SCHEMA_VERSION
        )),
        "{example}"
    );
    let s = json_of(&run(
        &bin,
        home.path(),
        &["status", "--json"],
        &[("PRODIGY_STORE", &url)],
    ));
    assert_eq!(s["store_source"], "PRODIGY_STORE", "{s:#}");
    let kinds = s["kinds"].as_array().expect("kinds");
    assert!(
        kinds
            .iter()
            .any(|k| k["kind"] == "event log" && k["count"] == 1),
        "{s:#}"
    );

    // list, show and events read the team's store through the same API.
    let listed = json_of(&run(
        &bin,
        home.path(),
        &["--store", &url, "list", "--json"],
        &[],
    ));
    let items = listed["items"].as_array().expect("items");
    assert!(
        items
            .iter()
            .any(|i| i["kind"] == "session" && i["id"] == "cook-7" && i["repo"] == "api"),
        "{listed:#}"
    );
    assert!(
        items
            .iter()
            .any(|i| i["kind"] == "event log" && i["job"] == "mapreduce-1"),
        "{listed:#}"
    );
    let out = run(
        &bin,
        home.path(),
        &[
            "--store",
            &url,
            "show",
            "session",
            "cook-7",
            "--repo",
            "api",
            "--compact",
        ],
        &[],
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        serde_json::from_slice::<Value>(&out.stdout).expect("json"),
        json!({"session_id": "cook-7", "ünïcødé": [1, 2.5, null]})
    );
    let out = run(
        &bin,
        home.path(),
        &[
            "--store",
            &url,
            "events",
            "mapreduce-1",
            "--repo",
            "api",
            "--json",
        ],
        &[],
    );
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(lines.len(), 1500);
    assert_eq!(lines[1499]["record"]["event"]["n"], 1499);
    let after = lines[1499]["cursor"].to_string();
    let out = run(
        &bin,
        home.path(),
        &[
            "--store",
            &url,
            "events",
            "mapreduce-1",
            "--repo",
            "api",
            "--after",
            &after,
        ],
        &[],
    );
    assert!(out.status.success() && out.stdout.is_empty(), "{out:?}");

    // --schema: another PostgreSQL schema, another store.
    let schema = format!("cli_{}", std::process::id());
    let r = json_of(&run(
        &bin,
        home.path(),
        &["copy-store", "--to", &url, "--schema", &schema, "--json"],
        &[],
    ));
    assert_eq!(r["documents"].as_u64(), Some(2), "{r:#}");
    let s = json_of(&run(
        &bin,
        home.path(),
        &["--store", &url, "--schema", &schema, "status", "--json"],
        &[],
    ));
    assert_eq!(s["schema"], schema.as_str(), "{s:#}");
    let raw = PgStorage::connect_with(&url, storage_postgres::PgOptions::default().schema(&schema))
        .expect("connect");
    assert_eq!(raw.get(&key).expect("get"), Some(doc));

    // A command that needs the file store's journals is refused, naming why.
    let out = run(&bin, home.path(), &["--store", &url, "rollback"], &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("works on the file store"), "{err}");

    // upgrade with a team's store: on the file store, then copied.
    let more = [
        EventRecord::from_json(json!({"event": {"job_id": "mapreduce-1", "n": 1500}}))
            .expect("event"),
    ];
    file.append_events(&repo, &JobId::new("mapreduce-2").expect("job"), &more)
        .expect("append");
    let u = json_of(&run(
        &bin,
        home.path(),
        &["--store", &url, "upgrade", "--json"],
        &[],
    ));
    assert_eq!(u["file_store"]["outcome"], "nothing_to_migrate", "{u:#}");
    assert_eq!(
        u["copy"]["event_logs"].as_u64(),
        Some(1),
        "the new log: {u:#}"
    );
}
