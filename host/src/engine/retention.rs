//! Retention policy: which snapshots of one group a `--keep-*` policy keeps, and why.
//!
//! The rules are those restic documents for `forget`, so a policy moved from restic keeps the
//! same snapshots:
//! - snapshots are taken newest first;
//! - `last N` keeps the N newest; `hourly/daily/weekly/monthly/yearly N` keep the newest
//!   snapshot of each of the N newest hours/days/ISO weeks/months/years that have one
//!   (`unlimited`: of every one); calendar units are those of the given time zone;
//! - when a bucket rule still has counts left after the oldest snapshot, that oldest snapshot
//!   is kept as well (restic 0.17: "If there are not enough snapshots to keep one for each
//!   duration related option, the oldest snapshot in the group is kept additionally");
//! - `within SPAN` keeps every snapshot newer than the newest snapshot minus SPAN;
//! - `tag T[,T2...]` keeps every snapshot that carries all of the listed tags.
//!
//! A snapshot is kept when any rule keeps it; every rule that does is reported.

use jiff::tz::TimeZone;
use jiff::{Span, Timestamp};

/// A span for `within`: `14d`, `1y6m`, `2w3d12h` (years, months, weeks, days, hours), or
/// ISO 8601 (`P14D`).
pub fn parse_span(text: &str) -> Result<Span, String> {
    let span: Span = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a span like \"14d\", \"1y6m\" or \"2w3d12h\""))?;
    if span.is_negative() || span.is_zero() {
        return Err(format!("{text:?} must be a positive span"));
    }
    Ok(span)
}

/// A tag list as given (`a,b`): the tags, trimmed, empty ones dropped.
pub fn tag_list(text: &str) -> Vec<String> {
    text.split(',').map(str::trim).filter(|t| !t.is_empty()).map(str::to_string).collect()
}

/// How many buckets a rule keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keep {
    Count(u32),
    Unlimited,
}

impl std::str::FromStr for Keep {
    type Err = String;

    fn from_str(s: &str) -> Result<Keep, String> {
        if s == "unlimited" {
            return Ok(Keep::Unlimited);
        }
        s.parse::<u32>()
            .map(Keep::Count)
            .map_err(|_| format!("{s:?} is not a count (a number, or \"unlimited\")"))
    }
}

/// The calendar units of the bucket rules, plus `last` (every snapshot its own bucket).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Bucket {
    Last,
    Hourly,
    Daily,
    Weekly,
    Monthly,
    Yearly,
}

impl Bucket {
    pub const ALL: [Bucket; 6] =
        [Bucket::Last, Bucket::Hourly, Bucket::Daily, Bucket::Weekly, Bucket::Monthly, Bucket::Yearly];

    pub fn name(self) -> &'static str {
        match self {
            Bucket::Last => "last",
            Bucket::Hourly => "hourly",
            Bucket::Daily => "daily",
            Bucket::Weekly => "weekly",
            Bucket::Monthly => "monthly",
            Bucket::Yearly => "yearly",
        }
    }

    /// The bucket a snapshot falls in; `index` is its position, newest first (for `last`).
    fn key(self, time: Timestamp, index: usize, tz: &TimeZone) -> i64 {
        let t = time.to_zoned_datetime(tz.clone());
        let (y, m, d, h) = (t.year() as i64, t.month() as i64, t.day() as i64, t.hour() as i64);
        match self {
            Bucket::Last => index as i64,
            Bucket::Hourly => ((y * 100 + m) * 100 + d) * 100 + h,
            Bucket::Daily => (y * 100 + m) * 100 + d,
            Bucket::Weekly => {
                let w = t.date().iso_week_date();
                w.year() as i64 * 100 + w.week() as i64
            }
            Bucket::Monthly => y * 100 + m,
            Bucket::Yearly => y,
        }
    }
}

/// Why a snapshot is kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The newest of its bucket, within the rule's count.
    Bucket(Bucket),
    /// The oldest snapshot of the group, kept because the rule had counts left.
    Oldest(Bucket),
    /// Newer than the newest snapshot minus the span.
    Within(String),
    /// Carries all of these tags.
    Tags(Vec<String>),
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::Bucket(Bucket::Last) => write!(f, "last"),
            Reason::Bucket(b) => write!(f, "{}", b.name()),
            Reason::Oldest(b) => write!(f, "oldest ({} had counts left)", b.name()),
            Reason::Within(span) => write!(f, "within {span}"),
            Reason::Tags(tags) => write!(f, "tag {}", tags.join(",")),
        }
    }
}

/// A `--keep-*` policy.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    pub last: Option<Keep>,
    pub hourly: Option<Keep>,
    pub daily: Option<Keep>,
    pub weekly: Option<Keep>,
    pub monthly: Option<Keep>,
    pub yearly: Option<Keep>,
    pub within: Option<Span>,
    /// Each entry a tag list: a snapshot with all tags of one entry is kept.
    pub tags: Vec<Vec<String>>,
}

impl Policy {
    fn count(&self, bucket: Bucket) -> Option<Keep> {
        match bucket {
            Bucket::Last => self.last,
            Bucket::Hourly => self.hourly,
            Bucket::Daily => self.daily,
            Bucket::Weekly => self.weekly,
            Bucket::Monthly => self.monthly,
            Bucket::Yearly => self.yearly,
        }
    }

    /// Whether the policy says nothing (forgetting by it would remove every snapshot).
    pub fn is_empty(&self) -> bool {
        Bucket::ALL.iter().all(|b| matches!(self.count(*b), None | Some(Keep::Count(0))))
            && self.within.is_none()
            && self.tags.is_empty()
    }
}

/// One snapshot of a group, as the policy sees it.
pub struct Candidate<'a> {
    pub time: Timestamp,
    pub tags: &'a [String],
}

/// For each candidate (in the order given), the reasons it is kept; empty: it goes.
pub fn apply(candidates: &[Candidate<'_>], policy: &Policy, tz: &TimeZone) -> Vec<Vec<Reason>> {
    let mut reasons = vec![Vec::new(); candidates.len()];
    // Newest first; equal times keep their given order.
    let mut order: Vec<usize> = (0..candidates.len()).collect();
    order.sort_by(|a, b| candidates[*b].time.cmp(&candidates[*a].time));
    let Some(&newest) = order.first() else { return reasons };
    let within_since = policy.within.and_then(|span| {
        // Calendar spans (years, months, days) are applied in the given time zone.
        candidates[newest].time.to_zoned_datetime(tz.clone()).checked_sub(span).ok().map(|z| z.timestamp())
    });
    let mut left: Vec<(Bucket, Keep, Option<i64>)> = Bucket::ALL
        .iter()
        .filter_map(|b| match policy.count(*b) {
            None | Some(Keep::Count(0)) => None,
            Some(k) => Some((*b, k, None)),
        })
        .collect();
    for (index, &i) in order.iter().enumerate() {
        let c = &candidates[i];
        for list in &policy.tags {
            if list.iter().all(|t| c.tags.contains(t)) {
                reasons[i].push(Reason::Tags(list.clone()));
            }
        }
        if let (Some(since), Some(span)) = (within_since, policy.within)
            && c.time > since
        {
            reasons[i].push(Reason::Within(format!("{span:#}")));
        }
        let oldest = index + 1 == order.len();
        for (bucket, keep, last) in left.iter_mut() {
            if *keep == Keep::Count(0) {
                continue;
            }
            let key = bucket.key(c.time, index, tz);
            let new_bucket = *last != Some(key);
            if new_bucket || oldest {
                reasons[i].push(if new_bucket { Reason::Bucket(*bucket) } else { Reason::Oldest(*bucket) });
                *last = Some(key);
                if let Keep::Count(n) = keep {
                    *n -= 1;
                }
            }
        }
    }
    reasons
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse::<jiff::civil::DateTime>().unwrap().to_zoned_datetime(TimeZone::UTC).unwrap().timestamp()
    }

    /// Which of `times` (newest or oldest first, as written) the policy keeps.
    fn kept(times: &[&str], tags: &[&[&str]], policy: &Policy) -> Vec<&'static str> {
        let owned: Vec<Vec<String>> = (0..times.len())
            .map(|i| tags.get(i).map(|t| t.iter().map(|s| s.to_string()).collect()).unwrap_or_default())
            .collect();
        let cands: Vec<Candidate> =
            times.iter().zip(&owned).map(|(t, tags)| Candidate { time: ts(t), tags }).collect();
        let r = apply(&cands, policy, &TimeZone::UTC);
        times
            .iter()
            .zip(r)
            .filter(|(_, r)| !r.is_empty())
            .map(|(t, _)| -> &'static str { Box::leak(t.to_string().into_boxed_str()) })
            .collect()
    }

    fn p() -> Policy {
        Policy::default()
    }

    /// Ten snapshots over three days, two weeks, two months: the worked cases below are
    /// the rules above applied by hand.
    const TIMES: [&str; 10] = [
        "2026-11-30T23:00",
        "2026-11-30T09:00",
        "2026-11-30T08:30",
        "2026-11-29T12:00",
        "2026-11-29T11:00",
        "2026-11-23T10:00",
        "2026-11-01T10:00",
        "2026-10-31T10:00",
        "2025-12-31T23:59",
        "2025-06-01T00:00",
    ];

    #[test]
    fn last_keeps_the_newest_n() {
        let k = kept(&TIMES, &[], &Policy { last: Some(Keep::Count(3)), ..p() });
        assert_eq!(k, &TIMES[..3]);
    }

    #[test]
    fn daily_keeps_the_newest_of_each_day_and_the_oldest_when_counts_are_left() {
        let k = kept(&TIMES, &[], &Policy { daily: Some(Keep::Count(3)), ..p() });
        assert_eq!(k, ["2026-11-30T23:00", "2026-11-29T12:00", "2026-11-23T10:00"]);
        // More days asked for than there are: every day's newest, and the oldest snapshot.
        let k = kept(&TIMES[..5], &[], &Policy { daily: Some(Keep::Count(5)), ..p() });
        assert_eq!(k, ["2026-11-30T23:00", "2026-11-29T12:00", "2026-11-29T11:00"]);
    }

    #[test]
    fn hourly_weekly_monthly_yearly_use_their_calendar_units() {
        let k = kept(&TIMES, &[], &Policy { hourly: Some(Keep::Count(3)), ..p() });
        // 09:00 and 08:30 are different hours (8 and 9).
        assert_eq!(k, ["2026-11-30T23:00", "2026-11-30T09:00", "2026-11-30T08:30"]);
        // ISO weeks start on Monday: Mon 30 Nov opens a week; Sun 29 Nov and Mon 23 Nov share
        // one; Sun 1 Nov and Sat 31 Oct share another.
        let k = kept(&TIMES, &[], &Policy { weekly: Some(Keep::Count(3)), ..p() });
        assert_eq!(k, ["2026-11-30T23:00", "2026-11-29T12:00", "2026-11-01T10:00"]);
        let k = kept(&TIMES, &[], &Policy { monthly: Some(Keep::Count(2)), ..p() });
        assert_eq!(k, ["2026-11-30T23:00", "2026-10-31T10:00"]);
        let k = kept(&TIMES, &[], &Policy { yearly: Some(Keep::Count(5)), ..p() });
        assert_eq!(k, ["2026-11-30T23:00", "2025-12-31T23:59", "2025-06-01T00:00"]);
    }

    #[test]
    fn unlimited_keeps_every_bucket() {
        let k = kept(&TIMES, &[], &Policy { monthly: Some(Keep::Unlimited), ..p() });
        assert_eq!(k, ["2026-11-30T23:00", "2026-10-31T10:00", "2025-12-31T23:59", "2025-06-01T00:00"]);
    }

    #[test]
    fn rules_combine_and_each_counts_its_own_buckets() {
        let policy = Policy {
            last: Some(Keep::Count(2)),
            daily: Some(Keep::Count(2)),
            monthly: Some(Keep::Count(2)),
            ..p()
        };
        let k = kept(&TIMES, &[], &policy);
        assert_eq!(k, ["2026-11-30T23:00", "2026-11-30T09:00", "2026-11-29T12:00", "2026-10-31T10:00"]);
    }

    #[test]
    fn within_is_relative_to_the_newest_snapshot_not_to_now() {
        let within = Some("2d".parse::<Span>().unwrap());
        let k = kept(&TIMES, &[], &Policy { within, ..p() });
        assert_eq!(k, &TIMES[..5]);
    }

    #[test]
    fn tags_keep_snapshots_with_all_tags_of_a_list() {
        let tags: &[&[&str]] = &[&[], &["keep"], &["a"], &["a", "b"]];
        let policy = Policy { tags: vec![vec!["keep".into()], vec!["a".into(), "b".into()]], ..p() };
        let k = kept(&TIMES[..4], tags, &policy);
        assert_eq!(k, ["2026-11-30T09:00", "2026-11-29T12:00"]);
    }

    #[test]
    fn order_of_input_does_not_matter_and_reasons_are_all_given() {
        let mut times = TIMES.to_vec();
        times.reverse();
        let cands: Vec<Candidate> = times.iter().map(|t| Candidate { time: ts(t), tags: &[] }).collect();
        let policy = Policy {
            last: Some(Keep::Count(1)),
            daily: Some(Keep::Count(1)),
            yearly: Some(Keep::Count(9)),
            ..p()
        };
        let r = apply(&cands, &policy, &TimeZone::UTC);
        assert_eq!(
            r[9],
            [Reason::Bucket(Bucket::Last), Reason::Bucket(Bucket::Daily), Reason::Bucket(Bucket::Yearly)]
        );
        assert_eq!(r[0], [Reason::Oldest(Bucket::Yearly)], "{r:?}");
        assert_eq!(r[1], [Reason::Bucket(Bucket::Yearly)]);
        assert!(r[2..9].iter().all(Vec::is_empty), "{r:?}");
    }

    #[test]
    fn calendar_units_follow_the_time_zone() {
        // 23:00 UTC on 30 Nov is 1 Dec in Tokyo: a new day and a new month there.
        let tokyo = TimeZone::get("Asia/Tokyo").unwrap();
        let cands: Vec<Candidate> = ["2026-11-30T23:00", "2026-11-30T09:00"]
            .iter()
            .map(|t| Candidate { time: ts(t), tags: &[] })
            .collect();
        let policy = Policy { monthly: Some(Keep::Count(2)), ..p() };
        assert!(apply(&cands, &policy, &tokyo).iter().all(|r| !r.is_empty()));
        let utc = apply(&cands, &Policy { monthly: Some(Keep::Count(1)), ..p() }, &TimeZone::UTC);
        assert!(utc[1].is_empty());
    }

    /// restic's documentation ("Removing snapshots according to a policy") works this case:
    /// daily backups for a century and `--keep-daily 7 --keep-weekly 5 --keep-monthly 12
    /// --keep-yearly 75` keep the 7 newest dailies, the last day of the weeks the dailies do
    /// not already cover, 11 or 12 month ends (as the weeks cross a month or not) and 75 year
    /// ends, and nothing else. Here the newest backup is Thursday 2099-12-31 11:00: the
    /// dailies cover 25-31 December (and so the week ending Sunday 27th), the weeklies add
    /// Sundays 20, 13 and 6 December, the monthlies the ends of January to November, and the
    /// yearlies the ends of 2025 to 2098.
    #[test]
    fn restics_documented_century_of_daily_backups() {
        let first = jiff::civil::date(2000, 1, 1);
        let days: Vec<jiff::civil::Date> =
            (0..).map(|n| first + jiff::Span::new().days(n)).take_while(|d| d.year() < 2100).collect();
        let cands: Vec<Candidate> = days
            .iter()
            .map(|d| Candidate {
                time: d.at(11, 0, 0, 0).to_zoned_datetime(TimeZone::UTC).unwrap().timestamp(),
                tags: &[],
            })
            .collect();
        let policy = Policy {
            daily: Some(Keep::Count(7)),
            weekly: Some(Keep::Count(5)),
            monthly: Some(Keep::Count(12)),
            yearly: Some(Keep::Count(75)),
            ..p()
        };
        let r = apply(&cands, &policy, &TimeZone::UTC);
        let kept: std::collections::BTreeSet<String> =
            days.iter().zip(&r).filter(|(_, r)| !r.is_empty()).map(|(d, _)| d.to_string()).collect();
        let mut want = std::collections::BTreeSet::new();
        for day in 25..=31 {
            want.insert(format!("2099-12-{day}"));
        }
        for day in ["20", "13", "06"] {
            want.insert(format!("2099-12-{day}"));
        }
        for month in 1..=11 {
            let end = jiff::civil::date(2099, month, 1).last_of_month();
            want.insert(end.to_string());
        }
        for year in 2025..=2098 {
            want.insert(format!("{year}-12-31"));
        }
        assert_eq!(kept.len(), 7 + 3 + 11 + 74);
        assert_eq!(kept, want);
    }

    #[test]
    fn an_empty_policy_is_recognised() {
        assert!(p().is_empty());
        assert!(Policy { daily: Some(Keep::Count(0)), ..p() }.is_empty());
        assert!(!Policy { daily: Some(Keep::Unlimited), ..p() }.is_empty());
        assert_eq!("unlimited".parse::<Keep>(), Ok(Keep::Unlimited));
        assert!("-1".parse::<Keep>().is_err());
    }
}
