//! `crossrank serve --device cuda:0,cuda:1`: one copy of the model and one inference thread per
//! device, fed from one queue. On the software GPU this binary asks for two devices
//! (`CROSSRANK_SOFTGPU_DEVICES=2`, read once, at the first CUDA call, so this file holds one
//! test); on real hardware it needs two GPUs and says SKIPPED otherwise.
#![cfg(feature = "cuda")]

mod common;

use common::*;
use crossrank::serve::api::{self, Route};
use crossrank::serve::{ServeOptions, Served, Service};
use crossrank::Device;
use serde_json::json;

/// Scores one request of more pairs than a forward holds on `devices`; its logits by input
/// index and the /metrics text.
async fn score(devices: &str, query: &str, docs: &[String]) -> (Vec<f32>, String) {
    let mut opts = ServeOptions::new(model_dir("bert-f32"), Device::Cuda(0));
    opts.device = devices.parse().unwrap();
    opts.max_batch_tokens = 128;
    let service = Service::start(opts).unwrap();
    let body = json!({"query": query, "texts": docs, "raw_scores": true}).to_string();
    let call = api::parse_body(Route::Tei, body.as_bytes(), &service.limits).unwrap();
    let mut served = Served::default();
    let v = service.rerank(call, &mut served).await.unwrap();
    let mut logits = vec![f32::NAN; docs.len()];
    for r in v.as_array().unwrap() {
        logits[r["index"].as_u64().unwrap() as usize] = r["score"].as_f64().unwrap() as f32;
    }
    let text = service.render_metrics();
    service.drain();
    (logits, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gpus_share_one_queue_and_score_as_one_gpu() {
    // Before any CUDA call in this process (a real driver ignores it).
    std::env::set_var("CROSSRANK_SOFTGPU_DEVICES", "2");
    if skip_without_gpu("two_gpus_share_one_queue_and_score_as_one_gpu") {
        return;
    }
    let found = crossrank::engine::cuda_devices();
    if found.len() < 2 {
        println!(
            "two_gpus_share_one_queue_and_score_as_one_gpu: SKIPPED (one CUDA device: {found:?})"
        );
        return;
    }
    let gold = golden("bert-f32");
    let query = &gold.groups[0].query;
    let docs: Vec<String> = (0..3)
        .flat_map(|i| {
            gold.groups
                .iter()
                .flat_map(move |g| g.passages.iter().map(move |p| format!("{i} {p}")))
        })
        .collect();
    let (one, _) = score("cuda:0", query, &docs).await;
    let (two, text) = score("cuda:0,cuda:1", query, &docs).await;
    assert_eq!(one, two, "two devices must score exactly as one");
    assert!(one.iter().all(|x| x.is_finite()));
    let count = |device: &str| -> u64 {
        let prefix =
            format!("crossrank_device_forwards_total{{model=\"bert-f32\",device=\"{device}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    assert!(
        count("0") >= 1 && count("1") >= 1,
        "both devices must be used:\n{text}"
    );
    println!(
        "two_gpus_share_one_queue_and_score_as_one_gpu: ran on {found:?}; forwards per device: {} and {}",
        count("0"),
        count("1")
    );
    images_on_two_gpus().await;
}

/// An image-text model served on both devices: a /rerank/batch request of two queries over
/// shared images scores exactly as the library's call of the same pairs on one device, and the
/// image cache counts each image once.
async fn images_on_two_gpus() {
    use base64::Engine;
    let files = ["alpha.png", "wide.png", "tiny.png", "palette.png"];
    let bytes: Vec<Vec<u8>> = files
        .iter()
        .map(|f| std::fs::read(data_dir().join("images").join(f)).unwrap())
        .collect();
    let docs: Vec<serde_json::Value> = bytes
        .iter()
        .map(|b| {
            let b64 = base64::engine::general_purpose::STANDARD.encode(b);
            json!({ "image": format!("data:image/png;base64,{b64}") })
        })
        .collect();
    let mut opts = ServeOptions::new(model_dir("blip-itm-tiny"), Device::Cuda(0));
    opts.device = "cuda:0,cuda:1".parse().unwrap();
    let service = Service::start(opts).unwrap();
    let body = json!({ "raw_scores": true, "groups": [
        { "query": "a photo of a cat", "documents": docs },
        { "query": "red", "documents": docs[1..3] },
    ]})
    .to_string();
    let call = api::parse_body(Route::Batch, body.as_bytes(), &service.limits).unwrap();
    let mut served = Served::default();
    let v = service.rerank(call, &mut served).await.unwrap();
    let text = service.render_metrics();
    service.drain();
    let lib = crossrank::Reranker::load(
        model_dir("blip-itm-tiny"),
        Device::Cuda(0),
        &crossrank::LoadOptions::default(),
    )
    .unwrap();
    let raw: Vec<&[u8]> = bytes.iter().map(Vec::as_slice).collect();
    let px = lib
        .pixel_values(&raw, &crossrank::pixels::ImageLimits::default())
        .unwrap();
    let refs: Vec<&[f32]> = px.iter().map(Vec::as_slice).collect();
    let pairs = [(0, 0), (0, 1), (0, 2), (0, 3), (1, 1), (1, 2)];
    let (want, _) = lib
        .score_image_pairs(&["a photo of a cat", "red"], &pairs, &refs, None)
        .unwrap();
    for (g, range) in [(0, 0..4), (1, 4..6)] {
        let mut got = vec![f32::NAN; range.len()];
        for r in v["groups"][g]["results"].as_array().unwrap() {
            got[r["index"].as_u64().unwrap() as usize] =
                r["relevance_score"].as_f64().unwrap() as f32;
        }
        assert_eq!(got, want[range].to_vec(), "group {g}");
    }
    assert!(
        text.contains("crossrank_image_cache_misses_total{model=\"blip-itm-tiny\"} 4\n"),
        "{text}"
    );
}
