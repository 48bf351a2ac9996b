/*
Copyright (c) 2016  whitequark <whitequark@whitequark.org>
Permission is hereby granted, free of charge, to any
person obtaining a copy of this software and associated
documentation files (the "Software"), to deal in the
Software without restriction, including without
limitation the rights to use, copy, modify, merge,
publish, distribute, sublicense, and/or sell copies of
the Software, and to permit persons to whom the Software
is furnished to do so, subject to the following
conditions:
The above copyright notice and this permission notice
shall be included in all copies or substantial portions
of the Software.
THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF
ANY KIND, EXPRESS OR IMPLIED, INCLUDING BUT NOT LIMITED
TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A
PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT
SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY
CLAIM, DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION
OF CONTRACT, TORT OR OTHERWISE, ARISING FROM, OUT OF OR
IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER
DEALINGS IN THE SOFTWARE.
*/

use std::io::{Read, Result};

/// Inflated bytes are taken out of zlib this many at a time. Calling into zlib once per byte
/// (what ZRLE's byte-wise parsing did) cost more than the inflation itself.
const CHUNK: usize = 32 * 1024;

pub struct ZlibReader<'a> {
    decompressor: flate2::Decompress,
    input: &'a [u8],
    buf: Box<[u8]>,
    pos: usize,
    len: usize,
}

fn invalid(msg: &'static str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg)
}

impl<'a> ZlibReader<'a> {
    pub fn new(decompressor: flate2::Decompress, input: &'a [u8]) -> ZlibReader<'a> {
        ZlibReader {
            decompressor,
            input,
            buf: vec![0; CHUNK].into_boxed_slice(),
            pos: 0,
            len: 0,
        }
    }

    /// Gives the decompressor back for the next rectangle. Every inflated byte must have been
    /// used: what is left (beyond zlib's own flush markers, which inflate to nothing) means the
    /// rectangle's data did not match its header.
    pub fn into_inner(mut self) -> Result<flate2::Decompress> {
        if self.pos < self.len {
            return Err(invalid("leftover zlib byte data"));
        }
        while !self.input.is_empty() {
            if self.inflate(CHUNK)? > 0 {
                return Err(invalid("leftover zlib byte data"));
            }
        }
        Ok(self.decompressor)
    }

    /// Inflates into the internal buffer (which must be used up); returns the bytes produced.
    fn inflate(&mut self, want: usize) -> Result<usize> {
        let in_before = self.decompressor.total_in();
        let out_before = self.decompressor.total_out();
        let result = self.decompressor.decompress(
            self.input,
            &mut self.buf[..want.min(CHUNK)],
            flate2::FlushDecompress::None,
        );
        let consumed = (self.decompressor.total_in() - in_before) as usize;
        let produced = (self.decompressor.total_out() - out_before) as usize;
        self.input = &self.input[consumed..];
        self.pos = 0;
        self.len = produced;
        match result {
            Ok(flate2::Status::Ok) => Ok(produced),
            Ok(flate2::Status::BufError) => {
                if consumed == 0 && produced == 0 {
                    // No progress: the input ran out (or is stuck) before the data did.
                    self.input = &[];
                }
                Ok(produced)
            }
            Err(error) => Err(std::io::Error::new(std::io::ErrorKind::InvalidData, error)),
            Ok(flate2::Status::StreamEnd) => Err(invalid("zlib stream end")),
        }
    }

    /// Refills the used-up buffer; end of input with nothing inflated is the end of the data.
    fn fill(&mut self) -> Result<()> {
        loop {
            // Even with no input left, zlib may hold inflated bytes that did not fit last time.
            if self.inflate(CHUNK)? > 0 {
                return Ok(());
            }
            if self.input.is_empty() {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    pub fn read_u8(&mut self) -> std::io::Result<u8> {
        if self.pos == self.len {
            self.fill()?;
        }
        let b = self.buf[self.pos];
        self.pos += 1;
        Ok(b)
    }
}

impl Read for ZlibReader<'_> {
    fn read(&mut self, output: &mut [u8]) -> std::io::Result<usize> {
        if output.is_empty() {
            return Ok(0);
        }
        if self.pos == self.len {
            // Large reads go straight into the caller's buffer.
            if output.len() >= CHUNK {
                let in_before = self.decompressor.total_in();
                let out_before = self.decompressor.total_out();
                let result = self.decompressor.decompress(self.input, output, flate2::FlushDecompress::None);
                let consumed = (self.decompressor.total_in() - in_before) as usize;
                let produced = (self.decompressor.total_out() - out_before) as usize;
                self.input = &self.input[consumed..];
                return match result {
                    Ok(flate2::Status::Ok) | Ok(flate2::Status::BufError) => Ok(produced),
                    Err(error) => Err(std::io::Error::new(std::io::ErrorKind::InvalidData, error)),
                    Ok(flate2::Status::StreamEnd) => Err(invalid("zlib stream end")),
                };
            }
            match self.fill() {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
        }
        let n = output.len().min(self.len - self.pos);
        output[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deflate(c: &mut flate2::Compress, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(data.len() + 1024);
        c.compress_vec(data, &mut out, flate2::FlushCompress::Sync).unwrap();
        out
    }

    #[test]
    fn buffered_reads_cross_chunks_and_keep_the_stream_state() {
        let data: Vec<u8> = (0..3 * CHUNK as u32 + 17).map(|i| (i * 7 % 251) as u8).collect();
        let mut c = flate2::Compress::new(flate2::Compression::fast(), true);
        let mut d = flate2::Decompress::new(true);
        for _ in 0..2 {
            let z = deflate(&mut c, &data);
            let mut r = ZlibReader::new(d, &z);
            let mut got = vec![r.read_u8().unwrap(), r.read_u8().unwrap()];
            let mut big = vec![0; CHUNK + 5];
            r.read_exact(&mut big).unwrap();
            got.extend_from_slice(&big);
            while got.len() < data.len() {
                got.push(r.read_u8().unwrap());
            }
            assert_eq!(got, data);
            assert!(r.read_u8().is_err(), "read past the rectangle's data");
            d = r.into_inner().unwrap();
        }
    }

    #[test]
    fn unread_data_is_an_error() {
        let mut c = flate2::Compress::new(flate2::Compression::fast(), true);
        let z = deflate(&mut c, b"abcdef");
        let mut r = ZlibReader::new(flate2::Decompress::new(true), &z);
        assert_eq!(r.read_u8().unwrap(), b'a');
        assert!(r.into_inner().is_err());
        let mut r = ZlibReader::new(flate2::Decompress::new(true), b"not zlib at all");
        assert!(r.read_u8().is_err());
    }
}
