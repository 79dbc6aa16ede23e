//! The forward pass, written once, as a flat list of fused ops over a `Backend`.
//!
//! Weights are uploaded once at load; activations live in one arena sized for the largest
//! batch (`max_tokens`), so a forward allocates nothing.

use std::sync::Mutex;

use crate::backend::Backend;
use crate::batch::{BatchShape, PackedBatch};
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::weights::{HostTensor, Weights};

/// The activation arena: every intermediate of one forward, sized for `max_tokens`.
pub struct Activations<B: Backend> {
    batch: B::Batch,
    hidden: B::Buf,
    qkv: B::Buf,
    ctx: B::Buf,
    tmp: B::Buf,
    ffn: B::Buf,
    /// The last layer's [CLS] rows: residual stream and attention context, [seqs, hidden].
    cls: B::Buf,
    cls_ctx: B::Buf,
    logits: B::Logits,
    max_tokens: usize,
    max_seqs: usize,
}

impl<B: Backend> Activations<B> {
    pub fn new(b: &B, cfg: &ModelConfig, max_tokens: usize, max_seqs: usize) -> Result<Self> {
        let h = cfg.hidden_size;
        Ok(Activations {
            batch: b.alloc_batch(max_tokens, max_seqs)?,
            hidden: b.alloc(max_tokens * h)?,
            qkv: b.alloc(max_tokens * 3 * h)?,
            ctx: b.alloc(max_tokens * h)?,
            tmp: b.alloc(max_tokens * h)?,
            ffn: b.alloc(max_tokens * cfg.intermediate_size)?,
            cls: b.alloc(max_seqs * h)?,
            cls_ctx: b.alloc(max_seqs * h)?,
            logits: b.alloc_logits(max_seqs)?,
            max_tokens,
            max_seqs,
        })
    }
}

/// Scores one packed batch: one logit per sequence.
///
/// With `graphs`, the batch is first padded to its [`BatchShape`] and the device work is handed
/// to [`Backend::run`] with that shape, so that a backend that records it (CUDA graphs) replays
/// one recording for every batch of the shape. The padding changes no real row's result.
pub fn forward<B: Backend>(
    b: &B,
    cfg: &ModelConfig,
    w: &Weights<B::Buf>,
    batch: &PackedBatch,
    a: &mut Activations<B>,
    graphs: bool,
) -> Result<Vec<f32>> {
    let (tokens, n) = (batch.tokens(), batch.len());
    if tokens > a.max_tokens || n > a.max_seqs {
        return Err(Error::Internal(format!(
            "batch of {tokens} tokens in {n} sequences exceeds the arena ({} tokens, {} sequences)",
            a.max_tokens, a.max_seqs
        )));
    }
    if batch.is_empty() {
        return Ok(Vec::new());
    }
    // Here, not only in the backends' embed: a replayed recording runs no host code.
    check_tables(batch, cfg)?;
    let shape = graphs.then(|| {
        let longest = (0..n).map(|s| batch.range(s).len()).max().unwrap_or(0);
        BatchShape::fit(tokens, n, longest, a.max_tokens, a.max_seqs)
    });
    let padded = shape.map(|s| batch.padded_to(s));
    let dev = padded.as_ref().unwrap_or(batch);
    b.load_batch(dev, &mut a.batch)?;
    let (rows, seqs) = (dev.tokens(), dev.len());
    b.run(shape, &mut || layers(b, cfg, w, rows, seqs, a))?;
    b.read_logits(&a.logits, n)
}

/// The host-side checks of a forward over a family without position or type tables (ModernBERT,
/// Qwen), made here and not only in the backends' ops because a replayed recording runs no host
/// code: the batch fits the arena, no pair is longer than the positions, every id is in the
/// vocabulary. Returns None for an empty batch, else the batch shape to pad to (with `graphs`).
pub fn check_rope_batch(
    cfg: &ModelConfig,
    batch: &PackedBatch,
    max_tokens: usize,
    max_seqs: usize,
    graphs: bool,
) -> Result<Option<Option<BatchShape>>> {
    let (tokens, n) = (batch.tokens(), batch.len());
    if tokens > max_tokens || n > max_seqs {
        return Err(Error::Internal(format!(
            "batch of {tokens} tokens in {n} sequences exceeds the arena ({max_tokens} tokens, {max_seqs} sequences)"
        )));
    }
    if batch.is_empty() {
        return Ok(None);
    }
    let longest = (0..n).map(|s| batch.range(s).len()).max().unwrap_or(0);
    if longest > cfg.max_position_embeddings {
        return Err(Error::input(format!(
            "a pair of {longest} tokens is longer than the model's {} positions",
            cfg.max_position_embeddings
        )));
    }
    let max_id = batch.input_ids.iter().copied().max().unwrap_or(0) as usize;
    if max_id >= cfg.vocab_size {
        return Err(Error::input(format!(
            "a token id ({max_id}) is outside the model's vocabulary ({})",
            cfg.vocab_size
        )));
    }
    Ok(Some(graphs.then(|| {
        BatchShape::fit(tokens, n, longest, max_tokens, max_seqs)
    })))
}

/// The largest id, position and type must index the model's tables.
fn check_tables(batch: &PackedBatch, cfg: &ModelConfig) -> Result<()> {
    let max = |v: &[u32]| v.iter().copied().max().unwrap_or(0) as usize;
    let (id, pos, ty) = (
        max(&batch.input_ids),
        max(&batch.position_ids),
        max(&batch.token_type_ids),
    );
    let (vocab, positions, types) = (
        cfg.vocab_size,
        cfg.max_position_embeddings,
        cfg.type_vocab_size,
    );
    if id >= vocab || pos >= positions || ty >= types {
        return Err(Error::input(format!(
            "a token id, position or type (largest: {id}, {pos}, {ty}) is outside the model's tables ({vocab}, {positions}, {types})"
        )));
    }
    Ok(())
}

/// The device work of one forward over the batch loaded in `a`: `rows` rows in `seqs`
/// sequences (padding included), from the embeddings to the logits. It only queues work.
fn layers<B: Backend>(
    b: &B,
    cfg: &ModelConfig,
    w: &Weights<B::Buf>,
    rows: usize,
    seqs: usize,
    a: &mut Activations<B>,
) -> Result<()> {
    let (eps, act, h) = (cfg.layer_norm_eps, Some(cfg.activation), cfg.hidden_size);
    let Some((last, body)) = w.layers.split_last() else {
        return Err(Error::Internal("a model with no layers".into()));
    };
    b.embed(&a.batch, &w.embeddings, eps, &mut a.hidden)?;
    for l in body {
        b.linear(&a.hidden, rows, &l.qkv, None, &mut a.qkv)?;
        b.attention(&a.qkv, &a.batch, cfg.num_heads, cfg.head_dim, &mut a.ctx)?;
        b.linear(&a.ctx, rows, &l.attn_out, None, &mut a.tmp)?;
        b.add_layernorm(&a.tmp, rows, &l.ln_attn, eps, &mut a.hidden)?;
        b.linear(&a.hidden, rows, &l.ffn_in, act, &mut a.ffn)?;
        b.linear(&a.ffn, rows, &l.ffn_out, None, &mut a.tmp)?;
        b.add_layernorm(&a.tmp, rows, &l.ln_ffn, eps, &mut a.hidden)?;
    }
    // The last layer: every row is a key and value of attention, but only the [CLS] rows feed
    // the head, so the output projection, both LayerNorms and the FFN run on those rows.
    let n = seqs;
    b.linear(&a.hidden, rows, &last.qkv, None, &mut a.qkv)?;
    b.attention(&a.qkv, &a.batch, cfg.num_heads, cfg.head_dim, &mut a.ctx)?;
    b.gather_cls(&a.ctx, h, &a.batch, &mut a.cls_ctx)?;
    b.gather_cls(&a.hidden, h, &a.batch, &mut a.cls)?;
    b.linear(&a.cls_ctx, n, &last.attn_out, None, &mut a.tmp)?;
    b.add_layernorm(&a.tmp, n, &last.ln_attn, eps, &mut a.cls)?;
    b.linear(&a.cls, n, &last.ffn_in, act, &mut a.ffn)?;
    b.linear(&a.ffn, n, &last.ffn_out, None, &mut a.tmp)?;
    b.add_layernorm(&a.tmp, n, &last.ln_ffn, eps, &mut a.cls)?;
    b.head(&a.cls, &a.batch, &w.head, &mut a.logits)
}

/// A model on a backend: config, uploaded weights and its arena.
pub struct Model<B: Backend> {
    pub backend: B,
    pub cfg: ModelConfig,
    weights: Weights<B::Buf>,
    arena: Mutex<Activations<B>>,
    max_tokens: usize,
    graphs: bool,
}

impl<B: Backend> Model<B> {
    /// Uploads the weights and sizes the arena for batches of up to `max_tokens` tokens.
    pub fn new(
        backend: B,
        cfg: ModelConfig,
        host: Weights<HostTensor>,
        max_tokens: usize,
    ) -> Result<Self> {
        let weights = host.try_map(|t| backend.upload(&t))?;
        // Every sequence has at least one token.
        let arena = Activations::new(&backend, &cfg, max_tokens, max_tokens)?;
        Ok(Model {
            backend,
            cfg,
            weights,
            arena: Mutex::new(arena),
            max_tokens,
            graphs: false,
        })
    }

    /// Pads every batch to its [`BatchShape`] and lets the backend record and replay the
    /// device work per shape (CUDA graphs); off by default.
    pub fn with_graphs(mut self, on: bool) -> Self {
        self.graphs = on;
        self
    }

    pub fn graphs(&self) -> bool {
        self.graphs
    }
}

/// What the engine needs of a loaded model, whatever its backend.
pub trait Scorer: Send + Sync {
    /// One logit per sequence of a batch of at most `max_batch_tokens` tokens.
    fn score(&self, batch: &PackedBatch) -> Result<Vec<f32>>;
    fn max_batch_tokens(&self) -> usize;
    fn device_name(&self) -> String;
    /// Tokens a shared-prefix forward kept out of the layers since load (causal LM
    /// rerankers; 0 for the others).
    fn shared_tokens(&self) -> u64 {
        0
    }
}

impl<B: Backend> Scorer for Model<B> {
    fn score(&self, batch: &PackedBatch) -> Result<Vec<f32>> {
        let mut arena = self
            .arena
            .lock()
            .map_err(|_| Error::Internal("a previous forward panicked".into()))?;
        forward(
            &self.backend,
            &self.cfg,
            &self.weights,
            batch,
            &mut arena,
            self.graphs,
        )
    }

    fn max_batch_tokens(&self) -> usize {
        self.max_tokens
    }

    fn device_name(&self) -> String {
        self.backend.device_name()
    }
}
