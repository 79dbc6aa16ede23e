//! The linear layers through cuBLASLt: `out[rows, o] = x[rows, i] · Wᵀ + b`, 16-bit in and out
//! (the backend's storage: fp16 or bf16), fp32 compute, the bias added in the GEMM epilogue.
//!
//! cuBLAS is column-major; our row-major buffers are read as their transposes: W [o, i]
//! row-major is the column-major [i, o] matrix A, used transposed; x [rows, i] row-major is the
//! column-major [i, rows] matrix B; out [rows, o] row-major is the column-major [o, rows] D.
//! D = op(A) · B + bias, with the bias running down D's rows (the output features).
//!
//! The algorithm is chosen once per (row bucket, o, i), where the bucket is the row count
//! rounded up to a power of two, and cached: a forward never asks the heuristic again for a
//! shape it has seen. Should a cached algorithm refuse a smaller row count of its bucket, the
//! call asks the heuristic for its exact shape instead (and does not cache that answer).
//!
//! The heuristic's first choice is an estimate, not a measurement. `tune` (called at load, see
//! tune.rs) times the heuristic's first few candidates for a key on the device and caches the
//! fastest in its place, under the same key, so the forward does not change.

use std::collections::HashMap;
use std::ffi::{c_int, c_void};
use std::sync::{Arc, Mutex, MutexGuard};

use cudarc::cublaslt::result as lt;
use cudarc::cublaslt::result::CublasError;
use cudarc::cublaslt::sys;
use cudarc::driver::{sys as drv_sys, CudaEvent, CudaSlice, CudaStream, DevicePtr, DevicePtrMut};
use half::f16;
use std::marker::PhantomData;

use super::storage::Storage;
use serde::Serialize;

use crate::error::{Error, Result};

/// cuBLASLt's recommended workspace for Hopper (smaller GPUs are fine with it too).
pub const WORKSPACE_BYTES: usize = 32 << 20;

/// The smallest row bucket: below it every row count shares one algorithm.
pub const MIN_BUCKET: usize = 64;

/// Owns the cuBLASLt handle.
struct Handle(sys::cublasLtHandle_t);

// SAFETY: the handle is only used while holding the `Gemm` mutex, so never from two threads
// at once, and cuBLASLt handles are not tied to the thread that made them.
unsafe impl Send for Handle {}

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: created by `create_handle` and destroyed only here.
        let _ = unsafe { lt::destroy_handle(self.0) };
    }
}

struct Desc(sys::cublasLtMatmulDesc_t);
impl Drop for Desc {
    fn drop(&mut self) {
        // SAFETY: created by `create_matmul_desc`, destroyed only here.
        let _ = unsafe { lt::destroy_matmul_desc(self.0) };
    }
}

struct Layout(sys::cublasLtMatrixLayout_t);
impl Drop for Layout {
    fn drop(&mut self) {
        // SAFETY: created by `create_matrix_layout`, destroyed only here.
        let _ = unsafe { lt::destroy_matrix_layout(self.0) };
    }
}

struct Pref(sys::cublasLtMatmulPreference_t);
impl Drop for Pref {
    fn drop(&mut self) {
        // SAFETY: created by `create_matmul_pref`, destroyed only here.
        let _ = unsafe { lt::destroy_matmul_pref(self.0) };
    }
}

fn layout(dtype: sys::cudaDataType, rows: usize, cols: usize, ld: usize) -> Result<Layout> {
    Ok(Layout(lt::create_matrix_layout(
        dtype,
        rows as u64,
        cols as u64,
        ld as i64,
    )?))
}

/// The layouts of `rows` rows of `x · Wᵀ` (the transposes are in the module comment), with the
/// dimensions kept for error messages.
struct Problem {
    a: Layout,
    b: Layout,
    d: Layout,
    rows: usize,
    out_dim: usize,
    in_dim: usize,
}

impl Problem {
    fn new(dtype: sys::cudaDataType, rows: usize, out_dim: usize, in_dim: usize) -> Result<Self> {
        Ok(Problem {
            a: layout(dtype, in_dim, out_dim, in_dim)?,
            b: layout(dtype, in_dim, rows, in_dim)?,
            d: layout(dtype, out_dim, rows, out_dim)?,
            rows,
            out_dim,
            in_dim,
        })
    }

    /// `what` ("GEMM", "algorithm search") of this problem failed.
    fn failed(&self, what: &str, e: CublasError) -> Error {
        let (r, o, i) = (self.rows, self.out_dim, self.in_dim);
        Error::Cuda(format!("cuBLASLt: {what} of {r}x{i} · {i}x{o} failed: {e}"))
    }
}

/// Device addresses of one GEMM's operands.
#[derive(Clone, Copy)]
struct Operands {
    w: drv_sys::CUdeviceptr,
    x: drv_sys::CUdeviceptr,
    out: drv_sys::CUdeviceptr,
    workspace: drv_sys::CUdeviceptr,
}

/// (row bucket, out features, in features)
pub type Key = (usize, usize, usize);

struct State {
    handle: Handle,
    workspace: CudaSlice<u8>,
    algos: HashMap<Key, sys::cublasLtMatmulAlgo_t>,
    /// Exact (rows, out, in) shapes whose bucket's algorithm refused them, with the one the
    /// heuristic gave for the exact shape: asked once, on an eager forward, so that no heuristic
    /// query runs inside a CUDA graph capture (cuBLASLt may refuse one there) or on every call.
    exact: HashMap<Key, sys::cublasLtMatmulAlgo_t>,
}

// SAFETY: `cublasLtMatmulAlgo_t` is plain data (an opaque array of u64); the handle is covered
// above; the workspace is a CudaSlice, which is Send.
unsafe impl Send for State {}

pub struct Gemm<S: Storage> {
    state: Mutex<State>,
    stream: Arc<CudaStream>,
    storage: PhantomData<S>,
}

/// The row bucket of a row count: the next power of two, at least MIN_BUCKET.
pub fn bucket(rows: usize) -> usize {
    rows.max(MIN_BUCKET).next_power_of_two()
}

impl<S: Storage> Gemm<S> {
    pub fn new(stream: Arc<CudaStream>) -> Result<Self> {
        let handle = Handle(lt::create_handle()?);
        let workspace = stream.alloc_zeros::<u8>(WORKSPACE_BYTES)?;
        Ok(Gemm {
            state: Mutex::new(State {
                handle,
                workspace,
                algos: HashMap::new(),
                exact: HashMap::new(),
            }),
            stream,
            storage: PhantomData,
        })
    }

    fn lock(&self) -> Result<MutexGuard<'_, State>> {
        self.state
            .lock()
            .map_err(|_| Error::Internal("a previous GEMM panicked".into()))
    }

    /// Number of algorithms cached so far (one per (bucket, o, i) seen).
    pub fn cached_algorithms(&self) -> usize {
        self.state.lock().map(|s| s.algos.len()).unwrap_or(0)
    }

    /// `out[rows, o] = x[rows, i] · w[o, i]ᵀ + b[o]`. The caller has checked the lengths.
    #[allow(clippy::too_many_arguments)]
    pub fn linear(
        &self,
        x: &CudaSlice<S>,
        rows: usize,
        w: &CudaSlice<S>,
        b: &CudaSlice<S>,
        out_dim: usize,
        in_dim: usize,
        out: &mut CudaSlice<S>,
    ) -> Result<()> {
        let mut guard = self.lock()?;
        let st = &mut *guard;
        let stream = &self.stream;
        stream.context().bind_to_thread()?;

        let (b_ptr, _b_sync) = b.device_ptr(stream);
        let desc = linear_desc(b_ptr)?;
        let p = Problem::new(S::CUBLAS, rows, out_dim, in_dim)?;
        let key = (bucket(rows), out_dim, in_dim);
        let exact_key = (rows, out_dim, in_dim);
        let algo = match st.exact.get(&exact_key).or_else(|| st.algos.get(&key)) {
            Some(a) => *a,
            None => {
                let a = heuristic(
                    &st.handle,
                    &desc,
                    &Problem::new(S::CUBLAS, key.0, out_dim, in_dim)?,
                )?;
                st.algos.insert(key, a);
                a
            }
        };

        let (x_ptr, _x_sync) = x.device_ptr(stream);
        let (w_ptr, _w_sync) = w.device_ptr(stream);
        let (ws_ptr, _ws_sync) = st.workspace.device_ptr_mut(stream);
        let (o_ptr, _o_sync) = out.device_ptr_mut(stream);
        let ops = Operands {
            w: w_ptr,
            x: x_ptr,
            out: o_ptr,
            workspace: ws_ptr,
        };
        // SAFETY: w is [o, i], x [rows, i] and out [rows, o], lengths checked by the caller,
        // exactly what `p` describes; the workspace is ours; all on our one stream.
        let run = |algo: &sys::cublasLtMatmulAlgo_t| unsafe {
            matmul(&st.handle, &desc, &p, algo, ops, stream)
        };
        match run(&algo) {
            Ok(()) => Ok(()),
            Err(CublasError(
                sys::cublasStatus_t::CUBLAS_STATUS_NOT_SUPPORTED
                | sys::cublasStatus_t::CUBLAS_STATUS_INVALID_VALUE,
            )) => {
                // The bucket's algorithm does not take this exact shape: ask for one that does,
                // once.
                let exact = heuristic(&st.handle, &desc, &p)?;
                run(&exact).map_err(|e| p.failed("GEMM", e))?;
                st.exact.insert(exact_key, exact);
                Ok(())
            }
            Err(e) => Err(p.failed("GEMM", e)),
        }
    }

    /// For every key, times up to `max_candidates` of the heuristic's candidates on the device
    /// (one warm-up run, then `reps` runs between two events) at the bucket's row count, and
    /// caches the fastest under that key, replacing what was there. A candidate that cuBLASLt
    /// marks unusable, that wants more workspace than ours, or that refuses to run is skipped;
    /// a key none of whose candidates ran is left to the forward's own heuristic. Only real
    /// CUDA errors are errors. The scratch buffers are freed before it returns.
    pub fn tune(&self, keys: &[Key], max_candidates: usize, reps: usize) -> Result<Vec<KeyTiming>> {
        if keys.is_empty() || max_candidates == 0 {
            return Ok(Vec::new());
        }
        let reps = reps.max(1);
        let mut guard = self.lock()?;
        let State {
            handle,
            workspace,
            algos,
            exact,
        } = &mut *guard;
        // Exact-shape answers were fallbacks from the buckets' old algorithms: ask again.
        exact.clear();
        let stream = &self.stream;
        let ctx = stream.context();
        ctx.bind_to_thread()?;

        let l2 = ctx.attribute(drv_sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE)?;
        let mut scratch = Scratch::<S>::new(stream, keys, usize::try_from(l2).unwrap_or(0))?;
        let (x_ptr, _x_sync) = scratch.x.device_ptr(stream);
        let (w_ptr, _w_sync) = scratch.w.device_ptr(stream);
        let (b_ptr, _b_sync) = scratch.bias.device_ptr(stream);
        let (o_ptr, _o_sync) = scratch.out.device_ptr_mut(stream);
        let (ws_ptr, _ws_sync) = workspace.device_ptr_mut(stream);
        let timing = Some(drv_sys::CUevent_flags::CU_EVENT_DEFAULT);
        let mut clock = Clock {
            stream,
            start: ctx.new_event(timing)?,
            stop: ctx.new_event(timing)?,
            runs: 0,
        };

        let mut timings = Vec::with_capacity(keys.len());
        for &(rows, out_dim, in_dim) in keys {
            let desc = linear_desc(b_ptr)?;
            let p = Problem::new(S::CUBLAS, rows, out_dim, in_dim)?;
            let found = candidates(handle, &desc, &p, max_candidates)
                .map_err(|e| p.failed("algorithm search", e))?;
            let (stride, slots) = rotation(out_dim * in_dim, scratch.w.len());
            let mut trials = Vec::with_capacity(found.len());
            for h in &found {
                if h.state != sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS
                    || h.workspaceSize > WORKSPACE_BYTES
                {
                    trials.push(Trial::Unusable);
                    continue;
                }
                // Each run reads another copy of the weight, as a forward reads another
                // layer's: a weight left in L2 by the previous run would flatter the
                // memory-bound small buckets.
                let mut run = |n: u64| {
                    let ops = Operands {
                        w: w_ptr + 2 * stride as u64 * (n % slots as u64),
                        x: x_ptr,
                        out: o_ptr,
                        workspace: ws_ptr,
                    };
                    // SAFETY: the scratch holds x [rows, in] and out [rows, out] for the
                    // largest key, and `rotation` keeps every weight copy [out, in] inside
                    // scratch.w; the workspace is ours; all on our one stream.
                    unsafe { matmul(handle, &desc, &p, &h.algo, ops, stream) }
                };
                trials.push(clock.time(reps, &mut run).map_err(|e| match e {
                    TimeError::Cublas(e) => p.failed("GEMM", e),
                    TimeError::Other(e) => e,
                })?);
            }
            let choice = pick(&trials);
            if let Some(c) = choice {
                algos.insert((rows, out_dim, in_dim), found[c.best].algo);
            }
            timings.push(KeyTiming::new((rows, out_dim, in_dim), &trials, choice));
        }
        drop((_x_sync, _w_sync, _b_sync, _o_sync));
        drop(scratch);
        // cudarc frees stream-ordered where the driver can, into the default pool, which
        // releases its free blocks at the next synchronisation: after it, tuning holds nothing.
        stream.synchronize()?;
        Ok(timings)
    }
}

/// The tuning scratch, sized for the largest key: input, output and bias, and a weight region
/// of at least twice the L2 cache that the runs rotate through.
struct Scratch<S: Storage> {
    x: CudaSlice<S>,
    w: CudaSlice<S>,
    bias: CudaSlice<S>,
    out: CudaSlice<S>,
}

/// Element counts of the tuning scratch buffers.
#[derive(Debug, PartialEq)]
struct ScratchSizes {
    x: usize,
    w: usize,
    bias: usize,
    out: usize,
}

/// x and out for the largest row count times the widest side, and a weight region of twice L2
/// (`l2_bytes` f16 elements) or two copies of the largest weight, whichever is more, so that
/// consecutive runs never read the same copy.
fn scratch_sizes(keys: &[Key], l2_bytes: usize) -> Result<ScratchSizes> {
    let too_big = || {
        Error::Internal(format!(
            "GEMM tuning scratch for {} keys up to {:?} overflows usize",
            keys.len(),
            keys.iter().max().copied().unwrap_or_default()
        ))
    };
    let (mut x, mut out, mut w, mut bias) = (0usize, 0usize, 0usize, 0usize);
    for &(rows, o, i) in keys {
        x = x.max(rows.checked_mul(i).ok_or_else(too_big)?);
        out = out.max(rows.checked_mul(o).ok_or_else(too_big)?);
        w = w.max(o.checked_mul(i).ok_or_else(too_big)?);
        bias = bias.max(o);
    }
    let one_weight = rotation(w, usize::MAX).0;
    Ok(ScratchSizes {
        x: x.max(1),
        w: l2_bytes.max(one_weight.checked_mul(2).ok_or_else(too_big)?),
        bias: bias.max(1),
        out: out.max(1),
    })
}

impl<S: Storage> Scratch<S> {
    fn new(stream: &Arc<CudaStream>, keys: &[Key], l2_bytes: usize) -> Result<Self> {
        let n = scratch_sizes(keys, l2_bytes)?;
        let mut s = Scratch {
            x: stream.alloc_zeros::<S>(n.x)?,
            w: stream.alloc_zeros::<S>(n.w)?,
            bias: stream.alloc_zeros::<S>(n.bias)?,
            out: stream.alloc_zeros::<S>(n.out)?,
        };
        // Inputs ±[0.25, 0.5), weights ±[1/64, 1/32): outputs stay well inside fp16 for any
        // width a model has, and no operand is the zeros a kernel could be flattered by.
        fill_noise(stream, &mut s.x, 13, 1)?;
        fill_noise(stream, &mut s.w, 9, 2)?;
        fill_noise(stream, &mut s.bias, 13, 3)?;
        Ok(s)
    }
}

/// Fills `dst` with `noise_bits` values, from one host block repeated: the values only have
/// to be nonzero and varied, and a block keeps host time and memory small for big buffers.
fn fill_noise<S: Storage>(
    stream: &Arc<CudaStream>,
    dst: &mut CudaSlice<S>,
    exponent: u16,
    seed: u64,
) -> Result<()> {
    const BLOCK: usize = 1 << 20;
    let mut state = seed;
    // fp16 values, rounded to the storage (bf16 keeps 8 of their 11 bits: as varied, for timing).
    let block: Vec<S> = (0..BLOCK.min(dst.len()))
        .map(|_| S::from_f32(f16::from_bits(noise_bits(splitmix64(&mut state), exponent)).to_f32()))
        .collect();
    let mut at = 0;
    while at < dst.len() {
        let n = block.len().min(dst.len() - at);
        stream.memcpy_htod(&block[..n], &mut dst.slice_mut(at..at + n))?;
        at += n;
    }
    Ok(())
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// fp16 bits of ±[2^(exponent-15), 2^(exponent-14)): random sign and mantissa, fixed exponent.
fn noise_bits(random: u64, exponent: u16) -> u16 {
    (random as u16 & 0x83ff) | ((exponent & 0x1f) << 10)
}

/// Weight copies for rotation: (stride, count) for weights of `len` elements in a region of
/// `region` elements. The stride is a multiple of 128 elements, so every copy is 256-byte
/// aligned, which cuBLASLt's heuristic assumes by default; at least one copy.
fn rotation(len: usize, region: usize) -> (usize, usize) {
    let stride = len.div_ceil(128).saturating_mul(128).max(128);
    (stride, (region / stride).max(1))
}

/// Runs a candidate and times it with two events on the stream.
struct Clock<'a> {
    stream: &'a CudaStream,
    start: CudaEvent,
    stop: CudaEvent,
    /// Runs so far: which weight copy the next run reads.
    runs: u64,
}

enum TimeError {
    Cublas(CublasError),
    Other(Error),
}

impl From<cudarc::driver::DriverError> for TimeError {
    fn from(e: cudarc::driver::DriverError) -> Self {
        TimeError::Other(e.into())
    }
}

impl Clock<'_> {
    /// One warm-up run (it absorbs lazy module loading), then the mean of `reps` runs.
    fn time(
        &mut self,
        reps: usize,
        run: &mut dyn FnMut(u64) -> Result<(), CublasError>,
    ) -> Result<Trial, TimeError> {
        let mut go = |clock: &mut Self, n: usize| -> Result<bool, TimeError> {
            for _ in 0..n {
                let r = run(clock.runs);
                clock.runs += 1;
                match r {
                    Ok(()) => {}
                    Err(CublasError(s)) if refused(s) => return Ok(false),
                    Err(e) => return Err(TimeError::Cublas(e)),
                }
            }
            Ok(true)
        };
        if !go(self, 1)? {
            return Ok(Trial::Refused);
        }
        self.start.record(self.stream)?;
        if !go(self, reps)? {
            return Ok(Trial::Refused);
        }
        self.stop.record(self.stream)?;
        let ms = self.start.elapsed_ms(&self.stop)?;
        Ok(Trial::Timed(ms / reps as f32))
    }
}

/// Whether a status from running one candidate says only that this candidate cannot do this
/// problem, so tuning skips it. Anything else (allocation, initialisation, internal errors)
/// is the library or the device failing, and no other candidate would fare better. A launch
/// that broke the context also shows up as a driver error at the next event.
fn refused(status: sys::cublasStatus_t) -> bool {
    use sys::cublasStatus_t::*;
    matches!(
        status,
        CUBLAS_STATUS_NOT_SUPPORTED
            | CUBLAS_STATUS_INVALID_VALUE
            | CUBLAS_STATUS_ARCH_MISMATCH
            | CUBLAS_STATUS_EXECUTION_FAILED
    )
}

/// How one of the heuristic's candidates fared.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Trial {
    /// Ran: mean milliseconds per run.
    Timed(f32),
    /// The heuristic marked it unusable, or it wants more workspace than ours.
    Unusable,
    /// cuBLASLt refused to run it on this problem.
    Refused,
}

/// The candidate the untuned path would have used and the fastest, by position in the
/// heuristic's order, with their times.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Choice {
    first: usize,
    first_ms: f32,
    best: usize,
    best_ms: f32,
}

/// How much faster than the baseline a candidate must be to replace it. A few runs of a few
/// microseconds timed with events are noisy by about a percent, and the smallest buckets can be
/// bound by the host's launch rate rather than the GPU, which makes every candidate look alike;
/// a switch on a smaller difference would trade the heuristic's informed choice for a coin toss.
const MARGIN: f32 = 0.03;

/// The baseline is the first candidate that ran: the heuristic's own choice whenever it runs
/// (when it does not, the untuned forward had no working algorithm and this is the nearest
/// stand-in). The winner is the fastest, if it beats the baseline by more than MARGIN, else the
/// baseline; among equals the earlier, trusting the heuristic's order over noise. The baseline
/// is among those compared, so the winner is never slower than it.
fn pick(trials: &[Trial]) -> Option<Choice> {
    let mut choice: Option<Choice> = None;
    for (i, t) in trials.iter().enumerate() {
        let Trial::Timed(ms) = *t else { continue };
        if !(ms.is_finite() && ms >= 0.0) {
            continue;
        }
        match &mut choice {
            None => {
                choice = Some(Choice {
                    first: i,
                    first_ms: ms,
                    best: i,
                    best_ms: ms,
                })
            }
            Some(c) if ms < c.best_ms => {
                c.best = i;
                c.best_ms = ms;
            }
            Some(_) => {}
        }
    }
    choice.map(|c| {
        if c.best_ms < c.first_ms * (1.0 - MARGIN) {
            c
        } else {
            Choice {
                best: c.first,
                best_ms: c.first_ms,
                ..c
            }
        }
    })
}

/// What tuning found for one cache key.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KeyTiming {
    /// The row bucket: the row count that was timed.
    pub rows: usize,
    pub out_dim: usize,
    pub in_dim: usize,
    /// Candidates the heuristic offered, and how many of them ran.
    pub offered: usize,
    pub timed: usize,
    /// Position of the winner in the heuristic's order (0: the heuristic's own choice won);
    /// None when no candidate ran and the key was left to the forward's heuristic.
    pub chosen: Option<usize>,
    /// Mean milliseconds per run of the baseline (see `pick`) and of the winner; 0 if none ran.
    pub first_ms: f64,
    pub chosen_ms: f64,
}

impl KeyTiming {
    fn new((rows, out_dim, in_dim): Key, trials: &[Trial], choice: Option<Choice>) -> Self {
        KeyTiming {
            rows,
            out_dim,
            in_dim,
            offered: trials.len(),
            timed: trials
                .iter()
                .filter(|t| matches!(t, Trial::Timed(_)))
                .count(),
            chosen: choice.map(|c| c.best),
            first_ms: choice.map_or(0.0, |c| f64::from(c.first_ms)),
            chosen_ms: choice.map_or(0.0, |c| f64::from(c.best_ms)),
        }
    }
}

/// # Safety
/// `T` must be the type cuBLASLt documents for `attr`.
unsafe fn set_desc<T>(
    desc: &Desc,
    attr: sys::cublasLtMatmulDescAttributes_t,
    value: &T,
) -> Result<(), CublasError> {
    lt::set_matmul_desc_attribute(
        desc.0,
        attr,
        value as *const T as *const c_void,
        std::mem::size_of::<T>(),
    )
}

/// The descriptor every linear uses: fp32 compute and scale, A transposed, bias in the
/// epilogue. The heuristic sees the bias pointer, so tuning builds it the same way.
fn linear_desc(bias: drv_sys::CUdeviceptr) -> Result<Desc> {
    let desc = Desc(lt::create_matmul_desc(
        sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
        sys::cudaDataType::CUDA_R_32F,
    )?);
    let trans_a = cudarc::cublas::sys::cublasOperation_t::CUBLAS_OP_T;
    let epilogue = sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BIAS;
    // SAFETY: each attribute is given a pointer to a value of the type cuBLASLt documents
    // for it, with its exact size; the descriptor is alive.
    unsafe {
        set_desc(
            &desc,
            sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA,
            &trans_a,
        )?;
        set_desc(
            &desc,
            sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_EPILOGUE,
            &epilogue,
        )?;
        set_desc(
            &desc,
            sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_POINTER,
            &bias,
        )?;
    }
    Ok(desc)
}

/// `D = op(A) · B + bias` for `p`, with C = D and beta = 0.
///
/// # Safety
/// The operands hold at least what `p` describes (w [out, in], x [rows, in], out [rows, out]),
/// the workspace WORKSPACE_BYTES; they, `desc` and `p` are alive, and in `stream`'s context.
unsafe fn matmul(
    handle: &Handle,
    desc: &Desc,
    p: &Problem,
    algo: &sys::cublasLtMatmulAlgo_t,
    ops: Operands,
    stream: &CudaStream,
) -> Result<(), CublasError> {
    let alpha = 1.0f32;
    let beta = 0.0f32;
    lt::matmul(
        handle.0,
        desc.0,
        &alpha as *const f32 as *const c_void,
        &beta as *const f32 as *const c_void,
        ops.w as *const c_void,
        p.a.0,
        ops.x as *const c_void,
        p.b.0,
        ops.out as *const c_void,
        p.d.0,
        ops.out as *mut c_void,
        p.d.0,
        algo,
        ops.workspace as *mut c_void,
        WORKSPACE_BYTES,
        stream.cu_stream() as sys::cudaStream_t,
    )
}

/// The search preference every query uses: our workspace, and split-K partial sums reduced
/// only in the compute type (fp32): the in-place and output-type schemes would add them up in
/// fp16, losing the fp32 accumulation.
fn preference() -> Result<Pref, CublasError> {
    let pref = Pref(lt::create_matmul_pref()?);
    let ws = WORKSPACE_BYTES as u64;
    let schemes = sys::cublasLtReductionScheme_t::CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE as u32;
    // SAFETY: MAX_WORKSPACE_BYTES takes a u64 and REDUCTION_SCHEME_MASK a u32; the
    // preference is alive.
    unsafe {
        lt::set_matmul_pref_attribute(
            pref.0,
            sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
            &ws as *const u64 as *const c_void,
            std::mem::size_of::<u64>(),
        )?;
        lt::set_matmul_pref_attribute(
            pref.0,
            sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK,
            &schemes as *const u32 as *const c_void,
            std::mem::size_of::<u32>(),
        )?;
    }
    Ok(pref)
}

/// Up to `max` of the heuristic's candidates for `p`, in its order (best estimate first);
/// empty when it has none.
fn candidates(
    handle: &Handle,
    desc: &Desc,
    p: &Problem,
    max: usize,
) -> Result<Vec<sys::cublasLtMatmulHeuristicResult_t>, CublasError> {
    let pref = preference()?;
    let requested = c_int::try_from(max).unwrap_or(c_int::MAX);
    let empty = sys::cublasLtMatmulHeuristicResult_t {
        algo: sys::cublasLtMatmulAlgo_t { data: [0; 8] },
        workspaceSize: 0,
        state: sys::cublasStatus_t::CUBLAS_STATUS_NOT_SUPPORTED,
        wavesCount: 0.0,
        reserved: [0; 4],
    };
    let mut found = vec![empty; requested.max(0) as usize];
    let mut count: c_int = 0;
    // SAFETY: `found` has room for `requested` results; every descriptor is alive; C shares
    // D's layout.
    let status = unsafe {
        sys::cublasLtMatmulAlgoGetHeuristic(
            handle.0,
            desc.0,
            p.a.0,
            p.b.0,
            p.d.0,
            p.d.0,
            pref.0,
            requested,
            found.as_mut_ptr(),
            &mut count,
        )
    };
    match status.result() {
        Ok(()) => {}
        Err(CublasError(sys::cublasStatus_t::CUBLAS_STATUS_NOT_SUPPORTED)) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    }
    found.truncate(count.clamp(0, requested) as usize);
    Ok(found)
}

/// The heuristic's first choice for this problem within our workspace.
fn heuristic(handle: &Handle, desc: &Desc, p: &Problem) -> Result<sys::cublasLtMatmulAlgo_t> {
    let none = |why: String| {
        let (r, o, i) = (p.rows, p.out_dim, p.in_dim);
        Error::Cuda(format!(
            "cuBLASLt found no fp16 GEMM algorithm for {r}x{i} · {i}x{o}: {why}"
        ))
    };
    let found = candidates(handle, desc, p, 1).map_err(|e| none(e.to_string()))?;
    match found.first() {
        Some(h) if h.state == sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS => Ok(h.algo),
        Some(h) => Err(none(format!("{:?}", h.state))),
        None => Err(none("no candidate".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pick_takes_the_fastest_that_ran_and_keeps_the_first_as_baseline() {
        use Trial::*;
        let c = pick(&[
            Timed(2.0),
            Refused,
            Timed(1.5),
            Unusable,
            Timed(1.5),
            Timed(3.0),
        ]);
        assert_eq!(
            c,
            Some(Choice {
                first: 0,
                first_ms: 2.0,
                best: 2,
                best_ms: 1.5
            })
        );
        // The heuristic's own choice failed: the first that ran stands in for it.
        let c = pick(&[Refused, Unusable, Timed(4.0), Timed(5.0)]).unwrap();
        assert_eq!((c.first, c.best, c.best_ms), (2, 2, 4.0));
        // A tie keeps the heuristic's order.
        let c = pick(&[Timed(1.0), Timed(1.0)]).unwrap();
        assert_eq!(c.best, 0);
        // Nothing ran, or nothing was offered.
        assert_eq!(pick(&[Refused, Unusable]), None);
        assert_eq!(pick(&[]), None);
        // Within the margin the heuristic's choice stays.
        let c = pick(&[Timed(1.0), Timed(0.98), Timed(0.975)]).unwrap();
        assert_eq!((c.best, c.best_ms), (0, 1.0));
        let c = pick(&[Timed(1.0), Timed(0.98), Timed(0.96)]).unwrap();
        assert_eq!((c.best, c.best_ms), (2, 0.96));
        // A broken timing is not a winner.
        let c = pick(&[
            Timed(f32::NAN),
            Timed(-1.0),
            Timed(2.0),
            Timed(f32::INFINITY),
        ]);
        assert_eq!(c.map(|c| (c.first, c.best)), Some((2, 2)));
    }

    #[test]
    fn key_timing_counts_what_ran_and_reports_both_times() {
        use Trial::*;
        let trials = [Timed(2.0), Refused, Timed(0.5), Unusable];
        let k = KeyTiming::new((128, 96, 32), &trials, pick(&trials));
        assert_eq!((k.rows, k.out_dim, k.in_dim), (128, 96, 32));
        assert_eq!((k.offered, k.timed, k.chosen), (4, 2, Some(2)));
        assert_eq!((k.first_ms, k.chosen_ms), (2.0, 0.5));
        let none = KeyTiming::new((64, 8, 8), &[Refused], None);
        assert_eq!((none.timed, none.chosen, none.chosen_ms), (0, None, 0.0));
    }

    #[test]
    fn only_a_candidate_specific_status_is_skipped() {
        use sys::cublasStatus_t::*;
        for s in [
            CUBLAS_STATUS_NOT_SUPPORTED,
            CUBLAS_STATUS_INVALID_VALUE,
            CUBLAS_STATUS_ARCH_MISMATCH,
            CUBLAS_STATUS_EXECUTION_FAILED,
        ] {
            assert!(refused(s), "{s:?}");
        }
        for s in [
            CUBLAS_STATUS_NOT_INITIALIZED,
            CUBLAS_STATUS_ALLOC_FAILED,
            CUBLAS_STATUS_INTERNAL_ERROR,
            CUBLAS_STATUS_MAPPING_ERROR,
            CUBLAS_STATUS_LICENSE_ERROR,
        ] {
            assert!(!refused(s), "{s:?}");
        }
    }

    #[test]
    fn noise_is_small_nonzero_and_of_both_signs() {
        let mut state = 7;
        let (mut pos, mut neg) = (0, 0);
        for _ in 0..10_000 {
            let v = f16::from_bits(noise_bits(splitmix64(&mut state), 9)).to_f32();
            assert!((1.0 / 64.0..1.0 / 32.0).contains(&v.abs()), "{v}");
            if v > 0.0 {
                pos += 1
            } else {
                neg += 1
            }
        }
        assert!(pos > 4_000 && neg > 4_000, "{pos} positive, {neg} negative");
        let v = f16::from_bits(noise_bits(u64::MAX, 13)).to_f32();
        assert!((0.25..0.5).contains(&v.abs()), "{v}");
    }

    #[test]
    fn weight_copies_are_aligned_and_stay_inside_the_region() {
        for (len, region) in [
            (100 * 48, 1 << 20),
            (4096 * 1024, 50 << 20),
            (1, 1),
            (129, 200),
        ] {
            let (stride, slots) = rotation(len, region);
            assert_eq!(stride % 128, 0);
            assert!(stride >= len && slots >= 1);
            if stride <= region {
                assert!(stride * slots <= region, "{len} in {region}");
            }
        }
        // Twice L2 (50 MB on an H100, in f16 elements) holds 12 copies of bge-large's FFN weight.
        assert_eq!(rotation(4096 * 1024, 50 << 20).1, 12);
    }

    #[test]
    fn scratch_is_sized_for_the_largest_key_and_twice_l2() {
        // bge-large's top bucket on an H100 (50 MiB of L2).
        let keys = [
            (16384, 3072, 1024),
            (16384, 1024, 1024),
            (16384, 4096, 1024),
            (16384, 1024, 4096),
            (64, 1024, 4096),
        ];
        let n = scratch_sizes(&keys, 50 << 20).unwrap();
        let expected = ScratchSizes {
            x: 16384 * 4096,
            w: 50 << 20,
            bias: 4096,
            out: 16384 * 4096,
        };
        assert_eq!(n, expected);
        // 128 + 100 + 128 MiB of fp16.
        assert_eq!((2 * (n.x + n.w + n.out)) >> 20, 356);
        // A small L2: two copies of the largest weight, 256-byte aligned.
        let n = scratch_sizes(&[(64, 100, 48)], 0).unwrap();
        assert_eq!((n.x, n.w, n.bias, n.out), (64 * 48, 2 * 4864, 100, 6400));
        let err = scratch_sizes(&[(usize::MAX, 2, 2)], 0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("overflows"), "{err}");
    }

    #[test]
    fn buckets_are_powers_of_two_from_64() {
        assert_eq!(bucket(0), 64);
        assert_eq!(bucket(64), 64);
        assert_eq!(bucket(65), 128);
        assert_eq!(bucket(16384), 16384);
    }
}
