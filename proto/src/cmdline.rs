//! The kernel command-line contract between the boot server and the agent.
//!
//! The boot server's iPXE script appends these keys to the kernel command line; the agent
//! reads them back from `/proc/cmdline`. Keys carry the `tc.` prefix so they never collide
//! with the kernel's own parameters, and unknown `tc.` keys are kept (not rejected) so that an
//! older agent boots from a newer boot server.

use std::fmt;
use std::net::SocketAddr;

/// Address of the broker the agent announces itself to (`host:port`).
pub const KEY_BROKER: &str = "tc.broker";
/// Optional NFS root, `server:/export`, mounted read-only by the agent.
pub const KEY_NFSROOT: &str = "tc.nfsroot";
/// Log filter for the agent, same syntax as `RUST_LOG`.
pub const KEY_LOG: &str = "tc.log";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CmdlineError {
    #[error("kernel command line key {key}: {value:?} is not an address of the form IP:PORT")]
    BadAddress { key: &'static str, value: String },
    #[error("kernel command line has an unterminated quote")]
    UnterminatedQuote,
}

/// The agent's view of the kernel command line.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BootParams {
    pub broker: Option<SocketAddr>,
    pub nfsroot: Option<String>,
    pub log: Option<String>,
    /// Every `tc.*` key not known to this version, kept for diagnostics.
    pub unknown: Vec<(String, String)>,
}

impl BootParams {
    /// Parses a whole kernel command line, such as the contents of `/proc/cmdline`.
    pub fn parse(line: &str) -> Result<Self, CmdlineError> {
        let mut params = BootParams::default();
        for word in split_words(line)? {
            let (key, value) = match word.split_once('=') {
                Some((k, v)) => (k, v.to_string()),
                None => (word.as_str(), String::new()),
            };
            match key {
                KEY_BROKER => {
                    let addr = value.parse().map_err(|_| CmdlineError::BadAddress {
                        key: KEY_BROKER,
                        value: value.clone(),
                    })?;
                    params.broker = Some(addr);
                }
                KEY_NFSROOT => params.nfsroot = Some(value),
                KEY_LOG => params.log = Some(value),
                k if k.starts_with("tc.") => params.unknown.push((k.to_string(), value)),
                _ => {}
            }
        }
        Ok(params)
    }
}

impl fmt::Display for BootParams {
    /// Emits the `tc.*` words, ready to append to a kernel command line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut words = Vec::new();
        if let Some(b) = self.broker {
            words.push(format!("{KEY_BROKER}={b}"));
        }
        if let Some(n) = &self.nfsroot {
            words.push(format!("{KEY_NFSROOT}={n}"));
        }
        if let Some(l) = &self.log {
            words.push(format!("{KEY_LOG}={l}"));
        }
        for (k, v) in &self.unknown {
            words.push(format!("{k}={v}"));
        }
        f.write_str(&words.join(" "))
    }
}

/// Splits on whitespace, honouring double quotes the way the kernel does
/// (`key="a b"` is one word, the quotes are dropped).
fn split_words(line: &str) -> Result<Vec<String>, CmdlineError> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_quote = false;
    let mut has_word = false;
    for c in line.chars() {
        match c {
            '"' => {
                in_quote = !in_quote;
                has_word = true;
            }
            c if c.is_whitespace() && !in_quote => {
                if has_word {
                    words.push(std::mem::take(&mut cur));
                    has_word = false;
                }
            }
            c => {
                cur.push(c);
                has_word = true;
            }
        }
    }
    if in_quote {
        return Err(CmdlineError::UnterminatedQuote);
    }
    if has_word {
        words.push(cur);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_known_and_unknown_keys() {
        let p = BootParams::parse(
            "BOOT_IMAGE=/vmlinuz console=ttyS0 tc.broker=10.0.0.1:7000 tc.log=\"debug,x=info\" tc.future=1\n",
        )
        .unwrap();
        assert_eq!(p.broker, Some("10.0.0.1:7000".parse().unwrap()));
        assert_eq!(p.log.as_deref(), Some("debug,x=info"));
        assert_eq!(p.unknown, vec![("tc.future".into(), "1".into())]);
        assert_eq!(p.nfsroot, None);
    }

    #[test]
    fn round_trips() {
        let p = BootParams {
            broker: Some("192.0.2.1:7000".parse().unwrap()),
            nfsroot: Some("192.0.2.1:/root".into()),
            log: None,
            unknown: vec![],
        };
        assert_eq!(BootParams::parse(&p.to_string()).unwrap(), p);
    }

    #[test]
    fn rejects_bad_broker_and_quotes() {
        assert!(matches!(
            BootParams::parse("tc.broker=nonsense"),
            Err(CmdlineError::BadAddress { .. })
        ));
        assert_eq!(BootParams::parse("a=\"b"), Err(CmdlineError::UnterminatedQuote));
    }
}
