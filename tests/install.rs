//! Getting cairn onto a machine: `cargo install` from this checkout, the backends bundled in
//! the binary (installed by name, listed with versions, used by name without an install),
//! replacing one kind of plugin by the other only with `--force`, and `--version`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::remote::{Flavour, remote_env_with, repo_folder};
use common::*;

/// An env whose plugin folder is private to the test.
fn plugin_env() -> Env {
    let mut env = Env::new();
    let dir = env.path("plugins").display().to_string();
    env.extra_env.push(("CAIRN_PLUGINS_DIR".into(), dir));
    env
}

fn show(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn ok_of(env: &Env, exe: &Path, args: &[&str]) -> String {
    let out = env.cmd_of(exe, args).output().expect("run cairn");
    assert!(out.status.success(), "{} {args:?}: {}", exe.display(), show(&out));
    String::from_utf8(out.stdout).unwrap()
}

/// The repository root (this file is in its `tests/`).
fn checkout() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The README's install command, as CI runs it: `cargo install --locked --debug --path host
/// --root <tmp>` with this test build's target folder, so it reuses the compiled
/// dependencies (seconds, not a release build). The installed binary then installs the
/// bundled s3 backend by name (no file), and backs up to a SeaweedFS server through it.
#[test]
fn cargo_install_then_bundled_s3_backs_up_to_seaweedfs() {
    let Some(server) = servers::require(servers::seaweedfs_s3()) else { return };
    let root = tempfile::Builder::new().prefix("cairn-install-").tempdir().unwrap();
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).parent().unwrap();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(checkout())
        .args(["install", "--locked", "--debug", "--path", "host", "--root"])
        .arg(root.path())
        .env("CARGO_TARGET_DIR", target)
        .output()
        .expect("run cargo install");
    assert!(out.status.success(), "cargo install failed: {}", show(&out));
    let exe = root.path().join("bin").join("cairn");
    assert!(exe.is_file(), "cargo install did not put cairn in {}", root.path().display());

    // The config names backend = "s3"; the env's plugin folder starts empty.
    let mut env = remote_env_with(Flavour::Seaweed, &server, &server.origin(), "pack_size = \"1MiB\"", "");
    env.extra_env.push(("CAIRN_PLUGINS_DIR".into(), env.path("fresh-plugins").display().to_string()));
    let out = ok_of(&env, &exe, &["plugin", "install", "s3"]);
    assert!(out.contains("installed plugin s3 (s3 "), "{out}");
    let installed = std::fs::read(env.path("fresh-plugins/s3/plugin.wasm")).unwrap();
    assert_eq!(installed, std::fs::read(test_plugin("s3")).unwrap(), "not the bundled s3 component");

    gen_dataset(&env.src, 16, 60, &[3 << 20]);
    ok_of(&env, &exe, &["init"]);
    let backup: serde_json::Value = serde_json::from_str(&ok_of(&env, &exe, &["--json", "backup"])).unwrap();
    assert_eq!(backup["errors"], 0, "{backup}");
    let packs = format!("{}/data/", repo_folder(&server));
    let listing = servers::http_get(server.port, &servers::presigned_list(server.port, &packs)).unwrap().1;
    assert!(listing.contains(&format!("<Key>{packs}")), "no packs on the server: {listing}");
    let restored = env.path("restore");
    ok_of(&env, &exe, &["restore", "latest", "--target", restored.to_str().unwrap()]);
    assert_eq!(diff_trees(&env.src, &env.restored_src(&restored)), Vec::<String>::new());
}

/// `plugin list --available` names the bundled backends with the plugins' version; `plugin
/// install s3` installs the bundled component (the same bytes the build produced) and
/// records that it is the bundled one; fs is built in and never installed; an unknown name
/// that is no file says both.
#[test]
fn bundled_backends_are_listed_and_installed_by_name() {
    let env = plugin_env();
    let available = env.json(&["plugin", "list", "--available"]);
    let rows = available.as_array().unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["fs", "s3", "webdav"]);
    for r in rows {
        assert_eq!(r["version"], env!("CARGO_PKG_VERSION"), "{r}");
        let name = r["name"].as_str().unwrap();
        assert_eq!(r["size"], std::fs::metadata(test_plugin(name)).unwrap().len(), "{r}");
    }
    assert_eq!(rows[1]["status"], "not installed (used by name)");
    let text = env.ok(&["plugin", "list", "--available"]);
    assert!(text.lines().any(|l| l.starts_with("webdav") && l.contains("0.1.0")), "{text}");

    // A folder of that name in the way is no plugin file: the bundled one is meant.
    std::fs::create_dir(env.path("webdav")).unwrap();
    let out = env.cmd(&["plugin", "install", "webdav"]).current_dir(env.dir.path()).output().unwrap();
    assert!(out.status.success(), "{}", show(&out));
    let out = String::from_utf8(out.stdout).unwrap();
    assert!(out.contains("installed plugin webdav (webdav 0.1.0)"), "{out}");
    assert!(out.contains("grants it needs: hosts"), "{out}");
    let wasm = std::fs::read(env.path("plugins/webdav/plugin.wasm")).unwrap();
    assert_eq!(wasm, std::fs::read(test_plugin("webdav")).unwrap());
    let info = env.json(&["plugin", "info", "webdav"]);
    assert_eq!(info["bundled"], true, "{info}");
    assert!(info["source"].as_str().unwrap().starts_with("bundled in cairn"), "{info}");
    let available = env.json(&["plugin", "list", "--available"]);
    assert_eq!(available[2]["status"], "installed: bundled 0.1.0");

    let (code, err) = env.fails(&["plugin", "install", "fs"]);
    assert_eq!(code, 1);
    assert!(err.contains("fs is built in"), "{err}");
    let (code, err) = env.fails(&["plugin", "install", "ftp"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("ftp: no such file, and no backend of that name is bundled (bundled: s3, webdav"),
        "{err}"
    );
    assert!(!env.path("plugins/fs").exists() && !env.path("plugins/ftp").exists());
}

/// A file installed under a bundled backend's name, or the bundled one over a file, is
/// refused without `--force`, naming which version would replace which; nothing changes.
/// With `--force` it replaces it. A file over a file (an upgrade) needs no flag.
#[test]
fn replacing_a_bundled_backend_by_a_file_and_back_asks_for_force() {
    let env = plugin_env();
    let file = test_plugin("s3");
    let file = file.to_str().unwrap();
    // Not installed: the file would take the place of the bundled s3 used by name.
    let (code, err) = env.fails(&["plugin", "install", file]);
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!(
            "plugin s3: {file} (s3 0.1.0) would replace the bundled s3 0.1.0; run again with --force"
        )),
        "{err}"
    );
    assert!(!env.path("plugins/s3").exists(), "a refused install wrote something");

    env.ok(&["plugin", "install", "s3"]);
    let (_, err) = env.fails(&["plugin", "install", file]);
    assert!(
        err.contains(&format!("{file} (s3 0.1.0) would replace the installed bundled s3 0.1.0")),
        "{err}"
    );
    assert_eq!(env.json(&["plugin", "info", "s3"])["bundled"], true);

    env.ok(&["plugin", "install", file, "--force"]);
    let info = env.json(&["plugin", "info", "s3"]);
    assert_eq!(info["bundled"], false, "{info}");
    assert_eq!(info["source"], file, "{info}");
    env.ok(&["plugin", "install", file]);

    let (_, err) = env.fails(&["plugin", "install", "s3"]);
    assert!(
        err.contains(&format!("the bundled s3 0.1.0 would replace the installed s3 0.1.0 (from {file})")),
        "{err}"
    );
    assert_eq!(env.json(&["plugin", "info", "s3"])["bundled"], false);
    env.ok(&["plugin", "install", "s3", "--force"]);
    assert_eq!(env.json(&["plugin", "info", "s3"])["bundled"], true);

    // Another name for a file is no replacement.
    env.ok(&["plugin", "install", file, "--name", "s3-mine"]);
    let names: Vec<String> = env
        .json(&["plugin", "list"])
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["fs", "s3", "s3-mine"]);
}

/// `backend = "s3"` works with nothing installed: the bundled component is used (sandboxed
/// and granted as configured), and nothing is written to the plugins folder.
#[test]
fn a_bundled_backend_is_used_by_name_without_an_install() {
    let Some(server) = servers::require(servers::seaweedfs_s3()) else { return };
    let mut env = remote_env_with(Flavour::Seaweed, &server, &server.origin(), "", "");
    let plugins = env.path("no-plugins");
    env.extra_env.push(("CAIRN_PLUGINS_DIR".into(), plugins.display().to_string()));
    write_file(&env.src.join("a.txt"), b"through the bundled s3 backend", 0o644, 1_600_000_000);
    env.ok(&["init"]);
    env.ok(&["backup"]);
    let restored = env.path("restore");
    env.ok(&["restore", "latest", "--target", restored.to_str().unwrap()]);
    assert_eq!(diff_trees(&env.src, &env.restored_src(&restored)), Vec::<String>::new());
    assert!(!plugins.exists(), "using a bundled backend installed it");
}

/// `cairn --version` names the commit it was built from (`git describe` of this checkout).
#[test]
fn version_names_the_commit() {
    let out = Command::new(env!("CARGO_BIN_EXE_cairn")).arg("--version").output().unwrap();
    let version = String::from_utf8(out.stdout).unwrap();
    let git = Command::new("git")
        .current_dir(checkout())
        .args(["describe", "--tags", "--always", "--abbrev=12"])
        .output()
        .expect("git is needed to check the version");
    assert!(git.status.success(), "not a git checkout: {}", show(&git));
    let describe = String::from_utf8(git.stdout).unwrap();
    assert_eq!(version.trim(), format!("cairn {} ({})", env!("CARGO_PKG_VERSION"), describe.trim()));
}
