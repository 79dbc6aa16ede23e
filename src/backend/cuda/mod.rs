//! The CUDA backend (feature `cuda`): 16-bit storage (fp16 for the encoders, bf16 for the decoder
//! LLMs: `Storage`), fp32 accumulation, our own kernels
//! (kernels/*.cu, compiled by build.rs into one embedded fatbin) and cuBLASLt GEMMs, all on one
//! stream. Weights are uploaded once; the activation arena (model.rs) is allocated once; a
//! forward uploads the packed batch in one copy from pinned memory, allocates nothing, and
//! brings back only the N logits.

mod gemm;
pub mod kernels;
mod storage;
mod tune;

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/kernels.rs"));
}

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::driver::{
    result as drv, sys as drv_sys, CudaContext, CudaGraph, CudaSlice, CudaStream, PinnedHostSlice,
};
use cudarc::nvrtc::Ptx;
use half::f16;

use super::Backend;
use crate::batch::{BatchShape, PackedBatch};
use crate::config::Activation;
use crate::error::{Error, Result};
use crate::weights::{Embeddings, Head, HostTensor, LayerNorm, Linear};

pub use embedded::{ARCHITECTURES, PTXAS_REPORT};
use kernels::{BatchViews, Kernels, Mask};
pub use storage::{kernel_name, Storage};
pub use tune::GemmTuning;

/// What the software GPU (softgpu/) puts in its device name.
pub const SOFTWARE_GPU: &str = "software GPU";

/// Whether CUDA device 0 is the software GPU: tests choose their shapes by it.
pub fn on_software_gpu() -> bool {
    devices().first().is_some_and(|d| d.contains(SOFTWARE_GPU))
}

/// The architectures whose code is embedded in this build: SASS, then PTX.
pub fn architectures() -> Vec<String> {
    ARCHITECTURES.iter().map(|a| a.to_string()).collect()
}

/// Whether the CUDA driver library can be loaded. cudarc panics on its first driver call when
/// it cannot, so this is asked before anything else.
pub fn driver_present() -> bool {
    // SAFETY: only tries to open libcuda under its usual names; no symbol is called.
    unsafe { drv_sys::is_culib_present() }
}

/// Why CUDA cannot be used here, or None: for tests and tools that skip without a GPU.
pub fn unavailable_reason() -> Option<String> {
    if !driver_present() {
        return Some("no CUDA driver: libcuda.so.1 not found".into());
    }
    match CudaContext::device_count() {
        Ok(0) => Some("no CUDA device visible".into()),
        Ok(_) => None,
        Err(e) => Some(format!("the CUDA driver did not initialise: {e}")),
    }
}

/// The CUDA devices visible to this process, one line each (empty without a driver).
pub fn devices() -> Vec<String> {
    if !driver_present() {
        return Vec::new();
    }
    let Ok(n) = CudaContext::device_count() else {
        return Vec::new();
    };
    (0..n)
        .map(|i| describe(i).unwrap_or_else(|e| format!("cuda:{i} (unreadable: {e})")))
        .collect()
}

fn describe(ordinal: i32) -> Result<String> {
    let dev = drv::device::get(ordinal)?;
    let name = drv::device::get_name(dev)?;
    // SAFETY: `dev` is a valid device handle from `device::get`.
    let (major, minor, mem) = unsafe {
        (
            drv::device::get_attribute(
                dev,
                drv_sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR,
            )?,
            drv::device::get_attribute(
                dev,
                drv_sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR,
            )?,
            drv::device::total_mem(dev)?,
        )
    };
    Ok(format!(
        "cuda:{ordinal} {name} (sm_{major}{minor}, {:.1} GiB)",
        mem as f64 / (1u64 << 30) as f64
    ))
}

/// The CUDA backend storing weights and activations in `S` (fp16 by default; bf16 for the
/// decoder LLMs).
pub struct CudaBackend<S: Storage = f16> {
    /// First, so that it is dropped first: the graphs launch the kernels and the cuBLASLt
    /// workspace of the fields below.
    graphs: Mutex<Graphs>,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    kernels: Kernels<S>,
    gemm: gemm::Gemm<S>,
    name: String,
}

/// The most shapes that get a CUDA graph; batches of further shapes run without one.
pub const MAX_GRAPHS: usize = 256;

/// The forward's CUDA graphs, one per batch shape (see `Backend::run`). A shape is recorded the
/// second time it comes: one seen once is not worth a capture, and the first, eager run settles
/// everything done lazily (cuBLASLt's algorithm choice) before anything is captured.
#[derive(Default)]
struct Graphs {
    shapes: HashMap<BatchShape, Option<CudaGraph>>,
    /// Why graphs were switched off (a capture failed); every forward then runs eagerly.
    off: Option<String>,
}

// SAFETY: a CudaGraph is a pair of driver handles, which the driver lets any thread use as long
// as no two threads use one at once: every use is under the backend's Mutex.
unsafe impl Send for Graphs {}

/// The packed batch on the device: ids | types | positions | cu_seqlens | shared prefix in one
/// buffer, filled by one copy from pinned memory. The layout depends only on the token and sequence counts, so a
/// graph recorded for a batch shape reads every batch of that shape at the same addresses.
pub struct CudaBatch {
    dev: CudaSlice<u32>,
    staging: PinnedHostSlice<u32>,
    max_tokens: usize,
    max_seqs: usize,
    tokens: usize,
    seqs: usize,
    max_seqlen: usize,
    /// Largest id / position / type in the batch, checked against the tables before `embed`.
    max_id: u32,
    max_pos: u32,
    max_type: u32,
}

impl CudaBatch {
    fn views(&self) -> BatchViews<'_> {
        let t = self.tokens;
        BatchViews {
            ids: self.dev.slice(0..t),
            types: self.dev.slice(t..2 * t),
            positions: self.dev.slice(2 * t..3 * t),
            cu_seqlens: self.dev.slice(3 * t..3 * t + self.seqs + 1),
            prefix: self.dev.slice(3 * t + self.seqs + 1..3 * t + self.seqs + 2),
            tokens: t,
            seqs: self.seqs,
            max_seqlen: self.max_seqlen,
        }
    }
}

/// What the kernels assume of a packed batch before it goes up: it fits its buffers, every
/// array has one entry per token, and cu_seqlens runs from 0 up to at most the token count
/// without decreasing. Rows past the last sequence are padding (a padded batch's, see
/// `BatchShape`); a sequence may be empty (gather_cls gives it a zero row). A first offset
/// other than 0, a step down or an end past the rows would send a kernel past the batch.
fn check_batch(batch: &PackedBatch, max_tokens: usize, max_seqs: usize) -> Result<()> {
    let (t, n) = (batch.tokens(), batch.len());
    if t > max_tokens || n > max_seqs {
        return Err(Error::Internal(format!(
            "batch of {t} tokens in {n} sequences exceeds its buffers ({max_tokens} tokens, {max_seqs} sequences)"
        )));
    }
    if batch.token_type_ids.len() != t
        || batch.position_ids.len() != t
        || batch.cu_seqlens.len() != n + 1
        || batch.cu_seqlens.first().copied() != Some(0)
        || batch
            .cu_seqlens
            .last()
            .is_none_or(|&e| e < 0 || e as usize > t)
        || batch.cu_seqlens.windows(2).any(|w| w[1] < w[0])
        || (batch.shared_prefix > 0 && (n < 1 || batch.range(0).len() != batch.shared_prefix))
    {
        return Err(Error::Internal(
            "packed batch is inconsistent (ids, types, positions, cu_seqlens and the shared prefix disagree)".into(),
        ));
    }
    Ok(())
}

impl CudaBackend<f16> {
    /// The fp16 backend on device `ordinal` (the encoder families'): see `open`.
    pub fn new(ordinal: usize) -> Result<Self> {
        Self::open(ordinal)
    }
}

impl<S: Storage> CudaBackend<S> {
    /// Opens device `ordinal`, loads the embedded kernels and sets up cuBLASLt, storing in `S`.
    /// Every way this can fail is an error naming what is missing, never a panic.
    pub fn open(ordinal: usize) -> Result<Self> {
        if !driver_present() {
            return Err(Error::Cuda(
                "no CUDA driver found (libcuda.so.1 could not be loaded); use --device cpu".into(),
            ));
        }
        let count = CudaContext::device_count().map_err(|e| {
            Error::Cuda(format!(
                "the CUDA driver did not initialise ({e}); use --device cpu"
            ))
        })?;
        if ordinal >= count.max(0) as usize {
            return Err(Error::Cuda(format!(
                "device {ordinal} not found ({count} visible); use --device cpu"
            )));
        }
        let ctx = CudaContext::new(ordinal)?;
        let name = ctx.name()?;
        let (major, minor) = ctx.compute_capability()?;
        if major < 8 {
            return Err(Error::Cuda(format!(
                "device {ordinal} ({name}) is compute capability {major}.{minor}; crossrank needs 8.0 or newer; use --device cpu"
            )));
        }
        // SAFETY: only tries to open libcublasLt; no symbol is called.
        if !unsafe { cudarc::cublaslt::sys::is_culib_present() } {
            return Err(Error::Cuda(
                "cuBLASLt not found (libcublasLt.so.13 could not be loaded): install the CUDA 13 \
                 libraries or add their folder to LD_LIBRARY_PATH; or use --device cpu"
                    .into(),
            ));
        }
        // SAFETY: everything this backend does runs on its one stream, in order, so cudarc's
        // cross-stream events are not needed; no slice is shared with another stream. Before
        // the stream: with tracking on, cudarc synchronises the whole context when it makes the
        // first stream, which would invalidate another model's graph capture in progress.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream()?;
        let module = ctx
            .load_module(Ptx::from_binary(embedded::FATBIN.to_vec()))
            .map_err(|e| {
                Error::Cuda(format!(
                    "could not load the embedded kernels on {name} (sm_{major}{minor}; embedded: {}): {e}",
                    ARCHITECTURES.join(", ")
                ))
            })?;
        let kernels = Kernels::load(&module)?;
        let gemm = gemm::Gemm::new(stream.clone())?;
        Ok(CudaBackend {
            ctx,
            stream,
            kernels,
            gemm,
            graphs: Mutex::new(Graphs::default()),
            name: format!("cuda:{ordinal} {name} (sm_{major}{minor})"),
        })
    }

    /// Whether this device is the software GPU (softgpu/): the CUDA path running on the CPU for
    /// tests. It names itself so; nothing measured on it is a speed figure.
    pub fn is_software(&self) -> bool {
        self.name.contains(SOFTWARE_GPU)
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Copies the first `len` elements of a device buffer back as f32 (tests and tools).
    pub fn download(&self, buf: &CudaSlice<S>, len: usize) -> Result<Vec<f32>> {
        if len > buf.len() {
            return Err(Error::Internal(format!(
                "download of {len} elements from a buffer of {}",
                buf.len()
            )));
        }
        let host = self.stream.clone_dtoh(&buf.slice(0..len))?;
        self.stream.synchronize()?;
        Ok(host.into_iter().map(S::to_f32).collect())
    }

    /// Fills a device buffer with one value, e.g. NaN to poison an output before a test.
    pub fn fill(&self, buf: &mut CudaSlice<S>, value: f32) -> Result<()> {
        let host = vec![S::from_f32(value); buf.len()];
        self.stream.memcpy_htod(&host, buf)?;
        self.stream.synchronize()?;
        Ok(())
    }

    /// Runs the fragment probe (kernels/probe.cu) on a and b, [16][16] row-major each, and
    /// brings back every register it wrote. Outputs are poisoned first (all-ones bits), so a
    /// register the kernel left unwritten shows as 0xffffffff / NaN.
    pub fn fragment_probe(&self, a: &[S], b: &[S]) -> Result<kernels::FragmentProbe> {
        use kernels::{PROBE_ACC, PROBE_FRAGS, PROBE_INPUT, PROBE_LANES};
        for (what, m) in [("a", a), ("b", b)] {
            if m.len() != PROBE_INPUT {
                return Err(Error::Internal(format!(
                    "fragment_probe: {what} has {} elements, the probe takes 16 x 16",
                    m.len()
                )));
            }
        }
        let s = &self.stream;
        let (da, db) = (s.clone_htod(a)?, s.clone_htod(b)?);
        let mut frags = s.clone_htod(&vec![u32::MAX; PROBE_LANES * PROBE_FRAGS])?;
        let mut d = s.clone_htod(&vec![f32::from_bits(u32::MAX); PROBE_LANES * PROBE_ACC])?;
        self.kernels
            .fragment_probe(s, &da, &db, &mut frags, &mut d)?;
        let (frags, d) = (s.clone_dtoh(&frags)?, s.clone_dtoh(&d)?);
        s.synchronize()?;
        let mut out = kernels::FragmentProbe {
            a: [[0; 4]; PROBE_LANES],
            ldmatrix: [[0; 4]; PROBE_LANES],
            d: [[0.0; PROBE_ACC]; PROBE_LANES],
        };
        for l in 0..PROBE_LANES {
            let f = &frags[l * PROBE_FRAGS..(l + 1) * PROBE_FRAGS];
            out.a[l].copy_from_slice(&f[..4]);
            out.ldmatrix[l].copy_from_slice(&f[4..]);
            out.d[l].copy_from_slice(&d[l * PROBE_ACC..(l + 1) * PROBE_ACC]);
        }
        Ok(out)
    }

    /// Algorithms cuBLASLt has chosen so far, one per (row bucket, out, in).
    pub fn cached_gemm_algorithms(&self) -> usize {
        self.gemm.cached_algorithms()
    }

    /// Ends a stream capture that is still open after a failure, dropping what it recorded.
    fn abandon_capture(&self) {
        let cu = self.stream.cu_stream();
        // SAFETY: `cu` is this backend's live stream; a graph returned by ending its capture is
        // ours alone and destroyed at once.
        unsafe {
            let capturing = drv::stream::is_capturing(cu)
                .is_ok_and(|s| s != drv_sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE);
            if capturing {
                if let Ok(graph) = drv::stream::end_capture(cu) {
                    if !graph.is_null() {
                        let _ = drv::graph::destroy(graph);
                    }
                }
            }
        }
    }

    /// CUDA graphs recorded so far, and why graphs are off if a capture failed.
    pub fn graph_status(&self) -> (usize, Option<String>) {
        match self.graphs.lock() {
            Ok(g) => (g.shapes.values().flatten().count(), g.off.clone()),
            Err(_) => (0, Some("a previous forward panicked".into())),
        }
    }
}

impl<S: Storage> Backend for CudaBackend<S> {
    type Buf = CudaSlice<S>;
    type Batch = CudaBatch;
    type Logits = CudaSlice<f32>;

    fn device_name(&self) -> String {
        self.name.clone()
    }

    fn storage_bytes(&self) -> usize {
        std::mem::size_of::<S>()
    }

    fn upload(&self, t: &HostTensor) -> Result<CudaSlice<S>> {
        let mut host = Vec::with_capacity(t.data.len());
        for (i, &v) in t.data.iter().enumerate() {
            let h = S::from_f32(v);
            if h.to_f32().is_infinite() && v.is_finite() {
                return Err(Error::Cuda(format!(
                    "tensor `{}` holds {v} at element {i}, beyond {}'s range (±{}); the CUDA backend stores this model's weights in {}",
                    t.name,
                    S::NAME,
                    S::MAX,
                    S::NAME
                )));
            }
            host.push(h);
        }
        if host.is_empty() {
            return Err(Error::Internal(format!("tensor `{}` is empty", t.name)));
        }
        Ok(self.stream.clone_htod(&host)?)
    }

    fn alloc(&self, len: usize) -> Result<CudaSlice<S>> {
        Ok(self.stream.alloc_zeros::<S>(len.max(1))?)
    }

    fn alloc_batch(&self, max_tokens: usize, max_seqs: usize) -> Result<CudaBatch> {
        let len = 3 * max_tokens + max_seqs + 2;
        let dev = self.stream.alloc_zeros::<u32>(len)?;
        // SAFETY: pinned memory starts uninitialised; it is only read after `load_batch`
        // wrote the prefix that is copied.
        let staging = unsafe { self.ctx.alloc_pinned::<u32>(len) }?;
        Ok(CudaBatch {
            dev,
            staging,
            max_tokens,
            max_seqs,
            tokens: 0,
            seqs: 0,
            max_seqlen: 0,
            max_id: 0,
            max_pos: 0,
            max_type: 0,
        })
    }

    fn alloc_logits(&self, max_seqs: usize) -> Result<CudaSlice<f32>> {
        Ok(self.stream.alloc_zeros::<f32>(max_seqs.max(1))?)
    }

    fn load_batch(&self, batch: &PackedBatch, dst: &mut CudaBatch) -> Result<()> {
        check_batch(batch, dst.max_tokens, dst.max_seqs)?;
        let (t, n) = (batch.tokens(), batch.len());
        // The previous upload (if any) must be done before its staging memory is rewritten.
        self.stream.synchronize()?;
        let used = 3 * t + n + 2;
        let host = dst.staging.as_mut_slice()?;
        host[..t].copy_from_slice(&batch.input_ids);
        host[t..2 * t].copy_from_slice(&batch.token_type_ids);
        host[2 * t..3 * t].copy_from_slice(&batch.position_ids);
        for (d, &c) in host[3 * t..used - 1].iter_mut().zip(&batch.cu_seqlens) {
            *d = c as u32;
        }
        // Checked above: at most the first sequence's length, itself at most t.
        host[used - 1] = batch.shared_prefix as u32;
        let mut view = dst.dev.slice_mut(0..used);
        self.stream.memcpy_htod(&host[..used], &mut view)?;
        dst.tokens = t;
        dst.seqs = n;
        // The field may be larger (a padded batch's shape fixes the attention grid), never
        // smaller than the longest sequence: a grid too short would skip rows.
        let longest = (0..n).map(|s| batch.range(s).len()).max().unwrap_or(0);
        dst.max_seqlen = batch.max_seqlen.max(longest);
        dst.max_id = batch.input_ids.iter().copied().max().unwrap_or(0);
        dst.max_pos = batch.position_ids.iter().copied().max().unwrap_or(0);
        dst.max_type = batch.token_type_ids.iter().copied().max().unwrap_or(0);
        Ok(())
    }

    fn embed(
        &self,
        batch: &CudaBatch,
        emb: &Embeddings<CudaSlice<S>>,
        eps: f32,
        out: &mut CudaSlice<S>,
    ) -> Result<()> {
        let h = emb.ln.gamma.len();
        let (vocab, positions, types) = (
            emb.word.len() / h.max(1),
            emb.position.len() / h.max(1),
            emb.token_type.len() / h.max(1),
        );
        if batch.tokens > 0
            && (batch.max_id as usize >= vocab
                || batch.max_pos as usize >= positions
                || batch.max_type as usize >= types)
        {
            return Err(Error::input(format!(
                "a token id, position or type (largest: {}, {}, {}) is outside the model's tables ({vocab}, {positions}, {types})",
                batch.max_id, batch.max_pos, batch.max_type
            )));
        }
        self.kernels.embed_layernorm(
            &self.stream,
            &batch.views(),
            &emb.word,
            &emb.position,
            &emb.token_type,
            &emb.ln.gamma,
            &emb.ln.beta,
            eps,
            out,
        )
    }

    fn linear(
        &self,
        x: &CudaSlice<S>,
        rows: usize,
        lin: &Linear<CudaSlice<S>>,
        act: Option<Activation>,
        out: &mut CudaSlice<S>,
    ) -> Result<()> {
        let (i, o) = (lin.in_dim, lin.out_dim);
        let check = |what: &str, have: usize, need: usize| {
            if have < need {
                Err(Error::Internal(format!(
                    "linear {what}: buffer of {have} elements, the op needs {need}"
                )))
            } else {
                Ok(())
            }
        };
        check("in", x.len(), rows * i)?;
        check("out", out.len(), rows * o)?;
        check("weight", lin.w.len(), o * i)?;
        check("bias", lin.b.len(), o)?;
        if rows == 0 {
            return Ok(());
        }
        self.gemm.linear(x, rows, &lin.w, &lin.b, o, i, out)?;
        match act {
            None => Ok(()),
            Some(Activation::GeluErf) => self.kernels.gelu(&self.stream, out, rows * o),
            Some(Activation::Silu) => Err(Error::Cuda(
                "linear: a SiLU epilogue is not implemented on CUDA".into(),
            )),
        }
    }

    fn attention(
        &self,
        qkv: &CudaSlice<S>,
        batch: &CudaBatch,
        heads: usize,
        head_dim: usize,
        out: &mut CudaSlice<S>,
    ) -> Result<()> {
        self.kernels.attention(
            &self.stream,
            &batch.views(),
            qkv,
            heads,
            heads,
            head_dim,
            Mask::Full,
            out,
        )
    }

    fn add_layernorm(
        &self,
        delta: &CudaSlice<S>,
        rows: usize,
        ln: &LayerNorm<CudaSlice<S>>,
        eps: f32,
        hidden: &mut CudaSlice<S>,
    ) -> Result<()> {
        self.kernels
            .add_layernorm(&self.stream, delta, rows, &ln.gamma, &ln.beta, eps, hidden)
    }

    fn gather_cls(
        &self,
        src: &CudaSlice<S>,
        width: usize,
        batch: &CudaBatch,
        out: &mut CudaSlice<S>,
    ) -> Result<()> {
        self.kernels
            .gather_row(&self.stream, &batch.views(), src, width, false, out)
    }

    fn head(
        &self,
        cls: &CudaSlice<S>,
        batch: &CudaBatch,
        head: &Head<CudaSlice<S>>,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let width = head.dense.in_dim;
        if head.dense.out_dim != width || head.out.in_dim != width || head.out.out_dim != 1 {
            return Err(Error::Cuda(format!(
                "the CUDA head takes a {width} → {width} dense layer and one logit; this model's is {} → {} and {} → {}",
                head.dense.in_dim, head.dense.out_dim, head.out.in_dim, head.out.out_dim
            )));
        }
        self.kernels.cls_head(
            &self.stream,
            &batch.views(),
            cls,
            &head.dense.w,
            &head.dense.b,
            &head.out.w,
            &head.out.b,
            width,
            out,
        )
    }

    fn embed_tokens(
        &self,
        batch: &CudaBatch,
        table: &CudaSlice<S>,
        width: usize,
        out: &mut CudaSlice<S>,
    ) -> Result<()> {
        let vocab = table.len() / width.max(1);
        if batch.tokens > 0 && batch.max_id as usize >= vocab {
            return Err(Error::input(format!(
                "a token id ({}) is outside the model's vocabulary ({vocab})",
                batch.max_id
            )));
        }
        self.kernels
            .embed_tokens(&self.stream, &batch.views(), table, width, out)
    }

    fn layernorm(
        &self,
        x: &CudaSlice<S>,
        rows: usize,
        ln: &LayerNorm<CudaSlice<S>>,
        eps: f32,
        out: &mut CudaSlice<S>,
    ) -> Result<()> {
        self.kernels
            .layernorm(&self.stream, x, rows, &ln.gamma, &ln.beta, eps, out)
    }

    fn residual_layernorm(
        &self,
        delta: &CudaSlice<S>,
        rows: usize,
        ln: &LayerNorm<CudaSlice<S>>,
        eps: f32,
        hidden: &mut CudaSlice<S>,
        out: &mut CudaSlice<S>,
    ) -> Result<()> {
        self.kernels.residual_layernorm(
            &self.stream,
            delta,
            hidden,
            rows,
            &ln.gamma,
            &ln.beta,
            eps,
            out,
        )
    }

    fn rope(
        &self,
        qkv: &mut CudaSlice<S>,
        batch: &CudaBatch,
        heads: usize,
        head_dim: usize,
        theta: f64,
    ) -> Result<()> {
        let b = batch.views();
        self.kernels
            .rope(&self.stream, &b, qkv, heads, heads, head_dim, None, theta)
    }

    fn attention_window(
        &self,
        qkv: &CudaSlice<S>,
        batch: &CudaBatch,
        heads: usize,
        head_dim: usize,
        half_window: usize,
        out: &mut CudaSlice<S>,
    ) -> Result<()> {
        self.kernels.attention(
            &self.stream,
            &batch.views(),
            qkv,
            heads,
            heads,
            head_dim,
            Mask::Window(half_window),
            out,
        )
    }

    fn geglu(
        &self,
        x: &CudaSlice<S>,
        rows: usize,
        inter: usize,
        act: Activation,
        out: &mut CudaSlice<S>,
    ) -> Result<()> {
        let silu = match act {
            Activation::GeluErf => false,
            Activation::Silu => true,
        };
        self.kernels.gated(&self.stream, x, rows, inter, silu, out)
    }

    fn mean_pool(
        &self,
        src: &CudaSlice<S>,
        width: usize,
        batch: &CudaBatch,
        out: &mut CudaSlice<S>,
    ) -> Result<()> {
        self.kernels
            .mean_pool(&self.stream, &batch.views(), src, width, out)
    }

    fn classify(
        &self,
        x: &CudaSlice<S>,
        n: usize,
        lin: &Linear<CudaSlice<S>>,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        if lin.out_dim != 1 {
            return Err(Error::Cuda(format!(
                "classify: {} outputs; the CUDA kernel gives one logit",
                lin.out_dim
            )));
        }
        self.kernels
            .classify(&self.stream, x, n, &lin.w, &lin.b, lin.in_dim, out)
    }

    fn rmsnorm(
        &self,
        delta: Option<&CudaSlice<S>>,
        hidden: &mut CudaSlice<S>,
        rows: usize,
        weight: &CudaSlice<S>,
        eps: f32,
        out: &mut CudaSlice<S>,
    ) -> Result<()> {
        self.kernels
            .rmsnorm(&self.stream, delta, hidden, rows, weight, eps, out)
    }

    fn qk_norm_rope(
        &self,
        qkv: &mut CudaSlice<S>,
        batch: &CudaBatch,
        heads: usize,
        kv_heads: usize,
        head_dim: usize,
        norms: Option<(&CudaSlice<S>, &CudaSlice<S>)>,
        eps: f32,
        theta: f64,
    ) -> Result<()> {
        let b = batch.views();
        let norms = norms.map(|(q, k)| (q, k, eps));
        self.kernels.rope(
            &self.stream,
            &b,
            qkv,
            heads,
            kv_heads,
            head_dim,
            norms,
            theta,
        )
    }

    fn attention_causal(
        &self,
        qkv: &CudaSlice<S>,
        batch: &CudaBatch,
        heads: usize,
        kv_heads: usize,
        head_dim: usize,
        out: &mut CudaSlice<S>,
    ) -> Result<()> {
        self.kernels.attention(
            &self.stream,
            &batch.views(),
            qkv,
            heads,
            kv_heads,
            head_dim,
            Mask::Causal,
            out,
        )
    }

    fn gather_last(
        &self,
        src: &CudaSlice<S>,
        width: usize,
        batch: &CudaBatch,
        out: &mut CudaSlice<S>,
    ) -> Result<()> {
        self.kernels
            .gather_row(&self.stream, &batch.views(), src, width, true, out)
    }

    fn load_values(&self, host: &[f32], dst: &mut CudaSlice<S>, at: usize) -> Result<()> {
        if at + host.len() > dst.len() {
            return Err(Error::Internal(format!(
                "load_values: {} values at {at} into a buffer of {}",
                host.len(),
                dst.len()
            )));
        }
        if host.is_empty() {
            return Ok(());
        }
        let values: Vec<S> = host.iter().map(|&v| S::from_f32(v)).collect();
        let mut view = dst.slice_mut(at..at + host.len());
        self.stream.memcpy_htod(&values, &mut view)?;
        Ok(())
    }

    fn patchify(
        &self,
        pixels: &CudaSlice<S>,
        n: usize,
        size: usize,
        patch: usize,
        out: &mut CudaSlice<S>,
    ) -> Result<()> {
        self.kernels
            .patchify(&self.stream, pixels, n, size, patch, out)
    }

    fn vit_embed(
        &self,
        patches: &CudaSlice<S>,
        n: usize,
        class: &CudaSlice<S>,
        positions: &CudaSlice<S>,
        width: usize,
        out: &mut CudaSlice<S>,
    ) -> Result<()> {
        self.kernels
            .vit_embed(&self.stream, patches, n, class, positions, width, out)
    }

    fn copy(
        &self,
        src: &CudaSlice<S>,
        from: usize,
        dst: &mut CudaSlice<S>,
        to: usize,
        len: usize,
    ) -> Result<()> {
        if from + len > src.len() || to + len > dst.len() {
            return Err(Error::Internal(format!(
                "copy: {len} elements from {from} of {} to {to} of {}",
                src.len(),
                dst.len()
            )));
        }
        if len == 0 {
            return Ok(());
        }
        self.stream.memcpy_dtod(
            &src.slice(from..from + len),
            &mut dst.slice_mut(to..to + len),
        )?;
        Ok(())
    }

    fn cross_attention(
        &self,
        q: &CudaSlice<S>,
        batch: &CudaBatch,
        kv: &CudaSlice<S>,
        images: &CudaBatch,
        image_rows: usize,
        heads: usize,
        head_dim: usize,
        out: &mut CudaSlice<S>,
    ) -> Result<()> {
        if images.tokens != images.seqs {
            return Err(Error::Internal(format!(
                "cross_attention: {} image indices in {} sequences (one each)",
                images.tokens, images.seqs
            )));
        }
        let held = kv.len() / (image_rows * 2 * heads * head_dim).max(1);
        if images.seqs > 0 && images.max_id as usize >= held {
            return Err(Error::Internal(format!(
                "cross_attention: image {} of a key/value buffer holding {held}",
                images.max_id
            )));
        }
        self.kernels.cross_attention(
            &self.stream,
            q,
            &batch.views(),
            kv,
            &images.views(),
            image_rows,
            heads,
            head_dim,
            out,
        )
    }

    fn read_logits(&self, logits: &CudaSlice<f32>, n: usize) -> Result<Vec<f32>> {
        if n > logits.len() {
            return Err(Error::Internal(format!(
                "read_logits: {n} logits from a buffer of {}",
                logits.len()
            )));
        }
        if n == 0 {
            return Ok(Vec::new());
        }
        let out = self.stream.clone_dtoh(&logits.slice(0..n))?;
        self.stream.synchronize()?;
        Ok(out)
    }

    fn notes(&self) -> Vec<String> {
        let (recorded, off) = self.graph_status();
        let seen = self.graphs.lock().map(|g| g.shapes.len()).unwrap_or(0);
        if seen == 0 {
            return Vec::new();
        }
        let mut line = format!("CUDA graphs: {seen} batch shapes seen, {recorded} recorded");
        if let Some(why) = off {
            line.push_str(&format!("; switched off after a failed recording: {why}"));
        }
        vec![line]
    }

    fn run(&self, shape: Option<BatchShape>, body: &mut dyn FnMut() -> Result<()>) -> Result<()> {
        let Some(shape) = shape else {
            return body();
        };
        let mut g = self
            .graphs
            .lock()
            .map_err(|_| Error::Internal("a previous forward panicked".into()))?;
        match g.shapes.get(&shape) {
            Some(Some(graph)) => return Ok(graph.launch()?),
            Some(None) if g.off.is_none() => {} // the second time: record it
            Some(None) => return body(),
            None => {
                if g.shapes.len() < MAX_GRAPHS {
                    g.shapes.insert(shape, None);
                }
                return body();
            }
        }
        // Thread-local capture: other threads' CUDA calls (another model's) are not caught in it.
        let recorded = self
            .stream
            .begin_capture(drv_sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(|e| e.to_string())
            .and_then(|()| {
                let queued = body();
                let captured = self
                    .stream
                    .end_capture(drv_sys::CUgraphInstantiate_flags(0));
                match (queued, captured) {
                    (Ok(()), Ok(Some(graph))) => graph
                        .launch()
                        .map(|()| graph)
                        .map_err(|e| format!("the recorded graph did not launch: {e}")),
                    (Err(e), _) => Err(e.to_string()),
                    (_, Err(e)) => Err(e.to_string()),
                    (Ok(()), Ok(None)) => Err("the capture recorded nothing".to_string()),
                }
            });
        match recorded {
            Ok(graph) => {
                g.shapes.insert(shape, Some(graph));
                Ok(())
            }
            Err(why) => {
                // cudarc's end_capture can fail before it ends the capture (an error an earlier
                // drop left in the context comes back first): end it here, or the eager run
                // below would be recorded instead of run.
                self.abandon_capture();
                // Nothing captured ran. Whatever went wrong, the eager path is the reference:
                // run it, and stop capturing (an op's own error comes back from it again).
                eprintln!(
                    "crossrank: recording a CUDA graph failed ({why}); every forward now runs without graphs"
                );
                g.off = Some(why);
                body()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::check_batch;
    use crate::batch::PackedBatch;

    fn packed(lens: &[usize]) -> PackedBatch {
        let mut b = PackedBatch {
            cu_seqlens: vec![0],
            ..Default::default()
        };
        for &len in lens {
            for p in 0..len {
                b.input_ids.push(5);
                b.token_type_ids.push(0);
                b.position_ids.push(p as u32);
            }
            b.cu_seqlens.push(b.input_ids.len() as i32);
            b.max_seqlen = b.max_seqlen.max(len);
        }
        b
    }

    #[test]
    fn check_batch_takes_ragged_and_padded_batches_that_fit() {
        check_batch(&packed(&[1, 2, 63, 64, 65]), 195, 5).unwrap();
        check_batch(&packed(&[]), 0, 0).unwrap();
        // A padded batch (BatchShape): rows of no sequence and empty sequences at the end.
        let p = packed(&[3, 2]).padded_to(crate::batch::BatchShape {
            tokens: 8,
            seqs: 4,
            max_seqlen: 64,
        });
        assert_eq!(p.cu_seqlens, vec![0, 3, 5, 5, 5]);
        check_batch(&p, 8, 4).unwrap();
    }

    #[test]
    fn check_batch_refuses_what_would_send_a_kernel_past_its_rows() {
        let err =
            |b: &PackedBatch, t: usize, n: usize| check_batch(b, t, n).unwrap_err().to_string();
        assert!(err(&packed(&[3, 2]), 4, 2).contains("exceeds its buffers"));
        assert!(err(&packed(&[3, 2]), 5, 1).contains("exceeds its buffers"));
        // A sequence that ends past the batch's rows.
        let mut b = packed(&[3, 2]);
        b.cu_seqlens.push(6);
        assert!(err(&b, 8, 4).contains("inconsistent"));
        // A step down.
        let mut b = packed(&[3, 2]);
        b.cu_seqlens.insert(2, 2);
        assert!(err(&b, 8, 4).contains("inconsistent"));
        let mut b = packed(&[3, 2]);
        b.cu_seqlens[0] = 1;
        assert!(err(&b, 8, 4).contains("inconsistent"));
        let mut b = packed(&[3, 2]);
        b.position_ids.pop();
        assert!(err(&b, 8, 4).contains("inconsistent"));
        let mut b = packed(&[3, 2]);
        b.cu_seqlens[2] = -1;
        assert!(err(&b, 8, 4).contains("inconsistent"));
    }
}
