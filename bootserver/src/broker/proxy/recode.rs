//! Re-compression of the encodings that carry one zlib stream per connection (ZRLE, Zlib), so
//! that they survive a switch of VM.
//!
//! Such a stream has no reset signal: after a switch the viewer's inflater would continue a
//! stream the new VM never started. So the proxy ends the stream on each side. Each VM
//! connection gets its own inflater, and the viewer connection its own deflater, which lives as
//! long as the viewer and does not notice switches. A rectangle's zlib data is inflated with
//! the VM's inflater and deflated again into the viewer's stream with a sync flush; the content
//! (ZRLE tiles, Zlib's pixels) passes through unparsed, only the length field changes.
//!
//! A rectangle is inflated completely before any of it is deflated: if the VM's data turns out
//! bad, the viewer's stream has not been touched and stays usable for the next VM.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::rfb::{enc, RfbError, MAX_MESSAGE};

/// Deflate level towards the viewer. Level 1 costs the proxy the least CPU; on a LAN the few
/// percent of size it gives up against the VM's own level do not matter.
const LEVEL: u32 = 1;

/// Inflated data of a rectangle that is larger than this is not kept between rectangles.
const KEEP_SCRATCH: usize = 4 << 20;

/// Whether rectangles of this encoding go through [`ZStreams::recode`].
pub(crate) fn recoded(encoding: i32) -> bool {
    matches!(encoding, enc::ZRLE | enc::ZLIB)
}

/// The most inflated data a `w`x`h` rectangle can carry.
///
/// ZRLE: each 64x64 tile has a subencoding byte and at most a 127-colour palette; a pixel
/// costs at most a CPIXEL (never more than 4 bytes) and a one-byte run length (plain RLE with
/// runs of one), or two bytes in palette RLE. Zlib: the pixels, raw. The largest pixel size
/// is assumed rather than the viewer's: right after a SetPixelFormat the VM may still send a
/// rectangle in the old format, and a bound a few times too loose still stops a lying VM.
pub(crate) fn max_inflated(encoding: i32, w: usize, h: usize) -> usize {
    const BPP: usize = 4;
    match encoding {
        enc::ZRLE => w.div_ceil(64) * h.div_ceil(64) * (1 + 127 * BPP) + w * h * (BPP + 1),
        _ => w * h * BPP,
    }
}

/// The most compressed bytes a VM may announce for a rectangle that inflates to at most
/// `inflated` bytes: deflate's stored blocks add 5 bytes per 64 KiB, flushes 5 bytes each, so
/// this leaves a wide margin for any real encoder while a lying length is refused before the
/// proxy waits for (and buffers) its bytes.
pub(crate) fn max_compressed(inflated: usize) -> usize {
    inflated + inflated / 64 + 4096
}

/// Which of the two streams a rectangle belongs to.
fn slot(encoding: i32) -> usize {
    match encoding {
        enc::ZRLE => 0,
        _ => 1,
    }
}

fn name(encoding: i32) -> &'static str {
    match encoding {
        enc::ZRLE => "ZRLE",
        _ => "Zlib",
    }
}

/// Why a rectangle could not be re-compressed.
#[derive(Debug)]
pub(crate) enum RecodeError {
    /// The VM's data is bad: drop the VM, keep the viewer (its stream is untouched).
    Vm(RfbError),
    /// The viewer's deflater failed: its stream is lost, and with it the viewer connection.
    Viewer(String),
}

/// The zlib streams of one viewer connection and of its current VM connection.
#[derive(Default)]
pub(crate) struct ZStreams {
    /// Towards the viewer, per encoding; created on first use, kept across switches.
    viewer: [Option<Compress>; 2],
    /// From the current VM, per encoding; replaced with each VM connection.
    vm: [Option<Decompress>; 2],
    /// Inflated data of the rectangle being recoded.
    plain: Vec<u8>,
}

impl ZStreams {
    /// A new VM connection starts its streams afresh.
    pub(crate) fn new_vm(&mut self) {
        self.vm = [None, None];
    }

    /// Appends `rect` (a whole ZRLE or Zlib rectangle as the framer cut it: 12-byte header,
    /// 4-byte length, zlib data) to `out`, its data re-compressed into the viewer's stream.
    pub(crate) fn recode(&mut self, rect: &[u8], out: &mut Vec<u8>) -> Result<(), RecodeError> {
        let bad = |what: String| RecodeError::Vm(RfbError::Zlib(what));
        if rect.len() < 16 {
            return Err(RecodeError::Vm(RfbError::Malformed("zlib rectangle (shorter than its header)")));
        }
        let (w, h) = (u16::from_be_bytes([rect[4], rect[5]]) as usize, u16::from_be_bytes([rect[6], rect[7]]) as usize);
        let encoding = i32::from_be_bytes([rect[8], rect[9], rect[10], rect[11]]);
        let data = &rect[16..];
        let cap = max_inflated(encoding, w, h).min(MAX_MESSAGE);
        let k = slot(encoding);
        let inflater = self.vm[k].get_or_insert_with(|| Decompress::new(true));
        inflate(inflater, data, cap, &mut self.plain)
            .map_err(|e| bad(format!("{} rectangle {w}x{h}: {e}", name(encoding))))?;

        out.extend_from_slice(&rect[..12]);
        let len_at = out.len();
        out.extend_from_slice(&[0; 4]);
        if !self.plain.is_empty() {
            let deflater = self.viewer[k].get_or_insert_with(|| Compress::new(Compression::new(LEVEL), true));
            deflate(deflater, &self.plain, out).map_err(RecodeError::Viewer)?;
        }
        let n = (out.len() - len_at - 4) as u32;
        out[len_at..len_at + 4].copy_from_slice(&n.to_be_bytes());
        if self.plain.capacity() > KEEP_SCRATCH {
            self.plain = Vec::new();
        }
        Ok(())
    }
}

/// Inflates `data` completely into `plain` (cleared first), refusing more than `cap` bytes.
fn inflate(d: &mut Decompress, mut data: &[u8], cap: usize, plain: &mut Vec<u8>) -> Result<(), String> {
    plain.clear();
    loop {
        // Room for one byte more than allowed, so that exceeding the bound shows. Growing by
        // doubling up to that, never beyond, keeps memory at what the VM really sent.
        if plain.len() == plain.capacity() {
            let want = (plain.capacity() * 2).max(64 << 10).min(cap + 1);
            if want <= plain.len() {
                return Err(format!("inflates to more than the {cap} bytes its size allows"));
            }
            plain.reserve_exact(want - plain.len());
        }
        let (in0, out0) = (d.total_in(), d.total_out());
        let status = d.decompress_vec(data, plain, FlushDecompress::Sync).map_err(|e| format!("bad zlib data: {e}"))?;
        let used = (d.total_in() - in0) as usize;
        let made = (d.total_out() - out0) as usize;
        data = &data[used..];
        if plain.len() > cap {
            return Err(format!("inflates to more than the {cap} bytes its size allows"));
        }
        match status {
            Status::StreamEnd if !data.is_empty() => return Err("zlib stream ended inside the rectangle".into()),
            Status::StreamEnd => return Ok(()),
            // Output space left after taking all input: nothing is pending in the inflater.
            _ if data.is_empty() && plain.len() < plain.capacity() => return Ok(()),
            _ if used == 0 && made == 0 && plain.len() < plain.capacity() => {
                return Err("zlib data makes no progress".into())
            }
            _ => {}
        }
    }
}

/// Deflates `plain` onto the end of `out` and flushes, so the viewer can decode the rectangle
/// from these bytes alone.
fn deflate(c: &mut Compress, mut plain: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    loop {
        out.reserve(plain.len() + plain.len() / 64 + 64);
        let in0 = c.total_in();
        c.compress_vec(plain, out, FlushCompress::Sync).map_err(|e| format!("deflating for the viewer: {e}"))?;
        plain = &plain[(c.total_in() - in0) as usize..];
        // zlib: a flush is complete when deflate returns with output space to spare.
        if plain.is_empty() && out.len() < out.capacity() {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A VM's (or a viewer's) end of one zlib stream.
    struct Peer {
        c: Compress,
        d: Decompress,
    }

    impl Peer {
        fn new(level: u32) -> Self {
            Peer { c: Compress::new(Compression::new(level), true), d: Decompress::new(true) }
        }

        /// A rectangle as a VM sends it: `plain` compressed into this peer's stream.
        fn rect(&mut self, encoding: i32, w: u16, h: u16, plain: &[u8]) -> Vec<u8> {
            let mut z = Vec::new();
            deflate(&mut self.c, plain, &mut z).unwrap();
            let mut v = Vec::new();
            for n in [0, 0, w, h] {
                v.extend_from_slice(&n.to_be_bytes());
            }
            v.extend_from_slice(&encoding.to_be_bytes());
            v.extend_from_slice(&(z.len() as u32).to_be_bytes());
            v.extend(z);
            v
        }

        /// What a viewer decodes from a recoded rectangle: header kept, data inflated.
        fn open(&mut self, rect: &[u8], header: &[u8]) -> Vec<u8> {
            assert_eq!(&rect[..12], &header[..12]);
            let n = u32::from_be_bytes(rect[12..16].try_into().unwrap()) as usize;
            assert_eq!(rect.len(), 16 + n, "length field matches the data");
            let mut plain = Vec::new();
            inflate(&mut self.d, &rect[16..], 1 << 24, &mut plain).unwrap();
            plain
        }
    }

    /// Plausible ZRLE content: a raw tile of varied pixels (the proxy never parses it).
    fn tile(seed: u8, w: usize, h: usize) -> Vec<u8> {
        let mut v = vec![0u8];
        v.extend((0..w * h * 3).map(|i| (i as u8).wrapping_mul(seed) ^ (i / 97) as u8));
        v
    }

    #[test]
    fn a_zrle_rect_is_reframed_with_its_new_length() {
        let mut vm = Peer::new(9);
        let mut viewer = Peer::new(0);
        let mut z = ZStreams::default();
        for seed in 1..4 {
            let plain = tile(seed, 64, 32);
            let rect = vm.rect(enc::ZRLE, 64, 32, &plain);
            let mut out = Vec::new();
            z.recode(&rect, &mut out).unwrap();
            assert_eq!(viewer.open(&out, &rect), plain);
        }
        // Zlib rectangles have their own stream on both sides.
        let mut vm_zlib = Peer::new(6);
        let mut viewer_zlib = Peer::new(0);
        let pixels: Vec<u8> = (0..8 * 8 * 4).map(|i| i as u8).collect();
        let rect = vm_zlib.rect(enc::ZLIB, 8, 8, &pixels);
        let mut out = Vec::new();
        z.recode(&rect, &mut out).unwrap();
        assert_eq!(viewer_zlib.open(&out, &rect), pixels);
        let rect = vm.rect(enc::ZRLE, 16, 16, &tile(9, 16, 16));
        out.clear();
        z.recode(&rect, &mut out).unwrap();
        assert_eq!(viewer.open(&out, &rect), tile(9, 16, 16));
    }

    #[test]
    fn the_viewer_stream_continues_across_a_switch_of_vm() {
        let mut z = ZStreams::default();
        let mut viewer = Peer::new(0);
        let mut vm_a = Peer::new(6);
        for seed in [3, 5] {
            let rect = vm_a.rect(enc::ZRLE, 32, 32, &tile(seed, 32, 32));
            let mut out = Vec::new();
            z.recode(&rect, &mut out).unwrap();
            assert_eq!(viewer.open(&out, &rect), tile(seed, 32, 32));
        }
        // VM B starts a stream of its own (with its zlib header); the viewer's goes on.
        z.new_vm();
        let mut vm_b = Peer::new(1);
        for seed in [7, 11, 3] {
            let rect = vm_b.rect(enc::ZRLE, 40, 24, &tile(seed, 40, 24));
            let mut out = Vec::new();
            z.recode(&rect, &mut out).unwrap();
            assert_eq!(viewer.open(&out, &rect), tile(seed, 40, 24));
        }
        // Without the switch, B's stream fed to A's inflater is refused, not mis-decoded.
        let mut z2 = ZStreams::default();
        z2.recode(&Peer::new(6).rect(enc::ZRLE, 8, 8, &tile(1, 8, 8)), &mut Vec::new()).unwrap();
        let fresh = Peer::new(6).rect(enc::ZRLE, 8, 8, &tile(1, 8, 8));
        assert!(matches!(z2.recode(&fresh, &mut Vec::new()), Err(RecodeError::Vm(_))));
    }

    #[test]
    fn bad_vm_data_leaves_the_viewer_stream_intact() {
        let mut z = ZStreams::default();
        let mut viewer = Peer::new(0);
        let mut vm = Peer::new(6);
        let rect = vm.rect(enc::ZRLE, 16, 16, &tile(2, 16, 16));
        let mut out = Vec::new();
        z.recode(&rect, &mut out).unwrap();
        viewer.open(&out, &rect);

        // A zip bomb: far more inflated data than a 16x16 rectangle can hold.
        let bomb = vm.rect(enc::ZRLE, 16, 16, &vec![0u8; 1 << 20]);
        let err = z.recode(&bomb, &mut Vec::new()).unwrap_err();
        assert!(matches!(&err, RecodeError::Vm(RfbError::Zlib(m)) if m.contains("more than")), "{err:?}");
        // Garbage.
        let mut junk = rect.clone();
        junk[16..].fill(0xff);
        assert!(matches!(z.recode(&junk, &mut Vec::new()), Err(RecodeError::Vm(_))));

        // The next VM's rectangles still reach the viewer through the untouched stream.
        z.new_vm();
        let mut vm2 = Peer::new(6);
        let rect = vm2.rect(enc::ZRLE, 16, 16, &tile(4, 16, 16));
        let mut out = Vec::new();
        z.recode(&rect, &mut out).unwrap();
        assert_eq!(viewer.open(&out, &rect), tile(4, 16, 16));
    }

    #[test]
    fn bounds_cover_the_worst_honest_rectangle() {
        // 64x64 plain RLE with runs of one at 4-byte CPIXELs (servers use 3, but need not).
        assert!(max_inflated(enc::ZRLE, 64, 64) > 64 * 64 * 5);
        // 1x1 palette RLE with a full palette.
        assert!(max_inflated(enc::ZRLE, 1, 1) >= 1 + 127 * 4 + 2);
        assert_eq!(max_inflated(enc::ZLIB, 10, 10), 400);
        // Level 0 (stored blocks) of the largest inflated size still fits.
        let plain = vec![7u8; max_inflated(enc::ZRLE, 300, 200)];
        let mut z = Vec::new();
        deflate(&mut Compress::new(Compression::none(), true), &plain, &mut z).unwrap();
        assert!(z.len() <= max_compressed(plain.len()));
    }

    /// ZRLE data for a `w`x`h` screen of 64x64 tiles: solid areas, two-colour text-like tiles
    /// (packed palette) and photo-like raw tiles, as a desktop with a picture shows them.
    fn desktop(w: usize, h: usize) -> Vec<u8> {
        let mut seed = 0x2545_f491_u32;
        let mut rnd = move || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed
        };
        let mut v = Vec::new();
        for ty in 0..h.div_ceil(64) {
            for tx in 0..w.div_ceil(64) {
                let (tw, th) = ((w - tx * 64).min(64), (h - ty * 64).min(64));
                match (tx * 7 + ty * 3) % 10 {
                    0..=3 => v.extend([1, 0xee, 0xee, 0xee]),
                    4..=6 => {
                        v.extend([2, 0xff, 0xff, 0xff, 0x20, 0x20, 0x20]);
                        // Glyph-like rows: mostly background, short strokes.
                        for _ in 0..th * tw.div_ceil(8) {
                            let r = rnd();
                            v.push(if r % 3 == 0 { (r >> 8) as u8 & (r >> 16) as u8 } else { 0 });
                        }
                    }
                    _ => {
                        v.push(0);
                        for y in 0..th {
                            for x in 0..tw {
                                let n = (rnd() % 9) as usize;
                                v.extend([(x * 3 + n) as u8, (y * 2 + tx * 16 + n) as u8, (x + y + ty * 16 + n) as u8]);
                            }
                        }
                    }
                }
            }
        }
        v
    }

    /// Throughput of the proxy's re-compression against the VM's own ZRLE deflate (zlib's
    /// default level, as QEMU and TigerVNC use) and the viewer's inflate, on the same frames.
    /// Run by `scripts/bench/proxy-zrle`.
    #[test]
    #[ignore = "benchmark; run by scripts/bench/proxy-zrle"]
    fn bench_recode() {
        use std::time::Instant;
        let (w, h) = (1920u16, 1080u16);
        let frames: usize = std::env::var("FRAMES").ok().and_then(|f| f.parse().ok()).unwrap_or(40);
        let plain = desktop(w as usize, h as usize);
        let mut vm = Peer::new(6);
        let mut viewer = Peer::new(0);
        let mut z = ZStreams::default();
        let (mut t_vm, mut t_proxy, mut t_viewer) = (0.0, 0.0, 0.0);
        let (mut wire_in, mut wire_out) = (0usize, 0usize);
        for _ in 0..frames {
            let t = Instant::now();
            let rect = vm.rect(enc::ZRLE, w, h, &plain);
            t_vm += t.elapsed().as_secs_f64();
            let t = Instant::now();
            let mut out = Vec::new();
            z.recode(&rect, &mut out).unwrap();
            t_proxy += t.elapsed().as_secs_f64();
            let t = Instant::now();
            let got = viewer.open(&out, &rect);
            t_viewer += t.elapsed().as_secs_f64();
            assert_eq!(got, plain);
            wire_in += rect.len();
            wire_out += out.len();
        }
        let mib = wire_in as f64 / (1 << 20) as f64;
        let screens = (frames * w as usize * h as usize * 4) as f64 / (1 << 20) as f64;
        println!("{frames} frames {w}x{h}: {:.1} MiB of ZRLE from the VM (level 6), {:.1} MiB to the viewer (level {LEVEL}), {screens:.0} MiB of pixels", mib, wire_out as f64 / (1 << 20) as f64);
        println!("VM deflate (peer):        {:7.2} ms per MiB of ZRLE", t_vm * 1e3 / mib);
        println!("proxy inflate + deflate:  {:7.2} ms per MiB of ZRLE ({:.0} MiB/s)", t_proxy * 1e3 / mib, mib / t_proxy);
        println!("viewer inflate:           {:7.2} ms per MiB of ZRLE", t_viewer * 1e3 / mib);
        println!("ratio proxy / VM deflate: {:.2}", t_proxy / t_vm);
    }
}
