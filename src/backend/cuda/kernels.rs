//! One typed launcher per kernel of kernels/*.cu. Each works out its grid and block, checks its
//! preconditions (sizes, alignment, supported widths) and returns `Result`: nothing that input
//! can reach becomes a device-side fault.

use std::marker::PhantomData;
use std::sync::Arc;

use cudarc::driver::{
    CudaFunction, CudaModule, CudaSlice, CudaStream, CudaView, LaunchConfig, PushKernelArg,
};

use super::storage::{kernel_name, Storage};
use crate::error::{Error, Result};

/// Head dims the attention kernel is instantiated for.
pub const HEAD_DIMS: [usize; 4] = [16, 32, 64, 128];
/// Query rows per attention block (`AttentionTraits::kBlockM`).
const ATTN_BLOCK_M: usize = 64;
/// Threads per attention block (`AttentionTraits::kThreads`).
const ATTN_THREADS: u32 = 128;
/// Widest row the LayerNorm kernels take: 1024 threads of 8 columns.
pub const MAX_LN_WIDTH: usize = 8 * 1024;
/// Widest hidden size the head kernel takes: 2 * width floats of shared memory.
pub const MAX_HEAD_WIDTH: usize = 4096;
const HEAD_THREADS: u32 = 256;
const GATHER_THREADS: u32 = 128;
const GELU_THREADS: u32 = 256;
/// Threads per RoPE block: one token, a warp per head at a time (kernels/rope.cu).
const ROPE_THREADS: u32 = 128;
/// Widest head the RoPE kernels take: 4 pairs per lane.
pub const MAX_ROPE_HEAD_DIM: usize = 256;
const POOL_THREADS: u32 = 128;
/// The fragment probe's one warp, and its per-lane outputs (kernels/probe.cu).
pub const PROBE_LANES: usize = 32;
/// Elements of the probe's A and B inputs: 16 x 16 each.
pub const PROBE_INPUT: usize = 16 * 16;
/// u32 per lane in the probe's `frags` output: 4 A registers, then 4 ldmatrix registers.
pub const PROBE_FRAGS: usize = 8;
/// f32 per lane in the probe's `d` output: n-tile 0's 4 accumulators, then n-tile 1's.
pub const PROBE_ACC: usize = 8;

/// Every kernel of the embedded fatbin, instantiated for storage `S`.
pub struct Kernels<S: Storage> {
    storage: PhantomData<S>,
    embed: CudaFunction,
    add_ln: CudaFunction,
    gelu: CudaFunction,
    gather_cls: CudaFunction,
    head: CudaFunction,
    attention: Vec<(usize, CudaFunction)>,
    probe: CudaFunction,
    // The pre-norm families' ops (ModernBERT).
    embed_tokens: CudaFunction,
    layernorm: CudaFunction,
    residual_ln: CudaFunction,
    rope: CudaFunction,
    geglu: CudaFunction,
    mean_pool: CudaFunction,
    classify: CudaFunction,
    // The decoder LLMs' ops (Qwen).
    rmsnorm: CudaFunction,
    residual_rmsnorm: CudaFunction,
    qk_norm_rope: CudaFunction,
    swiglu: CudaFunction,
    gather_last: CudaFunction,
    // The visual cross-encoder's ops (BLIP, kernels/vision.cu).
    patchify: CudaFunction,
    vit_embed: CudaFunction,
    cross_attention: Vec<(usize, CudaFunction)>,
}

/// What the fragment probe (kernels/probe.cu) wrote, lane by lane, in register order.
#[derive(Debug, Clone, PartialEq)]
pub struct FragmentProbe {
    /// The 4 A fragment registers, as loaded from memory (two values each, low half first).
    pub a: [[u32; 4]; PROBE_LANES],
    /// The 4 registers ldmatrix.x4.trans gave for B.
    pub ldmatrix: [[u32; 4]; PROBE_LANES],
    /// The accumulators after D = A B + C: n-tile 0's 4, then n-tile 1's.
    pub d: [[f32; PROBE_ACC]; PROBE_LANES],
}

fn internal(what: &str, msg: String) -> Error {
    Error::Internal(format!("{what}: {msg}"))
}

fn need(what: &str, have: usize, need: usize) -> Result<()> {
    if have < need {
        return Err(internal(
            what,
            format!("buffer of {have} elements, the op needs {need}"),
        ));
    }
    Ok(())
}

fn as_i32(what: &str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| internal(what, format!("{v} does not fit the kernel's i32")))
}

fn as_u32(what: &str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| internal(what, format!("{v} does not fit the grid's u32")))
}

/// Threads for a LayerNorm row of `width` columns: one per 8 columns, whole warps.
fn ln_threads(what: &str, width: usize) -> Result<u32> {
    if width == 0 || !width.is_multiple_of(8) || width > MAX_LN_WIDTH {
        return Err(Error::Cuda(format!(
            "{what}: hidden size {width} is not supported (a multiple of 8, at most {MAX_LN_WIDTH})"
        )));
    }
    Ok((width / 8).div_ceil(32) as u32 * 32)
}

/// The packed batch as the kernels read it: views into the one uploaded buffer.
pub struct BatchViews<'a> {
    pub ids: CudaView<'a, u32>,
    pub types: CudaView<'a, u32>,
    pub positions: CudaView<'a, u32>,
    /// i32 prefix sums, n + 1 entries (stored as u32 bits).
    pub cu_seqlens: CudaView<'a, u32>,
    /// One entry: the rows of sequence 0 that every later sequence also attends to (a
    /// shared-prefix batch, `PackedBatch::shared_prefix`), else 0. In device memory, so that a
    /// CUDA graph recorded for a batch shape serves every prefix length.
    pub prefix: CudaView<'a, u32>,
    pub tokens: usize,
    pub seqs: usize,
    pub max_seqlen: usize,
}

/// The keys each query of `Kernels::attention` sees within its sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mask {
    /// Every key (BERT).
    Full,
    /// Keys at most this far away on either side (ModernBERT's local layers).
    Window(usize),
    /// Keys up to the query's own position, after the shared prefix if the batch has one
    /// (the decoder LLMs).
    Causal,
}

impl<S: Storage> Kernels<S> {
    pub fn load(module: &Arc<CudaModule>) -> Result<Self> {
        let f = |op: &str| {
            let name = kernel_name::<S>(op);
            module.load_function(&name).map_err(|e| {
                Error::Cuda(format!(
                    "kernel `{name}` missing from the embedded fatbin: {e}"
                ))
            })
        };
        let (mut attention, mut cross_attention) = (Vec::new(), Vec::new());
        for d in HEAD_DIMS {
            attention.push((d, f(&format!("attention_d{d}"))?));
            cross_attention.push((d, f(&format!("cross_attention_d{d}"))?));
        }
        Ok(Kernels {
            storage: PhantomData,
            embed: f("embed_layernorm")?,
            add_ln: f("add_layernorm")?,
            gelu: f("gelu")?,
            gather_cls: f("gather_cls")?,
            head: f("cls_head")?,
            attention,
            probe: f("fragment_probe")?,
            embed_tokens: f("embed_tokens")?,
            layernorm: f("layernorm")?,
            residual_ln: f("residual_layernorm")?,
            rope: f("rope")?,
            geglu: f("geglu")?,
            mean_pool: f("mean_pool")?,
            classify: f("classify")?,
            rmsnorm: f("rmsnorm")?,
            residual_rmsnorm: f("residual_rmsnorm")?,
            qk_norm_rope: f("qk_norm_rope")?,
            swiglu: f("swiglu")?,
            gather_last: f("gather_last")?,
            patchify: f("patchify")?,
            vit_embed: f("vit_embed")?,
            cross_attention,
        })
    }

    /// `n` images [3, size, size] as rows of patches (im2col; see kernels/vision.cu).
    pub fn patchify(
        &self,
        s: &Arc<CudaStream>,
        pixels: &CudaSlice<S>,
        n: usize,
        size: usize,
        patch: usize,
        out: &mut CudaSlice<S>,
    ) -> Result<()> {
        if patch == 0 || !size.is_multiple_of(patch) {
            return Err(internal(
                "patchify",
                format!("image side {size} is not a multiple of the patch {patch}"),
            ));
        }
        need("patchify pixels", pixels.len(), n * 3 * size * size)?;
        need("patchify out", out.len(), n * 3 * size * size)?;
        let total = n * 3 * size * size;
        if total == 0 {
            return Ok(());
        }
        let cfg = LaunchConfig {
            grid_dim: (
                as_u32("patchify blocks", total.div_ceil(256).min(65535))?,
                1,
                1,
            ),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let (n, size, patch) = (
            as_i32("patchify images", n)?,
            as_i32("patchify size", size)?,
            as_i32("patchify patch", patch)?,
        );
        // SAFETY: matches `patchify_{dtype}`; size % patch == 0, so the kernel writes exactly
        // n·3·size² elements of out and reads the same count of pixels (both checked above);
        // the grid-stride loop covers them whatever the grid.
        unsafe {
            s.launch_builder(&self.patchify)
                .arg(pixels)
                .arg(out)
                .arg(&n)
                .arg(&size)
                .arg(&patch)
                .launch(cfg)?;
        }
        Ok(())
    }

    /// A ViT's embedding rows: per image the class token then its patches, each plus its
    /// position (`positions` [rows, width], rows = patches per image + 1).
    #[allow(clippy::too_many_arguments)]
    pub fn vit_embed(
        &self,
        s: &Arc<CudaStream>,
        patches: &CudaSlice<S>,
        n: usize,
        class: &CudaSlice<S>,
        positions: &CudaSlice<S>,
        width: usize,
        out: &mut CudaSlice<S>,
    ) -> Result<()> {
        let rows = positions.len() / width.max(1);
        if rows == 0 || class.len() != width {
            return Err(internal(
                "vit_embed",
                format!(
                    "class token of {} and positions of {} for width {width}",
                    class.len(),
                    positions.len()
                ),
            ));
        }
        need("vit_embed patches", patches.len(), n * (rows - 1) * width)?;
        need("vit_embed out", out.len(), n * rows * width)?;
        if n == 0 {
            return Ok(());
        }
        let cfg = LaunchConfig {
            grid_dim: (as_u32("vit_embed rows", n * rows)?, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let (r, w) = (
            as_i32("vit_embed rows", rows)?,
            as_i32("vit_embed width", width)?,
        );
        // SAFETY: matches `vit_embed_{dtype}`; block b writes out row b < n·rows and reads
        // class (width), positions row b % rows < rows and patch row (b / rows)·(rows - 1) +
        // b % rows - 1 < n·(rows - 1): all inside the buffers checked above.
        unsafe {
            s.launch_builder(&self.vit_embed)
                .arg(patches)
                .arg(class)
                .arg(positions)
                .arg(out)
                .arg(&r)
                .arg(&w)
                .launch(cfg)?;
        }
        Ok(())
    }

    /// Cross-attention of `b`'s query rows (sequence s) to `kv_b`'s rows of sequence s; `kv`
    /// rows hold K | V, `heads · head_dim` each; no mask.
    #[allow(clippy::too_many_arguments)]
    /// `images`: one one-token sequence per query sequence, its id the pair's image; the
    /// caller checked every id names an image of `kv` (`image_rows` rows each).
    #[allow(clippy::too_many_arguments)]
    pub fn cross_attention(
        &self,
        s: &Arc<CudaStream>,
        q: &CudaSlice<S>,
        b: &BatchViews<'_>,
        kv: &CudaSlice<S>,
        images: &BatchViews<'_>,
        image_rows: usize,
        heads: usize,
        head_dim: usize,
        out: &mut CudaSlice<S>,
    ) -> Result<()> {
        let Some((_, f)) = self.cross_attention.iter().find(|(d, _)| *d == head_dim) else {
            return Err(Error::Cuda(format!(
                "cross_attention: head_dim {head_dim} is not supported by the CUDA kernels (one of {HEAD_DIMS:?})"
            )));
        };
        if b.seqs != images.seqs || images.tokens != images.seqs {
            return Err(internal(
                "cross_attention",
                format!(
                    "{} query sequences over {} image indices in {} sequences",
                    b.seqs, images.tokens, images.seqs
                ),
            ));
        }
        let h = heads * head_dim;
        need("cross_attention q", q.len(), b.tokens * h)?;
        need("cross_attention kv", kv.len(), image_rows * 2 * h)?;
        need("cross_attention out", out.len(), b.tokens * h)?;
        if b.seqs == 0 || b.tokens == 0 {
            return Ok(());
        }
        if heads == 0 || heads > 65535 {
            return Err(internal(
                "cross_attention",
                format!("{heads} heads (1..=65535)"),
            ));
        }
        let cfg = LaunchConfig {
            grid_dim: (
                as_u32("cross_attention sequences", b.seqs)?,
                heads as u32,
                1,
            ),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        let heads = as_i32("cross_attention heads", heads)?;
        let image_rows = as_i32("cross_attention image rows", image_rows)?;
        // SAFETY: matches `cross_attention_d{D}_{dtype}`; cu_seqlens holds seqs + 1
        // non-decreasing prefix sums ending at most at b.tokens (checked by load_batch), so
        // every q/out row read or written is < b.tokens; the caller checked every image index
        // i has rows i·image_rows .. (i + 1)·image_rows inside kv; columns stay below heads·D.
        unsafe {
            s.launch_builder(f)
                .arg(q)
                .arg(&b.cu_seqlens)
                .arg(kv)
                .arg(&images.ids)
                .arg(&image_rows)
                .arg(out)
                .arg(&heads)
                .launch(cfg)?;
        }
        Ok(())
    }

    /// `out[t] = LN(word[id] + position[pos] + token_type[type])` over the batch's tokens.
    /// The caller has checked the batch's ids, positions and types against the tables.
    #[allow(clippy::too_many_arguments)]
    pub fn embed_layernorm(
        &self,
        s: &Arc<CudaStream>,
        b: &BatchViews<'_>,
        word: &CudaSlice<S>,
        position: &CudaSlice<S>,
        token_type: &CudaSlice<S>,
        gamma: &CudaSlice<S>,
        beta: &CudaSlice<S>,
        eps: f32,
        out: &mut CudaSlice<S>,
    ) -> Result<()> {
        let width = gamma.len();
        let threads = ln_threads("embed_layernorm", width)?;
        need("embed_layernorm beta", beta.len(), width)?;
        need("embed_layernorm out", out.len(), b.tokens * width)?;
        for (what, t) in [
            ("word", word),
            ("position", position),
            ("token_type", token_type),
        ] {
            if t.len() % width != 0 {
                return Err(internal(
                    "embed_layernorm",
                    format!("{what} table of {} elements is not [n, {width}]", t.len()),
                ));
            }
        }
        if b.tokens == 0 {
            return Ok(());
        }
        let cfg = LaunchConfig {
            grid_dim: (as_u32("embed_layernorm rows", b.tokens)?, 1, 1),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: 0,
        };
        let w = as_i32("embed_layernorm width", width)?;
        // SAFETY: the argument list matches `embed_layernorm_{dtype}`; every index the kernel
        // forms lies inside its buffer: rows < b.tokens (the views' length), ids / positions /
        // types checked against their tables by the caller, columns < width.
        unsafe {
            s.launch_builder(&self.embed)
                .arg(&b.ids)
                .arg(&b.types)
                .arg(&b.positions)
                .arg(word)
                .arg(position)
                .arg(token_type)
                .arg(gamma)
                .arg(beta)
                .arg(out)
                .arg(&w)
                .arg(&eps)
                .launch(cfg)?;
        }
        Ok(())
    }

    /// `hidden = LN(hidden + delta)` over `rows` rows.
    #[allow(clippy::too_many_arguments)]
    pub fn add_layernorm(
        &self,
        s: &Arc<CudaStream>,
        delta: &CudaSlice<S>,
        rows: usize,
        gamma: &CudaSlice<S>,
        beta: &CudaSlice<S>,
        eps: f32,
        hidden: &mut CudaSlice<S>,
    ) -> Result<()> {
        let bufs = [("delta", delta.len()), ("hidden", hidden.len())];
        let Some((cfg, w)) = Self::ln_launch("add_layernorm", rows, gamma, beta, &bufs)? else {
            return Ok(());
        };
        // SAFETY: matches `add_layernorm_{dtype}`; rows * width elements of delta and hidden
        // exist (checked above); gamma and beta hold width.
        unsafe {
            s.launch_builder(&self.add_ln)
                .arg(delta)
                .arg(hidden)
                .arg(gamma)
                .arg(beta)
                .arg(&w)
                .arg(&eps)
                .launch(cfg)?;
        }
        Ok(())
    }

    /// Exact-erf GELU in place over the first `len` elements of `x`.
    pub fn gelu(&self, s: &Arc<CudaStream>, x: &mut CudaSlice<S>, len: usize) -> Result<()> {
        need("gelu", x.len(), len)?;
        if len == 0 {
            return Ok(());
        }
        let blocks = len.div_ceil(8 * GELU_THREADS as usize).clamp(1, 1 << 20) as u32;
        let cfg = LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (GELU_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let n = len as u64;
        // SAFETY: matches `gelu_{dtype}(T*, size_t)`; the kernel touches the first len <= x.len()
        // elements; a CudaSlice starts 256-byte aligned, so its 16-byte accesses are aligned.
        unsafe {
            s.launch_builder(&self.gelu).arg(x).arg(&n).launch(cfg)?;
        }
        Ok(())
    }

    /// Attention over the packed batch (kernels/attention.cu): qkv [tokens, (heads + 2·kv_heads)·d]
    /// (Q | K | V; kv_heads = heads for the encoders) → ctx [tokens, heads·d]. `mask` picks the
    /// keys a query sees: all of its sequence's, a window, or the causal ones after a shared
    /// prefix (the batch's `prefix` entry).
    #[allow(clippy::too_many_arguments)]
    pub fn attention(
        &self,
        s: &Arc<CudaStream>,
        b: &BatchViews<'_>,
        qkv: &CudaSlice<S>,
        heads: usize,
        kv_heads: usize,
        head_dim: usize,
        mask: Mask,
        ctx: &mut CudaSlice<S>,
    ) -> Result<()> {
        let Some((_, f)) = self.attention.iter().find(|(d, _)| *d == head_dim) else {
            return Err(Error::Cuda(format!(
                "attention: head_dim {head_dim} is not supported by the CUDA kernels (one of {HEAD_DIMS:?})"
            )));
        };
        if kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
            return Err(internal(
                "attention",
                format!("{heads} query heads over {kv_heads} K/V heads"),
            ));
        }
        let hidden = heads * head_dim;
        need(
            "attention qkv",
            qkv.len(),
            b.tokens * (heads + 2 * kv_heads) * head_dim,
        )?;
        need("attention ctx", ctx.len(), b.tokens * hidden)?;
        if b.seqs == 0 || b.tokens == 0 {
            return Ok(());
        }
        if heads > 65535 {
            return Err(internal("attention", format!("{heads} heads (1..=65535)")));
        }
        let m_blocks = b.max_seqlen.div_ceil(ATTN_BLOCK_M);
        if m_blocks > 65535 {
            return Err(Error::Cuda(format!(
                "attention: a sequence of {} tokens is longer than the kernel's grid allows ({})",
                b.max_seqlen,
                65535 * ATTN_BLOCK_M
            )));
        }
        let cfg = LaunchConfig {
            grid_dim: (
                as_u32("attention sequences", b.seqs)?,
                heads as u32,
                m_blocks as u32,
            ),
            block_dim: (ATTN_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let (h, kv) = (
            as_i32("attention heads", heads)?,
            as_i32("attention kv_heads", kv_heads)?,
        );
        let scale_log2 = std::f32::consts::LOG2_E / (head_dim as f32).sqrt();
        // A window as wide as the longest sequence is no window; clamping keeps the kernel's
        // index sums (row ± window) inside i32. Negative means no window.
        let (window, causal): (i32, i32) = match mask {
            Mask::Full => (-1, 0),
            Mask::Window(w) => (as_i32("attention window", w.min(b.max_seqlen))?, 0),
            Mask::Causal => (-1, 1),
        };
        // SAFETY: matches `attention_d{D}_{dtype}`; cu_seqlens holds seqs + 1 non-decreasing
        // prefix sums ending at most at b.tokens and the prefix entry is at most the first
        // sequence's length (both checked by load_batch), so every row read or written is <
        // b.tokens, inside qkv and ctx (checked above); max_seqlen bounds every sequence's length.
        unsafe {
            s.launch_builder(f)
                .arg(qkv)
                .arg(&b.cu_seqlens)
                .arg(&b.prefix)
                .arg(ctx)
                .arg(&h)
                .arg(&kv)
                .arg(&scale_log2)
                .arg(&window)
                .arg(&causal)
                .launch(cfg)?;
        }
        Ok(())
    }

    /// `out[s] = src[cu_seqlens[s]]` for every sequence (or, with `last`, its last row): the
    /// [CLS] rows or the decoder LLMs' last rows, packed (a zero row for an empty sequence).
    pub fn gather_row(
        &self,
        s: &Arc<CudaStream>,
        b: &BatchViews<'_>,
        src: &CudaSlice<S>,
        width: usize,
        last: bool,
        out: &mut CudaSlice<S>,
    ) -> Result<()> {
        if width == 0 || !width.is_multiple_of(8) {
            return Err(Error::Cuda(format!(
                "gather: hidden size {width} is not supported (a multiple of 8)"
            )));
        }
        need("gather src", src.len(), b.tokens * width)?;
        need("gather out", out.len(), b.seqs * width)?;
        if b.seqs == 0 {
            return Ok(());
        }
        let cfg = LaunchConfig {
            grid_dim: (as_u32("gather sequences", b.seqs)?, 1, 1),
            block_dim: (GATHER_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let w = as_i32("gather width", width)?;
        // SAFETY: matches `gather_cls_{dtype}` and `gather_last_{dtype}`; cu_seqlens (seqs + 1
        // entries, checked by load_batch) never decreases and ends at most at b.tokens, so a
        // non-empty sequence's first and last rows lie inside src ([tokens, width]) and an empty one reads nothing; out holds seqs rows; width % 8 == 0 and
        // cudarc allocations are 256-byte aligned, so the 16-byte accesses are aligned.
        unsafe {
            s.launch_builder(if last {
                &self.gather_last
            } else {
                &self.gather_cls
            })
            .arg(src)
            .arg(&b.cu_seqlens)
            .arg(out)
            .arg(&w)
            .launch(cfg)?;
        }
        Ok(())
    }

    /// The classification head on the packed [CLS] rows (row s is sequence s's); logits f32
    /// [seqs].
    #[allow(clippy::too_many_arguments)]
    pub fn cls_head(
        &self,
        s: &Arc<CudaStream>,
        b: &BatchViews<'_>,
        cls: &CudaSlice<S>,
        w1: &CudaSlice<S>,
        b1: &CudaSlice<S>,
        w2: &CudaSlice<S>,
        b2: &CudaSlice<S>,
        width: usize,
        logits: &mut CudaSlice<f32>,
    ) -> Result<()> {
        if width == 0 || !width.is_multiple_of(8) || width > MAX_HEAD_WIDTH {
            return Err(Error::Cuda(format!(
                "cls_head: hidden size {width} is not supported (a multiple of 8, at most {MAX_HEAD_WIDTH})"
            )));
        }
        need("cls_head cls rows", cls.len(), b.seqs * width)?;
        need("cls_head dense weight", w1.len(), width * width)?;
        need("cls_head dense bias", b1.len(), width)?;
        need("cls_head out weight", w2.len(), width)?;
        need("cls_head out bias", b2.len(), 1)?;
        need("cls_head logits", logits.len(), b.seqs)?;
        if b.seqs == 0 {
            return Ok(());
        }
        let cfg = LaunchConfig {
            grid_dim: (as_u32("cls_head sequences", b.seqs)?, 1, 1),
            block_dim: (HEAD_THREADS, 1, 1),
            shared_mem_bytes: (2 * width * std::mem::size_of::<f32>()) as u32,
        };
        let w = as_i32("cls_head width", width)?;
        // SAFETY: matches `cls_head_{dtype}`; cls holds seqs rows of width (checked); the weights hold the sizes checked above; the
        // dynamic shared memory holds the 2 * width floats the kernel uses (<= 32 KiB).
        unsafe {
            s.launch_builder(&self.head)
                .arg(cls)
                .arg(w1)
                .arg(b1)
                .arg(w2)
                .arg(b2)
                .arg(logits)
                .arg(&w)
                .launch(cfg)?;
        }
        Ok(())
    }

    /// The fragment probe: one warp on a [16][16] and b [16][16] (fp16, row-major); writes
    /// frags [32][PROBE_FRAGS] and d [32][PROBE_ACC] (see kernels/probe.cu).
    pub fn fragment_probe(
        &self,
        s: &Arc<CudaStream>,
        a: &CudaSlice<S>,
        b: &CudaSlice<S>,
        frags: &mut CudaSlice<u32>,
        d: &mut CudaSlice<f32>,
    ) -> Result<()> {
        need("fragment_probe a", a.len(), PROBE_INPUT)?;
        need("fragment_probe b", b.len(), PROBE_INPUT)?;
        need(
            "fragment_probe frags",
            frags.len(),
            PROBE_LANES * PROBE_FRAGS,
        )?;
        need("fragment_probe d", d.len(), PROBE_LANES * PROBE_ACC)?;
        let cfg = LaunchConfig {
            grid_dim: (1, 1, 1),
            block_dim: (PROBE_LANES as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: matches `fragment_probe_{dtype}(const T*, const T*, uint32_t*, float*)`; the
        // kernel reads the first 256 elements of a and b and writes the first 32 * 8 of frags
        // and d, all present (checked above); cudarc allocations are 256-byte aligned, so its
        // 16-byte loads of b's rows (32 bytes each) are aligned.
        unsafe {
            s.launch_builder(&self.probe)
                .arg(a)
                .arg(b)
                .arg(frags)
                .arg(d)
                .launch(cfg)?;
        }
        Ok(())
    }

    /// `out[t] = table[ids[t]]`, `width` wide. The caller has checked every id against the
    /// table's rows.
    pub fn embed_tokens(
        &self,
        s: &Arc<CudaStream>,
        b: &BatchViews<'_>,
        table: &CudaSlice<S>,
        width: usize,
        out: &mut CudaSlice<S>,
    ) -> Result<()> {
        if width == 0 || !width.is_multiple_of(8) || !table.len().is_multiple_of(width) {
            return Err(Error::Cuda(format!(
                "embed_tokens: hidden size {width} is not supported, or the table ({} elements) is not [n, {width}] (a multiple of 8)",
                table.len()
            )));
        }
        need("embed_tokens out", out.len(), b.tokens * width)?;
        if b.tokens == 0 {
            return Ok(());
        }
        let cfg = LaunchConfig {
            grid_dim: (as_u32("embed_tokens rows", b.tokens)?, 1, 1),
            block_dim: (GATHER_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let w = as_i32("embed_tokens width", width)?;
        // SAFETY: matches `embed_tokens_{dtype}`; rows < b.tokens (out holds them, checked), every
        // id < table rows (checked by the caller); width % 8 == 0 and allocations are 256-byte
        // aligned, so the 16-byte copies are aligned.
        unsafe {
            s.launch_builder(&self.embed_tokens)
                .arg(&b.ids)
                .arg(table)
                .arg(out)
                .arg(&w)
                .launch(cfg)?;
        }
        Ok(())
    }

    /// The launch of a LayerNorm over `rows` rows of `gamma.len()` columns, after checking
    /// every buffer (`bufs`: name, elements) holds them; None when there is nothing to do.
    fn ln_launch(
        what: &str,
        rows: usize,
        gamma: &CudaSlice<S>,
        beta: &CudaSlice<S>,
        bufs: &[(&str, usize)],
    ) -> Result<Option<(LaunchConfig, i32)>> {
        let width = gamma.len();
        let threads = ln_threads(what, width)?;
        need(&format!("{what} beta"), beta.len(), width)?;
        for &(name, len) in bufs {
            need(&format!("{what} {name}"), len, rows * width)?;
        }
        if rows == 0 {
            return Ok(None);
        }
        let cfg = LaunchConfig {
            grid_dim: (as_u32(what, rows)?, 1, 1),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: 0,
        };
        Ok(Some((cfg, as_i32(what, width)?)))
    }

    /// `out = LN(x)` over `rows` rows.
    #[allow(clippy::too_many_arguments)]
    pub fn layernorm(
        &self,
        s: &Arc<CudaStream>,
        x: &CudaSlice<S>,
        rows: usize,
        gamma: &CudaSlice<S>,
        beta: &CudaSlice<S>,
        eps: f32,
        out: &mut CudaSlice<S>,
    ) -> Result<()> {
        let bufs = [("in", x.len()), ("out", out.len())];
        let Some((cfg, w)) = Self::ln_launch("layernorm", rows, gamma, beta, &bufs)? else {
            return Ok(());
        };
        // SAFETY: matches `layernorm_{dtype}`; rows * width elements of x and out exist and gamma
        // and beta hold width (checked by ln_launch); x and out are distinct buffers (one
        // borrowed shared, one mutably), as the kernel's __restrict__ asks.
        unsafe {
            s.launch_builder(&self.layernorm)
                .arg(x)
                .arg(out)
                .arg(gamma)
                .arg(beta)
                .arg(&w)
                .arg(&eps)
                .launch(cfg)?;
        }
        Ok(())
    }

    /// `hidden += delta`, then `out = LN(hidden)`, over `rows` rows: a pre-norm block's
    /// residual and the next norm in one pass.
    #[allow(clippy::too_many_arguments)]
    pub fn residual_layernorm(
        &self,
        s: &Arc<CudaStream>,
        delta: &CudaSlice<S>,
        hidden: &mut CudaSlice<S>,
        rows: usize,
        gamma: &CudaSlice<S>,
        beta: &CudaSlice<S>,
        eps: f32,
        out: &mut CudaSlice<S>,
    ) -> Result<()> {
        let bufs = [
            ("delta", delta.len()),
            ("hidden", hidden.len()),
            ("out", out.len()),
        ];
        let what = "residual_layernorm";
        let Some((cfg, w)) = Self::ln_launch(what, rows, gamma, beta, &bufs)? else {
            return Ok(());
        };
        // SAFETY: matches `residual_layernorm_{dtype}`; rows * width elements of delta, hidden and
        // out exist and gamma and beta hold width (checked by ln_launch); the three are distinct
        // buffers (Rust's borrows keep hidden and out apart from each other and from delta).
        unsafe {
            s.launch_builder(&self.residual_ln)
                .arg(delta)
                .arg(hidden)
                .arg(out)
                .arg(gamma)
                .arg(beta)
                .arg(&w)
                .arg(&eps)
                .launch(cfg)?;
        }
        Ok(())
    }

    /// RoPE in place on the Q and K parts of qkv [tokens, (heads + 2·kv_heads)·head_dim], by
    /// each token's position id; with `norms` (q_norm, k_norm: head_dim each), every Q and K
    /// head RMS-normalised first (kernels/rope.cu).
    #[allow(clippy::too_many_arguments)]
    pub fn rope(
        &self,
        s: &Arc<CudaStream>,
        b: &BatchViews<'_>,
        qkv: &mut CudaSlice<S>,
        heads: usize,
        kv_heads: usize,
        head_dim: usize,
        norms: Option<(&CudaSlice<S>, &CudaSlice<S>, f32)>,
        theta: f64,
    ) -> Result<()> {
        if head_dim == 0 || !head_dim.is_multiple_of(2) || head_dim > MAX_ROPE_HEAD_DIM {
            return Err(Error::Cuda(format!(
                "rope: head_dim {head_dim} is not supported (even, at most {MAX_ROPE_HEAD_DIM})"
            )));
        }
        if !(theta.is_finite() && theta > 0.0) {
            return Err(internal("rope", format!("theta {theta} is not positive")));
        }
        need(
            "rope qkv",
            qkv.len(),
            b.tokens * (heads + 2 * kv_heads) * head_dim,
        )?;
        if let Some((q, k, _)) = norms {
            need("rope q_norm", q.len(), head_dim)?;
            need("rope k_norm", k.len(), head_dim)?;
        }
        if b.tokens == 0 || heads + kv_heads == 0 {
            return Ok(());
        }
        let cfg = LaunchConfig {
            grid_dim: (as_u32("rope tokens", b.tokens)?, 1, 1),
            block_dim: (ROPE_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let (h, kv, d) = (
            as_i32("rope heads", heads)?,
            as_i32("rope kv_heads", kv_heads)?,
            as_i32("rope head_dim", head_dim)?,
        );
        // SAFETY: matches `rope_{dtype}` / `qk_norm_rope_{dtype}`; the kernel touches the Q and
        // K columns ((heads + kv_heads)·head_dim) of rows < b.tokens of qkv (checked above),
        // reads b.tokens positions and head_dim values of each norm (checked).
        unsafe {
            match norms {
                None => s
                    .launch_builder(&self.rope)
                    .arg(qkv)
                    .arg(&b.positions)
                    .arg(&h)
                    .arg(&kv)
                    .arg(&d)
                    .arg(&theta)
                    .launch(cfg)?,
                Some((q_norm, k_norm, eps)) => s
                    .launch_builder(&self.qk_norm_rope)
                    .arg(qkv)
                    .arg(&b.positions)
                    .arg(q_norm)
                    .arg(k_norm)
                    .arg(&h)
                    .arg(&kv)
                    .arg(&d)
                    .arg(&eps)
                    .arg(&theta)
                    .launch(cfg)?,
            };
        }
        Ok(())
    }

    /// A gated MLP's middle: x [rows, 2·inter] (input | gate) → out [rows, inter] =
    /// act(input) · gate, GeGLU (gelu) or, with `silu`, SwiGLU.
    pub fn gated(
        &self,
        s: &Arc<CudaStream>,
        x: &CudaSlice<S>,
        rows: usize,
        inter: usize,
        silu: bool,
        out: &mut CudaSlice<S>,
    ) -> Result<()> {
        need("geglu in", x.len(), rows * 2 * inter)?;
        need("geglu out", out.len(), rows * inter)?;
        if rows == 0 || inter == 0 {
            return Ok(());
        }
        let blocks = (rows * inter)
            .div_ceil(8 * GELU_THREADS as usize)
            .clamp(1, 1 << 20) as u32;
        let cfg = LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (GELU_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let (r, i) = (rows as u64, as_i32("geglu inter", inter)?);
        // SAFETY: matches `geglu_{dtype}` and `swiglu_{dtype}` (const T*, T*, size_t, int); the kernel reads rows·2·inter
        // elements of x and writes rows·inter of out (checked above); its 16-byte path runs only
        // when inter % 8 == 0, so every vector starts 16-byte aligned.
        unsafe {
            s.launch_builder(if silu { &self.swiglu } else { &self.geglu })
                .arg(x)
                .arg(out)
                .arg(&r)
                .arg(&i)
                .launch(cfg)?;
        }
        Ok(())
    }

    /// `out[s]` = the mean of sequence s's rows of src [tokens, width] (a zero row for an
    /// empty sequence).
    pub fn mean_pool(
        &self,
        s: &Arc<CudaStream>,
        b: &BatchViews<'_>,
        src: &CudaSlice<S>,
        width: usize,
        out: &mut CudaSlice<S>,
    ) -> Result<()> {
        if width == 0 || !width.is_multiple_of(8) {
            return Err(Error::Cuda(format!(
                "mean_pool: hidden size {width} is not supported (a multiple of 8)"
            )));
        }
        need("mean_pool src", src.len(), b.tokens * width)?;
        need("mean_pool out", out.len(), b.seqs * width)?;
        if b.seqs == 0 {
            return Ok(());
        }
        let cfg = LaunchConfig {
            grid_dim: (as_u32("mean_pool sequences", b.seqs)?, 1, 1),
            block_dim: (POOL_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let w = as_i32("mean_pool width", width)?;
        // SAFETY: matches `mean_pool_{dtype}`; cu_seqlens (seqs + 1 non-decreasing entries ending at
        // most at b.tokens, checked by load_batch) keeps every row read inside src; out holds
        // seqs rows; width % 8 == 0 keeps the 16-byte accesses aligned.
        unsafe {
            s.launch_builder(&self.mean_pool)
                .arg(src)
                .arg(&b.cu_seqlens)
                .arg(out)
                .arg(&w)
                .launch(cfg)?;
        }
        Ok(())
    }

    /// `logits[s] = w · x[s] + b` for `n` rows of x [n, width], in f32.
    #[allow(clippy::too_many_arguments)]
    pub fn classify(
        &self,
        s: &Arc<CudaStream>,
        x: &CudaSlice<S>,
        n: usize,
        w: &CudaSlice<S>,
        bias: &CudaSlice<S>,
        width: usize,
        logits: &mut CudaSlice<f32>,
    ) -> Result<()> {
        if width == 0 || !width.is_multiple_of(8) {
            return Err(Error::Cuda(format!(
                "classify: hidden size {width} is not supported (a multiple of 8)"
            )));
        }
        need("classify rows", x.len(), n * width)?;
        need("classify weight", w.len(), width)?;
        need("classify bias", bias.len(), 1)?;
        need("classify logits", logits.len(), n)?;
        if n == 0 {
            return Ok(());
        }
        let cfg = LaunchConfig {
            grid_dim: (as_u32("classify rows", n)?, 1, 1),
            block_dim: (POOL_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let wd = as_i32("classify width", width)?;
        // SAFETY: matches `classify_{dtype}`; x holds n rows of width, w width, bias one, logits n
        // (checked above); width % 8 == 0 keeps the 16-byte loads aligned.
        unsafe {
            s.launch_builder(&self.classify)
                .arg(x)
                .arg(w)
                .arg(bias)
                .arg(logits)
                .arg(&wd)
                .launch(cfg)?;
        }
        Ok(())
    }

    /// RMSNorm over `rows` rows of `weight.len()` columns: with a `delta`, `hidden += delta`
    /// first and the norm reads the sum (kernels/rmsnorm.cu).
    #[allow(clippy::too_many_arguments)]
    pub fn rmsnorm(
        &self,
        s: &Arc<CudaStream>,
        delta: Option<&CudaSlice<S>>,
        hidden: &mut CudaSlice<S>,
        rows: usize,
        weight: &CudaSlice<S>,
        eps: f32,
        out: &mut CudaSlice<S>,
    ) -> Result<()> {
        let width = weight.len();
        let threads = ln_threads("rmsnorm", width)?;
        need("rmsnorm hidden", hidden.len(), rows * width)?;
        need("rmsnorm out", out.len(), rows * width)?;
        if let Some(d) = delta {
            need("rmsnorm delta", d.len(), rows * width)?;
        }
        if rows == 0 {
            return Ok(());
        }
        let cfg = LaunchConfig {
            grid_dim: (as_u32("rmsnorm rows", rows)?, 1, 1),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: 0,
        };
        let w = as_i32("rmsnorm width", width)?;
        // SAFETY: matches `rmsnorm_{dtype}(const T*, T*, const T*, int, float)` and
        // `residual_rmsnorm_{dtype}(const T*, T*, T*, const T*, int, float)`; rows · width
        // elements of delta, hidden and out exist and weight holds width (checked above); the
        // buffers are distinct (Rust's borrows keep them apart).
        unsafe {
            match delta {
                None => s
                    .launch_builder(&self.rmsnorm)
                    .arg(&*hidden)
                    .arg(out)
                    .arg(weight)
                    .arg(&w)
                    .arg(&eps)
                    .launch(cfg)?,
                Some(d) => s
                    .launch_builder(&self.residual_rmsnorm)
                    .arg(d)
                    .arg(hidden)
                    .arg(out)
                    .arg(weight)
                    .arg(&w)
                    .arg(&eps)
                    .launch(cfg)?,
            };
        }
        Ok(())
    }
}
