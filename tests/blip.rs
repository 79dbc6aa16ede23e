//! BLIP image-text matching parity: query ids and ITM logits against transformers (float32,
//! eager) on the committed tiny model made by scripts/make_blip_goldens.py, fed transformers'
//! own pixel_values, then through our own decoder and resize (src/pixels.rs) against the
//! processor's 8-bit images; and the family's refusals.
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
    /// The processor's 8-bit RGB image after conversion and resize (HWC).
    resized: Vec<u8>,
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

/// BLIP runs on CUDA (tests/cuda_blip.rs holds its parity); without the `cuda` feature or a
/// device, asking for it is a one-line error, never a panic.
#[test]
fn cuda_without_a_device_is_one_line() {
    match Reranker::load(
        model_dir("blip-itm-tiny"),
        Device::Cuda(0),
        &LoadOptions::default(),
    ) {
        Ok(r) => println!("blip-itm-tiny loaded on {}", r.device_name()),
        Err(e) => {
            let e = e.to_string();
            assert!(
                e.to_lowercase().contains("cuda") && !e.contains('\n'),
                "{e}"
            );
        }
    }
}

/// Through the binary: text documents for an image model are one line on stderr, exit 1.
#[test]
fn the_cli_refuses_text_documents_for_an_image_model() {
    let out = rerank_cli(&data_dir().join("demo-docs.txt"), "a cat", &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error: ") && err.contains("must be an image"),
        "{err}"
    );
}

/// Our decoder and resize against the processor's 8-bit image, level for level, and the float
/// steps from that image against its pixel_values, bit for bit.
///
/// Rule: the lossless images (PNG, lossless WebP) decode to the very samples PIL reads, so
/// conversion and resize must match exactly (max level difference 0). The JPEG decodes through
/// zune-jpeg, not libjpeg-turbo: its IDCT may round a sample differently, so the JPEG's bound
/// is the measured one, JPEG_LEVELS (see README.md).
#[test]
fn decode_and_resize_match_the_processor() {
    let g = golden();
    let r = load();
    let p = r.image_processor().expect("an image model has a processor");
    // The processor resizes to the vision tower's square: what check_levels resizes to.
    assert_eq!((p.width, p.height), (g.image_size, g.image_size));
    for im in &g.images {
        let bound = if im.file.ends_with(".jpg") {
            (JPEG_LEVELS, JPEG_SAMPLES)
        } else {
            (0, 0)
        };
        let path = data_dir().join("images").join(&im.file);
        check_levels(&path, &im.resized, g.image_size, bound);
        // The float steps alone: the processor's own 8-bit image to its pixel_values.
        let golden_rgb = crossrank::pixels::Rgb8 {
            width: g.image_size,
            height: g.image_size,
            data: im.resized.clone(),
        };
        let pv = p.normalize(&golden_rgb);
        assert_eq!(pv.len(), im.pixel_values.len());
        for (i, (a, b)) in pv.iter().zip(&im.pixel_values).enumerate() {
            assert_eq!(
                a.to_bits(),
                b.to_bits(),
                "{} value {i}: {a} vs {b}",
                im.file
            );
        }
    }
}

/// The largest |a - b| over 8-bit samples, and how many differ.
fn level_diff(a: &[u8], b: &[u8]) -> (u8, usize) {
    let d = a.iter().zip(b).map(|(&x, &y)| x.abs_diff(y));
    (d.clone().max().unwrap_or(0), d.filter(|&x| x > 0).count())
}

/// The JPEG's measured bounds (zune-jpeg against libjpeg-turbo, see above): samples of the
/// resized image off by at most JPEG_LEVELS, at most JPEG_SAMPLES of them. The decoded 48x48
/// image itself differs from PIL's by 1 level in 27 of its 2304 pixels.
const JPEG_LEVELS: u8 = 1;
const JPEG_SAMPLES: usize = 39;

/// Logits with our decoder and resize against transformers' logits with its own processor.
///
/// Rule: where our 8-bit image equals the processor's (every lossless image), the pixel values
/// are bit-identical and the bound is the forward's own, LOGIT_ATOL. For the JPEG, whose
/// resized image differs in `n` samples by at most `levels` (within the measured bounds
/// above), the bound is what such a difference can do to this model: twice the largest
/// logit shift over PERTURBATIONS seeded perturbations of the processor's own image, each
/// moving `n` random samples by ±`levels`, and at least LOGIT_ATOL. Ranking equal wherever
/// two golden logits differ by more than the sum of their bounds.
#[test]
fn logits_through_our_decoder_match_transformers() {
    let g = golden();
    let r = load();
    let p = r.image_processor().unwrap();
    let limits = crossrank::pixels::ImageLimits::default();
    let files: Vec<Vec<u8>> = g
        .images
        .iter()
        .map(|im| std::fs::read(data_dir().join("images").join(&im.file)).unwrap())
        .collect();
    let bytes: Vec<&[u8]> = files.iter().map(Vec::as_slice).collect();
    let diffs: Vec<(u8, usize)> = g
        .images
        .iter()
        .zip(&bytes)
        .map(|(im, b)| {
            let ours = p.resized(&crossrank::pixels::decode(b, &limits).unwrap());
            level_diff(&ours.data, &im.resized)
        })
        .collect();
    let raw = Options {
        raw_scores: true,
        ..Options::default()
    };
    let mut worst = 0f32;
    for q in &g.queries {
        let bounds: Vec<f32> = g
            .images
            .iter()
            .zip(&diffs)
            .enumerate()
            .map(|(i, (im, &(levels, n)))| {
                // Only the JPEG may differ (the test above); a lossless image that differs is
                // held to the forward's own bound, and fails.
                if n == 0 || !im.file.ends_with(".jpg") {
                    return LOGIT_ATOL;
                }
                let (levels, n) = (levels.min(JPEG_LEVELS), n.min(JPEG_SAMPLES));
                let b = perturbation_bound(&r, &q.query, &im.resized, q.logits[i], n, levels);
                eprintln!(
                    "{:?} vs {}: {n} samples off by <= {levels}: bound {b:e}",
                    q.query, im.file
                );
                b.max(LOGIT_ATOL)
            })
            .collect();
        let ranked = r.rerank_images(&q.query, &bytes, &limits, &raw).unwrap();
        assert_eq!(ranked.len(), bytes.len());
        for res in &ranked {
            let want = q.logits[res.index];
            let diff = (res.score - want).abs();
            if diffs[res.index].1 == 0 {
                worst = worst.max(diff);
            } else {
                eprintln!(
                    "{:?} vs {}: |logit - transformers| = {diff:e}",
                    q.query, g.images[res.index].file
                );
            }
            assert!(
                diff <= bounds[res.index],
                "{:?} vs {}: logit {} vs transformers {want} (|diff| {diff:e}, bound {:e})",
                q.query,
                g.images[res.index].file,
                res.score,
                bounds[res.index]
            );
        }
        for (a, b) in ranked.iter().zip(ranked.iter().skip(1)) {
            let (la, lb) = (q.logits[a.index], q.logits[b.index]);
            assert!(
                la >= lb - (bounds[a.index] + bounds[b.index]),
                "{:?}: order",
                q.query
            );
        }
    }
    eprintln!(
        "blip-itm-tiny through our decoder, exact images: max |logit - transformers| = {worst:e}"
    );
}

const PERTURBATIONS: u64 = 16;

/// Twice the largest |logit shift| when `n` seeded random samples of the processor's own 8-bit
/// image move by ±`levels` (clipped to 0..=255), over PERTURBATIONS draws.
fn perturbation_bound(
    r: &Reranker,
    query: &str,
    resized: &[u8],
    golden_logit: f32,
    n: usize,
    levels: u8,
) -> f32 {
    let p = r.image_processor().unwrap();
    let side = r.vision_config().unwrap().image_size;
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        // SplitMix64: a seeded stream, no dependency.
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let images: Vec<Vec<f32>> = (0..PERTURBATIONS)
        .map(|_| {
            let mut data = resized.to_vec();
            for _ in 0..n {
                let i = (next() % data.len() as u64) as usize;
                data[i] = if next() & 1 == 0 {
                    data[i].saturating_add(levels)
                } else {
                    data[i].saturating_sub(levels)
                };
            }
            p.normalize(&crossrank::pixels::Rgb8 {
                width: side,
                height: side,
                data,
            })
        })
        .collect();
    let refs: Vec<&[f32]> = images.iter().map(Vec::as_slice).collect();
    let (logits, _) = r.score_images(query, &refs, None).unwrap();
    2.0 * logits
        .iter()
        .map(|l| (l - golden_logit).abs())
        .fold(0f32, f32::max)
}

/// Through the binary: a .jsonl of image documents, two by path (relative to the file's
/// folder) and one as a data: URI, scores as the library scores the same bytes (the same
/// forwards, so the same logits to the last bit); a remote URL is refused in one line.
#[test]
fn the_cli_reranks_image_paths_and_data_uris_like_the_library() {
    use base64::Engine;
    let dir = scratch_dir("blip-cli-images");
    std::fs::create_dir_all(dir.join("pics")).unwrap();
    let read = |f: &str| std::fs::read(data_dir().join("images").join(f)).unwrap();
    let files = ["alpha.png", "photo.webp", "gray.jpg"];
    let bytes: Vec<Vec<u8>> = files.iter().map(|f| read(f)).collect();
    std::fs::write(dir.join("pics/alpha.png"), &bytes[0]).unwrap();
    std::fs::write(dir.join("photo.webp"), &bytes[1]).unwrap();
    let uri = format!(
        "data:image/jpeg;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(&bytes[2])
    );
    let docs = dir.join("docs.jsonl");
    let lines = [
        serde_json::json!({ "image": "pics/alpha.png" }),
        serde_json::json!({ "image": "photo.webp" }),
        serde_json::json!({ "image": uri }),
    ];
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&docs, text).unwrap();
    let out = rerank_cli(&docs, "a photo of a cat", &["--raw-scores"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let got: Vec<(usize, f32)> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["index"].as_u64().unwrap() as usize,
                r["score"].as_f64().unwrap() as f32,
            )
        })
        .collect();
    let r = load();
    let refs: Vec<&[u8]> = bytes.iter().map(Vec::as_slice).collect();
    let raw = Options {
        raw_scores: true,
        ..Options::default()
    };
    let limits = crossrank::pixels::ImageLimits::default();
    let want: Vec<(usize, f32)> = r
        .rerank_images("a photo of a cat", &refs, &limits, &raw)
        .unwrap()
        .iter()
        .map(|x| (x.index, x.score))
        .collect();
    assert_eq!(got, want);
    std::fs::write(&docs, "{\"image\": \"https://example.com/cat.png\"}\n").unwrap();
    let out = rerank_cli(&docs, "a cat", &[]);
    assert_refused(&out, &["line 1", "remote URLs are not fetched"]);
}

/// `crossrank rerank` with the tiny BLIP model on `docs`, plus `extra` flags.
fn rerank_cli(docs: &std::path::Path, query: &str, extra: &[&str]) -> std::process::Output {
    let model = model_dir("blip-itm-tiny");
    let mut args = vec![
        "rerank",
        "--model",
        model.to_str().unwrap(),
        "--query",
        query,
        "--docs",
        docs.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    crossrank(&args)
}

#[derive(Deserialize)]
struct DecodeCheck {
    file: String,
    resized: Vec<u8>,
}

#[derive(Deserialize)]
struct DecodeGolden {
    image_size: usize,
    images: Vec<DecodeCheck>,
}

/// More encodings (tests/data/images/decode, from scripts/make_blip_goldens.py) through our
/// decoder, RGB conversion and resize against the processor's 8-bit images.
///
/// Rule: lossless images and lossy WebP (image-webp decodes VP8 as libwebp does, measured
/// exact) must match exactly. A JPEG goes through zune-jpeg, not libjpeg-turbo, so its bound is
/// the measured one (levels, samples of 3072): 4:4:4 differs by the IDCT's rounding alone; the
/// 4:2:0 JPEG (PIL's default subsampling) also by the chroma upsampling.
#[test]
fn other_encodings_decode_as_pil_reads_them() {
    let path = data_dir().join("goldens/blip/decode.json");
    let g: DecodeGolden = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let bounds = |file: &str| match file {
        "color420.jpg" => (JPEG_420_LEVELS, JPEG_420_SAMPLES),
        "color444.jpg" => (JPEG_444_LEVELS, JPEG_444_SAMPLES),
        _ => (0, 0),
    };
    assert_eq!(g.images.len(), 8);
    for im in &g.images {
        let path = data_dir().join("images/decode").join(&im.file);
        check_levels(&path, &im.resized, g.image_size, bounds(&im.file));
    }
}

/// Decodes `path` and resizes it to `side` square as the processor does, compares it with the
/// processor's `resized` and holds it to (levels, samples): at most that many samples off by
/// at most that many levels. Returns our 8-bit image.
fn check_levels(
    path: &std::path::Path,
    resized: &[u8],
    side: usize,
    (levels, samples): (u8, usize),
) -> Vec<u8> {
    let file = path.file_name().unwrap().to_string_lossy();
    let bytes = std::fs::read(path).unwrap();
    let limits = crossrank::pixels::ImageLimits::default();
    let rgb = crossrank::pixels::decode(&bytes, &limits).unwrap();
    let ours = crossrank::pixels::resize_bicubic(&rgb, side, side);
    assert_eq!(ours.data.len(), resized.len(), "{file}");
    let (worst, differ) = level_diff(&ours.data, resized);
    eprintln!(
        "{file}: max level difference {worst}, {differ} of {} samples differ",
        resized.len()
    );
    assert!(
        worst <= levels && differ <= samples,
        "{file}: {worst} levels in {differ} samples (bound {levels} in {samples})"
    );
    ours.data
}

/// Measured (2026-12-01, zune-jpeg 0.5.15 against PIL 13's libjpeg-turbo): the 32x32 resized
/// image of the 4:4:4 JPEG is 1 level off in 118 samples, of the 4:2:0 one 2 levels off in 1178.
const JPEG_444_LEVELS: u8 = 1;
const JPEG_444_SAMPLES: usize = 118;
const JPEG_420_LEVELS: u8 = 2;
const JPEG_420_SAMPLES: usize = 1178;

/// Logits of every (query, image) pair of the golden set as one call, and the cache's
/// counters after it.
fn all_pairs(r: &Reranker, g: &Golden, images: &[&[f32]]) -> Vec<f32> {
    let queries: Vec<&str> = g.queries.iter().map(|q| q.query.as_str()).collect();
    let pairs: Vec<(usize, usize)> = (0..queries.len())
        .flat_map(|q| (0..images.len()).map(move |i| (q, i)))
        .collect();
    r.score_image_pairs(&queries, &pairs, images, None)
        .unwrap()
        .0
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// The image-feature cache changes no bit: every query against every image (each image shared
/// by all queries in a forward), cache off, then cold and warm with it on; hits and misses
/// count distinct images, a repeated image within a call is one. The scores are transformers'
/// too (the 1e-4), so pairs sharing an image's keys and values read the right one.
#[test]
fn the_image_cache_and_shared_images_change_no_score() {
    let g = golden();
    let images: Vec<&[f32]> = g.images.iter().map(|i| i.pixel_values.as_slice()).collect();
    let n = images.len();
    let off = Reranker::load(
        model_dir("blip-itm-tiny"),
        Device::Cpu,
        &LoadOptions {
            image_cache_mib: 0,
            ..LoadOptions::default()
        },
    )
    .unwrap();
    let on = load();
    let want = all_pairs(&off, &g, &images);
    for (k, q) in g.queries.iter().enumerate() {
        for (i, &w) in q.logits.iter().enumerate() {
            let got = want[k * n + i];
            assert!(
                (got - w).abs() <= LOGIT_ATOL,
                "{:?} image {i}: {got} vs transformers {w}",
                q.query
            );
        }
    }
    assert_eq!(
        off.image_cache_stats().unwrap().entries,
        0,
        "a cache of 0 MiB holds nothing"
    );
    let stats = on.image_cache_stats().unwrap();
    assert_eq!(
        (stats.hits, stats.misses, stats.entries),
        (0, 0, 0),
        "warm-up left {stats:?}"
    );
    assert_eq!(stats.capacity_bytes, 256 << 20);
    let cold = all_pairs(&on, &g, &images);
    assert_eq!(bits(&cold), bits(&want), "cache cold");
    let s = on.image_cache_stats().unwrap();
    assert_eq!((s.hits, s.misses, s.entries), (0, n as u64, n), "{s:?}");
    let warm = all_pairs(&on, &g, &images);
    assert_eq!(bits(&warm), bits(&want), "cache warm");
    let s = on.image_cache_stats().unwrap();
    assert_eq!(
        (s.hits, s.misses, s.evictions),
        (n as u64, n as u64, 0),
        "{s:?}"
    );
    let v = on.vision_config().unwrap();
    assert_eq!(
        s.bytes,
        n * v.rows_per_image() * v.hidden_size * 4,
        "f32 rows"
    );
    // The same image twice in one call runs once, and both pairs get its score.
    on.clear_image_cache();
    let twice = [images[0], images[1], images[0]];
    let (logits, _) = on.score_images(&g.queries[0].query, &twice, None).unwrap();
    assert_eq!(logits[0].to_bits(), logits[2].to_bits());
    assert_eq!(logits[0].to_bits(), want[0].to_bits());
    let s = on.image_cache_stats().unwrap();
    assert_eq!((s.hits, s.misses, s.entries), (0, 2, 2), "{s:?}");
}

/// Under a budget of three images, least recently used out first: a hit refreshes an entry, so
/// the next miss evicts the oldest other one; a forward with more new images than the budget
/// caches what fits and keeps its own entries. Scores stay the cache-off model's, bit for bit.
#[test]
fn eviction_under_a_small_budget_keeps_scores_right() {
    use crossrank::backend::cpu::CpuBackend;
    use crossrank::models::blip::{self, CacheStats, Image, ImageKey, ImageScorer};
    let g = golden();
    let dir = model_dir("blip-itm-tiny");
    let cfg = crossrank::config::ModelConfig::from_file(&dir.join("config.json")).unwrap();
    let ckpt = crossrank::weights::Checkpoint::open(&dir).unwrap();
    let v = cfg.blip.clone().unwrap();
    let entry = v.rows_per_image() * v.hidden_size * 4;
    let model = |bytes: usize| {
        blip::Model::new(
            CpuBackend,
            cfg.clone(),
            blip::load(&ckpt, &cfg).unwrap(),
            512,
            4,
            bytes,
        )
        .unwrap()
    };
    let (off, on) = (model(0), model(3 * entry + entry / 2));
    let r = load();
    let pair = r
        .tokenizer()
        .encode_single(&g.queries[1].query, 512)
        .unwrap();
    // Eight distinct images: the golden ones, then their pixels reversed.
    let mut pixels: Vec<Vec<f32>> = g.images.iter().map(|i| i.pixel_values.clone()).collect();
    while pixels.len() < 8 {
        let flipped: Vec<f32> = pixels[pixels.len() - 4].iter().rev().copied().collect();
        pixels.push(flipped);
    }
    let score = |m: &blip::Model<CpuBackend>, which: &[usize]| -> Vec<u32> {
        let imgs: Vec<Image<'_>> = which
            .iter()
            .map(|&i| Image {
                key: ImageKey::of(&pixels[i]),
                pixels: &pixels[i],
            })
            .collect();
        let batch =
            crossrank::batch::PackedBatch::pack(std::iter::repeat_n(&pair, which.len()), &cfg);
        let image_of: Vec<u32> = (0..which.len() as u32).collect();
        bits(&m.score(&batch, &image_of, &imgs).unwrap())
    };
    let stats = |hits, misses, evictions, entries| CacheStats {
        hits,
        misses,
        evictions,
        entries,
        bytes: entries * entry,
        capacity_bytes: 3 * entry + entry / 2,
    };
    // Recency after each step in the comments, oldest first.
    let steps: &[(&[usize], CacheStats)] = &[
        (&[0, 1], stats(0, 2, 0, 2)), // 0 1
        (&[2], stats(0, 3, 0, 3)),    // 0 1 2
        (&[0], stats(1, 3, 0, 3)),    // 1 2 0: a hit refreshes 0
        (&[3], stats(1, 4, 1, 3)),    // 2 0 3: 1 out, not 0
        (&[1], stats(1, 5, 2, 3)),    // 0 3 1
        (&[0], stats(2, 5, 2, 3)),    // 3 1 0
        (&[2, 3], stats(3, 6, 3, 3)), // 0 {2 3}: 3 a hit, 2 a miss evicting 1
        // Four images new to the cache in one forward: three fit, each evicting an entry of
        // an earlier forward; the fourth finds only this forward's entries and is not cached.
        (&[4, 5, 6, 7], stats(3, 10, 6, 3)), // {4 5 6}
        (&[4, 5, 6], stats(6, 10, 6, 3)),
        (&[7], stats(6, 11, 7, 3)),
    ];
    for (k, (which, want)) in steps.iter().enumerate() {
        assert_eq!(score(&on, which), score(&off, which), "step {k}: {which:?}");
        assert_eq!(on.cache_stats(), *want, "step {k}: {which:?}");
    }
}

#[derive(Deserialize)]
struct ResizeCase {
    file: String,
    width: usize,
    height: usize,
    resized: Vec<u8>,
}

#[derive(Deserialize)]
struct ResizeGolden {
    pillow: String,
    cases: Vec<ResizeCase>,
}

/// PIL's bicubic resize, bit for bit, through the processor's own resize call (Pillow 13):
/// shapes that go horizontal pass first and shapes that go vertical first (the height shrinking
/// by more than twice the width's change), its boundary both ways, an upscaled width with a
/// shrunk height, and non-square outputs. Exact: 8-bit integer arithmetic on both sides.
#[test]
fn resize_matches_pil_in_both_pass_orders() {
    let path = data_dir().join("goldens/blip/resize.json");
    let g: ResizeGolden = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert!(
        g.pillow.starts_with("13."),
        "goldens from Pillow {}",
        g.pillow
    );
    let limits = crossrank::pixels::ImageLimits::default();
    let mut vertical_first = 0;
    for c in &g.cases {
        let bytes = std::fs::read(data_dir().join("images/resize").join(&c.file)).unwrap();
        let rgb = crossrank::pixels::decode(&bytes, &limits).unwrap();
        let (w, h) = (rgb.width as i64, rgb.height as i64);
        if (c.height as i64) < h && h - c.height as i64 > 2 * (w - c.width as i64) {
            vertical_first += 1;
        }
        let out = crossrank::pixels::resize_bicubic(&rgb, c.width, c.height);
        let (levels, samples) = level_diff(&out.data, &c.resized);
        assert_eq!(
            (levels, samples),
            (0, 0),
            "{} to {}x{}: {samples} samples off, up to {levels} levels",
            c.file,
            c.width,
            c.height
        );
    }
    assert_eq!(
        (g.cases.len(), vertical_first),
        (10, 5),
        "the cases cover both orders"
    );
}
