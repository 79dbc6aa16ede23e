//! GEMM tuning at load: cuBLASLt's heuristic ranks its algorithms by a model of the GPU, and its
//! first choice is often not the fastest for the skinny and ragged shapes a reranker runs. So
//! once, at load, every GEMM key a forward can look up is tuned (gemm.rs `Gemm::tune`): the
//! heuristic's first `CANDIDATES` candidates timed on the device, the fastest cached.
//!
//! The keys: the four linears of a layer, qkv [h → 3h], attn_out [h → h], ffn_in [h → I] and
//! ffn_out [I → h], at every row bucket from 64 to bucket(max_tokens). The last layer runs the
//! last three on the [CLS] rows only (one per sequence, at most max_tokens), which fall in the
//! same buckets, so the same keys cover them.
//!
//! Bound: at most CANDIDATES × (1 + REPS) GEMM runs per key, 4 keys per bucket.
//! Estimate for bge-large (h 1024, I 4096) at max_tokens 16384 on an H100 SXM:
//! - keys: 9 buckets (64 … 16384) × 4 = 36; runs ≤ 36 × 8 × 6 = 1728.
//! - FLOP: one row of the four linears is 2·1024·(3072 + 1024 + 4096 + 4096) = 25.2 MFLOP; the
//!   buckets sum to 32704 rows, so one run of every key is 8.2e11 FLOP and all runs ≤ 48 × that
//!   = 3.9e13 FLOP: 0.1 s at 400 TFLOP/s, 0.26 s at 150 TFLOP/s (the weaker candidates).
//! - Small buckets are bound by launches and weight reads (≤ 10 µs a run): 1728 runs ≤ 20 ms;
//!   36 heuristic queries and 288 event waits: about 10 ms.
//! - Scratch: x and out 16384 × 4096 fp16 (128 MiB each) and a 100 MiB weight region (twice
//!   the 50 MiB L2), 356 MiB of device memory while tuning runs; x and the weights, 228 MiB,
//!   uploaded from pageable memory: about 25 ms.
//!
//! So about 0.15 to 0.35 s, once per load; `GemmTuning::seconds` reports the measured time.

use std::collections::BTreeSet;
use std::time::Instant;

use serde::Serialize;

use super::gemm::{Key, KeyTiming, MIN_BUCKET};
use super::CudaBackend;
use crate::config::ModelConfig;
use crate::error::{Error, Result};

/// Candidates timed per key: the heuristic's ranking is good enough that the winner is
/// rarely further down, and each one costs a run of every shape.
const CANDIDATES: usize = 8;
/// Timed runs per candidate, after one warm-up; their mean is the candidate's time.
const REPS: usize = 5;

/// What tuning did, to print at load and to keep beside benchmark figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GemmTuning {
    /// Cache keys (row bucket, out, in) tuned.
    pub shapes: usize,
    /// Keys none of whose candidates ran: left to the forward's heuristic.
    pub untuned: usize,
    pub candidates_timed: usize,
    /// Candidates offered but not timed: unusable, too much workspace, or refused.
    pub candidates_skipped: usize,
    /// Keys where a candidate other than the heuristic's choice was faster.
    pub changed: usize,
    /// Wall-clock time of the whole tuning, scratch included.
    pub seconds: f64,
    /// One run of every tuned key, summed: with the heuristic's choices, and with the winners.
    pub heuristic_ms: f64,
    pub chosen_ms: f64,
    pub per_key: Vec<KeyTiming>,
}

impl GemmTuning {
    fn summarise(per_key: Vec<KeyTiming>, seconds: f64) -> Self {
        let tuned = || per_key.iter().filter(|k| k.chosen.is_some());
        let timed: usize = per_key.iter().map(|k| k.timed).sum();
        let offered: usize = per_key.iter().map(|k| k.offered).sum();
        GemmTuning {
            shapes: per_key.len(),
            untuned: per_key.len() - tuned().count(),
            candidates_timed: timed,
            candidates_skipped: offered - timed,
            changed: tuned().filter(|k| k.chosen_ms < k.first_ms).count(),
            seconds,
            heuristic_ms: tuned().map(|k| k.first_ms).sum(),
            chosen_ms: tuned().map(|k| k.chosen_ms).sum(),
            per_key,
        }
    }

    /// The GEMM speed-up tuning predicts, weighting every key once; a workload weights them
    /// by how often its batches land in each bucket. 1 when nothing was timed.
    pub fn predicted_speedup(&self) -> f64 {
        if self.chosen_ms > 0.0 {
            self.heuristic_ms / self.chosen_ms
        } else {
            1.0
        }
    }
}

impl std::fmt::Display for GemmTuning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "GEMM tuning: {} shapes ({} untuned), {} candidates timed, {} skipped, in {:.2} s; \
             {} beat the heuristic; one run of each: {:.3} -> {:.3} ms ({:.2}x predicted)",
            self.shapes,
            self.untuned,
            self.candidates_timed,
            self.candidates_skipped,
            self.seconds,
            self.changed,
            self.heuristic_ms,
            self.chosen_ms,
            self.predicted_speedup()
        )
    }
}

/// Every key a forward over at most `max_tokens` tokens looks up, in (bucket, out, in) order,
/// each once (two linears can share a shape, e.g. when I = 3h): `shapes` are the (out, in) of
/// the layer's linears (`ModelConfig::linear_shapes`).
fn gemm_keys(shapes: &[(usize, usize)], max_tokens: usize) -> Result<Vec<Key>> {
    let top = max_tokens
        .max(MIN_BUCKET)
        .checked_next_power_of_two()
        .ok_or_else(|| {
            Error::input(format!(
                "max batch tokens {max_tokens} is beyond any GEMM row bucket"
            ))
        })?;
    let mut keys = BTreeSet::new();
    let mut rows = MIN_BUCKET;
    loop {
        keys.extend(shapes.iter().map(|&(o, i)| (rows, o, i)));
        if rows >= top {
            break;
        }
        rows *= 2;
    }
    Ok(keys.into_iter().collect())
}

impl<S: super::Storage> CudaBackend<S> {
    /// Tunes every GEMM a forward of up to `max_tokens` tokens runs (see the module comment),
    /// replacing the heuristic's choices in the algorithm cache. Call it once after load and
    /// before the first forward, and before capturing a CUDA graph, which keeps the algorithm
    /// it was captured with. A candidate that fails is skipped, never an error; the scratch
    /// buffers are freed before it returns.
    pub fn tune_gemm(&self, cfg: &ModelConfig, max_tokens: usize) -> Result<GemmTuning> {
        let started = Instant::now();
        let keys = gemm_keys(&cfg.linear_shapes(), max_tokens)?;
        let per_key = self.gemm.tune(&keys, CANDIDATES, REPS)?;
        Ok(GemmTuning::summarise(
            per_key,
            started.elapsed().as_secs_f64(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cuda::gemm::bucket;

    /// A BERT-style layer's shapes: hidden h, FFN in width, intermediate.
    fn bert(h: usize, ffn_in: usize, i: usize) -> [(usize, usize); 4] {
        [(3 * h, h), (h, h), (ffn_in, h), (h, i)]
    }

    /// A Qwen layer's: the fused QKV is (heads + 2·kv_heads)·head_dim wide (4 + 2·2 heads of 16
    /// in the test model: 128, not BERT's 3·64) and the attention's output reads heads·head_dim.
    #[test]
    fn keys_of_a_decoder_llm_follow_its_heads() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let path = dir.join("tests/data/models/qwen3-reranker-tiny/config.json");
        let cfg = ModelConfig::from_file(&path).unwrap();
        let (h, d, i) = (cfg.hidden_size, cfg.head_dim, cfg.intermediate_size);
        let (heads, kv) = (cfg.num_heads, cfg.qwen.as_ref().unwrap().num_kv_heads);
        assert!(kv < heads, "the test model is grouped-query");
        let keys = gemm_keys(&cfg.linear_shapes(), 64).unwrap();
        assert_eq!(
            keys,
            vec![
                (64, (heads + 2 * kv) * d, h),
                (64, h, heads * d),
                (64, h, i),
                (64, 2 * i, h)
            ]
            .into_iter()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>()
        );
    }

    #[test]
    fn keys_cover_every_bucket_and_linear_once() {
        let keys = gemm_keys(&bert(1024, 4096, 4096), 16384).unwrap();
        assert_eq!(keys.len(), 36);
        let buckets: BTreeSet<usize> = keys.iter().map(|k| k.0).collect();
        assert_eq!(
            buckets.into_iter().collect::<Vec<_>>(),
            [64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384]
        );
        for key in [
            (64, 3072, 1024),
            (64, 1024, 1024),
            (64, 4096, 1024),
            (16384, 1024, 4096),
        ] {
            assert!(keys.contains(&key), "{key:?}");
        }
        // The top bucket is the forward's bucket of max_tokens, whatever max_tokens is.
        for max_tokens in [0, 1, 64, 65, 100, 511, 512, 513, 16383] {
            let keys = gemm_keys(&bert(32, 80, 80), max_tokens).unwrap();
            let top = keys.iter().map(|k| k.0).max();
            assert_eq!(top, Some(bucket(max_tokens)), "{max_tokens}");
            assert_eq!(
                keys.len(),
                4 * (bucket(max_tokens) / 64).ilog2() as usize + 4
            );
        }
        // I = 3h: ffn_in has qkv's shape, one key for both.
        assert_eq!(gemm_keys(&bert(32, 96, 96), 128).unwrap().len(), 2 * 3);
        // I = h: attn_out, ffn_in and ffn_out share one.
        assert_eq!(gemm_keys(&bert(32, 32, 32), 64).unwrap().len(), 2);
        // A gated MLP (ModernBERT): ffn_in is 2·I wide, ffn_out reads I.
        let keys = gemm_keys(&bert(32, 96, 48), 64).unwrap();
        assert!(keys.contains(&(64, 96, 32)) && keys.contains(&(64, 32, 48)));
        assert!(!keys.contains(&(64, 48, 32)));
    }

    #[test]
    fn keys_refuse_a_max_tokens_beyond_any_bucket() {
        let err = gemm_keys(&bert(32, 80, 80), usize::MAX)
            .unwrap_err()
            .to_string();
        assert!(err.contains("beyond any GEMM row bucket"), "{err}");
    }

    fn timing(rows: usize, offered: usize, timed: usize, times: Option<(f64, f64)>) -> KeyTiming {
        KeyTiming {
            rows,
            out_dim: 96,
            in_dim: 32,
            offered,
            timed,
            chosen: times.map(|_| 0),
            first_ms: times.map_or(0.0, |t| t.0),
            chosen_ms: times.map_or(0.0, |t| t.1),
        }
    }

    #[test]
    fn summary_adds_up_the_keys_and_predicts_the_speedup() {
        let t = GemmTuning::summarise(
            vec![
                timing(64, 8, 8, Some((1.0, 0.5))),
                timing(128, 8, 6, Some((2.0, 2.0))),
                timing(256, 3, 0, None),
            ],
            0.25,
        );
        assert_eq!((t.shapes, t.untuned, t.changed), (3, 1, 1));
        assert_eq!((t.candidates_timed, t.candidates_skipped), (14, 5));
        assert_eq!((t.heuristic_ms, t.chosen_ms), (3.0, 2.5));
        assert!((t.predicted_speedup() - 1.2).abs() < 1e-12);
        let line = t.to_string();
        assert!(line.contains("3 shapes (1 untuned)"), "{line}");
        assert!(line.contains("1.20x predicted"), "{line}");
        let json = serde_json::to_value(&t).unwrap();
        assert_eq!(json["per_key"][2]["chosen"], serde_json::Value::Null);

        let nothing = GemmTuning::summarise(Vec::new(), 0.0);
        assert_eq!(nothing.predicted_speedup(), 1.0);
        assert_eq!((nothing.shapes, nothing.heuristic_ms), (0, 0.0));
    }
}
