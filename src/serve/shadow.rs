//! Shadow comparison: a candidate model scores a sampled share of the default model's
//! requests off the answer's path, and /metrics gets how far the two rankings agree.
//!
//! The client's answer never waits for the candidate: the comparison starts after the answer is
//! rendered, in a task of its own. The candidate has its own scheduler and its own small bound
//! on requests in flight ([`IN_FLIGHT`]); a sample is dropped (and counted) when that bound is
//! reached or when the server's queue is half full, so under load the shadow goes first.
//!
//! Per group (a request, or each group of /rerank/batch), with `p` the default model's logits
//! and `s` the candidate's: Kendall's tau-b of the two rankings, the overlap of their top k
//! (k = the group's `top_n`, else 10, at most the group's size) as a share of k, and the score
//! shift: the mean of sigmoid(s) - sigmoid(p), the change a client would see in its scores.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use super::api::{self, Call, GroupScores};
use super::metrics::{Histogram, Metrics};
use super::models::Loaded;
use crate::audit::stats;
use crate::engine::sigmoid;

/// The most sampled requests the candidate holds at once; past it a sample is dropped.
pub const IN_FLIGHT: usize = 4;

/// k of the top-k overlap when a group gives no top_n.
const DEFAULT_K: usize = 10;

const TAU: &[f64] = &[-0.5, 0.0, 0.25, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0];
const OVERLAP: &[f64] = &[0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0];
const SHIFT: &[f64] = &[
    -0.5, -0.2, -0.1, -0.05, -0.01, 0.0, 0.01, 0.05, 0.1, 0.2, 0.5, 1.0,
];

/// The candidate, its sampling and its agreement with the default model.
pub struct Shadow {
    pub loaded: Loaded,
    /// The share of the default model's requests also sent to the candidate, in [0, 1].
    pub sample: f64,
    /// The default model's requests seen so far (see [`takes`]).
    seen: AtomicU64,
    in_flight: AtomicUsize,
    /// The candidate's own queue depth and forward metrics (not the server's: its requests
    /// take none of --max-concurrent's places).
    pub own_metrics: Arc<Metrics>,
    tau: Histogram,
    overlap: Histogram,
    shift: Histogram,
    compared: AtomicU64,
    dropped: AtomicU64,
    failed: AtomicU64,
}

/// Holds one of the candidate's places until the comparison ends.
struct Place<'a>(&'a AtomicUsize);

impl Drop for Place<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Shadow {
    pub fn new(loaded: Loaded, sample: f64, own_metrics: Arc<Metrics>) -> Shadow {
        Shadow {
            loaded,
            sample,
            seen: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            own_metrics,
            tau: Histogram::new(TAU),
            overlap: Histogram::new(OVERLAP),
            shift: Histogram::new(SHIFT),
            compared: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        }
    }

    /// Whether the next request of the default model is sampled.
    pub fn sampled(&self) -> bool {
        takes(self.seen.fetch_add(1, Ordering::AcqRel), self.sample)
    }

    /// Scores `call` with the candidate and records its agreement with `primary` (the default
    /// model's logits for the same call). Dropped when the candidate holds [`IN_FLIGHT`]
    /// requests or the server's queue (`server_depth` of `max_concurrent`) is half full.
    pub async fn compare(
        &self,
        call: Arc<Call>,
        primary: Vec<GroupScores>,
        server_depth: u64,
        max_concurrent: usize,
    ) {
        let busy = 2 * server_depth >= max_concurrent as u64;
        if busy || self.in_flight.fetch_add(1, Ordering::AcqRel) >= IN_FLIGHT {
            if !busy {
                self.in_flight.fetch_sub(1, Ordering::AcqRel);
            }
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let _place = Place(&self.in_flight);
        let answer = match self.loaded.scheduler.submit(call.clone()) {
            Ok(pending) => pending.answer().await,
            Err(e) => Err(e),
        };
        let shadow = match answer {
            Ok(scored) => scored.groups,
            Err(e) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                eprintln!(
                    "crossrank serve: shadow {} failed a sampled request: {}",
                    self.loaded.name, e.message
                );
                return;
            }
        };
        for ((group, p), s) in call.groups.iter().zip(&primary).zip(&shadow) {
            let (p, s) = (&p.logits, &s.logits);
            if p.len() != s.len() || p.is_empty() {
                continue;
            }
            let k = group.top_n.unwrap_or(DEFAULT_K).min(p.len());
            let (tau, overlap) = agreement(p, s, k.max(1));
            if let Some(tau) = tau {
                self.tau.observe(tau);
            }
            if k > 0 {
                self.overlap.observe(overlap);
            }
            let shift: f64 = p
                .iter()
                .zip(s)
                .map(|(&a, &b)| f64::from(sigmoid(b)) - f64::from(sigmoid(a)))
                .sum::<f64>()
                / p.len() as f64;
            self.shift.observe(shift);
        }
        self.compared.fetch_add(1, Ordering::Relaxed);
    }

    /// The shadow's lines of /metrics, labelled with the default model and the candidate.
    pub fn render(&self, model: &str) -> String {
        let labels = format!("model=\"{model}\",shadow=\"{}\"", self.loaded.name);
        let p = "crossrank_shadow";
        let mut out = String::new();
        for (name, help, h) in [
            (
                "kendall_tau",
                "Kendall's tau-b between the default model's and the candidate's rankings of a sampled group.",
                &self.tau,
            ),
            (
                "topk_overlap",
                "Share of the default model's top k (the group's top_n, else 10) also in the candidate's top k.",
                &self.overlap,
            ),
            (
                "score_shift",
                "Mean of sigmoid(candidate logit) - sigmoid(default model logit) over a sampled group.",
                &self.shift,
            ),
        ] {
            out.push_str(&format!(
                "# HELP {p}_{name} {help}\n# TYPE {p}_{name} histogram\n"
            ));
            h.write(&mut out, &format!("{p}_{name}"), &labels);
        }
        out.push_str(&format!("# HELP {p}_requests_total Sampled requests by outcome: compared, dropped (the candidate busy or the server's queue half full), failed.\n# TYPE {p}_requests_total counter\n"));
        for (outcome, n) in [
            ("compared", &self.compared),
            ("dropped", &self.dropped),
            ("failed", &self.failed),
        ] {
            out.push_str(&format!(
                "{p}_requests_total{{{labels},outcome=\"{outcome}\"}} {}\n",
                n.load(Ordering::Relaxed)
            ));
        }
        out
    }
}

/// Whether request `n` (from 0) is sampled at rate `sample`: floor((n + 1) * sample) >
/// floor(n * sample), so exactly that share of requests is, evenly spread.
fn takes(n: u64, sample: f64) -> bool {
    let n = n as f64;
    ((n + 1.0) * sample).floor() > (n * sample).floor()
}

/// Kendall's tau-b of the two groups' logits and the share of the first's top k in the
/// second's (`crossrank audit`'s statistics, on the answers' orders: best first, ties in input
/// order).
fn agreement(p: &[f32], s: &[f32], k: usize) -> (Option<f64>, f64) {
    let wide = |v: &[f32]| -> Vec<f64> { v.iter().map(|&x| f64::from(x)).collect() };
    let tau = stats::kendall_tau_b(&wide(p), &wide(s));
    let overlap = stats::top_k_overlap(&api::order(p, None), &api::order(s, None), k);
    (tau, overlap as f64 / k as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agreement_is_tau_b_and_the_top_k_share() {
        let a = [0.9, 0.1, 0.8, 0.2];
        assert_eq!(agreement(&a, &a, 2), (Some(1.0), 1.0));
        // Orders 0 2 3 1 and 0 1 3 2: tops {0, 2} and {0, 1} share one of two; of the six
        // pairs, (1,2) and (1,3) and (2,3) are discordant: (3 - 3) / 6.
        assert_eq!(agreement(&a, &[0.9, 0.8, 0.1, 0.2], 2), (Some(0.0), 0.5));
        let reversed = [0.1, 0.9, 0.2, 0.8];
        assert_eq!(agreement(&a, &reversed, 2), (Some(-1.0), 0.0));
        assert_eq!(agreement(&a, &reversed, 4).1, 1.0);
        assert_eq!(agreement(&[1.0, 1.0], &[1.0, 2.0], 1).0, None);
    }

    #[test]
    fn sampling_takes_exactly_its_share_evenly() {
        let picks = |rate: f64, n: u64| -> Vec<bool> { (0..n).map(|i| takes(i, rate)).collect() };
        assert!(picks(1.0, 10).iter().all(|&p| p));
        assert!(picks(0.0, 10).iter().all(|&p| !p));
        assert_eq!(
            picks(0.25, 8),
            [false, false, false, true, false, false, false, true]
        );
        assert_eq!(picks(0.1, 1000).iter().filter(|&&p| p).count(), 100);
    }
}
