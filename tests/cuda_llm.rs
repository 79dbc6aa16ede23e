//! The decoder LLM rerankers end to end on CUDA, in bf16 (the software GPU in CI): the committed
//! tiny Qwen3 (qwen3-reranker-tiny) and Qwen2 (mxbai-rerank-tiny) models against transformers'
//! goldens (tests/data/goldens/llm, float32) and the CPU reference, with the shared prefix on
//! and off, with and without CUDA graphs.
//!
//! The bf16 rule, per model: max(LOGIT_FLOOR, 2 × the worst error against the goldens of the
//! same math with bf16 storage done by a reference, `StorageEmulation::BF16` over the same Qwen
//! forward: every op's output and the attention's P rounded to bf16, as the kernels round).
//! That is cuda_e2e.rs' fp16 rule with bf16's rounding: bf16 keeps 8 significant bits to fp16's
//! 11, so its floor is 8 × fp16's 2e-3. The tiny seeded models are far more sensitive to
//! rounding than trained ones (their logits move by up to 0.22 under bf16 storage alone:
//! measured 2026-11-30, qwen3-reranker-tiny 0.22, mxbai-rerank-tiny 0.09), so the bound is
//! theirs, not a constant. Ranking equal wherever the CPU logits
//! differ by more than the bound; the same inputs twice give bit-identical logits. The pairs are
//! the goldens' own ids (tests/llm.rs checks the tokenization). Without a GPU these print
//! SKIPPED.
#![cfg(feature = "cuda")]

mod common;

use common::*;
use crossrank::backend::cpu::StorageEmulation;
use crossrank::backend::cuda::CudaBackend;
use crossrank::batch::PackedBatch;
use crossrank::model::Scorer;
use crossrank::models::qwen;
use crossrank::tokenize::EncodedPair;
use crossrank::{Device, LoadOptions, Reranker};
use half::bf16;

const MODELS: [&str; 2] = ["qwen3-reranker-tiny", "mxbai-rerank-tiny"];

/// bf16 storage, fp32 accumulation: the floor of the bound (module comment).
const LOGIT_FLOOR: f32 = 1.6e-2;

/// Every golden case's pairs, from their ids.
fn cases(name: &str) -> Vec<(String, Vec<EncodedPair>, Vec<f32>)> {
    llm_golden(name)
        .cases
        .into_iter()
        .map(|c| {
            let pairs = c
                .input_ids
                .iter()
                .zip(&c.truncated)
                .map(|(ids, &truncated)| EncodedPair {
                    ids: ids.clone(),
                    type_ids: vec![0; ids.len()],
                    truncated,
                })
                .collect();
            (c.name, pairs, c.logits)
        })
        .collect()
}

/// The model's Qwen forward on `backend`, with the shared prefix on or off.
fn model<B: crossrank::backend::Backend>(name: &str, backend: B, share: bool) -> qwen::Model<B> {
    let dir = model_dir(name);
    let r = Reranker::load(&dir, Device::Cpu, &LoadOptions::default()).unwrap();
    let llm = r.llm_template().unwrap();
    let ckpt = crossrank::weights::Checkpoint::open(&dir).unwrap();
    let host = qwen::load(&ckpt, r.config(), llm.yes_id, llm.no_id).unwrap();
    qwen::Model::new(backend, r.config().clone(), host, 2048)
        .unwrap()
        .with_shared_prefix(share)
}

fn score(m: &dyn Scorer, name: &str, pairs: &[EncodedPair]) -> Vec<f32> {
    let cfg =
        crossrank::config::ModelConfig::from_file(&model_dir(name).join("config.json")).unwrap();
    m.score(&PackedBatch::pack(pairs, &cfg)).unwrap()
}

/// The bf16 reference's worst error against the goldens, and the bound it sets.
fn bf16_bound(name: &str) -> (f32, f32) {
    let emu = model(name, StorageEmulation::BF16, true);
    let mut worst = 0f32;
    for (_, pairs, gold) in cases(name) {
        for (e, g) in score(&emu, name, &pairs).iter().zip(&gold) {
            worst = worst.max((e - g).abs());
        }
    }
    (worst, LOGIT_FLOOR.max(2.0 * worst))
}

#[test]
fn llm_scores_match_cpu_and_transformers_on_cuda_in_bf16() {
    if skip_without_gpu("llm_scores_match_cpu_and_transformers_on_cuda_in_bf16") {
        return;
    }
    for name in MODELS {
        let dir = model_dir(name);
        let cpu = Reranker::load(&dir, Device::Cpu, &LoadOptions::default()).unwrap();
        let gpu = Reranker::load(&dir, Device::Cuda(0), &LoadOptions::default())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let (emu_err, bound) = bf16_bound(name);
        let (mut vs_cpu, mut vs_gold) = (0f32, 0f32);
        for (case, pairs, gold) in cases(name) {
            let refs: Vec<_> = pairs.iter().collect();
            let on_gpu = gpu.score_pairs(&refs).unwrap();
            let on_cpu = cpu.score_pairs(&refs).unwrap();
            let again = gpu.score_pairs(&refs).unwrap();
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(
                bits(&on_gpu),
                bits(&again),
                "{name} {case}: two runs differ"
            );
            for (i, ((&x, &c), &want)) in on_gpu.iter().zip(&on_cpu).zip(&gold).enumerate() {
                assert!(
                    (x - c).abs() <= bound && (x - want).abs() <= bound,
                    "{name} {case} document {i}: gpu {x}, cpu {c}, transformers {want} (bound {bound:.2e})"
                );
                vs_cpu = vs_cpu.max((x - c).abs());
                vs_gold = vs_gold.max((x - want).abs());
            }
            for i in 0..on_gpu.len() {
                for j in 0..on_gpu.len() {
                    if on_cpu[i] - on_cpu[j] > bound {
                        assert!(
                            on_gpu[i] > on_gpu[j],
                            "{name} {case}: cpu ranks {i} over {j}, gpu does not"
                        );
                    }
                }
            }
        }
        assert!(
            gpu.shared_tokens() > 0,
            "{name}: the shared prefix was not used"
        );
        println!(
            "{name}: max |gpu - cpu| {vs_cpu:.2e}, max |gpu - transformers| {vs_gold:.2e}, \
             bf16 emulation {emu_err:.2e}, bound {bound:.2e}"
        );
    }
}

/// The shared-prefix forward on CUDA gives the plain forward's logits within the bound and runs
/// (n - 1) × prefix fewer tokens; its logits are those of the bf16 reference's shared forward
/// within the same bound.
#[test]
fn llm_shared_prefix_matches_the_plain_forward_on_cuda() {
    if skip_without_gpu("llm_shared_prefix_matches_the_plain_forward_on_cuda") {
        return;
    }
    for name in MODELS {
        let (_, bound) = bf16_bound(name);
        let gpu = || CudaBackend::<bf16>::open(0).unwrap();
        let (plain, shared) = (model(name, gpu(), false), model(name, gpu(), true));
        let mut worst = 0f32;
        for (case, pairs, _) in cases(name) {
            let (a, b) = (score(&plain, name, &pairs), score(&shared, name, &pairs));
            for (i, (x, y)) in a.iter().zip(&b).enumerate() {
                worst = worst.max((x - y).abs());
                assert!(
                    (x - y).abs() <= bound,
                    "{name} {case} document {i}: plain {x}, shared {y} (bound {bound:.2e})"
                );
            }
        }
        assert_eq!(plain.shared_tokens(), 0);
        assert!(shared.shared_tokens() > 0, "{name}: nothing was shared");
        println!(
            "{name}: shared vs plain on CUDA max |diff| {worst:.2e}, {} tokens not run",
            shared.shared_tokens()
        );
    }
}

/// CUDA graphs over the Qwen forward (padded shapes, the shared prefix's length read from the
/// device batch): recorded, replayed, the same bits as the first run, and the eager forward's
/// logits within the bound.
#[test]
fn llm_cuda_graphs_replay_the_eager_forward() {
    if skip_without_gpu("llm_cuda_graphs_replay_the_eager_forward") {
        return;
    }
    for name in MODELS {
        let dir = model_dir(name);
        let cpu = Reranker::load(&dir, Device::Cpu, &LoadOptions::default()).unwrap();
        let (_, bound) = bf16_bound(name);
        let gpu = || CudaBackend::<bf16>::open(0).unwrap();
        let eager = model(name, gpu(), true);
        let graphs = model(name, gpu(), true).with_graphs(true);
        let gold = llm_golden(name);
        let groups: Vec<(&str, &[String])> = gold
            .cases
            .iter()
            .map(|c| (c.query.as_str(), c.documents.as_slice()))
            .collect();
        assert_graphs_replay_eager(name, &cpu, cpu.config(), &groups, bound, &eager, &graphs);
        let (recorded, off) = graphs.backend.graph_status();
        assert_eq!(off, None, "{name}: graphs were switched off");
        assert!(recorded > 0, "{name}: no graph was recorded");
        println!("{name}: {recorded} CUDA graphs recorded, replays match the eager forward");
    }
}
