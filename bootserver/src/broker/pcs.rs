//! What each PC does after its hello: show the login screen, start a desktop with no login
//! (a kiosk), or nothing (disabled). Chosen per MAC, MAC glob or named group of globs, like
//! per-client sections in other network-boot systems.
//!
//! ```toml
//! [pcs]
//! policy = "login"                 # login | kiosk | disabled, for PCs no rule matches
//! enrolment = "open"               # open | approve: an administrator approves each new PC
//! autologin = "hall"               # kiosk only: the account whose desktop a kiosk shows
//!
//! [pcs.groups]
//! lab1 = ["52:54:00:00:00:0*", "52:54:00:00:01:??"]
//!
//! [[pcs.rule]]                     # the first rule that matches wins
//! match = "@lab1"                  # a MAC, a MAC glob (* and ?) or @group
//! policy = "kiosk"
//! autologin = "lab1"
//! name = "lab1-front"              # shown on the login screen; default pc-XXXXXX from the MAC
//! ```

use std::collections::BTreeMap;

use proto::agent::MacAddr;
use serde::Deserialize;

/// What a PC gets after its hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The login screen; each person gets their own desktop.
    #[default]
    Login,
    /// A desktop with no login: the PC's own, or the `autologin` account's.
    Kiosk,
    /// Refused.
    Disabled,
}

/// `[[pcs.rule]]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    #[serde(rename = "match")]
    pub pattern: String,
    pub policy: Option<Mode>,
    pub autologin: Option<String>,
    pub name: Option<String>,
}

/// `[pcs]`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PcsConfig {
    pub policy: Mode,
    /// `open` (every PC is taken) or `approve` (see `broker::enrolment`).
    pub enrolment: super::enrolment::EnrolmentMode,
    pub autologin: Option<String>,
    pub groups: BTreeMap<String, Vec<String>>,
    #[serde(rename = "rule")]
    pub rules: Vec<Rule>,
}

/// What one PC gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcPolicy {
    pub mode: Mode,
    /// Kiosk only: the account logged in with no password.
    pub autologin: Option<String>,
    /// Shown on the PC's screen.
    pub name: String,
}

const NAME_MAX: usize = 64;
const GLOB_RULE: &str = "write a MAC (52:54:00:00:00:07) or a glob of one with * and ? (52:54:00:*)";

/// `*` matches any run of characters, `?` one; MACs compare in lower case.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == b'?' || pattern[p].eq_ignore_ascii_case(&text[t])) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

fn check_glob(key: &str, pattern: &str) -> Result<(), String> {
    let ok = !pattern.is_empty()
        && pattern.len() <= 17
        && pattern.bytes().all(|b| b.is_ascii_hexdigit() || b":*?".contains(&b));
    if !ok {
        return Err(format!("{key}: {:?} is not a MAC pattern; {GLOB_RULE}", crate::logsafe::Esc(pattern)));
    }
    Ok(())
}

fn check_autologin(key: &str, account: &Option<String>, mode: Mode) -> Result<(), String> {
    let Some(a) = account else { return Ok(()) };
    crate::accounts::core::validate_name(a).map_err(|e| format!("{key}: {e}"))?;
    if mode != Mode::Kiosk {
        return Err(format!("{key}: autologin is for kiosk PCs only; set policy = \"kiosk\" or drop autologin"));
    }
    Ok(())
}

/// The name a PC shows when no rule names it: `pc-` and the last three bytes of its MAC.
pub fn default_name(mac: MacAddr) -> String {
    let m = mac.0;
    format!("pc-{:02x}{:02x}{:02x}", m[3], m[4], m[5])
}

impl PcsConfig {
    /// Checks the table; every message names the key and the fix.
    pub fn check(&self) -> Result<(), String> {
        check_autologin("pcs.autologin", &self.autologin, self.policy)?;
        for (group, globs) in &self.groups {
            if globs.is_empty() {
                return Err(format!("pcs.groups.{group}: empty; list MAC globs, e.g. [\"52:54:00:*\"]"));
            }
            for g in globs {
                check_glob(&format!("pcs.groups.{group}"), g)?;
            }
        }
        for (i, r) in self.rules.iter().enumerate() {
            let key = format!("pcs.rule[{}]", i + 1);
            match r.pattern.strip_prefix('@') {
                Some(group) if !self.groups.contains_key(group) => {
                    return Err(format!(
                        "{key}.match: no group {:?} in [pcs.groups]; add it there or fix the name",
                        crate::logsafe::Esc(group)
                    ))
                }
                Some(_) => {}
                None => check_glob(&format!("{key}.match"), &r.pattern)?,
            }
            check_autologin(&format!("{key}.autologin"), &r.autologin, r.policy.unwrap_or(self.policy))?;
            if let Some(n) = &r.name {
                if n.trim().is_empty() || n.chars().count() > NAME_MAX || n.chars().any(char::is_control) {
                    return Err(format!("{key}.name: use 1 to {NAME_MAX} printable characters"));
                }
            }
        }
        Ok(())
    }

    fn matches(&self, pattern: &str, mac: &str) -> bool {
        match pattern.strip_prefix('@') {
            Some(group) => self.groups.get(group).is_some_and(|g| g.iter().any(|p| glob(p.as_bytes(), mac.as_bytes()))),
            None => glob(pattern.as_bytes(), mac.as_bytes()),
        }
    }

    /// The policy of the PC with `mac`: the first matching rule's keys, the table's for the
    /// rest. A kiosk rule with no autologin of its own takes the table's.
    pub fn resolve(&self, mac: MacAddr) -> PcPolicy {
        let text = mac.to_string();
        let rule = self.rules.iter().find(|r| self.matches(&r.pattern, &text));
        let mode = rule.and_then(|r| r.policy).unwrap_or(self.policy);
        let autologin = match mode {
            Mode::Kiosk => rule.and_then(|r| r.autologin.clone()).or_else(|| self.autologin.clone()),
            _ => None,
        };
        let name = rule.and_then(|r| r.name.clone()).unwrap_or_else(|| default_name(mac));
        PcPolicy { mode, autologin, name }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(s: &str) -> MacAddr {
        s.parse().unwrap()
    }

    fn parse(text: &str) -> PcsConfig {
        let c: PcsConfig = toml::from_str(text).unwrap();
        c.check().unwrap();
        c
    }

    #[test]
    fn defaults_to_login_with_a_name_from_the_mac() {
        let c = parse("");
        let p = c.resolve(mac("52:54:00:00:07:ab"));
        assert_eq!(p, PcPolicy { mode: Mode::Login, autologin: None, name: "pc-0007ab".into() });
    }

    #[test]
    fn the_first_matching_rule_wins_and_groups_match_by_glob() {
        let c = parse("policy = \"disabled\"");
        assert_eq!(c.resolve(mac("52:54:00:00:00:01")).mode, Mode::Disabled);
        let c = parse(
            r#"
            [groups]
            lab1 = ["52:54:00:00:00:0?", "02:*"]
            [[rule]]
            match = "52:54:00:00:00:07"
            policy = "disabled"
            [[rule]]
            match = "@lab1"
            policy = "kiosk"
            autologin = "hall"
            name = "front desk"
            [[rule]]
            match = "52:54:*"
            policy = "kiosk"
            "#,
        );
        assert_eq!(c.resolve(mac("52:54:00:00:00:07")).mode, Mode::Disabled);
        let p = c.resolve(mac("52:54:00:00:00:03"));
        assert_eq!((p.mode, p.autologin.as_deref(), p.name.as_str()), (Mode::Kiosk, Some("hall"), "front desk"));
        assert_eq!(c.resolve(mac("02:00:00:00:00:aa")).name, "front desk");
        let p = c.resolve(mac("52:54:00:00:00:10"));
        assert_eq!((p.mode, p.autologin, p.name.as_str()), (Mode::Kiosk, None, "pc-000010"));
        assert_eq!(c.resolve(mac("0a:00:00:00:00:01")).mode, Mode::Login);
        // Upper-case patterns match too.
        assert_eq!(parse("[[rule]]\nmatch = \"52:54:00:00:00:0A\"\npolicy = \"kiosk\"").resolve(mac("52:54:00:00:00:0a")).mode, Mode::Kiosk);
    }

    #[test]
    fn a_kiosk_rule_takes_the_tables_autologin() {
        let c = parse("policy = \"kiosk\"\nautologin = \"hall\"\n[[rule]]\nmatch = \"52:*\"\nname = \"x\"");
        assert_eq!(c.resolve(mac("52:00:00:00:00:01")).autologin.as_deref(), Some("hall"));
        let c = parse("policy = \"kiosk\"\nautologin = \"hall\"\n[[rule]]\nmatch = \"52:*\"\npolicy = \"login\"");
        assert_eq!(c.resolve(mac("52:00:00:00:00:01")).autologin, None);
    }

    #[test]
    fn bad_keys_are_named_with_their_fix() {
        let err = |text: &str| toml::from_str::<PcsConfig>(text).map_err(|e| e.to_string()).and_then(|c| c.check().map(|_| c)).unwrap_err();
        let e = err("autologin = \"hall\"");
        assert!(e.contains("pcs.autologin") && e.contains("policy = \"kiosk\""), "{e}");
        let e = err("[[rule]]\nmatch = \"@lab9\"");
        assert!(e.contains("pcs.rule[1].match") && e.contains("lab9") && e.contains("[pcs.groups]"), "{e}");
        let e = err("[[rule]]\nmatch = \"52:54:00:zz\"");
        assert!(e.contains("pcs.rule[1].match") && e.contains("glob"), "{e}");
        let e = err("[groups]\nlab = [\"52-54\"]");
        assert!(e.contains("pcs.groups.lab"), "{e}");
        let e = err("[groups]\nlab = []");
        assert!(e.contains("pcs.groups.lab") && e.contains("empty"), "{e}");
        let e = err("policy = \"kiosk\"\nautologin = \"Not A Name\"");
        assert!(e.contains("pcs.autologin"), "{e}");
        let e = err("[[rule]]\nmatch = \"*\"\nname = \"\"");
        assert!(e.contains("pcs.rule[1].name"), "{e}");
        assert!(err("policy = \"open\"").contains("policy"));
        assert!(err("[[rule]]\nmatch = \"*\"\nmode = \"kiosk\"").contains("mode"));
    }

    #[test]
    fn glob_matches_like_a_shell() {
        for (p, t, want) in [
            ("*", "", true),
            ("a*c", "abbbc", true),
            ("a*c", "abbb", false),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("*:07", "52:54:00:00:00:07", true),
            ("52:*:07", "52:54:00:00:00:08", false),
        ] {
            assert_eq!(glob(p.as_bytes(), t.as_bytes()), want, "{p} vs {t}");
        }
    }
}
