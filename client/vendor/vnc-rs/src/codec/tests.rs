use super::*;
use crate::{PixelFormat, Rect, VncError, VncEvent};
use std::sync::Mutex;

#[tokio::test]
async fn tight_fill_copy_and_palette_modes_preserve_pixels() {
    let rect = Rect {
        x: 0,
        y: 0,
        width: 2,
        height: 1,
    };
    for (bytes, expected) in [
        (vec![0x80, 1, 2, 3], vec![1, 2, 3, 255, 1, 2, 3, 255]),
        (vec![0, 1, 2, 3, 4, 5, 6], vec![1, 2, 3, 255, 4, 5, 6, 255]),
        (
            vec![0x40, 1, 1, 1, 2, 3, 4, 5, 6, 0x40],
            vec![1, 2, 3, 255, 4, 5, 6, 255],
        ),
        (
            vec![0x40, 1, 2, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 2],
            vec![1, 2, 3, 255, 7, 8, 9, 255],
        ),
    ] {
        let output = Mutex::new(Vec::new());
        TightDecoder::new()
            .decode(
                &PixelFormat::rgba(),
                &rect,
                &mut bytes.as_slice(),
                &|event| {
                    output.lock().unwrap().push(event);
                    async { Ok(()) }
                },
            )
            .await
            .unwrap();
        assert!(
            matches!(&output.into_inner().unwrap()[0], VncEvent::RawImage(_, pixels) if pixels == &expected)
        );
    }
}

#[tokio::test]
async fn tight_rejects_invalid_palette_indexes_and_unsupported_formats() {
    let rect = Rect {
        x: 0,
        y: 0,
        width: 2,
        height: 1,
    };
    for bytes in [
        vec![0x40, 1, 0], // a single color must use Fill
        vec![0x40, 1, 2, 1, 2, 3, 4, 5, 6, 7, 8, 9, 3, 0],
    ] {
        let result = TightDecoder::new()
            .decode(
                &PixelFormat::rgba(),
                &rect,
                &mut bytes.as_slice(),
                &|_| async { Ok(()) },
            )
            .await;
        assert!(matches!(result, Err(VncError::InvalidImageData)));
    }
    let mut format = PixelFormat::rgba();
    format.true_color_flag = 0;
    format.red_shift = 255; // ignored for indexed color, must never be shifted
    let result = TightDecoder::new()
        .decode(&format, &rect, &mut &[][..], &|_| async { Ok(()) })
        .await;
    assert!(matches!(result, Err(VncError::WrongPixelFormat)));
}

#[tokio::test]
async fn cursor_preserves_alpha_mask_and_accepts_empty_shapes() {
    for (width, bytes, expected) in [
        (1, vec![1, 2, 3, 0, 0x80], vec![1, 2, 3, 255]),
        (1, vec![1, 2, 3, 255, 0], vec![1, 2, 3, 0]),
        (0, vec![], vec![]),
    ] {
        let output = Mutex::new(Vec::new());
        CursorDecoder::new()
            .decode(
                &PixelFormat::rgba(),
                &Rect {
                    x: 0,
                    y: 0,
                    width,
                    height: 1,
                },
                &mut bytes.as_slice(),
                &|event| {
                    output.lock().unwrap().push(event);
                    async { Ok(()) }
                },
            )
            .await
            .unwrap();
        assert!(
            matches!(&output.into_inner().unwrap()[0], VncEvent::SetCursor(_, pixels) if pixels == &expected)
        );
    }
}

#[tokio::test]
async fn tight_rejects_component_widths_its_filters_cannot_decode() {
    let mut format = PixelFormat::rgba();
    format.red_max = 65535;
    format.red_shift = 0;
    format.green_max = 127;
    format.green_shift = 16;
    format.blue_max = 1;
    format.blue_shift = 23;
    assert!(format.validate().is_ok());
    let result = TightDecoder::new()
        .decode(
            &format,
            &Rect {
                x: 0,
                y: 0,
                width: 1,
                height: 1,
            },
            &mut &[0x40, 2, 255, 255, 255][..],
            &|_| async { Ok(()) },
        )
        .await;
    assert!(matches!(result, Err(VncError::WrongPixelFormat)));
}

/// Counts what the current thread has allocated and not freed, so a test can bound the memory
/// one hostile message costs (the tests run side by side, so a process-wide count would not do).
mod counting {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    thread_local! {
        static LIVE: Cell<isize> = const { Cell::new(0) };
        static PEAK: Cell<isize> = const { Cell::new(0) };
    }

    fn add(bytes: isize) {
        let _ = LIVE.try_with(|live| {
            live.set(live.get() + bytes);
            let _ = PEAK.try_with(|peak| peak.set(peak.get().max(live.get())));
        });
    }

    struct Counting;

    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            add(layout.size() as isize);
            System.alloc(layout)
        }
        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            add(layout.size() as isize);
            System.alloc_zeroed(layout)
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            add(-(layout.size() as isize));
            System.dealloc(ptr, layout)
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            add(new_size as isize - layout.size() as isize);
            System.realloc(ptr, layout, new_size)
        }
    }

    #[global_allocator]
    static COUNTING: Counting = Counting;

    /// The most this thread had allocated at once, above what it held before, while running `f`.
    pub(super) fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
        let base = LIVE.with(Cell::get);
        PEAK.with(|peak| peak.set(base));
        let out = f();
        (out, (PEAK.with(Cell::get) - base).max(0) as usize)
    }
}

/// Runs one decoder on `bytes` on this thread and returns its result and peak allocation.
fn decode_peak(
    decode: impl FnOnce(&mut &[u8]) -> Result<(), VncError>,
    bytes: &[u8],
) -> (Result<(), VncError>, usize) {
    counting::peak_during(|| decode(&mut &bytes[..]))
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(f)
}

/// A header costs a server a few bytes; the memory behind it must cost it the data. Each input
/// announces megabytes (a ZRLE/TRLE length, a Tight compact length, a cursor or a Tight
/// rectangle's inflated size) and then ends: decoding must fail having allocated a small part
/// of that, not the announced size zeroed up front.
#[test]
fn announced_lengths_without_data_cost_no_memory() {
    const LIMIT: usize = 512 * 1024;
    let big = Rect {
        x: 0,
        y: 0,
        width: 1024,
        height: 1024,
    };
    let format = PixelFormat::rgba();
    let ignore = |_: VncEvent| async { Ok(()) };
    let mut length_64m = (64_u32 << 20).to_be_bytes().to_vec();
    length_64m.extend_from_slice(&[0x78, 0x9c, 0, 0]);
    // Tight, stream 0 reset, explicit gradient filter, 2 bytes of zlib header for 3 MiB of pixels.
    let tight_gradient = [0x41, 2, 2, 0x78, 0x9c];
    // Tight, stream 0 reset, copy filter, a compact length of 4 MiB - 1, then 4 bytes.
    let tight_long = [0x01, 0xff, 0xff, 0xff, 1, 2, 3, 4];
    let cases: Vec<(&str, Box<dyn FnOnce(&mut &[u8]) -> Result<(), VncError>>, &[u8])> = vec![
        (
            "zrle",
            Box::new(|s| block_on(ZrleDecoder::new().decode(&format, &big, s, &ignore))),
            &length_64m,
        ),
        (
            "trle",
            Box::new(|s| block_on(TrleDecoder::new().decode(&format, &big, s, &ignore))),
            &length_64m,
        ),
        (
            "tight gradient",
            Box::new(|s| block_on(TightDecoder::new().decode(&format, &big, s, &ignore))),
            &tight_gradient,
        ),
        (
            "tight compact length",
            Box::new(|s| block_on(TightDecoder::new().decode(&format, &big, s, &ignore))),
            &tight_long,
        ),
        (
            "cursor",
            Box::new(|s| block_on(CursorDecoder::new().decode(&format, &big, s, &ignore))),
            &[1, 2, 3, 4],
        ),
    ];
    for (name, decode, bytes) in cases {
        let (result, peak) = decode_peak(decode, bytes);
        assert!(result.is_err(), "{name}: truncated input decoded");
        assert!(peak < LIMIT, "{name}: {peak} bytes allocated for {} bytes of input", bytes.len());
    }
}
