//! Tight's JPEG rectangles: decoded with libjpeg-turbo, on worker threads when the machine has
//! more than one core.
//!
//! A JPEG rectangle carries no stream state (unlike Tight's zlib streams), so while one is being
//! decoded the connection can go on reading and decoding the next rectangles. This is what
//! TigerVNC's viewer does, and with full-screen photo-like updates it is most of the wall time.
//! Order still matters where rectangles overlap: a later rectangle that touches one still being
//! decoded waits for it ([`JpegPool::wait_for`]), and the end of each update waits for all of
//! them, so a complete update is on the screen exactly as the server meant it.

use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use anyhow::{bail, Context};
use log::debug;

use super::framebuffer::{Rect, BPP};

/// Where decoded pixels go: the framebuffer, under its lock.
pub(crate) type Put = dyn Fn(Rect, &[u8]) -> anyhow::Result<()> + Send + Sync;

/// A cap for machines with many cores: an update brings a few dozen JPEG rectangles, and each
/// thread keeps a decoder and a buffer of its own.
const MAX_THREADS: usize = 4;

/// Rectangles handed out but not yet in the framebuffer.
#[derive(Default)]
struct Pending {
    rects: Vec<(u64, Rect)>,
    next_id: u64,
    /// The first failure of a worker, reported by the next call on the decoding side.
    error: Option<String>,
    /// Compressed-data buffers given back by the workers, reused for the next rectangles.
    spare: Vec<Vec<u8>>,
}

struct State {
    pending: Mutex<Pending>,
    changed: Condvar,
}

impl State {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

struct Job {
    id: u64,
    rect: Rect,
    data: Vec<u8>,
}

pub(crate) struct JpegPool {
    put: Arc<Put>,
    state: Arc<State>,
    threads: usize,
    /// Started on the first JPEG rectangle: a session that never sees one starts no threads.
    tx: Mutex<Option<mpsc::Sender<Job>>>,
    /// With one core (or no threads to be had) rectangles are decoded on the caller's thread.
    inline: Mutex<JpegDecoder>,
}

impl JpegPool {
    pub(crate) fn new(put: Arc<Put>) -> JpegPool {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        // With one core a worker would only add hand-offs. With more, one worker per core: the
        // caller reads the socket and takes a rectangle itself only when all of them are busy
        // (one worker fewer left a core idle while the caller read).
        let threads = if cores > 1 { cores.min(MAX_THREADS) } else { 0 };
        JpegPool::with_threads(put, threads)
    }

    pub(crate) fn with_threads(put: Arc<Put>, threads: usize) -> JpegPool {
        JpegPool {
            put,
            state: Arc::new(State { pending: Mutex::new(Pending::default()), changed: Condvar::new() }),
            threads,
            tx: Mutex::new(None),
            inline: Mutex::new(JpegDecoder::default()),
        }
    }

    /// Decodes `jpeg` into `r`, here or on a worker; a worker's failure is reported by a later
    /// call (the next rectangle, [`wait_for`](Self::wait_for) or [`flush`](Self::flush)).
    pub(crate) fn submit(&self, r: Rect, jpeg: &[u8]) -> Result<(), String> {
        let tx = match self.sender() {
            Some(tx) => tx,
            None => return self.decode_here(r, jpeg),
        };
        let mut p = self.state.lock();
        if let Some(e) = p.error.take() {
            return Err(e);
        }
        // Every worker busy: the caller decodes this one itself rather than queueing it and
        // waiting, which would only add a hand-off and a wake-up per rectangle.
        if p.rects.len() >= self.threads {
            drop(p);
            return self.decode_here(r, jpeg);
        }
        let id = p.next_id;
        p.next_id += 1;
        p.rects.push((id, r));
        let mut data = p.spare.pop().unwrap_or_default();
        drop(p);
        data.clear();
        data.extend_from_slice(jpeg);
        if tx.send(Job { id, rect: r, data }).is_err() {
            // Only if every worker died, which a panic in libjpeg-turbo's wrapper could do.
            self.state.lock().rects.retain(|(i, _)| *i != id);
            return Err("the JPEG decoding threads have stopped".into());
        }
        Ok(())
    }

    fn decode_here(&self, r: Rect, jpeg: &[u8]) -> Result<(), String> {
        let mut dec = self.inline.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let pixels = dec.decode(r, jpeg).map_err(|e| format!("{e:#}"))?;
        (self.put)(r, pixels).map_err(|e| format!("{e:#}"))
    }

    /// Returns once no rectangle still being decoded overlaps `r`.
    pub(crate) fn wait_for(&self, r: Rect) -> Result<(), String> {
        self.wait(|p| p.rects.iter().all(|(_, q)| !q.intersects(&r)))
    }

    /// Returns once every rectangle handed out is in the framebuffer.
    pub(crate) fn flush(&self) -> Result<(), String> {
        self.wait(|p| p.rects.is_empty())
    }

    /// Forgets a failure left over from a connection that has ended.
    pub(crate) fn reset(&self) {
        let _ = self.flush();
        self.state.lock().error = None;
    }

    fn wait(&self, done: impl Fn(&Pending) -> bool) -> Result<(), String> {
        let mut p = self.state.lock();
        while !done(&p) && p.error.is_none() {
            p = self.state.changed.wait(p).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        match p.error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn sender(&self) -> Option<mpsc::Sender<Job>> {
        if self.threads == 0 {
            return None;
        }
        let mut tx = self.tx.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if tx.is_none() {
            *tx = self.start();
        }
        tx.clone()
    }

    fn start(&self) -> Option<mpsc::Sender<Job>> {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let mut started = 0;
        for i in 0..self.threads {
            let (rx, state, put) = (Arc::clone(&rx), Arc::clone(&self.state), Arc::clone(&self.put));
            let spawned = std::thread::Builder::new()
                .name(format!("jpeg{i}"))
                .spawn(move || work(&rx, &state, &*put));
            match spawned {
                Ok(_) => started += 1,
                Err(e) => debug!("JPEG decoding thread {i} not started: {e}"),
            }
        }
        // The threads end when the sender goes, with the pool.
        debug!("decoding JPEG rectangles on {started} threads");
        (started > 0).then_some(tx)
    }
}

fn work(rx: &Mutex<mpsc::Receiver<Job>>, state: &State, put: &Put) {
    let mut dec = JpegDecoder::default();
    loop {
        let job = {
            let rx = rx.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            match rx.recv() {
                Ok(job) => job,
                Err(_) => return,
            }
        };
        let result = dec.decode(job.rect, &job.data).and_then(|pixels| put(job.rect, pixels));
        let mut p = state.lock();
        p.rects.retain(|(i, _)| *i != job.id);
        if let Err(e) = result {
            p.error.get_or_insert_with(|| format!("{e:#}"));
        }
        p.spare.push(job.data);
        drop(p);
        state.changed.notify_all();
    }
}

/// libjpeg-turbo (what TigerVNC uses): its SIMD Huffman decoding and colour conversion made
/// Tight+JPEG about a fifth cheaper than zune-jpeg, whose Huffman decoding was half the CPU
/// time. It writes B, G, R, A, the framebuffer's own order, so the rectangle goes in with a
/// plain copy.
#[derive(Default)]
pub(crate) struct JpegDecoder {
    /// Made on the first JPEG rectangle and kept: setting one up allocates libjpeg's state.
    tj: Option<turbojpeg::Decompressor>,
    pixels: Vec<u8>,
}

impl JpegDecoder {
    /// The rectangle's pixels as B, G, R, A rows; a JPEG of another size than the rectangle or
    /// one that is corrupt or cut short is an error (libjpeg-turbo's warnings count as errors).
    pub(crate) fn decode(&mut self, r: Rect, jpeg: &[u8]) -> anyhow::Result<&[u8]> {
        let tj = match &mut self.tj {
            Some(tj) => tj,
            None => self.tj.insert(turbojpeg::Decompressor::new().context("starting the JPEG decoder")?),
        };
        let head = tj.read_header(jpeg).context("decoding a Tight JPEG rectangle")?;
        let (w, h) = (head.width, head.height);
        if (w, h) != (r.w as usize, r.h as usize) {
            bail!("JPEG of {w}x{h} for a {}x{} rectangle", r.w, r.h);
        }
        // Only grown, never cleared: the decoder writes every byte of the rectangle.
        if self.pixels.len() < w * h * BPP {
            self.pixels.resize(w * h * BPP, 0);
        }
        let out = &mut self.pixels[..w * h * BPP];
        let image = turbojpeg::Image { pixels: &mut *out, width: w, pitch: w * BPP, height: h, format: turbojpeg::PixelFormat::BGRA };
        tj.decompress(jpeg, image).context("decoding a Tight JPEG rectangle")?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::super::framebuffer::Framebuffer;
    use super::*;

    fn jpeg(w: u32, h: u32, rgb: [u8; 3]) -> Vec<u8> {
        let img = image::RgbImage::from_pixel(w, h, image::Rgb(rgb));
        let mut out = vec![];
        image::DynamicImage::ImageRgb8(img)
            .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Jpeg)
            .unwrap();
        out
    }

    #[test]
    fn rectangles_decode_or_fail_cleanly() {
        let jpeg = jpeg(3, 2, [200, 100, 50]);
        let mut dec = JpegDecoder::default();
        let out = dec.decode(Rect::new(0, 0, 3, 2), &jpeg).unwrap();
        assert_eq!(out.len(), 3 * 2 * BPP);
        // B, G, R, A: blue first, an opaque alpha.
        assert!((i32::from(out[0]) - 50).abs() < 8 && (i32::from(out[2]) - 200).abs() < 8, "{out:?}");
        assert_eq!(out[3], 255);
        assert!(dec.decode(Rect::new(0, 0, 4, 2), &jpeg).is_err());
        assert!(dec.decode(Rect::new(0, 0, 3, 2), &jpeg[..20]).is_err());
        // Cut short after the header: libjpeg-turbo would fill in grey and warn.
        assert!(dec.decode(Rect::new(0, 0, 3, 2), &jpeg[..jpeg.len() - 10]).is_err());
        assert!(dec.decode(Rect::new(0, 0, 3, 2), &[]).is_err());
        // The decoder is still good after errors.
        assert!(dec.decode(Rect::new(0, 0, 3, 2), &jpeg).is_ok());
    }

    fn pool(threads: usize) -> (JpegPool, Arc<Mutex<Framebuffer>>) {
        let fb = Arc::new(Mutex::new(Framebuffer::default()));
        fb.lock().unwrap().resize(64, 64);
        let target = Arc::clone(&fb);
        let put = move |r: Rect, px: &[u8]| target.lock().unwrap().put_bgrx(r, px);
        (JpegPool::with_threads(Arc::new(put), threads), fb)
    }

    /// Red (B, G, R order) at (x, y)?
    fn red_at(fb: &Framebuffer, x: usize, y: usize) -> bool {
        let o = y * fb.stride() + x * BPP;
        let p = &fb.pixels()[o..o + 3];
        p[2] > 200 && p[0] < 60 && p[1] < 60
    }

    #[test]
    fn overlapping_rectangles_land_in_the_order_they_came() {
        let (red, blue) = (jpeg(32, 32, [255, 0, 0]), jpeg(32, 32, [0, 0, 255]));
        for threads in [0, 1, 3] {
            let (pool, fb) = pool(threads);
            // Many rounds on the same place, alternating: the last one must win every time,
            // whichever worker finishes first.
            for round in 0..40 {
                for (i, x) in [0u32, 16, 32].into_iter().enumerate() {
                    let r = Rect::new(x, 16, 32, 32);
                    let data = if (round + i) % 2 == 0 { &red } else { &blue };
                    pool.wait_for(r).unwrap();
                    pool.submit(r, data).unwrap();
                }
                pool.flush().unwrap();
                let fb = fb.lock().unwrap();
                // The last rectangle (x 32..64) painted over the middle one's right half.
                let last_red = (round + 2) % 2 == 0;
                assert_eq!(red_at(&fb, 40, 20), last_red, "threads {threads}, round {round}");
                assert_eq!(red_at(&fb, 20, 20), (round + 1) % 2 == 0, "threads {threads}, round {round}");
                assert_eq!(red_at(&fb, 5, 20), round % 2 == 0, "threads {threads}, round {round}");
            }
        }
    }

    #[test]
    fn a_workers_failure_is_reported_once_and_the_pool_goes_on() {
        let good = jpeg(8, 8, [255, 0, 0]);
        let (pool, fb) = pool(2);
        pool.submit(Rect::new(0, 0, 8, 8), &good[..good.len() - 10]).unwrap();
        let e = pool.flush().unwrap_err();
        assert!(e.contains("JPEG"), "{e}");
        // A rectangle outside the framebuffer fails in the framebuffer, also on a worker.
        pool.submit(Rect::new(60, 60, 8, 8), &good).unwrap();
        assert!(pool.flush().is_err());
        pool.flush().unwrap();
        pool.submit(Rect::new(8, 8, 8, 8), &good).unwrap();
        pool.flush().unwrap();
        assert!(red_at(&fb.lock().unwrap(), 10, 10));
        // A failure left behind by an ended connection is forgotten by reset.
        pool.submit(Rect::new(0, 0, 8, 8), &good[..30]).unwrap();
        pool.reset();
        pool.flush().unwrap();
    }
}
