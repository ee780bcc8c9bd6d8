//! Restore never writes outside `--target`, whatever a snapshot holds: hostile snapshots
//! are forged with the repository's key (they authenticate, as another machine's would),
//! restored into `world/target`, and everything else in `world/` (the target's parent
//! included) must be exactly as before: contents, modes, times.

mod common;

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::forge::{self, Forge};
use common::{Env, PASSWORD, set_mtime, write_file};

/// A repository, and a world folder holding files a hostile snapshot would like to reach,
/// with the (empty) restore target inside it.
struct World {
    env: Env,
    forge: Forge,
    world: PathBuf,
    target: PathBuf,
}

impl World {
    fn new() -> World {
        let env = Env::new();
        env.ok(&["init"]);
        let forge = Forge::unlock(&env.repo, PASSWORD);
        let world = env.path("world");
        let target = world.join("target");
        write_file(&world.join("victim.txt"), b"original", 0o640, 1_500_000_000);
        write_file(&world.join("etc/passwd"), b"root:x:0:0", 0o600, 1_500_000_001);
        std::fs::create_dir(&target).unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o750)).unwrap();
        for d in [world.join("etc"), target.clone(), world.clone()] {
            set_mtime(&d, 1_500_000_002, 0);
        }
        std::fs::set_permissions(&world, std::fs::Permissions::from_mode(0o755)).unwrap();
        World { env, forge, world, target }
    }

    /// Restores snapshot `id` into the target; (exit code, stderr).
    fn restore(&self, id: &str, extra: &[&str]) -> (i32, String) {
        let mut args = vec!["restore", id, "--target", self.target.to_str().unwrap()];
        args.extend_from_slice(extra);
        let out = self.env.run(&args);
        (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
    }

    /// Everything in the world outside the target, and the target folder's own mode.
    fn survey(&self) -> BTreeMap<PathBuf, String> {
        let mut out = BTreeMap::new();
        survey(&self.world, Path::new(""), &self.target, &mut out);
        out
    }
}

fn survey(path: &Path, rel: &Path, target: &Path, out: &mut BTreeMap<PathBuf, String>) {
    let m = std::fs::symlink_metadata(path).unwrap();
    if path == target {
        out.insert(rel.to_path_buf(), format!("target mode {:o}", m.mode()));
        return;
    }
    let what = if m.file_type().is_symlink() {
        format!("link to {:?}", std::fs::read_link(path).unwrap())
    } else if m.is_file() {
        format!("file {:?}", std::fs::read(path).unwrap())
    } else {
        "dir".to_string()
    };
    out.insert(
        rel.to_path_buf(),
        format!(
            "{what} mode {:o} owner {}:{} mtime {}.{}",
            m.mode(),
            m.uid(),
            m.gid(),
            m.mtime(),
            m.mtime_nsec()
        ),
    );
    if m.is_dir() {
        for e in std::fs::read_dir(path).unwrap() {
            let name = e.unwrap().file_name();
            survey(&path.join(&name), &rel.join(&name), target, out);
        }
    }
}

/// Restores `id` and checks that nothing outside the target changed; (exit code, stderr).
fn restore_confined(w: &World, id: &str) -> (i32, String) {
    let before = w.survey();
    let (code, stderr) = w.restore(id, &[]);
    let after = w.survey();
    assert_eq!(before, after, "the restore changed something outside its target; stderr: {stderr}");
    (code, stderr)
}

#[test]
fn a_dot_dot_folder_is_refused_and_nothing_outside_the_target_changes() {
    let mut w = World::new();
    let inner = forge::file(&mut w.forge, b"victim.txt", b"PWNED");
    let up = w.forge.tree(vec![inner]);
    let good = forge::file(&mut w.forge, b"good.txt", b"fine");
    let root = w.forge.tree(vec![forge::dir(b"..", up), good]);
    let id = w.forge.snapshot(root);

    let (code, stderr) = restore_confined(&w, &id);
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("not restored: ") && stderr.contains("/target/..: "), "{stderr}");
    assert!(stderr.contains("entry named `..`"), "{stderr}");
    assert!(stderr.contains("nothing was written outside"), "{stderr}");
    // The rest of the snapshot is restored.
    assert_eq!(std::fs::read(w.target.join("good.txt")).unwrap(), b"fine");
}

#[test]
fn absolute_names_and_names_with_a_slash_or_nul_are_refused() {
    let mut w = World::new();
    let abs_file = w.world.join("victim.txt");
    let abs_dir = w.world.join("etc");
    let a = forge::file(&mut w.forge, abs_file.as_os_str().as_bytes(), b"PWNED");
    let passwd = forge::file(&mut w.forge, b"passwd", b"PWNED");
    let etc = w.forge.tree(vec![passwd]);
    let b = forge::dir(abs_dir.as_os_str().as_bytes(), etc);
    let c = forge::file(&mut w.forge, b"../victim.txt", b"PWNED");
    let d = forge::file(&mut w.forge, b"sub/../../victim.txt", b"PWNED");
    let e = forge::file(&mut w.forge, b"nul\0name", b"PWNED");
    let good = forge::file(&mut w.forge, b"good.txt", b"fine");
    let root = w.forge.tree(vec![a, b, c, d, e, good]);
    let id = w.forge.snapshot(root);

    let (code, stderr) = restore_confined(&w, &id);
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("5 entry(ies) of the snapshot were skipped"), "{stderr}");
    let lines =
        |what: &str| stderr.lines().filter(|l| l.starts_with("not restored: ") && l.contains(what)).count();
    assert_eq!(lines("a name with `/` in it"), 4, "{stderr}");
    // The NUL byte is shown escaped, never raw.
    assert!(stderr.contains("nul\\u{0}name: the snapshot holds a name with a NUL byte"), "{stderr}");
    assert!(!stderr.contains('\0'));
    let names: Vec<_> = std::fs::read_dir(&w.target).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, vec![std::ffi::OsString::from("good.txt")]);
}

#[test]
fn empty_and_dot_names_never_change_the_target_or_its_parent() {
    let mut w = World::new();
    let inside = forge::file(&mut w.forge, b"victim.txt", b"PWNED");
    let sub = w.forge.tree(vec![inside]);
    let mut dot = forge::dir(b".", sub);
    dot.mode = 0o777;
    dot.mtime_ns = 42;
    let mut empty = forge::dir(b"", sub);
    empty.mode = 0o777;
    let up = forge::dir(b"..", w.forge.tree(Vec::new()));
    let mut up = up;
    up.mode = 0o700;
    let root = w.forge.tree(vec![dot, empty, up]);
    let id = w.forge.snapshot(root);

    let target_time = std::fs::metadata(&w.target).unwrap().mtime();
    let (code, stderr) = restore_confined(&w, &id);
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("3 entry(ies)"), "{stderr}");
    let m = std::fs::metadata(&w.target).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o750);
    assert_eq!(m.mtime(), target_time);
    assert!(!w.target.join("victim.txt").exists());
}

#[test]
fn a_file_behind_a_symlink_of_the_same_snapshot_is_never_written_in_either_order() {
    for symlink_first in [true, false] {
        let mut w = World::new();
        let victim = forge::file(&mut w.forge, b"victim.txt", b"PWNED");
        let below = w.forge.tree(vec![victim]);
        // At the top, a link to the world by absolute path; one level down, a relative
        // link up to it. Each shares its name with a folder holding `victim.txt`.
        let top_link = forge::symlink(b"x", w.world.as_os_str().as_bytes());
        let deep_link = forge::symlink(b"y", b"../..");
        let (top, deep) = if symlink_first {
            (vec![top_link, forge::dir(b"x", below)], vec![deep_link, forge::dir(b"y", below)])
        } else {
            (vec![forge::dir(b"x", below), top_link], vec![forge::dir(b"y", below), deep_link])
        };
        let d = w.forge.tree(deep);
        let mut nodes = top;
        nodes.push(forge::dir(b"d", d));
        let root = w.forge.tree(nodes);
        let id = w.forge.snapshot(root);

        let (code, stderr) = restore_confined(&w, &id);
        assert_eq!(code, 3, "symlink first: {symlink_first}: {stderr}");
        let refused = stderr
            .lines()
            .filter(|l| l.ends_with(": the snapshot holds two entries of this name in one folder"));
        assert_eq!(refused.count(), 2, "{stderr}");
        // The first of the two entries is restored, as what it is.
        let x = std::fs::symlink_metadata(w.target.join("x")).unwrap();
        let y = std::fs::symlink_metadata(w.target.join("d/y")).unwrap();
        assert_eq!(x.file_type().is_symlink(), symlink_first);
        assert_eq!(y.file_type().is_symlink(), symlink_first);
        if !symlink_first {
            assert_eq!(std::fs::read(w.target.join("x/victim.txt")).unwrap(), b"PWNED");
            assert_eq!(std::fs::read(w.target.join("d/y/victim.txt")).unwrap(), b"PWNED");
        }
    }
}

#[test]
fn a_symlink_loop_is_restored_as_links_without_following_them() {
    let mut w = World::new();
    let mut a = forge::symlink(b"a", b"b");
    a.mtime_ns = 1_234_000_000_567;
    let b = forge::symlink(b"b", b"a");
    let me = forge::symlink(b"me", b"me");
    let out = forge::symlink(b"out", w.world.join("victim.txt").as_os_str().as_bytes());
    let root = w.forge.tree(vec![a, b, me, out]);
    let id = w.forge.snapshot(root);

    let (code, stderr) = restore_confined(&w, &id);
    assert_eq!(code, 0, "{stderr}");
    for (name, to) in [("a", "b"), ("b", "a"), ("me", "me")] {
        assert_eq!(std::fs::read_link(w.target.join(name)).unwrap(), Path::new(to));
    }
    assert_eq!(std::fs::read_link(w.target.join("out")).unwrap(), w.world.join("victim.txt"));
    // Times are set on the links themselves.
    let m = std::fs::symlink_metadata(w.target.join("a")).unwrap();
    assert_eq!((m.mtime(), m.mtime_nsec()), (1_234, 567));
}

#[test]
fn symlinks_already_in_the_target_are_replaced_not_followed() {
    let mut w = World::new();
    // Left in the target before the restore: links out of it where the snapshot has a
    // folder, a file, and a file inside a folder.
    std::os::unix::fs::symlink(&w.world, w.target.join("x")).unwrap();
    std::os::unix::fs::symlink(w.world.join("victim.txt"), w.target.join("victim.txt")).unwrap();
    std::os::unix::fs::symlink(w.world.join("etc"), w.target.join("etc")).unwrap();
    let f = forge::file(&mut w.forge, b"victim.txt", b"PWNED");
    let x = w.forge.tree(vec![f.clone()]);
    let passwd = forge::file(&mut w.forge, b"passwd", b"PWNED");
    let etc = w.forge.tree(vec![passwd]);
    let root = w.forge.tree(vec![forge::dir(b"etc", etc), f, forge::dir(b"x", x)]);
    let id = w.forge.snapshot(root);

    // The links are part of the target; the world outside it must stay as it is.
    let (code, stderr) = restore_confined(&w, &id);
    assert_eq!(code, 0, "{stderr}");
    for rel in ["victim.txt", "x/victim.txt", "etc/passwd"] {
        let p = w.target.join(rel);
        assert!(std::fs::symlink_metadata(&p).unwrap().is_file(), "{rel} is not a plain file");
        assert_eq!(std::fs::read(&p).unwrap(), b"PWNED");
    }
    assert!(std::fs::symlink_metadata(w.target.join("x")).unwrap().is_dir());
}

#[test]
fn verify_reports_refused_names_as_damage_by_snapshot_and_path() {
    let mut w = World::new();
    let victim = forge::file(&mut w.forge, b"victim.txt", b"PWNED");
    let up = w.forge.tree(vec![victim]);
    let esc = forge::file(&mut w.forge, b"bad\x1b[2Jname/x", b"x");
    let sub = w.forge.tree(vec![esc]);
    let root = w.forge.tree(vec![forge::dir(b"..", up), forge::dir(b"sub", sub)]);
    let id = w.forge.snapshot(root);

    let out = w.env.run(&["verify"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{stdout}");
    let short = &id[..8];
    assert!(
        stdout.contains(&format!(
            "snapshot {short}  /..: the snapshot holds an entry named `..`; a restore skips it"
        )),
        "{stdout}"
    );
    // Escaped: the escape sequence never reaches the terminal.
    assert!(stdout.contains("/sub/bad\\u{1b}[2Jname/x: the snapshot holds a name with `/`"), "{stdout}");
    assert!(!stdout.contains('\x1b'));
    let report = w.env.run(&["--json", "verify"]);
    let v: serde_json::Value = serde_json::from_slice(&report.stdout).unwrap();
    let paths: Vec<&str> =
        v["affected"].as_array().unwrap().iter().map(|a| a["path"].as_str().unwrap()).collect();
    assert_eq!(paths, vec!["/..", "/sub/bad\\u{1b}[2Jname/x"]);
}

#[test]
fn include_paths_are_normalised_and_dot_dot_is_refused() {
    let mut w = World::new();
    let a = forge::file(&mut w.forge, b"a.txt", b"aaa");
    let inner = forge::file(&mut w.forge, b"b.txt", b"bbb");
    let sub = w.forge.tree(vec![inner]);
    let root = w.forge.tree(vec![a, forge::dir(b"sub", sub)]);
    let id = w.forge.snapshot(root);

    let before = w.survey();
    let (code, stderr) = w.restore(&id, &["--include", "/sub/../../victim.txt"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("`..` is not allowed"), "{stderr}");
    assert_eq!(before, w.survey());
    assert_eq!(std::fs::read_dir(&w.target).unwrap().count(), 0);

    let (code, stderr) = w.restore(&id, &["--include", "//sub/./b.txt/"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(std::fs::read(w.target.join("sub/b.txt")).unwrap(), b"bbb");
    assert!(!w.target.join("a.txt").exists());
    assert_eq!(before, w.survey());
}

#[test]
fn folders_deeper_than_the_handles_kept_open_are_confined_too() {
    let mut w = World::new();
    // 200 levels (the restore keeps handles for the first 128), with a `..` folder and a
    // symlink sharing its name with a folder at the bottom.
    let victim = forge::file(&mut w.forge, b"victim.txt", b"PWNED");
    let below = w.forge.tree(vec![victim]);
    let leaf = forge::file(&mut w.forge, b"leaf.txt", b"deep");
    let link = forge::symlink(b"x", w.world.as_os_str().as_bytes());
    let mut tree = w.forge.tree(vec![forge::dir(b"..", below), leaf, link, forge::dir(b"x", below)]);
    for _ in 0..200 {
        tree = w.forge.tree(vec![forge::dir(b"d", tree)]);
    }
    let id = w.forge.snapshot(tree);

    let (code, stderr) = restore_confined(&w, &id);
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("2 entry(ies)"), "{stderr}");
    let bottom = w.target.join("d/".repeat(200));
    assert_eq!(std::fs::read(bottom.join("leaf.txt")).unwrap(), b"deep");
    assert!(std::fs::symlink_metadata(bottom.join("x")).unwrap().file_type().is_symlink());
    let m = std::fs::metadata(bottom).unwrap();
    assert_eq!((m.mode() & 0o7777, m.mtime()), (0o755, 1_600_000_000));
}

/// A tree that leads from the root through every folder of the absolute `path` to `leaf`.
fn tree_along(forge: &mut Forge, path: &Path, leaf: cairn::repo::format::Node) -> cairn::ids::Id {
    let folders: Vec<&[u8]> = path
        .parent()
        .unwrap()
        .components()
        .filter_map(|c| match c {
            std::path::Component::Normal(n) => Some(n.as_bytes()),
            _ => None,
        })
        .collect();
    let mut id = forge.tree(vec![leaf]);
    for name in folders.iter().rev() {
        id = forge.tree(vec![forge::dir(name, id)]);
    }
    id
}

/// A file node at `path`'s name whose one chunk is the content of `bytes` but is stored in
/// no pack: a lost chunk, as `repair` sees it.
fn lost_file(forge: &mut Forge, path: &Path, bytes: &[u8]) -> cairn::repo::format::Node {
    let mut node = forge::file(forge, path.file_name().unwrap().as_bytes(), b"");
    node.size = bytes.len() as u64;
    node.content = vec![forge.key.blob_id(bytes)];
    node
}

#[test]
fn repair_reads_lost_chunks_again_only_from_this_configs_sources() {
    // A forged snapshot names a local file outside the sources, with a guess at its content
    // as a lost chunk: if repair read it, a holder of the key would learn (and get stored)
    // whether the guess is right. Only files below the config's sources are read again.
    let env = Env::new();
    env.ok(&["init"]);
    let mut forge = Forge::unlock(&env.repo, PASSWORD);
    let secret_path = env.path("outside/secret.txt");
    let secret = b"the machine's private data";
    write_file(&secret_path, secret, 0o600, 1_500_000_000);
    let own_path = env.src.join("own.txt");
    let own = b"a file this config backs up";
    write_file(&own_path, own, 0o644, 1_500_000_000);

    let leaf = lost_file(&mut forge, &secret_path, secret);
    let root = tree_along(&mut forge, &secret_path, leaf);
    forge.snapshot(root);
    let leaf = lost_file(&mut forge, &own_path, own);
    let root = tree_along(&mut forge, &own_path, leaf);
    forge.snapshot(root);

    let out = env.run(&["--json", "repair"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("repair JSON: {e}: {}", String::from_utf8_lossy(&out.stderr)));
    // The file below the sources was read and its chunk stored again; the other was not.
    assert_eq!(v["recovered_chunks"], 1, "{v}");
    let stored = |bytes: &[u8]| {
        let id = forge.key.blob_id(bytes);
        let db = common::find_journal(&env.state);
        let conn = rusqlite::Connection::open(db).unwrap();
        conn.query_row("SELECT COUNT(*) FROM blobs WHERE id = ?1", [id.0.to_vec()], |r| r.get::<_, i64>(0))
            .unwrap()
    };
    assert_eq!(stored(own), 1, "the source file's chunk is stored again");
    assert_eq!(stored(secret), 0, "a file outside the sources was read into the repository");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("private data"), "{text}");
}
