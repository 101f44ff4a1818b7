//! FUSE inode numbers <-> paths in the backing directory.
//!
//! The kernel names files by inode number; the backing directory is reached by path. Inode
//! numbers are our own (allocated on first lookup, never reused) and keyed by the backing
//! file's `(st_dev, st_ino)`, so a hard link or a second lookup of the same file gets the same
//! number. Renames rewrite the paths of the moved entry and everything below it; removed files
//! keep their number (with no path) until the kernel forgets them.

use std::collections::HashMap;
use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The FUSE root inode number.
pub(crate) const ROOT: u64 = 1;

type Key = (u64, u64);

#[derive(Debug)]
struct Node {
    /// Path relative to the backing root (`""` for the root); `None` once the file was
    /// removed or replaced while the kernel still knew it.
    path: Option<PathBuf>,
    key: Key,
    lookups: u64,
}

#[derive(Debug)]
pub(crate) struct InodeTable {
    nodes: HashMap<u64, Node>,
    by_key: HashMap<Key, u64>,
    next: u64,
}

fn key_of(md: &Metadata) -> Key {
    (md.dev(), md.ino())
}

/// `path` moved from `from` to `to`: its new name, or `None` if it is not under `from`.
fn moved(path: &Path, from: &Path, to: &Path) -> Option<PathBuf> {
    let rest = path.strip_prefix(from).ok()?;
    Some(if rest.as_os_str().is_empty() {
        to.to_path_buf()
    } else {
        to.join(rest)
    })
}

impl InodeTable {
    pub(crate) fn new(root: &Metadata) -> Self {
        let mut nodes = HashMap::new();
        nodes.insert(
            ROOT,
            Node {
                path: Some(PathBuf::new()),
                key: key_of(root),
                lookups: 1,
            },
        );
        let mut by_key = HashMap::new();
        by_key.insert(key_of(root), ROOT);
        Self {
            nodes,
            by_key,
            next: ROOT + 1,
        }
    }

    /// The current relative path of `ino`, if it still has one.
    pub(crate) fn path(&self, ino: u64) -> Option<PathBuf> {
        self.nodes.get(&ino)?.path.clone()
    }

    /// Records a lookup of `path` (with metadata `md`) and returns its inode number.
    /// Each call counts one kernel reference, released by [`forget`](Self::forget).
    pub(crate) fn remember(&mut self, path: PathBuf, md: &Metadata) -> u64 {
        let key = key_of(md);
        if let Some(&ino) = self.by_key.get(&key) {
            if let Some(node) = self.nodes.get_mut(&ino) {
                node.path = Some(path);
                node.lookups += 1;
                return ino;
            }
        }
        let ino = self.next;
        self.next += 1;
        self.nodes.insert(
            ino,
            Node {
                path: Some(path),
                key,
                lookups: 1,
            },
        );
        self.by_key.insert(key, ino);
        ino
    }

    /// The kernel dropped `count` references to `ino`.
    pub(crate) fn forget(&mut self, ino: u64, count: u64) {
        if ino == ROOT {
            return;
        }
        let Some(node) = self.nodes.get_mut(&ino) else {
            return;
        };
        node.lookups = node.lookups.saturating_sub(count);
        if node.lookups == 0 {
            let key = node.key;
            self.nodes.remove(&ino);
            if self.by_key.get(&key) == Some(&ino) {
                self.by_key.remove(&key);
            }
        }
    }

    /// The name `path` (whose file had metadata `md` before) was removed from the backing
    /// directory.
    pub(crate) fn removed(&mut self, path: &Path, md: &Metadata) {
        let key = key_of(md);
        let Some(&ino) = self.by_key.get(&key) else {
            return;
        };
        let last_link = md.is_dir() || md.nlink() <= 1;
        if last_link {
            // The backing inode number may be recycled for a new file; it must get a new
            // FUSE number then, not this one.
            self.by_key.remove(&key);
        }
        if let Some(node) = self.nodes.get_mut(&ino) {
            if last_link || node.path.as_deref() == Some(path) {
                node.path = None;
            }
        }
    }

    /// `from` was renamed to `to` (`exchange`: the two were swapped).
    pub(crate) fn renamed(&mut self, from: &Path, to: &Path, exchange: bool) {
        for (&ino, node) in &mut self.nodes {
            if ino == ROOT {
                continue;
            }
            let Some(path) = node.path.as_deref() else {
                continue;
            };
            let new = match moved(path, from, to) {
                Some(new) => Some(new),
                None if exchange => moved(path, to, from),
                None => None,
            };
            if let Some(new) = new {
                node.path = Some(new);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moved_is_component_wise() {
        let from = Path::new("a/b");
        let to = Path::new("c");
        assert_eq!(moved(Path::new("a/b"), from, to), Some(PathBuf::from("c")));
        assert_eq!(
            moved(Path::new("a/b/x/y"), from, to),
            Some(PathBuf::from("c/x/y"))
        );
        assert_eq!(moved(Path::new("a/bc"), from, to), None);
        assert_eq!(moved(Path::new("a"), from, to), None);
    }
}
