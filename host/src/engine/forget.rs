//! `forget`: which snapshots a retention policy removes, group by group, and removing them.
//!
//! Snapshots are grouped (by default by host and sources), and the policy
//! ([`super::retention`]) is applied to each group on its own. On top of the policy:
//! - partial snapshots (checkpoints of interrupted runs) never count for the policy: one that
//!   a complete snapshot of its group supersedes is forgotten, one newer than every complete
//!   snapshot is kept (the interrupted run's progress);
//! - a policy never empties a group: when it would remove every complete snapshot of a
//!   group, the newest is kept, unless `allow_empty_group` says otherwise.
//!
//! Only snapshot objects are deleted here; the data they alone referenced stays until a
//! prune. Deletion goes through [`Repository::delete_snapshots`], the one deletion protocol.

use std::collections::BTreeMap;

use anyhow::{Result, bail};
use jiff::tz::TimeZone;

use super::retention::{self, Candidate, Policy, Reason};
use crate::ids::Id;
use crate::repo::Repository;
use crate::repo::format::Snapshot;

/// What snapshots are grouped by before the policy is applied.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GroupBy {
    pub host: bool,
    pub paths: bool,
    pub tags: bool,
}

impl std::str::FromStr for GroupBy {
    type Err = String;

    /// `host,paths` (the default), any comma list of `host`, `paths`, `tags`, or `""`
    /// (everything one group).
    fn from_str(s: &str) -> Result<GroupBy, String> {
        let mut g = GroupBy::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part {
                "host" => g.host = true,
                "paths" => g.paths = true,
                "tags" => g.tags = true,
                other => return Err(format!("cannot group by {other:?}: use host, paths and/or tags")),
            }
        }
        Ok(g)
    }
}

impl GroupBy {
    pub const DEFAULT: GroupBy = GroupBy { host: true, paths: true, tags: false };
}

/// The key of a snapshot's group, shown to the user.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct GroupKey {
    pub host: Option<String>,
    pub paths: Option<Vec<String>>,
    pub tags: Option<Vec<String>>,
}

impl GroupKey {
    pub fn of(s: &Snapshot, by: GroupBy) -> GroupKey {
        let mut tags = s.tags.clone();
        tags.sort();
        GroupKey {
            host: by.host.then(|| s.hostname.clone()),
            paths: by
                .paths
                .then(|| s.sources.iter().map(|b| String::from_utf8_lossy(b).into_owned()).collect()),
            tags: by.tags.then_some(tags),
        }
    }
}

impl std::fmt::Display for GroupKey {
    /// Host names, paths and tags come from the repository: escaped.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let esc = |t: &str| crate::untrusted::escape(t).into_owned();
        let mut parts = Vec::new();
        if let Some(h) = &self.host {
            parts.push(format!("host {}", esc(h)));
        }
        if let Some(p) = &self.paths {
            parts.push(format!("sources {}", p.iter().map(|p| esc(p)).collect::<Vec<_>>().join(" ")));
        }
        if let Some(t) = &self.tags {
            parts.push(format!("tags [{}]", t.iter().map(|t| esc(t)).collect::<Vec<_>>().join(",")));
        }
        if parts.is_empty() { f.write_str("all snapshots") } else { f.write_str(&parts.join(", ")) }
    }
}

/// Why a snapshot goes, when it does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Kept, for these reasons.
    Keep(Vec<KeepReason>),
    /// Removed: no rule of the policy keeps it.
    Forget,
    /// Removed: a partial snapshot that a complete snapshot of its group supersedes.
    Superseded,
    /// Removed: named on the command line.
    Named,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeepReason {
    Policy(Reason),
    /// The policy would have removed every complete snapshot of the group; the newest is kept.
    LastOfGroup,
    /// A partial snapshot newer than every complete one: an interrupted run's progress.
    InProgress,
}

impl std::fmt::Display for KeepReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeepReason::Policy(r) => write!(f, "{r}"),
            KeepReason::LastOfGroup => f.write_str("last of its group (--allow-empty-group to remove it)"),
            KeepReason::InProgress => f.write_str("partial, newer than every complete snapshot"),
        }
    }
}

pub struct Decision {
    pub id: Id,
    pub snapshot: Snapshot,
    pub verdict: Verdict,
}

impl Decision {
    pub fn goes(&self) -> bool {
        !matches!(self.verdict, Verdict::Keep(_))
    }
}

pub struct Group {
    pub key: GroupKey,
    /// Newest first.
    pub decisions: Vec<Decision>,
}

pub struct Plan {
    pub groups: Vec<Group>,
}

impl Plan {
    pub fn doomed(&self) -> Vec<Id> {
        self.groups.iter().flat_map(|g| g.decisions.iter().filter(|d| d.goes()).map(|d| d.id)).collect()
    }
}

pub struct Options {
    pub policy: Policy,
    pub group_by: GroupBy,
    pub allow_empty_group: bool,
    /// Snapshots named on the command line: only these are forgotten (no policy).
    pub named: Vec<Id>,
}

/// Decides, for every snapshot, whether it stays and why.
pub fn plan(snapshots: Vec<(Id, Snapshot)>, opts: &Options, tz: &TimeZone) -> Result<Plan> {
    if opts.named.is_empty() && opts.policy.is_empty() {
        bail!(
            "no retention policy given: say what to keep (e.g. --keep-daily 7 --keep-weekly 5), or set it \
             under [retention] in the config; nothing was forgotten"
        );
    }
    let mut groups: BTreeMap<GroupKey, Vec<(Id, Snapshot)>> = BTreeMap::new();
    for (id, s) in snapshots {
        groups.entry(GroupKey::of(&s, opts.group_by)).or_default().push((id, s));
    }
    let mut out = Vec::new();
    for (key, mut members) in groups {
        members.sort_by_key(|m| std::cmp::Reverse((m.1.time_ns, m.0)));
        let verdicts = if opts.named.is_empty() {
            apply_policy(&members, opts, tz)
        } else {
            members
                .iter()
                .map(
                    |(id, _)| {
                        if opts.named.contains(id) { Verdict::Named } else { Verdict::Keep(Vec::new()) }
                    },
                )
                .collect()
        };
        let decisions = members
            .into_iter()
            .zip(verdicts)
            .map(|((id, snapshot), verdict)| Decision { id, snapshot, verdict })
            .collect();
        out.push(Group { key, decisions });
    }
    Ok(Plan { groups: out })
}

/// The policy over one group (newest first). Partial snapshots never count for the policy (an
/// interrupted run's view must not push out a complete one): those newer than every complete
/// snapshot are kept as work in progress, the others are superseded. The group's complete
/// snapshots are never all removed unless allowed.
fn apply_policy(members: &[(Id, Snapshot)], opts: &Options, tz: &TimeZone) -> Vec<Verdict> {
    let newest_complete = members.iter().find(|(_, s)| !s.partial).map(|(_, s)| s.time_ns);
    let complete: Vec<usize> = (0..members.len()).filter(|&i| !members[i].1.partial).collect();
    let candidates: Vec<Candidate> = complete
        .iter()
        .map(|&i| Candidate {
            time: jiff::Timestamp::from_nanosecond(members[i].1.time_ns as i128)
                .unwrap_or(jiff::Timestamp::MIN),
            tags: &members[i].1.tags,
        })
        .collect();
    let reasons = retention::apply(&candidates, &opts.policy, tz);
    let mut verdicts: Vec<Verdict> = members
        .iter()
        .map(|(_, s)| match newest_complete {
            Some(t) if s.time_ns <= t => Verdict::Superseded,
            _ => Verdict::Keep(vec![KeepReason::InProgress]),
        })
        .collect();
    for (&i, r) in complete.iter().zip(reasons) {
        verdicts[i] = if r.is_empty() {
            Verdict::Forget
        } else {
            Verdict::Keep(r.into_iter().map(KeepReason::Policy).collect())
        };
    }
    let any_complete_kept = complete.iter().any(|&i| matches!(verdicts[i], Verdict::Keep(_)));
    if let Some(&newest) = complete.first()
        && !any_complete_kept
        && !opts.allow_empty_group
    {
        verdicts[newest] = Verdict::Keep(vec![KeepReason::LastOfGroup]);
    }
    verdicts
}

/// Deletes the snapshots the plan removes; returns how many.
pub async fn execute(repo: &Repository, plan: &Plan) -> Result<usize> {
    let doomed = plan.doomed();
    if doomed.is_empty() {
        return Ok(0);
    }
    if !repo.backend.can_delete() {
        bail!(
            "this repository is append-only (repository.grants.delete = false): forget removes nothing; \
             allow deletes in the config of the machine that manages retention"
        );
    }
    repo.delete_snapshots(&doomed).await?;
    Ok(doomed.len())
}

#[cfg(test)]
mod tests {
    use serde_bytes::ByteBuf;

    use super::*;
    use crate::repo::format::Summary;
    use retention::Keep;

    fn snap(day: i64, host: &str, partial: bool) -> (Id, Snapshot) {
        let s = Snapshot {
            version: 1,
            time_ns: (1_700_000_000 + day * 86_400) * 1_000_000_000,
            hostname: host.into(),
            username: "u".into(),
            sources: vec![ByteBuf::from(b"/src".to_vec())],
            tags: Vec::new(),
            parent: None,
            tree: Id::of_bytes(b"tree"),
            partial,
            summary: Summary::default(),
            program: "test".into(),
        };
        (Id::of_bytes(format!("{day}{host}{partial}").as_bytes()), s)
    }

    fn opts(policy: Policy) -> Options {
        Options { policy, group_by: GroupBy::DEFAULT, allow_empty_group: false, named: Vec::new() }
    }

    #[test]
    fn groups_are_decided_on_their_own_and_partials_never_count() {
        let snaps = vec![
            snap(0, "a", false),
            snap(1, "a", true),
            snap(2, "a", false),
            snap(3, "a", true),
            snap(0, "b", false),
        ];
        let policy = Policy { last: Some(Keep::Count(1)), ..Default::default() };
        let plan = plan(snaps, &opts(policy), &TimeZone::UTC).unwrap();
        assert_eq!(plan.groups.len(), 2);
        let verdicts: Vec<&Verdict> = plan.groups[0].decisions.iter().map(|d| &d.verdict).collect();
        // Newest first: the partial of day 3 is newer than every complete one (kept as
        // progress, not counted); day 2 is the last complete one; the partial of day 1 is
        // superseded; day 0 goes under the policy.
        assert_eq!(verdicts[0], &Verdict::Keep(vec![KeepReason::InProgress]));
        assert_eq!(
            verdicts[1],
            &Verdict::Keep(vec![KeepReason::Policy(Reason::Bucket(retention::Bucket::Last))])
        );
        assert_eq!(verdicts[2], &Verdict::Superseded);
        assert_eq!(verdicts[3], &Verdict::Forget);
        // Host b has its own last snapshot.
        assert!(matches!(plan.groups[1].decisions[0].verdict, Verdict::Keep(_)));
    }

    #[test]
    fn a_policy_never_empties_a_group_unless_allowed() {
        let snaps = vec![snap(0, "a", false), snap(1, "a", false)];
        let policy = Policy { tags: vec![vec!["nothing-has-this".into()]], ..Default::default() };
        let p = plan(snaps.clone(), &opts(policy.clone()), &TimeZone::UTC).unwrap();
        assert_eq!(p.groups[0].decisions[0].verdict, Verdict::Keep(vec![KeepReason::LastOfGroup]));
        assert_eq!(p.doomed().len(), 1);
        let p = plan(snaps, &Options { allow_empty_group: true, ..opts(policy) }, &TimeZone::UTC).unwrap();
        assert_eq!(p.doomed().len(), 2);
    }

    #[test]
    fn an_empty_policy_is_refused() {
        let err = plan(vec![snap(0, "a", false)], &opts(Policy::default()), &TimeZone::UTC).err().unwrap();
        assert!(err.to_string().contains("no retention policy given"), "{err}");
    }

    #[test]
    fn group_by_parses() {
        assert_eq!("host,paths".parse::<GroupBy>(), Ok(GroupBy::DEFAULT));
        assert_eq!("".parse::<GroupBy>(), Ok(GroupBy::default()));
        assert!("hosts".parse::<GroupBy>().is_err());
    }
}
