//! The threads that execute one model version: ONNX Runtime's pool threads
//! (spawned through `ModelThreads`, ONNX Runtime's custom thread hook) and
//! the version's instance threads, which take part in every run.
//!
//! A model whose executions take milliseconds keeps every core busy while
//! it runs, and its threads always have work; the fronts' work per request
//! (decoding, refusing, answering) is short. Once `background` is called,
//! every thread of the version runs at a lower priority (a nice increment
//! of `BACKGROUND_NICE`): on a saturated machine a request is then decoded,
//! refused or answered at once instead of waiting for a model thread's time
//! slice, and the model still gets every cycle the fronts leave. Models of
//! microseconds are never lowered: their instance thread is on every
//! request's path, and lowering it cost them 2-3x throughput under a load
//! generator sharing the cores.
//!
//! A shadow version (repository/shadow.rs) runs on spare capacity only:
//! `idle` moves its threads to Linux's SCHED_IDLE class, which runs only
//! when no thread of a normal class wants the core, so a shadow batch never
//! takes a cycle from the serving version or the fronts.

use parking_lot::Mutex;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

/// How much lower than the server's other threads a heavy model runs.
pub const BACKGROUND_NICE: i32 = 10;

/// The registry of one version's threads. Cheap to clone; every clone is
/// the same registry.
#[derive(Clone)]
pub struct ModelThreads(Arc<Inner>);

struct Inner {
    /// The name given to pool threads (Linux keeps 15 bytes of it).
    name: String,
    /// Kernel thread ids of the threads alive now.
    tids: Mutex<Vec<i32>>,
    background: AtomicBool,
    /// Set once the version is a shadow: every thread runs at SCHED_IDLE.
    idle: AtomicBool,
}

/// A thread's membership; leaving the registry when dropped.
pub struct Member {
    threads: ModelThreads,
    tid: i32,
}

impl Drop for Member {
    fn drop(&mut self) {
        self.threads.0.tids.lock().retain(|&t| t != self.tid);
    }
}

impl ModelThreads {
    /// `name` names the pool threads, e.g. `mlp-1-pool`.
    pub fn new(name: String) -> Self {
        ModelThreads(Arc::new(Inner {
            name,
            tids: Mutex::new(Vec::new()),
            background: AtomicBool::new(false),
            idle: AtomicBool::new(false),
        }))
    }

    /// Registers the calling thread until the returned member is dropped;
    /// it runs at background priority when the version already does.
    pub fn enter(&self) -> Member {
        let tid = current_tid();
        let mut tids = self.0.tids.lock();
        tids.push(tid);
        if self.0.background.load(Ordering::Acquire) {
            lower(tid);
        }
        if self.0.idle.load(Ordering::Acquire) {
            make_idle(tid);
        }
        Member { threads: self.clone(), tid }
    }

    /// Moves every thread of the version, now and later, to background
    /// priority. Once: an unprivileged process cannot raise it again.
    pub fn background(&self) {
        let tids = self.0.tids.lock();
        if self.0.background.swap(true, Ordering::AcqRel) {
            return;
        }
        for &tid in tids.iter() {
            lower(tid);
        }
    }

    /// Moves every thread of the version, now and later, to SCHED_IDLE: it
    /// runs only on cores nothing else wants. Once: an unprivileged process
    /// cannot leave SCHED_IDLE again, so a shadow that is promoted is loaded
    /// anew (repository/mod.rs).
    pub fn idle(&self) {
        let tids = self.0.tids.lock();
        if self.0.idle.swap(true, Ordering::AcqRel) {
            return;
        }
        for &tid in tids.iter() {
            make_idle(tid);
        }
    }

    pub fn is_idle(&self) -> bool {
        self.0.idle.load(Ordering::Acquire)
    }

    pub fn is_background(&self) -> bool {
        self.0.background.load(Ordering::Acquire)
    }

    /// Threads registered now.
    #[cfg(test)]
    fn count(&self) -> usize {
        self.0.tids.lock().len()
    }
}

impl ort::environment::ThreadManager for ModelThreads {
    type Thread = JoinHandle<()>;

    fn create(&self, work: impl FnOnce() + Send + 'static) -> ort::Result<Self::Thread> {
        let threads = self.clone();
        std::thread::Builder::new()
            .name(self.0.name.clone())
            .spawn(move || {
                let _member = threads.enter();
                work();
            })
            .map_err(|e| ort::Error::new(format!("spawning an ONNX Runtime pool thread: {e}")))
    }

    fn join(thread: Self::Thread) -> ort::Result<()> {
        thread.join().map_err(|_| ort::Error::new("an ONNX Runtime pool thread panicked"))
    }
}

#[cfg(target_os = "linux")]
fn current_tid() -> i32 {
    unsafe extern "C" {
        fn gettid() -> i32;
    }
    // SAFETY: a plain system call without arguments.
    unsafe { gettid() }
}

#[cfg(not(target_os = "linux"))]
fn current_tid() -> i32 {
    0
}

/// Adds BACKGROUND_NICE to thread `tid`'s nice value. Failure only logs:
/// the model still runs, at normal priority.
fn lower(tid: i32) {
    #[cfg(target_os = "linux")]
    {
        unsafe extern "C" {
            fn setpriority(which: i32, who: u32, prio: i32) -> i32;
            fn getpriority(which: i32, who: u32) -> i32;
        }
        const PRIO_PROCESS: i32 = 0;
        // SAFETY: plain system calls on a thread id of this process.
        let failed = unsafe {
            let current = getpriority(PRIO_PROCESS, tid as u32);
            setpriority(PRIO_PROCESS, tid as u32, (current + BACKGROUND_NICE).min(19)) != 0
        };
        if failed {
            tracing::debug!(tid, "could not lower the priority of a model thread");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = tid;
}

/// CPU time the whole process has used (utime + stime).
pub fn process_cpu() -> std::time::Duration {
    stat_cpu("/proc/self/stat")
}

/// Cores the server may use: its CPU affinity, and its cgroup's CPU limit
/// with the fraction kept (a limit of 1500m is 1.5 cores).
pub fn cores_available() -> f64 {
    let whole = std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64);
    super::cgroup::cpu_limit().map_or(whole, |limit| limit.min(whole))
}

/// utime + stime of a /proc stat file (zero where it cannot be read).
fn stat_cpu(path: &str) -> std::time::Duration {
    let Ok(stat) = std::fs::read_to_string(path) else { return std::time::Duration::ZERO };
    // Fields 14 and 15, counted after the command name, which may hold spaces.
    let Some(after) = stat.rfind(')').map(|at| &stat[at + 2..]) else { return std::time::Duration::ZERO };
    let mut fields = after.split(' ').skip(11);
    let ticks: u64 = fields.by_ref().take(2).filter_map(|f| f.parse::<u64>().ok()).sum();
    std::time::Duration::from_secs_f64(ticks as f64 / clock_ticks())
}

/// Clock ticks per second of /proc's times.
fn clock_ticks() -> f64 {
    #[cfg(target_os = "linux")]
    {
        unsafe extern "C" {
            fn sysconf(name: i32) -> i64;
        }
        const SC_CLK_TCK: i32 = 2;
        // SAFETY: a plain query without side effects.
        let ticks = unsafe { sysconf(SC_CLK_TCK) };
        if ticks > 0 {
            return ticks as f64;
        }
    }
    100.0
}

/// Moves thread `tid` to SCHED_IDLE. Failure only logs: the shadow still
/// runs, at its normal priority, and its own queue bound still holds.
fn make_idle(tid: i32) {
    #[cfg(target_os = "linux")]
    {
        #[repr(C)]
        struct SchedParam {
            priority: i32,
        }
        unsafe extern "C" {
            fn sched_setscheduler(pid: i32, policy: i32, param: *const SchedParam) -> i32;
        }
        const SCHED_IDLE: i32 = 5;
        let param = SchedParam { priority: 0 };
        // SAFETY: a plain system call on a thread id of this process, with a
        // parameter that lives across it.
        if unsafe { sched_setscheduler(tid, SCHED_IDLE, &param) } != 0 {
            tracing::warn!(tid, "could not move a shadow version's thread to SCHED_IDLE");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = tid;
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    fn nice_of(tid: i32) -> i32 {
        let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).expect("own task");
        // Field 19 is the nice value; the command name (field 2) may hold spaces.
        let after = &stat[stat.rfind(')').expect("comm") + 2..];
        after.split(' ').nth(16).expect("nice field").parse().expect("a number")
    }

    /// The scheduling policy of a thread, field 41 of its stat line.
    fn policy_of(tid: i32) -> i32 {
        let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).expect("own task");
        let after = &stat[stat.rfind(')').expect("comm") + 2..];
        after.split(' ').nth(38).expect("policy field").parse().expect("a number")
    }

    #[test]
    fn process_cpu_counts_this_process_work() {
        let before = process_cpu();
        let started = std::time::Instant::now();
        let mut x = 0u64;
        while started.elapsed() < std::time::Duration::from_millis(300) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        assert!(process_cpu() - before >= std::time::Duration::from_millis(50));
    }

    /// A member of `threads` that stays until told to go: its thread id,
    /// the word to go, and its handle.
    fn member(threads: &ModelThreads) -> (i32, std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>) {
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let threads = threads.clone();
        let handle = std::thread::spawn(move || {
            let _member = threads.enter();
            tid_tx.send(current_tid()).unwrap();
            go_rx.recv().unwrap();
        });
        (tid_rx.recv().unwrap(), go_tx, handle)
    }

    /// What `probe` reads of a member that joins now and leaves at once.
    fn late_member<T: Send + 'static>(threads: &ModelThreads, probe: fn(i32) -> T) -> T {
        let threads = threads.clone();
        std::thread::spawn(move || {
            let _member = threads.enter();
            probe(current_tid())
        })
        .join()
        .unwrap()
    }

    #[test]
    fn a_shadow_version_runs_every_thread_at_sched_idle() {
        let threads = ModelThreads::new("test-shadow".into());
        let (early_tid, go, early) = member(&threads);
        assert_eq!(policy_of(early_tid), 0, "SCHED_OTHER before");
        threads.idle();
        assert!(threads.is_idle());
        assert_eq!(policy_of(early_tid), 5, "a member moves at once");
        assert_eq!(late_member(&threads, policy_of), 5, "a thread that joins later starts idle");
        go.send(()).unwrap();
        early.join().unwrap();
    }

    #[test]
    fn members_are_lowered_when_the_version_goes_to_the_background_and_leave_when_done() {
        let threads = ModelThreads::new("test-pool".into());
        let (early_tid, go_tx, early) = member(&threads);
        let before = nice_of(early_tid);
        assert_eq!(threads.count(), 1);
        threads.background();
        assert!(threads.is_background());
        assert_eq!(nice_of(early_tid), (before + BACKGROUND_NICE).min(19), "a member is lowered at once");
        // A thread that joins later starts lowered; a second call changes nothing.
        threads.background();
        assert_eq!(late_member(&threads, nice_of), (before + BACKGROUND_NICE).min(19));
        go_tx.send(()).unwrap();
        early.join().unwrap();
        assert_eq!(threads.count(), 0, "members leave when they end");
    }
}
