//! What a model looks like on disk, cheaply: the path, size and modification
//! time of its `config.pbtxt` and of every file under its numeric version
//! directories. Contents are never read, so an observation costs a few
//! `stat` calls. Hidden entries (`.name`) and other directories (`warmup/`)
//! are left out; depth and file count are bounded.

use std::fs;
use std::io;
use std::path::Path;
use std::time::SystemTime;

/// Files recorded per model at most; the rest are not looked at.
const MAX_FILES: usize = 10_000;
/// Directory levels followed below a version directory.
const MAX_DEPTH: usize = 8;

/// One file of a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    /// Relative to the model directory, `/`-separated (`1/model.onnx`).
    pub path: String,
    pub size: u64,
    pub modified: Option<SystemTime>,
}

/// Every file that makes a model, sorted by path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fingerprint(Vec<Stamp>);

impl Fingerprint {
    #[cfg(test)]
    pub fn from_stamps(stamps: Vec<Stamp>) -> Self {
        Fingerprint(stamps)
    }
}

/// Fingerprints the model directory `dir`; `None` when there is no such
/// directory. Symbolic links are followed (Kubernetes mounts config maps as
/// links), within the depth bound.
pub fn fingerprint(dir: &Path) -> io::Result<Option<Fingerprint>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory) => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut stamps = Vec::new();
    for entry in entries {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let Some(meta) = metadata(&dir.join(&name))? else { continue };
        if name == "config.pbtxt" && meta.is_file() {
            stamps.push(stamp(name, &meta));
        } else if meta.is_dir() && name.parse::<i64>().is_ok_and(|v| v >= 0) {
            walk(dir, &name, 0, &mut stamps)?;
        }
    }
    stamps.sort_by(|a, b| a.path.cmp(&b.path));
    stamps.truncate(MAX_FILES);
    Ok(Some(Fingerprint(stamps)))
}

/// Adds the files under `dir/relative` to `stamps`.
fn walk(dir: &Path, relative: &str, depth: usize, stamps: &mut Vec<Stamp>) -> io::Result<()> {
    let entries = match fs::read_dir(dir.join(relative)) {
        Ok(entries) => entries,
        // Removed while we looked: the next observation sees it gone.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || stamps.len() >= MAX_FILES {
            continue;
        }
        let path = format!("{relative}/{name}");
        let Some(meta) = metadata(&dir.join(&path))? else { continue };
        if meta.is_dir() {
            if depth < MAX_DEPTH {
                walk(dir, &path, depth + 1, stamps)?;
            }
        } else {
            stamps.push(stamp(path, &meta));
        }
    }
    Ok(())
}

/// The metadata behind `path` (links followed); `None` when it vanished or
/// is a dangling link.
fn metadata(path: &Path) -> io::Result<Option<fs::Metadata>> {
    match fs::metadata(path) {
        Ok(meta) => Ok(Some(meta)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn stamp(path: String, meta: &fs::Metadata) -> Stamp {
    Stamp { path, size: meta.len(), modified: meta.modified().ok() }
}

/// What differs between two fingerprints, for the log: the paths added,
/// removed and modified (a few of each).
pub fn describe(old: Option<&Fingerprint>, new: Option<&Fingerprint>) -> String {
    const SHOWN: usize = 4;
    let (old, new) = match (old, new) {
        (None, Some(_)) => return "new model directory".into(),
        (Some(_), None) => return "model directory removed".into(),
        (None, None) => return "nothing".into(),
        (Some(old), Some(new)) => (&old.0, &new.0),
    };
    let find = |stamps: &[Stamp], path: &str| stamps.iter().find(|s| s.path == path).cloned();
    let added: Vec<&str> = new.iter().filter(|s| find(old, &s.path).is_none()).map(|s| s.path.as_str()).collect();
    let removed: Vec<&str> = old.iter().filter(|s| find(new, &s.path).is_none()).map(|s| s.path.as_str()).collect();
    let modified: Vec<&str> =
        new.iter().filter(|s| find(old, &s.path).is_some_and(|o| o != **s)).map(|s| s.path.as_str()).collect();
    let mut parts = Vec::new();
    for (what, paths) in [("added", added), ("removed", removed), ("modified", modified)] {
        if paths.is_empty() {
            continue;
        }
        let mut list = paths[..paths.len().min(SHOWN)].join(", ");
        if paths.len() > SHOWN {
            list.push_str(&format!(" and {} more", paths.len() - SHOWN));
        }
        parts.push(format!("{what} {list}"));
    }
    if parts.is_empty() { "nothing".into() } else { parts.join("; ") }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, path: &str, contents: &[u8]) {
        let path = root.join(path);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, contents).unwrap();
    }

    fn paths(f: &Fingerprint) -> Vec<&str> {
        f.0.iter().map(|s| s.path.as_str()).collect()
    }

    #[test]
    fn records_the_config_and_version_files_only() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(root, "config.pbtxt", b"name: \"m\"");
        write(root, "1/model.onnx", b"one");
        write(root, "2/model.onnx", b"two");
        write(root, "2/weights/data.bin", b"external data");
        write(root, "2/.model.onnx.swp", b"editor");
        write(root, ".hidden/1/model.onnx", b"x");
        write(root, "warmup/input", b"x");
        write(root, "notes.txt", b"x");
        write(root, "-1/model.onnx", b"x");
        let f = fingerprint(root).unwrap().unwrap();
        assert_eq!(paths(&f), ["1/model.onnx", "2/model.onnx", "2/weights/data.bin", "config.pbtxt"]);
        assert_eq!(f.0[0].size, 3);
        assert!(f.0[0].modified.is_some());
    }

    #[test]
    fn changes_in_size_or_files_change_it_and_a_missing_directory_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(root, "1/model.onnx", b"one");
        let before = fingerprint(root).unwrap().unwrap();
        assert_eq!(fingerprint(root).unwrap().unwrap(), before, "nothing changed");
        write(root, "1/model.onnx", b"one more");
        let grown = fingerprint(root).unwrap().unwrap();
        assert_ne!(grown, before);
        // An empty version directory is not (yet) part of the model.
        fs::create_dir(root.join("2")).unwrap();
        assert_eq!(fingerprint(root).unwrap().unwrap(), grown);
        write(root, "2/model.onnx", b"two");
        assert_ne!(fingerprint(root).unwrap().unwrap(), grown);
        assert_eq!(fingerprint(&root.join("absent")).unwrap(), None);
        assert_eq!(fingerprint(&root.join("1/model.onnx")).unwrap(), None, "a file is no model directory");
    }

    #[test]
    fn describes_what_changed() {
        let stamp = |path: &str, size| Stamp { path: path.into(), size, modified: None };
        let old = Fingerprint(vec![stamp("1/model.onnx", 3), stamp("config.pbtxt", 10)]);
        let new = Fingerprint(vec![stamp("2/model.onnx", 3), stamp("config.pbtxt", 12)]);
        assert_eq!(describe(Some(&old), Some(&new)), "added 2/model.onnx; removed 1/model.onnx; modified config.pbtxt");
        assert_eq!(describe(None, Some(&new)), "new model directory");
        assert_eq!(describe(Some(&old), None), "model directory removed");
        let many = Fingerprint((1..=6).map(|v| stamp(&format!("{v}/model.onnx"), 1)).collect());
        assert_eq!(
            describe(Some(&Fingerprint::default()), Some(&many)),
            "added 1/model.onnx, 2/model.onnx, 3/model.onnx, 4/model.onnx and 2 more"
        );
    }
}
