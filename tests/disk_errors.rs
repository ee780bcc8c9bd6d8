//! Full and read-only disks, and a file the target refuses: each failure names its cause and
//! its path, exits with the documented code, loses nothing, and the next run after the
//! condition is fixed completes, verifies clean and restores identical.
//!
//! The small filesystems are tmpfs mounts made for each test (`mount -t tmpfs -o size=...`),
//! which needs root. Without it the tests print why and skip; in CI (`$CI` set) a skip is a
//! failure, so the suite cannot pass there without running them.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// A tmpfs mounted for one test; unmounted when dropped, even when the test fails.
struct Mount {
    path: PathBuf,
}

impl Mount {
    /// Mounts a tmpfs of `size` (`"4m"`) at `path` (created if needed), or `None` when this
    /// process may not mount (not root, or a container without the capability): then the
    /// caller skips, except in CI.
    fn tmpfs(path: &Path, size: &str) -> Option<Mount> {
        std::fs::create_dir_all(path).unwrap();
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let why = if root {
            let out = Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(path)
                .output()
                .expect("run mount");
            if out.status.success() {
                return Some(Mount { path: path.to_path_buf() });
            }
            format!("mount -t tmpfs failed: {}", String::from_utf8_lossy(&out.stderr).trim())
        } else {
            "not running as root".to_string()
        };
        assert!(std::env::var_os("CI").is_none(), "disk_errors: cannot mount a test filesystem in CI: {why}");
        eprintln!("skipped: needs a tmpfs mount for the test ({why})");
        None
    }

    /// `mount -o remount,OPTIONS`: to make it read-only, read-write or larger.
    fn remount(&self, options: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,{options}")])
            .arg(&self.path)
            .status()
            .expect("run mount");
        assert!(status.success(), "remount {options} of {}", self.path.display());
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let ok = Command::new("umount").arg(&self.path).status().is_ok_and(|s| s.success());
        if !ok {
            // Still busy (a child that has not exited yet): detach it now, freed when idle.
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

/// A tree that does not compress: 6 MiB in one file, plus a few small files and a folder.
fn random_tree(root: &Path) {
    let mut rng = Rng::new(12);
    write_file(&root.join("big.bin"), &rng.bytes(6 << 20), 0o644, 1_700_000_000);
    write_file(&root.join("a.txt"), &rng.text(700), 0o600, 1_700_000_001);
    write_file(&root.join("docs/b.txt"), &rng.text(900), 0o644, 1_700_000_002);
    write_file(&root.join("docs/c.txt"), b"c", 0o644, 1_700_000_003);
    fix_dir_times(root, 1_690_000_000);
}

fn one_line(err: &str) -> &str {
    assert_eq!(err.trim_end().lines().last().map(|l| l.starts_with("cairn: ")), Some(true), "{err}");
    err.trim_end().lines().last().unwrap()
}

/// The next run completes: `verify --read-data` is clean and a restore is identical.
fn completes_and_restores_identical(env: &Env) {
    env.ok(&["backup"]);
    env.ok(&["verify", "--read-data"]);
    let target = env.path("restored");
    env.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    let diffs = diff_trees(&env.src, &env.restored_src(&target));
    assert!(diffs.is_empty(), "{diffs:?}");
}

/// Files of the repository left by an upload that never finished.
fn unfinished_uploads(repo: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.to_string_lossy().contains(".cairn-upload-") {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(repo, &mut out);
    out
}

#[test]
fn a_full_repository_stops_at_once_and_says_so() {
    let env = Env::new();
    let Some(repo) = Mount::tmpfs(&env.repo, "4m") else { return };
    random_tree(&env.src);
    env.ok(&["init"]);

    let (code, err) = env.fails(&["backup"]);
    assert_eq!(code, 1, "{err}");
    let line = one_line(&err);
    let cause = format!("no space left on the device that holds {}", env.repo.display());
    assert!(line.contains(&cause), "{err}");
    assert!(line.contains("nothing was lost"), "{err}");
    // Permanent: not one retry.
    assert!(!err.contains("retrying"), "{err}");
    assert!(unfinished_uploads(&env.repo).is_empty(), "{:?}", unfinished_uploads(&env.repo));

    repo.remount("size=64m");
    completes_and_restores_identical(&env);
}

#[test]
fn a_read_only_repository_is_named() {
    let env = Env::new();
    let Some(repo) = Mount::tmpfs(&env.repo, "64m") else { return };
    write_file(&env.src.join("first.txt"), b"first", 0o644, 1_700_000_000);
    env.ok(&["init"]);
    env.ok(&["backup"]);
    random_tree(&env.src);

    repo.remount("ro");
    let (code, err) = env.fails(&["backup"]);
    assert_eq!(code, 1, "{err}");
    let line = one_line(&err);
    let cause = format!("{} is on a read-only file system", env.repo.display());
    assert!(line.contains(&cause), "{err}");
    assert!(line.contains("remount it read-write") && line.contains("nothing was lost"), "{err}");
    assert!(!err.contains("retrying"), "{err}");

    repo.remount("rw");
    completes_and_restores_identical(&env);
}

#[test]
fn a_state_folder_too_small_for_the_temporary_packs_is_refused_before_any_work() {
    let env = Env::new();
    let Some(state) = Mount::tmpfs(&env.state, "8m") else { return };
    random_tree(&env.src);
    env.ok(&["init"]);
    let before = snapshot_dir(&env.repo);

    let (code, err) = env.fails(&["backup"]);
    assert_eq!(code, 1, "{err}");
    let line = one_line(&err);
    assert!(line.contains(&format!("state folder {}/", env.state.display())), "{err}");
    // The default pack size (16 MiB) times the packs a backup holds at once (6 with the fs
    // backend's two uploads).
    assert!(line.contains("the temporary packs of a backup need about 96.0 MiB"), "{err}");
    assert!(line.contains("pack size 16.0 MiB x 6 packs in flight"), "{err}");
    assert!(line.contains("lower `[backup] pack_size`") && line.contains("nothing was changed"), "{err}");
    assert_eq!(snapshot_dir(&env.repo), before, "the repository changed");

    state.remount("size=256m");
    completes_and_restores_identical(&env);
}

/// The check before the backup passes (1 MiB packs: 6 MiB for the temporary packs), then
/// the journal of 20,000 new files outgrows what is left: whichever of the journal and the
/// temporary packs meets the full disk first is named, with the state folder.
#[test]
fn a_state_folder_that_fills_during_the_backup_is_named() {
    let env = Env::with_backup_toml("pack_size = \"1MiB\"");
    let Some(mount) = Mount::tmpfs(&env.state, "6700k") else { return };
    let mut rng = Rng::new(5);
    for i in 0..20_000 {
        let path = env.src.join(format!("d{}/f{i}", i / 200));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, rng.bytes(64)).unwrap();
    }
    env.ok(&["init"]);

    let (code, err) = env.fails(&["backup"]);
    assert_eq!(code, 1, "{err}");
    let line = one_line(&err);
    let state = env.state.display();
    assert!(
        line.contains(&format!("journal in state folder {state}/"))
            || line.contains(&format!("temporary packs {state}/")),
        "{err}"
    );
    assert!(line.contains("no space left on device") && line.contains("nothing was lost"), "{err}");
    assert!(line.contains("move `[state] dir`"), "{err}");

    mount.remount("size=256m");
    completes_and_restores_identical(&env);
}

#[test]
fn a_full_restore_target_names_what_did_not_fit_and_restores_the_rest() {
    let env = Env::new();
    random_tree(&env.src);
    env.ok(&["init"]);
    env.ok(&["backup"]);
    let target = env.path("target");
    let Some(mount) = Mount::tmpfs(&target, "3m") else { return };

    let (code, err) = env.fails(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert_eq!(code, 3, "{err}");
    let restored = env.restored_src(&target);
    let big = restored.join("big.bin");
    assert!(
        err.contains(&format!("not restored: {}: cannot write: no space left on device", big.display())),
        "{err}"
    );
    let line = one_line(&err);
    assert!(
        line.contains(&format!("could not be written to the restore target {}", target.display())),
        "{err}"
    );
    assert!(line.contains("everything else was restored"), "{err}");
    assert!(!big.exists(), "a partial big.bin was left behind");
    // Every other file is either restored whole or named.
    for rel in ["a.txt", "docs/b.txt", "docs/c.txt"] {
        let path = restored.join(rel);
        if err.contains(&format!("not restored: {}:", path.display())) {
            assert!(!path.exists(), "{rel} is named as not restored but was left");
        } else {
            assert_eq!(std::fs::read(&path).unwrap(), std::fs::read(env.src.join(rel)).unwrap(), "{rel}");
        }
    }

    mount.remount("size=64m");
    env.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    let diffs = diff_trees(&env.src, &restored);
    assert!(diffs.is_empty(), "{diffs:?}");
    env.ok(&["verify", "--read-data"]);
}

#[test]
fn a_read_only_restore_target_is_refused_before_anything_is_read() {
    let env = Env::new();
    random_tree(&env.src);
    env.ok(&["init"]);
    env.ok(&["backup"]);
    let target = env.path("target");
    let Some(mount) = Mount::tmpfs(&target, "64m") else { return };
    mount.remount("ro");

    let (code, err) = env.fails(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    let line = one_line(&err);
    assert!(
        line.contains(&format!("restore target {} is on a read-only file system", target.display())),
        "{err}"
    );
    assert!(line.contains("nothing was restored"), "{err}");

    mount.remount("rw");
    env.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    let diffs = diff_trees(&env.src, &env.restored_src(&target));
    assert!(diffs.is_empty(), "{diffs:?}");
}

/// Root bypasses file modes, so the refused file is made immutable (`chattr +i`, which root
/// must lift first; tmpfs supports it): the restore cannot replace it.
#[test]
fn a_file_the_target_refuses_is_named_and_the_rest_restored() {
    let env = Env::new();
    random_tree(&env.src);
    env.ok(&["init"]);
    env.ok(&["backup"]);
    let target = env.path("target");
    let Some(_mount) = Mount::tmpfs(&target, "64m") else { return };
    let restored = env.restored_src(&target);
    let stuck = restored.join("docs/b.txt");
    write_file(&stuck, b"old", 0o644, 1_600_000_000);
    let chattr = |flag: &str| {
        let status =
            Command::new("chattr").arg(flag).arg(&stuck).status().expect("chattr (e2fsprogs) is needed");
        assert!(status.success(), "chattr {flag}");
    };
    chattr("+i");

    let (code, err) = env.fails(&["restore", "latest", "--target", target.to_str().unwrap()]);
    chattr("-i");
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains(&format!("not restored: {}: cannot write: permission denied", stuck.display())),
        "{err}"
    );
    let line = one_line(&err);
    assert!(line.contains("1 file(s) could not be written to the restore target"), "{err}");
    assert_eq!(std::fs::read(&stuck).unwrap(), b"old", "the refused file was changed");
    for rel in ["big.bin", "a.txt", "docs/c.txt"] {
        assert_eq!(
            std::fs::read(restored.join(rel)).unwrap(),
            std::fs::read(env.src.join(rel)).unwrap(),
            "{rel}"
        );
    }

    env.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    let diffs = diff_trees(&env.src, &restored);
    assert!(diffs.is_empty(), "{diffs:?}");
}
