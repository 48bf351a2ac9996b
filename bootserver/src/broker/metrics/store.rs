//! The metrics store (SQLite): the hosts' time series in three archives (see [`super::rollup`]),
//! the arrivals, and the number of desktops in use per hour, for the analysis.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{params, Connection};

use super::rollup::{self, Sample, FIELDS};

#[derive(Debug, thiserror::Error)]
#[error("metrics store {path}: {source}")]
pub struct StoreError {
    path: PathBuf,
    source: rusqlite::Error,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS host_samples (
    host TEXT NOT NULL,
    step INTEGER NOT NULL,
    t    INTEGER NOT NULL,
    cpu REAL NOT NULL, mem_used REAL NOT NULL, mem_total REAL NOT NULL, mem_committed REAL NOT NULL,
    load REAL NOT NULL, vms REAL NOT NULL, net_rx REAL NOT NULL, net_tx REAL NOT NULL,
    PRIMARY KEY (host, step, t)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS arrivals (
    t       INTEGER NOT NULL,
    kind    TEXT NOT NULL,
    refused INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS arrivals_t ON arrivals (t);
CREATE TABLE IF NOT EXISTS active_hours (
    hour    INTEGER PRIMARY KEY,
    sum     INTEGER NOT NULL,
    samples INTEGER NOT NULL,
    max     INTEGER NOT NULL
);";

/// What was recorded of an arrival: a person's login or a kiosk PC's announce that needed a
/// desktop it did not have yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arrival {
    pub t: i64,
    pub login: bool,
    pub refused: bool,
}

/// Desktops in use during one hour: the sum and count of the samples, and the largest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActiveHour {
    pub hour: i64,
    pub sum: i64,
    pub samples: i64,
    pub max: i64,
}

pub struct MetricsStore {
    path: PathBuf,
    conn: Mutex<Connection>,
}

impl MetricsStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let sql = |source| StoreError { path: path.to_path_buf(), source };
        let conn = Connection::open(path).map_err(sql)?;
        conn.execute_batch(SCHEMA).map_err(sql)?;
        Ok(MetricsStore { path: path.to_path_buf(), conn: Mutex::new(conn) })
    }

    fn err(&self, source: rusqlite::Error) -> StoreError {
        StoreError { path: self.path.clone(), source }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn insert(conn: &Connection, host: &str, step: i64, s: &Sample) -> rusqlite::Result<()> {
        let v = &s.v;
        conn.execute(
            "INSERT OR REPLACE INTO host_samples
               (host, step, t, cpu, mem_used, mem_total, mem_committed, load, vms, net_rx, net_tx)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            params![host, step, s.t, v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]],
        )?;
        Ok(())
    }

    /// A raw sample of `host`.
    pub fn add_sample(&self, host: &str, s: &Sample) -> Result<(), StoreError> {
        Self::insert(&self.lock(), host, rollup::RAW.step, s).map_err(|e| self.err(e))
    }

    /// `host`'s samples of the archive of `step` with `t >= since`, oldest first.
    pub fn samples(&self, host: &str, step: i64, since: i64) -> Result<Vec<Sample>, StoreError> {
        let conn = self.lock();
        let cols = FIELDS.join(", ");
        let mut q = conn
            .prepare_cached(&format!(
                "SELECT t, {cols} FROM host_samples WHERE host = ?1 AND step = ?2 AND t >= ?3 ORDER BY t"
            ))
            .map_err(|e| self.err(e))?;
        let rows = q
            .query_map(params![host, step, since], |r| {
                let mut v = [0.0; FIELDS.len()];
                for (i, x) in v.iter_mut().enumerate() {
                    *x = r.get(i + 1)?;
                }
                Ok(Sample { t: r.get(0)?, v })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// Rolls whole buckets up into the coarser archives and drops what is past its keep, for
    /// every host, as [`rollup::plan`] says at `now`.
    pub fn roll_up(&self, now: i64) -> Result<(), StoreError> {
        let hosts: Vec<String> = {
            let conn = self.lock();
            let mut q = conn.prepare("SELECT DISTINCT host FROM host_samples").map_err(|e| self.err(e))?;
            let rows = q.query_map([], |r| r.get(0)).map_err(|e| self.err(e))?;
            rows.collect::<Result<_, _>>().map_err(|e| self.err(e))?
        };
        for host in hosts {
            let newest = |step: i64| -> Result<Option<i64>, StoreError> {
                self.lock()
                    .query_row("SELECT max(t) FROM host_samples WHERE host = ?1 AND step = ?2", params![host, step], |r| r.get(0))
                    .map_err(|e| self.err(e))
            };
            let plan = rollup::plan(now, [newest(rollup::FIVE_MIN.step)?, newest(rollup::HOUR.step)?]);
            for (src, dst, from, until) in plan.roll {
                let buckets = rollup::average(&self.samples(&host, src, from)?, dst, from, until);
                let mut conn = self.lock();
                let tx = conn.transaction().map_err(|e| self.err(e))?;
                for b in &buckets {
                    Self::insert(&tx, &host, dst, b).map_err(|e| self.err(e))?;
                }
                tx.commit().map_err(|e| self.err(e))?;
            }
            for (step, cut) in plan.prune {
                self.lock()
                    .execute("DELETE FROM host_samples WHERE host = ?1 AND step = ?2 AND t < ?3", params![host, step, cut])
                    .map_err(|e| self.err(e))?;
            }
        }
        // Arrivals and desktops in use serve the analysis, which looks back as far as the
        // hourly archive does.
        let cut = now - rollup::HOUR.keep;
        let conn = self.lock();
        conn.execute("DELETE FROM arrivals WHERE t < ?1", [cut]).map_err(|e| self.err(e))?;
        conn.execute("DELETE FROM active_hours WHERE hour < ?1", [cut]).map_err(|e| self.err(e))?;
        Ok(())
    }

    pub fn add_arrival(&self, a: Arrival) -> Result<(), StoreError> {
        let kind = if a.login { "login" } else { "announce" };
        self.lock()
            .execute("INSERT INTO arrivals (t, kind, refused) VALUES (?1, ?2, ?3)", params![a.t, kind, a.refused])
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    pub fn arrivals(&self, since: i64) -> Result<Vec<Arrival>, StoreError> {
        let conn = self.lock();
        let mut q = conn.prepare("SELECT t, kind, refused FROM arrivals WHERE t >= ?1 ORDER BY t").map_err(|e| self.err(e))?;
        let rows = q
            .query_map([since], |r| {
                Ok(Arrival { t: r.get(0)?, login: r.get::<_, String>(1)? == "login", refused: r.get(2)? })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// Counts `active` desktops in use at `now` into its hour.
    pub fn add_active(&self, now: i64, active: i64) -> Result<(), StoreError> {
        let hour = now.div_euclid(3600) * 3600;
        self.lock()
            .execute(
                "INSERT INTO active_hours (hour, sum, samples, max) VALUES (?1, ?2, 1, ?2)
                 ON CONFLICT (hour) DO UPDATE SET sum = sum + ?2, samples = samples + 1, max = max(max, ?2)",
                params![hour, active],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    pub fn active_hours(&self, since: i64) -> Result<Vec<ActiveHour>, StoreError> {
        let conn = self.lock();
        let mut q = conn
            .prepare("SELECT hour, sum, samples, max FROM active_hours WHERE hour >= ?1 ORDER BY hour")
            .map_err(|e| self.err(e))?;
        let rows = q
            .query_map([since], |r| Ok(ActiveHour { hour: r.get(0)?, sum: r.get(1)?, samples: r.get(2)?, max: r.get(3)? }))
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_days_of_samples_end_up_in_the_right_archives() {
        let dir = tempfile::tempdir().unwrap();
        let store = MetricsStore::open(&dir.path().join("m.sqlite")).unwrap();
        let start = 1_700_000_000 - 1_700_000_000 % 3600;
        let mut now = start;
        // One sample a minute for two days (fewer rows than 10 s, the same archives), a tick
        // every ten minutes.
        while now < start + 2 * rollup::DAY {
            store.add_sample("h1", &Sample { t: now, v: [((now - start) / 3600 % 3) as f64; FIELDS.len()] }).unwrap();
            if now % 600 == 0 {
                store.roll_up(now).unwrap();
            }
            now += 60;
        }
        store.roll_up(now).unwrap();
        let raw = store.samples("h1", 0, 0).unwrap();
        assert_eq!(raw.len() as i64, rollup::DAY / 60);
        assert_eq!(raw[0].t, now - rollup::DAY);
        let five = store.samples("h1", 300, 0).unwrap();
        assert_eq!(five.len() as i64, 2 * rollup::DAY / 300);
        assert!(five.windows(2).all(|w| w[1].t - w[0].t == 300));
        let hours = store.samples("h1", 3600, 0).unwrap();
        assert_eq!(hours.len(), 48);
        assert!(hours.iter().all(|h| h.v[0] == ((h.t - start) / 3600 % 3) as f64));
        assert!(store.samples("h2", 0, 0).unwrap().is_empty());
    }

    #[test]
    fn arrivals_and_active_hours_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = MetricsStore::open(&dir.path().join("m.sqlite")).unwrap();
        store.add_arrival(Arrival { t: 100, login: true, refused: false }).unwrap();
        store.add_arrival(Arrival { t: 200, login: false, refused: true }).unwrap();
        assert_eq!(store.arrivals(150).unwrap(), vec![Arrival { t: 200, login: false, refused: true }]);
        for (t, n) in [(3600, 2), (3610, 4), (7300, 1)] {
            store.add_active(t, n).unwrap();
        }
        assert_eq!(
            store.active_hours(0).unwrap(),
            vec![ActiveHour { hour: 3600, sum: 6, samples: 2, max: 4 }, ActiveHour { hour: 7200, sum: 1, samples: 1, max: 1 }]
        );
    }
}
