//! Keys as columns, lock ids and channels.

use super::*;

fn repo(s: &str) -> RepoKey {
    RepoKey::new(s).expect("valid")
}
fn job(s: &str) -> JobId {
    JobId::new(s).expect("valid")
}

#[test]
fn every_kind_of_key_maps_to_distinct_columns_and_back() {
    let r = repo("proj");
    let s = || SessionId::new("s").expect("valid");
    let keys = [
        DocKey::Session {
            repo: r.clone(),
            session: s(),
        },
        DocKey::JobCheckpoint {
            repo: r.clone(),
            job: job("s"),
            version: 3,
        },
        DocKey::JobMetadata {
            repo: r.clone(),
            job: job("s"),
        },
        DocKey::WorkflowCheckpoint {
            repo: r.clone(),
            workflow: WorkflowId::new("s").expect("valid"),
        },
        DocKey::DeadLetter {
            repo: r.clone(),
            job: job("s"),
            item: ItemId::new("s").expect("valid"),
        },
        DocKey::DeadLetterIndex {
            repo: r.clone(),
            job: job("s"),
        },
        DocKey::SessionJob {
            repo: r.clone(),
            session: s(),
        },
        DocKey::UnifiedSession { session: s() },
        DocKey::SessionCheckpoint { session: s() },
        DocKey::SessionWorkflowCheckpoint {
            session: s(),
            workflow: WorkflowId::new("s").expect("valid"),
        },
        DocKey::Extension {
            repo: r.clone(),
            kind: ExtKind::new("s").expect("valid"),
            name: DocName::new("s").expect("valid"),
        },
    ];
    let cols: Vec<DocColumns<'_>> = keys.iter().map(|k| columns(k).expect("fits")).collect();
    for (i, a) in cols.iter().enumerate() {
        for b in &cols[i + 1..] {
            assert_ne!(a, b);
        }
    }
    for (key, c) in keys.iter().zip(&cols) {
        assert_eq!(c.repo.is_empty(), key.repo().is_none(), "{key:?}");
    }
    let scopes = [
        Scope::Sessions(r.clone()),
        Scope::JobCheckpoints(r.clone(), job("s")),
        Scope::WorkflowCheckpoints(r.clone()),
        Scope::DeadLetters(r.clone(), job("s")),
        Scope::SessionJobs(r.clone()),
        Scope::UnifiedSessions,
        Scope::SessionWorkflowCheckpoints(s()),
        Scope::Extension(r.clone(), ExtKind::new("s").expect("valid")),
    ];
    for scope in &scopes {
        let (kind, scope_repo, parent) = scope_columns(scope).expect("known");
        let (key, c) = keys
            .iter()
            .zip(&cols)
            .find(|(_, c)| c.kind == kind)
            .expect("a key of this kind");
        assert!(scope.contains(key));
        assert_eq!((c.repo, c.parent), (scope_repo, parent));
        assert_eq!(&key_in_scope(scope, c.id, c.version).expect("valid"), key);
    }
}

#[test]
fn versions_past_bigint_are_refused_not_wrapped() {
    let key = DocKey::JobCheckpoint {
        repo: repo("proj"),
        job: job("j"),
        version: u64::MAX,
    };
    assert_eq!(columns(&key), Err(KeyProblem::VersionTooLarge(u64::MAX)));
}

#[test]
fn a_row_that_is_no_valid_id_is_named() {
    let err = key_in_scope(&Scope::Sessions(repo("p")), "../x", 0).expect_err("invalid");
    assert!(err.contains("../x"), "{err}");
}

#[test]
fn lock_ids_and_channels_depend_on_the_schema_and_every_part() {
    let k = LockKey::new("session-1").expect("valid");
    assert_eq!(lock_id("prodigy", &k), lock_id("prodigy", &k));
    assert_ne!(lock_id("prodigy", &k), lock_id("other", &k));
    assert_ne!(
        lock_id("prodigy", &k),
        lock_id("prodigy", &LockKey::new("session-2").expect("valid"))
    );
    assert_ne!(lock_id("prodigy", &k), migration_lock_id("prodigy"));
    let c = channel("prodigy", &repo("ab"), &job("c"));
    assert_ne!(c, channel("prodigy", &repo("a"), &job("bc")));
    assert_ne!(c, channel("other", &repo("ab"), &job("c")));
    assert_eq!(c.len(), "prodigy_events_".len() + 24);
    assert!(
        c.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    );
}

#[test]
fn lock_id_halves_are_what_pg_locks_shows() {
    assert_eq!(lock_id_halves(-1), (0xffff_ffff, 0xffff_ffff));
    assert_eq!(lock_id_halves(0x0000_0001_0000_0002), (1, 2));
}
