//! Unpacking an image into a folder without ever writing outside it.
//!
//! Every name is checked before anything is written: no absolute names, no `..`, and no name
//! that passes through a symlink made by an earlier member (a classic way for an archive to
//! write through `evil -> /etc`). That check is a courtesy (a clear error before the first
//! write); what really keeps the writes inside is how they are made:
//!
//! - every path is resolved one component at a time from a handle on DIR with
//!   `openat(O_NOFOLLOW | O_DIRECTORY)`, so no symlink on disk is ever followed, whoever made it;
//! - files are created with `O_CREAT | O_EXCL | O_NOFOLLOW`, and their mode, owner and mtime are
//!   set on the open descriptor (`fchmod`, `fchown`, `futimens`), never by a path that a later
//!   member could have turned into a symlink;
//! - a hard link is only made to a file this run wrote and that is still that same inode.
//!
//! The `*at` calls come from `nix` (already a dependency of the workspace): it wraps exactly
//! these system calls with typed errors. `cap-std` would also confine lookups, but hides the
//! descriptors that `fchown` and the hard-link checks need.
//!
//! Like GNU cpio and tar for an ordinary user, and unlike them for root, what an archive can
//! do to the machine is opt-in: device nodes, setuid/setgid bits and owners are restored only
//! with [`Options`]. DIR's own mode and owner (the `.` member) are only applied when this
//! extraction created DIR.

use std::collections::BTreeSet;
use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use anyhow::{bail, Context, Result};
use log::{info, warn};
use nix::errno::Errno;
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{fchmod, fchmodat, fstat, fstatat, mkdirat, mknodat, FchmodatFlags, Mode, SFlag};
use nix::unistd::{fchown, fchownat, linkat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};

use crate::image::Image;
use crate::newc::{Entry, S_IFBLK, S_IFCHR, S_IFIFO, S_IFMT, S_IFREG};

/// What an archive may restore beyond plain files, folders, symlinks and FIFOs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Create character and block device nodes (skipped with a warning otherwise).
    pub devices: bool,
    /// Give members the archive's uid/gid (otherwise they belong to the extracting user).
    pub same_owner: bool,
    /// Keep setuid and setgid bits (cleared otherwise).
    pub preserve_setuid: bool,
}

impl Options {
    fn perm(&self, mode: u32) -> u32 {
        let m = mode & 0o7777;
        if self.preserve_setuid {
            m
        } else {
            m & !(libc::S_ISUID | libc::S_ISGID)
        }
    }
}

/// The components of a member's path inside DIR: empty for DIR itself. Empty and `.`
/// components are dropped, as path lookup would.
fn components(e: &Entry) -> Vec<&str> {
    e.path().split('/').filter(|c| !c.is_empty() && *c != ".").collect()
}

/// Refuses names that could lead outside the target, before anything is written.
pub fn check_names(img: &Image) -> Result<()> {
    let mut links: BTreeSet<String> = BTreeSet::new();
    for e in img.entries() {
        if e.name.starts_with('/') {
            bail!("{:?}: absolute name; refusing to extract an archive that writes outside its folder", e.name);
        }
        let comps = components(e);
        if comps.contains(&"..") {
            bail!("{:?}: name contains `..`; refusing to extract", e.name);
        }
        let mut prefix = String::new();
        for c in comps.iter().rev().skip(1).rev() {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(c);
            if links.contains(&prefix) {
                bail!("{:?}: would be written through the symlink {prefix:?} made earlier in the archive; refusing to extract", e.name);
            }
        }
        let p = comps.join("/");
        if e.is_symlink() {
            links.insert(p);
        } else {
            links.remove(&p);
        }
    }
    Ok(())
}

fn own(fd: RawFd) -> OwnedFd {
    // SAFETY: `fd` was just returned by a successful open and is owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Opens the folder `name` in `dir` without following a symlink.
fn open_dir(dir: RawFd, name: &str) -> nix::Result<OwnedFd> {
    openat(Some(dir), name, OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC, Mode::empty()).map(own)
}

/// Opens the folder that holds the last of `comps`, one component at a time from `root`.
/// Missing folders are made when `create`; a symlink or a non-folder on the way is an error.
fn parent(root: &OwnedFd, comps: &[&str], create: bool) -> Result<OwnedFd> {
    let mut cur = root.try_clone().context("duplicating the folder handle")?;
    for (i, c) in comps[..comps.len() - 1].iter().enumerate() {
        let shown = || comps[..=i].join("/");
        let next = match open_dir(cur.as_raw_fd(), c) {
            Err(Errno::ENOENT) if create => {
                // Folders the archive does not list get the usual mode (0777 less the umask).
                match mkdirat(Some(cur.as_raw_fd()), *c, Mode::from_bits_truncate(0o777)) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(e).with_context(|| format!("creating {}", shown())),
                }
                open_dir(cur.as_raw_fd(), c)
            }
            r => r,
        };
        cur = match next {
            Ok(fd) => fd,
            // O_DIRECTORY | O_NOFOLLOW on a symlink fails with ENOTDIR on Linux (ELOOP elsewhere).
            Err(Errno::ELOOP | Errno::ENOTDIR) => match kind_at(cur.as_raw_fd(), c)? {
                Some((k, _)) if k == libc::S_IFLNK => bail!("{}: is a symlink on disk; refusing to write through it", shown()),
                _ => bail!("{}: is not a folder", shown()),
            },
            Err(e) => return Err(e).with_context(|| format!("opening {}", shown())),
        };
    }
    Ok(cur)
}

/// The type of `name` in `dir` (the link itself for a symlink), or `None` when absent.
fn kind_at(dir: RawFd, name: &str) -> Result<Option<(u32, u64)>> {
    match fstatat(Some(dir), name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some((st.st_mode & S_IFMT, st.st_ino))),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("looking at {name}")),
    }
}

/// Makes room for a new non-folder member: whatever non-folder is there goes (a symlink is
/// removed, never followed); a folder stays and is an error.
fn clear(dir: RawFd, name: &str, rel: &str) -> Result<()> {
    match kind_at(dir, name)? {
        Some((k, _)) if k == libc::S_IFDIR => bail!("{rel}: a folder is already there"),
        Some(_) => unlinkat(Some(dir), name, UnlinkatFlags::NoRemoveDir).with_context(|| format!("replacing {rel}")),
        None => Ok(()),
    }
}

fn owner(e: &Entry) -> (Option<Uid>, Option<Gid>) {
    (Some(Uid::from_raw(e.uid)), Some(Gid::from_raw(e.gid)))
}

/// Where the first member of a set of hard links was written, and which inode it got.
struct FirstLink {
    comps: Vec<String>,
    ino: u64,
}

struct Extractor<'a> {
    root: OwnedFd,
    opts: &'a Options,
    links: HashMap<(u32, u32, u32), FirstLink>,
}

impl Extractor<'_> {
    /// Opens the member's file for writing: a new link to an earlier member of its hard-link
    /// set when that one is still the file written for it, a new file otherwise.
    fn open_file(&mut self, e: &Entry, dir: &OwnedFd, leaf: &str, rel: &str, comps: &[&str]) -> Result<(File, bool)> {
        let key = (e.devmajor, e.devminor, e.ino);
        if e.nlink > 1 {
            if let Some(first) = self.links.get(&key) {
                let fc: Vec<&str> = first.comps.iter().map(String::as_str).collect();
                let fdir = parent(&self.root, &fc, false)?;
                let fleaf = fc[fc.len() - 1];
                // An archive can replace the first link by a symlink before naming the inode
                // again; linking that would make this member a link to anywhere.
                if kind_at(fdir.as_raw_fd(), fleaf)? == Some((S_IFREG, first.ino)) {
                    linkat(Some(fdir.as_raw_fd()), fleaf, Some(dir.as_raw_fd()), leaf, nix::fcntl::AtFlags::empty())
                        .with_context(|| format!("linking {rel} to {}", fc.join("/")))?;
                    let trunc = if e.data.is_empty() { OFlag::empty() } else { OFlag::O_TRUNC };
                    let fd = openat(Some(dir.as_raw_fd()), leaf, OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | trunc, Mode::empty())
                        .with_context(|| format!("opening {rel}"))?;
                    let f = File::from(own(fd));
                    if fstat(f.as_raw_fd()).map(|st| st.st_ino).ok() != Some(first.ino) {
                        bail!("{rel}: changed while being linked");
                    }
                    return Ok((f, true));
                }
                warn!("{rel}: its hard link {} is no longer the file written for it; writing a separate file", fc.join("/"));
            }
        }
        let fd = openat(
            Some(dir.as_raw_fd()),
            leaf,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .with_context(|| format!("creating {rel}"))?;
        let f = File::from(own(fd));
        if e.nlink > 1 {
            let ino = fstat(f.as_raw_fd()).with_context(|| format!("stat {rel}"))?.st_ino;
            self.links.insert(key, FirstLink { comps: comps.iter().map(|c| c.to_string()).collect(), ino });
        }
        Ok((f, false))
    }

    fn file(&mut self, e: &Entry, dir: &OwnedFd, leaf: &str, rel: &str, comps: &[&str]) -> Result<()> {
        clear(dir.as_raw_fd(), leaf, rel)?;
        let (mut f, linked) = self.open_file(e, dir, leaf, rel, comps)?;
        if !linked || !e.data.is_empty() {
            f.write_all(&e.data).with_context(|| format!("writing {rel}"))?;
        }
        // Owner before mode: chown clears setuid bits.
        if self.opts.same_owner {
            let (u, g) = owner(e);
            fchown(f.as_raw_fd(), u, g).with_context(|| format!("chown {rel}"))?;
        }
        fchmod(f.as_raw_fd(), Mode::from_bits_truncate(self.opts.perm(e.mode))).with_context(|| format!("chmod {rel}"))?;
        f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(e.mtime as u64))
            .with_context(|| format!("setting the mtime of {rel}"))?;
        Ok(())
    }

    fn dir(&self, e: &Entry, dir: &OwnedFd, leaf: &str, rel: &str) -> Result<()> {
        match kind_at(dir.as_raw_fd(), leaf)? {
            Some((k, _)) if k == libc::S_IFDIR => {}
            other => {
                if other.is_some() {
                    unlinkat(Some(dir.as_raw_fd()), leaf, UnlinkatFlags::NoRemoveDir).with_context(|| format!("replacing {rel}"))?;
                }
                // Private until its own mode is set at the end.
                mkdirat(Some(dir.as_raw_fd()), leaf, Mode::from_bits_truncate(0o700)).with_context(|| format!("creating {rel}"))?;
            }
        }
        if self.opts.same_owner {
            let fd = open_dir(dir.as_raw_fd(), leaf).with_context(|| format!("opening {rel}"))?;
            let (u, g) = owner(e);
            fchown(fd.as_raw_fd(), u, g).with_context(|| format!("chown {rel}"))?;
        }
        Ok(())
    }

    /// Device nodes and FIFOs: there is no descriptor to set their mode on (opening a device
    /// can have effects, a FIFO blocks), so it is set with AT_SYMLINK_NOFOLLOW on the name just
    /// made.
    fn node(&self, e: &Entry, kind: u32, dir: &OwnedFd, leaf: &str, rel: &str) -> Result<bool> {
        if kind != S_IFIFO && !self.opts.devices {
            warn!("{rel}: device node skipped (restored only with --devices)");
            return Ok(false);
        }
        clear(dir.as_raw_fd(), leaf, rel)?;
        let d = dir.as_raw_fd();
        let dev = libc::makedev(e.rdevmajor, e.rdevminor);
        match mknodat(Some(d), leaf, SFlag::from_bits_truncate(kind), Mode::from_bits_truncate(0o600), dev) {
            Ok(()) => {}
            Err(Errno::EPERM) if kind != S_IFIFO => {
                warn!("{rel}: device node skipped (creating one needs root)");
                return Ok(false);
            }
            Err(err) => return Err(err).with_context(|| format!("mknod {rel}")),
        }
        if self.opts.same_owner {
            let (u, g) = owner(e);
            fchownat(Some(d), leaf, u, g, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW).with_context(|| format!("chown {rel}"))?;
        }
        fchmodat(Some(d), leaf, Mode::from_bits_truncate(self.opts.perm(e.mode)), FchmodatFlags::NoFollowSymlink)
            .with_context(|| format!("chmod {rel}"))?;
        Ok(true)
    }

    fn symlink(&self, e: &Entry, dir: &OwnedFd, leaf: &str, rel: &str) -> Result<()> {
        clear(dir.as_raw_fd(), leaf, rel)?;
        let target = <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&e.data);
        symlinkat(target, Some(dir.as_raw_fd()), leaf).with_context(|| format!("symlink {rel}"))?;
        if self.opts.same_owner {
            let (u, g) = owner(e);
            fchownat(Some(dir.as_raw_fd()), leaf, u, g, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
                .with_context(|| format!("chown {rel}"))?;
        }
        Ok(())
    }
}

/// Extracts every member into `dir` (created if missing). Returns the number written.
pub fn extract(img: &Image, dir: &Path, opts: &Options) -> Result<usize> {
    check_names(img)?;
    let created = std::fs::symlink_metadata(dir).is_err();
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let root = File::open(dir).with_context(|| format!("opening {}", dir.display()))?;
    let mut x = Extractor { root: OwnedFd::from(root), opts, links: HashMap::new() };
    let mut dirs: Vec<(Vec<&str>, &Entry)> = Vec::new();
    let mut n = 0;
    for e in img.entries() {
        let comps = components(e);
        let rel = comps.join("/");
        if comps.is_empty() {
            if created {
                dirs.push((comps, e));
            } else {
                info!("{:?}: DIR existed before; its mode and owner are left as they are", e.name);
            }
            continue;
        }
        let pdir = parent(&x.root, &comps, true)?;
        let leaf = comps[comps.len() - 1];
        match e.mode & S_IFMT {
            _ if e.is_dir() => {
                x.dir(e, &pdir, leaf, &rel)?;
                dirs.push((comps, e));
            }
            _ if e.is_symlink() => x.symlink(e, &pdir, leaf, &rel)?,
            _ if e.is_file() => x.file(e, &pdir, leaf, &rel, &comps)?,
            kind @ (S_IFCHR | S_IFBLK | S_IFIFO) => {
                if !x.node(e, kind, &pdir, leaf, &rel)? {
                    continue;
                }
            }
            _ => {
                warn!("{rel}: socket or unknown type skipped");
                continue;
            }
        }
        n += 1;
    }
    // Folder modes last, deepest first: a read-only folder must not stop its own contents
    // being written.
    for (comps, e) in dirs.into_iter().rev() {
        let rel = if comps.is_empty() { ".".to_string() } else { comps.join("/") };
        let fd = if comps.is_empty() {
            x.root.try_clone()?
        } else {
            let pdir = parent(&x.root, &comps, false)?;
            open_dir(pdir.as_raw_fd(), comps[comps.len() - 1]).with_context(|| format!("opening {rel}"))?
        };
        if comps.is_empty() && opts.same_owner {
            let (u, g) = owner(e);
            fchown(fd.as_raw_fd(), u, g).with_context(|| format!("chown {rel}"))?;
        }
        fchmod(fd.as_raw_fd(), Mode::from_bits_truncate(opts.perm(e.mode))).with_context(|| format!("chmod {rel}"))?;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compress::Compression;
    use crate::newc::{S_IFDIR, S_IFLNK};
    use std::fs;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn img(entries: Vec<Entry>) -> Image {
        Image::single(Compression::None, entries)
    }

    #[test]
    fn hostile_names_write_nothing() {
        let outside = tempfile::tempdir().unwrap();
        let target = tempfile::tempdir().unwrap();
        let evil_dir = outside.path().to_string_lossy().into_owned();
        let cases = vec![
            vec![Entry::new("ok", S_IFREG | 0o644, b"x".to_vec()), Entry::new("../escape", S_IFREG | 0o644, b"x".to_vec())],
            vec![Entry::new("/etc/escape", S_IFREG | 0o644, b"x".to_vec())],
            vec![Entry::new("link", S_IFLNK | 0o777, evil_dir.clone().into_bytes()), Entry::new("link/escape", S_IFREG | 0o644, b"x".to_vec())],
            vec![Entry::new("link", S_IFLNK | 0o777, evil_dir.clone().into_bytes()), Entry::new("link/./escape", S_IFREG | 0o644, b"x".to_vec())],
            vec![Entry::new("a", S_IFDIR | 0o755, vec![]), Entry::new("a/../../escape", S_IFREG | 0o644, b"x".to_vec())],
        ];
        for entries in cases {
            assert!(extract(&img(entries), target.path(), &Options::default()).is_err());
            assert_eq!(fs::read_dir(target.path()).unwrap().count(), 0, "nothing written in the target");
            assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0, "nothing written outside");
        }
        // A link that already exists on disk is not followed either, at any depth.
        std::os::unix::fs::symlink(outside.path(), target.path().join("pre")).unwrap();
        for name in ["pre/escape", "pre/deeper/escape"] {
            let err = extract(&img(vec![Entry::new(name, S_IFREG | 0o644, b"x".to_vec())]), target.path(), &Options::default()).unwrap_err();
            assert!(format!("{err:#}").contains("symlink on disk"), "{err:#}");
        }
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
    }

    #[test]
    fn extracts_files_links_and_hardlinks() {
        let target = tempfile::tempdir().unwrap();
        let mut a = Entry::new("bin/a", S_IFREG | 0o755, vec![]);
        a.nlink = 2;
        a.ino = 7;
        let mut b = Entry::new("bin/b", S_IFREG | 0o755, b"data".to_vec());
        b.nlink = 2;
        b.ino = 7;
        let entries = vec![Entry::new("bin", S_IFDIR | 0o555, vec![]), a, b, Entry::new("sh", S_IFLNK | 0o777, b"bin/a".to_vec())];
        assert_eq!(extract(&img(entries), target.path(), &Options::default()).unwrap(), 4);
        assert_eq!(fs::read(target.path().join("bin/a")).unwrap(), b"data");
        assert_eq!(fs::read(target.path().join("sh")).unwrap(), b"data");
        let (ma, mb) = (fs::metadata(target.path().join("bin/a")).unwrap(), fs::metadata(target.path().join("bin/b")).unwrap());
        assert_eq!((ma.ino(), ma.nlink()), (mb.ino(), 2), "one inode, two names");
        assert_eq!(fs::metadata(target.path().join("bin")).unwrap().permissions().mode() & 0o777, 0o555);
        fs::set_permissions(target.path().join("bin"), fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn hard_link_to_a_member_turned_symlink_stays_inside() {
        let outside = tempfile::tempdir().unwrap();
        let canary = outside.path().join("canary");
        fs::write(&canary, b"keep").unwrap();
        fs::set_permissions(&canary, fs::Permissions::from_mode(0o640)).unwrap();
        let target = tempfile::tempdir().unwrap();
        let mut a = Entry::new("a", S_IFREG | 0o644, vec![]);
        (a.nlink, a.ino) = (2, 9);
        let mut b = Entry::new("b", S_IFREG | 0o6777, vec![]);
        (b.nlink, b.ino) = (2, 9);
        let evil = Entry::new("a", S_IFLNK | 0o777, canary.to_string_lossy().into_owned().into_bytes());
        let opts = Options { preserve_setuid: true, ..Options::default() };
        extract(&img(vec![a, evil, b]), target.path(), &opts).unwrap();
        let m = fs::symlink_metadata(&canary).unwrap();
        assert_eq!(m.permissions().mode() & 0o7777, 0o640);
        assert_eq!(fs::read(&canary).unwrap(), b"keep");
        let b = fs::symlink_metadata(target.path().join("b")).unwrap();
        assert!(b.is_file(), "b is a file of its own, not a link to the symlink");
        assert_eq!(b.permissions().mode() & 0o7777, 0o6777);
    }
}
