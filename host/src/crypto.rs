//! Keys and authenticated encryption.
//!
//! A repository has one random master key: 32 bytes for XChaCha20-Poly1305 and 32 bytes
//! keying blake3 for blob ids (so ids reveal nothing about content to the backend). The
//! master key is stored wrapped by a key derived from the password with argon2id, in a key
//! file under `keys/`. Every sealed message is `nonce (24) || ciphertext || tag (16)` with a
//! random nonce; the associated data binds it to its role (and, for blobs, to its id).

use anyhow::{Result, anyhow};
use chacha20poly1305::aead::inout::InOutBuf;
use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{Key, Tag, XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};

use crate::ids::Id;

pub const NONCE_LEN: usize = 24;
pub const TAG_LEN: usize = 16;
/// Bytes a sealed message adds to its plaintext.
pub const OVERHEAD: usize = NONCE_LEN + TAG_LEN;

/// The sealed data did not authenticate: wrong key, or the bytes were changed.
#[derive(Debug, thiserror::Error)]
#[error("authentication failed (the data was altered, truncated, or belongs elsewhere)")]
pub struct AuthError;

pub struct MasterKey {
    cipher: XChaCha20Poly1305,
    id_key: [u8; 32],
    raw: [u8; 64],
}

impl MasterKey {
    pub fn generate() -> MasterKey {
        let mut raw = [0u8; 64];
        getrandom::fill(&mut raw).expect("system random source");
        MasterKey::from_raw(raw)
    }

    fn from_raw(raw: [u8; 64]) -> MasterKey {
        let cipher = XChaCha20Poly1305::new(&Key::try_from(&raw[..32]).unwrap());
        let id_key: [u8; 32] = raw[32..].try_into().unwrap();
        MasterKey { cipher, id_key, raw }
    }

    /// The id of a blob: blake3 keyed with the repository's id key.
    pub fn blob_id(&self, plaintext: &[u8]) -> Id {
        Id(*blake3::keyed_hash(&self.id_key, plaintext).as_bytes())
    }

    /// A keyed hasher for data that arrives in pieces.
    pub fn id_hasher(&self) -> blake3::Hasher {
        blake3::Hasher::new_keyed(&self.id_key)
    }

    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(plaintext.len() + OVERHEAD);
        self.seal_append(aad, plaintext, &mut out);
        out
    }

    /// Appends `nonce || ciphertext || tag` to `out`.
    pub fn seal_append(&self, aad: &[u8], plaintext: &[u8], out: &mut Vec<u8>) {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).expect("system random source");
        out.extend_from_slice(&nonce);
        let start = out.len();
        out.extend_from_slice(plaintext);
        let tag = self
            .cipher
            .encrypt_inout_detached(&XNonce::from(nonce), aad, (&mut out[start..]).into())
            .expect("message within XChaCha20-Poly1305 limits");
        out.extend_from_slice(&tag);
    }

    /// Seals `buf` in place: its first `NONCE_LEN` bytes are room for the nonce, the rest
    /// is the plaintext. Afterwards `buf` is `nonce || ciphertext || tag`.
    pub fn seal_in_place(&self, aad: &[u8], buf: &mut Vec<u8>) {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).expect("system random source");
        buf[..NONCE_LEN].copy_from_slice(&nonce);
        let tag = self
            .cipher
            .encrypt_inout_detached(&XNonce::from(nonce), aad, (&mut buf[NONCE_LEN..]).into())
            .expect("message within XChaCha20-Poly1305 limits");
        buf.extend_from_slice(&tag);
    }

    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, AuthError> {
        let mut buf = Vec::new();
        self.open_into(aad, sealed, &mut buf)?;
        Ok(buf)
    }

    /// [`MasterKey::open`] into a buffer the caller reuses (it grows to the largest
    /// plaintext and is never shrunk): no allocation per call. Returns the plaintext.
    pub fn open_into<'a>(
        &self,
        aad: &[u8],
        sealed: &[u8],
        out: &'a mut Vec<u8>,
    ) -> Result<&'a [u8], AuthError> {
        if sealed.len() < OVERHEAD {
            return Err(AuthError);
        }
        let (nonce, rest) = sealed.split_at(NONCE_LEN);
        let (ct, tag) = rest.split_at(rest.len() - TAG_LEN);
        if out.len() < ct.len() {
            out.resize(ct.len(), 0);
        }
        let dst = &mut out[..ct.len()];
        self.cipher
            .decrypt_inout_detached(
                &XNonce::try_from(nonce).unwrap(),
                aad,
                InOutBuf::new(ct, dst).expect("same length"),
                &Tag::try_from(tag).unwrap(),
            )
            .map_err(|_| AuthError)?;
        Ok(&out[..ct.len()])
    }
}

/// argon2id cost of newly created keys: 64 MiB, 2 passes, 1 lane (~0.1 s here; more than
/// OWASP's recommended 46 MiB with 1 pass).
const KDF_MEMORY_KIB: u32 = 64 * 1024;
const KDF_ITERATIONS: u32 = 2;
const KDF_PARALLELISM: u32 = 1;
const KEY_AAD: &[u8] = b"cairn key v1";

/// The most a key file may ask argon2id for: 256 MiB, 16 passes, 8 lanes (4x the memory and
/// 8x the passes of new keys). A key file is untrusted data (anyone who can write to the
/// repository can add one), so its costs are checked before deriving anything.
pub const KDF_MAX_MEMORY_KIB: u32 = 256 * 1024;
pub const KDF_MAX_ITERATIONS: u32 = 16;
pub const KDF_MAX_PARALLELISM: u32 = 8;

/// Why a key file cannot be used, whatever the password.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("unsupported key file (version {version}, kdf {kdf})")]
    Unsupported { version: u32, kdf: String },
    #[error(
        "it asks argon2id for {memory_kib} KiB, {iterations} passes, {parallelism} lanes; \
         cairn allows at most {} KiB, {} passes, {} lanes",
        KDF_MAX_MEMORY_KIB,
        KDF_MAX_ITERATIONS,
        KDF_MAX_PARALLELISM
    )]
    TooCostly { memory_kib: u32, iterations: u32, parallelism: u32 },
    #[error("its {0} is not valid")]
    Malformed(&'static str),
}

/// A key file (`keys/<id>`): the master key wrapped by a password-derived key. JSON, so a
/// user can see which KDF and parameters it uses.
#[derive(Serialize, Deserialize)]
pub struct KeyFile {
    pub version: u32,
    pub kdf: String,
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
    pub salt: String,
    pub wrapped: String,
    pub created: String,
    pub hostname: String,
    /// Who made the key (the login name), shown by `cairn key list`. Key files written before
    /// it existed have none.
    #[serde(default)]
    pub username: String,
}

impl KeyFile {
    pub fn create(master: &MasterKey, password: &str, hostname: &str, username: &str) -> Result<KeyFile> {
        let mut salt = [0u8; 32];
        getrandom::fill(&mut salt)?;
        let wrap = derive(password, &salt, KDF_MEMORY_KIB, KDF_ITERATIONS, KDF_PARALLELISM)?;
        Ok(KeyFile {
            version: 1,
            kdf: "argon2id".into(),
            memory_kib: KDF_MEMORY_KIB,
            iterations: KDF_ITERATIONS,
            parallelism: KDF_PARALLELISM,
            salt: hex::encode(salt),
            wrapped: hex::encode(wrap.seal(KEY_AAD, &master.raw)),
            created: jiff::Timestamp::now().to_string(),
            hostname: hostname.to_string(),
            username: username.to_string(),
        })
    }

    /// Unwraps the master key; `Ok(None)` means the password does not open this key.
    pub fn unlock(&self, password: &str) -> Result<Option<MasterKey>, KeyFileError> {
        if self.version != 1 || self.kdf != "argon2id" {
            return Err(KeyFileError::Unsupported { version: self.version, kdf: self.kdf.clone() });
        }
        if self.memory_kib > KDF_MAX_MEMORY_KIB
            || self.iterations > KDF_MAX_ITERATIONS
            || self.parallelism > KDF_MAX_PARALLELISM
        {
            return Err(KeyFileError::TooCostly {
                memory_kib: self.memory_kib,
                iterations: self.iterations,
                parallelism: self.parallelism,
            });
        }
        let salt = hex::decode(&self.salt).map_err(|_| KeyFileError::Malformed("salt"))?;
        let wrapped = hex::decode(&self.wrapped).map_err(|_| KeyFileError::Malformed("wrapped key"))?;
        let wrap = derive(password, &salt, self.memory_kib, self.iterations, self.parallelism)
            .map_err(|_| KeyFileError::Malformed("KDF parameters"))?;
        match wrap.open(KEY_AAD, &wrapped) {
            Ok(raw) => {
                let raw: [u8; 64] = raw.try_into().map_err(|_| KeyFileError::Malformed("wrapped key"))?;
                Ok(Some(MasterKey::from_raw(raw)))
            }
            Err(AuthError) => Ok(None),
        }
    }
}

/// The key-wrapping key: argon2id(password, salt), used as an XChaCha20-Poly1305 key.
fn derive(password: &str, salt: &[u8], m: u32, t: u32, p: u32) -> Result<MasterKey> {
    let params = argon2::Params::new(m, t, p, Some(32)).map_err(|e| anyhow!("argon2 parameters: {e}"))?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut out = [0u8; 64];
    argon
        .hash_password_into(password.as_bytes(), salt, &mut out[..32])
        .map_err(|e| anyhow!("argon2: {e}"))?;
    Ok(MasterKey::from_raw(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_tamper() {
        let k = MasterKey::generate();
        let sealed = k.seal(b"aad", b"hello world");
        assert_eq!(sealed.len(), 11 + OVERHEAD);
        assert_eq!(k.open(b"aad", &sealed).unwrap(), b"hello world");
        assert!(k.open(b"other", &sealed).is_err());
        let mut bad = sealed.clone();
        bad[30] ^= 1;
        assert!(k.open(b"aad", &bad).is_err());
        assert!(k.open(b"aad", &sealed[..sealed.len() - 1]).is_err());
        let other = MasterKey::generate();
        assert!(other.open(b"aad", &sealed).is_err());
    }

    #[test]
    fn key_file_unlocks_only_with_its_password() {
        let k = MasterKey::generate();
        let f = KeyFile::create(&k, "secret", "host", "user").unwrap();
        let json = serde_json::to_string(&f).unwrap();
        let f: KeyFile = serde_json::from_str(&json).unwrap();
        assert!(f.unlock("wrong").unwrap().is_none());
        let back = f.unlock("secret").unwrap().unwrap();
        assert_eq!(back.blob_id(b"x"), k.blob_id(b"x"));
    }

    #[test]
    fn key_file_beyond_the_kdf_maxima_is_refused_before_deriving() {
        let k = MasterKey::generate();
        let good = KeyFile::create(&k, "secret", "host", "user").unwrap();
        let costly = |m: u32, t: u32, p: u32| KeyFile {
            memory_kib: m,
            iterations: t,
            parallelism: p,
            salt: good.salt.clone(),
            wrapped: good.wrapped.clone(),
            version: 1,
            kdf: "argon2id".into(),
            created: String::new(),
            hostname: String::new(),
            username: String::new(),
        };
        for f in [
            costly(KDF_MAX_MEMORY_KIB + 1, 2, 1),
            costly(64 * 1024, KDF_MAX_ITERATIONS + 1, 1),
            costly(64 * 1024, 2, KDF_MAX_PARALLELISM + 1),
            costly(u32::MAX, u32::MAX, u32::MAX),
        ] {
            let e = f.unlock("secret").err().expect("refused");
            assert!(matches!(e, KeyFileError::TooCostly { .. }), "{e}");
            assert!(e.to_string().contains("cairn allows at most 262144 KiB, 16 passes, 8 lanes"), "{e}");
        }
    }
}
