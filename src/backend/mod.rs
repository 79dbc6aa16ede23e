//! The op set every backend implements. The forward pass (model.rs) is written once over it.
//!
//! Buffers are flat, row-major, token-major: a [tokens, width] activation is `tokens * width`
//! elements. Ops take the row count of the current batch, so that one arena sized for the
//! largest batch serves every smaller one.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;

use crate::batch::{BatchShape, PackedBatch};
use crate::config::Activation;
use crate::error::Result;
use crate::weights::{Embeddings, Head, HostTensor, LayerNorm, Linear};

/// The error of an op a backend does not implement.
fn unsupported<B: Backend + ?Sized>(b: &B, op: &str) -> crate::error::Error {
    crate::error::Error::Internal(format!(
        "op `{op}` is not implemented on {}",
        b.device_name()
    ))
}

pub trait Backend: Send + Sync + 'static {
    /// A weight or activation buffer: f32 on the CPU, f16 on CUDA.
    type Buf: Send + Sync;
    /// The packed batch as the backend holds it (ids, type ids, positions, cu_seqlens).
    type Batch: Send;
    /// Room for f32 logits, one per sequence.
    type Logits: Send;

    /// A short description of the device, for logs and `info`.
    fn device_name(&self) -> String;

    /// Bytes one element of a `Buf` takes (f32 on the CPU, the 16-bit storage on CUDA): what
    /// sizes a byte budget such as the image-feature cache's.
    fn storage_bytes(&self) -> usize {
        std::mem::size_of::<f32>()
    }

    /// Copies a host weight into a backend buffer, converting its dtype.
    fn upload(&self, t: &HostTensor) -> Result<Self::Buf>;
    /// An activation buffer of `len` elements.
    fn alloc(&self, len: usize) -> Result<Self::Buf>;
    /// Room for a packed batch of up to `max_tokens` tokens in `max_seqs` sequences.
    fn alloc_batch(&self, max_tokens: usize, max_seqs: usize) -> Result<Self::Batch>;
    /// Room for the logits of up to `max_seqs` sequences.
    fn alloc_logits(&self, max_seqs: usize) -> Result<Self::Logits>;
    /// Moves a packed batch into `dst`; the batch fits what `dst` was allocated for.
    fn load_batch(&self, batch: &PackedBatch, dst: &mut Self::Batch) -> Result<()>;

    /// `out[t] = LayerNorm(word[id] + position[pos] + token_type[type])`.
    fn embed(
        &self,
        batch: &Self::Batch,
        emb: &Embeddings<Self::Buf>,
        eps: f32,
        out: &mut Self::Buf,
    ) -> Result<()>;

    /// `out[rows, out_dim] = act(x[rows, in_dim] · Wᵀ + b)`.
    fn linear(
        &self,
        x: &Self::Buf,
        rows: usize,
        lin: &Linear<Self::Buf>,
        act: Option<Activation>,
        out: &mut Self::Buf,
    ) -> Result<()>;

    /// Per sequence and head: `softmax(Q Kᵀ / sqrt(d)) V`, reading the fused [tokens, 3·hidden]
    /// projection (Q | K | V, heads contiguous inside each) and writing [tokens, hidden].
    fn attention(
        &self,
        qkv: &Self::Buf,
        batch: &Self::Batch,
        heads: usize,
        head_dim: usize,
        out: &mut Self::Buf,
    ) -> Result<()>;

    /// `hidden = LayerNorm(hidden + delta)` over `rows` rows.
    fn add_layernorm(
        &self,
        delta: &Self::Buf,
        rows: usize,
        ln: &LayerNorm<Self::Buf>,
        eps: f32,
        hidden: &mut Self::Buf,
    ) -> Result<()>;

    /// `out[s] = src[cu_seqlens[s]]`: the first ([CLS]) row of every sequence, `width` wide,
    /// packed into rows 0..n.
    fn gather_cls(
        &self,
        src: &Self::Buf,
        width: usize,
        batch: &Self::Batch,
        out: &mut Self::Buf,
    ) -> Result<()>;

    /// The classification head on the [CLS] rows packed by `gather_cls` (row s is sequence s's):
    /// dense + tanh, then the one-logit projection, one f32 logit per sequence into `out`.
    fn head(
        &self,
        cls: &Self::Buf,
        batch: &Self::Batch,
        head: &Head<Self::Buf>,
        out: &mut Self::Logits,
    ) -> Result<()>;

    // ---- Ops the pre-norm families need (ModernBERT). The CPU reference implements them; a
    // backend without them answers each with an error naming the op, never a panic. ----

    /// `out[t] = table[id[t]]`: the token embeddings alone, `width` wide.
    fn embed_tokens(
        &self,
        batch: &Self::Batch,
        table: &Self::Buf,
        width: usize,
        out: &mut Self::Buf,
    ) -> Result<()> {
        let _ = (batch, table, width, out);
        Err(unsupported(self, "embed_tokens"))
    }

    /// `out = LayerNorm(x)` over `rows` rows (a bias-free LayerNorm has a zero `beta`).
    fn layernorm(
        &self,
        x: &Self::Buf,
        rows: usize,
        ln: &LayerNorm<Self::Buf>,
        eps: f32,
        out: &mut Self::Buf,
    ) -> Result<()> {
        let _ = (x, rows, ln, eps, out);
        Err(unsupported(self, "layernorm"))
    }

    /// A pre-norm block's residual and the next norm: `hidden += delta`, then
    /// `out = LayerNorm(hidden)`, over `rows` rows.
    fn residual_layernorm(
        &self,
        delta: &Self::Buf,
        rows: usize,
        ln: &LayerNorm<Self::Buf>,
        eps: f32,
        hidden: &mut Self::Buf,
        out: &mut Self::Buf,
    ) -> Result<()> {
        let _ = (delta, rows, ln, eps, hidden, out);
        Err(unsupported(self, "residual_layernorm"))
    }

    /// Rotary embeddings, in place, on the Q and K thirds of the fused [tokens, 3·hidden]
    /// projection: within each head, element `i` pairs with `i + head_dim/2` (transformers'
    /// `rotate_half`), rotated by `position · theta^(-2i/head_dim)`, the position being the
    /// token's position id.
    fn rope(
        &self,
        qkv: &mut Self::Buf,
        batch: &Self::Batch,
        heads: usize,
        head_dim: usize,
        theta: f64,
    ) -> Result<()> {
        let _ = (qkv, batch, heads, head_dim, theta);
        Err(unsupported(self, "rope"))
    }

    /// `attention` restricted to a window inside each sequence: query `i` sees key `j` only
    /// when `|i - j| <= half_window`.
    fn attention_window(
        &self,
        qkv: &Self::Buf,
        batch: &Self::Batch,
        heads: usize,
        head_dim: usize,
        half_window: usize,
        out: &mut Self::Buf,
    ) -> Result<()> {
        let _ = (qkv, batch, heads, head_dim, half_window, out);
        Err(unsupported(self, "attention_window"))
    }

    /// A gated MLP's middle: `x` is [rows, 2·inter], `out[rows, inter] = act(first half) ·
    /// second half`. ModernBERT's GeGLU (gelu; `chunk(2)` gives input | gate) and Qwen's SwiGLU
    /// (silu; gate_proj | up_proj fused at load).
    fn geglu(
        &self,
        x: &Self::Buf,
        rows: usize,
        inter: usize,
        act: Activation,
        out: &mut Self::Buf,
    ) -> Result<()> {
        let _ = (x, rows, inter, act, out);
        Err(unsupported(self, "geglu"))
    }

    /// `out[s] = mean of src over sequence s's rows`, `width` wide, packed into rows 0..n
    /// (zeros for an empty sequence).
    fn mean_pool(
        &self,
        src: &Self::Buf,
        width: usize,
        batch: &Self::Batch,
        out: &mut Self::Buf,
    ) -> Result<()> {
        let _ = (src, width, batch, out);
        Err(unsupported(self, "mean_pool"))
    }

    /// The last projection of a head: `out[s] = x[s] · Wᵀ + b` for `n` rows, one f32 logit each
    /// (`lin.out_dim` = 1).
    fn classify(
        &self,
        x: &Self::Buf,
        n: usize,
        lin: &Linear<Self::Buf>,
        out: &mut Self::Logits,
    ) -> Result<()> {
        let _ = (x, n, lin, out);
        Err(unsupported(self, "classify"))
    }

    // ---- Ops the decoder LLM rerankers need (Qwen). ----

    /// RMSNorm over `rows` rows of `weight.len()` columns: `out = x · rsqrt(mean(x²) + eps) ·
    /// weight`; with a `delta`, `hidden += delta` first and the norm reads the sum (a pre-norm
    /// residual fused with the next norm).
    fn rmsnorm(
        &self,
        delta: Option<&Self::Buf>,
        hidden: &mut Self::Buf,
        rows: usize,
        weight: &Self::Buf,
        eps: f32,
        out: &mut Self::Buf,
    ) -> Result<()> {
        let _ = (delta, hidden, rows, weight, eps, out);
        Err(unsupported(self, "rmsnorm"))
    }

    /// On the fused projection [tokens, (heads + 2·kv_heads)·head_dim] (Q | K | V, heads
    /// contiguous): with `norms` (Qwen3's q_norm and k_norm, head_dim each) an RMSNorm of every
    /// Q and K head, then RoPE on them (`rope`'s pairing), by each token's position id.
    #[allow(clippy::too_many_arguments)]
    fn qk_norm_rope(
        &self,
        qkv: &mut Self::Buf,
        batch: &Self::Batch,
        heads: usize,
        kv_heads: usize,
        head_dim: usize,
        norms: Option<(&Self::Buf, &Self::Buf)>,
        eps: f32,
        theta: f64,
    ) -> Result<()> {
        let _ = (qkv, batch, heads, kv_heads, head_dim, norms, eps, theta);
        Err(unsupported(self, "qk_norm_rope"))
    }

    /// Causal grouped-query attention inside each sequence, reading the fused projection laid
    /// out as for `qk_norm_rope`: query head h uses K/V head h / (heads / kv_heads), query i sees
    /// keys j <= i; writes [tokens, heads·head_dim]. In a shared-prefix batch
    /// (`PackedBatch::shared_prefix`), every sequence after the first also sees the prefix rows.
    fn attention_causal(
        &self,
        qkv: &Self::Buf,
        batch: &Self::Batch,
        heads: usize,
        kv_heads: usize,
        head_dim: usize,
        out: &mut Self::Buf,
    ) -> Result<()> {
        let _ = (qkv, batch, heads, kv_heads, head_dim, out);
        Err(unsupported(self, "attention_causal"))
    }

    /// `out[s] = src[last row of sequence s]`, `width` wide, packed into rows 0..n (zeros for
    /// an empty sequence).
    fn gather_last(
        &self,
        src: &Self::Buf,
        width: usize,
        batch: &Self::Batch,
        out: &mut Self::Buf,
    ) -> Result<()> {
        let _ = (src, width, batch, out);
        Err(unsupported(self, "gather_last"))
    }

    // ---- Ops the visual cross-encoder needs (BLIP's image-text matching model). ----

    /// Copies `host` into `dst` from element `at` on: a forward's input that is not token ids
    /// (a preprocessed image's pixels).
    fn load_values(&self, host: &[f32], dst: &mut Self::Buf, at: usize) -> Result<()> {
        let _ = (host, dst, at);
        Err(unsupported(self, "load_values"))
    }

    /// A ViT's patches as rows, for its patch embedding as one GEMM (im2col): `pixels` holds `n`
    /// images of [3, size, size] (CHW); row `i·g² + py·g + px` of `out` (g = size / patch) is
    /// image i's patch (py, px), its 3·patch² values in (channel, y, x) order, the order of a
    /// Conv2d weight [hidden, 3, patch, patch] read as [hidden, 3·patch²].
    fn patchify(
        &self,
        pixels: &Self::Buf,
        n: usize,
        size: usize,
        patch: usize,
        out: &mut Self::Buf,
    ) -> Result<()> {
        let _ = (pixels, n, size, patch, out);
        Err(unsupported(self, "patchify"))
    }

    /// A ViT's embeddings for `n` images of `g²` patches, `width` wide: image i's rows in `out`
    /// start at `i·(g² + 1)`, the first `class + positions[0]`, then `patches[i·g² + j] +
    /// positions[1 + j]` (transformers' order: the patch embedding, bias included, plus the
    /// position).
    fn vit_embed(
        &self,
        patches: &Self::Buf,
        n: usize,
        class: &Self::Buf,
        positions: &Self::Buf,
        width: usize,
        out: &mut Self::Buf,
    ) -> Result<()> {
        let _ = (patches, n, class, positions, width, out);
        Err(unsupported(self, "vit_embed"))
    }

    /// Copies `len` elements of `src` from element `from` on into `dst` from element `to` on,
    /// in stream order with the ops around it (the image-feature cache's moves).
    fn copy(
        &self,
        src: &Self::Buf,
        from: usize,
        dst: &mut Self::Buf,
        to: usize,
        len: usize,
    ) -> Result<()> {
        let _ = (src, from, dst, to, len);
        Err(unsupported(self, "copy"))
    }

    /// Cross-attention: the query rows of `batch`'s sequence s (`q`, [tokens, heads·head_dim])
    /// attend to every row of image `i = images`' id s, rows `i·image_rows .. (i + 1)·image_rows`
    /// of `kv` ([images·image_rows, 2·heads·head_dim], K | V, heads contiguous in each), with no
    /// mask: `softmax(q Kᵀ / sqrt(d)) V`, written [tokens, heads·head_dim]. `images` holds one
    /// one-token sequence per sequence of `batch` ([`PackedBatch::indices`]), so one image's
    /// keys and values serve every pair that scores it. Every index must name an image `kv`
    /// holds.
    #[allow(clippy::too_many_arguments)]
    fn cross_attention(
        &self,
        q: &Self::Buf,
        batch: &Self::Batch,
        kv: &Self::Buf,
        images: &Self::Batch,
        image_rows: usize,
        heads: usize,
        head_dim: usize,
        out: &mut Self::Buf,
    ) -> Result<()> {
        let _ = (q, batch, kv, images, image_rows, heads, head_dim, out);
        Err(unsupported(self, "cross_attention"))
    }

    /// The first `n` logits `head` wrote, once the device has finished them.
    fn read_logits(&self, logits: &Self::Logits, n: usize) -> Result<Vec<f32>>;

    /// Runs `body`, the device work of one forward (every op from `embed` to `head`, nothing
    /// that waits for the device). With a `shape` (the batch was padded to it, see
    /// [`BatchShape`]) a backend may record that work once and replay the recording for every
    /// later batch of the same shape instead of calling `body`: the CUDA backend does, with a
    /// CUDA graph. The default runs `body`.
    fn run(&self, shape: Option<BatchShape>, body: &mut dyn FnMut() -> Result<()>) -> Result<()> {
        let _ = shape;
        body()
    }

    /// Lines for a report on what the backend did beyond the ops (graphs recorded, or why
    /// they were switched off). None by default.
    fn notes(&self) -> Vec<String> {
        Vec::new()
    }
}
