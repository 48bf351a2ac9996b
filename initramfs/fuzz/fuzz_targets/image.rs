#![no_main]
//! Any bytes: reading must return an image or an error, never panic; what reads must also
//! survive the extract name checks, verification, and a rewrite that reads back the same.

use initramfs::image::{Image, Limits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits { max_entry: 1 << 20, max_total: 16 << 20 };
    if let Ok(img) = Image::parse(data, limits) {
        let _ = initramfs::extract::check_names(&img);
        let _ = initramfs::verify::verify(&img);
        let bytes = img.to_bytes().expect("an unedited image writes back");
        assert_eq!(bytes, data, "an unedited image is written back verbatim");
        let again = Image::parse(&bytes, limits).expect("written image reads back");
        assert_eq!(again.entries().count(), img.entries().count());
    }
});
