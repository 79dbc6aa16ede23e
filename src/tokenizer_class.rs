//! tokenizer.json as transformers 5 runs it.
//!
//! transformers 5 does not run the pipeline stored in tokenizer.json for the tokenizer classes it
//! defines: `BertTokenizer`, `XLMRobertaTokenizer` and `RobertaTokenizer` rebuild their
//! normalizer, pre-tokenizer and post-processor in `__init__` from tokenizer_config.json's
//! settings, and keep only the vocabulary (and merges), the added tokens and (XLM-R) the
//! SentencePiece charsmap from the file. A file
//! written by another converter (the hub's XLM-R files carry `Precompiled` + `Replace(" {2,}")`
//! and `Metaspace` alone, which keeps a trailing space as a `▁` token) would otherwise tokenize
//! unlike transformers. So for those classes the file is rewritten here, as JSON, into the
//! pipeline transformers builds (models/{bert,xlm_roberta,roberta}/tokenization_*.py of
//! transformers 5.24), before the tokenizers library loads it. Other classes run the file as it
//! is.

use std::path::Path;

use serde_json::{json, Value};
use tokenizers::Tokenizer;

use crate::error::{Error, Result};

/// tokenizer_config.json, or None when the directory has none.
pub fn read_config(dir: &Path) -> Result<Option<Value>> {
    let path = dir.join("tokenizer_config.json");
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| Error::model(&path, format!("not valid JSON: {e}")))?;
    Ok(Some(v))
}

/// Which pipeline transformers 5 builds for a tokenizer class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Bert,
    XlmRoberta,
    Roberta,
    /// Any other class, or none named: the file's own pipeline.
    File,
}

impl Class {
    pub fn of(config: Option<&Value>) -> Self {
        let name = config
            .and_then(|c| c.get("tokenizer_class"))
            .and_then(Value::as_str)
            .unwrap_or("");
        match name.strip_suffix("Fast").unwrap_or(name) {
            "BertTokenizer" => Class::Bert,
            "XLMRobertaTokenizer" => Class::XlmRoberta,
            "RobertaTokenizer" => Class::Roberta,
            _ => Class::File,
        }
    }
}

/// Loads `dir/tokenizer.json` with the pipeline transformers 5 would run for it.
pub fn load(dir: &Path, config: Option<&Value>) -> Result<Tokenizer> {
    let path = dir.join("tokenizer.json");
    let bad = |e: String| Error::model(&path, format!("tokenizer does not load: {e}"));
    let class = Class::of(config);
    if class == Class::File {
        return Tokenizer::from_file(&path).map_err(|e| bad(e.to_string()));
    }
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let mut file: Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let empty = json!({});
    rebuild(&mut file, class, config.unwrap_or(&empty)).map_err(bad)?;
    file.to_string()
        .parse::<Tokenizer>()
        .map_err(|e| bad(e.to_string()))
}

/// tokenizer_config.json's settings as a tokenizer class's `__init__` takes them: a missing or
/// null key gets the class's default; a token may be a string or an AddedToken object.
struct Settings<'a>(&'a Value);

impl Settings<'_> {
    fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key).filter(|v| !v.is_null())
    }

    fn flag(&self, key: &str, default: bool) -> bool {
        self.get(key).and_then(Value::as_bool).unwrap_or(default)
    }

    fn token(&self, key: &str, default: &str) -> String {
        self.get(key)
            .and_then(|v| {
                v.as_str()
                    .or_else(|| v.get("content").and_then(Value::as_str))
            })
            .unwrap_or(default)
            .to_string()
    }
}

/// Rewrites a parsed tokenizer.json into `class`'s transformers 5 pipeline.
pub fn rebuild(file: &mut Value, class: Class, config: &Value) -> std::result::Result<(), String> {
    let c = Settings(config);
    match class {
        Class::File => Ok(()),
        Class::Roberta => rebuild_roberta(file, config),
        Class::Bert => {
            let (cls, sep, unk) = (
                c.token("cls_token", "[CLS]"),
                c.token("sep_token", "[SEP]"),
                c.token("unk_token", "[UNK]"),
            );
            file["normalizer"] = json!({
                "type": "BertNormalizer",
                "clean_text": true,
                "handle_chinese_chars": c.flag("tokenize_chinese_chars", true),
                "strip_accents": c.get("strip_accents").and_then(Value::as_bool),
                "lowercase": c.flag("do_lower_case", true),
            });
            file["pre_tokenizer"] = json!({"type": "BertPreTokenizer"});
            let model = file
                .get_mut("model")
                .filter(|m| m.get("type").and_then(Value::as_str) == Some("WordPiece"))
                .ok_or("BertTokenizer with a model other than WordPiece")?;
            // WordPiece(vocab, unk_token): the library's defaults for the rest.
            model["unk_token"] = json!(unk);
            model["continuing_subword_prefix"] = json!("##");
            model["max_input_chars_per_word"] = json!(100);
            let (cls_id, sep_id) = (
                token_id(file, &cls).unwrap_or(2),
                token_id(file, &sep).unwrap_or(3),
            );
            file["post_processor"] = template(
                &[(&cls, 0), ("$A", 0), (&sep, 0)],
                &[(&cls, 0), ("$A", 0), (&sep, 0), ("$B", 1), (&sep, 1)],
                &[(&cls, cls_id), (&sep, sep_id)],
            );
            Ok(())
        }
        Class::XlmRoberta => {
            let (bos, eos) = (c.token("bos_token", "<s>"), c.token("eos_token", "</s>"));
            // The charsmap is the first Precompiled normalizer of the file, alone or in a
            // Sequence; every other normalizer is dropped, and without one there is none.
            let precompiled = match file.get("normalizer") {
                Some(n) if n.get("type").and_then(Value::as_str) == Some("Sequence") => n
                    .get("normalizers")
                    .and_then(Value::as_array)
                    .and_then(|all| all.iter().find(|n| is_precompiled(n)).cloned()),
                Some(n) if is_precompiled(n) => Some(n.clone()),
                _ => None,
            };
            file["normalizer"] = precompiled.unwrap_or(Value::Null);
            let prepend = if c.flag("add_prefix_space", true) {
                "always"
            } else {
                "never"
            };
            file["pre_tokenizer"] = json!({
                "type": "Sequence",
                "pretokenizers": [
                    {"type": "WhitespaceSplit"},
                    {"type": "Metaspace", "replacement": "▁", "prepend_scheme": prepend, "split": true},
                ],
            });
            let model = file
                .get_mut("model")
                .filter(|m| m.get("type").and_then(Value::as_str) == Some("Unigram"))
                .ok_or("XLMRobertaTokenizer with a model other than Unigram")?;
            // Unigram(vocab, unk_id=3, byte_fallback=False), whatever the file says.
            model["unk_id"] = json!(3);
            model["byte_fallback"] = json!(false);
            let (bos_id, eos_id) = (
                token_id(file, &bos).ok_or(format!("no id for {bos}"))?,
                token_id(file, &eos).ok_or(format!("no id for {eos}"))?,
            );
            file["post_processor"] = template(
                &[(&bos, 0), ("$A", 0), (&eos, 0)],
                &[
                    (&bos, 0),
                    ("$A", 0),
                    (&eos, 0),
                    (&eos, 0),
                    ("$B", 0),
                    (&eos, 0),
                ],
                &[(&bos, bos_id), (&eos, eos_id)],
            );
            Ok(())
        }
    }
}

/// RobertaTokenizer: no normalizer; ByteLevel with the config's add_prefix_space (default
/// false); BPE(vocab, merges) with no dropout, prefix or suffix, unknowns not fused;
/// RobertaProcessing with the config's trim_offsets (default true) and add_prefix_space.
fn rebuild_roberta(file: &mut Value, config: &Value) -> std::result::Result<(), String> {
    let c = Settings(config);
    let (prefix, trim) = (
        c.flag("add_prefix_space", false),
        c.flag("trim_offsets", true),
    );
    file["normalizer"] = Value::Null;
    file["pre_tokenizer"] = json!({
        "type": "ByteLevel", "add_prefix_space": prefix, "trim_offsets": true, "use_regex": true,
    });
    let model = file
        .get_mut("model")
        .filter(|m| m.get("type").and_then(Value::as_str) == Some("BPE"))
        .ok_or("RobertaTokenizer with a model other than BPE")?;
    model["dropout"] = Value::Null;
    model["unk_token"] = Value::Null;
    model["continuing_subword_prefix"] = json!("");
    model["end_of_word_suffix"] = json!("");
    model["fuse_unk"] = json!(false);
    model["byte_fallback"] = json!(false);
    model["ignore_merges"] = json!(false);
    let (cls, sep) = (c.token("cls_token", "<s>"), c.token("sep_token", "</s>"));
    let (cls_id, sep_id) = (
        token_id(file, &cls).ok_or(format!("no id for {cls}"))?,
        token_id(file, &sep).ok_or(format!("no id for {sep}"))?,
    );
    file["post_processor"] = json!({
        "type": "RobertaProcessing",
        "sep": [sep, sep_id],
        "cls": [cls, cls_id],
        "trim_offsets": trim,
        "add_prefix_space": prefix,
    });
    Ok(())
}

fn is_precompiled(n: &Value) -> bool {
    n.get("type").and_then(Value::as_str) == Some("Precompiled")
        && n.get("precompiled_charsmap").is_some_and(|c| !c.is_null())
}

/// A token's id: an added token's, else the model vocabulary's (WordPiece: a map; Unigram: a
/// list of [piece, score] whose index is the id).
fn token_id(file: &Value, token: &str) -> Option<u64> {
    let added = file.get("added_tokens").and_then(Value::as_array);
    if let Some(t) = added.and_then(|all| {
        all.iter()
            .find(|t| t.get("content").and_then(Value::as_str) == Some(token))
    }) {
        return t.get("id").and_then(Value::as_u64);
    }
    let vocab = file.get("model")?.get("vocab")?;
    match vocab {
        Value::Object(map) => map.get(token).and_then(Value::as_u64),
        Value::Array(list) => list
            .iter()
            .position(|p| p.get(0).and_then(Value::as_str) == Some(token))
            .map(|i| i as u64),
        _ => None,
    }
}

/// A TemplateProcessing post-processor: `$A` / `$B` are the texts, anything else a special
/// token, each with its type id.
fn template(single: &[(&str, u32)], pair: &[(&str, u32)], specials: &[(&str, u64)]) -> Value {
    let piece = |&(p, type_id): &(&str, u32)| match p {
        "$A" => json!({"Sequence": {"id": "A", "type_id": type_id}}),
        "$B" => json!({"Sequence": {"id": "B", "type_id": type_id}}),
        _ => json!({"SpecialToken": {"id": p, "type_id": type_id}}),
    };
    let special_tokens: serde_json::Map<String, Value> = specials
        .iter()
        .map(|&(t, id)| (t.to_string(), json!({"id": t, "ids": [id], "tokens": [t]})))
        .collect();
    json!({
        "type": "TemplateProcessing",
        "single": single.iter().map(piece).collect::<Vec<_>>(),
        "pair": pair.iter().map(piece).collect::<Vec<_>>(),
        "special_tokens": special_tokens,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_names_with_and_without_fast() {
        let c = |name: &str| Class::of(Some(&json!({ "tokenizer_class": name })));
        assert_eq!(c("BertTokenizer"), Class::Bert);
        assert_eq!(c("BertTokenizerFast"), Class::Bert);
        assert_eq!(c("XLMRobertaTokenizerFast"), Class::XlmRoberta);
        assert_eq!(c("RobertaTokenizerFast"), Class::Roberta);
        assert_eq!(c("DebertaV2Tokenizer"), Class::File);
        assert_eq!(Class::of(None), Class::File);
    }

    #[test]
    fn xlmr_keeps_the_first_charsmap_and_drops_the_rest() {
        let charsmap = json!({"type": "Precompiled", "precompiled_charsmap": "AAAA"});
        let mut file = json!({
            "normalizer": {"type": "Sequence", "normalizers": [
                {"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "},
                charsmap.clone(),
            ]},
            "pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": true},
            "model": {"type": "Unigram", "unk_id": 0, "byte_fallback": true,
                      "vocab": [["<s>", 0.0], ["<pad>", 0.0], ["</s>", 0.0], ["<unk>", 0.0]]},
        });
        rebuild(
            &mut file,
            Class::XlmRoberta,
            &json!({"add_prefix_space": false}),
        )
        .unwrap();
        assert_eq!(file["normalizer"], charsmap);
        assert_eq!(
            file["pre_tokenizer"]["pretokenizers"][0]["type"],
            "WhitespaceSplit"
        );
        assert_eq!(
            file["pre_tokenizer"]["pretokenizers"][1]["prepend_scheme"],
            "never"
        );
        assert_eq!(
            (
                file["model"]["unk_id"].clone(),
                file["model"]["byte_fallback"].clone()
            ),
            (json!(3), json!(false))
        );
        assert_eq!(
            file["post_processor"]["special_tokens"]["</s>"]["ids"],
            json!([2])
        );
        assert_eq!(
            file["post_processor"]["pair"].as_array().map(Vec::len),
            Some(6)
        );
    }
}
