//! Image documents → the pixel values an image-text model reads, exactly as transformers'
//! `BlipImageProcessor` (its PIL backend) makes them. The data goes one way:
//!
//! encoded bytes → decode (PNG, JPEG, WebP: the `image` crate) → 8-bit RGB (transparency
//! composited onto opaque white with PIL's integer `alpha_composite`, grey replicated) →
//! resize to the configured size with PIL's bicubic (two separable passes in fixed point,
//! rounded to 8 bits between them) → `f32(u8 as f64 · rescale_factor)` →
//! `(x - mean) / std` in f32, channel-first.
//!
//! With the same 8-bit input the resize and both float steps reproduce transformers' values bit
//! for bit (tests/blip.rs checks the six committed images). Where the input differs, it is the
//! decoder's doing: a lossy JPEG or WebP decodes with another IDCT and colour conversion than
//! libjpeg-turbo and libwebp; see README.md for the bounds measured.
//!
//! Written from the behaviour of Pillow's `Resample.c` and `AlphaComposite.c` and transformers'
//! `convert_to_rgb`, `resize`, `rescale` and `normalize`; none of their code is copied.

use std::io::Cursor;
use std::path::Path;

use image::{DynamicImage, ImageFormat, ImageReader};

use crate::config::BlipVisionConfig;
use crate::error::{Error, Result};

/// Why one image was refused: over a limit (HTTP 413) or not a readable image (422).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Invalid(String),
}

impl From<ImageError> for Error {
    fn from(e: ImageError) -> Self {
        Error::input(e.to_string())
    }
}

/// What one image may cost before it is decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageLimits {
    /// The most encoded bytes.
    pub max_bytes: usize,
    /// The most pixels (width · height, from the header, before any decoding).
    pub max_pixels: u64,
}

impl Default for ImageLimits {
    /// 10 MiB encoded, 40 megapixels (160 MB as 8-bit RGBA while decoding).
    fn default() -> Self {
        ImageLimits {
            max_bytes: 10 * 1024 * 1024,
            max_pixels: 40_000_000,
        }
    }
}

/// An 8-bit RGB image, rows top to bottom, `[r, g, b]` per pixel (HWC).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rgb8 {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

/// Decodes a PNG, JPEG or WebP image (the format read from its first bytes) into 8-bit RGB
/// as transformers' `convert_to_rgb` makes it. The pixel count is checked against `limits`
/// from the header, before the pixels are decoded.
pub fn decode(bytes: &[u8], limits: &ImageLimits) -> std::result::Result<Rgb8, ImageError> {
    if bytes.len() > limits.max_bytes {
        return Err(too_many_bytes(bytes.len(), limits));
    }
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| ImageError::Invalid(format!("unreadable image: {e}")))?;
    match reader.format() {
        Some(ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::WebP) => {}
        Some(other) => {
            return Err(ImageError::Invalid(format!(
                "{other:?} images are not supported (PNG, JPEG and WebP are)"
            )))
        }
        None => {
            return Err(ImageError::Invalid(
                "not a PNG, JPEG or WebP image".to_string(),
            ))
        }
    }
    let decoder = reader
        .into_decoder()
        .map_err(|e| ImageError::Invalid(format!("corrupt image: {e}")))?;
    let (w, h) = image::ImageDecoder::dimensions(&decoder);
    let pixels = u64::from(w) * u64::from(h);
    if pixels > limits.max_pixels {
        return Err(ImageError::TooLarge(format!(
            "the image is {w}x{h} = {pixels} pixels, more than the limit of {} (--max-image-pixels)",
            limits.max_pixels
        )));
    }
    if pixels == 0 {
        return Err(ImageError::Invalid(format!("the image is {w}x{h}: empty")));
    }
    let image = DynamicImage::from_decoder(decoder)
        .map_err(|e| ImageError::Invalid(format!("corrupt image: {e}")))?;
    to_rgb(image)
}

/// The 413 of an image over `--max-image-bytes`.
pub fn too_many_bytes(n: usize, limits: &ImageLimits) -> ImageError {
    ImageError::TooLarge(format!(
        "the image is {n} bytes, more than the limit of {} (--max-image-bytes)",
        limits.max_bytes
    ))
}

/// Whether an image reference is a remote URL (`http://`, `https://`): never fetched, since a
/// server that fetches URLs for its clients is an open door into its network (SSRF).
pub fn is_remote_url(s: &str) -> bool {
    let lower = s.get(..8).unwrap_or(s).to_ascii_lowercase();
    lower.starts_with("http://") || lower.starts_with("https://")
}

/// What a remote URL gets.
pub const REMOTE_REFUSED: &str =
    "remote URLs are not fetched; send the image itself as a data:image/...;base64,... URI";

/// The bytes of a `data:[image/...][;...];base64,DATA` URI, checked against the byte limit
/// before and after decoding. `Ok(None)` if `s` is not a data URI at all.
pub fn data_uri(s: &str, limits: &ImageLimits) -> std::result::Result<Option<Vec<u8>>, ImageError> {
    let Some(rest) = s
        .get(..5)
        .filter(|p| p.eq_ignore_ascii_case("data:"))
        .map(|_| &s[5..])
    else {
        return Ok(None);
    };
    let Some((header, payload)) = rest.split_once(',') else {
        return Err(ImageError::Invalid(
            "a data: URI without a comma".to_string(),
        ));
    };
    let mut parts = header.split(';');
    let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
    if !(media.is_empty() || media.starts_with("image/")) {
        return Err(ImageError::Invalid(format!(
            "a data: URI of type {media:?}; an image document needs image/..."
        )));
    }
    if !parts.any(|p| p.trim().eq_ignore_ascii_case("base64")) {
        return Err(ImageError::Invalid(
            "a data: URI without ;base64 (only base64 image data is taken)".to_string(),
        ));
    }
    base64_bytes(payload, limits).map(Some)
}

/// Standard base64 (with padding) to bytes, refused before decoding if it must decode to more
/// than `--max-image-bytes`.
pub fn base64_bytes(
    payload: &str,
    limits: &ImageLimits,
) -> std::result::Result<Vec<u8>, ImageError> {
    use base64::Engine;
    let payload = payload.trim();
    // Four characters carry three bytes; padding takes at most two of them back.
    let at_least = (payload.len() / 4 * 3).saturating_sub(2);
    if at_least > limits.max_bytes {
        return Err(too_many_bytes(at_least, limits));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(payload)
        .map_err(|e| ImageError::Invalid(format!("invalid base64: {e}")))?;
    if bytes.len() > limits.max_bytes {
        return Err(too_many_bytes(bytes.len(), limits));
    }
    Ok(bytes)
}

/// PIL's `alpha_composite` of one pixel over opaque white, then its RGB: the integer formula
/// with 7 extra bits of precision and division by 255 as `((x >> 8) + x) >> 8`. Over an opaque
/// background the output alpha is 255·255, so the weights are exactly `a·128` and `(255-a)·128`.
fn over_white(v: u8, a: u8) -> u8 {
    if a == 0 {
        return 255;
    }
    const BITS: u32 = 7;
    let (v, a) = (u32::from(v), u32::from(a));
    let out_a = a * 255 + 255 * (255 - a);
    let coef1 = a * 255 * 255 * (1 << BITS) / out_a;
    let coef2 = 255 * (1 << BITS) - coef1;
    let t = v * coef1 + 255 * coef2 + (0x80 << BITS);
    ((((t >> 8) + t) >> 8) >> BITS) as u8
}

/// transformers' `convert_to_rgb` on a decoded image: anything with an alpha channel (PNG
/// palette and colour-key transparency arrive as one, the decoder expands tRNS) is composited
/// onto white; grey is replicated. 16-bit samples become 8 as PIL reads them: the high byte of
/// colour and grey+alpha PNGs, grey alone clipped at 255 (PIL's "I;16" to RGB).
fn to_rgb(image: DynamicImage) -> std::result::Result<Rgb8, ImageError> {
    let (width, height) = (image.width() as usize, image.height() as usize);
    let mut data = Vec::with_capacity(width * height * 3);
    let mut push_rgba = |r: u8, g: u8, b: u8, a: u8| {
        data.extend_from_slice(&[over_white(r, a), over_white(g, a), over_white(b, a)]);
    };
    match image {
        DynamicImage::ImageRgb8(im) => {
            return Ok(Rgb8 {
                width,
                height,
                data: im.into_raw(),
            })
        }
        DynamicImage::ImageLuma8(im) => {
            return Ok(Rgb8 {
                width,
                height,
                data: im.into_raw().iter().flat_map(|&v| [v, v, v]).collect(),
            })
        }
        DynamicImage::ImageRgba8(im) => {
            for p in im.into_raw().chunks_exact(4) {
                push_rgba(p[0], p[1], p[2], p[3]);
            }
        }
        DynamicImage::ImageLumaA8(im) => {
            for p in im.into_raw().chunks_exact(2) {
                push_rgba(p[0], p[0], p[0], p[1]);
            }
        }
        DynamicImage::ImageRgb16(im) => {
            return Ok(Rgb8 {
                width,
                height,
                data: im.into_raw().iter().map(|&v| (v >> 8) as u8).collect(),
            })
        }
        DynamicImage::ImageLuma16(im) => {
            return Ok(Rgb8 {
                width,
                height,
                data: im
                    .into_raw()
                    .iter()
                    .flat_map(|&v| [v.min(255) as u8; 3])
                    .collect(),
            })
        }
        DynamicImage::ImageRgba16(im) => {
            for p in im.into_raw().chunks_exact(4) {
                let h = |v: u16| (v >> 8) as u8;
                push_rgba(h(p[0]), h(p[1]), h(p[2]), h(p[3]));
            }
        }
        DynamicImage::ImageLumaA16(im) => {
            for p in im.into_raw().chunks_exact(2) {
                let v = (p[0] >> 8) as u8;
                push_rgba(v, v, v, (p[1] >> 8) as u8);
            }
        }
        other => {
            return Err(ImageError::Invalid(format!(
                "{:?} pixels are not supported (8- or 16-bit grey or colour are)",
                other.color()
            )))
        }
    }
    Ok(Rgb8 {
        width,
        height,
        data,
    })
}

/// PIL's fixed point for the 8-bit resampler: 32 bits less 8 for the value and 2 of headroom
/// for the filter's negative lobes and sums over 1.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// The bicubic convolution kernel with a = -0.5 (Keys), support 2.
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// One pass's taps: for each output index, the first input index, how many inputs, and the
/// fixed-point weights (`ksize` slots per output, unused ones zero).
struct Taps {
    ksize: usize,
    first: Vec<usize>,
    count: Vec<usize>,
    weights: Vec<i32>,
}

/// The taps of resampling `in_size` samples to `out_size`, as Pillow computes them: centre of
/// output `i` at `(i + 0.5) · scale`, the kernel stretched by the scale when shrinking, bounds
/// rounded and clipped to the input, weights normalised to sum 1 in f64 and then rounded half
/// away from zero to `PRECISION_BITS`.
fn taps(in_size: usize, out_size: usize) -> Taps {
    const SUPPORT: f64 = 2.0;
    // Pillow takes the box edges as f32 (0 and in_size here), then works in f64.
    let scale = f64::from(in_size as f32 - 0.0f32) / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = SUPPORT * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut t = Taps {
        ksize,
        first: Vec::with_capacity(out_size),
        count: Vec::with_capacity(out_size),
        weights: vec![0; out_size * ksize],
    };
    let mut k = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C's (int) cast: truncation toward zero, then clipped to the input.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let n = xmax.saturating_sub(xmin);
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(n) {
            let w = bicubic(((x + xmin) as f64 - center + 0.5) * ss);
            *kx = w;
            ww += w;
        }
        let row = &mut t.weights[xx * ksize..(xx + 1) * ksize];
        for (slot, &w) in row.iter_mut().zip(&k[..n]) {
            let w = if ww != 0.0 { w / ww } else { w };
            let scaled = w * f64::from(1u32 << PRECISION_BITS);
            *slot = if w < 0.0 {
                (scaled - 0.5) as i32
            } else {
                (scaled + 0.5) as i32
            };
        }
        t.first.push(xmin);
        t.count.push(n);
    }
    t
}

/// A fixed-point sum back to 8 bits: the integer part, clipped to 0..=255.
fn clip8(ss: i64) -> u8 {
    (ss >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resizes to `width` x `height` with PIL's `Image.resize(..., BICUBIC)` on an RGB image, as
/// Pillow 13 does it: two passes, each rounded to 8 bits, a pass whose size does not change
/// skipped. The horizontal pass goes first (over only the rows the vertical pass reads), unless
/// the height shrinks by more than twice what the width does (python-pillow/Pillow#9549, new
/// in Pillow 13: `oh < h && h - oh > 2 (w - ow)`); then the vertical pass goes first, over
/// every column. Pillow 12 and older always go horizontal first, so on such images they differ
/// from Pillow 13 by a level in some samples.
pub fn resize_bicubic(src: &Rgb8, width: usize, height: usize) -> Rgb8 {
    let need_h = width != src.width;
    let need_v = height != src.height;
    let vertical_first =
        height < src.height && (src.height - height) as i64 > 2 * (src.width as i64 - width as i64);
    if vertical_first {
        let mut cur = vertical_pass(src, &taps(src.height, height), 0);
        if need_h {
            cur = horizontal_pass(&cur, &taps(src.width, width), 0, height);
        }
        return cur;
    }
    let vert = taps(src.height, height);
    let mut cur = src.clone();
    let mut row_offset = 0;
    if need_h {
        // Only the rows the vertical taps read: from the first output row's first input row
        // to the last output row's last.
        let first_row = vert.first[0];
        let last_row = vert.first[height - 1] + vert.count[height - 1];
        cur = horizontal_pass(
            src,
            &taps(src.width, width),
            first_row,
            last_row - first_row,
        );
        row_offset = first_row;
    }
    if need_v {
        cur = vertical_pass(&cur, &vert, row_offset);
    }
    cur
}

/// The horizontal pass over `rows` rows of `src` from row `first_row` on.
fn horizontal_pass(src: &Rgb8, horiz: &Taps, first_row: usize, rows: usize) -> Rgb8 {
    let width = horiz.first.len();
    let mut out = vec![0u8; width * rows * 3];
    for y in 0..rows {
        let line = &src.data[(y + first_row) * src.width * 3..][..src.width * 3];
        for xx in 0..width {
            let (x0, n) = (horiz.first[xx], horiz.count[xx]);
            let k = &horiz.weights[xx * horiz.ksize..][..n];
            for c in 0..3 {
                let mut ss: i64 = 1 << (PRECISION_BITS - 1);
                for (x, &w) in k.iter().enumerate() {
                    ss += i64::from(line[(x0 + x) * 3 + c]) * i64::from(w);
                }
                out[(y * width + xx) * 3 + c] = clip8(ss);
            }
        }
    }
    Rgb8 {
        width,
        height: rows,
        data: out,
    }
}

/// The vertical pass over every column of `src`, whose row 0 is input row `row_offset`.
fn vertical_pass(src: &Rgb8, vert: &Taps, row_offset: usize) -> Rgb8 {
    let (w, height) = (src.width, vert.first.len());
    let mut out = vec![0u8; w * height * 3];
    for yy in 0..height {
        let (y0, n) = (vert.first[yy] - row_offset, vert.count[yy]);
        let k = &vert.weights[yy * vert.ksize..][..n];
        for xx in 0..w {
            for c in 0..3 {
                let mut ss: i64 = 1 << (PRECISION_BITS - 1);
                for (y, &kw) in k.iter().enumerate() {
                    ss += i64::from(src.data[((y0 + y) * w + xx) * 3 + c]) * i64::from(kw);
                }
                out[(yy * w + xx) * 3 + c] = clip8(ss);
            }
        }
    }
    Rgb8 {
        width: w,
        height,
        data: out,
    }
}

/// `preprocessor_config.json`'s `BlipImageProcessor`, validated: what turns an image into the
/// model's input.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageProcessor {
    pub height: usize,
    pub width: usize,
    pub do_rescale: bool,
    pub rescale_factor: f64,
    pub do_normalize: bool,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl ImageProcessor {
    /// transformers' `BlipImageProcessor` defaults at the vision tower's input size: what a
    /// model directory without `preprocessor_config.json` gets.
    pub fn blip_default(side: usize) -> Self {
        ImageProcessor {
            height: side,
            width: side,
            do_rescale: true,
            rescale_factor: 1.0 / 255.0,
            do_normalize: true,
            // OpenAI CLIP's, as BlipImageProcessor's defaults.
            mean: [0.481_454_66, 0.457_827_5, 0.408_210_73],
            std: [0.268_629_54, 0.261_302_6, 0.275_777_1],
        }
    }

    /// Reads `dir/preprocessor_config.json` (transformers' defaults where absent) and checks it
    /// against the vision tower: the resize must land on its input size, with bicubic
    /// resampling and RGB conversion (the only ones implemented).
    pub fn load(dir: &Path, vision: &BlipVisionConfig) -> Result<Self> {
        let side = vision.image_size;
        let path = dir.join("preprocessor_config.json");
        let mut p = Self::blip_default(side);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(p),
            Err(e) => return Err(Error::io(&path, e)),
        };
        let bad = |msg: String| Error::model(&path, msg);
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
        let flag = |name: &str, default: bool| match v.get(name) {
            None | Some(serde_json::Value::Null) => Ok(default),
            Some(serde_json::Value::Bool(b)) => Ok(*b),
            Some(other) => Err(bad(format!(
                "field `{name}` must be true or false, got {other}"
            ))),
        };
        for name in ["do_convert_rgb", "do_resize"] {
            if !flag(name, true)? {
                return Err(bad(format!(
                    "field `{name}` is false; only the RGB conversion and resize of BlipImageProcessor are implemented"
                )));
            }
        }
        if let Some(r) = v.get("resample").filter(|r| !r.is_null()) {
            if r.as_u64() != Some(3) {
                return Err(bad(format!(
                    "field `resample` is {r}; only 3 (PIL's BICUBIC) is implemented"
                )));
            }
        }
        match v.get("size") {
            None | Some(serde_json::Value::Null) => {}
            Some(serde_json::Value::Number(n)) => {
                let s = n
                    .as_u64()
                    .ok_or_else(|| bad(format!("field `size` is {n}")))?
                    as usize;
                (p.height, p.width) = (s, s);
            }
            Some(serde_json::Value::Object(o)) => {
                let side = |k: &str| o.get(k).and_then(|x| x.as_u64()).map(|x| x as usize);
                match (side("height"), side("width")) {
                    (Some(h), Some(w)) => (p.height, p.width) = (h, w),
                    _ => {
                        return Err(bad(format!(
                            "field `size` must give integer `height` and `width`, got {}",
                            serde_json::Value::Object(o.clone())
                        )))
                    }
                }
            }
            Some(other) => return Err(bad(format!("field `size` is {other}"))),
        }
        if (p.height, p.width) != (side, side) {
            return Err(bad(format!(
                "images are resized to {}x{} but the vision tower takes {side}x{side} (config.json vision_config.image_size)",
                p.width, p.height
            )));
        }
        p.do_rescale = flag("do_rescale", true)?;
        p.do_normalize = flag("do_normalize", true)?;
        if let Some(f) = v.get("rescale_factor").filter(|f| !f.is_null()) {
            p.rescale_factor = f
                .as_f64()
                .ok_or_else(|| bad(format!("field `rescale_factor` must be a number, got {f}")))?;
        }
        let triple = |name: &str, default: [f32; 3]| -> Result<[f32; 3]> {
            match v.get(name) {
                None | Some(serde_json::Value::Null) => Ok(default),
                Some(serde_json::Value::Number(n)) => {
                    let x = n.as_f64().unwrap_or(f64::NAN) as f32;
                    Ok([x; 3])
                }
                Some(serde_json::Value::Array(a)) if a.len() == 3 => {
                    let mut out = [0f32; 3];
                    for (o, x) in out.iter_mut().zip(a) {
                        *o = x.as_f64().ok_or_else(|| {
                            bad(format!("field `{name}` must be 3 numbers, got {x}"))
                        })? as f32;
                    }
                    Ok(out)
                }
                Some(other) => Err(bad(format!(
                    "field `{name}` must be a number or 3 numbers, got {other}"
                ))),
            }
        };
        p.mean = triple("image_mean", p.mean)?;
        p.std = triple("image_std", p.std)?;
        if p.do_normalize && p.std.iter().any(|&s| s == 0.0 || !s.is_finite()) {
            return Err(bad(format!("field `image_std` {:?} has a zero", p.std)));
        }
        Ok(p)
    }

    /// The 8-bit image the processor resamples: RGB, resized to the model's size.
    pub fn resized(&self, rgb: &Rgb8) -> Rgb8 {
        resize_bicubic(rgb, self.width, self.height)
    }

    /// The model's input from the resized 8-bit image: `[3, height, width]`, each value
    /// `f32(v as f64 · rescale_factor)`, then `(x - mean) / std` in f32 (numpy's order).
    pub fn normalize(&self, resized: &Rgb8) -> Vec<f32> {
        let plane = resized.width * resized.height;
        let mut out = vec![0f32; 3 * plane];
        for (i, px) in resized.data.chunks_exact(3).enumerate() {
            for c in 0..3 {
                let mut x = if self.do_rescale {
                    (f64::from(px[c]) * self.rescale_factor) as f32
                } else {
                    f32::from(px[c])
                };
                if self.do_normalize {
                    x = (x - self.mean[c]) / self.std[c];
                }
                out[c * plane + i] = x;
            }
        }
        out
    }

    /// Encoded bytes to the model's input.
    pub fn pixel_values(
        &self,
        bytes: &[u8],
        limits: &ImageLimits,
    ) -> std::result::Result<Vec<f32>, ImageError> {
        Ok(self.normalize(&self.resized(&decode(bytes, limits)?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pillow's composite over white: transparent is white, opaque is itself, and the
    /// half-way values of its integer formula (checked against PIL for every pair of value
    /// and alpha when this was written).
    #[test]
    fn compositing_over_white() {
        for v in [0u8, 1, 100, 255] {
            assert_eq!(over_white(v, 0), 255);
            assert_eq!(over_white(v, 255), v);
        }
        assert_eq!(over_white(0, 128), 127);
        assert_eq!(over_white(0, 1), 254);
        assert_eq!(over_white(10, 200), 63);
    }

    #[test]
    fn taps_sum_to_one_and_stay_inside() {
        for (i, o) in [(5, 32), (64, 32), (40, 32), (32, 32), (1, 7), (1000, 3)] {
            let t = taps(i, o);
            for xx in 0..o {
                let n = t.count[xx];
                assert!(t.first[xx] + n <= i, "{i}->{o}: output {xx}");
                let sum: i64 = t.weights[xx * t.ksize..][..n]
                    .iter()
                    .map(|&w| i64::from(w))
                    .sum();
                // Each weight is rounded on its own: the sum is one within a count of ulps.
                assert!((sum - (1 << PRECISION_BITS)).abs() <= n as i64, "{sum}");
            }
        }
    }

    #[test]
    fn a_flat_image_stays_flat_and_same_size_is_a_copy() {
        let flat = Rgb8 {
            width: 9,
            height: 4,
            data: [10u8, 200, 77].repeat(36),
        };
        let r = resize_bicubic(&flat, 32, 32);
        assert!(r.data.chunks_exact(3).all(|p| p == [10, 200, 77]));
        assert_eq!(resize_bicubic(&flat, 9, 4), flat);
    }

    #[test]
    fn refusals_name_the_problem() {
        let l = ImageLimits::default();
        let e = decode(b"not an image at all", &l).unwrap_err();
        assert!(matches!(e, ImageError::Invalid(_)), "{e}");
        assert!(e.to_string().contains("not a PNG, JPEG or WebP"), "{e}");
        // A GIF header: a format we do not decode.
        let e = decode(b"GIF89a\x01\x00\x01\x00\x00\x00\x00;", &l).unwrap_err();
        assert!(e.to_string().contains("not supported"), "{e}");
        let small = ImageLimits { max_bytes: 4, ..l };
        let e = decode(b"\x89PNG\r\n\x1a\n", &small).unwrap_err();
        assert!(matches!(e, ImageError::TooLarge(_)), "{e}");
        assert!(e.to_string().contains("--max-image-bytes"), "{e}");
    }

    /// A decompression bomb: a PNG whose header claims 100000 x 100000 pixels (and holds none)
    /// is refused from the header, before anything is allocated for its pixels.
    #[test]
    fn a_huge_header_is_refused_before_decoding() {
        let mut bytes = Vec::new();
        let mut enc = png::Encoder::new(&mut bytes, 100_000, 100_000);
        enc.set_color(png::ColorType::Rgba);
        let mut w = enc.write_header().unwrap();
        // The header is read up to the first IDAT chunk: a few bytes of one.
        w.write_chunk(png::chunk::IDAT, &[0x78, 0x9c, 0x01, 0x00])
            .unwrap();
        drop(w);
        let e = decode(&bytes, &ImageLimits::default()).unwrap_err();
        assert!(matches!(e, ImageError::TooLarge(_)), "{e}");
        assert!(e.to_string().contains("100000x100000"), "{e}");
    }

    #[test]
    fn data_uris_and_remote_urls() {
        let l = ImageLimits::default();
        assert_eq!(
            data_uri("data:image/png;base64,AAEC", &l).unwrap(),
            Some(vec![0, 1, 2])
        );
        assert_eq!(
            data_uri("DATA:;base64,AAEC", &l).unwrap(),
            Some(vec![0, 1, 2])
        );
        assert_eq!(data_uri("cat.png", &l).unwrap(), None);
        for bad in [
            "data:image/png;base64",
            "data:text/plain;base64,AAEC",
            "data:image/png,AAEC",
            "data:image/png;base64,%%%",
        ] {
            let e = data_uri(bad, &l).unwrap_err();
            assert!(matches!(e, ImageError::Invalid(_)), "{bad}: {e}");
        }
        let two = ImageLimits { max_bytes: 2, ..l };
        let e = data_uri("data:image/png;base64,AAECAwQF", &two).unwrap_err();
        assert!(matches!(e, ImageError::TooLarge(_)), "{e}");
        let e = data_uri("data:image/png;base64,AAEC", &two).unwrap_err();
        assert!(matches!(e, ImageError::TooLarge(_)), "{e}");
        assert!(is_remote_url("https://example.com/a.png"));
        assert!(is_remote_url("HTTP://x"));
        assert!(!is_remote_url("data:image/png;base64,AAEC"));
        assert!(!is_remote_url("img/http.png"));
    }
}
