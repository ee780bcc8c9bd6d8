//! The release bundle made by `dist/make.sh`, unpacked elsewhere: checksums hold and cover
//! every file, the binary is stripped and names its commit, the backend components are the
//! ones built, completions and the man page are there when the binary can make them, and the
//! demo backup runs with the unpacked binary.
//!
//! A release build takes longer than the whole suite on a small machine, so the test makes the
//! bundle with the same script from the debug build (`DIST_PROFILE=debug`); a release bundle
//! is tested with `CAIRN_DIST_TARBALL=$(dist/make.sh | tail -1) cargo test --test dist`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::test_plugin;

/// The bundle to test: `CAIRN_DIST_TARBALL` when given (a release bundle), else one made here
/// by the same script from the debug build the tests use (`DIST_PROFILE=debug`), so the
/// README's test command checks the script too.
fn tarball() -> Option<PathBuf> {
    if let Some(t) = std::env::var_os("CAIRN_DIST_TARBALL") {
        return Some(PathBuf::from(t));
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let out = std::env::temp_dir().join(format!("cairn-dist-test-{}", std::process::id()));
    let made = run(Command::new(root.join("dist/make.sh")).arg(&out).env("DIST_PROFILE", "debug"));
    let last = text(&made).lines().last().unwrap_or_default().to_string();
    assert!(last.ends_with(".tar.gz"), "dist/make.sh printed no tarball: {last}");
    Some(PathBuf::from(last))
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed with {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every file below `dir`, relative, sorted.
fn files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn the_unpacked_bundle_checks_out_and_runs_the_demo() {
    let Some(tarball) = tarball() else { return };
    let name = tarball.file_name().unwrap().to_str().unwrap().strip_suffix(".tar.gz").unwrap().to_string();
    run(Command::new("sha256sum")
        .current_dir(tarball.parent().unwrap())
        .args(["--check", "--strict"])
        .arg(format!("{name}.tar.gz.sha256")));

    let place = tempfile::Builder::new().prefix("cairn-dist-").tempdir().unwrap();
    run(Command::new("tar").arg("-xzf").arg(&tarball).arg("-C").arg(place.path()));
    let dir = place.path().join(&name);

    // SHA256SUMS holds and names every other file.
    run(Command::new("sha256sum").current_dir(&dir).args(["--check", "--strict", "SHA256SUMS"]));
    let sums = std::fs::read_to_string(dir.join("SHA256SUMS")).unwrap();
    let mut summed: Vec<String> = sums.lines().map(|l| l.split_once("  ").unwrap().1.to_string()).collect();
    summed.sort();
    let mut all = files(&dir);
    all.retain(|f| f != "SHA256SUMS");
    assert_eq!(summed, all);
    for f in ["bin/cairn", "README.md", "VERSION", "examples/demo.sh", "plugins/s3.wasm"] {
        assert!(all.iter().any(|a| a == f), "{f} missing from the bundle: {all:?}");
    }

    // The binary: stripped (no symbol table), the same version and commit as this build.
    let exe = dir.join("bin/cairn");
    let sections = text(&run(Command::new("readelf").arg("-S").arg(&exe)));
    assert!(!sections.contains(".symtab"), "bin/cairn is not stripped");
    let version = text(&run(Command::new(&exe).arg("--version")));
    let ours = text(&run(Command::new(env!("CARGO_BIN_EXE_cairn")).arg("--version")));
    assert_eq!(version, ours);
    assert!(version.contains(" ("), "{version}");
    assert_eq!(std::fs::read_to_string(dir.join("VERSION")).unwrap(), version);
    for p in ["fs", "s3", "webdav"] {
        let shipped = std::fs::read(dir.join(format!("plugins/{p}.wasm"))).unwrap();
        assert_eq!(shipped, std::fs::read(test_plugin(p)).unwrap(), "plugins/{p}.wasm is not the built {p}");
    }

    // Completions and the man page, when the binary makes them, are what it makes.
    let extras = [
        (vec!["completions", "bash"], "completions/cairn.bash"),
        (vec!["completions", "zsh"], "completions/_cairn"),
        (vec!["completions", "fish"], "completions/cairn.fish"),
        (vec!["man"], "man/man1/cairn.1"),
    ];
    for (args, file) in extras {
        let made = Command::new(&exe).args(&args).output().unwrap();
        if made.status.success() {
            assert_eq!(std::fs::read(dir.join(file)).unwrap(), made.stdout, "{file}");
        } else {
            assert!(!dir.join(file).exists(), "{file} is in the bundle but `cairn {args:?}` fails");
        }
    }

    // The demo backup, run by the unpacked binary from the unpacked folder.
    let demo = place.path().join("demo");
    let out = run(Command::new(dir.join("examples/demo.sh"))
        .current_dir(&dir)
        .env("CAIRN", &exe)
        .env("CAIRN_DEMO", &demo)
        .env_remove("CAIRN_CONFIG"));
    assert!(text(&out).contains("restored copy is identical"), "{}", text(&out));
    assert!(demo.join("repo/config").is_file(), "the demo made no repository");
}
