//! Unpacking an image into a folder without ever writing outside it.
//!
//! Every name is checked before anything is written: no absolute names, no `..`, and no name
//! that passes through a symlink made by an earlier member (a classic way for an archive to
//! write through `evil -> /etc`). While writing, no path component on disk is followed if it
//! is a symlink, so a folder that was prepared with links is not trusted either.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use log::warn;

use crate::image::Image;
use crate::newc::{Entry, S_IFBLK, S_IFCHR, S_IFIFO, S_IFMT};

/// Refuses names that could lead outside the target, before anything is written.
pub fn check_names(img: &Image) -> Result<()> {
    let mut links: BTreeSet<String> = BTreeSet::new();
    for e in img.entries() {
        if e.name.starts_with('/') {
            bail!("{:?}: absolute name; refusing to extract an archive that writes outside its folder", e.name);
        }
        let p = e.path();
        if p.split('/').any(|c| c == "..") {
            bail!("{:?}: name contains `..`; refusing to extract", e.name);
        }
        let mut prefix = String::new();
        for c in p.split('/').collect::<Vec<_>>().iter().rev().skip(1).rev() {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(c);
            if links.contains(&prefix) {
                bail!("{:?}: would be written through the symlink {prefix:?} made earlier in the archive; refusing to extract", e.name);
            }
        }
        if e.is_symlink() {
            links.insert(p.to_string());
        } else {
            links.remove(p);
        }
    }
    Ok(())
}

/// Makes the parent folders of `rel` under `root`, refusing any that is a symlink on disk.
fn parents(root: &Path, rel: &str) -> Result<PathBuf> {
    let mut cur = root.to_path_buf();
    let comps: Vec<&str> = rel.split('/').collect();
    for c in &comps[..comps.len() - 1] {
        cur.push(c);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_symlink() => bail!("{}: is a symlink on disk; refusing to write through it", cur.display()),
            Ok(m) if m.is_dir() => {}
            Ok(_) => bail!("{}: is not a folder", cur.display()),
            Err(_) => fs::create_dir(&cur).with_context(|| format!("creating {}", cur.display()))?,
        }
    }
    cur.push(comps[comps.len() - 1]);
    Ok(cur)
}

/// Removes whatever non-folder is at `p` (a symlink is removed, never followed).
fn clear(p: &Path) -> Result<()> {
    if let Ok(m) = fs::symlink_metadata(p) {
        if !m.is_dir() {
            fs::remove_file(p).with_context(|| format!("replacing {}", p.display()))?;
        }
    }
    Ok(())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Extracts every member into `dir` (created if missing). Returns the number written.
pub fn extract(img: &Image, dir: &Path) -> Result<usize> {
    check_names(img)?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let root = dir.canonicalize()?;
    let root_user = is_root();
    let mut links: BTreeMap<(u32, u32, u32), PathBuf> = BTreeMap::new();
    let mut dirs: Vec<(PathBuf, &Entry)> = Vec::new();
    let mut n = 0;
    for e in img.entries() {
        let rel = e.path();
        if rel == "." {
            dirs.push((root.clone(), e));
            continue;
        }
        let p = parents(&root, rel)?;
        let perm = fs::Permissions::from_mode(e.mode & 0o7777);
        match e.mode & S_IFMT {
            _ if e.is_dir() => {
                match fs::symlink_metadata(&p) {
                    Ok(m) if m.is_dir() => {}
                    _ => {
                        clear(&p)?;
                        fs::create_dir(&p).with_context(|| format!("creating {}", p.display()))?;
                    }
                }
                dirs.push((p.clone(), e));
            }
            _ if e.is_symlink() => {
                clear(&p)?;
                let target = String::from_utf8_lossy(&e.data).into_owned();
                std::os::unix::fs::symlink(&target, &p).with_context(|| format!("symlink {}", p.display()))?;
            }
            _ if e.is_file() => {
                clear(&p)?;
                let key = (e.devmajor, e.devminor, e.ino);
                let first = if e.nlink > 1 { links.get(&key).cloned() } else { None };
                if let Some(first) = first {
                    fs::hard_link(&first, &p).with_context(|| format!("linking {}", p.display()))?;
                    if !e.data.is_empty() {
                        let mut f = fs::OpenOptions::new().write(true).truncate(true).custom_flags(libc::O_NOFOLLOW).open(&p)?;
                        f.write_all(&e.data)?;
                    }
                } else {
                    let mut f = fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .custom_flags(libc::O_NOFOLLOW)
                        .open(&p)
                        .with_context(|| format!("creating {}", p.display()))?;
                    f.write_all(&e.data).with_context(|| format!("writing {}", p.display()))?;
                    if e.nlink > 1 {
                        links.insert(key, p.clone());
                    }
                }
                fs::set_permissions(&p, perm)?;
                let f = fs::File::options().write(true).custom_flags(libc::O_NOFOLLOW).open(&p)?;
                f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(e.mtime as u64))?;
            }
            kind @ (S_IFCHR | S_IFBLK | S_IFIFO) => {
                if !root_user && kind != S_IFIFO {
                    warn!("{rel}: device node skipped (creating one needs root)");
                    continue;
                }
                clear(&p)?;
                let dev = libc::makedev(e.rdevmajor, e.rdevminor);
                let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).context("NUL in path")?;
                // SAFETY: c is a valid NUL-terminated path; mknod does not retain it.
                if unsafe { libc::mknod(c.as_ptr(), kind | (e.mode & 0o7777), dev) } != 0 {
                    bail!("mknod {}: {}", p.display(), std::io::Error::last_os_error());
                }
            }
            _ => {
                warn!("{rel}: socket or unknown type skipped");
                continue;
            }
        }
        if root_user {
            std::os::unix::fs::lchown(&p, Some(e.uid), Some(e.gid)).with_context(|| format!("chown {}", p.display()))?;
        }
        n += 1;
    }
    // Folder modes last: a read-only folder must not stop its own contents being written.
    for (p, e) in dirs.into_iter().rev() {
        fs::set_permissions(&p, fs::Permissions::from_mode(e.mode & 0o7777))?;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compress::Compression;
    use crate::newc::{S_IFDIR, S_IFLNK, S_IFREG};

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
            vec![Entry::new("a", S_IFDIR | 0o755, vec![]), Entry::new("a/../../escape", S_IFREG | 0o644, b"x".to_vec())],
        ];
        for entries in cases {
            assert!(extract(&img(entries), target.path()).is_err());
            assert_eq!(fs::read_dir(target.path()).unwrap().count(), 0, "nothing written in the target");
            assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0, "nothing written outside");
        }
        // A link that already exists on disk is not followed either.
        std::os::unix::fs::symlink(outside.path(), target.path().join("pre")).unwrap();
        assert!(extract(&img(vec![Entry::new("pre/escape", S_IFREG | 0o644, b"x".to_vec())]), target.path()).is_err());
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
        assert_eq!(extract(&img(entries), target.path()).unwrap(), 4);
        assert_eq!(fs::read(target.path().join("bin/a")).unwrap(), b"data");
        assert_eq!(fs::read(target.path().join("sh")).unwrap(), b"data");
        assert_eq!(fs::metadata(target.path().join("bin")).unwrap().permissions().mode() & 0o777, 0o555);
        fs::set_permissions(target.path().join("bin"), fs::Permissions::from_mode(0o755)).unwrap();
    }
}
