//! BLIP image-text matching on CUDA (fp16; the software GPU in CI): the committed tiny model's
//! ITM logits against transformers' goldens, fed transformers' own pixel values. Bound per
//! logit: max(2e-3 · max(1, |logit|), 2 × the largest error of the same forward with fp16
//! storage done on the CPU, `StorageEmulation::FP16`, which rounds where the kernels do: each
//! op's output, P in self-attention (not in cross-attention, which keeps it in f32), and the
//! GEMM's output before a GELU applied to it. That is tests/cuda_e2e.rs's rule with its 2e-3
//! floor made relative to the logit: fp16's error is relative (2^-11 per rounding), and this
//! tiny seeded model's ITM logits reach |17|, where one fp16 step of a hidden value is 2^-7.
//! How it came about: the absolute rule first failed (1.84e-2 at a logit of -13.86); making the
//! emulation round as the kernels do (the P and GELU roundings above) brought it to the
//! GPU's logits exactly on 8 of 24, but one rounding flipped early still moves a logit of -13.86
//! by 2.3e-2 between them, more than twice the emulation's error elsewhere. Ranking equal
//! wherever the golden logits differ by more than twice the bound; one image at a time equals
//! the batch.
#![cfg(feature = "cuda")]

mod common;

use common::*;
use crossrank::engine::Options;
use crossrank::models::blip::ImageScorer;
use crossrank::{Device, LoadOptions, Reranker};
use serde::Deserialize;

const LOGIT_ATOL: f32 = 2e-3;

#[derive(Deserialize)]
struct Image {
    pixel_values: Vec<f32>,
}

#[derive(Deserialize)]
struct Query {
    query: String,
    logits: Vec<f32>,
}

#[derive(Deserialize)]
struct Golden {
    images: Vec<Image>,
    queries: Vec<Query>,
}

/// The fp16-storage emulation's logits of `query` against every image, one forward.
fn emulated(images: &[&[f32]], query: &str) -> Vec<f32> {
    use crossrank::models::blip;
    let dir = model_dir("blip-itm-tiny");
    let cfg = crossrank::config::ModelConfig::from_file(&dir.join("config.json")).unwrap();
    let ckpt = crossrank::weights::Checkpoint::open(&dir).unwrap();
    let host = blip::load(&ckpt, &cfg).unwrap();
    let r = Reranker::load(&dir, Device::Cpu, &LoadOptions::default()).unwrap();
    let pair = r.tokenizer().encode_single(query, 512).unwrap();
    let batch = crossrank::batch::PackedBatch::pack(std::iter::repeat_n(&pair, images.len()), &cfg);
    let model = blip::Model::new(
        crossrank::backend::cpu::StorageEmulation::FP16,
        cfg,
        host,
        batch.tokens().max(1),
        images.len(),
        0,
    )
    .unwrap();
    let distinct: Vec<blip::Image<'_>> = images
        .iter()
        .map(|&pixels| blip::Image {
            key: blip::ImageKey::of(pixels),
            pixels,
        })
        .collect();
    let image_of: Vec<u32> = (0..images.len() as u32).collect();
    model.score(&batch, &image_of, &distinct).unwrap()
}

#[test]
fn blip_itm_on_cuda_matches_transformers_within_the_fp16_rule() {
    if skip_without_gpu("blip_itm_on_cuda_matches_transformers_within_the_fp16_rule") {
        return;
    }
    let path = data_dir().join("goldens/blip/blip-itm-tiny.json");
    let g: Golden = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let images: Vec<&[f32]> = g.images.iter().map(|i| i.pixel_values.as_slice()).collect();
    let gpu = Reranker::load(
        model_dir("blip-itm-tiny"),
        Device::Cuda(0),
        &LoadOptions::default(),
    )
    .unwrap_or_else(|e| panic!("blip-itm-tiny on cuda: {e}"));
    let raw = Options {
        raw_scores: true,
        ..Options::default()
    };
    let (mut worst, mut worst_emu) = (0f32, 0f32);
    for q in &g.queries {
        let (logits, _) = gpu.score_images(&q.query, &images, None).unwrap();
        let emu = emulated(&images, &q.query);
        let emu_err = max_diff(&emu, &q.logits);
        // The emulation is fp16-sized: off from transformers, but not wildly.
        assert!(
            emu_err > 0.0 && emu_err < 0.1,
            "{:?}: emulation off by {emu_err}",
            q.query
        );
        let mut err = 0f32;
        let mut bound = 0f32;
        for (i, (&got, &want)) in logits.iter().zip(&q.logits).enumerate() {
            let b = (LOGIT_ATOL * want.abs().max(1.0)).max(2.0 * emu_err);
            let e = (got - want).abs();
            assert!(
                e <= b,
                "{:?} image {i}: |gpu - transformers| {e:.3e} > bound {b:.3e} (logit {want}, emulation's max error {emu_err:.3e})",
                q.query
            );
            err = err.max(e);
            bound = bound.max(b);
        }
        worst = worst.max(err);
        worst_emu = worst_emu.max(emu_err);
        let ranked = gpu.rerank_pixels(&q.query, &images, &raw).unwrap();
        for (a, b) in ranked.iter().zip(ranked.iter().skip(1)) {
            let (la, lb) = (q.logits[a.index], q.logits[b.index]);
            assert!(
                la >= lb - 2.0 * bound,
                "{:?}: order {la} before {lb}",
                q.query
            );
        }
        for (i, im) in images.iter().enumerate() {
            let (alone, _) = gpu.score_images(&q.query, &[im], None).unwrap();
            assert!(
                (alone[0] - logits[i]).abs() <= 1e-3,
                "{:?} image {i}: alone {} vs batched {}",
                q.query,
                alone[0],
                logits[i]
            );
        }
    }
    println!(
        "blip-itm-tiny on {}: max |gpu - transformers| {worst:.2e}, fp16 emulation {worst_emu:.2e}",
        gpu.device_name()
    );
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// The image-feature cache on the device: a model with room for two images against one with
/// none, through a sequence that hits, misses and evicts (least recently used first), and
/// pairs of several queries sharing an image in one forward; every logit bit-identical, the
/// counters exact. The cache's rows move by device-to-device copies the software GPU checks.
#[test]
fn the_image_cache_on_cuda_changes_no_bit() {
    use crossrank::backend::cuda::CudaBackend;
    use crossrank::models::blip::{self, Image, ImageKey};
    if skip_without_gpu("the_image_cache_on_cuda_changes_no_bit") {
        return;
    }
    let path = data_dir().join("goldens/blip/blip-itm-tiny.json");
    let g: Golden = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let dir = model_dir("blip-itm-tiny");
    let cfg = crossrank::config::ModelConfig::from_file(&dir.join("config.json")).unwrap();
    let ckpt = crossrank::weights::Checkpoint::open(&dir).unwrap();
    let v = cfg.blip.clone().unwrap();
    let entry = v.rows_per_image() * v.hidden_size * 2;
    let model = |bytes: usize| {
        let backend = CudaBackend::<half::f16>::open(0).unwrap();
        blip::Model::new(
            backend,
            cfg.clone(),
            blip::load(&ckpt, &cfg).unwrap(),
            512,
            4,
            bytes,
        )
        .unwrap()
    };
    let (off, on) = (model(0), model(2 * entry));
    let r = Reranker::load(&dir, Device::Cpu, &LoadOptions::default()).unwrap();
    let queries: Vec<_> = g
        .queries
        .iter()
        .take(2)
        .map(|q| r.tokenizer().encode_single(&q.query, 512).unwrap())
        .collect();
    // The forward's images, each pair's (query, image), then (hits, misses, evictions).
    type Step<'a> = (&'a [usize], &'a [(usize, usize)], (u64, u64, u64));
    let steps: &[Step] = &[
        (&[0, 1], &[(0, 0), (1, 0), (0, 1)], (0, 2, 0)),
        (&[1, 2], &[(1, 1), (0, 0)], (1, 3, 1)),
        (&[1], &[(0, 0), (1, 0)], (2, 3, 1)),
        (&[0, 3], &[(0, 1), (1, 0), (1, 1)], (2, 5, 3)),
    ];
    for (k, &(which, pairs, (hits, misses, evictions))) in steps.iter().enumerate() {
        let imgs: Vec<Image<'_>> = which
            .iter()
            .map(|&i| {
                let pixels = g.images[i].pixel_values.as_slice();
                Image {
                    key: ImageKey::of(pixels),
                    pixels,
                }
            })
            .collect();
        let batch =
            crossrank::batch::PackedBatch::pack(pairs.iter().map(|&(q, _)| &queries[q]), &cfg);
        let image_of: Vec<u32> = pairs.iter().map(|&(_, i)| i as u32).collect();
        let want = off.score(&batch, &image_of, &imgs).unwrap();
        let got = on.score(&batch, &image_of, &imgs).unwrap();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&got), bits(&want), "step {k}");
        let s = on.cache_stats();
        assert_eq!(
            (s.hits, s.misses, s.evictions, s.entries),
            (hits, misses, evictions, 2),
            "step {k}: {s:?}"
        );
        // Each pair read its own image: transformers' logit within 0.1 (the fp16 forward's
        // largest error above is 2.9e-2; these queries' logits of images 0-3 are 1.1 apart or
        // more, so another image's rows would be caught).
        for (j, &(q, i)) in pairs.iter().enumerate() {
            let gold = g.queries[q].logits[which[i]];
            assert!(
                (got[j] - gold).abs() <= 0.1,
                "step {k} pair {j}: {} vs transformers {gold}",
                got[j]
            );
        }
    }
}
