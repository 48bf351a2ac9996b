//! The `[desktops]` table of the boot server's config: the virtualization hosts, the memory
//! levels and the VNC proxy.
//!
//! ```toml
//! [desktops]
//! levels_mib = [2048, 1024, 512]   # the memory algorithm's levels, largest first
//! template = "desktop"             # server-host template every desktop starts from
//! proxy_port = 5900                # viewers connect here, on the boot server's address
//! health_interval_secs = 5         # every host is asked GET /v1/host this often
//! health_failures = 3              # failed checks in a row before a host counts as down
//! switch_timeout_secs = 120        # longest wait for a new VM's first frame at a handoff
//! switch_settle_ms = 1000          # after that frame, wait this long for one more update
//! orphan_timeout_secs = 600        # a viewer whose VM died waits this long for a new one
//! stop_deadline_secs = 30          # guest's time to power off before it is killed
//! leave_after_secs = 120           # a PC whose agent stays disconnected this long has left
//! disconnect_grace_secs = 600      # a person's desktop runs this long after logout or PC loss
//! kiosk_grace_secs = 15            # a kiosk PC's own desktop is thrown away this long after it goes
//! balloon = false                  # shrink in place where host and guest can, no handoff
//! sessions_file = "sessions.sqlite" # running desktops, kept across restarts (in state_dir)
//! pool = 0                         # desktop VMs booted ahead for the next arrivals
//! desktop_size = "auto"            # a pool VM is ready at this screen size ("WxH"), or, with
//!                                  # "auto", once its screen left the firmware's mode
//! legacy_vnc_auth = false          # also offer VNC authentication to viewers without VeNCrypt
//! viewer_standby_secs = 300        # a PC's viewer may wait connected this long for a login
//!
//! [[desktops.hosts]]
//! name = "h1"
//! url = "https://10.0.0.11:8470"  # its certificate (bootserver host enrol) names this address
//! memory_mib = 6144                # memory the broker may give to desktops on this host
//! ```
//!
//! The table is called `desktops` because the top-level key `broker` already names the
//! address written on the kernel command line.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::memory::Levels;

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    pub name: String,
    pub url: String,
    pub memory_mib: u64,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    pub levels_mib: Vec<u64>,
    pub template: String,
    pub proxy_port: u16,
    pub health_interval_secs: u64,
    pub health_failures: u32,
    pub switch_timeout_secs: u64,
    /// After a new VM's first frame at a handoff, how long to wait for one more update before
    /// swapping anyway (see `proxy::backend::prepare`); 0 swaps at the first frame.
    pub switch_settle_ms: u64,
    pub orphan_timeout_secs: u64,
    pub stop_deadline_secs: u64,
    pub leave_after_secs: u64,
    /// After a logout, or when the PC of a logged-in person goes away, their desktop keeps
    /// running this long so that a login anywhere gets it at once; then it stops.
    pub disconnect_grace_secs: u64,
    /// A kiosk PC (no autologin) whose connection stays gone this long has been switched off:
    /// its one-time desktop stops and its disks are thrown away. Short, but longer than a
    /// network blip.
    pub kiosk_grace_secs: u64,
    pub balloon: bool,
    /// The session store; a relative path is taken inside the boot server's `state_dir`.
    pub sessions_file: PathBuf,
    /// Pre-booted VMs kept for the next arrivals (see `broker::pool`).
    pub pool: usize,
    /// When a pool VM counts as ready: its firmware draws a first frame long before the guest's
    /// desktop, and a person given it then would wait out the boot. `"WxH"` waits for that
    /// screen size; `"auto"` for the first stable size other than the first frame's.
    pub desktop_size: String,
    /// Offer viewers VNC authentication after VeNCrypt, for old viewers: one recorded exchange
    /// gives their token away.
    pub legacy_vnc_auth: bool,
    /// While a PC shows its login form, its viewer may wait at the proxy with VeNCrypt's TLS
    /// done, for this long, for the credentials a login brings (one such wait per address);
    /// 0: viewers connect only after a login.
    pub viewer_standby_secs: u64,
    pub hosts: Vec<HostConfig>,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            levels_mib: vec![2048, 1024, 512],
            template: "desktop".into(),
            proxy_port: 5900,
            health_interval_secs: 5,
            health_failures: 3,
            switch_timeout_secs: 120,
            switch_settle_ms: 1000,
            orphan_timeout_secs: 600,
            stop_deadline_secs: 30,
            leave_after_secs: 120,
            disconnect_grace_secs: 600,
            kiosk_grace_secs: 15,
            balloon: false,
            sessions_file: PathBuf::from("sessions.sqlite"),
            pool: 0,
            desktop_size: "auto".into(),
            legacy_vnc_auth: false,
            viewer_standby_secs: 300,
            hosts: Vec::new(),
        }
    }
}

impl BrokerConfig {
    /// Checks the table and reads token files; every error names its key.
    pub fn validate(self) -> Result<Self, String> {
        self.levels()?;
        if self.proxy_port == 0 {
            return Err("desktops.proxy_port: 0 is not a port; use e.g. 5900".into());
        }
        if self.sessions_file.as_os_str().is_empty() {
            return Err("desktops.sessions_file: empty; use e.g. \"sessions.sqlite\"".into());
        }
        if self.pool > 64 {
            return Err(format!("desktops.pool: {} pre-booted VMs is more than 64; use a few", self.pool));
        }
        // The settle time runs inside the switch's time limit: one as long would fail every
        // handoff to a VM whose screen is still.
        if self.switch_settle_ms >= self.switch_timeout_secs.saturating_mul(1000) {
            return Err(format!(
                "desktops.switch_settle_ms: {} ms is not shorter than switch_timeout_secs ({} s); \
                 use a few hundred to a few thousand ms, e.g. 1000",
                self.switch_settle_ms, self.switch_timeout_secs
            ));
        }
        self.desktop_size()?;
        if self.health_interval_secs == 0 {
            return Err("desktops.health_interval_secs: must be at least 1".into());
        }
        let mut names = std::collections::HashSet::new();
        for h in &self.hosts {
            if !names.insert(h.name.clone()) {
                return Err(format!("desktops.hosts: host {:?} is listed twice", h.name));
            }
            super::hosts::HostUrl::parse(&h.url).map_err(|e| format!("desktops.hosts {:?}: {e}", h.name))?;
            if h.memory_mib == 0 {
                return Err(format!("desktops.hosts {:?}: memory_mib must be more than 0", h.name));
            }
        }
        Ok(self)
    }

    pub fn levels(&self) -> Result<Levels, String> {
        Levels::explicit(self.levels_mib.iter().map(|m| m << 20).collect())
            .map_err(|e| format!("desktops.levels_mib: {e}"))
    }

    /// The screen size of a booted desktop, `None` for "auto".
    pub fn desktop_size(&self) -> Result<Option<(u16, u16)>, String> {
        if self.desktop_size == "auto" {
            return Ok(None);
        }
        let bad = || format!("desktops.desktop_size: {:?} is not \"auto\" or a size like \"1280x800\"", self.desktop_size);
        let (w, h) = self.desktop_size.split_once('x').ok_or_else(bad)?;
        match (w.parse::<u16>(), h.parse::<u16>()) {
            (Ok(w), Ok(h)) if w > 0 && h > 0 => Ok(Some((w, h))),
            _ => Err(bad()),
        }
    }

    pub fn health_interval(&self) -> Duration {
        Duration::from_secs(self.health_interval_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_with_defaults_and_checks_hosts() {
        let c: BrokerConfig = toml::from_str(
            r#"levels_mib = [512, 256]
               [[hosts]]
               name = "h1"
               url = "https://127.0.0.1:8470"
               memory_mib = 1024"#,
        )
        .unwrap();
        let c = c.validate().unwrap();
        assert_eq!(c.proxy_port, 5900);
        assert_eq!(c.sessions_file, PathBuf::from("sessions.sqlite"));
        let empty = BrokerConfig { sessions_file: PathBuf::new(), ..c.clone() };
        assert!(empty.validate().unwrap_err().contains("sessions_file"));
        assert_eq!(c.levels().unwrap().sizes(), &[512 << 20, 256 << 20]);
        let mut dup = c.clone();
        dup.hosts.push(dup.hosts[0].clone());
        assert!(dup.validate().unwrap_err().contains("twice"));
        let mut plain = c.clone();
        plain.hosts[0].url = "http://127.0.0.1:8470".into();
        assert!(plain.validate().unwrap_err().contains("https://"));
        let bad = BrokerConfig { levels_mib: vec![256, 512], ..c };
        assert!(bad.validate().unwrap_err().contains("levels_mib"));
        assert!(toml::from_str::<BrokerConfig>("levls_mib = [1]").is_err());
    }

    #[test]
    fn switch_settle_ms_defaults_parses_and_stays_under_the_switch_timeout() {
        let c: BrokerConfig = toml::from_str("").unwrap();
        assert_eq!(c.switch_settle_ms, 1000);
        let c: BrokerConfig = toml::from_str("switch_settle_ms = 250").unwrap();
        assert_eq!(c.clone().validate().unwrap().switch_settle_ms, 250);
        let zero: BrokerConfig = toml::from_str("switch_settle_ms = 0").unwrap();
        assert_eq!(zero.validate().unwrap().switch_settle_ms, 0);
        let long: BrokerConfig = toml::from_str("switch_timeout_secs = 5\nswitch_settle_ms = 5000").unwrap();
        let e = long.validate().unwrap_err();
        assert!(e.contains("desktops.switch_settle_ms") && e.contains("switch_timeout_secs (5 s)"), "{e}");
        assert!(e.contains("e.g. 1000"), "{e}");
        assert!(toml::from_str::<BrokerConfig>("switch_settle_ms = -1").is_err());
        assert!(toml::from_str::<BrokerConfig>("switch_settle_ms = \"1s\"").is_err());
    }

    #[test]
    fn desktop_size_is_auto_or_a_size() {
        let c: BrokerConfig = toml::from_str("").unwrap();
        assert_eq!(c.desktop_size().unwrap(), None);
        let c: BrokerConfig = toml::from_str("desktop_size = \"1280x800\"").unwrap();
        assert_eq!(c.desktop_size().unwrap(), Some((1280, 800)));
        for bad in ["1280", "0x800", "x", "big", "1280x800x2", "70000x1"] {
            let c = BrokerConfig { desktop_size: bad.into(), ..BrokerConfig::default() };
            let e = c.validate().unwrap_err();
            assert!(e.contains("desktops.desktop_size") && e.contains("1280x800"), "{e}");
        }
    }
}
