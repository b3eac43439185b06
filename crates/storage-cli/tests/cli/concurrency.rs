//! Four migrations of one project at once; a project on another file system.

use std::process::Stdio;

use crate::support::{
    Mount, Sandbox, assert_same_tree, cmd, files, fixture, fixture_sandbox, json_of, run, run_json,
    snapshot,
};

#[test]
fn four_concurrent_migrations_of_one_project_migrate_it_exactly_once() {
    let sb = fixture_sandbox();
    let children: Vec<_> = (0..4)
        .map(|_| {
            cmd(&sb, &sb.project(), &["migrate", "--json"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn")
        })
        .collect();
    let mut outcomes = Vec::new();
    for c in children {
        let v = json_of(&c.wait_with_output().expect("wait"));
        outcomes.push(v["outcome"].as_str().expect("outcome").to_owned());
    }
    outcomes.sort();
    assert_eq!(
        outcomes,
        [
            "migrated",
            "nothing_to_migrate",
            "nothing_to_migrate",
            "nothing_to_migrate"
        ]
    );
    let status = run_json(&sb, &["status"]);
    assert_eq!(
        status["project"]["history"]
            .as_array()
            .expect("history")
            .len(),
        1
    );
}

#[test]
fn a_project_on_another_file_system_takes_the_copy_path_with_the_same_result() {
    let sb = Sandbox::new();
    let mnt = sb.path().join("tmpfs");
    let Some(_tmpfs) = Mount::tmpfs(&mnt, "64m") else {
        return;
    };
    let project = mnt.join("api");
    fs_err::create_dir_all(&project).expect("mkdir");
    fixture::legacy_project(&project);
    let before: std::collections::BTreeMap<_, _> = snapshot(&project)
        .into_iter()
        .filter(|(p, _)| !p.starts_with(".git"))
        .collect();
    let legacy_before = files(&project.join(".prodigy"));
    let out = cmd(&sb, &project, &["migrate", "--json", "."])
        .output()
        .expect("run");
    let report = json_of(&out);
    assert_eq!(report["outcome"], "migrated");
    let backup = std::path::PathBuf::from(report["backup"].as_str().expect("backup"));
    let backed_up: std::collections::BTreeMap<_, _> = files(&backup).into_iter().collect();
    for (rel, bytes) in legacy_before {
        if !project.join(".prodigy").join(&rel).exists() {
            assert_eq!(backed_up.get(&rel), Some(&bytes), "{}", rel.display());
        }
    }
    let v = cmd(&sb, &project, &["verify", "."]).output().expect("run");
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
    let r = cmd(&sb, &project, &["rollback", "."])
        .output()
        .expect("run");
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let after: std::collections::BTreeMap<_, _> = snapshot(&project)
        .into_iter()
        .filter(|(p, _)| !p.starts_with(".git"))
        .collect();
    assert_same_tree(&after, &before, "cross-device rollback");
    run(&sb, &["status"], true);
}
