//! `cairn forget` (issue 13, first part): snapshots removed by name or by a retention policy,
//! grouped, explained with `--dry-run`, refused in an append-only repository, and through
//! the one deletion protocol, so a forget killed mid-way is finished by the next run.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use common::forge::{self, Forge};
use common::*;

/// Snapshot objects in the repository folder.
fn snapshot_objects(env: &Env) -> Vec<String> {
    let mut v: Vec<String> =
        repo_objects(&env.repo).into_iter().map(|(n, _)| n).filter(|n| n.starts_with("snapshots/")).collect();
    v.sort();
    v
}

/// Four snapshots of a changing tree; returns their ids, oldest first.
fn four_backups(env: &Env) -> Vec<String> {
    env.ok(&["init"]);
    let mut ids = Vec::new();
    for round in 0..4u8 {
        write_file(&env.src.join(format!("r{round}.txt")), &[b'a' + round; 3000], 0o644, 1_600_000_000);
        let b = env.json(&["backup"]);
        ids.push(b["snapshot"].as_str().unwrap_or_else(|| panic!("{b}")).to_string());
    }
    ids
}

fn listed(env: &Env) -> Vec<String> {
    let v = env.json(&["snapshots"]);
    v.as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap().to_string()).collect()
}

#[test]
fn a_policy_removes_what_it_does_not_keep_and_the_rest_still_restores() {
    let env = Env::new();
    let ids = four_backups(&env);
    assert_eq!(snapshot_objects(&env).len(), 4);

    // Dry run: the plan, with reasons; nothing changes.
    let plan = env.json(&["forget", "--keep-last", "2", "--dry-run"]);
    assert_eq!(plan["would_remove"], 2, "{plan:#}");
    assert_eq!(plan["removed"], 0);
    let group = &plan["groups"][0];
    let kept: Vec<&str> =
        group["keep"].as_array().unwrap().iter().map(|d| d["id"].as_str().unwrap()).collect();
    assert_eq!(kept, [ids[3].as_str(), ids[2].as_str()], "{plan:#}");
    assert_eq!(group["keep"][0]["why"], "last", "{plan:#}");
    assert_eq!(group["remove"][0]["why"], "no rule keeps it", "{plan:#}");
    assert_eq!(snapshot_objects(&env).len(), 4, "a dry run changed the repository");
    let human = env.ok(&["forget", "--keep-last", "2", "--dry-run"]);
    assert!(
        human.contains("keep 2, remove 2") && human.contains("dry run: 2 snapshot(s) would be removed"),
        "{human}"
    );

    let done = env.json(&["forget", "--keep-last", "2"]);
    assert_eq!(done["removed"], 2, "{done:#}");
    let mut want_objects = vec![format!("snapshots/{}", ids[2]), format!("snapshots/{}", ids[3])];
    want_objects.sort();
    assert_eq!(snapshot_objects(&env), want_objects);
    let mut l = listed(&env);
    l.sort();
    let mut want = vec![ids[2].clone(), ids[3].clone()];
    want.sort();
    assert_eq!(l, want);

    // What is left is whole and restores.
    let v = env.json(&["verify", "--read-data"]);
    assert_eq!(v["whole"], true, "{v:#}");
    let target = env.path("restored");
    env.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert!(diff_trees(&env.src, &env.restored_src(&target)).is_empty());
}

#[test]
fn named_snapshots_and_the_config_policy() {
    let env = Env::new();
    let ids = four_backups(&env);
    let out = env.json(&["forget", &ids[0][..8]]);
    assert_eq!(out["removed"], 1, "{out:#}");
    assert!(!listed(&env).contains(&ids[0]));

    // No flag, no [retention]: refused, nothing removed.
    let (code, err) = env.fails(&["forget"]);
    assert_eq!(code, 1);
    assert!(err.contains("no retention policy given"), "{err}");
    assert_eq!(snapshot_objects(&env).len(), 3);

    // [retention] in the config.
    let text = std::fs::read_to_string(&env.config).unwrap();
    env.write_config(&format!("{text}\n[retention]\nkeep_last = 1\n"));
    let out = env.json(&["forget"]);
    assert_eq!(out["removed"], 2, "{out:#}");
    assert_eq!(listed(&env), [ids[3].clone()]);
    // A policy that keeps nothing never empties a group unless told to.
    let out = env.json(&["forget", "--keep-tag", "nothing-has-it"]);
    assert_eq!(out["removed"], 0, "{out:#}");
    assert!(out["groups"][0]["keep"][0]["why"].as_str().unwrap().starts_with("last of its group"), "{out:#}");
    let out = env.json(&["forget", "--keep-tag", "nothing-has-it", "--allow-empty-group"]);
    assert_eq!(out["removed"], 1, "{out:#}");
    assert!(snapshot_objects(&env).is_empty());
}

#[test]
fn an_append_only_repository_refuses_at_once_naming_the_grant() {
    let env = Env::new();
    four_backups(&env);
    let text = std::fs::read_to_string(&env.config).unwrap();
    assert!(text.contains("[repository]\n"), "{text}");
    let text = if text.contains("grants = {") {
        text.replace("grants = {", "grants = { delete = false,")
    } else {
        text.replace("[repository]\n", "[repository]\ngrants = { delete = false }\n")
    };
    env.write_config(&text);
    let (code, err) = env.fails(&["forget", "--keep-last", "1"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("append-only (repository.grants.delete = false)"), "{err}");
    assert_eq!(snapshot_objects(&env).len(), 4);
    // A dry run still shows the plan.
    let plan = env.json(&["forget", "--keep-last", "1", "--dry-run"]);
    assert_eq!(plan["would_remove"], 3, "{plan:#}");
}

/// Killed after the deletions were journaled and before they were sent: the objects are
/// still there, and the next writing command finishes the deletion.
#[test]
fn a_forget_killed_between_journal_and_delete_is_finished_by_the_next_run() {
    let env = Env::new();
    let ids = four_backups(&env);
    let mut child = env
        .cmd(&["forget", "--keep-last", "1"])
        .env("CAIRN_TEST_PAUSE", "delete-journaled")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    loop {
        match lines.next() {
            Some(Ok(l)) if l == "cairn-test-pause: delete-journaled" => break,
            Some(_) => {}
            None => panic!("cairn exited before the pause point: {:?}", child.wait()),
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(snapshot_objects(&env).len(), 4, "the deletes were not sent yet");

    // Any writing command rolls the journaled deletions forward.
    write_file(&env.src.join("after.txt"), b"after the kill", 0o644, 1_600_000_000);
    let b = env.json(&["backup"]);
    assert_eq!(b["errors"], 0, "{b}");
    let left = listed(&env);
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(left.contains(&ids[3]));
    assert_eq!(snapshot_objects(&env).len(), 2);
    let v = env.json(&["verify"]);
    assert_eq!(v["whole"], true, "{v:#}");
}

/// Host names, sources and tags come from the repository (any machine that shares it can
/// write them): `snapshots` and `forget` print them escaped.
#[test]
fn text_from_snapshots_is_printed_escaped() {
    let env = Env::new();
    env.ok(&["init"]);
    let mut f = Forge::unlock(&env.repo, PASSWORD);
    let file = forge::file(&mut f, b"a.txt", b"forged content");
    let root = f.tree(vec![file]);
    f.snapshot_with(root, |s| {
        s.hostname = "evil\x1b[2Jhost".into();
        s.tags = vec!["bell\x07".into(), "\u{202e}gpj.exe".into()];
        s.sources = vec![serde_bytes::ByteBuf::from(b"/src/\x1b]0;title\x07".to_vec())];
    });
    for args in [&["snapshots"][..], &["forget", "--keep-last", "1", "--dry-run"][..]] {
        let out = env.run(args);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        for bytes in [&out.stdout, &out.stderr] {
            let text = String::from_utf8_lossy(bytes);
            assert!(
                !bytes.iter().any(|&b| (b < 0x20 && b != b'\n') || b == 0x7f) && !text.contains('\u{202e}'),
                "{args:?} printed raw control characters:\n{text}"
            );
        }
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("evil\\u{1b}[2Jhost"), "{args:?}: {text}");
    }
}
