//! BLIP's image-text matching model (transformers' `BlipForImageTextRetrieval`, scored with its
//! ITM head): its weights and its forward, a flat list of ops over the same `Backend`.
//!
//! Vision (a ViT, pre-norm): patches as rows (`patchify`) through the patch embedding as one
//! GEMM, the class token and learned positions (`vit_embed`); per layer `x += proj(attn(qkv(
//! ln1(x))))`, `x += fc2(gelu(fc1(ln2(x))))`; the final `post_layernorm` gives the image rows.
//! Text (BERT, post-norm): word + position embeddings and LayerNorm; per layer self-attention,
//! then cross-attention whose queries are the text rows and whose keys and values are the rows
//! of the same pair's image, then the FFN, each followed by add + LayerNorm. Head: the ITM
//! Linear(hidden, 2) on the text [CLS] row, folded at load into one logit z[1] - z[0], so that
//! sigmoid(logit) = softmax(z)[1].
//!
//! One forward takes pairs (text sequence s, image `image_of[s]`) over distinct images: each
//! image runs the vision tower once, unless the image-feature cache ([`ImageCache`]) holds its
//! output, and its cross-attention keys and values are computed once for every pair scoring it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::backend::Backend;
use crate::batch::PackedBatch;
use crate::config::{Activation, BlipVisionConfig, ModelConfig};
use crate::error::{Error, Result};
use crate::model::Scorer;
use crate::models::modernbert::{map_lin, map_ln};
use crate::weights::{Checkpoint, Embeddings, HostTensor, LayerNorm, Linear};

/// Images per forward: the vision arena holds this many images' rows (577 each for 384x384
/// inputs in 16x16 patches).
pub const MAX_IMAGES_PER_FORWARD: usize = 16;

/// One pre-norm ViT layer. `qkv` is transformers' fused `self_attn.qkv` (Q | K | V).
#[derive(Debug, Clone)]
pub struct VisionLayer<T> {
    pub ln1: LayerNorm<T>,
    pub qkv: Linear<T>,
    pub proj: Linear<T>,
    pub ln2: LayerNorm<T>,
    pub fc1: Linear<T>,
    pub fc2: Linear<T>,
}

/// One BERT layer with cross-attention. `qkv` fuses the self-attention's Q, K, V; `cross_kv`
/// fuses the cross-attention's K and V (in = the vision width).
#[derive(Debug, Clone)]
pub struct TextLayer<T> {
    pub qkv: Linear<T>,
    pub attn_out: Linear<T>,
    pub ln_attn: LayerNorm<T>,
    pub cross_q: Linear<T>,
    pub cross_kv: Linear<T>,
    pub cross_out: Linear<T>,
    pub ln_cross: LayerNorm<T>,
    pub ffn_in: Linear<T>,
    pub ffn_out: Linear<T>,
    pub ln_ffn: LayerNorm<T>,
}

#[derive(Debug, Clone)]
pub struct Weights<T> {
    /// The patch Conv2d as a linear: [vision hidden, 3·patch²].
    pub patch: Linear<T>,
    pub class: T,
    /// [patches + 1, vision hidden].
    pub positions: T,
    pub vision_layers: Vec<VisionLayer<T>>,
    pub post_ln: LayerNorm<T>,
    /// Word and position tables; the token-type table is one row of zeros (BLIP's text
    /// embeddings have none).
    pub text_emb: Embeddings<T>,
    pub text_layers: Vec<TextLayer<T>>,
    /// The ITM head folded to one logit: row 1 minus row 0, bias 1 minus bias 0.
    pub itm: Linear<T>,
}

impl<T> Weights<T> {
    pub fn try_map<U>(self, mut f: impl FnMut(T) -> Result<U>) -> Result<Weights<U>> {
        let f = &mut f;
        let patch = map_lin(self.patch, f)?;
        let class = f(self.class)?;
        let positions = f(self.positions)?;
        let mut vision_layers = Vec::with_capacity(self.vision_layers.len());
        for l in self.vision_layers {
            vision_layers.push(VisionLayer {
                ln1: map_ln(l.ln1, f)?,
                qkv: map_lin(l.qkv, f)?,
                proj: map_lin(l.proj, f)?,
                ln2: map_ln(l.ln2, f)?,
                fc1: map_lin(l.fc1, f)?,
                fc2: map_lin(l.fc2, f)?,
            });
        }
        let post_ln = map_ln(self.post_ln, f)?;
        let e = self.text_emb;
        let text_emb = Embeddings {
            word: f(e.word)?,
            position: f(e.position)?,
            token_type: f(e.token_type)?,
            ln: map_ln(e.ln, f)?,
        };
        let mut text_layers = Vec::with_capacity(self.text_layers.len());
        for l in self.text_layers {
            text_layers.push(TextLayer {
                qkv: map_lin(l.qkv, f)?,
                attn_out: map_lin(l.attn_out, f)?,
                ln_attn: map_ln(l.ln_attn, f)?,
                cross_q: map_lin(l.cross_q, f)?,
                cross_kv: map_lin(l.cross_kv, f)?,
                cross_out: map_lin(l.cross_out, f)?,
                ln_cross: map_ln(l.ln_cross, f)?,
                ffn_in: map_lin(l.ffn_in, f)?,
                ffn_out: map_lin(l.ffn_out, f)?,
                ln_ffn: map_ln(l.ln_ffn, f)?,
            });
        }
        Ok(Weights {
            patch,
            class,
            positions,
            vision_layers,
            post_ln,
            text_emb,
            text_layers,
            itm: map_lin(self.itm, f)?,
        })
    }
}

/// The vision tower's settings; an internal error if the config is another family's.
pub fn vision(cfg: &ModelConfig) -> Result<&BlipVisionConfig> {
    cfg.blip
        .as_ref()
        .ok_or_else(|| Error::Internal("a BLIP forward on a non-BLIP config".into()))
}

/// Stacks linears with the same input into one: output rows in the order given.
fn stack(parts: Vec<Linear<HostTensor>>, name: &str) -> Linear<HostTensor> {
    let in_dim = parts.first().map_or(0, |l| l.in_dim);
    let out_dim = parts.iter().map(|l| l.out_dim).sum();
    let (mut w, mut b) = (Vec::new(), Vec::new());
    for l in parts {
        w.extend_from_slice(&l.w.data);
        b.extend_from_slice(&l.b.data);
    }
    Linear {
        w: HostTensor {
            name: format!("{name}.weight"),
            shape: vec![out_dim, in_dim],
            data: w,
        },
        b: HostTensor {
            name: format!("{name}.bias"),
            shape: vec![out_dim],
            data: b,
        },
        out_dim,
        in_dim,
    }
}

/// Loads every tensor the ITM forward needs under transformers' names (`vision_model.*`,
/// `text_encoder.*`, `itm_head.*`); `vision_proj` and `text_proj` (the contrastive score's) are
/// not read.
pub fn load(ckpt: &Checkpoint, cfg: &ModelConfig) -> Result<Weights<HostTensor>> {
    let v = vision(cfg)?;
    let (vh, vi, p) = (v.hidden_size, v.intermediate_size, v.patch_size);
    let (h, inter) = (cfg.hidden_size, cfg.intermediate_size);
    let get = |name: &str, shape: &[usize]| ckpt.tensor(&[name.to_string()], shape);
    let linear = |name: &str, out_dim: usize, in_dim: usize| -> Result<Linear<HostTensor>> {
        Ok(Linear {
            w: get(&format!("{name}.weight"), &[out_dim, in_dim])?,
            b: get(&format!("{name}.bias"), &[out_dim])?,
            out_dim,
            in_dim,
        })
    };
    let norm = |name: &str, width: usize| -> Result<LayerNorm<HostTensor>> {
        Ok(LayerNorm {
            gamma: get(&format!("{name}.weight"), &[width])?,
            beta: get(&format!("{name}.bias"), &[width])?,
        })
    };
    let e = "vision_model.embeddings";
    let mut patch_w = get(&format!("{e}.patch_embedding.weight"), &[vh, 3, p, p])?;
    patch_w.shape = vec![vh, 3 * p * p];
    let patch = Linear {
        w: patch_w,
        b: get(&format!("{e}.patch_embedding.bias"), &[vh])?,
        out_dim: vh,
        in_dim: 3 * p * p,
    };
    let rows = v.rows_per_image();
    let mut class = get(&format!("{e}.class_embedding"), &[1, 1, vh])?;
    class.shape = vec![vh];
    let mut positions = get(&format!("{e}.position_embedding"), &[1, rows, vh])?;
    positions.shape = vec![rows, vh];
    let mut vision_layers = Vec::with_capacity(v.num_layers);
    for i in 0..v.num_layers {
        let l = format!("vision_model.encoder.layers.{i}");
        vision_layers.push(VisionLayer {
            ln1: norm(&format!("{l}.layer_norm1"), vh)?,
            qkv: linear(&format!("{l}.self_attn.qkv"), 3 * vh, vh)?,
            proj: linear(&format!("{l}.self_attn.projection"), vh, vh)?,
            ln2: norm(&format!("{l}.layer_norm2"), vh)?,
            fc1: linear(&format!("{l}.mlp.fc1"), vi, vh)?,
            fc2: linear(&format!("{l}.mlp.fc2"), vh, vi)?,
        });
    }
    let t = "text_encoder";
    let text_emb = Embeddings {
        word: get(
            &format!("{t}.embeddings.word_embeddings.weight"),
            &[cfg.vocab_size, h],
        )?,
        position: get(
            &format!("{t}.embeddings.position_embeddings.weight"),
            &[cfg.max_position_embeddings, h],
        )?,
        token_type: HostTensor {
            name: format!("{t}.embeddings.token_type (zeros)"),
            shape: vec![1, h],
            data: vec![0.0; h],
        },
        ln: norm(&format!("{t}.embeddings.LayerNorm"), h)?,
    };
    let mut text_layers = Vec::with_capacity(cfg.num_layers);
    for i in 0..cfg.num_layers {
        let l = format!("{t}.encoder.layer.{i}");
        let a = format!("{l}.attention");
        let c = format!("{l}.crossattention");
        text_layers.push(TextLayer {
            qkv: stack(
                vec![
                    linear(&format!("{a}.self.query"), h, h)?,
                    linear(&format!("{a}.self.key"), h, h)?,
                    linear(&format!("{a}.self.value"), h, h)?,
                ],
                &format!("{a}.self.qkv"),
            ),
            attn_out: linear(&format!("{a}.output.dense"), h, h)?,
            ln_attn: norm(&format!("{a}.output.LayerNorm"), h)?,
            cross_q: linear(&format!("{c}.self.query"), h, h)?,
            cross_kv: stack(
                vec![
                    linear(&format!("{c}.self.key"), h, vh)?,
                    linear(&format!("{c}.self.value"), h, vh)?,
                ],
                &format!("{c}.self.kv"),
            ),
            cross_out: linear(&format!("{c}.output.dense"), h, h)?,
            ln_cross: norm(&format!("{c}.output.LayerNorm"), h)?,
            ffn_in: linear(&format!("{l}.intermediate.dense"), inter, h)?,
            ffn_out: linear(&format!("{l}.output.dense"), h, inter)?,
            ln_ffn: norm(&format!("{l}.output.LayerNorm"), h)?,
        });
    }
    let head = linear("itm_head", 2, h)?;
    let (w, b) = (&head.w.data, &head.b.data);
    let itm = Linear {
        w: HostTensor {
            name: "itm_head.weight[1] - itm_head.weight[0]".into(),
            shape: vec![1, h],
            data: (0..h).map(|j| w[h + j] - w[j]).collect(),
        },
        b: HostTensor {
            name: "itm_head.bias[1] - itm_head.bias[0]".into(),
            shape: vec![1],
            data: vec![b[1] - b[0]],
        },
        out_dim: 1,
        in_dim: h,
    };
    Ok(Weights {
        patch,
        class,
        positions,
        vision_layers,
        post_ln: norm("vision_model.post_layernorm", vh)?,
        text_emb,
        text_layers,
        itm,
    })
}

/// Every intermediate of one forward: `max_tokens` text rows in at most `max_pairs` pairs over
/// at most `max_images` distinct images.
pub struct Activations<B: Backend> {
    batch: B::Batch,
    /// Each pair's image: its slot among the forward's image rows ([`PackedBatch::indices`]).
    pairs: B::Batch,
    /// The images the vision tower runs on (the cache's misses), as sequences of their rows.
    image_batch: B::Batch,
    pixels: B::Buf,
    patches: B::Buf,
    patch_out: B::Buf,
    v_hidden: B::Buf,
    /// The next op's normed input; after the last layer, the image rows text cross-attends to:
    /// slot i holds the forward's image i (the tower's images first, then the cache's).
    v_normed: B::Buf,
    v_qkv: B::Buf,
    v_ctx: B::Buf,
    v_tmp: B::Buf,
    v_ffn: B::Buf,
    hidden: B::Buf,
    qkv: B::Buf,
    q: B::Buf,
    kv: B::Buf,
    ctx: B::Buf,
    tmp: B::Buf,
    ffn: B::Buf,
    cls: B::Buf,
    logits: B::Logits,
    max_tokens: usize,
    max_pairs: usize,
    max_images: usize,
}

impl<B: Backend> Activations<B> {
    pub fn new(
        b: &B,
        cfg: &ModelConfig,
        max_tokens: usize,
        max_pairs: usize,
        max_images: usize,
    ) -> Result<Self> {
        let v = vision(cfg)?;
        let (h, i, vh) = (cfg.hidden_size, cfg.intermediate_size, v.hidden_size);
        let rows = max_images * v.rows_per_image();
        let patch_rows = max_images * v.patches();
        Ok(Activations {
            batch: b.alloc_batch(max_tokens, max_pairs)?,
            pairs: b.alloc_batch(max_pairs, max_pairs)?,
            image_batch: b.alloc_batch(rows, max_images)?,
            pixels: b.alloc(max_images * v.pixels_per_image())?,
            patches: b.alloc(patch_rows * 3 * v.patch_size * v.patch_size)?,
            patch_out: b.alloc(patch_rows * vh)?,
            v_hidden: b.alloc(rows * vh)?,
            v_normed: b.alloc(rows * vh)?,
            v_qkv: b.alloc(rows * 3 * vh)?,
            v_ctx: b.alloc(rows * vh)?,
            v_tmp: b.alloc(rows * vh)?,
            v_ffn: b.alloc(rows * v.intermediate_size)?,
            hidden: b.alloc(max_tokens * h)?,
            qkv: b.alloc(max_tokens * 3 * h)?,
            q: b.alloc(max_tokens * h)?,
            kv: b.alloc(rows * 2 * h)?,
            ctx: b.alloc(max_tokens * h)?,
            tmp: b.alloc(max_tokens * h)?,
            ffn: b.alloc(max_tokens * i)?,
            cls: b.alloc(max_pairs * h)?,
            logits: b.alloc_logits(max_pairs)?,
            max_tokens,
            max_pairs,
            max_images,
        })
    }
}

/// The image rows of `n` images as a packed batch of `n` sequences of `rows` rows each.
fn image_batch(n: usize, rows: usize) -> PackedBatch {
    PackedBatch {
        input_ids: vec![0; n * rows],
        token_type_ids: vec![0; n * rows],
        position_ids: vec![0; n * rows],
        cu_seqlens: (0..=n).map(|i| (i * rows) as i32).collect(),
        max_seqlen: rows,
        shared_prefix: 0,
    }
}

/// An image's identity for the feature cache: the SHA-256 of its preprocessed pixel values
/// (f32, little-endian), so the same picture sent as PNG or WebP, or at another size that
/// resizes to the same pixels, is one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ImageKey([u8; 32]);

impl ImageKey {
    pub fn of(pixels: &[f32]) -> Self {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for chunk in pixels.chunks(4096) {
            let bytes: Vec<u8> = chunk.iter().flat_map(|v| v.to_le_bytes()).collect();
            h.update(&bytes);
        }
        ImageKey(h.finalize().into())
    }
}

/// One distinct image of a forward: its key and its preprocessed pixels ([3, size, size] CHW).
#[derive(Debug, Clone, Copy)]
pub struct Image<'a> {
    pub key: ImageKey,
    pub pixels: &'a [f32],
}

/// The image-feature cache: the vision tower's output (post_layernorm, `rows_per_image` rows)
/// of images seen, on the device, least recently used out first. Each entry owns its buffer,
/// allocated on first use, so memory grows with what is cached, up to `capacity` entries; an
/// evicted entry's buffer takes the next image.
pub struct ImageCache<B: Backend> {
    entries: HashMap<ImageKey, Entry<B::Buf>>,
    capacity: usize,
    /// Elements per entry.
    slot: usize,
    /// The forward count, for recency.
    clock: u64,
}

struct Entry<Buf> {
    buf: Buf,
    used: u64,
}

impl<B: Backend> ImageCache<B> {
    /// A cache of at most `capacity` images of `slot` elements each (0: off).
    pub fn new(capacity: usize, slot: usize) -> Self {
        ImageCache {
            entries: HashMap::new(),
            capacity,
            slot,
            clock: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// A buffer for `key`'s features, marked used by the current forward: a new one while
    /// under capacity, else the least recently used entry's, evicted (true), unless every
    /// entry belongs to this forward (None: the image is not cached).
    fn insert(&mut self, b: &B, key: ImageKey) -> Result<Option<(&mut B::Buf, bool)>> {
        if self.capacity == 0 || self.entries.contains_key(&key) {
            return Ok(None);
        }
        let (buf, evicted) = if self.entries.len() < self.capacity {
            (b.alloc(self.slot)?, false)
        } else {
            let oldest = self
                .entries
                .iter()
                .filter(|(_, e)| e.used < self.clock)
                .min_by_key(|(_, e)| e.used)
                .map(|(k, _)| *k);
            let Some(e) = oldest.and_then(|k| self.entries.remove(&k)) else {
                return Ok(None);
            };
            (e.buf, true)
        };
        let used = self.clock;
        let e = self.entries.entry(key).or_insert(Entry { buf, used });
        Ok(Some((&mut e.buf, evicted)))
    }
}

/// What one forward did with the cache: images found, images run through the tower, entries
/// evicted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheUse {
    pub hits: usize,
    pub misses: usize,
    pub evictions: usize,
}

/// Scores one batch of pairs: text sequence s of `batch` against image `image_of[s]` of
/// `images` (each distinct image once), one logit z[1] - z[0] each. Images in `cache` skip the
/// vision tower; the others run it and are cached.
#[allow(clippy::too_many_arguments)]
pub fn forward<B: Backend>(
    b: &B,
    cfg: &ModelConfig,
    w: &Weights<B::Buf>,
    batch: &PackedBatch,
    image_of: &[u32],
    images: &[Image<'_>],
    a: &mut Activations<B>,
    cache: &mut ImageCache<B>,
) -> Result<(Vec<f32>, CacheUse)> {
    let v = vision(cfg)?;
    let (n, u) = (batch.len(), images.len());
    if image_of.len() != n {
        return Err(Error::Internal(format!(
            "a BLIP batch of {n} texts with {} image indices",
            image_of.len()
        )));
    }
    if let Some(&i) = image_of.iter().find(|&&i| i as usize >= u) {
        return Err(Error::Internal(format!(
            "a BLIP pair names image {i} of {u}"
        )));
    }
    if batch.tokens() > a.max_tokens || n > a.max_pairs || u > a.max_images {
        return Err(Error::Internal(format!(
            "a BLIP batch of {} tokens in {n} pairs over {u} images exceeds the arena ({} tokens, {} pairs, {} images)",
            batch.tokens(),
            a.max_tokens,
            a.max_pairs,
            a.max_images
        )));
    }
    if n == 0 {
        return Ok((Vec::new(), CacheUse::default()));
    }
    let need = v.pixels_per_image();
    if let Some(i) = images.iter().position(|im| im.pixels.len() != need) {
        return Err(Error::input(format!(
            "image {i} has {} values; the model takes 3x{s}x{s} = {need}",
            images[i].pixels.len(),
            s = v.image_size
        )));
    }
    let max = |x: &[u32]| x.iter().copied().max().unwrap_or(0) as usize;
    let (id, pos) = (max(&batch.input_ids), max(&batch.position_ids));
    if id >= cfg.vocab_size || pos >= cfg.max_position_embeddings {
        return Err(Error::input(format!(
            "a token id or position (largest: {id}, {pos}) is outside the model's tables ({}, {})",
            cfg.vocab_size, cfg.max_position_embeddings
        )));
    }
    // The tower's images (misses) take the first slots of the image rows, the cached ones
    // (hits) the rest; `slot[i]` is image i's.
    cache.clock += 1;
    let (mut misses, mut hits) = (Vec::new(), Vec::new());
    for (i, im) in images.iter().enumerate() {
        match cache.entries.get_mut(&im.key) {
            Some(e) => {
                e.used = cache.clock;
                hits.push(i);
            }
            None => misses.push(i),
        }
    }
    let mut slot = vec![0u32; u];
    for (k, &i) in misses.iter().chain(&hits).enumerate() {
        slot[i] = k as u32;
    }
    let pair_slots: Vec<u32> = image_of.iter().map(|&i| slot[i as usize]).collect();
    let rows = v.rows_per_image();
    let per = rows * v.hidden_size;
    b.load_batch(batch, &mut a.batch)?;
    b.load_batch(&PackedBatch::indices(&pair_slots), &mut a.pairs)?;
    let m = misses.len();
    if m > 0 {
        b.load_batch(&image_batch(m, rows), &mut a.image_batch)?;
        for (k, &i) in misses.iter().enumerate() {
            b.load_values(images[i].pixels, &mut a.pixels, k * need)?;
        }
    }
    let mut used = CacheUse {
        hits: hits.len(),
        misses: m,
        evictions: 0,
    };
    b.run(None, &mut || {
        if m > 0 {
            vision_tower(b, v, w, m, a)?;
        }
        for (k, &i) in hits.iter().enumerate() {
            let Some(e) = cache.entries.get(&images[i].key) else {
                return Err(Error::Internal("a cache hit vanished".into()));
            };
            b.copy(&e.buf, 0, &mut a.v_normed, (m + k) * per, per)?;
        }
        for (k, &i) in misses.iter().enumerate() {
            if let Some((buf, evicted)) = cache.insert(b, images[i].key)? {
                b.copy(&a.v_normed, k * per, buf, 0, per)?;
                used.evictions += usize::from(evicted);
            }
        }
        text(b, cfg, w, batch.tokens(), n, u * rows, a)
    })?;
    Ok((b.read_logits(&a.logits, n)?, used))
}

/// The vision tower on the `n` images in `a.pixels`: their rows, post_layernorm, in the first
/// `n` slots of `a.v_normed`.
fn vision_tower<B: Backend>(
    b: &B,
    v: &BlipVisionConfig,
    w: &Weights<B::Buf>,
    n: usize,
    a: &mut Activations<B>,
) -> Result<()> {
    let gelu = Some(Activation::GeluErf);
    // Patches as rows, one GEMM, class token and positions.
    let (vh, veps) = (v.hidden_size, v.layer_norm_eps);
    let vrows = n * v.rows_per_image();
    b.patchify(&a.pixels, n, v.image_size, v.patch_size, &mut a.patches)?;
    b.linear(
        &a.patches,
        n * v.patches(),
        &w.patch,
        None,
        &mut a.patch_out,
    )?;
    b.vit_embed(&a.patch_out, n, &w.class, &w.positions, vh, &mut a.v_hidden)?;
    let Some(first) = w.vision_layers.first() else {
        return Err(Error::Internal("a BLIP vision tower with no layers".into()));
    };
    b.layernorm(&a.v_hidden, vrows, &first.ln1, veps, &mut a.v_normed)?;
    // Each residual add is fused with the norm that reads its result, so `v_normed` always
    // holds the next op's input: the last layer ends with post_layernorm's output.
    for (i, l) in w.vision_layers.iter().enumerate() {
        b.linear(&a.v_normed, vrows, &l.qkv, None, &mut a.v_qkv)?;
        b.attention(
            &a.v_qkv,
            &a.image_batch,
            v.num_heads,
            v.head_dim,
            &mut a.v_ctx,
        )?;
        b.linear(&a.v_ctx, vrows, &l.proj, None, &mut a.v_tmp)?;
        b.residual_layernorm(
            &a.v_tmp,
            vrows,
            &l.ln2,
            veps,
            &mut a.v_hidden,
            &mut a.v_normed,
        )?;
        b.linear(&a.v_normed, vrows, &l.fc1, gelu, &mut a.v_ffn)?;
        b.linear(&a.v_ffn, vrows, &l.fc2, None, &mut a.v_tmp)?;
        let next = match w.vision_layers.get(i + 1) {
            Some(next) => &next.ln1,
            None => &w.post_ln,
        };
        b.residual_layernorm(
            &a.v_tmp,
            vrows,
            next,
            veps,
            &mut a.v_hidden,
            &mut a.v_normed,
        )?;
    }
    Ok(())
}

/// The text side: `rows` text rows in `n` pairs, each cross-attending to its image's rows
/// among the first `image_rows` rows of `a.v_normed`; then the ITM head.
fn text<B: Backend>(
    b: &B,
    cfg: &ModelConfig,
    w: &Weights<B::Buf>,
    rows: usize,
    n: usize,
    image_rows: usize,
    a: &mut Activations<B>,
) -> Result<()> {
    let gelu = Some(Activation::GeluErf);
    let per_image = vision(cfg)?.rows_per_image();
    // BERT post-norm layers with cross-attention to the pair's image rows.
    let (eps, heads, d) = (cfg.layer_norm_eps, cfg.num_heads, cfg.head_dim);
    b.embed(&a.batch, &w.text_emb, eps, &mut a.hidden)?;
    for l in &w.text_layers {
        b.linear(&a.hidden, rows, &l.qkv, None, &mut a.qkv)?;
        b.attention(&a.qkv, &a.batch, heads, d, &mut a.ctx)?;
        b.linear(&a.ctx, rows, &l.attn_out, None, &mut a.tmp)?;
        b.add_layernorm(&a.tmp, rows, &l.ln_attn, eps, &mut a.hidden)?;
        b.linear(&a.hidden, rows, &l.cross_q, None, &mut a.q)?;
        // Each distinct image's keys and values once, whatever the pairs scoring it.
        b.linear(&a.v_normed, image_rows, &l.cross_kv, None, &mut a.kv)?;
        b.cross_attention(
            &a.q, &a.batch, &a.kv, &a.pairs, per_image, heads, d, &mut a.ctx,
        )?;
        b.linear(&a.ctx, rows, &l.cross_out, None, &mut a.tmp)?;
        b.add_layernorm(&a.tmp, rows, &l.ln_cross, eps, &mut a.hidden)?;
        b.linear(&a.hidden, rows, &l.ffn_in, gelu, &mut a.ffn)?;
        b.linear(&a.ffn, rows, &l.ffn_out, None, &mut a.tmp)?;
        b.add_layernorm(&a.tmp, rows, &l.ln_ffn, eps, &mut a.hidden)?;
    }
    // The ITM head on each pair's [CLS] row, folded to z[1] - z[0].
    b.gather_cls(&a.hidden, cfg.hidden_size, &a.batch, &mut a.cls)?;
    b.classify(&a.cls, n, &w.itm, &mut a.logits)
}

/// The image-feature cache's counters and size (`--image-cache-mib`): hits and misses count
/// distinct images per forward, evictions the entries dropped for room.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
    /// Images held now.
    pub entries: usize,
    /// Device bytes they take.
    pub bytes: usize,
    /// The budget: 0 when the cache is off.
    pub capacity_bytes: usize,
}

/// What the engine needs of a loaded image-text model, whatever its backend.
pub trait ImageScorer: Send + Sync {
    /// One logit per pair: text sequence s of `batch` against image `image_of[s]` of `images`
    /// (distinct images), within the limits below.
    fn score(
        &self,
        batch: &PackedBatch,
        image_of: &[u32],
        images: &[Image<'_>],
    ) -> Result<Vec<f32>>;
    fn max_batch_tokens(&self) -> usize;
    /// The most pairs in one forward.
    fn max_batch_pairs(&self) -> usize;
    /// The most distinct images in one forward.
    fn max_batch_images(&self) -> usize;
    fn device_name(&self) -> String;
    /// The image-feature cache's counters now.
    fn cache_stats(&self) -> CacheStats;
    /// Empties the image-feature cache and zeroes its counters (the bench's cold runs).
    fn clear_cache(&self);
}

/// Pairs per forward: the [CLS] rows and logits are sized for this many.
pub const MAX_PAIRS_PER_FORWARD: usize = 512;

/// The forward's state behind one lock: the arena and the cache it fills.
struct State<B: Backend> {
    arena: Activations<B>,
    cache: ImageCache<B>,
}

/// A BLIP model on a backend: config, uploaded weights, its arena and image cache.
pub struct Model<B: Backend> {
    pub backend: B,
    pub cfg: ModelConfig,
    weights: Weights<B::Buf>,
    state: Mutex<State<B>>,
    max_tokens: usize,
    max_images: usize,
    cache_bytes: usize,
    entry_bytes: usize,
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
    entries: AtomicUsize,
}

impl<B: Backend> Model<B> {
    /// `cache_bytes`: the image-feature cache's budget (0: off).
    pub fn new(
        backend: B,
        cfg: ModelConfig,
        host: Weights<HostTensor>,
        max_tokens: usize,
        max_images: usize,
        cache_bytes: usize,
    ) -> Result<Self> {
        let weights = host.try_map(|t| backend.upload(&t))?;
        let arena = Activations::new(
            &backend,
            &cfg,
            max_tokens,
            MAX_PAIRS_PER_FORWARD,
            max_images,
        )?;
        let v = vision(&cfg)?;
        let slot = v.rows_per_image() * v.hidden_size;
        let entry_bytes = slot * backend.storage_bytes();
        let cache = ImageCache::new(cache_bytes / entry_bytes.max(1), slot);
        Ok(Model {
            backend,
            cfg,
            weights,
            state: Mutex::new(State { arena, cache }),
            max_tokens,
            max_images,
            cache_bytes,
            entry_bytes,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            entries: AtomicUsize::new(0),
        })
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, State<B>>> {
        self.state
            .lock()
            .map_err(|_| Error::Internal("a previous forward panicked".into()))
    }
}

impl<B: Backend> ImageScorer for Model<B> {
    fn score(
        &self,
        batch: &PackedBatch,
        image_of: &[u32],
        images: &[Image<'_>],
    ) -> Result<Vec<f32>> {
        let mut state = self.lock()?;
        let State { arena, cache } = &mut *state;
        let result = forward(
            &self.backend,
            &self.cfg,
            &self.weights,
            batch,
            image_of,
            images,
            arena,
            cache,
        );
        self.entries.store(cache.len(), Ordering::Relaxed);
        let (logits, used) = result?;
        self.hits.fetch_add(used.hits as u64, Ordering::Relaxed);
        self.misses.fetch_add(used.misses as u64, Ordering::Relaxed);
        self.evictions
            .fetch_add(used.evictions as u64, Ordering::Relaxed);
        Ok(logits)
    }

    fn max_batch_tokens(&self) -> usize {
        self.max_tokens
    }

    fn max_batch_pairs(&self) -> usize {
        MAX_PAIRS_PER_FORWARD
    }

    fn max_batch_images(&self) -> usize {
        self.max_images
    }

    fn device_name(&self) -> String {
        self.backend.device_name()
    }

    fn cache_stats(&self) -> CacheStats {
        let entries = self.entries.load(Ordering::Relaxed);
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
            entries,
            bytes: entries * self.entry_bytes,
            capacity_bytes: self.cache_bytes,
        }
    }

    fn clear_cache(&self) {
        if let Ok(mut state) = self.state.lock() {
            state.cache.clear();
        }
        self.entries.store(0, Ordering::Relaxed);
        for c in [&self.hits, &self.misses, &self.evictions] {
            c.store(0, Ordering::Relaxed);
        }
    }
}

/// The text-only `Scorer` slot of an image-text model: a text batch alone has nothing to score
/// against, so it is refused (the engine refuses text documents before they get here).
pub struct TextRefused {
    pub architecture: String,
    pub device: String,
    pub max_tokens: usize,
}

impl Scorer for TextRefused {
    fn score(&self, _batch: &PackedBatch) -> Result<Vec<f32>> {
        Err(Error::input(format!(
            "{} scores (query, image) pairs: every document must be an image",
            self.architecture
        )))
    }

    fn max_batch_tokens(&self) -> usize {
        self.max_tokens
    }

    fn device_name(&self) -> String {
        self.device.clone()
    }
}
