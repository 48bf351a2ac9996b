//! The read-only file tree that TFTP and HTTP serve: the boot dir, a few named files that live
//! elsewhere (the kernel and initramfs given to `bootserver boot`, iPXE from Debian's package),
//! and nothing else.
//!
//! Confinement is done by the kernel, not by string checks alone: files are opened with
//! `openat2(RESOLVE_BENEATH)` relative to the boot dir, so a symlink that leaves it fails even if
//! it is swapped in between a check and the open.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// Where Debian's `ipxe` package puts its boot loaders.
pub const IPXE_DIR: &str = "/usr/lib/ipxe";
/// The iPXE binaries served by name when the boot dir has no file of that name.
pub const IPXE_FILES: [&str; 4] = ["undionly.kpxe", "ipxe.efi", "snponly.efi", "ipxe.pxe"];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OpenError {
    #[error("file name is empty")]
    Empty,
    #[error("file name contains a NUL byte")]
    Nul,
    #[error("absolute paths are refused")]
    Absolute,
    #[error("`..` is refused")]
    DotDot,
    #[error("path leaves the boot dir")]
    Escapes,
    #[error("no such file")]
    NotFound,
    #[error("not a regular file")]
    NotAFile,
    #[error("permission denied")]
    Denied,
    #[error("I/O error: {0}")]
    Io(String),
}

impl OpenError {
    /// True when the request was hostile or malformed rather than merely missing.
    pub fn is_refusal(&self) -> bool {
        matches!(self, OpenError::Nul | OpenError::Absolute | OpenError::DotDot | OpenError::Escapes)
    }
}

/// An opened boot file.
#[derive(Debug)]
pub struct BootFile {
    pub file: File,
    pub len: u64,
}

#[derive(Debug)]
pub struct BootFiles {
    root_path: PathBuf,
    root: OwnedFd,
    /// Served before the boot dir is looked at.
    named: BTreeMap<String, PathBuf>,
    /// Served when the boot dir has no such file.
    fallback: BTreeMap<String, PathBuf>,
}

impl BootFiles {
    /// Opens the boot dir. Debian's iPXE files are added as fallbacks when present.
    pub fn new(root: &Path) -> std::io::Result<Self> {
        let c = CString::new(root.as_os_str().as_encoded_bytes())
            .map_err(|_| std::io::Error::other("boot dir path contains NUL"))?;
        // SAFETY: plain open(2) of a NUL-terminated path; the fd is owned right after.
        let fd = unsafe {
            libc::open(c.as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor owned by nobody else.
        let root_fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut files = BootFiles { root_path: root.to_owned(), root: root_fd, named: BTreeMap::new(), fallback: BTreeMap::new() };
        for name in IPXE_FILES {
            let p = Path::new(IPXE_DIR).join(name);
            if p.is_file() {
                files.fallback.insert(name.to_string(), p);
            }
        }
        Ok(files)
    }

    pub fn root(&self) -> &Path {
        &self.root_path
    }

    /// Serves `name` from `path` (anywhere on this machine). A file of that name in the boot
    /// dir does not shadow it: an admin who named it asked for it.
    pub fn add_named(&mut self, name: &str, path: PathBuf) {
        self.named.insert(name.to_string(), path);
    }

    /// Checks a request without touching the file system and returns the relative path.
    pub fn check_name(name: &[u8]) -> Result<&str, OpenError> {
        if name.is_empty() {
            return Err(OpenError::Empty);
        }
        if name.contains(&0) {
            return Err(OpenError::Nul);
        }
        let name = std::str::from_utf8(name).map_err(|_| OpenError::NotFound)?;
        if name.starts_with('/') || name.starts_with('\\') {
            return Err(OpenError::Absolute);
        }
        // Windows-style PXE clients use backslashes; treat them as separators for this check
        // so that `..\..\etc` is refused too.
        if name.split(['/', '\\']).any(|c| c == "..") {
            return Err(OpenError::DotDot);
        }
        Ok(name)
    }

    /// Opens a request (a TFTP file name, or an HTTP path with its leading `/` removed).
    pub fn open(&self, name: &[u8]) -> Result<BootFile, OpenError> {
        let name = Self::check_name(name)?;
        let rel = name.trim_start_matches("./");
        if let Some(path) = self.named.get(rel) {
            return regular(File::open(path).map_err(io_error)?);
        }
        match self.open_beneath(rel) {
            Err(OpenError::NotFound) => {}
            other => return other,
        }
        if let Some(path) = self.fallback.get(rel) {
            return regular(File::open(path).map_err(io_error)?);
        }
        Err(OpenError::NotFound)
    }

    fn open_beneath(&self, rel: &str) -> Result<BootFile, OpenError> {
        let c = CString::new(rel).map_err(|_| OpenError::Nul)?;
        // SAFETY: open_how is plain data; all-zero is its documented neutral value.
        let mut how: libc::open_how = unsafe { std::mem::zeroed() };
        how.flags = (libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOCTTY) as u64;
        how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS;
        // SAFETY: openat2 with a valid dirfd, NUL-terminated path and a correctly sized open_how.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                self.root.as_raw_fd(),
                c.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if fd < 0 {
            let err = std::io::Error::last_os_error();
            return Err(match err.raw_os_error() {
                Some(libc::EXDEV) | Some(libc::ELOOP) => OpenError::Escapes,
                Some(libc::ENOSYS) => return self.open_beneath_fallback(rel),
                _ => io_error(err),
            });
        }
        // SAFETY: fresh descriptor returned by the kernel.
        let file = unsafe { File::from_raw_fd(fd as i32) };
        regular(file)
    }

    /// For kernels older than 5.6 (no openat2): resolve and compare prefixes. Racy against a
    /// symlink swapped in between, which is why openat2 is preferred.
    fn open_beneath_fallback(&self, rel: &str) -> Result<BootFile, OpenError> {
        let full = self.root_path.join(rel);
        let real = full.canonicalize().map_err(io_error)?;
        if !real.starts_with(&self.root_path) {
            return Err(OpenError::Escapes);
        }
        regular(File::open(real).map_err(io_error)?)
    }
}

fn regular(file: File) -> Result<BootFile, OpenError> {
    let meta = file.metadata().map_err(io_error)?;
    if !meta.is_file() {
        return Err(OpenError::NotAFile);
    }
    Ok(BootFile { len: meta.len(), file })
}

fn io_error(e: std::io::Error) -> OpenError {
    match e.kind() {
        std::io::ErrorKind::NotFound => OpenError::NotFound,
        std::io::ErrorKind::PermissionDenied => OpenError::Denied,
        _ if e.raw_os_error() == Some(libc::ENOTDIR) => OpenError::NotFound,
        _ if e.raw_os_error() == Some(libc::EISDIR) => OpenError::NotAFile,
        _ => OpenError::Io(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn tree() -> (tempfile::TempDir, BootFiles) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("boot");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/a.txt"), b"hello").unwrap();
        std::fs::write(dir.path().join("secret"), b"no").unwrap();
        std::os::unix::fs::symlink("../secret", root.join("out")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("abs")).unwrap();
        std::os::unix::fs::symlink("sub/a.txt", root.join("in")).unwrap();
        let files = BootFiles::new(&root).unwrap();
        (dir, files)
    }

    #[test]
    fn serves_files_and_inner_symlinks() {
        let (_d, f) = tree();
        let mut s = String::new();
        f.open(b"sub/a.txt").unwrap().file.read_to_string(&mut s).unwrap();
        assert_eq!(s, "hello");
        assert_eq!(f.open(b"in").unwrap().len, 5);
        assert_eq!(f.open(b"./sub/a.txt").unwrap().len, 5);
    }

    #[test]
    fn refuses_escapes() {
        let (_d, f) = tree();
        assert_eq!(f.open(b"../secret").unwrap_err(), OpenError::DotDot);
        assert_eq!(f.open(b"sub/../../secret").unwrap_err(), OpenError::DotDot);
        assert_eq!(f.open(b"..\\secret").unwrap_err(), OpenError::DotDot);
        assert_eq!(f.open(b"/etc/passwd").unwrap_err(), OpenError::Absolute);
        assert_eq!(f.open(b"sub/a.txt\0x").unwrap_err(), OpenError::Nul);
        assert_eq!(f.open(b"out").unwrap_err(), OpenError::Escapes);
        assert_eq!(f.open(b"abs").unwrap_err(), OpenError::Escapes);
        assert_eq!(f.open(b"").unwrap_err(), OpenError::Empty);
        assert_eq!(f.open(b"sub").unwrap_err(), OpenError::NotAFile);
        assert_eq!(f.open(b"missing").unwrap_err(), OpenError::NotFound);
    }

    #[test]
    fn named_files_fill_gaps() {
        let (d, mut f) = tree();
        f.add_named("vmlinuz", d.path().join("secret"));
        assert_eq!(f.open(b"vmlinuz").unwrap().len, 2);
        // A named file wins over the boot dir's file of the same name.
        f.add_named("in", d.path().join("secret"));
        assert_eq!(f.open(b"in").unwrap().len, 2);
    }
}
