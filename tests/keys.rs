//! `cairn key list | add | remove | passwd` (issue 15): several passwords per repository,
//! the key in use and the last key never removed, a password change that is safe to kill.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use common::*;

const SECOND: &str = "a second password for a second person";

fn key_files(env: &Env) -> Vec<String> {
    let mut v: Vec<String> =
        repo_objects(&env.repo).into_iter().map(|(n, _)| n).filter(|n| n.starts_with("keys/")).collect();
    v.sort();
    v
}

/// `key list --json` as (id, current) pairs.
fn listed(env: &Env) -> Vec<(String, bool)> {
    let v = env.json(&["key", "list"]);
    v.as_array()
        .unwrap_or_else(|| panic!("{v}"))
        .iter()
        .map(|k| (k["id"].as_str().unwrap().to_string(), k["current"].as_bool().unwrap()))
        .collect()
}

/// The same env, opened with another password.
fn with_password(env: &Env, password: &str) -> Env {
    Env {
        dir: tempfile::tempdir().unwrap(),
        src: env.src.clone(),
        repo: env.repo.clone(),
        state: env.state.clone(),
        config: env.config.clone(),
        extra_env: vec![("CAIRN_TEST_PASSWORD".into(), password.into())],
    }
}

#[test]
fn a_key_is_added_used_and_removed_and_the_last_or_current_key_is_refused() {
    let env = Env::new();
    write_file(&env.src.join("a.txt"), b"hello keys", 0o644, 1_600_000_000);
    env.ok(&["init"]);
    env.ok(&["backup"]);
    let first = listed(&env);
    assert_eq!(first.len(), 1);
    assert!(first[0].1, "the only key is the one in use: {first:?}");
    let first_id = first[0].0.clone();

    // The only key: refused as the last one, and nothing changes.
    let (code, err) = env.fails(&["key", "remove", &first_id[..8]]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("the repository's only key"), "{err}");
    assert_eq!(key_files(&env).len(), 1);

    // Add a key for a second password (from an env var).
    let mut add = env.cmd(&["--json", "key", "add", "--new-password-env", "SECOND_PW"]);
    add.env("SECOND_PW", SECOND);
    let out = add.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let added: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let second_id = added["added"].as_str().unwrap().to_string();
    assert_eq!(key_files(&env), {
        let mut v = vec![format!("keys/{first_id}"), format!("keys/{second_id}")];
        v.sort();
        v
    });

    // The listing shows host, user and creation time of both; the current one is marked.
    let v = env.json(&["key", "list"]);
    let row = v.as_array().unwrap().iter().find(|k| k["id"] == second_id.as_str()).unwrap();
    assert_eq!(row["current"], false, "{v:#}");
    assert!(!row["host"].as_str().unwrap().is_empty() && !row["user"].as_str().unwrap().is_empty(), "{v:#}");
    assert!(row["created"].as_str().unwrap().parse::<jiff02::Timestamp>().is_ok(), "{v:#}");
    let human = env.ok(&["key", "list"]);
    assert!(human.contains(&format!("* {}", &first_id[..8])), "{human}");
    assert!(human.contains(&format!("  {}", &second_id[..8])), "{human}");

    // The second password opens the repository and restores; there, the second key is current.
    let second = with_password(&env, SECOND);
    let target = env.path("restored");
    second.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert!(diff_trees(&env.src, &env.restored_src(&target)).is_empty());
    let seen = listed(&second);
    assert!(
        seen.contains(&(second_id.clone(), true)) && seen.contains(&(first_id.clone(), false)),
        "{seen:?}"
    );

    // The key in use is refused, whichever password is used.
    let (_, err) = second.fails(&["key", "remove", &second_id[..8]]);
    assert!(err.contains("is the key in use"), "{err}");
    assert_eq!(key_files(&env).len(), 2);

    // A bad id says so.
    let (_, err) = env.fails(&["key", "remove", "zz"]);
    assert!(err.contains("is not a key id"), "{err}");
    let (_, err) = env.fails(&["key", "remove", "0000000000"]);
    assert!(err.contains("no key with id 0000000000"), "{err}");

    // Opened with the second password, the first key can go; then the first password fails.
    let out = second.json(&["key", "remove", &first_id[..8]]);
    assert_eq!(out["removed"], first_id.as_str());
    assert_eq!(key_files(&env), vec![format!("keys/{second_id}")]);
    let (_, err) = env.fails(&["snapshots"]);
    assert!(err.contains("wrong password"), "{err}");
    second.ok(&["snapshots"]);
    let v = second.json(&["verify"]);
    assert_eq!(v["whole"], true, "{v:#}");
}

#[test]
fn passwd_replaces_the_key_in_use() {
    let env = Env::new();
    write_file(&env.src.join("a.txt"), b"hello passwd", 0o644, 1_600_000_000);
    env.ok(&["init"]);
    env.ok(&["backup"]);
    let old = key_files(&env);

    let (_, err) = env.fails(&["key", "passwd", "--new-password-env", "CAIRN_TEST_PASSWORD"]);
    assert!(err.contains("the new password is the current one"), "{err}");

    let mut cmd = env.cmd(&["--json", "key", "passwd", "--new-password-env", "SECOND_PW"]);
    cmd.env("SECOND_PW", SECOND);
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let done: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(format!("keys/{}", done["removed"].as_str().unwrap()), old[0]);
    assert_eq!(key_files(&env), vec![format!("keys/{}", done["added"].as_str().unwrap())]);

    let (_, err) = env.fails(&["snapshots"]);
    assert!(err.contains("wrong password"), "{err}");
    let second = with_password(&env, SECOND);
    let target = env.path("restored");
    second.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert!(diff_trees(&env.src, &env.restored_src(&target)).is_empty());
}

#[test]
fn passwd_killed_after_the_new_key_is_written_leaves_two_working_keys() {
    let env = Env::new();
    write_file(&env.src.join("a.txt"), b"hello kill", 0o644, 1_600_000_000);
    env.ok(&["init"]);
    let mut cmd = env.cmd(&["key", "passwd", "--new-password-env", "SECOND_PW"]);
    cmd.env("SECOND_PW", SECOND).env("CAIRN_TEST_PAUSE", "key-added").stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    loop {
        let line = lines.next().expect("cairn ended before the pause point").unwrap();
        if line.contains("cairn-test-pause: key-added") {
            break;
        }
    }
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGKILL) }, 0);
    child.wait().unwrap();

    assert_eq!(key_files(&env).len(), 2, "the new key file is stored before the old one is touched");
    env.ok(&["backup"]);
    with_password(&env, SECOND).ok(&["snapshots"]);
    // The password change can be finished by removing the old key with the new password.
    let old = listed(&env).into_iter().find(|(_, current)| *current).unwrap().0;
    with_password(&env, SECOND).ok(&["key", "remove", &old]);
    assert_eq!(key_files(&env).len(), 1);
    let (_, err) = env.fails(&["snapshots"]);
    assert!(err.contains("wrong password"), "{err}");
}

#[test]
fn an_append_only_repository_refuses_to_remove_keys() {
    let env = Env::new();
    env.ok(&["init"]);
    let mut add = env.cmd(&["key", "add", "--new-password-env", "SECOND_PW"]);
    add.env("SECOND_PW", SECOND);
    assert!(add.output().unwrap().status.success());
    let text = std::fs::read_to_string(&env.config).unwrap();
    env.write_config(&text.replace(
        "password_env = \"CAIRN_TEST_PASSWORD\"\n",
        "password_env = \"CAIRN_TEST_PASSWORD\"\ngrants = { delete = false }\n",
    ));
    let other = listed(&env).into_iter().find(|(_, current)| !*current).unwrap().0;
    let (_, err) = env.fails(&["key", "remove", &other]);
    assert!(err.contains("append-only (repository.grants.delete = false)"), "{err}");
    let (_, err) = env.fails(&["key", "passwd", "--new-password-command", "echo a third password"]);
    assert!(err.contains("append-only (repository.grants.delete = false)"), "{err}");
    assert_eq!(key_files(&env).len(), 2);
}

#[test]
fn host_and_user_from_a_key_file_are_printed_escaped() {
    let env = Env::new();
    env.ok(&["init"]);
    // Another writer's key file, with control characters in its host and user.
    let name = key_files(&env)[0].clone();
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(env.repo.join(&name)).unwrap()).unwrap();
    json["hostname"] = "evil\x1b[2Jhost".into();
    json["username"] = "bad\x07user".into();
    let bytes = serde_json::to_vec(&json).unwrap();
    let hash = blake3_hex(&bytes);
    std::fs::write(env.repo.join(format!("keys/{hash}")), &bytes).unwrap();
    let human = env.ok(&["key", "list"]);
    assert!(!human.contains('\x1b') && !human.contains('\x07'), "{human:?}");
    assert!(human.contains("evil\\u{1b}[2Jhost") && human.contains("bad\\u{7}user"), "{human:?}");
}

fn blake3_hex(bytes: &[u8]) -> String {
    cairn::ids::Id::of_bytes(bytes).hex()
}

#[test]
fn a_key_added_on_another_machine_is_no_problem_here() {
    let env = Env::new();
    write_file(&env.src.join("a.txt"), b"two machines", 0o644, 1_600_000_000);
    env.ok(&["init"]);
    env.ok(&["backup"]);
    // Another machine: the same repository, its own state folder (a copy of this journal).
    let other_state = env.path("other-state");
    let copy = |from: &std::path::Path, to: &std::path::Path| {
        let out = std::process::Command::new("cp").arg("-a").arg(from).arg(to).output().unwrap();
        assert!(out.status.success());
    };
    copy(&env.state, &other_state);
    let other_config = env.path("other.toml");
    let text = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(&other_config, text.replace(env.state.to_str().unwrap(), other_state.to_str().unwrap()))
        .unwrap();
    let mut other = with_password(&env, PASSWORD);
    other.config = other_config;
    other.state = other_state;
    let mut add = other.cmd(&["key", "add", "--new-password-env", "SECOND_PW"]);
    add.env("SECOND_PW", SECOND);
    assert!(add.output().unwrap().status.success());

    // Here, the new key is listed, and verify finds nothing wrong.
    assert_eq!(listed(&env).len(), 2);
    let v = env.json(&["verify"]);
    assert_eq!(v["whole"], true, "{v:#}");

    // The other machine removes it again: here it is gone, and verify is still content.
    let new = listed(&env).into_iter().find(|(_, current)| !*current).unwrap().0;
    other.ok(&["key", "remove", &new]);
    assert_eq!(key_files(&env).len(), 1);
    assert_eq!(listed(&env).len(), 1);
    let v = env.json(&["verify"]);
    assert_eq!(v["whole"], true, "{v:#}");
}

/// `cairn ARGS` run on a terminal (a pty from util-linux `script`), typing `input`; returns
/// whether it succeeded and what the terminal showed.
fn on_a_terminal(env: &Env, args: &[&str], input: &str) -> (bool, String) {
    use std::io::Write;
    assert!(
        std::process::Command::new("script").arg("--version").output().is_ok_and(|o| o.status.success()),
        "this test needs `script` (util-linux) for a terminal"
    );
    let inner = env.cmd(args);
    let quote = |s: &std::ffi::OsStr| format!("'{}'", s.to_str().unwrap().replace('\'', "'\\''"));
    let line: Vec<String> =
        std::iter::once(quote(inner.get_program())).chain(inner.get_args().map(quote)).collect();
    let mut cmd = std::process::Command::new("script");
    cmd.args(["-qec", &line.join(" "), "/dev/null"]);
    for (k, v) in inner.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).unwrap();
    let mut shown = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut shown).unwrap();
    let status = child.wait().unwrap();
    drop(stdin);
    (status.success(), shown)
}

#[test]
fn key_add_asks_for_the_new_password_twice_on_the_terminal() {
    let env = Env::new();
    env.ok(&["init"]);
    let (ok, shown) = on_a_terminal(&env, &["key", "add"], "typed one\ntyped two\n");
    assert!(!ok && shown.contains("the two passwords differ"), "{shown}");
    assert_eq!(key_files(&env).len(), 1);

    let (ok, shown) = on_a_terminal(&env, &["key", "add"], "typed twice\ntyped twice\n");
    assert!(ok, "{shown}");
    assert!(shown.contains("New password:") && shown.contains("Repeat the new password:"), "{shown}");
    assert_eq!(key_files(&env).len(), 2);
    with_password(&env, "typed twice").ok(&["snapshots"]);

    // Without a terminal (a new session has none) and without a source, it says how to give one.
    let inner = env.cmd(&["key", "add"]);
    let mut cmd = std::process::Command::new("setsid");
    cmd.arg("-w").arg(inner.get_program()).args(inner.get_args());
    for (k, v) in inner.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let out = cmd.stdin(Stdio::null()).output().expect("this test needs `setsid` (util-linux)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("no terminal to ask for the new password on; give it with --new-password-env"),
        "{err}"
    );
    assert_eq!(key_files(&env).len(), 2);
}
