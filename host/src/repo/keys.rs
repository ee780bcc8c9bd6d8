//! The key files of a repository: several passwords open the same master key (one per
//! person or machine). Adding writes a new key file and reads it back before anything else
//! happens; removing goes through the one deletion protocol and never removes the key that
//! opened the repository (so at least one working key always stays).

use anyhow::{Result, anyhow, bail};

use super::format::{self, ObjectName, WholeObject};
use super::{KeySkipped, Repository, try_key};
use crate::crypto::KeyFile;
use crate::ids::Id;
use crate::journal::{ObjectKind, State};
use crate::lock::hostname;

/// One key file as listed: its name and, when it could be read, its contents.
pub struct KeyInfo {
    /// `keys/<id>`.
    pub name: String,
    pub id: Id,
    /// The parsed key file, or why it cannot be read (it is untrusted data).
    pub file: std::result::Result<KeyFile, String>,
}

/// Why a key cannot be removed.
#[derive(Debug, thiserror::Error)]
pub enum RemoveRefused {
    #[error(
        "key {0} is the repository's only key; add another with `cairn key add` first; nothing was changed"
    )]
    Last(String),
    #[error(
        "key {0} is the key in use (the configured password opened it); open the repository with \
         another key's password to remove it, or use `cairn key passwd`; nothing was changed"
    )]
    InUse(String),
    #[error(
        "this repository is append-only (repository.grants.delete = false): no key can be removed; \
         run it where the config allows deletes; nothing was changed"
    )]
    AppendOnly,
}

/// The login name of the person running cairn, recorded in new key files.
pub fn username() -> String {
    ["USER", "LOGNAME"].iter().find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty())).unwrap_or_else(
        || {
            // SAFETY: getuid cannot fail.
            format!("uid {}", unsafe { libc::getuid() })
        },
    )
}

impl Repository {
    /// Every key file in the repository (read from the backend, not the journal: other
    /// machines add keys too), sorted by creation time.
    pub async fn list_keys(&self) -> Result<Vec<KeyInfo>> {
        let mut keys = Vec::new();
        for obj in self.backend.list("keys/").await? {
            let Some(ObjectName::Key(id)) = ObjectName::parse(&obj.name) else { continue };
            let file = match format::read_object(&self.backend, WholeObject::Key, &obj.name).await {
                Ok(bytes) => {
                    serde_json::from_slice::<KeyFile>(&bytes).map_err(|e| format!("not a key file: {e}"))
                }
                Err(format::ReadObjectError::Backend(e)) => return Err(e.into()),
                Err(e) => Err(e.to_string()),
            };
            keys.push(KeyInfo { name: obj.name, id, file });
        }
        keys.sort_by(|a, b| {
            let created = |k: &KeyInfo| k.file.as_ref().map(|f| f.created.clone()).unwrap_or_default();
            created(a).cmp(&created(b)).then_with(|| a.name.cmp(&b.name))
        });
        Ok(keys)
    }

    /// Writes a new key file wrapping this repository's master key with `password`, then
    /// reads it back and unlocks it, so it is known to be stored and working before the
    /// caller goes on (`key passwd` removes the old key only after this). Returns its name.
    pub async fn add_key(&self, password: &str) -> Result<String> {
        let file = KeyFile::create(&self.key, password, &hostname(), &username())?;
        let bytes = serde_json::to_vec_pretty(&file)?;
        let id = Id::of_bytes(&bytes);
        let name = format::key_name(&id);
        self.journal.begin_upload(&name, ObjectKind::Key, bytes.len() as u64, &id, &[])?;
        self.backend.upload_bytes(&name, &bytes, true).await?;
        self.journal.confirm_upload(&name)?;
        let opened = match try_key(&self.backend, &name, password).await {
            Ok(Some(key)) => key,
            Ok(None) => bail!("the new key file {name} does not open with its password after writing it"),
            Err(KeySkipped::Read(e)) => return Err(anyhow!("cannot read back the new key file {name}: {e}")),
            Err(e) => bail!("the new key file {name} cannot be used after writing it: {e}"),
        };
        if opened.blob_id(b"cairn key check") != self.key.blob_id(b"cairn key check") {
            bail!("the new key file {name} read back holds another master key");
        }
        crate::testing::pause_point("key-added");
        Ok(name)
    }

    /// Removes a key file by the one deletion protocol, refusing the repository's last key
    /// and the key in use (which also keeps one working key whatever happens).
    pub async fn remove_key(&self, key: &KeyInfo) -> Result<()> {
        let keys = self.backend.list("keys/").await?;
        let short = key.id.short();
        if keys.iter().all(|k| k.name == key.name) {
            return Err(RemoveRefused::Last(short).into());
        }
        if key.name == self.key_name {
            return Err(RemoveRefused::InUse(short).into());
        }
        if !self.backend.can_delete() {
            return Err(RemoveRefused::AppendOnly.into());
        }
        self.delete_objects(&[(key.name.clone(), ObjectKind::Key)]).await
    }
}

/// Brings the journal's key rows up to date with the repository's `keys/`: key files another
/// machine added are recorded (when they parse as key files; anything else is left for
/// `verify` to report), and rows of key files another machine removed are dropped. Without
/// this, `verify` here would call another machine's key unknown, or a removed one missing.
pub(crate) async fn sync_keys(repo: &Repository) -> Result<()> {
    let listed = repo.backend.list("keys/").await?;
    let names: std::collections::HashSet<&str> = listed.iter().map(|o| o.name.as_str()).collect();
    for obj in &listed {
        if !matches!(ObjectName::parse(&obj.name), Some(ObjectName::Key(_)))
            || repo.journal.object(&obj.name)?.is_some()
        {
            continue;
        }
        let bytes = match format::read_object(&repo.backend, WholeObject::Key, &obj.name).await {
            Ok(bytes) => bytes,
            Err(format::ReadObjectError::Backend(e)) => return Err(e.into()),
            Err(_) => continue,
        };
        let id = Id::of_bytes(&bytes);
        if serde_json::from_slice::<KeyFile>(&bytes).is_ok() && ObjectName::Key(id).to_string() == obj.name {
            repo.journal.record_present(&obj.name, ObjectKind::Key, bytes.len() as u64, Some(&id), &[])?;
        }
    }
    for row in repo.journal.objects_of_kind(ObjectKind::Key)? {
        if matches!(row.state, State::Uploaded | State::Verified) && !names.contains(row.name.as_str()) {
            repo.journal.forget_object(&row.name)?;
        }
    }
    Ok(())
}

/// The key whose id starts with `prefix` (hex), which must name exactly one.
pub fn find<'a>(keys: &'a [KeyInfo], prefix: &str) -> Result<&'a KeyInfo> {
    let prefix = prefix.to_ascii_lowercase();
    if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("{prefix:?} is not a key id (hex digits, as `cairn key list` shows them)");
    }
    let found: Vec<&KeyInfo> = keys.iter().filter(|k| k.id.hex().starts_with(&prefix)).collect();
    match found.as_slice() {
        [one] => Ok(one),
        [] => bail!("no key with id {prefix}; see `cairn key list`"),
        _ => bail!("key id {prefix} is ambiguous ({} keys start with it); give more digits", found.len()),
    }
}
