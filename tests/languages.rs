//! Backends written in Python (componentize-py) and JavaScript (componentize-js), the
//! examples in plugins/examples: each is built by its build script, installed into the
//! unchanged cairn binary, and carries a round trip of more than 500 MiB at the default
//! memory cap: backup, `verify --read-data`, restore, trees equal.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

const MIB: usize = 1 << 20;

#[derive(Clone, Copy)]
enum Language {
    Python,
    JavaScript,
}

impl Language {
    /// The folder below plugins/examples, and the name of the built component.
    fn folder(self) -> &'static str {
        match self {
            Language::Python => "python",
            Language::JavaScript => "js",
        }
    }

    /// The name the plugin gives itself in `describe`.
    fn backend(self) -> &'static str {
        match self {
            Language::Python => "example-python",
            Language::JavaScript => "example-js",
        }
    }

    /// The program the build script needs to install the rest of the toolchain.
    fn toolchain(self) -> &'static str {
        match self {
            Language::Python => "python3",
            Language::JavaScript => "npm",
        }
    }
}

/// Why a language's toolchain is unavailable: a failure, or a loud skip when
/// `CAIRN_TEST_SKIP_SERVERS=1` asks to run without what is missing.
fn missing_toolchain(lang: Language, why: &str) -> Option<PathBuf> {
    if !common::servers::skip_allowed() {
        panic!(
            "the {} toolchain is missing: {why}; run tests/setup.sh (or set CAIRN_TEST_SKIP_SERVERS=1 to skip)",
            lang.folder()
        );
    }
    eprintln!(
        "\n*** SKIPPING the {} backend (CAIRN_TEST_SKIP_SERVERS=1): {why}\n*** it needs {} (tests/setup.sh installs it)\n",
        lang.folder(),
        lang.toolchain()
    );
    None
}

fn newest_mtime(dir: &Path) -> std::time::SystemTime {
    let mut newest = std::time::SystemTime::UNIX_EPOCH;
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if name == "node_modules" || name == "__pycache__" {
            continue;
        }
        let meta = entry.metadata().unwrap();
        let t = if meta.is_dir() { newest_mtime(&entry.path()) } else { meta.modified().unwrap() };
        newest = newest.max(t);
    }
    newest
}

/// The built component, from target/lang-plugins (where plugins/examples/build.sh writes
/// it), built first when it is missing or older than its sources or the WIT contract.
fn component(lang: Language) -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let sources = root.join("plugins/examples").join(lang.folder());
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).parent().unwrap().join("lang-plugins");
    let wasm = out.join(format!("{}.wasm", lang.folder()));
    let built_at = std::fs::metadata(&wasm).and_then(|m| m.modified()).ok();
    let newest_source = newest_mtime(&sources).max(newest_mtime(&root.join("wit")));
    if built_at.is_some_and(|t| t >= newest_source) {
        return Some(wasm);
    }
    if Command::new(lang.toolchain()).arg("--version").output().is_err() {
        return missing_toolchain(lang, &format!("{} is not installed", lang.toolchain()));
    }
    let build = Command::new(root.join("plugins/examples/build.sh"))
        .arg(&out)
        .arg(lang.folder())
        .output()
        .expect("run plugins/examples/build.sh");
    let stderr = String::from_utf8_lossy(&build.stderr);
    match build.status.code() {
        Some(0) => Some(wasm),
        // The build script's status for a toolchain it could not install.
        Some(3) => missing_toolchain(lang, stderr.trim()),
        code => panic!("building the {} example failed ({code:?}):\n{stderr}", lang.folder()),
    }
}

/// Installs the language's backend into a private plugin folder, backs up a tree of more
/// than 500 MiB through it, verifies every byte, restores, and compares.
fn round_trip(lang: Language) {
    let Some(wasm) = component(lang) else { return };
    let mut env = Env::new();
    let plugins = env.path("plugins").display().to_string();
    env.extra_env.push(("CAIRN_PLUGINS_DIR".into(), plugins));
    let out = env.ok(&["plugin", "install", wasm.to_str().unwrap()]);
    assert!(out.contains(&format!("installed plugin {}", lang.backend())), "{out}");

    std::fs::create_dir_all(&env.repo).unwrap();
    // The default memory cap: no memory_mib in the grants.
    env.write_config(&format!(
        "[repository]\nbackend = {:?}\noptions = {{ path = {:?} }}\npassword_env = \"CAIRN_TEST_PASSWORD\"\n\
         grants = {{ dirs = [{:?}] }}\n\n[backup]\nsources = [{:?}]\n\n[state]\ndir = {:?}\n",
        lang.backend(),
        env.repo,
        env.repo,
        env.src,
        env.state
    ));
    // A few large random (incompressible) files, one of them twice, and small files in
    // nested folders: 520 MiB of distinct data.
    let medium = [112 * MIB, 104 * MIB, 96 * MIB, 88 * MIB, 80 * MIB, 40 * MIB - 300 * 8 * 1024];
    let total = gen_dataset(&env.src, 10, 300, &medium);
    fix_dir_times(&env.src, 1_690_000_000);
    assert!(total >= 600 * MIB as u64, "the tree holds {total} bytes");

    env.ok(&["init"]);
    env.ok(&["backup"]);
    let stored = pack_bytes(&env.repo);
    assert!(stored >= 500 * MIB as u64, "only {stored} bytes of packs in the repository folder");

    let out = env.run(&["-v", "verify", "--read-data"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    // How many instances the leak cost (the host's own count, shown for the record).
    let stderr = String::from_utf8_lossy(&out.stderr);
    if let Some(line) = stderr.lines().find(|l| l.contains("instances recycled")) {
        eprintln!("{}: {line}", lang.folder());
    }
    assert_eq!(
        out.status.code(),
        Some(0),
        "verify --read-data through the {} backend\nstdout: {stdout}\nstderr: {}",
        lang.folder(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("the repository is whole"), "{stdout}");

    let target = env.path("restored");
    env.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    let diffs = diff_trees(&env.src, &env.restored_src(&target));
    assert!(diffs.is_empty(), "restore through the {} backend differs: {diffs:?}", lang.folder());
}

#[test]
fn javascript_backend_round_trip() {
    round_trip(Language::JavaScript);
}

/// componentize-py 0.25.1 leaks every `read` result inside the guest (about the size of the
/// read, 4 MiB per call during `verify --read-data`), so an instance would reach the default
/// 256 MiB cap after roughly 55 to 60 reads and be stopped (before instance recycling,
/// verify reported intact packs as damaged here, exit 3). The host retires an instance once
/// it has grown past half its share of the cap, so the round trip passes at the default cap.
#[test]
fn python_backend_round_trip() {
    round_trip(Language::Python);
}
