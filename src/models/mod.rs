//! The model families whose forward lives in its own file (BERT and RoBERTa: src/model.rs):
//! ModernBERT, and the decoder LLM rerankers on Qwen.

pub mod modernbert;
pub mod qwen;
