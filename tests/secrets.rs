//! Secrets are never echoed: whatever a plugin says (its errors, its last words before a
//! crash, its description) has every secret option value and the password replaced by
//! `***`, and its control characters escaped, before cairn shows or logs it.

mod common;

use std::process::Output;

use common::*;

/// A literal secret option value (the option is declared secret by the plugin).
const TOKEN: &str = "tok-3f9a-literal-secret";

/// An env whose repository uses the hostile test plugin with these options. A host is
/// granted (unreachable, never contacted) because the plugin imports wasi:http.
fn hostile_env(options: &str) -> Env {
    let env = Env::new();
    env.write_config(&format!(
        "[repository]\nbackend = {:?}\noptions = {{ {options} }}\npassword_env = \"CAIRN_TEST_PASSWORD\"\n\
         grants = {{ hosts = [\"http://127.0.0.1:9\"] }}\n\n[backup]\nsources = [{:?}]\n\n[state]\ndir = {:?}\n",
        test_plugin("hostile"),
        env.src,
        env.state
    ));
    env
}

/// Everything the run printed: standard output and standard error.
fn all_output(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Runs `args` (once plain, once with `-v --json`); each fails with exit 1, and its output
/// quotes the leaked option as `NAME=***` and never holds `secret`. Returns the plain
/// run's stderr.
fn assert_masked(env: &Env, args: &[&str], leaked: &str, secret: &str) -> String {
    let mut with_logs = vec!["-v", "--json"];
    with_logs.extend_from_slice(args);
    let mut first = None;
    for args in [args, &with_logs[..]] {
        let out = env.run(args);
        let text = all_output(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {text}");
        assert!(text.contains(&format!("{leaked}=***")), "{args:?}: {text}");
        assert!(!text.contains(secret), "{args:?} echoed the secret: {text}");
        first.get_or_insert_with(|| String::from_utf8_lossy(&out.stderr).into_owned());
    }
    first.unwrap()
}

#[test]
fn a_value_not_secret_is_shown_as_the_plugin_said_it() {
    // The control: without masking the leak would be seen, so the tests below can fail.
    let env = hostile_env("fail = \"open\", leak = \"note\", note = \"plain-visible-note\"");
    let (code, err) = env.fails(&["snapshots"]);
    assert_eq!(code, 1);
    assert!(err.contains("hostile: open rejected with note=plain-visible-note"), "{err}");
}

#[test]
fn a_declared_secret_option_is_masked_in_errors_and_logs() {
    let env = hostile_env(&format!("fail = \"open\", leak = \"token\", token = {TOKEN:?}"));
    let err = assert_masked(&env, &["snapshots"], "token", TOKEN);
    // The error is temporary: each retry was logged, masked too.
    assert!(err.contains("retrying"), "{err}");
    assert!(err.lines().last().unwrap().starts_with("cairn: backend cairn_plugin_hostile: open"), "{err}");
}

#[test]
fn option_values_from_env_or_command_are_masked() {
    // `note` is not declared secret, but a value fetched at run time is treated as one.
    let mut env = hostile_env("fail = \"open\", leak = \"note\", note = { env = \"CAIRN_TEST_NOTE\" }");
    env.extra_env.push(("CAIRN_TEST_NOTE".into(), "env-fetched-4b1d".into()));
    assert_masked(&env, &["snapshots"], "note", "env-fetched-4b1d");

    let env =
        hostile_env("fail = \"open\", leak = \"note\", note = { command = \"echo command-fetched-77c2\" }");
    assert_masked(&env, &["snapshots"], "note", "command-fetched-77c2");
}

#[test]
fn the_password_is_masked() {
    // A plugin that learned the password (here: it was given as a plain option value).
    let env = hostile_env(&format!("fail = \"open\", leak = \"note\", note = {PASSWORD:?}"));
    assert_masked(&env, &["snapshots"], "note", PASSWORD);
}

#[test]
fn secrets_are_masked_in_later_calls_and_crash_messages() {
    // After `open`: the listing of keys fails.
    let env = hostile_env(&format!("fail = \"list\", leak = \"token\", token = {TOKEN:?}"));
    let err = assert_masked(&env, &["snapshots"], "token", TOKEN);
    assert!(err.contains("list keys/"), "{err}");
    // A panic: its message is the crash detail cairn shows.
    let env = hostile_env(&format!(
        "fail = \"open:panic\", leak = \"token,note\", token = {TOKEN:?}, note = \"n1\""
    ));
    let err = assert_masked(&env, &["init"], "token", TOKEN);
    assert!(err.contains("crashed in `open`") && err.contains("note=n1"), "{err}");
}

#[test]
fn a_description_with_control_characters_is_escaped() {
    let mut env = Env::new();
    env.extra_env.push(("CAIRN_PLUGINS_DIR".into(), env.path("plugins").display().to_string()));
    let hostile = test_plugin("hostile");
    env.ok(&["plugin", "install", hostile.to_str().unwrap(), "--name", "hostile"]);
    for args in [&["plugin", "info", "hostile"][..], &["plugin", "list"]] {
        let out = env.ok(args);
        assert!(!out.contains('\x1b') && !out.contains('\u{202e}'), "{args:?}: {out:?}");
        assert!(!out.lines().any(|l| l.starts_with("cairn: a forged line")), "{args:?}: {out}");
        assert!(
            out.contains("probes the sandbox\\u{1b}[2J\\ncairn: a forged line\\u{202e}"),
            "{args:?}: {out}"
        );
    }
}

#[test]
fn plugin_info_masks_what_the_plugin_says_with_this_configs_secrets() {
    // `plugin info` with a config that uses the plugin opens it: a failing open is masked.
    let mut env = hostile_env(&format!("fail = \"open\", leak = \"token\", token = {TOKEN:?}"));
    env.extra_env.push(("CAIRN_PLUGINS_DIR".into(), env.path("plugins").display().to_string()));
    let hostile = test_plugin("hostile");
    env.ok(&["plugin", "install", hostile.to_str().unwrap(), "--name", "hostile"]);
    let text = std::fs::read_to_string(&env.config).unwrap();
    env.write_config(&text.replace(&format!("{hostile:?}"), "\"hostile\""));
    let (code, err) = env.fails(&["plugin", "info", "hostile"]);
    assert_eq!(code, 1);
    assert!(err.contains("token=***") && !err.contains(TOKEN), "{err}");
}

#[test]
fn the_password_command_runs_once_per_run() {
    // The password is fetched before the plugin starts (to mask it) and used to unlock the
    // repository: its command, which may prompt, still runs once.
    let env = Env::new();
    let calls = env.path("calls");
    let text = std::fs::read_to_string(&env.config).unwrap().replace(
        "password_env = \"CAIRN_TEST_PASSWORD\"",
        &format!("password_command = \"echo call >> {}; echo {PASSWORD}\"", calls.display()),
    );
    env.write_config(&text);
    env.ok(&["init"]);
    assert_eq!(std::fs::read_to_string(&calls).unwrap(), "call\n");
    env.ok(&["snapshots"]);
    assert_eq!(std::fs::read_to_string(&calls).unwrap(), "call\ncall\n");
}
