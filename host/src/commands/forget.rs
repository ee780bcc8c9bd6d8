//! `cairn forget [SNAPSHOT...] [--keep-* ...] [--group-by LIST] [--allow-empty-group] [--dry-run]`

use anyhow::{Result, bail};
use serde_json::json;

use super::Ctx;
use crate::cli::{ForgetPolicy, PruneLimits};
use crate::engine::forget::{self, Decision, GroupBy, Options, Verdict};
use crate::engine::prune;
use crate::engine::retention::{Keep, Policy, parse_span, tag_list};
use crate::engine::snapshots::{self, display_time};
use crate::repo::{Access, Repository};

/// How `forget` runs, beside what it forgets.
pub struct How<'a> {
    pub group_by: Option<&'a str>,
    pub allow_empty_group: bool,
    pub dry_run: bool,
    /// `--prune`: prune afterwards, with these limits.
    pub prune: Option<&'a PruneLimits>,
}

pub fn run(ctx: &Ctx, named: &[String], flags: &ForgetPolicy, how: How<'_>) -> Result<()> {
    let How { group_by, allow_empty_group, dry_run, prune } = how;
    let config = ctx.config()?;
    let prune_opts = match prune {
        Some(limits) => Some(super::prune::options(&config, limits)?),
        None => None,
    };
    let policy = match policy_of(flags)? {
        Some(p) => p,
        None => config.retention.policy()?,
    };
    if !named.is_empty() && !policy.is_empty() && has_flags(flags) {
        bail!("give snapshot ids or --keep-* flags, not both");
    }
    let group_by = match group_by.or(config.retention.group_by.as_deref()) {
        Some(text) => text.parse::<GroupBy>().map_err(anyhow::Error::msg)?,
        None => GroupBy::DEFAULT,
    };
    // With --prune, alone in the repository: no backup may reference what prune deletes.
    let access = match (dry_run, prune.is_some()) {
        (true, _) => Access::Read,
        (false, false) => Access::Write,
        (false, true) => Access::Exclusive,
    };
    let repo = ctx.rt.block_on(Repository::open(&config, access))?;
    let result = (|| -> Result<()> {
        if !dry_run {
            prune::require_deletes(&repo, "forget")?;
        }
        let sources = crate::engine::walk::clean_sources(&config.backup.sources)?;
        let mut ids = Vec::new();
        for spec in named {
            ids.push(snapshots::find(&repo.journal, spec, &sources)?.0);
        }
        let opts = Options { policy, group_by, allow_empty_group, named: ids };
        let plan = forget::plan(repo.journal.snapshots()?, &opts, &jiff::tz::TimeZone::system())?;
        let removed = if dry_run { 0 } else { ctx.rt.block_on(forget::execute(&repo, &plan))? };
        // Pruned in the same run; a dry run plans the prune without the snapshots that would go.
        let pruned = match &prune_opts {
            Some(opts) => Some(prune::run(&repo, ctx.rt.handle(), opts, &plan.doomed(), dry_run)?),
            None => None,
        };
        if ctx.json {
            let groups: Vec<_> = plan
            .groups
            .iter()
            .map(|g| {
                json!({
                    "job": g.key.job,
                    "host": g.key.host,
                    "sources": g.key.paths,
                    "tags": g.key.tags,
                    "keep": g.decisions.iter().filter(|d| !d.goes()).map(decision_json).collect::<Vec<_>>(),
                    "remove": g.decisions.iter().filter(|d| d.goes()).map(decision_json).collect::<Vec<_>>(),
                })
            })
            .collect();
            ctx.print_json(&json!({
                "dry_run": dry_run,
                "groups": groups,
                "would_remove": plan.doomed().len(),
                "removed": removed,
                "prune": pruned.as_ref().map(super::prune::json),
            }));
            return Ok(());
        }
        for g in &plan.groups {
            let gone = g.decisions.iter().filter(|d| d.goes()).count();
            println!("{}: keep {}, remove {gone}", g.key, g.decisions.len() - gone);
            for d in &g.decisions {
                println!(
                    "  {:<6} {:<10} {:<20} {}",
                    if d.goes() { "remove" } else { "keep" },
                    d.id.short(),
                    display_time(&d.snapshot),
                    why(d)
                );
            }
        }
        let doomed = plan.doomed().len();
        if dry_run {
            println!("dry run: {doomed} snapshot(s) would be removed; nothing was changed");
        } else {
            println!(
                "removed {removed} snapshot(s); the data only they referenced stays in the repository until it is pruned"
            );
        }
        if let Some(report) = &pruned {
            super::prune::print(ctx, report);
        }
        Ok(())
    })();
    ctx.released(&repo, result)
}

/// The policy the flags give, if any flag is given.
fn policy_of(f: &ForgetPolicy) -> Result<Option<Policy>> {
    if !has_flags(f) {
        return Ok(None);
    }
    let within = match &f.keep_within {
        Some(w) => Some(parse_span(w).map_err(|e| anyhow::anyhow!("--keep-within: {e}"))?),
        None => None,
    };
    Ok(Some(Policy {
        last: f.keep_last,
        hourly: f.keep_hourly,
        daily: f.keep_daily,
        weekly: f.keep_weekly,
        monthly: f.keep_monthly,
        yearly: f.keep_yearly,
        within,
        tags: f.keep_tag.iter().map(|t| tag_list(t)).collect(),
    }))
}

fn has_flags(f: &ForgetPolicy) -> bool {
    let counts: [Option<Keep>; 6] =
        [f.keep_last, f.keep_hourly, f.keep_daily, f.keep_weekly, f.keep_monthly, f.keep_yearly];
    counts.iter().any(Option::is_some) || f.keep_within.is_some() || !f.keep_tag.is_empty()
}

fn why(d: &Decision) -> String {
    match &d.verdict {
        Verdict::Keep(reasons) if reasons.is_empty() => "not named".into(),
        Verdict::Keep(reasons) => reasons.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
        Verdict::Forget => "no rule keeps it".into(),
        Verdict::Superseded => "partial, superseded by a complete snapshot".into(),
        Verdict::Named => "named".into(),
    }
}

fn decision_json(d: &Decision) -> serde_json::Value {
    json!({
        "id": d.id.hex(),
        "time": jiff::Timestamp::from_nanosecond(d.snapshot.time_ns as i128).map(|t| t.to_string()).unwrap_or_default(),
        "partial": d.snapshot.partial,
        "tags": d.snapshot.tags,
        "why": why(d),
    })
}
