//! Every byte cairn stores remotely. `docs/format.md` describes the same in prose.
//!
//! Objects:
//! - `config`: the repository parameters, sealed (JSON inside).
//! - `keys/<id>`: key files (JSON, see `crypto::KeyFile`).
//! - `data/<id[0..2]>/<id>`: packs of blobs (file chunks and directory trees).
//! - `index/<id>`: which blobs live where, for a set of packs.
//! - `snapshots/<id>`: one backup run's root tree and facts.
//! - `locks/<id>`: a command's claim on the repository (see `repo::locks`).
//!
//! `<id>` is the hex blake3 of the object's bytes, so every name is content-addressed and
//! can be checked without the key. Sealed payloads start with a byte that says how the rest
//! is compressed (0: stored, 1: zstd).

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::backend::Backend;
use crate::crypto::{AuthError, MasterKey, OVERHEAD};
use crate::ids::Id;
use crate::plugin::{BackendError, ErrorKind};

pub const PACK_MAGIC: &[u8; 8] = b"CAIRNPK1";
/// Length of a pack's fixed trailer: header length (u32 LE) and magic.
pub const PACK_TRAILER: usize = 12;

const STORED: u8 = 0;
const ZSTD: u8 = 1;

/// What a blob holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[repr(u8)]
pub enum BlobKind {
    Data = 0,
    Tree = 1,
}

impl BlobKind {
    pub fn from_u8(v: u8) -> Option<BlobKind> {
        match v {
            0 => Some(BlobKind::Data),
            1 => Some(BlobKind::Tree),
            _ => None,
        }
    }
}

/// Remote object names.
pub fn pack_name(id: &Id) -> String {
    let h = id.hex();
    format!("data/{}/{h}", &h[..2])
}
pub fn index_name(id: &Id) -> String {
    format!("index/{}", id.hex())
}
pub fn snapshot_name(id: &Id) -> String {
    format!("snapshots/{}", id.hex())
}
pub fn key_name(id: &Id) -> String {
    format!("keys/{}", id.hex())
}
pub fn lock_name(id: &Id) -> String {
    format!("locks/{}", id.hex())
}
/// Where lock objects live.
pub const LOCKS_PREFIX: &str = "locks/";
pub const CONFIG_NAME: &str = "config";

/// Where `repair --quarantine` sets aside objects it will not delete.
pub const QUARANTINE_PREFIX: &str = "quarantine/";

/// A remote object name in cairn's own naming scheme, exactly as `pack_name`, `index_name`,
/// `snapshot_name`, `key_name`, [`CONFIG_NAME`] and `repair --quarantine` write it.
///
/// Names a plugin returns (listings, unfinished uploads) are untrusted: anything that does not
/// parse into this is foreign. A foreign name is reported (escaped), never passed back to the
/// plugin as an upload or delete target, so a hostile or broken backend cannot steer cairn
/// into writing or deleting `../../x` or names with control characters.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ObjectName {
    Config,
    Key(Id),
    Pack(Id),
    Index(Id),
    Snapshot(Id),
    Lock(Id),
    /// `quarantine/<name>`, or `quarantine/<name>.<n>` (n >= 1) when that name was taken in
    /// an append-only repository, where nothing is ever replaced.
    Quarantined(Box<ObjectName>, Option<u32>),
}

impl ObjectName {
    /// The name, if `name` is exactly one that cairn writes: lowercase hex ids of the right
    /// length, a pack's two-digit folder matching its id, no other prefix, suffix or form.
    pub fn parse(name: &str) -> Option<ObjectName> {
        let parsed = match name.strip_prefix(QUARANTINE_PREFIX) {
            Some(rest) => Self::parse_quarantined(rest)?,
            None => Self::parse_plain(name)?,
        };
        // Exactness: what we would write for this value is the very name given (this refuses
        // uppercase hex and a pack folder that does not match the id).
        (parsed.to_string() == name).then_some(parsed)
    }

    fn parse_plain(name: &str) -> Option<ObjectName> {
        if name == CONFIG_NAME {
            return Some(ObjectName::Config);
        }
        let (kind, id) = name.split_once('/')?;
        match kind {
            "keys" => Some(ObjectName::Key(Id::from_hex(id)?)),
            "index" => Some(ObjectName::Index(Id::from_hex(id)?)),
            "snapshots" => Some(ObjectName::Snapshot(Id::from_hex(id)?)),
            "locks" => Some(ObjectName::Lock(Id::from_hex(id)?)),
            "data" => Some(ObjectName::Pack(Id::from_hex(id.split_once('/')?.1)?)),
            _ => None,
        }
    }

    fn parse_quarantined(rest: &str) -> Option<ObjectName> {
        if let Some(inner) = Self::parse_plain(rest) {
            return Some(ObjectName::Quarantined(Box::new(inner), None));
        }
        let (inner, n) = rest.rsplit_once('.')?;
        let n: u32 = n.parse().ok().filter(|&n| n >= 1)?;
        Some(ObjectName::Quarantined(Box::new(Self::parse_plain(inner)?), Some(n)))
    }

    /// The id the object's bytes hash to, for names that are content-addressed. A quarantined
    /// copy is not: it holds whatever was set aside, damaged or not.
    pub fn content_id(&self) -> Option<Id> {
        match self {
            ObjectName::Key(id)
            | ObjectName::Pack(id)
            | ObjectName::Index(id)
            | ObjectName::Snapshot(id)
            | ObjectName::Lock(id) => Some(*id),
            ObjectName::Config | ObjectName::Quarantined(..) => None,
        }
    }

    /// Where `repair --quarantine` puts this object: attempt 0 is `quarantine/<name>`,
    /// attempt n is `quarantine/<name>.<n>`. `None` for a name that is already quarantined.
    pub fn quarantined(&self, attempt: u32) -> Option<ObjectName> {
        match self {
            ObjectName::Quarantined(..) => None,
            other => Some(ObjectName::Quarantined(Box::new(other.clone()), (attempt > 0).then_some(attempt))),
        }
    }
}

impl std::fmt::Display for ObjectName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ObjectName::Config => f.write_str(CONFIG_NAME),
            ObjectName::Key(id) => f.write_str(&key_name(id)),
            ObjectName::Pack(id) => f.write_str(&pack_name(id)),
            ObjectName::Index(id) => f.write_str(&index_name(id)),
            ObjectName::Snapshot(id) => f.write_str(&snapshot_name(id)),
            ObjectName::Lock(id) => f.write_str(&lock_name(id)),
            ObjectName::Quarantined(inner, None) => write!(f, "{QUARANTINE_PREFIX}{inner}"),
            ObjectName::Quarantined(inner, Some(n)) => write!(f, "{QUARANTINE_PREFIX}{inner}.{n}"),
        }
    }
}

/// An object cairn downloads whole, before it can check it. Each kind has a documented
/// maximum size (`docs/format.md`), far above what cairn writes, so that a repository or a
/// plugin claiming a huge object costs a `stat`, not the download.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WholeObject {
    /// `keys/<id>`: a few hundred bytes of JSON.
    Key,
    /// `config`: a few hundred bytes, sealed.
    Config,
    /// `index/<id>`: at most ~65,536 blob entries (~53 bytes each) plus a pack's worth.
    Index,
    /// `snapshots/<id>`: facts and the list of sources.
    Snapshot,
    /// `locks/<id>`: host, user, pid, times and a nonce.
    Lock,
}

impl WholeObject {
    pub const fn max_size(self) -> u64 {
        match self {
            WholeObject::Key => 64 << 10,
            WholeObject::Config => 64 << 10,
            WholeObject::Index => 32 << 20,
            WholeObject::Snapshot => 4 << 20,
            WholeObject::Lock => 64 << 10,
        }
    }

    fn what(self) -> &'static str {
        match self {
            WholeObject::Key => "a key file",
            WholeObject::Config => "the config",
            WholeObject::Index => "an index object",
            WholeObject::Snapshot => "a snapshot object",
            WholeObject::Lock => "a lock object",
        }
    }
}

/// Why a whole object could not be read.
#[derive(Debug)]
pub enum ReadObjectError {
    /// Larger than its kind allows: refused before downloading anything.
    TooLarge {
        kind: WholeObject,
        name: String,
        plugin: String,
        size: u64,
    },
    Backend(BackendError),
}

impl std::fmt::Display for ReadObjectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadObjectError::TooLarge { kind, name, plugin, size } => write!(
                f,
                "plugin {plugin} says {} is {size} bytes, more than {} may be ({} KiB); nothing was downloaded",
                crate::untrusted::escape(name),
                kind.what(),
                kind.max_size() >> 10
            ),
            ReadObjectError::Backend(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for ReadObjectError {}

impl From<BackendError> for ReadObjectError {
    fn from(e: BackendError) -> Self {
        ReadObjectError::Backend(e)
    }
}

/// Reads a whole object of `kind`: its size is checked against the kind's maximum before
/// anything is downloaded, and no more bytes than that size are accepted.
pub async fn read_object(
    backend: &Backend,
    kind: WholeObject,
    name: &str,
) -> Result<Vec<u8>, ReadObjectError> {
    match backend.read_all(name, kind.max_size()).await {
        Ok(bytes) => Ok(bytes),
        Err(BackendError { kind: ErrorKind::TooLarge { size, .. }, plugin, .. }) => {
            Err(ReadObjectError::TooLarge { kind, name: name.to_string(), plugin, size })
        }
        Err(e) => Err(e.into()),
    }
}

/// The id part of a content-addressed name (`data/ab/ab12...` -> `ab12...`).
pub fn id_of_name(name: &str) -> Option<Id> {
    Id::from_hex(name.rsplit('/').next()?)
}

fn blob_aad(kind: BlobKind, id: &Id) -> [u8; 34] {
    let mut aad = [0u8; 34];
    aad[0] = b'B';
    aad[1] = kind as u8;
    aad[2..].copy_from_slice(&id.0);
    aad
}

/// Chunks larger than this are sampled before compressing: incompressible data (media,
/// archives, encrypted files) then costs a fraction of a full compression attempt.
const SAMPLE_ABOVE: usize = 128 << 10;
const SAMPLE_WINDOW: usize = 16 << 10;

thread_local! {
    /// One compression context per thread: creating one per chunk costs more than
    /// compressing a small chunk.
    static COMPRESSOR: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { std::cell::RefCell::new(None) };
}

/// Appends `src` compressed at `level` to `out`, with this thread's context. False (and
/// `out` unchanged) if compression failed.
fn zstd_append(src: &[u8], out: &mut Vec<u8>, level: i32) -> bool {
    let start = out.len();
    out.reserve(zstd::zstd_safe::compress_bound(src.len()));
    let ok = COMPRESSOR.with(|c| {
        let mut c = c.borrow_mut();
        if c.as_ref().is_none_or(|(l, _)| *l != level) {
            let Ok(new) = zstd::bulk::Compressor::new(level) else { return false };
            *c = Some((level, new));
        }
        let Some((_, comp)) = c.as_mut() else { return false };
        // The cursor makes zstd write after what `out` already holds.
        let mut cursor = std::io::Cursor::new(&mut *out);
        cursor.set_position(start as u64);
        comp.compress_to_buffer(src, &mut cursor).is_ok()
    });
    if !ok {
        out.truncate(start);
    }
    ok
}

/// Whether a large chunk looks compressible: three windows (start, middle, end) must
/// shrink by at least 3% at the fastest level.
fn looks_compressible(data: &[u8]) -> bool {
    if data.len() <= SAMPLE_ABOVE {
        return true;
    }
    let mid = data.len() / 2;
    let mut sample = Vec::with_capacity(3 * SAMPLE_WINDOW);
    sample.extend_from_slice(&data[..SAMPLE_WINDOW]);
    sample.extend_from_slice(&data[mid..mid + SAMPLE_WINDOW]);
    sample.extend_from_slice(&data[data.len() - SAMPLE_WINDOW..]);
    let mut out = Vec::new();
    zstd_append(&sample, &mut out, 1) && out.len() * 100 < sample.len() * 97
}

/// Appends the payload of `plaintext` to `out`: the one-byte compression marker, then the
/// data, compressed when that makes it smaller.
fn append_payload(plaintext: &[u8], level: i32, out: &mut Vec<u8>) {
    let start = out.len();
    if level > 0 && plaintext.len() > 64 && looks_compressible(plaintext) {
        out.push(ZSTD);
        if zstd_append(plaintext, out, level) && out.len() - start < plaintext.len() {
            return;
        }
        out.truncate(start);
    }
    out.push(STORED);
    out.extend_from_slice(plaintext);
}

fn compress_payload(plaintext: &[u8], level: i32) -> Vec<u8> {
    let mut out = Vec::new();
    append_payload(plaintext, level, &mut out);
    out
}

/// Largest plaintext of a sealed object or blob cairn will decompress.
const MAX_PLAINTEXT: usize = 256 << 20;

thread_local! {
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// Undoes `compress_payload`. `expected` is the plaintext size when the caller knows it
/// (blobs: from the index); it is then enforced exactly.
fn decompress_payload(payload: &[u8], expected: Option<usize>) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    plaintext(payload, expected, &mut out)?;
    if payload.first() == Some(&STORED) { Ok(payload[1..].to_vec()) } else { Ok(out) }
}

/// The plaintext of a payload: the payload's own bytes when stored, else decompressed into
/// `out` (reused: no allocation once it is large enough). See [`decompress_payload`].
fn plaintext<'a>(payload: &'a [u8], expected: Option<usize>, out: &'a mut Vec<u8>) -> Result<&'a [u8]> {
    let plain: &[u8] = match payload.first() {
        Some(&STORED) => &payload[1..],
        Some(&ZSTD) => {
            let frame = &payload[1..];
            let capacity = match expected {
                Some(n) => n,
                None => match zstd::zstd_safe::get_frame_content_size(frame) {
                    Ok(Some(n)) => usize::try_from(n).unwrap_or(usize::MAX),
                    _ => MAX_PLAINTEXT,
                },
            };
            if capacity > MAX_PLAINTEXT {
                bail!("payload claims {capacity} bytes of plaintext, more than cairn ever writes");
            }
            out.clear();
            out.reserve(capacity);
            DECOMPRESSOR.with(|d| -> Result<()> {
                let mut d = d.borrow_mut();
                if d.is_none() {
                    *d = Some(zstd::bulk::Decompressor::new()?);
                }
                d.as_mut().unwrap().decompress_to_buffer(frame, out).context("corrupt zstd payload")?;
                Ok(())
            })?;
            out
        }
        Some(m) => bail!("unknown compression marker {m}"),
        None => bail!("empty payload"),
    };
    if let Some(n) = expected
        && plain.len() != n
    {
        bail!("payload holds {} bytes, {n} expected", plain.len());
    }
    Ok(plain)
}

/// Encodes one blob as it is stored in a pack: sealed, with its kind and id as associated
/// data, so a blob cannot be passed off as another.
pub fn encode_blob(key: &MasterKey, kind: BlobKind, id: &Id, plaintext: &[u8], level: i32) -> Vec<u8> {
    let mut out = Vec::new();
    encode_blob_into(key, kind, id, plaintext, level, &mut out);
    out
}

/// [`encode_blob`] into a reused buffer: the payload is built in place after room for the
/// nonce and encrypted there, so the data is copied once.
pub fn encode_blob_into(
    key: &MasterKey,
    kind: BlobKind,
    id: &Id,
    plaintext: &[u8],
    level: i32,
    out: &mut Vec<u8>,
) {
    out.clear();
    out.resize(crate::crypto::NONCE_LEN, 0);
    append_payload(plaintext, level, out);
    key.seal_in_place(&blob_aad(kind, id), out);
}

/// Why a stored blob was refused.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("blob {0} failed authentication")]
    Auth(String),
    #[error("blob {0} is corrupt: {1}")]
    Corrupt(String, String),
    #[error("blob {0} decrypted but its content hash does not match")]
    HashMismatch(String),
}

/// Decodes and fully verifies a stored blob: authentication, decompression, and the keyed
/// hash of the plaintext against the id it was asked for.
pub fn decode_blob(
    key: &MasterKey,
    kind: BlobKind,
    id: &Id,
    stored: &[u8],
    raw_len: usize,
) -> Result<Vec<u8>, BlobError> {
    let payload = key.open(&blob_aad(kind, id), stored).map_err(|AuthError| BlobError::Auth(id.short()))?;
    let plain = decompress_payload(&payload, Some(raw_len))
        .map_err(|e| BlobError::Corrupt(id.short(), e.to_string()))?;
    if key.blob_id(&plain) != *id {
        return Err(BlobError::HashMismatch(id.short()));
    }
    Ok(plain)
}

thread_local! {
    /// [`check_blob`]'s buffers: the opened payload and the decompressed plaintext.
    static CHECK_BUFFERS: std::cell::RefCell<(Vec<u8>, Vec<u8>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// Checks a stored blob as [`decode_blob`] does (it opens, decompresses to `raw_len` bytes
/// and hashes to `id`) without keeping its plaintext: buffers are reused per thread, so a
/// caller that only copies sealed blobs (repack) allocates nothing per blob.
pub fn check_blob(
    key: &MasterKey,
    kind: BlobKind,
    id: &Id,
    stored: &[u8],
    raw_len: usize,
) -> Result<(), BlobError> {
    CHECK_BUFFERS.with(|buffers| {
        let (opened, unpacked) = &mut *buffers.borrow_mut();
        let payload = key
            .open_into(&blob_aad(kind, id), stored, opened)
            .map_err(|AuthError| BlobError::Auth(id.short()))?;
        let plain = plaintext(payload, Some(raw_len), unpacked)
            .map_err(|e| BlobError::Corrupt(id.short(), e.to_string()))?;
        if key.blob_id(plain) != *id {
            return Err(BlobError::HashMismatch(id.short()));
        }
        Ok(())
    })
}

/// Seals a whole object (index, snapshot, config) with a role-specific associated data.
pub fn seal_object<T: Serialize>(key: &MasterKey, aad: &[u8], value: &T, json: bool) -> Result<Vec<u8>> {
    let plain = if json { serde_json::to_vec(value)? } else { postcard::to_stdvec(value)? };
    Ok(key.seal(aad, &compress_payload(&plain, 3)))
}

pub fn open_object<T: for<'de> Deserialize<'de>>(
    key: &MasterKey,
    aad: &[u8],
    stored: &[u8],
    json: bool,
) -> Result<T> {
    let payload = key.open(aad, stored)?;
    let plain = decompress_payload(&payload, None)?;
    if json { Ok(serde_json::from_slice(&plain)?) } else { Ok(postcard::from_bytes(&plain)?) }
}

pub const AAD_CONFIG: &[u8] = b"cairn config";
pub const AAD_INDEX: &[u8] = b"cairn index";
pub const AAD_SNAPSHOT: &[u8] = b"cairn snapshot";
pub const AAD_PACK_HEADER: &[u8] = b"cairn pack header";
pub const AAD_LOCK: &[u8] = b"cairn lock";

/// Whether a lock lets others read and write beside it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockKind {
    /// Backups, forget, restore, verify: any number at once, none beside an exclusive lock.
    Shared,
    /// Prune, repair: alone.
    Exclusive,
}

/// A lock object, `locks/<id>`: who holds which kind of claim since when. A holder
/// refreshes it by writing a new object with the same nonce and a later `refreshed_ns`,
/// then deleting the old one. A `released` object ends every lock with its nonce (written
/// by holders that may not delete: append-only repositories).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct LockFile {
    pub version: u8,
    pub host: String,
    pub user: String,
    pub pid: u32,
    pub kind: LockKind,
    /// Nanoseconds since the Unix epoch (UTC), by the holder's clock.
    pub created_ns: i64,
    pub refreshed_ns: i64,
    /// Random; the same for every refresh of one claim.
    pub nonce: [u8; 16],
    pub released: bool,
}

/// The repository parameters, stored in `config`.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct RepoConfig {
    pub version: u32,
    /// Random; names the local journal of this repository.
    pub id: String,
    pub chunker: ChunkerParams,
    pub created: String,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
pub struct ChunkerParams {
    pub min_size: u32,
    pub avg_size: u32,
    pub max_size: u32,
    /// Secret seed of the chunker's gear table, so chunk boundaries do not leak content.
    pub seed: u64,
}

impl ChunkerParams {
    /// The defaults: chunks of 256 KiB to 4 MiB, 1 MiB on average.
    pub fn default_with_seed(seed: u64) -> ChunkerParams {
        ChunkerParams { min_size: 256 << 10, avg_size: 1 << 20, max_size: 4 << 20, seed }
    }

    /// Chunks averaging `avg` bytes, between a quarter and four times that.
    pub fn with_average(avg: u64, seed: u64) -> anyhow::Result<ChunkerParams> {
        if !(256..=4 << 20).contains(&avg) {
            bail!("the average chunk size must be between 256B and 4MiB");
        }
        let avg = avg as u32 & !1;
        Ok(ChunkerParams {
            min_size: (avg / 4).max(64) & !1,
            avg_size: avg,
            max_size: (avg * 4).max(1024),
            seed,
        })
    }
}

/// One blob's place in a pack.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
pub struct PackEntry {
    pub kind: BlobKind,
    pub id: Id,
    pub offset: u64,
    /// Stored (sealed) length.
    pub length: u32,
    /// Plaintext length.
    pub raw_length: u32,
}

#[derive(Serialize, Deserialize)]
struct PackHeader {
    version: u8,
    entries: Vec<PackEntry>,
}

/// Builds a pack's trailer: sealed header, its length, and the magic.
pub fn pack_trailer(key: &MasterKey, entries: &[PackEntry]) -> Result<Vec<u8>> {
    let header = PackHeader { version: 1, entries: entries.to_vec() };
    let mut out = seal_object(key, AAD_PACK_HEADER, &header, false)?;
    let len = u32::try_from(out.len())?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(PACK_MAGIC);
    Ok(out)
}

/// Given a pack's last bytes (at least `PACK_TRAILER`), the length of its sealed header.
pub fn header_len_from_tail(tail: &[u8]) -> Result<usize> {
    if tail.len() < PACK_TRAILER || &tail[tail.len() - 8..] != PACK_MAGIC {
        bail!("not a cairn pack (no trailer magic)");
    }
    let n = &tail[tail.len() - 12..tail.len() - 8];
    Ok(u32::from_le_bytes(n.try_into().unwrap()) as usize)
}

/// Decodes a pack header from the pack's tail (which must hold header and trailer) and
/// checks that the entries fit in a pack of `pack_size` bytes.
pub fn read_pack_header(key: &MasterKey, tail: &[u8], pack_size: u64) -> Result<Vec<PackEntry>> {
    let hlen = header_len_from_tail(tail)?;
    if tail.len() < hlen + PACK_TRAILER {
        bail!("pack tail too short for its header");
    }
    let start = tail.len() - PACK_TRAILER - hlen;
    let header: PackHeader =
        open_object(key, AAD_PACK_HEADER, &tail[start..tail.len() - PACK_TRAILER], false)
            .context("pack header")?;
    if header.version != 1 {
        bail!("unsupported pack version {}", header.version);
    }
    let data_end =
        pack_size.checked_sub((hlen + PACK_TRAILER) as u64).ok_or_else(|| anyhow!("pack too small"))?;
    for e in &header.entries {
        if e.offset + e.length as u64 > data_end || (e.length as usize) < OVERHEAD {
            bail!("pack header entry out of bounds");
        }
    }
    Ok(header.entries)
}

/// An index object: the contents of some packs.
#[derive(Serialize, Deserialize, Default)]
pub struct IndexFile {
    pub version: u8,
    pub packs: Vec<IndexPack>,
}

#[derive(Serialize, Deserialize)]
pub struct IndexPack {
    pub id: Id,
    pub size: u64,
    pub entries: Vec<PackEntry>,
}

/// The snapshot version cairn writes. Version 1 had no `job` (see [`Snapshot::decode`]).
pub const SNAPSHOT_VERSION: u8 = 2;

/// The job of a snapshot written before snapshots named their job (version 1), and of
/// `cairn backup` from the config's `[backup]`.
pub const DEFAULT_JOB: &str = "default";

/// A snapshot object. Postcard has no field names: the bytes follow the field order, and
/// `version` (first) says which fields follow.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Snapshot {
    pub version: u8,
    /// Nanoseconds since the Unix epoch (UTC).
    pub time_ns: i64,
    pub hostname: String,
    pub username: String,
    /// The backed-up paths, as given in the config.
    pub sources: Vec<ByteBuf>,
    pub tags: Vec<String>,
    pub parent: Option<Id>,
    pub tree: Id,
    /// Written at a checkpoint of a run that had not finished yet.
    pub partial: bool,
    pub summary: Summary,
    pub program: String,
    /// The job that wrote it (version 2): parents, partial snapshots and `latest` are per
    /// job, so jobs over overlapping folders never supersede each other's snapshots.
    pub job: String,
}

/// A snapshot that authenticates but was written by a newer cairn: not damage (nothing may
/// treat it as garbage), only unreadable here.
#[derive(Debug, thiserror::Error)]
#[error("snapshot version {0} is newer than this cairn understands ({SNAPSHOT_VERSION}); upgrade cairn")]
pub struct NewerSnapshot(pub u8);

impl NewerSnapshot {
    /// Whether `result` is a snapshot that decodes, or one of a newer version: either way an
    /// authentic snapshot object.
    pub fn is_authentic(result: &Result<Snapshot>) -> bool {
        match result {
            Ok(_) => true,
            Err(e) => e.downcast_ref::<NewerSnapshot>().is_some(),
        }
    }
}

/// A version 1 snapshot: [`Snapshot`] without `job`.
#[derive(Deserialize)]
struct SnapshotV1 {
    version: u8,
    time_ns: i64,
    hostname: String,
    username: String,
    sources: Vec<ByteBuf>,
    tags: Vec<String>,
    parent: Option<Id>,
    tree: Id,
    partial: bool,
    summary: Summary,
    program: String,
}

impl Snapshot {
    /// Decodes the postcard bytes of any snapshot version cairn has written; a version 1
    /// snapshot belongs to the job [`DEFAULT_JOB`].
    pub fn decode(plain: &[u8]) -> Result<Snapshot> {
        let (version, _) = postcard::take_from_bytes::<u8>(plain).context("empty snapshot")?;
        match version {
            1 => {
                let v1: SnapshotV1 = postcard::from_bytes(plain)?;
                Ok(Snapshot {
                    version: v1.version,
                    time_ns: v1.time_ns,
                    hostname: v1.hostname,
                    username: v1.username,
                    sources: v1.sources,
                    tags: v1.tags,
                    parent: v1.parent,
                    tree: v1.tree,
                    partial: v1.partial,
                    summary: v1.summary,
                    program: v1.program,
                    job: DEFAULT_JOB.to_string(),
                })
            }
            SNAPSHOT_VERSION => Ok(postcard::from_bytes(plain)?),
            v if v > SNAPSHOT_VERSION => Err(NewerSnapshot(v).into()),
            v => bail!("snapshot version {v} does not exist"),
        }
    }

    /// The postcard bytes of this snapshot as its version lays them out: a version 1
    /// snapshot (read from an older repository, kept or re-uploaded by `repair`) without
    /// `job`, which is the last field.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let mut bytes = postcard::to_stdvec(self)?;
        if self.version == 1 {
            let job = postcard::to_stdvec(&self.job)?.len();
            bytes.truncate(bytes.len() - job);
        }
        Ok(bytes)
    }
}

/// Seals a snapshot object in the layout of its version.
pub fn seal_snapshot(key: &MasterKey, snap: &Snapshot) -> Result<Vec<u8>> {
    Ok(key.seal(AAD_SNAPSHOT, &compress_payload(&snap.encode()?, 3)))
}

/// Opens a sealed snapshot object of any version.
pub fn open_snapshot(key: &MasterKey, stored: &[u8]) -> Result<Snapshot> {
    let payload = key.open(AAD_SNAPSHOT, stored)?;
    Snapshot::decode(&decompress_payload(&payload, None)?)
}

#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct Summary {
    pub files: u64,
    pub dirs: u64,
    pub bytes: u64,
    /// Files read this run (not found unchanged in the file cache), and their bytes.
    pub files_read: u64,
    pub bytes_read: u64,
    /// Plaintext bytes of chunks new to the repository.
    pub data_added: u64,
    /// Bytes of packs uploaded.
    pub packed_bytes: u64,
    pub errors: u64,
}

/// A directory listing, stored as a tree blob.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct Tree {
    pub version: u8,
    pub nodes: Vec<Node>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeKind {
    File,
    Dir,
    Symlink,
    Fifo,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Node {
    pub name: ByteBuf,
    pub kind: NodeKind,
    /// Permission bits including setuid, setgid, sticky.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_ns: i64,
    pub size: u64,
    /// File content, in order.
    pub content: Vec<Id>,
    pub subtree: Option<Id>,
    pub target: ByteBuf,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_round_trip_checks_everything() {
        let key = MasterKey::generate();
        let data = b"some file content, some file content, some file content".repeat(10);
        let id = key.blob_id(&data);
        let stored = encode_blob(&key, BlobKind::Data, &id, &data, 3);
        assert!(stored.len() < data.len(), "compressible data is compressed");
        assert_eq!(decode_blob(&key, BlobKind::Data, &id, &stored, data.len()).unwrap(), data);
        // Kind and id are bound.
        assert!(decode_blob(&key, BlobKind::Tree, &id, &stored, data.len()).is_err());
        let other = key.blob_id(b"x");
        assert!(decode_blob(&key, BlobKind::Data, &other, &stored, data.len()).is_err());
        let mut bad = stored.clone();
        bad[40] ^= 0x80;
        assert!(matches!(decode_blob(&key, BlobKind::Data, &id, &bad, data.len()), Err(BlobError::Auth(_))));
    }

    #[test]
    fn check_blob_accepts_and_refuses_what_decode_blob_does() {
        let key = MasterKey::generate();
        let text = b"some file content, some file content, some file content".repeat(10);
        let mut random = vec![0u8; 100_000];
        getrandom::fill(&mut random).unwrap();
        // Large then small, compressed then stored: the reused buffers must not leak a
        // longer earlier plaintext into a later check.
        for data in [&random[..], &text[..], &random[..5000], &text[..100]] {
            let id = key.blob_id(data);
            let stored = encode_blob(&key, BlobKind::Data, &id, data, 3);
            check_blob(&key, BlobKind::Data, &id, &stored, data.len()).unwrap();
            assert!(check_blob(&key, BlobKind::Tree, &id, &stored, data.len()).is_err());
            assert!(matches!(
                check_blob(&key, BlobKind::Data, &id, &stored, data.len() + 1),
                Err(BlobError::Corrupt(..))
            ));
            let mut bad = stored.clone();
            bad[30] ^= 1;
            assert!(matches!(
                check_blob(&key, BlobKind::Data, &id, &bad, data.len()),
                Err(BlobError::Auth(_))
            ));
        }
        // Sealed under the right id by a key holder, but other content: the hash says so.
        let id = key.blob_id(b"what the id says");
        let lie = encode_blob(&key, BlobKind::Data, &id, b"something else!!", 3);
        assert!(matches!(check_blob(&key, BlobKind::Data, &id, &lie, 16), Err(BlobError::HashMismatch(_))));
        assert!(matches!(decode_blob(&key, BlobKind::Data, &id, &lie, 16), Err(BlobError::HashMismatch(_))));
    }

    #[test]
    fn incompressible_data_is_stored() {
        let key = MasterKey::generate();
        let mut data = vec![0u8; 4096];
        getrandom::fill(&mut data).unwrap();
        let id = key.blob_id(&data);
        let stored = encode_blob(&key, BlobKind::Data, &id, &data, 3);
        assert_eq!(stored.len(), data.len() + 1 + OVERHEAD);
    }

    #[test]
    fn object_names_round_trip_exactly() {
        let id = Id::of_bytes(b"x");
        let names = [
            ObjectName::Config,
            ObjectName::Key(id),
            ObjectName::Pack(id),
            ObjectName::Index(id),
            ObjectName::Snapshot(id),
            ObjectName::Lock(id),
            ObjectName::Quarantined(Box::new(ObjectName::Pack(id)), None),
            ObjectName::Quarantined(Box::new(ObjectName::Config), Some(3)),
        ];
        for n in names {
            assert_eq!(ObjectName::parse(&n.to_string()), Some(n.clone()), "{n}");
        }
        assert_eq!(ObjectName::Pack(id).to_string(), pack_name(&id));
        assert_eq!(ObjectName::Index(id).to_string(), index_name(&id));
        assert_eq!(ObjectName::Snapshot(id).to_string(), snapshot_name(&id));
        assert_eq!(ObjectName::Key(id).to_string(), key_name(&id));
        assert_eq!(
            ObjectName::Pack(id).quarantined(2).unwrap().to_string(),
            format!("quarantine/{}.2", pack_name(&id))
        );
    }

    #[test]
    fn foreign_names_do_not_parse() {
        let h = Id::of_bytes(b"x").hex();
        let upper = h.to_uppercase();
        let wrong_folder = if h.starts_with("00") { "01" } else { "00" };
        for name in [
            "".to_string(),
            "../../x".into(),
            "/etc/passwd".into(),
            "data/../../y".into(),
            "keys/\x1b[31mred".into(),
            "index/\nfake line".into(),
            "README.txt".into(),
            "config/".into(),
            "/config".into(),
            format!("index/{upper}"),
            format!("index/{}", &h[..63]),
            format!("index/{h}0"),
            format!("index/{h}/"),
            format!("index//{h}"),
            format!("snapshots/../index/{h}"),
            format!("data/{h}"),
            format!("data/{wrong_folder}/{h}"),
            format!("data/{}/{h}/x", &h[..2]),
            format!("quarantine/index/{h}.0"),
            format!("quarantine/index/{h}.01"),
            format!("quarantine/index/{h}.x"),
            format!("quarantine/quarantine/index/{h}"),
            "quarantine/README.txt".into(),
            "quarantine/../../x".into(),
        ] {
            assert_eq!(ObjectName::parse(&name), None, "{name:?} parsed");
        }
    }

    #[test]
    fn snapshot_versions_decode_and_a_newer_one_is_named() {
        let snap = Snapshot {
            version: SNAPSHOT_VERSION,
            time_ns: 5,
            hostname: "h".into(),
            username: "u".into(),
            sources: vec![ByteBuf::from(b"/src".to_vec())],
            tags: vec!["t".into()],
            parent: None,
            tree: Id::of_bytes(b"tree"),
            partial: false,
            summary: Summary::default(),
            program: "test".into(),
            job: "home".into(),
        };
        let v2 = snap.encode().unwrap();
        assert_eq!(Snapshot::decode(&v2).unwrap().job, "home");
        // Version 1: the same bytes without the job.
        let v1 = Snapshot { version: 1, ..snap.clone() }.encode().unwrap();
        assert_eq!(v1.len(), v2.len() - 5, "the job (length byte + 4) is all that differs");
        let old = Snapshot::decode(&v1).unwrap();
        assert_eq!(
            (old.version, old.job.as_str(), old.tags.as_slice()),
            (1, DEFAULT_JOB, &["t".to_string()][..])
        );
        let mut v9 = v2.clone();
        v9[0] = 9;
        let err = Snapshot::decode(&v9);
        assert!(NewerSnapshot::is_authentic(&err));
        assert!(err.unwrap_err().to_string().contains("upgrade cairn"));
        let mut v0 = v2;
        v0[0] = 0;
        assert!(!NewerSnapshot::is_authentic(&Snapshot::decode(&v0)));
    }

    #[test]
    fn pack_trailer_round_trip() {
        let key = MasterKey::generate();
        let entries = vec![PackEntry {
            kind: BlobKind::Data,
            id: key.blob_id(b"a"),
            offset: 0,
            length: 50,
            raw_length: 9,
        }];
        let mut pack = vec![7u8; 50];
        pack.extend(pack_trailer(&key, &entries).unwrap());
        let size = pack.len() as u64;
        assert_eq!(read_pack_header(&key, &pack, size).unwrap(), entries);
        assert!(read_pack_header(&key, &pack[..pack.len() - 1], size - 1).is_err());
    }
}
