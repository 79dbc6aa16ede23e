//! The CUDA backend (feature `cuda`): fp16 storage, fp32 accumulation, our own kernels
//! (kernels/*.cu, compiled by build.rs into one embedded fatbin) and cuBLASLt GEMMs, all on one
//! stream. Weights are uploaded once; the activation arena (model.rs) is allocated once; a
//! forward uploads the packed batch in one copy from pinned memory, allocates nothing, and
//! brings back only the N logits.

mod gemm;
pub mod kernels;

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/kernels.rs"));
}

use std::sync::{Arc, Mutex};

use cudarc::driver::{
    result as drv, sys as drv_sys, CudaContext, CudaSlice, CudaStream, PinnedHostSlice,
};
use cudarc::nvrtc::Ptx;
use half::f16;

use super::Backend;
use crate::batch::PackedBatch;
use crate::config::Activation;
use crate::error::{Error, Result};
use crate::weights::{Embeddings, Head, HostTensor, LayerNorm, Linear};

pub use embedded::{ARCHITECTURES, PTXAS_REPORT};
use kernels::{BatchViews, Kernels};

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

pub struct CudaBackend {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    kernels: Kernels,
    gemm: gemm::Gemm,
    name: String,
}

/// The packed batch on the device: ids | types | positions | cu_seqlens in one buffer, filled by
/// one copy from pinned memory, and room for the logits.
pub struct CudaBatch {
    dev: CudaSlice<u32>,
    staging: PinnedHostSlice<u32>,
    /// The head writes here while the batch is only borrowed: hence the lock (never contended).
    logits: Mutex<CudaSlice<f32>>,
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
            tokens: t,
            seqs: self.seqs,
            max_seqlen: self.max_seqlen,
        }
    }
}

/// What the kernels assume of a packed batch before it goes up: it fits its buffers, every
/// array has one entry per token, and cu_seqlens runs from 0 to the token count in strictly
/// increasing steps. gather_cls reads row cu_seqlens[s] of every sequence: an empty sequence
/// (or a first offset other than 0) would send it past the batch's rows.
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
        || i32::try_from(t).ok() != batch.cu_seqlens.last().copied()
        || batch.cu_seqlens.windows(2).any(|w| w[1] <= w[0])
    {
        return Err(Error::Internal(
            "packed batch is inconsistent (ids, types, positions and cu_seqlens disagree, \
             or a sequence is empty)"
                .into(),
        ));
    }
    Ok(())
}

impl CudaBackend {
    /// Opens device `ordinal`, loads the embedded kernels and sets up cuBLASLt. Every way this
    /// can fail is an error naming what is missing, never a panic.
    pub fn new(ordinal: usize) -> Result<Self> {
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
        let stream = ctx.new_stream()?;
        // SAFETY: everything this backend does runs on its one stream, in order, so cudarc's
        // cross-stream events are not needed; no slice is shared with another stream.
        unsafe { ctx.disable_event_tracking() };
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
            name: format!("cuda:{ordinal} {name} (sm_{major}{minor})"),
        })
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Copies the first `len` elements of a device buffer back as f32 (tests and tools).
    pub fn download(&self, buf: &CudaSlice<f16>, len: usize) -> Result<Vec<f32>> {
        if len > buf.len() {
            return Err(Error::Internal(format!(
                "download of {len} elements from a buffer of {}",
                buf.len()
            )));
        }
        let host = self.stream.clone_dtoh(&buf.slice(0..len))?;
        self.stream.synchronize()?;
        Ok(host.into_iter().map(f16::to_f32).collect())
    }

    /// Fills a device buffer with one value, e.g. NaN to poison an output before a test.
    pub fn fill(&self, buf: &mut CudaSlice<f16>, value: f32) -> Result<()> {
        let host = vec![f16::from_f32(value); buf.len()];
        self.stream.memcpy_htod(&host, buf)?;
        self.stream.synchronize()?;
        Ok(())
    }

    /// Algorithms cuBLASLt has chosen so far, one per (row bucket, out, in).
    pub fn cached_gemm_algorithms(&self) -> usize {
        self.gemm.cached_algorithms()
    }
}

impl Backend for CudaBackend {
    type Buf = CudaSlice<f16>;
    type Batch = CudaBatch;

    fn device_name(&self) -> String {
        self.name.clone()
    }

    fn upload(&self, t: &HostTensor) -> Result<CudaSlice<f16>> {
        let mut host = Vec::with_capacity(t.data.len());
        for (i, &v) in t.data.iter().enumerate() {
            let h = f16::from_f32(v);
            if h.is_infinite() && v.is_finite() {
                return Err(Error::Cuda(format!(
                    "tensor `{}` holds {v} at element {i}, beyond fp16's range (±65504); the CUDA backend stores weights in fp16",
                    t.name
                )));
            }
            host.push(h);
        }
        if host.is_empty() {
            return Err(Error::Internal(format!("tensor `{}` is empty", t.name)));
        }
        Ok(self.stream.clone_htod(&host)?)
    }

    fn alloc(&self, len: usize) -> Result<CudaSlice<f16>> {
        Ok(self.stream.alloc_zeros::<f16>(len.max(1))?)
    }

    fn alloc_batch(&self, max_tokens: usize, max_seqs: usize) -> Result<CudaBatch> {
        let len = 3 * max_tokens + max_seqs + 1;
        let dev = self.stream.alloc_zeros::<u32>(len)?;
        // SAFETY: pinned memory starts uninitialised; it is only read after `load_batch`
        // wrote the prefix that is copied.
        let staging = unsafe { self.ctx.alloc_pinned::<u32>(len) }?;
        let logits = Mutex::new(self.stream.alloc_zeros::<f32>(max_seqs.max(1))?);
        Ok(CudaBatch {
            dev,
            staging,
            logits,
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

    fn load_batch(&self, batch: &PackedBatch, dst: &mut CudaBatch) -> Result<()> {
        check_batch(batch, dst.max_tokens, dst.max_seqs)?;
        let (t, n) = (batch.tokens(), batch.len());
        // The previous upload (if any) must be done before its staging memory is rewritten.
        self.stream.synchronize()?;
        let used = 3 * t + n + 1;
        let host = dst.staging.as_mut_slice()?;
        host[..t].copy_from_slice(&batch.input_ids);
        host[t..2 * t].copy_from_slice(&batch.token_type_ids);
        host[2 * t..3 * t].copy_from_slice(&batch.position_ids);
        for (d, &c) in host[3 * t..used].iter_mut().zip(&batch.cu_seqlens) {
            *d = c as u32;
        }
        let mut view = dst.dev.slice_mut(0..used);
        self.stream.memcpy_htod(&host[..used], &mut view)?;
        dst.tokens = t;
        dst.seqs = n;
        dst.max_seqlen = (0..n).map(|s| batch.range(s).len()).max().unwrap_or(0);
        dst.max_id = batch.input_ids.iter().copied().max().unwrap_or(0);
        dst.max_pos = batch.position_ids.iter().copied().max().unwrap_or(0);
        dst.max_type = batch.token_type_ids.iter().copied().max().unwrap_or(0);
        Ok(())
    }

    fn embed(
        &self,
        batch: &CudaBatch,
        emb: &Embeddings<CudaSlice<f16>>,
        eps: f32,
        out: &mut CudaSlice<f16>,
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
        x: &CudaSlice<f16>,
        rows: usize,
        lin: &Linear<CudaSlice<f16>>,
        act: Option<Activation>,
        out: &mut CudaSlice<f16>,
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
        }
    }

    fn attention(
        &self,
        qkv: &CudaSlice<f16>,
        batch: &CudaBatch,
        heads: usize,
        head_dim: usize,
        out: &mut CudaSlice<f16>,
    ) -> Result<()> {
        self.kernels
            .attention(&self.stream, &batch.views(), qkv, heads, head_dim, out)
    }

    fn add_layernorm(
        &self,
        delta: &CudaSlice<f16>,
        rows: usize,
        ln: &LayerNorm<CudaSlice<f16>>,
        eps: f32,
        hidden: &mut CudaSlice<f16>,
    ) -> Result<()> {
        self.kernels
            .add_layernorm(&self.stream, delta, rows, &ln.gamma, &ln.beta, eps, hidden)
    }

    fn gather_cls(
        &self,
        src: &CudaSlice<f16>,
        width: usize,
        batch: &CudaBatch,
        out: &mut CudaSlice<f16>,
    ) -> Result<()> {
        self.kernels
            .gather_cls(&self.stream, &batch.views(), src, width, out)
    }

    fn head(
        &self,
        cls: &CudaSlice<f16>,
        batch: &CudaBatch,
        head: &Head<CudaSlice<f16>>,
    ) -> Result<Vec<f32>> {
        let width = head.dense.in_dim;
        if head.dense.out_dim != width || head.out.in_dim != width || head.out.out_dim != 1 {
            return Err(Error::Cuda(format!(
                "the CUDA head takes a {width} → {width} dense layer and one logit; this model's is {} → {} and {} → {}",
                head.dense.in_dim, head.dense.out_dim, head.out.in_dim, head.out.out_dim
            )));
        }
        let n = batch.seqs;
        if n == 0 {
            return Ok(Vec::new());
        }
        let mut logits = batch
            .logits
            .lock()
            .map_err(|_| Error::Internal("a previous head launch panicked".into()))?;
        self.kernels.cls_head(
            &self.stream,
            &batch.views(),
            cls,
            &head.dense.w,
            &head.dense.b,
            &head.out.w,
            &head.out.b,
            width,
            &mut logits,
        )?;
        let out = self.stream.clone_dtoh(&logits.slice(0..n))?;
        self.stream.synchronize()?;
        Ok(out)
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
    fn check_batch_takes_ragged_batches_that_fit() {
        check_batch(&packed(&[1, 2, 63, 64, 65]), 195, 5).unwrap();
        check_batch(&packed(&[]), 0, 0).unwrap();
    }

    #[test]
    fn check_batch_refuses_what_would_send_a_kernel_past_its_rows() {
        let err =
            |b: &PackedBatch, t: usize, n: usize| check_batch(b, t, n).unwrap_err().to_string();
        assert!(err(&packed(&[3, 2]), 4, 2).contains("exceeds its buffers"));
        assert!(err(&packed(&[3, 2]), 5, 1).contains("exceeds its buffers"));
        // A last sequence of no tokens: its [CLS] row would be row 5 of a 5-row batch.
        let mut b = packed(&[3, 2]);
        b.cu_seqlens.push(5);
        assert!(err(&b, 8, 4).contains("a sequence is empty"));
        // An empty sequence in the middle.
        let mut b = packed(&[3, 2]);
        b.cu_seqlens.insert(1, 0);
        assert!(err(&b, 8, 4).contains("a sequence is empty"));
        let mut b = packed(&[3, 2]);
        b.cu_seqlens[0] = 1;
        assert!(err(&b, 8, 4).contains("inconsistent"));
        let mut b = packed(&[3, 2]);
        b.position_ids.pop();
        assert!(err(&b, 8, 4).contains("inconsistent"));
        let mut b = packed(&[3, 2]);
        *b.cu_seqlens.last_mut().unwrap() = 4;
        assert!(err(&b, 8, 4).contains("inconsistent"));
    }
}
