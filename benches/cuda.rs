//! CUDA benches (criterion): the fp16 forward of the benchmark shapes on one GPU, and the dense
//! GEMM rate that MFU is measured against. Run with `cargo bench --features cuda --bench cuda`;
//! without the feature, or without a usable device, it prints that it skipped and why.
//!
//! Every timed forward ends with the copy of its logits to the host, which waits for the
//! stream: the clock is read after the device has finished. Each bench warms up first
//! (criterion's warm-up), and inputs rotate through 4 distinct calls of 100 pairs (several MB of
//! activations per call, beyond L2's reach once the weights are counted). Throughput is in
//! FLOPs: criterion's "elem/s" reads FLOP/s.

#[cfg(not(feature = "cuda"))]
fn main() {
    println!("cuda bench SKIPPED: built without the `cuda` feature (cargo bench --features cuda --bench cuda)");
}

#[cfg(feature = "cuda")]
fn main() {
    if let Err(reason) = cuda::available() {
        println!("cuda bench SKIPPED: {reason}");
        return;
    }
    let mut c = criterion::Criterion::default().configure_from_args();
    cuda::gemm(&mut c);
    cuda::forward(&mut c);
    c.final_summary();
}

#[cfg(feature = "cuda")]
mod cuda {
    use std::path::{Path, PathBuf};
    use std::time::{Duration, Instant};

    use criterion::{Criterion, Throughput};
    use crossrank::backend::cuda::CudaBackend;
    use crossrank::backend::Backend;
    use crossrank::batch::PackedBatch;
    use crossrank::bench::report::mean_batch_flops;
    use crossrank::bench::run::{
        encode_workload, measure_gemm, token_count, CallEncoder, DeviceSync,
    };
    use crossrank::bench::shapes::{ensure_shape, Shape, DEFAULT_BERT_TOKENIZER, DEFAULT_SEED};
    use crossrank::bench::workload::{Lengths, Workload};
    use crossrank::engine;
    use crossrank::model::{Model, Scorer};
    use crossrank::weights::{self, HostTensor, Linear};

    const CALLS: usize = 4;
    const N: usize = 100;

    pub fn available() -> Result<(), String> {
        CudaBackend::new(0).map(|_| ()).map_err(|e| e.to_string())
    }

    fn root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
    }

    /// The dense fp16 GEMM through the backend's own linear op, 4096³ (8192³ is what
    /// `crossrank bench` reports; both are printed).
    pub fn gemm(c: &mut Criterion) {
        let b = CudaBackend::new(0).unwrap();
        match measure_gemm(&b, "f16") {
            Ok(g) => println!(
                "dense GEMM {}x{}x{} fp16: {:.1} TFLOP/s ({})",
                g.m, g.n, g.k, g.tflops, g.note
            ),
            Err(e) => println!("dense GEMM 8192³ not measured: {e}"),
        }
        let size = 4096;
        let t = |name: &str, shape: Vec<usize>| HostTensor {
            name: name.into(),
            data: (0..shape.iter().product::<usize>())
                .map(|i| ((i % 97) as f32 - 48.0) * 1e-3)
                .collect(),
            shape,
        };
        let x = b.upload(&t("x", vec![size, size])).unwrap();
        let lin = Linear {
            w: b.upload(&t("w", vec![size, size])).unwrap(),
            b: b.upload(&t("b", vec![size])).unwrap(),
            out_dim: size,
            in_dim: size,
        };
        let mut out = b.alloc(size * size).unwrap();
        let mut g = c.benchmark_group("cuda-gemm");
        g.throughput(Throughput::Elements(2 * (size as u64).pow(3)));
        g.bench_function("f16/4096", |bench| {
            bench.iter_custom(|iters| {
                b.sync().unwrap();
                let t0 = Instant::now();
                for _ in 0..iters {
                    b.linear(&x, size, &lin, None, &mut out).unwrap();
                }
                b.sync().unwrap();
                t0.elapsed()
            })
        });
        g.finish();
    }

    pub fn forward(c: &mut Criterion) {
        let mut g = c.benchmark_group("cuda-forward");
        g.sample_size(20).measurement_time(Duration::from_secs(5));
        let bert = root().join(DEFAULT_BERT_TOKENIZER);
        let mut cases = vec![
            (Shape::BgeBase, Lengths::Marco),
            (Shape::BgeBase, Lengths::Rag),
        ];
        if bert.exists() {
            cases.insert(0, (Shape::MiniLmL6, Lengths::Marco));
        } else {
            println!(
                "minilm-l6 SKIPPED: {} is absent (scripts/fetch-minilm.sh)",
                bert.display()
            );
        }
        for (shape, lengths) in cases {
            let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
                .join("bench-shapes")
                .join(shape.name());
            if let Err(e) = ensure_shape(shape, &dir, Some(&bert), DEFAULT_SEED) {
                println!("{} SKIPPED: {e}", shape.name());
                continue;
            }
            let (cfg, tokenizer, _, ckpt) = engine::inspect(&dir).unwrap();
            let max_length = tokenizer.default_max_length();
            let w = Workload::generate(DEFAULT_SEED, lengths, &[N], CALLS, &|t| {
                token_count(&tokenizer, t)
            })
            .unwrap();
            let pairs = encode_workload(CallEncoder::Pairs(&tokenizer), &w, max_length)
                .unwrap()
                .remove(0);
            let batches: Vec<PackedBatch> =
                pairs.iter().map(|p| PackedBatch::pack(p, &cfg)).collect();
            let host = weights::load(&ckpt, &cfg).unwrap();
            let max_tokens = batches.iter().map(|b| b.tokens()).max().unwrap_or(1);
            let backend = CudaBackend::new(0).unwrap();
            let name = backend.device_name();
            let model = Model::new(backend, cfg.clone(), host, max_tokens).unwrap();
            let flops = mean_batch_flops(&batches, &cfg);
            println!(
                "{} on {name}: {lengths}, {N} pairs, {:.2} TFLOP per call; throughput below is FLOP/s",
                shape.name(),
                flops / 1e12
            );
            g.throughput(Throughput::Elements(flops as u64));
            g.bench_function(format!("{}/{lengths}/{N}", shape.name()), |b| {
                b.iter_custom(|iters| {
                    let t0 = Instant::now();
                    for i in 0..iters as usize {
                        // score() returns host logits: the stream has finished when it returns.
                        std::hint::black_box(model.score(&batches[i % CALLS]).unwrap());
                    }
                    t0.elapsed()
                })
            });
        }
        g.finish();
    }
}
