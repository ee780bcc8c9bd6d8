//! A test-only backend: the fs backend, plus faults chosen by options.
//!
//! Options (besides the fs backend's `path` and `fsync`):
//! - `escape = "/some/host/file"`: `open` first tries to read that file, which lies outside
//!   every grant. If the sandbox lets it through, `open` succeeds as if nothing happened (so a
//!   test expecting the denial fails); otherwise `open` fails with the error it saw.
//! - `faults = "CALL[#N|%K]:ACTION,..."`: on the Nth call (1-based; `%K`: every Kth call;
//!   every call when both are left out) of CALL (`open`, `list`, `stat`, `read`, `start-upload`,
//!   `write`, `finish`, `delete`, `list-incomplete`, `abort-incomplete`), do ACTION:
//!   `spin` (loop forever), `alloc` (allocate without bound), `trap` (panic), `hang` (sleep
//!   for an hour), `transient` / `permanent` (return that kind of error), `truncate` (finish:
//!   store half the object and report success), `hide` (list: omit every other object),
//!   `forge` (read of a pack under `data/`: flip the bytes returned), `badnames` (list,
//!   list-incomplete: add names cairn never writes, such as `../../x` and names with control
//!   characters, to the answer), `lose-reply` (finish: store the object, then report a
//!   transient error, as if the answer was lost), `lose-reply-garbled` (the same, but the
//!   stored object's bytes are flipped: another object now holds the name).
//!   Hostile answers, to check that the host bounds what it accepts: `cycle` (list: cursors
//!   that go A -> B -> A), `endless` (list: full pages of made-up objects with a fresh cursor
//!   every time), `flood` (list: a page ten times larger than `max`; read of a pack under
//!   `data/` from a nonzero offset, so whole tree packs still arrive and a restore gets to
//!   its parallel data reads: ~120 MiB whatever `len` was), `huge` (stat: claims 4 GiB),
//!   `leak` (any call: keep 4 MiB allocated for ever, then carry on, like a guest runtime
//!   that never frees a call's buffers).
//! - `log = "1"`: append every `start-upload`, `finish`, `delete` and `abort-incomplete`
//!   (with its name, Debug-quoted) to a hidden file `.chaos-log-<random>` in the repository
//!   folder, one file per instance (instances run in parallel; one file each keeps lines whole).
//!
//! Calls are counted across instances and processes, in hidden files `.chaos-count-CALL` (and
//! one `.chaos-count-CALL.N` marker per call) in the repository folder (the fs backend never
//! lists hidden names), so "the 3rd write" means the 3rd write this repository has seen since
//! the counters were last removed.

#[path = "../../fs/src/store.rs"]
mod store;

use std::cell::RefCell;

use cairn_plugin_sdk::{
    Capabilities, Error, Guest, GuestUpload, IncompleteUpload, ListPage, ObjectInfo, OptionSpec, PluginInfo,
    Upload,
};
use store::{FsStore, FsUpload};

#[derive(Clone, Copy, PartialEq, Debug)]
enum Action {
    Spin,
    Alloc,
    Trap,
    Hang,
    Transient,
    Permanent,
    Truncate,
    Hide,
    Forge,
    BadNames,
    LoseReply,
    LoseReplyGarbled,
    Cycle,
    Endless,
    Flood,
    Huge,
    Leak,
}

/// What `badnames` adds to listings: path tricks, an absolute path, and names that would
/// act on a terminal if printed raw.
const BAD_NAMES: &[&str] = &[
    "../../x",
    "/etc/passwd",
    "data/../../y",
    "data/ab/../../../z",
    "keys/\x1b[31mred",
    "index/\nfake line",
    "snapshots/\u{202e}gpj.exe",
];

/// What `leak` keeps per call.
const LEAK_BYTES: usize = 4 << 20;

/// What `read:flood` answers: ~120 MiB, under the default 256 MiB memory cap.
const FLOOD_BYTES: usize = 120 << 20;

/// Which calls of its kind a fault applies to (counted across instances).
#[derive(Clone, Copy)]
enum When {
    Always,
    /// Only the Nth call.
    Nth(u64),
    /// Every Kth call (K, 2K, ...).
    Every(u64),
}

impl When {
    fn applies(self, n: u64) -> bool {
        match self {
            When::Always => true,
            When::Nth(k) => n == k,
            When::Every(k) => n.is_multiple_of(k),
        }
    }
}

struct Fault {
    call: String,
    when: When,
    action: Action,
}

#[derive(Default)]
struct State {
    store: Option<FsStore>,
    faults: Vec<Fault>,
    path: String,
    /// This instance's log file, when the `log` option is on.
    log: Option<String>,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
}

fn parse_faults(spec: &str) -> Result<Vec<Fault>, Error> {
    let mut out = Vec::new();
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let bad = || Error::InvalidConfig(format!("bad fault {item:?}"));
        let (target, action) = item.split_once(':').ok_or_else(bad)?;
        let number = |n: &str| n.parse::<u64>().ok().filter(|&n| n > 0).ok_or_else(bad);
        let (call, when) = if let Some((c, n)) = target.split_once('#') {
            (c, When::Nth(number(n)?))
        } else if let Some((c, k)) = target.split_once('%') {
            (c, When::Every(number(k)?))
        } else {
            (target, When::Always)
        };
        let action = match action {
            "spin" => Action::Spin,
            "alloc" => Action::Alloc,
            "trap" => Action::Trap,
            "hang" => Action::Hang,
            "transient" => Action::Transient,
            "permanent" => Action::Permanent,
            "truncate" => Action::Truncate,
            "hide" => Action::Hide,
            "forge" => Action::Forge,
            "badnames" => Action::BadNames,
            "lose-reply" => Action::LoseReply,
            "lose-reply-garbled" => Action::LoseReplyGarbled,
            "cycle" => Action::Cycle,
            "endless" => Action::Endless,
            "flood" => Action::Flood,
            "huge" => Action::Huge,
            "leak" => Action::Leak,
            _ => return Err(bad()),
        };
        out.push(Fault { call: call.to_string(), when, action });
    }
    Ok(out)
}

/// Bumps the shared counter of `call` and returns its new value. Instances run in parallel,
/// so each number is claimed by creating the marker file `.chaos-count-CALL.N` exclusively:
/// two calls never get the same number (a read-then-write counter let two parallel
/// `finish#1` calls both fault). `.chaos-count-CALL` holds the highest number claimed so far,
/// as a starting hint and for tests to read.
fn count(path: &str, call: &str) -> u64 {
    if path.is_empty() {
        return 1;
    }
    let hint = format!("{path}/.chaos-count-{call}");
    let read_hint =
        || std::fs::read_to_string(&hint).ok().and_then(|s| s.trim().parse::<u64>().ok()).unwrap_or(0);
    let mut n = read_hint() + 1;
    loop {
        match std::fs::OpenOptions::new().write(true).create_new(true).open(format!("{hint}.{n}")) {
            Ok(_) => break,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => n += 1,
            // Counting must not depend on the folder being writable; fall back to the hint.
            Err(_) => break,
        }
    }
    if n > read_hint() {
        let _ = std::fs::write(&hint, n.to_string());
    }
    n
}

/// Appends `call name` to `.chaos-log` when the `log` option is on.
fn log(call: &str, name: &str) {
    STATE.with(|s| {
        let s = s.borrow();
        let Some(log) = &s.log else { return };
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(log) {
            let _ = f.write_all(format!("{call} {name:?}\n").as_bytes());
        }
    })
}

/// Counts the call and returns the fault that applies to it, if any. Faults that replace
/// the call's behaviour entirely (spin, alloc, trap, hang, errors) happen right here.
fn enter(call: &str) -> Result<Option<Action>, Error> {
    let action = STATE.with(|s| {
        let s = s.borrow();
        if !s.faults.iter().any(|f| f.call == call) {
            return None;
        }
        let n = count(&s.path, call);
        s.faults.iter().find(|f| f.call == call && f.when.applies(n)).map(|f| f.action)
    });
    match action {
        Some(Action::Spin) => {
            let mut i: u64 = 0;
            loop {
                i = std::hint::black_box(i.wrapping_add(1));
            }
        }
        Some(Action::Alloc) => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![0xA5; 1 << 20]);
                std::hint::black_box(&hoard);
            }
        }
        Some(Action::Trap) => panic!("chaos: deliberate trap in {call}"),
        Some(Action::Hang) => {
            std::thread::sleep(std::time::Duration::from_secs(3600));
            Err(Error::Transient(format!("chaos: {call} hung")))
        }
        Some(Action::Transient) => Err(Error::Transient(format!("chaos: transient fault in {call}"))),
        Some(Action::Permanent) => Err(Error::Other(format!("chaos: permanent fault in {call}"))),
        Some(Action::Leak) => {
            // Like a guest whose runtime never frees a call's buffers: 4 MiB kept per call.
            std::hint::black_box(Vec::leak(vec![0x5Au8; LEAK_BYTES]));
            Ok(None)
        }
        other => Ok(other),
    }
}

fn with_store<T>(f: impl FnOnce(&FsStore) -> Result<T, Error>) -> Result<T, Error> {
    STATE.with(|s| match s.borrow().store.as_ref() {
        Some(store) => f(store),
        None => Err(Error::Other("open was not called".into())),
    })
}

struct Chaos;

/// An upload that may be told to lie about how much it stored.
pub struct ChaosUpload {
    inner: FsUpload,
    truncate_to: RefCell<Option<u64>>,
    name: String,
}

impl Guest for Chaos {
    type Upload = ChaosUpload;

    fn describe() -> PluginInfo {
        let opt = |name: &str, required, help: &str| OptionSpec {
            name: name.into(),
            required,
            secret: false,
            help: help.into(),
            default_value: None,
        };
        PluginInfo {
            name: "chaos".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Test-only: the fs backend with injected faults".into(),
            options: vec![
                opt("path", true, "Repository folder"),
                opt("fsync", false, "Sync objects before publishing them"),
                opt("escape", false, "A host file to try to read, outside every grant"),
                opt("faults", false, "CALL[#N]:ACTION,... (see the crate docs)"),
                opt("log", false, "1: log uploads and deletes to .chaos-log"),
            ],
        }
    }

    fn open(options: Vec<(String, String)>) -> Result<Capabilities, Error> {
        let faults = parse_faults(cairn_plugin_sdk::option(&options, "faults").unwrap_or(""))?;
        let path = cairn_plugin_sdk::option(&options, "path").unwrap_or("").to_string();
        let log = (cairn_plugin_sdk::option(&options, "log") == Some("1") && !path.is_empty()).then(|| {
            // RandomState is seeded from wasi:random: a name no other instance picks.
            use std::hash::{BuildHasher, Hasher};
            let id = std::collections::hash_map::RandomState::new().build_hasher().finish();
            format!("{path}/.chaos-log-{id:016x}")
        });
        STATE.with(|s| {
            let mut s = s.borrow_mut();
            s.faults = faults;
            s.path = path;
            s.log = log;
        });
        enter("open")?;
        if let Some(target) = cairn_plugin_sdk::option(&options, "escape")
            && let Err(e) = std::fs::read(target)
        {
            return Err(Error::PermissionDenied(format!("chaos: could not read {target}: {e}")));
        }
        let (store, caps) = FsStore::open(&options)?;
        STATE.with(|s| s.borrow_mut().store = Some(store));
        Ok(caps)
    }

    fn list(prefix: String, cursor: Option<String>, max: u32) -> Result<ListPage, Error> {
        let action = enter("list")?;
        match action {
            Some(Action::Cycle) => {
                let mut page = with_store(|s| s.list(&prefix, None, max))?;
                page.next_cursor = Some(if cursor.as_deref() == Some("A") { "B" } else { "A" }.into());
                return Ok(page);
            }
            Some(Action::Endless) => {
                let n: u64 =
                    cursor.as_deref().and_then(|c| c.strip_prefix("endless-")?.parse().ok()).unwrap_or(0);
                let objects = (0..max as u64)
                    .map(|i| ObjectInfo { name: format!("{prefix}{n:032x}{i:032x}"), size: 1 })
                    .collect();
                return Ok(ListPage { objects, next_cursor: Some(format!("endless-{}", n + 1)) });
            }
            Some(Action::Flood) => {
                let objects = (0..max as u64 * 10)
                    .map(|i| ObjectInfo { name: format!("{prefix}{i:064x}"), size: 1 })
                    .collect();
                return Ok(ListPage { objects, next_cursor: None });
            }
            _ => {}
        }
        let mut page = with_store(|s| s.list(&prefix, cursor.as_deref(), max))?;
        if action == Some(Action::Hide) {
            let mut keep = false;
            page.objects.retain(|_| {
                keep = !keep;
                keep
            });
        }
        if action == Some(Action::BadNames) && cursor.is_none() {
            let bad = BAD_NAMES.iter().filter(|n| n.starts_with(prefix.as_str()));
            page.objects.extend(bad.map(|n| ObjectInfo { name: n.to_string(), size: 1 }));
        }
        Ok(page)
    }

    fn stat(name: String) -> Result<ObjectInfo, Error> {
        let action = enter("stat")?;
        let mut info = with_store(|s| s.stat(&name))?;
        if action == Some(Action::Huge) {
            info.size = 4 << 30;
        }
        Ok(info)
    }

    fn read(name: String, offset: u64, len: u64) -> Result<Vec<u8>, Error> {
        let mut action = enter("read")?;
        if name.starts_with("data/") {
            // `read-data`: faults for reads of packs only (counted on their own), so a test
            // can break data reads while keys, indexes and snapshots still load.
            action = action.or(enter("read-data")?);
        }
        if action == Some(Action::Flood) && name.starts_with("data/") && offset > 0 {
            // Touched, not just reserved: the guest really holds it.
            return Ok(vec![0xA5; FLOOD_BYTES]);
        }
        let mut data = with_store(|s| s.read(&name, offset, len))?;
        if action == Some(Action::Forge) && name.starts_with("data/") {
            for b in data.iter_mut() {
                *b ^= 0x5A;
            }
        }
        Ok(data)
    }

    fn start_upload(name: String, size: u64, if_absent: bool) -> Result<Upload, Error> {
        log("start-upload", &name);
        enter("start-upload")?;
        let inner = with_store(|s| s.start_upload(&name, size, if_absent))?;
        Ok(Upload::new(ChaosUpload { inner, truncate_to: RefCell::new(None), name }))
    }

    fn list_incomplete(prefix: String) -> Result<Vec<IncompleteUpload>, Error> {
        let action = enter("list-incomplete")?;
        let mut out = with_store(|s| s.list_incomplete(&prefix))?;
        if action == Some(Action::BadNames) {
            let bad = BAD_NAMES.iter().enumerate().filter(|(_, n)| n.starts_with(prefix.as_str()));
            out.extend(bad.map(|(i, n)| IncompleteUpload {
                id: format!("chaos-bad-{i}"),
                name: n.to_string(),
                size: 1,
            }));
        }
        Ok(out)
    }

    fn abort_incomplete(id: String) -> Result<(), Error> {
        log("abort-incomplete", &id);
        enter("abort-incomplete")?;
        with_store(|s| s.abort_incomplete(&id))
    }

    fn delete(names: Vec<String>) -> Result<(), Error> {
        for name in &names {
            log("delete", name);
        }
        enter("delete")?;
        with_store(|s| s.delete(&names))
    }
}

impl GuestUpload for ChaosUpload {
    fn write(&self, data: Vec<u8>) -> Result<(), Error> {
        enter("write")?;
        self.inner.write(&data)
    }

    fn finish(&self) -> Result<(), Error> {
        log("finish", &self.name);
        let action = enter("finish")?;
        if action == Some(Action::Truncate) {
            *self.truncate_to.borrow_mut() = Some(0);
        }
        self.inner.finish()?;
        if matches!(action, Some(Action::LoseReply | Action::LoseReplyGarbled)) {
            if action == Some(Action::LoseReplyGarbled) {
                let path = STATE.with(|s| s.borrow().path.clone());
                let full = format!("{path}/{}", self.name);
                if let Ok(mut bytes) = std::fs::read(&full) {
                    bytes.iter_mut().for_each(|b| *b ^= 0x5A);
                    let _ = std::fs::write(&full, bytes);
                }
            }
            return Err(Error::Transient(format!("chaos: the answer to finishing {} was lost", self.name)));
        }
        if self.truncate_to.borrow().is_some() {
            // Lie: report success but keep only the first half of the object.
            let path = STATE.with(|s| s.borrow().path.clone());
            let full = format!("{path}/{}", self.name);
            let len = std::fs::metadata(&full).map(|m| m.len()).unwrap_or(0);
            let f = std::fs::OpenOptions::new().write(true).open(&full);
            if let Ok(f) = f {
                let _ = f.set_len(len / 2);
            }
        }
        Ok(())
    }

    fn abort(&self) {
        self.inner.abort()
    }
}

cairn_plugin_sdk::export!(Chaos);
