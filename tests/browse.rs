//! `cairn diff`, `find` and `dump`: browsing and comparing snapshots, reading only the trees
//! (and data) they need.

mod common;

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use serde_json::Value;

fn backup(env: &Env) -> String {
    env.json(&["backup"])["snapshot"].as_str().unwrap().to_string()
}

/// The path of `rel` (below the source folder) as the snapshot holds it.
fn snap_path(env: &Env, rel: &str) -> String {
    format!("{}/{rel}", env.src.display())
}

/// (change, path) pairs of a `diff --json` below the source folder, sorted. (The folders
/// above it are in the snapshots too, and /tmp's time changes whenever another test runs.)
fn changes(env: &Env, v: &Value) -> Vec<(String, String)> {
    let below = format!("{}/", env.src.display());
    let mut out: Vec<(String, String)> = v["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["change"].as_str().unwrap().to_string(), c["path"].as_str().unwrap().to_string()))
        .filter(|(_, p)| p.starts_with(&below))
        .collect();
    out.sort();
    out
}

fn data_files(repo: &Path) -> Vec<PathBuf> {
    snapshot_dir(&repo.join("data")).into_iter().map(|(p, _)| p).collect()
}

#[test]
fn diff_lists_added_removed_and_changed_paths_with_what_changed() {
    let env = Env::new();
    write_file(&env.src.join("keep.txt"), b"same", 0o644, 1_600_000_000);
    write_file(&env.src.join("gone.txt"), b"to be removed", 0o644, 1_600_000_000);
    write_file(&env.src.join("edit.txt"), b"version one", 0o644, 1_600_000_000);
    write_file(&env.src.join("chmod.txt"), b"mode", 0o644, 1_600_000_000);
    write_file(&env.src.join("touch.txt"), b"time", 0o644, 1_600_000_000);
    write_file(&env.src.join("old-dir/inner.txt"), b"inner", 0o644, 1_600_000_000);
    fix_dir_times(&env.src, 1_600_000_000);
    env.ok(&["init"]);
    let a = backup(&env);

    std::fs::remove_file(env.src.join("gone.txt")).unwrap();
    std::fs::remove_dir_all(env.src.join("old-dir")).unwrap();
    write_file(&env.src.join("edit.txt"), b"version two, longer", 0o644, 1_600_000_000);
    write_file(&env.src.join("chmod.txt"), b"mode", 0o600, 1_600_000_000);
    write_file(&env.src.join("touch.txt"), b"time", 0o644, 1_600_000_999);
    write_file(&env.src.join("new-dir/new.bin"), &[7u8; 5000], 0o644, 1_600_000_000);
    fix_dir_times(&env.src, 1_600_000_000);
    let b = backup(&env);

    let v = env.json(&["diff", &a, &b]);
    assert_eq!(v["from"], a.as_str());
    assert_eq!(v["to"], b.as_str());
    let p = |rel: &str| snap_path(&env, rel);
    let mut want = vec![
        ("added".to_string(), p("new-dir")),
        ("added".to_string(), p("new-dir/new.bin")),
        ("removed".to_string(), p("gone.txt")),
        ("removed".to_string(), p("old-dir")),
        ("removed".to_string(), p("old-dir/inner.txt")),
        ("changed".to_string(), p("edit.txt")),
        ("changed".to_string(), p("chmod.txt")),
        ("changed".to_string(), p("touch.txt")),
    ];
    want.sort();
    assert_eq!(changes(&env, &v), want, "{v:#}");
    let find = |rel: &str| {
        v["changes"].as_array().unwrap().iter().find(|c| c["path"] == p(rel).as_str()).unwrap().clone()
    };
    assert_eq!(find("edit.txt")["what"], serde_json::json!(["content"]));
    assert_eq!(find("edit.txt")["before"]["size"], 11);
    assert_eq!(find("edit.txt")["after"]["size"], 19);
    assert_eq!(find("chmod.txt")["what"], serde_json::json!(["mode"]));
    assert_eq!(find("chmod.txt")["after"]["mode"], 0o600);
    assert_eq!(find("touch.txt")["what"], serde_json::json!(["mtime"]));
    assert_eq!(find("new-dir/new.bin")["after"]["size"], 5000);
    assert_eq!(v["summary"]["added"], 2);
    assert_eq!(v["summary"]["removed"], 3);
    let changed = v["changes"].as_array().unwrap().iter().filter(|c| c["change"] == "changed").count();
    assert_eq!(v["summary"]["changed"], changed);
    assert_eq!(v["summary"]["bytes_added"], 5000);
    assert_eq!(v["summary"]["bytes_removed"], 13 + 5);

    let text = env.ok(&["diff", &a, &b]);
    assert!(text.contains(&format!("+ {} (file, 4.9 KiB)", p("new-dir/new.bin"))), "{text}");
    assert!(text.contains(&format!("- {} (file, 13 B)", p("gone.txt"))), "{text}");
    assert!(text.contains(&format!("M {} [content] file, 11 B -> file, 19 B", p("edit.txt"))), "{text}");
    assert!(text.contains(&format!("2 added (4.9 KiB), 3 removed (18 B), {changed} changed")), "{text}");
    // A snapshot compared with itself has no changes.
    assert_eq!(env.json(&["diff", &b, "latest"])["changes"], serde_json::json!([]));
}

#[test]
fn diff_reads_only_the_folders_that_differ() {
    let env = Env::new();
    gen_dataset(&env.src.join("unchanged"), 1, 60, &[]);
    write_file(&env.src.join("work/a.txt"), b"a", 0o644, 1_600_000_000);
    fix_dir_times(&env.src, 1_600_000_000);
    env.ok(&["init"]);
    let first = backup(&env);
    let first_packs = data_files(&env.repo);
    write_file(&env.src.join("work/b.txt"), b"b", 0o644, 1_600_000_000);
    fix_dir_times(&env.src, 1_600_000_000);
    let second = backup(&env);
    write_file(&env.src.join("top.txt"), b"top", 0o644, 1_600_000_000);
    fix_dir_times(&env.src, 1_600_000_000);
    let third = backup(&env);

    // The first backup's packs hold the trees of `unchanged/` (shared by all three
    // snapshots) and the first root: take them away.
    let aside = env.path("aside");
    std::fs::create_dir_all(&aside).unwrap();
    for (i, p) in first_packs.iter().enumerate() {
        std::fs::rename(p, aside.join(i.to_string())).unwrap();
    }
    // Second to third: only the roots differ; `unchanged/` and `work/` are never read.
    let v = env.json(&["diff", &second, &third]);
    assert_eq!(changes(&env, &v), vec![("added".to_string(), snap_path(&env, "top.txt"))], "{v:#}");
    // find and dump below `work/` read only the folders on the way there (and dump the
    // data of what it dumps), all written by the second and third backups.
    let work = snap_path(&env, "work");
    let v = env.json(&["find", "*.txt", "--snapshot", &third, "--path", &work]);
    assert_eq!(v[0]["matches"].as_array().unwrap().len(), 2, "{v:#}");
    let out = env.run(&["dump", &third, &snap_path(&env, "work/b.txt")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.stdout, b"b");
    // Commands that need the first backup's packs fail without them: the test can fail.
    let (code, err) = env.fails(&["diff", &first, &second]);
    assert_eq!(code, 1, "{err}");
    let (code, err) = env.fails(&["find", "*.dat", "--snapshot", &third]);
    assert_eq!(code, 1, "{err}");
}

#[test]
fn find_tells_which_snapshots_hold_a_path_with_size_and_time() {
    let env = Env::new();
    write_file(&env.src.join("docs/report.txt"), b"draft", 0o644, 1_600_000_000);
    write_file(&env.src.join("other/report.txt"), b"elsewhere", 0o644, 1_600_000_000);
    env.ok(&["init"]);
    let s1 = backup(&env);
    write_file(&env.src.join("docs/report.txt"), b"final version", 0o644, 1_600_000_100);
    let s2 = backup(&env);
    std::fs::remove_file(env.src.join("docs/report.txt")).unwrap();
    let s3 = backup(&env);

    let v = env.json(&["find", "report.txt", "--path", &snap_path(&env, "docs")]);
    let hits: Vec<(String, u64, i64)> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let m = &s["matches"].as_array().unwrap();
            assert_eq!(m.len(), 1, "{v:#}");
            assert_eq!(m[0]["path"], snap_path(&env, "docs/report.txt").as_str());
            (
                s["snapshot"].as_str().unwrap().to_string(),
                m[0]["size"].as_u64().unwrap(),
                m[0]["mtime_ns"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        hits,
        vec![(s1.clone(), 5, 1_600_000_000_123_456_789), (s2.clone(), 13, 1_600_000_100_123_456_789)],
        "the file last existed in the second snapshot"
    );
    // Without --path, both folders' files match, in every snapshot; the third has one.
    let v = env.json(&["find", "*.txt"]);
    let counts: Vec<usize> =
        v.as_array().unwrap().iter().map(|s| s["matches"].as_array().unwrap().len()).collect();
    assert_eq!(counts, vec![2, 2, 1], "{v:#}");
    // A path pattern; and one snapshot only.
    let v = env.json(&["find", "**/other/*.txt", "--snapshot", &s3]);
    assert_eq!(v.as_array().unwrap().len(), 1, "{v:#}");
    assert_eq!(v[0]["snapshot"], s3.as_str());
    assert_eq!(v[0]["matches"][0]["path"], snap_path(&env, "other/report.txt").as_str());
    let text = env.ok(&["find", "report.txt", "--path", &snap_path(&env, "docs")]);
    assert!(text.contains("2 of 3 snapshot(s) hold matching paths"), "{text}");
    assert!(
        text.contains(&format!("file       13 B 2020-09-13 12:28:20 {}", snap_path(&env, "docs/report.txt"))),
        "{text}"
    );
    assert!(env.ok(&["find", "nothing-like-this"]).contains("no snapshot holds a path matching"));
}

#[test]
fn names_from_the_repository_are_escaped_in_text_and_exact_in_json() {
    let env = Env::new();
    let weird: &[u8] = b"bad\x1b[31mname\xff.txt";
    let path = env.src.join(std::ffi::OsStr::from_bytes(weird));
    write_file(&path, b"x", 0o644, 1_600_000_000);
    env.ok(&["init"]);
    let a = backup(&env);
    std::fs::remove_file(&path).unwrap();
    let b = backup(&env);

    for args in [&["diff", &a, &b][..], &["find", "bad*"]] {
        let text = env.ok(args);
        assert!(!text.contains('\x1b'), "{text:?}");
        assert!(text.contains("bad\\u{1b}[31mname\\xff.txt"), "{text}");
    }
    let v = env.json(&["diff", &a, &b]);
    let c = v["changes"].as_array().unwrap().iter().find(|c| c["change"] == "removed").unwrap();
    let full = [env.src.as_os_str().as_bytes(), b"/", weird].concat();
    assert_eq!(c["path_hex"], hex(&full), "{v:#}");
    assert_eq!(c["path"], String::from_utf8_lossy(&full).as_ref());
    let v = env.json(&["find", "bad*"]);
    assert_eq!(v[0]["matches"][0]["path_hex"], hex(&full), "{v:#}");
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn dump_writes_a_file_to_stdout_and_a_folder_as_a_tar_stream() {
    let env = Env::new();
    let big = Rng::new(9).bytes(5 << 20);
    write_file(&env.src.join("tree/big.bin"), &big, 0o640, 1_600_000_000);
    gen_dataset(&env.src.join("tree/many"), 2, 30, &[]);
    write_file(&env.src.join("tree/exec.sh"), b"#!/bin/sh\necho hi\n", 0o755, 1_600_000_001);
    write_file(&env.src.join("tree/empty"), b"", 0o600, 1_600_000_002);
    std::fs::create_dir_all(env.src.join("tree/empty-dir")).unwrap();
    std::os::unix::fs::symlink("big.bin", env.src.join("tree/link")).unwrap();
    set_mtime(&env.src.join("tree/link"), 1_600_000_003, 5);
    let deep = format!("tree/{}/file.txt", "a-rather-long-folder-name".repeat(5));
    write_file(&env.src.join(&deep), b"deep", 0o644, 1_600_000_004);
    fix_dir_times(&env.src, 1_600_000_000);
    env.ok(&["init"]);
    env.ok(&["backup"]);

    // A file: its bytes, exactly.
    let out = env.run(&["dump", "latest", &snap_path(&env, "tree/big.bin")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stdout == big, "dumped {} bytes, the file has {}", out.stdout.len(), big.len());

    // A folder: a tar stream that system tar extracts to the same tree.
    let archive = env.path("tree.tar");
    let out = env.cmd(&["dump", "latest", &snap_path(&env, "tree")]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::write(&archive, &out.stdout).unwrap();
    let into = env.path("extracted");
    std::fs::create_dir_all(&into).unwrap();
    let tar = Command::new("tar")
        .args(["-x", "--same-permissions", "--same-owner", "-f"])
        .arg(&archive)
        .arg("-C")
        .arg(&into)
        .output()
        .expect("system tar is needed (CI installs it)");
    assert!(tar.status.success(), "{}", String::from_utf8_lossy(&tar.stderr));
    assert_eq!(diff_trees(&env.src.join("tree"), &into.join("tree")), Vec::<String>::new());

    // Errors: a missing path, a symlink.
    let (code, err) = env.fails(&["dump", "latest", &snap_path(&env, "tree/nope")]);
    assert_eq!(code, 1);
    assert!(err.contains("has no") && err.contains("tree/nope"), "{err}");
    let (_, err) = env.fails(&["dump", "latest", &snap_path(&env, "tree/link")]);
    assert!(err.contains("is a symlink"), "{err}");
}
