//! Comparing the unpacked trees of two images.

use std::collections::BTreeSet;

use crate::image::{mode_string, Image};

/// One line per difference: `+ path` only in B, `- path` only in A, `~ path: what` changed.
pub fn diff(a: &Image, b: &Image) -> Vec<String> {
    let (va, vb) = (a.view(), b.view());
    let paths: BTreeSet<&String> = va.map.keys().chain(vb.map.keys()).collect();
    let mut out = Vec::new();
    for p in paths {
        match (va.map.get(p), vb.map.get(p)) {
            (Some(_), None) => out.push(format!("- {p}")),
            (None, Some(_)) => out.push(format!("+ {p}")),
            (Some((_, x)), Some((_, y))) => {
                let mut what = Vec::new();
                if x.mode != y.mode {
                    what.push(format!("mode {} -> {}", mode_string(x.mode), mode_string(y.mode)));
                }
                if (x.uid, x.gid) != (y.uid, y.gid) {
                    what.push(format!("owner {}:{} -> {}:{}", x.uid, x.gid, y.uid, y.gid));
                }
                let (dx, dy) = (va.data(x), vb.data(y));
                if x.is_symlink() && y.is_symlink() && dx != dy {
                    what.push(format!("target {} -> {}", String::from_utf8_lossy(dx), String::from_utf8_lossy(dy)));
                } else if dx != dy {
                    what.push(format!("content ({} -> {} bytes)", dx.len(), dy.len()));
                }
                if (x.rdevmajor, x.rdevminor) != (y.rdevmajor, y.rdevminor) {
                    what.push(format!("device {}:{} -> {}:{}", x.rdevmajor, x.rdevminor, y.rdevmajor, y.rdevminor));
                }
                if x.mtime != y.mtime {
                    what.push(format!("mtime {} -> {}", x.mtime, y.mtime));
                }
                if !what.is_empty() {
                    out.push(format!("~ {p}: {}", what.join(", ")));
                }
            }
            (None, None) => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compress::Compression;
    use crate::newc::{Entry, S_IFREG};

    #[test]
    fn reports_each_kind() {
        let a = Image::single(Compression::None, vec![Entry::new("x", S_IFREG | 0o644, b"1".to_vec()), Entry::new("gone", S_IFREG | 0o644, vec![])]);
        let b = Image::single(Compression::Gzip, vec![Entry::new("./x", S_IFREG | 0o755, b"22".to_vec()), Entry::new("new", S_IFREG | 0o644, vec![])]);
        assert_eq!(diff(&a, &b), ["- gone", "+ new", "~ x: mode -rw-r--r-- -> -rwxr-xr-x, content (1 -> 2 bytes)"]);
        assert!(diff(&a, &a).is_empty());
    }
}
