//! The binary's CUDA path end to end, from outside: `crossrank info`, `rerank --device cuda`
//! (eager, `--cuda-graphs`, `--tune-gemm`), `serve --stdio --device cuda`, and on the software
//! GPU the refusal of `bench`. This checks the plumbing (flags, device choice, output), not the
//! numerics: tests/cuda_e2e.rs holds the parity rule. So the bound here is a plumbing bound,
//! 0.05 on a logit: fp16 storage moves these test models' logits by at most 1.3e-2 (the
//! emulation figures in tests/cuda_e2e.rs), while a wrong flag, device or order of results
//! moves them by far more. Without a device it prints SKIPPED (or fails under
//! CROSSRANK_REQUIRE_GPU).
#![cfg(feature = "cuda")]

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use common::*;

const PLUMBING_BOUND: f64 = 0.05;

fn crossrank(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_crossrank"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin).unwrap();
    drop(input);
    child.wait_with_output().unwrap()
}

/// Raw scores by input index.
fn rerank(device: &str, extra: &[&str]) -> Vec<f64> {
    rerank_with("bert-f32", device, extra)
}

/// `rerank` with one of the committed test models.
fn rerank_with(name: &str, device: &str, extra: &[&str]) -> Vec<f64> {
    let model = model_dir(name);
    let mut args = vec![
        "rerank",
        "--model",
        model.to_str().unwrap(),
        "--query",
        "How do cross-encoders rerank search results?",
        "--docs",
        "tests/data/demo-docs.txt",
        "--raw-scores",
        "--device",
        device,
    ];
    args.extend_from_slice(extra);
    let out = crossrank(&args, b"");
    assert!(
        out.status.success(),
        "rerank {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let results = v["results"].as_array().unwrap();
    let mut scores = vec![f64::NAN; results.len()];
    for r in results {
        scores[r["index"].as_u64().unwrap() as usize] = r["score"].as_f64().unwrap();
    }
    assert!(scores.iter().all(|s| s.is_finite()), "{scores:?}");
    scores
}

#[test]
fn info_names_the_cuda_device() {
    if skip_without_gpu("info_names_the_cuda_device") {
        return;
    }
    let out = crossrank(&["info"], b"");
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let devices = v["devices"].as_array().unwrap();
    assert!(!devices.is_empty(), "{v}");
    let first = devices[0].as_str().unwrap();
    assert!(first.starts_with("cuda:0 "), "{first}");
    if crossrank::backend::cuda::on_software_gpu() {
        // It never passes for hardware.
        assert!(
            first.contains("software GPU") && first.contains("not a GPU"),
            "{first}"
        );
    }
}

#[test]
fn rerank_on_cuda_agrees_with_the_cpu_with_and_without_graphs_and_tuning() {
    if skip_without_gpu("rerank_on_cuda_agrees_with_the_cpu_with_and_without_graphs_and_tuning") {
        return;
    }
    let cpu = rerank("cpu", &[]);
    for extra in [
        &[][..],
        &["--cuda-graphs"][..],
        &["--tune-gemm"][..],
        &["--cuda-graphs", "--tune-gemm", "--max-batch-tokens", "64"][..],
    ] {
        let gpu = rerank("cuda", extra);
        assert_eq!(gpu.len(), cpu.len());
        for (i, (g, c)) in gpu.iter().zip(&cpu).enumerate() {
            assert!(
                (g - c).abs() <= PLUMBING_BOUND,
                "{extra:?} document {i}: cuda {g}, cpu {c}"
            );
        }
        println!("rerank --device cuda {extra:?}: {gpu:?} (cpu {cpu:?})");
    }
}

#[test]
fn serve_stdio_on_cuda_answers() {
    if skip_without_gpu("serve_stdio_on_cuda_answers") {
        return;
    }
    let model = model_dir("bert-f32");
    let input = concat!(
        r#"{"id": 1, "query": "what is a panda?", "texts": ["a bear", "a city"]}"#,
        "\n",
        r#"{"id": 2, "query": "capital of France", "documents": ["Paris", "Berlin", "Rome"], "top_n": 2}"#,
        "\n"
    );
    let out = crossrank(
        &[
            "serve",
            "--stdio",
            "--device",
            "cuda",
            "--cuda-graphs",
            "--model",
            model.to_str().unwrap(),
        ],
        input.as_bytes(),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let answers: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(answers.len(), 2, "{answers:?}");
    for a in &answers {
        assert_eq!(a["status"], 200, "{a}");
        match a["id"].as_u64() {
            Some(1) => assert_eq!(a["result"].as_array().unwrap().len(), 2, "{a}"),
            Some(2) => assert_eq!(a["result"]["results"].as_array().unwrap().len(), 2, "{a}"),
            _ => panic!("unexpected answer {a}"),
        }
    }
}

/// The decoder LLM rerankers through the binary on CUDA (bf16): `rerank` with and without an
/// instruction and CUDA graphs, and `serve --stdio` with a request's `instruction`. The bound is
/// a plumbing bound for bf16 on these tiny models: their logits move by up to 0.24 under bf16
/// storage (tests/cuda_llm.rs), a wrong device or order by more than 0.5; a dropped instruction
/// is caught by its scores differing from the plain ones.
#[test]
fn llm_rerank_and_serve_on_cuda_take_an_instruction() {
    if skip_without_gpu("llm_rerank_and_serve_on_cuda_take_an_instruction") {
        return;
    }
    const LLM_BOUND: f64 = 0.5;
    let name = "qwen3-reranker-tiny";
    let instruction = ["--instruction", "Find recipes"];
    let cpu = rerank_with(name, "cpu", &instruction);
    let plain = rerank_with(name, "cuda", &[]);
    for extra in [
        &instruction[..],
        &["--instruction", "Find recipes", "--cuda-graphs"][..],
    ] {
        let gpu = rerank_with(name, "cuda", extra);
        for (i, (g, c)) in gpu.iter().zip(&cpu).enumerate() {
            assert!(
                (g - c).abs() <= LLM_BOUND,
                "{extra:?} document {i}: cuda {g}, cpu {c}"
            );
        }
        assert_ne!(
            gpu, plain,
            "{extra:?}: the instruction changed nothing on CUDA"
        );
    }
    let model = model_dir(name);
    let input = concat!(
        r#"{"id": 1, "query": "what is a panda?", "texts": ["a bear", "a city"], "instruction": "Find animals"}"#,
        "\n"
    );
    let out = crossrank(
        &[
            "serve",
            "--stdio",
            "--device",
            "cuda",
            "--model",
            model.to_str().unwrap(),
        ],
        input.as_bytes(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let a: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(a["status"], 200, "{a}");
    assert_eq!(a["result"].as_array().unwrap().len(), 2, "{a}");
}

/// The software GPU never produces a speed figure: `bench` on it is refused with one line.
#[test]
fn bench_refuses_the_software_gpu() {
    if skip_without_gpu("bench_refuses_the_software_gpu") {
        return;
    }
    if !crossrank::backend::cuda::on_software_gpu() {
        println!("bench_refuses_the_software_gpu: a real GPU; nothing to refuse");
        return;
    }
    let out = crossrank(
        &[
            "bench",
            "--shape",
            "minilm-l6",
            "--device",
            "cuda",
            "--lengths",
            "marco",
            "--candidates",
            "40",
        ],
        b"",
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(out.stdout.is_empty());
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error:") && err.contains("software GPU") && err.contains("no speed"),
        "{err}"
    );
}
