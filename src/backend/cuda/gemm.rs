//! The linear layers through cuBLASLt: `out[rows, o] = x[rows, i] · Wᵀ + b`, fp16 in and out,
//! fp32 compute, the bias added in the GEMM epilogue.
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

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex};

use cudarc::cublaslt::result as lt;
use cudarc::cublaslt::result::CublasError;
use cudarc::cublaslt::sys;
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut};
use half::f16;

use crate::error::{Error, Result};

/// cuBLASLt's recommended workspace for Hopper (smaller GPUs are fine with it too).
pub const WORKSPACE_BYTES: usize = 32 << 20;

/// The smallest row bucket: below it every row count shares one algorithm.
const MIN_BUCKET: usize = 64;

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

fn layout(rows: usize, cols: usize, ld: usize) -> Result<Layout> {
    Ok(Layout(lt::create_matrix_layout(
        sys::cudaDataType::CUDA_R_16F,
        rows as u64,
        cols as u64,
        ld as i64,
    )?))
}

/// (row bucket, out features, in features)
type Key = (usize, usize, usize);

struct State {
    handle: Handle,
    workspace: CudaSlice<u8>,
    algos: HashMap<Key, sys::cublasLtMatmulAlgo_t>,
}

// SAFETY: `cublasLtMatmulAlgo_t` is plain data (an opaque array of u64); the handle is covered
// above; the workspace is a CudaSlice, which is Send.
unsafe impl Send for State {}

pub struct Gemm {
    state: Mutex<State>,
    stream: Arc<CudaStream>,
}

/// The row bucket of a row count: the next power of two, at least MIN_BUCKET.
pub fn bucket(rows: usize) -> usize {
    rows.max(MIN_BUCKET).next_power_of_two()
}

impl Gemm {
    pub fn new(stream: Arc<CudaStream>) -> Result<Self> {
        let handle = Handle(lt::create_handle()?);
        let workspace = stream.alloc_zeros::<u8>(WORKSPACE_BYTES)?;
        Ok(Gemm {
            state: Mutex::new(State {
                handle,
                workspace,
                algos: HashMap::new(),
            }),
            stream,
        })
    }

    /// Number of algorithms cached so far (one per (bucket, o, i) seen).
    pub fn cached_algorithms(&self) -> usize {
        self.state.lock().map(|s| s.algos.len()).unwrap_or(0)
    }

    /// `out[rows, o] = x[rows, i] · w[o, i]ᵀ + b[o]`. The caller has checked the lengths.
    #[allow(clippy::too_many_arguments)]
    pub fn linear(
        &self,
        x: &CudaSlice<f16>,
        rows: usize,
        w: &CudaSlice<f16>,
        b: &CudaSlice<f16>,
        out_dim: usize,
        in_dim: usize,
        out: &mut CudaSlice<f16>,
    ) -> Result<()> {
        let mut guard = self
            .state
            .lock()
            .map_err(|_| Error::Internal("a previous GEMM panicked".into()))?;
        let st = &mut *guard;
        let stream = &self.stream;
        stream.context().bind_to_thread()?;

        let desc = Desc(lt::create_matmul_desc(
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            sys::cudaDataType::CUDA_R_32F,
        )?);
        let (b_ptr, _b_sync) = b.device_ptr(stream);
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
                &b_ptr,
            )?;
        }
        let a_l = layout(in_dim, out_dim, in_dim)?;
        let b_l = layout(in_dim, rows, in_dim)?;
        let d_l = layout(out_dim, rows, out_dim)?;

        let key = (bucket(rows), out_dim, in_dim);
        let algo = match st.algos.get(&key) {
            Some(a) => *a,
            None => {
                let bb = layout(in_dim, key.0, in_dim)?;
                let bd = layout(out_dim, key.0, out_dim)?;
                let a = heuristic(&st.handle, &desc, &a_l, &bb, &bd)?;
                st.algos.insert(key, a);
                a
            }
        };

        let (x_ptr, _x_sync) = x.device_ptr(stream);
        let (w_ptr, _w_sync) = w.device_ptr(stream);
        let (ws_ptr, _ws_sync) = st.workspace.device_ptr_mut(stream);
        let (o_ptr, _o_sync) = out.device_ptr_mut(stream);
        let alpha = 1.0f32;
        let beta = 0.0f32;
        let run = |algo: &sys::cublasLtMatmulAlgo_t| -> Result<(), CublasError> {
            // SAFETY: A = w ([o, i] row-major, read transposed), B = x ([rows, i]), D = out
            // ([rows, o]): the layouts above describe exactly these buffers, whose lengths the
            // caller checked; C = D with beta = 0; the workspace holds WORKSPACE_BYTES; all on
            // our one stream.
            unsafe {
                lt::matmul(
                    st.handle.0,
                    desc.0,
                    &alpha as *const f32 as *const c_void,
                    &beta as *const f32 as *const c_void,
                    w_ptr as *const c_void,
                    a_l.0,
                    x_ptr as *const c_void,
                    b_l.0,
                    o_ptr as *const c_void,
                    d_l.0,
                    o_ptr as *mut c_void,
                    d_l.0,
                    algo,
                    ws_ptr as *mut c_void,
                    WORKSPACE_BYTES,
                    stream.cu_stream() as sys::cudaStream_t,
                )
            }
        };
        match run(&algo) {
            Ok(()) => Ok(()),
            Err(CublasError(
                sys::cublasStatus_t::CUBLAS_STATUS_NOT_SUPPORTED
                | sys::cublasStatus_t::CUBLAS_STATUS_INVALID_VALUE,
            )) => {
                // The bucket's algorithm does not take this exact shape: ask for one that does.
                let exact = heuristic(&st.handle, &desc, &a_l, &b_l, &d_l)?;
                run(&exact).map_err(|e| {
                    Error::Cuda(format!(
                        "cuBLASLt: {rows}x{in_dim} · {in_dim}x{out_dim} GEMM failed: {e}"
                    ))
                })
            }
            Err(e) => Err(Error::Cuda(format!(
                "cuBLASLt: {rows}x{in_dim} · {in_dim}x{out_dim} GEMM failed: {e}"
            ))),
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

/// The heuristic's first choice for this problem within our workspace.
fn heuristic(
    handle: &Handle,
    desc: &Desc,
    a: &Layout,
    b: &Layout,
    d: &Layout,
) -> Result<sys::cublasLtMatmulAlgo_t> {
    let pref = Pref(lt::create_matmul_pref()?);
    let ws = WORKSPACE_BYTES as u64;
    // Split-K partial sums may only be reduced in the compute type (fp32): the in-place and
    // output-type schemes would add them up in fp16, losing the fp32 accumulation.
    let schemes = sys::cublasLtReductionScheme_t::CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE as u32;
    // SAFETY: MAX_WORKSPACE_BYTES takes a u64 and REDUCTION_SCHEME_MASK a u32; every
    // descriptor is alive; C shares D's layout.
    let found = unsafe {
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
        lt::get_matmul_algo_heuristic(handle.0, desc.0, a.0, b.0, d.0, d.0, pref.0)
    };
    match found {
        Ok(h) => Ok(h.algo),
        Err(e) => Err(Error::Cuda(format!(
            "cuBLASLt found no fp16 GEMM algorithm for this shape: {e}"
        ))),
    }
}
