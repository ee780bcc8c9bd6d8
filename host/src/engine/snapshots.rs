//! Choosing snapshots: `latest`, or a unique prefix of an id.

use std::os::unix::ffi::OsStrExt;

use anyhow::{Result, bail};

use crate::ids::Id;
use crate::journal::Journal;
use crate::repo::format::Snapshot;

/// `latest` is the newest snapshot of the config's own sources (several machines or
/// configs may share a repository); when there is none, the newest of all.
pub fn find(journal: &Journal, spec: &str, sources: &[std::path::PathBuf]) -> Result<(Id, Snapshot)> {
    let all = journal.snapshots()?;
    if spec == "latest" {
        let mine: Vec<&[u8]> = sources.iter().map(|p| p.as_os_str().as_bytes()).collect();
        let newest_of = |v: Vec<(Id, Snapshot)>| v.into_iter().max_by_key(|(id, s)| (s.time_ns, *id));
        let own: Vec<(Id, Snapshot)> = all
            .iter()
            .filter(|(_, s)| s.sources.iter().map(|b| b.as_slice()).eq(mine.iter().copied()))
            .cloned()
            .collect();
        return match newest_of(own).or_else(|| newest_of(all)) {
            Some(s) => Ok(s),
            None => bail!("the repository has no snapshots yet"),
        };
    }
    let spec = spec.to_ascii_lowercase();
    if spec.len() < 4 || !spec.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!(
            "{spec:?} is not a snapshot id: give `latest` or at least 4 hex digits of an id (see `cairn snapshots`)"
        );
    }
    let mut matches: Vec<(Id, Snapshot)> =
        all.into_iter().filter(|(id, _)| id.hex().starts_with(&spec)).collect();
    match matches.len() {
        0 => bail!("no snapshot id starts with {spec} (see `cairn snapshots`)"),
        1 => Ok(matches.pop().unwrap()),
        n => bail!("{n} snapshots start with {spec}; give more digits"),
    }
}

/// Time of a snapshot for display, in UTC.
pub fn display_time(s: &Snapshot) -> String {
    match jiff::Timestamp::from_nanosecond(s.time_ns as i128) {
        Ok(t) => t.strftime("%Y-%m-%d %H:%M:%S").to_string(),
        Err(_) => s.time_ns.to_string(),
    }
}
