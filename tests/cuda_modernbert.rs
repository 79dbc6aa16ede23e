//! ModernBERT end to end on CUDA (the software GPU in CI): the committed tiny models' scores
//! against transformers' goldens and the CPU reference, with and without CUDA graphs.
//!
//! Bound, per model, the rule of cuda_e2e.rs: max(2e-3, 2 × the error of the same math with fp16
//! storage done by a reference, `StorageEmulation::FP16` over the same ModernBERT forward). Ranking equal
//! wherever the CPU logits differ by more than the bound; truncation flags exact; the same
//! inputs twice give bit-identical scores; every group in one batch agrees with each group alone
//! within the bound. Without a GPU these print SKIPPED.
#![cfg(feature = "cuda")]

mod common;

use common::*;
use crossrank::backend::cuda::CudaBackend;
use crossrank::config::ModelConfig;
use crossrank::models::modernbert;
use crossrank::{Device, LoadOptions, Reranker};

/// fp16 storage, fp32 accumulation: the floor of the bound.
const LOGIT_ATOL: f32 = 2e-3;

/// Every golden group of a model, at the default max length and at the explicit one.
fn groups(gold: &ModernGolden) -> Vec<(&ModernGroup, Option<usize>)> {
    let set = &gold.explicit_max_length;
    gold.groups
        .iter()
        .map(|g| (g, None))
        .chain(set.groups.iter().map(|g| (g, Some(set.max_length))))
        .collect()
}

/// The fp16-storage reference's worst error against the goldens, and the bound it sets.
fn fp16_bound(cpu: &Reranker, name: &str, gold: &ModernGolden) -> (f32, f32) {
    let mut emu_err = 0f32;
    for (group, max_length) in groups(gold) {
        let pairs = cpu
            .encode(&group.query, &group.passages, max_length)
            .unwrap();
        let emu = modernbert_fp16_emulated_logits(&model_dir(name), &pairs);
        for (&e, &want) in emu.iter().zip(&group.logits) {
            emu_err = emu_err.max((e - want).abs());
        }
    }
    (emu_err, LOGIT_ATOL.max(2.0 * emu_err))
}

#[test]
fn modernbert_scores_match_cpu_and_transformers_on_cuda() {
    if skip_without_gpu("modernbert_scores_match_cpu_and_transformers_on_cuda") {
        return;
    }
    for name in MODERNBERT_MODELS {
        let gold = modernbert_golden(name);
        let dir = model_dir(name);
        let cpu = Reranker::load(&dir, Device::Cpu, &LoadOptions::default()).unwrap();
        let gpu = Reranker::load(&dir, Device::Cuda(0), &LoadOptions::default())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let (emu_err, bound) = fp16_bound(&cpu, name, &gold);
        let (mut vs_cpu, mut vs_gold, mut vs_emu) = (0f32, 0f32, 0f32);
        let (mut all, mut all_gpu) = (Vec::new(), Vec::new());
        for (g, (group, max_length)) in groups(&gold).into_iter().enumerate() {
            let pairs = gpu
                .encode(&group.query, &group.passages, max_length)
                .unwrap();
            for (i, p) in pairs.iter().enumerate() {
                assert_eq!(p.ids, group.input_ids[i], "{name} group {g} pair {i}: ids");
                assert_eq!(p.truncated, group.truncated[i], "{name} group {g} pair {i}");
            }
            let refs: Vec<_> = pairs.iter().collect();
            let on_gpu = gpu.score_pairs(&refs).unwrap();
            let on_cpu = cpu.score_pairs(&refs).unwrap();
            let emu = modernbert_fp16_emulated_logits(&dir, &pairs);
            for (&x, &e) in on_gpu.iter().zip(&emu) {
                vs_emu = vs_emu.max((x - e).abs());
            }
            let again = gpu.score_pairs(&refs).unwrap();
            assert!(
                on_gpu
                    .iter()
                    .zip(&again)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{name} group {g}: two runs differ: {on_gpu:?} vs {again:?}"
            );
            for (i, ((&x, &c), &want)) in on_gpu.iter().zip(&on_cpu).zip(&group.logits).enumerate()
            {
                assert!(
                    (x - c).abs() <= bound && (x - want).abs() <= bound,
                    "{name} group {g} pair {i}: gpu {x}, cpu {c}, transformers {want} (bound {bound:.2e})"
                );
                vs_cpu = vs_cpu.max((x - c).abs());
                vs_gold = vs_gold.max((x - want).abs());
            }
            for i in 0..on_gpu.len() {
                for j in 0..on_gpu.len() {
                    if on_cpu[i] - on_cpu[j] > bound {
                        assert!(
                            on_gpu[i] > on_gpu[j],
                            "{name} group {g}: cpu ranks {i} over {j}, gpu does not ({} vs {})",
                            on_gpu[i],
                            on_gpu[j]
                        );
                    }
                }
            }
            all.extend(pairs);
            all_gpu.extend(on_gpu);
        }
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
             fp16 emulation {emu_err:.2e}, bound {bound:.2e}, max |gpu - fp16 emulation| {vs_emu:.2e}"
        );
    }
}

/// CUDA graphs over the ModernBERT forward: the first run of a shape is eager, the second
/// recorded, the third replayed; all give the same bits, a batch of the same shape with other
/// content gets its own scores, and the padded forward agrees with the unpadded one within the
/// bound.
#[test]
fn modernbert_cuda_graphs_replay_the_eager_forward() {
    if skip_without_gpu("modernbert_cuda_graphs_replay_the_eager_forward") {
        return;
    }
    for name in MODERNBERT_MODELS {
        let gold = modernbert_golden(name);
        let dir = model_dir(name);
        let cpu = Reranker::load(&dir, Device::Cpu, &LoadOptions::default()).unwrap();
        let (_, bound) = fp16_bound(&cpu, name, &gold);
        let cfg = ModelConfig::from_file(&dir.join("config.json")).unwrap();
        let model = |graphs: bool| {
            let ckpt = crossrank::weights::Checkpoint::open(&dir).unwrap();
            let host = modernbert::load(&ckpt, &cfg).unwrap();
            modernbert::Model::new(CudaBackend::new(0).unwrap(), cfg.clone(), host, 1024)
                .unwrap()
                .with_graphs(graphs)
        };
        let (eager, graphs) = (model(false), model(true));
        let groups: Vec<(&str, &[String])> = gold
            .groups
            .iter()
            .map(|g| (g.query.as_str(), g.passages.as_slice()))
            .collect();
        assert_graphs_replay_eager(name, &cpu, &cfg, &groups, bound, &eager, &graphs);
        let (recorded, off) = graphs.backend.graph_status();
        assert_eq!(off, None, "{name}: graphs were switched off");
        assert!(recorded > 0, "{name}: no graph was recorded");
        println!("{name}: {recorded} CUDA graphs recorded, replays match the eager forward");
    }
}
