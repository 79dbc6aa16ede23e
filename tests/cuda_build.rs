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
    // Every exported kernel, for every SASS architecture.
    let kernels = [
        "embed_layernorm_f16",
        "add_layernorm_f16",
        "gelu_f16",
        "gather_cls_f16",
        "cls_head_f16",
        "attention_d16_f16",
        "attention_d32_f16",
        "attention_d64_f16",
        "attention_d128_f16",
        "fragment_probe_f16",
        // The pre-norm families' (ModernBERT).
        "embed_tokens_f16",
        "layernorm_f16",
        "residual_layernorm_f16",
        "rope_f16",
        "geglu_f16",
        "mean_pool_f16",
        "classify_f16",
    ];
    for k in kernels {
        for a in &WANT_ARCHS[..4] {
            assert!(
                seen.contains(&(k.to_string(), a.to_string())),
                "{k} not compiled for {a}"
            );
        }
    }
    assert_eq!(entries, kernels.len() * 4, "{seen:?}");
}
