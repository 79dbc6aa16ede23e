//! Every CUDA op against its CPU twin (src/backend/cpu.rs) on seeded random inputs: ragged
//! batches (lengths 1, 2, 63, 64, 65, 127, 511, 512; one sequence; 120 sequences), every head_dim
//! the attention kernel has, the hidden sizes of the test models and of MiniLM / BERT-base /
//! BERT-large / XLM-R. Device outputs are poisoned with NaN first, so an element left unwritten
//! fails.
//!
//! The inputs are rounded to fp16 before the CPU sees them, so a comparison measures the
//! kernels' arithmetic, not the rounding of the inputs. Tolerances:
//! `|out - ref| <= atol + rtol * |ref|`, with the constants and why stated beside each test. Attention follows STYLE.md: the
//! kernel's largest error against the f32 reference is at most twice that of the same math done
//! in fp16 by a reference here (P rounded to fp16 before P·V, output rounded to fp16), plus 1e-4.
//!
//! Without a CUDA driver or device, each test still builds its inputs and CPU references (and
//! checks the fp16-emulating reference against the f32 one), then prints `SKIPPED (why)`; with
//! CROSSRANK_REQUIRE_GPU set (scripts/test-softgpu.sh sets it) a missing device fails instead.
//!
//! On the software GPU (softgpu/: these kernels run on the CPU, every thread a fiber, every
//! access checked) the same tests run at CI-sized shapes: small hidden sizes and heads, but the
//! ragged lengths around the tiles (1, 2, 63, 64, 65, 130) and several tiles of keys.
#![cfg(feature = "cuda")]

use crossrank::backend::cpu::CpuBackend;
use crossrank::backend::cuda::{on_software_gpu, unavailable_reason, CudaBackend, Storage};
use crossrank::backend::Backend;
use crossrank::batch::{BatchShape, PackedBatch};
use crossrank::config::Activation;
use crossrank::weights::{Embeddings, Head, HostTensor, LayerNorm, Linear};
use half::{bf16, f16};

/// The CUDA device for a test, or None after printing why the GPU part is skipped.
fn gpu(test: &str) -> Option<CudaBackend> {
    gpu_as::<f16>(test)
}

/// `gpu` with storage `S` (bf16 for the decoder LLMs' ops).
fn gpu_as<S: Storage>(test: &str) -> Option<CudaBackend<S>> {
    if let Some(why) = unavailable_reason() {
        assert!(
            std::env::var_os("CROSSRANK_REQUIRE_GPU").is_none(),
            "{test}: CROSSRANK_REQUIRE_GPU is set but there is no CUDA device: {why}"
        );
        println!("{test}: SKIPPED ({why})");
        return None;
    }
    match CudaBackend::<S>::open(0) {
        Ok(b) => Some(b),
        Err(e) => panic!("{test}: a CUDA device is visible but could not be opened: {e}"),
    }
}

/// SplitMix64: a small seeded generator, so the tests need no rand crate.
struct Rng(u64);
impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    fn normal(&mut self) -> f32 {
        let (u, v) = (self.uniform().max(1e-300), self.uniform());
        ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()) as f32
    }
    /// `n` values ~ mean + N(0, std²), rounded to fp16.
    fn vec16(&mut self, n: usize, mean: f32, std: f32) -> Vec<f32> {
        (0..n)
            .map(|_| round16(mean + std * self.normal()))
            .collect()
    }
}

fn round16(v: f32) -> f32 {
    f16::from_f32(v).to_f32()
}

fn tensor(name: &str, data: Vec<f32>) -> HostTensor {
    HostTensor {
        name: name.into(),
        shape: vec![data.len()],
        data,
    }
}

/// Whether the tests run on the software GPU, at its shapes (module comment).
fn soft() -> bool {
    on_software_gpu()
}

/// The ragged length sets every op runs over.
fn length_sets(rng: &mut Rng) -> Vec<(&'static str, Vec<usize>)> {
    if soft() {
        return vec![
            ("ragged", vec![1, 2, 63, 64, 65, 130]),
            ("one sequence", vec![130]),
            ("16 sequences", (0..16).map(|_| 1 + rng.below(64)).collect()),
        ];
    }
    vec![
        ("ragged", vec![1, 2, 63, 64, 65, 127, 511, 512]),
        ("one sequence", vec![300]),
        (
            "120 sequences",
            (0..120).map(|_| 1 + rng.below(64)).collect(),
        ),
    ]
}

/// A BERT-style packed batch (positions 0..len) with random ids and types.
fn batch(rng: &mut Rng, lens: &[usize], vocab: usize, types: usize) -> PackedBatch {
    let mut b = PackedBatch {
        cu_seqlens: vec![0],
        ..Default::default()
    };
    for &len in lens {
        for p in 0..len {
            b.input_ids.push(rng.below(vocab) as u32);
            b.token_type_ids.push(rng.below(types) as u32);
            b.position_ids.push(p as u32);
        }
        b.cu_seqlens.push(b.input_ids.len() as i32);
        b.max_seqlen = b.max_seqlen.max(len);
    }
    b
}

/// Asserts `|out - ref| <= atol + rtol * |scale|` element-wise (scale defaults to ref); NaN
/// anywhere fails. Returns the largest absolute error.
fn check(
    what: &str,
    out: &[f32],
    reference: &[f32],
    scale: Option<&[f32]>,
    atol: f32,
    rtol: f32,
) -> f32 {
    assert_eq!(out.len(), reference.len(), "{what}: length");
    let mut worst = 0f32;
    for (i, (&o, &r)) in out.iter().zip(reference).enumerate() {
        let s = scale.map_or(r.abs(), |s| s[i].abs() + r.abs());
        let err = (o - r).abs();
        assert!(
            o.is_finite() && err <= atol + rtol * s,
            "{what}: element {i}: got {o}, reference {r} (|err| {err:.3e} > {atol:e} + {rtol:e} * {s})"
        );
        worst = worst.max(err);
    }
    worst
}

fn poisoned<S: Storage>(g: &CudaBackend<S>, len: usize) -> <CudaBackend<S> as Backend>::Buf {
    let mut buf = g.alloc(len).unwrap();
    g.fill(&mut buf, f32::NAN).unwrap();
    buf
}

/// Hidden sizes: the test models (32, 48, 64), MiniLM (384), BERT-base (768), BERT-large / XLM-R
/// large (1024), and one past the LayerNorm kernels' single-warp and 1024-wide cases (4096).
const WIDTHS: [usize; 7] = [32, 48, 64, 384, 768, 1024, 4096];
/// On the software GPU: the test models', MiniLM's and BERT-large's.
const SOFT_WIDTHS: [usize; 5] = [32, 48, 64, 384, 1024];

fn widths() -> &'static [usize] {
    if soft() {
        &SOFT_WIDTHS
    } else {
        &WIDTHS
    }
}

/// LayerNorm outputs are O(1). rtol 2^-10: the fp16 rounding of the output (2^-11) plus as
/// much again for fp32 statistics against the reference's f64; atol 2e-3: rsqrtf (2 ulp) and
/// fp32 mean/variance, scaled by gamma (~1 ± 0.2, up to ~2).
const LN_ATOL: f32 = 2e-3;
const LN_RTOL: f32 = 1.0 / 1024.0;

#[test]
fn embed_layernorm_matches_cpu() {
    let mut rng = Rng(1);
    let g = gpu("embed_layernorm_matches_cpu");
    for &width in widths() {
        let (vocab, positions, types) = (1000, 520, 2);
        let emb = Embeddings {
            word: tensor("word", rng.vec16(vocab * width, 0.0, 1.0)),
            position: tensor("position", rng.vec16(positions * width, 0.0, 1.0)),
            token_type: tensor("token_type", rng.vec16(types * width, 0.0, 1.0)),
            ln: LayerNorm {
                gamma: tensor("gamma", rng.vec16(width, 1.0, 0.2)),
                beta: tensor("beta", rng.vec16(width, 0.0, 0.2)),
            },
        };
        let cpu_emb = Embeddings {
            word: emb.word.data.clone(),
            position: emb.position.data.clone(),
            token_type: emb.token_type.data.clone(),
            ln: LayerNorm {
                gamma: emb.ln.gamma.data.clone(),
                beta: emb.ln.beta.data.clone(),
            },
        };
        for (set, lens) in length_sets(&mut rng) {
            let b = batch(&mut rng, &lens, vocab, types);
            let mut want = vec![0f32; b.tokens() * width];
            CpuBackend.embed(&b, &cpu_emb, 1e-12, &mut want).unwrap();
            let Some(g) = &g else { continue };
            let dev = Embeddings {
                word: g.upload(&emb.word).unwrap(),
                position: g.upload(&emb.position).unwrap(),
                token_type: g.upload(&emb.token_type).unwrap(),
                ln: LayerNorm {
                    gamma: g.upload(&emb.ln.gamma).unwrap(),
                    beta: g.upload(&emb.ln.beta).unwrap(),
                },
            };
            let mut db = g.alloc_batch(b.tokens(), b.len()).unwrap();
            g.load_batch(&b, &mut db).unwrap();
            let mut out = poisoned(g, b.tokens() * width);
            g.embed(&db, &dev, 1e-12, &mut out).unwrap();
            let got = g.download(&out, b.tokens() * width).unwrap();
            let e = check(
                &format!("embed width {width} {set}"),
                &got,
                &want,
                None,
                LN_ATOL,
                LN_RTOL,
            );
            println!("embed width {width} {set}: max |err| {e:.2e}");
        }
    }
}

#[test]
fn embed_refuses_ids_outside_the_tables() {
    let Some(g) = gpu("embed_refuses_ids_outside_the_tables") else {
        return;
    };
    let mut rng = Rng(2);
    let width = 32;
    let up = |name: &str, n: usize, rng: &mut Rng| {
        g.upload(&tensor(name, rng.vec16(n, 0.0, 1.0))).unwrap()
    };
    let dev = Embeddings {
        word: up("word", 10 * width, &mut rng),
        position: up("position", 8 * width, &mut rng),
        token_type: up("token_type", 2 * width, &mut rng),
        ln: LayerNorm {
            gamma: up("gamma", width, &mut rng),
            beta: up("beta", width, &mut rng),
        },
    };
    let mut b = batch(&mut rng, &[4], 10, 2);
    b.input_ids[2] = 10; // one past the vocabulary
    let mut db = g.alloc_batch(4, 1).unwrap();
    g.load_batch(&b, &mut db).unwrap();
    let mut out = g.alloc(4 * width).unwrap();
    let err = g.embed(&db, &dev, 1e-12, &mut out).unwrap_err().to_string();
    assert!(err.contains("outside the model's tables"), "{err}");
}

/// The kernels read rows through cu_seqlens: a batch whose offsets start past 0, step down or
/// end past its rows is refused at upload. Empty sequences and rows of no sequence (a padded
/// batch's) are taken: gather_cls_matches_cpu runs them.
#[test]
fn load_batch_refuses_offsets_past_the_rows() {
    let Some(g) = gpu("load_batch_refuses_offsets_past_the_rows") else {
        return;
    };
    let mut rng = Rng(12);
    let mut db = g.alloc_batch(8, 4).unwrap();
    let mut b = batch(&mut rng, &[3, 2], 10, 1);
    g.load_batch(&b, &mut db).unwrap();
    b.cu_seqlens.push(6); // a third sequence ending past the 5 rows
    let err = g.load_batch(&b, &mut db).unwrap_err().to_string();
    assert!(err.contains("inconsistent"), "{err}");
    let mut b = batch(&mut rng, &[3, 2], 10, 1);
    b.cu_seqlens[0] = 1;
    assert!(g.load_batch(&b, &mut db).is_err());
    let mut b = batch(&mut rng, &[3, 2], 10, 1);
    b.cu_seqlens.insert(2, 2);
    assert!(g.load_batch(&b, &mut db).is_err());
}

#[test]
fn add_layernorm_matches_cpu() {
    let mut rng = Rng(3);
    let g = gpu("add_layernorm_matches_cpu");
    for &width in widths() {
        let gamma = tensor("gamma", rng.vec16(width, 1.0, 0.2));
        let beta = tensor("beta", rng.vec16(width, 0.0, 0.2));
        let cpu_ln = LayerNorm {
            gamma: gamma.data.clone(),
            beta: beta.data.clone(),
        };
        for (set, lens) in length_sets(&mut rng) {
            let rows: usize = lens.iter().sum();
            // Residual streams drift far from zero mean in real models: offset them.
            let hidden = rng.vec16(rows * width, 0.5, 2.0);
            let delta = rng.vec16(rows * width, 0.0, 1.0);
            let mut want = hidden.clone();
            CpuBackend
                .add_layernorm(&delta, rows, &cpu_ln, 1e-5, &mut want)
                .unwrap();
            let Some(g) = &g else { continue };
            let ln = LayerNorm {
                gamma: g.upload(&gamma).unwrap(),
                beta: g.upload(&beta).unwrap(),
            };
            // In place, so the input is the output: one NaN row past the end must stay NaN.
            let mut staged = hidden.clone();
            staged.extend(std::iter::repeat_n(f32::NAN, width));
            let mut h = g.upload(&tensor("hidden", staged)).unwrap();
            let d = g.upload(&tensor("delta", delta)).unwrap();
            g.add_layernorm(&d, rows, &ln, 1e-5, &mut h).unwrap();
            let got = g.download(&h, (rows + 1) * width).unwrap();
            let e = check(
                &format!("add_layernorm width {width} {set}"),
                &got[..rows * width],
                &want,
                None,
                LN_ATOL,
                LN_RTOL,
            );
            assert!(
                got[rows * width..].iter().all(|v| v.is_nan()),
                "add_layernorm wrote past its rows"
            );
            println!("add_layernorm width {width} {set}: max |err| {e:.2e}");
        }
    }
}

/// (out, in): fused QKV, attention output, FFN in and out of the test models (100 is not a
/// multiple of 8), MiniLM and BERT-base.
const LINEAR_SHAPES: [(usize, usize); 8] = [
    (96, 32),
    (144, 48),
    (100, 48),
    (48, 100),
    (1152, 384),
    (1536, 384),
    (384, 1536),
    (3072, 768),
];

/// fp16 inputs, fp32 accumulation, fp16 output: the output rounding is 2^-11 relative; rtol
/// 2^-10 allows as much again for the fp32 sums taken in another order, atol 1e-3 for outputs
/// near zero (inputs N(0,1), weights N(0, 1/in): outputs O(1)). With GELU the pre-activation
/// is rounded to fp16 before the erf (GELU' <= 1.13), so the scale is |ref| + |pre-activation|.
const LIN_ATOL: f32 = 1e-3;
const LIN_RTOL: f32 = 1.0 / 1024.0;

#[test]
fn linear_with_bias_and_gelu_matches_cpu() {
    let mut rng = Rng(4);
    let g = gpu("linear_with_bias_and_gelu_matches_cpu");
    // The software GPU's GEMMs are plain loops: MiniLM's QKV is the largest shape there.
    let shapes = if soft() {
        &LINEAR_SHAPES[..5]
    } else {
        &LINEAR_SHAPES[..]
    };
    for &(o, i) in shapes {
        let w = tensor("w", rng.vec16(o * i, 0.0, 1.0 / (i as f32).sqrt()));
        let b = tensor("b", rng.vec16(o, 0.0, 0.1));
        let cpu_lin = Linear {
            w: w.data.clone(),
            b: b.data.clone(),
            out_dim: o,
            in_dim: i,
        };
        let rows_set: &[usize] = if soft() {
            &[1, 63, 65, 130]
        } else {
            &[1, 63, 512, 1000]
        };
        for &rows in rows_set {
            let x = rng.vec16(rows * i, 0.0, 1.0);
            let mut pre = vec![0f32; rows * o];
            CpuBackend
                .linear(&x, rows, &cpu_lin, None, &mut pre)
                .unwrap();
            let mut act = vec![0f32; rows * o];
            CpuBackend
                .linear(&x, rows, &cpu_lin, Some(Activation::GeluErf), &mut act)
                .unwrap();
            let Some(g) = &g else { continue };
            let lin = Linear {
                w: g.upload(&w).unwrap(),
                b: g.upload(&b).unwrap(),
                out_dim: o,
                in_dim: i,
            };
            let xd = g.upload(&tensor("x", x)).unwrap();
            for (what, a, want) in [
                ("linear", None, &pre),
                ("linear+gelu", Some(Activation::GeluErf), &act),
            ] {
                let mut out = poisoned(g, rows * o);
                g.linear(&xd, rows, &lin, a, &mut out).unwrap();
                let got = g.download(&out, rows * o).unwrap();
                let scale = a.map(|_| pre.as_slice());
                let e = check(
                    &format!("{what} {rows}x{i} -> {o}"),
                    &got,
                    want,
                    scale,
                    LIN_ATOL,
                    LIN_RTOL,
                );
                println!("{what} {rows}x{i} -> {o}: max |err| {e:.2e}");
            }
        }
    }
    if let Some(g) = &g {
        // One algorithm per (row bucket, out, in): 1 and 63 share the smallest bucket (on the
        // software GPU 65 and 130 take the next two).
        assert_eq!(g.cached_gemm_algorithms(), shapes.len() * 3);
    }
}

/// The same math as the kernel, done here with fp16 where the kernel rounds to fp16: exact
/// softmax weights exp(s - max) rounded to fp16 for P·V, the row sum of the unrounded weights,
/// the output rounded to fp16. qkv is [tokens, 3·heads·d]. With a window, query i sees key j
/// only when |i - j| <= window.
fn attention_fp16_reference(
    qkv: &[f32],
    b: &PackedBatch,
    heads: usize,
    d: usize,
    window: Option<usize>,
) -> Vec<f32> {
    let h = heads * d;
    let mut out = vec![0f32; b.tokens() * h];
    let scale = 1.0 / (d as f64).sqrt();
    for s in 0..b.len() {
        let r = b.range(s);
        for head in 0..heads {
            let q = |t: usize, c: usize| qkv[t * 3 * h + head * d + c] as f64;
            let k = |t: usize, c: usize| qkv[t * 3 * h + h + head * d + c] as f64;
            let v = |t: usize, c: usize| qkv[t * 3 * h + 2 * h + head * d + c];
            for i in r.clone() {
                let keys = match window {
                    Some(w) => i.saturating_sub(w).max(r.start)..(i + w + 1).min(r.end),
                    None => r.clone(),
                };
                let scores: Vec<f64> = keys
                    .clone()
                    .map(|j| (0..d).map(|c| q(i, c) * k(j, c)).sum::<f64>() * scale)
                    .collect();
                let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let p: Vec<f64> = scores.iter().map(|x| (x - max).exp()).collect();
                let sum: f64 = p.iter().sum();
                for c in 0..d {
                    let acc: f32 = keys
                        .clone()
                        .zip(&p)
                        .map(|(j, &pj)| round16(pj as f32) * v(j, c))
                        .sum();
                    out[i * h + head * d + c] = round16((acc as f64 / sum) as f32);
                }
            }
        }
    }
    out
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn attention_matches_cpu_for_every_head_dim() {
    let mut rng = Rng(5);
    let g = gpu("attention_matches_cpu_for_every_head_dim");
    let dims: &[(usize, usize)] = if soft() {
        &[(16, 3), (32, 2), (64, 2), (128, 1)]
    } else {
        &[(16, 3), (32, 12), (64, 2), (128, 2)]
    };
    for &(d, heads) in dims {
        let h = heads * d;
        let mut sets = length_sets(&mut rng);
        if d == 64 {
            // Past 512: bge-reranker-v2-m3 takes 8192; this loops over 32 K/V tiles (5, the
            // last partial, on the software GPU).
            sets.push(("one long sequence", vec![if soft() { 300 } else { 2048 }]));
        }
        for (set, lens) in sets {
            let b = batch(&mut rng, &lens, 10, 1);
            // q, k ~ N(0, 2): scores q·k/sqrt(d) of std 2, peaked enough to exercise the
            // running max, spread enough that every key matters.
            let qkv = rng.vec16(b.tokens() * 3 * h, 0.0, std::f32::consts::SQRT_2);
            let mut want = vec![0f32; b.tokens() * h];
            CpuBackend.attention(&qkv, &b, heads, d, &mut want).unwrap();
            let ref16 = attention_fp16_reference(&qkv, &b, heads, d, None);
            let ref16_err = max_abs_diff(&ref16, &want);
            // The emulation itself is sane: its error is fp16-sized, never zero on real data.
            assert!(
                ref16_err < 4e-3,
                "d {d} {set}: fp16 reference off by {ref16_err}"
            );
            let Some(g) = &g else { continue };
            let mut db = g.alloc_batch(b.tokens(), b.len()).unwrap();
            g.load_batch(&b, &mut db).unwrap();
            let dq = g.upload(&tensor("qkv", qkv)).unwrap();
            let mut out = poisoned(g, b.tokens() * h);
            g.attention(&dq, &db, heads, d, &mut out).unwrap();
            let got = g.download(&out, b.tokens() * h).unwrap();
            assert!(
                got.iter().all(|v| v.is_finite()),
                "d {d} {set}: unwritten or non-finite output"
            );
            let err = max_abs_diff(&got, &want);
            println!("attention d {d} heads {heads} {set}: max |err| {err:.2e} (fp16 reference {ref16_err:.2e})");
            assert!(
                err <= 2.0 * ref16_err + 1e-4,
                "attention d {d} {set}: max |err| {err:.3e} > 2 x fp16 reference's {ref16_err:.3e} + 1e-4"
            );
        }
    }
}

#[test]
fn attention_refuses_unsupported_head_dims() {
    let Some(g) = gpu("attention_refuses_unsupported_head_dims") else {
        return;
    };
    let mut rng = Rng(6);
    let b = batch(&mut rng, &[5], 10, 1);
    let mut db = g.alloc_batch(5, 1).unwrap();
    g.load_batch(&b, &mut db).unwrap();
    let qkv = g.alloc(5 * 3 * 2 * 24).unwrap();
    let mut out = g.alloc(5 * 2 * 24).unwrap();
    let err = g
        .attention(&qkv, &db, 2, 24, &mut out)
        .unwrap_err()
        .to_string();
    assert!(err.contains("head_dim 24"), "{err}");
}

/// Logits in f32 from fp16 inputs with fp32 arithmetic throughout (the pooled vector never
/// goes back to fp16): only the order of fp32 sums differs from the reference, ~sqrt(width)
/// * 2^-24 * sum|terms|, far under atol 1e-4 + rtol 1e-4.
#[test]
fn cls_head_matches_cpu() {
    let mut rng = Rng(7);
    let g = gpu("cls_head_matches_cpu");
    for &width in if soft() {
        &SOFT_WIDTHS[..]
    } else {
        &WIDTHS[..6]
    } {
        let dense = (
            tensor(
                "dense.w",
                rng.vec16(width * width, 0.0, 1.0 / (width as f32).sqrt()),
            ),
            tensor("dense.b", rng.vec16(width, 0.0, 0.1)),
        );
        let out = (
            tensor("out.w", rng.vec16(width, 0.0, 2.0 / (width as f32).sqrt())),
            tensor("out.b", rng.vec16(1, 0.0, 0.1)),
        );
        let lin = |w: &HostTensor, b: &HostTensor, o: usize| Linear {
            w: w.data.clone(),
            b: b.data.clone(),
            out_dim: o,
            in_dim: width,
        };
        let cpu_head = Head {
            dense: lin(&dense.0, &dense.1, width),
            out: lin(&out.0, &out.1, 1),
        };
        for (set, lens) in length_sets(&mut rng) {
            let b = batch(&mut rng, &lens, 10, 1);
            // The head reads the [CLS] rows packed by gather_cls: one row per sequence.
            let hidden = rng.vec16(b.len() * width, 0.0, 1.0);
            let mut want = vec![f32::NAN; b.len()];
            CpuBackend.head(&hidden, &b, &cpu_head, &mut want).unwrap();
            let Some(g) = &g else { continue };
            let up = |t: &HostTensor| g.upload(t).unwrap();
            let dev_head = Head {
                dense: Linear {
                    w: up(&dense.0),
                    b: up(&dense.1),
                    out_dim: width,
                    in_dim: width,
                },
                out: Linear {
                    w: up(&out.0),
                    b: up(&out.1),
                    out_dim: 1,
                    in_dim: width,
                },
            };
            let mut db = g.alloc_batch(b.tokens(), b.len()).unwrap();
            g.load_batch(&b, &mut db).unwrap();
            let hd = g.upload(&tensor("hidden", hidden)).unwrap();
            // Poisoned: a logit the kernel does not write stays NaN and fails the check.
            let mut dl = g.stream().clone_htod(&vec![f32::NAN; b.len()]).unwrap();
            g.head(&hd, &db, &dev_head, &mut dl).unwrap();
            let got = g.read_logits(&dl, b.len()).unwrap();
            let e = check(
                &format!("cls_head width {width} {set}"),
                &got,
                &want,
                None,
                1e-4,
                1e-4,
            );
            println!("cls_head width {width} {set}: max |err| {e:.2e}");
        }
    }
}

/// gather_cls is a copy: the result must equal the CPU twin bit for bit, every row written.
/// Each length set runs as packed and padded to its BatchShape (rows of no sequence, empty
/// sequences whose start is the last row or one past it): an empty sequence gets a zero row.
#[test]
fn gather_cls_matches_cpu() {
    let mut rng = Rng(11);
    let g = gpu("gather_cls_matches_cpu");
    for &width in widths() {
        for (set, lens) in length_sets(&mut rng) {
            let packed = batch(&mut rng, &lens, 10, 1);
            let (t, n) = (packed.tokens(), packed.len());
            let shape = BatchShape {
                tokens: t + 5,
                seqs: n + 3,
                max_seqlen: packed.max_seqlen,
            };
            let padded = packed.padded_to(shape);
            // No padding rows: the empty sequences start one past the batch's last row.
            let tight = packed.padded_to(BatchShape { tokens: t, ..shape });
            for (b, kind) in [(&packed, "packed"), (&padded, "padded"), (&tight, "tight")] {
                let set = format!("{set} {kind}");
                let src = rng.vec16(b.tokens() * width, 0.0, 1.0);
                let mut want = vec![f32::NAN; b.len() * width];
                CpuBackend.gather_cls(&src, width, b, &mut want).unwrap();
                for s in 0..b.len() {
                    let row = b.cu_seqlens[s] as usize;
                    let want = &want[s * width..(s + 1) * width];
                    if b.range(s).is_empty() {
                        assert!(want.iter().all(|&v| v == 0.0));
                    } else {
                        assert_eq!(want, &src[row * width..(row + 1) * width]);
                    }
                }
                let Some(g) = &g else { continue };
                let mut db = g.alloc_batch(b.tokens(), b.len()).unwrap();
                g.load_batch(b, &mut db).unwrap();
                let ds = g.upload(&tensor("src", src)).unwrap();
                let mut out = poisoned(g, b.len() * width);
                g.gather_cls(&ds, width, &db, &mut out).unwrap();
                let got = g.download(&out, b.len() * width).unwrap();
                check(
                    &format!("gather_cls width {width} {set}"),
                    &got,
                    &want,
                    None,
                    0.0,
                    0.0,
                );
            }
        }
    }
}

#[test]
fn upload_refuses_values_beyond_fp16() {
    let Some(g) = gpu("upload_refuses_values_beyond_fp16") else {
        return;
    };
    let t = tensor(
        "encoder.layer.0.output.dense.weight",
        vec![1.0, 70000.0, 2.0],
    );
    let err = g.upload(&t).unwrap_err().to_string();
    assert!(
        err.contains("encoder.layer.0.output.dense.weight") && err.contains("70000"),
        "{err}"
    );
    // The largest finite fp16 value itself is fine.
    g.upload(&tensor("edge", vec![65504.0, -65504.0])).unwrap();
}

// ---- The pre-norm families' ops (ModernBERT): each against its CPU twin. ----

/// Windowed attention (ModernBERT's sliding layers) under the same rule as full attention: at
/// most twice the fp16 reference's error, plus 1e-4. Windows from 0 (a row sees only itself)
/// through ones narrower than a K/V tile, one tile, and wider than every sequence (no window at
/// all), over lengths long enough that whole tiles fall outside every row's window of a block and
/// are skipped (300 tokens on the software GPU: 5 tiles; 2048 on a GPU).
#[test]
fn attention_window_matches_cpu() {
    let mut rng = Rng(13);
    let g = gpu("attention_window_matches_cpu");
    let dims: &[(usize, usize)] = if soft() {
        &[(16, 2), (64, 1)]
    } else {
        &[(16, 3), (32, 4), (64, 12), (128, 2)]
    };
    let long = if soft() { 300 } else { 2048 };
    for &(d, heads) in dims {
        let h = heads * d;
        for window in [0usize, 1, 4, 63, 64, 100, 5000] {
            let mut sets = length_sets(&mut rng);
            sets.push(("one long sequence", vec![long]));
            for (set, lens) in sets {
                let b = batch(&mut rng, &lens, 10, 1);
                let qkv = rng.vec16(b.tokens() * 3 * h, 0.0, std::f32::consts::SQRT_2);
                let mut want = vec![0f32; b.tokens() * h];
                CpuBackend
                    .attention_window(&qkv, &b, heads, d, window, &mut want)
                    .unwrap();
                let ref16 = attention_fp16_reference(&qkv, &b, heads, d, Some(window));
                let ref16_err = max_abs_diff(&ref16, &want);
                assert!(
                    ref16_err < 4e-3,
                    "d {d} window {window} {set}: fp16 reference off by {ref16_err}"
                );
                let Some(g) = &g else { continue };
                let mut db = g.alloc_batch(b.tokens(), b.len()).unwrap();
                g.load_batch(&b, &mut db).unwrap();
                let dq = g.upload(&tensor("qkv", qkv)).unwrap();
                let mut out = poisoned(g, b.tokens() * h);
                g.attention_window(&dq, &db, heads, d, window, &mut out)
                    .unwrap();
                let got = g.download(&out, b.tokens() * h).unwrap();
                assert!(
                    got.iter().all(|v| v.is_finite()),
                    "d {d} window {window} {set}: unwritten or non-finite output"
                );
                let err = max_abs_diff(&got, &want);
                assert!(
                    err <= 2.0 * ref16_err + 1e-4,
                    "attention_window d {d} window {window} {set}: max |err| {err:.3e} > 2 x fp16 reference's {ref16_err:.3e} + 1e-4"
                );
                if set == "one long sequence" {
                    println!("attention_window d {d} heads {heads} window {window} {set}: max |err| {err:.2e} (fp16 reference {ref16_err:.2e})");
                }
            }
        }
    }
}

/// RoPE on the Q and K thirds, V untouched bit for bit. Rule: the output is rounded to fp16
/// (half an ulp, 2^-11 relative; rtol 2^-10 leaves as much again), and the kernel's angle
/// differs from the reference's only by __sincosf's error after an f64 range reduction
/// (~2^-21 of |a| + |b| <= ~8 here: atol 1e-5). Positions up to 8191 (ModernBERT's context),
/// where the high-frequency angles reach 8191 rad; both published thetas and a small one.
#[test]
fn rope_matches_cpu() {
    let mut rng = Rng(14);
    let g = gpu("rope_matches_cpu");
    let dims: &[(usize, usize)] = if soft() {
        &[(16, 2), (64, 2), (128, 1)]
    } else {
        &[(16, 2), (32, 4), (64, 12), (128, 8)]
    };
    for &(d, heads) in dims {
        let h = heads * d;
        for theta in [50.0, 10_000.0, 160_000.0] {
            for (set, lens) in length_sets(&mut rng) {
                let mut b = batch(&mut rng, &lens, 10, 1);
                if set == "one sequence" {
                    // Far positions: the last rows sit at 8191.
                    let t = b.tokens() as u32;
                    b.position_ids.iter_mut().for_each(|p| *p += 8192 - t);
                }
                let qkv = rng.vec16(b.tokens() * 3 * h, 0.0, 2.0);
                let mut want = qkv.clone();
                CpuBackend.rope(&mut want, &b, heads, d, theta).unwrap();
                let Some(g) = &g else { continue };
                let mut db = g.alloc_batch(b.tokens(), b.len()).unwrap();
                g.load_batch(&b, &mut db).unwrap();
                let mut dq = g.upload(&tensor("qkv", qkv.clone())).unwrap();
                g.rope(&mut dq, &db, heads, d, theta).unwrap();
                let got = g.download(&dq, b.tokens() * 3 * h).unwrap();
                let what = format!("rope d {d} heads {heads} theta {theta} {set}");
                let e = check(&what, &got, &want, None, 1e-5, 1.0 / 1024.0);
                for t in 0..b.tokens() {
                    let v = t * 3 * h + 2 * h..(t + 1) * 3 * h;
                    assert_eq!(got[v.clone()], qkv[v], "{what}: V of row {t} changed");
                }
                println!("{what}: max |err| {e:.2e}");
            }
        }
    }
}

/// GeGLU: gelu(input) · gate, rounded to fp16 once (rtol 2^-10: half an ulp, and as much again
/// for erff and fp32); atol 1e-5 for outputs near zero. The test models' 48, a width that is
/// not a multiple of 8 (the scalar path), gte-modernbert-base's 1152 and ettin-1b's 5248.
#[test]
fn geglu_matches_cpu() {
    let mut rng = Rng(15);
    let g = gpu("geglu_matches_cpu");
    let inters: &[usize] = if soft() {
        &[48, 100, 1152]
    } else {
        &[48, 100, 1152, 5248]
    };
    for &inter in inters {
        for rows in [1usize, 63, 65, 130] {
            let x = rng.vec16(rows * 2 * inter, 0.0, 1.5);
            let mut want = vec![0f32; rows * inter];
            CpuBackend
                .geglu(&x, rows, inter, Activation::GeluErf, &mut want)
                .unwrap();
            let Some(g) = &g else { continue };
            let dx = g.upload(&tensor("x", x)).unwrap();
            // One row past the end, poisoned: it must stay so.
            let mut out = poisoned(g, (rows + 1) * inter);
            g.geglu(&dx, rows, inter, Activation::GeluErf, &mut out)
                .unwrap();
            let got = g.download(&out, (rows + 1) * inter).unwrap();
            let what = format!("geglu {rows} x {inter}");
            let e = check(&what, &got[..rows * inter], &want, None, 1e-5, 1.0 / 1024.0);
            assert!(
                got[rows * inter..].iter().all(|v| v.is_nan()),
                "{what}: wrote past its rows"
            );
            println!("{what}: max |err| {e:.2e}");
        }
    }
}

/// LayerNorm alone, and the pre-norm residual (hidden += delta, out = LN(hidden)), with and
/// without beta (ModernBERT's norms have none: a zero beta). LN's rule as for add_layernorm; the
/// new residual stream must be exactly the fp16 rounding of the f32 sum, as the reference's.
#[test]
fn layernorm_and_residual_layernorm_match_cpu() {
    let mut rng = Rng(16);
    let g = gpu("layernorm_and_residual_layernorm_match_cpu");
    for &width in widths() {
        for zero_beta in [false, true] {
            let gamma = tensor("gamma", rng.vec16(width, 1.0, 0.2));
            let beta = match zero_beta {
                true => tensor("beta", vec![0.0; width]),
                false => tensor("beta", rng.vec16(width, 0.0, 0.2)),
            };
            let cpu_ln = LayerNorm {
                gamma: gamma.data.clone(),
                beta: beta.data.clone(),
            };
            for (set, lens) in length_sets(&mut rng) {
                let rows: usize = lens.iter().sum();
                let hidden = rng.vec16(rows * width, 0.5, 2.0);
                let delta = rng.vec16(rows * width, 0.0, 1.0);
                let mut want_ln = vec![0f32; rows * width];
                CpuBackend
                    .layernorm(&hidden, rows, &cpu_ln, 1e-5, &mut want_ln)
                    .unwrap();
                let mut want_h = hidden.clone();
                let mut want_res = vec![0f32; rows * width];
                CpuBackend
                    .residual_layernorm(&delta, rows, &cpu_ln, 1e-5, &mut want_h, &mut want_res)
                    .unwrap();
                let Some(g) = &g else { continue };
                let ln = LayerNorm {
                    gamma: g.upload(&gamma).unwrap(),
                    beta: g.upload(&beta).unwrap(),
                };
                let what = format!("width {width} zero beta {zero_beta} {set}");
                let dh = g.upload(&tensor("hidden", hidden)).unwrap();
                let mut out = poisoned(g, (rows + 1) * width);
                g.layernorm(&dh, rows, &ln, 1e-5, &mut out).unwrap();
                let got = g.download(&out, (rows + 1) * width).unwrap();
                let e1 = check(
                    &format!("layernorm {what}"),
                    &got[..rows * width],
                    &want_ln,
                    None,
                    LN_ATOL,
                    LN_RTOL,
                );
                assert!(
                    got[rows * width..].iter().all(|v| v.is_nan()),
                    "layernorm {what}: wrote past its rows"
                );
                let mut dh = dh;
                let dd = g.upload(&tensor("delta", delta)).unwrap();
                let mut out = poisoned(g, (rows + 1) * width);
                g.residual_layernorm(&dd, rows, &ln, 1e-5, &mut dh, &mut out)
                    .unwrap();
                let got = g.download(&out, (rows + 1) * width).unwrap();
                let e2 = check(
                    &format!("residual_layernorm {what}"),
                    &got[..rows * width],
                    &want_res,
                    None,
                    LN_ATOL,
                    LN_RTOL,
                );
                assert!(
                    got[rows * width..].iter().all(|v| v.is_nan()),
                    "residual_layernorm {what}: wrote past its rows"
                );
                let new_h = g.download(&dh, rows * width).unwrap();
                let rounded: Vec<f32> = want_h.iter().map(|&v| round16(v)).collect();
                check(
                    &format!("residual stream {what}"),
                    &new_h,
                    &rounded,
                    None,
                    0.0,
                    0.0,
                );
                println!("layernorm / residual_layernorm {what}: max |err| {e1:.2e} / {e2:.2e}");
            }
        }
    }
}

/// embed_tokens is a copy (bit for bit); mean_pool sums in fp32 and rounds once (rtol 2^-10;
/// atol 1e-4 covers fp32 sums of up to 512 rows of O(1) values against the reference's f64, and
/// means near zero); classify keeps the logit in f32 (as cls_head: 1e-4 + 1e-4 relative). Each
/// set also runs padded to a BatchShape: an empty sequence pools to a zero row.
#[test]
fn embed_tokens_mean_pool_and_classify_match_cpu() {
    let mut rng = Rng(17);
    let g = gpu("embed_tokens_mean_pool_and_classify_match_cpu");
    for &width in widths() {
        let vocab = 50;
        let table = tensor("table", rng.vec16(vocab * width, 0.0, 1.0));
        let cw = tensor(
            "classifier.w",
            rng.vec16(width, 0.0, 2.0 / (width as f32).sqrt()),
        );
        let cb = tensor("classifier.b", rng.vec16(1, 0.0, 0.1));
        let cpu_lin = Linear {
            w: cw.data.clone(),
            b: cb.data.clone(),
            out_dim: 1,
            in_dim: width,
        };
        for (set, lens) in length_sets(&mut rng) {
            let packed = batch(&mut rng, &lens, vocab, 1);
            let shape = BatchShape {
                tokens: packed.tokens() + 3,
                seqs: packed.len() + 2,
                max_seqlen: packed.max_seqlen,
            };
            let padded = packed.padded_to(shape);
            for (b, kind) in [(&packed, "packed"), (&padded, "padded")] {
                let what = format!("width {width} {set} {kind}");
                let (t, n) = (b.tokens(), b.len());
                let mut want_emb = vec![0f32; t * width];
                CpuBackend
                    .embed_tokens(b, &table.data, width, &mut want_emb)
                    .unwrap();
                let src = rng.vec16(t * width, 0.3, 1.0);
                let mut want_pool = vec![f32::NAN; n * width];
                CpuBackend
                    .mean_pool(&src, width, b, &mut want_pool)
                    .unwrap();
                let x = rng.vec16(n * width, 0.0, 1.0);
                let mut want_logits = vec![f32::NAN; n];
                CpuBackend
                    .classify(&x, n, &cpu_lin, &mut want_logits)
                    .unwrap();
                let Some(g) = &g else { continue };
                let mut db = g.alloc_batch(t, n).unwrap();
                g.load_batch(b, &mut db).unwrap();
                let dt = g.upload(&table).unwrap();
                let mut out = poisoned(g, t * width);
                g.embed_tokens(&db, &dt, width, &mut out).unwrap();
                let got = g.download(&out, t * width).unwrap();
                check(
                    &format!("embed_tokens {what}"),
                    &got,
                    &want_emb,
                    None,
                    0.0,
                    0.0,
                );
                let ds = g.upload(&tensor("src", src)).unwrap();
                let mut out = poisoned(g, n * width);
                g.mean_pool(&ds, width, &db, &mut out).unwrap();
                let got = g.download(&out, n * width).unwrap();
                let e1 = check(
                    &format!("mean_pool {what}"),
                    &got,
                    &want_pool,
                    None,
                    1e-4,
                    1.0 / 1024.0,
                );
                let dx = g.upload(&tensor("x", x)).unwrap();
                let lin = Linear {
                    w: g.upload(&cw).unwrap(),
                    b: g.upload(&cb).unwrap(),
                    out_dim: 1,
                    in_dim: width,
                };
                let mut dl = g.stream().clone_htod(&vec![f32::NAN; n]).unwrap();
                g.classify(&dx, n, &lin, &mut dl).unwrap();
                let got = g.read_logits(&dl, n).unwrap();
                let e2 = check(
                    &format!("classify {what}"),
                    &got,
                    &want_logits,
                    None,
                    1e-4,
                    1e-4,
                );
                println!("mean_pool / classify {what}: max |err| {e1:.2e} / {e2:.2e}");
            }
        }
    }
}

/// A token id past the table is an input error before any kernel reads it, and a head_dim the
/// RoPE kernel does not take is a clear error, not a fault.
#[test]
fn prenorm_ops_refuse_what_they_cannot_do() {
    let Some(g) = gpu("prenorm_ops_refuse_what_they_cannot_do") else {
        return;
    };
    let mut rng = Rng(18);
    let mut b = batch(&mut rng, &[5, 3], 9, 1);
    b.input_ids[6] = 9;
    let mut db = g.alloc_batch(8, 2).unwrap();
    g.load_batch(&b, &mut db).unwrap();
    let table = g.upload(&tensor("table", vec![0.5; 9 * 8])).unwrap();
    let mut out = g.alloc(8 * 8).unwrap();
    let err = g
        .embed_tokens(&db, &table, 8, &mut out)
        .unwrap_err()
        .to_string();
    assert!(err.contains("outside the model's vocabulary (9)"), "{err}");
    let mut qkv = g.alloc(8 * 3 * 2 * 15).unwrap();
    let err = g.rope(&mut qkv, &db, 2, 15, 1e4).unwrap_err().to_string();
    assert!(err.contains("head_dim 15"), "{err}");
}

// ---- The decoder LLMs' ops (Qwen), in bf16 as they run; the shared ones in fp16 too. ----
//
// bf16 keeps 8 significant bits: rounding an output costs up to 2^-9 of it. The rules below use
// rtol 2^-8 (half an ulp, and as much again for fp32 arithmetic against the reference's f64),
// the bf16 counterpart of the fp16 tests' 2^-10; inputs are rounded to bf16 before the CPU sees
// them.

const BF16_RTOL: f32 = 1.0 / 256.0;

fn round_bf16(v: f32) -> f32 {
    bf16::from_f32(v).to_f32()
}

/// `n` values ~ mean + N(0, std²), rounded to bf16.
fn vec_bf16(rng: &mut Rng, n: usize, mean: f32, std: f32) -> Vec<f32> {
    (0..n)
        .map(|_| round_bf16(mean + std * rng.normal()))
        .collect()
}

/// Hidden sizes of the decoder LLMs: the test models' 64, Qwen2-0.5B (mxbai-rerank-base-v2) 896,
/// Qwen3-0.6B 1024, Qwen3-4B 2560, Qwen3-8B 4096. On the software GPU: 64 and 1024.
fn llm_widths() -> &'static [usize] {
    if soft() {
        &[64, 1024]
    } else {
        &[64, 896, 1024, 2560, 4096]
    }
}

/// (head_dim, query heads, K/V heads): the test models', Qwen2-0.5B's, Qwen3-0.6B's and
/// Qwen3-4B's. On the software GPU: small head counts with every head_dim the models use.
fn gqa_shapes() -> &'static [(usize, usize, usize)] {
    if soft() {
        &[(16, 4, 2), (16, 4, 1), (64, 2, 1), (128, 2, 1)]
    } else {
        &[
            (16, 4, 2),
            (16, 4, 1),
            (64, 14, 2),
            (128, 16, 8),
            (128, 32, 8),
        ]
    }
}

/// RMSNorm and the pre-norm residual fused with it. The output is O(1) · weight, rounded once:
/// rtol 2^-8, atol 1e-6 for values near zero (fp32 sums of squares against f64 differ by ~1e-7
/// relative). The new residual stream must be exactly the bf16 rounding of the f32 sum.
#[test]
fn rmsnorm_and_residual_rmsnorm_match_cpu() {
    let mut rng = Rng(21);
    let g = gpu_as::<bf16>("rmsnorm_and_residual_rmsnorm_match_cpu");
    let eps = 1e-6;
    for &width in llm_widths() {
        for (set, lens) in length_sets(&mut rng) {
            let rows: usize = lens.iter().sum();
            let mut x = vec_bf16(&mut rng, rows * width, 0.3, 2.0);
            let mut delta = vec_bf16(&mut rng, rows * width, 0.0, 1.0);
            // A zero row: only eps keeps its rsqrt finite (it normalises to zeros, not NaN).
            x[..width].fill(0.0);
            delta[..width].fill(0.0);
            let weight = vec_bf16(&mut rng, width, 1.0, 0.2);
            let mut plain = vec![0f32; rows * width];
            CpuBackend
                .rmsnorm(None, &mut x.clone(), rows, &weight, eps, &mut plain)
                .unwrap();
            let mut sum = x.clone();
            let mut normed = vec![0f32; rows * width];
            CpuBackend
                .rmsnorm(Some(&delta), &mut sum, rows, &weight, eps, &mut normed)
                .unwrap();
            let Some(g) = &g else { continue };
            let dw = g.upload(&tensor("weight", weight.clone())).unwrap();
            let dd = g.upload(&tensor("delta", delta.clone())).unwrap();
            let what = format!("rmsnorm width {width} {set}");
            let mut dx = g.upload(&tensor("x", x.clone())).unwrap();
            let mut out = poisoned(g, rows * width);
            g.rmsnorm(None, &mut dx, rows, &dw, eps, &mut out).unwrap();
            let got = g.download(&out, rows * width).unwrap();
            let e = check(&what, &got, &plain, None, 1e-6, BF16_RTOL);
            assert_eq!(
                g.download(&dx, rows * width).unwrap(),
                x,
                "{what}: x changed"
            );
            let mut out = poisoned(g, rows * width);
            g.rmsnorm(Some(&dd), &mut dx, rows, &dw, eps, &mut out)
                .unwrap();
            let got = g.download(&out, rows * width).unwrap();
            let e2 = check(
                &format!("residual {what}"),
                &got,
                &normed,
                None,
                1e-6,
                BF16_RTOL,
            );
            let stream: Vec<f32> = sum.iter().map(|&v| round_bf16(v)).collect();
            assert_eq!(
                g.download(&dx, rows * width).unwrap(),
                stream,
                "residual {what}: the residual stream is not the bf16 rounding of the f32 sum"
            );
            println!("{what}: max |err| {e:.2e}, residual {e2:.2e}");
        }
    }
}

/// Qwen3's per-head RMSNorm of Q and K, then RoPE, on the GQA layout (Q's heads, K's kv_heads,
/// V's kv_heads), with and without the norms (Qwen2 has none); V untouched bit for bit. Rule as
/// rope_matches_cpu in bf16: rtol 2^-8 for the output's rounding, atol 1e-5 for __sincosf after
/// the f64 range reduction. Positions up to 40959 (Qwen3's context), thetas 1e6 (Qwen3) and
/// 1e4.
#[test]
fn qk_norm_rope_matches_cpu() {
    let mut rng = Rng(22);
    let g = gpu_as::<bf16>("qk_norm_rope_matches_cpu");
    let eps = 1e-6;
    for &(d, heads, kv) in gqa_shapes() {
        let width = (heads + 2 * kv) * d;
        let q_norm = vec_bf16(&mut rng, d, 1.0, 0.3);
        let k_norm = vec_bf16(&mut rng, d, 1.0, 0.3);
        for theta in [10_000.0, 1_000_000.0] {
            for (set, lens) in length_sets(&mut rng) {
                let mut b = batch(&mut rng, &lens, 10, 1);
                if set == "one sequence" {
                    let t = b.tokens() as u32;
                    b.position_ids.iter_mut().for_each(|p| *p += 40960 - t);
                }
                let qkv = vec_bf16(&mut rng, b.tokens() * width, 0.0, 2.0);
                for normed in [false, true] {
                    let mut want = qkv.clone();
                    let cpu_norms = normed.then_some((&q_norm, &k_norm));
                    CpuBackend
                        .qk_norm_rope(&mut want, &b, heads, kv, d, cpu_norms, eps, theta)
                        .unwrap();
                    let Some(g) = &g else { continue };
                    let mut db = g.alloc_batch(b.tokens(), b.len()).unwrap();
                    g.load_batch(&b, &mut db).unwrap();
                    let (dqn, dkn) = (
                        g.upload(&tensor("q_norm", q_norm.clone())).unwrap(),
                        g.upload(&tensor("k_norm", k_norm.clone())).unwrap(),
                    );
                    let mut dq = g.upload(&tensor("qkv", qkv.clone())).unwrap();
                    let norms = normed.then_some((&dqn, &dkn));
                    g.qk_norm_rope(&mut dq, &db, heads, kv, d, norms, eps, theta)
                        .unwrap();
                    let got = g.download(&dq, b.tokens() * width).unwrap();
                    let what = format!(
                        "qk_norm_rope d {d} {heads}/{kv} heads norm {normed} theta {theta} {set}"
                    );
                    let e = check(&what, &got, &want, None, 1e-5, BF16_RTOL);
                    for t in 0..b.tokens() {
                        let v = t * width + (heads + kv) * d..(t + 1) * width;
                        assert_eq!(got[v.clone()], qkv[v], "{what}: V of row {t} changed");
                    }
                    println!("{what}: max |err| {e:.2e}");
                }
            }
        }
    }
}

/// The same math as the kernel with 16-bit storage where the kernel rounds (`round`): exact
/// softmax weights rounded for P·V, the row sum of the unrounded weights, the output rounded.
/// Causal grouped-query attention over the [tokens, (heads + 2·kv)·d] layout, with the batch's
/// shared prefix seen first by every sequence after the first.
fn attention_causal_reference(
    qkv: &[f32],
    b: &PackedBatch,
    (d, heads, kv): (usize, usize, usize),
    round: fn(f32) -> f32,
) -> Vec<f32> {
    let (h, width, group) = (heads * d, (heads + 2 * kv) * d, heads / kv);
    let mut out = vec![0f32; b.tokens() * h];
    let scale = 1.0 / (d as f64).sqrt();
    for s in 0..b.len() {
        let r = b.range(s);
        let prefix = if s > 0 { b.shared_prefix } else { 0 };
        for head in 0..heads {
            let kvh = head / group;
            let q = |t: usize, c: usize| qkv[t * width + head * d + c] as f64;
            let k = |t: usize, c: usize| qkv[t * width + h + kvh * d + c] as f64;
            let v = |t: usize, c: usize| qkv[t * width + h + kv * d + kvh * d + c];
            for i in r.clone() {
                let keys: Vec<usize> = (0..prefix).chain(r.start..i + 1).collect();
                let scores: Vec<f64> = keys
                    .iter()
                    .map(|&j| (0..d).map(|c| q(i, c) * k(j, c)).sum::<f64>() * scale)
                    .collect();
                let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let p: Vec<f64> = scores.iter().map(|x| (x - max).exp()).collect();
                let sum: f64 = p.iter().sum();
                for c in 0..d {
                    let acc: f32 = keys
                        .iter()
                        .zip(&p)
                        .map(|(&j, &pj)| round(pj as f32) * v(j, c))
                        .sum();
                    out[i * h + head * d + c] = round((acc as f64 / sum) as f32);
                }
            }
        }
    }
    out
}

/// Sequences that all start with the same `prefix` ids, then ragged own tokens; positions run
/// on through the prefix, as a reranker's prompt does.
fn prefixed_batch(rng: &mut Rng, prefix: usize, rests: &[usize]) -> PackedBatch {
    let head: Vec<u32> = (0..prefix).map(|_| rng.below(50) as u32).collect();
    let mut b = PackedBatch {
        cu_seqlens: vec![0],
        ..Default::default()
    };
    for &rest in rests {
        // A first own id the prefix never holds, so the shared run is exactly `prefix` long.
        let own = std::iter::once(50).chain((1..rest).map(|_| rng.below(60) as u32));
        for (p, id) in head.iter().copied().chain(own).enumerate() {
            b.input_ids.push(id);
            b.token_type_ids.push(0);
            b.position_ids.push(p as u32);
        }
        b.cu_seqlens.push(b.input_ids.len() as i32);
        b.max_seqlen = b.max_seqlen.max(prefix + rest);
    }
    b
}

/// Runs causal attention on the device in storage `S` and holds it to the rule of
/// attention_matches_cpu_for_every_head_dim: the kernel's largest error against the f32
/// reference is at most twice that of the same math done with `S` storage by
/// `attention_causal_reference`, plus 1e-4.
fn check_attention_causal<S: Storage>(
    g: Option<&CudaBackend<S>>,
    rng: &mut Rng,
    b: &PackedBatch,
    shape: (usize, usize, usize),
    round: fn(f32) -> f32,
    what: &str,
) {
    let (d, heads, kv) = shape;
    let width = (heads + 2 * kv) * d;
    let qkv: Vec<f32> = (0..b.tokens() * width)
        .map(|_| round(1.5 * rng.normal()))
        .collect();
    let mut want = vec![0f32; b.tokens() * heads * d];
    CpuBackend
        .attention_causal(&qkv, b, heads, kv, d, &mut want)
        .unwrap();
    let Some(g) = g else { return };
    let emulated = attention_causal_reference(&qkv, b, shape, round);
    let bound = 2.0 * max_abs_diff(&emulated, &want) + 1e-4;
    let mut db = g.alloc_batch(b.tokens(), b.len()).unwrap();
    g.load_batch(b, &mut db).unwrap();
    let dq = g.upload(&tensor("qkv", qkv)).unwrap();
    let mut out = poisoned(g, b.tokens() * heads * d);
    g.attention_causal(&dq, &db, heads, kv, d, &mut out)
        .unwrap();
    let got = g.download(&out, b.tokens() * heads * d).unwrap();
    let e = check(what, &got, &want, None, bound, 0.0);
    println!("{what}: max |err| {e:.2e} (bound {bound:.2e})");
}

/// Causal grouped-query attention, plain and after a shared prefix (the prefix as sequence 0,
/// each sequence's own rows attending to it first): prefixes shorter than a K/V tile and
/// crossing one (lengths chosen below), own parts that are one token, cross tiles, and start
/// inside the prefix's last tile. bf16 for every shape; fp16 for one (the kernel serves both).
#[test]
fn attention_causal_matches_cpu() {
    let mut rng = Rng(23);
    let g = gpu_as::<bf16>("attention_causal_matches_cpu");
    let g16 = gpu("attention_causal_matches_cpu (fp16)");
    // Prefix lengths around the 64-key tiles: 1 and 65 put the end of a block's causal range one
    // past a tile boundary, 62 puts a tile's last key one past a block's first row (both
    // planted bugs that other lengths miss: scripts/softgpu_mutants.py), 70 crosses a tile.
    let prefixes: &[usize] = if soft() {
        &[1, 62, 70]
    } else {
        &[1, 5, 62, 65, 70, 300]
    };
    for &shape in gqa_shapes() {
        let (d, heads, kv) = shape;
        for (set, lens) in length_sets(&mut rng) {
            let b = batch(&mut rng, &lens, 10, 1);
            let what = format!("attention_causal d {d} {heads}/{kv} heads {set}");
            check_attention_causal(g.as_ref(), &mut rng, &b, shape, round_bf16, &what);
        }
        for &p in prefixes {
            let rests = [1, 2, 63, 64, 65, 7];
            let plain = prefixed_batch(&mut rng, p, &rests);
            let shared = plain.share_prefix().expect("the sequences share a prefix");
            assert_eq!(shared.shared_prefix, p);
            let what = format!("attention_causal d {d} {heads}/{kv} heads, shared prefix {p}");
            check_attention_causal(g.as_ref(), &mut rng, &shared, shape, round_bf16, &what);
        }
    }
    let b = prefixed_batch(&mut rng, 70, &[1, 65, 3])
        .share_prefix()
        .unwrap();
    let what = "attention_causal fp16 d 64 2/1 heads, shared prefix 70";
    check_attention_causal(g16.as_ref(), &mut rng, &b, (64, 2, 1), round16, what);
}

/// SwiGLU: silu(gate) · up, rounded once (rtol 2^-8 for bf16, 2^-10 for fp16: half an ulp and as
/// much again for expf and fp32); atol 1e-5 near zero. The test models' 96 and 80, a width that
/// is not a multiple of 8 (the scalar path), Qwen3-0.6B's 3072.
#[test]
fn swiglu_matches_cpu() {
    let mut rng = Rng(24);
    let g = gpu_as::<bf16>("swiglu_matches_cpu");
    let g16 = gpu("swiglu_matches_cpu (fp16)");
    for inter in [80, 96, 100, 3072] {
        for (set, lens) in length_sets(&mut rng) {
            let rows: usize = lens.iter().sum();
            let x = vec_bf16(&mut rng, rows * 2 * inter, 0.0, 3.0);
            let mut want = vec![0f32; rows * inter];
            CpuBackend
                .geglu(&x, rows, inter, Activation::Silu, &mut want)
                .unwrap();
            let what = format!("swiglu inter {inter} {set}");
            if let Some(g) = &g {
                let dx = g.upload(&tensor("x", x.clone())).unwrap();
                let mut out = poisoned(g, rows * inter);
                g.geglu(&dx, rows, inter, Activation::Silu, &mut out)
                    .unwrap();
                let got = g.download(&out, rows * inter).unwrap();
                let e = check(&what, &got, &want, None, 1e-5, BF16_RTOL);
                println!("{what}: max |err| {e:.2e}");
            }
            if let Some(g) = &g16 {
                // bf16 inputs are exact in fp16 only within its range: these are (|x| < 20).
                let dx = g.upload(&tensor("x", x.clone())).unwrap();
                let mut out = poisoned(g, rows * inter);
                g.geglu(&dx, rows, inter, Activation::Silu, &mut out)
                    .unwrap();
                let got = g.download(&out, rows * inter).unwrap();
                check(
                    &format!("fp16 {what}"),
                    &got,
                    &want,
                    None,
                    1e-5,
                    1.0 / 1024.0,
                );
            }
        }
    }
}

/// gather_last is a copy of each sequence's last row: bit for bit, packed and padded (empty
/// sequences get a zero row); a shared-prefix batch's prefix row is sequence 0's.
#[test]
fn gather_last_matches_cpu() {
    let mut rng = Rng(25);
    let g = gpu_as::<bf16>("gather_last_matches_cpu");
    for &width in llm_widths() {
        let mut sets = length_sets(&mut rng);
        sets.push(("shared prefix", vec![]));
        for (set, lens) in sets {
            let packed = if lens.is_empty() {
                prefixed_batch(&mut rng, 9, &[1, 4, 2])
                    .share_prefix()
                    .unwrap()
            } else {
                batch(&mut rng, &lens, 10, 1)
            };
            let (t, n) = (packed.tokens(), packed.len());
            let shape = BatchShape {
                tokens: t + 5,
                seqs: n + 3,
                max_seqlen: packed.max_seqlen,
            };
            let padded = packed.padded_to(shape);
            for (b, kind) in [(&packed, "packed"), (&padded, "padded")] {
                let src = vec_bf16(&mut rng, b.tokens() * width, 0.0, 1.0);
                let mut want = vec![f32::NAN; b.len() * width];
                CpuBackend.gather_last(&src, width, b, &mut want).unwrap();
                for s in 0..b.len() {
                    let r = b.range(s);
                    let want = &want[s * width..(s + 1) * width];
                    match r.end.checked_sub(1).filter(|_| !r.is_empty()) {
                        Some(last) => assert_eq!(want, &src[last * width..(last + 1) * width]),
                        None => assert!(want.iter().all(|&v| v == 0.0)),
                    }
                }
                let Some(g) = &g else { continue };
                let mut db = g.alloc_batch(b.tokens(), b.len()).unwrap();
                g.load_batch(b, &mut db).unwrap();
                let ds = g.upload(&tensor("src", src)).unwrap();
                let mut out = poisoned(g, b.len() * width);
                g.gather_last(&ds, width, &db, &mut out).unwrap();
                let got = g.download(&out, b.len() * width).unwrap();
                let what = format!("gather_last width {width} {set} {kind}");
                check(&what, &got, &want, None, 0.0, 0.0);
            }
        }
    }
}

/// The ops the decoder LLMs share with the encoders, in bf16: the GEMM with a bias (Qwen2's QKV
/// bias; the others get a zero bias), the token embedding (a copy: exact) and the folded yes-no
/// head (f32 logits: 1e-4 + 1e-4 relative, as in fp16). GEMM rule as
/// linear_with_bias_and_gelu_matches_cpu with bf16's rounding: rtol 2^-8, atol 1e-3. Shapes
/// (out, in): the test models' QKV, gate | up and down, and Qwen3-0.6B's QKV (off the software
/// GPU).
#[test]
fn linear_embed_and_classify_match_cpu_in_bf16() {
    let mut rng = Rng(26);
    let g = gpu_as::<bf16>("linear_embed_and_classify_match_cpu_in_bf16");
    let shapes: &[(usize, usize)] = if soft() {
        &[(128, 64), (192, 64), (64, 96), (100, 64)]
    } else {
        &[
            (128, 64),
            (192, 64),
            (64, 96),
            (100, 64),
            (4096, 1024),
            (1024, 3072),
        ]
    };
    for &(o, i) in shapes {
        let w = tensor("w", vec_bf16(&mut rng, o * i, 0.0, 1.0 / (i as f32).sqrt()));
        let bias = tensor("b", vec_bf16(&mut rng, o, 0.0, 0.1));
        let cpu_lin = Linear {
            w: w.data.clone(),
            b: bias.data.clone(),
            out_dim: o,
            in_dim: i,
        };
        for rows in [1, 63, 130] {
            let x = vec_bf16(&mut rng, rows * i, 0.0, 1.0);
            let mut want = vec![0f32; rows * o];
            CpuBackend
                .linear(&x, rows, &cpu_lin, None, &mut want)
                .unwrap();
            let Some(g) = &g else { continue };
            let lin = Linear {
                w: g.upload(&w).unwrap(),
                b: g.upload(&bias).unwrap(),
                out_dim: o,
                in_dim: i,
            };
            let xd = g.upload(&tensor("x", x)).unwrap();
            let mut out = poisoned(g, rows * o);
            g.linear(&xd, rows, &lin, None, &mut out).unwrap();
            let got = g.download(&out, rows * o).unwrap();
            let what = format!("bf16 linear {rows}x{i} -> {o}");
            let e = check(&what, &got, &want, None, LIN_ATOL, BF16_RTOL);
            println!("{what}: max |err| {e:.2e}");
        }
    }
    let width = 64;
    for (set, lens) in length_sets(&mut rng) {
        let b = batch(&mut rng, &lens, 300, 1);
        let table = vec_bf16(&mut rng, 300 * width, 0.0, 1.0);
        let mut emb = vec![0f32; b.tokens() * width];
        CpuBackend
            .embed_tokens(&b, &table, width, &mut emb)
            .unwrap();
        let head = Linear {
            w: vec_bf16(&mut rng, width, 0.0, 0.5),
            b: vec![0.0],
            out_dim: 1,
            in_dim: width,
        };
        let rows = vec_bf16(&mut rng, b.len() * width, 0.0, 1.0);
        let mut logits = vec![0f32; b.len()];
        CpuBackend
            .classify(&rows, b.len(), &head, &mut logits)
            .unwrap();
        let Some(g) = &g else { continue };
        let mut db = g.alloc_batch(b.tokens(), b.len()).unwrap();
        g.load_batch(&b, &mut db).unwrap();
        let dt = g.upload(&tensor("table", table)).unwrap();
        let mut out = poisoned(g, b.tokens() * width);
        g.embed_tokens(&db, &dt, width, &mut out).unwrap();
        let got = g.download(&out, b.tokens() * width).unwrap();
        check(
            &format!("bf16 embed_tokens {set}"),
            &got,
            &emb,
            None,
            0.0,
            0.0,
        );
        let dhead = Linear {
            w: g.upload(&tensor("head", head.w.clone())).unwrap(),
            b: g.upload(&tensor("head bias", head.b.clone())).unwrap(),
            out_dim: 1,
            in_dim: width,
        };
        let dr = g.upload(&tensor("rows", rows)).unwrap();
        let mut dl = g.alloc_logits(b.len()).unwrap();
        g.classify(&dr, b.len(), &dhead, &mut dl).unwrap();
        let got = g.read_logits(&dl, b.len()).unwrap();
        check(
            &format!("bf16 classify {set}"),
            &got,
            &logits,
            None,
            1e-4,
            1e-4,
        );
    }
}

/// bf16 shares f32's exponent range, so only a value that rounds past its largest finite one
/// (f32::MAX does) is refused, naming the tensor and the storage.
#[test]
fn upload_refuses_values_beyond_bf16() {
    let Some(g) = gpu_as::<bf16>("upload_refuses_values_beyond_bf16") else {
        return;
    };
    let t = tensor("model.layers.0.mlp.down_proj.weight", vec![1.0, f32::MAX]);
    let err = g.upload(&t).unwrap_err().to_string();
    assert!(
        err.contains("down_proj") && err.contains("bf16") && err.contains("element 1"),
        "{err}"
    );
    g.upload(&tensor("ok", vec![3.0e38, -1e-30])).unwrap();
}

// ---- The visual cross-encoder's ops (kernels/vision.cu), in fp16. ----

/// patchify is a copy (bit for bit) and vit_embed one f32 add then one rounding, so rounding
/// the CPU twin's f32 sum to fp16 gives the kernel's output exactly. Shapes: the test model
/// (32x32 images in 8x8 patches, width 48), BLIP-base's patching (384 in 16, width 768; 224 in
/// 16 on the software GPU), an odd patch count per side (40 in 8: 5x5); 1, 2 and 3 images.
#[test]
fn patchify_and_vit_embed_match_cpu() {
    let mut rng = Rng(31);
    let g = gpu("patchify_and_vit_embed_match_cpu");
    let shapes: &[(usize, usize, usize)] = if soft() {
        &[(32, 8, 48), (40, 8, 32), (224, 16, 64)]
    } else {
        &[(32, 8, 48), (40, 8, 32), (384, 16, 768)]
    };
    for &(size, patch, width) in shapes {
        for n in [1, 2, 3] {
            let what = format!("{n} images {size}x{size} in {patch}x{patch}, width {width}");
            let (g2, k) = ((size / patch).pow(2), 3 * patch * patch);
            let pixels = rng.vec16(n * 3 * size * size, 0.0, 1.0);
            let mut want_rows = vec![f32::NAN; n * g2 * k];
            CpuBackend
                .patchify(&pixels, n, size, patch, &mut want_rows)
                .unwrap();
            // The twin itself: row (image 0, patch (0, 1))'s first value is pixel (c 0, y 0, x patch).
            if g2 > 1 {
                assert_eq!(want_rows[k], pixels[patch], "{what}: CPU patchify");
            }
            let patches = rng.vec16(n * g2 * width, 0.0, 1.0);
            let class = rng.vec16(width, 0.0, 1.0);
            let positions = rng.vec16((g2 + 1) * width, 0.0, 0.5);
            let mut want = vec![f32::NAN; n * (g2 + 1) * width];
            CpuBackend
                .vit_embed(&patches, n, &class, &positions, width, &mut want)
                .unwrap();
            want.iter_mut().for_each(|v| *v = round16(*v));
            let Some(g) = &g else { continue };
            let dp = g.upload(&tensor("pixels", pixels.clone())).unwrap();
            let mut out = poisoned(g, n * g2 * k);
            g.patchify(&dp, n, size, patch, &mut out).unwrap();
            let got = g.download(&out, n * g2 * k).unwrap();
            check(
                &format!("patchify {what}"),
                &got,
                &want_rows,
                None,
                0.0,
                0.0,
            );
            // load_values lands a host image at an offset, rounded once to fp16 (exact here).
            let mut dl = poisoned(g, (n + 1) * 3 * size * size);
            let at = 3 * size * size;
            g.load_values(&pixels, &mut dl, at).unwrap();
            let got = g.download(&dl, (n + 1) * at).unwrap();
            check(
                &format!("load_values {what}"),
                &got[at..],
                &pixels,
                None,
                0.0,
                0.0,
            );
            assert!(
                got[..at].iter().all(|v| v.is_nan()),
                "{what}: load_values wrote before its offset"
            );
            let (dpa, dc, dpos) = (
                g.upload(&tensor("patches", patches)).unwrap(),
                g.upload(&tensor("class", class)).unwrap(),
                g.upload(&tensor("positions", positions)).unwrap(),
            );
            let mut out = poisoned(g, n * (g2 + 1) * width);
            g.vit_embed(&dpa, n, &dc, &dpos, width, &mut out).unwrap();
            let got = g.download(&out, n * (g2 + 1) * width).unwrap();
            check(&format!("vit_embed {what}"), &got, &want, None, 0.0, 0.0);
        }
    }
}

/// Cross-attention: text rows of sequence s attend to the rows of image `image_of[s]`, fewer
/// images than sequences so that images are shared, in a random order. The kernel
/// keeps scores and P in f32 and rounds only its output to fp16, so the same math in fp16 is
/// the f32 reference with its output rounded; rule as for self-attention (STYLE.md): the
/// kernel's largest error at most twice that reference's, plus 1e-4. Ragged text lengths
/// (the length sets), image row counts of 17 (the test model), 50 and 197 (ViT-B/16 at 224;
/// 577 at 384 off the software GPU), every head_dim the kernel has.
#[test]
fn cross_attention_matches_cpu() {
    let mut rng = Rng(32);
    let g = gpu("cross_attention_matches_cpu");
    let dims: &[(usize, usize)] = &[(16, 2), (32, 2), (64, 2), (128, 1)];
    let image_rows: &[usize] = if soft() {
        &[17, 50, 197]
    } else {
        &[17, 197, 577]
    };
    for &(d, heads) in dims {
        let h = heads * d;
        for (set, lens) in length_sets(&mut rng) {
            for &rows in image_rows {
                let what = format!("d {d} heads {heads} {set}, {rows} image rows");
                let b = batch(&mut rng, &lens, 10, 1);
                let images = lens.len().div_ceil(2);
                let image_of: Vec<u32> =
                    (0..lens.len()).map(|_| rng.below(images) as u32).collect();
                let kv_b = PackedBatch::indices(&image_of);
                let q = rng.vec16(b.tokens() * h, 0.0, std::f32::consts::SQRT_2);
                let kv = rng.vec16(images * rows * 2 * h, 0.0, std::f32::consts::SQRT_2);
                let mut want = vec![f32::NAN; b.tokens() * h];
                CpuBackend
                    .cross_attention(&q, &b, &kv, &kv_b, rows, heads, d, &mut want)
                    .unwrap();
                let ref16: Vec<f32> = want.iter().map(|&v| round16(v)).collect();
                let ref16_err = max_abs_diff(&ref16, &want);
                assert!(
                    ref16_err < 4e-3,
                    "{what}: fp16 reference off by {ref16_err}"
                );
                let Some(g) = &g else { continue };
                let (mut db, mut dkb) = (
                    g.alloc_batch(b.tokens(), b.len()).unwrap(),
                    g.alloc_batch(kv_b.tokens(), kv_b.len()).unwrap(),
                );
                g.load_batch(&b, &mut db).unwrap();
                g.load_batch(&kv_b, &mut dkb).unwrap();
                let (dq, dkv) = (
                    g.upload(&tensor("q", q)).unwrap(),
                    g.upload(&tensor("kv", kv)).unwrap(),
                );
                let mut out = poisoned(g, b.tokens() * h);
                g.cross_attention(&dq, &db, &dkv, &dkb, rows, heads, d, &mut out)
                    .unwrap();
                let got = g.download(&out, b.tokens() * h).unwrap();
                assert!(
                    got.iter().all(|v| v.is_finite()),
                    "{what}: unwritten or non-finite output"
                );
                let err = max_abs_diff(&got, &want);
                assert!(
                    err <= 2.0 * ref16_err + 1e-4,
                    "cross_attention {what}: max |err| {err:.3e} > 2 x fp16 reference's {ref16_err:.3e} + 1e-4"
                );
            }
        }
        // A head_dim the kernels lack is refused, not run.
        if let Some(g) = &g {
            let b = batch(&mut rng, &[3], 10, 1);
            let mut db = g.alloc_batch(3, 1).unwrap();
            g.load_batch(&b, &mut db).unwrap();
            let (dq, dkv) = (g.alloc(3 * 48).unwrap(), g.alloc(3 * 96).unwrap());
            let mut out = g.alloc(3 * 48).unwrap();
            let one = PackedBatch::indices(&[0]);
            let mut dimg = g.alloc_batch(1, 1).unwrap();
            g.load_batch(&one, &mut dimg).unwrap();
            let e = g
                .cross_attention(&dq, &db, &dkv, &dimg, 1, 1, 48, &mut out)
                .unwrap_err()
                .to_string();
            assert!(e.contains("head_dim 48 is not supported"), "{e}");
            // An image index past the key/value rows is refused before any launch.
            let (dq, dkv) = (g.alloc(3 * 32).unwrap(), g.alloc(2 * 64).unwrap());
            let mut out = g.alloc(3 * 32).unwrap();
            let past = PackedBatch::indices(&[2]);
            g.load_batch(&past, &mut dimg).unwrap();
            let e = g
                .cross_attention(&dq, &db, &dkv, &dimg, 1, 1, 32, &mut out)
                .unwrap_err()
                .to_string();
            assert!(e.contains("image 2 of a key/value buffer holding 2"), "{e}");
        }
    }
}
