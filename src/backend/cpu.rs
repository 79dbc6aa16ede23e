//! The reference backend: plain f32 code that defines "right" for every other backend.
//!
//! Naive on purpose. The only help it takes is a GEMM crate for the matrix products (the
//! linear layers and, per sequence and head, QKᵀ and PV) and rayon over rows and heads, so
//! that a real model scores a hundred passages in seconds. Reductions accumulate in f64.

use gemm::{gemm, Parallelism};
use rayon::prelude::*;

use super::Backend;
use crate::batch::PackedBatch;
use crate::config::Activation;
use crate::error::{Error, Result};
use crate::weights::{Embeddings, Head, HostTensor, LayerNorm, Linear};

#[derive(Debug, Default, Clone, Copy)]
pub struct CpuBackend;

/// A raw pointer that rayon tasks may share; each task writes a disjoint region.
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);
// SAFETY: used only to let parallel tasks write disjoint parts of one buffer.
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

impl SharedMut {
    /// Through a method, so that closures capture the whole (Send) wrapper, not its field.
    fn ptr(self) -> *mut f32 {
        self.0
    }
}

/// `dst[m, n] = alpha · dst + beta · lhs[m, k] · rhs[k, n]` with explicit (row, column) strides.
/// The caller guarantees every index reached lies inside the slices.
#[allow(clippy::too_many_arguments)]
unsafe fn matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: isize,
    lhs: *const f32,
    lhs_rs: isize,
    lhs_cs: isize,
    rhs: *const f32,
    rhs_rs: isize,
    rhs_cs: isize,
    scale: f32,
    par: Parallelism,
) {
    gemm(
        m, n, k, dst, 1, dst_rs, false, lhs, lhs_cs, lhs_rs, rhs, rhs_cs, rhs_rs, 0.0, scale,
        false, false, false, par,
    );
}

/// LayerNorm of one row in place, statistics in f64.
pub fn layer_norm_row(x: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32) {
    let n = x.len() as f64;
    let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
    let inv = 1.0 / (var + eps as f64).sqrt();
    for ((v, g), b) in x.iter_mut().zip(gamma).zip(beta) {
        *v = ((*v as f64 - mean) * inv) as f32 * g + b;
    }
}

/// RMSNorm of one row in place, as transformers' Qwen RMSNorm: `x · rsqrt(mean(x²) + eps) ·
/// weight`, the mean in f64.
pub fn rms_norm_row(x: &mut [f32], weight: &[f32], eps: f32) {
    let ms = x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / x.len() as f64;
    let inv = 1.0 / (ms + eps as f64).sqrt();
    for (v, w) in x.iter_mut().zip(weight) {
        *v = (*v as f64 * inv) as f32 * w;
    }
}

/// RoPE's frequencies for a head of `d`: transformers' `1 / theta^(2i/d)`, here in f64 rounded
/// to f32.
fn rope_inv_freq(d: usize, theta: f64) -> Vec<f32> {
    (0..d / 2)
        .map(|i| (1.0 / theta.powf((2 * i) as f64 / d as f64)) as f32)
        .collect()
}

/// Turns one head in place: element i pairs with i + d/2 (transformers' `rotate_half`), by the
/// angle `pos · inv_freq[i]` in f32.
fn rotate_half(x: &mut [f32], inv_freq: &[f32], pos: f32) {
    let half = x.len() / 2;
    for (i, f) in inv_freq.iter().enumerate() {
        let angle = pos * f;
        let (sin, cos) = (angle.sin(), angle.cos());
        let (a, b) = (x[i], x[i + half]);
        x[i] = a * cos - b * sin;
        x[i + half] = b * cos + a * sin;
    }
}

/// One query row of attention over the keys in `keys`, plainly, in f64: `o = softmax(q·kⱼ ·
/// scale) · vⱼ`. The windowed and causal references share it.
/// With `round_p`, each softmax weight is rounded by it before it multiplies V (the CUDA
/// kernel's P is 16-bit), while the row sum adds the unrounded weights, as the kernel does.
fn attend_row<'a>(
    q: &[f32],
    keys: impl Iterator<Item = usize> + Clone,
    k_at: impl Fn(usize) -> &'a [f32],
    v_at: impl Fn(usize) -> &'a [f32],
    scale: f64,
    round_p: Option<fn(f32) -> f32>,
    o: &mut [f32],
) {
    let scores: Vec<f64> = keys
        .clone()
        .map(|j| {
            let dot: f64 = q
                .iter()
                .zip(k_at(j))
                .map(|(a, b)| *a as f64 * *b as f64)
                .sum();
            dot * scale
        })
        .collect();
    let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let p: Vec<f64> = scores.iter().map(|x| (x - max).exp()).collect();
    let sum: f64 = p.iter().sum();
    let p_v: Vec<f64> = match round_p {
        Some(r) => p.iter().map(|&x| r(x as f32) as f64).collect(),
        None => p,
    };
    for (c, v) in o.iter_mut().enumerate() {
        let acc: f64 = keys
            .clone()
            .zip(&p_v)
            .map(|(j, p)| p * v_at(j)[c] as f64)
            .sum();
        *v = (acc / sum) as f32;
    }
}

/// Causal grouped-query attention (`Backend::attention_causal`), (heads, kv_heads, head_dim);
/// `round_p` as for `attend_row`.
fn attention_causal(
    qkv: &[f32],
    batch: &PackedBatch,
    shape: (usize, usize, usize),
    round_p: Option<fn(f32) -> f32>,
    out: &mut [f32],
) -> Result<()> {
    attention_rows(qkv, batch, shape, true, round_p, out)
}

/// Attention row by row in f64, causal (with a shared prefix) or over the whole sequence, P
/// optionally rounded before P·V as the kernel does (the storage emulation's attention).
fn attention_rows(
    qkv: &[f32],
    batch: &PackedBatch,
    (heads, kv_heads, d): (usize, usize, usize),
    causal: bool,
    round_p: Option<fn(f32) -> f32>,
    out: &mut [f32],
) -> Result<()> {
    if kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
        return Err(Error::Internal(format!(
            "attention_causal: {heads} query heads over {kv_heads} K/V heads"
        )));
    }
    let width = (heads + 2 * kv_heads) * d;
    let (h, rows, group) = (heads * d, batch.tokens(), heads / kv_heads);
    check_len("attention_causal qkv", qkv.len(), rows * width)?;
    check_len("attention_causal out", out.len(), rows * h)?;
    let scale = 1.0 / (d as f64).sqrt();
    let seq_of = sequence_of_rows(batch);
    // One task per query row: every key of its sequence up to itself, plainly, in f64.
    out[..rows * h]
        .par_chunks_mut(h)
        .enumerate()
        .for_each(|(i, o)| {
            let Some(&s) = seq_of.get(i) else {
                o.fill(0.0);
                return;
            };
            // A shared-prefix batch: every sequence after the prefix sees its rows first.
            let prefix = if s > 0 { batch.shared_prefix } else { 0 };
            let end = if causal { i + 1 } else { batch.range(s).end };
            let keys = (0..prefix).chain(batch.range(s).start..end);
            for head in 0..heads {
                let kv = head / group;
                let q = &qkv[i * width + head * d..][..d];
                let k_at = |j: usize| &qkv[j * width + h + kv * d..][..d];
                let v_at = |j: usize| &qkv[j * width + h + kv_heads * d + kv * d..][..d];
                attend_row(
                    q,
                    keys.clone(),
                    k_at,
                    v_at,
                    scale,
                    round_p,
                    &mut o[head * d..][..d],
                );
            }
        });
    Ok(())
}

/// The sequence each row of a packed batch belongs to (rows past the last sequence: none).
fn sequence_of_rows(batch: &PackedBatch) -> Vec<usize> {
    (0..batch.len())
        .flat_map(|s| std::iter::repeat_n(s, batch.range(s).len()))
        .collect()
}

/// GELU, exact erf form, as transformers' "gelu".
pub fn gelu_erf(x: f32) -> f32 {
    (0.5 * x as f64 * (1.0 + libm::erf(x as f64 / std::f64::consts::SQRT_2))) as f32
}

/// SiLU, `x · sigmoid(x)`, in f64 as the reference computes every activation.
pub fn silu(x: f32) -> f32 {
    let x = x as f64;
    (x / (1.0 + (-x).exp())) as f32
}

fn check_len(what: &str, have: usize, need: usize) -> Result<()> {
    if have < need {
        return Err(Error::Internal(format!(
            "{what}: buffer of {have} elements, op needs {need}"
        )));
    }
    Ok(())
}

impl Backend for CpuBackend {
    type Buf = Vec<f32>;
    type Batch = PackedBatch;
    type Logits = Vec<f32>;

    fn device_name(&self) -> String {
        format!("cpu ({} threads)", rayon::current_num_threads())
    }

    fn upload(&self, t: &HostTensor) -> Result<Vec<f32>> {
        Ok(t.data.clone())
    }

    fn alloc(&self, len: usize) -> Result<Vec<f32>> {
        Ok(vec![0.0; len])
    }

    fn alloc_batch(&self, _max_tokens: usize, _max_seqs: usize) -> Result<PackedBatch> {
        Ok(PackedBatch::default())
    }

    fn alloc_logits(&self, max_seqs: usize) -> Result<Vec<f32>> {
        Ok(vec![0.0; max_seqs])
    }

    fn load_batch(&self, batch: &PackedBatch, dst: &mut PackedBatch) -> Result<()> {
        dst.clone_from(batch);
        Ok(())
    }

    fn embed(
        &self,
        batch: &PackedBatch,
        emb: &Embeddings<Vec<f32>>,
        eps: f32,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        let h = emb.ln.gamma.len();
        let rows = batch.tokens();
        check_len("embed out", out.len(), rows * h)?;
        let (vocab, positions, types) = (
            emb.word.len() / h,
            emb.position.len() / h,
            emb.token_type.len() / h,
        );
        for t in 0..rows {
            let (id, pos, ty) = (
                batch.input_ids[t] as usize,
                batch.position_ids[t] as usize,
                batch.token_type_ids[t] as usize,
            );
            if id >= vocab || pos >= positions || ty >= types {
                return Err(Error::input(format!(
                    "token {t}: id {id}, position {pos} or type {ty} is outside the model's tables ({vocab}, {positions}, {types})"
                )));
            }
        }
        out[..rows * h]
            .par_chunks_mut(h)
            .enumerate()
            .for_each(|(t, row)| {
                let (id, pos, ty) = (
                    batch.input_ids[t] as usize,
                    batch.position_ids[t] as usize,
                    batch.token_type_ids[t] as usize,
                );
                for (j, v) in row.iter_mut().enumerate() {
                    // transformers' order: (word + token_type) + position.
                    *v = emb.word[id * h + j]
                        + emb.token_type[ty * h + j]
                        + emb.position[pos * h + j];
                }
                layer_norm_row(row, &emb.ln.gamma, &emb.ln.beta, eps);
            });
        Ok(())
    }

    fn linear(
        &self,
        x: &Vec<f32>,
        rows: usize,
        lin: &Linear<Vec<f32>>,
        act: Option<Activation>,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        let (i, o) = (lin.in_dim, lin.out_dim);
        check_len("linear in", x.len(), rows * i)?;
        check_len("linear out", out.len(), rows * o)?;
        check_len("linear weight", lin.w.len(), o * i)?;
        // SAFETY: x is [rows, i], W is [o, i] read as Wᵀ [i, o], out is [rows, o]; lengths checked.
        unsafe {
            matmul(
                rows,
                o,
                i,
                out.as_mut_ptr(),
                o as isize,
                x.as_ptr(),
                i as isize,
                1,
                lin.w.as_ptr(),
                1,
                i as isize,
                1.0,
                Parallelism::Rayon(0),
            );
        }
        out[..rows * o].par_chunks_mut(o).for_each(|row| {
            for (v, b) in row.iter_mut().zip(&lin.b) {
                *v += b;
                match act {
                    Some(Activation::GeluErf) => *v = gelu_erf(*v),
                    Some(Activation::Silu) => *v = silu(*v),
                    None => {}
                }
            }
        });
        Ok(())
    }

    fn attention(
        &self,
        qkv: &Vec<f32>,
        batch: &PackedBatch,
        heads: usize,
        d: usize,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        let h = heads * d;
        let rows = batch.tokens();
        check_len("attention qkv", qkv.len(), rows * 3 * h)?;
        check_len("attention out", out.len(), rows * h)?;
        let scale = 1.0 / (d as f32).sqrt();
        let dst = SharedMut(out.as_mut_ptr());
        (0..batch.len() * heads).into_par_iter().for_each(|job| {
            let (s, head) = (job / heads, job % heads);
            let r = batch.range(s);
            let (start, len) = (r.start, r.len());
            if len == 0 {
                return;
            }
            let q = qkv[start * 3 * h + head * d..].as_ptr();
            let k = qkv[start * 3 * h + h + head * d..].as_ptr();
            let v = qkv[start * 3 * h + 2 * h + head * d..].as_ptr();
            let mut p = vec![0f32; len * len];
            // SAFETY: Q, K and V rows of this sequence lie inside qkv ([rows, 3h]); each job
            // writes only its own sequence rows and head columns of out ([rows, h]).
            unsafe {
                // P = Q Kᵀ · scale: Q [len, d] (row stride 3h), Kᵀ [d, len].
                matmul(
                    len,
                    len,
                    d,
                    p.as_mut_ptr(),
                    len as isize,
                    q,
                    3 * h as isize,
                    1,
                    k,
                    1,
                    3 * h as isize,
                    scale,
                    Parallelism::None,
                );
                for row in p.chunks_mut(len) {
                    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let mut sum = 0f64;
                    for x in row.iter_mut() {
                        *x = (*x - max).exp();
                        sum += *x as f64;
                    }
                    let inv = (1.0 / sum) as f32;
                    row.iter_mut().for_each(|x| *x *= inv);
                }
                // ctx = P V: V [len, d] (row stride 3h) into out rows (stride h).
                let o = dst.ptr().add(start * h + head * d);
                matmul(
                    len,
                    d,
                    len,
                    o,
                    h as isize,
                    p.as_ptr(),
                    len as isize,
                    1,
                    v,
                    3 * h as isize,
                    1,
                    1.0,
                    Parallelism::None,
                );
            }
        });
        Ok(())
    }

    fn add_layernorm(
        &self,
        delta: &Vec<f32>,
        rows: usize,
        ln: &LayerNorm<Vec<f32>>,
        eps: f32,
        hidden: &mut Vec<f32>,
    ) -> Result<()> {
        let h = ln.gamma.len();
        check_len("add_layernorm delta", delta.len(), rows * h)?;
        check_len("add_layernorm hidden", hidden.len(), rows * h)?;
        hidden[..rows * h]
            .par_chunks_mut(h)
            .zip(delta[..rows * h].par_chunks(h))
            .for_each(|(x, d)| {
                x.iter_mut().zip(d).for_each(|(x, d)| *x += d);
                layer_norm_row(x, &ln.gamma, &ln.beta, eps);
            });
        Ok(())
    }

    fn gather_cls(
        &self,
        src: &Vec<f32>,
        width: usize,
        batch: &PackedBatch,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        let n = batch.len();
        check_len("gather_cls src", src.len(), batch.tokens() * width)?;
        check_len("gather_cls out", out.len(), n * width)?;
        for s in 0..n {
            let dst = &mut out[s * width..(s + 1) * width];
            if batch.range(s).is_empty() {
                // A sequence of no tokens (a padded batch's) has no [CLS] row: zeros.
                dst.fill(0.0);
            } else {
                let row = batch.cu_seqlens[s] as usize;
                dst.copy_from_slice(&src[row * width..(row + 1) * width]);
            }
        }
        Ok(())
    }

    fn head(
        &self,
        cls: &Vec<f32>,
        batch: &PackedBatch,
        head: &Head<Vec<f32>>,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        let n = batch.len();
        check_len("head cls rows", cls.len(), n * head.dense.in_dim)?;
        check_len("head logits", out.len(), n * head.out.out_dim)?;
        let mut pooled = vec![0f32; n * head.dense.out_dim];
        self.linear(cls, n, &head.dense, None, &mut pooled)?;
        pooled.iter_mut().for_each(|v| *v = v.tanh());
        self.linear(&pooled, n, &head.out, None, out)
    }

    fn read_logits(&self, logits: &Vec<f32>, n: usize) -> Result<Vec<f32>> {
        check_len("read_logits", logits.len(), n)?;
        Ok(logits[..n].to_vec())
    }

    fn embed_tokens(
        &self,
        batch: &PackedBatch,
        table: &Vec<f32>,
        width: usize,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        let rows = batch.tokens();
        check_len("embed_tokens out", out.len(), rows * width)?;
        let vocab = table.len() / width;
        for (t, &id) in batch.input_ids.iter().enumerate() {
            let id = id as usize;
            if id >= vocab {
                return Err(Error::input(format!(
                    "token {t}: id {id} is outside the model's vocabulary ({vocab})"
                )));
            }
            out[t * width..(t + 1) * width].copy_from_slice(&table[id * width..(id + 1) * width]);
        }
        Ok(())
    }

    fn layernorm(
        &self,
        x: &Vec<f32>,
        rows: usize,
        ln: &LayerNorm<Vec<f32>>,
        eps: f32,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        let h = ln.gamma.len();
        check_len("layernorm in", x.len(), rows * h)?;
        check_len("layernorm out", out.len(), rows * h)?;
        out[..rows * h]
            .par_chunks_mut(h)
            .zip(x[..rows * h].par_chunks(h))
            .for_each(|(o, x)| {
                o.copy_from_slice(x);
                layer_norm_row(o, &ln.gamma, &ln.beta, eps);
            });
        Ok(())
    }

    fn residual_layernorm(
        &self,
        delta: &Vec<f32>,
        rows: usize,
        ln: &LayerNorm<Vec<f32>>,
        eps: f32,
        hidden: &mut Vec<f32>,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        let len = rows * ln.gamma.len();
        check_len("residual_layernorm delta", delta.len(), len)?;
        check_len("residual_layernorm hidden", hidden.len(), len)?;
        hidden[..len]
            .iter_mut()
            .zip(&delta[..len])
            .for_each(|(x, d)| *x += d);
        self.layernorm(hidden, rows, ln, eps, out)
    }

    fn rope(
        &self,
        qkv: &mut Vec<f32>,
        batch: &PackedBatch,
        heads: usize,
        d: usize,
        theta: f64,
    ) -> Result<()> {
        let h = heads * d;
        let rows = batch.tokens();
        check_len("rope qkv", qkv.len(), rows * 3 * h)?;
        if !d.is_multiple_of(2) {
            return Err(Error::Internal(format!("rope: head_dim {d} is odd")));
        }
        // transformers: inv_freq = 1 / theta^(2i/d) and the angle position · inv_freq, in f32.
        let inv_freq = rope_inv_freq(d, theta);
        qkv[..rows * 3 * h]
            .par_chunks_mut(3 * h)
            .enumerate()
            .for_each(|(t, row)| {
                let pos = batch.position_ids[t] as f32;
                // Q and K, not V.
                for head in 0..2 * heads {
                    rotate_half(&mut row[head * d..(head + 1) * d], &inv_freq, pos);
                }
            });
        Ok(())
    }

    fn attention_window(
        &self,
        qkv: &Vec<f32>,
        batch: &PackedBatch,
        heads: usize,
        d: usize,
        half_window: usize,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        let h = heads * d;
        let rows = batch.tokens();
        check_len("attention_window qkv", qkv.len(), rows * 3 * h)?;
        check_len("attention_window out", out.len(), rows * h)?;
        let scale = 1.0 / (d as f64).sqrt();
        // One task per query row: every key within the window of its own sequence, plainly.
        let seq_of = sequence_of_rows(batch);
        out[..rows * h]
            .par_chunks_mut(h)
            .enumerate()
            .for_each(|(i, o)| {
                // Rows past the last sequence (a padded batch's) belong to none: zeros.
                let Some(&s) = seq_of.get(i) else {
                    o.fill(0.0);
                    return;
                };
                let r = batch.range(s);
                let lo = i.saturating_sub(half_window).max(r.start);
                let hi = (i + half_window + 1).min(r.end);
                for head in 0..heads {
                    let at = |j: usize, third: usize| &qkv[j * 3 * h + third * h + head * d..][..d];
                    let q = at(i, 0);
                    attend_row(
                        q,
                        lo..hi,
                        |j| at(j, 1),
                        |j| at(j, 2),
                        scale,
                        None,
                        &mut o[head * d..][..d],
                    );
                }
            });
        Ok(())
    }

    fn geglu(
        &self,
        x: &Vec<f32>,
        rows: usize,
        inter: usize,
        act: Activation,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        check_len("geglu in", x.len(), rows * 2 * inter)?;
        check_len("geglu out", out.len(), rows * inter)?;
        out[..rows * inter]
            .par_chunks_mut(inter)
            .zip(x[..rows * 2 * inter].par_chunks(2 * inter))
            .for_each(|(o, x)| {
                let (input, gate) = x.split_at(inter);
                for ((o, a), g) in o.iter_mut().zip(input).zip(gate) {
                    *o = match act {
                        Activation::GeluErf => gelu_erf(*a),
                        Activation::Silu => silu(*a),
                    } * g;
                }
            });
        Ok(())
    }

    fn mean_pool(
        &self,
        src: &Vec<f32>,
        width: usize,
        batch: &PackedBatch,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        let n = batch.len();
        check_len("mean_pool src", src.len(), batch.tokens() * width)?;
        check_len("mean_pool out", out.len(), n * width)?;
        for s in 0..n {
            let r = batch.range(s);
            let len = r.len();
            for (c, o) in out[s * width..(s + 1) * width].iter_mut().enumerate() {
                let sum: f64 = r.clone().map(|t| src[t * width + c] as f64).sum();
                *o = if len == 0 {
                    0.0
                } else {
                    (sum / len as f64) as f32
                };
            }
        }
        Ok(())
    }

    fn rmsnorm(
        &self,
        delta: Option<&Vec<f32>>,
        hidden: &mut Vec<f32>,
        rows: usize,
        weight: &Vec<f32>,
        eps: f32,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        let w = weight.len();
        check_len("rmsnorm hidden", hidden.len(), rows * w)?;
        check_len("rmsnorm out", out.len(), rows * w)?;
        if let Some(d) = delta {
            check_len("rmsnorm delta", d.len(), rows * w)?;
            hidden[..rows * w]
                .iter_mut()
                .zip(&d[..rows * w])
                .for_each(|(x, d)| *x += d);
        }
        out[..rows * w]
            .par_chunks_mut(w)
            .zip(hidden[..rows * w].par_chunks(w))
            .for_each(|(o, x)| {
                o.copy_from_slice(x);
                rms_norm_row(o, weight, eps);
            });
        Ok(())
    }

    fn qk_norm_rope(
        &self,
        qkv: &mut Vec<f32>,
        batch: &PackedBatch,
        heads: usize,
        kv_heads: usize,
        d: usize,
        norms: Option<(&Vec<f32>, &Vec<f32>)>,
        eps: f32,
        theta: f64,
    ) -> Result<()> {
        let width = (heads + 2 * kv_heads) * d;
        let rows = batch.tokens();
        check_len("qk_norm_rope qkv", qkv.len(), rows * width)?;
        if !d.is_multiple_of(2) {
            return Err(Error::Internal(format!(
                "qk_norm_rope: head_dim {d} is odd"
            )));
        }
        if let Some((q, k)) = norms {
            check_len("qk_norm_rope q_norm", q.len(), d)?;
            check_len("qk_norm_rope k_norm", k.len(), d)?;
        }
        let inv_freq = rope_inv_freq(d, theta);
        qkv[..rows * width]
            .par_chunks_mut(width)
            .enumerate()
            .for_each(|(t, row)| {
                let pos = batch.position_ids[t] as f32;
                // Q's heads, then K's: heads + kv_heads heads of d; V untouched.
                for head in 0..heads + kv_heads {
                    let x = &mut row[head * d..(head + 1) * d];
                    if let Some((q, k)) = norms {
                        rms_norm_row(x, if head < heads { q } else { k }, eps);
                    }
                    rotate_half(x, &inv_freq, pos);
                }
            });
        Ok(())
    }

    fn attention_causal(
        &self,
        qkv: &Vec<f32>,
        batch: &PackedBatch,
        heads: usize,
        kv_heads: usize,
        d: usize,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        attention_causal(qkv, batch, (heads, kv_heads, d), None, out)
    }

    fn gather_last(
        &self,
        src: &Vec<f32>,
        width: usize,
        batch: &PackedBatch,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        let n = batch.len();
        check_len("gather_last src", src.len(), batch.tokens() * width)?;
        check_len("gather_last out", out.len(), n * width)?;
        for s in 0..n {
            let r = batch.range(s);
            let o = &mut out[s * width..(s + 1) * width];
            match r.end.checked_sub(1).filter(|_| !r.is_empty()) {
                Some(last) => o.copy_from_slice(&src[last * width..(last + 1) * width]),
                None => o.fill(0.0),
            }
        }
        Ok(())
    }

    fn classify(
        &self,
        x: &Vec<f32>,
        n: usize,
        lin: &Linear<Vec<f32>>,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        if lin.out_dim != 1 {
            return Err(Error::Internal(format!(
                "classify: {} outputs, expected one logit",
                lin.out_dim
            )));
        }
        self.linear(x, n, lin, None, out)
    }

    fn load_values(&self, host: &[f32], dst: &mut Vec<f32>, at: usize) -> Result<()> {
        check_len("load_values dst", dst.len(), at + host.len())?;
        dst[at..at + host.len()].copy_from_slice(host);
        Ok(())
    }

    fn patchify(
        &self,
        pixels: &Vec<f32>,
        n: usize,
        size: usize,
        patch: usize,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        if patch == 0 || !size.is_multiple_of(patch) {
            return Err(Error::Internal(format!(
                "patchify: image side {size} is not a multiple of the patch {patch}"
            )));
        }
        let (g, k) = (size / patch, 3 * patch * patch);
        check_len("patchify pixels", pixels.len(), n * 3 * size * size)?;
        check_len("patchify out", out.len(), n * g * g * k)?;
        out[..n * g * g * k]
            .par_chunks_mut(k)
            .enumerate()
            .for_each(|(row, o)| {
                let (image, p) = (row / (g * g), row % (g * g));
                let (py, px) = (p / g, p % g);
                let img = &pixels[image * 3 * size * size..][..3 * size * size];
                for c in 0..3 {
                    for y in 0..patch {
                        let src = c * size * size + (py * patch + y) * size + px * patch;
                        let dst = c * patch * patch + y * patch;
                        o[dst..dst + patch].copy_from_slice(&img[src..src + patch]);
                    }
                }
            });
        Ok(())
    }

    fn vit_embed(
        &self,
        patches: &Vec<f32>,
        n: usize,
        class: &Vec<f32>,
        positions: &Vec<f32>,
        width: usize,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        let rows = positions.len() / width.max(1);
        if rows == 0 || class.len() != width {
            return Err(Error::Internal(format!(
                "vit_embed: class token of {} and positions of {} for width {width}",
                class.len(),
                positions.len()
            )));
        }
        let g2 = rows - 1;
        check_len("vit_embed patches", patches.len(), n * g2 * width)?;
        check_len("vit_embed out", out.len(), n * rows * width)?;
        out[..n * rows * width]
            .par_chunks_mut(width)
            .enumerate()
            .for_each(|(r, o)| {
                let (image, j) = (r / rows, r % rows);
                let src = match j {
                    0 => &class[..],
                    _ => &patches[(image * g2 + j - 1) * width..][..width],
                };
                let pos = &positions[j * width..][..width];
                for ((o, s), p) in o.iter_mut().zip(src).zip(pos) {
                    *o = s + p;
                }
            });
        Ok(())
    }

    fn copy(
        &self,
        src: &Vec<f32>,
        from: usize,
        dst: &mut Vec<f32>,
        to: usize,
        len: usize,
    ) -> Result<()> {
        check_len("copy src", src.len(), from + len)?;
        check_len("copy dst", dst.len(), to + len)?;
        dst[to..to + len].copy_from_slice(&src[from..from + len]);
        Ok(())
    }

    fn cross_attention(
        &self,
        q: &Vec<f32>,
        batch: &PackedBatch,
        kv: &Vec<f32>,
        images: &PackedBatch,
        image_rows: usize,
        heads: usize,
        d: usize,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        let (h, rows) = (heads * d, batch.tokens());
        if images.len() != batch.len() || images.tokens() != images.len() {
            return Err(Error::Internal(format!(
                "cross_attention: {} query sequences over {} image indices in {} sequences",
                batch.len(),
                images.tokens(),
                images.len()
            )));
        }
        check_len("cross_attention q", q.len(), rows * h)?;
        check_len("cross_attention out", out.len(), rows * h)?;
        let held = kv.len() / (image_rows * 2 * h).max(1);
        if let Some(&i) = images.input_ids.iter().find(|&&i| i as usize >= held) {
            return Err(Error::Internal(format!(
                "cross_attention: image {i} of a key/value buffer holding {held}"
            )));
        }
        let scale = 1.0 / (d as f64).sqrt();
        let seq_of = sequence_of_rows(batch);
        // One task per query row: every key/value row of its pair's image, plainly.
        out[..rows * h]
            .par_chunks_mut(h)
            .enumerate()
            .for_each(|(i, o)| {
                let Some(&s) = seq_of.get(i) else {
                    o.fill(0.0);
                    return;
                };
                let image = images.input_ids[s] as usize;
                for head in 0..heads {
                    let k_at = |j: usize| &kv[j * 2 * h + head * d..][..d];
                    let v_at = |j: usize| &kv[j * 2 * h + h + head * d..][..d];
                    attend_row(
                        &q[i * h + head * d..][..d],
                        image * image_rows..(image + 1) * image_rows,
                        k_at,
                        v_at,
                        scale,
                        None,
                        &mut o[head * d..][..d],
                    );
                }
            });
        Ok(())
    }
}

/// The CPU reference with 16-bit storage (fp16 as the encoders run on CUDA, bf16 as the decoder
/// LLMs do): weights and every activation an op writes are rounded to it, the arithmetic inside
/// each op stays f32 (f64 sums). It is the "same math done in 16 bits by a reference" that the
/// CUDA backend is held to: its error against the f32 reference should be of the order of this
/// backend's, not of an absolute constant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StorageEmulation {
    bf16: bool,
}

impl StorageEmulation {
    pub const FP16: Self = StorageEmulation { bf16: false };
    pub const BF16: Self = StorageEmulation { bf16: true };

    /// Rounds every value to the storage type, to nearest even.
    pub fn round(&self, buf: &mut [f32]) {
        let r = if self.bf16 { round_bf16 } else { round_f16 };
        buf.iter_mut().for_each(|v| *v = r(*v));
    }
}

fn round_f16(v: f32) -> f32 {
    half::f16::from_f32(v).to_f32()
}

fn round_bf16(v: f32) -> f32 {
    half::bf16::from_f32(v).to_f32()
}

impl Backend for StorageEmulation {
    type Buf = Vec<f32>;
    type Batch = PackedBatch;
    type Logits = Vec<f32>;

    fn device_name(&self) -> String {
        let dtype = if self.bf16 { "bf16" } else { "fp16" };
        format!("cpu ({dtype} storage emulated)")
    }

    fn upload(&self, t: &HostTensor) -> Result<Vec<f32>> {
        let mut w = CpuBackend.upload(t)?;
        self.round(&mut w);
        Ok(w)
    }

    fn alloc(&self, len: usize) -> Result<Vec<f32>> {
        CpuBackend.alloc(len)
    }

    fn alloc_batch(&self, max_tokens: usize, max_seqs: usize) -> Result<PackedBatch> {
        CpuBackend.alloc_batch(max_tokens, max_seqs)
    }

    fn alloc_logits(&self, max_seqs: usize) -> Result<Vec<f32>> {
        CpuBackend.alloc_logits(max_seqs)
    }

    fn load_batch(&self, batch: &PackedBatch, dst: &mut PackedBatch) -> Result<()> {
        CpuBackend.load_batch(batch, dst)
    }

    fn embed(
        &self,
        batch: &PackedBatch,
        emb: &Embeddings<Vec<f32>>,
        eps: f32,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        CpuBackend.embed(batch, emb, eps, out)?;
        self.round(&mut out[..batch.tokens() * emb.ln.gamma.len()]);
        Ok(())
    }

    fn load_values(&self, host: &[f32], dst: &mut Vec<f32>, at: usize) -> Result<()> {
        CpuBackend.load_values(host, dst, at)?;
        self.round(&mut dst[at..at + host.len()]);
        Ok(())
    }

    fn patchify(
        &self,
        pixels: &Vec<f32>,
        n: usize,
        size: usize,
        patch: usize,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        // A copy of values already in storage precision.
        CpuBackend.patchify(pixels, n, size, patch, out)
    }

    fn vit_embed(
        &self,
        patches: &Vec<f32>,
        n: usize,
        class: &Vec<f32>,
        positions: &Vec<f32>,
        width: usize,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        CpuBackend.vit_embed(patches, n, class, positions, width, out)?;
        self.round(&mut out[..positions.len() * n]);
        Ok(())
    }

    fn copy(
        &self,
        src: &Vec<f32>,
        from: usize,
        dst: &mut Vec<f32>,
        to: usize,
        len: usize,
    ) -> Result<()> {
        // Already-rounded values: a copy.
        CpuBackend.copy(src, from, dst, to, len)
    }

    #[allow(clippy::too_many_arguments)]
    fn cross_attention(
        &self,
        q: &Vec<f32>,
        batch: &PackedBatch,
        kv: &Vec<f32>,
        images: &PackedBatch,
        image_rows: usize,
        heads: usize,
        head_dim: usize,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        // The kernel keeps P in f32 (kernels/vision.cu): only its output is rounded.
        CpuBackend.cross_attention(q, batch, kv, images, image_rows, heads, head_dim, out)?;
        self.round(&mut out[..batch.tokens() * heads * head_dim]);
        Ok(())
    }

    fn linear(
        &self,
        x: &Vec<f32>,
        rows: usize,
        lin: &Linear<Vec<f32>>,
        act: Option<Activation>,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        // The CUDA backend stores the GEMM's output, then applies the activation to the stored
        // values in a kernel of its own and stores again: two roundings.
        CpuBackend.linear(x, rows, lin, None, out)?;
        self.round(&mut out[..rows * lin.out_dim]);
        if let Some(act) = act {
            let f: fn(f32) -> f32 = match act {
                Activation::GeluErf => gelu_erf,
                Activation::Silu => silu,
            };
            out[..rows * lin.out_dim]
                .iter_mut()
                .for_each(|v| *v = f(*v));
            self.round(&mut out[..rows * lin.out_dim]);
        }
        Ok(())
    }

    fn attention(
        &self,
        qkv: &Vec<f32>,
        batch: &PackedBatch,
        heads: usize,
        head_dim: usize,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        // The kernel rounds P before P·V: so does the emulation.
        let round_p = if self.bf16 { round_bf16 } else { round_f16 };
        attention_rows(
            qkv,
            batch,
            (heads, heads, head_dim),
            false,
            Some(round_p),
            out,
        )?;
        self.round(&mut out[..batch.tokens() * heads * head_dim]);
        Ok(())
    }

    fn add_layernorm(
        &self,
        delta: &Vec<f32>,
        rows: usize,
        ln: &LayerNorm<Vec<f32>>,
        eps: f32,
        hidden: &mut Vec<f32>,
    ) -> Result<()> {
        CpuBackend.add_layernorm(delta, rows, ln, eps, hidden)?;
        self.round(&mut hidden[..rows * ln.gamma.len()]);
        Ok(())
    }

    fn gather_cls(
        &self,
        src: &Vec<f32>,
        width: usize,
        batch: &PackedBatch,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        CpuBackend.gather_cls(src, width, batch, out)
    }

    fn head(
        &self,
        cls: &Vec<f32>,
        batch: &PackedBatch,
        head: &Head<Vec<f32>>,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        // The GPU head reads fp16 rows and weights but keeps the pooled vector and the logit
        // in f32, as the CPU head does.
        CpuBackend.head(cls, batch, head, out)
    }

    fn read_logits(&self, logits: &Vec<f32>, n: usize) -> Result<Vec<f32>> {
        CpuBackend.read_logits(logits, n)
    }

    fn embed_tokens(
        &self,
        batch: &PackedBatch,
        table: &Vec<f32>,
        width: usize,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        // A copy of fp16 weights: nothing to round.
        CpuBackend.embed_tokens(batch, table, width, out)
    }

    fn layernorm(
        &self,
        x: &Vec<f32>,
        rows: usize,
        ln: &LayerNorm<Vec<f32>>,
        eps: f32,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        CpuBackend.layernorm(x, rows, ln, eps, out)?;
        self.round(&mut out[..rows * ln.gamma.len()]);
        Ok(())
    }

    fn residual_layernorm(
        &self,
        delta: &Vec<f32>,
        rows: usize,
        ln: &LayerNorm<Vec<f32>>,
        eps: f32,
        hidden: &mut Vec<f32>,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        // The kernel normalises the f32 sum and stores both in fp16.
        CpuBackend.residual_layernorm(delta, rows, ln, eps, hidden, out)?;
        let len = rows * ln.gamma.len();
        self.round(&mut hidden[..len]);
        self.round(&mut out[..len]);
        Ok(())
    }

    fn rope(
        &self,
        qkv: &mut Vec<f32>,
        batch: &PackedBatch,
        heads: usize,
        head_dim: usize,
        theta: f64,
    ) -> Result<()> {
        CpuBackend.rope(qkv, batch, heads, head_dim, theta)?;
        self.round(&mut qkv[..batch.tokens() * 3 * heads * head_dim]);
        Ok(())
    }

    fn attention_window(
        &self,
        qkv: &Vec<f32>,
        batch: &PackedBatch,
        heads: usize,
        head_dim: usize,
        half_window: usize,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        CpuBackend.attention_window(qkv, batch, heads, head_dim, half_window, out)?;
        self.round(&mut out[..batch.tokens() * heads * head_dim]);
        Ok(())
    }

    fn geglu(
        &self,
        x: &Vec<f32>,
        rows: usize,
        inter: usize,
        act: Activation,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        CpuBackend.geglu(x, rows, inter, act, out)?;
        self.round(&mut out[..rows * inter]);
        Ok(())
    }

    fn mean_pool(
        &self,
        src: &Vec<f32>,
        width: usize,
        batch: &PackedBatch,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        CpuBackend.mean_pool(src, width, batch, out)?;
        self.round(&mut out[..batch.len() * width]);
        Ok(())
    }

    fn classify(
        &self,
        x: &Vec<f32>,
        n: usize,
        lin: &Linear<Vec<f32>>,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        // The logit stays f32, as the kernel's does.
        CpuBackend.classify(x, n, lin, out)
    }

    fn rmsnorm(
        &self,
        delta: Option<&Vec<f32>>,
        hidden: &mut Vec<f32>,
        rows: usize,
        weight: &Vec<f32>,
        eps: f32,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        // The kernel normalises the f32 sum and stores both in 16 bits.
        CpuBackend.rmsnorm(delta, hidden, rows, weight, eps, out)?;
        let len = rows * weight.len();
        self.round(&mut hidden[..len]);
        self.round(&mut out[..len]);
        Ok(())
    }

    fn qk_norm_rope(
        &self,
        qkv: &mut Vec<f32>,
        batch: &PackedBatch,
        heads: usize,
        kv_heads: usize,
        head_dim: usize,
        norms: Option<(&Vec<f32>, &Vec<f32>)>,
        eps: f32,
        theta: f64,
    ) -> Result<()> {
        CpuBackend.qk_norm_rope(qkv, batch, heads, kv_heads, head_dim, norms, eps, theta)?;
        // V is untouched and already rounded: rounding it again changes nothing.
        self.round(&mut qkv[..batch.tokens() * (heads + 2 * kv_heads) * head_dim]);
        Ok(())
    }

    fn attention_causal(
        &self,
        qkv: &Vec<f32>,
        batch: &PackedBatch,
        heads: usize,
        kv_heads: usize,
        head_dim: usize,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        // The kernel rounds P before P·V: so does the emulation.
        let round_p = if self.bf16 { round_bf16 } else { round_f16 };
        let shape = (heads, kv_heads, head_dim);
        attention_causal(qkv, batch, shape, Some(round_p), out)?;
        self.round(&mut out[..batch.tokens() * heads * head_dim]);
        Ok(())
    }

    fn gather_last(
        &self,
        src: &Vec<f32>,
        width: usize,
        batch: &PackedBatch,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        // A copy of stored rows: nothing to round.
        CpuBackend.gather_last(src, width, batch, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A constant row has zero variance: only eps keeps 1/sqrt(var + eps) finite, and the row
    /// normalizes to exactly beta (transformers' LayerNorm does the same). Without eps, or with
    /// eps subtracted, it is NaN.
    #[test]
    fn layer_norm_of_a_constant_row_is_beta() {
        let gamma = [1.5f32, -2.0, 0.25, 3.0];
        let beta = [0.5f32, -1.0, 2.0, 0.0];
        for value in [0.0f32, 7.0, -3.5] {
            let mut row = [value; 4];
            layer_norm_row(&mut row, &gamma, &beta, 1e-12);
            assert_eq!(row, beta, "constant row {value}");
        }
    }

    /// eps is added to the variance, whatever its size: the row ±1 has mean 0 and variance 1,
    /// so with eps 3 it scales by 1/sqrt(1 + 3) = 0.5 exactly.
    #[test]
    fn layer_norm_adds_eps_to_the_variance() {
        let mut row = [1.0f32, -1.0, 1.0, -1.0];
        layer_norm_row(&mut row, &[2.0; 4], &[0.25; 4], 3.0);
        assert_eq!(row, [1.25, -0.75, 1.25, -0.75]);
    }
}
