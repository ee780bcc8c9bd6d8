//! Locks in the repository itself, so that machines sharing a repository coordinate: a
//! prune must never delete what a running backup will reference.
//!
//! A command writes its lock object `locks/<id>` (conditional put where the backend has it),
//! then lists `locks/` and decides (`docs/format.md`, "Locks", has the proof):
//! - shared (backup, forget, restore, verify): any live exclusive lock makes it remove its
//!   own and wait, up to the lock wait, naming the holder;
//! - exclusive (prune, repair): a live exclusive lock earlier than its own (created time,
//!   then nonce) makes it remove its own and wait; otherwise it keeps its lock (so new
//!   shared locks back off: writer-preferring) and waits until no other live lock is left.
//!
//! Because every claimant writes before it lists and listings are linearizable, of two
//! claimants the later writer always sees the earlier one's lock.
//!
//! A held lock is refreshed every [`REFRESH_EVERY`] by a background task; a lock not
//! refreshed for [`STALE_AFTER`] (or whose holder is a dead process on this host) is stale:
//! ignored, and removed by whoever can delete. A holder that could have been judged stale
//! (no successful refresh for `STALE_AFTER - REFRESH_EVERY`, by its monotonic clock), or
//! whose lock object vanished, has lost its lock and must not write a snapshot.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};

use crate::backend::Backend;
use crate::crypto::MasterKey;
use crate::ids::Id;
use crate::lock::hostname;
use crate::repo::format::{self, LOCKS_PREFIX, LockFile, LockKind, ObjectName, WholeObject};
use crate::untrusted::escape;

/// How often a held lock is written anew.
pub const REFRESH_EVERY: Duration = Duration::from_secs(5 * 60);
/// How often a held lock is written anew: [`REFRESH_EVERY`], or `CAIRN_LOCK_REFRESH_MS`
/// (a test seam, so a test can watch refreshes; staleness keeps its fixed bounds).
fn refresh_every() -> Duration {
    std::env::var("CAIRN_LOCK_REFRESH_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis)
        .unwrap_or(REFRESH_EVERY)
        .min(REFRESH_EVERY)
}

/// A lock not refreshed for this long is stale. Clocks of the machines sharing a repository
/// must agree to within `STALE_AFTER - REFRESH_EVERY` (25 minutes).
pub const STALE_AFTER: Duration = Duration::from_secs(30 * 60);
/// Default of `--lock-wait` / `[repository] lock_wait`.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(10 * 60);

/// Why a lock's holder is no longer counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dead {
    /// Its holder wrote a release record (it may not delete: append-only).
    Released,
    /// Not refreshed for [`STALE_AFTER`].
    Expired,
    /// Held by a process of this host that no longer runs.
    ProcessGone,
}

/// One claim as found in a listing: its newest object, and every object of its nonce.
#[derive(Clone, Debug)]
pub struct Claim {
    pub file: LockFile,
    names: Vec<String>,
}

impl Claim {
    fn dead(&self, now_ns: i64) -> Option<Dead> {
        let f = &self.file;
        if f.released {
            return Some(Dead::Released);
        }
        if now_ns.saturating_sub(f.refreshed_ns) > STALE_AFTER.as_nanos() as i64 {
            return Some(Dead::Expired);
        }
        if f.host == hostname() && !process_alive(f.pid) {
            return Some(Dead::ProcessGone);
        }
        None
    }

    /// Who holds it, for messages: `host "h" (pid 12, exclusive lock since 2026-...)`.
    pub fn describe(&self) -> String {
        let kind = match self.file.kind {
            LockKind::Shared => "shared",
            LockKind::Exclusive => "exclusive",
        };
        format!(
            "host \"{}\" (user \"{}\", pid {}, {kind} lock since {}, refreshed {})",
            escape(&self.file.host),
            escape(&self.file.user),
            self.file.pid,
            display_ns(self.file.created_ns),
            display_ns(self.file.refreshed_ns)
        )
    }

    /// Order among exclusive claims: created time, then nonce.
    fn rank(&self) -> (i64, [u8; 16]) {
        (self.file.created_ns, self.file.nonce)
    }
}

fn display_ns(ns: i64) -> String {
    jiff::Timestamp::from_nanosecond(ns as i128)
        .map(|t| t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|_| "an impossible time".into())
}

fn now_ns() -> i64 {
    jiff::Timestamp::now().as_nanosecond() as i64
}

/// Whether process `pid` of this host runs (`kill(pid, 0)`: EPERM means it does).
fn process_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else { return false };
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks that the process exists.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Writes a lock object; returns its name.
pub async fn write_lock(backend: &Backend, key: &MasterKey, file: &LockFile) -> Result<String> {
    let bytes = format::seal_object(key, format::AAD_LOCK, file, false)?;
    let name = format::lock_name(&Id::of_bytes(&bytes));
    backend.upload_bytes(&name, &bytes, backend.caps().conditional_put).await?;
    Ok(name)
}

/// Every claim in `locks/`, grouped by nonce. Objects that do not authenticate are skipped
/// with a warning (they bind nobody); dead claims are removed when deletes are allowed.
pub async fn claims(backend: &Backend, key: &MasterKey) -> Result<Vec<Claim>> {
    let mut by_nonce: BTreeMap<[u8; 16], Claim> = BTreeMap::new();
    for obj in backend.list(LOCKS_PREFIX).await? {
        let Some(ObjectName::Lock(id)) = ObjectName::parse(&obj.name) else { continue };
        let bytes = match format::read_object(backend, WholeObject::Lock, &obj.name).await {
            Ok(b) => b,
            // Removed between the listing and the read: released meanwhile.
            Err(format::ReadObjectError::Backend(e))
                if matches!(e.kind, crate::plugin::ErrorKind::NotFound(_)) =>
            {
                continue;
            }
            Err(e) => {
                tracing::warn!("ignoring lock object {}: {e}", escape(&obj.name));
                continue;
            }
        };
        let file: LockFile = match format::open_object(key, format::AAD_LOCK, &bytes, false) {
            Ok(f) if Id::of_bytes(&bytes) == id => f,
            _ => {
                tracing::warn!("ignoring lock object {}: it does not authenticate", obj.name);
                continue;
            }
        };
        let claim =
            by_nonce.entry(file.nonce).or_insert_with(|| Claim { file: file.clone(), names: Vec::new() });
        claim.names.push(obj.name);
        // The newest object speaks for the claim; a release ends it whatever its time.
        let released = claim.file.released || file.released;
        if file.refreshed_ns > claim.file.refreshed_ns {
            claim.file = file;
        }
        claim.file.released = released;
    }
    Ok(by_nonce.into_values().collect())
}

/// The live claims other than `own`; dead ones are removed (when deletes are allowed) and
/// said so.
async fn live_others(backend: &Backend, key: &MasterKey, own: &[u8; 16]) -> Result<Vec<Claim>> {
    let now = now_ns();
    let mut live = Vec::new();
    let mut dead_names = Vec::new();
    for claim in claims(backend, key).await? {
        if claim.file.nonce == *own {
            continue;
        }
        match claim.dead(now) {
            None => live.push(claim),
            Some(why) => {
                if why != Dead::Released {
                    let said = match why {
                        Dead::Expired => {
                            format!("not refreshed for more than {} minutes", STALE_AFTER.as_secs() / 60)
                        }
                        _ => "its process is gone".to_string(),
                    };
                    tracing::warn!("stale lock of {}: {said}; it is ignored", claim.describe());
                }
                dead_names.extend(claim.names);
            }
        }
    }
    if !dead_names.is_empty() && backend.can_delete() {
        backend.delete(&dead_names).await?;
        tracing::info!("removed {} stale or released lock object(s)", dead_names.len());
    }
    Ok(live)
}

/// The lock could not be taken within the wait: another machine holds a conflicting one.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Busy(String);

/// What a claimant does after looking at the others.
enum Decision {
    Go,
    /// Keep the own lock and look again (an exclusive claimant waiting for these).
    Wait(Claim),
    /// Remove the own lock and look again later.
    BackOff(Claim),
}

fn decide(own: &LockFile, others: &[Claim]) -> Decision {
    let exclusive = others.iter().filter(|c| c.file.kind == LockKind::Exclusive);
    match own.kind {
        LockKind::Shared => match exclusive.min_by_key(|c| c.rank()) {
            Some(c) => Decision::BackOff(c.clone()),
            None => Decision::Go,
        },
        LockKind::Exclusive => {
            let mine = (own.created_ns, own.nonce);
            if let Some(c) = exclusive.filter(|c| c.rank() < mine).min_by_key(|c| c.rank()) {
                return Decision::BackOff(c.clone());
            }
            match others.first() {
                Some(c) => Decision::Wait(c.clone()),
                None => Decision::Go,
            }
        }
    }
}

/// The state the refresher shares with the command.
struct Current {
    name: String,
    file: LockFile,
    /// Last successful write, by the monotonic clock.
    written: Instant,
    /// Set when the lock was found gone or could not be refreshed in time.
    lost: Option<String>,
}

/// A lock this process holds; refreshed in the background until [`Held::release`].
pub struct Held {
    backend: Arc<Backend>,
    key: Arc<MasterKey>,
    current: Arc<Mutex<Current>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// How long a holder may go without a successful refresh before it must count itself
/// stale: another machine may judge it so from then on (allowing for clock skew).
fn self_stale_after() -> Duration {
    STALE_AFTER - REFRESH_EVERY
}

/// Takes a lock of `kind`, waiting up to `wait` for conflicting holders.
pub async fn acquire(
    backend: Arc<Backend>,
    key: Arc<MasterKey>,
    kind: LockKind,
    wait: Duration,
) -> Result<Held> {
    let started = Instant::now();
    let mut nonce = [0u8; 16];
    getrandom::fill(&mut nonce).map_err(|e| anyhow!("no randomness for a lock nonce: {e}"))?;
    let created_ns = now_ns();
    let mut own: Option<(String, LockFile, Instant)> = None;
    let mut told = false;
    loop {
        let fresh = own.as_ref().is_some_and(|(_, _, at)| at.elapsed() < refresh_every());
        if !fresh {
            let file = LockFile {
                version: 1,
                host: hostname(),
                user: std::env::var("USER").unwrap_or_default(),
                pid: std::process::id(),
                kind,
                created_ns,
                refreshed_ns: now_ns(),
                nonce,
                released: false,
            };
            let name = write_lock(&backend, &key, &file).await?;
            if let Some((old, _, _)) = own.take() {
                remove(&backend, &key, &old, &file).await;
            }
            own = Some((name, file, Instant::now()));
        }
        let (name, file, written) = own.clone().expect("written above");
        let holder = match decide(&file, &live_others(&backend, &key, &nonce).await?) {
            Decision::Go => {
                return Ok(Held::start(backend, key, Current { name, file, written, lost: None }));
            }
            Decision::Wait(c) => c,
            Decision::BackOff(c) => {
                remove(&backend, &key, &name, &file).await;
                own = None;
                c
            }
        };
        if started.elapsed() >= wait {
            if let Some((name, file, _)) = own.take() {
                remove(&backend, &key, &name, &file).await;
            }
            return Err(Busy(format!(
                "the repository is locked by {}; waited {}s (--lock-wait, [repository] lock_wait); \
                 run the command again when it is done; nothing was changed",
                holder.describe(),
                wait.as_secs()
            ))
            .into());
        }
        if !told {
            eprintln!(
                "cairn: waiting up to {}s for the repository lock held by {}",
                wait.saturating_sub(started.elapsed()).as_secs(),
                holder.describe()
            );
            told = true;
        }
        let jitter = Duration::from_millis(getrandom::u64().unwrap_or(0) % 1000);
        let pause = (Duration::from_millis(500) + jitter).min(wait.saturating_sub(started.elapsed()));
        tokio::time::sleep(pause.max(Duration::from_millis(50))).await;
    }
}

/// Removes one of this process's lock objects; where deletes are not granted, writes a
/// release record instead (the objects go stale and others remove them). Failures are
/// only warned about: a lock left behind goes stale.
async fn remove(backend: &Backend, key: &MasterKey, name: &str, file: &LockFile) {
    let result = if backend.can_delete() {
        backend.delete(&[name.to_string()]).await.map_err(anyhow::Error::from)
    } else {
        let release = LockFile { released: true, refreshed_ns: now_ns(), ..file.clone() };
        write_lock(backend, key, &release).await.map(|_| ())
    };
    if let Err(e) = result {
        tracing::warn!(
            "cannot remove lock {name}: {e}; it goes stale in {} minutes",
            STALE_AFTER.as_secs() / 60
        );
    }
}

impl Held {
    fn start(backend: Arc<Backend>, key: Arc<MasterKey>, current: Current) -> Held {
        let current = Arc::new(Mutex::new(current));
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn({
            let (backend, key, current) = (backend.clone(), key.clone(), current.clone());
            async move {
                loop {
                    tokio::select! {
                        _ = &mut stopped => return,
                        _ = tokio::time::sleep(refresh_every()) => {}
                    }
                    if let Err(e) = refresh(&backend, &key, &current).await {
                        tracing::warn!("cannot refresh the repository lock: {e}; trying again");
                    }
                    if current.lock().unwrap().lost.is_some() {
                        return;
                    }
                }
            }
        });
        Held { backend, key, current, stop: Some(stop), task: Some(task) }
    }

    /// The held lock's kind.
    pub fn kind(&self) -> LockKind {
        self.current.lock().unwrap().file.kind
    }

    /// Fails unless this process still holds its lock: refreshed in time, and its object
    /// still there. Called before writing a snapshot.
    pub async fn check(&self) -> Result<()> {
        let name = {
            let mut cur = self.current.lock().unwrap();
            if cur.lost.is_none() && cur.written.elapsed() > self_stale_after() {
                cur.lost = Some(format!(
                    "it could not be refreshed for {} minutes",
                    cur.written.elapsed().as_secs() / 60
                ));
            }
            if let Some(why) = &cur.lost {
                bail!(lost_message(why));
            }
            cur.name.clone()
        };
        if self.backend.stat(&name).await?.is_none() {
            let why = "another machine removed it (it judged the lock stale)".to_string();
            self.current.lock().unwrap().lost = Some(why.clone());
            bail!(lost_message(&why));
        }
        Ok(())
    }

    /// Stops refreshing and removes the lock (or, append-only, writes its release record).
    pub async fn release(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        let (name, file, lost) = {
            let cur = self.current.lock().unwrap();
            (cur.name.clone(), cur.file.clone(), cur.lost.is_some())
        };
        if !lost {
            remove(&self.backend, &self.key, &name, &file).await;
        }
    }
}

fn lost_message(why: &str) -> String {
    format!(
        "this command lost its repository lock: {why}; no snapshot was written (a prune may be running); \
         the data uploaded so far is kept and the next run reuses what is still there"
    )
}

/// One refresh: the old object must still be there (else another machine removed it as
/// stale and may be pruning: the lock is lost, never re-created), and the holder must not
/// have gone so long without a refresh that others may judge it stale.
async fn refresh(backend: &Backend, key: &MasterKey, current: &Mutex<Current>) -> Result<()> {
    let (old, file) = {
        let mut cur = current.lock().unwrap();
        if cur.written.elapsed() > self_stale_after() {
            cur.lost = Some(format!(
                "it could not be refreshed for {} minutes",
                cur.written.elapsed().as_secs() / 60
            ));
        }
        if cur.lost.is_some() {
            return Ok(());
        }
        (cur.name.clone(), cur.file.clone())
    };
    if backend.stat(&old).await?.is_none() {
        current.lock().unwrap().lost = Some("another machine removed it (it judged the lock stale)".into());
        return Ok(());
    }
    let file = LockFile { refreshed_ns: now_ns(), ..file };
    let name = write_lock(backend, key, &file).await?;
    {
        let mut cur = current.lock().unwrap();
        cur.name = name;
        cur.file = file.clone();
        cur.written = Instant::now();
    }
    if backend.can_delete() {
        backend.delete(&[old]).await?;
    }
    Ok(())
}

/// `90s`, `10m`, `2h` or a number of seconds.
pub fn parse_wait(text: &str) -> Result<Duration> {
    let t = text.trim();
    let (num, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| anyhow!("lock wait {text:?} is not a duration like \"90s\", \"10m\" or \"1h\""))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => bail!("lock wait {text:?} is not a duration like \"90s\", \"10m\" or \"1h\""),
    };
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(kind: LockKind, created_ns: i64, nonce: u8) -> Claim {
        Claim {
            file: LockFile {
                version: 1,
                host: "h".into(),
                user: "u".into(),
                pid: 1,
                kind,
                created_ns,
                refreshed_ns: created_ns,
                nonce: [nonce; 16],
                released: false,
            },
            names: vec![],
        }
    }

    #[test]
    fn shared_backs_off_from_any_exclusive_and_ignores_shared() {
        let own = claim(LockKind::Shared, 10, 1).file;
        assert!(matches!(decide(&own, &[claim(LockKind::Shared, 5, 2)]), Decision::Go));
        assert!(matches!(decide(&own, &[claim(LockKind::Exclusive, 20, 2)]), Decision::BackOff(_)));
    }

    #[test]
    fn exclusive_backs_off_from_an_earlier_exclusive_and_waits_for_the_rest() {
        let own = claim(LockKind::Exclusive, 10, 5).file;
        assert!(matches!(decide(&own, &[]), Decision::Go));
        assert!(matches!(decide(&own, &[claim(LockKind::Exclusive, 9, 9)]), Decision::BackOff(_)));
        // Same time: the nonce orders.
        assert!(matches!(decide(&own, &[claim(LockKind::Exclusive, 10, 4)]), Decision::BackOff(_)));
        assert!(matches!(decide(&own, &[claim(LockKind::Exclusive, 10, 6)]), Decision::Wait(_)));
        assert!(matches!(decide(&own, &[claim(LockKind::Shared, 1, 1)]), Decision::Wait(_)));
    }

    #[test]
    fn staleness() {
        let now = now_ns();
        let mut c = claim(LockKind::Shared, now, 1);
        c.file.host = "elsewhere".into();
        assert_eq!(c.dead(now), None);
        assert_eq!(c.dead(now + STALE_AFTER.as_nanos() as i64 + 1), Some(Dead::Expired));
        c.file.host = hostname();
        c.file.pid = std::process::id();
        assert_eq!(c.dead(now), None);
        c.file.pid = u32::MAX;
        assert_eq!(c.dead(now), Some(Dead::ProcessGone));
        c.file.released = true;
        assert_eq!(c.dead(now), Some(Dead::Released));
    }

    #[test]
    fn waits_parse() {
        assert_eq!(parse_wait("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_wait("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_wait("1h").unwrap(), Duration::from_secs(3600));
        assert!(parse_wait("soon").is_err());
        assert!(parse_wait("5d").is_err());
    }
}
