//! The bench driver behind `crossrank bench`: loads a model directory, generates the workload,
//! and measures every candidate count N.
//!
//! A call is timed the way `Reranker::rerank` runs it: `encode_group` (tokenize), `PackedBatch::pack`,
//! one forward (`Scorer::score`), `engine::rank`; the arena is sized so that every call is one
//! forward. Three passes per N, each after `warmup` untimed calls:
//!
//! 1. end to end: strings in, ranked scores out (`e2e_ms`), with tokenize and pack timed inside;
//! 2. the forward alone on the already packed batches (`forward_ms`): upload, forward, download;
//! 3. the split: the same forwards with the backend wrapped in [`Timed`], which synchronises the
//!    device after the upload and after the last kernel, so that upload, forward and the
//!    download of the logits are timed apart. Those syncs cost a little, which is why pass 2 runs without them.
//!
//! Iterations rotate through `calls` distinct calls so that caches do not flatter repeats.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use super::report::{self, Gemm, ModelFacts, Report, Run, Split, Stats};
use super::workload::{Lengths, Workload};
use crate::backend::cpu::CpuBackend;
use crate::backend::Backend;
use crate::batch::{BatchShape, PackedBatch};
use crate::config::Family;
use crate::config::{Activation, ModelConfig};
use crate::engine::{self, Device, Options};
use crate::error::{Error, Result};
use crate::llm_template::LlmEncoder;
use crate::model::{Model, Scorer};
use crate::tokenize::{EncodedPair, PairTokenizer};
use crate::weights::{self, Embeddings, Head, HostTensor, LayerNorm, Linear, Weights};

/// What `crossrank bench` was asked to do.
#[derive(Debug, Clone)]
pub struct BenchArgs {
    pub model_dir: PathBuf,
    /// The name reports use: the shape's, or the directory's.
    pub model_name: String,
    pub device: Device,
    pub candidates: Vec<usize>,
    pub lengths: Lengths,
    /// Distinct calls per N.
    pub calls: usize,
    pub iterations: usize,
    pub warmup: usize,
    pub seed: u64,
    pub max_length: Option<usize>,
    /// Measure the dense GEMM rate for MFU.
    pub gemm: bool,
    /// CUDA graphs and the like: the report's system is named after them.
    pub cuda: crate::engine::CudaOptions,
    /// Also write the workload here, as JSON, for the peers (an image workload's images go
    /// into a folder beside it).
    pub export_workload: Option<PathBuf>,
    /// Image-text models: the image-feature cache's budget (`LoadOptions::image_cache_mib`).
    pub image_cache_mib: usize,
}

/// Waits until the device has finished everything queued: what a timer needs before it reads
/// the clock.
pub trait DeviceSync {
    fn sync(&self) -> Result<()>;
}

impl DeviceSync for CpuBackend {
    fn sync(&self) -> Result<()> {
        Ok(())
    }
}

#[cfg(feature = "cuda")]
impl<S: crate::backend::cuda::Storage> DeviceSync for crate::backend::cuda::CudaBackend<S> {
    fn sync(&self) -> Result<()> {
        self.stream().synchronize()?;
        Ok(())
    }
}

/// Times of the last timed forward, in seconds.
#[derive(Debug, Clone, Copy, Default)]
struct Marks {
    upload_end: Option<Instant>,
    upload: f64,
    forward: f64,
    download: f64,
}

/// A backend wrapper that, when switched on, synchronises and times the upload, the device work
/// (every kernel, the head's included) and the download of the logits. Switched off it only
/// delegates.
pub struct Timed<B> {
    pub inner: B,
    on: AtomicBool,
    marks: Mutex<Marks>,
}

impl<B: Backend + DeviceSync> Timed<B> {
    pub fn new(inner: B) -> Self {
        Timed {
            inner,
            on: AtomicBool::new(false),
            marks: Mutex::new(Marks::default()),
        }
    }

    fn set(&self, on: bool) {
        self.on.store(on, Ordering::SeqCst);
    }

    fn marks(&self) -> Result<Marks> {
        self.marks
            .lock()
            .map(|m| *m)
            .map_err(|_| Error::Internal("a timed forward panicked".into()))
    }

    fn update(&self, f: impl FnOnce(&mut Marks)) -> Result<()> {
        let mut m = self
            .marks
            .lock()
            .map_err(|_| Error::Internal("a timed forward panicked".into()))?;
        f(&mut m);
        Ok(())
    }
}

impl<B: Backend + DeviceSync> Backend for Timed<B> {
    type Buf = B::Buf;
    type Batch = B::Batch;
    type Logits = B::Logits;

    fn device_name(&self) -> String {
        self.inner.device_name()
    }
    fn upload(&self, t: &HostTensor) -> Result<Self::Buf> {
        self.inner.upload(t)
    }
    fn alloc(&self, len: usize) -> Result<Self::Buf> {
        self.inner.alloc(len)
    }
    fn alloc_batch(&self, max_tokens: usize, max_seqs: usize) -> Result<Self::Batch> {
        self.inner.alloc_batch(max_tokens, max_seqs)
    }
    fn alloc_logits(&self, max_seqs: usize) -> Result<Self::Logits> {
        self.inner.alloc_logits(max_seqs)
    }
    fn load_batch(&self, batch: &PackedBatch, dst: &mut Self::Batch) -> Result<()> {
        if !self.on.load(Ordering::SeqCst) {
            return self.inner.load_batch(batch, dst);
        }
        self.inner.sync()?;
        let t0 = Instant::now();
        self.inner.load_batch(batch, dst)?;
        self.inner.sync()?;
        let end = Instant::now();
        self.update(|m| {
            m.upload = (end - t0).as_secs_f64();
            m.upload_end = Some(end);
        })
    }
    fn embed(
        &self,
        batch: &Self::Batch,
        emb: &Embeddings<Self::Buf>,
        eps: f32,
        out: &mut Self::Buf,
    ) -> Result<()> {
        self.inner.embed(batch, emb, eps, out)
    }
    fn linear(
        &self,
        x: &Self::Buf,
        rows: usize,
        lin: &Linear<Self::Buf>,
        act: Option<Activation>,
        out: &mut Self::Buf,
    ) -> Result<()> {
        self.inner.linear(x, rows, lin, act, out)
    }
    fn attention(
        &self,
        qkv: &Self::Buf,
        batch: &Self::Batch,
        heads: usize,
        head_dim: usize,
        out: &mut Self::Buf,
    ) -> Result<()> {
        self.inner.attention(qkv, batch, heads, head_dim, out)
    }
    fn add_layernorm(
        &self,
        delta: &Self::Buf,
        rows: usize,
        ln: &LayerNorm<Self::Buf>,
        eps: f32,
        hidden: &mut Self::Buf,
    ) -> Result<()> {
        self.inner.add_layernorm(delta, rows, ln, eps, hidden)
    }
    fn gather_cls(
        &self,
        src: &Self::Buf,
        width: usize,
        batch: &Self::Batch,
        out: &mut Self::Buf,
    ) -> Result<()> {
        self.inner.gather_cls(src, width, batch, out)
    }
    fn head(
        &self,
        cls: &Self::Buf,
        batch: &Self::Batch,
        head: &Head<Self::Buf>,
        out: &mut Self::Logits,
    ) -> Result<()> {
        self.inner.head(cls, batch, head, out)
    }
    fn embed_tokens(
        &self,
        batch: &Self::Batch,
        table: &Self::Buf,
        width: usize,
        out: &mut Self::Buf,
    ) -> Result<()> {
        self.inner.embed_tokens(batch, table, width, out)
    }
    fn layernorm(
        &self,
        x: &Self::Buf,
        rows: usize,
        ln: &LayerNorm<Self::Buf>,
        eps: f32,
        out: &mut Self::Buf,
    ) -> Result<()> {
        self.inner.layernorm(x, rows, ln, eps, out)
    }
    fn residual_layernorm(
        &self,
        delta: &Self::Buf,
        rows: usize,
        ln: &LayerNorm<Self::Buf>,
        eps: f32,
        hidden: &mut Self::Buf,
        out: &mut Self::Buf,
    ) -> Result<()> {
        self.inner
            .residual_layernorm(delta, rows, ln, eps, hidden, out)
    }
    fn rope(
        &self,
        qkv: &mut Self::Buf,
        batch: &Self::Batch,
        heads: usize,
        head_dim: usize,
        theta: f64,
    ) -> Result<()> {
        self.inner.rope(qkv, batch, heads, head_dim, theta)
    }
    fn attention_window(
        &self,
        qkv: &Self::Buf,
        batch: &Self::Batch,
        heads: usize,
        head_dim: usize,
        half_window: usize,
        out: &mut Self::Buf,
    ) -> Result<()> {
        self.inner
            .attention_window(qkv, batch, heads, head_dim, half_window, out)
    }
    fn geglu(
        &self,
        x: &Self::Buf,
        rows: usize,
        inter: usize,
        act: Activation,
        out: &mut Self::Buf,
    ) -> Result<()> {
        self.inner.geglu(x, rows, inter, act, out)
    }
    fn mean_pool(
        &self,
        src: &Self::Buf,
        width: usize,
        batch: &Self::Batch,
        out: &mut Self::Buf,
    ) -> Result<()> {
        self.inner.mean_pool(src, width, batch, out)
    }
    fn classify(
        &self,
        x: &Self::Buf,
        n: usize,
        lin: &Linear<Self::Buf>,
        out: &mut Self::Logits,
    ) -> Result<()> {
        self.inner.classify(x, n, lin, out)
    }
    fn rmsnorm(
        &self,
        delta: Option<&Self::Buf>,
        hidden: &mut Self::Buf,
        rows: usize,
        weight: &Self::Buf,
        eps: f32,
        out: &mut Self::Buf,
    ) -> Result<()> {
        self.inner.rmsnorm(delta, hidden, rows, weight, eps, out)
    }
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
        self.inner
            .qk_norm_rope(qkv, batch, heads, kv_heads, head_dim, norms, eps, theta)
    }
    fn attention_causal(
        &self,
        qkv: &Self::Buf,
        batch: &Self::Batch,
        heads: usize,
        kv_heads: usize,
        head_dim: usize,
        out: &mut Self::Buf,
    ) -> Result<()> {
        self.inner
            .attention_causal(qkv, batch, heads, kv_heads, head_dim, out)
    }
    fn gather_last(
        &self,
        src: &Self::Buf,
        width: usize,
        batch: &Self::Batch,
        out: &mut Self::Buf,
    ) -> Result<()> {
        self.inner.gather_last(src, width, batch, out)
    }
    fn read_logits(&self, logits: &Self::Logits, n: usize) -> Result<Vec<f32>> {
        if !self.on.load(Ordering::SeqCst) {
            return self.inner.read_logits(logits, n);
        }
        let t0 = Instant::now();
        let out = self.inner.read_logits(logits, n)?;
        let download = t0.elapsed().as_secs_f64();
        self.update(|m| m.download = download)?;
        Ok(out)
    }
    fn notes(&self) -> Vec<String> {
        self.inner.notes()
    }
    fn run(&self, shape: Option<BatchShape>, body: &mut dyn FnMut() -> Result<()>) -> Result<()> {
        if !self.on.load(Ordering::SeqCst) {
            return self.inner.run(shape, body);
        }
        self.inner.run(shape, body)?;
        self.inner.sync()?;
        let end = Instant::now();
        self.update(|m| m.forward = m.upload_end.map_or(0.0, |u| (end - u).as_secs_f64()))
    }
}

/// A text's token count without special tokens: what workloads are measured in.
pub fn token_count(tokenizer: &PairTokenizer, text: &str) -> Result<usize> {
    tokenizer
        .inner()
        .encode(text, false)
        .map(|e| e.len())
        .map_err(|e| Error::input(format!("tokenizer failed on a text: {e}")))
}

/// How a call's (query, passages) become pairs: the tokenizer's pair encoding (encoders), or a
/// decoder LLM's prompt template around each pair, with its default instruction.
#[derive(Clone, Copy)]
pub enum CallEncoder<'a> {
    Pairs(&'a PairTokenizer),
    Llm(&'a PairTokenizer, &'a LlmEncoder),
}

impl CallEncoder<'_> {
    pub fn encode(
        &self,
        query: &str,
        passages: &[String],
        max_length: usize,
    ) -> Result<Vec<EncodedPair>> {
        match self {
            CallEncoder::Pairs(t) => t.encode_group(query, passages, max_length),
            CallEncoder::Llm(t, llm) => {
                llm.encode_group(t.inner(), None, query, passages, max_length)
            }
        }
    }
}

/// Encodes every call of a workload: `[set][call][pair]`.
pub fn encode_workload(
    encoder: CallEncoder<'_>,
    workload: &Workload,
    max_length: usize,
) -> Result<Vec<Vec<Vec<EncodedPair>>>> {
    workload
        .sets
        .iter()
        .map(|set| {
            set.calls
                .iter()
                .map(|c| encoder.encode(&c.query, &c.passages, max_length))
                .collect()
        })
        .collect()
}

/// Runs the whole bench and returns its report.
pub fn run(args: &BenchArgs) -> Result<Report> {
    if args.candidates.is_empty() || args.candidates.contains(&0) {
        return Err(Error::input(
            "--candidates needs one or more counts, each at least 1",
        ));
    }
    if args.calls == 0 || args.iterations == 0 {
        return Err(Error::input("--calls and --iters must be at least 1"));
    }
    let (cfg, tokenizer, info, ckpt) = engine::inspect(&args.model_dir)?;
    if cfg.family == Family::Blip {
        drop(ckpt);
        return super::run_images::run(args, &cfg, &tokenizer, &info);
    }
    let max_length = tokenizer.resolve_max_length(args.max_length)?;
    let count = |text: &str| token_count(&tokenizer, text);
    let workload = Workload::generate(
        args.seed,
        args.lengths,
        &args.candidates,
        args.calls,
        &count,
    )?;
    if let Some(path) = &args.export_workload {
        let text = serde_json::to_string(&workload).map_err(|e| Error::Internal(e.to_string()))?;
        std::fs::write(path, text).map_err(|e| Error::io(path, e))?;
    }
    let llm = match cfg.family {
        Family::Qwen => {
            let template =
                crate::llm_template::default_for(&cfg.architecture).ok_or_else(|| {
                    Error::input(format!(
                        "bench: no reranking template for {}",
                        cfg.architecture
                    ))
                })?;
            Some(LlmEncoder::new(template, tokenizer.inner())?)
        }
        _ => None,
    };
    let encoder = match &llm {
        Some(l) => CallEncoder::Llm(&tokenizer, l),
        None => CallEncoder::Pairs(&tokenizer),
    };
    // Encode every call once: the arena must hold the largest call in one forward.
    let encoded = encode_workload(encoder, &workload, max_length)?;
    let max_tokens = encoded
        .iter()
        .flatten()
        .map(|c| c.iter().map(|p| p.ids.len()).sum::<usize>())
        .max()
        .unwrap_or(1)
        .max(tokenizer.max_length_limit());
    let host = match cfg.family {
        Family::ModernBert => Host::ModernBert(crate::models::modernbert::load(&ckpt, &cfg)?),
        Family::Qwen => match &llm {
            Some(l) => Host::Qwen(crate::models::qwen::load(&ckpt, &cfg, l.yes_id, l.no_id)?),
            None => return Err(Error::Internal("a Qwen model without its template".into())),
        },
        _ => Host::Bert(weights::load(&ckpt, &cfg)?),
    };
    drop(ckpt);

    let ctx = Ctx {
        args,
        cfg: &cfg,
        encoder,
        max_length,
        workload: &workload,
        encoded: &encoded,
    };
    let (device, dtype, gemm, runs, mut notes) = match args.device {
        Device::Cpu => ctx.run_on(CpuBackend, host, max_tokens, "f32")?,
        Device::Cuda(ordinal) => cuda(&ctx, ordinal, host, max_tokens)?,
    };
    if llm.is_some() {
        notes.push(shared_prefix_note(&workload, &encoded, &cfg));
        notes.push(
            "FLOPs are the unshared forward's (every pair's whole prompt), the work a peer does; \
             the shared-prefix forward runs fewer tokens (above)"
                .into(),
        );
    }
    let measured = Measured {
        device,
        dtype,
        gemm,
        lengths: args.lengths.to_string(),
        runs,
    };
    Ok(report_of(args, &info, &tokenizer, measured, notes))
}

/// What a bench measured on one device, before it becomes a report.
pub(crate) struct Measured {
    pub device: String,
    pub dtype: &'static str,
    pub gemm: Option<Gemm>,
    /// The report's `lengths`: the workload's name.
    pub lengths: String,
    pub runs: Vec<Run>,
}

/// The report of a bench run: the figures, the model's facts and every note.
pub(crate) fn report_of(
    args: &BenchArgs,
    info: &engine::ModelInfo,
    tokenizer: &PairTokenizer,
    m: Measured,
    mut notes: Vec<String>,
) -> Report {
    if tokenizer.inner().get_vocab_size(true) < 5000 {
        notes.push("the tokenizer is tiny: tokenize times are not representative".into());
    }
    let mut report = Report {
        schema: report::SCHEMA,
        system: args.cuda.system_name(),
        version: env!("CARGO_PKG_VERSION").into(),
        commit: commit(),
        date: today(),
        device: m.device,
        dtype: m.dtype.into(),
        gemm: m.gemm,
        model: ModelFacts {
            name: args.model_name.clone(),
            architecture: info.architecture.clone(),
            layers: info.layers,
            hidden: info.hidden_size,
            heads: info.heads,
            intermediate: info.intermediate_size,
            vocab: info.vocab_size,
            parameters: info.parameters,
        },
        lengths: m.lengths,
        seed: args.seed,
        runs: m.runs,
        notes,
    };
    report.finish_runs();
    report
}

/// The decoder LLMs run in bf16 on CUDA (engine.rs says why), the encoders in fp16.
#[cfg(feature = "cuda")]
fn cuda(ctx: &Ctx, ordinal: usize, host: Host, max_tokens: usize) -> Result<Out> {
    if matches!(host, Host::Qwen(_)) {
        return cuda_in::<half::bf16>(ctx, ordinal, host, max_tokens, "bf16");
    }
    cuda_in::<half::f16>(ctx, ordinal, host, max_tokens, "f16")
}

#[cfg(feature = "cuda")]
fn cuda_in<S: crate::backend::cuda::Storage>(
    ctx: &Ctx,
    ordinal: usize,
    host: Host,
    max_tokens: usize,
    dtype: &'static str,
) -> Result<Out> {
    let backend = crate::backend::cuda::CudaBackend::<S>::open(ordinal)?;
    if backend.is_software() {
        return Err(Error::input(format!(
            "{}: benchmarks need a real GPU; the software GPU is a CPU emulation for tests and has no speed to measure",
            backend.device_name()
        )));
    }
    let tuning = if ctx.args.cuda.tune_gemm {
        Some(backend.tune_gemm(ctx.cfg, max_tokens)?)
    } else {
        None
    };
    let mut out = ctx.run_on(backend, host, max_tokens, dtype)?;
    if let Some(t) = tuning {
        out.4.push(format!("--tune-gemm: {t}"));
    }
    if ctx.args.cuda.cuda_graphs {
        out.4.push(
            "--cuda-graphs: batches padded to their BatchShape, forwards replayed from CUDA graphs"
                .into(),
        );
    }
    Ok(out)
}

#[cfg(not(feature = "cuda"))]
fn cuda(_: &Ctx, _: usize, _: Host, _: usize) -> Result<Out> {
    Err(Error::CudaNotCompiled)
}

type Out = (String, &'static str, Option<Gemm>, Vec<Run>, Vec<String>);

/// The host weights of the model under test, by family: each family has its own forward.
enum Host {
    Bert(Weights<HostTensor>),
    ModernBert(crate::models::modernbert::Weights<HostTensor>),
    Qwen(crate::models::qwen::Weights<HostTensor>),
}

struct Ctx<'a> {
    args: &'a BenchArgs,
    cfg: &'a ModelConfig,
    encoder: CallEncoder<'a>,
    max_length: usize,
    workload: &'a Workload,
    encoded: &'a [Vec<Vec<EncodedPair>>],
}

fn ms(secs: f64) -> f64 {
    secs * 1e3
}

fn median(xs: &[f64]) -> Option<f64> {
    (!xs.is_empty()).then(|| Stats::of(xs).p50)
}

impl Ctx<'_> {
    fn run_on<B: Backend + DeviceSync>(
        &self,
        backend: B,
        host: Host,
        max_tokens: usize,
        dtype: &'static str,
    ) -> Result<Out> {
        let mut notes = Vec::new();
        let gemm = if self.args.gemm {
            match measure_gemm(&backend, dtype) {
                Ok(g) => Some(g),
                Err(e) => {
                    notes.push(format!("GEMM rate not measured: {e}"));
                    None
                }
            }
        } else {
            None
        };
        let graphs = self.args.cuda.cuda_graphs;
        let (cfg, timed) = (self.cfg.clone(), Timed::new(backend));
        let (device, runs) = match host {
            Host::Bert(w) => {
                let model = Model::new(timed, cfg, w, max_tokens)?.with_graphs(graphs);
                let runs = self.measure_all(&model, &model.backend, graphs, &mut notes)?;
                (model.device_name(), runs)
            }
            Host::ModernBert(w) => {
                let model = crate::models::modernbert::Model::new(timed, cfg, w, max_tokens)?
                    .with_graphs(graphs);
                let runs = self.measure_all(&model, &model.backend, graphs, &mut notes)?;
                (model.device_name(), runs)
            }
            Host::Qwen(w) => {
                let model =
                    crate::models::qwen::Model::new(timed, cfg, w, max_tokens)?.with_graphs(graphs);
                let runs = self.measure_all(&model, &model.backend, graphs, &mut notes)?;
                (model.device_name(), runs)
            }
        };
        if dtype == "f32" {
            notes.push(
                "CPU: the f32 reference backend; MFU is against the measured f32 GEMM rate of this CPU"
                    .into(),
            );
        }
        notes.push(
            "split: upload, forward (every kernel, the head included) and download (the copy of the \
             logits) timed with device syncs between them, in a separate pass"
                .into(),
        );
        Ok((device, dtype, gemm, runs, notes))
    }

    /// Every candidate count of the workload on `model`, whose backend is `timed`; the backend's
    /// notes go to `notes`.
    fn measure_all<B: Backend + DeviceSync>(
        &self,
        model: &dyn Scorer,
        timed: &Timed<B>,
        graphs: bool,
        notes: &mut Vec<String>,
    ) -> Result<Vec<Run>> {
        let mut runs = Vec::with_capacity(self.workload.sets.len());
        let mut non_finite = 0;
        for (set, encoded) in self.workload.sets.iter().zip(self.encoded) {
            let (run, bad) = self.measure_n(model, timed, graphs, set.n, &set.calls, encoded)?;
            non_finite += bad;
            runs.push(run);
        }
        if non_finite > 0 {
            notes.push(format!("{non_finite} logits were not finite"));
        }
        notes.extend(timed.notes());
        Ok(runs)
    }

    #[allow(clippy::too_many_arguments)]
    fn measure_n<B: Backend + DeviceSync>(
        &self,
        model: &dyn Scorer,
        timed: &Timed<B>,
        graphs: bool,
        n: usize,
        calls: &[super::workload::Call],
        encoded: &[Vec<EncodedPair>],
    ) -> Result<(Run, usize)> {
        let a = self.args;
        let opts = Options {
            raw_scores: true,
            ..Options::default()
        };
        let sync = || timed.inner.sync();
        let k = calls.len();
        let mut non_finite = 0;

        // 1. End to end. With graphs, every call's shape is seen twice before the clock runs
        // (eager the first time, recorded the second), so no recording lands in the figures.
        let warmup = if graphs {
            a.warmup.max(2 * k)
        } else {
            a.warmup
        };
        let (mut e2e, mut tok, mut pack) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..warmup + a.iterations {
            let c = &calls[i % k];
            let (ranked, [t0, t1, t2, t3]) =
                e2e_call(model, self.encoder, self.cfg, self.max_length, c, &opts)?;
            if i >= warmup {
                e2e.push(ms((t3 - t0).as_secs_f64()));
                tok.push(ms((t1 - t0).as_secs_f64()));
                pack.push(ms((t2 - t1).as_secs_f64()));
                non_finite += ranked.iter().filter(|x| !x.score.is_finite()).count();
            }
            std::hint::black_box(ranked);
        }

        // 2. The forward alone.
        let batches: Vec<PackedBatch> = encoded
            .iter()
            .map(|pairs| PackedBatch::pack(pairs, self.cfg))
            .collect();
        let mut fwd = Vec::new();
        for i in 0..a.warmup + a.iterations {
            sync()?;
            let t0 = Instant::now();
            std::hint::black_box(model.score(&batches[i % k])?);
            if i >= a.warmup {
                fwd.push(ms(t0.elapsed().as_secs_f64()));
            }
        }

        // 3. The split, with syncs.
        let (mut up, mut fw, mut down) = (Vec::new(), Vec::new(), Vec::new());
        timed.set(true);
        let split = (|| -> Result<()> {
            for i in 0..a.iterations {
                model.score(&batches[i % k])?;
                let m = timed.marks()?;
                up.push(ms(m.upload));
                fw.push(ms(m.forward));
                down.push(ms(m.download));
            }
            Ok(())
        })();
        timed.set(false);
        split?;

        let lens: Vec<Vec<usize>> = encoded
            .iter()
            .map(|c| c.iter().map(|p| p.ids.len()).collect())
            .collect();
        let split = Split {
            tokenize_ms: median(&tok),
            pack_ms: median(&pack),
            upload_ms: median(&up),
            forward_ms: median(&fw),
            download_ms: median(&down),
            preprocess_ms: None,
        };
        let run = Run {
            truncated_pairs: encoded.iter().flatten().filter(|p| p.truncated).count(),
            ..Run::measured(n, a.iterations, &lens, self.cfg, (&e2e, &fwd), split)
        };
        Ok((run, non_finite))
    }
}

/// One call as the bench times it, as `Reranker::rerank` runs it: tokenize, pack, one forward,
/// rank. Returns the results and the instants before, between and after the steps.
pub fn e2e_call(
    scorer: &dyn Scorer,
    encoder: CallEncoder<'_>,
    cfg: &ModelConfig,
    max_length: usize,
    call: &super::workload::Call,
    opts: &Options,
) -> Result<(Vec<engine::Ranked>, [Instant; 4])> {
    let t0 = Instant::now();
    let pairs = encoder.encode(&call.query, &call.passages, max_length)?;
    let t1 = Instant::now();
    let batch = PackedBatch::pack(&pairs, cfg);
    let t2 = Instant::now();
    let logits = scorer.score(&batch)?;
    let ranked = engine::rank(&pairs, &logits, opts);
    let t3 = Instant::now();
    Ok((ranked, [t0, t1, t2, t3]))
}

/// The tokens the shared-prefix forward keeps out of the layers on this workload, per N: the
/// common id prefix of each call's prompts (`PackedBatch::common_prefix`) run once instead of
/// once per pair.
fn shared_prefix_note(
    workload: &Workload,
    encoded: &[Vec<Vec<EncodedPair>>],
    cfg: &ModelConfig,
) -> String {
    let parts: Vec<String> = workload
        .sets
        .iter()
        .zip(encoded)
        .map(|(set, calls)| {
            let (mut total, mut saved, mut prefix) = (0usize, 0usize, 0usize);
            for pairs in calls {
                let b = PackedBatch::pack(pairs, cfg);
                let p = b.common_prefix();
                total += b.tokens();
                saved += p * pairs.len().saturating_sub(1);
                prefix += p;
            }
            let k = calls.len().max(1);
            format!(
                "N={}: {:.1}% of {:.0} tokens per call (prefix {:.0} tokens)",
                set.n,
                100.0 * saved as f64 / total.max(1) as f64,
                total as f64 / k as f64,
                prefix as f64 / k as f64
            )
        })
        .collect();
    format!(
        "shared prefix (run once per call, not per pair): {}",
        parts.join("; ")
    )
}

/// Measures the backend's dense GEMM rate through its own `linear` op (bias, no activation):
/// 8192³ in fp16 on CUDA, 1024³ in f32 on the CPU. Warm up twice, then time `reps` products
/// between device syncs.
pub fn measure_gemm<B: Backend + DeviceSync>(b: &B, dtype: &str) -> Result<Gemm> {
    let (size, reps) = if dtype != "f32" {
        (8192, 20)
    } else {
        (1024, 3)
    };
    let mut rng = super::Rng::new(1);
    let mut tensor = |name: &str, shape: Vec<usize>| {
        let n: usize = shape.iter().product();
        HostTensor {
            name: name.into(),
            data: (0..n).map(|_| (rng.unit() as f32 - 0.5) * 0.1).collect(),
            shape,
        }
    };
    let x = b.upload(&tensor("gemm.x", vec![size, size]))?;
    let lin = Linear {
        w: b.upload(&tensor("gemm.weight", vec![size, size]))?,
        b: b.upload(&tensor("gemm.bias", vec![size]))?,
        out_dim: size,
        in_dim: size,
    };
    let mut out = b.alloc(size * size)?;
    for _ in 0..2 {
        b.linear(&x, size, &lin, None, &mut out)?;
    }
    b.sync()?;
    let t0 = Instant::now();
    for _ in 0..reps {
        b.linear(&x, size, &lin, None, &mut out)?;
    }
    b.sync()?;
    let secs = t0.elapsed().as_secs_f64();
    let flops = 2.0 * (size as f64).powi(3) * reps as f64;
    Ok(Gemm {
        dtype: dtype.into(),
        m: size,
        n: size,
        k: size,
        tflops: flops / secs / 1e12,
        note: format!(
            "the backend's own linear op ({}), {reps} products timed after 2 warm-ups",
            if dtype == "f16" {
                "fp16 in and out, fp32 accumulate"
            } else {
                "f32"
            }
        ),
    })
}

/// The commit being measured: $CROSSRANK_COMMIT, else `git rev-parse`, else none.
fn commit() -> Option<String> {
    if let Ok(c) = std::env::var("CROSSRANK_COMMIT") {
        return Some(c);
    }
    let out = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
}

/// Today's UTC date, YYYY-MM-DD.
pub fn today() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    civil_date(secs / 86_400)
}

/// Days since 1970-01-01 → YYYY-MM-DD (the proleptic Gregorian calendar).
pub(crate) fn civil_date(days: u64) -> String {
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// The name a report gives a model directory: its `crossrank_shape` if it is a shape, else the
/// directory's own name.
pub fn model_name(dir: &Path) -> String {
    let from_config = std::fs::read_to_string(dir.join("config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v.get("crossrank_shape")?.as_str().map(str::to_string));
    from_config.unwrap_or_else(|| {
        dir.file_name().map_or_else(
            || dir.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::shapes::{ensure_shape, Shape};
    use crate::engine::{LoadOptions, Reranker};

    #[test]
    fn dates() {
        assert_eq!(civil_date(0), "1970-01-01");
        assert_eq!(civil_date(19_723), "2024-01-01");
        assert_eq!(civil_date(20_148), "2025-03-01");
    }

    #[test]
    fn bench_on_a_tiny_shape_reports_every_figure_and_scores_like_rerank() {
        let dir = std::env::temp_dir().join(format!("crossrank-bench-{}", std::process::id()));
        let tok =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/models/bert-f32/tokenizer.json");
        ensure_shape(Shape::TinyBert, &dir, Some(&tok), 9).unwrap();
        let export = dir.join("workload.json");
        let args = BenchArgs {
            model_dir: dir.clone(),
            model_name: model_name(&dir),
            device: Device::Cpu,
            candidates: vec![3, 5],
            lengths: Lengths::Marco,
            calls: 2,
            iterations: 3,
            warmup: 1,
            seed: 4,
            max_length: None,
            gemm: true,
            cuda: Default::default(),
            export_workload: Some(export.clone()),
            image_cache_mib: 0,
        };
        let r = run(&args).unwrap();
        assert_eq!(r.model.name, "tiny-bert");
        assert_eq!(r.runs.iter().map(|x| x.n).collect::<Vec<_>>(), vec![3, 5]);
        let g = r.gemm.as_ref().unwrap();
        assert!(g.tflops > 0.0 && g.dtype == "f32");
        for x in &r.runs {
            assert_eq!((x.e2e_ms.samples, x.forward_ms.samples, x.calls), (3, 3, 2));
            assert!(x.e2e_ms.p50 >= x.split.tokenize_ms.unwrap());
            assert!(x.tflops > 0.0 && x.mfu.unwrap() > 0.0 && x.pairs_per_s > 0.0);
            assert!(x.split.upload_ms.is_some() && x.split.download_ms.is_some());
            assert!(
                x.tokens_per_call > (x.n * 40) as f64,
                "marco passages are ≥ 40 tokens"
            );
        }
        assert!(r.notes.iter().any(|n| n.contains("tiny")), "{:?}", r.notes);

        // The exported workload is what was measured: the bench's pipeline gives rerank's scores.
        let w: Workload = serde_json::from_str(&std::fs::read_to_string(&export).unwrap()).unwrap();
        assert_eq!(w.sets[1].calls[0].passages.len(), 5);
        let reranker = Reranker::load(&dir, Device::Cpu, &LoadOptions::default()).unwrap();
        let call = &w.sets[1].calls[0];
        let expected = reranker
            .rerank(&call.query, &call.passages, &Options::default())
            .unwrap();
        let (cfg, tokenizer, _, ckpt) = engine::inspect(&dir).unwrap();
        let host = weights::load(&ckpt, &cfg).unwrap();
        let model = Model::new(Timed::new(CpuBackend), cfg.clone(), host, 4096).unwrap();
        let max = tokenizer.default_max_length();
        let (ranked, _) = e2e_call(
            &model,
            CallEncoder::Pairs(&tokenizer),
            &cfg,
            max,
            call,
            &Options::default(),
        )
        .unwrap();
        assert_eq!(ranked, expected);

        let mut bad = args.clone();
        bad.candidates = vec![];
        assert!(run(&bad).unwrap_err().to_string().contains("--candidates"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A ModernBERT directory runs through the family's own forward: every figure reported, the
    /// FLOPs by ModernBERT's formula, and the bench's pipeline gives rerank's scores.
    #[test]
    fn bench_runs_a_modernbert_model_through_its_own_forward() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/models/modernbert-cls");
        let export =
            std::env::temp_dir().join(format!("crossrank-mb-wl-{}.json", std::process::id()));
        let args = BenchArgs {
            model_dir: dir.clone(),
            model_name: model_name(&dir),
            device: Device::Cpu,
            candidates: vec![4],
            lengths: Lengths::Marco,
            calls: 2,
            iterations: 2,
            warmup: 1,
            seed: 5,
            max_length: None,
            gemm: false,
            cuda: Default::default(),
            export_workload: Some(export.clone()),
            image_cache_mib: 0,
        };
        let r = run(&args).unwrap();
        assert_eq!(r.model.architecture, "ModernBertForSequenceClassification");
        let x = &r.runs[0];
        assert!(x.tflops > 0.0 && x.pairs_per_s > 0.0 && x.split.upload_ms.is_some());
        let w: Workload = serde_json::from_str(&std::fs::read_to_string(&export).unwrap()).unwrap();
        let (cfg, tokenizer, _, _) = engine::inspect(&dir).unwrap();
        let max = tokenizer.default_max_length();
        let lens: Vec<Vec<usize>> = w.sets[0]
            .calls
            .iter()
            .map(|c| {
                let pairs = tokenizer.encode_group(&c.query, &c.passages, max).unwrap();
                pairs.iter().map(|p| p.ids.len()).collect()
            })
            .collect();
        let want: f64 = lens
            .iter()
            .map(|l| report::model_forward_flops(l, &cfg))
            .sum::<f64>()
            / lens.len() as f64;
        assert_eq!(x.flops_per_call, want);
        assert_ne!(
            want,
            lens.iter()
                .map(|l| report::forward_flops(
                    l,
                    cfg.num_layers,
                    cfg.hidden_size,
                    cfg.intermediate_size
                ))
                .sum::<f64>()
                / lens.len() as f64
        );
        let reranker = Reranker::load(&dir, Device::Cpu, &LoadOptions::default()).unwrap();
        let call = &w.sets[0].calls[0];
        let expected = reranker
            .rerank(&call.query, &call.passages, &Options::default())
            .unwrap();
        let (_, _, _, ckpt) = engine::inspect(&dir).unwrap();
        let host = crate::models::modernbert::load(&ckpt, &cfg).unwrap();
        let model =
            crate::models::modernbert::Model::new(Timed::new(CpuBackend), cfg.clone(), host, 4096)
                .unwrap();
        let (ranked, _) = e2e_call(
            &model,
            CallEncoder::Pairs(&tokenizer),
            &cfg,
            max,
            call,
            &Options::default(),
        )
        .unwrap();
        assert_eq!(ranked, expected);
        let _ = std::fs::remove_file(&export);
    }
}
