//! The CLI contract, tested from outside: output shape, inputs, and every refusal's one-line
//! message and exit code 1.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::*;

fn crossrank(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_crossrank"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or_default()).unwrap();
    drop(input);
    child.wait_with_output().unwrap()
}

fn rerank(model: &Path, docs: &str, extra: &[&str], stdin: Option<&[u8]>) -> Output {
    let model = model.to_str().unwrap();
    let mut args = vec![
        "rerank",
        "--model",
        model,
        "--query",
        "what do rerankers do?",
        "--docs",
        docs,
    ];
    args.extend_from_slice(extra);
    crossrank(&args, stdin)
}

/// Exit code 1 and exactly one stderr line, starting `error:` and containing every `needle`.
fn assert_refused(out: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "exit code; stderr: {err}");
    assert!(out.stdout.is_empty(), "nothing on stdout when refused");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line on stderr, got: {err}");
    assert!(lines[0].starts_with("error:"), "{err}");
    for n in needles {
        assert!(
            lines[0].contains(n),
            "stderr `{}` does not mention `{n}`",
            lines[0]
        );
    }
}

fn results(out: &Output) -> Vec<serde_json::Value> {
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["results"].as_array().unwrap().clone()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p.to_str().unwrap().to_string()
}

#[test]
fn rerank_prints_sorted_results_from_every_docs_format() {
    let dir = scratch_dir("cli-formats");
    let model = model_dir("bert-f32");
    let txt = write(
        &dir,
        "d.txt",
        "rerankers sort candidates\nthe weather is nice\n\nGPU kernels\n".as_bytes(),
    );
    let jsonl = write(
        &dir,
        "d.jsonl",
        b"\"rerankers sort candidates\"\n{\"text\": \"the weather is nice\"}\n{\"text\": \"\"}\n\"GPU kernels\"\n",
    );
    let a = results(&rerank(&model, &txt, &[], None));
    let b = results(&rerank(&model, &jsonl, &[], None));
    let c = results(&rerank(
        &model,
        "-",
        &[],
        Some(std::fs::read(&txt).unwrap().as_slice()),
    ));
    assert_eq!(a.len(), 4);
    assert_eq!(a, b, "plain text and jsonl give the same results");
    assert_eq!(a, c, "stdin gives the same results");
    let scores: Vec<f64> = a.iter().map(|r| r["score"].as_f64().unwrap()).collect();
    assert!(
        scores.windows(2).all(|w| w[0] >= w[1]),
        "best first: {scores:?}"
    );
    assert!(
        scores.iter().all(|s| (0.0..=1.0).contains(s)),
        "sigmoid scores"
    );
    for r in &a {
        assert_eq!(r["truncated"], false);
    }
    // The CUDA options are accepted everywhere and change nothing on the CPU.
    let cuda_opts = results(&rerank(
        &model,
        &txt,
        &["--cuda-graphs", "--tune-gemm"],
        None,
    ));
    assert_eq!(a, cuda_opts, "--cuda-graphs --tune-gemm on the CPU");

    let top = results(&rerank(
        &model,
        &txt,
        &["--top-k", "2", "--raw-scores"],
        None,
    ));
    assert_eq!(top.len(), 2);
    assert_eq!(top[0]["index"], a[0]["index"]);
    let logit = top[0]["score"].as_f64().unwrap();
    assert!(
        (1.0 / (1.0 + (-logit).exp()) - scores[0]).abs() < 1e-6,
        "raw score is the logit"
    );
}

#[test]
fn long_passages_are_reported_truncated() {
    let dir = scratch_dir("cli-trunc");
    let long = "word ".repeat(400);
    let docs = write(&dir, "d.txt", format!("short one\n{long}\n").as_bytes());
    let r = results(&rerank(&model_dir("bert-f32"), &docs, &[], None));
    let t: Vec<(u64, bool)> = r
        .iter()
        .map(|x| {
            (
                x["index"].as_u64().unwrap(),
                x["truncated"].as_bool().unwrap(),
            )
        })
        .collect();
    assert!(t.contains(&(0, false)) && t.contains(&(1, true)), "{t:?}");
}

#[test]
fn empty_docs_file_prints_no_results() {
    let dir = scratch_dir("cli-empty");
    let docs = write(&dir, "empty.txt", b"");
    let out = rerank(&model_dir("bert-f32"), &docs, &[], None);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "{\"results\":[]}"
    );
}

#[test]
fn bad_inputs_are_refused_in_one_line() {
    let dir = scratch_dir("cli-bad-inputs");
    let model = model_dir("bert-f32");
    let docs = write(&dir, "d.txt", b"a passage\n");

    assert_refused(
        &rerank(&model, "/no/such/docs.txt", &[], None),
        &["/no/such/docs.txt", "not found"],
    );
    let bad = write(&dir, "bad.txt", b"fine\nalso fine\n\xc3\x28 broken\n");
    assert_refused(
        &rerank(&model, &bad, &[], None),
        &["bad.txt", "line 3", "UTF-8"],
    );
    let badj = write(&dir, "bad.jsonl", b"\"ok\"\n{\"title\": \"no text\"}\n");
    assert_refused(
        &rerank(&model, &badj, &[], None),
        &["bad.jsonl", "line 2", "text"],
    );

    assert_refused(
        &rerank(&model, &docs, &["--max-length", "0"], None),
        &["max length", "0"],
    );
    assert_refused(
        &rerank(&model, &docs, &["--max-length", "49"], None),
        &["max length 49", "48"],
    );
    assert_refused(
        &rerank(&model, &docs, &["--device", "tpu"], None),
        &["device `tpu`"],
    );
    #[cfg(not(feature = "cuda"))]
    assert_refused(
        &rerank(&model, &docs, &["--device", "cuda"], None),
        &["CUDA was not compiled in", "--device cpu"],
    );

    assert_refused(
        &rerank(Path::new("/no/such/model"), &docs, &[], None),
        &["/no/such/model", "not found"],
    );

    // Usage errors are one line too.
    let out = crossrank(&["rerank", "--query", "q"], None);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&out.stderr).lines().count(), 1);
}

/// Copies bert-f32, applies `edit`, and expects a refusal mentioning `needles`.
fn refuse_model(tag: &str, edit: impl FnOnce(&Path), needles: &[&str]) {
    let dir = copy_model("bert-f32", tag);
    edit(&dir);
    let docs = write(&dir, "d.txt", b"a passage\n");
    assert_refused(&rerank(&dir, &docs, &[], None), needles);
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let p = dir.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&p, v.to_string()).unwrap();
}

/// Rewrites model.safetensors through `f(name, dtype, shape, bytes)`; `None` drops a tensor.
fn edit_weights(
    dir: &Path,
    f: impl Fn(&str, &str, Vec<usize>, Vec<u8>) -> Option<(String, Vec<usize>, Vec<u8>)>,
) {
    let p = dir.join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let data = &bytes[8 + n..];
    let mut out_header = serde_json::Map::new();
    let mut out_data = Vec::new();
    for (name, info) in header {
        if name == "__metadata__" {
            continue;
        }
        let dtype = info["dtype"].as_str().unwrap().to_string();
        let shape: Vec<usize> = serde_json::from_value(info["shape"].clone()).unwrap();
        let o: Vec<usize> = serde_json::from_value(info["data_offsets"].clone()).unwrap();
        if let Some((dtype, shape, b)) = f(&name, &dtype, shape, data[o[0]..o[1]].to_vec()) {
            let start = out_data.len();
            out_data.extend_from_slice(&b);
            out_header.insert(
                name,
                serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [start, out_data.len()]}),
            );
        }
    }
    let mut h = serde_json::Value::Object(out_header)
        .to_string()
        .into_bytes();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut file = (h.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(&h);
    file.extend_from_slice(&out_data);
    std::fs::write(&p, file).unwrap();
}

#[test]
fn bad_models_are_refused_naming_file_field_or_tensor() {
    refuse_model(
        "arch",
        |d| {
            edit_config(d, |v| {
                v["architectures"] = serde_json::json!(["GPT2LMHeadModel"])
            })
        },
        &[
            "config.json",
            "GPT2LMHeadModel",
            "BertForSequenceClassification",
            "XLMRobertaForSequenceClassification",
        ],
    );
    refuse_model(
        "labels",
        |d| {
            edit_config(d, |v| {
                v["id2label"] = serde_json::json!({"0": "neg", "1": "pos"})
            })
        },
        &["config.json", "2 labels", "num_labels = 1"],
    );
    refuse_model(
        "act",
        |d| edit_config(d, |v| v["hidden_act"] = "silu".into()),
        &["hidden_act", "silu", "gelu"],
    );
    refuse_model(
        "noconfig",
        |d| std::fs::remove_file(d.join("config.json")).unwrap(),
        &["config.json"],
    );
    refuse_model(
        "tok",
        |d| std::fs::write(d.join("tokenizer.json"), b"{\"not\": \"a tokenizer\"}").unwrap(),
        &["tokenizer.json", "does not load"],
    );
    refuse_model(
        "notok",
        |d| std::fs::remove_file(d.join("tokenizer.json")).unwrap(),
        &["tokenizer.json", "missing"],
    );
    refuse_model(
        "noweights",
        |d| std::fs::remove_file(d.join("model.safetensors")).unwrap(),
        &["model.safetensors"],
    );
    refuse_model(
        "garbage",
        |d| std::fs::write(d.join("model.safetensors"), b"\x08\0\0\0\0\0\0\0{}").unwrap(),
        &["model.safetensors", "not a valid safetensors file"],
    );
    refuse_model(
        "missing-tensor",
        |d| {
            edit_weights(d, |n, t, s, b| {
                (!n.ends_with("layer.1.intermediate.dense.weight")).then(|| (t.to_string(), s, b))
            })
        },
        &[
            "model.safetensors",
            "encoder.layer.1.intermediate.dense.weight",
            "missing",
        ],
    );
    refuse_model(
        "shape",
        |d| {
            edit_weights(d, |n, t, s, b| {
                if n.ends_with("layer.0.attention.self.key.bias") {
                    Some((t.to_string(), vec![s[0] - 1], b[..b.len() - 4].to_vec()))
                } else {
                    Some((t.to_string(), s, b))
                }
            })
        },
        &[
            "encoder.layer.0.attention.self.key.bias",
            "shape [31]",
            "[32]",
        ],
    );
    refuse_model(
        "dtype",
        |d| {
            edit_weights(d, |n, t, s, b| {
                if n.ends_with("embeddings.LayerNorm.bias") {
                    Some(("F64".to_string(), s, [b.clone(), b].concat()))
                } else {
                    Some((t.to_string(), s, b))
                }
            })
        },
        &[
            "embeddings.LayerNorm.bias",
            "dtype F64",
            "supported: F32, F16, BF16",
        ],
    );
}

#[test]
fn a_pair_with_no_tokens_is_refused() {
    // Only a tokenizer without a post-processor (no special tokens) can encode a pair to
    // nothing: an empty query with an empty passage. The class must be one whose file runs as
    // it is (BertTokenizer's pipeline is rebuilt, post-processor included, as transformers 5).
    let dir = copy_model("bert-f32", "no-tokens");
    for (file, key, value) in [
        ("tokenizer.json", "post_processor", serde_json::Value::Null),
        (
            "tokenizer_config.json",
            "tokenizer_class",
            "PreTrainedTokenizerFast".into(),
        ),
    ] {
        let p = dir.join(file);
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        v[key] = value;
        std::fs::write(&p, v.to_string()).unwrap();
    }
    let docs = write(&dir, "d.txt", b"not empty\n\n");
    let m = dir.to_str().unwrap();
    let out = crossrank(
        &["rerank", "--model", m, "--query", "", "--docs", &docs],
        None,
    );
    assert_refused(&out, &["pair 1 encodes to no tokens"]);
}

#[test]
fn info_reports_backends_and_the_model() {
    let out = crossrank(
        &["info", "--model", model_dir("xlmr-bf16").to_str().unwrap()],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["backends"][0], "cpu");
    assert_eq!(
        v["backends"].as_array().unwrap().len(),
        if cfg!(feature = "cuda") { 2 } else { 1 }
    );
    assert!(v["cuda_architectures"].is_array() && v["devices"].is_array());
    let m = &v["model"];
    assert_eq!(m["architecture"], "XLMRobertaForSequenceClassification");
    assert_eq!(m["dtype"], "bf16");
    assert_eq!(
        (
            m["layers"].as_u64(),
            m["hidden_size"].as_u64(),
            m["heads"].as_u64()
        ),
        (Some(2), Some(64), Some(4))
    );
    assert_eq!(m["max_length"], 64);
    assert!(m["parameters"].as_u64().unwrap() > 0);
}

/// `crossrank bench` on the committed tiny BLIP model runs the image workload: a cold and a warm
/// row per N, and the image cache's counters follow --image-cache-mib (with a budget the warm
/// row hits every image; with 0 the cache is off and every image misses).
#[test]
fn bench_runs_an_image_model_cold_and_warm_with_and_without_the_cache() {
    let model = model_dir("blip-itm-tiny");
    let model = model.to_str().unwrap();
    for (mib, warm) in [("16", (6, 0)), ("0", (0, 6))] {
        let out = crossrank(
            &[
                "bench",
                "--model",
                model,
                "--candidates",
                "3",
                "--calls",
                "1",
                "--iters",
                "2",
                "--warmup",
                "0",
                "--no-gemm",
                "--json",
                "--image-cache-mib",
                mib,
            ],
            None,
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{err}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["lengths"], "images");
        let rows: Vec<(u64, &str, u64, u64)> = v["runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let c = &r["image_cache"];
                let cache = r["cache"].as_str().unwrap();
                let n = r["n"].as_u64().unwrap();
                (
                    n,
                    cache,
                    c["hits"].as_u64().unwrap(),
                    c["misses"].as_u64().unwrap(),
                )
            })
            .collect();
        let want = vec![(3, "cache-cold", 0, 6), (3, "cache-warm", warm.0, warm.1)];
        assert_eq!(rows, want, "--image-cache-mib {mib}");
        assert!(v["runs"][1]["split"]["preprocess_ms"].as_f64().unwrap() > 0.0);
    }
}
