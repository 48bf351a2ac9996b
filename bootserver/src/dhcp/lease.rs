//! The lease table: which address belongs to which client until when, and its persistence.
//!
//! Persistence is one JSON file in the state dir, readable by its owner only, rewritten whole
//! (write to a temporary file, fsync, rename, fsync the folder). A boot LAN holds at most a few
//! hundred leases, so a whole rewrite costs little, and a rename is atomic: a crash leaves
//! either the old or the new table, never half of one. SQLite would give the same guarantee at
//! the price of a C build and a schema for what is a single small map.
//!
//! The table does not write itself: it records how soon its changes must be on disk
//! ([`Unsaved`]) and the caller saves it with [`LeaseTable::save`]. A new binding must be on
//! disk before its ACK leaves (else a crash could hand the address to a second client while
//! the first uses it), so the caller saves before it sends; under a flood it saves once for
//! all the requests that queued meanwhile, so that the rate of ACKs is not the rate of
//! fsyncs. Everything else may wait a moment: a renewal lost in a crash leaves the older,
//! shorter binding on disk, still held by the same client, which renews again at half its
//! lease; a lost release or quarantine only keeps an address out of the pool a while longer.
//!
//! Offers are kept in memory only and reach the file with the next save: an offer binds
//! nothing, and after a restart a REQUEST for an offered address is checked against the
//! persisted bindings like any other.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use proto::agent::MacAddr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LeaseState {
    /// Offered, waiting for the REQUEST; `expires` ends the hold.
    Offered,
    /// Bound until `expires`.
    Bound,
    /// Released or expired: free, but remembered so the same client gets it back.
    Free,
    /// Declined (someone else answers on it): nobody gets it until `expires`.
    Declined,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Lease {
    pub ip: Ipv4Addr,
    /// `Request::client_key()`.
    pub client: String,
    pub mac: String,
    pub state: LeaseState,
    /// Seconds since the Unix epoch.
    pub expires: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_name: Option<String>,
}

/// How soon the table's changes must reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Unsaved {
    /// Nothing to save.
    Clean,
    /// Within the caller's save interval.
    Soon,
    /// Before any reply to the change is sent.
    BeforeReply,
}

impl Lease {
    /// Whether the address is taken at `now` (by a client, or by quarantine).
    pub(crate) fn active(&self, now: u64) -> bool {
        self.state != LeaseState::Free && self.expires > now
    }
}

/// Where the table lives between runs.
pub(crate) trait LeaseStore: Send {
    fn load(&mut self) -> Result<Vec<Lease>, StoreError>;
    fn save(&mut self, leases: &[Lease]) -> Result<(), StoreError>;
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a lease file: {message}")]
    Format { path: PathBuf, message: String },
}

#[derive(Serialize, Deserialize)]
struct LeaseFile {
    version: u32,
    leases: Vec<Lease>,
}

/// `leases.json` in the state dir.
pub(crate) struct FileStore {
    path: PathBuf,
}

impl FileStore {
    pub(crate) fn new(state_dir: &std::path::Path) -> FileStore {
        FileStore { path: state_dir.join("leases.json") }
    }

    fn io(&self, source: std::io::Error) -> StoreError {
        StoreError::Io { path: self.path.clone(), source }
    }
}

impl LeaseStore for FileStore {
    fn load(&mut self) -> Result<Vec<Lease>, StoreError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.io(e)),
        };
        let file: LeaseFile = serde_json::from_str(&text)
            .map_err(|e| StoreError::Format { path: self.path.clone(), message: e.to_string() })?;
        Ok(file.leases)
    }

    fn save(&mut self, leases: &[Lease]) -> Result<(), StoreError> {
        let text = serde_json::to_vec_pretty(&LeaseFile { version: 1, leases: leases.to_vec() })
            .map_err(|e| StoreError::Format { path: self.path.clone(), message: e.to_string() })?;
        crate::statefile::write_private(&self.path, &text).map_err(|e| StoreError::Io { path: e.path, source: e.source })
    }
}

/// Keeps the table in memory only: for tests, and to read a store's content back.
#[derive(Default, Clone)]
pub(crate) struct MemoryStore {
    pub saved: std::sync::Arc<std::sync::Mutex<Vec<Lease>>>,
}

impl LeaseStore for MemoryStore {
    fn load(&mut self) -> Result<Vec<Lease>, StoreError> {
        Ok(self.saved.lock().map(|v| v.clone()).unwrap_or_default())
    }

    fn save(&mut self, leases: &[Lease]) -> Result<(), StoreError> {
        if let Ok(mut v) = self.saved.lock() {
            *v = leases.to_vec();
        }
        Ok(())
    }
}

/// The bound leases as the other services of the same process see them (the broker binds an
/// agent's hello to the lease of its address): address to MAC and expiry, kept up to date by
/// the lease table that [`LeaseTable::publish_to`] was given it. Read-only for everyone else,
/// and in memory: nobody has to read `leases.json` behind the DHCP service's back.
#[derive(Debug, Clone, Default)]
pub struct LeaseView(Arc<RwLock<HashMap<Ipv4Addr, (MacAddr, u64)>>>);

impl LeaseView {
    /// The MAC that holds a bound, unexpired lease of `ip` at `now` (Unix seconds).
    pub fn holder(&self, ip: Ipv4Addr, now: u64) -> Option<MacAddr> {
        let map = self.0.read().unwrap_or_else(|p| p.into_inner());
        map.get(&ip).filter(|(_, expires)| *expires > now).map(|(mac, _)| *mac)
    }

    /// A view of fixed bindings, for tests of its readers.
    #[cfg(test)]
    pub(crate) fn of(bound: &[(Ipv4Addr, MacAddr, u64)]) -> LeaseView {
        let v = LeaseView::default();
        v.write().extend(bound.iter().map(|(ip, mac, expires)| (*ip, (*mac, *expires))));
        v
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<Ipv4Addr, (MacAddr, u64)>> {
        self.0.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Mirrors `lease` (or its absence) for `ip`: only bindings count.
    fn mirror(&self, ip: Ipv4Addr, lease: Option<&Lease>) {
        let bound = lease.filter(|l| l.state == LeaseState::Bound).and_then(|l| Some((l.mac.parse().ok()?, l.expires)));
        match bound {
            Some(entry) => self.write().insert(ip, entry),
            None => self.write().remove(&ip),
        };
    }
}

/// The pool, the reservations and every lease, keyed by address.
pub(crate) struct LeaseTable {
    first: u32,
    last: u32,
    /// Addresses never handed out from the pool (the server's own).
    excluded: Vec<Ipv4Addr>,
    /// MAC (`aa:bb:..`) to reserved address, and back.
    by_mac: HashMap<String, Ipv4Addr>,
    reserved: HashMap<Ipv4Addr, String>,
    leases: BTreeMap<Ipv4Addr, Lease>,
    /// Addresses whose ping check is under way: nobody gets them until it ends.
    probing: HashSet<Ipv4Addr>,
    store: Box<dyn LeaseStore>,
    unsaved: Unsaved,
    view: Option<LeaseView>,
}

impl LeaseTable {
    pub(crate) fn open(
        range: (Ipv4Addr, Ipv4Addr),
        excluded: Vec<Ipv4Addr>,
        reservations: &[(String, Ipv4Addr)],
        mut store: Box<dyn LeaseStore>,
    ) -> Result<LeaseTable, StoreError> {
        let leases = store.load()?.into_iter().map(|l| (l.ip, l)).collect();
        Ok(LeaseTable {
            first: range.0.into(),
            last: range.1.into(),
            excluded,
            by_mac: reservations.iter().cloned().collect(),
            reserved: reservations.iter().map(|(m, ip)| (*ip, m.clone())).collect(),
            leases,
            probing: HashSet::new(),
            store,
            unsaved: Unsaved::Clean,
            view: None,
        })
    }

    /// Keeps `view` equal to this table's bindings from now on (a restarted DHCP service's new
    /// table takes the view over, starting from what it loaded).
    pub(crate) fn publish_to(&mut self, view: LeaseView) {
        view.write().clear();
        for (ip, l) in &self.leases {
            view.mirror(*ip, Some(l));
        }
        self.view = Some(view);
    }

    fn sync(&self, ip: Ipv4Addr) {
        if let Some(v) = &self.view {
            v.mirror(ip, self.leases.get(&ip));
        }
    }

    /// How soon the changes since the last save must be saved.
    pub(crate) fn unsaved(&self) -> Unsaved {
        self.unsaved
    }

    fn touch(&mut self, how: Unsaved) {
        self.unsaved = self.unsaved.max(how);
    }

    /// Writes the table to its store if it changed. On error the changes stay unsaved, to be
    /// tried again.
    pub(crate) fn save(&mut self) -> Result<(), StoreError> {
        if self.unsaved == Unsaved::Clean {
            return Ok(());
        }
        let all: Vec<Lease> = self.leases.values().cloned().collect();
        self.store.save(&all)?;
        self.unsaved = Unsaved::Clean;
        Ok(())
    }

    #[cfg(test)]
    pub(crate) fn get(&self, ip: Ipv4Addr) -> Option<&Lease> {
        self.leases.get(&ip)
    }

    pub(crate) fn reservation(&self, mac: &str) -> Option<Ipv4Addr> {
        self.by_mac.get(mac).copied()
    }

    /// Whether the client has a reservation or a lease that was bound (now or before, and
    /// not declined): a PC of this lab rather than a MAC nobody has seen complete a binding.
    pub(crate) fn knows(&self, key: &str, mac: &str) -> bool {
        self.by_mac.contains_key(mac)
            || self.leases.values().any(|l| l.client == key && matches!(l.state, LeaseState::Bound | LeaseState::Free))
    }

    fn in_pool(&self, ip: Ipv4Addr) -> bool {
        (self.first..=self.last).contains(&u32::from(ip)) && !self.excluded.contains(&ip)
    }

    /// Whether `ip` may be given to the client `key` with hardware address `mac` at `now`:
    /// its reservation, or a pool address that nobody else holds or has reserved.
    pub(crate) fn available_to(&self, ip: Ipv4Addr, key: &str, mac: &str, now: u64) -> bool {
        if self.probing.contains(&ip) {
            return false;
        }
        match self.reserved.get(&ip) {
            Some(owner) if owner != mac => return false,
            Some(_) => {}
            None if !self.in_pool(ip) => return false,
            None => {}
        }
        match self.leases.get(&ip) {
            Some(l) if l.state == LeaseState::Declined => !l.active(now),
            Some(l) => !l.active(now) || l.client == key,
            None => true,
        }
    }

    /// The address for a new offer to `key`, in RFC 2131 4.3.1's order: the client's
    /// reservation, its current or previous address, the address it asks for, a never-used
    /// address, then the longest-free remembered one. With none left, the oldest offer held
    /// for another client: nothing is bound to it, and otherwise a flood of DISCOVERs from
    /// made-up MACs would hold the whole pool and keep real clients out.
    pub(crate) fn pick(&self, key: &str, mac: &str, requested: Option<Ipv4Addr>, now: u64) -> Option<Ipv4Addr> {
        if let Some(ip) = self.reservation(mac) {
            if self.available_to(ip, key, mac, now) {
                return Some(ip);
            }
            log::warn!("dhcp: reserved address {ip} of {mac} is declined or held; using the pool");
        }
        let mine = self
            .leases
            .values()
            .filter(|l| l.client == key && l.state != LeaseState::Declined)
            .max_by_key(|l| l.expires)
            .map(|l| l.ip);
        if let Some(ip) = mine.filter(|ip| self.available_to(*ip, key, mac, now)) {
            return Some(ip);
        }
        if let Some(ip) = requested.filter(|ip| self.available_to(*ip, key, mac, now)) {
            return Some(ip);
        }
        let fresh = (self.first..=self.last)
            .map(Ipv4Addr::from)
            .find(|ip| !self.leases.contains_key(ip) && self.available_to(*ip, key, mac, now));
        fresh
            .or_else(|| {
                self.leases
                    .values()
                    .filter(|l| self.available_to(l.ip, key, mac, now))
                    .min_by_key(|l| l.expires)
                    .map(|l| l.ip)
            })
            .or_else(|| {
                self.leases
                    .values()
                    .filter(|l| l.state == LeaseState::Offered && l.client != key && !self.probing.contains(&l.ip))
                    .filter(|l| self.reserved.get(&l.ip).is_none_or(|owner| owner == mac))
                    .min_by_key(|l| l.expires)
                    .map(|l| l.ip)
            })
    }

    /// Whether `ip` should be pinged before it is offered to `key`: unless the client holds it
    /// now (bound or offered, not expired), someone else may have taken it since, or never
    /// have asked us before using it.
    pub(crate) fn needs_probe(&self, ip: Ipv4Addr, key: &str, now: u64) -> bool {
        let held = self.leases.get(&ip).is_some_and(|l| {
            l.client == key && matches!(l.state, LeaseState::Bound | LeaseState::Offered) && l.active(now)
        });
        !held
    }

    /// Marks `ip` as under a ping check (`true`) or done with it (`false`).
    pub(crate) fn set_probing(&mut self, ip: Ipv4Addr, on: bool) {
        if on {
            self.probing.insert(ip);
        } else {
            self.probing.remove(&ip);
        }
    }

    fn put(&mut self, ip: Ipv4Addr, key: &str, mac: &str, state: LeaseState, expires: u64, host: Option<String>) {
        let host_name = host.or_else(|| {
            self.leases.get(&ip).filter(|l| l.client == key).and_then(|l| l.host_name.clone())
        });
        let lease = Lease { ip, client: key.into(), mac: mac.into(), state, expires, host_name };
        self.leases.insert(ip, lease);
        self.sync(ip);
    }

    /// Holds `ip` for `key` until `until`. Any other offer to the same client is dropped.
    pub(crate) fn offer(&mut self, ip: Ipv4Addr, key: &str, mac: &str, until: u64) {
        self.forget_offer(key);
        if self.leases.get(&ip).is_some_and(|l| l.client == key && l.state == LeaseState::Bound) {
            return; // already bound to it: an offer must not shorten the binding
        }
        self.put(ip, key, mac, LeaseState::Offered, until, None);
    }

    /// The client took another server's offer (or ours expired): free what we held for it.
    pub(crate) fn forget_offer(&mut self, key: &str) -> Option<Ipv4Addr> {
        let l = self.leases.values_mut().find(|l| l.client == key && l.state == LeaseState::Offered)?;
        l.state = LeaseState::Free;
        Some(l.ip)
    }

    /// Binds `ip` to `key` until `until`. Returns how soon the binding must be saved: before
    /// the ACK for a new binding, soon for the renewal of one the client holds already.
    pub(crate) fn bind(&mut self, ip: Ipv4Addr, key: &str, mac: &str, host: Option<String>, until: u64) -> Unsaved {
        let renewal = self.leases.get(&ip).is_some_and(|l| l.client == key && l.state == LeaseState::Bound);
        // Offers to this client for other addresses end with the binding.
        for l in self.leases.values_mut() {
            if l.client == key && l.state == LeaseState::Offered && l.ip != ip {
                l.state = LeaseState::Free;
            }
        }
        self.put(ip, key, mac, LeaseState::Bound, until, host);
        let how = if renewal { Unsaved::Soon } else { Unsaved::BeforeReply };
        self.touch(how);
        how
    }

    /// Whether `key` was offered `ip` (the hold may have lapsed, as long as nobody took the
    /// address since).
    pub(crate) fn offered_to(&self, ip: Ipv4Addr, key: &str) -> bool {
        self.leases.get(&ip).is_some_and(|l| l.client == key && l.state == LeaseState::Offered)
    }

    /// The client's current binding of `ip`, if it has one (expired ones count when nobody took
    /// the address since).
    pub(crate) fn held_by(&self, ip: Ipv4Addr, key: &str) -> Option<&Lease> {
        self.leases.get(&ip).filter(|l| l.client == key && l.state != LeaseState::Declined)
    }

    pub(crate) fn release(&mut self, ip: Ipv4Addr, key: &str, now: u64) -> bool {
        match self.leases.get_mut(&ip) {
            Some(l) if l.client == key && l.state == LeaseState::Bound => {
                l.state = LeaseState::Free;
                l.expires = now;
                self.touch(Unsaved::Soon);
                self.sync(ip);
                true
            }
            _ => false,
        }
    }

    /// Quarantines `ip` until `until`: someone else answers on it.
    pub(crate) fn decline(&mut self, ip: Ipv4Addr, until: u64) {
        self.leases.insert(
            ip,
            Lease {
                ip,
                client: String::new(),
                mac: String::new(),
                state: LeaseState::Declined,
                expires: until,
                host_name: None,
            },
        );
        self.touch(Unsaved::Soon);
        self.sync(ip);
    }

    /// Turns ended offers, bindings and quarantines into free entries. Returns how many.
    pub(crate) fn expire(&mut self, now: u64) -> usize {
        let mut n = 0;
        let mut bound_changed = false;
        let mut ended = Vec::new();
        self.leases.retain(|ip, l| {
            if l.state != LeaseState::Free && l.expires <= now {
                n += 1;
                bound_changed |= l.state != LeaseState::Offered;
                ended.push(*ip);
                if l.state == LeaseState::Declined {
                    return false;
                }
                l.state = LeaseState::Free;
            }
            true
        });
        for ip in ended {
            self.sync(ip);
        }
        if bound_changed {
            self.touch(Unsaved::Soon);
        }
        n
    }
}

impl Drop for LeaseTable {
    /// What is still unsaved when the service stops is saved now.
    fn drop(&mut self) {
        if let Err(e) = self.save() {
            log::error!("dhcp: saving the lease table on the way out: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "mac:02:00:00:00:00:0a";
    const B: &str = "mac:02:00:00:00:00:0b";
    const MAC_A: &str = "02:00:00:00:00:0a";
    const MAC_B: &str = "02:00:00:00:00:0b";

    fn ip(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 0, last)
    }

    fn table(store: MemoryStore) -> LeaseTable {
        let res = vec![("02:00:00:00:00:99".to_string(), ip(50))];
        LeaseTable::open((ip(100), ip(102)), vec![ip(1)], &res, Box::new(store)).unwrap()
    }

    #[test]
    fn the_view_follows_bindings_only() {
        let store = MemoryStore::default();
        let mut t = table(store.clone());
        t.bind(ip(100), A, MAC_A, None, 1000);
        t.save().unwrap();
        drop(t);
        // A new table (a restarted service) fills the view with what it loaded.
        let mut t = table(store);
        let view = LeaseView::default();
        t.publish_to(view.clone());
        let mac_a: MacAddr = MAC_A.parse().unwrap();
        assert_eq!(view.holder(ip(100), 10), Some(mac_a));
        assert_eq!(view.holder(ip(100), 1000), None, "expired");
        // An offer binds nothing; the binding that follows does.
        t.offer(ip(101), B, MAC_B, 60);
        assert_eq!(view.holder(ip(101), 10), None);
        t.bind(ip(101), B, MAC_B, None, 2000);
        assert_eq!(view.holder(ip(101), 10), Some(MAC_B.parse().unwrap()));
        t.release(ip(101), B, 20);
        assert_eq!(view.holder(ip(101), 30), None);
        t.expire(1000);
        assert_eq!(view.holder(ip(100), 10), None);
        t.decline(ip(102), 500);
        assert_eq!(view.holder(ip(102), 10), None);
    }

    #[test]
    fn allocates_distinct_and_exhausts() {
        let mut t = table(MemoryStore::default());
        let mut got = Vec::new();
        for k in 0..3 {
            let key = format!("mac:{k}");
            let a = t.pick(&key, &key, None, 0).unwrap();
            t.bind(a, &key, &key, None, 100);
            got.push(a);
        }
        assert_eq!(got, vec![ip(100), ip(101), ip(102)]);
        assert_eq!(t.pick("mac:x", "x", None, 50), None);
        // After expiry the longest-free address is reused.
        assert_eq!(t.pick("mac:x", "x", None, 100), Some(ip(100)));
    }

    #[test]
    fn reservations_are_never_offered_to_others() {
        let t = table(MemoryStore::default());
        assert_eq!(t.pick(A, MAC_A, Some(ip(50)), 0), Some(ip(100)));
        assert!(!t.available_to(ip(50), A, MAC_A, 0));
        assert_eq!(t.pick("mac:r", "02:00:00:00:00:99", None, 0), Some(ip(50)));
        // Outside the pool and not reserved, or the server's own address.
        assert!(!t.available_to(ip(7), A, MAC_A, 0));
    }

    #[test]
    fn requested_and_previous_addresses_are_preferred() {
        let mut t = table(MemoryStore::default());
        assert_eq!(t.pick(A, MAC_A, Some(ip(102)), 0), Some(ip(102)));
        t.bind(ip(101), A, MAC_A, None, 100);
        assert_eq!(t.pick(A, MAC_A, Some(ip(102)), 10), Some(ip(101)));
        assert!(t.release(ip(101), A, 20));
        assert!(!t.release(ip(101), A, 20));
        // Released but remembered: A gets it back, B gets a never-used address first.
        assert_eq!(t.pick(B, MAC_B, None, 30), Some(ip(100)));
        assert_eq!(t.pick(A, MAC_A, None, 30), Some(ip(101)));
    }

    #[test]
    fn offers_hold_then_lapse() {
        let mut t = table(MemoryStore::default());
        t.offer(ip(100), A, MAC_A, 60);
        assert_eq!(t.pick(B, MAC_B, Some(ip(100)), 10), Some(ip(101)));
        assert_eq!(t.forget_offer(A), Some(ip(100)));
        assert_eq!(t.pick(B, MAC_B, Some(ip(100)), 10), Some(ip(100)));
        t.offer(ip(102), A, MAC_A, 60);
        assert_eq!(t.expire(61), 1);
        assert_eq!(t.get(ip(102)).unwrap().state, LeaseState::Free);
    }

    #[test]
    fn a_full_pool_gives_up_the_oldest_offer_never_a_binding() {
        let mut t = table(MemoryStore::default());
        t.bind(ip(100), A, MAC_A, None, 1000);
        t.offer(ip(101), "mac:x", "x", 60);
        t.offer(ip(102), "mac:y", "y", 70);
        // Nothing free: the oldest offer goes to the newcomer, and its client's REQUEST for
        // it will be refused.
        assert_eq!(t.pick(B, MAC_B, None, 10), Some(ip(101)));
        t.offer(ip(101), B, MAC_B, 80);
        assert!(!t.offered_to(ip(101), "mac:x"));
        assert_eq!(t.pick("mac:z", "z", None, 10), Some(ip(102)));
        // An address under a ping check is not taken, nor one bound.
        t.set_probing(ip(102), true);
        assert_eq!(t.pick("mac:z", "z", None, 10), Some(ip(101)));
        t.bind(ip(101), B, MAC_B, None, 1000);
        assert_eq!(t.pick("mac:z", "z", None, 10), None);
    }

    #[test]
    fn decline_quarantines() {
        let mut t = table(MemoryStore::default());
        t.bind(ip(100), A, MAC_A, None, 1000);
        t.decline(ip(100), 600);
        assert_eq!(t.pick(A, MAC_A, Some(ip(100)), 10), Some(ip(101)));
        assert!(!t.available_to(ip(100), B, MAC_B, 599));
        assert!(t.available_to(ip(100), B, MAC_B, 600));
        assert_eq!(t.expire(600), 1);
        assert!(t.get(ip(100)).is_none());
    }

    #[test]
    fn probing_holds_an_address_and_held_ones_need_no_probe() {
        let mut t = table(MemoryStore::default());
        t.set_probing(ip(100), true);
        assert!(!t.available_to(ip(100), A, MAC_A, 0));
        assert_eq!(t.pick(B, MAC_B, Some(ip(100)), 0), Some(ip(101)));
        t.set_probing(ip(100), false);
        assert_eq!(t.pick(B, MAC_B, Some(ip(100)), 0), Some(ip(100)));
        assert!(t.needs_probe(ip(100), A, 0));
        t.offer(ip(100), A, MAC_A, 60);
        assert!(!t.needs_probe(ip(100), A, 10) && t.needs_probe(ip(100), B, 10));
        // The hold lapsed: another look is due.
        assert!(t.needs_probe(ip(100), A, 60));
        t.bind(ip(100), A, MAC_A, None, 100);
        assert!(!t.needs_probe(ip(100), A, 99));
        assert!(t.release(ip(100), A, 99));
        assert!(t.needs_probe(ip(100), A, 99));
    }

    #[test]
    fn new_bindings_are_saved_before_the_reply_the_rest_soon() {
        let store = MemoryStore::default();
        let mut t = table(store.clone());
        assert_eq!(t.unsaved(), Unsaved::Clean);
        // An offer is not saved at all.
        t.offer(ip(100), A, MAC_A, 60);
        assert_eq!(t.unsaved(), Unsaved::Clean);
        assert!(t.offered_to(ip(100), A) && !t.offered_to(ip(100), B));
        assert_eq!(t.bind(ip(100), A, MAC_A, None, 1000), Unsaved::BeforeReply);
        assert!(!t.offered_to(ip(100), A));
        assert!(store.saved.lock().unwrap().is_empty(), "nothing is written until save()");
        t.save().unwrap();
        assert_eq!(t.unsaved(), Unsaved::Clean);
        assert_eq!(store.saved.lock().unwrap().len(), 1);
        // Renewing the same address can wait; a new address for the client cannot.
        assert_eq!(t.bind(ip(100), A, MAC_A, None, 2000), Unsaved::Soon);
        assert_eq!(t.unsaved(), Unsaved::Soon);
        assert_eq!(t.bind(ip(101), A, MAC_A, None, 2000), Unsaved::BeforeReply);
        assert_eq!(t.unsaved(), Unsaved::BeforeReply);
        t.save().unwrap();
        // The address of an expired and released binding is bound anew.
        assert!(t.release(ip(101), A, 10));
        assert_eq!(t.unsaved(), Unsaved::Soon);
        assert_eq!(t.bind(ip(101), A, MAC_A, None, 2000), Unsaved::BeforeReply);
        t.save().unwrap();
        t.decline(ip(102), 600);
        assert_eq!(t.unsaved(), Unsaved::Soon);
        t.save().unwrap();
        // What is unsaved when the table goes is saved then.
        assert_eq!(t.bind(ip(100), A, MAC_A, None, 3000), Unsaved::Soon);
        drop(t);
        let saved = store.saved.lock().unwrap().clone();
        assert_eq!(saved.iter().find(|l| l.ip == ip(100)).map(|l| l.expires), Some(3000));
    }

    #[test]
    fn restart_from_persisted_state() {
        let store = MemoryStore::default();
        let mut t = table(store.clone());
        t.bind(ip(100), A, MAC_A, Some("pc-a".into()), 1000);
        t.offer(ip(101), B, MAC_B, 60);
        drop(t);
        let t = table(store.clone());
        assert_eq!(t.get(ip(100)).unwrap().host_name.as_deref(), Some("pc-a"));
        assert_eq!(t.pick(A, MAC_A, None, 10), Some(ip(100)));
        assert_eq!(t.pick(B, MAC_B, Some(ip(100)), 10), Some(ip(101)));
    }

    #[test]
    fn file_store_round_trip_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = FileStore::new(dir.path());
        assert!(s.load().unwrap().is_empty());
        let l = Lease {
            ip: ip(100),
            client: A.into(),
            mac: MAC_A.into(),
            state: LeaseState::Bound,
            expires: 5,
            host_name: None,
        };
        s.save(std::slice::from_ref(&l)).unwrap();
        assert_eq!(FileStore::new(dir.path()).load().unwrap(), vec![l]);
        assert!(!dir.path().join("leases.json.tmp").exists());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("leases.json")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(dir.path().join("leases.json"), "{ nope").unwrap();
        let e = FileStore::new(dir.path()).load().unwrap_err().to_string();
        assert!(e.contains("leases.json") && e.contains("not a lease file"), "{e}");
    }
}
