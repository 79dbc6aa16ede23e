//! CPU benches (criterion, always run): tokenization of one call, packing, and the f32 reference
//! forward of a tiny shape. Inputs rotate through 4 distinct calls; forwards are timed with
//! `iter_custom`, and the forward bench's throughput is in FLOPs (criterion prints "elem/s":
//! read FLOP/s), from the FLOP count in src/bench/report.rs.
//!
//! `cargo bench --bench cpu` (about a minute on 2 cores). The tokenization benches use the real
//! all-MiniLM-L6-v2 BERT tokenizer when scripts/fetch-minilm.sh has fetched it, else the
//! committed test tokenizer (and say so), and the synthetic XLM-R Unigram tokenizer. The
//! `wordpiece-only` and `unigram-only` lines time the exact fast path (src/wordpiece.rs,
//! src/unigram.rs) alone on the passages; the `bert-wordpiece` and `xlmr-unigram` lines time a
//! whole `encode_group` (which takes the fast path where it applies).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion, Throughput,
};
use crossrank::backend::cpu::CpuBackend;
use crossrank::batch::PackedBatch;
use crossrank::bench::report::mean_batch_flops;
use crossrank::bench::run::{encode_workload, token_count, CallEncoder};
use crossrank::bench::shapes::{ensure_shape, Shape, DEFAULT_BERT_TOKENIZER, DEFAULT_SEED};
use crossrank::bench::workload::{Call, Lengths, Workload};
use crossrank::engine;
use crossrank::model::{Model, Scorer};
use crossrank::weights;
use rayon::prelude::*;

const CALLS: usize = 4;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

/// The BERT tokenizer the tiny-bert shape uses: the real one if fetched.
fn bert_tokenizer() -> PathBuf {
    let real = root().join(DEFAULT_BERT_TOKENIZER);
    if real.exists() {
        return real;
    }
    println!(
        "note: {} is absent (scripts/fetch-minilm.sh): BERT tokenization uses the 1143-token test tokenizer",
        real.display()
    );
    root().join("tests/data/models/bert-f32/tokenizer.json")
}

/// A shape directory under target/, written once.
fn shape_dir(shape: Shape) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("bench-shapes")
        .join(shape.name());
    match ensure_shape(shape, &dir, Some(&bert_tokenizer()), DEFAULT_SEED) {
        Ok(d) => d,
        Err(e) => panic!("cannot write shape {}: {e}", shape.name()),
    }
}

struct Prepared {
    cfg: crossrank::config::ModelConfig,
    tokenizer: crossrank::tokenize::PairTokenizer,
    workload: Workload,
    pairs: Vec<Vec<crossrank::tokenize::EncodedPair>>,
    batches: Vec<PackedBatch>,
    dir: PathBuf,
    max_length: usize,
}

fn prepare(shape: Shape, lengths: Lengths, n: usize) -> Prepared {
    let dir = shape_dir(shape);
    let (cfg, tokenizer, _, _) = engine::inspect(&dir).unwrap();
    let max_length = tokenizer.default_max_length();
    let workload = Workload::generate(DEFAULT_SEED, lengths, &[n], CALLS, &|t| {
        token_count(&tokenizer, t)
    })
    .unwrap();
    let mut sets = encode_workload(CallEncoder::Pairs(&tokenizer), &workload, max_length).unwrap();
    let pairs = sets.remove(0);
    let batches = pairs.iter().map(|p| PackedBatch::pack(p, &cfg)).collect();
    Prepared {
        cfg,
        tokenizer,
        workload,
        pairs,
        batches,
        dir,
        max_length,
    }
}

fn tokenize(c: &mut Criterion) {
    let mut g = c.benchmark_group("tokenize");
    g.measurement_time(Duration::from_secs(3));
    for (shape, tag) in [
        (Shape::TinyBert, "bert-wordpiece"),
        (Shape::TinyXlmr, "xlmr-unigram"),
    ] {
        for lengths in [Lengths::Marco, Lengths::Rag] {
            let p = prepare(shape, lengths, 100);
            let tokens: usize = p.pairs.iter().flatten().map(|x| x.ids.len()).sum();
            g.throughput(Throughput::Elements((tokens / CALLS) as u64));
            let calls = &p.workload.sets[0].calls;
            let id = |name: &str| BenchmarkId::new(name, format!("{lengths}/100"));
            if let Some(fast) = crossrank::wordpiece::FastWordPiece::new(p.tokenizer.inner()) {
                fast_only(&mut g, id("wordpiece-only"), calls, &|t| fast.encode(t));
            }
            if let Some(fast) = crossrank::unigram::FastUnigram::new(p.tokenizer.inner()) {
                fast_only(&mut g, id("unigram-only"), calls, &|t| fast.encode(t));
            }
            g.bench_function(id(tag), |b| {
                let mut i = 0;
                b.iter(|| {
                    let call = &calls[i % CALLS];
                    i += 1;
                    p.tokenizer
                        .encode_group(&call.query, &call.passages, p.max_length)
                        .unwrap()
                })
            });
        }
    }
    g.finish();
}

/// A fast tokenizer path alone on the passages of each call (in parallel, as encode_group runs
/// them): no query, no pairing, no truncation.
fn fast_only(
    g: &mut BenchmarkGroup<'_, WallTime>,
    id: BenchmarkId,
    calls: &[Call],
    encode: &(dyn Fn(&str) -> Option<Vec<u32>> + Sync),
) {
    g.bench_function(id, |b| {
        let mut i = 0;
        b.iter(|| {
            let call = &calls[i % CALLS];
            i += 1;
            call.passages
                .par_iter()
                .map(|t| encode(t).expect("bench texts hold no added token").len())
                .sum::<usize>()
        })
    });
}

fn pack(c: &mut Criterion) {
    let mut g = c.benchmark_group("pack");
    g.measurement_time(Duration::from_secs(2));
    let p = prepare(Shape::TinyXlmr, Lengths::Rag, 100);
    let tokens: usize = p.pairs.iter().flatten().map(|x| x.ids.len()).sum();
    g.throughput(Throughput::Elements((tokens / CALLS) as u64));
    g.bench_function("xlmr/rag/100", |b| {
        let mut i = 0;
        b.iter(|| {
            i += 1;
            PackedBatch::pack(&p.pairs[i % CALLS], &p.cfg)
        })
    });
    g.finish();
}

fn forward(c: &mut Criterion) {
    let mut g = c.benchmark_group("cpu-forward");
    g.sample_size(10).measurement_time(Duration::from_secs(4));
    let n = 16;
    let p = prepare(Shape::TinyBert, Lengths::Marco, n);
    let (_, _, _, ckpt) = engine::inspect(&p.dir).unwrap();
    let host = weights::load(&ckpt, &p.cfg).unwrap();
    let max_tokens = p.batches.iter().map(|b| b.tokens()).max().unwrap_or(1);
    let model = Model::new(CpuBackend, p.cfg.clone(), host, max_tokens).unwrap();
    let cfg = &p.cfg;
    let flops = mean_batch_flops(&p.batches, cfg);
    println!(
        "cpu-forward: {} layers x {} hidden, {n} marco pairs, {:.0} tokens and {:.3} GFLOP per call; throughput below is FLOP/s",
        cfg.num_layers,
        cfg.hidden_size,
        p.batches.iter().map(|b| b.tokens()).sum::<usize>() as f64 / CALLS as f64,
        flops / 1e9
    );
    g.throughput(Throughput::Elements(flops as u64));
    g.bench_function(format!("tiny-bert/marco/{n}"), |b| {
        b.iter_custom(|iters| {
            let t0 = Instant::now();
            for i in 0..iters as usize {
                std::hint::black_box(model.score(&p.batches[i % CALLS]).unwrap());
            }
            t0.elapsed()
        })
    });
    g.finish();
}

criterion_group!(benches, tokenize, pack, forward);
criterion_main!(benches);
