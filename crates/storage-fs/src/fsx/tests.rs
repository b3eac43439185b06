//! The file-system wrapper: modes, atomic replace, no-replace rename, errors with paths.

use std::cell::RefCell;
use std::os::unix::fs::PermissionsExt;

use super::*;

thread_local! {
    /// Every directory this thread `fsync`ed (a seam for durability tests).
    static DIR_FSYNCS: RefCell<Vec<PathBuf>> = const { RefCell::new(Vec::new()) };
}

/// Records a directory `fsync` (called by [`fsync_dir`] in test builds).
pub(crate) fn note_dir_fsync(dir: &Path) {
    DIR_FSYNCS.with(|v| v.borrow_mut().push(dir.to_owned()));
}

/// The directories this thread `fsync`ed since the last call.
pub(crate) fn take_dir_fsyncs() -> Vec<PathBuf> {
    DIR_FSYNCS.with(|v| std::mem::take(&mut *v.borrow_mut()))
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).expect("stat").permissions().mode() & 0o777
}

#[test]
fn atomic_write_creates_private_files_and_leaves_no_temp() {
    let dir = tempfile::tempdir().expect("tempdir");
    let target = dir.path().join("doc.json");
    write_atomic(&target, b"one").expect("write");
    write_atomic(&target, b"two").expect("replace");
    assert_eq!(fs::read(&target).expect("read"), b"two");
    assert_eq!(mode(&target), 0o600);
    let names: Vec<_> = read_dir_sorted(dir.path()).expect("list");
    assert_eq!(names.len(), 1, "{names:?}");
}

#[test]
fn created_directories_are_private() {
    let dir = tempfile::tempdir().expect("tempdir");
    let deep = dir.path().join("a/b/c");
    create_dir_all(&deep).expect("mkdir");
    for p in ["a", "a/b", "a/b/c"] {
        assert_eq!(mode(&dir.path().join(p)), 0o700, "{p}");
    }
}

#[test]
fn every_created_directory_is_made_durable_in_its_parent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    take_dir_fsyncs();
    create_dir_all(&root.join("a/b/c")).expect("mkdir");
    assert_eq!(
        take_dir_fsyncs(),
        [root.to_owned(), root.join("a"), root.join("a/b")],
        "each new directory's parent is fsynced once it holds the new entry"
    );
    create_dir_all(&root.join("a/b/c")).expect("exists");
    create_dir_all(&root.join("a/x")).expect("one more");
    assert_eq!(
        take_dir_fsyncs(),
        [root.join("a")],
        "only for what was created"
    );
    fs::write(root.join("file"), "x").expect("write");
    let err = create_dir_all(&root.join("file/sub")).expect_err("a file is in the way");
    assert!(err.to_string().contains("file"), "{err}");
}

#[test]
fn errors_name_the_path_and_the_operation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("no-such-dir/doc.json");
    let err = write_atomic(&missing, b"x").expect_err("no parent");
    let text = err.to_string();
    assert!(text.starts_with("cannot create `"), "{text}");
    assert!(text.contains("no-such-dir"), "{text}");
}

#[test]
fn rename_noreplace_never_replaces() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    fs::write(&a, "new").expect("write");
    fs::write(&b, "old").expect("write");
    let err = rename_noreplace(&a, &b).expect_err("target exists");
    assert!(
        matches!(err, Error::Io { ref source, .. } if source.kind() == io::ErrorKind::AlreadyExists)
    );
    assert_eq!(fs::read(&b).expect("read"), b"old");
    fs::remove_file(&b).expect("rm");
    rename_noreplace(&a, &b).expect("free target");
    assert_eq!(fs::read(&b).expect("read"), b"new");
}

#[test]
fn temp_names_carry_the_writer_pid_and_are_hidden() {
    let name = temp_name(&"x".repeat(300));
    assert!(name.starts_with(TEMP_PREFIX));
    assert!(name.len() < 255);
    assert_eq!(temp_owner(&name), Some(std::process::id()));
    assert_eq!(temp_owner("session-1.json"), None);
}

#[test]
fn a_temp_file_is_swept_only_when_no_writer_holds_its_lock() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Named with this process's pid (alive-looking) but not locked: abandoned.
    let unlocked = dir.path().join(temp_name("a.json"));
    fs::write(&unlocked, "{").expect("debris");
    // A writer's temp file, renamed to a dead-looking pid: still written.
    let (tmp, held) = create_temp(dir.path(), "b.json").expect("temp");
    let dead_looking = dir.path().join(".tmp-4194305-0-b.json");
    fs::rename(&tmp, &dead_looking).expect("rename");
    assert_eq!(sweep_temp_files(dir.path()).expect("sweep"), [unlocked]);
    assert!(dead_looking.exists(), "a held temp file is never swept");
    drop(held);
    assert_eq!(sweep_temp_files(dir.path()).expect("sweep"), [dead_looking]);
}

#[test]
fn rename_noreplace_by_link_never_replaces_a_file_or_a_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    fs::write(&a, "new").expect("write");
    fs::write(&b, "old").expect("write");
    let err = rename_noreplace_by_link(&a, &b).expect_err("target exists");
    assert!(
        matches!(err, Error::Io { ref source, .. } if source.kind() == io::ErrorKind::AlreadyExists)
    );
    fs::remove_file(&b).expect("rm");
    rename_noreplace_by_link(&a, &b).expect("free target");
    assert_eq!(fs::read(&b).expect("read"), b"new");
    assert!(!a.exists(), "the source name is gone");

    let (d, e) = (dir.path().join("d"), dir.path().join("e"));
    fs::create_dir(&d).expect("mkdir");
    fs::write(d.join("f"), "x").expect("write");
    fs::create_dir(&e).expect("mkdir");
    let err = rename_noreplace_by_link(&d, &e).expect_err("an empty directory is not replaced");
    assert!(
        matches!(err, Error::Io { ref source, .. } if source.kind() == io::ErrorKind::AlreadyExists)
    );
    fs::remove_dir(&e).expect("rmdir");
    rename_noreplace_by_link(&d, &e).expect("free target");
    assert_eq!(fs::read(e.join("f")).expect("read"), b"x");
}

#[test]
fn a_batch_makes_every_directory_it_changed_durable_on_finish() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let batch = Batch::new(root).expect("batch");
    let deep = root.join("a/b/c");
    batch.create_dir_all(&deep).expect("mkdir");
    let (path, mut f) = (deep.join("f"), create_new(&deep.join("f")).expect("create"));
    f.write_all(b"x").expect("write");
    batch.file_written(&f, &path).expect("written");
    fs::create_dir(root.join("x")).expect("mkdir");
    batch
        .rename_noreplace(&path, &root.join("x/g"))
        .expect("rename");
    assert_eq!(mode(&root.join("a/b")), 0o700);
    let _ = take_dir_fsyncs();
    batch.finish(root).expect("finish");
    let synced = take_dir_fsyncs();
    if batch.portable() {
        let want: Vec<PathBuf> = ["", "a", "a/b", "a/b/c", "x"]
            .iter()
            .map(|d| {
                if d.is_empty() {
                    root.to_owned()
                } else {
                    root.join(d)
                }
            })
            .collect();
        assert_eq!(synced, want, "each changed directory once, nothing else");
    } else {
        assert!(
            synced.is_empty(),
            "one syncfs, no directory fsync: {synced:?}"
        );
    }
    assert!(batch.pending().is_empty());
    batch.finish(root).expect("an empty batch");
    assert!(take_dir_fsyncs().is_empty());
}

#[test]
fn a_batch_skips_a_recorded_directory_removed_since() {
    let dir = tempfile::tempdir().expect("tempdir");
    let batch = Batch::new(dir.path()).expect("batch");
    let gone = dir.path().join("gone");
    batch.create_dir_all(&gone.join("sub")).expect("mkdir");
    fs::remove_dir_all(&gone).expect("rm");
    batch.dir_changed(dir.path());
    batch
        .finish(dir.path())
        .expect("a removed directory is not an error");
}

#[test]
fn a_batch_replaces_a_record_without_syncing_it_until_finish() {
    let dir = tempfile::tempdir().expect("tempdir");
    let target = dir.path().join("entries.jsonl");
    let batch = Batch::new(dir.path()).expect("batch");
    batch
        .write_atomic_with(&target, |f| f.write_all(b"one"))
        .expect("write");
    batch
        .write_atomic_with(&target, |f| f.write_all(b"two"))
        .expect("replace");
    assert_eq!(fs::read(&target).expect("read"), b"two");
    assert_eq!(mode(&target), 0o600);
    let names = read_dir_sorted(dir.path()).expect("list");
    assert_eq!(names.len(), 1, "no temp file left: {names:?}");
    let failed = batch.write_atomic_with(&target, |_| Err(io::Error::other("stop")));
    assert!(failed.is_err());
    assert_eq!(fs::read(&target).expect("read"), b"two", "kept as it was");
    assert_eq!(read_dir_sorted(dir.path()).expect("list").len(), 1);
    let _ = take_dir_fsyncs();
    if batch.portable() {
        assert_eq!(batch.pending(), [dir.path().to_owned()]);
    } else {
        assert!(batch.pending().is_empty());
    }
    batch.finish(dir.path()).expect("finish");
    assert_eq!(
        take_dir_fsyncs(),
        if batch.portable() {
            vec![dir.path().to_owned()]
        } else {
            Vec::new()
        },
        "its directory made durable by the batch, once"
    );
}

#[test]
fn a_file_written_beside_stays_locked_until_renamed_and_goes_if_dropped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let target = dir.path().join("entries.jsonl");
    write_atomic(&target, b"old").expect("write");
    let batch = Batch::new(dir.path()).expect("batch");
    let beside = batch
        .write_beside(&target, |f| f.write_all(b"new"))
        .expect("write beside");
    assert_eq!(fs::read(&target).expect("read"), b"old", "not in place yet");
    assert!(
        sweep_temp_files(dir.path()).expect("sweep").is_empty(),
        "its writer holds it: no sweep takes it"
    );
    batch.finish(dir.path()).expect("finish");
    let _ = take_dir_fsyncs();
    beside.rename_durably().expect("rename");
    assert_eq!(fs::read(&target).expect("read"), b"new");
    assert_eq!(
        take_dir_fsyncs(),
        [dir.path().to_owned()],
        "its directory made durable with it"
    );
    assert_eq!(read_dir_sorted(dir.path()).expect("list").len(), 1);
    let dropped = batch
        .write_beside(&target, |f| f.write_all(b"newer"))
        .expect("write beside");
    drop(dropped);
    assert_eq!(fs::read(&target).expect("read"), b"new");
    assert_eq!(
        read_dir_sorted(dir.path()).expect("list").len(),
        1,
        "the temp file went with it"
    );
}

/// Marks the calling test as not run here, for `reason` (what is missing):
/// prints `SKIP: <test>: <reason>` past libtest's capture, and fails under
/// `PRODIGY_REQUIRE_ALL_TESTS=1` (as `tests::skip` of the integration tests,
/// which this crate cannot depend on).
fn skip(reason: &str) {
    assert!(
        std::env::var_os("PRODIGY_REQUIRE_ALL_TESTS").is_none_or(|v| v != "1"),
        "this test would be skipped ({reason}), but PRODIGY_REQUIRE_ALL_TESTS=1 requires every test to run"
    );
    let thread = std::thread::current();
    let name = thread.name().unwrap_or("a test");
    let _ = writeln!(io::stderr().lock(), "SKIP: {name}: {reason}");
}

/// Mounts made by a test, unmounted (last first) when it ends, passed or not.
struct Mounts(Vec<PathBuf>);

impl Mounts {
    /// Runs `mount args… at`; `false` if it failed (the reason on stderr).
    fn mount(&mut self, args: &[&str], at: &Path) -> bool {
        let out = std::process::Command::new("mount")
            .args(args)
            .arg(at)
            .output();
        match out {
            Ok(o) if o.status.success() => {
                self.0.push(at.to_owned());
                true
            }
            Ok(o) => {
                let _ = writeln!(
                    io::stderr().lock(),
                    "mount {args:?} {}: {}",
                    at.display(),
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                false
            }
            Err(e) => {
                let _ = writeln!(io::stderr().lock(), "mount: {e}");
                false
            }
        }
    }
}

impl Drop for Mounts {
    fn drop(&mut self) {
        for at in self.0.drain(..).rev() {
            let umount = |lazy: bool| {
                let mut c = std::process::Command::new("umount");
                if lazy {
                    c.arg("-l");
                }
                c.arg(&at)
                    .stderr(std::process::Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            };
            // Lazily if something still holds it (a panic mid-test): it goes
            // when the last descriptor does, and the loop device with it.
            if !umount(false) {
                let _ = umount(true);
            }
        }
    }
}

/// An ext4 file system whose every write-back fails: it lives in an image
/// file on a tmpfs that is full (the loop device's writes get `ENOSPC`),
/// while ext4 itself has room, so writes succeed into the page cache and
/// fail only when written back. `None` (skipped) without root, `mount`,
/// `mkfs.ext4` or a loop device.
///
/// The ext4 has no journal: a failed journal write aborts the journal, and
/// then every later `syncfs` fails whoever looks, which would hide what the
/// test is about. Without one, a write-back error reaches `syncfs` only
/// through the superblock's `errseq_t`.
fn ext4_on_a_full_tmpfs(scratch: &Path) -> Option<(Mounts, PathBuf)> {
    if !rustix::process::geteuid().is_root() {
        skip("needs root (mount a tmpfs and a loop device)");
        return None;
    }
    let (backing, ext4) = (scratch.join("tmpfs"), scratch.join("ext4"));
    fs::create_dir(&backing).expect("mkdir");
    fs::create_dir(&ext4).expect("mkdir");
    let mut mounts = Mounts(Vec::new());
    if !mounts.mount(&["-t", "tmpfs", "-o", "size=16m", "tmpfs"], &backing) {
        skip("cannot mount a tmpfs here");
        return None;
    }
    let image = backing.join("ext4.img");
    File::create(&image)
        .and_then(|f| f.set_len(64 << 20))
        .expect("a sparse image");
    let mkfs = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F", "-O", "^has_journal", "-E", "lazy_itable_init=0"])
        .arg(&image)
        .output();
    if !mkfs.as_ref().is_ok_and(|o| o.status.success()) {
        skip(&format!("no working mkfs.ext4 (e2fsprogs): {mkfs:?}"));
        return None;
    }
    if !mounts.mount(
        &["-t", "ext4", "-o", "loop", image.to_str().expect("utf-8")],
        &ext4,
    ) {
        skip("cannot loop-mount an ext4 image here (no loop device?)");
        return None;
    }
    // What mkfs and the mount wrote reaches the tmpfs now, while it has room.
    let root = File::open(&ext4).expect("open");
    rustix::fs::syncfs(&root).expect("syncfs of the fresh ext4");
    // Then the tmpfs is filled up: every later write-back of the ext4 fails.
    let mut fill = create_new(&backing.join("fill")).expect("create");
    let chunk = vec![0u8; 1 << 20];
    loop {
        match fill.write_all(&chunk) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NOSPC.raw_os_error()) => break,
            Err(e) => panic!("filling the tmpfs: {e}"),
        }
    }
    Some((mounts, ext4))
}

/// Item 8 of issue 20: a write-back error of the batch's own writes is
/// reported by its `finish`, even when another process's `syncfs` looked
/// first. The kernel tells each open file description of an error once,
/// and a descriptor opened after someone saw it is told nothing.
#[test]
fn a_batch_reports_a_write_back_error_another_process_saw_first() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let Some((_mounts, dir)) = ext4_on_a_full_tmpfs(scratch.path()) else {
        return;
    };
    // Opened before the writes: its descriptor's sample predates any error.
    let batch = Batch::new(&dir).expect("batch");
    let mut written = Vec::new();
    for i in 0..4 {
        let path = dir.join(format!("f{i}"));
        let mut f = create_new(&path).expect("create");
        // Into the page cache: ext4 has room; the tmpfs under it has none.
        f.write_all(&vec![b'x'; 1 << 20]).expect("write");
        written.push((path, f));
    }
    // Another process makes the ext4's dirty pages write back first, and is
    // told that it failed.
    let other = match std::process::Command::new("sync")
        .arg("--file-system")
        .arg(&dir)
        .output()
    {
        Ok(o) => o,
        Err(e) => {
            skip(&format!(
                "no `sync` (coreutils) to run another process's syncfs: {e}"
            ));
            return;
        }
    };
    assert!(
        !other.status.success(),
        "the other process's syncfs saw the write-back error (else the set-up failed): {other:?}"
    );
    // A descriptor opened now is told nothing: the error has been seen.
    let late = File::open(&dir).expect("open");
    assert!(
        rustix::fs::syncfs(&late).is_ok(),
        "a descriptor opened after the error was seen is not told of it"
    );
    drop(late);
    let result = written
        .iter()
        .try_for_each(|(path, f)| batch.file_written(f, path))
        .and_then(|()| batch.finish(&dir));
    let err = result.expect_err("the batch's writes were lost: it must not say they are durable");
    let errno = match &err {
        Error::Io { source, .. } => source.raw_os_error(),
        _ => None,
    };
    assert!(
        [rustix::io::Errno::NOSPC, rustix::io::Errno::IO]
            .iter()
            .any(|e| Some(e.raw_os_error()) == errno),
        "{err}"
    );
}

#[test]
fn syncfs_is_trusted_from_linux_5_8_on() {
    use super::batch::release_at_least;
    for (release, yes) in [
        ("5.8.0", true),
        ("5.10.0-28-amd64", true),
        ("6.18.44-fc-v1300", true),
        ("5.7.19", false),
        ("4.18.0-553.el8_10.x86_64", false),
        ("5", false),
        ("", false),
        ("unknown", false),
    ] {
        assert_eq!(release_at_least(release, (5, 8)), yes, "{release}");
    }
}

#[test]
fn a_batch_syncs_only_file_systems_it_opened_before_writing_there() {
    let dir = tempfile::tempdir().expect("tempdir");
    let batch = Batch::new(&dir.path().join("not/yet")).expect("the nearest existing ancestor");
    batch.finish(dir.path()).expect("the file system it covers");
    // Another file system (procfs), never covered: no descriptor opened late.
    let other = Path::new("/proc");
    let covered_other = fs::metadata(other).is_ok_and(|m| {
        use std::os::unix::fs::MetadataExt;
        m.dev() != fs::metadata(dir.path()).expect("stat").dev()
    });
    if !covered_other {
        skip("no /proc on a file system of its own");
        return;
    }
    if batch.portable() {
        batch
            .finish(other)
            .expect("the portable path syncs what it recorded");
        return;
    }
    let err = batch.finish(other).expect_err("not covered");
    assert!(
        matches!(&err, Error::Io { op: "syncfs", source, .. } if source.to_string().contains("Batch::cover")),
        "{err:?}"
    );
    batch.cover(other).expect("cover");
    batch.finish(other).expect("covered now");
}

/// An atomic replace is durable only once its directory is: the rename is
/// followed by an `fsync` of the parent (the one directory it syncs).
#[test]
fn an_atomic_write_makes_its_directory_durable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let target = dir.path().join("doc.json");
    fs::write(&target, b"old").expect("old");
    let _ = take_dir_fsyncs();
    write_atomic(&target, b"new").expect("write");
    assert_eq!(take_dir_fsyncs(), vec![dir.path().to_owned()]);
    assert_eq!(fs::read(&target).expect("read"), b"new");
}

/// An exclusive create never opens, truncates or writes an existing file:
/// two writers can never share a temp file or a lock file.
#[test]
fn an_exclusive_create_refuses_an_existing_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("taken");
    fs::write(&path, b"someone else's").expect("write");
    match create_new(&path) {
        Err(Error::Io { source, .. }) => {
            assert_eq!(source.kind(), io::ErrorKind::AlreadyExists);
        }
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    assert_eq!(fs::read(&path).expect("read"), b"someone else's");
}
