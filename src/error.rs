//! One error type for the whole crate. Every variant names the thing that was wrong: the file,
//! the field, the tensor, the line or the limit, so that the CLI can print it as one line.

use std::path::{Path, PathBuf};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    /// A model file (config.json, tokenizer.json, a safetensors file) was refused.
    #[error("{}: {msg}", file.display())]
    Model { file: PathBuf, msg: String },

    /// Bad input from the caller: options, documents, requests.
    #[error("{0}")]
    Input(String),

    /// `--device cuda` in a build without the `cuda` feature.
    #[error("CUDA was not compiled into this build of crossrank (rebuild with `cargo build --release --features cuda`); use --device cpu")]
    CudaNotCompiled,

    /// The CUDA device could not be used (no driver, no device, too old, out of memory...).
    #[error("cuda: {0}")]
    Cuda(String),

    /// A broken internal invariant: a bug, reported instead of panicking.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    pub fn model(file: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Error::Model {
            file: file.as_ref().to_path_buf(),
            msg: msg.into(),
        }
    }

    pub fn input(msg: impl Into<String>) -> Self {
        Error::Input(msg.into())
    }
}

#[cfg(feature = "cuda")]
impl From<cudarc::driver::DriverError> for Error {
    fn from(e: cudarc::driver::DriverError) -> Self {
        Error::Cuda(format!("driver: {e}"))
    }
}

#[cfg(feature = "cuda")]
impl From<cudarc::cublaslt::result::CublasError> for Error {
    fn from(e: cudarc::cublaslt::result::CublasError) -> Self {
        Error::Cuda(format!("cuBLASLt: {e}"))
    }
}
