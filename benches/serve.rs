//! What `--shadow` costs the answers (issue 12): the latency of one rerank request through the
//! server's whole path (parse, route, tokenizer thread, scheduler, forward, render), requests
//! sent one after another, with no shadow, with `--shadow-sample 0.1` and with
//! `--shadow-sample 1.0`. The candidate is the same model as the default one, the costliest
//! candidate of its size: every sampled request costs a second forward of equal size.
//!
//! `cargo bench --bench serve` (about a minute on 2 cores). CPU backend, the `tiny-bert` shape
//! (seeded weights; the real all-MiniLM-L6-v2 tokenizer when scripts/fetch-minilm.sh has fetched
//! it), 40 passages of the `marco` length set per request, 4 distinct requests in rotation.
//!
//! The answer never waits for the candidate (src/serve/shadow.rs): the comparison starts after
//! the answer is rendered, in a task of its own, at most `shadow::IN_FLIGHT` at once. What it
//! can still cost is contention: its tokenizer and forward share the device (here: the same two
//! CPU cores) with the next requests. The stated bound: the mean latency with sample share `s`
//! is at most `(1 + s)` times the mean without (each request's device work grows by at most
//! the share `s` of a request of equal cost), plus 5% for noise. After each configuration the
//! bench prints how many requests the candidate compared and how many it dropped, and the
//! ratio to the run without shadow, with the bound.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use crossrank::bench::run::token_count;
use crossrank::bench::shapes::{ensure_shape, Shape, DEFAULT_BERT_TOKENIZER, DEFAULT_SEED};
use crossrank::bench::workload::{Lengths, Workload};
use crossrank::engine;
use crossrank::serve::api::{parse_body, Route};
use crossrank::serve::models::ModelSpec;
use crossrank::serve::{ServeOptions, Served, Service};
use crossrank::Device;
use serde_json::json;

const CALLS: usize = 4;
const PASSAGES: usize = 40;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

/// The tiny-bert shape under target/, written once.
fn shape_dir() -> PathBuf {
    let real = root().join(DEFAULT_BERT_TOKENIZER);
    let tokenizer = if real.exists() {
        real
    } else {
        println!(
            "note: {} is absent: the 1143-token test tokenizer",
            real.display()
        );
        root().join("tests/data/models/bert-f32/tokenizer.json")
    };
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("bench-shapes")
        .join(Shape::TinyBert.name());
    match ensure_shape(Shape::TinyBert, &dir, Some(&tokenizer), DEFAULT_SEED) {
        Ok(d) => d,
        Err(e) => panic!("cannot write the tiny-bert shape: {e}"),
    }
}

/// The mean latency of `iters` requests sent one after another.
fn mean_of(
    rt: &tokio::runtime::Runtime,
    service: &Arc<Service>,
    bodies: &[Vec<u8>],
    iters: u64,
) -> Duration {
    rt.block_on(async {
        let t0 = Instant::now();
        for i in 0..iters as usize {
            let call = parse_body(Route::Tei, &bodies[i % CALLS], &service.limits)
                .unwrap_or_else(|e| panic!("bench request refused: {}", e.message));
            let mut served = Served::default();
            let answer = service.rerank(call, &mut served).await;
            std::hint::black_box(answer.unwrap_or_else(|e| panic!("{}", e.message)));
        }
        t0.elapsed()
    })
}

fn shadow_latency(c: &mut Criterion) {
    let dir = shape_dir();
    let (_, tokenizer, _, _) = engine::inspect(&dir).unwrap();
    let workload = Workload::generate(DEFAULT_SEED, Lengths::Marco, &[PASSAGES], CALLS, &|t| {
        token_count(&tokenizer, t)
    })
    .unwrap();
    let bodies: Vec<Vec<u8>> = workload.sets[0]
        .calls
        .iter()
        .map(|call| {
            json!({"query": call.query, "texts": call.passages, "raw_scores": true})
                .to_string()
                .into_bytes()
        })
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let _enter = rt.enter();

    let mut g = c.benchmark_group("serve-shadow");
    g.sample_size(20).measurement_time(Duration::from_secs(6));
    let mut baseline: Option<f64> = None;
    for (label, sample) in [
        ("off", None),
        ("sample-0.1", Some(0.1)),
        ("sample-1.0", Some(1.0)),
    ] {
        let mut opts = ServeOptions::new(&dir, Device::Cpu);
        if let Some(s) = sample {
            opts.shadow = Some(ModelSpec {
                name: "candidate".into(),
                path: dir.clone(),
            });
            opts.shadow_sample = s;
        }
        let service = Service::start(opts).unwrap();
        // Besides criterion's own figures: one timed run of fixed size, for the ratio.
        let (mut total, mut n) = (Duration::ZERO, 0u64);
        g.bench_function(
            BenchmarkId::new(format!("tiny-bert/marco/{PASSAGES}"), label),
            |b| {
                b.iter_custom(|iters| {
                    let t = mean_of(&rt, &service, &bodies, iters);
                    total += t;
                    n += iters;
                    t
                })
            },
        );
        let mean = total.as_secs_f64() / n.max(1) as f64;
        let metrics = service.render_metrics();
        // crossrank_shadow_requests_total{...,outcome="compared"} N
        let count = |outcome: &str| -> u64 {
            metrics
                .lines()
                .filter(|l| {
                    l.contains("_requests_total{") && l.contains(&format!("outcome=\"{outcome}\""))
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                .sum()
        };
        match (sample, baseline) {
            (None, _) => {
                baseline = Some(mean);
                println!(
                    "serve-shadow {label}: mean {:.3} ms over {n} requests",
                    mean * 1e3
                );
            }
            (Some(s), Some(base)) => {
                let ratio = mean / base;
                let bound = (1.0 + s) * 1.05;
                println!(
                    "serve-shadow {label}: mean {:.3} ms over {n} requests, {:.3}x the run without shadow (bound {bound:.3}x: {}); candidate compared {} requests, dropped {}",
                    mean * 1e3,
                    ratio,
                    if ratio <= bound { "within" } else { "EXCEEDED" },
                    count("compared"),
                    count("dropped"),
                );
            }
            (Some(_), None) => {}
        }
        service.drain();
        if let Some(shadow) = &service.shadow {
            shadow.loaded.scheduler.shutdown();
        }
    }
    g.finish();
}

criterion_group!(benches, shadow_latency);
criterion_main!(benches);
