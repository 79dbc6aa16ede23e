//! The bench driver for image-text models (BLIP ITM): the seeded image workload
//! (src/bench/images.rs) through the engine, as `rerank` and `serve` run image documents.
//!
//! A call is one query and N encoded images: `Reranker::pixel_values` (decode and preprocess on
//! the host, timed as `preprocess`), then `Reranker::rerank_pixels` (the query's tokens, the
//! forwards, the sort: timed as `forward`); end to end is their sum. Each N gives two rows:
//!
//! - `cache-cold`: the image-feature cache is emptied (`Reranker::clear_image_cache`) before
//!   every call, warm-up included, so that every image runs the vision tower;
//! - `cache-warm`: every timed call is the call's `repeat_query` over images that its `query`
//!   scored just before (untimed): the fan-out case of several sub-queries over the same
//!   candidates.
//!
//! Each row reports the cache's hits, misses and evictions over its timed calls
//! (`Reranker::image_cache_stats`, before and after each). After the rows, one cold call of the
//! first call's `repeat_query` checks that the warm rows' logits are the cold ones.
//!
//! Iterations rotate through `calls` distinct calls; FLOPs are the full forward's (every image
//! through the vision tower), in both rows: a cache hit skips work and raises the achieved figure.

use std::time::Instant;

use super::images::{ImageCall, ImageWorkload, LENGTHS};
use super::report::{Gemm, ImageCache, Report, Run, Split, Stats};
use super::run::{measure_gemm, report_of, token_count, BenchArgs, Measured};
use crate::backend::cpu::CpuBackend;
use crate::config::ModelConfig;
use crate::engine::{Device, LoadOptions, ModelInfo, Options, Reranker};
use crate::error::{Error, Result};
use crate::models::blip::CacheStats;
use crate::pixels::ImageLimits;
use crate::tokenize::PairTokenizer;

/// The row labels.
pub const COLD: &str = "cache-cold";
pub const WARM: &str = "cache-warm";

/// Runs the image bench on an image-text model and returns its report.
pub fn run(
    args: &BenchArgs,
    cfg: &ModelConfig,
    tokenizer: &PairTokenizer,
    info: &ModelInfo,
) -> Result<Report> {
    let mut notes = Vec::new();
    let (dtype, gemm) = device_gemm(args, &mut notes)?;
    let count = |text: &str| token_count(tokenizer, text);
    let workload = ImageWorkload::generate(args.seed, &args.candidates, args.calls, &count)?;
    if let Some(path) = &args.export_workload {
        workload.export(path)?;
    }
    let load = LoadOptions {
        cuda: args.cuda,
        image_cache_mib: args.image_cache_mib,
        ..LoadOptions::default()
    };
    let reranker = Reranker::load(&args.model_dir, args.device, &load)?;
    let max_length = tokenizer.resolve_max_length(args.max_length)?;
    let bench = ImageBench {
        args,
        cfg,
        reranker: &reranker,
        workload: &workload,
        max_length,
        limits: ImageLimits::default(),
    };
    let mut runs = Vec::with_capacity(2 * workload.sets.len());
    let mut worst = 0f32;
    for set in &workload.sets {
        let (cold, _) = bench.row(set.n, &set.calls, false)?;
        let (warm, warm_first) = bench.row(set.n, &set.calls, true)?;
        runs.push(cold);
        runs.push(warm);
        // The warm row's first timed call again, cold.
        if let Some((j, logits)) = warm_first {
            let call = &set.calls[j];
            reranker.clear_image_cache();
            let (again, _) = bench.call(call, &call.repeat_query)?;
            worst = worst.max(max_diff(&again, &logits)?);
        }
    }
    notes.push(format!(
        "{WARM} logits against the same calls run cold: max |diff| {worst:.3e}"
    ));
    notes.push(format!(
        "rows: {COLD} empties the image-feature cache before every call; {WARM} times each \
         call's second query over the images its first query scored just before (untimed); \
         cache budget {} MiB",
        args.image_cache_mib
    ));
    notes.push(
        "images: synthetic JPEG (3 in 4, quality 85) and PNG, 333x500 to 1024x768, every fifth \
         grayscale; preprocess = decode + convert + resize + normalize on the host, one thread; \
         forward = the query's tokens, the forwards and the sort"
            .into(),
    );
    notes.push(
        "tokens are the text tower's (the query once per pair); FLOPs are the full forward's, \
         every image through the vision tower, in both rows"
            .into(),
    );
    if dtype == "f32" {
        notes.push(
            "CPU: the f32 reference backend; MFU is against the measured f32 GEMM rate of this CPU"
                .into(),
        );
    }
    let measured = Measured {
        device: reranker.device_name(),
        dtype,
        gemm,
        lengths: LENGTHS.into(),
        runs,
    };
    Ok(report_of(args, info, tokenizer, measured, notes))
}

/// The storage dtype on the device and its dense GEMM rate (None with --no-gemm, or with a
/// note when it could not be measured). A software GPU is refused: it has no speed.
fn device_gemm(args: &BenchArgs, notes: &mut Vec<String>) -> Result<(&'static str, Option<Gemm>)> {
    let measured = match args.device {
        Device::Cpu => ("f32", args.gemm.then(|| measure_gemm(&CpuBackend, "f32"))),
        Device::Cuda(ordinal) => cuda_gemm(ordinal, args.gemm)?,
    };
    let gemm = match measured {
        (_, None) => None,
        (_, Some(Ok(g))) => Some(g),
        (_, Some(Err(e))) => {
            notes.push(format!("GEMM rate not measured: {e}"));
            None
        }
    };
    Ok((measured.0, gemm))
}

#[cfg(feature = "cuda")]
fn cuda_gemm(ordinal: usize, gemm: bool) -> Result<(&'static str, Option<Result<Gemm>>)> {
    use crate::backend::Backend;
    let backend = crate::backend::cuda::CudaBackend::<half::f16>::open(ordinal)?;
    if backend.is_software() {
        return Err(Error::input(format!(
            "{}: benchmarks need a real GPU; the software GPU is a CPU emulation for tests and has no speed to measure",
            backend.device_name()
        )));
    }
    Ok(("f16", gemm.then(|| measure_gemm(&backend, "f16"))))
}

#[cfg(not(feature = "cuda"))]
fn cuda_gemm(_: usize, _: bool) -> Result<(&'static str, Option<Result<Gemm>>)> {
    Err(Error::CudaNotCompiled)
}

/// The largest difference between two calls' logits (in input order).
fn max_diff(a: &[f32], b: &[f32]) -> Result<f32> {
    if a.len() != b.len() {
        return Err(Error::Internal(format!(
            "a call scored {} images, then {}",
            a.len(),
            b.len()
        )));
    }
    Ok(a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max))
}

/// A row's first timed call: its index among the calls, and its logits.
type FirstCall = Option<(usize, Vec<f32>)>;

struct ImageBench<'a> {
    args: &'a BenchArgs,
    cfg: &'a ModelConfig,
    reranker: &'a Reranker,
    workload: &'a ImageWorkload,
    max_length: usize,
    limits: ImageLimits,
}

/// What one timed call measured, in milliseconds.
struct Timing {
    preprocess: f64,
    forward: f64,
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn delta(before: CacheStats, after: CacheStats, sum: &mut ImageCache) {
    sum.hits += after.hits.saturating_sub(before.hits);
    sum.misses += after.misses.saturating_sub(before.misses);
    sum.evictions += after.evictions.saturating_sub(before.evictions);
    sum.entries = after.entries;
    sum.bytes = after.bytes;
    sum.capacity_bytes = after.capacity_bytes;
}

impl ImageBench<'_> {
    /// One call of `query` over `call`'s images: the logits in input order, and the timing.
    fn call(&self, call: &ImageCall, query: &str) -> Result<(Vec<f32>, Timing)> {
        let bytes = self.workload.call_bytes(call)?;
        let t0 = Instant::now();
        let pixels = self.reranker.pixel_values(&bytes, &self.limits)?;
        let t1 = Instant::now();
        let refs: Vec<&[f32]> = pixels.iter().map(Vec::as_slice).collect();
        let opts = Options {
            raw_scores: true,
            max_length: Some(self.max_length),
            ..Options::default()
        };
        let ranked = self.reranker.rerank_pixels(query, &refs, &opts)?;
        let t2 = Instant::now();
        let mut logits = vec![f32::NAN; refs.len()];
        for r in &ranked {
            if let Some(slot) = logits.get_mut(r.index) {
                *slot = r.score;
            }
        }
        let timing = Timing {
            preprocess: ms(t1 - t0),
            forward: ms(t2 - t1),
        };
        Ok((logits, timing))
    }

    /// One row: every timed call of N, cold or warm. Also returns the first timed call's index
    /// and logits.
    fn row(&self, n: usize, calls: &[ImageCall], warm: bool) -> Result<(Run, FirstCall)> {
        let a = self.args;
        let k = calls.len();
        let (mut e2e, mut prep, mut fwd) = (Vec::new(), Vec::new(), Vec::new());
        let mut cache = ImageCache::default();
        let mut first = None;
        let mut non_finite = 0;
        for i in 0..a.warmup + a.iterations {
            let c = &calls[i % k];
            let query = if warm {
                // The first sub-query fills the cache with the call's images.
                self.call(c, &c.query)?;
                &c.repeat_query
            } else {
                self.reranker.clear_image_cache();
                &c.query
            };
            let before = self.reranker.image_cache_stats().unwrap_or_default();
            let (logits, t) = self.call(c, query)?;
            let after = self.reranker.image_cache_stats().unwrap_or_default();
            if i < a.warmup {
                continue;
            }
            delta(before, after, &mut cache);
            e2e.push(t.preprocess + t.forward);
            prep.push(t.preprocess);
            fwd.push(t.forward);
            non_finite += logits.iter().filter(|x| !x.is_finite()).count();
            if first.is_none() {
                first = Some((i % k, logits));
            }
        }
        if non_finite > 0 {
            return Err(Error::Internal(format!(
                "{non_finite} logits were not finite at N={n}"
            )));
        }
        // Every pair of a call carries its query's tokens.
        let (mut lens, mut truncated) = (Vec::with_capacity(k), 0);
        for c in calls {
            let q = if warm { &c.repeat_query } else { &c.query };
            let pair = self
                .reranker
                .tokenizer()
                .encode_single(q, self.max_length)?;
            lens.push(vec![pair.ids.len(); c.images.len()]);
            truncated += if pair.truncated { c.images.len() } else { 0 };
        }
        let median = |xs: &[f64]| (!xs.is_empty()).then(|| Stats::of(xs).p50);
        let split = Split {
            preprocess_ms: median(&prep),
            forward_ms: median(&fwd),
            ..Split::default()
        };
        let run = Run {
            truncated_pairs: truncated,
            cache: Some(if warm { WARM } else { COLD }.into()),
            image_cache: Some(cache),
            ..Run::measured(n, a.iterations, &lens, self.cfg, (&e2e, &fwd), split)
        };
        Ok((run, first))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::images::ImageWorkload;
    use crate::bench::report;
    use crate::bench::run::{model_name, run as bench_run};
    use crate::bench::workload::Lengths;
    use std::path::Path;

    /// The committed tiny BLIP model through `crossrank bench`'s library entry: a cold and a warm
    /// row per N with every figure, the cache's counters consistent with the rows' meaning, the
    /// exported workload's images on disk, and the bench's scores equal to `rerank_images`'.
    #[test]
    fn image_bench_reports_cold_and_warm_rows_and_scores_like_rerank() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/models/blip-itm-tiny");
        let tmp = std::env::temp_dir().join(format!("crossrank-imgbench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).unwrap();
        let export = tmp.join("w.json");
        let args = BenchArgs {
            model_dir: dir.clone(),
            model_name: model_name(&dir),
            device: Device::Cpu,
            candidates: vec![2, 3],
            lengths: Lengths::Marco,
            calls: 2,
            iterations: 2,
            warmup: 1,
            seed: 7,
            max_length: None,
            gemm: false,
            cuda: Default::default(),
            export_workload: Some(export.clone()),
            image_cache_mib: 64,
        };
        let r = bench_run(&args).unwrap();
        assert_eq!(
            (r.lengths.as_str(), r.model.architecture.as_str()),
            ("images", "BlipForImageTextRetrieval")
        );
        let rows: Vec<(usize, &str)> = r
            .runs
            .iter()
            .map(|x| (x.n, x.cache.as_deref().unwrap()))
            .collect();
        assert_eq!(rows, vec![(2, COLD), (2, WARM), (3, COLD), (3, WARM)]);
        for x in &r.runs {
            assert_eq!((x.e2e_ms.samples, x.forward_ms.samples), (2, 2));
            let prep = x.split.preprocess_ms.unwrap();
            assert!(prep > 0.0 && x.split.forward_ms.unwrap() > 0.0);
            assert!(x.e2e_ms.min >= x.forward_ms.min, "e2e includes the forward");
            assert!(x.pairs_per_s > 0.0 && x.tflops > 0.0 && x.mfu.is_none());
            assert!(
                x.tokens_per_call >= (3 * x.n) as f64,
                "[CLS] query [SEP] per pair"
            );
            let c = x.image_cache.unwrap();
            // Counted only once the cache exists: cold calls miss every image, warm ones hit.
            if c.hits + c.misses > 0 {
                let images = (x.n * x.iterations) as u64;
                let want = if x.cache.as_deref() == Some(COLD) {
                    (0, images)
                } else {
                    (images, 0)
                };
                assert_eq!((c.hits, c.misses), want, "N={} {:?}", x.n, x.cache);
            }
        }
        let note = r.notes.iter().find(|n| n.starts_with(WARM)).unwrap();
        let diff: f32 = note.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(diff <= 1e-5, "{note}");
        let table = report::table(&r);
        let labels: Vec<&str> = table
            .lines()
            .filter(|l| !l.starts_with("note:"))
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter(|w| w.starts_with("cache-"))
            .collect();
        assert!(table.contains("cache hits"), "{table}");
        assert_eq!(labels, vec![COLD, WARM, COLD, WARM], "{table}");
        let json = serde_json::to_value(&r).unwrap();
        assert!(json["runs"][1]["image_cache"]["hits"].is_u64(), "{json}");
        assert!(json["runs"][0]["split"]["preprocess_ms"].is_f64(), "{json}");

        // The export: the JSON and every image beside it; the bench's scores are rerank's.
        let w: ImageWorkload =
            serde_json::from_str(&std::fs::read_to_string(&export).unwrap()).unwrap();
        assert_eq!(
            (w.kind.as_str(), w.image_dir.as_str()),
            ("images", "w.images")
        );
        assert_eq!(w.images.len(), 6);
        let call = &w.sets[1].calls[0];
        let bytes: Vec<Vec<u8>> = call
            .images
            .iter()
            .map(|&i| std::fs::read(tmp.join("w.images").join(&w.images[i].file)).unwrap())
            .collect();
        let refs: Vec<&[u8]> = bytes.iter().map(Vec::as_slice).collect();
        let reranker = Reranker::load(&dir, Device::Cpu, &LoadOptions::default()).unwrap();
        let opts = Options {
            raw_scores: true,
            ..Options::default()
        };
        let expected = reranker
            .rerank_images(&call.query, &refs, &ImageLimits::default(), &opts)
            .unwrap();
        let regenerated = ImageWorkload::generate(7, &[2, 3], 2, &|t: &str| {
            token_count(reranker.tokenizer(), t)
        })
        .unwrap();
        assert_eq!(regenerated.sets, w.sets);
        let (cfg, tokenizer, _, _) = crate::engine::inspect(&dir).unwrap();
        let bench = ImageBench {
            args: &args,
            cfg: &cfg,
            reranker: &reranker,
            workload: &regenerated,
            max_length: tokenizer.resolve_max_length(None).unwrap(),
            limits: ImageLimits::default(),
        };
        let (logits, _) = bench.call(call, &call.query).unwrap();
        for e in &expected {
            assert_eq!(logits[e.index], e.score);
        }
        let _ = std::fs::remove_dir_all(&tmp);
    }
}
