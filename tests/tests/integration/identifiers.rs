//! Hostile identifiers never become paths; odd valid ones stay in their directory.

use serde_json::json;
use storage_core::{DocKey, JobId, RepoKey, SessionId, Storage, check_component};
use storage_fs::FsStorage;
use storage_tests::{Sandbox, tree};

/// Every hostile value is rejected by every identifier type, with its rule named.
#[test]
fn hostile_identifiers_are_rejected_before_any_path_is_built() {
    let table: &[(&str, &str)] = &[
        ("", "it is empty"),
        (".", "`.` and `..` are not names"),
        ("..", "`.` and `..` are not names"),
        ("../../etc/passwd", "a leading `.` is reserved"),
        ("a/b", "path separator"),
        ("/etc", "path separator"),
        ("a\\b", "path separator"),
        ("nul\0", "control character"),
        ("esc\u{1b}[31m", "control character"),
        (".lock", "a leading `.` is reserved"),
        (".tmp-1-0-x", "a leading `.` is reserved"),
    ];
    let long = "a".repeat(300);
    let mut all: Vec<(&str, &str)> = table.to_vec();
    all.push((&long, "longer than 255 bytes"));
    for (value, rule) in all {
        for kind in ["repository key", "job id", "session id"] {
            let err = check_component(kind, value).expect_err(value);
            assert!(err.to_string().contains(rule), "{value:?}: {err}");
        }
        assert!(JobId::new(value).is_err());
        assert!(SessionId::new(value).is_err());
        assert!(RepoKey::new(value).is_err());
    }
}

#[test]
fn valid_but_odd_identifiers_stay_inside_their_directory() {
    let sb = Sandbox::new();
    let store = FsStorage::open(sb.store()).expect("open");
    let repo = RepoKey::new("proj").expect("valid");
    for id in [
        "a..b",
        "trailing.",
        "sp ace",
        "ünï-名前",
        "x".repeat(250).as_str(),
    ] {
        let key = DocKey::Session {
            repo: repo.clone(),
            session: SessionId::new(id).expect(id),
        };
        store.put(&key, &json!({"session_id": id})).expect("put");
        let path = store.layout().document(&key);
        assert_eq!(
            path.parent(),
            Some(store.layout().sessions_dir(&repo).as_path()),
            "{id}"
        );
    }
    assert!(
        tree(sb.path())
            .lines()
            .all(|l| l.starts_with("home/") || l.starts_with("project/")),
        "nothing outside the store"
    );
}
