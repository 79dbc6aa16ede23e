//! The seeded image workload of `crossrank bench` for image-text models (BLIP): one query and
//! N candidate images per call.
//!
//! Images: a pool of `2 · max N` synthetic photographs-to-be, each from its own stream
//! `Rng::for_name(seed, "image/{i}")`: a smooth two-colour gradient at a random angle, a few
//! flat discs and rectangles, and ±12 levels of noise per sample (so that JPEG and the bicubic
//! resize have real work), at the sizes candidate images come in (640 x 480, 500 x 375,
//! 384 x 384, 480 x 640, 800 x 600, 333 x 500, 1024 x 768), every fifth grayscale, three in four
//! encoded as JPEG (quality 85) and the rest as PNG, by the `image` crate. Each call draws its N
//! images from the pool without repeats.
//!
//! Queries are the text workloads' (about 12 tokens). Each call has two: `query`, and
//! `repeat_query`, a second query over the same images: the fan-out case where several
//! sub-queries of one search score the same candidates, which is what an image-feature cache
//! is for (the bench's `cache-warm` rows time the second).
//!
//! Exported (`--export-workload W.json`) as JSON with the images as files in `W.images/`
//! beside it, so that the peers (scripts/peers.py) decode the very same bytes.

use std::path::{Path, PathBuf};

use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::PngEncoder;
use image::{ExtendedColorType, ImageEncoder};
use serde::{Deserialize, Serialize};

use super::Rng;
use crate::error::{Error, Result};

/// The sizes candidate images are drawn from (width, height).
const SIZES: [(usize, usize); 7] = [
    (640, 480),
    (500, 375),
    (384, 384),
    (480, 640),
    (800, 600),
    (333, 500),
    (1024, 768),
];

/// The JPEG quality of the encoded images.
const JPEG_QUALITY: u8 = 85;

/// One image of the pool, as exported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageFile {
    /// The file's name in the workload's image folder.
    pub file: String,
    pub width: usize,
    pub height: usize,
    pub grey: bool,
}

/// One call: two queries over the same N images (indices into the pool).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageCall {
    pub query: String,
    /// A second query over the same images (the `cache-warm` rows time it).
    pub repeat_query: String,
    pub images: Vec<usize>,
}

/// The calls of one candidate count N.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageCallSet {
    pub n: usize,
    pub calls: Vec<ImageCall>,
}

/// A whole image workload, as exported for the peers; `bytes` holds the encoded images.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageWorkload {
    /// Always `images`: what tells a peer this workload from a text one.
    pub kind: String,
    pub seed: u64,
    /// The report's `lengths` for this workload: `images`.
    pub lengths: String,
    /// The folder of the image files, relative to the JSON file.
    pub image_dir: String,
    pub images: Vec<ImageFile>,
    pub sets: Vec<ImageCallSet>,
    #[serde(skip)]
    pub bytes: Vec<Vec<u8>>,
}

/// The report's `lengths` of an image workload.
pub const LENGTHS: &str = "images";

impl ImageWorkload {
    /// `calls` distinct calls for each N in `candidates`; `count` gives a text's token count
    /// without special tokens (the queries' generator needs it).
    pub fn generate(
        seed: u64,
        candidates: &[usize],
        calls: usize,
        count: &dyn Fn(&str) -> Result<usize>,
    ) -> Result<Self> {
        let pool = 2 * candidates.iter().copied().max().unwrap_or(1);
        let mut images = Vec::with_capacity(pool);
        let mut bytes = Vec::with_capacity(pool);
        for i in 0..pool {
            let (file, encoded) = synthetic_image(seed, i)?;
            bytes.push(encoded);
            images.push(file);
        }
        let mut sets = Vec::with_capacity(candidates.len());
        for &n in candidates {
            let name = format!("{LENGTHS}/{n}");
            let queries = super::workload::queries(seed, &name, 2 * calls, count)?;
            let mut rng = Rng::for_name(seed, &format!("{name}/draw"));
            let calls = queries
                .chunks_exact(2)
                .map(|q| ImageCall {
                    query: q[0].clone(),
                    repeat_query: q[1].clone(),
                    images: draw_distinct(&mut rng, pool, n),
                })
                .collect();
            sets.push(ImageCallSet { n, calls });
        }
        Ok(ImageWorkload {
            kind: LENGTHS.into(),
            seed,
            lengths: LENGTHS.into(),
            image_dir: String::new(),
            images,
            sets,
            bytes,
        })
    }

    /// The encoded images of a call, in its order.
    pub fn call_bytes(&self, call: &ImageCall) -> Result<Vec<&[u8]>> {
        call.images
            .iter()
            .map(|&i| {
                self.bytes.get(i).map(Vec::as_slice).ok_or_else(|| {
                    Error::Internal(format!("image workload: no image {i} in the pool"))
                })
            })
            .collect()
    }

    /// Writes the workload to `path` as JSON and its images into `<path stem>.images/` beside
    /// it.
    pub fn export(&self, path: &Path) -> Result<()> {
        let stem = path
            .file_stem()
            .map_or_else(|| "workload".into(), |s| s.to_string_lossy().into_owned());
        let dir_name = format!("{stem}.images");
        let dir: PathBuf = path.with_file_name(&dir_name);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        for (f, b) in self.images.iter().zip(&self.bytes) {
            let p = dir.join(&f.file);
            std::fs::write(&p, b).map_err(|e| Error::io(&p, e))?;
        }
        let out = ImageWorkload {
            image_dir: dir_name,
            bytes: Vec::new(),
            ..self.clone()
        };
        let text = serde_json::to_string(&out).map_err(|e| Error::Internal(e.to_string()))?;
        std::fs::write(path, text).map_err(|e| Error::io(path, e))
    }
}

/// `n` distinct indices below `pool` (a partial Fisher-Yates shuffle); all of them, shuffled,
/// when `n >= pool`.
fn draw_distinct(rng: &mut Rng, pool: usize, n: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..pool).collect();
    let n = n.min(pool);
    for k in 0..n {
        let j = rng.range(k, pool - 1);
        idx.swap(k, j);
    }
    idx.truncate(n);
    idx
}

/// Image `i` of the pool: its description and its encoded bytes.
fn synthetic_image(seed: u64, i: usize) -> Result<(ImageFile, Vec<u8>)> {
    let mut rng = Rng::for_name(seed, &format!("image/{i}"));
    let (w, h) = SIZES[rng.range(0, SIZES.len() - 1)];
    let grey = i % 5 == 4;
    let png = i % 4 == 3;
    let rgb = draw(&mut rng, w, h);
    let (data, color) = if grey {
        // ITU-R 601 luma, as a grayscale photograph would have been made.
        let luma = rgb
            .chunks_exact(3)
            .map(|p| {
                let y = 0.299 * f64::from(p[0]) + 0.587 * f64::from(p[1]) + 0.114 * f64::from(p[2]);
                y.round().clamp(0.0, 255.0) as u8
            })
            .collect();
        (luma, ExtendedColorType::L8)
    } else {
        (rgb, ExtendedColorType::Rgb8)
    };
    let mut out = Vec::new();
    let (w32, h32) = (w as u32, h as u32);
    let written = if png {
        PngEncoder::new(&mut out).write_image(&data, w32, h32, color)
    } else {
        JpegEncoder::new_with_quality(&mut out, JPEG_QUALITY).write_image(&data, w32, h32, color)
    };
    written.map_err(|e| Error::Internal(format!("encoding synthetic image {i}: {e}")))?;
    let ext = if png { "png" } else { "jpg" };
    let file = ImageFile {
        file: format!("img-{i:04}.{ext}"),
        width: w,
        height: h,
        grey,
    };
    Ok((file, out))
}

/// A `w` x `h` RGB image (HWC): a gradient between two colours at a random angle, 2 to 6 flat
/// discs and rectangles, then ±12 levels of noise.
fn draw(rng: &mut Rng, w: usize, h: usize) -> Vec<u8> {
    let colour = |rng: &mut Rng| [rng.unit(), rng.unit(), rng.unit()].map(|u| 255.0 * u);
    let (c0, c1) = (colour(rng), colour(rng));
    let angle = 2.0 * std::f64::consts::PI * rng.unit();
    let (dx, dy) = (angle.cos(), angle.sin());
    let span = (w as f64 * dx.abs() + h as f64 * dy.abs()).max(1.0);
    let shapes: Vec<(bool, [f64; 4], [f64; 3])> = (0..rng.range(2, 6))
        .map(|_| {
            let disc = rng.unit() < 0.5;
            let (cx, cy) = (rng.unit() * w as f64, rng.unit() * h as f64);
            let (rx, ry) = (
                (0.05 + 0.2 * rng.unit()) * w as f64,
                (0.05 + 0.2 * rng.unit()) * h as f64,
            );
            (disc, [cx, cy, rx, ry], colour(rng))
        })
        .collect();
    let mut out = Vec::with_capacity(3 * w * h);
    for y in 0..h {
        for x in 0..w {
            let (fx, fy) = (x as f64, y as f64);
            let t = ((fx - w as f64 / 2.0) * dx + (fy - h as f64 / 2.0) * dy) / span + 0.5;
            let mut c: [f64; 3] = std::array::from_fn(|k| c0[k] + (c1[k] - c0[k]) * t);
            for (disc, [cx, cy, rx, ry], col) in &shapes {
                let (u, v) = ((fx - cx) / rx, (fy - cy) / ry);
                let inside = if *disc {
                    u * u + v * v <= 1.0
                } else {
                    u.abs() <= 1.0 && v.abs() <= 1.0
                };
                if inside {
                    c = *col;
                }
            }
            let noise = rng.next_u64();
            for (k, v) in c.iter().enumerate() {
                let n = ((noise >> (8 * k)) & 0xff) as f64 / 255.0 * 24.0 - 12.0;
                out.push((v + n).round().clamp(0.0, 255.0) as u8);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Result<usize> {
        Ok(s.split_whitespace().count().max(1))
    }

    #[test]
    fn the_workload_is_seeded_and_decodes() {
        let a = ImageWorkload::generate(3, &[2, 5], 2, &words).unwrap();
        let b = ImageWorkload::generate(3, &[2, 5], 2, &words).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, ImageWorkload::generate(4, &[2, 5], 2, &words).unwrap());
        assert_eq!(a.images.len(), 10);
        assert_eq!(a.sets.iter().map(|s| s.n).collect::<Vec<_>>(), vec![2, 5]);
        for set in &a.sets {
            for c in &set.calls {
                let mut seen = c.images.clone();
                seen.sort_unstable();
                seen.dedup();
                assert_eq!(seen.len(), set.n, "distinct images in a call");
                assert_ne!(c.query, c.repeat_query);
            }
        }
        let limits = crate::pixels::ImageLimits::default();
        for (f, bytes) in a.images.iter().zip(&a.bytes) {
            let rgb = crate::pixels::decode(bytes, &limits).unwrap();
            assert_eq!((rgb.width, rgb.height), (f.width, f.height), "{}", f.file);
            let grey = rgb
                .data
                .chunks_exact(3)
                .all(|p| p[0] == p[1] && p[1] == p[2]);
            assert_eq!(grey, f.grey, "{}", f.file);
            assert!(f.file.ends_with(if bytes.starts_with(b"\x89PNG") {
                ".png"
            } else {
                ".jpg"
            }));
        }
        assert!(a.images.iter().any(|f| f.grey) && a.images.iter().any(|f| !f.grey));
    }

    #[test]
    fn draws_are_distinct_and_bounded() {
        let mut rng = Rng::new(1);
        let d = draw_distinct(&mut rng, 10, 4);
        assert_eq!(d.len(), 4);
        assert!(d.iter().all(|&i| i < 10));
        let mut all = draw_distinct(&mut rng, 5, 9);
        all.sort_unstable();
        assert_eq!(all, vec![0, 1, 2, 3, 4]);
    }
}
