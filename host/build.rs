//! Builds the storage-backend components in `plugins/` for wasm32-wasip2, so the fs backend
//! can be embedded in the binary and tests can find the test-only backends.
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
    let fs = wasm_dir.join("cairn_plugin_fs.wasm");
    assert!(Path::new(&fs).exists(), "{} was not built", fs.display());
    println!("cargo:rustc-env=CAIRN_FS_PLUGIN_WASM={}", fs.display());
    println!("cargo:rustc-env=CAIRN_TEST_PLUGIN_DIR={}", wasm_dir.display());
}
