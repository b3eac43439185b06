//! Repository keys: same-named checkouts get distinct, stable keys.

use storage_fs::FsStorage;
use storage_tests::Sandbox;

#[test]
fn two_checkouts_with_the_same_name_get_distinct_stable_keys() {
    let sb = Sandbox::new();
    let work = sb.path().join("work/api");
    let oss = sb.path().join("oss/api");
    fs_err::create_dir_all(&work).expect("mkdir");
    fs_err::create_dir_all(&oss).expect("mkdir");
    let store = FsStorage::open(sb.store()).expect("open");
    let a = store.repo_key(&work).expect("first");
    let b = store.repo_key(&oss).expect("second");
    assert_eq!(a.as_str(), "api", "the first owner keeps the plain name");
    assert!(
        b.as_str().starts_with("api-") && b.as_str().len() == 12,
        "{b}"
    );
    // Stable: asking again, from a fresh handle, or through a symlink gives the same key.
    let again = FsStorage::open(sb.store()).expect("open");
    assert_eq!(again.repo_key(&oss).expect("again"), b);
    assert_eq!(again.repo_key(&work).expect("again"), a);
    let link = sb.path().join("link-to-oss");
    std::os::unix::fs::symlink(&oss, &link).expect("symlink");
    assert_eq!(again.find_repo_key(&link).expect("find"), Some(b.clone()));
    let records = again.registrations().expect("registrations");
    assert_eq!(records.len(), 2);
    assert!(
        records
            .iter()
            .any(|r| r.key == b && r.project.ends_with("oss/api"))
    );
}

#[test]
fn finding_a_key_registers_nothing_and_odd_names_map_by_the_rule() {
    let sb = Sandbox::new();
    let hidden = sb.path().join(".dotfiles");
    fs_err::create_dir_all(&hidden).expect("mkdir");
    let store = FsStorage::open(sb.store()).expect("open");
    assert_eq!(store.find_repo_key(&hidden).expect("find"), None);
    assert!(store.registrations().expect("registrations").is_empty());
    assert_eq!(
        store.repo_key(&hidden).expect("register").as_str(),
        "dotfiles"
    );
}

/// Directory names that are not valid keys (surrounding whitespace, a
/// bidirectional control) map by the rule instead of panicking.
#[test]
fn whitespace_and_bidi_controls_in_a_directory_name_map_by_the_rule() {
    let sb = Sandbox::new();
    let store = FsStorage::open(sb.store()).expect("open");
    for (dir, key) in [
        (" api ", "api"),
        (". web", "web"),
        ("job-\u{202e}gpj.exe", "job-_gpj.exe"),
        (" ", "root"),
    ] {
        let project = sb.path().join("p").join(dir);
        fs_err::create_dir_all(&project).expect("mkdir");
        assert_eq!(
            store.repo_key(&project).expect("register").as_str(),
            key,
            "{dir:?}"
        );
    }
}

#[test]
fn a_missing_project_is_an_error_naming_it() {
    let sb = Sandbox::new();
    let store = FsStorage::open(sb.store()).expect("open");
    let err = store
        .repo_key(&sb.path().join("nope"))
        .expect_err("missing");
    assert!(
        err.to_string().contains("cannot resolve project directory"),
        "{err}"
    );
    assert!(err.to_string().contains("nope"), "{err}");
}
