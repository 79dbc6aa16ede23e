//! End to end on the GPU: scores of every committed test model (and the real all-MiniLM-L6-v2
//! encoder when fetched) against the CPU reference and the transformers goldens. Bound, per
//! model: max(2e-3, 2 × the error of the same math with fp16 storage done by a reference,
//! `StorageEmulation::FP16`). The issue asked for 2e-3 flat, but fp16 storage alone costs 7e-3..1.3e-2
//! on these deliberately spread test models (transformers itself in fp16 does the same), so a
//! flat 2e-3 would fail a correct kernel; the rule keeps 2e-3 wherever fp16 allows it. The
//! same ranking wherever the reference logits differ by more than the bound; the same inputs twice give bit-identical scores;
//! one big batch agrees with one pair at a time. Without a GPU these print SKIPPED, except the
//! error-path test, which checks that a missing driver is an error and not a panic.
#![cfg(feature = "cuda")]

mod common;

use common::*;
use crossrank::backend::cuda::unavailable_reason;
use crossrank::{Device, LoadOptions, Reranker};

/// fp16 storage, fp32 accumulation: the bound on a logit, the floor of the rule above.
const LOGIT_ATOL: f32 = 2e-3;

fn skip(test: &str) -> bool {
    skip_without_gpu(test)
}

#[test]
fn cuda_without_driver_or_device_is_a_clear_error() {
    let dir = model_dir("bert-f32");
    match unavailable_reason() {
        Some(why) => {
            let err = Reranker::load(&dir, Device::Cuda(0), &LoadOptions::default())
                .err()
                .expect("loading on CUDA without a driver must fail")
                .to_string();
            assert!(err.starts_with("cuda: "), "{err}");
            assert!(err.contains("--device cpu"), "{err}");
            println!("no GPU here ({why}); the error reads: {err}");
        }
        None => {
            let err = Reranker::load(&dir, Device::Cuda(999), &LoadOptions::default())
                .err()
                .expect("device 999 must not exist")
                .to_string();
            assert!(err.contains("device 999 not found"), "{err}");
        }
    }
}

/// The fp16-storage reference's own error on `groups`, and the bound it sets:
/// max(LOGIT_ATOL, 2 × that error).
fn fp16_bound(cpu: &Reranker, dir: &std::path::Path, groups: &[GoldenGroup]) -> (f32, f32) {
    let mut emu_err = 0f32;
    for group in groups {
        let pairs = cpu.encode(&group.query, &group.passages, None).unwrap();
        let emu = fp16_emulated_logits(dir, &pairs);
        for (&e, &gold) in emu.iter().zip(&group.logits) {
            emu_err = emu_err.max((e - gold).abs());
        }
    }
    (emu_err, LOGIT_ATOL.max(2.0 * emu_err))
}

/// Scores every golden group on both devices and checks them. Returns the worst |gpu - cpu|
/// and |gpu - golden|.
fn check_model(name: &str, dir: &std::path::Path, groups: &[GoldenGroup]) -> (f32, f32) {
    let cpu = Reranker::load(dir, Device::Cpu, &LoadOptions::default()).unwrap();
    let gpu = Reranker::load(dir, Device::Cuda(0), &LoadOptions::default())
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let (emu_err, bound) = fp16_bound(&cpu, dir, groups);
    let (mut vs_cpu, mut vs_gold) = (0f32, 0f32);
    let mut all = Vec::new();
    let mut all_gpu = Vec::new();
    for (g, group) in groups.iter().enumerate() {
        let pairs = gpu.encode(&group.query, &group.passages, None).unwrap();
        let refs: Vec<_> = pairs.iter().collect();
        let on_gpu = gpu.score_pairs(&refs).unwrap();
        let on_cpu = cpu.score_pairs(&refs).unwrap();
        // A moving result is a race.
        let again = gpu.score_pairs(&refs).unwrap();
        assert!(
            on_gpu
                .iter()
                .zip(&again)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{name} group {g}: two runs differ: {on_gpu:?} vs {again:?}"
        );
        for (i, ((&x, &c), &gold)) in on_gpu.iter().zip(&on_cpu).zip(&group.logits).enumerate() {
            assert!(
                (x - c).abs() <= bound && (x - gold).abs() <= bound,
                "{name} group {g} pair {i}: gpu {x}, cpu {c}, transformers {gold} (bound {bound:.2e})"
            );
            vs_cpu = vs_cpu.max((x - c).abs());
            vs_gold = vs_gold.max((x - gold).abs());
        }
        for i in 0..on_gpu.len() {
            for j in 0..on_gpu.len() {
                if on_cpu[i] - on_cpu[j] > bound {
                    assert!(
                        on_gpu[i] > on_gpu[j],
                        "{name} group {g}: cpu ranks {i} ({}) over {j} ({}), gpu does not ({} vs {})",
                        on_cpu[i], on_cpu[j], on_gpu[i], on_gpu[j]
                    );
                }
            }
        }
        all.extend(pairs);
        all_gpu.extend(on_gpu);
    }
    // Every group's pairs in one packed batch: other GEMM shapes, same scores within the bound.
    let refs: Vec<_> = all.iter().collect();
    let batched = gpu.score_pairs(&refs).unwrap();
    for (i, (&a, &b)) in batched.iter().zip(&all_gpu).enumerate() {
        assert!(
            (a - b).abs() <= bound,
            "{name} pair {i}: batched {a}, per group {b}"
        );
    }
    println!(
        "{name}: max |gpu - cpu| {vs_cpu:.2e}, max |gpu - transformers| {vs_gold:.2e}, \
         fp16 emulation {emu_err:.2e}, bound {bound:.2e}"
    );
    (vs_cpu, vs_gold)
}

#[test]
fn gpu_scores_match_cpu_and_transformers_on_every_committed_model() {
    if skip("gpu_scores_match_cpu_and_transformers_on_every_committed_model") {
        return;
    }
    for name in committed_models() {
        let gold = golden(&name);
        check_model(&name, &model_dir(&name), &gold.groups);
    }
}

#[test]
fn gpu_scores_match_on_the_real_minilm_encoder() {
    if skip("gpu_scores_match_on_the_real_minilm_encoder") {
        return;
    }
    let Some(dir) = minilm_cross_encoder("cuda-minilm-real") else {
        return;
    };
    let mut groups = golden("minilm-real").groups;
    if crossrank::backend::cuda::on_software_gpu() {
        // A real-sized encoder on the CPU emulation: one group of 8 pairs keeps CI's time.
        groups.truncate(1);
    }
    check_model("minilm-real", &dir, &groups);
}

/// CUDA graphs (--cuda-graphs): a batch shape runs eagerly (padded) the first time, is recorded
/// and launched the second, replayed after. All three must give the same bits (the recording
/// runs the same kernels on the same rows); a batch of the same shape with other content (the
/// same pairs reversed) must get its own scores, not the recorded call's; and the padded
/// forward must agree with the unpadded one within the model's fp16 bound (a padded GEMM may
/// take another cuBLASLt algorithm, so not bit for bit).
#[test]
fn cuda_graphs_replay_what_the_eager_forward_computes() {
    use crossrank::backend::cuda::CudaBackend;
    use crossrank::model::Model;
    if skip("cuda_graphs_replay_what_the_eager_forward_computes") {
        return;
    }
    for name in committed_models() {
        let gold = golden(&name);
        let dir = model_dir(&name);
        let cpu = Reranker::load(&dir, Device::Cpu, &LoadOptions::default()).unwrap();
        let (_, bound) = fp16_bound(&cpu, &dir, &gold.groups);
        let cfg = crossrank::config::ModelConfig::from_file(&dir.join("config.json")).unwrap();
        let model = |graphs: bool| {
            let ckpt = crossrank::weights::Checkpoint::open(&dir).unwrap();
            let host = crossrank::weights::load(&ckpt, &cfg).unwrap();
            let backend = CudaBackend::new(0).unwrap();
            Model::new(backend, cfg.clone(), host, 4096)
                .unwrap()
                .with_graphs(graphs)
        };
        let (eager, graphs) = (model(false), model(true));
        let groups: Vec<(&str, &[String])> = gold
            .groups
            .iter()
            .map(|g| (g.query.as_str(), g.passages.as_slice()))
            .collect();
        assert_graphs_replay_eager(&name, &cpu, &cfg, &groups, bound, &eager, &graphs);
        let (recorded, off) = graphs.backend.graph_status();
        assert_eq!(off, None, "{name}: graphs were switched off");
        assert!(recorded > 0, "{name}: no graph was recorded");
        println!("{name}: {recorded} CUDA graphs recorded, replays match the eager forward");
    }
}
