//! Prometheus text metrics, kept by hand: a few counters, gauges and fixed-bucket histograms
//! behind one mutex each, cheap next to a forward pass.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// A histogram with fixed upper bounds (plus +Inf).
struct Histogram {
    bounds: &'static [f64],
    state: Mutex<HistState>,
}

#[derive(Default, Clone)]
struct HistState {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            state: Mutex::new(HistState {
                counts: vec![0; bounds.len()],
                ..Default::default()
            }),
        }
    }

    fn observe(&self, v: f64) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        for (c, &b) in s.counts.iter_mut().zip(self.bounds) {
            if v <= b {
                *c += 1;
            }
        }
        s.sum += v;
        s.count += 1;
    }

    fn write(&self, out: &mut String, name: &str, labels: &str) {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let sep = if labels.is_empty() { "" } else { "," };
        for (c, b) in s.counts.iter().zip(self.bounds) {
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {c}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}", s.count);
        let braces = |l: &str| {
            if l.is_empty() {
                String::new()
            } else {
                format!("{{{l}}}")
            }
        };
        let _ = writeln!(out, "{name}_sum{} {}", braces(labels), s.sum);
        let _ = writeln!(out, "{name}_count{} {}", braces(labels), s.count);
    }
}

const SECONDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const PAIRS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];
const TOKENS: &[f64] = &[
    64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0, 32768.0, 65536.0,
];

pub struct Metrics {
    /// (route, status) → count.
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    /// route → latency from arrival to answer.
    latency: Mutex<BTreeMap<String, Histogram>>,
    queue_time: Histogram,
    forward_time: Histogram,
    batch_pairs: Histogram,
    batch_tokens: Histogram,
    /// Requests accepted and not yet answered.
    pub queue_depth: AtomicU64,
    tokens: AtomicU64,
    pairs: AtomicU64,
    forward_failures: AtomicU64,
    rejected_overloaded: AtomicU64,
    cancelled: AtomicU64,
    deadline_exceeded: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Mutex::default(),
            latency: Mutex::default(),
            queue_time: Histogram::new(SECONDS),
            forward_time: Histogram::new(SECONDS),
            batch_pairs: Histogram::new(PAIRS),
            batch_tokens: Histogram::new(TOKENS),
            queue_depth: AtomicU64::new(0),
            tokens: AtomicU64::new(0),
            pairs: AtomicU64::new(0),
            forward_failures: AtomicU64::new(0),
            rejected_overloaded: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            deadline_exceeded: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    /// One answered request.
    pub fn request(&self, route: &str, status: u16, seconds: f64) {
        *self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((route.to_string(), status))
            .or_default() += 1;
        self.latency
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(route.to_string())
            .or_insert_with(|| Histogram::new(SECONDS))
            .observe(seconds);
    }

    /// One forward pass: its size and time, or its failure.
    pub fn forward(&self, pairs: usize, tokens: usize, seconds: f64, ok: bool) {
        self.batch_pairs.observe(pairs as f64);
        self.batch_tokens.observe(tokens as f64);
        self.forward_time.observe(seconds);
        if ok {
            self.pairs.fetch_add(pairs as u64, Ordering::Relaxed);
            self.tokens.fetch_add(tokens as u64, Ordering::Relaxed);
        } else {
            self.forward_failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Time from acceptance to the first forward that holds a request's pairs.
    pub fn queued(&self, seconds: f64) {
        self.queue_time.observe(seconds);
    }

    pub fn overloaded(&self) {
        self.rejected_overloaded.fetch_add(1, Ordering::Relaxed);
    }

    /// A request whose client went away before its forward.
    pub fn cancelled(&self) {
        self.cancelled.fetch_add(1, Ordering::Relaxed);
    }

    /// A request answered 504: its deadline passed before it was scored.
    pub fn deadline_exceeded(&self) {
        self.deadline_exceeded.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let p = "crossrank";
        let _ = writeln!(
            out,
            "# HELP {p}_requests_total Requests answered, by route and status.\n# TYPE {p}_requests_total counter"
        );
        for ((route, status), n) in self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "{p}_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP {p}_request_duration_seconds Time from arrival to answer, by route.\n# TYPE {p}_request_duration_seconds histogram"
        );
        for (route, h) in self
            .latency
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            h.write(
                &mut out,
                &format!("{p}_request_duration_seconds"),
                &format!("route=\"{route}\""),
            );
        }
        let hists: [(&str, &str, &Histogram); 4] = [
            (
                "queue_duration_seconds",
                "Time from acceptance to a request's first forward.",
                &self.queue_time,
            ),
            (
                "forward_duration_seconds",
                "Time of one forward pass.",
                &self.forward_time,
            ),
            (
                "batch_pairs",
                "Pairs in one forward pass.",
                &self.batch_pairs,
            ),
            (
                "batch_tokens",
                "Tokens in one forward pass.",
                &self.batch_tokens,
            ),
        ];
        for (name, help, h) in hists {
            let _ = writeln!(out, "# HELP {p}_{name} {help}\n# TYPE {p}_{name} histogram");
            h.write(&mut out, &format!("{p}_{name}"), "");
        }
        let scalars: [(&str, &str, &str, &AtomicU64); 7] = [
            (
                "queue_depth",
                "gauge",
                "Requests accepted and not yet answered.",
                &self.queue_depth,
            ),
            ("tokens_total", "counter", "Tokens scored.", &self.tokens),
            ("pairs_total", "counter", "Pairs scored.", &self.pairs),
            (
                "forward_failures_total",
                "counter",
                "Forward passes that failed.",
                &self.forward_failures,
            ),
            (
                "overloaded_total",
                "counter",
                "Requests refused with 503 past --max-concurrent.",
                &self.rejected_overloaded,
            ),
            (
                "cancelled_total",
                "counter",
                "Requests dropped because their client went away.",
                &self.cancelled,
            ),
            (
                "deadline_exceeded_total",
                "counter",
                "Requests answered 504 because their deadline passed before they were scored; their pairs not yet scored were dropped before their forward.",
                &self.deadline_exceeded,
            ),
        ];
        for (name, kind, help, v) in scalars {
            let _ = writeln!(
                out,
                "# HELP {p}_{name} {help}\n# TYPE {p}_{name} {kind}\n{p}_{name} {}",
                v.load(Ordering::Relaxed)
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::default();
        m.forward(3, 100, 0.003, true);
        m.forward(40, 5000, 0.2, true);
        m.request("/rerank", 200, 0.01);
        let text = m.render();
        assert!(
            text.contains("crossrank_batch_pairs_bucket{le=\"4\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("crossrank_batch_pairs_bucket{le=\"64\"} 2\n"));
        assert!(text.contains("crossrank_batch_pairs_bucket{le=\"+Inf\"} 2\n"));
        assert!(text.contains("crossrank_tokens_total 5100\n"));
        assert!(text.contains("crossrank_requests_total{route=\"/rerank\",status=\"200\"} 1\n"));
        assert!(text.contains(
            "crossrank_request_duration_seconds_bucket{route=\"/rerank\",le=\"0.01\"} 1\n"
        ));
    }
}
