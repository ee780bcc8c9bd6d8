//! An interrupted backup costs at most one checkpoint interval, measured from outside the
//! process: the real `cairn backup` runs under `strace`, every read of a source file is
//! mapped to the byte range it covered, the process is killed with SIGKILL once a chosen
//! share of the source has been read (decided by that count, never by time), and the next
//! run must read again at most one checkpoint interval plus one chunk per worker of what
//! earlier runs had read.
//!
//! `CAIRN_RESUME_SEED` replays a run; `CAIRN_RESUME_BIG=1` makes the large file 2 GiB;
//! `CAIRN_RESUME_DUMP=DIR` keeps the strace output of every run there.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;

const MIB: u64 = 1 << 20;
/// `[checkpoint] interval_bytes` of these tests.
const INTERVAL: u64 = 4 * MIB;
const THREADS: u64 = 2;
/// `init --chunk-size 256KiB`: chunks of at most 1 MiB.
const MAX_CHUNK: u64 = MIB;
/// What a resumed run may read again, the bound: one interval plus one chunk per
/// worker. (cairn holds reads to at most the larger of the two: reads wait at a gate while
/// more than an interval of what was read is not durable, counting the chunker's lookahead.)
const ALLOWED: u64 = INTERVAL + THREADS * MAX_CHUNK;

fn config(extra: &str) -> String {
    format!(
        "threads = {THREADS}\npack_size = \"1MiB\"\n{extra}\n\n[checkpoint]\ninterval_secs = 3600\ninterval_bytes = \"{}MiB\"",
        INTERVAL / MIB
    )
}

fn strace() -> PathBuf {
    for dir in ["/usr/bin", "/bin", "/usr/local/bin"] {
        let p = Path::new(dir).join("strace");
        if p.exists() {
            return p;
        }
    }
    panic!("these tests count reads with strace, which is not installed: apt-get install strace");
}

/// Sorted, disjoint byte ranges of one file.
#[derive(Default, Clone)]
struct Ranges(Vec<(u64, u64)>);

impl Ranges {
    fn add(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        self.0.push((start, end));
        self.0.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(self.0.len());
        for &(s, e) in &self.0 {
            match merged.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        self.0 = merged;
    }

    fn total(&self) -> u64 {
        self.0.iter().map(|(s, e)| e - s).sum()
    }

    fn overlap(&self, other: &Ranges) -> u64 {
        let mut n = 0;
        for &(s, e) in &self.0 {
            for &(os, oe) in &other.0 {
                let (a, b) = (s.max(os), e.min(oe));
                if a < b {
                    n += b - a;
                }
            }
        }
        n
    }
}

/// Byte ranges of source files read, per file.
#[derive(Default, Clone)]
struct Reads(HashMap<String, Ranges>);

impl Reads {
    fn total(&self) -> u64 {
        self.0.values().map(Ranges::total).sum()
    }

    /// Bytes both read here and in `earlier`.
    fn overlap(&self, earlier: &Reads) -> u64 {
        self.0.iter().map(|(f, r)| earlier.0.get(f).map_or(0, |e| r.overlap(e))).sum()
    }

    fn merge(&mut self, other: &Reads) {
        for (f, r) in &other.0 {
            let mine = self.0.entry(f.clone()).or_default();
            for &(s, e) in &r.0 {
                mine.add(s, e);
            }
        }
    }

    fn of(&self, file: &str) -> u64 {
        self.0.get(file).map_or(0, Ranges::total)
    }
}

/// Turns strace lines (`-f -y`) into byte ranges of files under `src`: tracks each file
/// descriptor's position through openat, read, lseek; pread64 carries its own offset.
struct Parser {
    src: String,
    /// Calls split by another thread's line: pid → text before `<unfinished ...>`.
    pending: HashMap<String, String>,
    /// fd → (file, position), for descriptors of source files. The file is kept with the
    /// position: a descriptor number is reused for the next file opened, and a read whose
    /// `-y` path is not the file recorded for its descriptor starts that file at 0 (its
    /// open was not seen), never at the old file's position.
    pos: HashMap<String, (String, u64)>,
    reads: Reads,
    killed: bool,
    /// Bytes of reads strace named a file too small to hold them (not counted).
    misnamed: u64,
}

impl Parser {
    fn new(src: &Path) -> Parser {
        let src = format!("{}/", src.display());
        Parser {
            src,
            pending: HashMap::new(),
            pos: HashMap::new(),
            reads: Reads::default(),
            killed: false,
            misnamed: 0,
        }
    }

    /// Returns whether the line recorded a read of a source file.
    fn line(&mut self, line: &str) -> bool {
        let Some((pid, rest)) = line.split_once(' ') else { return false };
        let rest = rest.trim_start();
        if rest.starts_with("+++ killed by SIGKILL") {
            self.killed = true;
        }
        if let Some(head) = rest.strip_suffix("<unfinished ...>") {
            self.pending.insert(pid.to_string(), head.to_string());
            return false;
        }
        let call = match rest.strip_prefix("<... ") {
            Some(resumed) => {
                let Some((_, tail)) = resumed.split_once("resumed>") else { return false };
                let Some(head) = self.pending.remove(pid) else { return false };
                format!("{head}{tail}")
            }
            None => rest.to_string(),
        };
        let before = self.reads.total();
        self.call(&call);
        self.reads.total() != before
    }

    fn call(&mut self, call: &str) {
        let Some((name, args)) = call.split_once('(') else { return };
        // `args) = result`, with padding before `=` on resumed lines.
        let Some((args, result)) = args.rsplit_once(" = ") else { return };
        let Some(args) = args.trim_end().strip_suffix(')') else { return };
        let result = result.split_whitespace().next().unwrap_or("");
        if name == "openat" {
            // `= 16</path>`
            if let Some((fd, path)) = result.split_once('<') {
                let path = path.trim_end_matches('>');
                match path.strip_prefix(&self.src) {
                    Some(file) => self.pos.insert(fd.to_string(), (file.to_string(), 0)),
                    None => self.pos.remove(fd),
                };
            }
            return;
        }
        // First argument: `16</path>`.
        let Some((fd_arg, more)) = args.split_once(", ") else { return };
        let Some((fd, path)) = fd_arg.split_once('<') else { return };
        let path = path.trim_end_matches('>');
        if !path.starts_with(&self.src) {
            return;
        }
        let Ok(n) = result.parse::<i64>() else { return };
        if n < 0 {
            return;
        }
        let n = n as u64;
        let file = path[self.src.len()..].to_string();
        match name {
            "read" => {
                let entry = self.pos.entry(fd.to_string()).or_insert_with(|| (file.clone(), 0));
                if entry.0 != file {
                    *entry = (file.clone(), 0);
                }
                self.reads.0.entry(file).or_default().add(entry.1, entry.1 + n);
                entry.1 += n;
            }
            "pread64" => {
                let offset = more.rsplit(", ").next().and_then(|o| o.parse::<u64>().ok());
                let offset = offset.unwrap_or_else(|| panic!("cannot parse pread64 offset: {call}"));
                // strace's `-y` names the file by looking the descriptor up in /proc, apart from
                // the call itself: with threads opening and closing files it can name the file
                // the number belonged to a moment before (seen once: 1 MiB "read" from a 17 KB
                // file). A read that the named file cannot hold is not counted for it.
                let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(u64::MAX);
                if offset + n > size {
                    self.misnamed += n;
                    return;
                }
                self.reads.0.entry(file).or_default().add(offset, offset + n);
            }
            "lseek" => {
                self.pos.insert(fd.to_string(), (file, n));
            }
            "readv" | "preadv" => panic!("the reader uses {name}: teach this parser: {call}"),
            _ => {}
        }
    }
}

/// One `cairn backup` under strace. With `kill_at`, SIGKILLs it as soon as the source
/// bytes read (over `earlier` runs and this one) reach that many; returns what this run
/// read and whether it was killed.
fn traced_backup(env: &Env, earlier: &Reads, kill_at: Option<u64>) -> (Reads, bool) {
    let fifo = env.path(&format!("trace-{}.fifo", rand_suffix()));
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
    let cairn = env.cmd(&["backup"]);
    let mut cmd = Command::new(strace());
    cmd.args(["-f", "-qq", "-y", "-s", "0", "--seccomp-bpf"])
        .args(["-e", "trace=openat,read,pread64,readv,preadv,lseek", "-o"])
        .arg(&fifo)
        .arg(cairn.get_program())
        .args(cairn.get_args());
    for (k, v) in cairn.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let strace_pid = child.id();
    let mut stderr = child.stderr.take().unwrap();
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut s).unwrap();
        s
    });
    let mut parser = Parser::new(&env.src);
    let mut sent_kill = false;
    let trace = BufReader::new(std::fs::File::open(&fifo).unwrap());
    let mut dump = std::env::var("CAIRN_RESUME_DUMP")
        .ok()
        .map(|d| std::fs::File::create(format!("{d}/trace-{}.txt", rand_suffix())).unwrap());
    for line in trace.lines() {
        let line = line.unwrap();
        if let Some(f) = dump.as_mut() {
            use std::io::Write;
            writeln!(f, "{line}").unwrap();
        }
        let read = parser.line(&line);
        if let Some(limit) = kill_at
            && read
            && !sent_kill
        {
            let mut union = earlier.clone();
            union.merge(&parser.reads);
            if union.total() >= limit {
                let children =
                    std::fs::read_to_string(format!("/proc/{strace_pid}/task/{strace_pid}/children"))
                        .unwrap();
                let pid: i32 =
                    children.split_whitespace().next().expect("cairn runs under strace").parse().unwrap();
                // SAFETY: signalling our own grandchild.
                assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
                sent_kill = true;
            }
        }
    }
    let status = child.wait().unwrap();
    let err = err.join().unwrap();
    if parser.misnamed > 0 {
        println!("{} bytes of reads named a file too small to hold them (not counted)", parser.misnamed);
    }
    if kill_at.is_none() || !parser.killed {
        assert!(status.success(), "cairn backup under strace failed: {status:?}\n{err}");
    }
    (parser.reads, parser.killed)
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn seed() -> u64 {
    let seed = std::env::var("CAIRN_RESUME_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    println!("resume test seed {seed} (replay with CAIRN_RESUME_SEED={seed})");
    seed
}

/// Large files first and last in walk order, many small ones between, folders nested.
fn dataset(root: &Path, rng: &mut Rng) -> u64 {
    let mut total = 0;
    let mut put = |rel: String, len: usize, rng: &mut Rng| {
        let content = if len.is_multiple_of(3) { rng.text(len) } else { rng.bytes(len) };
        write_file(&root.join(rel), &content, 0o644, 1_700_000_000 + len as i64);
        total += len as u64;
    };
    put("a-first/large.img".into(), (12 * MIB + rng.below(MIB)) as usize, rng);
    for i in 0..400 {
        let len = (rng.below(48 << 10) + 1) as usize;
        put(format!("b-small/d{:02}/f{i}", i % 23), len, rng);
    }
    for i in 0..8 {
        let len = (rng.below(2 * MIB) + 300_000) as usize;
        put(format!("c-medium/m{i}.bin"), len, rng);
    }
    put("d-last/large.img".into(), (8 * MIB + rng.below(MIB)) as usize, rng);
    fix_dir_times(root, 1_700_000_000);
    total
}

/// Files not read whole by any run: (path, bytes read, size).
fn unread(src: &Path, reads: &Reads) -> Vec<(String, u64, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let meta = e.metadata().unwrap();
            if meta.is_dir() {
                stack.push(e.path());
            } else {
                let rel = e.path().strip_prefix(src).unwrap().to_str().unwrap().to_string();
                let read = reads.of(&rel);
                if read != meta.len() {
                    out.push((rel, read, meta.len()));
                }
            }
        }
    }
    out.sort();
    out
}

/// The largest partial snapshot restores, every file in it is its source file byte for byte
/// (the source does not change in these tests), and its summary counts exactly those files.
fn partial_snapshot_restores_what_it_says_it_covers(env: &Env) {
    let snaps = env.json(&["snapshots"]);
    // Partial snapshots of one run share its start time: take the one whose tree grew most.
    let partial = snaps
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["partial"] == true)
        .max_by_key(|s| s["files"].as_u64().unwrap())
        .cloned();
    let partial = partial.expect("the killed runs wrote partial snapshots");
    let target = env.path("partial-restore");
    env.ok(&["restore", partial["id"].as_str().unwrap(), "--target", target.to_str().unwrap()]);
    let restored = env.restored_src(&target);
    let (mut files, mut bytes) = (0u64, 0u64);
    let mut stack: Vec<PathBuf> = restored.exists().then(|| restored.clone()).into_iter().collect();
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
                continue;
            }
            let rel = e.path().strip_prefix(&restored).unwrap().to_path_buf();
            let got = std::fs::read(e.path()).unwrap();
            assert!(
                got == std::fs::read(env.src.join(&rel)).unwrap(),
                "{} differs from its source",
                rel.display()
            );
            files += 1;
            bytes += got.len() as u64;
        }
    }
    println!("the partial snapshot holds {files} files, {bytes} bytes");
    assert_eq!((files, bytes), (partial["files"].as_u64().unwrap(), partial["bytes"].as_u64().unwrap()));
    std::fs::remove_dir_all(&target).unwrap();
}

fn restores_identical_and_verifies(env: &Env) {
    let target = env.path("restore");
    env.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    let diffs = diff_trees(&env.src, &env.restored_src(&target));
    assert!(diffs.is_empty(), "the restore differs from the source:\n{}", diffs.join("\n"));
    env.ok(&["verify", "--read-data"]);
}

/// One chain: kill at `kills` random shares (20-90%, rising) of the source bytes read, then
/// let a run finish. Every run after the first may read again at most [`ALLOWED`].
fn kill_chain(rng: &mut Rng, kills: usize) {
    let env = Env::with_backup_toml(&config(""));
    let total = dataset(&env.src, rng);
    env.ok(&["init", "--chunk-size", "256KiB"]);
    let mut points: Vec<u64> = (0..kills).map(|_| 20 + rng.below(71)).collect();
    points.sort_unstable();
    println!(
        "source {} MiB; kill at {points:?}% of it read; allowed to read again {} MiB",
        total / MIB,
        ALLOWED / MIB
    );

    let mut earlier = Reads::default();
    for (runs, percent) in points.into_iter().map(Some).chain([None]).enumerate() {
        let (reads, killed) = traced_backup(&env, &earlier, percent.map(|p| total * p / 100));
        let again = reads.overlap(&earlier);
        println!(
            "run {runs}: killed at {percent:?}%: {killed}; read {:.1} MiB, of it {:.2} MiB read before",
            reads.total() as f64 / MIB as f64,
            again as f64 / MIB as f64
        );
        assert_eq!(killed, percent.is_some(), "run {runs} was to be killed at {percent:?}%");
        assert!(
            again <= ALLOWED,
            "run {runs} read {again} bytes again that an interrupted run had read (allowed {ALLOWED})"
        );
        earlier.merge(&reads);
        if runs + 1 == kills {
            // The last kill, when the partial snapshot's tree has grown the most.
            partial_snapshot_restores_what_it_says_it_covers(&env);
        }
    }
    let unread = unread(&env.src, &earlier);
    assert!(unread.is_empty(), "source bytes never read by any run (file, bytes read, size): {unread:?}");
    assert_eq!(earlier.total(), total);
    restores_identical_and_verifies(&env);
}

#[test]
fn kills_decided_by_bytes_read_cost_at_most_one_interval_each() {
    let mut rng = Rng::new(seed());
    // Two chains of five kills: ten kills, each resumed run measured.
    kill_chain(&mut rng, 5);
    kill_chain(&mut rng, 5);
}

#[test]
fn a_large_file_killed_at_70_percent_is_read_on_from_its_last_checkpoint() {
    let big = std::env::var("CAIRN_RESUME_BIG").is_ok_and(|v| v == "1");
    let size: u64 = if big { 2 << 30 } else { 64 * MIB };
    let mut rng = Rng::new(seed());
    let env = Env::with_backup_toml(&config(""));
    let name = "disk.img";
    {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(env.src.join(name)).unwrap());
        let mut left = size;
        while left > 0 {
            let n = left.min(MIB);
            f.write_all(&rng.bytes(n as usize)).unwrap();
            left -= n;
        }
    }
    env.ok(&["init", "--chunk-size", "256KiB"]);
    let (first, killed) = traced_backup(&env, &Reads::default(), Some(size * 70 / 100));
    assert!(killed, "the first run was to be killed at 70%");
    let (second, killed) = traced_backup(&env, &first, None);
    assert!(!killed);
    let mut all = first.clone();
    all.merge(&second);
    assert_eq!(all.of(name), size, "every byte of the file was read");
    let (read1, read2, again) = (first.of(name), second.of(name), second.overlap(&first));
    println!(
        "{} MiB file: the killed run read {} MiB, the resumed run {} MiB, of it {} MiB again",
        size / MIB,
        read1 / MIB,
        read2 / MIB,
        again / MIB
    );
    assert!(read1 >= size * 70 / 100);
    assert!(read2 <= size - read1 + ALLOWED, "the resumed run read {read2} bytes of {size}");
    assert!(again <= ALLOWED, "read {again} bytes again (allowed {ALLOWED})");
    restores_identical_and_verifies(&env);
}

#[test]
fn a_file_changed_since_the_kill_is_read_from_its_start() {
    let mut rng = Rng::new(seed());
    let env = Env::with_backup_toml(&config(""));
    let (name, size) = ("changing.img", 24 * MIB as usize);
    let path = env.src.join(name);
    let mut content = rng.bytes(size);
    write_file(&path, &content, 0o644, 1_700_000_000);
    env.ok(&["init", "--chunk-size", "256KiB"]);
    let (first, killed) = traced_backup(&env, &Reads::default(), Some(size as u64 / 2));
    assert!(killed, "the first run was to be killed at 50%");
    // Same size, new bytes at the start (inside the durable prefix), new mtime.
    content[..4096].copy_from_slice(&rng.bytes(4096));
    write_file(&path, &content, 0o644, 1_700_000_100);
    let (second, killed) = traced_backup(&env, &first, None);
    assert!(!killed);
    println!(
        "killed run read {} MiB; the run after the change read {} MiB",
        first.of(name) / MIB,
        second.of(name) / MIB
    );
    assert_eq!(second.0[name].0, vec![(0, size as u64)], "read whole, from its first byte");
    // The restore holds the new bytes: the old prefix was not reused.
    restores_identical_and_verifies(&env);
}
