//! Back up a tree with everything a real home folder has, restore it, and compare byte for
//! byte and metadata for metadata.

mod common;

use std::os::unix::fs::symlink;

use common::*;

/// Builds the awkward tree: thousands of small files, large files, empty files and
/// folders, symlinks (some dangling), odd and non-UTF-8 names, deep nesting, a fifo.
fn build_tree(root: &std::path::Path) -> (u64, u64) {
    let mut rng = Rng::new(1);
    let mut files = 0u64;
    let mut bytes = 0u64;
    // Thousands of small files across a few hundred folders.
    for i in 0..3000u64 {
        let dir = root.join(format!("small/d{:03}", i % 300));
        let len = (rng.below(8000) + 1) as usize;
        let content = if i % 2 == 0 { rng.text(len) } else { rng.bytes(len) };
        let mode = if i % 7 == 0 { 0o755 } else { 0o644 };
        write_file(&dir.join(format!("f{i}.txt")), &content, mode, 1_600_000_000 + i as i64);
        files += 1;
        bytes += len as u64;
    }
    // Large files: random, and compressible.
    for (name, len) in [
        ("large/random.bin", 24 << 20),
        ("large/text.log", 9 << 20),
        ("large/odd-size.bin", (5 << 20) + 12345),
    ] {
        let content = if name.ends_with(".log") { rng.text(len) } else { rng.bytes(len) };
        write_file(&root.join(name), &content, 0o600, 1_650_000_000);
        files += 1;
        bytes += len as u64;
    }
    // Empty files and empty folders.
    for i in 0..20 {
        write_file(&root.join(format!("empty/e{i}")), b"", 0o640, 1_640_000_000);
        files += 1;
    }
    std::fs::create_dir_all(root.join("empty-dir/inner-empty")).unwrap();
    // Unicode and odd names, including bytes that are not UTF-8.
    let odd: Vec<Vec<u8>> = vec![
        "résumé – naïve café.txt".into(),
        "日本語のファイル名".into(),
        "emoji 🚀🔥.md".into(),
        "with space and 'quotes' \"double\"".into(),
        "-leading-dash".into(),
        "back\\slash".into(),
        "new\nline".into(),
        "tab\there".into(),
        vec![b'l', b'a', b't', b'i', b'n', 0xE9, b'-', 0xFF, 0xFE],
        "x".repeat(255).into_bytes(),
        ".hidden".into(),
        "*glob?[chars]".into(),
    ];
    for (i, name) in odd.iter().enumerate() {
        write_file(&root.join("odd").join(os(name)), format!("odd {i}").as_bytes(), 0o644, 1_610_000_000);
        files += 1;
    }
    // Deep nesting.
    let mut deep = root.join("deep");
    for i in 0..60 {
        deep = deep.join(format!("level{i}"));
    }
    write_file(&deep.join("bottom.txt"), b"at the bottom", 0o644, 1_620_000_000);
    files += 1;
    // Symlinks: to a file, to a folder, absolute, dangling, and one with an odd target.
    std::fs::create_dir_all(root.join("links")).unwrap();
    symlink("../large/text.log", root.join("links/to-file")).unwrap();
    symlink("../small", root.join("links/to-dir")).unwrap();
    symlink("/etc/hostname", root.join("links/absolute")).unwrap();
    symlink("does/not/exist", root.join("links/dangling")).unwrap();
    symlink(os(b"\xff-not-utf8-target"), root.join("links/dangling-odd")).unwrap();
    for l in ["to-file", "to-dir", "absolute", "dangling", "dangling-odd"] {
        set_mtime(&root.join("links").join(l), 1_630_000_000, 5);
    }
    // Special permission bits and a fifo.
    write_file(&root.join("perms/setuid-exec"), b"#!/bin/sh\n", 0o4755, 1_600_000_000);
    write_file(&root.join("perms/readonly"), b"ro", 0o400, 1_600_000_000);
    write_file(&root.join("perms/sticky-dir/x"), b"x", 0o644, 1_600_000_000);
    std::fs::set_permissions(
        root.join("perms/sticky-dir"),
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    )
    .unwrap();
    let fifo = std::ffi::CString::new(root.join("perms/fifo").to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    files += 3;
    fix_dir_times(root, 1_690_000_000);
    (files, bytes)
}

#[test]
fn round_trip_is_byte_and_metadata_identical() {
    let env = Env::new();
    let (files, _) = build_tree(&env.src);
    let (counted_files, bytes) = count_files(&env.src);
    assert_eq!(files, counted_files);
    env.ok(&["init"]);
    let b = env.json(&["backup"]);
    assert_eq!(b["files"], files, "{b}");
    assert_eq!(b["bytes"], bytes, "{b}");
    assert_eq!(b["errors"], 0);

    let target = env.path("restore");
    let r = env.json(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert_eq!(r["failed"].as_array().unwrap().len(), 0, "{r}");
    let diffs = diff_trees(&env.src, &env.restored_src(&target));
    assert!(diffs.is_empty(), "restore differs:\n{}", diffs.join("\n"));

    // `ls` lists every entry, odd names included.
    let ls = env.ok(&["ls", "latest"]);
    assert!(ls.contains("/odd/日本語のファイル名"));
    assert!(ls.contains("/deep/level0/level1"));
    assert!(ls.lines().any(|l| l.ends_with("/links/dangling")));
}

/// Regular files below `dir` and their total size.
fn count_files(dir: &std::path::Path) -> (u64, u64) {
    let mut n = (0, 0);
    for (_, bytes) in snapshot_dir(dir) {
        n.0 += 1;
        n.1 += bytes.len() as u64;
    }
    n
}

#[test]
fn include_restores_only_the_chosen_paths() {
    let env = Env::new();
    write_file(&env.src.join("keep/a.txt"), b"a", 0o644, 1_600_000_000);
    write_file(&env.src.join("keep/sub/b.txt"), b"b", 0o644, 1_600_000_000);
    write_file(&env.src.join("skip/c.txt"), b"c", 0o644, 1_600_000_000);
    env.ok(&["init"]);
    env.ok(&["backup"]);
    let target = env.path("restore");
    let inc = env.src.join("keep");
    env.ok(&["restore", "latest", "--target", target.to_str().unwrap(), "--include", inc.to_str().unwrap()]);
    let root = env.restored_src(&target);
    assert_eq!(std::fs::read(root.join("keep/sub/b.txt")).unwrap(), b"b");
    assert!(!root.join("skip").exists());
    let (code, err) =
        env.fails(&["restore", "latest", "--target", target.to_str().unwrap(), "--include", "/no/such/path"]);
    assert_eq!(code, 1);
    assert!(err.contains("/no/such/path") && err.contains("no such path"), "{err}");
}

#[test]
fn excludes_leave_out_matching_entries() {
    let env = Env::with_backup_toml("exclude = [\"*.tmp\", \"**/node_modules\"]");
    write_file(&env.src.join("a.txt"), b"a", 0o644, 1_600_000_000);
    write_file(&env.src.join("b.tmp"), b"b", 0o644, 1_600_000_000);
    write_file(&env.src.join("deep/x.tmp"), b"x", 0o644, 1_600_000_000);
    write_file(&env.src.join("proj/node_modules/lib.js"), b"js", 0o644, 1_600_000_000);
    write_file(&env.src.join("proj/main.js"), b"main", 0o644, 1_600_000_000);
    env.ok(&["init"]);
    env.ok(&["backup"]);
    let ls = env.ok(&["ls", "latest"]);
    assert!(ls.contains("/a.txt") && ls.contains("/proj/main.js"), "{ls}");
    assert!(!ls.contains(".tmp") && !ls.contains("node_modules"), "{ls}");
}

#[test]
fn restore_never_writes_through_symlinks_in_the_target() {
    let env = Env::new();
    write_file(&env.src.join("data.txt"), b"the real content", 0o644, 1_600_000_000);
    write_file(&env.src.join("empty"), b"", 0o644, 1_600_000_000);
    env.ok(&["init"]);
    env.ok(&["backup"]);
    let target = env.path("restore");
    env.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    // Something (or someone) swapped the restored files for symlinks to a precious file.
    let precious = env.path("precious.txt");
    std::fs::write(&precious, b"do not touch").unwrap();
    let root = env.restored_src(&target);
    for name in ["data.txt", "empty"] {
        std::fs::remove_file(root.join(name)).unwrap();
        std::os::unix::fs::symlink(&precious, root.join(name)).unwrap();
    }
    env.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert_eq!(std::fs::read(&precious).unwrap(), b"do not touch");
    assert!(std::fs::symlink_metadata(root.join("data.txt")).unwrap().is_file());
    assert_eq!(std::fs::read(root.join("data.txt")).unwrap(), b"the real content");
    assert!(std::fs::symlink_metadata(root.join("empty")).unwrap().is_file());
    assert!(diff_trees(&env.src, &root).is_empty());
}
