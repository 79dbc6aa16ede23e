//! The 16-bit storage types the CUDA backend runs in: fp16 for the encoder families, bf16 for
//! the decoder LLMs (whose activations outgrow fp16's ±65504). Every kernel is instantiated for
//! both (`{op}_f16`, `{op}_bf16`); the backend, its launchers and its GEMMs are generic over
//! this trait, so one code path serves both.

use cudarc::cublaslt::sys::cudaDataType;
use cudarc::driver::{DeviceRepr, ValidAsZeroBits};
use half::{bf16, f16};

pub trait Storage:
    DeviceRepr + ValidAsZeroBits + Copy + Default + Unpin + Send + Sync + std::fmt::Debug + 'static
{
    /// The suffix of the kernels' exported names (`{op}_{DTYPE}`).
    const DTYPE: &'static str;
    /// The name people know it by, for messages.
    const NAME: &'static str;
    /// The largest finite value.
    const MAX: f32;
    /// cuBLASLt's name for it.
    const CUBLAS: cudaDataType;
    /// Rounds to nearest even.
    fn from_f32(v: f32) -> Self;
    fn to_f32(self) -> f32;
    fn from_bits(bits: u16) -> Self;
}

impl Storage for f16 {
    const DTYPE: &'static str = "f16";
    const NAME: &'static str = "fp16";
    const MAX: f32 = 65504.0;
    const CUBLAS: cudaDataType = cudaDataType::CUDA_R_16F;
    fn from_f32(v: f32) -> Self {
        f16::from_f32(v)
    }
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    fn from_bits(bits: u16) -> Self {
        f16::from_bits(bits)
    }
}

impl Storage for bf16 {
    const DTYPE: &'static str = "bf16";
    const NAME: &'static str = "bf16";
    const MAX: f32 = 3.389_531_4e38;
    const CUBLAS: cudaDataType = cudaDataType::CUDA_R_16BF;
    fn from_f32(v: f32) -> Self {
        bf16::from_f32(v)
    }
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    fn from_bits(bits: u16) -> Self {
        bf16::from_bits(bits)
    }
}

/// `{op}_{dtype}`: the name kernels/*.cu export for an op in storage `S`.
pub fn kernel_name<S: Storage>(op: &str) -> String {
    format!("{op}_{}", S::DTYPE)
}
