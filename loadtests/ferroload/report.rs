//! ghz's JSON report: counts, latency percentiles and histogram (successful requests only, as ghz
//! does), status and error distributions, and per-request details. Durations are integer nanoseconds.

use crate::driver::{Run, Sample};
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The percentiles ghz reports.
const PERCENTILES: [u32; 7] = [10, 25, 50, 75, 90, 95, 99];
/// Histogram buckets between the fastest and the slowest answer (ghz: 10, plus the slowest).
const BUCKETS: usize = 10;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub end_reason: &'static str,
    pub options: Value,
    pub date: String,
    pub count: u64,
    pub total: u64,
    pub average: u64,
    pub fastest: u64,
    pub slowest: u64,
    pub rps: f64,
    pub error_distribution: BTreeMap<String, u64>,
    pub status_code_distribution: BTreeMap<String, u64>,
    pub latency_distribution: Vec<LatencyDistribution>,
    pub histogram: Vec<Bucket>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<Vec<Detail>>,
}

#[derive(Serialize, Debug, PartialEq)]
pub struct LatencyDistribution {
    pub percentage: u32,
    pub latency: u64,
}

#[derive(Serialize, Debug, PartialEq)]
pub struct Bucket {
    /// Upper bound of the bucket, in seconds.
    pub mark: f64,
    pub count: u64,
    /// Share of successful requests in the bucket, 0 to 1.
    pub frequency: f64,
}

#[derive(Serialize)]
pub struct Detail {
    pub timestamp: String,
    pub latency: u64,
    pub error: String,
    pub status: String,
    /// Not in ghz: open loop (unary gRPC, HTTP), how late the request went
    /// out after its due time, in nanoseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lateness: Option<u64>,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Report {
    pub fn new(run: &Run, options: Value, details: bool) -> Self {
        let count = run.samples.len() as u64;
        let mut error_distribution = BTreeMap::new();
        let mut status_code_distribution = BTreeMap::new();
        for sample in &run.samples {
            *status_code_distribution.entry(sample.outcome.status.to_string()).or_insert(0) += 1;
            if let Some(error) = &sample.outcome.error {
                *error_distribution.entry(error.clone()).or_insert(0) += 1;
            }
        }
        // ghz: the average covers every request; fastest, slowest and the distributions only successes.
        let sum: u128 = run.samples.iter().map(|s| s.latency.as_nanos()).sum();
        let average = if count == 0 { 0 } else { u64::try_from(sum / u128::from(count)).unwrap_or(u64::MAX) };
        let mut ok: Vec<u64> =
            run.samples.iter().filter(|s| s.outcome.error.is_none()).map(|s| nanos(s.latency)).collect();
        ok.sort_unstable();
        let details = details.then(|| run.samples.iter().map(|s| detail(run.started, s)).collect());
        Report {
            end_reason: "normal",
            options,
            date: rfc3339(SystemTime::now(), false),
            count,
            total: nanos(run.total),
            average,
            fastest: ok.first().copied().unwrap_or(0),
            slowest: ok.last().copied().unwrap_or(0),
            rps: if run.total.is_zero() { 0.0 } else { count as f64 / run.total.as_secs_f64() },
            error_distribution,
            status_code_distribution,
            latency_distribution: percentiles(&ok),
            histogram: histogram(&ok),
            details,
        }
    }

    /// The latency at `percentage`, if reported.
    pub fn percentile(&self, percentage: u32) -> Option<Duration> {
        self.latency_distribution.iter().find(|l| l.percentage == percentage).map(|l| Duration::from_nanos(l.latency))
    }

    /// One human line: what ran, throughput, latency and errors.
    pub fn summary(&self, what: &str) -> String {
        let ms = |ns: u64| ns as f64 / 1e6;
        let pct = |p| self.percentile(p).map_or(0.0, |d| d.as_secs_f64() * 1e3);
        let statuses: Vec<String> = self.status_code_distribution.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let errors: u64 = self.error_distribution.values().sum();
        format!(
            "{what}: {} requests in {:.2}s, {:.0} rps, latency avg {:.3}ms p50 {:.3}ms p90 {:.3}ms p99 {:.3}ms \
             max {:.3}ms, errors {errors} ({})",
            self.count,
            self.total as f64 / 1e9,
            self.rps,
            ms(self.average),
            pct(50),
            pct(90),
            pct(99),
            ms(self.slowest),
            statuses.join(" ")
        )
    }
}

fn detail(started: SystemTime, sample: &Sample) -> Detail {
    Detail {
        timestamp: rfc3339(started + sample.start, true),
        latency: nanos(sample.latency),
        error: sample.outcome.error.clone().unwrap_or_default(),
        status: sample.outcome.status.to_string(),
        lateness: sample.lateness.map(nanos),
    }
}

/// ghz's percentiles over sorted latencies: the element at rank p% of n (0-based, one lower when
/// the rank is a whole number).
pub fn percentiles(sorted: &[u64]) -> Vec<LatencyDistribution> {
    if sorted.is_empty() {
        return Vec::new();
    }
    let n = sorted.len() as f64;
    PERCENTILES
        .iter()
        .map(|&p| {
            let rank = f64::from(p) / 100.0 * n;
            let mut index = rank as usize;
            if rank == index as f64 {
                index = index.saturating_sub(1);
            }
            LatencyDistribution { percentage: p, latency: sorted[index.min(sorted.len() - 1)] }
        })
        .collect()
}

/// ghz's histogram over sorted latencies: 10 equal-width buckets from the fastest, plus one whose
/// mark is the slowest; each latency counts in the first bucket whose mark is not below it.
pub fn histogram(sorted: &[u64]) -> Vec<Bucket> {
    let (Some(&fastest), Some(&slowest)) = (sorted.first(), sorted.last()) else {
        return Vec::new();
    };
    let (fastest, slowest) = (fastest as f64 / 1e9, slowest as f64 / 1e9);
    let width = (slowest - fastest) / BUCKETS as f64;
    let marks: Vec<f64> = (0..BUCKETS).map(|i| fastest + width * i as f64).chain([slowest]).collect();
    let mut counts = vec![0u64; marks.len()];
    let mut bucket = 0;
    for &latency in sorted {
        let latency = latency as f64 / 1e9;
        while latency > marks[bucket] && bucket < marks.len() - 1 {
            bucket += 1;
        }
        counts[bucket] += 1;
    }
    let n = sorted.len() as f64;
    marks.into_iter().zip(counts).map(|(mark, count)| Bucket { mark, count, frequency: count as f64 / n }).collect()
}

/// RFC 3339 in UTC, with nanoseconds (trailing zeros trimmed, as Go's RFC3339Nano) when `fraction`.
pub fn rfc3339(time: SystemTime, fraction: bool) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    let mut out = format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}", rest / 3600, rest % 3600 / 60, rest % 60);
    if fraction && since.subsec_nanos() > 0 {
        let digits = format!("{:09}", since.subsec_nanos());
        out.push('.');
        out.push_str(digits.trim_end_matches('0'));
    }
    out.push('Z');
    out
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::Outcome;

    #[test]
    fn percentiles_follow_ghz_ranks() {
        let sorted: Vec<u64> = (1..=100).collect();
        let got: Vec<(u32, u64)> = percentiles(&sorted).iter().map(|l| (l.percentage, l.latency)).collect();
        assert_eq!(got, [(10, 10), (25, 25), (50, 50), (75, 75), (90, 90), (95, 95), (99, 99)]);
        let ten: Vec<u64> = (1..=10).collect();
        let got: Vec<u64> = percentiles(&ten).iter().map(|l| l.latency).collect();
        // rank 2.5 -> index 2; 9.5 -> 9; 9.9 -> 9; whole ranks step back one.
        assert_eq!(got, [1, 3, 5, 8, 9, 10, 10]);
        assert!(percentiles(&[7]).iter().all(|l| l.latency == 7));
        assert!(percentiles(&[]).is_empty());
    }

    #[test]
    fn histogram_has_ten_equal_buckets_plus_the_slowest() {
        // 1.0 ms, 1.05 ms, 1.15 ms, ... 1.95 ms, 2.0 ms: marks every 0.1 ms from 1.0 ms, then 2.0 ms.
        let mut sorted = vec![1_000_000];
        sorted.extend((0..10).map(|i| 1_050_000 + i * 100_000));
        sorted.push(2_000_000);
        let buckets = histogram(&sorted);
        assert_eq!(buckets.len(), 11);
        assert!((buckets[0].mark - 0.001).abs() < 1e-12 && (buckets[10].mark - 0.002).abs() < 1e-12);
        assert!((buckets[1].mark - 0.0011).abs() < 1e-12);
        let counts: Vec<u64> = buckets.iter().map(|b| b.count).collect();
        assert_eq!(counts, [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2]);
        assert!((buckets.iter().map(|b| b.frequency).sum::<f64>() - 1.0).abs() < 1e-9);
        let same = histogram(&[5, 5, 5]);
        assert_eq!(same[0].count, 3);
        assert!(histogram(&[]).is_empty());
    }

    #[test]
    fn report_counts_errors_apart_from_latencies() {
        let sample = |ms: u64, outcome: Outcome| Sample {
            start: Duration::from_millis(ms),
            latency: Duration::from_millis(ms),
            lateness: None,
            outcome,
        };
        let run = Run {
            started: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            total: Duration::from_secs(2),
            samples: vec![
                sample(1, Outcome::ok()),
                sample(3, Outcome::ok()),
                sample(50, Outcome::failed("ResourceExhausted", "queue full")),
                sample(2, Outcome::ok()),
            ],
        };
        let report = Report::new(&run, serde_json::json!({"call": "x"}), true);
        assert_eq!((report.count, report.total, report.rps), (4, 2_000_000_000, 2.0));
        assert_eq!(report.average, 14_000_000);
        assert_eq!((report.fastest, report.slowest), (1_000_000, 3_000_000));
        assert_eq!(report.status_code_distribution["OK"], 3);
        assert_eq!(report.status_code_distribution["ResourceExhausted"], 1);
        assert_eq!(report.error_distribution["queue full"], 1);
        assert_eq!(report.percentile(50), Some(Duration::from_millis(2)));
        let json = serde_json::to_value(&report).unwrap();
        for key in ["date", "options", "errorDistribution", "statusCodeDistribution", "latencyDistribution"] {
            assert!(json.get(key).is_some(), "{key}");
        }
        assert_eq!(json["details"][0]["timestamp"], "2023-11-14T22:13:20.001Z");
        assert_eq!(json["details"][2]["status"], "ResourceExhausted");
        assert_eq!(json["histogram"].as_array().unwrap().len(), 11);
        let quiet = Report::new(&run, Value::Null, false);
        assert!(serde_json::to_value(&quiet).unwrap().get("details").is_none());
    }

    #[test]
    fn dates_are_rfc3339_utc() {
        assert_eq!(rfc3339(UNIX_EPOCH, true), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::new(951_782_400 + 3661, 120_000_000); // 2000-02-29 01:01:01.12
        assert_eq!(rfc3339(t, true), "2000-02-29T01:01:01.12Z");
        assert_eq!(rfc3339(t, false), "2000-02-29T01:01:01Z");
    }
}
