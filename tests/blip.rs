//! BLIP image-text matching parity: query ids and ITM logits against transformers (float32,
//! eager) on the committed tiny model made by scripts/make_blip_goldens.py, fed transformers'
//! own pixel_values; and the family's refusals.
//!
//! Tolerance rule: the bound, |logit - transformers| <= 1e-4 (the same math in f32 on
//! both sides, summed in another order; the ITM head folded to one row, z[1] - z[0], where
//! transformers subtracts the two logits). Ranking equal wherever golden logits differ by more
//! than twice that.

mod common;

use common::*;
use crossrank::engine::Options;
use crossrank::{Device, LoadOptions, Reranker};
use serde::Deserialize;

const LOGIT_ATOL: f32 = 1e-4;

#[derive(Deserialize)]
struct Image {
    file: String,
    pixel_values: Vec<f32>,
}

#[derive(Deserialize)]
struct Query {
    query: String,
    input_ids: Vec<u32>,
    logits: Vec<f32>,
}

#[derive(Deserialize)]
struct Golden {
    image_size: usize,
    images: Vec<Image>,
    queries: Vec<Query>,
}

fn golden() -> Golden {
    let path = data_dir().join("goldens/blip/blip-itm-tiny.json");
    let text = std::fs::read_to_string(&path).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn load() -> Reranker {
    Reranker::load(
        model_dir("blip-itm-tiny"),
        Device::Cpu,
        &LoadOptions::default(),
    )
    .unwrap_or_else(|e| panic!("blip-itm-tiny: {e}"))
}

#[test]
fn logits_match_transformers_on_its_own_pixel_values() {
    let g = golden();
    let r = load();
    assert_eq!(r.vision_config().unwrap().image_size, g.image_size);
    let images: Vec<&[f32]> = g.images.iter().map(|i| i.pixel_values.as_slice()).collect();
    let raw = Options {
        raw_scores: true,
        ..Options::default()
    };
    let mut worst = 0f32;
    for q in &g.queries {
        let pair = r.tokenizer().encode_single(&q.query, 512).unwrap();
        assert_eq!(pair.ids, q.input_ids, "{}: ids", q.query);
        let ranked = r.rerank_pixels(&q.query, &images, &raw).unwrap();
        assert_eq!(ranked.len(), images.len());
        for res in &ranked {
            let want = q.logits[res.index];
            let diff = (res.score - want).abs();
            worst = worst.max(diff);
            assert!(
                diff <= LOGIT_ATOL,
                "{:?} vs {}: logit {} vs transformers {want} (|diff| {diff:e})",
                q.query,
                g.images[res.index].file,
                res.score
            );
        }
        for (a, b) in ranked.iter().zip(ranked.iter().skip(1)) {
            let (la, lb) = (q.logits[a.index], q.logits[b.index]);
            assert!(la >= lb - 2.0 * LOGIT_ATOL, "{:?}: order", q.query);
        }
        // One image at a time gives the batch's logits: each pair reads its own image only.
        for (i, im) in images.iter().enumerate() {
            let (alone, _) = r.score_images(&q.query, &[im], None).unwrap();
            let batched = ranked.iter().find(|x| x.index == i).unwrap().score;
            assert!(
                (alone[0] - batched).abs() <= 1e-5,
                "{:?} image {i}: alone {} vs batched {batched}",
                q.query,
                alone[0]
            );
        }
    }
    eprintln!("blip-itm-tiny: max |logit - transformers| = {worst:e}");
}

#[test]
fn an_image_model_refuses_text_and_a_text_model_refuses_images() {
    let r = load();
    let e = r
        .rerank("a cat", &["some text"], &Options::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("image-text model") && e.contains("must be an image"),
        "{e}"
    );
    let text = Reranker::load(model_dir("bert-f32"), Device::Cpu, &LoadOptions::default()).unwrap();
    let px = vec![0f32; 3 * 32 * 32];
    let e = text
        .rerank_pixels("a cat", &[&px], &Options::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("text model") && e.contains("cannot score image"),
        "{e}"
    );
    // A wrong-sized image is an error naming it, not a panic.
    let small = vec![0f32; 10];
    let e = r
        .rerank_pixels("a cat", &[&px, &small], &Options::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("image 1"), "{e}");
}

#[test]
fn cuda_is_refused_in_one_line() {
    match Reranker::load(
        model_dir("blip-itm-tiny"),
        Device::Cuda(0),
        &LoadOptions::default(),
    ) {
        Ok(_) => panic!("BLIP on CUDA should be refused"),
        Err(e) => {
            let e = e.to_string();
            assert!(e.contains("CPU only") && !e.contains('\n'), "{e}");
        }
    }
}

/// Through the binary: text documents for an image model are one line on stderr, exit 1.
#[test]
fn the_cli_refuses_text_documents_for_an_image_model() {
    let model = model_dir("blip-itm-tiny");
    let docs = data_dir().join("demo-docs.txt");
    let out = crossrank(&[
        "rerank",
        "--model",
        model.to_str().unwrap(),
        "--query",
        "a cat",
        "--docs",
        docs.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error: ") && err.contains("must be an image"),
        "{err}"
    );
}
