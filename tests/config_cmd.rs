//! `cairn config check|show`, size options as integers, shell completions and the man page.

mod common;

use common::*;

fn s3_config(env: &Env, secret: &str, extra: &str) -> String {
    format!(
        "[repository]\nbackend = {:?}\n\
         options = {{ endpoint = \"http://127.0.0.1:9\", bucket = \"b\", access_key_id = \"AKID\", \
         secret_access_key = {secret} {extra}}}\n\
         password_env = \"CAIRN_TEST_PASSWORD\"\ngrants = {{ hosts = [\"http://127.0.0.1:9\"] }}\n\n\
         [backup]\nsources = [{:?}]\n\n[state]\ndir = {:?}\n",
        test_plugin("s3"),
        env.src,
        env.state
    )
}

#[test]
fn check_accepts_a_valid_config_with_integer_sizes_without_touching_the_repository() {
    let env = Env::with_backup_toml("pack_size = 8388608\n\n[checkpoint]\ninterval_bytes = 33554432");
    // The repository folder does not exist: check does not look at it, and creates nothing.
    let out = env.ok(&["config", "check"]);
    assert!(out.contains("is valid") && out.contains("not contacted"), "{out}");
    assert!(!env.repo.exists() && !env.state.exists());
    let v = env.json(&["config", "show"]);
    assert_eq!(v["checkpoint"]["interval_bytes"], 33554432);
    assert_eq!(v["backup"]["pack_size"], 8388608);
    assert_eq!(v["checkpoint"]["interval_secs"], 300);
    assert_eq!(v["repository"]["grants"]["memory_mib"], 256);
    // And a backup works with them.
    env.ok(&["init"]);
    write_file(&env.src.join("a.txt"), b"a", 0o644, 1_600_000_000);
    env.ok(&["backup"]);
    // A string with a unit is still taken; a wrong one is refused with the key named.
    // The built-in backend's options are checked against its describe() too.
    let text = std::fs::read_to_string(&env.config)
        .unwrap()
        .replace("options = {", "options = { colour = \"blue\",");
    env.write_config(&text);
    let out = env.run(&["config", "check"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("plugin fs has no option `colour`"), "{out:?}");
    let bad = Env::with_backup_toml("pack_size = \"lots\"");
    let (code, err) = bad.fails(&["config", "check"]);
    assert_eq!(code, 1);
    assert!(err.contains("pack_size \"lots\" is not a size"), "{err}");
}

#[test]
fn check_validates_plugin_options_and_grants_against_describe_offline() {
    let env = Env::new();
    // An unreachable server: check passes, since it contacts nothing.
    env.write_config(&s3_config(&env, "{ env = \"CAIRN_TEST_S3_SECRET\" }", ""));
    let mut cmd = env.cmd(&["--json", "config", "check"]);
    let out = cmd.env("CAIRN_TEST_S3_SECRET", "s3cr3t").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], true, "{v:#}");
    assert_eq!(v["findings"], serde_json::json!([]), "{v:#}");

    // An unknown option, a secret written in clear, an unset variable: each reported.
    env.write_config(&s3_config(&env, "\"in-clear\"", ", colour = \"blue\""));
    let out = env.run(&["--json", "config", "check"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let text = v["findings"].to_string();
    assert!(text.contains("has no option `colour`"), "{v:#}");
    assert!(text.contains("`secret_access_key` is a secret written in the config"), "{v:#}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("error(s)") && err.contains("nothing was touched"), "{err}");

    // No hosts granted to a plugin that speaks HTTP.
    let text = s3_config(&env, "{ env = \"CAIRN_TEST_S3_UNSET\" }", "")
        .replace("grants = { hosts = [\"http://127.0.0.1:9\"] }", "");
    env.write_config(&text);
    let out = env.run(&["config", "check"]);
    assert_eq!(out.status.code(), Some(1));
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(out.contains("grants.hosts is empty"), "{out}");
    assert!(out.contains("$CAIRN_TEST_S3_UNSET, which is not set"), "{out}");
}

#[test]
fn show_masks_secrets() {
    let env = Env::new();
    env.write_config(&s3_config(&env, "\"in-clear-secret\"", ""));
    let out = env.ok(&["config", "show"]);
    assert!(!out.contains("in-clear-secret"), "{out}");
    assert!(out.contains("secret_access_key = \"(secret, not shown)\""), "{out}");
    assert!(out.contains("access_key_id = \"AKID\""), "{out}");
    let text = std::fs::read_to_string(&env.config)
        .unwrap()
        .replace("password_env = \"CAIRN_TEST_PASSWORD\"", "password_command = \"echo hunter2\"");
    env.write_config(&text);
    let v = env.json(&["config", "show"]);
    assert!(!v.to_string().contains("hunter2"), "{v:#}");
    assert_eq!(v["repository"]["password_command"], "(secret, not shown)");
}

#[test]
fn completions_and_man_page_name_the_commands() {
    let env = Env::new();
    let bash = env.ok(&["completions", "bash"]);
    for cmd in ["backup", "restore", "diff", "find", "dump", "config", "snapshots"] {
        assert!(bash.contains(cmd), "bash completion lacks {cmd}");
    }
    assert!(bash.contains("complete -F"), "not a bash completion script");
    assert!(env.ok(&["completions", "zsh"]).contains("#compdef cairn"));
    assert!(env.ok(&["completions", "fish"]).contains("complete -c cairn"));
    let man = env.ok(&["man"]);
    assert!(man.starts_with(".ie") || man.contains(".TH cairn"), "{}", &man[..200.min(man.len())]);
    assert!(man.contains("dump") && man.contains("completions"), "the man page lists the commands");
}
