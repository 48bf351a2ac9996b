//! The arrivals analysis, without I/O: arrivals and desktops in use by hour of the week, and
//! the pre-booted pool that would have met every arrival without a cold start.
//!
//! The pool model: each arrival takes a ready VM, and the pool boots a replacement that is
//! ready `refill_secs` later. A burst of `k` arrivals within `refill_secs` therefore needs `k`
//! VMs booted ahead; an hour's figure is the largest burst that starts in it, over every week
//! recorded. Hours are counted in UTC, Monday 00:00 first.

use serde::Serialize;

use super::store::{ActiveHour, Arrival};

pub const WEEK: i64 = 7 * 86_400;
pub const HOURS_PER_WEEK: usize = 168;
const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];

/// The hour of the week of Unix time `t`: 0 is Monday 00:00-01:00 UTC.
pub fn hour_of_week(t: i64) -> usize {
    // 1970-01-01 was a Thursday, day 3 of a week that starts on Monday.
    let day = (t.div_euclid(86_400) + 3).rem_euclid(7);
    (day * 24 + t.rem_euclid(86_400) / 3600) as usize
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HourFigures {
    pub hour_of_week: usize,
    pub day: &'static str,
    pub hour: usize,
    /// Arrivals in this hour over every week recorded.
    pub arrivals: u64,
    pub arrivals_per_week: f64,
    /// The most in this hour of any one week.
    pub arrivals_max: u64,
    /// Desktops in use, the mean of the samples taken in this hour of every week.
    pub active_mean: f64,
    pub active_max: i64,
    /// Pre-booted VMs that would have met every arrival of this hour without a cold start.
    pub pool_needed: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Analysis {
    pub timezone: &'static str,
    /// Weeks since the first record, rounded up (at least one).
    pub weeks: f64,
    pub refill_secs: i64,
    pub pool_configured: usize,
    /// The largest `pool_needed` of any hour: the one size that would have met them all.
    pub pool_needed_max: u64,
    pub arrivals: u64,
    pub hours: Vec<HourFigures>,
}

/// The analysis at `now` of `arrivals` and `active` (any order), with replacements ready
/// `refill_secs` after an arrival takes a VM.
pub fn analyse(arrivals: &[Arrival], active: &[ActiveHour], refill_secs: i64, pool_configured: usize, now: i64) -> Analysis {
    let mut times: Vec<i64> = arrivals.iter().map(|a| a.t).collect();
    times.sort_unstable();
    let first = times.first().copied().into_iter().chain(active.iter().map(|a| a.hour)).min().unwrap_or(now);
    let weeks = ((now - first) as f64 / WEEK as f64).ceil().max(1.0);
    let mut hours: Vec<HourFigures> = (0..HOURS_PER_WEEK)
        .map(|h| HourFigures {
            hour_of_week: h,
            day: DAYS[h / 24],
            hour: h % 24,
            arrivals: 0,
            arrivals_per_week: 0.0,
            arrivals_max: 0,
            active_mean: 0.0,
            active_max: 0,
            pool_needed: 0,
        })
        .collect();
    // Per (week, hour) counts for the busiest week of each hour.
    let mut per_week: std::collections::HashMap<(i64, usize), u64> = Default::default();
    let refill = refill_secs.max(1);
    let mut end = 0;
    for (i, &t) in times.iter().enumerate() {
        let h = &mut hours[hour_of_week(t)];
        h.arrivals += 1;
        let n = per_week.entry((t.div_euclid(WEEK), h.hour_of_week)).or_default();
        *n += 1;
        h.arrivals_max = h.arrivals_max.max(*n);
        // The burst that starts here: arrivals in [t, t + refill).
        end = end.max(i);
        while end < times.len() && times[end] < t + refill {
            end += 1;
        }
        h.pool_needed = h.pool_needed.max((end - i) as u64);
    }
    let mut active_sum = vec![(0i64, 0i64); HOURS_PER_WEEK];
    for a in active {
        let h = hour_of_week(a.hour);
        active_sum[h].0 += a.sum;
        active_sum[h].1 += a.samples;
        hours[h].active_max = hours[h].active_max.max(a.max);
    }
    for (h, (sum, n)) in hours.iter_mut().zip(active_sum) {
        h.arrivals_per_week = h.arrivals as f64 / weeks;
        if n > 0 {
            h.active_mean = sum as f64 / n as f64;
        }
    }
    Analysis {
        timezone: "UTC",
        weeks,
        refill_secs,
        pool_configured,
        pool_needed_max: hours.iter().map(|h| h.pool_needed).max().unwrap_or(0),
        arrivals: times.len() as u64,
        hours,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Monday 2023-11-13 00:00 UTC.
    const MONDAY: i64 = 1_699_833_600;

    fn at(t: i64) -> Arrival {
        Arrival { t, login: true, refused: false }
    }

    #[test]
    fn hours_of_the_week_start_on_monday_utc() {
        assert_eq!(hour_of_week(MONDAY), 0);
        assert_eq!(hour_of_week(MONDAY + 3599), 0);
        assert_eq!(hour_of_week(MONDAY + 9 * 3600 + 5), 9);
        assert_eq!(hour_of_week(MONDAY - 1), 167);
        assert_eq!(hour_of_week(0), 3 * 24, "the epoch was a Thursday");
        assert_eq!(hour_of_week(MONDAY + WEEK + 26 * 3600), 26);
    }

    #[test]
    fn a_morning_rush_needs_the_largest_burst_within_the_refill_time() {
        let nine = MONDAY + 9 * 3600;
        // Week 1: five people within 100 s at 9:00, one more at 9:30. Week 2: two at 9:00.
        let mut a: Vec<Arrival> = [0, 10, 20, 50, 99, 1800].iter().map(|d| at(nine + d)).collect();
        a.extend([at(nine + WEEK), at(nine + WEEK + 30)]);
        // Tuesday 14:00: one arrival, 200 s after it another (the pool had refilled).
        a.extend([at(MONDAY + 38 * 3600), at(MONDAY + 38 * 3600 + 200)]);
        let now = MONDAY + 2 * WEEK;
        let r = analyse(&a, &[], 120, 2, now);
        assert_eq!(r.arrivals, 10);
        assert_eq!(r.weeks, 2.0);
        let h9 = &r.hours[9];
        assert_eq!((h9.day, h9.hour), ("Mon", 9));
        assert_eq!(h9.arrivals, 8);
        assert_eq!(h9.arrivals_per_week, 4.0);
        assert_eq!(h9.arrivals_max, 6);
        assert_eq!(h9.pool_needed, 5);
        assert_eq!(r.hours[38].pool_needed, 1);
        assert_eq!(r.hours[38].day, "Tue");
        assert_eq!(r.pool_needed_max, 5);
        assert_eq!(r.pool_configured, 2);
        assert_eq!(r.hours.iter().filter(|h| h.arrivals > 0).count(), 2);
        // A longer refill joins the Tuesday pair into one burst.
        assert_eq!(analyse(&a, &[], 300, 2, now).hours[38].pool_needed, 2);
    }

    #[test]
    fn active_desktops_are_averaged_over_every_week() {
        let active = [
            ActiveHour { hour: MONDAY + 9 * 3600, sum: 30, samples: 10, max: 5 },
            ActiveHour { hour: MONDAY + WEEK + 9 * 3600, sum: 10, samples: 10, max: 2 },
        ];
        let r = analyse(&[], &active, 120, 0, MONDAY + WEEK + 10 * 3600);
        assert_eq!(r.hours[9].active_mean, 2.0);
        assert_eq!(r.hours[9].active_max, 5);
        assert_eq!(r.pool_needed_max, 0);
        assert_eq!(r.hours.len(), HOURS_PER_WEEK);
        // Nothing recorded at all: a week of zeros, not a failure.
        let empty = analyse(&[], &[], 120, 3, MONDAY);
        assert_eq!(empty.weeks, 1.0);
        assert!(empty.hours.iter().all(|h| h.arrivals == 0 && h.active_mean == 0.0));
    }
}
