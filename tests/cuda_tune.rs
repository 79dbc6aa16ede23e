//! GEMM tuning at load on the GPU (`CudaBackend::tune_gemm`): every key a forward can look up
//! is cached, no winner is slower than the heuristic's choice, tuning twice adds no key, and a
//! forward on the tuned backend scores as the CPU reference does, within the GPU parity rule
//! of tests/cuda_e2e.rs: max(2e-3, 2 × the fp16-storage emulation's error against the
//! transformers goldens). Without a GPU it prints SKIPPED and why.
#![cfg(feature = "cuda")]

mod common;

use common::*;
use crossrank::backend::cuda::CudaBackend;
use crossrank::batch::PackedBatch;
use crossrank::config::ModelConfig;
use crossrank::model::{Model, Scorer};
use crossrank::{Device, LoadOptions, Reranker};

/// The floor of the parity rule (tests/cuda_e2e.rs `LOGIT_ATOL`).
const LOGIT_ATOL: f32 = 2e-3;

#[test]
fn tuned_gemms_cover_every_key_and_keep_the_scores() {
    let test = "tuned_gemms_cover_every_key_and_keep_the_scores";
    if skip_without_gpu(test) {
        return;
    }
    // Hidden 48 and FFN 100: leading dimensions that are no multiple of 16 bytes' worth of
    // fp16, where cuBLASLt refuses the most candidates.
    let name = "bert-f16-noprefix";
    let dir = model_dir(name);
    let cfg = ModelConfig::from_file(&dir.join("config.json")).unwrap();
    let backend =
        CudaBackend::new(0).unwrap_or_else(|e| panic!("{test}: a CUDA device is visible: {e}"));
    let max_tokens = 1024;
    // Buckets 64, 128, 256, 512 and 1024; qkv 48→144, attn_out 48→48, ffn 48→100 and 100→48.
    let expected = 5 * 4;

    assert_eq!(backend.cached_gemm_algorithms(), 0);
    let t = backend.tune_gemm(&cfg, max_tokens).unwrap();
    println!("{test}: {t}");
    assert_eq!((t.shapes, t.untuned), (expected, 0), "{t:?}");
    assert_eq!(backend.cached_gemm_algorithms(), expected);
    assert!(t.candidates_timed >= expected, "{t:?}");
    assert!(t.seconds > 0.0 && t.chosen_ms > 0.0, "{t:?}");
    for k in &t.per_key {
        assert!(k.timed >= 1 && k.chosen.is_some(), "{k:?}");
        assert!(k.chosen_ms > 0.0 && k.chosen_ms <= k.first_ms, "{k:?}");
    }
    assert!(t.chosen_ms <= t.heuristic_ms && t.predicted_speedup() >= 1.0);
    // A second tuning replaces the entries; it adds none.
    backend.tune_gemm(&cfg, max_tokens).unwrap();
    assert_eq!(backend.cached_gemm_algorithms(), expected);

    let ckpt = crossrank::weights::Checkpoint::open(&dir).unwrap();
    let host = crossrank::weights::load(&ckpt, &cfg).unwrap();
    let gpu = Model::new(backend, cfg.clone(), host, max_tokens).unwrap();
    let cpu = Reranker::load(&dir, Device::Cpu, &LoadOptions::default()).unwrap();
    let groups = golden(name).groups;
    let encoded: Vec<_> = groups
        .iter()
        .map(|g| cpu.encode(&g.query, &g.passages, None).unwrap())
        .collect();
    let mut emu_err = 0f32;
    for (pairs, group) in encoded.iter().zip(&groups) {
        for (e, gold) in fp16_emulated_logits(&dir, pairs).iter().zip(&group.logits) {
            emu_err = emu_err.max((e - gold).abs());
        }
    }
    let bound = LOGIT_ATOL.max(2.0 * emu_err);
    let mut worst = 0f32;
    for (g, pairs) in encoded.iter().enumerate() {
        let batch = PackedBatch::pack(pairs, &cfg);
        assert!(
            batch.tokens() <= max_tokens,
            "group {g}: {}",
            batch.tokens()
        );
        let on_gpu = gpu.score(&batch).unwrap();
        let on_cpu = cpu.score_pairs(&pairs.iter().collect::<Vec<_>>()).unwrap();
        assert_eq!(on_gpu.len(), on_cpu.len());
        for (i, (&x, &c)) in on_gpu.iter().zip(&on_cpu).enumerate() {
            assert!(
                (x - c).abs() <= bound,
                "group {g} pair {i}: tuned gpu {x}, cpu {c} (bound {bound:.2e})"
            );
            worst = worst.max((x - c).abs());
        }
    }
    // Every row count of these forwards fell in a tuned bucket: no key was added.
    assert_eq!(gpu.backend.cached_gemm_algorithms(), expected);
    println!("{test}: max |tuned gpu - cpu| {worst:.2e}, bound {bound:.2e}");
}
