//! When the certificate, key, client CA and key file are read again: on a
//! change in the folders that hold them (inotify on the folder, not the
//! file, so the rename and symlink swaps of Kubernetes Secret volumes are
//! seen; the watch is re-armed after each change and each period, in case
//! the folder itself was replaced), every period as a fallback, and on
//! SIGHUP. A reload that fails right after a change is tried once more a
//! moment later, for files written one after another.

use super::Security;
use crate::shutdown::Shutdown;
use notify::Watcher as _;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Quiet time after a change before the files are read: a rename swap or a
/// copy lands as several events.
const SETTLE: Duration = Duration::from_millis(200);
/// When a reload after a change failed, how long before it is tried again.
const RETRY: Duration = Duration::from_secs(1);

/// Reloads until `until` fires. Returns at once when no file is configured
/// (SIGHUP is still taken, so it never kills the server).
pub async fn run(security: Arc<Security>, every: Duration, until: Shutdown) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = signal(SignalKind::hangup()).expect("installing the SIGHUP handler");
    let folders: BTreeSet<PathBuf> = security.files().iter().map(|f| folder(f)).collect();
    let (changed, mut changes) = mpsc::channel::<()>(1);
    let mut _watcher = arm(&folders, &changed);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let stop = until.wait();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = hangup.recv() => {
                if folders.is_empty() {
                    tracing::info!("SIGHUP: no certificate or key file to reload");
                } else {
                    security.reload("SIGHUP");
                }
            }
            _ = tick.tick(), if !folders.is_empty() => {
                security.reload("periodic");
                _watcher = arm(&folders, &changed);
            }
            Some(()) = changes.recv() => {
                settle(&mut changes).await;
                if !security.reload("file change") {
                    tokio::time::sleep(RETRY).await;
                    security.reload("file change, retried");
                }
                _watcher = arm(&folders, &changed);
            }
        }
    }
}

/// Waits until SETTLE passes without another change.
async fn settle(changes: &mut mpsc::Receiver<()>) {
    while let Ok(Some(())) = tokio::time::timeout(SETTLE, changes.recv()).await {}
}

fn folder(file: &Path) -> PathBuf {
    match file.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// A fresh watch on every folder; None (periodic reloads only) where the
/// platform gives none.
fn arm(folders: &BTreeSet<PathBuf>, changed: &mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
    if folders.is_empty() {
        return None;
    }
    let changed = changed.clone();
    let handler = move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| changes_content(&e.kind)) {
            // Full means a reload is already due.
            let _ = changed.try_send(());
        }
    };
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(watcher) => watcher,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the certificate folders; reloading every period only");
            return None;
        }
    };
    for folder in folders {
        if let Err(e) = watcher.watch(folder, notify::RecursiveMode::NonRecursive) {
            tracing::warn!(folder = %folder.display(), error = %e, "cannot watch the folder; reloading every period only");
        }
    }
    Some(watcher)
}

/// Reads (our own among them) change nothing; everything else may.
fn changes_content(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind};
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}
