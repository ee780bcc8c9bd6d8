//! Builds the storage-backend components in `plugins/` for wasm32-wasip2, so the backends
//! this repository ships (fs, s3, webdav) can be embedded in the binary and tests can find
//! the test-only backends; and records the commit the binary is built from.
//!
//! It runs a nested cargo with its own target folder (no lock contention with this build)
//! and a clean environment (the outer build's flags are for the host, not for wasm).

use std::path::{Path, PathBuf};
use std::process::Command;

const PLUGINS: &[&str] = &[
    "cairn-plugin-fs",
    "cairn-plugin-chaos",
    "cairn-plugin-hostile",
    "cairn-plugin-wrongworld",
    "cairn-plugin-example",
    "cairn-plugin-webdav",
    "cairn-plugin-s3",
];

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir.parent().unwrap();
    let plugins = root.join("plugins");
    println!("cargo:rerun-if-changed={}", root.join("wit").display());
    let crate_dirs = PLUGINS.iter().map(|p| p.trim_start_matches("cairn-plugin-"));
    for sub in ["Cargo.toml", "Cargo.lock", "sdk"].into_iter().chain(crate_dirs) {
        println!("cargo:rerun-if-changed={}", plugins.join(sub).display());
    }

    // OUT_DIR is <target>/<profile>/build/cairn-<hash>/out; share one plugin build between
    // profiles by placing it beside the profile folders.
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let target_dir = out_dir.ancestors().nth(4).unwrap().join("wasm-plugins");

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&plugins)
        .args(["build", "--release", "--target", "wasm32-wasip2", "--target-dir"])
        .arg(&target_dir);
    for p in PLUGINS {
        cmd.args(["-p", p]);
    }
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        let keep = matches!(key.as_str(), "CARGO_HOME" | "CARGO_MAKEFLAGS" | "CARGO_NET_OFFLINE");
        if (key.starts_with("CARGO_") && !keep)
            || key.starts_with("RUSTC_")
            || matches!(
                key.as_str(),
                "RUSTFLAGS"
                    | "RUSTDOCFLAGS"
                    | "TARGET"
                    | "HOST"
                    | "OUT_DIR"
                    | "OPT_LEVEL"
                    | "DEBUG"
                    | "PROFILE"
                    | "NUM_JOBS"
            )
        {
            cmd.env_remove(&key);
        }
    }
    let status = cmd.status().expect("run cargo to build the wasm plugins");
    if !status.success() {
        panic!(
            "building the plugins failed; is the wasm32-wasip2 target installed? \
             (`rustup toolchain install` in the repository root installs it)"
        );
    }

    let wasm_dir = target_dir.join("wasm32-wasip2").join("release");
    for name in BUNDLED {
        let wasm = wasm_dir.join(format!("cairn_plugin_{name}.wasm"));
        assert!(Path::new(&wasm).exists(), "{} was not built", wasm.display());
        let key = name.to_ascii_uppercase();
        println!("cargo:rustc-env=CAIRN_{key}_PLUGIN_WASM={}", wasm.display());
    }
    println!("cargo:rustc-env=CAIRN_BUNDLED_PLUGIN_VERSION={}", plugins_version(&plugins));
    println!("cargo:rustc-env=CAIRN_TEST_PLUGIN_DIR={}", wasm_dir.display());
    println!("cargo:rustc-env=CAIRN_COMMIT={}", commit(root));
}

/// The backends embedded in the binary (the others in `PLUGINS` are for tests only).
const BUNDLED: &[&str] = &["fs", "s3", "webdav"];

/// The version every plugin crate inherits from `[workspace.package]` in plugins/Cargo.toml
/// (what their `describe()` reports), so `plugin list --available` needs no plugin run.
fn plugins_version(plugins: &Path) -> String {
    let manifest = std::fs::read_to_string(plugins.join("Cargo.toml")).expect("read plugins/Cargo.toml");
    let mut in_package = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_package = line == "[workspace.package]";
        } else if in_package
            && let Some(v) = line.strip_prefix("version").map(str::trim_start)
            && let Some(v) = v.strip_prefix('=')
        {
            return v.trim().trim_matches('"').to_string();
        }
    }
    panic!("plugins/Cargo.toml has no [workspace.package] version");
}

/// `git describe` of the checkout being built, for `cairn --version`; outside a git checkout
/// (a source tarball, a crate download) or without git, a plain note saying so. Rerun when
/// HEAD moves (a commit, a checkout), not on every edit: the result names the commit, and
/// a tree with uncommitted changes is not marked.
fn commit(root: &Path) -> String {
    let git = |args: &[&str]| -> Option<String> {
        let out = Command::new("git").current_dir(root).args(args).output().ok()?;
        let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
        (out.status.success() && !text.is_empty()).then_some(text)
    };
    // A path that does not exist would make cargo run this script on every build.
    let watch = |p: String| {
        let p = root.join(p);
        if p.exists() {
            println!("cargo:rerun-if-changed={}", p.display());
        }
    };
    let mut files = vec!["HEAD".to_string(), "packed-refs".to_string()];
    files.extend(git(&["symbolic-ref", "-q", "HEAD"]));
    for file in files {
        if let Some(p) = git(&["rev-parse", "--git-path", &file]) {
            watch(p);
        }
    }
    git(&["describe", "--tags", "--always", "--abbrev=12"]).unwrap_or_else(|| "commit unknown".into())
}
