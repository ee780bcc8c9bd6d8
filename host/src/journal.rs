//! The journal: a local SQLite database (WAL, synchronous=FULL) of everything cairn has
//! sent to the repository.
//!
//! - `objects`: every remote object with its state. A pack is recorded as `uploading`,
//!   with its size and hash, before its first byte is sent; it becomes `uploaded` once the
//!   backend confirms it, `verified` when its bytes were read back and checked, `deleting`
//!   before a delete is sent. Each transition is committed before the next side effect, so
//!   after a crash the journal says exactly what may be half-done.
//! - `blobs`: which blob lives where (pack, offset, length).
//! - `snapshots`: a local copy of the snapshot objects.
//! - `file_cache`: size, mtime, ctime and inode of files already backed up, with their chunk
//!   ids, so unchanged files are not read again. Rows are staged during a run and published
//!   only once every pack they refer to is uploaded (at each checkpoint, in any walk order).
//! - `partial_files` (schema 2): the durable chunk prefix of a file that was being read at a
//!   checkpoint, with the file's identity, so the next run continues reading at that offset.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use std::collections::HashSet;

use anyhow::{Context, Result, anyhow, bail};
use rusqlite::{Connection, OptionalExtension, params};

use crate::ids::Id;
use crate::repo::format::{BlobKind, PackEntry, Snapshot};

const SCHEMA_VERSION: i64 = 4;

/// The `runs` table (schema 3; created again if missing when migrating to 4).
const RUNS_TABLE: &str = "CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY, job TEXT NOT NULL, started_ns INTEGER NOT NULL,
    ended_ns INTEGER NOT NULL, outcome TEXT NOT NULL, snapshot TEXT, bytes_read INTEGER NOT NULL,
    bytes_added INTEGER NOT NULL, pruned INTEGER NOT NULL, error TEXT);
    CREATE INDEX IF NOT EXISTS runs_job ON runs(job, started_ns);";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum State {
    Uploading,
    Uploaded,
    Verified,
    Deleting,
    /// Found missing, truncated or corrupt by `verify`: never deduplicated against, read
    /// from only as a last resort (authentication decides); `repair` salvages what it can.
    Damaged,
    /// Replaced by `repair` (its content now lives elsewhere); kept, not used, not a problem.
    Retired,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Uploading => "uploading",
            State::Uploaded => "uploaded",
            State::Verified => "verified",
            State::Deleting => "deleting",
            State::Damaged => "damaged",
            State::Retired => "retired",
        }
    }
    fn parse(s: &str) -> Result<State> {
        Ok(match s {
            "uploading" => State::Uploading,
            "uploaded" => State::Uploaded,
            "verified" => State::Verified,
            "deleting" => State::Deleting,
            "damaged" => State::Damaged,
            "retired" => State::Retired,
            _ => bail!("unknown object state {s:?} in the journal"),
        })
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ObjectKind {
    Pack,
    Index,
    Snapshot,
    Key,
    Config,
}

impl ObjectKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectKind::Pack => "pack",
            ObjectKind::Index => "index",
            ObjectKind::Snapshot => "snapshot",
            ObjectKind::Key => "key",
            ObjectKind::Config => "config",
        }
    }
    fn parse(s: &str) -> Result<ObjectKind> {
        Ok(match s {
            "pack" => ObjectKind::Pack,
            "index" => ObjectKind::Index,
            "snapshot" => ObjectKind::Snapshot,
            "key" => ObjectKind::Key,
            "config" => ObjectKind::Config,
            _ => bail!("unknown object kind {s:?} in the journal"),
        })
    }
}

#[derive(Clone, Debug)]
pub struct ObjectRow {
    pub name: String,
    pub kind: ObjectKind,
    pub state: State,
    pub size: u64,
    pub hash: Option<Id>,
}

#[derive(Clone, Copy, Debug)]
pub struct BlobLocation {
    pub pack: Id,
    pub offset: u64,
    pub length: u32,
    pub raw_length: u32,
}

/// A file read only in part when a checkpoint sealed: its identity when it was read (in
/// `file`, whose `content` is the chunk ids of the first `offset` bytes) and where the next
/// run continues.
#[derive(Clone, Debug, PartialEq)]
pub struct PartialFile {
    pub file: CachedFile,
    pub offset: u64,
}

/// The staged file-cache rows up to a checkpoint's seal: see [`Journal::seal_staged`].
#[derive(Clone, Copy, Debug)]
pub struct Seal(u64);

/// Staged file-cache rows not yet in the temporary table, and the current generation.
#[derive(Default)]
struct Staged {
    generation: u64,
    rows: Vec<(u64, Vec<u8>, CachedFile)>,
}

/// What the file cache remembers of a file.
#[derive(Clone, Debug, PartialEq)]
pub struct CachedFile {
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub inode: u64,
    pub content: Vec<Id>,
}

pub struct Journal {
    /// The one connection that writes (commits are serialised by SQLite anyway).
    conn: Mutex<Connection>,
    /// Read-only connections: WAL lets them read while the writer commits, so a commit's
    /// fsync never stalls the workers' lookups.
    readers: Mutex<Vec<Connection>>,
    pub path: PathBuf,
    staged: Mutex<Staged>,
}

/// A pooled read-only connection; returned to the pool when dropped.
struct Reader<'a> {
    journal: &'a Journal,
    conn: Option<Connection>,
}

impl std::ops::Deref for Reader<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.conn.as_ref().expect("connection present until drop")
    }
}

impl Drop for Reader<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.conn.take() {
            self.journal.readers.lock().unwrap().push(c);
        }
    }
}

/// Staged file-cache rows are written to a temporary table in batches of this many.
const STAGE_BATCH: usize = 2000;

fn now_secs() -> i64 {
    jiff::Timestamp::now().as_second()
}

fn ids_to_blob(ids: &[Id]) -> Vec<u8> {
    ids.iter().flat_map(|i| i.0).collect()
}

fn blob_to_ids(b: &[u8]) -> Vec<Id> {
    b.chunks_exact(32).map(|c| Id(c.try_into().unwrap())).collect()
}

/// The id of a pack from its object name (`data/ab/<hex>`).
/// Removes an object's row and the blob rows that point into it.
fn drop_object(tx: &rusqlite::Transaction<'_>, name: &str) -> Result<()> {
    tx.execute("DELETE FROM index_packs WHERE idx = ?1 OR pack = ?1", [name])?;
    tx.execute("DELETE FROM blobs WHERE pack = (SELECT oid FROM objects WHERE name = ?1)", [name])?;
    tx.execute("DELETE FROM damaged_blobs WHERE pack = (SELECT oid FROM objects WHERE name = ?1)", [name])?;
    tx.execute("DELETE FROM objects WHERE name = ?1", [name])?;
    Ok(())
}

pub fn pack_id(name: &str) -> Result<Id> {
    crate::repo::format::id_of_name(name).ok_or_else(|| anyhow!("bad pack name {name:?} in the journal"))
}

/// How a run of a job ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunOutcome {
    Success,
    /// Finished, but something was skipped or a later step (verify, a hook) complained.
    Warning,
    Failure,
    /// A `before` hook failed: the job did not run.
    Skipped,
}

impl RunOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            RunOutcome::Success => "success",
            RunOutcome::Warning => "warning",
            RunOutcome::Failure => "failure",
            RunOutcome::Skipped => "skipped",
        }
    }

    pub fn parse(s: &str) -> Option<RunOutcome> {
        [RunOutcome::Success, RunOutcome::Warning, RunOutcome::Failure, RunOutcome::Skipped]
            .into_iter()
            .find(|o| o.as_str() == s)
    }

    /// A run that produced its snapshot (possibly with warnings).
    pub fn succeeded(self) -> bool {
        matches!(self, RunOutcome::Success | RunOutcome::Warning)
    }
}

/// One run of a job, as `cairn run` records it in the `runs` table.
#[derive(Clone, Debug)]
pub struct RunRecord {
    pub job: String,
    /// Nanoseconds since the Unix epoch (UTC).
    pub started_ns: i64,
    pub ended_ns: i64,
    pub outcome: RunOutcome,
    /// The new snapshot's id (hex), when one was saved.
    pub snapshot: Option<String>,
    pub bytes_read: u64,
    /// Plaintext bytes new to the repository.
    pub bytes_added: u64,
    /// Whether this run pruned the repository (what `prune_every` counts from).
    pub pruned: bool,
    /// The one-line error of a failed or skipped run, or the warnings of one with warnings.
    pub error: Option<String>,
}

impl Journal {
    /// Opens (creating if needed) the journal at `path`.
    pub fn open(path: &Path) -> Result<Journal> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create state folder {}", dir.display()))?;
        }
        let hint = || {
            format!(
                "the journal {} is unreadable or corrupt; move it away and run `cairn repair --rebuild-journal` \
                 to rebuild it from the repository",
                path.display()
            )
        };
        let conn = Connection::open(path).with_context(hint)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             PRAGMA temp_store = FILE;
             PRAGMA cache_size = -8000;",
        )
        .with_context(hint)?;
        let journal = Journal {
            conn: Mutex::new(conn),
            readers: Mutex::new(Vec::new()),
            path: path.to_path_buf(),
            staged: Mutex::new(Staged::default()),
        };
        journal.migrate().with_context(hint)?;
        Ok(journal)
    }

    /// A read-only connection from the pool (opened on demand).
    fn reader(&self) -> Result<Reader<'_>> {
        let pooled = self.readers.lock().unwrap().pop();
        let conn = match pooled {
            Some(c) => c,
            None => {
                let c = Connection::open_with_flags(
                    &self.path,
                    rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?;
                c.busy_timeout(std::time::Duration::from_secs(10))?;
                c.execute_batch("PRAGMA cache_size = -2000;")?;
                c
            }
        };
        Ok(Reader { journal: self, conn: Some(conn) })
    }

    fn migrate(&self) -> Result<()> {
        let conn = self.conn.lock().unwrap();
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            bail!(
                "journal schema {version} is newer than this cairn understands ({SCHEMA_VERSION}); upgrade cairn"
            );
        }
        if version == 0 {
            conn.execute_batch(
                "BEGIN;
                 CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
                 CREATE TABLE objects (
                    oid INTEGER PRIMARY KEY,
                    name TEXT NOT NULL UNIQUE,
                    kind TEXT NOT NULL,
                    state TEXT NOT NULL,
                    size INTEGER NOT NULL,
                    hash BLOB,
                    indexed_by TEXT,
                    created_at INTEGER NOT NULL,
                    verified_at INTEGER,
                    note TEXT
                 );
                 CREATE INDEX objects_state ON objects(state);
                 CREATE TABLE damaged_blobs (
                    id BLOB NOT NULL,
                    pack INTEGER NOT NULL,
                    reason TEXT NOT NULL,
                    PRIMARY KEY (id, pack)
                 ) WITHOUT ROWID;
                 CREATE TABLE blobs (
                    id BLOB NOT NULL,
                    pack INTEGER NOT NULL,
                    kind INTEGER NOT NULL,
                    offset INTEGER NOT NULL,
                    length INTEGER NOT NULL,
                    raw_length INTEGER NOT NULL,
                    PRIMARY KEY (id, pack)
                 ) WITHOUT ROWID;
                 CREATE INDEX blobs_pack ON blobs(pack);
                 CREATE TABLE snapshots (
                    id TEXT PRIMARY KEY,
                    time_ns INTEGER NOT NULL,
                    partial INTEGER NOT NULL,
                    data BLOB NOT NULL
                 );
                 CREATE TABLE file_cache (
                    path BLOB PRIMARY KEY,
                    size INTEGER NOT NULL,
                    mtime_ns INTEGER NOT NULL,
                    ctime_ns INTEGER NOT NULL,
                    inode INTEGER NOT NULL,
                    content BLOB NOT NULL
                 ) WITHOUT ROWID;
                 PRAGMA user_version = 1;
                 COMMIT;",
            )?;
        }
        if version < 2 {
            // Schema 2: resume inside a file. Journals of schema 1 gain the table as is.
            conn.execute_batch(
                "BEGIN;
                 CREATE TABLE partial_files (
                    path BLOB PRIMARY KEY,
                    size INTEGER NOT NULL,
                    mtime_ns INTEGER NOT NULL,
                    ctime_ns INTEGER NOT NULL,
                    inode INTEGER NOT NULL,
                    offset INTEGER NOT NULL,
                    content BLOB NOT NULL
                 ) WITHOUT ROWID;
                 PRAGMA user_version = 2;
                 COMMIT;",
            )?;
        }
        if version < 3 {
            // Schema 3: `cairn run` records every run of a job. Older journals gain the table.
            conn.execute_batch(&format!("BEGIN; {RUNS_TABLE} PRAGMA user_version = 3; COMMIT;"))?;
        }
        if version < 4 {
            // Schema 4: every index object that lists a pack (a sync that forgets drops a
            // pack once no remaining index lists it). Older journals knew one index per pack.
            // (`runs` again, if missing: a development journal numbered 3 had only this table.)
            conn.execute_batch(&format!(
                "BEGIN;
                 {RUNS_TABLE}
                 CREATE TABLE IF NOT EXISTS index_packs (
                    idx TEXT NOT NULL,
                    pack TEXT NOT NULL,
                    PRIMARY KEY (idx, pack)
                 ) WITHOUT ROWID;
                 CREATE INDEX IF NOT EXISTS index_packs_pack ON index_packs(pack);
                 INSERT OR IGNORE INTO index_packs (idx, pack)
                    SELECT indexed_by, name FROM objects WHERE kind = 'pack' AND indexed_by IS NOT NULL;
                 PRAGMA user_version = 4;
                 COMMIT;"
            ))?;
        }
        conn.execute_batch(
            "CREATE TEMP TABLE IF NOT EXISTS staged_files (
                path BLOB PRIMARY KEY, generation INTEGER, size INTEGER, mtime_ns INTEGER,
                ctime_ns INTEGER, inode INTEGER, content BLOB) WITHOUT ROWID;",
        )?;
        Ok(())
    }

    pub fn meta(&self, key: &str) -> Result<Option<String>> {
        let conn = self.reader()?;
        Ok(conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0)).optional()?)
    }

    pub fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        let conn = self.conn.lock().unwrap();
        conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)", params![key, value])?;
        Ok(())
    }

    // ---- remote objects -------------------------------------------------------------------

    /// Records that `name` is about to be uploaded, with the blobs it will hold (packs only).
    /// Committed before the first byte is sent; [`Journal::confirm_upload`] ends it.
    pub fn begin_upload(
        &self,
        name: &str,
        kind: ObjectKind,
        size: u64,
        hash: &Id,
        blobs: &[PackEntry],
    ) -> Result<()> {
        let mut conn = self.conn.lock().unwrap();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT INTO objects (name, kind, state, size, hash, created_at) VALUES (?1, ?2, 'uploading', ?3, ?4, ?5)
             ON CONFLICT(name) DO UPDATE SET kind = ?2, state = 'uploading', size = ?3, hash = ?4",
            params![name, kind.as_str(), size as i64, &hash.0[..], now_secs()],
        )?;
        insert_blobs(&tx, name, blobs)?;
        tx.commit()?;
        Ok(())
    }

    /// Records an object found intact in the repository (e.g. written by another client).
    pub fn record_present(
        &self,
        name: &str,
        kind: ObjectKind,
        size: u64,
        hash: Option<&Id>,
        blobs: &[PackEntry],
    ) -> Result<()> {
        let mut conn = self.conn.lock().unwrap();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT OR IGNORE INTO objects (name, kind, state, size, hash, created_at) VALUES (?1, ?2, 'uploaded', ?3, ?4, ?5)",
            params![name, kind.as_str(), size as i64, hash.map(|h| h.0.to_vec()), now_secs()],
        )?;
        insert_blobs(&tx, name, blobs)?;
        tx.commit()?;
        Ok(())
    }

    // The crash protocol. An object's state changes only through these transitions, each
    // from the states it may come from (anything else is a bug and fails, naming the state):
    //
    //   begin_upload -> uploading -> confirm_upload -> uploaded (-> verified, damaged)
    //   uploading -> begin_discard -> deleting -> upload_again -> uploading
    //                                 (a partial or wrong copy of ours, deleted before a retry)
    //   any -> begin_delete(s) -> deleting -> confirm_delete -> gone
    //                                      -> cancel_delete -> uploaded (a whole object kept)
    //   uploaded, verified, damaged -> retire -> retired (replaced by repair, still stored)

    /// Changes `name`'s state from one of `from` to `to`.
    fn transition(&self, name: &str, from: &[State], to: State) -> Result<()> {
        let conn = self.conn.lock().unwrap();
        let allowed: Vec<String> = from.iter().map(|s| format!("'{}'", s.as_str())).collect();
        let n = conn.execute(
            &format!("UPDATE objects SET state = ?2 WHERE name = ?1 AND state IN ({})", allowed.join(", ")),
            params![name, to.as_str()],
        )?;
        if n == 0 {
            let current: Option<String> = conn
                .query_row("SELECT state FROM objects WHERE name = ?1", [name], |r| r.get(0))
                .optional()?;
            match current {
                None => bail!("journal has no object {name}"),
                Some(state) => bail!("journal: {name} is {state}; it cannot become {}", to.as_str()),
            }
        }
        Ok(())
    }

    /// The backend holds all of `name`, whose upload began with [`Journal::begin_upload`].
    pub fn confirm_upload(&self, name: &str) -> Result<()> {
        self.transition(name, &[State::Uploading], State::Uploaded)
    }

    /// The backend holds a partial or wrong copy of `name`, ours: recorded before it is deleted.
    pub fn begin_discard(&self, name: &str) -> Result<()> {
        self.transition(name, &[State::Uploading], State::Deleting)
    }

    /// The discarded copy is deleted; the upload of `name` starts again.
    pub fn upload_again(&self, name: &str) -> Result<()> {
        self.transition(name, &[State::Deleting], State::Uploading)
    }

    /// A deletion not sent after all (the object is whole and stays): it is used again.
    pub fn cancel_delete(&self, name: &str) -> Result<()> {
        self.transition(name, &[State::Deleting], State::Uploaded)
    }

    /// `name` was replaced by repair: still stored, never used again.
    pub fn retire(&self, name: &str) -> Result<()> {
        self.transition(
            name,
            &[State::Uploaded, State::Verified, State::Damaged, State::Retired],
            State::Retired,
        )
    }

    /// Records that `name` is about to be deleted (inserting it if the journal did not know
    /// it). Committed before the delete is sent.
    pub fn begin_delete(&self, name: &str, kind: ObjectKind) -> Result<()> {
        let conn = self.conn.lock().unwrap();
        conn.execute(
            "INSERT INTO objects (name, kind, state, size, created_at) VALUES (?1, ?2, 'deleting', 0, ?3)
             ON CONFLICT(name) DO UPDATE SET state = 'deleting'",
            params![name, kind.as_str(), now_secs()],
        )?;
        Ok(())
    }

    /// [`Journal::begin_delete`] for several objects in one transaction: a run killed while
    /// journaling a prune's deletions must not leave some journaled and others not (the
    /// roll-forward would delete the packs and leave the index objects that list them).
    pub fn begin_deletes(&self, objects: &[(String, ObjectKind)]) -> Result<()> {
        let mut conn = self.conn.lock().unwrap();
        let tx = conn.transaction()?;
        {
            let mut stmt = tx.prepare(
                "INSERT INTO objects (name, kind, state, size, created_at) VALUES (?1, ?2, 'deleting', 0, ?3)
                 ON CONFLICT(name) DO UPDATE SET state = 'deleting'",
            )?;
            for (name, kind) in objects {
                stmt.execute(params![name, kind.as_str(), now_secs()])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    pub fn mark_verified(&self, name: &str) -> Result<()> {
        let conn = self.conn.lock().unwrap();
        conn.execute(
            "UPDATE objects SET state = 'verified', verified_at = ?2 WHERE name = ?1",
            params![name, now_secs()],
        )?;
        Ok(())
    }

    /// Forgets an object and the blobs it held (after it was found missing or deleted).
    pub fn forget_object(&self, name: &str) -> Result<()> {
        let mut conn = self.conn.lock().unwrap();
        let tx = conn.transaction()?;
        drop_object(&tx, name)?;
        tx.commit()?;
        Ok(())
    }

    /// The backend confirmed that `name` is gone: the object, its blobs and, for a snapshot,
    /// its snapshot row are forgotten in one transaction (the second step of the deletion
    /// protocol, after [`Journal::begin_delete`]).
    pub fn confirm_delete(&self, name: &str) -> Result<()> {
        self.confirm_deletes(std::slice::from_ref(&name))
    }

    /// [`Journal::confirm_delete`] for a batch the backend confirmed, in one transaction.
    pub fn confirm_deletes<S: AsRef<str>>(&self, names: &[S]) -> Result<()> {
        let mut conn = self.conn.lock().unwrap();
        let tx = conn.transaction()?;
        for name in names {
            let name = name.as_ref();
            drop_object(&tx, name)?;
            if let Some(hex) = name.strip_prefix("snapshots/") {
                tx.execute("DELETE FROM snapshots WHERE id = ?1", [hex])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    pub fn object(&self, name: &str) -> Result<Option<ObjectRow>> {
        let conn = self.reader()?;
        let row = conn
            .query_row(
                "SELECT name, kind, state, size, hash FROM objects WHERE name = ?1",
                [name],
                row_to_object,
            )
            .optional()?;
        row.transpose()
    }

    /// How many remote objects the journal knows, in any state.
    pub fn object_count(&self) -> Result<u64> {
        let conn = self.reader()?;
        Ok(conn.query_row("SELECT COUNT(*) FROM objects", [], |r| r.get::<_, i64>(0))? as u64)
    }

    pub fn objects_in_state(&self, state: State) -> Result<Vec<ObjectRow>> {
        let conn = self.reader()?;
        let mut stmt =
            conn.prepare("SELECT name, kind, state, size, hash FROM objects WHERE state = ?1 ORDER BY name")?;
        let rows = stmt.query_map([state.as_str()], row_to_object)?;
        rows.map(|r| r?).collect()
    }

    pub fn objects_of_kind(&self, kind: ObjectKind) -> Result<Vec<ObjectRow>> {
        let conn = self.reader()?;
        let mut stmt =
            conn.prepare("SELECT name, kind, state, size, hash FROM objects WHERE kind = ?1 ORDER BY name")?;
        let rows = stmt.query_map([kind.as_str()], row_to_object)?;
        rows.map(|r| r?).collect()
    }

    // ---- blobs ----------------------------------------------------------------------------

    /// Whether some pack in the journal holds blob `id`.
    /// Packs in the journal but damaged (or being deleted) do not count: data whose only copy
    /// is damaged is stored again.
    pub fn has_blob(&self, id: &Id) -> Result<bool> {
        let conn = self.reader()?;
        for row in blob_rows(&conn, id)? {
            if let Some((_, state)) = object_by_oid(&conn, row.pack)?
                && matches!(state, State::Uploading | State::Uploaded | State::Verified)
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Records that a pack is damaged (missing, truncated, corrupt), and which of its blobs
    /// cannot be read from it. Its other blobs stay readable; nothing deduplicates against
    /// it any more.
    pub fn mark_damaged(&self, pack: &str, reason: &str, blobs: &[(Id, String)]) -> Result<()> {
        let mut conn = self.conn.lock().unwrap();
        let tx = conn.transaction()?;
        tx.execute("UPDATE objects SET state = 'damaged', note = ?2 WHERE name = ?1", params![pack, reason])?;
        {
            let mut stmt = tx.prepare(
                "INSERT OR REPLACE INTO damaged_blobs (id, pack, reason)
                            VALUES (?1, (SELECT oid FROM objects WHERE name = ?2), ?3)",
            )?;
            for (id, why) in blobs {
                stmt.execute(params![&id.0[..], pack, why])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// A damaged pack was found whole after all (restored from a copy): use it again.
    pub fn clear_damage(&self, pack: &str) -> Result<()> {
        let mut conn = self.conn.lock().unwrap();
        let tx = conn.transaction()?;
        tx.execute(
            "UPDATE objects SET state = 'verified', note = NULL, verified_at = ?2 WHERE name = ?1",
            params![pack, now_secs()],
        )?;
        tx.execute(
            "DELETE FROM damaged_blobs WHERE pack = (SELECT oid FROM objects WHERE name = ?1)",
            [pack],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Records an index object with every pack it lists, in one transaction (journal rebuild
    /// and sync: a million blobs must not mean a million commits).
    pub fn record_index(
        &self,
        name: &str,
        size: u64,
        id: &Id,
        index: &crate::repo::format::IndexFile,
    ) -> Result<()> {
        let mut conn = self.conn.lock().unwrap();
        let tx = conn.transaction()?;
        {
            let mut obj = tx.prepare_cached(
                "INSERT OR IGNORE INTO objects (name, kind, state, size, hash, indexed_by, created_at)
                 VALUES (?1, ?2, 'uploaded', ?3, ?4, ?5, ?6)",
            )?;
            let mut mark = tx.prepare_cached(
                "UPDATE objects SET indexed_by = ?2 WHERE name = ?1 AND indexed_by IS NULL",
            )?;
            let mut listed =
                tx.prepare_cached("INSERT OR IGNORE INTO index_packs (idx, pack) VALUES (?1, ?2)")?;
            let now = now_secs();
            let mut rows: Vec<(&PackEntry, i64)> = Vec::new();
            for p in &index.packs {
                let pack = crate::repo::format::pack_name(&p.id);
                obj.execute(params![pack, "pack", p.size as i64, &p.id.0[..], name, now])?;
                mark.execute(params![pack, name])?;
                listed.execute(params![name, pack])?;
                let oid: i64 =
                    tx.query_row("SELECT oid FROM objects WHERE name = ?1", [&pack], |r| r.get(0))?;
                rows.extend(p.entries.iter().map(|e| (e, oid)));
            }
            // All of the index's blobs in id order: sorted inserts keep the B-tree writes local.
            rows.sort_unstable_by_key(|(e, _)| e.id);
            let mut ins = tx.prepare_cached(
                "INSERT OR REPLACE INTO blobs (id, pack, kind, offset, length, raw_length) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            for (e, oid) in rows {
                ins.execute(params![
                    &e.id.0[..],
                    oid,
                    e.kind as u8,
                    e.offset as i64,
                    e.length,
                    e.raw_length
                ])?;
            }
            obj.execute(params![name, "index", size as i64, &id.0[..], Option::<String>::None, now])?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Why a pack is damaged, as recorded.
    pub fn damage_note(&self, pack: &str) -> Result<Option<String>> {
        let conn = self.reader()?;
        Ok(conn
            .query_row("SELECT note FROM objects WHERE name = ?1", [pack], |r| r.get(0))
            .optional()?
            .flatten())
    }

    /// `None` if some pack can deliver blob `id`; otherwise why not.
    pub fn blob_lost(&self, id: &Id) -> Result<Option<String>> {
        let conn = self.reader()?;
        let mut reason = None;
        for row in blob_rows(&conn, id)? {
            let Some((pack, state)) = object_by_oid(&conn, row.pack)? else { continue };
            let damaged = if state == State::Damaged { blob_damage(&conn, id, row.pack)? } else { None };
            match (state, damaged) {
                (State::Uploaded | State::Verified, _) | (State::Damaged, None) => return Ok(None),
                (_, Some(why)) => reason = Some(why),
                (st, None) => reason = Some(format!("its pack {pack} is {}", st.as_str())),
            }
        }
        Ok(Some(reason.unwrap_or_else(|| format!("chunk {} is in no known pack", id.short()))))
    }

    /// Every pack holding blob `id`, with its state.
    pub fn packs_holding(&self, id: &Id) -> Result<Vec<(String, State)>> {
        let conn = self.reader()?;
        let mut out = Vec::new();
        for row in blob_rows(&conn, id)? {
            if let Some(found) = object_by_oid(&conn, row.pack)? {
                out.push(found);
            }
        }
        Ok(out)
    }

    /// Every object the journal knows, in any state.
    pub fn all_objects(&self) -> Result<Vec<ObjectRow>> {
        let conn = self.reader()?;
        let mut stmt = conn.prepare("SELECT name, kind, state, size, hash FROM objects ORDER BY name")?;
        let rows = stmt.query_map([], row_to_object)?;
        rows.map(|r| r?).collect()
    }

    /// Complete packs with the time they were last verified (None: never), least recently
    /// verified first.
    pub fn packs_by_verification(&self) -> Result<Vec<(ObjectRow, Option<i64>)>> {
        let conn = self.reader()?;
        let mut stmt = conn.prepare(
            "SELECT name, kind, state, size, hash, verified_at FROM objects
             WHERE kind = 'pack' AND state IN ('uploaded', 'verified')
             ORDER BY verified_at IS NOT NULL, verified_at, name",
        )?;
        let rows = stmt.query_map([], |r| Ok((row_to_object(r)?, r.get::<_, Option<i64>>(5)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (obj, at) = row?;
            out.push((obj?, at));
        }
        Ok(out)
    }

    /// Makes the packs an index listed eligible for a new index (the index is gone).
    pub fn unindex(&self, index: &str) -> Result<()> {
        let conn = self.conn.lock().unwrap();
        conn.execute("UPDATE objects SET indexed_by = NULL WHERE indexed_by = ?1", [index])?;
        conn.execute("DELETE FROM index_packs WHERE idx = ?1", [index])?;
        Ok(())
    }

    /// Replaces a snapshot's record (after `repair` rewrote it under a new id).
    pub fn rename_snapshot(&self, old: &Id, new: &Id, snap: &Snapshot) -> Result<()> {
        let mut conn = self.conn.lock().unwrap();
        let tx = conn.transaction()?;
        tx.execute("DELETE FROM snapshots WHERE id = ?1", [old.hex()])?;
        tx.execute(
            "INSERT OR REPLACE INTO snapshots (id, time_ns, partial, data) VALUES (?1, ?2, ?3, ?4)",
            params![new.hex(), snap.time_ns, snap.partial, snap.encode()?],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Where blob `id` of `kind` is stored, preferring packs known to be complete: verified,
    /// then uploaded, then a damaged pack whose copy of this blob is not known to be bad,
    /// and last a damaged pack's copy marked bad (readers authenticate every blob anyway).
    pub fn blob_location(&self, id: &Id, kind: BlobKind) -> Result<Option<BlobLocation>> {
        let conn = self.reader()?;
        let mut best: Option<(u8, BlobLocation)> = None;
        for row in blob_rows(&conn, id)? {
            if row.kind != kind as u8 {
                continue;
            }
            let Some((pack, state)) = object_by_oid(&conn, row.pack)? else { continue };
            let rank = match state {
                State::Verified => 3,
                State::Uploaded => 2,
                State::Damaged if blob_damage(&conn, id, row.pack)?.is_none() => 1,
                // `damaged` is a hint, not a verdict (it may have been a failing plugin, or
                // the pack may be back from a copy): the last resort is still tried, and
                // authentication decides chunk by chunk.
                State::Damaged => 0,
                _ => continue,
            };
            if best.as_ref().is_none_or(|(r, _)| rank > *r) {
                let loc = BlobLocation {
                    pack: pack_id(&pack)?,
                    offset: row.offset,
                    length: row.length,
                    raw_length: row.raw_length,
                };
                best = Some((rank, loc));
            }
        }
        Ok(best.map(|(_, l)| l))
    }

    /// The blobs of one pack, by offset.
    pub fn pack_entries(&self, pack: &str) -> Result<Vec<PackEntry>> {
        let conn = self.reader()?;
        let mut stmt = conn.prepare_cached(
            "SELECT id, kind, offset, length, raw_length FROM blobs
             WHERE pack = (SELECT oid FROM objects WHERE name = ?1) ORDER BY offset",
        )?;
        let rows = stmt.query_map([pack], row_to_entry)?;
        rows.map(|r| r?).collect()
    }

    // ---- index coverage -------------------------------------------------------------------

    /// Uploaded packs that no index object lists yet.
    pub fn unindexed_packs(&self) -> Result<Vec<ObjectRow>> {
        let conn = self.reader()?;
        let mut stmt = conn.prepare(
            "SELECT name, kind, state, size, hash FROM objects
             WHERE kind = 'pack' AND state IN ('uploaded', 'verified') AND indexed_by IS NULL ORDER BY name",
        )?;
        let rows = stmt.query_map([], row_to_object)?;
        rows.map(|r| r?).collect()
    }

    pub fn mark_indexed(&self, packs: &[String], index: &str) -> Result<()> {
        let mut conn = self.conn.lock().unwrap();
        let tx = conn.transaction()?;
        {
            let mut stmt = tx.prepare("UPDATE objects SET indexed_by = ?2 WHERE name = ?1")?;
            let mut listed = tx.prepare("INSERT OR IGNORE INTO index_packs (idx, pack) VALUES (?1, ?2)")?;
            for p in packs {
                stmt.execute(params![p, index])?;
                listed.execute(params![index, p])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Forgets what vanished from the repository (another machine's prune or forget), in
    /// one transaction: the index objects `indexes`, then every pack that no remaining index
    /// lists (packs awaiting their first index are this client's own, and kept), with their
    /// blobs; the file-cache and resume rows that use a chunk no pack holds any more (those
    /// files are read again); and the snapshots `snapshots`, object and row.
    pub fn forget_vanished(&self, indexes: &[String], snapshots: &[Id]) -> Result<Forgotten> {
        let mut out = Forgotten::default();
        let mut conn = self.conn.lock().unwrap();
        let tx = conn.transaction()?;
        // The packs the vanished indexes listed; those no other index lists are gone too.
        let mut candidates: Vec<String> = Vec::new();
        for name in indexes {
            {
                let mut stmt = tx.prepare_cached("SELECT pack FROM index_packs WHERE idx = ?1")?;
                let rows = stmt.query_map([name], |r| r.get::<_, String>(0))?;
                for row in rows {
                    candidates.push(row?);
                }
            }
            drop_object(&tx, name)?;
            out.indexes += 1;
        }
        candidates.sort();
        candidates.dedup();
        let mut vanished_packs = Vec::new();
        for pack in candidates {
            let other: Option<String> = tx
                .query_row("SELECT idx FROM index_packs WHERE pack = ?1 LIMIT 1", [&pack], |r| r.get(0))
                .optional()?;
            match other {
                // Still listed: keep it, named by an index that exists.
                Some(idx) => {
                    tx.execute("UPDATE objects SET indexed_by = ?2 WHERE name = ?1", params![pack, idx])?;
                }
                None => vanished_packs.push(pack),
            }
        }
        let mut lost: HashSet<Id> = HashSet::new();
        for pack in &vanished_packs {
            let ids: Vec<Vec<u8>> = {
                let mut stmt = tx.prepare_cached(
                    "SELECT id FROM blobs WHERE pack = (SELECT oid FROM objects WHERE name = ?1)",
                )?;
                let rows = stmt.query_map([pack], |r| r.get::<_, Vec<u8>>(0))?;
                rows.collect::<rusqlite::Result<_>>()?
            };
            drop_object(&tx, pack)?;
            lost.extend(ids.iter().filter_map(|b| b.as_slice().try_into().ok().map(Id)));
            out.packs += 1;
        }
        // Chunks still held by another pack are not lost.
        lost.retain(|id| {
            tx.query_row("SELECT 1 FROM blobs WHERE id = ?1 LIMIT 1", [&id.0[..]], |_| Ok(()))
                .optional()
                .map(|found| found.is_none())
                .unwrap_or(true)
        });
        if !lost.is_empty() {
            for table in ["file_cache", "partial_files"] {
                let stale: Vec<Vec<u8>> = {
                    let mut stmt = tx.prepare(&format!("SELECT path, content FROM {table}"))?;
                    let rows =
                        stmt.query_map([], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?)))?;
                    let mut stale = Vec::new();
                    for row in rows {
                        let (path, content) = row?;
                        if blob_to_ids(&content).iter().any(|id| lost.contains(id)) {
                            stale.push(path);
                        }
                    }
                    stale
                };
                for path in &stale {
                    tx.execute(&format!("DELETE FROM {table} WHERE path = ?1"), [path])?;
                }
                out.cached_files += stale.len() as u64;
            }
        }
        for id in snapshots {
            drop_object(&tx, &crate::repo::format::snapshot_name(id))?;
            tx.execute("DELETE FROM snapshots WHERE id = ?1", [id.hex()])?;
            out.snapshots += 1;
        }
        tx.commit()?;
        Ok(out)
    }

    // ---- snapshots ------------------------------------------------------------------------

    pub fn add_snapshot(&self, id: &Id, snap: &Snapshot) -> Result<()> {
        let conn = self.conn.lock().unwrap();
        conn.execute(
            "INSERT OR REPLACE INTO snapshots (id, time_ns, partial, data) VALUES (?1, ?2, ?3, ?4)",
            params![id.hex(), snap.time_ns, snap.partial, snap.encode()?],
        )?;
        Ok(())
    }

    pub fn remove_snapshot(&self, id: &Id) -> Result<()> {
        let conn = self.conn.lock().unwrap();
        conn.execute("DELETE FROM snapshots WHERE id = ?1", [id.hex()])?;
        Ok(())
    }

    /// All snapshots, oldest first.
    pub fn snapshots(&self) -> Result<Vec<(Id, Snapshot)>> {
        let conn = self.reader()?;
        let mut stmt = conn.prepare("SELECT id, data FROM snapshots ORDER BY time_ns, id")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, data) = row?;
            let id = Id::from_hex(&id).ok_or_else(|| anyhow!("bad snapshot id {id:?} in the journal"))?;
            out.push((id, Snapshot::decode(&data)?));
        }
        Ok(out)
    }

    // ---- runs -----------------------------------------------------------------------------

    /// Records one run of a job (`cairn run`).
    pub fn add_run(&self, run: &RunRecord) -> Result<()> {
        let conn = self.conn.lock().unwrap();
        conn.execute(
            "INSERT INTO runs (job, started_ns, ended_ns, outcome, snapshot, bytes_read, bytes_added, pruned, error)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                run.job,
                run.started_ns,
                run.ended_ns,
                run.outcome.as_str(),
                run.snapshot,
                run.bytes_read as i64,
                run.bytes_added as i64,
                run.pruned,
                run.error
            ],
        )?;
        Ok(())
    }

    /// Every recorded run, oldest first.
    pub fn runs(&self) -> Result<Vec<RunRecord>> {
        query_runs(&*self.reader()?)
    }

    /// The runs recorded in the journal at `path`, read without opening it for writing (no
    /// migration, no lock: `cairn status` reads while a backup runs); none from a journal
    /// older than schema 3.
    pub fn read_runs(path: &Path) -> Result<Vec<RunRecord>> {
        let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        let tables: i64 = conn.query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'runs'",
            [],
            |r| r.get(0),
        )?;
        if tables == 0 {
            return Ok(Vec::new());
        }
        query_runs(&conn)
    }
}

fn query_runs(conn: &Connection) -> Result<Vec<RunRecord>> {
    {
        let mut stmt = conn.prepare(
            "SELECT job, started_ns, ended_ns, outcome, snapshot, bytes_read, bytes_added, pruned, error
             FROM runs ORDER BY started_ns, id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                RunRecord {
                    job: r.get(0)?,
                    started_ns: r.get(1)?,
                    ended_ns: r.get(2)?,
                    outcome: RunOutcome::Success,
                    snapshot: r.get(4)?,
                    bytes_read: r.get::<_, i64>(5)? as u64,
                    bytes_added: r.get::<_, i64>(6)? as u64,
                    pruned: r.get(7)?,
                    error: r.get(8)?,
                },
                r.get::<_, String>(3)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (mut run, outcome) = row?;
            run.outcome = RunOutcome::parse(&outcome)
                .ok_or_else(|| anyhow!("unknown run outcome {outcome:?} in the journal"))?;
            out.push(run);
        }
        Ok(out)
    }
}

impl Journal {
    // ---- file cache -----------------------------------------------------------------------

    pub fn cached_file(&self, path: &[u8]) -> Result<Option<CachedFile>> {
        let conn = self.reader()?;
        let mut stmt = conn.prepare_cached(
            "SELECT size, mtime_ns, ctime_ns, inode, content FROM file_cache WHERE path = ?1",
        )?;
        Ok(stmt
            .query_row([path], |r| {
                Ok(CachedFile {
                    size: r.get::<_, i64>(0)? as u64,
                    mtime_ns: r.get(1)?,
                    ctime_ns: r.get(2)?,
                    inode: r.get::<_, i64>(3)? as u64,
                    content: blob_to_ids(&r.get::<_, Vec<u8>>(4)?),
                })
            })
            .optional()?)
    }

    /// Stages a file-cache row; it becomes visible when a later publish covers it (a
    /// checkpoint's [`Journal::publish_checkpoint`] if staged before its seal, or the final
    /// [`Journal::publish_staged_files`]).
    pub fn stage_file(&self, path: Vec<u8>, file: CachedFile) -> Result<()> {
        let batch = {
            let mut staged = self.staged.lock().unwrap();
            let generation = staged.generation;
            staged.rows.push((generation, path, file));
            if staged.rows.len() < STAGE_BATCH {
                return Ok(());
            }
            std::mem::take(&mut staged.rows)
        };
        self.write_staged(batch)
    }

    /// Marks the rows staged so far: a checkpoint seals while no chunk is being stored and
    /// right before it flushes its packs, so every sealed row refers only to chunks in packs
    /// that its upload barrier waits for. Rows staged later wait for the next seal.
    pub fn seal_staged(&self) -> Seal {
        let mut staged = self.staged.lock().unwrap();
        let seal = Seal(staged.generation);
        staged.generation += 1;
        seal
    }

    fn write_staged(&self, batch: Vec<(u64, Vec<u8>, CachedFile)>) -> Result<()> {
        let mut conn = self.conn.lock().unwrap();
        let tx = conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT OR REPLACE INTO temp.staged_files
                 (path, generation, size, mtime_ns, ctime_ns, inode, content)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            for (generation, path, f) in batch {
                stmt.execute(params![
                    path,
                    generation as i64,
                    f.size as i64,
                    f.mtime_ns,
                    f.ctime_ns,
                    f.inode as i64,
                    ids_to_blob(&f.content)
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Publishes every staged row. Call only once every pack they refer to is uploaded.
    pub fn publish_staged_files(&self) -> Result<()> {
        self.publish(i64::MAX, None)
    }

    /// A checkpoint's publish, once the packs of its seal are uploaded, in one transaction:
    /// the rows staged before `seal` enter the file cache (their partial rows go), and the
    /// partial rows become `partials` (the files being read at the seal).
    pub fn publish_checkpoint(&self, seal: Seal, partials: &[(Vec<u8>, PartialFile)]) -> Result<()> {
        self.publish(seal.0 as i64, Some(partials))
    }

    fn publish(&self, upto: i64, partials: Option<&[(Vec<u8>, PartialFile)]>) -> Result<()> {
        let batch = std::mem::take(&mut self.staged.lock().unwrap().rows);
        self.write_staged(batch)?;
        let mut conn = self.conn.lock().unwrap();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT OR REPLACE INTO file_cache (path, size, mtime_ns, ctime_ns, inode, content)
             SELECT path, size, mtime_ns, ctime_ns, inode, content FROM temp.staged_files
             WHERE generation <= ?1",
            [upto],
        )?;
        tx.execute(
            "DELETE FROM partial_files WHERE path IN
             (SELECT path FROM temp.staged_files WHERE generation <= ?1)",
            [upto],
        )?;
        tx.execute("DELETE FROM temp.staged_files WHERE generation <= ?1", [upto])?;
        if let Some(partials) = partials {
            let mut stmt = tx.prepare_cached(
                "INSERT OR REPLACE INTO partial_files (path, size, mtime_ns, ctime_ns, inode, offset, content)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            for (path, p) in partials {
                stmt.execute(params![
                    path,
                    p.file.size as i64,
                    p.file.mtime_ns,
                    p.file.ctime_ns,
                    p.file.inode as i64,
                    p.offset as i64,
                    ids_to_blob(&p.file.content)
                ])?;
            }
        }
        crate::testing::pause_point("journal-publish-file-cache");
        tx.commit()?;
        Ok(())
    }

    /// The durable chunk prefix recorded for `path` by an interrupted run, if any.
    pub fn partial_file(&self, path: &[u8]) -> Result<Option<PartialFile>> {
        let conn = self.reader()?;
        let mut stmt = conn.prepare_cached(
            "SELECT size, mtime_ns, ctime_ns, inode, content, offset FROM partial_files WHERE path = ?1",
        )?;
        Ok(stmt
            .query_row([path], |r| {
                Ok(PartialFile {
                    file: CachedFile {
                        size: r.get::<_, i64>(0)? as u64,
                        mtime_ns: r.get(1)?,
                        ctime_ns: r.get(2)?,
                        inode: r.get::<_, i64>(3)? as u64,
                        content: blob_to_ids(&r.get::<_, Vec<u8>>(4)?),
                    },
                    offset: r.get::<_, i64>(5)? as u64,
                })
            })
            .optional()?)
    }

    /// Drops the durable prefixes recorded for `sources` and every path below them.
    pub fn forget_partial_files_under(&self, sources: &[std::path::PathBuf]) -> Result<()> {
        use std::os::unix::ffi::OsStrExt as _;
        let conn = self.conn.lock().unwrap();
        let mut stmt = conn.prepare_cached(
            "DELETE FROM partial_files WHERE path = ?1 OR substr(path, 1, length(?2)) = ?2",
        )?;
        for source in sources {
            let exact = source.as_os_str().as_bytes().to_vec();
            let mut below = exact.clone();
            if below.last() != Some(&b'/') {
                below.push(b'/');
            }
            stmt.execute(params![exact, below])?;
        }
        Ok(())
    }

    /// Drops the file-cache and partial-file rows of these paths (their chunks are about to
    /// be pruned), so the next backup reads those files again.
    pub fn forget_cached_files(&self, paths: &[Vec<u8>]) -> Result<()> {
        let mut conn = self.conn.lock().unwrap();
        let tx = conn.transaction()?;
        {
            let mut cache = tx.prepare("DELETE FROM file_cache WHERE path = ?1")?;
            let mut partial = tx.prepare("DELETE FROM partial_files WHERE path = ?1")?;
            for p in paths {
                cache.execute([p])?;
                partial.execute([p])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Drops the whole file cache (after repository damage, so every file is read again).
    pub fn clear_file_cache(&self) -> Result<()> {
        let conn = self.conn.lock().unwrap();
        conn.execute_batch("DELETE FROM file_cache; DELETE FROM partial_files;")?;
        Ok(())
    }
}

/// What [`Journal::forget_vanished`] forgot.
#[derive(Default, Debug, Clone, Copy)]
pub struct Forgotten {
    pub indexes: u64,
    pub packs: u64,
    pub snapshots: u64,
    /// File-cache and resume rows dropped because a chunk of theirs is gone.
    pub cached_files: u64,
}

/// One row of `blobs`.
struct BlobRow {
    pack: i64,
    kind: u8,
    offset: u64,
    length: u32,
    raw_length: u32,
}

// The lookups below are single-table statements on purpose: SQLite (3.54) re-prepares
// joins on every execution, which costs more than the query itself on these hot paths.

fn blob_rows(conn: &Connection, id: &Id) -> Result<Vec<BlobRow>> {
    let mut stmt =
        conn.prepare_cached("SELECT pack, kind, offset, length, raw_length FROM blobs WHERE id = ?1")?;
    let rows = stmt.query_map([&id.0[..]], |r| {
        Ok(BlobRow {
            pack: r.get(0)?,
            kind: r.get(1)?,
            offset: r.get::<_, i64>(2)? as u64,
            length: r.get(3)?,
            raw_length: r.get(4)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

fn object_by_oid(conn: &Connection, oid: i64) -> Result<Option<(String, State)>> {
    let mut stmt = conn.prepare_cached("SELECT name, state FROM objects WHERE oid = ?1")?;
    let row = stmt.query_row([oid], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))).optional()?;
    match row {
        Some((name, state)) => Ok(Some((name, State::parse(&state)?))),
        None => Ok(None),
    }
}

fn blob_damage(conn: &Connection, id: &Id, oid: i64) -> Result<Option<String>> {
    let mut stmt = conn.prepare_cached("SELECT reason FROM damaged_blobs WHERE id = ?1 AND pack = ?2")?;
    Ok(stmt.query_row(params![&id.0[..], oid], |r| r.get(0)).optional()?)
}

/// Records the blobs of `pack` (which must be in `objects`), in id order: a B-tree takes
/// sorted inserts much faster than random ones.
fn insert_blobs(tx: &rusqlite::Transaction<'_>, pack: &str, blobs: &[PackEntry]) -> Result<()> {
    if blobs.is_empty() {
        return Ok(());
    }
    let oid: i64 = tx.query_row("SELECT oid FROM objects WHERE name = ?1", [pack], |r| r.get(0))?;
    let mut sorted: Vec<&PackEntry> = blobs.iter().collect();
    sorted.sort_unstable_by_key(|e| e.id);
    let mut stmt = tx.prepare_cached(
        "INSERT OR REPLACE INTO blobs (id, pack, kind, offset, length, raw_length) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    for e in sorted {
        stmt.execute(params![&e.id.0[..], oid, e.kind as u8, e.offset as i64, e.length, e.raw_length])?;
    }
    Ok(())
}

fn row_to_object(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<ObjectRow>> {
    let name: String = r.get(0)?;
    let kind: String = r.get(1)?;
    let state: String = r.get(2)?;
    let size: i64 = r.get(3)?;
    let hash: Option<Vec<u8>> = r.get(4)?;
    Ok((|| {
        Ok(ObjectRow {
            name,
            kind: ObjectKind::parse(&kind)?,
            state: State::parse(&state)?,
            size: size as u64,
            hash: hash.as_deref().and_then(Id::from_slice),
        })
    })())
}

fn row_to_entry(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<PackEntry>> {
    let id: Vec<u8> = r.get(0)?;
    let kind: u8 = r.get(1)?;
    let offset: i64 = r.get(2)?;
    let length: u32 = r.get(3)?;
    let raw_length: u32 = r.get(4)?;
    Ok((|| {
        Ok(PackEntry {
            kind: BlobKind::from_u8(kind).ok_or_else(|| anyhow!("bad blob kind {kind} in the journal"))?,
            id: Id::from_slice(&id).ok_or_else(|| anyhow!("bad blob id in the journal"))?,
            offset: offset as u64,
            length,
            raw_length,
        })
    })())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_lifecycle_and_file_cache() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(&dir.path().join("j.sqlite")).unwrap();
        let id = Id([1; 32]);
        let e = PackEntry { kind: BlobKind::Data, id, offset: 0, length: 100, raw_length: 60 };
        j.begin_upload("data/aa/x", ObjectKind::Pack, 200, &Id([9; 32]), &[e]).unwrap();
        assert!(j.has_blob(&id).unwrap());
        // Not a usable location until uploaded.
        assert!(j.blob_location(&id, BlobKind::Data).unwrap().is_none());
        assert_eq!(j.objects_in_state(State::Uploading).unwrap().len(), 1);
        // Only the protocol's transitions change a state, each from the states it may follow.
        assert!(j.cancel_delete("data/aa/x").unwrap_err().to_string().contains("is uploading"));
        assert!(j.confirm_upload("data/bb/y").unwrap_err().to_string().contains("no object"));
        j.confirm_upload("data/aa/x").unwrap();
        assert!(j.confirm_upload("data/aa/x").is_err(), "confirmed twice");
        assert!(j.upload_again("data/aa/x").is_err(), "uploaded is not deleting");
        assert!(j.blob_location(&id, BlobKind::Data).is_err(), "pack name must hold an id");
        j.forget_object("data/aa/x").unwrap();
        assert!(!j.has_blob(&id).unwrap());

        let f = CachedFile { size: 5, mtime_ns: 1, ctime_ns: 2, inode: 3, content: vec![id] };
        j.stage_file(b"/a".to_vec(), f.clone()).unwrap();
        assert!(j.cached_file(b"/a").unwrap().is_none(), "staged rows are not visible");
        j.publish_staged_files().unwrap();
        assert_eq!(j.cached_file(b"/a").unwrap(), Some(f));
    }

    #[test]
    fn a_complete_run_forgets_the_prefixes_below_its_sources_only() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(&dir.path().join("j.sqlite")).unwrap();
        let f = CachedFile { size: 5, mtime_ns: 1, ctime_ns: 2, inode: 3, content: vec![Id([1; 32])] };
        let partial = PartialFile { file: f, offset: 2 };
        let paths: [&[u8]; 4] = [b"/src", b"/src/a", b"/src/d/b", b"/srcx/c"];
        let rows: Vec<_> = paths.iter().map(|p| (p.to_vec(), partial.clone())).collect();
        j.publish_checkpoint(j.seal_staged(), &rows).unwrap();
        j.forget_partial_files_under(&[std::path::PathBuf::from("/src")]).unwrap();
        for p in paths {
            assert_eq!(
                j.partial_file(p).unwrap().is_some(),
                p == b"/srcx/c",
                "{}",
                String::from_utf8_lossy(p)
            );
        }
    }

    #[test]
    fn a_checkpoint_publishes_only_rows_staged_before_its_seal() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(&dir.path().join("j.sqlite")).unwrap();
        let row = |n: u8| CachedFile {
            size: 5,
            mtime_ns: 1,
            ctime_ns: 2,
            inode: n as u64,
            content: vec![Id([n; 32])],
        };
        let partial = PartialFile { file: row(9), offset: 3 };
        j.stage_file(b"/a".to_vec(), row(1)).unwrap();
        let seal = j.seal_staged();
        j.stage_file(b"/b".to_vec(), row(2)).unwrap();
        j.publish_checkpoint(seal, &[(b"/big".to_vec(), partial.clone()), (b"/b".to_vec(), partial.clone())])
            .unwrap();
        assert_eq!(j.cached_file(b"/a").unwrap(), Some(row(1)));
        assert!(j.cached_file(b"/b").unwrap().is_none(), "staged after the seal: not yet durable");
        assert_eq!(j.partial_file(b"/big").unwrap(), Some(partial.clone()));
        j.publish_staged_files().unwrap();
        assert_eq!(j.cached_file(b"/b").unwrap(), Some(row(2)));
        assert!(j.partial_file(b"/b").unwrap().is_none(), "a complete row replaces the partial one");
        assert_eq!(j.partial_file(b"/big").unwrap(), Some(partial));
        j.clear_file_cache().unwrap();
        assert!(j.partial_file(b"/big").unwrap().is_none());
    }

    #[test]
    fn forgetting_a_vanished_index_forgets_the_packs_only_it_listed() {
        use crate::repo::format::{IndexFile, IndexPack, index_name, pack_name};
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(&dir.path().join("j.sqlite")).unwrap();
        let entry =
            |n: u8| PackEntry { kind: BlobKind::Data, id: Id([n; 32]), offset: 0, length: 40, raw_length: 1 };
        let pack = |n: u8| IndexPack { id: Id([100 + n; 32]), size: 100, entries: vec![entry(n)] };
        let (a, b) = (index_name(&Id([1; 32])), index_name(&Id([2; 32])));
        j.record_index(&a, 10, &Id([1; 32]), &IndexFile { version: 1, packs: vec![pack(1), pack(2)] })
            .unwrap();
        j.record_index(&b, 10, &Id([2; 32]), &IndexFile { version: 1, packs: vec![pack(2)] }).unwrap();
        // This client's pack, awaiting its first index.
        let own = pack_name(&Id([103; 32]));
        j.record_present(&own, ObjectKind::Pack, 100, Some(&Id([103; 32])), &[entry(3)]).unwrap();
        let cached = |n: u8| CachedFile {
            size: 1,
            mtime_ns: 1,
            ctime_ns: 1,
            inode: n as u64,
            content: vec![Id([n; 32])],
        };
        for n in 1..=3 {
            j.stage_file(vec![n], cached(n)).unwrap();
        }
        j.publish_staged_files().unwrap();

        let f = j.forget_vanished(std::slice::from_ref(&a), &[]).unwrap();
        assert_eq!((f.indexes, f.packs, f.cached_files), (1, 1, 1));
        assert!(j.object(&a).unwrap().is_none());
        assert!(j.object(&pack_name(&Id([101; 32]))).unwrap().is_none(), "listed only by the vanished index");
        assert!(!j.has_blob(&Id([1; 32])).unwrap(), "deduplication no longer trusts its chunk");
        assert!(j.cached_file(&[1]).unwrap().is_none(), "a file using the chunk is read again");
        assert!(j.has_blob(&Id([2; 32])).unwrap(), "still listed by the other index");
        assert!(j.has_blob(&Id([3; 32])).unwrap(), "own pack awaiting its index is kept");
        assert_eq!(j.cached_file(&[2]).unwrap(), Some(cached(2)));
        // The kept pack is now attributed to the remaining index: forgetting that one too
        // forgets the pack.
        let f = j.forget_vanished(std::slice::from_ref(&b), &[]).unwrap();
        assert_eq!((f.indexes, f.packs), (1, 1));
        assert!(!j.has_blob(&Id([2; 32])).unwrap());
        assert!(j.has_blob(&Id([3; 32])).unwrap());
    }

    #[test]
    fn a_schema_1_journal_is_migrated_and_keeps_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("j.sqlite");
        {
            let c = Connection::open(&p).unwrap();
            c.execute_batch(
                "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
                 CREATE TABLE file_cache (path BLOB PRIMARY KEY, size INTEGER NOT NULL,
                    mtime_ns INTEGER NOT NULL, ctime_ns INTEGER NOT NULL, inode INTEGER NOT NULL,
                    content BLOB NOT NULL) WITHOUT ROWID;
                 INSERT INTO file_cache VALUES (x'2f61', 5, 1, 2, 3, zeroblob(32));
                 INSERT INTO meta VALUES ('k', 'v');
                 CREATE TABLE objects (oid INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, kind TEXT NOT NULL,
                    state TEXT NOT NULL, size INTEGER NOT NULL, hash BLOB, indexed_by TEXT,
                    created_at INTEGER NOT NULL, verified_at INTEGER, note TEXT);
                 INSERT INTO objects (name, kind, state, size, indexed_by, created_at)
                    VALUES ('data/ab/ab', 'pack', 'uploaded', 1, 'index/cd', 0);
                 PRAGMA user_version = 1;",
            )
            .unwrap();
        }
        let j = Journal::open(&p).unwrap();
        assert_eq!(j.meta("k").unwrap().as_deref(), Some("v"));
        let cached = j.cached_file(b"/a").unwrap().unwrap();
        assert_eq!((cached.size, cached.content), (5, vec![Id([0; 32])]));
        assert!(j.partial_file(b"/a").unwrap().is_none());
        let listed: (String, String) = j
            .conn
            .lock()
            .unwrap()
            .query_row("SELECT idx, pack FROM index_packs", [], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap();
        assert_eq!(
            listed,
            ("index/cd".into(), "data/ab/ab".into()),
            "schema 4 knows which index lists the pack"
        );
        let version: i64 = j.conn.lock().unwrap().query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        assert!(j.runs().unwrap().is_empty(), "schema 3 adds an empty runs table");
    }

    #[test]
    fn runs_are_recorded_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(&dir.path().join("j.sqlite")).unwrap();
        let run = RunRecord {
            job: "home".into(),
            started_ns: 10,
            ended_ns: 20,
            outcome: RunOutcome::Failure,
            snapshot: None,
            bytes_read: 5,
            bytes_added: 3,
            pruned: false,
            error: Some("plugin s3 timed out".into()),
        };
        j.add_run(&run).unwrap();
        j.add_run(&RunRecord { started_ns: 30, outcome: RunOutcome::Warning, ..run.clone() }).unwrap();
        let runs = j.runs().unwrap();
        assert_eq!(runs.len(), 2);
        assert_eq!(
            (runs[0].outcome, runs[0].error.as_deref()),
            (RunOutcome::Failure, Some("plugin s3 timed out"))
        );
        assert_eq!((runs[1].started_ns, runs[1].outcome), (30, RunOutcome::Warning));
    }

    #[test]
    fn garbage_journal_gives_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("j.sqlite");
        std::fs::write(&p, vec![0x42u8; 8192]).unwrap();
        let err = format!("{:#}", Journal::open(&p).err().unwrap());
        assert!(err.contains("--rebuild-journal"), "{err}");
    }
}
