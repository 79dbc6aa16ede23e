//! What the `cuda` build embeds, checked without a GPU: the architecture list that `crossrank
//! info` prints, and the ptxas resource report (no kernel spills registers or uses local
//! memory: build.rs already refuses such a build; this reads the embedded report again).
#![cfg(feature = "cuda")]

use crossrank::backend::cuda::{architectures, PTXAS_REPORT};

const WANT_ARCHS: [&str; 5] = ["sm_80", "sm_86", "sm_89", "sm_90", "compute_80"];

#[test]
fn embedded_architectures_are_listed() {
    assert_eq!(architectures(), WANT_ARCHS);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_crossrank"))
        .arg("info")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["cuda_architectures"], serde_json::json!(WANT_ARCHS));
}

#[test]
fn ptxas_report_shows_no_spills_for_any_kernel_or_architecture() {
    let mut entries = 0;
    let mut arch = "";
    let mut seen = std::collections::BTreeSet::new();
    for line in PTXAS_REPORT.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let (name, a) = rest.split_once("' for '").expect("ptxas entry line");
            arch = a.trim_end_matches('\'');
            seen.insert((name.to_string(), arch.to_string()));
            entries += 1;
        }
        if line.contains("bytes stack frame") {
            let nums: Vec<u64> = line
                .split(',')
                .map(|p| p.split_whitespace().next().unwrap().parse().unwrap())
                .collect();
            assert_eq!(nums, [0, 0, 0], "{arch}: {}", line.trim());
        }
    }
    // Every exported kernel, in both storage types, for every SASS architecture.
    let ops = [
        "embed_layernorm",
        "add_layernorm",
        "gelu",
        "gather_cls",
        "cls_head",
        "attention_d16",
        "attention_d32",
        "attention_d64",
        "attention_d128",
        "fragment_probe",
        // The pre-norm families' (ModernBERT).
        "embed_tokens",
        "layernorm",
        "residual_layernorm",
        "rope",
        "geglu",
        "mean_pool",
        "classify",
        // The decoder LLMs' (Qwen).
        "rmsnorm",
        "residual_rmsnorm",
        "qk_norm_rope",
        "swiglu",
        "gather_last",
        // The visual cross-encoder's (BLIP).
        "patchify",
        "vit_embed",
        "cross_attention_d16",
        "cross_attention_d32",
        "cross_attention_d64",
        "cross_attention_d128",
    ];
    let kernels: Vec<String> = ops
        .iter()
        .flat_map(|op| [format!("{op}_f16"), format!("{op}_bf16")])
        .collect();
    for k in &kernels {
        for a in &WANT_ARCHS[..4] {
            assert!(
                seen.contains(&(k.clone(), a.to_string())),
                "{k} not compiled for {a}"
            );
        }
    }
    assert_eq!(entries, kernels.len() * 4, "{seen:?}");
}
