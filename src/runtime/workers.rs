//! What one more request costs the runtime's worker threads, measured on
//! the fly. A request's CPU in the server is not a constant: on an idle
//! server each one pays for waking a worker, for cold caches and for
//! syscalls of its own, and under load those costs shrink or vanish (one
//! wake-up serves many requests, one read takes many frames). The mean CPU
//! per request at today's load therefore overstates what the server needs
//! per request near its limit, by half or more for a model of
//! microseconds. The marginal cost does not: every busy period of a worker
//! (from unpark to park, on the thread's own CPU clock) is one observation
//! of
//!
//!   cpu = wake + a × requests begun + b × requests finished
//!
//! and a least-squares fit over many periods gives a + b, the CPU of one
//! more request on a worker that is already awake: what each request costs
//! when the server runs flat out. The hooks are tokio's
//! `on_thread_unpark` / `on_thread_park`; requests are counted where the
//! repository routes them and answers them.

use parking_lot::Mutex;
use std::cell::Cell;

thread_local! {
    /// This worker's CPU clock when it last woke, and the requests it
    /// began and finished since.
    static PERIOD: Cell<Option<(u64, u32, u32)>> = const { Cell::new(None) };
}

static SUMS: Mutex<Sums> = Mutex::new(Sums::ZERO);

/// For tokio's `on_thread_start` and `on_thread_unpark`.
pub fn worker_unparked() {
    PERIOD.with(|period| period.set(thread_cpu_nanos().map(|at| (at, 0, 0))));
}

/// For tokio's `on_thread_park`.
pub fn worker_parked() {
    let Some((start, begun, finished)) = PERIOD.with(|period| period.take()) else { return };
    if let Some(now) = thread_cpu_nanos() {
        let cpu = now.saturating_sub(start) as f64 / 1e9;
        SUMS.lock().add(cpu, f64::from(begun), f64::from(finished));
    }
}

/// A request began on this thread (counted only on a runtime worker).
pub fn request_begun() {
    PERIOD.with(|period| period.set(period.get().map(|(at, b, f)| (at, b.saturating_add(1), f))));
}

/// A request was answered on this thread.
pub fn request_finished() {
    PERIOD.with(|period| period.set(period.get().map(|(at, b, f)| (at, b, f.saturating_add(1)))));
}

/// The sums over every busy period so far (subtract two to get a window).
pub fn busy_periods() -> Sums {
    *SUMS.lock()
}

/// Running sums of the busy periods: y = CPU seconds, u = requests begun,
/// v = requests finished.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sums {
    pub n: f64,
    y: f64,
    yy: f64,
    u: f64,
    v: f64,
    uu: f64,
    vv: f64,
    uv: f64,
    yu: f64,
    yv: f64,
}

impl Sums {
    const ZERO: Sums = Sums { n: 0.0, y: 0.0, yy: 0.0, u: 0.0, v: 0.0, uu: 0.0, vv: 0.0, uv: 0.0, yu: 0.0, yv: 0.0 };

    pub fn add(&mut self, y: f64, u: f64, v: f64) {
        self.n += 1.0;
        self.y += y;
        self.yy += y * y;
        self.u += u;
        self.v += v;
        self.uu += u * u;
        self.vv += v * v;
        self.uv += u * v;
        self.yu += y * u;
        self.yv += y * v;
    }

    /// The periods in `self` that came after `earlier`.
    pub fn since(&self, earlier: &Sums) -> Sums {
        Sums {
            n: self.n - earlier.n,
            y: self.y - earlier.y,
            yy: self.yy - earlier.yy,
            u: self.u - earlier.u,
            v: self.v - earlier.v,
            uu: self.uu - earlier.uu,
            vv: self.vv - earlier.vv,
            uv: self.uv - earlier.uv,
            yu: self.yu - earlier.yu,
            yv: self.yv - earlier.yv,
        }
    }

    /// The requests finished in these periods.
    pub fn finished(&self) -> f64 {
        self.v
    }

    /// The marginal CPU seconds of one request (a + b of the fit); None
    /// when the periods cannot tell it: too few, no spread in how many
    /// requests a period holds, or a fit too loose (its standard error
    /// over RELATIVE_ERROR of the estimate: at low load most periods hold
    /// one request, and a few long ones, a metrics scrape, say, decide
    /// the slope). Where what a period begins and what it finishes move
    /// together (they do under steady load), a and b cannot be told apart
    /// but their sum can: the fit then has the one regressor
    /// (begun + finished) / 2.
    pub fn marginal(&self) -> Option<f64> {
        if self.n < 100.0 {
            return None;
        }
        let n = self.n;
        let (mu, mv, my) = (self.u / n, self.v / n, self.y / n);
        let suu = self.uu / n - mu * mu;
        let svv = self.vv / n - mv * mv;
        let suv = self.uv / n - mu * mv;
        let syu = self.yu / n - my * mu;
        let syv = self.yv / n - my * mv;
        let syy = self.yy / n - my * my;
        let det = suu * svv - suv * suv;
        let (cost, variance) = if det > 1e-3 * suu * svv && det > 1e-12 {
            let a = (syu * svv - syv * suv) / det;
            let b = (syv * suu - syu * suv) / det;
            let residual = (syy - a * syu - b * syv).max(0.0);
            (a + b, residual * (suu + svv - 2.0 * suv) / det / n)
        } else {
            // One regressor w = (u + v) / 2: its slope is a + b.
            let sww = (suu + svv + 2.0 * suv) / 4.0;
            if sww < 1e-9 {
                return None;
            }
            let slope = (syu + syv) / 2.0 / sww;
            let residual = (syy - slope * (syu + syv) / 2.0).max(0.0);
            (slope, residual / sww / n)
        };
        (cost.is_finite() && cost > 0.0 && variance.sqrt() <= RELATIVE_ERROR * cost).then_some(cost)
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
        // Every period pays 30 us to wake; a request costs 8 us to begin
        // and 12 us to finish, whichever periods it falls in.
        let mut sums = Sums::default();
        for i in 0..1000u32 {
            let (begun, finished) = (f64::from(i % 3), f64::from((i / 3) % 4));
            sums.add(30e-6 + 8e-6 * begun + 12e-6 * finished, begun, finished);
        }
        let cost = sums.marginal().unwrap();
        assert!((cost - 20e-6).abs() < 1e-9, "{cost}");
        // The mean CPU per finished request holds the wake-ups: far above it.
        assert!(sums.y / sums.finished() > 1.5 * cost);
    }

    #[test]
    fn requests_begun_and_finished_together_still_give_their_sum() {
        let mut sums = Sums::default();
        for i in 0..500u32 {
            let k = f64::from(1 + i % 5);
            sums.add(40e-6 + 20e-6 * k, k, k);
        }
        let cost = sums.marginal().unwrap();
        assert!((cost - 20e-6).abs() < 1e-9, "{cost}");
    }

    #[test]
    fn a_window_is_the_difference_of_two_sums_and_needs_spread() {
        let mut sums = Sums::default();
        for _ in 0..200 {
            sums.add(50e-6, 1.0, 1.0);
        }
        // Every period alike: nothing tells the wake-up from the request.
        assert_eq!(sums.marginal(), None);
        let before = sums;
        for i in 0..200u32 {
            let k = f64::from(i % 4);
            sums.add(10e-6 + 25e-6 * k, k, k);
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
            sums.add(60e-6 + noise + if k > 1.0 { 200e-6 } else { 0.0 }, k, k);
        }
        assert_eq!(sums.marginal(), None);
    }
}
