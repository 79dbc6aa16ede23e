//! The figures of a bench run, their JSON schema (shared with scripts/peers.py) and the tables
//! that compare systems.
//!
//! FLOP count of one forward over the tokens actually present (matrix products only; layer
//! norms, softmax, GELU and embeddings are not counted), for sequences of lengths `l_s`,
//! `T = Σ l_s` tokens, `n` sequences, hidden `H`, FFN `I`, `L` layers:
//!
//! ```text
//! FLOPs = L · (2·T·(4·H² + 2·H·I)  +  4·H·Σ l_s²)  +  2·n·(H² + H)
//!              QKV, out, FFN in/out    QKᵀ and PV       head: dense + one logit
//! ```
//!
//! ModernBERT (GeGLU: Wi gives 2·I, Wo reads I; a sliding layer's query i sees the
//! `k_i = min(l, i + w + 1) - max(0, i - w)` keys within w = local_attention / 2 of it):
//!
//! ```text
//! FLOPs = L · 2·T·(4·H² + 3·H·I)  +  4·H·(L_full·Σ l_s² + L_sliding·Σ_s Σ_i k_i)  +  2·n·(H² + H)
//! ```
//!
//! BLIP (`BlipForImageTextRetrieval`, one image per pair; vision width V, FFN J, `L_v` layers,
//! R = patches + 1 rows per image, patch side p; the text layers as BERT's, plus
//! cross-attention: Q and output on the text rows, K and V on the image rows, attention over
//! R keys; the ITM head Linear(H, 2)):
//!
//! ```text
//! FLOPs = n · (2·(R-1)·3p²·V + L_v · (2·R·(4·V² + 2·V·J) + 4·V·R²))            vision, per image
//!       + L · (2·T·(6·H² + 2·H·I) + 4·H·Σ l_s² + n·4·R·H·V + 4·H·R·T)  +  4·n·H     text and head
//! ```
//!
//! These are the model's FLOPs for the full forward (the usual MFU convention): an optimisation
//! that skips work, such as running the last layer on [CLS] rows only, raises the achieved
//! figure without doing those FLOPs. Peers that pad count the same unpadded FLOPs: padding is
//! their overhead, not useful work.
//!
//! MFU = achieved FLOP/s of the forward alone (p50) / the dense GEMM rate measured in the same
//! run on the same device (fp16 on CUDA; f32 on the CPU, which the report says).

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The JSON schema version: bump when a field changes meaning.
pub const SCHEMA: u32 = 1;

/// The FLOPs of one forward over sequences of the given lengths.
pub fn forward_flops(lens: &[usize], layers: usize, hidden: usize, intermediate: usize) -> f64 {
    let h = hidden as f64;
    let i = intermediate as f64;
    let t: f64 = lens.iter().map(|&l| l as f64).sum();
    let sq: f64 = lens.iter().map(|&l| (l as f64) * (l as f64)).sum();
    let n = lens.len() as f64;
    layers as f64 * (2.0 * t * (4.0 * h * h + 2.0 * h * i) + 4.0 * h * sq) + 2.0 * n * (h * h + h)
}

/// The FLOPs of one forward of `cfg`'s model over sequences of the given lengths: BERT's formula,
/// or ModernBERT's (GeGLU, windowed layers) when the config is that family's.
pub fn model_forward_flops(lens: &[usize], cfg: &crate::config::ModelConfig) -> f64 {
    let (h, i) = (cfg.hidden_size as f64, cfg.intermediate_size as f64);
    if let Some(v) = &cfg.blip {
        return blip_forward_flops(lens, cfg.num_layers, h, i, v);
    }
    if let Some(q) = &cfg.qwen {
        return qwen_forward_flops(
            lens,
            cfg.num_layers,
            h,
            i,
            (cfg.num_heads, q.num_kv_heads, cfg.head_dim),
        );
    }
    let Some(m) = &cfg.modernbert else {
        return forward_flops(lens, cfg.num_layers, cfg.hidden_size, cfg.intermediate_size);
    };
    let t: f64 = lens.iter().map(|&l| l as f64).sum();
    let n = lens.len() as f64;
    let w = m.half_window();
    let full: f64 = lens.iter().map(|&l| (l as f64) * (l as f64)).sum();
    let windowed: f64 = lens
        .iter()
        .map(|&l| {
            (0..l)
                .map(|q| ((q + w + 1).min(l) - q.saturating_sub(w)) as f64)
                .sum::<f64>()
        })
        .sum();
    let keys: f64 = m
        .layer_types
        .iter()
        .map(|k| match k {
            crate::config::LayerType::Full => full,
            crate::config::LayerType::Sliding => windowed,
        })
        .sum();
    cfg.num_layers as f64 * 2.0 * t * (4.0 * h * h + 3.0 * h * i)
        + 4.0 * h * keys
        + 2.0 * n * (h * h + h)
}

/// BLIP's ITM forward (module docs): every pair's image through the vision tower, then the
/// text tower with cross-attention to it, then the two-way ITM head.
fn blip_forward_flops(
    lens: &[usize],
    layers: usize,
    h: f64,
    i: f64,
    v: &crate::config::BlipVisionConfig,
) -> f64 {
    let (vh, vi) = (v.hidden_size as f64, v.intermediate_size as f64);
    let (rows, patch_in) = (
        v.rows_per_image() as f64,
        (3 * v.patch_size * v.patch_size) as f64,
    );
    let n = lens.len() as f64;
    let t: f64 = lens.iter().map(|&l| l as f64).sum();
    let sq: f64 = lens.iter().map(|&l| (l as f64) * (l as f64)).sum();
    let vision = 2.0 * (rows - 1.0) * patch_in * vh
        + v.num_layers as f64
            * (2.0 * rows * (4.0 * vh * vh + 2.0 * vh * vi) + 4.0 * vh * rows * rows);
    let text = layers as f64
        * (2.0 * t * (6.0 * h * h + 2.0 * h * i)
            + 4.0 * h * sq
            + n * 4.0 * rows * h * vh
            + 4.0 * h * rows * t);
    n * vision + text + 4.0 * n * h
}

/// A decoder LLM reranker's forward (Qwen): per layer and token the QKV projection
/// ((heads + 2·kv_heads)·d wide), the output projection (heads·d → h) and SwiGLU's three h×I
/// matrices; causal attention over l(l+1)/2 (query, key) pairs per sequence for QKᵀ and PV;
/// then the folded yes-no head, one h-vector per sequence.
fn qwen_forward_flops(
    lens: &[usize],
    layers: usize,
    h: f64,
    i: f64,
    (heads, kv, d): (usize, usize, usize),
) -> f64 {
    let (q, kvw) = ((heads * d) as f64, (kv * d) as f64);
    let t: f64 = lens.iter().map(|&l| l as f64).sum();
    let causal: f64 = lens.iter().map(|&l| (l * (l + 1)) as f64 / 2.0).sum();
    let n = lens.len() as f64;
    layers as f64 * (2.0 * t * (h * (q + 2.0 * kvw) + q * h + 3.0 * h * i) + 4.0 * q * causal)
        + 2.0 * n * h
}

/// The mean FLOPs of one forward over each of `batches`.
pub fn mean_batch_flops(
    batches: &[crate::batch::PackedBatch],
    cfg: &crate::config::ModelConfig,
) -> f64 {
    let total: f64 = batches
        .iter()
        .map(|b| {
            let lens: Vec<usize> = (0..b.len()).map(|s| b.range(s).len()).collect();
            model_forward_flops(&lens, cfg)
        })
        .sum();
    total / batches.len().max(1) as f64
}

/// Order statistics of a set of timings, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct Stats {
    pub p50: f64,
    pub p99: f64,
    pub mean: f64,
    pub min: f64,
    pub max: f64,
    pub samples: usize,
}

impl Stats {
    /// Percentiles by the nearest-rank rule: p-th percentile = the ⌈p·n/100⌉-th smallest.
    pub fn of(samples_ms: &[f64]) -> Stats {
        if samples_ms.is_empty() {
            return Stats::default();
        }
        let mut s = samples_ms.to_vec();
        s.sort_by(f64::total_cmp);
        let rank = |p: f64| {
            let k = ((p / 100.0) * s.len() as f64).ceil() as usize;
            s[k.clamp(1, s.len()) - 1]
        };
        Stats {
            p50: rank(50.0),
            p99: rank(99.0),
            mean: s.iter().sum::<f64>() / s.len() as f64,
            min: s[0],
            max: s[s.len() - 1],
            samples: s.len(),
        }
    }
}

/// Where the time of one call goes, medians in milliseconds. Fields a system cannot separate
/// are absent.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct Split {
    pub tokenize_ms: Option<f64>,
    /// Building the packed batch (crossrank) or the padded tensors (peers) on the host.
    pub pack_ms: Option<f64>,
    pub upload_ms: Option<f64>,
    pub forward_ms: Option<f64>,
    pub download_ms: Option<f64>,
    /// Image workloads: decoding and preprocessing the call's images on the host (the model's
    /// image processor), before the forward.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preprocess_ms: Option<f64>,
}

/// The image-feature cache's counters over a row's timed calls (`Reranker::image_cache_stats`,
/// differences across each call), and its size after the last one.
pub use crate::models::blip::CacheStats as ImageCache;

/// The figures for one candidate count N.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    pub n: usize,
    /// Distinct calls the iterations rotate through.
    pub calls: usize,
    pub iterations: usize,
    /// Mean tokens per call (all pairs, special tokens included, after truncation).
    pub tokens_per_call: f64,
    pub max_seqlen: usize,
    /// Pairs cut to the max length, over all distinct calls.
    pub truncated_pairs: usize,
    /// Mean model FLOPs per call (formula in the module docs).
    pub flops_per_call: f64,
    /// Strings in, scores out.
    pub e2e_ms: Stats,
    /// The forward alone on already tokenized inputs (crossrank: packed batch in, logits out,
    /// upload and download included; peers: tensors on the device in, logits on the device).
    pub forward_ms: Stats,
    /// Back-to-back calls on one stream: N / mean end-to-end time.
    pub pairs_per_s: f64,
    pub tokens_per_s: f64,
    /// flops_per_call / forward p50.
    pub tflops: f64,
    /// flops_per_call / end-to-end p50.
    pub e2e_tflops: f64,
    /// tflops / the measured GEMM rate.
    pub mfu: Option<f64>,
    pub split: Split,
    /// split.tokenize / e2e p50.
    pub tokenize_share: Option<f64>,
    /// Image workloads: `cache-cold` (the image-feature cache emptied before every timed call)
    /// or `cache-warm` (the call's images scored just before, by another query). Absent for
    /// text workloads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<String>,
    /// Image workloads: the cache's counters over the timed calls (a peer without a cache:
    /// absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_cache: Option<ImageCache>,
}

impl Run {
    /// A row from its timings (ms) and the pair lengths of each distinct call, `lens[call]`:
    /// mean tokens and FLOPs per call by `cfg`'s formula, the longest pair; nothing truncated,
    /// no cache label, the derived figures left for [`derive`].
    pub fn measured(
        n: usize,
        iterations: usize,
        lens: &[Vec<usize>],
        cfg: &crate::config::ModelConfig,
        (e2e, forward): (&[f64], &[f64]),
        split: Split,
    ) -> Run {
        let mean = |f: &dyn Fn(&[usize]) -> f64| {
            lens.iter().map(|l| f(l)).sum::<f64>() / lens.len().max(1) as f64
        };
        Run {
            n,
            calls: lens.len(),
            iterations,
            tokens_per_call: mean(&|l| l.iter().sum::<usize>() as f64),
            max_seqlen: lens.iter().flatten().copied().max().unwrap_or(0),
            truncated_pairs: 0,
            flops_per_call: mean(&|l| model_forward_flops(l, cfg)),
            e2e_ms: Stats::of(e2e),
            forward_ms: Stats::of(forward),
            pairs_per_s: 0.0,
            tokens_per_s: 0.0,
            tflops: 0.0,
            e2e_tflops: 0.0,
            mfu: None,
            split,
            tokenize_share: None,
            cache: None,
            image_cache: None,
        }
    }

    /// The workload a row measures: the lengths, and for image workloads the cache state
    /// (`images/cache-warm`).
    pub fn workload(&self, lengths: &str) -> String {
        match &self.cache {
            Some(c) => format!("{lengths}/{c}"),
            None => lengths.to_string(),
        }
    }
}

/// The measured dense GEMM rate that MFU is relative to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gemm {
    pub dtype: String,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub tflops: f64,
    pub note: String,
}

/// The model a report is about.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelFacts {
    /// The shape name, or the directory's name for `--model`.
    pub name: String,
    pub architecture: String,
    pub layers: usize,
    pub hidden: usize,
    pub heads: usize,
    pub intermediate: usize,
    pub vocab: usize,
    pub parameters: usize,
}

/// One system (crossrank or a peer) on one model, one length distribution, every N.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub schema: u32,
    /// `crossrank`, or a peer: `st-default`, `st-batch-n`, `hf-sdpa`, `hf-compile`.
    pub system: String,
    pub version: String,
    pub commit: Option<String>,
    pub date: String,
    pub device: String,
    pub dtype: String,
    pub gemm: Option<Gemm>,
    pub model: ModelFacts,
    pub lengths: String,
    pub seed: u64,
    pub runs: Vec<Run>,
    /// Anything a reader must know to interpret the figures.
    pub notes: Vec<String>,
}

impl Report {
    /// Fills the derived figures of every run from its timings.
    pub fn finish_runs(&mut self) {
        let peak = self.gemm.as_ref().map(|g| g.tflops);
        for r in &mut self.runs {
            derive(r, peak);
        }
    }
}

/// Computes a run's throughput, FLOP/s, MFU and tokenize share from its raw figures.
pub fn derive(r: &mut Run, gemm_tflops: Option<f64>) {
    let secs = r.e2e_ms.mean / 1e3;
    if secs > 0.0 {
        r.pairs_per_s = r.n as f64 / secs;
        r.tokens_per_s = r.tokens_per_call / secs;
    }
    if r.forward_ms.p50 > 0.0 {
        r.tflops = r.flops_per_call / (r.forward_ms.p50 / 1e3) / 1e12;
    }
    if r.e2e_ms.p50 > 0.0 {
        r.e2e_tflops = r.flops_per_call / (r.e2e_ms.p50 / 1e3) / 1e12;
    }
    r.mfu = gemm_tflops.filter(|&p| p > 0.0).map(|p| r.tflops / p);
    r.tokenize_share = r
        .split
        .tokenize_ms
        .filter(|_| r.e2e_ms.p50 > 0.0)
        .map(|t| t / r.e2e_ms.p50);
}

/// Reads reports from files that hold one report, a list, or `{"reports": [...]}`.
pub fn read_reports(path: &std::path::Path) -> Result<Vec<Report>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::input(format!("{}: not valid JSON: {e}", path.display())))?;
    let list = match v {
        serde_json::Value::Array(a) => a,
        serde_json::Value::Object(ref m) if m.contains_key("reports") => match &m["reports"] {
            serde_json::Value::Array(a) => a.clone(),
            _ => {
                return Err(Error::input(format!(
                    "{}: `reports` is not a list",
                    path.display()
                )))
            }
        },
        other => vec![other],
    };
    list.into_iter()
        .map(|r| {
            serde_json::from_value::<Report>(r).map_err(|e| {
                Error::input(format!(
                    "{}: not a crossrank bench report: {e}",
                    path.display()
                ))
            })
        })
        .collect()
}

fn ms(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

fn opt_ms(x: Option<f64>) -> String {
    x.map_or_else(|| "-".into(), ms)
}

/// The readable table of one report (what `crossrank bench` prints without --json).
pub fn table(r: &Report) -> String {
    let mut out = format!(
        "{} on {} ({}): {} ({} layers x {}), lengths {}, seed {}\n",
        r.system,
        r.device,
        r.dtype,
        r.model.name,
        r.model.layers,
        r.model.hidden,
        r.lengths,
        r.seed
    );
    if let Some(g) = &r.gemm {
        out += &format!(
            "GEMM {} {}x{}x{}: {:.2} TFLOP/s ({})\n",
            g.dtype, g.m, g.n, g.k, g.tflops, g.note
        );
    }
    if r.runs.iter().any(|x| x.cache.is_some()) {
        out += &image_rows(&r.runs);
    } else {
        out += &text_rows(&r.runs);
    }
    for n in &r.notes {
        out += &format!("note: {n}\n");
    }
    out
}

fn text_rows(runs: &[Run]) -> String {
    let mut out = String::from("    N  tokens  e2e p50  e2e p99  fwd p50  fwd p99   pairs/s  tokens/s  TFLOP/s    MFU  tok%  | tokenize   pack  upload  forward  download (ms)\n");
    for x in runs {
        out += &format!(
            "{:>5} {:>7.0} {:>8} {:>8} {:>8} {:>8} {:>9.0} {:>9.0} {:>8.3} {:>6} {:>5}  | {:>8} {:>6} {:>7} {:>8} {:>9}\n",
            x.n,
            x.tokens_per_call,
            ms(x.e2e_ms.p50),
            ms(x.e2e_ms.p99),
            ms(x.forward_ms.p50),
            ms(x.forward_ms.p99),
            x.pairs_per_s,
            x.tokens_per_s,
            x.tflops,
            mfu(x.mfu),
            x.tokenize_share.map_or_else(|| "-".into(), |m| format!("{:.0}%", 100.0 * m)),
            opt_ms(x.split.tokenize_ms),
            opt_ms(x.split.pack_ms),
            opt_ms(x.split.upload_ms),
            opt_ms(x.split.forward_ms),
            opt_ms(x.split.download_ms),
        );
    }
    out
}

/// Image workloads: one row per (N, cache state), decode + preprocess beside the forward, and
/// the cache's hits and misses over the timed calls.
fn image_rows(runs: &[Run]) -> String {
    let mut out = String::from("    N  cache       e2e p50  e2e p99  prep p50  fwd p50  fwd p99  images/s  TFLOP/s    MFU  | cache hits  misses  evictions\n");
    for x in runs {
        let (hits, misses, evictions) = x.image_cache.map_or_else(
            || ("-".to_string(), "-".to_string(), "-".to_string()),
            |c| {
                (
                    c.hits.to_string(),
                    c.misses.to_string(),
                    c.evictions.to_string(),
                )
            },
        );
        out += &format!(
            "{:>5}  {:<10} {:>8} {:>8} {:>9} {:>8} {:>8} {:>9.1} {:>8.3} {:>6}  | {:>10} {:>7} {:>10}\n",
            x.n,
            x.cache.as_deref().unwrap_or("-"),
            ms(x.e2e_ms.p50),
            ms(x.e2e_ms.p99),
            opt_ms(x.split.preprocess_ms),
            ms(x.forward_ms.p50),
            ms(x.forward_ms.p99),
            x.pairs_per_s,
            x.tflops,
            mfu(x.mfu),
            hits,
            misses,
            evictions,
        );
    }
    out
}

fn mfu(m: Option<f64>) -> String {
    m.map_or_else(|| "-".into(), |m| format!("{:.1}%", 100.0 * m))
}

/// A markdown table comparing systems: one row per (model, lengths, N), crossrank's end-to-end
/// p50 beside each peer's, and peer / crossrank (above 1: crossrank is faster).
pub fn comparison_markdown(reports: &[Report]) -> String {
    let mut peers: Vec<&str> = Vec::new();
    for r in reports {
        if r.system != "crossrank" && !peers.contains(&r.system.as_str()) {
            peers.push(&r.system);
        }
    }
    let mut keys: Vec<(String, String, usize)> = Vec::new();
    for r in reports {
        for x in &r.runs {
            let k = (r.model.name.clone(), x.workload(&r.lengths), x.n);
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
    }
    let find = |system: &str, k: &(String, String, usize)| {
        reports
            .iter()
            .filter(|r| r.system == system && r.model.name == k.0)
            .flat_map(|r| r.runs.iter().map(move |x| (x.workload(&r.lengths), x)))
            .find(|(w, x)| *w == k.1 && x.n == k.2)
            .map(|(_, x)| x)
    };
    let mut out = String::from("| model | lengths | N | crossrank p50 ms | MFU | tokenize |");
    for p in &peers {
        out += &format!(" {p} p50 ms | {p} / crossrank |");
    }
    out += "\n|---|---|---|---|---|---|";
    out += &"---|---|".repeat(peers.len());
    out += "\n";
    for k in &keys {
        let ours = find("crossrank", k);
        out += &format!(
            "| {} | {} | {} | {} | {} | {} |",
            k.0,
            k.1,
            k.2,
            ours.map_or_else(|| "-".into(), |x| ms(x.e2e_ms.p50)),
            ours.and_then(|x| x.mfu)
                .map_or_else(|| "-".into(), |m| format!("{:.1}%", 100.0 * m)),
            ours.and_then(|x| x.tokenize_share)
                .map_or_else(|| "-".into(), |m| format!("{:.0}%", 100.0 * m)),
        );
        for p in &peers {
            let theirs = find(p, k);
            let ratio = match (ours, theirs) {
                (Some(a), Some(b)) if a.e2e_ms.p50 > 0.0 => {
                    format!("{:.2}x", b.e2e_ms.p50 / a.e2e_ms.p50)
                }
                _ => "-".into(),
            };
            out += &format!(
                " {} | {} |",
                theirs.map_or_else(|| "-".into(), |x| ms(x.e2e_ms.p50)),
                ratio
            );
        }
        out += "\n";
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn flop_count_matches_the_stated_formula_by_hand() {
        // One layer, H = 2, I = 4, sequences of 3 and 1 tokens:
        // linear 2·4·(4·4 + 2·2·4) = 256; attention 4·2·(9 + 1) = 80; head 2·2·(4 + 2) = 24.
        assert_eq!(forward_flops(&[3, 1], 1, 2, 4), 256.0 + 80.0 + 24.0);
        // bge-large, one 512-token pair: 2 · 302M non-embedding weights · 512 tokens = 3.09e11,
        // plus attention 24 · 4 · 1024 · 512² = 2.58e10.
        let f = forward_flops(&[512], 24, 1024, 4096);
        assert!((3.34e11..3.36e11).contains(&f), "{f}");
    }

    #[test]
    fn modernbert_flop_count_matches_the_stated_formula_by_hand() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/models/modernbert-cls/config.json"
        );
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        v["hidden_size"] = 2.into();
        v["num_attention_heads"] = 1.into();
        v["intermediate_size"] = 4.into();
        v["num_hidden_layers"] = 2.into();
        v["layer_types"] = serde_json::json!(["full_attention", "sliding_attention"]);
        v["local_attention"] = 2.into();
        let cfg = crate::config::ModelConfig::from_json(&v.to_string()).unwrap();
        // Two layers, H = 2, I = 4, window 1 each side, sequences of 3 and 1 tokens:
        // linear 2·2·4·(4·4 + 3·2·4) = 640; full keys 9 + 1, sliding keys (2 + 3 + 2) + 1, so
        // attention 4·2·(10 + 8) = 144; head 2·2·(4 + 2) = 24.
        assert_eq!(model_forward_flops(&[3, 1], &cfg), 640.0 + 144.0 + 24.0);
        // A BERT config keeps BERT's formula.
        let bert = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/models/bert-f32/config.json"
        );
        let cfg = crate::config::ModelConfig::from_file(std::path::Path::new(bert)).unwrap();
        assert_eq!(
            model_forward_flops(&[5, 2], &cfg),
            forward_flops(
                &[5, 2],
                cfg.num_layers,
                cfg.hidden_size,
                cfg.intermediate_size
            )
        );
    }

    /// Qwen: 1 layer, h 4, 2 query heads and 1 K/V head of 2, I 3, lengths 2 and 1: per token
    /// 4·(4 + 2·2) QKV + 4·4 output + 3·4·3 SwiGLU = 84 multiply-adds, 3 tokens → 504 FLOPs;
    /// causal pairs 3 + 1, 4·4 FLOPs each → 64; the head 2·2·4 = 16.
    #[test]
    fn qwen_flop_count_matches_the_stated_formula_by_hand() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/models/qwen3-reranker-tiny/config.json"
        );
        let text = std::fs::read_to_string(path).unwrap();
        let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
        for (k, x) in [
            ("hidden_size", 4),
            ("num_attention_heads", 2),
            ("num_key_value_heads", 1),
            ("head_dim", 2),
            ("intermediate_size", 3),
            ("num_hidden_layers", 1),
        ] {
            v[k] = serde_json::json!(x);
        }
        v["layer_types"] = serde_json::json!(["full_attention"]);
        let cfg = crate::config::ModelConfig::from_json(&v.to_string()).unwrap();
        assert_eq!(model_forward_flops(&[2, 1], &cfg), 504.0 + 64.0 + 16.0);
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let s: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        let st = Stats::of(&s);
        assert_eq!((st.p50, st.p99, st.min, st.max), (50.0, 99.0, 1.0, 100.0));
        assert_eq!(st.mean, 50.5);
        let st = Stats::of(&[3.0, 1.0, 2.0]);
        assert_eq!((st.p50, st.p99), (2.0, 3.0));
        assert_eq!(Stats::of(&[]).samples, 0);
    }

    pub(crate) fn report(
        system: &str,
        model: &str,
        lengths: &str,
        runs: &[(usize, f64)],
    ) -> Report {
        Report {
            schema: SCHEMA,
            system: system.into(),
            version: "0".into(),
            commit: None,
            date: "2025-01-01".into(),
            device: "test".into(),
            dtype: "f16".into(),
            gemm: Some(Gemm {
                dtype: "f16".into(),
                m: 1,
                n: 1,
                k: 1,
                tflops: 100.0,
                note: String::new(),
            }),
            model: ModelFacts {
                name: model.into(),
                architecture: "x".into(),
                layers: 1,
                hidden: 1,
                heads: 1,
                intermediate: 1,
                vocab: 1,
                parameters: 1,
            },
            lengths: lengths.into(),
            seed: 1,
            runs: runs
                .iter()
                .map(|&(n, p50)| {
                    let st = Stats {
                        p50,
                        p99: p50 * 1.1,
                        mean: p50,
                        min: p50,
                        max: p50 * 1.2,
                        samples: 10,
                    };
                    let mut r = Run {
                        n,
                        calls: 1,
                        iterations: 10,
                        tokens_per_call: 1000.0,
                        max_seqlen: 100,
                        truncated_pairs: 0,
                        flops_per_call: 1e12,
                        e2e_ms: st,
                        forward_ms: st,
                        pairs_per_s: 0.0,
                        tokens_per_s: 0.0,
                        tflops: 0.0,
                        e2e_tflops: 0.0,
                        mfu: None,
                        split: Split {
                            tokenize_ms: Some(p50 / 10.0),
                            ..Default::default()
                        },
                        tokenize_share: None,
                        cache: None,
                        image_cache: None,
                    };
                    derive(&mut r, Some(100.0));
                    r
                })
                .collect(),
            notes: vec![],
        }
    }

    #[test]
    fn derived_figures_and_the_comparison_table() {
        let ours = report("crossrank", "minilm-l6", "marco", &[(40, 2.0), (80, 4.0)]);
        let x = &ours.runs[0];
        // 1e12 FLOPs in 2 ms = 500 TFLOP/s = 5x the 100 TFLOP/s GEMM; 40 pairs in 2 ms.
        assert!((x.tflops - 500.0).abs() < 1e-9 && (x.mfu.unwrap() - 5.0).abs() < 1e-12);
        assert!((x.pairs_per_s - 20_000.0).abs() < 1e-6);
        assert!((x.tokenize_share.unwrap() - 0.1).abs() < 1e-12);
        let peer = report("hf-sdpa", "minilm-l6", "marco", &[(40, 6.0)]);
        let md = comparison_markdown(&[ours.clone(), peer]);
        let rows: Vec<&str> = md.lines().collect();
        assert_eq!(rows.len(), 4, "{md}");
        assert!(
            rows[0].contains("hf-sdpa p50 ms | hf-sdpa / crossrank"),
            "{md}"
        );
        assert!(
            rows[2].starts_with("| minilm-l6 | marco | 40 | 2.00 |")
                && rows[2].ends_with("| 6.00 | 3.00x |"),
            "{md}"
        );
        assert!(
            rows[3].ends_with("| - | - |"),
            "N=80 has no peer figure: {md}"
        );
        let t = table(&ours);
        assert!(t.contains("500.000") && t.contains("500.0%"), "{t}");
    }

    #[test]
    fn reports_read_from_any_container() {
        let dir = std::env::temp_dir().join(format!("crossrank-reports-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let r = report("crossrank", "m", "rag", &[(40, 1.0)]);
        let one = dir.join("one.json");
        std::fs::write(&one, serde_json::to_string(&r).unwrap()).unwrap();
        let wrapped = dir.join("wrapped.json");
        std::fs::write(
            &wrapped,
            serde_json::json!({"gpu": "x", "reports": [r, r]}).to_string(),
        )
        .unwrap();
        assert_eq!(read_reports(&one).unwrap().len(), 1);
        assert_eq!(read_reports(&wrapped).unwrap().len(), 2);
        let bad = dir.join("bad.json");
        std::fs::write(&bad, "{\"system\": 1}").unwrap();
        let e = read_reports(&bad).unwrap_err().to_string();
        assert!(
            e.contains("bad.json") && e.contains("not a crossrank bench report"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
