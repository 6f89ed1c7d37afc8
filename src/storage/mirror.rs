//! The mirror of a bucket prefix in a local folder, `<cache>/models`, which
//! the server serves as a repository on disk.
//!
//! A repository is mirrored in units: a model's own files (`mlp`:
//! config.pbtxt and anything else beside the versions) and each version
//! (`mlp/1`: everything under it). Each poll is one listing of the prefix,
//! compared with the last one and with what the cache holds (key, size,
//! ETag), so an unchanged repository costs that listing and no reads. A
//! changed unit is downloaded once its listing is the same in two listings
//! in a row (the settle rule, as on disk; the second comes RECHECK after
//! the first that saw the change), or at once when it holds the marker
//! object the user names (`--repository-ready-marker`), so a half-finished
//! upload never loads. Its files go to a staging folder, each checked
//! against its listing (download.rs), then each is renamed over its place
//! (a rename replaces a file atomically), so the watch of poll mode sees
//! whole versions and replaced files, as when files are swapped on disk. A
//! unit gone from the bucket goes from the cache.
//!
//! What the cache holds is kept in `state.json` beside it: a restart whose
//! listing matches downloads nothing, and a store that cannot be reached
//! at start leaves the cache serving.

use super::Remote;
use super::download::{self, Failure};
use crate::shutdown::Shutdown;
use crate::telemetry;
use futures::TryStreamExt;
use object_store::ObjectStore;
use object_store::path::Path as ObjectPath;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// One object as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listed {
    pub size: u64,
    pub e_tag: Option<String>,
}

/// The files of one unit, by their path inside it ("model.onnx",
/// "config.pbtxt", "sub/weights.bin").
pub type Files = BTreeMap<String, Listed>;

/// Units by their folder in the repository: "mlp" (the model's own files)
/// or "mlp/1" (a version).
pub type Units = BTreeMap<String, Files>;

/// A unit whose download keeps failing is tried again after 0, 1, 3, then
/// 7 polls that skip it; listings go on every poll, so a store that comes
/// back is seen at the next one.
const MAX_SKIPS: u32 = 7;

/// When a listing finds units that changed, the next one comes this soon
/// (or at the next poll, if sooner), and installs what held still between
/// them: a new version shows within a poll, this, and its download.
pub const RECHECK: Duration = Duration::from_millis(500);

/// What one sync did.
#[derive(Debug, Default)]
pub struct SyncReport {
    /// Units downloaded and moved into place.
    pub installed: Vec<String>,
    /// Units gone from the bucket, removed from the cache.
    pub removed: Vec<String>,
    /// Units that changed since the last listing: downloaded once they hold still.
    pub waiting: Vec<String>,
    pub downloaded_bytes: u64,
    /// Units that could not be installed (tried again at a later poll):
    /// the unit, the error counter's reason, the message.
    pub failed: Vec<(String, &'static str, String)>,
    /// Units that failed before and wait out their back-off.
    pub deferred: Vec<String>,
}

/// A unit whose download failed: for the files that failed, how often in a
/// row, and how many syncs skip it before the next try. Other files (a new
/// upload) are tried at once.
struct Backoff {
    files: Files,
    failures: u32,
    skip: u32,
}

pub struct Mirror {
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    url: String,
    folder: PathBuf,
    marker: Option<String>,
    /// What the cache holds.
    installed: Mutex<Units>,
    /// The last listing, for the settle rule; None before the first.
    seen: Mutex<Option<Units>>,
    /// Units whose download failed, by unit.
    backoff: Mutex<BTreeMap<String, Backoff>>,
    /// Names staging folders apart.
    staged: AtomicU64,
    /// One sync at a time.
    syncing: tokio::sync::Mutex<()>,
}

impl Mirror {
    /// The mirror of `remote` in `folder`, with what an earlier run left
    /// there (units whose files are all still in place).
    pub fn new(remote: Remote, folder: PathBuf, marker: Option<String>) -> anyhow::Result<Mirror> {
        std::fs::create_dir_all(folder.join("models"))
            .map_err(|e| anyhow::anyhow!("creating the repository cache {}: {e}", folder.display()))?;
        let mirror = Mirror {
            store: remote.store,
            prefix: remote.prefix,
            url: remote.url,
            folder,
            marker,
            installed: Mutex::new(Units::new()),
            seen: Mutex::new(None),
            backoff: Mutex::new(BTreeMap::new()),
            staged: AtomicU64::new(0),
            syncing: tokio::sync::Mutex::new(()),
        };
        let mut cached = mirror.read_state();
        cached.retain(|unit, files| {
            files.iter().all(|(path, listed)| {
                std::fs::metadata(mirror.place(unit, path)).is_ok_and(|m| m.is_file() && m.len() == listed.size)
            })
        });
        *mirror.installed.lock() = cached;
        Ok(mirror)
    }

    /// The folder the server serves: the mirrored repository.
    pub fn models(&self) -> PathBuf {
        self.folder.join("models")
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// What the cache holds now.
    pub fn installed(&self) -> Units {
        self.installed.lock().clone()
    }

    fn place(&self, unit: &str, path: &str) -> PathBuf {
        let mut place = self.models();
        place.extend(unit.split('/'));
        place.extend(path.split('/'));
        place
    }

    fn state_path(&self) -> PathBuf {
        self.folder.join("state.json")
    }

    fn read_state(&self) -> Units {
        std::fs::read(self.state_path()).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
    }

    fn write_state(&self, units: &Units) -> Result<(), Failure> {
        let io = |e: std::io::Error| Failure::Io(format!("writing {}: {e}", self.state_path().display()));
        let part = self.folder.join("state.json.part");
        std::fs::write(&part, serde_json::to_vec(units).expect("the state serializes; this is a bug")).map_err(io)?;
        std::fs::rename(&part, self.state_path()).map_err(io)
    }

    /// One listing of the prefix, in units.
    pub async fn list(&self) -> Result<Units, String> {
        let prefix = (!self.prefix.as_ref().is_empty()).then_some(&self.prefix);
        let objects: Vec<_> =
            self.store.list(prefix).try_collect().await.map_err(|e| format!("listing {}: {e}", self.url))?;
        let mut units = Units::new();
        for meta in objects {
            let Some(parts) = meta.location.prefix_match(&self.prefix) else { continue };
            let parts: Vec<String> = parts.map(|p| p.as_ref().to_string()).collect();
            // A key ending in "/" is a folder marker some tools write.
            if parts.len() < 2 || parts.iter().any(|p| p.is_empty()) || parts[0].starts_with('.') {
                continue;
            }
            let versioned = parts.len() >= 3 && parts[1].parse::<u64>().is_ok();
            let split = if versioned { 2 } else { 1 };
            let unit = parts[..split].join("/");
            let path = parts[split..].join("/");
            units.entry(unit).or_default().insert(path, Listed { size: meta.size, e_tag: meta.e_tag });
        }
        Ok(units)
    }

    /// One poll: lists the prefix, downloads the units that changed and
    /// hold still (all changed units when `settle` is false), removes the
    /// ones gone. Err only when the listing failed; a unit that fails is
    /// in the report and tried again next time.
    pub async fn sync(&self, settle: bool) -> Result<SyncReport, String> {
        let _one = self.syncing.lock().await;
        let started = Instant::now();
        let result = self.sync_once(settle).await;
        metrics::histogram!(telemetry::REPOSITORY_SYNC_SECONDS).record(started.elapsed().as_secs_f64());
        match &result {
            Err(e) => {
                telemetry::record_sync_error("list");
                tracing::warn!(repository = %self.url, error = %e, "repository sync failed; serving what is loaded");
            }
            Ok(report) => {
                for (unit, reason, message) in &report.failed {
                    telemetry::record_sync_error(reason);
                    tracing::warn!(repository = %self.url, %unit, reason, error = %message, "repository sync: not installed; tried again next poll");
                }
                if !report.installed.is_empty() || !report.removed.is_empty() {
                    tracing::info!(
                        repository = %self.url,
                        installed = ?report.installed,
                        removed = ?report.removed,
                        bytes = report.downloaded_bytes,
                        "repository synced"
                    );
                }
            }
        }
        result
    }

    async fn sync_once(&self, settle: bool) -> Result<SyncReport, String> {
        let listed = self.list().await?;
        let previous = self.seen.lock().replace(listed.clone());
        let mut installed = self.installed();
        let mut report = SyncReport::default();
        // Versions before their model's own files: a config naming a new
        // version as canary finds it in place.
        let (versions, models): (Vec<_>, Vec<_>) = listed.iter().partition(|(unit, _)| unit.contains('/'));
        for (unit, files) in versions.into_iter().chain(models) {
            if installed.get(unit) == Some(files) {
                continue;
            }
            let still = previous.as_ref().and_then(|p| p.get(unit)) == Some(files);
            let marked = self.marker.as_ref().is_some_and(|m| files.contains_key(m));
            if settle && !still && !marked {
                report.waiting.push(unit.clone());
                continue;
            }
            if let Some(backoff) = self.backoff.lock().get_mut(unit)
                && backoff.files == *files
                && backoff.skip > 0
            {
                backoff.skip -= 1;
                report.deferred.push(unit.clone());
                continue;
            }
            match self.install(unit, files, installed.get(unit), &mut report.downloaded_bytes).await {
                Ok(()) => {
                    self.backoff.lock().remove(unit);
                    installed.insert(unit.clone(), files.clone());
                    report.installed.push(unit.clone());
                }
                Err(failure) => {
                    let mut backoff = self.backoff.lock();
                    let again = backoff.get(unit).filter(|b| b.files == *files).map_or(0, |b| b.failures);
                    let skip = (2u32.saturating_pow(again) - 1).min(MAX_SKIPS);
                    backoff.insert(unit.clone(), Backoff { files: files.clone(), failures: again + 1, skip });
                    report.failed.push((unit.clone(), failure.reason(), failure.to_string()));
                }
            }
        }
        let gone: Vec<String> = installed.keys().filter(|u| !listed.contains_key(*u)).cloned().collect();
        for unit in gone {
            let files = installed.remove(&unit).unwrap_or_default();
            if let Err(failure) = self.remove(&unit, &files) {
                report.failed.push((unit.clone(), failure.reason(), failure.to_string()));
                installed.insert(unit, files);
                continue;
            }
            report.removed.push(unit);
        }
        let state = self.write_state(&installed);
        *self.installed.lock() = installed;
        if let Err(failure) = state {
            report.failed.push(("state.json".into(), failure.reason(), failure.to_string()));
        }
        Ok(report)
    }

    /// Downloads `files` of `unit` to staging, then moves each into place
    /// and removes what the unit held before (`old`) and no longer does.
    async fn install(&self, unit: &str, files: &Files, old: Option<&Files>, bytes: &mut u64) -> Result<(), Failure> {
        let io = |what: &Path, e: std::io::Error| Failure::Io(format!("{}: {e}", what.display()));
        let n = self.staged.fetch_add(1, Ordering::Relaxed);
        let staging = self.folder.join(".staging").join(format!("{}-{n}", unit.replace('/', "-")));
        let _ = std::fs::remove_dir_all(&staging);
        let result = async {
            let counted = AtomicU64::new(0);
            let progress = |n: u64| {
                counted.fetch_add(n, Ordering::Relaxed);
                telemetry::record_downloaded_bytes(n);
            };
            for (path, listed) in files {
                let dest = staging.join(path);
                if let Some(parent) = dest.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| io(parent, e))?;
                }
                let location = self.object(unit, path);
                let result =
                    download::object(&*self.store, &location, listed.size, listed.e_tag.as_deref(), &dest, &progress)
                        .await;
                *bytes += counted.swap(0, Ordering::Relaxed);
                result?;
            }
            for path in files.keys() {
                let place = self.place(unit, path);
                if let Some(parent) = place.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| io(parent, e))?;
                }
                std::fs::rename(staging.join(path), &place).map_err(|e| io(&place, e))?;
            }
            for path in old.into_iter().flat_map(|o| o.keys()).filter(|p| !files.contains_key(*p)) {
                let place = self.place(unit, path);
                match std::fs::remove_file(&place) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&place, e)),
                    _ => {}
                }
            }
            Ok(())
        }
        .await;
        let _ = std::fs::remove_dir_all(&staging);
        result
    }

    /// Removes a unit gone from the bucket: a version's folder, or the
    /// model's own files (and the model's folder once nothing is left).
    fn remove(&self, unit: &str, files: &Files) -> Result<(), Failure> {
        let io = |what: &Path, e: std::io::Error| Failure::Io(format!("removing {}: {e}", what.display()));
        let mut folder = self.models();
        folder.extend(unit.split('/'));
        if unit.contains('/') {
            match std::fs::remove_dir_all(&folder) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&folder, e)),
                _ => {}
            }
        } else {
            for path in files.keys() {
                let place = self.place(unit, path);
                match std::fs::remove_file(&place) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&place, e)),
                    _ => {}
                }
            }
        }
        let mut model = self.models();
        model.push(unit.split('/').next().unwrap_or(unit));
        if !has_files(&model) {
            let _ = std::fs::remove_dir_all(&model);
        }
        Ok(())
    }

    fn object(&self, unit: &str, path: &str) -> ObjectPath {
        let mut location = self.prefix.clone();
        for part in unit.split('/').chain(path.split('/')) {
            location = location.join(part);
        }
        location
    }

    /// The sync at start-up, before anything loads: two listings RECHECK
    /// apart when the first finds changes, so what holds still between them
    /// is installed and an upload in progress is not. A store out of reach
    /// leaves the cache as the last run left it.
    pub async fn initial_sync(&self) {
        let installed = self.installed().len();
        tracing::info!(repository = %self.url, cached_units = installed, "syncing the repository from object storage");
        if let Ok(report) = self.sync(true).await
            && !report.waiting.is_empty()
        {
            tokio::time::sleep(RECHECK).await;
            let _ = self.sync(true).await;
        }
    }

    /// Syncs every `every` until shutdown (RECHECK after a listing that
    /// found changes). A failed listing costs one request per poll, and the
    /// poll after the store returns sees it; a unit whose download fails
    /// backs off on its own (MAX_SKIPS).
    pub async fn run(self: Arc<Self>, every: Duration, shutdown: Shutdown) {
        let stop = shutdown.wait();
        tokio::pin!(stop);
        let mut waiting = false;
        loop {
            let wait = if waiting { RECHECK.min(every) } else { every };
            tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep(wait) => {}
            }
            waiting = self.sync(true).await.is_ok_and(|report| !report.waiting.is_empty());
        }
    }
}

fn has_files(folder: &Path) -> bool {
    std::fs::read_dir(folder).into_iter().flatten().flatten().any(|entry| {
        let path = entry.path();
        if path.is_dir() { has_files(&path) } else { true }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;
    use object_store::{ObjectStoreExt, PutPayload};

    async fn put(store: &InMemory, key: &str, body: &[u8]) {
        store.put(&ObjectPath::from(key), PutPayload::from(body.to_vec())).await.unwrap();
    }

    fn mirror(store: &Arc<InMemory>, folder: &Path, marker: Option<&str>) -> Mirror {
        let remote =
            Remote { url: "memory://bucket/repo".into(), store: store.clone(), prefix: ObjectPath::from("repo") };
        Mirror::new(remote, folder.to_path_buf(), marker.map(str::to_string)).unwrap()
    }

    /// An empty store, a cache folder and the mirror between them.
    fn fresh(marker: Option<&str>) -> (Arc<InMemory>, tempfile::TempDir, Mirror) {
        let store = Arc::new(InMemory::new());
        let cache = tempfile::tempdir().unwrap();
        let m = mirror(&store, cache.path(), marker);
        (store, cache, m)
    }

    fn read(mirror: &Mirror, path: &str) -> Option<Vec<u8>> {
        std::fs::read(mirror.models().join(path)).ok()
    }

    #[tokio::test]
    async fn versions_settle_then_install_and_a_warm_restart_reads_nothing() {
        let store = Arc::new(InMemory::new());
        put(&store, "repo/mlp/config.pbtxt", b"max_batch_size: 8").await;
        put(&store, "repo/mlp/1/model.onnx", b"one").await;
        put(&store, "repo/other-prefix-file", b"ignored: not in a model folder").await;
        let cache = tempfile::tempdir().unwrap();
        let m = mirror(&store, cache.path(), None);
        let first = m.sync(true).await.unwrap();
        assert!(first.installed.is_empty(), "nothing installs from a single listing: {first:?}");
        assert_eq!(first.waiting, ["mlp/1", "mlp"]);
        let second = m.sync(true).await.unwrap();
        assert_eq!(second.installed, ["mlp/1", "mlp"]);
        assert_eq!(second.downloaded_bytes, 20);
        assert_eq!(read(&m, "mlp/1/model.onnx").as_deref(), Some(&b"one"[..]));
        assert_eq!(read(&m, "mlp/config.pbtxt").as_deref(), Some(&b"max_batch_size: 8"[..]));
        // Unchanged: one listing, no reads.
        let third = m.sync(true).await.unwrap();
        assert!(third.installed.is_empty() && third.downloaded_bytes == 0, "{third:?}");
        // A restart on the same cache holds what was installed.
        let again = mirror(&store, cache.path(), None);
        let warm = again.sync(false).await.unwrap();
        assert!(warm.installed.is_empty() && warm.downloaded_bytes == 0, "{warm:?}");
        // A cache file lost while it was down is fetched again.
        std::fs::remove_file(again.models().join("mlp/1/model.onnx")).unwrap();
        let healed = mirror(&store, cache.path(), None).sync(false).await.unwrap();
        assert_eq!(healed.installed, ["mlp/1"]);
    }

    #[tokio::test]
    async fn an_upload_in_progress_waits_and_a_marker_installs_at_once() {
        let (store, _cache, m) = fresh(Some("READY"));
        put(&store, "repo/mlp/1/model.onnx", b"one").await;
        m.sync(true).await.unwrap();
        put(&store, "repo/mlp/1/weights.bin", b"more").await; // still uploading
        let moving = m.sync(true).await.unwrap();
        assert_eq!(moving.waiting, ["mlp/1"]);
        assert_eq!(read(&m, "mlp/1/model.onnx"), None);
        put(&store, "repo/mlp/2/model.onnx", b"two").await;
        put(&store, "repo/mlp/2/READY", b"").await;
        let marked = m.sync(true).await.unwrap();
        assert_eq!(marked.installed, ["mlp/1", "mlp/2"], "1 held still, 2 is marked");
        assert_eq!(read(&m, "mlp/2/model.onnx").as_deref(), Some(&b"two"[..]));
    }

    #[tokio::test]
    async fn replaced_files_swap_in_place_and_deleted_versions_go() {
        let (store, _cache, m) = fresh(None);
        put(&store, "repo/mlp/1/model.onnx", b"one").await;
        put(&store, "repo/mlp/1/extra.bin", b"x").await;
        put(&store, "repo/mlp/2/model.onnx", b"two").await;
        m.sync(false).await.unwrap();
        put(&store, "repo/mlp/1/model.onnx", b"one, retrained").await;
        store.delete(&ObjectPath::from("repo/mlp/1/extra.bin")).await.unwrap();
        store.delete(&ObjectPath::from("repo/mlp/2/model.onnx")).await.unwrap();
        let report = m.sync(false).await.unwrap();
        assert_eq!(report.installed, ["mlp/1"]);
        assert_eq!(report.removed, ["mlp/2"]);
        assert_eq!(read(&m, "mlp/1/model.onnx").as_deref(), Some(&b"one, retrained"[..]));
        assert_eq!(read(&m, "mlp/1/extra.bin"), None);
        assert!(!m.models().join("mlp/2").exists());
        // The last object of a model gone: the model's folder goes too.
        store.delete(&ObjectPath::from("repo/mlp/1/model.onnx")).await.unwrap();
        m.sync(false).await.unwrap();
        assert!(!m.models().join("mlp").exists());
    }

    #[tokio::test]
    async fn an_object_that_changes_or_vanishes_after_the_listing_is_not_installed() {
        let (store, cache, m) = fresh(None);
        put(&store, "repo/mlp/1/model.onnx", b"one").await;
        m.sync(false).await.unwrap();
        // Listed as "two", rewritten before the read: its ETag no longer matches.
        put(&store, "repo/mlp/1/model.onnx", b"two").await;
        let listing = m.list().await.unwrap();
        put(&store, "repo/mlp/1/model.onnx", b"three").await;
        let mut bytes = 0;
        let old = m.installed().get("mlp/1").cloned();
        let changed = m.install("mlp/1", &listing["mlp/1"], old.as_ref(), &mut bytes).await.unwrap_err();
        assert_eq!(changed.reason(), "verify", "{changed}");
        assert_eq!(read(&m, "mlp/1/model.onnx").as_deref(), Some(&b"one"[..]), "the old file keeps serving");
        // Listed, then deleted before the read.
        let listing = m.list().await.unwrap();
        store.delete(&ObjectPath::from("repo/mlp/1/model.onnx")).await.unwrap();
        let vanished = m.install("mlp/1", &listing["mlp/1"], old.as_ref(), &mut bytes).await.unwrap_err();
        assert_eq!(vanished.reason(), "download", "{vanished}");
        assert_eq!(read(&m, "mlp/1/model.onnx").as_deref(), Some(&b"one"[..]));
        assert!(!cache.path().join(".staging").read_dir().unwrap().any(|_| true), "staging is cleaned up");
    }

    #[tokio::test]
    async fn a_unit_that_keeps_failing_backs_off_and_a_new_upload_is_tried_at_once() {
        let (store, _cache, m) = fresh(None);
        put(&store, "repo/mlp/1/model.onnx", b"one").await;
        // The cache's folder for the version is a file: every install fails.
        std::fs::create_dir_all(m.models().join("mlp")).unwrap();
        std::fs::write(m.models().join("mlp/1"), b"in the way").unwrap();
        let mut pattern = String::new();
        for _ in 0..8 {
            let report = m.sync(false).await.unwrap();
            pattern.push(if report.failed.is_empty() { '.' } else { 'x' });
        }
        assert_eq!(pattern, "xx.x...x", "tried at polls 1, 2, 4 and 8");
        // A new upload of the unit is tried at the next poll.
        put(&store, "repo/mlp/1/model.onnx", b"one, again").await;
        std::fs::remove_file(m.models().join("mlp/1")).unwrap();
        let report = m.sync(false).await.unwrap();
        assert_eq!(report.installed, ["mlp/1"], "{report:?}");
    }

    #[tokio::test]
    async fn large_objects_come_in_ranged_reads() {
        let (store, _cache, m) = fresh(None);
        let big: Vec<u8> = (0..download::CHUNK * 2 + 12345).map(|i| (i % 251) as u8).collect();
        put(&store, "repo/big/1/model.onnx", &big).await;
        let report = m.sync(false).await.unwrap();
        assert_eq!(report.downloaded_bytes, big.len() as u64);
        assert!(read(&m, "big/1/model.onnx").unwrap() == big);
    }
}
