//! Choosing snapshots: `latest`, or a unique prefix of an id.

use std::os::unix::ffi::OsStrExt;

use anyhow::{Result, bail};

use crate::ids::Id;
use crate::journal::Journal;
use crate::repo::format::Snapshot;

/// `latest` is the newest complete snapshot of the config's own sources and the job
/// `default` (`[backup]`; several machines or configs may share a repository), a partial one
/// only when there is no complete one; when those have none, the same over all snapshots.
/// `latest:JOB` is the newest of the job named JOB only.
pub fn find(journal: &Journal, spec: &str, sources: &[std::path::PathBuf]) -> Result<(Id, Snapshot)> {
    let all = journal.snapshots()?;
    if let Some(job) = spec.strip_prefix("latest:") {
        return match newest_of(all.into_iter().filter(|(_, s)| s.job == job).collect()) {
            Some(s) => Ok(s),
            None => bail!(
                "job {} has no snapshots in this repository (see `cairn snapshots`)",
                crate::untrusted::escape(job)
            ),
        };
    }
    if spec == "latest" {
        let mine: Vec<&[u8]> = sources.iter().map(|p| p.as_os_str().as_bytes()).collect();
        let own: Vec<(Id, Snapshot)> = all
            .iter()
            .filter(|(_, s)| {
                s.job == crate::repo::format::DEFAULT_JOB
                    && s.sources.iter().map(|b| b.as_slice()).eq(mine.iter().copied())
            })
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

/// The newest of `v`, complete snapshots first: the partial snapshots of a run carry its
/// start time like its complete one, and stay in an append-only repository.
fn newest_of(v: Vec<(Id, Snapshot)>) -> Option<(Id, Snapshot)> {
    v.into_iter().max_by_key(|(id, s)| (!s.partial, s.time_ns, *id))
}

/// Time of a snapshot for display, in UTC.
pub fn display_time(s: &Snapshot) -> String {
    match jiff::Timestamp::from_nanosecond(s.time_ns as i128) {
        Ok(t) => t.strftime("%Y-%m-%d %H:%M:%S").to_string(),
        Err(_) => s.time_ns.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use serde_bytes::ByteBuf;

    use super::*;

    fn snap(partial: bool, time_ns: i64) -> Snapshot {
        Snapshot {
            version: 1,
            time_ns,
            hostname: "h".into(),
            username: "u".into(),
            sources: vec![ByteBuf::from(b"/src".to_vec())],
            tags: Vec::new(),
            parent: None,
            tree: Id::of_bytes(b"tree"),
            partial,
            summary: Default::default(),
            program: "test".into(),
            job: "default".into(),
        }
    }

    /// A run's partial snapshots carry its start time, like its complete one (and stay in an
    /// append-only repository): `latest` is the complete one whatever the ids, and a later
    /// interrupted run's partial does not replace it.
    #[test]
    fn latest_prefers_complete_snapshots() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(&dir.path().join("journal.sqlite")).unwrap();
        let sources = vec![std::path::PathBuf::from("/src")];
        let complete = Id::of_bytes(b"complete");
        journal.add_snapshot(&complete, &snap(false, 100)).unwrap();
        for i in 0..20u8 {
            journal.add_snapshot(&Id::of_bytes(&[i]), &snap(true, 100)).unwrap();
        }
        journal.add_snapshot(&Id::of_bytes(b"later partial"), &snap(true, 200)).unwrap();
        assert_eq!(find(&journal, "latest", &sources).unwrap().0, complete);
        // Only partial snapshots: the newest of them.
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(&dir.path().join("journal.sqlite")).unwrap();
        journal.add_snapshot(&Id::of_bytes(b"a"), &snap(true, 100)).unwrap();
        journal.add_snapshot(&Id::of_bytes(b"b"), &snap(true, 200)).unwrap();
        assert_eq!(find(&journal, "latest", &sources).unwrap().0, Id::of_bytes(b"b"));
    }
}
