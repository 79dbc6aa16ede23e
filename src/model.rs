//! The forward pass, written once, as a flat list of fused ops over a `Backend`.
//!
//! Weights are uploaded once at load; activations live in one arena sized for the largest
//! batch (`max_tokens`), so a forward allocates nothing.

use std::sync::Mutex;

use crate::backend::Backend;
use crate::batch::PackedBatch;
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
            max_tokens,
            max_seqs,
        })
    }
}

/// Scores one packed batch: one logit per sequence.
pub fn forward<B: Backend>(
    b: &B,
    cfg: &ModelConfig,
    w: &Weights<B::Buf>,
    batch: &PackedBatch,
    a: &mut Activations<B>,
) -> Result<Vec<f32>> {
    let rows = batch.tokens();
    if rows > a.max_tokens || batch.len() > a.max_seqs {
        return Err(Error::Internal(format!(
            "batch of {rows} tokens in {} sequences exceeds the arena ({} tokens, {} sequences)",
            batch.len(),
            a.max_tokens,
            a.max_seqs
        )));
    }
    if batch.is_empty() {
        return Ok(Vec::new());
    }
    let (eps, act, h) = (cfg.layer_norm_eps, Some(cfg.activation), cfg.hidden_size);
    let Some((last, body)) = w.layers.split_last() else {
        return Err(Error::Internal("a model with no layers".into()));
    };
    b.load_batch(batch, &mut a.batch)?;
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
    // the head, so the output projection, both LayerNorms and the FFN run on those n rows.
    let n = batch.len();
    b.linear(&a.hidden, rows, &last.qkv, None, &mut a.qkv)?;
    b.attention(&a.qkv, &a.batch, cfg.num_heads, cfg.head_dim, &mut a.ctx)?;
    b.gather_cls(&a.ctx, h, &a.batch, &mut a.cls_ctx)?;
    b.gather_cls(&a.hidden, h, &a.batch, &mut a.cls)?;
    b.linear(&a.cls_ctx, n, &last.attn_out, None, &mut a.tmp)?;
    b.add_layernorm(&a.tmp, n, &last.ln_attn, eps, &mut a.cls)?;
    b.linear(&a.cls, n, &last.ffn_in, act, &mut a.ffn)?;
    b.linear(&a.ffn, n, &last.ffn_out, None, &mut a.tmp)?;
    b.add_layernorm(&a.tmp, n, &last.ln_ffn, eps, &mut a.cls)?;
    b.head(&a.cls, &a.batch, &w.head)
}

/// A model on a backend: config, uploaded weights and its arena.
pub struct Model<B: Backend> {
    pub backend: B,
    pub cfg: ModelConfig,
    weights: Weights<B::Buf>,
    arena: Mutex<Activations<B>>,
    max_tokens: usize,
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
        })
    }
}

/// What the engine needs of a loaded model, whatever its backend.
pub trait Scorer: Send + Sync {
    /// One logit per sequence of a batch of at most `max_batch_tokens` tokens.
    fn score(&self, batch: &PackedBatch) -> Result<Vec<f32>>;
    fn max_batch_tokens(&self) -> usize;
    fn device_name(&self) -> String;
}

impl<B: Backend> Scorer for Model<B> {
    fn score(&self, batch: &PackedBatch) -> Result<Vec<f32>> {
        let mut arena = self
            .arena
            .lock()
            .map_err(|_| Error::Internal("a previous forward panicked".into()))?;
        forward(&self.backend, &self.cfg, &self.weights, batch, &mut arena)
    }

    fn max_batch_tokens(&self) -> usize {
        self.max_tokens
    }

    fn device_name(&self) -> String {
        self.backend.device_name()
    }
}
