//! A read-only view of exported folders, as an NFSv3 file system for `nfsserve`.
//!
//! File ids are `(export number + 1) << 56 | inode`, and file handles carry a hash of the
//! export's path next to the id, so handles stay valid across a restart of the boot server: a
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
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use nfsserve::nfs::{
    fattr3, fileid3, filename3, fsinfo3, ftype3, nfs_fh3, nfspath3, nfsstat3, nfstime3, post_op_attr, sattr3, specdata3,
};
use nfsserve::vfs::{DirEntry, NFSFileSystem, ReadDirResult, VFSCapabilities};

/// Largest READ answered; bigger requests are cut to this (the client asks again).
pub const MAX_READ: u32 = 1 << 20;
const ROOT_ID: fileid3 = 1;
const INODE_BITS: u32 = 56;
const HANDLE_LEN: usize = 16;
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
    /// Mixed into every handle so that a handle from a differently configured server is refused.
    handle_tag: u64,
    /// id -> the open regular file it names (checked against the id's inode when opened).
    open: Arc<Mutex<HashMap<fileid3, Arc<std::fs::File>>>>,
}

fn export_of(id: fileid3) -> Option<usize> {
    let e = (id >> INODE_BITS) as usize;
    e.checked_sub(1)
}

fn make_id(export: usize, ino: u64) -> fileid3 {
    ((export as u64 + 1) << INODE_BITS) | (ino & ((1 << INODE_BITS) - 1))
}

/// FNV-1a: stable across runs and builds, unlike std's hasher.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ *b as u64).wrapping_mul(0x100_0000_01b3))
}

impl ExportFs {
    pub fn new(exports: Vec<Export>) -> std::io::Result<Self> {
        let mut tag_src = Vec::new();
        for e in &exports {
            if !e.path.is_dir() {
                return Err(std::io::Error::other(format!("{} is not a folder", e.path.display())));
            }
            tag_src.extend_from_slice(e.name.as_bytes());
            tag_src.push(0);
            tag_src.extend_from_slice(e.path.as_os_str().as_bytes());
            tag_src.push(0);
        }
        let fs = ExportFs {
            exports: Arc::new(exports),
            index: Arc::default(),
            handle_tag: fnv(&tag_src),
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
        data.extend_from_slice(&self.handle_tag.to_le_bytes());
        data.extend_from_slice(&id.to_le_bytes());
        nfs_fh3 { data }
    }

    fn fh_to_id(&self, fh: &nfs_fh3) -> Result<fileid3, nfsstat3> {
        if fh.data.len() != HANDLE_LEN {
            return Err(nfsstat3::NFS3ERR_BADHANDLE);
        }
        let (tag, id) = fh.data.split_at(8);
        let tag = u64::from_le_bytes(tag.try_into().map_err(|_| nfsstat3::NFS3ERR_BADHANDLE)?);
        let id = u64::from_le_bytes(id.try_into().map_err(|_| nfsstat3::NFS3ERR_BADHANDLE)?);
        if tag != self.handle_tag {
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
        self.handle_tag.to_le_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fs() -> (tempfile::TempDir, ExportFs) {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        std::fs::create_dir_all(root.join("usr/lib")).unwrap();
        std::fs::write(root.join("usr/lib/a.so"), vec![7u8; 3000]).unwrap();
        std::fs::write(d.path().join("secret"), b"secret").unwrap();
        std::os::unix::fs::symlink("../../secret", root.join("usr/out")).unwrap();
        let fs = ExportFs::new(vec![Export { name: "/client".into(), path: root }]).unwrap();
        (d, fs)
    }

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
        // A made-up id in a valid handle: stale, not a panic, not a file.
        let fh = fs.id_to_fh(make_id(0, 123_456_789));
        let id = fs.fh_to_id(&fh).unwrap();
        assert!(fs.getattr(id).await.is_err());
        let fh = fs.id_to_fh(make_id(200, 5));
        assert!(fs.getattr(fs.fh_to_id(&fh).unwrap()).await.is_err());
        // Handles survive a restart (a new ExportFs over the same exports).
        let again = ExportFs::new(fs.exports().to_vec()).unwrap();
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
        assert_eq!(top.entries.len(), 1);
        assert_eq!(&top.entries[0].name[..], b"client");
    }
}
