//! The model families whose forward lives in its own file (BERT and RoBERTa: src/model.rs).

pub mod modernbert;
