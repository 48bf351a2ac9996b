//! The archives of the host time series and how samples move between them, without I/O: the
//! sampler's store asks [`plan`] what to average and what to drop at a given time, and
//! [`average`] does the averaging.
//!
//! | archive | step | kept |
//! |---|---|---|
//! | raw | the sampling interval (10 s) | 1 day |
//! | 5-minute averages | 300 s | 30 days |
//! | 1-hour averages | 3600 s | 1 year |

/// The values of one sample, in the order of [`FIELDS`].
pub type Values = [f64; FIELDS.len()];

/// The series' names, as the JSON API and the store call them.
pub const FIELDS: [&str; 8] = ["cpu", "mem_used", "mem_total", "mem_committed", "load", "vms", "net_rx", "net_tx"];

/// One sample: its time (Unix seconds; for an average, the start of its bucket) and values.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub t: i64,
    pub v: Values,
}

/// An archive: raw samples have step 0 in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Archive {
    pub step: i64,
    pub keep: i64,
}

pub const DAY: i64 = 86_400;
pub const RAW: Archive = Archive { step: 0, keep: DAY };
pub const FIVE_MIN: Archive = Archive { step: 300, keep: 30 * DAY };
pub const HOUR: Archive = Archive { step: 3600, keep: 365 * DAY };
pub const ARCHIVES: [Archive; 3] = [RAW, FIVE_MIN, HOUR];

/// What the store does at one tick: average the source archive's samples with `from <= t <
/// until` into buckets of `into.step`, then delete samples older than each cut.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// (source step, target archive step, from, until).
    pub roll: Vec<(i64, i64, i64, i64)>,
    /// (step, delete samples with t < this).
    pub prune: Vec<(i64, i64)>,
}

/// At `now`, with `done[i]` the start of the newest bucket already in archive `i + 1` (5 min,
/// 1 h), if any: every whole bucket that ended since goes in, from the next finer archive. A
/// bucket is averaged once, when it is over; one still running waits for the next tick. After
/// a long stop, rolling starts no earlier than what the source still keeps.
pub fn plan(now: i64, done: [Option<i64>; 2]) -> Plan {
    let mut roll = Vec::new();
    for (i, (src, dst)) in [(RAW, FIVE_MIN), (FIVE_MIN, HOUR)].into_iter().enumerate() {
        let until = now.div_euclid(dst.step) * dst.step;
        let oldest = (now - src.keep).div_euclid(dst.step) * dst.step;
        let from = done[i].map_or(oldest, |d| d + dst.step).max(oldest);
        if from < until {
            roll.push((src.step, dst.step, from, until));
        }
    }
    let prune = ARCHIVES.iter().map(|a| (a.step, now - a.keep)).collect();
    Plan { roll, prune }
}

/// The mean of `samples` (in any order) per bucket of `step` seconds starting at a multiple of
/// `step`, for buckets in `[from, until)`; a bucket without samples is left out.
pub fn average(samples: &[Sample], step: i64, from: i64, until: i64) -> Vec<Sample> {
    let mut buckets: std::collections::BTreeMap<i64, (Values, u32)> = Default::default();
    for s in samples.iter().filter(|s| s.t >= from && s.t < until) {
        let (sum, n) = buckets.entry(s.t.div_euclid(step) * step).or_insert(([0.0; FIELDS.len()], 0));
        for (a, b) in sum.iter_mut().zip(s.v) {
            *a += b;
        }
        *n += 1;
    }
    buckets
        .into_iter()
        .map(|(t, (sum, n))| Sample { t, v: sum.map(|x| x / f64::from(n)) })
        .collect()
}

/// The archive a chart over the last `range` seconds reads: the finest that still covers it.
pub fn archive_for(range: i64) -> Archive {
    *ARCHIVES.iter().find(|a| a.keep >= range).unwrap_or(&HOUR)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(t: i64, x: f64) -> Sample {
        Sample { t, v: [x; FIELDS.len()] }
    }

    #[test]
    fn averages_fall_in_buckets_of_whole_steps() {
        let raw = [s(290, 9.0), s(300, 1.0), s(310, 2.0), s(599, 3.0), s(600, 10.0), s(905, 4.0)];
        assert_eq!(average(&raw, 300, 300, 900), vec![s(300, 2.0), s(600, 10.0)]);
        // A bucket with no samples is left out, not a zero.
        assert_eq!(average(&raw, 300, 0, 1200), vec![s(0, 9.0), s(300, 2.0), s(600, 10.0), s(900, 4.0)]);
        assert!(average(&[], 300, 0, 1200).is_empty());
    }

    #[test]
    fn the_plan_rolls_each_bucket_once_when_it_is_over() {
        let now = 10 * DAY + 3600 + 299;
        let p = plan(now, [Some(10 * DAY + 3300), Some(10 * DAY)]);
        // The 5-minute bucket at +3600 is still running; the hour at +3600 too.
        assert!(p.roll.is_empty(), "{p:?}");
        let p = plan(now + 1, [Some(10 * DAY + 3300), Some(10 * DAY)]);
        assert_eq!(p.roll, vec![(0, 300, 10 * DAY + 3600, 10 * DAY + 3900)]);
        assert_eq!(p.prune, vec![(0, now + 1 - DAY), (300, now + 1 - 30 * DAY), (3600, now + 1 - 365 * DAY)]);
        // The first tick ever, or after a week's stop: no older than the source keeps.
        let p = plan(now, [None, None]);
        assert_eq!(p.roll[0], (0, 300, 9 * DAY + 3600, 10 * DAY + 3600));
        assert_eq!(p.roll[1], (300, 3600, (now - 30 * DAY).div_euclid(3600) * 3600, 10 * DAY + 3600));
    }

    #[test]
    fn a_simulated_week_keeps_each_archive_as_long_as_it_should() {
        // The sampler's loop with fake time: a sample every 10 s, a tick after each.
        let mut arch: [Vec<Sample>; 3] = Default::default();
        let idx = |step: i64| ARCHIVES.iter().position(|a| a.step == step).unwrap();
        let start = 1_700_000_000 - 1_700_000_000 % 3600;
        let end = start + 7 * DAY;
        let mut now = start;
        while now < end {
            arch[0].push(s(now, ((now - start) / 3600 % 2) as f64));
            let done = [arch[1].last().map(|x| x.t), arch[2].last().map(|x| x.t)];
            let p = plan(now, done);
            for (src, dst, from, until) in p.roll {
                let new = average(&arch[idx(src)], dst, from, until);
                arch[idx(dst)].extend(new);
            }
            for (step, cut) in p.prune {
                arch[idx(step)].retain(|x| x.t >= cut);
            }
            now += 10;
        }
        let last = now - 10;
        assert_eq!(arch[0].len() as i64, DAY / 10 + 1, "raw: one day");
        assert_eq!(arch[0][0].t, last - DAY);
        // Every 5-minute bucket of the week so far, none twice, all whole.
        assert_eq!(arch[1].len() as i64, 7 * DAY / 300 - 1);
        assert!(arch[1].windows(2).all(|w| w[1].t - w[0].t == 300));
        assert!(arch[1].iter().all(|x| x.v[0] == ((x.t - start) / 3600 % 2) as f64));
        assert_eq!(arch[2].len() as i64, 7 * 24 - 1);
        assert!(arch[2].iter().all(|x| x.v[0] == ((x.t - start) / 3600 % 2) as f64), "{:?}", &arch[2][..3]);
    }

    #[test]
    fn a_range_reads_the_finest_archive_that_covers_it() {
        assert_eq!(archive_for(3600), RAW);
        assert_eq!(archive_for(DAY), RAW);
        assert_eq!(archive_for(30 * DAY), FIVE_MIN);
        assert_eq!(archive_for(365 * DAY), HOUR);
    }
}
