//! The model families whose forward lives in its own file (BERT and RoBERTa: src/model.rs):
//! ModernBERT, the decoder LLM rerankers on Qwen, and BLIP's image-text matching model.

pub mod blip;
pub mod modernbert;
pub mod qwen;
