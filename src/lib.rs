//! crossrank: cross-encoder reranking, from text to scores.
//!
//! The data goes one way: text → tokens ([`tokenize`]) → packed batch ([`batch`]) → forward
//! ([`model`] over a [`backend`]) → scores ([`engine`]); an image-text model's images go
//! bytes → pixel values ([`pixels`]) beside the tokens.

pub mod audit;
pub mod backend;
pub mod batch;
pub mod bench;
pub mod config;
pub mod docs;
pub mod engine;
pub mod error;
pub mod llm_template;
pub mod model;
pub mod models;
pub mod pixels;
pub mod serve;
pub mod tokenize;
pub mod tokenizer_class;
pub mod unigram;
pub mod weights;
pub mod wordpiece;

pub use engine::{CudaOptions, Device, Group, LoadOptions, Options, Ranked, Reranker};
pub use error::{Error, Result};
pub use tokenize::TruncationSide;
