//! Building an image from a config: a sorted in-memory tree, then one archive with fixed
//! metadata, so the same inputs always give the same bytes.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use log::{debug, info, warn};

use crate::config::{Config, DeviceKind, Loaded};
use crate::elf;
use crate::image::Image;
use crate::kmod::{self, Tree};
use crate::newc::{Entry, S_IFBLK, S_IFCHR, S_IFDIR, S_IFLNK, S_IFMT, S_IFREG};

const MAX_SYMLINKS: usize = 40;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Node {
    mode: u32,
    data: Vec<u8>,
    rdev: (u32, u32),
    /// Host (device, inode) of a file with several hard links: such files become one inode
    /// in the archive too, instead of one copy per name.
    link: Option<(u64, u64)>,
}

/// The tree being built, keyed by path without a leading slash.
#[derive(Default)]
pub struct Builder {
    nodes: BTreeMap<String, (Node, String)>,
}

fn host_mode(meta: &std::fs::Metadata) -> u32 {
    meta.permissions().mode() & 0o7777
}

impl Builder {
    /// `path` with every symlink already in the tree followed, so that a file put under
    /// `lib/` lands in `usr/lib/` when `lib` is a symlink, as it would when unpacked.
    fn canonical(&self, path: &str) -> Result<String> {
        let link = |p: &str| self.nodes.get(p).filter(|(n, _)| n.mode & S_IFMT == S_IFLNK).map(|(n, _)| String::from_utf8_lossy(&n.data).into_owned());
        crate::newc::resolve_in(path, false, link).with_context(|| format!("{path}: too many levels of symlinks in the image"))
    }

    fn put(&mut self, path: &str, node: Node, source: &str) -> Result<()> {
        let path = self.canonical(path)?;
        if path == "." {
            return Ok(());
        }
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent, 0o755, source)?;
        }
        match self.nodes.get(&path) {
            Some((old, _)) if old == &node => Ok(()),
            Some((old, _)) if old.mode & S_IFMT == S_IFDIR && node.mode & S_IFMT == S_IFDIR => Ok(()),
            Some((_, first)) => bail!("/{path} is given twice, by {first} and by {source}; keep one of them"),
            None => {
                self.nodes.insert(path, (node, source.to_string()));
                Ok(())
            }
        }
    }

    fn dir(&mut self, path: &str, mode: u32, source: &str) -> Result<()> {
        self.put(path, Node { mode: S_IFDIR | mode, data: vec![], rdev: (0, 0), link: None }, source)
    }

    /// A host file, kept as a hard link of the others of its inode.
    fn host_file(&mut self, path: &str, meta: &std::fs::Metadata, mode: u32, data: Vec<u8>, source: &str) -> Result<()> {
        use std::os::unix::fs::MetadataExt;
        let link = (meta.nlink() > 1).then(|| (meta.dev(), meta.ino()));
        self.put(path, Node { mode: S_IFREG | (mode & 0o7777), data, rdev: (0, 0), link }, source)
    }

    pub fn file(&mut self, path: &str, mode: u32, data: Vec<u8>, source: &str) -> Result<()> {
        self.put(path, Node { mode: S_IFREG | (mode & 0o7777), data, rdev: (0, 0), link: None }, source)
    }

    pub fn symlink(&mut self, path: &str, target: &str, source: &str) -> Result<()> {
        self.put(path, Node { mode: S_IFLNK | 0o777, data: target.as_bytes().to_vec(), rdev: (0, 0), link: None }, source)
    }

    /// Copies a host path at the same place in the image, recreating each symlink on the way
    /// (`/lib -> usr/lib`, `libc.so.6 -> libc-2.36.so`), and returns the real host path.
    pub fn host_path(&mut self, path: &Path, source: &str) -> Result<PathBuf> {
        let mut pending: Vec<std::ffi::OsString> = path.components().filter_map(|c| match c {
            std::path::Component::Normal(s) => Some(s.to_os_string()),
            _ => None,
        }).rev().collect();
        let mut cur = PathBuf::from("/");
        let mut hops = 0;
        while let Some(c) = pending.pop() {
            if c == ".." {
                cur.pop();
                continue;
            }
            cur.push(&c);
            let meta = std::fs::symlink_metadata(&cur).with_context(|| format!("{source}: {}", cur.display()))?;
            if meta.file_type().is_symlink() {
                hops += 1;
                if hops > MAX_SYMLINKS {
                    bail!("{source}: {}: too many levels of symlinks", path.display());
                }
                let target = std::fs::read_link(&cur)?;
                self.symlink(&cur.to_string_lossy(), &target.to_string_lossy(), source)?;
                cur.pop();
                if target.is_absolute() {
                    cur = PathBuf::from("/");
                }
                pending.extend(target.components().filter_map(|c| match c {
                    std::path::Component::Normal(s) => Some(s.to_os_string()),
                    std::path::Component::ParentDir => Some("..".into()),
                    _ => None,
                }).rev());
            } else if pending.is_empty() {
                if meta.is_file() {
                    let data = std::fs::read(&cur).with_context(|| format!("{source}: reading {}", cur.display()))?;
                    self.host_file(&cur.to_string_lossy(), &meta, host_mode(&meta), data, source)?;
                } else if meta.is_dir() {
                    self.dir(&cur.to_string_lossy(), host_mode(&meta), source)?;
                }
            }
        }
        Ok(cur)
    }

    /// Copies a host file or folder to `dest`; folders keep their symlinks as symlinks.
    fn copy_tree(&mut self, src: &Path, dest: &str, mode: Option<u32>, source: &str) -> Result<()> {
        let meta = std::fs::symlink_metadata(src).with_context(|| format!("{source}: {}", src.display()))?;
        if meta.file_type().is_symlink() {
            let t = std::fs::read_link(src)?;
            return self.symlink(dest, &t.to_string_lossy(), source);
        }
        if meta.is_dir() {
            self.dir(dest, host_mode(&meta), source)?;
            let mut names: Vec<_> = std::fs::read_dir(src)
                .with_context(|| format!("{source}: listing {}", src.display()))?
                .map(|e| e.map(|e| e.file_name()))
                .collect::<std::io::Result<_>>()?;
            names.sort();
            for n in names {
                let d = format!("{}/{}", dest.trim_end_matches('/'), n.to_string_lossy());
                self.copy_tree(&src.join(&n), &d, mode, source)?;
            }
            return Ok(());
        }
        if !meta.is_file() {
            bail!("{source}: {} is neither a file, a folder nor a symlink; declare device nodes under [[devices]]", src.display());
        }
        let data = std::fs::read(src).with_context(|| format!("{source}: reading {}", src.display()))?;
        self.host_file(dest, &meta, mode.unwrap_or(host_mode(&meta)), data, source)
    }

    /// Adds the interpreter and the shared-library closure of an ELF file already read.
    fn libraries(&mut self, data: &[u8], origin: &Path, dirs: &[String], source: &str) -> Result<()> {
        let mut todo = vec![(data.to_vec(), origin.to_path_buf())];
        let mut seen = BTreeSet::new();
        while let Some((data, origin)) = todo.pop() {
            let Some(d) = elf::dynamic(&data).with_context(|| format!("{source}: {}", origin.display()))? else { continue };
            if let Some(interp) = &d.interpreter {
                if seen.insert(interp.clone()) {
                    self.host_path(Path::new(interp), source)?;
                }
            }
            let dir = origin.parent().unwrap_or(Path::new("/")).to_string_lossy().into_owned();
            for lib in &d.needed {
                if !seen.insert(lib.clone()) {
                    continue;
                }
                let found = elf::search_path(&d, &dir, dirs).into_iter().map(|p| Path::new(&p).join(lib)).find(|p| p.is_file());
                let Some(found) = found else {
                    bail!("{source}: {} needs {lib}, found in none of {:?}; add its folder to `library_dirs`", origin.display(), dirs);
                };
                debug!("{}: {lib} -> {}", origin.display(), found.display());
                let real = self.host_path(&found, source)?;
                let bytes = std::fs::read(&real)?;
                todo.push((bytes, real));
            }
        }
        Ok(())
    }

    /// The tree as archive members: sorted by path, numbered in order, owned by root, all
    /// with the same mtime. Hard links share the inode of their first name and, as GNU cpio
    /// writes them, carry the data on their last name only.
    pub fn entries(&self, mtime: u32) -> Vec<Entry> {
        let mut out = Vec::with_capacity(self.nodes.len() + 1);
        let mut root = Entry::new(".", S_IFDIR | 0o755, vec![]);
        root.ino = 1;
        root.mtime = mtime;
        out.push(root);
        let mut groups: BTreeMap<(u64, u64), Vec<usize>> = BTreeMap::new();
        for (i, (_, (n, _))) in self.nodes.iter().enumerate() {
            if let Some(k) = n.link {
                groups.entry(k).or_default().push(i + 1);
            }
        }
        for (i, (path, (n, _))) in self.nodes.iter().enumerate() {
            let mut e = Entry::new(path.clone(), n.mode, n.data.clone());
            e.ino = i as u32 + 2;
            e.mtime = mtime;
            (e.rdevmajor, e.rdevminor) = n.rdev;
            out.push(e);
        }
        for members in groups.values().filter(|m| m.len() > 1) {
            let (ino, last) = (out[members[0]].ino, *members.last().unwrap());
            for &m in members {
                out[m].ino = ino;
                out[m].nlink = members.len() as u32;
                if m != last {
                    out[m].data = Vec::new();
                }
            }
        }
        out
    }
}

/// Builds the image a loaded config describes.
pub fn build(loaded: &Loaded) -> Result<Image> {
    let c: &Config = &loaded.config;
    let mut b = Builder::default();
    // Host layout first (binaries bring `/lib -> usr/lib` style symlinks), so that later
    // files and modules land through those links instead of clashing with them.
    for bin in &c.binaries {
        let src = format!("binaries: {}", bin.display());
        let real = b.host_path(bin, &src)?;
        let data = std::fs::read(&real)?;
        b.libraries(&data, &real, &c.library_dirs, &src)?;
    }
    let init = std::fs::read(&loaded.init).with_context(|| format!("reading init {}", loaded.init.display()))?;
    b.libraries(&init, &loaded.init, &c.library_dirs, "init")?;
    b.file("init", 0o755, init, "init")?;
    for s in &c.symlinks {
        b.symlink(&s.path, &s.target, &format!("symlinks: {}", s.path))?;
    }
    for d in &c.dirs {
        b.dir(&d.path, d.mode & 0o7777, &format!("dirs: {}", d.path))?;
    }
    for f in &c.files {
        let dest = f.dest.clone().unwrap_or_else(|| f.src.to_string_lossy().into_owned());
        b.copy_tree(&f.src, &dest, f.mode, &format!("files: {}", f.src.display()))?;
    }
    for d in &c.devices {
        let kind = if d.kind == DeviceKind::Char { S_IFCHR } else { S_IFBLK };
        b.put(&d.path, Node { mode: kind | (d.mode & 0o7777), data: vec![], rdev: (d.major, d.minor), link: None }, &format!("devices: {}", d.path))?;
    }
    if let (Some(version), Some(dir)) = (&loaded.kernel_version, &loaded.modules_dir) {
        modules(&mut b, c, version, dir)?;
    }
    if let Some(ca) = &c.ca_cert {
        let pem = std::fs::read(ca).with_context(|| format!("ca_cert: reading {}", ca.display()))?;
        check_ca_pem(&pem).with_context(|| format!("ca_cert = {}", ca.display()))?;
        let dest = proto::tls::IMAGE_CA_PATH.trim_start_matches('/');
        b.file(dest, 0o644, pem, &format!("ca_cert: {}", ca.display()))?;
        info!("CA certificate {} at {}", ca.display(), proto::tls::IMAGE_CA_PATH);
    }
    let entries = b.entries(c.mtime);
    info!("{} entries, {} bytes before compression", entries.len(), entries.iter().map(|e| e.data.len()).sum::<usize>());
    let mut img = Image::single(c.compression, entries);
    img.level = c.compression_level;
    Ok(img)
}

/// A boot image is readable by anyone who boots it: it may carry the CA's certificate, never
/// a key (a key here would let anyone on the LAN pass for the boot server).
fn check_ca_pem(pem: &[u8]) -> Result<()> {
    let text = String::from_utf8_lossy(pem);
    if text.contains("PRIVATE KEY") {
        bail!("holds a private key; give the CA's certificate (ca.pem), never its key");
    }
    if !text.contains("-----BEGIN CERTIFICATE-----") {
        bail!("no PEM certificate in it; give the ca.pem that `bootserver ca init` printed");
    }
    Ok(())
}

fn modules(b: &mut Builder, c: &Config, version: &str, dir: &Path) -> Result<()> {
    let tree = Tree::open(dir, version)?;
    let mut wanted = BTreeSet::new();
    for n in &c.modules.names {
        let name = kmod::module_name(n);
        if tree.dep.contains_key(&name) {
            wanted.insert(name);
        } else if tree.builtin.contains(&name) {
            info!("module {n} is built into kernel {version}; nothing to add");
        } else {
            let by_alias = tree.by_alias(n);
            if by_alias.is_empty() {
                bail!("modules.names: {n:?} is neither a module nor an alias of kernel {version} ({}); check the spelling with `modinfo -k {version} {n}`", dir.display());
            }
            wanted.extend(by_alias);
        }
    }
    for a in &c.modules.aliases {
        let m = tree.by_alias(a);
        if m.is_empty() {
            bail!("modules.aliases: no module of kernel {version} matches {a:?}");
        }
        wanted.extend(m.into_iter().filter(|m| tree.dep.contains_key(m)));
    }
    for class in &c.modules.classes {
        wanted.extend(tree.by_class(class)?);
    }
    let files = tree.closure(&wanted)?;
    info!("{} modules asked for, {} with dependencies", wanted.len(), files.len());
    let base = format!("lib/modules/{version}");
    let rename = |rel: &str| if c.modules.decompress { kmod::decompressed_name(rel) } else { rel.to_string() };
    let mut firmware = BTreeSet::new();
    for rel in &files {
        let raw = std::fs::read(dir.join(rel)).with_context(|| format!("reading module {}", dir.join(rel).display()))?;
        let plain = kmod::module_bytes(rel, raw.clone())?;
        if c.modules.firmware {
            match kmod::modinfo(&plain) {
                Ok(info) => firmware.extend(info.into_iter().filter(|(k, _)| k == "firmware").map(|(_, v)| v)),
                Err(e) => warn!("{rel}: {e:#}"),
            }
        }
        let data = if c.modules.decompress { plain } else { raw };
        b.file(&format!("{base}/{}", rename(rel)), 0o644, data, "modules")?;
    }
    // modules.dep and modules.alias for the modules in the image only, so a loader (the
    // agent, or busybox modprobe) needs nothing else.
    let mut dep = String::new();
    for (rel, deps) in tree.dep.values() {
        if files.contains(rel) {
            let deps: Vec<String> = deps.iter().map(|d| rename(d)).collect();
            dep.push_str(&format!("{}:{}{}\n", rename(rel), if deps.is_empty() { "" } else { " " }, deps.join(" ")));
        }
    }
    b.file(&format!("{base}/modules.dep"), 0o644, dep.into_bytes(), "modules")?;
    let names: BTreeSet<String> = files.iter().map(|r| kmod::module_name(r)).collect();
    let alias: String = tree.alias.iter().filter(|(_, m)| names.contains(m)).map(|(p, m)| format!("alias {p} {m}\n")).collect();
    b.file(&format!("{base}/modules.alias"), 0o644, alias.into_bytes(), "modules")?;
    for extra in ["modules.builtin", "modules.builtin.modinfo", "modules.order"] {
        if let Ok(data) = std::fs::read(dir.join(extra)) {
            b.file(&format!("{base}/{extra}"), 0o644, data, "modules")?;
        }
    }
    for fw in firmware {
        let found = c.modules.firmware_dirs.iter().flat_map(|d| ["", ".zst", ".xz"].map(|z| d.join(format!("{fw}{z}")))).find(|p| p.is_file());
        match found {
            Some(p) => {
                let data = std::fs::read(&p)?;
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                let dest = match fw.rsplit_once('/') {
                    Some((d, _)) => format!("lib/firmware/{d}/{name}"),
                    None => format!("lib/firmware/{name}"),
                };
                b.file(&dest, 0o644, data, "firmware")?;
            }
            None => debug!("firmware {fw} not found in {:?}", c.modules.firmware_dirs),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinked_folders_are_followed_when_placing() {
        let mut b = Builder::default();
        b.symlink("lib", "usr/lib", "t").unwrap();
        b.file("/lib/modules/x.ko", 0o644, b"m".to_vec(), "t").unwrap();
        let names: Vec<_> = b.entries(0).into_iter().map(|e| e.name).collect();
        assert_eq!(names, [".", "lib", "usr", "usr/lib", "usr/lib/modules", "usr/lib/modules/x.ko"]);
    }

    #[test]
    fn hard_links_stay_one_inode() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a"), b"shared").unwrap();
        std::fs::hard_link(d.path().join("a"), d.path().join("b")).unwrap();
        std::fs::write(d.path().join("c"), b"alone").unwrap();
        let mut b = Builder::default();
        b.copy_tree(d.path(), "/x", None, "t").unwrap();
        let e = b.entries(0);
        let (a, bb, c) = (&e[2], &e[3], &e[4]);
        assert_eq!((a.name.as_str(), bb.name.as_str(), c.name.as_str()), ("x/a", "x/b", "x/c"));
        assert_eq!((a.ino, a.nlink, a.data.len()), (bb.ino, 2, 0));
        assert_eq!(bb.data, b"shared");
        assert_eq!((c.nlink, c.data.as_slice()), (1, &b"alone"[..]));
        let img = Image::single(crate::compress::Compression::None, e);
        let v = img.view();
        assert_eq!(v.data(v.get("x/a").unwrap()), b"shared");
    }

    #[test]
    fn clashes_name_both_sources() {
        let mut b = Builder::default();
        b.file("etc/a", 0o644, b"1".to_vec(), "first").unwrap();
        b.file("etc/a", 0o644, b"1".to_vec(), "same").unwrap();
        let e = b.file("etc/a", 0o644, b"2".to_vec(), "second").unwrap_err().to_string();
        assert!(e.contains("first") && e.contains("second"), "{e}");
    }

    #[test]
    fn host_binary_brings_its_libraries() {
        let mut b = Builder::default();
        let real = b.host_path(Path::new("/bin/sh"), "t").unwrap();
        let data = std::fs::read(&real).unwrap();
        b.libraries(&data, &real, &elf::default_library_dirs(), "t").unwrap();
        let img = Image::single(crate::compress::Compression::None, b.entries(0));
        let v = img.view();
        let (_, sh) = v.resolve("bin/sh").unwrap();
        let d = elf::dynamic(&sh.data).unwrap().unwrap();
        assert!(v.resolve(d.interpreter.as_deref().unwrap()).is_some());
        assert!(v.resolve("lib/x86_64-linux-gnu/libc.so.6").is_some());
    }

    #[test]
    fn the_ca_certificate_lands_where_the_agent_reads_it_and_a_key_never_does() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("init"), b"#!/bin/sh\n").unwrap();
        let cert = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        std::fs::write(d.path().join("ca.pem"), cert).unwrap();
        let key = format!("{cert}-----BEGIN PRIVATE KEY-----\nMIGH\n-----END PRIVATE KEY-----\n");
        std::fs::write(d.path().join("with-key.pem"), key).unwrap();
        std::fs::write(d.path().join("empty.pem"), "").unwrap();
        let cfg = d.path().join("c.toml");
        let load = |ca: &str| {
            std::fs::write(&cfg, format!("compression = \"none\"\ninit = \"init\"\nca_cert = \"{ca}\"\n")).unwrap();
            Config::load(&cfg).unwrap()
        };
        let img = build(&load("ca.pem")).unwrap();
        let v = img.view();
        let (_, e) = v.resolve(proto::tls::IMAGE_CA_PATH.trim_start_matches('/')).expect("no CA in the image");
        assert_eq!(e.data, cert.as_bytes());
        assert_eq!(e.mode & 0o7777, 0o644);
        let err = format!("{:#}", build(&load("with-key.pem")).err().unwrap());
        assert!(err.contains("private key") && err.contains("with-key.pem"), "{err}");
        let err = format!("{:#}", build(&load("empty.pem")).err().unwrap());
        assert!(err.contains("no PEM certificate"), "{err}");
    }
}
