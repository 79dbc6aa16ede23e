//! Prometheus text metrics, kept by hand: a few counters, gauges and fixed-bucket histograms
//! behind one mutex each, cheap next to a forward pass.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A histogram with fixed upper bounds (plus +Inf).
pub struct Histogram {
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
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            state: Mutex::new(HistState {
                counts: vec![0; bounds.len()],
                ..Default::default()
            }),
        }
    }

    pub fn observe(&self, v: f64) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        for (c, &b) in s.counts.iter_mut().zip(self.bounds) {
            if v <= b {
                *c += 1;
            }
        }
        s.sum += v;
        s.count += 1;
    }

    /// Writes the buckets, sum and count as `name` with `labels` (`k="v",...` or empty).
    pub fn write(&self, out: &mut String, name: &str, labels: &str) {
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

/// The server's metrics: requests by route, status and model, the queue depth shared by every
/// model (what --max-concurrent bounds, and what an autoscaler watches), and one
/// [`ModelMetrics`] per model name, rendered with a `model` label.
pub struct Metrics {
    /// (route, status, model) → count; model is empty when no model was picked.
    requests: Mutex<BTreeMap<(String, u16, String), u64>>,
    /// route → latency from arrival to answer.
    latency: Mutex<BTreeMap<String, Histogram>>,
    /// Requests accepted and not yet answered, all models together.
    pub queue_depth: AtomicU64,
    rejected_overloaded: AtomicU64,
    /// Per model name; kept across a swap and after a removal, so counters never go back.
    models: Mutex<BTreeMap<String, Arc<ModelMetrics>>>,
}

/// What the scheduler of one model counts; labelled `model="NAME"` in /metrics.
pub struct ModelMetrics {
    queue_time: Histogram,
    forward_time: Histogram,
    batch_pairs: Histogram,
    batch_tokens: Histogram,
    tokens: AtomicU64,
    pairs: AtomicU64,
    forward_failures: AtomicU64,
    cancelled: AtomicU64,
    deadline_exceeded: AtomicU64,
    /// device → (forwards, pairs scored): one inference thread per device.
    devices: Mutex<BTreeMap<String, (u64, u64)>>,
}

impl Default for ModelMetrics {
    fn default() -> Self {
        ModelMetrics {
            queue_time: Histogram::new(SECONDS),
            forward_time: Histogram::new(SECONDS),
            batch_pairs: Histogram::new(PAIRS),
            batch_tokens: Histogram::new(TOKENS),
            tokens: AtomicU64::new(0),
            pairs: AtomicU64::new(0),
            forward_failures: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            deadline_exceeded: AtomicU64::new(0),
            devices: Mutex::default(),
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Mutex::default(),
            latency: Mutex::default(),
            queue_depth: AtomicU64::new(0),
            rejected_overloaded: AtomicU64::new(0),
            models: Mutex::default(),
        }
    }
}

impl ModelMetrics {
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

    /// One forward on `device`: counted, and its pairs if it succeeded.
    pub fn device_forward(&self, device: &str, pairs: usize, ok: bool) {
        let mut d = self.devices.lock().unwrap_or_else(|e| e.into_inner());
        let entry = d.entry(device.to_string()).or_default();
        entry.0 += 1;
        if ok {
            entry.1 += pairs as u64;
        }
    }

    /// Time from acceptance to the first forward that holds a request's pairs.
    pub fn queued(&self, seconds: f64) {
        self.queue_time.observe(seconds);
    }

    /// A request whose client went away before its forward.
    pub fn cancelled(&self) {
        self.cancelled.fetch_add(1, Ordering::Relaxed);
    }

    /// A request answered 504: its deadline passed before it was scored.
    pub fn deadline_exceeded(&self) {
        self.deadline_exceeded.fetch_add(1, Ordering::Relaxed);
    }
}

/// The per-model histograms, by name and help.
const MODEL_HISTOGRAMS: [(&str, &str); 4] = [
    (
        "queue_duration_seconds",
        "Time from acceptance to a request's first forward.",
    ),
    ("forward_duration_seconds", "Time of one forward pass."),
    ("batch_pairs", "Pairs in one forward pass."),
    ("batch_tokens", "Tokens in one forward pass."),
];

/// The per-model counters, by name and help.
const MODEL_COUNTERS: [(&str, &str); 5] = [
    ("tokens_total", "Tokens scored."),
    ("pairs_total", "Pairs scored."),
    ("forward_failures_total", "Forward passes that failed."),
    (
        "cancelled_total",
        "Requests dropped because their client went away.",
    ),
    (
        "deadline_exceeded_total",
        "Requests answered 504 because their deadline passed before they were scored; their pairs not yet scored were dropped before their forward.",
    ),
];

impl ModelMetrics {
    fn histogram(&self, i: usize) -> &Histogram {
        [
            &self.queue_time,
            &self.forward_time,
            &self.batch_pairs,
            &self.batch_tokens,
        ][i]
    }

    fn counter(&self, i: usize) -> u64 {
        [
            &self.tokens,
            &self.pairs,
            &self.forward_failures,
            &self.cancelled,
            &self.deadline_exceeded,
        ][i]
            .load(Ordering::Relaxed)
    }
}

impl Metrics {
    /// The metrics of model `name`, made on first use; the same ones after a swap.
    pub fn model(&self, name: &str) -> Arc<ModelMetrics> {
        self.models
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(name.to_string())
            .or_default()
            .clone()
    }

    /// One answered request; `model` is empty when none was picked (not a scoring route, or
    /// refused before routing).
    pub fn request(&self, route: &str, status: u16, model: &str, seconds: f64) {
        *self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((route.to_string(), status, model.to_string()))
            .or_default() += 1;
        self.latency
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(route.to_string())
            .or_insert_with(|| Histogram::new(SECONDS))
            .observe(seconds);
    }

    pub fn overloaded(&self) {
        self.rejected_overloaded.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let p = "crossrank";
        let _ = writeln!(
            out,
            "# HELP {p}_requests_total Requests answered, by route, status and model (empty when none was picked).\n# TYPE {p}_requests_total counter"
        );
        for ((route, status, model), n) in self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "{p}_requests_total{{route=\"{route}\",status=\"{status}\",model=\"{model}\"}} {n}"
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
        let models: Vec<(String, Arc<ModelMetrics>)> = self
            .models
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(n, m)| (n.clone(), m.clone()))
            .collect();
        for (i, (name, help)) in MODEL_HISTOGRAMS.iter().enumerate() {
            let _ = writeln!(out, "# HELP {p}_{name} {help}\n# TYPE {p}_{name} histogram");
            for (model, m) in &models {
                m.histogram(i).write(
                    &mut out,
                    &format!("{p}_{name}"),
                    &format!("model=\"{model}\""),
                );
            }
        }
        for (i, (name, help)) in MODEL_COUNTERS.iter().enumerate() {
            let _ = writeln!(out, "# HELP {p}_{name} {help}\n# TYPE {p}_{name} counter");
            for (model, m) in &models {
                let _ = writeln!(out, "{p}_{name}{{model=\"{model}\"}} {}", m.counter(i));
            }
        }
        for (name, help, pick) in [
            (
                "device_forwards_total",
                "Forward passes by model and device (one inference thread per device).",
                0,
            ),
            ("device_pairs_total", "Pairs scored by model and device.", 1),
        ] {
            let _ = writeln!(out, "# HELP {p}_{name} {help}\n# TYPE {p}_{name} counter");
            for (model, m) in &models {
                let devices = m.devices.lock().unwrap_or_else(|e| e.into_inner()).clone();
                for (device, counts) in devices {
                    let n = if pick == 0 { counts.0 } else { counts.1 };
                    let _ = writeln!(
                        out,
                        "{p}_{name}{{model=\"{model}\",device=\"{device}\"}} {n}"
                    );
                }
            }
        }
        let scalars: [(&str, &str, &str, &AtomicU64); 2] = [
            (
                "queue_depth",
                "gauge",
                "Requests accepted and not yet answered, all models together.",
                &self.queue_depth,
            ),
            (
                "overloaded_total",
                "counter",
                "Requests refused with 503 past --max-concurrent.",
                &self.rejected_overloaded,
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
        let a = m.model("a");
        a.forward(3, 100, 0.003, true);
        a.forward(40, 5000, 0.2, true);
        m.model("b").forward(1, 10, 0.001, false);
        m.request("/rerank", 200, "a", 0.01);
        let text = m.render();
        assert!(
            text.contains("crossrank_batch_pairs_bucket{model=\"a\",le=\"4\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("crossrank_batch_pairs_bucket{model=\"a\",le=\"64\"} 2\n"));
        assert!(text.contains("crossrank_batch_pairs_bucket{model=\"a\",le=\"+Inf\"} 2\n"));
        assert!(text.contains("crossrank_tokens_total{model=\"a\"} 5100\n"));
        assert!(text.contains("crossrank_tokens_total{model=\"b\"} 0\n"));
        assert!(text.contains("crossrank_forward_failures_total{model=\"b\"} 1\n"));
        assert!(text.contains(
            "crossrank_requests_total{route=\"/rerank\",status=\"200\",model=\"a\"} 1\n"
        ));
        // One HELP and TYPE per family, however many models.
        assert_eq!(
            text.matches("# TYPE crossrank_tokens_total counter")
                .count(),
            1
        );
        assert!(text.contains(
            "crossrank_request_duration_seconds_bucket{route=\"/rerank\",le=\"0.01\"} 1\n"
        ));
    }
}
