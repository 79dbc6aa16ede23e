//! Decoder LLM rerankers on Qwen3 / Qwen2 (transformers' `Qwen3ForCausalLM`,
//! `Qwen2ForCausalLM`): their weights and their forward, a flat list of ops over the same
//! `Backend` as BERT's and ModernBERT's.
//!
//! Per layer: `x += o_proj(attn(rope(qk_norm(qkv(rms(x))))))`, `x += down(silu(gate(rms(x))) ·
//! up(rms(x)))`; attention is causal and grouped-query (`num_key_value_heads` K/V heads shared by
//! `heads / kv_heads` query heads each). Qwen3 RMS-normalises every Q and K head before RoPE;
//! Qwen2 has a bias on Q, K and V. Then the final norm and, of the LM head, only the two rows
//! the score reads: the logit is `z_yes - z_no` at each pair's last position, so the head is
//! folded at load into one vector `lm_head[yes] - lm_head[no]` (`classify`).
//!
//! Only the last position feeds the head: the last layer runs its output projection, MLP and
//! norms on each pair's last row alone.
//!
//! Shared prefix: the pairs of one call start with the same prompt prefix (and the same query),
//! and under causal attention the prefix's keys and values do not depend on what follows. So a
//! batch whose sequences share a run of leading ids is run with that run once
//! (`PackedBatch::share_prefix`): the prefix as sequence 0, each pair's remaining tokens after
//! it, attending to the prefix rows first. (n - 1) · prefix tokens fewer go through every layer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::backend::Backend;
use crate::batch::PackedBatch;
use crate::config::{ModelConfig, QwenConfig};
use crate::error::{Error, Result};
use crate::model::{check_rope_batch, Scorer};
use crate::weights::{Checkpoint, HostTensor, Linear};

/// One decoder layer. Q, K and V are fused at load into one projection (Q | K | V rows), gate
/// and up into another (gate | up rows).
#[derive(Debug, Clone)]
pub struct Layer<T> {
    pub input_norm: T,
    pub qkv: Linear<T>,
    /// Qwen3's per-head RMSNorm weights on Q and K (head_dim each).
    pub qk_norm: Option<(T, T)>,
    pub o_proj: Linear<T>,
    pub post_norm: T,
    pub gate_up: Linear<T>,
    pub down: Linear<T>,
}

#[derive(Debug, Clone)]
pub struct Weights<T> {
    pub embed: T,
    pub layers: Vec<Layer<T>>,
    pub final_norm: T,
    /// `lm_head[yes] - lm_head[no]`, one row, zero bias.
    pub head: Linear<T>,
}

fn map_lin<T, U>(l: Linear<T>, f: &mut impl FnMut(T) -> Result<U>) -> Result<Linear<U>> {
    Ok(Linear {
        w: f(l.w)?,
        b: f(l.b)?,
        out_dim: l.out_dim,
        in_dim: l.in_dim,
    })
}

impl<T> Weights<T> {
    pub fn try_map<U>(self, mut f: impl FnMut(T) -> Result<U>) -> Result<Weights<U>> {
        let f = &mut f;
        let embed = f(self.embed)?;
        let mut layers = Vec::with_capacity(self.layers.len());
        for l in self.layers {
            layers.push(Layer {
                input_norm: f(l.input_norm)?,
                qkv: map_lin(l.qkv, f)?,
                qk_norm: match l.qk_norm {
                    Some((q, k)) => Some((f(q)?, f(k)?)),
                    None => None,
                },
                o_proj: map_lin(l.o_proj, f)?,
                post_norm: f(l.post_norm)?,
                gate_up: map_lin(l.gate_up, f)?,
                down: map_lin(l.down, f)?,
            });
        }
        Ok(Weights {
            embed,
            layers,
            final_norm: f(self.final_norm)?,
            head: map_lin(self.head, f)?,
        })
    }
}

/// The family's settings; an internal error if the config is another family's.
pub fn settings(cfg: &ModelConfig) -> Result<&QwenConfig> {
    cfg.qwen
        .as_ref()
        .ok_or_else(|| Error::Internal("a Qwen forward on a non-Qwen config".into()))
}

/// Rows stacked in order: [a; b; ...], each [rows_i, cols].
fn stack(name: &str, parts: Vec<HostTensor>, cols: usize) -> HostTensor {
    let rows: usize = parts.iter().map(|p| p.data.len() / cols.max(1)).sum();
    HostTensor {
        name: name.to_string(),
        shape: vec![rows, cols],
        data: parts.into_iter().flat_map(|p| p.data).collect(),
    }
}

/// Loads every tensor the forward needs under the hub's names, fusing Q | K | V and gate | up,
/// and folds the LM head's `yes` and `no` rows into one vector.
pub fn load(
    ckpt: &Checkpoint,
    cfg: &ModelConfig,
    yes_id: u32,
    no_id: u32,
) -> Result<Weights<HostTensor>> {
    let q = settings(cfg)?;
    let (h, inter, d) = (cfg.hidden_size, cfg.intermediate_size, cfg.head_dim);
    let (heads, kv) = (cfg.num_heads, q.num_kv_heads);
    let vocab = cfg.vocab_size;
    for (what, id) in [("yes", yes_id), ("no", no_id)] {
        if id as usize >= vocab {
            return Err(Error::input(format!(
                "the `{what}` token's id {id} is outside the model's vocabulary ({vocab})"
            )));
        }
    }
    let get = |name: &str, shape: &[usize]| ckpt.tensor(&[name.to_string()], shape);
    let zeros = |name: &str, n: usize| HostTensor {
        name: format!("{name} (zeros)"),
        shape: vec![n],
        data: vec![0.0; n],
    };
    let no_bias = |name: &str, out_dim: usize, in_dim: usize| -> Result<Linear<HostTensor>> {
        Ok(Linear {
            w: get(&format!("{name}.weight"), &[out_dim, in_dim])?,
            b: zeros(&format!("{name}.bias"), out_dim),
            out_dim,
            in_dim,
        })
    };
    let mut layers = Vec::with_capacity(cfg.num_layers);
    for i in 0..cfg.num_layers {
        let p = format!("model.layers.{i}");
        let a = format!("{p}.self_attn");
        let (qn, kn) = (heads * d, kv * d);
        let w = stack(
            &format!("{a}.qkv (fused)"),
            vec![
                get(&format!("{a}.q_proj.weight"), &[qn, h])?,
                get(&format!("{a}.k_proj.weight"), &[kn, h])?,
                get(&format!("{a}.v_proj.weight"), &[kn, h])?,
            ],
            h,
        );
        let b = if q.qkv_bias {
            stack(
                &format!("{a}.qkv bias (fused)"),
                vec![
                    get(&format!("{a}.q_proj.bias"), &[qn])?,
                    get(&format!("{a}.k_proj.bias"), &[kn])?,
                    get(&format!("{a}.v_proj.bias"), &[kn])?,
                ],
                1,
            )
        } else {
            zeros(&format!("{a}.qkv.bias"), qn + 2 * kn)
        };
        let b = HostTensor {
            shape: vec![qn + 2 * kn],
            ..b
        };
        let m = format!("{p}.mlp");
        let gate_up = Linear {
            w: stack(
                &format!("{m}.gate_up (fused)"),
                vec![
                    get(&format!("{m}.gate_proj.weight"), &[inter, h])?,
                    get(&format!("{m}.up_proj.weight"), &[inter, h])?,
                ],
                h,
            ),
            b: zeros(&format!("{m}.gate_up.bias"), 2 * inter),
            out_dim: 2 * inter,
            in_dim: h,
        };
        layers.push(Layer {
            input_norm: get(&format!("{p}.input_layernorm.weight"), &[h])?,
            qkv: Linear {
                w,
                b,
                out_dim: qn + 2 * kn,
                in_dim: h,
            },
            qk_norm: if q.qwen3 {
                Some((
                    get(&format!("{a}.q_norm.weight"), &[d])?,
                    get(&format!("{a}.k_norm.weight"), &[d])?,
                ))
            } else {
                None
            },
            o_proj: no_bias(&format!("{a}.o_proj"), h, qn)?,
            post_norm: get(&format!("{p}.post_attention_layernorm.weight"), &[h])?,
            gate_up,
            down: no_bias(&format!("{m}.down_proj"), h, inter)?,
        });
    }
    let embed = get("model.embed_tokens.weight", &[vocab, h])?;
    let lm_head = if q.tied_embeddings {
        None
    } else {
        Some(get("lm_head.weight", &[vocab, h])?)
    };
    let table = lm_head.as_ref().unwrap_or(&embed);
    let row = |id: u32| &table.data[id as usize * h..(id as usize + 1) * h];
    let folded: Vec<f32> = row(yes_id)
        .iter()
        .zip(row(no_id))
        .map(|(y, n)| y - n)
        .collect();
    Ok(Weights {
        embed,
        layers,
        final_norm: get("model.norm.weight", &[h])?,
        head: Linear {
            w: HostTensor {
                name: "lm_head[yes] - lm_head[no]".into(),
                shape: vec![1, h],
                data: folded,
            },
            b: zeros("lm_head (no bias)", 1),
            out_dim: 1,
            in_dim: h,
        },
    })
}

/// Every intermediate of one forward, sized for `max_tokens` rows and `max_seqs` sequences.
pub struct Activations<B: Backend> {
    batch: B::Batch,
    /// The residual stream.
    hidden: B::Buf,
    /// The next op's normed input.
    normed: B::Buf,
    qkv: B::Buf,
    ctx: B::Buf,
    tmp: B::Buf,
    /// gate | up.
    ffn2: B::Buf,
    ffn: B::Buf,
    /// The last layer's last rows: residual stream and attention context.
    last: B::Buf,
    last_ctx: B::Buf,
    logits: B::Logits,
    max_tokens: usize,
    max_seqs: usize,
}

impl<B: Backend> Activations<B> {
    pub fn new(b: &B, cfg: &ModelConfig, max_tokens: usize, max_seqs: usize) -> Result<Self> {
        let q = settings(cfg)?;
        let (h, i, d) = (cfg.hidden_size, cfg.intermediate_size, cfg.head_dim);
        let (qn, qkv) = (cfg.num_heads * d, (cfg.num_heads + 2 * q.num_kv_heads) * d);
        Ok(Activations {
            batch: b.alloc_batch(max_tokens, max_seqs)?,
            hidden: b.alloc(max_tokens * h)?,
            normed: b.alloc(max_tokens * h)?,
            qkv: b.alloc(max_tokens * qkv)?,
            ctx: b.alloc(max_tokens * qn)?,
            tmp: b.alloc(max_tokens * h)?,
            ffn2: b.alloc(max_tokens * 2 * i)?,
            ffn: b.alloc(max_tokens * i)?,
            last: b.alloc(max_seqs * h)?,
            last_ctx: b.alloc(max_seqs * qn)?,
            logits: b.alloc_logits(max_seqs)?,
            max_tokens,
            max_seqs,
        })
    }
}

/// Scores one packed batch: `z_yes - z_no` at each sequence's last position.
///
/// With `graphs`, the batch is padded to its `BatchShape` and the device work handed to
/// `Backend::run` with that shape (CUDA graphs), as BERT's forward does.
pub fn forward<B: Backend>(
    b: &B,
    cfg: &ModelConfig,
    w: &Weights<B::Buf>,
    batch: &PackedBatch,
    a: &mut Activations<B>,
    graphs: bool,
) -> Result<Vec<f32>> {
    forward_shared(b, cfg, w, batch, a, graphs, false).map(|(logits, _)| logits)
}

/// `forward`; with `share`, a batch whose sequences share leading ids runs them once (module
/// comment). Also returns the tokens that sharing kept out of the forward.
pub fn forward_shared<B: Backend>(
    b: &B,
    cfg: &ModelConfig,
    w: &Weights<B::Buf>,
    batch: &PackedBatch,
    a: &mut Activations<B>,
    graphs: bool,
    share: bool,
) -> Result<(Vec<f32>, usize)> {
    if let Some(shared) = share.then(|| batch.share_prefix()).flatten() {
        let saved = batch.tokens() - shared.tokens();
        let mut logits = forward_once(b, cfg, w, &shared, a, graphs)?;
        // The prefix's own logit comes first.
        logits.remove(0);
        return Ok((logits, saved));
    }
    Ok((forward_once(b, cfg, w, batch, a, graphs)?, 0))
}

fn forward_once<B: Backend>(
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

/// The device work of one forward over the batch loaded in `a`: `rows` rows in `seqs`
/// sequences (padding included). It only queues work.
///
/// Each residual add is fused with the RMSNorm that reads its result, so `normed` always holds
/// the next op's input.
fn layers<B: Backend>(
    b: &B,
    cfg: &ModelConfig,
    w: &Weights<B::Buf>,
    rows: usize,
    seqs: usize,
    a: &mut Activations<B>,
) -> Result<()> {
    let q = settings(cfg)?;
    let (h, heads, kv, d) = (cfg.hidden_size, cfg.num_heads, q.num_kv_heads, cfg.head_dim);
    let (eps, theta, inter, act) = (
        q.rms_norm_eps,
        q.rope_theta,
        cfg.intermediate_size,
        cfg.activation,
    );
    let Some((last, body)) = w.layers.split_last() else {
        return Err(Error::Internal("a model with no layers".into()));
    };
    b.embed_tokens(&a.batch, &w.embed, h, &mut a.hidden)?;
    b.rmsnorm(
        None,
        &mut a.hidden,
        rows,
        &w.layers[0].input_norm,
        eps,
        &mut a.normed,
    )?;
    for (i, l) in body.iter().enumerate() {
        b.linear(&a.normed, rows, &l.qkv, None, &mut a.qkv)?;
        b.qk_norm_rope(&mut a.qkv, &a.batch, heads, kv, d, norms(l), eps, theta)?;
        b.attention_causal(&a.qkv, &a.batch, heads, kv, d, &mut a.ctx)?;
        b.linear(&a.ctx, rows, &l.o_proj, None, &mut a.tmp)?;
        b.rmsnorm(
            Some(&a.tmp),
            &mut a.hidden,
            rows,
            &l.post_norm,
            eps,
            &mut a.normed,
        )?;
        b.linear(&a.normed, rows, &l.gate_up, None, &mut a.ffn2)?;
        b.geglu(&a.ffn2, rows, inter, act, &mut a.ffn)?;
        b.linear(&a.ffn, rows, &l.down, None, &mut a.tmp)?;
        let next = &w.layers[i + 1].input_norm;
        b.rmsnorm(Some(&a.tmp), &mut a.hidden, rows, next, eps, &mut a.normed)?;
    }
    // The last layer: every row is a key and value of its attention, but only each pair's last
    // row feeds the head, so the rest of the layer runs on those `seqs` rows alone.
    b.linear(&a.normed, rows, &last.qkv, None, &mut a.qkv)?;
    b.qk_norm_rope(&mut a.qkv, &a.batch, heads, kv, d, norms(last), eps, theta)?;
    b.attention_causal(&a.qkv, &a.batch, heads, kv, d, &mut a.ctx)?;
    b.gather_last(&a.ctx, heads * d, &a.batch, &mut a.last_ctx)?;
    b.gather_last(&a.hidden, h, &a.batch, &mut a.last)?;
    b.linear(&a.last_ctx, seqs, &last.o_proj, None, &mut a.tmp)?;
    b.rmsnorm(
        Some(&a.tmp),
        &mut a.last,
        seqs,
        &last.post_norm,
        eps,
        &mut a.normed,
    )?;
    b.linear(&a.normed, seqs, &last.gate_up, None, &mut a.ffn2)?;
    b.geglu(&a.ffn2, seqs, inter, act, &mut a.ffn)?;
    b.linear(&a.ffn, seqs, &last.down, None, &mut a.tmp)?;
    b.rmsnorm(
        Some(&a.tmp),
        &mut a.last,
        seqs,
        &w.final_norm,
        eps,
        &mut a.normed,
    )?;
    b.classify(&a.normed, seqs, &w.head, &mut a.logits)
}

/// Qwen3's Q and K norm weights of a layer, as `qk_norm_rope` takes them.
fn norms<T>(l: &Layer<T>) -> Option<(&T, &T)> {
    l.qk_norm.as_ref().map(|(q, k)| (q, k))
}

/// A Qwen reranker on a backend: config, uploaded weights and its arena.
pub struct Model<B: Backend> {
    pub backend: B,
    pub cfg: ModelConfig,
    weights: Weights<B::Buf>,
    arena: Mutex<Activations<B>>,
    max_tokens: usize,
    graphs: bool,
    share_prefix: bool,
    /// Tokens the shared-prefix forward kept out of the layers, since load.
    shared_tokens: AtomicU64,
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
            share_prefix: true,
            shared_tokens: AtomicU64::new(0),
        })
    }

    /// Runs a common prefix of a batch's sequences once (on by default; module comment).
    pub fn with_shared_prefix(mut self, on: bool) -> Self {
        self.share_prefix = on;
        self
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
        let (logits, saved) = forward_shared(
            &self.backend,
            &self.cfg,
            &self.weights,
            batch,
            &mut arena,
            self.graphs,
            self.share_prefix,
        )?;
        self.shared_tokens
            .fetch_add(saved as u64, Ordering::Relaxed);
        Ok(logits)
    }

    fn shared_tokens(&self) -> u64 {
        self.shared_tokens.load(Ordering::Relaxed)
    }

    fn max_batch_tokens(&self) -> usize {
        self.max_tokens
    }

    fn device_name(&self) -> String {
        self.backend.device_name()
    }
}
