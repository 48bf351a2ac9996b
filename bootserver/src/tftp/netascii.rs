//! The netascii encoding of RFC 764 as TFTP uses it: LF becomes CR LF, CR becomes CR NUL.

use std::io::{BufRead, Read};

/// Encodes a byte stream to netascii as it is read.
pub struct Netascii<R> {
    inner: R,
    /// Second byte of an expansion that did not fit in the caller's buffer.
    pending: Option<u8>,
}

impl<R: BufRead> Netascii<R> {
    pub fn new(inner: R) -> Self {
        Netascii { inner, pending: None }
    }
}

impl<R: BufRead> Read for Netascii<R> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let mut n = 0;
        if let Some(b) = self.pending.take() {
            match out.first_mut() {
                Some(slot) => *slot = b,
                None => {
                    self.pending = Some(b);
                    return Ok(0);
                }
            }
            n = 1;
        }
        while n < out.len() {
            let input = self.inner.fill_buf()?;
            if input.is_empty() {
                break;
            }
            let mut used = 0;
            for &b in input {
                if n == out.len() {
                    break;
                }
                used += 1;
                let (first, second) = match b {
                    b'\n' => (b'\r', Some(b'\n')),
                    b'\r' => (b'\r', Some(0)),
                    other => (other, None),
                };
                out[n] = first;
                n += 1;
                if let Some(s) = second {
                    if n < out.len() {
                        out[n] = s;
                        n += 1;
                    } else {
                        self.pending = Some(s);
                    }
                }
            }
            self.inner.consume(used);
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(input: &[u8], chunk: usize) -> Vec<u8> {
        let mut r = Netascii::new(std::io::BufReader::with_capacity(3, input));
        let mut out = Vec::new();
        let mut buf = vec![0u8; chunk];
        loop {
            let n = r.read(&mut buf).unwrap();
            if n == 0 {
                return out;
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    #[test]
    fn converts_line_ends_across_any_split() {
        let input = b"a\nb\r\nc\rd\n\n\r";
        let want = b"a\r\nb\r\0\r\nc\r\0d\r\n\r\n\r\0";
        for chunk in 1..20 {
            assert_eq!(encode(input, chunk), want, "chunk {chunk}");
        }
        assert_eq!(encode(b"", 4), b"");
        assert_eq!(encode(b"plain", 2), b"plain");
    }
}
