//! The performance regression gate: crossrank's figures from a fixed subset of benches,
//! compared with perf/baseline-<gpu>.json.
//!
//! The rule. The baseline is made from R ≥ 3 repetitions of the subset on the GPU; for each
//! figure it keeps the median m and the relative spread s = (max − min) / m of those
//! repetitions. The gate runs the subset again (R repetitions, median c) and, for a figure
//! where lower is better (latency), fails when
//!
//! ```text
//! c > m · (1 + t),   t = max(MIN_THRESHOLD, SPREAD_FACTOR · s)
//! ```
//!
//! i.e. a regression must be three times larger than the run-to-run noise seen when the
//! baseline was made, and never smaller than 3%. `c < m · (1 − t)` is reported as an
//! improvement (the baseline is then stale: remake it). A baseline figure absent from the
//! current run fails the gate too: the subset must not shrink silently.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::report::Report;
use crate::error::{Error, Result};

pub const SPREAD_FACTOR: f64 = 3.0;
pub const MIN_THRESHOLD: f64 = 0.03;
/// Repetitions needed to measure a spread.
pub const MIN_RUNS: usize = 3;

pub const RULE: &str = "fail when current median > baseline median x (1 + t), \
t = max(3%, 3 x the baseline's relative spread (max - min) / median over >= 3 repetitions)";

/// The gated metrics of a run: lower is better for each.
const METRICS: [&str; 2] = ["e2e_p50_ms", "forward_p50_ms"];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Figure {
    pub median: f64,
    /// (max − min) / median over the repetitions.
    pub spread: f64,
    pub samples: Vec<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    pub schema: u32,
    pub gpu: String,
    pub date: String,
    pub commit: Option<String>,
    pub rule: String,
    pub figures: BTreeMap<String, Figure>,
}

/// A file-name-safe GPU name from a device name: "cuda:0 NVIDIA H100 80GB HBM3 (sm_90)" →
/// "nvidia-h100-80gb-hbm3" (the ordinal and parenthesised details dropped).
pub fn gpu_slug(name: &str) -> String {
    let mut name = name.trim();
    if let Some(rest) = name.strip_prefix("cuda:") {
        name = rest
            .trim_start_matches(|c: char| c.is_ascii_digit())
            .trim_start();
    }
    let name = name.split('(').next().unwrap_or(name);
    let mut out = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
    }
    out.trim_end_matches('-').to_string()
}

/// crossrank's gated figures in one repetition, keyed `model/lengths/N/metric`
/// (`model/images/cache-cold/N/metric` for an image workload's rows).
pub fn figures(reports: &[Report]) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for r in reports.iter().filter(|r| r.system == "crossrank") {
        for x in &r.runs {
            let workload = x.workload(&r.lengths);
            let key = |m: &str| format!("{}/{workload}/{}/{m}", r.model.name, x.n);
            out.insert(key(METRICS[0]), x.e2e_ms.p50);
            out.insert(key(METRICS[1]), x.forward_ms.p50);
        }
    }
    out
}

fn median(xs: &[f64]) -> f64 {
    let mut s = xs.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// The device all repetitions ran on; they must agree.
fn device_of(reps: &[Vec<Report>]) -> Result<String> {
    let mut dev: Option<&str> = None;
    for r in reps.iter().flatten().filter(|r| r.system == "crossrank") {
        match dev {
            None => dev = Some(&r.device),
            Some(d) if d != r.device => {
                return Err(Error::input(format!(
                    "the repetitions ran on different devices: `{d}` and `{}`",
                    r.device
                )))
            }
            _ => {}
        }
    }
    dev.map(str::to_string)
        .ok_or_else(|| Error::input("no crossrank report among the inputs"))
}

/// Per-figure samples across repetitions; every repetition must hold the same figures.
fn collect(reps: &[Vec<Report>]) -> Result<BTreeMap<String, Vec<f64>>> {
    let mut out: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let first = reps.first().map(|r| figures(r)).unwrap_or_default();
    for (i, rep) in reps.iter().enumerate() {
        let f = figures(rep);
        if f.keys().ne(first.keys()) {
            return Err(Error::input(format!(
                "repetition {} measured different figures from repetition 1",
                i + 1
            )));
        }
        for (k, v) in f {
            out.entry(k).or_default().push(v);
        }
    }
    Ok(out)
}

/// Makes a baseline from `reps` repetitions of the subset.
pub fn make_baseline(reps: &[Vec<Report>], date: &str, commit: Option<String>) -> Result<Baseline> {
    if reps.len() < MIN_RUNS {
        return Err(Error::input(format!(
            "a baseline needs at least {MIN_RUNS} repetitions to measure the spread, got {}",
            reps.len()
        )));
    }
    let gpu = device_of(reps)?;
    let figures = collect(reps)?
        .into_iter()
        .map(|(k, samples)| {
            let m = median(&samples);
            let lo = samples.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = samples.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let spread = if m > 0.0 { (hi - lo) / m } else { 0.0 };
            (
                k,
                Figure {
                    median: m,
                    spread,
                    samples,
                },
            )
        })
        .collect();
    Ok(Baseline {
        schema: super::report::SCHEMA,
        gpu,
        date: date.to_string(),
        commit,
        rule: RULE.to_string(),
        figures,
    })
}

/// The threshold of one figure.
pub fn threshold(spread: f64) -> f64 {
    MIN_THRESHOLD.max(SPREAD_FACTOR * spread)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    Improved,
    Regressed,
    Missing,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub key: String,
    pub baseline: f64,
    pub current: Option<f64>,
    pub threshold: f64,
    pub status: Status,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub rows: Vec<Row>,
}

impl Verdict {
    pub fn failures(&self) -> Vec<&Row> {
        self.rows
            .iter()
            .filter(|r| matches!(r.status, Status::Regressed | Status::Missing))
            .collect()
    }

    pub fn table(&self) -> String {
        let mut out = format!(
            "{:<40} {:>10} {:>10} {:>8} {:>9}  status\n",
            "figure", "baseline", "current", "change", "threshold"
        );
        for r in &self.rows {
            let (cur, change) = match r.current {
                Some(c) => (
                    format!("{c:.3}"),
                    format!("{:+.1}%", 100.0 * (c / r.baseline - 1.0)),
                ),
                None => ("-".into(), "-".into()),
            };
            out += &format!(
                "{:<40} {:>10.3} {:>10} {:>8} {:>8.1}%  {:?}\n",
                r.key,
                r.baseline,
                cur,
                change,
                100.0 * r.threshold,
                r.status
            );
        }
        out
    }
}

/// Compares the median of `reps` with the baseline.
pub fn compare(baseline: &Baseline, reps: &[Vec<Report>]) -> Result<Verdict> {
    let device = device_of(reps)?;
    if gpu_slug(&device) != gpu_slug(&baseline.gpu) {
        return Err(Error::input(format!(
            "the baseline was measured on `{}`, this run on `{device}`: use perf/baseline-{}.json",
            baseline.gpu,
            gpu_slug(&device)
        )));
    }
    let current = collect(reps)?;
    let rows = baseline
        .figures
        .iter()
        .map(|(key, f)| {
            let t = threshold(f.spread);
            let cur = current.get(key).map(|s| median(s));
            let status = match cur {
                None => Status::Missing,
                Some(c) if c > f.median * (1.0 + t) => Status::Regressed,
                Some(c) if c < f.median * (1.0 - t) => Status::Improved,
                Some(_) => Status::Ok,
            };
            Row {
                key: key.clone(),
                baseline: f.median,
                current: cur,
                threshold: t,
                status,
            }
        })
        .collect();
    Ok(Verdict { rows })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::report::tests::report;

    fn rep(e2e: &[(usize, f64)]) -> Vec<Report> {
        let mut r = report("crossrank", "minilm-l6", "marco", e2e);
        r.device = "NVIDIA H100 80GB HBM3".into();
        let peer = report("hf-sdpa", "minilm-l6", "marco", &[(100, 1.0)]);
        vec![r, peer]
    }

    #[test]
    fn slug_is_file_name_safe() {
        assert_eq!(gpu_slug("NVIDIA H100 80GB HBM3"), "nvidia-h100-80gb-hbm3");
        assert_eq!(gpu_slug("cuda:1 NVIDIA  H200 (sm_90)"), "nvidia-h200");
        assert_eq!(gpu_slug("cpu (2 threads)"), "cpu");
    }

    #[test]
    fn threshold_follows_the_spread_with_a_floor() {
        // 2% spread → 6%; 0.5% spread → the 3% floor.
        assert!((threshold(0.02) - 0.06).abs() < 1e-12);
        assert_eq!(threshold(0.005), MIN_THRESHOLD);
        let b = make_baseline(
            &[rep(&[(100, 10.0)]), rep(&[(100, 10.2)]), rep(&[(100, 9.9)])],
            "d",
            None,
        )
        .unwrap();
        let f = &b.figures["minilm-l6/marco/100/e2e_p50_ms"];
        assert_eq!(f.median, 10.0);
        assert!((f.spread - 0.03).abs() < 1e-9, "{}", f.spread);
        // Peers are not gated.
        assert_eq!(b.figures.len(), 2);
    }

    #[test]
    fn gate_passes_noise_and_fails_regressions_and_missing_figures() {
        let reps = [rep(&[(100, 10.0)]), rep(&[(100, 10.2)]), rep(&[(100, 9.9)])];
        let b = make_baseline(&reps, "d", None).unwrap();
        // t = 9%: 10.8 (+8%) passes, 11.0 (+10%) fails, 9.0 (−10%) is an improvement.
        let v = compare(&b, &[rep(&[(100, 10.8)])]).unwrap();
        assert!(v.failures().is_empty(), "{}", v.table());
        let v = compare(
            &b,
            &[rep(&[(100, 11.0)]), rep(&[(100, 11.0)]), rep(&[(100, 7.0)])],
        )
        .unwrap();
        assert_eq!(
            v.failures().len(),
            2,
            "median 11.0 of both metrics: {}",
            v.table()
        );
        assert_eq!(v.rows[0].status, Status::Regressed);
        let v = compare(&b, &[rep(&[(100, 9.0)])]).unwrap();
        assert!(v.rows.iter().all(|r| r.status == Status::Improved));
        let v = compare(&b, &[rep(&[(80, 10.0)])]).unwrap();
        assert!(v.rows.iter().all(|r| r.status == Status::Missing) && v.failures().len() == 2);
        assert!(v.table().contains("Missing"));
    }

    #[test]
    fn refusals() {
        let e = make_baseline(&[rep(&[(100, 1.0)])], "d", None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("at least 3 repetitions"), "{e}");
        let reps = [
            rep(&[(100, 10.0)]),
            rep(&[(100, 10.0)]),
            rep(&[(100, 10.0)]),
        ];
        let b = make_baseline(&reps, "d", None).unwrap();
        let mut other = rep(&[(100, 10.0)]);
        other[0].device = "NVIDIA H200".into();
        let e = compare(&b, &[other]).unwrap_err().to_string();
        assert!(
            e.contains("NVIDIA H200") && e.contains("baseline-nvidia-h200.json"),
            "{e}"
        );
        let e = make_baseline(
            &[rep(&[(100, 1.0)]), rep(&[(80, 1.0)]), rep(&[(100, 1.0)])],
            "d",
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("repetition 2"), "{e}");
    }
}
