//! Which model to apply, and when, as a plain data structure free of
//! threads, clocks and the filesystem: callers pass what they observed and
//! `now`, so every rule is tested directly.
//!
//! The rule: a model is applied once two observations of it at least
//! [`SETTLE`] apart agree, with no filesystem event for it in between, and
//! differ from what was last applied. Any change (another fingerprint, an
//! event) restarts the wait. A file being written keeps changing size or
//! modification time, so it is never applied half-written as long as the
//! writer never pauses longer than `SETTLE`; a writer that may (a slow
//! network copy) should write elsewhere and rename into place.

use super::fingerprint::{Fingerprint, describe};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How long a changed model must stay unchanged before it is applied: long
/// enough to cover the gaps between the writes of a copy, short enough that
/// a deploy shows within a second.
pub const SETTLE: Duration = Duration::from_millis(300);

/// What one look at a model directory found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observed {
    Present(Fingerprint),
    /// No such directory.
    Absent,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// (Re)load the model from disk.
    Load,
    /// The directory is gone: take the model out of service.
    Unload,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Load => "load",
            Action::Unload => "unload",
        }
    }
}

/// A settled change to apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub model: String,
    pub action: Action,
    /// What differs from what was applied before, for the log.
    pub what: String,
}

/// A model seen changing, not applied yet.
#[derive(Debug)]
struct Pending {
    /// The latest observation; `None` until observed after the latest event.
    last: Option<Observed>,
    /// When `last` was first observed (or when the event came).
    since: Instant,
}

#[derive(Debug)]
pub struct Settle {
    /// The fingerprint of every model directory as last applied (at
    /// start-up: as the initial load found it). Absent models are not here.
    applied: BTreeMap<String, Fingerprint>,
    pending: BTreeMap<String, Pending>,
    settle: Duration,
}

impl Settle {
    /// Starts from the models the initial load served.
    pub fn new(applied: BTreeMap<String, Fingerprint>, settle: Duration) -> Self {
        Settle { applied, pending: BTreeMap::new(), settle }
    }

    /// A filesystem event touched `model`: whatever was observed of it
    /// before no longer counts, and it is due for a look now.
    pub fn event(&mut self, model: &str, now: Instant) {
        self.pending.insert(model.to_string(), Pending { last: None, since: now });
    }

    /// Records one look at `model` taken at `now`; returns the change to
    /// apply once it has settled. The caller applies it; from then on it is
    /// what "applied" means, whether the load succeeds or not (a broken
    /// file is not retried until it changes again).
    pub fn observe(&mut self, model: &str, seen: Observed, now: Instant) -> Option<Change> {
        let applied = self.applied.get(model);
        let unchanged = match &seen {
            Observed::Present(f) => applied == Some(f),
            Observed::Absent => applied.is_none(),
        };
        if unchanged {
            self.pending.remove(model);
            return None;
        }
        match self.pending.get_mut(model) {
            Some(p) if p.last.as_ref() == Some(&seen) => {
                if now.saturating_duration_since(p.since) < self.settle {
                    return None;
                }
                self.pending.remove(model);
                let model = model.to_string();
                let (action, what) = match seen {
                    Observed::Present(f) => {
                        let new = Some(f.clone());
                        let old = self.applied.insert(model.clone(), f);
                        (Action::Load, describe(old.as_ref(), new.as_ref()))
                    }
                    Observed::Absent => {
                        let old = self.applied.remove(&model);
                        (Action::Unload, describe(old.as_ref(), None))
                    }
                };
                Some(Change { model, action, what })
            }
            Some(p) => {
                *p = Pending { last: Some(seen), since: now };
                None
            }
            None => {
                self.pending.insert(model.to_string(), Pending { last: Some(seen), since: now });
                None
            }
        }
    }

    /// A look at `model` failed: drop what was pending; the next rescan
    /// compares it with what was applied again, so nothing is lost.
    pub fn forget(&mut self, model: &str) {
        self.pending.remove(model);
    }

    /// Every pending model, as `forget` (the repository could not be read).
    pub fn forget_all(&mut self) {
        self.pending.clear();
    }

    /// Pending models to look at now.
    pub fn due(&self, now: Instant) -> Vec<String> {
        self.pending.iter().filter(|(_, p)| self.due_at(p) <= now).map(|(name, _)| name.clone()).collect()
    }

    /// When the next pending model falls due.
    pub fn next_due(&self) -> Option<Instant> {
        self.pending.values().map(|p| self.due_at(p)).min()
    }

    /// Every model applied or pending (what a rescan must look at beside
    /// the directories on disk, to notice removals).
    pub fn known(&self) -> Vec<String> {
        let mut names: Vec<String> = self.applied.keys().chain(self.pending.keys()).cloned().collect();
        names.sort();
        names.dedup();
        names
    }

    fn due_at(&self, p: &Pending) -> Instant {
        match p.last {
            None => p.since,
            Some(_) => p.since + self.settle,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::watch::fingerprint::Stamp;

    fn fp(size: u64) -> Observed {
        Observed::Present(print(size))
    }

    fn print(size: u64) -> Fingerprint {
        Fingerprint::from_stamps(vec![Stamp { path: "1/model.onnx".into(), size, modified: None }])
    }

    fn ms(t: Instant, millis: u64) -> Instant {
        t + Duration::from_millis(millis)
    }

    fn start(models: &[(&str, u64)]) -> Settle {
        Settle::new(models.iter().map(|(n, s)| (n.to_string(), print(*s))).collect(), SETTLE)
    }

    #[test]
    fn a_change_applies_once_two_looks_settle_apart_agree() {
        let t = Instant::now();
        let mut s = start(&[("m", 1)]);
        assert_eq!(s.observe("m", fp(1), t), None, "what was applied is no change");
        assert_eq!(s.next_due(), None);
        assert_eq!(s.observe("m", fp(2), t), None, "first look at a change");
        assert_eq!(s.next_due(), Some(ms(t, 300)));
        assert!(s.due(ms(t, 299)).is_empty());
        assert_eq!(s.due(ms(t, 300)), ["m"]);
        assert_eq!(s.observe("m", fp(2), ms(t, 299)), None, "not SETTLE apart yet");
        let change = s.observe("m", fp(2), ms(t, 300)).expect("settled");
        assert_eq!(change.action, Action::Load);
        assert_eq!(change.what, "modified 1/model.onnx");
        assert_eq!(s.next_due(), None);
        assert_eq!(s.observe("m", fp(2), ms(t, 1000)), None, "applied once");
    }

    #[test]
    fn a_file_still_growing_is_never_applied() {
        // Written in chunks, each look sooner than SETTLE after a write.
        let t = Instant::now();
        let mut s = start(&[("m", 1)]);
        for step in 0..10 {
            assert_eq!(s.observe("m", fp(10 + step), ms(t, 250 * step)), None, "step {step}");
        }
        // Done writing at 2250 ms: settles SETTLE after the first look at the final size.
        assert_eq!(s.observe("m", fp(19), ms(t, 2500)), None);
        assert_eq!(s.observe("m", fp(19), ms(t, 2549)), None);
        assert_eq!(s.observe("m", fp(19), ms(t, 2550)).map(|c| c.action), Some(Action::Load));
    }

    #[test]
    fn an_event_restarts_the_wait_even_when_the_fingerprint_agrees() {
        let t = Instant::now();
        let mut s = start(&[("m", 1)]);
        s.observe("m", fp(2), t);
        s.event("m", ms(t, 200));
        assert_eq!(s.due(ms(t, 200)), ["m"], "an event is due at once");
        assert_eq!(s.observe("m", fp(2), ms(t, 210)), None, "first look since the event");
        assert_eq!(s.observe("m", fp(2), ms(t, 400)), None, "300 ms after the first look, not after the event");
        assert_eq!(s.next_due(), Some(ms(t, 510)));
        assert!(s.observe("m", fp(2), ms(t, 510)).is_some());
    }

    #[test]
    fn an_event_without_a_change_applies_nothing() {
        let t = Instant::now();
        let mut s = start(&[("m", 1)]);
        s.event("m", t);
        s.event("not_a_model.txt", t);
        assert_eq!(s.due(t), ["m", "not_a_model.txt"]);
        assert_eq!(s.observe("m", fp(1), t), None);
        assert_eq!(s.observe("not_a_model.txt", Observed::Absent, t), None);
        assert_eq!(s.next_due(), None, "nothing pending");
    }

    #[test]
    fn new_models_load_and_removed_ones_unload() {
        let t = Instant::now();
        let mut s = start(&[("old", 1)]);
        assert_eq!(s.known(), ["old"]);
        s.observe("new", fp(5), t);
        s.observe("old", Observed::Absent, t);
        assert_eq!(s.known(), ["new", "old"]);
        let load = s.observe("new", fp(5), ms(t, 300)).unwrap();
        assert_eq!(
            (load.model.as_str(), load.action, load.what.as_str()),
            ("new", Action::Load, "new model directory")
        );
        let unload = s.observe("old", Observed::Absent, ms(t, 300)).unwrap();
        assert_eq!((unload.action, unload.what.as_str()), (Action::Unload, "model directory removed"));
        assert_eq!(s.known(), ["new"]);
        // Gone and never applied: nothing to unload.
        assert_eq!(s.observe("ghost", Observed::Absent, t), None);
        // Back again: loads.
        s.observe("old", fp(1), ms(t, 400));
        assert_eq!(s.observe("old", fp(1), ms(t, 700)).map(|c| c.action), Some(Action::Load));
    }

    #[test]
    fn a_model_that_flickers_back_to_what_was_applied_is_left_alone() {
        let t = Instant::now();
        let mut s = start(&[("m", 1)]);
        s.observe("m", Observed::Absent, t);
        assert_eq!(s.observe("m", fp(1), ms(t, 100)), None, "renamed away and back");
        assert_eq!(s.next_due(), None);
        assert_eq!(s.observe("m", fp(1), ms(t, 1000)), None);
    }

    #[test]
    fn forgetting_drops_only_what_is_pending() {
        let t = Instant::now();
        let mut s = start(&[("m", 1)]);
        s.observe("m", fp(2), t);
        s.forget("m");
        assert_eq!(s.next_due(), None);
        // The next rescan sees the change again and starts over.
        assert_eq!(s.observe("m", fp(2), ms(t, 1000)), None);
        assert!(s.observe("m", fp(2), ms(t, 1300)).is_some());
        s.observe("m", fp(3), ms(t, 2000));
        s.forget_all();
        assert_eq!(s.next_due(), None);
    }
}
