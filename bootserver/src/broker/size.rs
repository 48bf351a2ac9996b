//! Memory sizes as people write them (`2GiB`, `512MiB`, `1.5G`) and as the broker prints them.

use std::fmt;

pub const KIB: u64 = 1024;
pub const MIB: u64 = 1024 * KIB;
pub const GIB: u64 = 1024 * MIB;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{input:?} is not a memory size; write a number with a unit, e.g. 2GiB, 512MiB or 1.5G")]
pub struct SizeError {
    pub input: String,
}

/// Parses a size in bytes. Units are binary whether or not the `i` is written (`G` = `GiB`),
/// because memory is sold and configured that way; a bare number is bytes.
pub fn parse_size(input: &str) -> Result<u64, SizeError> {
    let err = || SizeError { input: input.to_string() };
    let s = input.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => KIB,
        "m" | "mb" | "mib" => MIB,
        "g" | "gb" | "gib" => GIB,
        "t" | "tb" | "tib" => 1024 * GIB,
        _ => return Err(err()),
    };
    if num.is_empty() || num.matches('.').count() > 1 {
        return Err(err());
    }
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if int.is_empty() && frac.is_empty() {
        return Err(err());
    }
    let int: u64 = if int.is_empty() { 0 } else { int.parse().map_err(|_| err())? };
    let whole = int.checked_mul(mult).ok_or_else(err)?;
    // Fractions are exact decimal digits scaled by the unit, so "0.5G" is exactly 512 MiB; a
    // fraction of a byte is refused rather than rounded.
    if frac.len() > 18 {
        return Err(err());
    }
    let frac_num: u128 = if frac.is_empty() { 0 } else { frac.parse().map_err(|_| err())? };
    let scaled = frac_num * u128::from(mult);
    let denom = 10u128.pow(frac.len() as u32);
    if scaled % denom != 0 {
        return Err(err());
    }
    let bytes = whole.checked_add((scaled / denom) as u64).ok_or_else(err)?;
    Ok(bytes)
}

/// A size printed in the largest binary unit that keeps it short: `2 GiB`, `512 MiB`,
/// `1.5 GiB`, `100 B`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bytes(pub u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        for (unit, name) in [(GIB, "GiB"), (MIB, "MiB"), (KIB, "KiB")] {
            if b >= unit {
                return write!(f, "{} {name}", trim_float(b as f64 / unit as f64));
            }
        }
        write!(f, "{b} B")
    }
}

/// A size in GiB as a bare number, the way the paper's Table 3 writes it (`2`, `0.5`).
pub fn gib_number(bytes: u64) -> String {
    trim_float(bytes as f64 / GIB as f64)
}

fn trim_float(x: f64) -> String {
    let s = format!("{x:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_fractions() {
        assert_eq!(parse_size("2GiB"), Ok(2 * GIB));
        assert_eq!(parse_size("512MiB"), Ok(512 * MIB));
        assert_eq!(parse_size("0.5G"), Ok(512 * MIB));
        assert_eq!(parse_size("1.25 GiB"), Ok(GIB + 256 * MIB));
        assert_eq!(parse_size("4096"), Ok(4096));
        for bad in ["", "G", "2XB", "1.2.3G", "-1G", ".G", "99999999999999999999G", "0.1B"] {
            assert!(parse_size(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn prints_short() {
        assert_eq!(Bytes(2 * GIB).to_string(), "2 GiB");
        assert_eq!(Bytes(512 * MIB).to_string(), "512 MiB");
        assert_eq!(Bytes(GIB + 512 * MIB).to_string(), "1.5 GiB");
        assert_eq!(Bytes(7).to_string(), "7 B");
        assert_eq!(gib_number(512 * MIB), "0.5");
        assert_eq!(gib_number(6 * GIB), "6");
    }
}
