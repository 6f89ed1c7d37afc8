//! Shadow versions: a share of a model's unpinned requests is also run on a
//! candidate version (`shadow_version`, `shadow_percent`), whose answers are
//! compared with the serving version's and thrown away. The client always
//! gets the serving version's answer, never waits for the shadow and never
//! sees its errors.
//!
//! The shadow runs on spare capacity only: a copy is made only while the
//! serving version is not under pressure (`PRESSURE`, nothing refused in
//! the last second), at most `shadow_queue_size` copies are in flight, a
//! copy starts only once the serving version is idle (nothing queued or
//! running; `IDLE_WAIT` at most), and the shadow version's threads run at
//! SCHED_IDLE (runtime/threads.rs), so a serving batch that arrives while a
//! shadow batch runs takes the cores back at once. Whatever is not copied
//! or not run is counted as shed, by reason.
//!
//! Each answered pair is compared output by output (`compare`): rows within
//! tolerance, max and mean absolute difference, top-1 agreement for
//! classifier-shaped outputs, BYTES for equality. `Tally` keeps a sliding
//! window and the totals, the latencies side by side, and the few requests
//! that disagreed most. With `shadow_promote_rows` set, a shadow whose
//! evidence meets the thresholds is promoted to canary (repository/mod.rs
//! acts on `Shadow::due`), so shadow, canary and stable are one pipeline.

use super::ModelVersion;
use super::canary;
use crate::error::Error;
use crate::infer::{InferRequest, InferResponse};
use crate::pb;
use crate::tensor::{DataType, Tensor, bytes_elements};
use parking_lot::Mutex;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Comparisons per output (and answers per side) in the sliding window.
pub const WINDOW: usize = 1000;
/// The requests that disagreed most, kept by id.
pub const EXAMPLES: usize = 8;
/// The serving version's predicted completion for a request arriving now,
/// as a share of its latency target, above which nothing is copied.
pub const PRESSURE: f64 = 0.5;
/// How long a copy waits for the serving version to be idle before it is
/// dropped (counted `shed_busy`).
pub const IDLE_WAIT: Duration = Duration::from_secs(1);

/// The shadow a config (or an operator) asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub version: i64,
    /// Share (0-100) of unpinned requests copied to the shadow.
    pub percent: u8,
}

/// Reads `shadow_version` and `shadow_percent` (default 100); None when the
/// config sets no shadow. The shadow must be served, must not be part of
/// the canary, and another served version must take the traffic.
pub fn plan(config: &pb::ModelConfig, served: &[i64], canary: Option<canary::Plan>) -> Result<Option<Plan>, String> {
    let Some(version) = whole(config, "shadow_version")? else {
        if whole(config, "shadow_percent")?.is_some() {
            return Err("shadow_percent needs shadow_version".into());
        }
        return Ok(None);
    };
    let percent = whole(config, "shadow_percent")?.unwrap_or(100);
    if percent > 100 {
        return Err(format!("shadow_percent {percent} is over 100"));
    }
    let plan = Plan { version: version as i64, percent: percent as u8 };
    check(plan, served, canary.map(|c| (c.stable, c.canary)))?;
    Ok(Some(plan))
}

/// A whole-number parameter; an error names one that is set but is not.
fn whole(config: &pb::ModelConfig, key: &str) -> Result<Option<u64>, String> {
    match config.parameters.get(key) {
        None => Ok(None),
        Some(p) => p
            .string_value
            .parse()
            .map(Some)
            .map_err(|_| format!("{key} must be a whole number, got '{}'", p.string_value)),
    }
}

/// Whether `plan` can run beside the versions served and the canary's pair.
pub fn check(plan: Plan, served: &[i64], canary: Option<(i64, i64)>) -> Result<(), String> {
    let version = plan.version;
    if plan.percent > 100 {
        return Err(format!("shadow percent {} is over 100", plan.percent));
    }
    if !served.contains(&version) {
        return Err(format!(
            "shadow_version {version} is not among the versions the version policy serves ({served:?}); \
             serve it too, e.g. version_policy {{ all {{ }} }}"
        ));
    }
    if !served.iter().any(|&v| v != version) {
        return Err(format!("shadow_version {version} is the only version served: no version would take the traffic"));
    }
    if let Some((stable, canary)) = canary
        && (version == stable || version == canary)
    {
        return Err(format!("shadow_version {version} is part of the canary (stable {stable}, canary {canary})"));
    }
    Ok(())
}

/// How far apart two values may be and still agree:
/// |serving - shadow| <= abs + rel * |serving|.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tolerance {
    pub abs: f64,
    pub rel: f64,
}

impl Tolerance {
    /// The default for a datatype: a few units in the last place of
    /// floating point types (runs of one graph in batches of different
    /// sizes differ there), exact for integers, booleans and BYTES.
    pub fn of(datatype: DataType) -> Tolerance {
        let (abs, rel) = match datatype {
            DataType::Fp16 => (1e-3, 1e-2),
            DataType::Bf16 => (1e-2, 2e-2),
            DataType::Fp32 => (1e-5, 1e-4),
            DataType::Fp64 => (1e-9, 1e-7),
            _ => (0.0, 0.0),
        };
        Tolerance { abs, rel }
    }

    fn exact(self) -> bool {
        self.abs == 0.0 && self.rel == 0.0
    }
}

/// When a shadow is promoted to canary on its own (`shadow_promote_*`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Promote {
    /// Rows compared, per output, before the evidence counts.
    pub rows: u64,
    /// The share of rows within tolerance every output must reach.
    pub agreement: f64,
    /// The shadow's p99 latency at most this multiple of the serving one's.
    pub latency_ratio: f64,
    /// The canary weight it starts at.
    pub weight: u8,
}

/// A shadow's settings, from `shadow_*` parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    /// Overrides of the per-datatype default tolerance.
    pub abs_tolerance: Option<f64>,
    pub rel_tolerance: Option<f64>,
    /// Copies in flight (queued or running on the shadow) at most.
    pub queue: usize,
    pub promote: Option<Promote>,
    /// Keep the inputs of the requests that disagreed most.
    pub keep_inputs: bool,
}

impl Settings {
    fn tolerance(&self, datatype: DataType) -> Tolerance {
        let default = Tolerance::of(datatype);
        Tolerance { abs: self.abs_tolerance.unwrap_or(default.abs), rel: self.rel_tolerance.unwrap_or(default.rel) }
    }
}

/// Reads the `shadow_*` settings; `default_queue` is the copies in flight
/// allowed when `shadow_queue_size` is not set.
pub fn settings(config: &pb::ModelConfig, default_queue: usize) -> Result<Settings, String> {
    let decimal = |key: &str| -> Result<Option<f64>, String> {
        match config.parameters.get(key) {
            None => Ok(None),
            Some(p) => match p.string_value.parse::<f64>() {
                Ok(v) if v.is_finite() && v >= 0.0 => Ok(Some(v)),
                _ => Err(format!("{key} must be a number of at least 0, got '{}'", p.string_value)),
            },
        }
    };
    let promote = match whole(config, "shadow_promote_rows")? {
        None | Some(0) => None,
        Some(rows) => {
            let agreement = decimal("shadow_promote_agreement")?.unwrap_or(0.999);
            if !(0.0..=1.0).contains(&agreement) {
                return Err(format!("shadow_promote_agreement {agreement} is outside 0-1"));
            }
            let weight = whole(config, "shadow_promote_weight")?.unwrap_or(10);
            if !(1..=100).contains(&weight) {
                return Err(format!("shadow_promote_weight {weight} is outside 1-100"));
            }
            Some(Promote {
                rows,
                agreement,
                latency_ratio: decimal("shadow_promote_latency_ratio")?.unwrap_or(1.5),
                weight: weight as u8,
            })
        }
    };
    Ok(Settings {
        abs_tolerance: decimal("shadow_abs_tolerance")?,
        rel_tolerance: decimal("shadow_rel_tolerance")?,
        queue: whole(config, "shadow_queue_size")?.map_or(default_queue, |q| q as usize).max(1),
        promote,
        keep_inputs: whole(config, "shadow_keep_inputs")?.is_some_and(|v| v != 0),
    })
}

/// How one output of one request (or many, added up) compared.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Diff {
    pub rows: u64,
    /// Rows with at least one element beyond tolerance (or a shape or
    /// datatype that differs).
    pub differing: u64,
    /// Elements compared by value.
    pub elements: u64,
    pub max_abs: f64,
    pub sum_abs: f64,
    /// Rows of a classifier-shaped output, and those whose top-1 agreed.
    pub top1_rows: u64,
    pub top1_agree: u64,
    /// Rows whose shape or datatype differed from the serving version's.
    pub mismatched: u64,
}

impl Diff {
    fn add(&mut self, other: &Diff) {
        self.rows += other.rows;
        self.differing += other.differing;
        self.elements += other.elements;
        self.max_abs = self.max_abs.max(other.max_abs);
        self.sum_abs += other.sum_abs;
        self.top1_rows += other.top1_rows;
        self.top1_agree += other.top1_agree;
        self.mismatched += other.mismatched;
    }

    /// The share of rows within tolerance (1 when nothing was compared).
    pub fn agreement(&self) -> f64 {
        if self.rows == 0 { 1.0 } else { 1.0 - self.differing as f64 / self.rows as f64 }
    }

    pub fn mean_abs(&self) -> Option<f64> {
        (self.elements > 0).then(|| self.sum_abs / self.elements as f64)
    }

    pub fn top1_agreement(&self) -> Option<f64> {
        (self.top1_rows > 0).then(|| self.top1_agree as f64 / self.top1_rows as f64)
    }
}

/// Compares the serving version's output with the shadow's, `rows` rows
/// along the first dimension (1 for a model that does not batch).
pub fn compare(serving: &Tensor, shadow: &Tensor, rows: usize, tolerance: Tolerance) -> Diff {
    let rows = rows.max(1);
    let mismatch = Diff { rows: rows as u64, differing: rows as u64, mismatched: rows as u64, ..Diff::default() };
    if serving.datatype != shadow.datatype || serving.shape != shadow.shape {
        return mismatch;
    }
    if serving.datatype == DataType::Bytes {
        let (Ok(a), Ok(b)) = (bytes_of(serving), bytes_of(shadow)) else { return mismatch };
        let per_row = a.len() / rows;
        if per_row * rows != a.len() {
            return mismatch;
        }
        let differing = (0..rows).filter(|r| a[r * per_row..][..per_row] != b[r * per_row..][..per_row]).count();
        return Diff { rows: rows as u64, differing: differing as u64, ..Diff::default() };
    }
    let (Some(a), Some(b)) = (numbers(serving), numbers(shadow)) else { return mismatch };
    let per_row = a.len() / rows;
    if per_row * rows != a.len() || a.len() != b.len() {
        return mismatch;
    }
    let size = serving.datatype.byte_size().unwrap_or(1);
    let classifier = is_float(serving.datatype) && per_row >= 2 && classifier_shaped(&serving.shape, rows);
    let mut diff = Diff { rows: rows as u64, ..Diff::default() };
    for row in 0..rows {
        let range = row * per_row..(row + 1) * per_row;
        let mut differs = if tolerance.exact() {
            let bytes = row * per_row * size..(row + 1) * per_row * size;
            serving.data[bytes.clone()] != shadow.data[bytes]
        } else {
            false
        };
        for (&x, &y) in a[range.clone()].iter().zip(&b[range.clone()]) {
            if x.is_nan() || y.is_nan() {
                differs |= x.is_nan() != y.is_nan();
                continue;
            }
            let delta = (x - y).abs();
            diff.elements += 1;
            diff.sum_abs += delta;
            diff.max_abs = diff.max_abs.max(delta);
            differs |= delta > tolerance.abs + tolerance.rel * x.abs();
        }
        diff.differing += u64::from(differs);
        if classifier {
            diff.top1_rows += 1;
            diff.top1_agree += u64::from(argmax(&a[range.clone()]) == argmax(&b[range]));
        }
    }
    diff
}

fn is_float(datatype: DataType) -> bool {
    matches!(datatype, DataType::Fp16 | DataType::Bf16 | DataType::Fp32 | DataType::Fp64)
}

/// A probability or logit vector per row: at most one dimension past the
/// rows is larger than 1.
fn classifier_shaped(shape: &[i64], rows: usize) -> bool {
    let per_row = if shape.first() == Some(&(rows as i64)) && rows > 1 { &shape[1..] } else { shape };
    let per_row = if rows == 1 && shape.first() == Some(&1) { &shape[1..] } else { per_row };
    per_row.iter().filter(|&&d| d > 1).count() == 1
}

fn argmax(values: &[f64]) -> Option<usize> {
    values
        .iter()
        .enumerate()
        .filter(|(_, v)| !v.is_nan())
        .fold(None, |best: Option<(usize, f64)>, (i, &v)| match best {
            Some((_, b)) if b >= v => best,
            _ => Some((i, v)),
        })
        .map(|(i, _)| i)
}

fn bytes_of(tensor: &Tensor) -> Result<Vec<&[u8]>, String> {
    bytes_elements(&tensor.data).collect()
}

/// The elements of a numeric tensor as f64 (little-endian on the wire).
fn numbers(tensor: &Tensor) -> Option<Vec<f64>> {
    fn each<const N: usize>(data: &[u8], f: impl Fn([u8; N]) -> f64) -> Vec<f64> {
        data.chunks_exact(N).map(|c| f(c.try_into().expect("chunks_exact gives N bytes"))).collect()
    }
    let data = &tensor.data[..];
    Some(match tensor.datatype {
        DataType::Bool | DataType::Uint8 => data.iter().map(|&b| f64::from(b)).collect(),
        DataType::Int8 => data.iter().map(|&b| f64::from(b as i8)).collect(),
        DataType::Uint16 => each(data, |b| f64::from(u16::from_le_bytes(b))),
        DataType::Int16 => each(data, |b| f64::from(i16::from_le_bytes(b))),
        DataType::Uint32 => each(data, |b| f64::from(u32::from_le_bytes(b))),
        DataType::Int32 => each(data, |b| f64::from(i32::from_le_bytes(b))),
        DataType::Uint64 => each(data, |b| u64::from_le_bytes(b) as f64),
        DataType::Int64 => each(data, |b| i64::from_le_bytes(b) as f64),
        DataType::Fp16 => each(data, |b| half::f16::from_le_bytes(b).to_f64()),
        DataType::Bf16 => each(data, |b| half::bf16::from_le_bytes(b).to_f64()),
        DataType::Fp32 => each(data, |b| f64::from(f32::from_le_bytes(b))),
        DataType::Fp64 => each(data, f64::from_le_bytes),
        DataType::Bytes => return None,
    })
}

/// Requests copied to the shadow and what became of them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Copies sent to the shadow.
    pub mirrored: u64,
    /// Pairs where both answered and the outputs were compared.
    pub compared: u64,
    /// Copies the shadow failed (its errors; the client never sees them).
    pub shadow_errors: u64,
    /// Copies whose serving request failed: nothing to compare.
    pub serving_errors: u64,
    /// Not copied: the serving version was under pressure.
    pub shed_pressure: u64,
    /// Not copied: the shadow's own queue was full.
    pub shed_queue: u64,
    /// Copied, then dropped: the serving version was never idle within IDLE_WAIT.
    pub shed_busy: u64,
    /// Copied, then refused by the shadow version's own admission.
    pub shed_admission: u64,
}

/// One request that disagreed, as kept for the report.
#[derive(Debug, Clone)]
pub struct Example {
    /// The client's request id (may be empty).
    pub id: String,
    /// The shadow's own count of the copy.
    pub sequence: u64,
    /// The output that differed most, and by how much.
    pub output: String,
    pub differing_rows: u64,
    pub rows: u64,
    pub max_abs: f64,
    /// The request's inputs, with `shadow_keep_inputs` only.
    pub inputs: Option<Vec<Tensor>>,
}

impl Example {
    /// Worse first: the larger share of differing rows, then the larger difference.
    fn badness(&self) -> (f64, f64) {
        (self.differing_rows as f64 / self.rows.max(1) as f64, self.max_abs)
    }
}

#[derive(Debug)]
struct OutputTally {
    datatype: DataType,
    tolerance: Tolerance,
    window: VecDeque<Diff>,
    total: Diff,
}

/// One side's answer, as the tally takes it.
pub struct Answer<'a> {
    pub outputs: std::result::Result<&'a [Tensor], &'a Error>,
    pub latency: Duration,
}

/// The comparison so far. Plain data: tested directly.
#[derive(Debug, Default)]
pub struct Tally {
    outputs: BTreeMap<String, OutputTally>,
    serving_latency: VecDeque<Duration>,
    shadow_latency: VecDeque<Duration>,
    pub counts: Counts,
    examples: Vec<Example>,
    last_error: Option<String>,
}

fn push_bounded<T>(window: &mut VecDeque<T>, value: T) {
    if window.len() == WINDOW {
        window.pop_front();
    }
    window.push_back(value);
}

impl Tally {
    /// Takes one pair of answers for a request of `rows` rows.
    pub fn record(
        &mut self,
        (id, sequence): (&str, u64),
        serving: Answer<'_>,
        shadow: Answer<'_>,
        rows: usize,
        settings: &Settings,
        inputs: Option<&[Tensor]>,
    ) {
        let (serving_outputs, shadow_outputs) = match (serving.outputs, shadow.outputs) {
            (Err(_), _) => {
                self.counts.serving_errors += 1;
                return;
            }
            (Ok(_), Err(Error::Overloaded(..))) => {
                self.counts.shed_admission += 1;
                return;
            }
            (Ok(_), Err(error)) => {
                self.counts.shadow_errors += 1;
                self.last_error = Some(error.to_string());
                return;
            }
            (Ok(a), Ok(b)) => (a, b),
        };
        self.counts.compared += 1;
        push_bounded(&mut self.serving_latency, serving.latency);
        push_bounded(&mut self.shadow_latency, shadow.latency);
        let mut worst: Option<Example> = None;
        for tensor in serving_outputs {
            let tolerance = settings.tolerance(tensor.datatype);
            let diff = match shadow_outputs.iter().find(|t| t.name == tensor.name) {
                Some(other) => compare(tensor, other, rows, tolerance),
                None => Diff { rows: rows as u64, differing: rows as u64, mismatched: rows as u64, ..Diff::default() },
            };
            let tally = self.outputs.entry(tensor.name.clone()).or_insert_with(|| OutputTally {
                datatype: tensor.datatype,
                tolerance,
                window: VecDeque::new(),
                total: Diff::default(),
            });
            tally.total.add(&diff);
            push_bounded(&mut tally.window, diff);
            if diff.differing > 0 {
                let example = Example {
                    id: id.to_string(),
                    sequence,
                    output: tensor.name.clone(),
                    differing_rows: diff.differing,
                    rows: diff.rows,
                    max_abs: diff.max_abs,
                    inputs: None,
                };
                if worst.as_ref().is_none_or(|w| example.badness() > w.badness()) {
                    worst = Some(example);
                }
            }
        }
        if let Some(mut example) = worst {
            let kept_worst = self.examples.len() == EXAMPLES
                && self.examples.last().is_some_and(|last| last.badness() >= example.badness());
            if !kept_worst {
                example.inputs = inputs.filter(|_| settings.keep_inputs).map(<[Tensor]>::to_vec);
                self.examples.push(example);
                self.examples
                    .sort_by(|a, b| b.badness().partial_cmp(&a.badness()).unwrap_or(std::cmp::Ordering::Equal));
                self.examples.truncate(EXAMPLES);
            }
        }
    }

    /// The comparison as the report shows it.
    pub fn report(&self) -> Comparison {
        let outputs = self
            .outputs
            .iter()
            .map(|(name, t)| {
                let mut window = Diff::default();
                t.window.iter().for_each(|d| window.add(d));
                OutputReport {
                    name: name.clone(),
                    datatype: t.datatype,
                    tolerance: t.tolerance,
                    window,
                    total: t.total,
                }
            })
            .collect();
        Comparison {
            counts: self.counts,
            outputs,
            serving_latency: Latency::of(&self.serving_latency),
            shadow_latency: Latency::of(&self.shadow_latency),
            examples: self.examples.clone(),
            last_error: self.last_error.clone(),
        }
    }
}

/// Latency over the window's compared answers.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Latency {
    pub samples: usize,
    pub p50: Option<Duration>,
    pub p99: Option<Duration>,
}

impl Latency {
    fn of(window: &VecDeque<Duration>) -> Latency {
        let mut sorted: Vec<Duration> = window.iter().copied().collect();
        sorted.sort_unstable();
        let at = |q: usize| (!sorted.is_empty()).then(|| sorted[(sorted.len() * q).div_ceil(100).max(1) - 1]);
        Latency { samples: sorted.len(), p50: at(50), p99: at(99) }
    }
}

#[derive(Debug, Clone)]
pub struct OutputReport {
    pub name: String,
    pub datatype: DataType,
    pub tolerance: Tolerance,
    pub window: Diff,
    pub total: Diff,
}

/// What `GET /v2/models/{m}/shadow` shows of the comparison.
#[derive(Debug, Clone)]
pub struct Comparison {
    pub counts: Counts,
    pub outputs: Vec<OutputReport>,
    pub serving_latency: Latency,
    pub shadow_latency: Latency,
    pub examples: Vec<Example>,
    pub last_error: Option<String>,
}

/// Why the evidence says promote, if it does: every output has `rows`
/// rows compared and `agreement` of them within tolerance, the shadow's p99
/// is within `latency_ratio` of the serving version's, and the shadow
/// fails no more often than the serving version (plus 1%).
pub fn promotion_verdict(comparison: &Comparison, promote: &Promote) -> Option<String> {
    let counts = &comparison.counts;
    if comparison.outputs.is_empty() {
        return None;
    }
    for output in &comparison.outputs {
        if output.total.rows < promote.rows || output.total.agreement() < promote.agreement {
            return None;
        }
    }
    let (Some(shadow), Some(serving)) = (comparison.shadow_latency.p99, comparison.serving_latency.p99) else {
        return None;
    };
    if shadow.as_secs_f64() > promote.latency_ratio * serving.as_secs_f64() {
        return None;
    }
    let rate = |errors: u64| errors as f64 / (counts.compared + errors).max(1) as f64;
    if rate(counts.shadow_errors) > rate(counts.serving_errors) + 0.01 {
        return None;
    }
    let agreement = comparison.outputs.iter().map(|o| o.total.agreement()).fold(1.0, f64::min);
    Some(format!(
        "{:.2}% of rows agree over {} compared requests (threshold {:.2}%); p99 {:.2} ms vs {:.2} ms serving",
        100.0 * agreement,
        counts.compared,
        100.0 * promote.agreement,
        shadow.as_secs_f64() * 1e3,
        serving.as_secs_f64() * 1e3
    ))
}

/// A model's shadow while it runs.
pub struct Shadow {
    pub version: i64,
    percent: AtomicU8,
    draws: AtomicU64,
    /// Copies queued or running on the shadow; at most `settings.queue`.
    in_flight: AtomicUsize,
    /// Counts every copy, for the examples.
    sequence: AtomicU64,
    pub settings: Settings,
    tally: Mutex<Tally>,
    /// Set once the evidence says promote; the repository's timer promotes.
    due: Mutex<Option<String>>,
}

impl Shadow {
    pub fn new(plan: Plan, settings: Settings, seed: u64) -> Self {
        Shadow {
            version: plan.version,
            percent: AtomicU8::new(plan.percent),
            draws: AtomicU64::new(seed),
            in_flight: AtomicUsize::new(0),
            sequence: AtomicU64::new(0),
            settings,
            tally: Mutex::new(Tally::default()),
            due: Mutex::new(None),
        }
    }

    pub fn percent(&self) -> u8 {
        self.percent.load(Ordering::Relaxed)
    }

    pub fn set_percent(&self, percent: u8) {
        self.percent.store(percent.min(100), Ordering::Relaxed);
    }

    pub fn plan(&self) -> Plan {
        Plan { version: self.version, percent: self.percent() }
    }

    /// Copies in flight now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn report(&self) -> Comparison {
        self.tally.lock().report()
    }

    /// Why the shadow should be promoted now, once (taken).
    pub fn take_due(&self) -> Option<String> {
        self.due.lock().take()
    }

    /// Starts the shadow's copy of an unpinned `request` that `serving`
    /// is about to answer, when the draw picks it and there is capacity;
    /// the returned handle takes the serving answer once it is known.
    pub fn copy(
        self: &Arc<Self>,
        shadow: &Arc<ModelVersion>,
        serving: &Arc<ModelVersion>,
        request: &InferRequest,
    ) -> Option<Pending> {
        let percent = u64::from(self.percent());
        if percent == 0
            || canary::splitmix64(self.draws.fetch_add(canary::GOLDEN_GAMMA, Ordering::Relaxed)) % 100 >= percent
        {
            return None;
        }
        if serving.pressure() > PRESSURE {
            self.tally.lock().counts.shed_pressure += 1;
            return None;
        }
        if self.in_flight.fetch_add(1, Ordering::AcqRel) >= self.settings.queue {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            self.tally.lock().counts.shed_queue += 1;
            return None;
        }
        self.tally.lock().counts.mirrored += 1;
        let sequence = self.sequence.fetch_add(1, Ordering::Relaxed);
        let rows = if serving.io.max_batch_size > 0 {
            request.inputs.first().and_then(|t| t.shape.first()).map_or(1, |&r| r.max(1) as usize)
        } else {
            1
        };
        let copy = InferRequest {
            model_name: request.model_name.clone(),
            model_version: shadow.label.clone(),
            id: request.id.clone(),
            inputs: request.inputs.clone(),
            outputs: request.outputs.clone(),
            // The shadow's own admission bounds its latency; priorities are the serving version's.
            deadline: None,
            timeout: None,
            priority: None,
            trace: None,
        };
        let (reply, answer) = oneshot::channel::<ServingAnswer>();
        let (this, shadow, serving) = (self.clone(), shadow.clone(), serving.clone());
        tokio::spawn(async move {
            let _slot = Slot(&this.in_flight);
            if !serving.until_idle(IDLE_WAIT).await {
                this.tally.lock().counts.shed_busy += 1;
                return;
            }
            drop(serving);
            let started = Instant::now();
            let result = shadow.infer(copy).await;
            let latency = started.elapsed();
            let Ok(serving) = answer.await else { return }; // the client went away
            let inputs = this.settings.keep_inputs.then(|| serving.inputs.clone()).flatten();
            let shadow_outputs = result.as_ref().map(|r| &r.outputs[..]);
            let mut tally = this.tally.lock();
            tally.record(
                (&serving.id, sequence),
                Answer { outputs: serving.outputs.as_deref(), latency: serving.latency },
                Answer { outputs: shadow_outputs, latency },
                rows,
                &this.settings,
                inputs.as_deref(),
            );
            if let Some(promote) = this.settings.promote {
                let mut due = this.due.lock();
                if due.is_none() {
                    *due = promotion_verdict(&tally.report(), &promote);
                }
            }
        });
        let inputs = self.settings.keep_inputs.then(|| request.inputs.clone());
        Some(Pending { reply, inputs })
    }
}

/// Frees a queue slot when the copy's task ends.
struct Slot<'a>(&'a AtomicUsize);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

struct ServingAnswer {
    id: String,
    outputs: std::result::Result<Vec<Tensor>, Error>,
    latency: Duration,
    inputs: Option<Vec<Tensor>>,
}

/// A copy waiting for the serving version's answer.
pub struct Pending {
    reply: oneshot::Sender<ServingAnswer>,
    inputs: Option<Vec<Tensor>>,
}

impl Pending {
    /// Hands the serving answer to the comparison (its tensors share their
    /// bytes; nothing is copied).
    pub fn finish(self, result: &crate::error::Result<InferResponse>, latency: Duration) {
        let (id, outputs) = match result {
            Ok(response) => (response.id.clone(), Ok(response.outputs.clone())),
            Err(error) => (String::new(), Err(Error::internal(error.to_string()))),
        };
        let _ = self.reply.send(ServingAnswer { id, outputs, latency, inputs: self.inputs });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repository::config;

    fn fp32(name: &str, shape: Vec<i64>, values: &[f32]) -> Tensor {
        let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Tensor { name: name.into(), datatype: DataType::Fp32, shape, data: data.into() }
    }

    fn parameters(params: &[(&str, &str)]) -> pb::ModelConfig {
        let text: String = params
            .iter()
            .map(|(k, v)| format!("parameters {{ key: \"{k}\" value {{ string_value: \"{v}\" }} }}\n"))
            .collect();
        config::parse(&text).unwrap()
    }

    fn ok(outputs: &[Tensor], latency: Duration) -> Answer<'_> {
        Answer { outputs: Ok(outputs), latency }
    }

    const SETTINGS: Settings =
        Settings { abs_tolerance: None, rel_tolerance: None, queue: 8, promote: None, keep_inputs: false };

    #[test]
    fn a_plan_needs_a_served_version_that_is_not_the_only_one_nor_the_canary() {
        let config = parameters(&[("shadow_version", "2"), ("shadow_percent", "25")]);
        assert_eq!(plan(&config, &[1, 2], None), Ok(Some(Plan { version: 2, percent: 25 })));
        let full = parameters(&[("shadow_version", "2")]);
        assert_eq!(plan(&full, &[1, 2], None), Ok(Some(Plan { version: 2, percent: 100 })));
        assert_eq!(plan(&parameters(&[]), &[1], None), Ok(None));
        assert!(plan(&config, &[1], None).unwrap_err().contains("not among"));
        assert!(plan(&config, &[2], None).unwrap_err().contains("only version"));
        let canary = canary::Plan { stable: 1, canary: 2, weight: 5 };
        assert!(plan(&config, &[1, 2], Some(canary)).unwrap_err().contains("canary"));
        assert!(plan(&parameters(&[("shadow_percent", "5")]), &[1, 2], None).unwrap_err().contains("needs"));
        let over = parameters(&[("shadow_version", "2"), ("shadow_percent", "101")]);
        assert!(plan(&over, &[1, 2], None).unwrap_err().contains("101"));
        let typo = parameters(&[("shadow_version", "two")]);
        assert!(plan(&typo, &[1, 2], None).unwrap_err().contains("whole number"));
    }

    #[test]
    fn settings_read_tolerances_queue_and_promotion() {
        assert_eq!(settings(&parameters(&[]), 64), Ok(Settings { queue: 64, ..SETTINGS }));
        let set = settings(
            &parameters(&[
                ("shadow_abs_tolerance", "0.01"),
                ("shadow_queue_size", "3"),
                ("shadow_promote_rows", "500"),
                ("shadow_promote_weight", "20"),
            ]),
            64,
        )
        .unwrap();
        assert_eq!((set.abs_tolerance, set.rel_tolerance, set.queue), (Some(0.01), None, 3));
        assert_eq!(set.promote, Some(Promote { rows: 500, agreement: 0.999, latency_ratio: 1.5, weight: 20 }));
        assert!(settings(&parameters(&[("shadow_rel_tolerance", "-1")]), 1).unwrap_err().contains("at least 0"));
        let heavy = parameters(&[("shadow_promote_rows", "5"), ("shadow_promote_weight", "0")]);
        assert!(settings(&heavy, 1).unwrap_err().contains("1-100"));
    }

    #[test]
    fn rows_beyond_tolerance_differ_and_top1_is_counted_for_classifiers() {
        let serving = fp32("p", vec![3, 4], &[0.1, 0.7, 0.1, 0.1, 0.5, 0.2, 0.2, 0.1, 0.25, 0.25, 0.4, 0.1]);
        let tolerance = Tolerance::of(DataType::Fp32);
        let same = compare(&serving, &serving, 3, tolerance);
        assert_eq!((same.rows, same.differing, same.elements, same.max_abs), (3, 0, 12, 0.0));
        assert_eq!((same.top1_rows, same.top1_agree), (3, 3));
        // Row 0 moves within tolerance, row 1 flips its top-1, row 2 moves 0.01.
        let shadow = fp32("p", vec![3, 4], &[0.1, 0.7000001, 0.1, 0.1, 0.2, 0.5, 0.2, 0.1, 0.26, 0.25, 0.4, 0.1]);
        let diff = compare(&serving, &shadow, 3, tolerance);
        assert_eq!((diff.rows, diff.differing, diff.top1_rows, diff.top1_agree), (3, 2, 3, 2));
        assert!((diff.max_abs - 0.3).abs() < 1e-6, "{}", diff.max_abs);
        assert!((diff.agreement() - 1.0 / 3.0).abs() < 1e-9);
        let loose = compare(&serving, &shadow, 3, Tolerance { abs: 0.5, rel: 0.0 });
        assert_eq!(loose.differing, 0, "a wide tolerance takes every row");
        let reshaped = fp32("p", vec![4, 3], &[0.0; 12]);
        let mismatch = compare(&serving, &reshaped, 3, tolerance);
        assert_eq!((mismatch.differing, mismatch.mismatched, mismatch.elements), (3, 3, 0));
    }

    #[test]
    fn integers_and_bytes_are_compared_exactly() {
        let int64 = |values: &[i64]| Tensor {
            name: "ids".into(),
            datatype: DataType::Int64,
            shape: vec![values.len() as i64, 1],
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>().into(),
        };
        // 2^60 and 2^60 + 1 are one f64: compared as bytes, they differ.
        let diff = compare(&int64(&[1 << 60, 7]), &int64(&[(1 << 60) + 1, 7]), 2, Tolerance::of(DataType::Int64));
        assert_eq!((diff.rows, diff.differing, diff.top1_rows), (2, 1, 0));
        let text = |items: &[&str]| Tensor {
            name: "t".into(),
            datatype: DataType::Bytes,
            shape: vec![items.len() as i64],
            data: items
                .iter()
                .flat_map(|s| (s.len() as u32).to_le_bytes().into_iter().chain(s.bytes()))
                .collect::<Vec<u8>>()
                .into(),
        };
        let diff = compare(&text(&["a", "bc"]), &text(&["a", "bd"]), 2, Tolerance::of(DataType::Bytes));
        assert_eq!((diff.rows, diff.differing), (2, 1));
    }

    #[test]
    fn the_tally_keeps_totals_a_window_errors_and_the_worst_examples() {
        let mut tally = Tally::default();
        let good = [fp32("y", vec![1, 2], &[1.0, 2.0])];
        let ms = Duration::from_millis;
        for i in 0..(WINDOW + 10) as u64 {
            let off = [fp32("y", vec![1, 2], &[1.0, 2.0 + (i % 100) as f32])];
            let shadow = if i % 100 == 0 { &good } else { &off };
            tally.record((&format!("r{i}"), i), ok(&good, ms(2)), ok(shadow, ms(3)), 1, &SETTINGS, Some(&good));
        }
        let failed = Error::internal("boom");
        let overloaded = Error::overloaded("late", ms(1));
        let answer = |outputs, latency| Answer { outputs, latency };
        tally.record(("x", 9999), answer(Ok(&good), ms(1)), answer(Err(&failed), ms(1)), 1, &SETTINGS, None);
        tally.record(("z", 9998), answer(Ok(&good), ms(1)), answer(Err(&overloaded), ms(1)), 1, &SETTINGS, None);
        tally.record(("s", 9997), answer(Err(&failed), ms(1)), answer(Ok(&good), ms(1)), 1, &SETTINGS, None);
        let report = tally.report();
        let counts = report.counts;
        assert_eq!(
            (counts.compared, counts.shadow_errors, counts.shed_admission, counts.serving_errors),
            (1010, 1, 1, 1)
        );
        let y = &report.outputs[0];
        assert_eq!((y.total.rows, y.total.differing), (1010, 1010 - 11));
        assert_eq!((y.window.rows, y.window.differing), (WINDOW as u64, WINDOW as u64 - 10));
        assert_eq!(y.total.max_abs, 99.0);
        assert_eq!(report.examples.len(), EXAMPLES);
        assert!(report.examples.iter().all(|e| e.max_abs == 99.0 && e.id.ends_with("99")));
        assert!(report.examples.iter().all(|e| e.inputs.is_none()), "no payloads unless asked");
        assert_eq!(report.last_error.as_deref(), Some("boom"));
        assert_eq!((report.serving_latency.p99, report.shadow_latency.p50), (Some(ms(2)), Some(ms(3))));
    }

    #[test]
    fn promotion_waits_for_enough_agreeing_rows_at_a_fair_latency() {
        let promote = Promote { rows: 100, agreement: 0.99, latency_ratio: 1.5, weight: 10 };
        let mut tally = Tally::default();
        let y = [fp32("y", vec![1, 1], &[1.0])];
        let ms = Duration::from_millis;
        let pair = |tally: &mut Tally, shadow_ms| {
            tally.record(("", 0), ok(&y, ms(10)), ok(&y, ms(shadow_ms)), 1, &SETTINGS, None);
        };
        for _ in 0..99 {
            pair(&mut tally, 12);
        }
        assert_eq!(promotion_verdict(&tally.report(), &promote), None, "99 rows are too few");
        pair(&mut tally, 12);
        let reason = promotion_verdict(&tally.report(), &promote).expect("100 agreeing rows at 1.2x");
        assert!(reason.contains("100.00%"), "{reason}");
        let mut slow = Tally::default();
        for _ in 0..200 {
            pair(&mut slow, 20);
        }
        assert_eq!(promotion_verdict(&slow.report(), &promote), None, "2x slower at p99");
    }
}
