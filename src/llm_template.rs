//! The prompt templates of decoder LLM rerankers, and (query, document) encoding through them.
//!
//! An LLM reranker scores a pair from two token logits at the last position of a prompt built
//! around it: `z_yes - z_no` (score = sigmoid, P(yes) of the two-way softmax). The prompt is a
//! fixed prefix, the pair's text, and a fixed suffix; prefix and suffix are tokenized on their
//! own, part by part (no special tokens added), and never cut. The pair's text, as each
//! model's reference code lays it out (`Layout`):
//! - Qwen3-Reranker: one middle text holding instruction, query and document, tokenized as one
//!   and cut from its end to `max_length - len(prefix) - len(suffix)` tokens;
//! - mxbai-rerank-v2: the query part and the document part tokenized apart, the query cut to
//!   3/4 of the room, then separator + document cut to what is left.

use tokenizers::Tokenizer;

use crate::error::{Error, Result};
use crate::tokenize::EncodedPair;

/// One reranking prompt format.
#[derive(Debug)]
pub struct Template {
    /// The name `--template` takes.
    pub name: &'static str,
    /// What it is for, for `info`.
    pub about: &'static str,
    /// Tokenized part by part, the ids concatenated.
    pub prefix: &'static [&'static str],
    pub suffix: &'static [&'static str],
    /// The instruction when the request gives none (mxbai has none: its query then reads
    /// without one).
    pub default_instruction: Option<&'static str>,
    pub layout: Layout,
    /// The tokens whose logits make the score: `z_yes - z_no`.
    pub yes: &'static str,
    pub no: &'static str,
}

/// How the pair's text sits between prefix and suffix.
#[derive(Debug)]
pub enum Layout {
    /// One text from (instruction, query, document), cut from its end.
    Middle(fn(&str, &str, &str) -> String),
    /// The query text (from instruction, query) and the document text tokenized apart: the
    /// query cut from its end to 3/4 of the room, then `sep` + document cut to the rest.
    QueryThenDocument {
        query: fn(Option<&str>, &str) -> String,
        document: fn(&str) -> String,
        sep: &'static str,
    },
}

fn qwen3_middle(instruction: &str, query: &str, doc: &str) -> String {
    format!("<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {doc}")
}

fn mxbai_query(instruction: Option<&str>, query: &str) -> String {
    match instruction {
        Some(i) => format!("instruction: {i}\nquery: {query}"),
        None => format!("query: {query}"),
    }
}

fn mxbai_document(doc: &str) -> String {
    format!("document: {doc}")
}

/// Qwen3-Reranker's, from its model card's reference code.
pub const QWEN3_RERANKER: Template = Template {
    name: "qwen3-reranker",
    about: "Qwen3-Reranker (model card): system judge prompt, <Instruct>/<Query>/<Document>, yes/no",
    prefix: &["<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct provided. Note that the answer can only be \"yes\" or \"no\".<|im_end|>\n<|im_start|>user\n"],
    suffix: &["<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"],
    default_instruction: Some(
        "Given a web search query, retrieve relevant passages that answer the query",
    ),
    layout: Layout::Middle(qwen3_middle),
    yes: "yes",
    no: "no",
};

/// mxbai-rerank-base/large-v2's, from mxbai_rerank/mxbai_rerank_v2.py in
/// github.com/mixedbread-ai/mxbai-rerank (8e709dc; PyPI mxbai-rerank 0.1.6): Qwen's chat
/// prefix, `query: ...` (with `instruction: ...` before it when given), `\n`, `document: ...`,
/// then `\n`, the task prompt and the chat suffix; labels `1` (relevant) and `0`.
pub const MXBAI_RERANK_V2: Template = Template {
    name: "mxbai-rerank-v2",
    about: "mxbai-rerank-v2 (mxbai_rerank_v2.py): query / document parts, task prompt, 1/0",
    prefix: &["<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n<|im_start|>user\n"],
    suffix: &[
        "\n",
        "You are a search relevance expert who evaluates how well documents match search queries. For each query-document pair, carefully analyze the semantic relationship between them, then provide your binary relevance judgment (0 for not relevant, 1 for relevant).\nRelevance:",
        "<|im_end|>\n<|im_start|>assistant\n",
    ],
    default_instruction: None,
    layout: Layout::QueryThenDocument {
        query: mxbai_query,
        document: mxbai_document,
        sep: "\n",
    },
    yes: "1",
    no: "0",
};

/// Every template crossrank knows.
pub const TEMPLATES: &[&Template] = &[&QWEN3_RERANKER, &MXBAI_RERANK_V2];

/// The template a causal-LM architecture is scored with by default.
pub fn default_for(architecture: &str) -> Option<&'static Template> {
    match architecture {
        "Qwen3ForCausalLM" => Some(&QWEN3_RERANKER),
        "Qwen2ForCausalLM" => Some(&MXBAI_RERANK_V2),
        _ => None,
    }
}

/// A template by name, or an error listing the names.
pub fn by_name(name: &str) -> Result<&'static Template> {
    TEMPLATES
        .iter()
        .copied()
        .find(|t| t.name == name)
        .ok_or_else(|| {
            let names: Vec<&str> = TEMPLATES.iter().map(|t| t.name).collect();
            Error::input(format!(
                "template `{name}` is not one of: {}",
                names.join(", ")
            ))
        })
}

/// A template bound to a tokenizer: its prefix, suffix and label ids.
#[derive(Debug, Clone)]
pub struct LlmEncoder {
    pub template: &'static Template,
    pub prefix_ids: Vec<u32>,
    pub suffix_ids: Vec<u32>,
    /// The separator between query and document parts (QueryThenDocument), else empty.
    pub sep_ids: Vec<u32>,
    pub yes_id: u32,
    pub no_id: u32,
}

fn encode_text(tokenizer: &Tokenizer, text: &str) -> Result<Vec<u32>> {
    tokenizer
        .encode_fast(text, false)
        .map(|e| e.get_ids().to_vec())
        .map_err(|e| Error::input(format!("tokenizer failed on a text: {e}")))
}

/// The parts tokenized one by one, the ids concatenated.
fn encode_parts(tokenizer: &Tokenizer, parts: &[&str]) -> Result<Vec<u32>> {
    let mut ids = Vec::new();
    for p in parts {
        ids.extend(encode_text(tokenizer, p)?);
    }
    Ok(ids)
}

impl LlmEncoder {
    pub fn new(template: &'static Template, tokenizer: &Tokenizer) -> Result<Self> {
        let label = |word: &str| {
            tokenizer.token_to_id(word).ok_or_else(|| {
                Error::input(format!(
                    "template `{}`: the tokenizer has no single token `{word}`, whose logit the score reads",
                    template.name
                ))
            })
        };
        let sep_ids = match &template.layout {
            Layout::QueryThenDocument { sep, .. } => encode_text(tokenizer, sep)?,
            Layout::Middle(_) => Vec::new(),
        };
        Ok(LlmEncoder {
            template,
            prefix_ids: encode_parts(tokenizer, template.prefix)?,
            suffix_ids: encode_parts(tokenizer, template.suffix)?,
            sep_ids,
            yes_id: label(template.yes)?,
            no_id: label(template.no)?,
        })
    }

    /// Tokens every pair carries whatever its text: prefix and suffix.
    pub fn fixed_tokens(&self) -> usize {
        self.prefix_ids.len() + self.suffix_ids.len()
    }

    /// Encodes (instruction, query, document) for every document; `max_length` has been
    /// checked against the model (`PairTokenizer::resolve_max_length`).
    pub fn encode_group<S: AsRef<str> + Sync>(
        &self,
        tokenizer: &Tokenizer,
        instruction: Option<&str>,
        query: &str,
        docs: &[S],
        max_length: usize,
    ) -> Result<Vec<EncodedPair>> {
        use rayon::prelude::*;
        let fixed = self.fixed_tokens();
        if max_length <= fixed {
            return Err(Error::input(format!(
                "max length {max_length} leaves no room for text after the {fixed} tokens of template `{}`",
                self.template.name
            )));
        }
        let room = max_length - fixed;
        let instruction = instruction.or(self.template.default_instruction);
        let frame = |text: Vec<u32>, truncated: bool| {
            let mut ids = Vec::with_capacity(fixed + text.len());
            ids.extend_from_slice(&self.prefix_ids);
            ids.extend(text);
            ids.extend_from_slice(&self.suffix_ids);
            EncodedPair {
                type_ids: vec![0; ids.len()],
                ids,
                truncated,
            }
        };
        match &self.template.layout {
            Layout::Middle(middle) => {
                let instruction = instruction.unwrap_or_default();
                docs.par_iter()
                    .map(|doc| {
                        let text = middle(instruction, query, doc.as_ref());
                        let mut ids = encode_text(tokenizer, &text)?;
                        let truncated = ids.len() > room;
                        ids.truncate(room);
                        Ok(frame(ids, truncated))
                    })
                    .collect()
            }
            Layout::QueryThenDocument {
                query: query_text,
                document,
                ..
            } => {
                // The query once for every document: cut to 3/4 of the room (mxbai's rule).
                let mut q = encode_text(tokenizer, &query_text(instruction, query))?;
                let q_cut = q.len() > room * 3 / 4;
                q.truncate(room * 3 / 4);
                let rest = room - q.len();
                docs.par_iter()
                    .map(|doc| {
                        let d = encode_text(tokenizer, &document(doc.as_ref()))?;
                        let mut text = Vec::with_capacity(q.len() + self.sep_ids.len() + d.len());
                        text.extend_from_slice(&q);
                        text.extend_from_slice(&self.sep_ids);
                        text.extend(d);
                        let d_cut = text.len() > q.len() + rest;
                        text.truncate(q.len() + rest);
                        Ok(frame(text, q_cut || d_cut))
                    })
                    .collect()
            }
        }
    }
}
