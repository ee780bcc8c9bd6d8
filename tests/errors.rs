//! Bad input gets a clear one-line error and changes nothing.

mod common;

use std::path::Path;

use common::*;

fn stderr_is_one_line(err: &str) {
    assert_eq!(err.trim_end().lines().count(), 1, "expected one line on stderr, got:\n{err}");
    assert!(err.starts_with("cairn: "), "{err}");
}

#[test]
fn wrong_password_is_named_and_writes_nothing() {
    let env = Env::new();
    write_file(&env.src.join("a.txt"), b"data", 0o644, 1_600_000_000);
    env.ok(&["init"]);
    let repo_before = snapshot_dir(&env.repo);
    let state_before = snapshot_dir(&env.state);
    for cmd in
        [&["backup"][..], &["snapshots"], &["ls", "latest"], &["restore", "latest", "--target", "/tmp/never"]]
    {
        let out = env.cmd(cmd).env("CAIRN_TEST_PASSWORD", "not the password").output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{cmd:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        stderr_is_one_line(&err);
        assert!(err.contains("wrong password"), "{err}");
    }
    assert_eq!(snapshot_dir(&env.repo), repo_before, "the repository changed");
    assert_eq!(snapshot_dir(&env.state), state_before, "the state folder changed");
    assert!(!Path::new("/tmp/never").exists());
}

#[test]
fn missing_config_is_named() {
    let env = Env::new();
    let missing = env.path("nope.toml");
    let out = env.cmd(&["snapshots"]).arg("--config").arg(&missing).output().unwrap();
    // The last --config wins.
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    stderr_is_one_line(&err);
    assert!(err.contains("nope.toml") && err.contains("does not exist"), "{err}");

    // Without --config: $CAIRN_CONFIG, then ./cairn.toml.
    let empty = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
        .arg("snapshots")
        .current_dir(empty.path())
        .env_remove("CAIRN_CONFIG")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cairn.toml") && err.contains("CAIRN_CONFIG"), "{err}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
        .arg("snapshots")
        .env("CAIRN_CONFIG", &missing)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nope.toml") && err.contains("$CAIRN_CONFIG"), "{err}");
}

#[test]
fn malformed_toml_gives_line_and_column() {
    let env = Env::new();
    env.write_config("[repository]\nbackend = \"fs\"\noptions = { path = \"/x\" \npassword_env = \"X\"\n");
    let (code, err) = env.fails(&["init"]);
    assert_eq!(code, 1);
    stderr_is_one_line(&err);
    assert!(err.contains("cairn.toml") && err.contains("line 4, column 1"), "{err}");

    env.write_config("[repository]\nbackend = \"fs\"\n\n[backup]\nsorces = [\"/x\"]\n");
    let (_, err) = env.fails(&["init"]);
    assert!(err.contains("line 5") && err.contains("sorces"), "{err}");
    assert!(!env.repo.exists() && !env.state.exists());
}

#[test]
fn unknown_backend_is_named_and_nothing_is_created() {
    let env = Env::new();
    let text = std::fs::read_to_string(&env.config).unwrap().replace("backend = \"fs\"", "backend = \"ftp\"");
    env.write_config(&text);
    let (code, err) = env.fails(&["init"]);
    assert_eq!(code, 1);
    stderr_is_one_line(&err);
    assert!(err.contains("unknown backend \"ftp\""), "{err}");
    assert!(!env.repo.exists() && !env.state.exists());
}

#[test]
fn missing_repository_and_double_init_are_explained() {
    let env = Env::new();
    let (_, err) = env.fails(&["backup"]);
    stderr_is_one_line(&err);
    assert!(err.contains("does not exist") && err.contains("cairn init"), "{err}");
    env.ok(&["init"]);
    let before = snapshot_dir(&env.repo);
    let (_, err) = env.fails(&["init"]);
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(snapshot_dir(&env.repo), before);
}

#[test]
fn no_password_source_is_explained() {
    let env = Env::new();
    let text =
        std::fs::read_to_string(&env.config).unwrap().replace("password_env = \"CAIRN_TEST_PASSWORD\"\n", "");
    env.write_config(&text);
    let (_, err) = env.fails(&["init"]);
    assert!(err.contains("password_env") && err.contains("password_command"), "{err}");
    let env2 = Env::new();
    let out = env2.cmd(&["init"]).env_remove("CAIRN_TEST_PASSWORD").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("$CAIRN_TEST_PASSWORD") && err.contains("not set"), "{err}");
}

#[test]
fn password_command_works() {
    let env = Env::new();
    let text = std::fs::read_to_string(&env.config).unwrap().replace(
        "password_env = \"CAIRN_TEST_PASSWORD\"",
        &format!("password_command = \"echo '{PASSWORD}'\""),
    );
    env.write_config(&text);
    write_file(&env.src.join("a"), b"a", 0o644, 1_600_000_000);
    env.ok(&["init"]);
    env.ok(&["backup"]);
    let snaps = env.json(&["snapshots"]);
    assert_eq!(snaps.as_array().unwrap().len(), 1);
}
