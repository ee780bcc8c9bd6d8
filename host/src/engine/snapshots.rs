//! Choosing snapshots: `latest`, or a unique prefix of an id.

use anyhow::{Result, bail};

use crate::ids::Id;
use crate::journal::Journal;
use crate::repo::format::Snapshot;

pub fn find(journal: &Journal, spec: &str) -> Result<(Id, Snapshot)> {
    let all = journal.snapshots()?;
    if spec == "latest" {
        return match all.into_iter().max_by_key(|(id, s)| (s.time_ns, *id)) {
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
