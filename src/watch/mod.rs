//! `--model-control-mode poll`: watches the repository and applies what
//! changes on disk, one model at a time.
//!
//! - **When to look**: filesystem events (the `notify` crate, a recursive
//!   watch on the root; inotify on Linux) name the model they touch, and
//!   every `--repository-poll-secs` a full rescan looks at every model
//!   directory, because events can be missed (a full event queue, a watch
//!   added just after a new directory filled) and some filesystems (NFS,
//!   FUSE) send none. If the watch cannot be set up the rescan alone
//!   serves. `FERROSERVE_WATCH_EVENTS=0` (hidden flag
//!   `--repository-watch-events false`) turns events off, for tests and
//!   for filesystems whose events mislead.
//! - **Whether it changed, and whether it settled**: [`fingerprint`] (path,
//!   size and modification time of each file) and [`settle`] (two equal
//!   looks at least [`SETTLE`] apart, with no event in between).
//! - **Applying**: a directory that exists is (re)loaded with
//!   [`Repository::load`], a directory that disappeared is unloaded with
//!   [`Repository::unload`]. Changes apply serially, each right after the
//!   look that confirmed it settled, so at most one model is being swapped
//!   (and held twice in memory) at a time; loads run on the blocking pool,
//!   so request handling never waits for them. Each change is logged and
//!   counted in `ferroserve_repository_changes_total`.

mod fingerprint;
mod settle;

pub use settle::SETTLE;

use crate::config::Config;
use crate::repository::Repository;
use crate::shutdown::Shutdown;
use crate::telemetry;
use fingerprint::fingerprint;
use settle::{Action, Change, Observed, Settle};
use std::collections::BTreeSet;
use std::path::{Component, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Events buffered between the notify thread and the watch task; when full,
/// the next round is a full rescan instead.
const EVENT_BUFFER: usize = 1024;

/// What one filesystem event tells the watch task.
#[derive(Debug, PartialEq, Eq)]
enum Touched {
    /// Something under this model directory (or the directory itself).
    Model(String),
    /// Events were lost, or the root itself changed: look at everything.
    Everything,
}

/// The notify side: the watcher (dropping it stops its thread) and what it
/// sends.
struct Events {
    _watcher: notify::RecommendedWatcher,
    /// Sent by the notify thread (`try_send`), received by the watch task.
    receiver: mpsc::Receiver<Touched>,
    /// Set by the notify thread when `receiver` was full and events were
    /// dropped; the watch task clears it and rescans.
    overflowed: Arc<AtomicBool>,
}

/// The watch task's state.
pub struct Watcher {
    repository: Arc<Repository>,
    period: Duration,
    settle: Settle,
    events: Option<Events>,
}

impl Watcher {
    /// Starts listening for events and fingerprints every model directory:
    /// the baseline the initial load serves. Call it before that load, so a
    /// change made while models load is applied afterwards.
    pub async fn start(repository: Arc<Repository>, config: &Config) -> Watcher {
        let roots = repository.roots().to_vec();
        let with_events = config.repository_watch_events;
        // Both walk the tree: off the runtime's threads. Events first, so
        // nothing falls between the baseline and the watch.
        let started = {
            let (repository, roots) = (repository.clone(), roots.clone());
            tokio::task::spawn_blocking(move || {
                let events = if with_events { listen(&roots) } else { None };
                (events, look(&repository, None, Vec::new()))
            })
        };
        let (events, found) = started.await.expect("starting the repository watch panicked; this is a bug");
        let mut applied = std::collections::BTreeMap::new();
        match found {
            Ok(found) => {
                for (name, _, seen) in found {
                    if let Ok(Observed::Present(f)) = seen {
                        applied.insert(name, f);
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the model repository to watch it"),
        }
        let period = Duration::from_secs(config.repository_poll_secs);
        let shown: Vec<String> = roots.iter().map(|r| r.display().to_string()).collect();
        tracing::info!(
            roots = %shown.join(", "),
            events = events.is_some(),
            rescan_secs = config.repository_poll_secs,
            "watching the model repository"
        );
        Watcher { repository, period, settle: Settle::new(applied, SETTLE), events }
    }

    /// Applies changes until shutdown begins.
    pub async fn run(mut self, shutdown: Shutdown) {
        let stop = shutdown.wait();
        tokio::pin!(stop);
        let mut next_rescan = Instant::now() + self.period;
        let mut rescan = false;
        loop {
            let wake = if rescan {
                Instant::now()
            } else {
                self.settle.next_due().map_or(next_rescan, |due| due.min(next_rescan))
            };
            tokio::select! {
                biased;
                () = &mut stop => return,
                touched = next_event(&mut self.events) => self.note(touched, &mut rescan),
                () = tokio::time::sleep_until(wake.into()) => {}
            }
            self.drain_events(&mut rescan);
            let now = Instant::now();
            rescan |= now >= next_rescan;
            let names = if rescan {
                next_rescan = now + self.period;
                None
            } else {
                let due = self.settle.due(now);
                if due.is_empty() {
                    continue;
                }
                Some(due)
            };
            let was_rescan = std::mem::take(&mut rescan);
            let Some(change) = self.round(names).await else { continue };
            // The rest of this round is looked at again right after the
            // change is applied, so every change applies fresh.
            rescan = was_rescan;
            // Not cut short by shutdown: the load would run on to its end
            // on the blocking pool anyway, and the repository stays whole.
            self.apply(change).await;
        }
    }

    /// Looks at `names` (every model when `None`) and returns the first
    /// change that settled.
    async fn round(&mut self, names: Option<Vec<String>>) -> Option<Change> {
        let (repository, known) = (self.repository.clone(), self.settle.known());
        let found = tokio::task::spawn_blocking(move || look(&repository, names, known))
            .await
            .expect("fingerprinting the repository panicked; this is a bug");
        let found = match found {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the model repository; retrying at the next rescan");
                self.settle.forget_all();
                return None;
            }
        };
        for (name, at, seen) in found {
            match seen {
                Ok(seen) => {
                    if let Some(change) = self.settle.observe(&name, seen, at) {
                        return Some(change);
                    }
                }
                Err(e) => {
                    tracing::warn!(model = %name, error = %e, "cannot read the model directory; retrying at the next rescan");
                    self.settle.forget(&name);
                }
            }
        }
        None
    }

    async fn apply(&self, change: Change) {
        let Change { model, action, what } = change;
        tracing::info!(%model, action = action.as_str(), changed = %what, "model repository changed");
        telemetry::record_repository_change(&model, action.as_str());
        let result = match action {
            Action::Load => self.repository.load(&model).await,
            Action::Unload => self.repository.unload(&model).await,
        };
        if let Err(e) = result {
            // Load failures are logged and counted per version by the repository too.
            tracing::warn!(%model, action = action.as_str(), error = %e, "applying a repository change failed");
        }
    }

    fn note(&mut self, touched: Option<Touched>, rescan: &mut bool) {
        match touched {
            Some(Touched::Model(name)) => self.settle.event(&name, Instant::now()),
            Some(Touched::Everything) => *rescan = true,
            None => {
                tracing::warn!("filesystem events stopped; the periodic rescan carries on alone");
                self.events = None;
            }
        }
    }

    fn drain_events(&mut self, rescan: &mut bool) {
        while let Some(events) = &mut self.events {
            match events.receiver.try_recv() {
                Ok(touched) => self.note(Some(touched), rescan),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => self.note(None, rescan),
            }
        }
        if let Some(events) = &self.events {
            *rescan |= events.overflowed.swap(false, Ordering::Relaxed);
        }
    }
}

/// The next event, or never when events are off.
async fn next_event(events: &mut Option<Events>) -> Option<Touched> {
    match events {
        Some(events) => events.receiver.recv().await,
        None => std::future::pending().await,
    }
}

/// One look at the repository: which model directories exist, then the
/// fingerprint of each of `names` (when `None`: every directory on disk and
/// every model in `known`), each with when it was taken.
type Looked = Vec<(String, Instant, std::io::Result<Observed>)>;

fn look(repository: &Repository, names: Option<Vec<String>>, known: Vec<String>) -> std::io::Result<Looked> {
    let on_disk: BTreeSet<String> = repository.scan()?.into_iter().collect();
    let names = names.unwrap_or_else(|| {
        let all: BTreeSet<String> = on_disk.iter().cloned().chain(known).collect();
        all.into_iter().collect()
    });
    Ok(names
        .into_iter()
        .map(|name| {
            let at = Instant::now();
            // A name in two repositories is no model: its load says why.
            let seen = match repository.model_dir(&name) {
                Ok(dir) if on_disk.contains(&name) => {
                    fingerprint(&dir).map(|f| f.map_or(Observed::Absent, Observed::Present))
                }
                _ => Ok(Observed::Absent),
            };
            (name, at, seen)
        })
        .collect())
}

/// Sets up the recursive watch on every root; `None` (with a warning) when
/// it cannot be, e.g. past the inotify watch limit.
fn listen(roots: &[PathBuf]) -> Option<Events> {
    use notify::Watcher as _;
    let (sender, receiver) = mpsc::channel(EVENT_BUFFER);
    let overflowed = Arc::new(AtomicBool::new(false));
    let handler = {
        let (roots, overflowed) = (roots.to_vec(), overflowed.clone());
        move |event: notify::Result<notify::Event>| {
            for touched in touched(&roots, event) {
                if let Err(mpsc::error::TrySendError::Full(_)) = sender.try_send(touched) {
                    overflowed.store(true, Ordering::Relaxed);
                }
            }
        }
    };
    let watched = notify::recommended_watcher(handler).and_then(|mut watcher| {
        for root in roots {
            watcher.watch(root, notify::RecursiveMode::Recursive)?;
        }
        Ok(watcher)
    });
    match watched {
        Ok(watcher) => Some(Events { _watcher: watcher, receiver, overflowed }),
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the model repository for events; rescanning periodically only");
            None
        }
    }
}

/// What an event means for the watch task: the models it names. Reads
/// (opening a file, our own loads among them) change nothing and are
/// ignored; a lost event or an error means look at everything.
fn touched(roots: &[PathBuf], event: notify::Result<notify::Event>) -> Vec<Touched> {
    use notify::event::{AccessKind, AccessMode, EventKind};
    let event = match event {
        Ok(event) => event,
        Err(_) => return vec![Touched::Everything],
    };
    if event.need_rescan() {
        return vec![Touched::Everything];
    }
    if matches!(event.kind, EventKind::Access(kind) if kind != AccessKind::Close(AccessMode::Write)) {
        return Vec::new();
    }
    let mut models = Vec::new();
    for path in &event.paths {
        let first =
            roots.iter().find_map(|root| path.strip_prefix(root).ok()).and_then(|rest| rest.components().next());
        let touched = match first {
            Some(Component::Normal(name)) => {
                let name = name.to_string_lossy();
                if name.starts_with('.') {
                    continue;
                }
                Touched::Model(name.into_owned())
            }
            // The root itself, or a path outside it.
            _ => Touched::Everything,
        };
        if !models.contains(&touched) {
            models.push(touched);
        }
    }
    models
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{AccessKind, AccessMode, CreateKind, EventKind, ModifyKind, RenameMode};

    fn event(kind: EventKind, paths: &[&str]) -> notify::Result<notify::Event> {
        Ok(paths.iter().fold(notify::Event::new(kind), |e, p| e.add_path(PathBuf::from(p))))
    }

    fn model(name: &str) -> Touched {
        Touched::Model(name.into())
    }

    #[test]
    fn events_name_the_models_they_touch() {
        let root = &[PathBuf::from("/repo")][..];
        let create = EventKind::Create(CreateKind::File);
        assert_eq!(touched(root, event(create, &["/repo/mlp/2/model.onnx"])), [model("mlp")]);
        assert_eq!(touched(root, event(create, &["/repo/mlp"])), [model("mlp")]);
        let rename = EventKind::Modify(ModifyKind::Name(RenameMode::Both));
        assert_eq!(touched(root, event(rename, &["/repo/a/1/x", "/repo/b/1/x"])), [model("a"), model("b")]);
        assert_eq!(touched(root, event(rename, &["/repo/a/1/x", "/repo/a/2/x"])), [model("a")]);
        let closed = EventKind::Access(AccessKind::Close(AccessMode::Write));
        assert_eq!(touched(root, event(closed, &["/repo/mlp/config.pbtxt"])), [model("mlp")]);
    }

    #[test]
    fn reads_and_hidden_entries_are_ignored_and_lost_events_mean_everything() {
        let root = &[PathBuf::from("repo")][..];
        let open = EventKind::Access(AccessKind::Open(AccessMode::Read));
        assert!(touched(root, event(open, &["repo/mlp/1/model.onnx"])).is_empty());
        assert!(touched(root, event(EventKind::Any, &["repo/.git/index"])).is_empty());
        assert_eq!(touched(root, event(EventKind::Any, &["repo"])), [Touched::Everything]);
        let lost = notify::Event::new(EventKind::Other).set_flag(notify::event::Flag::Rescan);
        assert_eq!(touched(root, Ok(lost)), [Touched::Everything]);
        assert_eq!(touched(root, Err(notify::Error::generic("boom"))), [Touched::Everything]);
    }
}
