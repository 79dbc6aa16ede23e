//! ModernBERT (transformers' `ModernBertForSequenceClassification`): its weights and its
//! forward, a flat list of ops over the same `Backend` as BERT's.
//!
//! Per layer: `x += Wo(attn(rope(Wqkv(attn_norm(x)))))`, `x += Wo(geglu(Wi(mlp_norm(x))))`;
//! attention is full or a window of `local_attention / 2` keys on each side, inside each pair;
//! layer 0 has no attention norm. Then the final norm, cls or mean pooling, and the head:
//! dense + act + LayerNorm + classifier. No position table: RoPE, theta per layer type.

use std::sync::Mutex;

use crate::backend::Backend;
use crate::batch::PackedBatch;
use crate::config::{LayerType, ModelConfig, ModernBertConfig, Pooling};
use crate::error::{Error, Result};
use crate::model::{check_rope_batch, Scorer};
use crate::weights::{Checkpoint, HostTensor, LayerNorm, Linear};

/// One ModernBERT layer. `wqkv` is already fused in the checkpoint (Q | K | V).
#[derive(Debug, Clone)]
pub struct Layer<T> {
    pub kind: LayerType,
    /// `None` on layer 0 (transformers' Identity).
    pub attn_norm: Option<LayerNorm<T>>,
    pub wqkv: Linear<T>,
    pub wo: Linear<T>,
    pub mlp_norm: LayerNorm<T>,
    /// [2·intermediate, hidden]: input rows, then gate rows.
    pub wi: Linear<T>,
    pub mlp_wo: Linear<T>,
}

#[derive(Debug, Clone)]
pub struct Weights<T> {
    pub tok_embeddings: T,
    pub emb_norm: LayerNorm<T>,
    pub layers: Vec<Layer<T>>,
    pub final_norm: LayerNorm<T>,
    pub head_dense: Linear<T>,
    pub head_norm: LayerNorm<T>,
    pub classifier: Linear<T>,
}

pub(crate) fn map_lin<T, U>(l: Linear<T>, f: &mut impl FnMut(T) -> Result<U>) -> Result<Linear<U>> {
    Ok(Linear {
        w: f(l.w)?,
        b: f(l.b)?,
        out_dim: l.out_dim,
        in_dim: l.in_dim,
    })
}

pub(crate) fn map_ln<T, U>(
    l: LayerNorm<T>,
    f: &mut impl FnMut(T) -> Result<U>,
) -> Result<LayerNorm<U>> {
    Ok(LayerNorm {
        gamma: f(l.gamma)?,
        beta: f(l.beta)?,
    })
}

impl<T> Weights<T> {
    pub fn try_map<U>(self, mut f: impl FnMut(T) -> Result<U>) -> Result<Weights<U>> {
        let f = &mut f;
        let tok_embeddings = f(self.tok_embeddings)?;
        let emb_norm = map_ln(self.emb_norm, f)?;
        let mut layers = Vec::with_capacity(self.layers.len());
        for l in self.layers {
            layers.push(Layer {
                kind: l.kind,
                attn_norm: match l.attn_norm {
                    Some(n) => Some(map_ln(n, f)?),
                    None => None,
                },
                wqkv: map_lin(l.wqkv, f)?,
                wo: map_lin(l.wo, f)?,
                mlp_norm: map_ln(l.mlp_norm, f)?,
                wi: map_lin(l.wi, f)?,
                mlp_wo: map_lin(l.mlp_wo, f)?,
            });
        }
        Ok(Weights {
            tok_embeddings,
            emb_norm,
            layers,
            final_norm: map_ln(self.final_norm, f)?,
            head_dense: map_lin(self.head_dense, f)?,
            head_norm: map_ln(self.head_norm, f)?,
            classifier: map_lin(self.classifier, f)?,
        })
    }
}

/// The family's settings; an internal error if the config is another family's.
pub fn settings(cfg: &ModelConfig) -> Result<&ModernBertConfig> {
    cfg.modernbert
        .as_ref()
        .ok_or_else(|| Error::Internal("a ModernBERT forward on a non-ModernBERT config".into()))
}

/// Loads every tensor the forward needs under the hub's names (`model.` prefix, or none).
/// Absent biases (`*_bias` false) become zeros.
pub fn load(ckpt: &Checkpoint, cfg: &ModelConfig) -> Result<Weights<HostTensor>> {
    let m = settings(cfg)?;
    let (h, inter) = (cfg.hidden_size, cfg.intermediate_size);
    let body = |name: &str, shape: &[usize]| {
        ckpt.tensor(&[format!("model.{name}"), name.to_string()], shape)
    };
    let zeros = |name: &str, n: usize| HostTensor {
        name: format!("{name} (zeros)"),
        shape: vec![n],
        data: vec![0.0; n],
    };
    let linear = |name: &str, out_dim: usize, in_dim: usize, bias: bool, top: bool| {
        let get = |n: &str, shape: &[usize]| {
            if top {
                ckpt.tensor(&[n.to_string()], shape)
            } else {
                body(n, shape)
            }
        };
        let w = get(&format!("{name}.weight"), &[out_dim, in_dim])?;
        let b = if bias {
            get(&format!("{name}.bias"), &[out_dim])?
        } else {
            zeros(&format!("{name}.bias"), out_dim)
        };
        Ok::<_, Error>(Linear {
            w,
            b,
            out_dim,
            in_dim,
        })
    };
    let norm = |name: &str, top: bool| {
        let get = |n: &str| {
            if top {
                ckpt.tensor(&[n.to_string()], &[h])
            } else {
                body(n, &[h])
            }
        };
        let gamma = get(&format!("{name}.weight"))?;
        let beta = if m.norm_bias {
            get(&format!("{name}.bias"))?
        } else {
            zeros(&format!("{name}.bias"), h)
        };
        Ok::<_, Error>(LayerNorm { gamma, beta })
    };
    let mut layers = Vec::with_capacity(cfg.num_layers);
    for (i, &kind) in m.layer_types.iter().enumerate() {
        let p = format!("layers.{i}");
        layers.push(Layer {
            kind,
            attn_norm: if i == 0 {
                None
            } else {
                Some(norm(&format!("{p}.attn_norm"), false)?)
            },
            wqkv: linear(&format!("{p}.attn.Wqkv"), 3 * h, h, m.attention_bias, false)?,
            wo: linear(&format!("{p}.attn.Wo"), h, h, m.attention_bias, false)?,
            mlp_norm: norm(&format!("{p}.mlp_norm"), false)?,
            wi: linear(&format!("{p}.mlp.Wi"), 2 * inter, h, m.mlp_bias, false)?,
            mlp_wo: linear(&format!("{p}.mlp.Wo"), h, inter, m.mlp_bias, false)?,
        });
    }
    Ok(Weights {
        tok_embeddings: body("embeddings.tok_embeddings.weight", &[cfg.vocab_size, h])?,
        emb_norm: norm("embeddings.norm", false)?,
        layers,
        final_norm: norm("final_norm", false)?,
        head_dense: linear("head.dense", h, h, m.classifier_bias, true)?,
        head_norm: norm("head.norm", true)?,
        classifier: linear("classifier", cfg.num_labels, h, true, true)?,
    })
}

/// Every intermediate of one forward, sized for `max_tokens` rows and `max_seqs` sequences.
pub struct Activations<B: Backend> {
    batch: B::Batch,
    /// The residual stream.
    hidden: B::Buf,
    /// The next op's normed input: an attention's or the MLP's, then the final norm's output.
    normed: B::Buf,
    qkv: B::Buf,
    ctx: B::Buf,
    tmp: B::Buf,
    /// Wi's output, input | gate.
    ffn2: B::Buf,
    ffn: B::Buf,
    /// The last layer's [CLS] rows under cls pooling: residual stream and attention context.
    cls: B::Buf,
    cls_ctx: B::Buf,
    /// Mean pooling's output, then the head's dense output.
    pooled: B::Buf,
    dense: B::Buf,
    logits: B::Logits,
    max_tokens: usize,
    max_seqs: usize,
}

impl<B: Backend> Activations<B> {
    pub fn new(b: &B, cfg: &ModelConfig, max_tokens: usize, max_seqs: usize) -> Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Activations {
            batch: b.alloc_batch(max_tokens, max_seqs)?,
            hidden: b.alloc(max_tokens * h)?,
            normed: b.alloc(max_tokens * h)?,
            qkv: b.alloc(max_tokens * 3 * h)?,
            ctx: b.alloc(max_tokens * h)?,
            tmp: b.alloc(max_tokens * h)?,
            ffn2: b.alloc(max_tokens * cfg.ffn_in_width())?,
            ffn: b.alloc(max_tokens * i)?,
            cls: b.alloc(max_seqs * h)?,
            cls_ctx: b.alloc(max_seqs * h)?,
            pooled: b.alloc(max_seqs * h)?,
            dense: b.alloc(max_seqs * h)?,
            logits: b.alloc_logits(max_seqs)?,
            max_tokens,
            max_seqs,
        })
    }
}

/// Scores one packed batch: one logit per sequence.
///
/// With `graphs`, the batch is padded to its `BatchShape` and the device work handed to
/// `Backend::run` with that shape (CUDA graphs), as BERT's forward does; the padding changes no
/// real row's result.
pub fn forward<B: Backend>(
    b: &B,
    cfg: &ModelConfig,
    w: &Weights<B::Buf>,
    batch: &PackedBatch,
    a: &mut Activations<B>,
    graphs: bool,
) -> Result<Vec<f32>> {
    let Some(shape) = check_rope_batch(cfg, batch, a.max_tokens, a.max_seqs, graphs)? else {
        return Ok(Vec::new());
    };
    let padded = shape.map(|s| batch.padded_to(s));
    let dev = padded.as_ref().unwrap_or(batch);
    b.load_batch(dev, &mut a.batch)?;
    let (rows, seqs) = (dev.tokens(), dev.len());
    b.run(shape, &mut || layers(b, cfg, w, rows, seqs, a))?;
    b.read_logits(&a.logits, batch.len())
}

/// Full or windowed attention, as the layer's type says.
#[allow(clippy::too_many_arguments)]
fn attend<B: Backend>(
    b: &B,
    m: &ModernBertConfig,
    kind: LayerType,
    qkv: &B::Buf,
    batch: &B::Batch,
    heads: usize,
    head_dim: usize,
    out: &mut B::Buf,
) -> Result<()> {
    match kind {
        LayerType::Full => b.attention(qkv, batch, heads, head_dim, out),
        LayerType::Sliding => b.attention_window(qkv, batch, heads, head_dim, m.half_window(), out),
    }
}

/// The norm in front of a layer's attention; layer 0 has none (its input is the embedding
/// norm's output).
fn attn_norm<T>(l: &Layer<T>) -> Result<&LayerNorm<T>> {
    l.attn_norm.as_ref().ok_or_else(|| {
        Error::Internal("a ModernBERT layer after the first without attn_norm".into())
    })
}

/// The device work of one forward over the batch loaded in `a`: `rows` rows in `seqs`
/// sequences (padding included), from the embeddings to the logits. It only queues work.
///
/// Each residual add is fused with the norm that reads its result (`residual_layernorm`), so
/// `normed` always holds the next op's input: layer i's MLP ends by writing layer i + 1's
/// attention input (or the final norm's output).
fn layers<B: Backend>(
    b: &B,
    cfg: &ModelConfig,
    w: &Weights<B::Buf>,
    rows: usize,
    seqs: usize,
    a: &mut Activations<B>,
) -> Result<()> {
    let m = settings(cfg)?;
    let (eps, h, heads, d, inter, act) = (
        cfg.layer_norm_eps,
        cfg.hidden_size,
        cfg.num_heads,
        cfg.head_dim,
        cfg.intermediate_size,
        cfg.activation,
    );
    let Some((last, body)) = w.layers.split_last() else {
        return Err(Error::Internal("a model with no layers".into()));
    };
    b.embed_tokens(&a.batch, &w.tok_embeddings, h, &mut a.tmp)?;
    b.layernorm(&a.tmp, rows, &w.emb_norm, eps, &mut a.hidden)?;
    if let Some(first) = w.layers.first() {
        if let Some(ln) = &first.attn_norm {
            b.layernorm(&a.hidden, rows, ln, eps, &mut a.normed)?;
        }
    }
    for (i, l) in body.iter().enumerate() {
        let x = if l.attn_norm.is_some() {
            &a.normed
        } else {
            &a.hidden
        };
        b.linear(x, rows, &l.wqkv, None, &mut a.qkv)?;
        b.rope(&mut a.qkv, &a.batch, heads, d, m.rope_theta(l.kind))?;
        attend(b, m, l.kind, &a.qkv, &a.batch, heads, d, &mut a.ctx)?;
        b.linear(&a.ctx, rows, &l.wo, None, &mut a.tmp)?;
        b.residual_layernorm(&a.tmp, rows, &l.mlp_norm, eps, &mut a.hidden, &mut a.normed)?;
        b.linear(&a.normed, rows, &l.wi, None, &mut a.ffn2)?;
        b.geglu(&a.ffn2, rows, inter, act, &mut a.ffn)?;
        b.linear(&a.ffn, rows, &l.mlp_wo, None, &mut a.tmp)?;
        let next = attn_norm(&w.layers[i + 1])?;
        b.residual_layernorm(&a.tmp, rows, next, eps, &mut a.hidden, &mut a.normed)?;
    }
    // The last layer: every row is a key and value of its attention, but under cls pooling only
    // the [CLS] rows feed the head, so the rest of the layer runs on those `seqs` rows alone.
    let x = if last.attn_norm.is_some() {
        &a.normed
    } else {
        &a.hidden
    };
    b.linear(x, rows, &last.wqkv, None, &mut a.qkv)?;
    b.rope(&mut a.qkv, &a.batch, heads, d, m.rope_theta(last.kind))?;
    attend(b, m, last.kind, &a.qkv, &a.batch, heads, d, &mut a.ctx)?;
    let (r, ctx, res) = match m.classifier_pooling {
        Pooling::Cls => {
            b.gather_cls(&a.ctx, h, &a.batch, &mut a.cls_ctx)?;
            b.gather_cls(&a.hidden, h, &a.batch, &mut a.cls)?;
            (seqs, &a.cls_ctx, &mut a.cls)
        }
        Pooling::Mean => (rows, &a.ctx, &mut a.hidden),
    };
    b.linear(ctx, r, &last.wo, None, &mut a.tmp)?;
    b.residual_layernorm(&a.tmp, r, &last.mlp_norm, eps, res, &mut a.normed)?;
    b.linear(&a.normed, r, &last.wi, None, &mut a.ffn2)?;
    b.geglu(&a.ffn2, r, inter, act, &mut a.ffn)?;
    b.linear(&a.ffn, r, &last.mlp_wo, None, &mut a.tmp)?;
    b.residual_layernorm(&a.tmp, r, &w.final_norm, eps, res, &mut a.normed)?;
    // The head: the pooled rows, dense + act, its norm, the one-logit classifier.
    let pooled = match m.classifier_pooling {
        Pooling::Cls => &a.normed,
        Pooling::Mean => {
            b.mean_pool(&a.normed, h, &a.batch, &mut a.pooled)?;
            &a.pooled
        }
    };
    let head_act = Some(m.classifier_activation);
    b.linear(pooled, seqs, &w.head_dense, head_act, &mut a.dense)?;
    b.layernorm(&a.dense, seqs, &w.head_norm, eps, &mut a.tmp)?;
    b.classify(&a.tmp, seqs, &w.classifier, &mut a.logits)
}

/// A ModernBERT model on a backend: config, uploaded weights and its arena.
pub struct Model<B: Backend> {
    pub backend: B,
    pub cfg: ModelConfig,
    weights: Weights<B::Buf>,
    arena: Mutex<Activations<B>>,
    max_tokens: usize,
    graphs: bool,
}

impl<B: Backend> Model<B> {
    pub fn new(
        backend: B,
        cfg: ModelConfig,
        host: Weights<HostTensor>,
        max_tokens: usize,
    ) -> Result<Self> {
        let weights = host.try_map(|t| backend.upload(&t))?;
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

    /// Pads every batch to its `BatchShape` and lets the backend record and replay the
    /// device work per shape (CUDA graphs); off by default.
    pub fn with_graphs(mut self, on: bool) -> Self {
        self.graphs = on;
        self
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
