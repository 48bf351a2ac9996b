//! Strings that came from the network, made safe to put in a log line.
//!
//! A CPU model, an agent version or a `?mac=` query is whatever the peer sent: a newline in it
//! would start a forged log line, a terminal escape would rewrite the operator's screen, and a
//! bidi override would make a line read differently from what it says. [`Esc`] writes such
//! characters as escapes (`\n`, `\u{202e}`), the backslash as `\\` so that an escape in the
//! input cannot pass for one of ours, and cuts very long strings short.

use std::fmt;

/// Longest part of a string written out; the rest is counted, not shown.
const MAX_CHARS: usize = 256;

/// Displays a network string escaped for a log line: `log::info!("agent {}", Esc(&version))`.
pub struct Esc<'a>(pub &'a str);

/// Displays bytes that should be text: valid UTF-8 as [`Esc`] does, other bytes as `\xNN`.
pub struct EscBytes<'a>(pub &'a [u8]);

fn needs_escape(c: char) -> bool {
    // Cf holds the invisible format characters (bidi overrides, zero-width joiners); the ranges
    // below are the ones that matter on a terminal or in a log viewer.
    c.is_control()
        || c == '\\'
        || matches!(c, '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2060}'..='\u{2069}' | '\u{feff}')
}

fn write_char(f: &mut fmt::Formatter<'_>, c: char) -> fmt::Result {
    if !needs_escape(c) {
        return fmt::Write::write_char(f, c);
    }
    match c {
        '\\' => f.write_str("\\\\"),
        '\n' => f.write_str("\\n"),
        '\r' => f.write_str("\\r"),
        '\t' => f.write_str("\\t"),
        c => write!(f, "\\u{{{:x}}}", c as u32),
    }
}

impl fmt::Display for Esc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut chars = self.0.chars();
        for c in chars.by_ref().take(MAX_CHARS) {
            write_char(f, c)?;
        }
        let rest = chars.as_str().len();
        if rest > 0 {
            write!(f, "...({rest} more bytes)")?;
        }
        Ok(())
    }
}

impl fmt::Display for EscBytes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown = 0;
        for chunk in self.0.utf8_chunks() {
            for c in chunk.valid().chars() {
                if shown == MAX_CHARS {
                    break;
                }
                write_char(f, c)?;
                shown += 1;
            }
            for b in chunk.invalid() {
                if shown == MAX_CHARS {
                    break;
                }
                write!(f, "\\x{b:02x}")?;
                shown += 1;
            }
        }
        if shown == MAX_CHARS {
            f.write_str("...(cut)")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Esc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newline_cannot_start_a_line() {
        let forged = "0.1.0\n[2026-01-01T00:00:00Z INFO  bootserver] admin: Reboot for everyone";
        let shown = Esc(forged).to_string();
        assert!(!shown.contains('\n'), "{shown}");
        assert!(shown.starts_with("0.1.0\\n[2026"), "{shown}");
    }

    #[test]
    fn escapes_are_unambiguous_and_plain_text_is_kept() {
        assert_eq!(Esc("Intel(R) Core(TM) i5 — 2.4 GHz").to_string(), "Intel(R) Core(TM) i5 — 2.4 GHz");
        assert_eq!(Esc("a\\nb").to_string(), "a\\\\nb");
        assert_eq!(Esc("\r\t\x1b[2J\u{202e}x").to_string(), "\\r\\t\\u{1b}[2J\\u{202e}x");
        assert_eq!(EscBytes(b"ok\xff\n").to_string(), "ok\\xff\\n");
    }

    #[test]
    fn long_strings_are_cut() {
        let long = "x".repeat(10_000);
        let shown = Esc(&long).to_string();
        assert!(shown.len() < 300, "{}", shown.len());
        assert!(shown.ends_with(&format!("...({} more bytes)", 10_000 - MAX_CHARS)), "{shown}");
        assert!(EscBytes(long.as_bytes()).to_string().ends_with("...(cut)"));
    }
}
