//! Plugin management and the sandbox grants: install, list, info, remove; components that
//! are not backends; tampered plugins; option checking; and hostile plugins that try to
//! reach what they were not granted.

mod common;

use std::io::Read;
use std::net::TcpListener;

use common::*;

/// An env whose plugin folder is private to the test.
fn plugin_env() -> Env {
    let mut env = Env::new();
    let dir = env.path("plugins").display().to_string();
    env.extra_env.push(("CAIRN_PLUGINS_DIR".into(), dir));
    env
}

fn config_for(env: &Env, backend: &str, options: &str, grants: &str) {
    env.write_config(&format!(
        "[repository]\nbackend = {backend:?}\noptions = {{ {options} }}\npassword_env = \"CAIRN_TEST_PASSWORD\"\n\
         grants = {{ {grants} }}\n\n[backup]\nsources = [{:?}]\n\n[state]\ndir = {:?}\n",
        env.src, env.state
    ));
}

#[test]
fn install_list_info_use_and_remove() {
    let env = plugin_env();
    let fs = test_plugin("fs");
    let out = env.ok(&["plugin", "install", fs.to_str().unwrap(), "--name", "folder"]);
    assert!(out.contains("installed plugin folder"), "{out}");
    let list = env.json(&["plugin", "list"]);
    let names: Vec<&str> = list.as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["fs", "folder"]);
    let info = env.json(&["plugin", "info", "folder"]);
    assert_eq!(info["plugin_name"], "fs");
    let opts = info["options"].to_string();
    assert!(opts.contains("path") && opts.contains("Absolute path of the repository folder"), "{info}");
    assert!(info["grants_needed"].to_string().contains("dirs"), "{info}");

    // Use it: a config names the installed plugin.
    std::fs::create_dir_all(&env.repo).unwrap();
    config_for(&env, "folder", &format!("path = {:?}", env.repo), &format!("dirs = [{:?}]", env.repo));
    write_file(&env.src.join("a.txt"), b"through an installed plugin", 0o644, 1_600_000_000);
    env.ok(&["init"]);
    env.ok(&["backup"]);
    let text = env.ok(&["plugin", "info", "folder"]);
    assert!(
        text.contains("capabilities (as opened with this config)") && text.contains("ranged_reads"),
        "{text}"
    );
    let target = env.path("restore");
    env.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert!(diff_trees(&env.src, &env.restored_src(&target)).is_empty());

    env.ok(&["plugin", "remove", "folder"]);
    let (code, err) = env.fails(&["snapshots"]);
    assert_eq!(code, 1);
    assert!(err.contains("unknown backend \"folder\"") && err.contains("cairn plugin install"), "{err}");
}

#[test]
fn a_component_of_another_world_is_refused_and_told_why() {
    let env = plugin_env();
    let (code, err) = env.fails(&["plugin", "install", test_plugin("wrongworld").to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("does not export the cairn:storage/backend@0.1.0 interface"), "{err}");
    let junk = env.path("junk.wasm");
    std::fs::write(&junk, b"this is not wasm at all").unwrap();
    let (_, err) = env.fails(&["plugin", "install", junk.to_str().unwrap()]);
    assert!(err.contains("not a valid WebAssembly component"), "{err}");
    let (_, err) = env.fails(&["plugin", "install", test_plugin("fs").to_str().unwrap()]);
    assert!(err.contains("reserved"), "the built-in name is protected: {err}");
    assert!(env.json(&["plugin", "list"]).as_array().unwrap().len() == 1);
}

#[test]
fn a_plugin_changed_after_install_is_refused() {
    let env = plugin_env();
    env.ok(&["plugin", "install", test_plugin("chaos").to_str().unwrap()]);
    std::fs::create_dir_all(&env.repo).unwrap();
    config_for(&env, "chaos", &format!("path = {:?}", env.repo), &format!("dirs = [{:?}]", env.repo));
    env.ok(&["init"]);
    // Someone swaps the installed file.
    let installed = env.path("plugins/chaos/plugin.wasm");
    std::fs::copy(test_plugin("fs"), &installed).unwrap();
    let (code, err) = env.fails(&["backup"]);
    assert_eq!(code, 1);
    assert!(err.contains("plugin chaos changed after it was installed") && err.contains("refusing"), "{err}");
}

#[test]
fn options_are_checked_against_what_the_plugin_declares() {
    let env = plugin_env();
    env.ok(&["plugin", "install", test_plugin("chaos").to_str().unwrap()]);
    std::fs::create_dir_all(&env.repo).unwrap();
    config_for(
        &env,
        "chaos",
        &format!("path = {:?}, colour = \"blue\"", env.repo),
        &format!("dirs = [{:?}]", env.repo),
    );
    let (_, err) = env.fails(&["init"]);
    assert!(err.contains("has no option `colour`") && err.contains("Repository folder"), "{err}");
    config_for(&env, "chaos", "fsync = \"false\"", &format!("dirs = [{:?}]", env.repo));
    let (_, err) = env.fails(&["init"]);
    assert!(err.contains("needs option `path`") && err.contains("Repository folder"), "{err}");
    // A value may come from the environment or a command; it is never printed.
    config_for(
        &env,
        "chaos",
        "path = { env = \"CAIRN_TEST_REPO_PATH\" }",
        &format!("dirs = [{:?}]", env.repo),
    );
    let out = env.cmd(&["init"]).env("CAIRN_TEST_REPO_PATH", &env.repo).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(env.repo.join("config").exists());
    let (_, err) = env.fails(&["snapshots"]);
    assert!(err.contains("$CAIRN_TEST_REPO_PATH") && err.contains("not set"), "{err}");
}

/// A one-shot HTTP server on loopback: answers every request with 200 "hello".
fn http_server() -> (u16, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let h = std::thread::spawn(move || {
        listener.set_nonblocking(false).unwrap();
        for stream in listener.incoming().take(4) {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            use std::io::Write;
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello");
        }
    });
    (port, h)
}

#[test]
fn http_to_a_host_that_is_not_granted_is_refused_and_named() {
    let env = Env::new();
    let (port, _server) = http_server();
    let url = format!("http://127.0.0.1:{port}/probe");
    let hostile = test_plugin("hostile");
    let cfg = |grants: &str| {
        env.write_config(&format!(
            "[repository]\nbackend = {hostile:?}\noptions = {{ fetch = {url:?} }}\npassword_env = \"CAIRN_TEST_PASSWORD\"\n\
             grants = {{ {grants} }}\n\n[backup]\nsources = [{:?}]\n\n[state]\ndir = {:?}\n",
            env.src, env.state
        ))
    };
    // No network grant at all: it cannot even be linked with wasi:http.
    cfg("");
    let (_, err) = env.fails(&["init"]);
    assert!(err.contains("uses the network") && err.contains("repository.grants.hosts"), "{err}");
    // A grant for another origin: the request is refused and the error names what to grant.
    cfg("hosts = [\"http://127.0.0.1:9\"]");
    let (_, err) = env.fails(&["init"]);
    assert!(err.contains(&format!("HTTP to http://127.0.0.1:{port} is not granted")), "{err}");
    assert!(err.contains("repository.grants.hosts"), "{err}");
    // Granted: the request goes through (the probe can see a breach), and the plugin then
    // fails for what it is: a plugin that stores nothing.
    cfg(&format!("hosts = [\"http://127.0.0.1:{port}\"]"));
    let (_, err) = env.fails(&["init"]);
    assert!(err.contains("stores nothing"), "{err}");
}

#[test]
fn an_append_only_repository_refuses_deletes_and_still_backs_up() {
    let env = Env::with_backup_toml("pack_size = \"1MiB\"\n\n[checkpoint]\ninterval_bytes = \"1MiB\"");
    std::fs::create_dir_all(&env.repo).unwrap();
    let text = std::fs::read_to_string(&env.config).unwrap().replace(
        "password_env = \"CAIRN_TEST_PASSWORD\"\n",
        "password_env = \"CAIRN_TEST_PASSWORD\"\ngrants = { delete = false }\n",
    );
    env.write_config(&text);
    write_file(&env.src.join("big.bin"), &Rng::new(3).bytes(4 << 20), 0o644, 1_600_000_000);
    env.ok(&["init"]);
    // Checkpoints write partial snapshots; the complete run cannot delete them, and does
    // not fail for it.
    let b = env.json(&["backup"]);
    assert!(b["checkpoints"].as_u64().unwrap() >= 1, "{b}");
    // A leftover only deletes can clear: repair is refused, naming the grant.
    let pack = snapshot_dir(&env.repo.join("data")).remove(0).0;
    let rel = pack.strip_prefix(&env.repo).unwrap().to_string_lossy().into_owned();
    let (dir, file) = rel.rsplit_once('/').unwrap();
    std::fs::write(env.repo.join(dir).join(format!(".{file}.cairn-upload-00112233aabbccdd")), b"partial")
        .unwrap();
    let (code, err) = env.fails(&["repair", "--delete-unrecoverable"]);
    assert_eq!(code, 1);
    assert!(err.contains("append-only") && err.contains("repository.grants.delete"), "{err}");
    // Nothing was lost.
    let target = env.path("restore");
    env.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert!(diff_trees(&env.src, &env.restored_src(&target)).is_empty());
}

#[test]
fn the_walkthrough_example_is_what_the_docs_show_and_works() {
    // The docs hold exactly the example's source.
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/plugins.md")).unwrap();
    let source =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../plugins/example/src/lib.rs"))
            .unwrap();
    let shown = docs
        .split("<!-- example:lib.rs -->\n```rust\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("docs/plugins.md shows the example");
    assert_eq!(shown, source, "docs/plugins.md and plugins/example/src/lib.rs differ");
    // Built (by the build script), installed, used.
    let env = plugin_env();
    env.ok(&["plugin", "install", test_plugin("example").to_str().unwrap()]);
    let info = env.ok(&["plugin", "info", "example"]);
    assert!(info.contains("The folder to store the repository in"), "{info}");
    std::fs::create_dir_all(&env.repo).unwrap();
    config_for(&env, "example", &format!("path = {:?}", env.repo), &format!("dirs = [{:?}]", env.repo));
    gen_dataset(&env.src, 41, 50, &[2 << 20]);
    env.ok(&["init"]);
    env.ok(&["backup"]);
    env.ok(&["verify", "--read-data"]);
    let target = env.path("restore");
    env.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert!(diff_trees(&env.src, &env.restored_src(&target)).is_empty());
}
