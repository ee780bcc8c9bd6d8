//! A second machine joining an existing repository: its first command builds its journal
//! from the repository by itself, and `init` against an existing repository says how to join.

mod common;

use common::*;

/// Machine A with a first backup; machine B with its own sources and state folder, pointed at
/// A's repository with the same password.
fn two_machines() -> (Env, Env) {
    let a = Env::new();
    gen_dataset(&a.src, 11, 40, &[3 << 20]);
    fix_dir_times(&a.src, 1_600_000_000);
    a.ok(&["init"]);
    a.ok(&["backup"]);
    let b = Env::new();
    write_file(&b.src.join("b-only/notes.txt"), b"from machine b\n", 0o600, 1_600_000_500);
    write_file(&b.src.join("b-only/big.bin"), &Rng::new(3).bytes(1 << 20), 0o644, 1_600_000_600);
    fix_dir_times(&b.src, 1_600_000_000);
    let text = std::fs::read_to_string(&a.config)
        .unwrap()
        .replace(&format!("{:?}", a.src), &format!("{:?}", b.src))
        .replace(&format!("{:?}", a.state), &format!("{:?}", b.state));
    b.write_config(&text);
    (a, b)
}

#[test]
fn a_second_machine_backs_up_directly_and_restores_both_machines_snapshots() {
    let (a, b) = two_machines();
    assert!(!b.state.exists());
    // No manual step: the first command on B builds B's journal, then backs up.
    let out = b.run(&["--json", "backup"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("no journal for repository") && err.contains("journal built"), "{err}");
    let made: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let snaps = b.json(&["snapshots"]);
    assert_eq!(snaps.as_array().unwrap().len(), 2, "{snaps:#}");
    let a_snap = snaps.as_array().unwrap().iter().find(|s| s["id"] != made["snapshot"]).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();

    // A's snapshot restored on B equals A's source, and B's equals B's.
    let from_a = b.path("restore-a");
    b.ok(&["restore", &a_snap, "--target", from_a.to_str().unwrap()]);
    assert_eq!(diff_trees(&a.src, &a.restored_src(&from_a)), Vec::<String>::new());
    let from_b = b.path("restore-b");
    b.ok(&["restore", "latest", "--target", from_b.to_str().unwrap()]);
    assert_eq!(diff_trees(&b.src, &b.restored_src(&from_b)), Vec::<String>::new());
    // The journal is built once: the next command says nothing about building it.
    let out = b.run(&["snapshots"]);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("journal"), "{out:?}");

    // A learns B's snapshot and restores it too.
    let target = a.path("restore-b-on-a");
    let b_snap = made["snapshot"].as_str().unwrap();
    a.ok(&["restore", b_snap, "--target", target.to_str().unwrap()]);
    assert_eq!(diff_trees(&b.src, &b.restored_src(&target)), Vec::<String>::new());
    a.ok(&["verify"]);
    b.ok(&["verify"]);
}

#[test]
fn a_reading_command_joins_too() {
    let (_a, b) = two_machines();
    let snaps = b.json(&["snapshots"]);
    assert_eq!(snaps.as_array().unwrap().len(), 1, "{snaps:#}");
    b.ok(&["verify"]);
}

#[test]
fn init_against_an_existing_repository_says_how_to_join() {
    let (a, b) = two_machines();
    let before = snapshot_dir(&a.repo);
    let (code, err) = b.fails(&["init"]);
    assert_eq!(code, 1);
    assert!(err.contains("already exists") && err.contains("nothing was changed"), "{err}");
    assert!(err.contains("run any command"), "{err}");
    assert_eq!(snapshot_dir(&a.repo), before, "the repository is untouched");
    b.ok(&["backup"]);
}

#[test]
fn an_interrupted_join_continues_with_the_next_command() {
    let (a, b) = two_machines();
    let mut child = b
        .cmd(&["backup"])
        .env("CAIRN_TEST_PAUSE", "rebuild-after-index")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::BufRead;
    for l in std::io::BufReader::new(child.stderr.take().unwrap()).lines() {
        if l.unwrap().contains("cairn-test-pause: rebuild-after-index") {
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // The half-built journal is not taken for a whole one: the next command finishes it.
    let out = b.run(&["--json", "snapshots"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("journal built"), "{err}");
    let snaps: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(snaps.as_array().unwrap().len(), 1, "{snaps:#}");
    b.ok(&["backup"]);
    let target = b.path("restore-a");
    b.ok(&["restore", snaps[0]["id"].as_str().unwrap(), "--target", target.to_str().unwrap()]);
    assert_eq!(diff_trees(&a.src, &a.restored_src(&target)), Vec::<String>::new());
    b.ok(&["verify"]);
}
