//! Build, inspect and reflash Linux initramfs images: newc cpio archives, plain or compressed
//! with anything the kernel accepts, concatenated the way distributions ship them.
//!
//! `image::Image` reads and rewrites images, `build::build` makes one from a `config::Config`,
//! `verify`, `diff` and `extract` work on a read image.

pub mod build;
pub mod compress;
pub mod config;
pub mod diff;
pub mod elf;
pub mod extract;
pub mod image;
pub mod kmod;
pub mod newc;
pub mod verify;
