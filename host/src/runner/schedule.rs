//! When a job is due: `"hourly"`, `"daily 02:30"`, `"weekly sun 04:00"`, or a five-field cron
//! expression (minute hour day-of-month month day-of-week), evaluated by the `croner` crate in
//! the system time zone. The same schedule becomes a systemd `OnCalendar=` expression or a
//! crontab line for `cairn schedule install`.

use std::str::FromStr;

use anyhow::{Result, anyhow, bail};

/// A parsed schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// As written in the config.
    pub text: String,
    /// The equivalent five-field cron expression.
    pub cron: String,
    parsed: croner::Cron,
}

const WEEKDAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];
const MONTHS: [&str; 12] =
    ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"];

impl Schedule {
    pub fn parse(text: &str) -> Result<Schedule> {
        let cron = sugar(text)?.unwrap_or_else(|| text.trim().to_string());
        if cron.split_whitespace().count() != 5 {
            bail!(
                "{text:?} is not a schedule: give \"hourly\", \"daily HH:MM\", \"weekly DAY HH:MM\" or a cron \
                 expression of five fields (minute hour day-of-month month day-of-week)"
            );
        }
        let parsed = croner::Cron::from_str(&cron)
            .map_err(|e| anyhow!("{text:?} is not a valid cron expression: {e}"))?;
        Ok(Schedule { text: text.to_string(), cron, parsed })
    }

    /// The first slot strictly after `t`, in the system time zone.
    pub fn next_after(&self, t: jiff::Timestamp) -> Option<jiff::Timestamp> {
        self.next_in(t, jiff02::tz::TimeZone::system())
    }

    /// The first slot strictly after `t` in `zone`.
    fn next_in(&self, t: jiff::Timestamp, zone: jiff02::tz::TimeZone) -> Option<jiff::Timestamp> {
        let start = jiff02::Timestamp::from_second(t.as_second()).ok()?.to_zoned(zone);
        let next = self.parsed.find_next_occurrence(&start, false).ok()?;
        jiff::Timestamp::from_second(next.timestamp().as_second()).ok()
    }

    /// The systemd `OnCalendar=` expression of the same slots. Cron day-of-month and
    /// day-of-week given together mean either (systemd: both), and `L`, `W`, `#` have no
    /// systemd form: those are refused with what to do instead.
    pub fn on_calendar(&self) -> Result<String> {
        let f: Vec<&str> = self.cron.split_whitespace().collect();
        let (minute, hour, dom, month, dow) = (f[0], f[1], f[2], f[3], f[4]);
        let refuse = |why: &str| {
            anyhow!(
                "schedule {:?} has no systemd timer form ({why}); use `cairn schedule install --crontab`, or a \
                 simpler schedule",
                self.text
            )
        };
        if dom != "*" && dom != "?" && dow != "*" && dow != "?" {
            return Err(refuse("day of month and day of week both given"));
        }
        let minute = calendar_field(minute, 0, None).ok_or_else(|| refuse("minute field"))?;
        let hour = calendar_field(hour, 0, None).ok_or_else(|| refuse("hour field"))?;
        let dom = calendar_field(dom, 1, None).ok_or_else(|| refuse("day-of-month field"))?;
        let month = calendar_field(month, 1, Some(&MONTHS)).ok_or_else(|| refuse("month field"))?;
        let day = if dow == "*" || dow == "?" {
            String::new()
        } else {
            format!("{} ", weekday_field(dow).ok_or_else(|| refuse("day-of-week field"))?)
        };
        Ok(format!("{day}*-{month}-{dom} {hour}:{minute}:00"))
    }
}

/// The cron expression for the words people write, or `None` for anything else.
fn sugar(text: &str) -> Result<Option<String>> {
    let words: Vec<String> = text.split_whitespace().map(|w| w.to_ascii_lowercase()).collect();
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    let at = |hm: &str| -> Result<(u32, u32)> {
        let bad = || anyhow!("{text:?}: {hm:?} is not a time like 02:30");
        let (h, m) = hm.split_once(':').ok_or_else(bad)?;
        let (h, m): (u32, u32) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
        if h > 23 || m > 59 {
            return Err(bad());
        }
        Ok((h, m))
    };
    let day = |d: &str| -> Result<&'static str> {
        WEEKDAYS
            .iter()
            .find(|w| {
                d.starts_with(*w) && "sunday monday tuesday wednesday thursday friday saturday".contains(d)
            })
            .copied()
            .ok_or_else(|| anyhow!("{text:?}: {d:?} is not a day of the week (sun, mon, ...)"))
    };
    Ok(Some(match words.as_slice() {
        ["hourly"] => "0 * * * *".to_string(),
        ["daily"] => "0 0 * * *".to_string(),
        ["daily", hm] => {
            let (h, m) = at(hm)?;
            format!("{m} {h} * * *")
        }
        ["weekly"] => "0 0 * * sun".to_string(),
        ["weekly", d] => format!("0 0 * * {}", day(d)?),
        ["weekly", d, hm] => {
            let (h, m) = at(hm)?;
            format!("{m} {h} * * {}", day(d)?)
        }
        [first, ..] if ["hourly", "daily", "weekly"].contains(first) => {
            bail!("{text:?} is not a schedule: write \"hourly\", \"daily HH:MM\" or \"weekly DAY HH:MM\"")
        }
        _ => return Ok(None),
    }))
}

/// One cron field in systemd's calendar syntax: `*`, numbers, `a-b` ranges (`a..b`), `*/n`
/// and `a/n` steps, lists. `names` maps words (jan, feb...) to `base`, `base + 1`...
fn calendar_field(field: &str, base: u32, names: Option<&[&str]>) -> Option<String> {
    if field == "*" || field == "?" {
        return Some("*".into());
    }
    let value = |v: &str| -> Option<u32> {
        let v = v.to_ascii_lowercase();
        if let Some(names) = names
            && let Some(i) = names.iter().position(|n| *n == v)
        {
            return Some(base + i as u32);
        }
        v.parse().ok()
    };
    let mut out = Vec::new();
    for item in field.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((r, s)) => (r, Some(s.parse::<u32>().ok()?)),
            None => (item, None),
        };
        let text = match (range.split_once('-'), step) {
            (Some(_), Some(_)) => return None,
            (Some((a, b)), None) => format!("{:02}..{:02}", value(a)?, value(b)?),
            (None, Some(s)) if range == "*" => format!("{base:02}/{s}"),
            (None, Some(s)) => format!("{:02}/{s}", value(range)?),
            (None, None) => format!("{:02}", value(range)?),
        };
        out.push(text);
    }
    Some(out.join(","))
}

/// A cron day-of-week field as systemd weekday names: `1-5` is `Mon..Fri`.
fn weekday_field(field: &str) -> Option<String> {
    let name = |v: &str| -> Option<String> {
        let v = v.to_ascii_lowercase();
        let i = match WEEKDAYS.iter().position(|w| *w == v) {
            Some(i) => i,
            None => v.parse::<usize>().ok().filter(|n| *n <= 7)? % 7,
        };
        let w = WEEKDAYS[i];
        Some(format!("{}{}", w[..1].to_ascii_uppercase(), &w[1..]))
    };
    let mut out = Vec::new();
    for item in field.split(',') {
        match item.split_once('-') {
            Some((a, b)) => out.push(format!("{}..{}", name(a)?, name(b)?)),
            None => out.push(name(item)?),
        }
    }
    Some(out.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> jiff::Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn sugar_becomes_cron() {
        assert_eq!(Schedule::parse("hourly").unwrap().cron, "0 * * * *");
        assert_eq!(Schedule::parse("daily 02:30").unwrap().cron, "30 2 * * *");
        assert_eq!(Schedule::parse("Weekly Sun 04:00").unwrap().cron, "0 4 * * sun");
        assert_eq!(Schedule::parse("*/15 * * * mon-fri").unwrap().cron, "*/15 * * * mon-fri");
        for bad in
            ["daily 25:00", "weekly someday 04:00", "every day", "* * * *", "0 0 * * * *", "61 * * * *"]
        {
            assert!(Schedule::parse(bad).is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn systemd_calendar_forms() {
        let cal = |s: &str| Schedule::parse(s).unwrap().on_calendar().unwrap();
        assert_eq!(cal("daily 02:30"), "*-*-* 02:30:00");
        assert_eq!(cal("hourly"), "*-*-* *:00:00");
        assert_eq!(cal("weekly sun 04:00"), "Sun *-*-* 04:00:00");
        assert_eq!(cal("*/15 8-18 * * 1-5"), "Mon..Fri *-*-* 08..18:00/15:00");
        assert_eq!(cal("0 3 1,15 jan *"), "*-01-01,15 03:00:00");
        assert!(Schedule::parse("0 0 1 * mon").unwrap().on_calendar().is_err());
    }

    #[test]
    fn next_slots_in_utc() {
        let utc = jiff02::tz::TimeZone::UTC;
        let s = Schedule::parse("daily 02:30").unwrap();
        assert_eq!(s.next_in(at("2026-01-01T01:00:00Z"), utc.clone()), Some(at("2026-01-01T02:30:00Z")));
        assert_eq!(s.next_in(at("2026-01-01T02:30:00Z"), utc.clone()), Some(at("2026-01-02T02:30:00Z")));
        let w = Schedule::parse("weekly sun 04:00").unwrap();
        // 2026-01-01 is a Thursday.
        assert_eq!(w.next_in(at("2026-01-01T00:00:00Z"), utc), Some(at("2026-01-04T04:00:00Z")));
    }
}
