//! Plugins run with no ambient authority: a plugin cannot read outside its grants, and one
//! that loops forever or allocates without bound is stopped with a clear message.

mod common;

use common::*;

/// An env whose repository uses the chaos test plugin with `extra` options.
fn chaos_env(options: &str, grants: &str) -> Env {
    let env = Env::new();
    std::fs::create_dir_all(&env.repo).unwrap();
    env.write_config(&format!(
        "[repository]\nbackend = {:?}\noptions = {{ path = {:?}{options} }}\npassword_env = \"CAIRN_TEST_PASSWORD\"\n\
         grants = {{ dirs = [{:?}]{grants} }}\n\n[backup]\nsources = [{:?}]\n\n[state]\ndir = {:?}\n",
        test_plugin("chaos"),
        env.repo,
        env.repo,
        env.src,
        env.state
    ));
    env
}

#[test]
fn the_chaos_plugin_works_when_it_behaves() {
    let env = chaos_env("", "");
    write_file(&env.src.join("a.txt"), b"through a plugin loaded from a file", 0o644, 1_600_000_000);
    env.ok(&["init"]);
    env.ok(&["backup"]);
    let target = env.path("restore");
    env.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert!(diff_trees(&env.src, &env.restored_src(&target)).is_empty());
}

#[test]
fn reading_outside_the_grant_fails() {
    // The file exists on the host; the plugin must still not see it.
    assert!(std::path::Path::new("/etc/hostname").exists());
    let env = chaos_env(", escape = \"/etc/hostname\"", "");
    let (code, err) = env.fails(&["init"]);
    assert_eq!(code, 1);
    assert!(err.contains("could not read /etc/hostname"), "{err}");
    assert!(!env.repo.join("config").exists());

    // Nor through a symlink planted inside the granted folder.
    let env = chaos_env("", "");
    let link = env.repo.join("sneaky");
    std::os::unix::fs::symlink("/etc/hostname", &link).unwrap();
    let text = std::fs::read_to_string(&env.config)
        .unwrap()
        .replace(" }\npassword_env", &format!(", escape = {:?} }}\npassword_env", link));
    env.write_config(&text);
    let (_, err) = env.fails(&["init"]);
    assert!(err.contains("could not read") && err.contains("sneaky"), "{err}");
}

/// Inside the sandbox only granted folders exist, so a repository folder that is not granted
/// looks missing to the plugin: the error says which folders are granted and what to change.
#[test]
fn a_repository_folder_outside_the_grants_is_reported_with_the_folders_granted() {
    let env = chaos_env("", "");
    let other = env.path("other");
    std::fs::create_dir_all(&other).unwrap();
    let text = std::fs::read_to_string(&env.config).unwrap();
    let granted = format!("grants = {{ dirs = [{:?}] }}", env.repo);
    assert!(text.contains(&granted), "{text}");
    env.write_config(&text.replace(&granted, &format!("grants = {{ dirs = [{other:?}] }}")));
    let (code, err) = env.fails(&["init"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("open"), "{err}");
    assert!(
        err.contains(&format!("the plugin can reach only the folders granted to it ({})", other.display())),
        "{err}"
    );
    assert!(err.contains("add it to repository.grants.dirs"), "{err}");
    assert!(!env.repo.join("config").exists());
}

#[test]
fn a_plugin_that_loops_forever_is_stopped_at_its_deadline() {
    let env = chaos_env(", faults = \"open:spin\"", ", call_timeout_secs = 2");
    let started = std::time::Instant::now();
    let (code, err) = env.fails(&["init"]);
    assert_eq!(code, 1);
    assert!(err.contains("plugin cairn_plugin_chaos was stopped"), "{err}");
    assert!(err.contains("`open` did not return within its 2s deadline"), "{err}");
    // Generous bound: the point is that it ends, not how fast.
    assert!(started.elapsed().as_secs() < 60);
}

#[test]
fn a_plugin_that_allocates_without_bound_is_stopped_at_its_memory_cap() {
    let env = chaos_env(", faults = \"open:alloc\"", ", memory_mib = 64");
    let (code, err) = env.fails(&["init"]);
    assert_eq!(code, 1);
    assert!(err.contains("tried to use more than its 64 MiB memory limit"), "{err}");
}

#[test]
fn a_plugin_that_traps_is_reported_with_its_panic_message() {
    let env = chaos_env(", faults = \"open:trap\"", "");
    let (_, err) = env.fails(&["init"]);
    assert!(err.contains("plugin cairn_plugin_chaos crashed in `open`"), "{err}");
    assert!(err.contains("chaos: deliberate trap in open"), "{err}");
}

#[test]
fn a_crash_mid_run_is_survived_with_a_fresh_instance() {
    // The 2nd write the repository sees traps; the upload is retried on a fresh instance.
    let env = chaos_env(", faults = \"write#2:trap\"", "");
    let mut rng = Rng::new(5);
    write_file(&env.src.join("big.bin"), &rng.bytes(5 << 20), 0o644, 1_600_000_000);
    env.ok(&["init"]);
    env.ok(&["backup"]);
    let target = env.path("restore");
    env.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert!(diff_trees(&env.src, &env.restored_src(&target)).is_empty());
}
