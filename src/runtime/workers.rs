//! What one more request costs the runtime's worker threads, per model
//! version, measured on the fly. A request's CPU in the server is not a
//! constant: on an idle server each one pays for waking a worker, for cold
//! caches and for syscalls of its own, and under load those costs shrink
//! or vanish (one wake-up serves many requests, one read takes many
//! frames). The mean CPU per request at today's load therefore overstates
//! what the server needs per request near its limit, by half or more for a
//! model of microseconds. The marginal cost does not: every busy period of
//! a worker (from unpark to park, on the thread's own CPU clock) is one
//! observation of
//!
//!   cpu = wake + c × requests
//!
//! (requests: half a request where one began, half where one was answered,
//! as the two halves often fall in different periods), and a least-squares
//! fit over many periods gives `c`, the CPU of one more request on a worker
//! that is already awake: what each request costs when the server runs
//! flat out. Each version has its own fit (a 12 KiB image costs more to
//! decode than a vector of four floats, three tensors more than one); a
//! period that served several versions is split between them by their
//! requests. The hooks are tokio's `on_thread_unpark` / `on_thread_park`;
//! requests are counted where the repository routes and answers them.

use parking_lot::Mutex;
use std::cell::Cell;
use std::sync::atomic::{AtomicU32, Ordering};

/// Versions one busy period keeps apart; a period with more is dropped.
const VERSIONS_PER_PERIOD: usize = 4;

/// This worker's CPU clock when it last woke, and the half-requests of
/// each version (by key) since.
#[derive(Clone, Copy)]
struct Period {
    started: u64,
    halves: [(u32, u32); VERSIONS_PER_PERIOD],
    len: usize,
    overflowed: bool,
}

thread_local! {
    static PERIOD: Cell<Option<Period>> = const { Cell::new(None) };
}

/// Each version's sums, by key.
static SUMS: Mutex<Vec<(u32, Sums)>> = Mutex::new(Vec::new());
static NEXT_KEY: AtomicU32 = AtomicU32::new(1);

/// A version's key for its own fit; `forget` it when the version goes.
pub fn new_key() -> u32 {
    NEXT_KEY.fetch_add(1, Ordering::Relaxed)
}

/// Drops a retired version's sums.
pub fn forget(key: u32) {
    SUMS.lock().retain(|(k, _)| *k != key);
}

/// For tokio's `on_thread_start` and `on_thread_unpark`.
pub fn worker_unparked() {
    PERIOD.with(|period| {
        period.set(thread_cpu_nanos().map(|started| Period {
            started,
            halves: [(0, 0); VERSIONS_PER_PERIOD],
            len: 0,
            overflowed: false,
        }))
    });
}

/// For tokio's `on_thread_park`.
pub fn worker_parked() {
    let Some(period) = PERIOD.with(|period| period.take()) else { return };
    if period.overflowed || period.len == 0 {
        return;
    }
    let Some(now) = thread_cpu_nanos() else { return };
    let cpu = now.saturating_sub(period.started) as f64 / 1e9;
    let halves = &period.halves[..period.len];
    let total: u32 = halves.iter().map(|&(_, h)| h).sum();
    let mut sums = SUMS.lock();
    for &(key, h) in halves {
        let share = cpu * f64::from(h) / f64::from(total);
        let requests = f64::from(h) / 2.0;
        match sums.iter_mut().find(|(k, _)| *k == key) {
            Some((_, s)) => s.add(share, requests),
            None => {
                let mut s = Sums::default();
                s.add(share, requests);
                sums.push((key, s));
            }
        }
    }
}

/// A request of the version `key` began (begun) or was answered on this
/// thread; counted only on a runtime worker.
pub fn request_half(key: u32) {
    PERIOD.with(|cell| {
        let Some(mut period) = cell.get() else { return };
        match period.halves[..period.len].iter_mut().find(|(k, _)| *k == key) {
            Some((_, h)) => *h = h.saturating_add(1),
            None if period.len < VERSIONS_PER_PERIOD => {
                period.halves[period.len] = (key, 1);
                period.len += 1;
            }
            None => period.overflowed = true,
        }
        cell.set(Some(period));
    });
}

/// Runs `work` (a model's batch run on a worker itself) without counting
/// its CPU in this worker's busy period: under load the same batch runs on
/// an instance thread, and the capacity answer counts a model's execution
/// from its cost model. Its time is taken on the monotonic clock (a vDSO
/// read; the thread's CPU clock is a syscall, two more per request):
/// a batch of microseconds on a running thread is rarely preempted, and
/// one that was only takes more out of the period than it put in.
pub fn outside_period<R>(work: impl FnOnce() -> R) -> R {
    if PERIOD.with(|period| period.get()).is_none() {
        return work();
    }
    let before = std::time::Instant::now();
    let result = work();
    let spent = before.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64;
    PERIOD.with(|cell| {
        if let Some(mut period) = cell.get() {
            period.started = period.started.saturating_add(spent);
            cell.set(Some(period));
        }
    });
    result
}

/// The sums of the version `key` over every busy period so far (subtract
/// two to get a window).
pub fn busy_periods(key: u32) -> Sums {
    SUMS.lock().iter().find(|(k, _)| *k == key).map(|(_, s)| *s).unwrap_or_default()
}

/// Running sums of busy periods: y = CPU seconds, u = requests.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sums {
    pub n: f64,
    y: f64,
    yy: f64,
    u: f64,
    uu: f64,
    yu: f64,
}

impl Sums {
    /// One busy period of `cpu` seconds and `requests`.
    pub fn add(&mut self, cpu: f64, requests: f64) {
        self.n += 1.0;
        self.y += cpu;
        self.yy += cpu * cpu;
        self.u += requests;
        self.uu += requests * requests;
        self.yu += cpu * requests;
    }

    /// The periods in `self` that came after `earlier`.
    pub fn since(&self, earlier: &Sums) -> Sums {
        Sums {
            n: self.n - earlier.n,
            y: self.y - earlier.y,
            yy: self.yy - earlier.yy,
            u: self.u - earlier.u,
            uu: self.uu - earlier.uu,
            yu: self.yu - earlier.yu,
        }
    }

    /// The requests in these periods.
    pub fn requests(&self) -> f64 {
        self.u
    }

    /// Their mean CPU seconds per request, wake-ups included.
    pub fn mean(&self) -> Option<f64> {
        (self.u > 0.0).then(|| self.y / self.u)
    }

    /// The marginal CPU seconds of one request (the fit's slope); None
    /// when the periods cannot tell it: too few, no spread in how many
    /// requests a period holds, a slope above the mean (a negative cost of
    /// waking), or a fit too loose (its standard error over
    /// RELATIVE_ERROR of the estimate: at low load most periods hold one
    /// request, and a few long ones decide the slope).
    pub fn marginal(&self) -> Option<f64> {
        if self.n < 100.0 {
            return None;
        }
        let n = self.n;
        let (mu, my) = (self.u / n, self.y / n);
        let suu = self.uu / n - mu * mu;
        let syu = self.yu / n - my * mu;
        let syy = self.yy / n - my * my;
        if suu < 1e-9 {
            return None;
        }
        let slope = syu / suu;
        let residual = (syy - slope * syu).max(0.0);
        let error = (residual / suu / n).sqrt();
        let sane = slope.is_finite() && slope > 0.0 && self.mean().is_some_and(|mean| slope <= mean);
        (sane && error <= RELATIVE_ERROR * slope).then_some(slope)
    }
}

/// The loosest fit `marginal` answers with: standard error / estimate.
const RELATIVE_ERROR: f64 = 0.1;

/// This thread's CPU time in nanoseconds.
fn thread_cpu_nanos() -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        #[repr(C)]
        struct Timespec {
            sec: i64,
            nsec: i64,
        }
        unsafe extern "C" {
            fn clock_gettime(clock: i32, time: *mut Timespec) -> i32;
        }
        const CLOCK_THREAD_CPUTIME_ID: i32 = 3;
        let mut time = Timespec { sec: 0, nsec: 0 };
        // SAFETY: writes one timespec we own.
        if unsafe { clock_gettime(CLOCK_THREAD_CPUTIME_ID, &mut time) } == 0 {
            return Some(time.sec as u64 * 1_000_000_000 + time.nsec as u64);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fit_separates_the_wake_up_from_the_request() {
        // Every period pays 30 us to wake; a request costs 20 us.
        let mut sums = Sums::default();
        for i in 0..1000u32 {
            let k = f64::from(1 + i % 4);
            sums.add(30e-6 + 20e-6 * k, k);
        }
        let cost = sums.marginal().unwrap();
        assert!((cost - 20e-6).abs() < 1e-9, "{cost}");
        // The mean per request holds the wake-ups: 32 us.
        assert!((sums.mean().unwrap() - 32e-6).abs() < 1e-9);
    }

    #[test]
    fn a_window_is_the_difference_of_two_sums_and_needs_spread() {
        let mut sums = Sums::default();
        for _ in 0..200 {
            sums.add(50e-6, 1.0);
        }
        // Every period alike: nothing tells the wake-up from the request.
        assert_eq!(sums.marginal(), None);
        let before = sums;
        for i in 0..200u32 {
            let k = f64::from(1 + i % 4);
            sums.add(10e-6 + 25e-6 * k, k);
        }
        let window = sums.since(&before);
        assert_eq!(window.n, 200.0);
        assert!((window.marginal().unwrap() - 25e-6).abs() < 1e-9);
        assert_eq!(Sums::default().marginal(), None);
    }

    #[test]
    fn a_loose_fit_is_no_answer() {
        // Nearly every period one request; the few with two are long for
        // reasons of their own.
        let mut sums = Sums::default();
        for i in 0..1000u32 {
            let k = if i % 50 == 0 { 2.0 } else { 1.0 };
            let noise = if i % 7 == 0 { 400e-6 } else { 0.0 };
            sums.add(60e-6 + noise + if k > 1.0 { 200e-6 } else { 0.0 }, k);
        }
        assert_eq!(sums.marginal(), None);
        // Nor is a slope above the mean (waking would cost less than nothing).
        let mut odd = Sums::default();
        for i in 0..1000u32 {
            let k = f64::from(1 + i % 3);
            odd.add(100e-6 * k - 90e-6, k);
        }
        assert_eq!(odd.marginal(), None);
    }

    #[test]
    fn a_period_is_split_between_the_versions_it_served() {
        let (a, b) = (new_key(), new_key());
        worker_unparked();
        request_half(a);
        request_half(a);
        request_half(b);
        request_half(b);
        request_half(b);
        request_half(b);
        worker_parked();
        // Not a period: no unpark before this park.
        worker_parked();
        let (sa, sb) = (busy_periods(a), busy_periods(b));
        assert_eq!((sa.n, sa.requests(), sb.n, sb.requests()), (1.0, 1.0, 1.0, 2.0));
        // Two thirds of the period's CPU went to b.
        assert!((sb.y - 2.0 * sa.y).abs() <= 1e-9, "{sa:?} {sb:?}");
        forget(a);
        forget(b);
        assert_eq!(busy_periods(a), Sums::default());
    }

    #[test]
    fn work_outside_the_period_is_not_counted() {
        let spin = |ms: u64| {
            let until = std::time::Instant::now() + std::time::Duration::from_millis(ms);
            while std::time::Instant::now() < until {
                std::hint::black_box(0);
            }
        };
        let key = new_key();
        worker_unparked();
        request_half(key);
        outside_period(|| spin(30));
        request_half(key);
        worker_parked();
        // The period's own CPU is microseconds; the 30 ms spun are not in it
        // (a preempted spin only makes its CPU smaller still).
        let sums = busy_periods(key);
        assert_eq!(sums.requests(), 1.0);
        assert!(sums.y < 0.01, "{sums:?}");
        // Off a worker (no period) it just runs.
        assert_eq!(outside_period(|| 7), 7);
        forget(key);
    }
}
