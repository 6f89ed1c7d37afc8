//! Reading the repository directory: model folders, version folders,
//! config.pbtxt, and the version policy.

use super::config;
use crate::pb;
use crate::pb::model_version_policy::PolicyChoice;
use std::path::{Path, PathBuf};

/// Model directories: every non-hidden directory under `root`.
pub fn model_names(root: &Path) -> std::io::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(root)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.file_type()?.is_dir() && !name.starts_with('.') {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// The names of the model directories in any of `roots`, sorted, each once.
pub fn model_names_in(roots: &[PathBuf]) -> std::io::Result<Vec<String>> {
    let mut names = Vec::new();
    for root in roots {
        names.extend(model_names(root)?);
    }
    names.sort();
    names.dedup();
    Ok(names)
}

/// The directory of model `name` in whichever of `roots` holds it,
/// refusing names that would leave them and a name that two of them hold
/// (a model's name must be unique across repositories, as in Triton).
pub fn model_dir(roots: &[PathBuf], name: &str) -> Result<PathBuf, String> {
    if name.is_empty() || name.starts_with('.') || name.contains(['/', '\\']) {
        return Err(format!("'{name}' is not a valid model name"));
    }
    let found: Vec<PathBuf> = roots.iter().map(|root| root.join(name)).filter(|dir| dir.is_dir()).collect();
    match found.as_slice() {
        [dir] => Ok(dir.clone()),
        [] => {
            let roots: Vec<String> = roots.iter().map(|r| r.display().to_string()).collect();
            Err(format!("no model '{name}' in the repository {}", roots.join(", ")))
        }
        [first, second, ..] => Err(format!(
            "model '{name}' is in two repositories, {} and {}: a model's name must be unique across them",
            first.display(),
            second.display()
        )),
    }
}

/// The model's config.pbtxt, or an empty config to complete from the graph:
/// the config, whether a file was found, and a hash of its text (to tell a
/// changed config from the same one).
pub fn read_config(dir: &Path) -> Result<(pb::ModelConfig, bool, u64), String> {
    let path = dir.join("config.pbtxt");
    match std::fs::read_to_string(&path) {
        Ok(text) => config::parse(&text).map(|c| (c, true, hash(&text))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((pb::ModelConfig::default(), false, 0)),
        Err(e) => Err(format!("reading {}: {e}", path.display())),
    }
}

/// A stamp of every file under a version folder (path, size, modification
/// time): it changes when a file is added, removed, replaced or rewritten.
pub fn version_stamp(dir: &Path, version: i64) -> u64 {
    let mut files = Vec::new();
    collect_files(&dir.join(version.to_string()), &mut files);
    files.sort();
    hash(&files)
}

fn collect_files(dir: &Path, out: &mut Vec<(PathBuf, u64, Option<std::time::SystemTime>)>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        match entry.metadata() {
            Ok(meta) if meta.is_dir() => collect_files(&path, out),
            Ok(meta) => out.push((path, meta.len(), meta.modified().ok())),
            Err(_) => {}
        }
    }
}

pub fn hash<T: std::hash::Hash + ?Sized>(value: &T) -> u64 {
    use std::hash::Hasher;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

/// The versions to serve: numeric subdirectories filtered by the policy
/// (default: the latest one).
pub fn select_versions(dir: &Path, policy: Option<&pb::ModelVersionPolicy>) -> Result<Vec<i64>, String> {
    let mut found = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| format!("reading {}: {e}", dir.display()))?;
    for entry in entries.flatten() {
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        if let Ok(v) = entry.file_name().to_string_lossy().parse::<i64>()
            && v >= 0
        {
            found.push(v);
        }
    }
    found.sort_unstable();
    Ok(match policy.and_then(|p| p.policy_choice.as_ref()) {
        Some(PolicyChoice::All(_)) => found,
        Some(PolicyChoice::Specific(s)) => found.into_iter().filter(|v| s.versions.contains(v)).collect(),
        Some(PolicyChoice::Latest(l)) => {
            let keep = (l.num_versions.max(1) as usize).min(found.len());
            found.split_off(found.len() - keep)
        }
        None => found.split_off(found.len().saturating_sub(1)),
    })
}
