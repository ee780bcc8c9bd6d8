//! Helpers for the end-to-end tests: a scratch environment with a config file, running the
//! real `cairn` binary, generating source trees, and comparing trees byte for byte and
//! metadata for metadata.
#![allow(dead_code)]

pub mod forge;
pub mod proxy;
pub mod remote;
pub mod servers;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const PASSWORD: &str = "correct horse battery staple";

/// The test-only plugins built by host/build.rs.
pub fn test_plugin(name: &str) -> PathBuf {
    PathBuf::from(env!("CAIRN_TEST_PLUGIN_DIR")).join(format!("cairn_plugin_{name}.wasm"))
}

pub struct Env {
    pub dir: tempfile::TempDir,
    pub src: PathBuf,
    pub repo: PathBuf,
    pub state: PathBuf,
    pub config: PathBuf,
    pub extra_env: Vec<(String, String)>,
}

impl Env {
    /// A scratch folder with `src/`, a repository folder, a state folder, and a config for
    /// the built-in fs backend (plus `extra` TOML appended to the `[backup]` table).
    pub fn new() -> Env {
        Env::with_backup_toml("")
    }

    pub fn with_backup_toml(extra: &str) -> Env {
        let dir = tempfile::Builder::new().prefix("cairn-e2e-").tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(&src).unwrap();
        let env = Env {
            src: src.clone(),
            repo: dir.path().join("repo"),
            state: dir.path().join("state"),
            config: dir.path().join("cairn.toml"),
            dir,
            extra_env: Vec::new(),
        };
        env.write_config(&format!(
            "[repository]\nbackend = \"fs\"\noptions = {{ path = {:?} }}\npassword_env = \"CAIRN_TEST_PASSWORD\"\n\n\
             [backup]\nsources = [{:?}]\n{extra}\n\n[state]\ndir = {:?}\n",
            env.repo, env.src, env.state
        ));
        env
    }

    pub fn write_config(&self, text: &str) {
        std::fs::write(&self.config, text).unwrap();
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// A command for the cairn binary with this env's config and password.
    pub fn cmd(&self, args: &[&str]) -> Command {
        self.cmd_of(Path::new(env!("CARGO_BIN_EXE_cairn")), args)
    }

    /// The same, run by another cairn binary (one installed by the test, or unpacked).
    pub fn cmd_of(&self, exe: &Path, args: &[&str]) -> Command {
        let mut c = Command::new(exe);
        c.arg("--config").arg(&self.config).args(args);
        c.env("CAIRN_TEST_PASSWORD", PASSWORD);
        c.env_remove("CAIRN_CONFIG");
        // One compiled-component cache for the whole test run: compile each plugin once.
        c.env("CAIRN_CACHE_DIR", Path::new(env!("CARGO_TARGET_TMPDIR")).join("cairn-cache"));
        c.env("CAIRN_RETRY_BASE_MS", "20");
        for (k, v) in &self.extra_env {
            c.env(k, v);
        }
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run cairn")
    }

    /// Runs and expects success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "cairn {args:?} failed with {:?}\nstdout: {}\nstderr: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs with `--json` and expects success; returns the parsed output.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let out = self.ok(&a);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("bad JSON from {args:?}: {e}\n{out}"))
    }

    /// Runs and expects failure; returns (exit code, stderr).
    pub fn fails(&self, args: &[&str]) -> (i32, String) {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "cairn {args:?} should have failed\nstdout: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
    }

    /// Where `restore --target T` puts this env's source folder.
    pub fn restored_src(&self, target: &Path) -> PathBuf {
        target.join(self.src.strip_prefix("/").unwrap())
    }
}

/// Deterministic bytes (xorshift), so trees are reproducible.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E3779B97F4A7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next().to_le_bytes());
        }
        v.truncate(n);
        v
    }
    /// Text-like, compressible content.
    pub fn text(&mut self, n: usize) -> Vec<u8> {
        const WORDS: [&str; 12] = [
            "cairn", "backup", "chunk", "pack", "tree", "blob", "the", "of", "journal", "snapshot", "\n",
            "restore",
        ];
        let mut v = Vec::with_capacity(n + 16);
        while v.len() < n {
            v.extend_from_slice(WORDS[self.below(WORDS.len() as u64) as usize].as_bytes());
            v.push(b' ');
        }
        v.truncate(n);
        v
    }
}

pub fn set_mtime(path: &Path, secs: i64, nanos: u32) {
    let t = filetime::FileTime::from_unix_time(secs, nanos);
    filetime::set_symlink_file_times(path, t, t).unwrap();
}

/// Writes a file with the given content, mode and mtime.
pub fn write_file(path: &Path, content: &[u8], mode: u32, mtime: i64) {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).unwrap();
    }
    std::fs::write(path, content).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    set_mtime(path, mtime, 123_456_789);
}

/// Sets every folder's mtime below (and including) `root`, deepest first, so folder times
/// are part of what a restore must reproduce.
pub fn fix_dir_times(root: &Path, secs: i64) {
    let mut dirs = Vec::new();
    collect_dirs(root, &mut dirs);
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for d in dirs {
        set_mtime(&d, secs, 987_654_321);
    }
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    out.push(dir.to_path_buf());
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            collect_dirs(&e.path(), out);
        }
    }
}

/// Compares two trees: types, names, file bytes, symlink targets, mode, owner and mtime
/// (nanoseconds) of every entry, folders included. Returns the differences.
pub fn diff_trees(a: &Path, b: &Path) -> Vec<String> {
    let mut diffs = Vec::new();
    compare(a, b, Path::new(""), &mut diffs);
    diffs
}

fn compare(a: &Path, b: &Path, rel: &Path, diffs: &mut Vec<String>) {
    let (ma, mb) = match (std::fs::symlink_metadata(a), std::fs::symlink_metadata(b)) {
        (Ok(x), Ok(y)) => (x, y),
        (Ok(_), Err(_)) => return diffs.push(format!("{}: missing in restore", rel.display())),
        (Err(_), Ok(_)) => return diffs.push(format!("{}: extra in restore", rel.display())),
        (Err(_), Err(_)) => return,
    };
    let ta = ma.file_type();
    let tb = mb.file_type();
    if ta.is_dir() != tb.is_dir() || ta.is_file() != tb.is_file() || ta.is_symlink() != tb.is_symlink() {
        return diffs.push(format!("{}: type differs", rel.display()));
    }
    let r = rel.display();
    if !ta.is_symlink() && ma.mode() & 0o7777 != mb.mode() & 0o7777 {
        diffs.push(format!("{r}: mode {:o} vs {:o}", ma.mode() & 0o7777, mb.mode() & 0o7777));
    }
    if (ma.uid(), ma.gid()) != (mb.uid(), mb.gid()) {
        diffs.push(format!("{r}: owner differs"));
    }
    if (ma.mtime(), ma.mtime_nsec()) != (mb.mtime(), mb.mtime_nsec()) {
        diffs.push(format!(
            "{r}: mtime {}.{} vs {}.{}",
            ma.mtime(),
            ma.mtime_nsec(),
            mb.mtime(),
            mb.mtime_nsec()
        ));
    }
    if ta.is_symlink() {
        if std::fs::read_link(a).unwrap() != std::fs::read_link(b).unwrap() {
            diffs.push(format!("{r}: symlink target differs"));
        }
    } else if ta.is_file() {
        if ma.len() != mb.len() {
            diffs.push(format!("{r}: size {} vs {}", ma.len(), mb.len()));
        } else if std::fs::read(a).unwrap() != std::fs::read(b).unwrap() {
            diffs.push(format!("{r}: content differs"));
        }
    } else if ta.is_dir() {
        let names = |p: &Path| {
            let mut v: Vec<_> = std::fs::read_dir(p).unwrap().map(|e| e.unwrap().file_name()).collect();
            v.sort();
            v
        };
        let (na, nb) = (names(a), names(b));
        for n in na.iter().chain(nb.iter().filter(|n| !na.contains(n))) {
            compare(&a.join(n), &b.join(n), &rel.join(n), diffs);
        }
    }
}

/// Every regular file below `dir` with its bytes, for before/after comparisons.
pub fn snapshot_dir(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    if !dir.exists() {
        return out;
    }
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(p);
            } else if ft.is_file() {
                let bytes = std::fs::read(&p).unwrap_or_default();
                out.push((p, bytes));
            }
        }
    }
    out.sort();
    out
}

pub fn os(b: &[u8]) -> &OsStr {
    OsStr::from_bytes(b)
}

/// A realistic mixed tree: `small` text/binary files of up to 16 KiB in nested folders,
/// `medium` random files of the given sizes, and a few duplicates. Returns total bytes.
pub fn gen_dataset(root: &Path, seed: u64, small: usize, medium: &[usize]) -> u64 {
    let mut rng = Rng::new(seed);
    let mut total = 0u64;
    for i in 0..small {
        let dir = root.join(format!("s{}/d{:02}", seed % 1000, i % 37)).join(format!("e{}", i % 5));
        let len = (rng.below(16 << 10) + 1) as usize;
        let content = if i % 3 == 0 { rng.bytes(len) } else { rng.text(len) };
        write_file(&dir.join(format!("f{i}.dat")), &content, 0o644, 1_600_000_000 + i as i64);
        total += len as u64;
    }
    for (i, &len) in medium.iter().enumerate() {
        let content = rng.bytes(len);
        write_file(&root.join(format!("m{}/medium-{i}.bin", seed % 1000)), &content, 0o600, 1_650_000_000);
        total += len as u64;
        if i == 0 {
            // A duplicate: deduplicated, never stored twice.
            write_file(
                &root.join(format!("m{}/copy-of-medium-0.bin", seed % 1000)),
                &content,
                0o600,
                1_650_000_000,
            );
            total += len as u64;
        }
    }
    total
}

/// Reads the journal of the (single) repository under `state`: (object name, state, size).
pub fn journal_objects(state: &Path) -> Vec<(String, String, u64, Option<String>)> {
    let db = find_journal(state);
    let conn = rusqlite::Connection::open(&db).unwrap();
    let mut stmt = conn.prepare("SELECT name, state, size, indexed_by FROM objects ORDER BY name").unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as u64, r.get(3)?)))
        .unwrap()
        .map(|r| r.unwrap())
        .collect()
}

pub fn find_journal(state: &Path) -> PathBuf {
    for e in std::fs::read_dir(state).unwrap() {
        let p = e.unwrap().path().join("journal.sqlite");
        if p.exists() {
            return p;
        }
    }
    panic!("no journal under {}", state.display());
}

/// Objects in a fs repository: (name, size), excluding hidden files (chaos counters).
/// Lock objects (`locks/`) are not listed: they are not data, the journal does not know
/// them, and a killed command leaves its lock until it goes stale.
pub fn repo_objects(repo: &Path) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![repo.to_path_buf()];
    // Polled while a backup runs too: a temporary file listed here may be renamed before it
    // is looked at, and is then skipped.
    let gone = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
    while let Some(d) = stack.pop() {
        let entries = match std::fs::read_dir(&d) {
            Err(e) if gone(&e) => continue,
            r => r.unwrap(),
        };
        for e in entries {
            let e = e.unwrap();
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                stack.push(p);
            } else {
                let len = match e.metadata() {
                    Err(e) if gone(&e) => continue,
                    r => r.unwrap().len(),
                };
                let rel = p.strip_prefix(repo).unwrap().to_string_lossy().into_owned();
                if !rel.starts_with("locks/") {
                    out.push((rel, len));
                }
            }
        }
    }
    out.sort();
    out
}

/// Checks that the repository holds exactly what the journal says: no partial uploads, no
/// object the journal does not know as complete, no recorded object missing, every pack
/// listed by an index.
pub fn assert_repo_matches_journal(repo: &Path, state: &Path) {
    let objects = repo_objects(repo);
    let leftovers: Vec<_> = objects.iter().filter(|(n, _)| n.contains(".cairn-upload-")).collect();
    assert!(leftovers.is_empty(), "partial uploads left in the repository: {leftovers:?}");
    let journal = journal_objects(state);
    let known: std::collections::HashMap<&str, (&str, u64, &Option<String>)> =
        journal.iter().map(|(n, s, z, i)| (n.as_str(), (s.as_str(), *z, i))).collect();
    for (name, size) in objects.iter().filter(|(n, _)| !n.rsplit('/').next().unwrap().starts_with('.')) {
        let Some((st, sz, indexed)) = known.get(name.as_str()) else {
            panic!("orphan object {name} ({size} bytes): not in the journal");
        };
        assert!(matches!(*st, "uploaded" | "verified"), "{name} is {st} in the journal");
        if name != "config" {
            assert_eq!(sz, size, "{name}: journal size {sz}, stored {size}");
        }
        if name.starts_with("data/") {
            assert!(indexed.is_some(), "pack {name} is not listed by any index");
        }
    }
    let stored: std::collections::HashSet<&str> = objects.iter().map(|(n, _)| n.as_str()).collect();
    for (name, st, _, _) in &journal {
        assert!(stored.contains(name.as_str()), "journal has {name} ({st}) but the repository does not");
    }
}

/// Total bytes of the packs in a fs repository.
pub fn pack_bytes(repo: &Path) -> u64 {
    repo_objects(repo).iter().filter(|(n, _)| n.starts_with("data/")).map(|(_, s)| s).sum()
}
