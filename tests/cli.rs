//! The command line's contract: JSON everywhere, quiet in a pipe, a progress bar on a
//! terminal, and compiled plugins cached on disk.

mod common;

use common::*;

#[test]
fn every_command_speaks_json() {
    let env = Env::new();
    write_file(&env.src.join("a.txt"), b"hello", 0o644, 1_600_000_000);
    std::os::unix::fs::symlink("a.txt", env.src.join("link")).unwrap();
    let init = env.json(&["init"]);
    assert!(init["repository"].as_str().unwrap().len() == 32, "{init}");
    let backup = env.json(&["backup", "--tag", "first"]);
    assert_eq!(backup["files"], 1);
    let snaps = env.json(&["snapshots"]);
    assert_eq!(snaps[0]["tags"][0], "first");
    assert_eq!(snaps[0]["partial"], false);
    // ls --json is one object per line (streamable).
    let ls = env.ok(&["--json", "ls", "latest"]);
    let entries: Vec<serde_json::Value> = ls.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let file = entries.iter().find(|e| e["path"].as_str().unwrap().ends_with("/a.txt")).unwrap();
    assert_eq!(file["type"], "file");
    assert_eq!(file["size"], 5);
    let link = entries.iter().find(|e| e["path"].as_str().unwrap().ends_with("/link")).unwrap();
    assert_eq!(link["target"], "a.txt");
    let target = env.path("r");
    let restore = env.json(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert_eq!(restore["files"], 1);
}

#[test]
fn a_pipe_gets_no_progress_and_a_terminal_does() {
    let env = Env::new();
    write_file(&env.src.join("a.bin"), &Rng::new(9).bytes(3 << 20), 0o644, 1_600_000_000);
    env.ok(&["init"]);
    let out = env.run(&["backup"]);
    assert!(out.status.success());
    assert!(out.stderr.is_empty(), "stderr in a pipe: {}", String::from_utf8_lossy(&out.stderr));
    // Under a pseudo-terminal (script(1)) the progress bar is drawn on stderr.
    write_file(&env.src.join("b.bin"), &Rng::new(10).bytes(3 << 20), 0o644, 1_600_000_000);
    let cmd = format!("{} --config {} backup", env!("CARGO_BIN_EXE_cairn"), env.config.display());
    let out = std::process::Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env("CAIRN_TEST_PASSWORD", PASSWORD)
        .env("CAIRN_CACHE_DIR", std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("cairn-cache"))
        .env("TERM", "xterm")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("backing up") && text.contains("files") && text.contains("ETA"),
        "no progress bar: {text}"
    );
}

#[test]
fn compiled_plugins_are_cached_and_reused() {
    let env = Env::new();
    write_file(&env.src.join("a"), b"a", 0o644, 1_600_000_000);
    let cache = env.path("component-cache");
    let run = |args: &[&str]| {
        let out = env.cmd(args).env("CAIRN_CACHE_DIR", &cache).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    // Compiled code, and beside it the hash recorded when it was compiled (checked before
    // the code is loaded).
    let listing = || {
        let mut v: Vec<_> =
            std::fs::read_dir(cache.join("components")).unwrap().map(|e| e.unwrap().path()).collect();
        v.sort();
        v
    };
    run(&["init"]);
    let all = listing();
    let compiled: Vec<_> = all.iter().filter(|p| p.extension().unwrap() == "cwasm").cloned().collect();
    assert_eq!(compiled.len(), 1, "{all:?}");
    assert_eq!(all.len(), 2, "the code and its recorded hash: {all:?}");
    let before = std::fs::metadata(&compiled[0]).unwrap().modified().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(50));
    run(&["backup"]);
    run(&["snapshots"]);
    assert_eq!(listing(), all, "no second compilation");
    assert_eq!(
        std::fs::metadata(&compiled[0]).unwrap().modified().unwrap(),
        before,
        "the cached file was not rewritten"
    );
    // A damaged cache entry is replaced, not trusted.
    std::fs::write(&compiled[0], b"garbage").unwrap();
    run(&["snapshots"]);
    assert!(std::fs::metadata(&compiled[0]).unwrap().len() > 1000);
}
