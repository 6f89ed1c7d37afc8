//! Admission before any work is queued: a server-wide cap on requests in
//! flight, and per model version a circuit breaker (breaker.rs) and an
//! adaptive concurrency limit (limiter.rs). A request over either is
//! refused at once (RESOURCE_EXHAUSTED
//! with `grpc-retry-pushback-ms`, HTTP 429 with `Retry-After`) and counted
//! in `ferroserve_shed_total` by reason.

pub mod breaker;
pub mod limiter;

use crate::error::{Error, Result};
use crate::telemetry;
use breaker::{Breaker, BreakerConfig, Outcome};
use limiter::{LimitConfig, Limiter};
use parking_lot::Mutex;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The retry hint of a refusal at a concurrency cap: requests in flight
/// leave within about this long.
const DEFAULT_RETRY: Duration = Duration::from_millis(100);

/// The server-wide cap on inference requests inside the server.
pub struct ServerCap {
    permits: Arc<Semaphore>,
    max: usize,
    /// `ferroserve_server_inflight_requests`, kept current on entry and exit.
    gauge: metrics::Gauge,
}

/// A request's place inside the server; leaving updates the gauge.
pub struct ServerPermit {
    _permit: OwnedSemaphorePermit,
    permits: Arc<Semaphore>,
    max: usize,
    gauge: metrics::Gauge,
}

impl Drop for ServerPermit {
    fn drop(&mut self) {
        // The permit itself is released after this runs: count it as gone.
        let inside = self.max - self.permits.available_permits() - 1;
        self.gauge.set(inside as f64);
    }
}

impl ServerCap {
    pub fn new(max: usize) -> Self {
        let max = max.max(1);
        let gauge = metrics::gauge!(telemetry::SERVER_IN_FLIGHT);
        gauge.set(0.0);
        ServerCap { permits: Arc::new(Semaphore::new(max)), max, gauge }
    }

    /// Requests inside now (shutdown waits for this to reach zero).
    pub fn in_flight(&self) -> usize {
        self.max - self.permits.available_permits()
    }

    /// A permit held until the request is answered, or a refusal (the
    /// caller counts it as shed, reason `server_inflight`).
    pub fn try_enter(&self) -> Result<ServerPermit> {
        let permit = self.permits.clone().try_acquire_owned().map_err(|_| {
            Error::overloaded(format!("the server has {} requests in flight, its limit", self.max), DEFAULT_RETRY)
        })?;
        self.gauge.set(self.in_flight() as f64);
        Ok(ServerPermit { _permit: permit, permits: self.permits.clone(), max: self.max, gauge: self.gauge.clone() })
    }
}

/// The adaptive limit of one model version and the requests inside it.
pub struct VersionAdmission {
    model: String,
    version: String,
    limiter: Mutex<Limiter>,
    in_flight: AtomicU32,
    gauges: telemetry::AdmissionGauges,
}

/// Held while an admitted request is inside; `finish` teaches the limiter.
pub struct Permit {
    admission: Arc<VersionAdmission>,
    entered: Instant,
    /// Requests already inside when this one entered.
    others: u32,
}

impl VersionAdmission {
    pub fn new(model: &str, version: &str, config: LimitConfig) -> Arc<Self> {
        let limiter = Limiter::new(config);
        let gauges = telemetry::AdmissionGauges::new(model, version);
        gauges.set(limiter.limit(), 0);
        Arc::new(VersionAdmission {
            model: model.to_string(),
            version: version.to_string(),
            limiter: Mutex::new(limiter),
            in_flight: AtomicU32::new(0),
            gauges,
        })
    }

    pub fn try_enter(self: &Arc<Self>) -> Result<Permit> {
        let limit = self.limiter.lock().limit();
        let inside = self.in_flight.fetch_add(1, Ordering::AcqRel);
        if inside >= limit {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            telemetry::record_shed(&self.model, &self.version, "concurrency_limit");
            return Err(Error::overloaded(
                format!(
                    "model '{}' version {} is at its concurrency limit ({limit} requests in flight)",
                    self.model, self.version
                ),
                DEFAULT_RETRY,
            ));
        }
        self.gauges.set(limit, inside + 1);
        Ok(Permit { admission: self.clone(), entered: Instant::now(), others: inside })
    }
}

impl Permit {
    /// The request was answered; `ran` says whether it reached the model (its
    /// latency then teaches the limiter).
    pub fn finish(self, ran: bool) {
        if ran {
            let mut limiter = self.admission.limiter.lock();
            limiter.record(self.entered.elapsed(), self.others);
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let inside = self.admission.in_flight.fetch_sub(1, Ordering::AcqRel) - 1;
        self.admission.gauges.set(self.admission.limiter.lock().limit(), inside);
    }
}

/// The circuit breaker of one model version, with its metrics.
pub struct VersionBreaker {
    model: String,
    version: String,
    breaker: Mutex<Breaker>,
    gauge: metrics::Gauge,
}

/// An admitted call; `finish` records how it ended, dropping it unfinished
/// (cancelled) frees a half-open probe slot.
pub struct BreakerTicket<'a> {
    owner: &'a VersionBreaker,
    entered: Instant,
    finished: bool,
}

impl VersionBreaker {
    pub fn new(model: &str, version: &str, config: BreakerConfig) -> Self {
        let gauge = telemetry::breaker_gauge(model, version);
        gauge.set(0.0);
        VersionBreaker {
            model: model.to_string(),
            version: version.to_string(),
            breaker: Mutex::new(Breaker::new(config)),
            gauge,
        }
    }

    /// Whether the breaker lets every call through (neither open nor probing).
    pub fn is_closed(&self) -> bool {
        matches!(self.breaker.lock().state(), breaker::State::Closed)
    }

    /// Lets a call through, or refuses it UNAVAILABLE while the breaker is open.
    pub fn try_acquire(&self) -> Result<BreakerTicket<'_>> {
        let mut breaker = self.breaker.lock();
        let before = breaker.state();
        let acquired = breaker.try_acquire(Instant::now());
        if breaker.state().name() != before.name() {
            self.transition(breaker.state());
        }
        match acquired {
            Ok(()) => Ok(BreakerTicket { owner: self, entered: Instant::now(), finished: false }),
            Err(wait) => Err(Error::unavailable(
                format!(
                    "the circuit breaker of model '{}' version {} is open after repeated model failures; retry in {} ms",
                    self.model,
                    self.version,
                    wait.as_millis()
                ),
                wait,
            )),
        }
    }

    fn transition(&self, to: breaker::State) {
        self.gauge.set(to.gauge());
        telemetry::record_breaker_transition(&self.model, &self.version, to.name());
        tracing::warn!(model = %self.model, version = %self.version, state = to.name(), "circuit breaker");
    }
}

impl BreakerTicket<'_> {
    /// Records the call: a model failure (INTERNAL) or success counts; any
    /// other error (deadline, shutdown) is not the model's doing.
    pub fn finish<T>(mut self, result: &Result<T>) {
        let ok = match result {
            Ok(_) => true,
            Err(Error::Internal(_)) => false,
            Err(_) => return, // Drop releases the slot
        };
        self.finished = true;
        let mut breaker = self.owner.breaker.lock();
        let outcome: Outcome = breaker.outcome(ok, self.entered.elapsed());
        if let Some(state) = breaker.record(Instant::now(), outcome) {
            self.owner.transition(state);
        }
    }
}

impl Drop for BreakerTicket<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.owner.breaker.lock().release();
        }
    }
}
