//! A read-only view of exported folders, as an NFSv3 file system for `nfsserve`.
//!
//! File ids are `(export number + 1) << 56 | inode`. A file handle is the id and a MAC of it
//! (HMAC-SHA256, truncated) under a key of its export, derived from a secret kept in the state
//! dir and the export's name and path. So a handle cannot be guessed, one export's handle (or
//! one with its id changed to another export's) does not resolve, and the pseudo-root above the
//! exports has no handle at all; yet handles stay valid across a restart of the boot server: a
//! thin client whose root is mounted from here keeps running while the server restarts. The
//! id -> path map comes from walking each export (rewalked when an unknown id shows up, since an
//! admin may have updated the tree).
//!
//! Nothing here follows a symlink: attributes come from `lstat`, READLINK returns the link,
//! reads open with `O_NOFOLLOW` and check the inode, so no path outside an export is ever read.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use async_trait::async_trait;
use sha2::{Digest, Sha256};
use nfsserve::nfs::{
    fattr3, fileid3, filename3, fsinfo3, ftype3, nfs_fh3, nfspath3, nfsstat3, nfstime3, post_op_attr, sattr3, specdata3,
};
use nfsserve::vfs::{DirEntry, NFSFileSystem, ReadDirResult, VFSCapabilities};

/// Largest READ answered; bigger requests are cut to this (the client asks again).
pub const MAX_READ: u32 = 1 << 20;
const ROOT_ID: fileid3 = 1;
const INODE_BITS: u32 = 56;
/// The id, then [`MAC_LEN`] bytes of its MAC.
const HANDLE_LEN: usize = 8 + MAC_LEN;
const MAC_LEN: usize = 16;
/// The secret behind every handle, in the state dir.
pub const KEY_FILE: &str = "nfs-handle.key";
pub type HandleKey = [u8; 32];
/// Open files kept for READs. A client reads a file in many READs of up to [`MAX_READ`]; an
/// open, a stat and a close for each one cost as much as the copy on a fast link.
const OPEN_FILES: usize = 64;

/// One exported folder: `name` is what clients mount (`/name`).
#[derive(Debug, Clone)]
pub struct Export {
    pub name: String,
    pub path: PathBuf,
}

#[derive(Debug, Default)]
struct Index {
    /// id -> path of every object seen in the exports.
    paths: HashMap<fileid3, PathBuf>,
    last_walk: Option<Instant>,
}

#[derive(Clone)]
pub struct ExportFs {
    exports: Arc<Vec<Export>>,
    /// The exports' root device and inode, to tell export roots from other dirs.
    index: Arc<RwLock<Index>>,
    /// One key per export (same order), for the MACs in its handles.
    keys: Arc<Vec<HandleKey>>,
    /// Changes with the key: the cookie verifier of READDIR.
    serverid: [u8; 8],
    /// id -> the open regular file it names (checked against the id's inode when opened).
    open: Arc<Mutex<HashMap<fileid3, Arc<std::fs::File>>>>,
}

/// The export (its index) that file `id` belongs to; none for the pseudo-root.
pub fn export_of(id: fileid3) -> Option<usize> {
    let e = (id >> INODE_BITS) as usize;
    e.checked_sub(1)
}

fn make_id(export: usize, ino: u64) -> fileid3 {
    ((export as u64 + 1) << INODE_BITS) | (ino & ((1 << INODE_BITS) - 1))
}

/// HMAC-SHA256 (RFC 2104) of the parts, each prefixed with its length so that no two lists
/// of parts read the same.
fn hmac(key: &HandleKey, parts: &[&[u8]]) -> HandleKey {
    let mut ipad = [0x36u8; 64];
    let mut opad = [0x5cu8; 64];
    for (i, k) in key.iter().enumerate() {
        ipad[i] ^= k;
        opad[i] ^= k;
    }
    let mut inner = Sha256::new();
    inner.update(ipad);
    for p in parts {
        inner.update((p.len() as u64).to_le_bytes());
        inner.update(p);
    }
    let mut outer = Sha256::new();
    outer.update(opad);
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// The handle key in `state_dir`, made (random, mode 0600) on first use. It survives restarts
/// so that clients keep their handles; delete the file to invalidate every handle ever given.
pub fn handle_key(state_dir: &Path) -> anyhow::Result<HandleKey> {
    let path = state_dir.join(KEY_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => match HandleKey::try_from(bytes.as_slice()) {
            Ok(key) => return Ok(key),
            Err(_) => log::warn!(
                "nfs: {} holds {} bytes, not 32; making a new key (clients' handles go stale)",
                path.display(),
                bytes.len()
            ),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading the NFS handle key {}", path.display())),
    }
    let mut key = HandleKey::default();
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut key);
    crate::statefile::write_private(&path, &key)?;
    Ok(key)
}

impl ExportFs {
    pub fn new(exports: Vec<Export>, key: &HandleKey) -> std::io::Result<Self> {
        let mut keys = Vec::new();
        for e in &exports {
            if !e.path.is_dir() {
                return Err(std::io::Error::other(format!("{} is not a folder", e.path.display())));
            }
            // Name and path both: a handle stays with the folder it was made for, even when
            // the config reorders, renames or repoints exports.
            keys.push(hmac(key, &[b"export", e.name.as_bytes(), e.path.as_os_str().as_bytes()]));
        }
        let mut serverid = [0u8; 8];
        serverid.copy_from_slice(&hmac(key, &[b"cookieverf"])[..8]);
        let fs = ExportFs {
            exports: Arc::new(exports),
            index: Arc::default(),
            keys: Arc::new(keys),
            serverid,
            open: Arc::default(),
        };
        fs.walk();
        Ok(fs)
    }

    pub fn exports(&self) -> &[Export] {
        &self.exports
    }

    /// Rebuilds the id -> path map from the trees on disk.
    fn walk(&self) -> usize {
        let mut paths = HashMap::new();
        for (i, e) in self.exports.iter().enumerate() {
            let mut stack = vec![e.path.clone()];
            while let Some(p) = stack.pop() {
                let Ok(meta) = std::fs::symlink_metadata(&p) else { continue };
                paths.insert(make_id(i, meta.ino()), p.clone());
                if meta.is_dir() {
                    if let Ok(rd) = std::fs::read_dir(&p) {
                        stack.extend(rd.flatten().map(|d| d.path()));
                    }
                }
            }
        }
        let n = paths.len();
        let mut idx = self.index.write().unwrap_or_else(|e| e.into_inner());
        idx.paths = paths;
        idx.last_walk = Some(Instant::now());
        log::debug!("nfs: indexed {n} objects");
        n
    }

    fn path_of(&self, id: fileid3) -> Result<PathBuf, nfsstat3> {
        if let Some(p) = self.index.read().unwrap_or_else(|e| e.into_inner()).paths.get(&id) {
            return Ok(p.clone());
        }
        if export_of(id).is_none_or(|e| e >= self.exports.len()) {
            return Err(nfsstat3::NFS3ERR_BADHANDLE);
        }
        // The tree may have changed since the last walk; walk again, but not on every bad id a
        // client makes up.
        let recent = self
            .index
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .last_walk
            .is_some_and(|t| t.elapsed() < Duration::from_secs(5));
        if !recent {
            self.walk();
            if let Some(p) = self.index.read().unwrap_or_else(|e| e.into_inner()).paths.get(&id) {
                return Ok(p.clone());
            }
        }
        Err(nfsstat3::NFS3ERR_STALE)
    }

    fn remember(&self, id: fileid3, path: PathBuf) {
        self.index.write().unwrap_or_else(|e| e.into_inner()).paths.insert(id, path);
    }

    /// The open file `id` names, from the cache or opened now (never through a symlink).
    fn open_file(&self, id: fileid3) -> Result<Arc<std::fs::File>, nfsstat3> {
        if let Some(f) = self.open.lock().unwrap_or_else(|e| e.into_inner()).get(&id) {
            return Ok(f.clone());
        }
        let path = self.path_of(id)?;
        let export = export_of(id).ok_or(nfsstat3::NFS3ERR_BADHANDLE)?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&path)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ELOOP) => nfsstat3::NFS3ERR_INVAL,
                Some(libc::ENOENT) => nfsstat3::NFS3ERR_STALE,
                Some(libc::EACCES) => nfsstat3::NFS3ERR_ACCES,
                _ => nfsstat3::NFS3ERR_IO,
            })?;
        let meta = file.metadata().map_err(|_| nfsstat3::NFS3ERR_IO)?;
        if make_id(export, meta.ino()) != id {
            return Err(nfsstat3::NFS3ERR_STALE);
        }
        if meta.is_dir() {
            return Err(nfsstat3::NFS3ERR_ISDIR);
        }
        if !meta.is_file() {
            return Err(nfsstat3::NFS3ERR_INVAL);
        }
        let file = Arc::new(file);
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        // Clients read a few files at a time; dropping them all at the limit keeps this simple
        // and bounded.
        if open.len() >= OPEN_FILES {
            open.clear();
        }
        open.insert(id, file.clone());
        Ok(file)
    }

    fn root_attr(&self) -> fattr3 {
        let t = nfstime3 { seconds: 0, nseconds: 0 };
        fattr3 {
            ftype: ftype3::NF3DIR,
            mode: 0o555,
            nlink: 2 + self.exports.len() as u32,
            uid: 0,
            gid: 0,
            size: 4096,
            used: 4096,
            rdev: specdata3::default(),
            fsid: 0,
            fileid: ROOT_ID,
            atime: t,
            mtime: t,
            ctime: t,
        }
    }

    fn attr(&self, id: fileid3) -> Result<fattr3, nfsstat3> {
        if id == ROOT_ID {
            return Ok(self.root_attr());
        }
        let path = self.path_of(id)?;
        let meta = std::fs::symlink_metadata(&path).map_err(|_| nfsstat3::NFS3ERR_STALE)?;
        let export = export_of(id).ok_or(nfsstat3::NFS3ERR_BADHANDLE)?;
        if make_id(export, meta.ino()) != id {
            // Replaced since it was indexed: the handle refers to a file that is gone.
            return Err(nfsstat3::NFS3ERR_STALE);
        }
        Ok(read_only_attr(id, &meta))
    }

    /// The MAC in the handle of `id`, under its export's key; none for an id outside every
    /// export (the pseudo-root, or a made-up export number).
    fn mac(&self, id: fileid3) -> Option<[u8; MAC_LEN]> {
        let key = self.keys.get(export_of(id)?)?;
        let mut mac = [0u8; MAC_LEN];
        mac.copy_from_slice(&hmac(key, &[&id.to_le_bytes()])[..MAC_LEN]);
        Some(mac)
    }

    fn export_index_by_name(&self, name: &[u8]) -> Option<usize> {
        self.exports.iter().position(|e| e.name.trim_start_matches('/').as_bytes() == name)
    }
}

fn read_only_attr(id: fileid3, meta: &std::fs::Metadata) -> fattr3 {
    let mut attr = nfsserve::fs_util::metadata_to_fattr3(id, meta);
    // Read-only export: never advertise write bits.
    attr.mode &= !0o222;
    attr
}

/// `pread(2)` of up to `want` bytes at `offset` into fresh memory, without zeroing it first
/// (std's `read_at` needs an initialised buffer; zeroing a megabyte per READ showed in profiles).
fn pread_vec(file: &std::fs::File, offset: u64, want: usize) -> std::io::Result<Vec<u8>> {
    let mut buf: Vec<u8> = Vec::with_capacity(want);
    while buf.len() < want {
        let spare = buf.spare_capacity_mut();
        // SAFETY: the kernel writes at most `spare.len()` bytes into the vector's spare capacity,
        // and `set_len` only covers the bytes it reported as written.
        let n = unsafe {
            libc::pread(
                file.as_raw_fd(),
                spare.as_mut_ptr().cast(),
                spare.len(),
                (offset + buf.len() as u64) as libc::off_t,
            )
        };
        match n {
            0 => break,
            n if n > 0 => unsafe { buf.set_len(buf.len() + n as usize) },
            _ => {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(buf)
}

fn valid_name(name: &[u8]) -> bool {
    !name.is_empty() && name.len() <= 255 && !name.contains(&b'/') && !name.contains(&0)
}

#[async_trait]
impl NFSFileSystem for ExportFs {
    fn capabilities(&self) -> VFSCapabilities {
        VFSCapabilities::ReadOnly
    }

    fn root_dir(&self) -> fileid3 {
        ROOT_ID
    }

    async fn lookup(&self, dirid: fileid3, filename: &filename3) -> Result<fileid3, nfsstat3> {
        let name: &[u8] = filename;
        if dirid == ROOT_ID {
            if name == b"." || name == b".." {
                return Ok(ROOT_ID);
            }
            let i = self.export_index_by_name(name).ok_or(nfsstat3::NFS3ERR_NOENT)?;
            let meta = std::fs::symlink_metadata(&self.exports[i].path).map_err(|_| nfsstat3::NFS3ERR_IO)?;
            let id = make_id(i, meta.ino());
            self.remember(id, self.exports[i].path.clone());
            return Ok(id);
        }
        let dir = self.path_of(dirid)?;
        let export = export_of(dirid).ok_or(nfsstat3::NFS3ERR_BADHANDLE)?;
        if !std::fs::symlink_metadata(&dir).map(|m| m.is_dir()).unwrap_or(false) {
            return Err(nfsstat3::NFS3ERR_NOTDIR);
        }
        if name == b"." {
            return Ok(dirid);
        }
        if name == b".." {
            // `..` of an export's root stays at that root: nothing above it is reachable.
            if dir == self.exports[export].path {
                return Ok(dirid);
            }
            let parent = dir.parent().ok_or(nfsstat3::NFS3ERR_NOENT)?;
            let meta = std::fs::symlink_metadata(parent).map_err(|_| nfsstat3::NFS3ERR_IO)?;
            return Ok(make_id(export, meta.ino()));
        }
        if !valid_name(name) {
            return Err(nfsstat3::NFS3ERR_NOENT);
        }
        let path = dir.join(OsStr::from_bytes(name));
        let meta = std::fs::symlink_metadata(&path).map_err(|_| nfsstat3::NFS3ERR_NOENT)?;
        let id = make_id(export, meta.ino());
        self.remember(id, path);
        Ok(id)
    }

    async fn getattr(&self, id: fileid3) -> Result<fattr3, nfsstat3> {
        self.attr(id)
    }

    async fn setattr(&self, _id: fileid3, _setattr: sattr3) -> Result<fattr3, nfsstat3> {
        Err(nfsstat3::NFS3ERR_ROFS)
    }

    async fn read(&self, id: fileid3, offset: u64, count: u32) -> Result<(Vec<u8>, bool), nfsstat3> {
        let file = self.open_file(id)?;
        // The length now, not when it was opened: the file may have grown or shrunk since.
        let len = file.metadata().map_err(|_| nfsstat3::NFS3ERR_IO)?.len();
        if offset >= len {
            return Ok((Vec::new(), true));
        }
        let want = (count.min(MAX_READ) as u64).min(len - offset) as usize;
        let buf = pread_vec(&file, offset, want).map_err(|_| nfsstat3::NFS3ERR_IO)?;
        let end = offset + buf.len() as u64 >= len;
        Ok((buf, end))
    }

    async fn write(&self, _id: fileid3, _offset: u64, _data: &[u8]) -> Result<fattr3, nfsstat3> {
        Err(nfsstat3::NFS3ERR_ROFS)
    }

    async fn create(
        &self,
        _dirid: fileid3,
        _filename: &filename3,
        _attr: sattr3,
    ) -> Result<(fileid3, fattr3), nfsstat3> {
        Err(nfsstat3::NFS3ERR_ROFS)
    }

    async fn create_exclusive(&self, _dirid: fileid3, _filename: &filename3) -> Result<fileid3, nfsstat3> {
        Err(nfsstat3::NFS3ERR_ROFS)
    }

    async fn mkdir(&self, _dirid: fileid3, _dirname: &filename3) -> Result<(fileid3, fattr3), nfsstat3> {
        Err(nfsstat3::NFS3ERR_ROFS)
    }

    async fn remove(&self, _dirid: fileid3, _filename: &filename3) -> Result<(), nfsstat3> {
        Err(nfsstat3::NFS3ERR_ROFS)
    }

    async fn rename(
        &self,
        _from_dirid: fileid3,
        _from_filename: &filename3,
        _to_dirid: fileid3,
        _to_filename: &filename3,
    ) -> Result<(), nfsstat3> {
        Err(nfsstat3::NFS3ERR_ROFS)
    }

    async fn readdir(
        &self,
        dirid: fileid3,
        start_after: fileid3,
        max_entries: usize,
    ) -> Result<ReadDirResult, nfsstat3> {
        // Entries are sorted by id so that the cookie (the last id sent) finds its place again
        // without keeping per-client state.
        let mut all: Vec<(fileid3, Vec<u8>, PathBuf, std::fs::Metadata)> = Vec::new();
        if dirid == ROOT_ID {
            for (i, e) in self.exports.iter().enumerate() {
                if let Ok(meta) = std::fs::symlink_metadata(&e.path) {
                    let name = e.name.trim_start_matches('/').as_bytes().to_vec();
                    all.push((make_id(i, meta.ino()), name, e.path.clone(), meta));
                }
            }
        } else {
            let dir = self.path_of(dirid)?;
            let export = export_of(dirid).ok_or(nfsstat3::NFS3ERR_BADHANDLE)?;
            let rd = std::fs::read_dir(&dir).map_err(|e| match e.raw_os_error() {
                Some(libc::ENOTDIR) => nfsstat3::NFS3ERR_NOTDIR,
                _ => nfsstat3::NFS3ERR_IO,
            })?;
            for entry in rd.flatten() {
                // DirEntry::metadata is an lstat relative to the open directory: symlinks stay
                // links, and this one stat serves both the id and the attributes.
                if let Ok(meta) = entry.metadata() {
                    all.push((make_id(export, meta.ino()), entry.file_name().as_bytes().to_vec(), entry.path(), meta));
                }
            }
        }
        all.sort_by_key(|e| e.0);
        let total = all.len();
        let start = if start_after == 0 {
            0
        } else {
            match all.binary_search_by_key(&start_after, |e| e.0) {
                Ok(i) => i + 1,
                Err(_) => return Err(nfsstat3::NFS3ERR_BAD_COOKIE),
            }
        };
        let page = all.into_iter().skip(start).take(max_entries);
        let mut entries = Vec::new();
        {
            let mut idx = self.index.write().unwrap_or_else(|e| e.into_inner());
            for (id, name, path, meta) in page {
                idx.paths.insert(id, path);
                entries.push(DirEntry { fileid: id, name: name.into(), attr: read_only_attr(id, &meta) });
            }
        }
        let end = start + entries.len() >= total;
        Ok(ReadDirResult { entries, end })
    }

    async fn symlink(
        &self,
        _dirid: fileid3,
        _linkname: &filename3,
        _symlink: &nfspath3,
        _attr: &sattr3,
    ) -> Result<(fileid3, fattr3), nfsstat3> {
        Err(nfsstat3::NFS3ERR_ROFS)
    }

    async fn readlink(&self, id: fileid3) -> Result<nfspath3, nfsstat3> {
        let path = self.path_of(id)?;
        let target = std::fs::read_link(&path).map_err(|_| nfsstat3::NFS3ERR_INVAL)?;
        Ok(target.as_os_str().as_bytes().to_vec().into())
    }

    fn id_to_fh(&self, id: fileid3) -> nfs_fh3 {
        let mut data = Vec::with_capacity(HANDLE_LEN);
        data.extend_from_slice(&id.to_le_bytes());
        // The pseudo-root gets a handle that never resolves: nothing above an export is
        // reachable by handle.
        data.extend_from_slice(&self.mac(id).unwrap_or_default());
        nfs_fh3 { data }
    }

    fn fh_to_id(&self, fh: &nfs_fh3) -> Result<fileid3, nfsstat3> {
        let (id, mac) = fh.data.split_first_chunk::<8>().ok_or(nfsstat3::NFS3ERR_BADHANDLE)?;
        if mac.len() != MAC_LEN {
            return Err(nfsstat3::NFS3ERR_BADHANDLE);
        }
        let id = u64::from_le_bytes(*id);
        let want = self.mac(id).ok_or(nfsstat3::NFS3ERR_STALE)?;
        // Compared without an early exit, so that timing does not tell how much of a forged
        // MAC was right.
        if want.iter().zip(mac).fold(0u8, |d, (a, b)| d | (a ^ b)) != 0 {
            return Err(nfsstat3::NFS3ERR_STALE);
        }
        Ok(id)
    }

    async fn fsinfo(&self, root_fileid: fileid3) -> Result<fsinfo3, nfsstat3> {
        let obj_attributes = match self.getattr(root_fileid).await {
            Ok(a) => post_op_attr::attributes(a),
            Err(_) => post_op_attr::Void,
        };
        // The kernel client takes rtpref as its read size: the largest READ we answer.
        Ok(fsinfo3 {
            obj_attributes,
            rtmax: MAX_READ,
            rtpref: MAX_READ,
            rtmult: 4096,
            wtmax: MAX_READ,
            wtpref: MAX_READ,
            wtmult: 4096,
            dtpref: 64 * 1024,
            maxfilesize: u64::MAX,
            time_delta: nfstime3 { seconds: 0, nseconds: 1 },
            properties: nfsserve::nfs::FSF_SYMLINK | nfsserve::nfs::FSF_HOMOGENEOUS,
        })
    }

    fn serverid(&self) -> [u8; 8] {
        self.serverid
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn fs() -> (tempfile::TempDir, ExportFs) {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        std::fs::create_dir_all(root.join("usr/lib")).unwrap();
        std::fs::write(root.join("usr/lib/a.so"), vec![7u8; 3000]).unwrap();
        std::fs::write(d.path().join("secret"), b"secret").unwrap();
        std::os::unix::fs::symlink("../../secret", root.join("usr/out")).unwrap();
        let other = d.path().join("other");
        std::fs::create_dir_all(other.join("private")).unwrap();
        std::fs::write(other.join("private/key"), b"other's").unwrap();
        let exports =
            vec![Export { name: "/client".into(), path: root }, Export { name: "/other".into(), path: other }];
        let fs = ExportFs::new(exports, &KEY).unwrap();
        (d, fs)
    }

    const KEY: HandleKey = [7; 32];

    async fn walk(fs: &ExportFs, path: &[&str]) -> Result<fileid3, nfsstat3> {
        let mut id = fs.root_dir();
        for c in path {
            id = fs.lookup(id, &c.as_bytes().to_vec().into()).await?;
        }
        Ok(id)
    }

    #[tokio::test]
    async fn reads_within_the_export() {
        let (_d, fs) = fs();
        let id = walk(&fs, &["client", "usr", "lib", "a.so"]).await.unwrap();
        let (data, eof) = fs.read(id, 1000, 100).await.unwrap();
        assert_eq!((data.len(), eof), (100, false));
        let (data, eof) = fs.read(id, 2900, u32::MAX).await.unwrap();
        assert_eq!((data.len(), eof), (100, true));
        let attr = fs.getattr(id).await.unwrap();
        assert_eq!(attr.size, 3000);
        assert_eq!(attr.mode & 0o222, 0);
    }

    #[tokio::test]
    async fn never_leaves_the_export() {
        let (_d, fs) = fs();
        let root = walk(&fs, &["client"]).await.unwrap();
        // `..` at the export's root stays there.
        assert_eq!(walk(&fs, &["client", ".."]).await.unwrap(), root);
        assert_eq!(walk(&fs, &["client", "usr", "..", ".."]).await.unwrap(), root);
        // A symlink out is returned as a link, never read through.
        let link = walk(&fs, &["client", "usr", "out"]).await.unwrap();
        assert!(matches!(fs.getattr(link).await.unwrap().ftype, ftype3::NF3LNK));
        assert_eq!(&fs.readlink(link).await.unwrap()[..], b"../../secret");
        assert!(fs.read(link, 0, 100).await.is_err());
        assert!(walk(&fs, &["client", "a/b"]).await.is_err());
        assert!(walk(&fs, &["nope"]).await.is_err());
    }

    #[tokio::test]
    async fn refuses_writes_and_bad_handles() {
        let (_d, fs) = fs();
        let dir = walk(&fs, &["client", "usr"]).await.unwrap();
        assert!(matches!(fs.write(dir, 0, b"x").await, Err(nfsstat3::NFS3ERR_ROFS)));
        assert!(matches!(fs.mkdir(dir, &b"x".to_vec().into()).await, Err(nfsstat3::NFS3ERR_ROFS)));
        assert!(fs.fh_to_id(&nfs_fh3 { data: vec![1, 2, 3] }).is_err());
        assert!(fs.fh_to_id(&nfs_fh3 { data: vec![0; 16] }).is_err());
        assert!(fs.fh_to_id(&nfs_fh3 { data: vec![0; HANDLE_LEN] }).is_err());
        // A made-up id in a valid handle: stale, not a panic, not a file.
        let fh = fs.id_to_fh(make_id(0, 123_456_789));
        let id = fs.fh_to_id(&fh).unwrap();
        assert!(fs.getattr(id).await.is_err());
        // An export number that does not exist has no key, so no handle.
        let fh = fs.id_to_fh(make_id(200, 5));
        assert!(fs.fh_to_id(&fh).is_err());
        // Handles survive a restart (a new ExportFs over the same exports and key).
        let again = ExportFs::new(fs.exports().to_vec(), &KEY).unwrap();
        let lib = walk(&fs, &["client", "usr", "lib"]).await.unwrap();
        let fh = fs.id_to_fh(lib);
        assert_eq!(again.fh_to_id(&fh).unwrap(), lib);
        assert!(again.getattr(lib).await.is_ok());
    }

    #[tokio::test]
    async fn reads_many_files_and_sees_changes() {
        let (d, fs) = fs();
        let lib = walk(&fs, &["client", "usr", "lib"]).await.unwrap();
        let n = OPEN_FILES + 10;
        for i in 0..n {
            std::fs::write(d.path().join(format!("root/usr/lib/g{i}")), format!("file {i}")).unwrap();
        }
        // Twice round, past the open-file limit: every read still finds its own file.
        for _ in 0..2 {
            for i in 0..n {
                let id = fs.lookup(lib, &format!("g{i}").into_bytes().into()).await.unwrap();
                let (data, eof) = fs.read(id, 0, 100).await.unwrap();
                assert_eq!((data, eof), (format!("file {i}").into_bytes(), true));
            }
        }
        // A file that shrinks while open: the read ends at the new length.
        let id = walk(&fs, &["client", "usr", "lib", "a.so"]).await.unwrap();
        assert_eq!(fs.read(id, 0, 10).await.unwrap().0.len(), 10);
        std::fs::OpenOptions::new().write(true).open(d.path().join("root/usr/lib/a.so")).unwrap().set_len(5).unwrap();
        assert_eq!(fs.read(id, 0, 10).await.unwrap(), (vec![7u8; 5], true));
        assert_eq!(fs.read(id, 5, 10).await.unwrap(), (vec![], true));
    }

    #[tokio::test]
    async fn lists_directories_in_pages() {
        let (d, fs) = fs();
        for i in 0..50 {
            std::fs::write(d.path().join(format!("root/usr/lib/f{i}")), b"x").unwrap();
        }
        let lib = walk(&fs, &["client", "usr", "lib"]).await.unwrap();
        let mut names = Vec::new();
        let mut after = 0;
        loop {
            let page = fs.readdir(lib, after, 7).await.unwrap();
            after = page.entries.last().map(|e| e.fileid).unwrap_or(after);
            names.extend(page.entries.iter().map(|e| String::from_utf8(e.name.to_vec()).unwrap()));
            if page.end {
                break;
            }
        }
        assert_eq!(names.len(), 51);
        let top = fs.readdir(ROOT_ID, 0, 10).await.unwrap();
        let mut names: Vec<_> = top.entries.iter().map(|e| e.name.to_vec()).collect();
        names.sort();
        assert_eq!(names, vec![b"client".to_vec(), b"other".to_vec()]);
    }

    #[tokio::test]
    async fn handles_stay_in_their_export() {
        let (d, fs) = fs();
        let lib = walk(&fs, &["client", "usr", "lib"]).await.unwrap();
        let private = walk(&fs, &["other", "private"]).await.unwrap();
        assert_eq!(export_of(lib), Some(0));
        assert_eq!(export_of(private), Some(1));
        let fh = fs.id_to_fh(lib);
        assert_eq!(fs.fh_to_id(&fh).unwrap(), lib);
        // The same inode number under the other export, with the MAC left as it was.
        let mut forged = fh.clone();
        forged.data[..8].copy_from_slice(&make_id(1, lib).to_le_bytes());
        assert!(matches!(fs.fh_to_id(&forged), Err(nfsstat3::NFS3ERR_STALE)));
        // Any other MAC is refused too.
        for i in 8..HANDLE_LEN {
            let mut bad = fh.clone();
            bad.data[i] ^= 1;
            assert!(fs.fh_to_id(&bad).is_err(), "byte {i}");
        }
        // The pseudo-root above the exports has no handle: LOOKUP cannot start there.
        assert!(fs.fh_to_id(&fs.id_to_fh(ROOT_ID)).is_err());
        // Another key (another server, or a deleted key file): every handle is stale.
        let other_key = ExportFs::new(fs.exports().to_vec(), &[8; 32]).unwrap();
        assert!(matches!(other_key.fh_to_id(&fh), Err(nfsstat3::NFS3ERR_STALE)));
        // Exports swapped in the config: the old handle does not land in the other folder.
        let swapped: Vec<Export> = fs.exports().iter().rev().cloned().collect();
        assert!(ExportFs::new(swapped, &KEY).unwrap().fh_to_id(&fh).is_err());
        // `..` from deep inside stops at the export's root.
        let up = walk(&fs, &["other", "private", "..", "..", ".."]).await.unwrap();
        assert_eq!(up, walk(&fs, &["other"]).await.unwrap());
        drop(d);
    }

    #[test]
    fn handle_key_is_kept_private_and_reused() {
        let d = tempfile::tempdir().unwrap();
        let k1 = handle_key(d.path()).unwrap();
        let k2 = handle_key(d.path()).unwrap();
        assert_eq!(k1, k2);
        assert_ne!(k1, HandleKey::default());
        let meta = std::fs::metadata(d.path().join(KEY_FILE)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        std::fs::write(d.path().join(KEY_FILE), b"short").unwrap();
        assert_ne!(handle_key(d.path()).unwrap(), k1);
    }
}
