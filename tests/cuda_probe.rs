//! The fragment probe (kernels/probe.cu): attention.cu's tensor-core step, one warp, on small
//! integer inputs, with every register written out. Three independent checks of its answer:
//!
//! - D against a plain matrix product done here (exact: every value is a small integer);
//! - the A registers and the ldmatrix.x4.trans registers against the PTX ISA's fragment tables,
//!   written out below from the ISA text, not from common.cuh's comments or softgpu/'s models;
//! - the whole raw answer, bit for bit, against the software GPU's, committed in
//!   tests/data/softgpu/fragment_probe.json. On a real GPU this is what confirms the software
//!   GPU's fragment models (softgpu/src/warp_models.h); scripts/gpu-check.sh runs this test
//!   first and records the `fragment_probe: software GPU answer:` line.
//!
//! The committed answer is itself checked against the first two, with no device needed. To
//! remake it (on the software GPU only): `CROSSRANK_WRITE_PROBE=1` with LD_LIBRARY_PATH at
//! `bash scripts/softgpu.sh checked | tail -1`.
//!
//! Without a CUDA device the device test prints `SKIPPED (why)`; with CROSSRANK_REQUIRE_GPU set
//! a missing device is a failure instead.
#![cfg(feature = "cuda")]

use crossrank::backend::cuda::kernels::{FragmentProbe, PROBE_ACC, PROBE_LANES};
use crossrank::backend::cuda::{unavailable_reason, CudaBackend};
use crossrank::backend::Backend;
use half::f16;
use serde_json::{json, Value};

const ANSWER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/softgpu/fragment_probe.json"
);
/// The inputs, as the answer file records them: a file made from other inputs is refused.
const INPUTS: &str = "A[i][k] = (16i + k) % 13 - 6, B[k][n] = (16k + n) % 11 - 5 (fp16, \
                      row-major 16 x 16), C[i][j] = 16i + j";

fn a_at(i: usize, k: usize) -> f32 {
    ((i * 16 + k) % 13) as f32 - 6.0
}
fn b_at(k: usize, n: usize) -> f32 {
    ((k * 16 + n) % 11) as f32 - 5.0
}
fn c_at(i: usize, j: usize) -> f32 {
    (i * 16 + j) as f32
}

/// The CUDA device, or None after printing why the test is skipped (a panic instead when
/// CROSSRANK_REQUIRE_GPU is set).
fn gpu(test: &str) -> Option<CudaBackend> {
    if let Some(why) = unavailable_reason() {
        if std::env::var_os("CROSSRANK_REQUIRE_GPU").is_some() {
            panic!("{test}: CROSSRANK_REQUIRE_GPU is set but CUDA is unavailable: {why}");
        }
        println!("{test}: SKIPPED ({why})");
        return None;
    }
    match CudaBackend::new(0) {
        Ok(b) => Some(b),
        Err(e) => panic!("{test}: a CUDA device is visible but could not be opened: {e}"),
    }
}

/// Two fp16 elements in one register, the lower-index element in the low 16 bits.
fn pack(lo: f32, hi: f32) -> u32 {
    u32::from(f16::from_f32(lo).to_bits()) | (u32::from(f16::from_f32(hi).to_bits()) << 16)
}

/// PTX ISA, "Matrix Fragments for mma.m16n8k16 with floating point type", A (16 x 16): element
/// a_i of a lane (i = 0..7; register r holds a_{2r} low, a_{2r+1} high) sits at
///   row = groupID            for 0 <= i < 2 || 4 <= i < 6, groupID + 8 otherwise;
///   col = threadID_in_group * 2 + (i & 1)  for i < 4, the same + 8 for i >= 4.
fn ptx_a_coord(lane: usize, i: usize) -> (usize, usize) {
    let (group, tig) = (lane >> 2, lane % 4);
    let row = if i < 2 || (4..6).contains(&i) {
        group
    } else {
        group + 8
    };
    let col = tig * 2 + (i & 1) + if i >= 4 { 8 } else { 0 };
    (row, col)
}

/// The same section, B (16 x 8, K x N): element b_i (i = 0..3) at
///   row = threadID_in_group * 2 + (i & 1) for i < 2, the same + 8 for i >= 2;  col = groupID.
fn ptx_b_coord(lane: usize, i: usize) -> (usize, usize) {
    let (group, tig) = (lane >> 2, lane % 4);
    (tig * 2 + (i & 1) + if i >= 2 { 8 } else { 0 }, group)
}

/// The same section, C/D (16 x 8): element c_i (i = 0..3) at
///   row = groupID for i < 2, groupID + 8 otherwise;  col = threadID_in_group * 2 + (i & 1).
fn ptx_cd_coord(lane: usize, i: usize) -> (usize, usize) {
    let (group, tig) = (lane >> 2, lane % 4);
    (if i < 2 { group } else { group + 8 }, tig * 2 + (i & 1))
}

/// The row and first column of B that the probe's lane `l` gives ldmatrix (kernels/probe.cu,
/// as attention.cu forms them for V).
fn probe_ldmatrix_address(l: usize) -> (usize, usize) {
    ((l % 8) + 8 * ((l / 8) % 2), 8 * (l / 16))
}

/// PTX ISA, ldmatrix: for .x4, lanes 8i .. 8i+7 give the addresses of rows 0..7 of matrix i
/// (8 consecutive b16 elements each). Without .trans lane l receives, from matrix i, elements
/// (row l / 4, columns 2(l % 4) and 2(l % 4) + 1); .trans delivers the matrix column-major:
/// (rows 2(l % 4) and 2(l % 4) + 1, column l / 4). Returns the B coordinates of the low and high
/// halves of lane l's register i.
fn ptx_ldmatrix_trans_coords(l: usize, i: usize) -> [(usize, usize); 2] {
    let m = |r: usize, c: usize| {
        let (row, col0) = probe_ldmatrix_address(8 * i + r);
        (row, col0 + c)
    };
    [m(2 * (l % 4), l / 4), m(2 * (l % 4) + 1, l / 4)]
}

fn inputs() -> (Vec<f16>, Vec<f16>) {
    let a = (0..256)
        .map(|x| f16::from_f32(a_at(x / 16, x % 16)))
        .collect();
    let b = (0..256)
        .map(|x| f16::from_f32(b_at(x / 16, x % 16)))
        .collect();
    (a, b)
}

/// D = A B + C, 16 x 16, plainly (exact: |D| < 2^11).
fn product() -> [[f32; 16]; 16] {
    let mut d = [[0f32; 16]; 16];
    for (i, row) in d.iter_mut().enumerate() {
        for (j, v) in row.iter_mut().enumerate() {
            *v = c_at(i, j) + (0..16).map(|k| a_at(i, k) * b_at(k, j)).sum::<f32>();
        }
    }
    d
}

/// Every disagreement of an answer with the product and the PTX tables, one line each.
fn check_against_ptx(p: &FragmentProbe) -> Vec<String> {
    let d_ref = product();
    let mut bad = Vec::new();
    for l in 0..PROBE_LANES {
        for r in 0..4 {
            let (lo, hi) = (ptx_a_coord(l, 2 * r), ptx_a_coord(l, 2 * r + 1));
            let want = pack(a_at(lo.0, lo.1), a_at(hi.0, hi.1));
            if p.a[l][r] != want {
                bad.push(format!(
                    "lane {l} a[{r}]: {:#010x}, PTX table wants {want:#010x} (A{lo:?}, A{hi:?})",
                    p.a[l][r]
                ));
            }
            let [lo, hi] = ptx_ldmatrix_trans_coords(l, r);
            let want = pack(b_at(lo.0, lo.1), b_at(hi.0, hi.1));
            if p.ldmatrix[l][r] != want {
                bad.push(format!(
                    "lane {l} ldmatrix[{r}]: {:#010x}, PTX ldmatrix.trans wants {want:#010x} (B{lo:?}, B{hi:?})",
                    p.ldmatrix[l][r]
                ));
            }
            // What attention.cu relies on: registers 0/1 are n-tile 0's mma B fragment, 2/3
            // n-tile 1's.
            let nt = r / 2;
            let (lo, hi) = (ptx_b_coord(l, 2 * (r % 2)), ptx_b_coord(l, 2 * (r % 2) + 1));
            let want = pack(b_at(lo.0, lo.1 + 8 * nt), b_at(hi.0, hi.1 + 8 * nt));
            if p.ldmatrix[l][r] != want {
                bad.push(format!(
                    "lane {l} ldmatrix[{r}]: {:#010x} is not n-tile {nt}'s mma b{} ({want:#010x})",
                    p.ldmatrix[l][r],
                    r % 2
                ));
            }
        }
        for e in 0..PROBE_ACC {
            let (nt, i) = (e / 4, e % 4);
            let (row, col) = ptx_cd_coord(l, i);
            let want = d_ref[row][col + 8 * nt];
            if p.d[l][e].to_bits() != want.to_bits() {
                bad.push(format!(
                    "lane {l} d[{e}] (D[{row}][{}]): {}, the product is {want}",
                    col + 8 * nt,
                    p.d[l][e]
                ));
            }
        }
    }
    bad
}

fn hex(v: &[u32]) -> Vec<String> {
    v.iter().map(|x| format!("{x:#010x}")).collect()
}

fn to_json(p: &FragmentProbe, made_on: &str) -> Value {
    let lanes: Vec<Value> = (0..PROBE_LANES)
        .map(|l| {
            let d_bits: Vec<u32> = p.d[l].iter().map(|v| v.to_bits()).collect();
            json!({
                "lane": l,
                "a": hex(&p.a[l]),
                "ldmatrix": hex(&p.ldmatrix[l]),
                "d_bits": hex(&d_bits),
                "d": p.d[l].to_vec(),
            })
        })
        .collect();
    json!({
        "what": "kernels/probe.cu fragment_probe_f16, per lane in register order: the A \
                 registers, the ldmatrix.x4.trans registers, the accumulators of n-tiles 0 and 1 \
                 (d_bits exact, d for reading); written by tests/cuda_probe.rs with \
                 CROSSRANK_WRITE_PROBE=1",
        "made_on": made_on,
        "inputs": INPUTS,
        "lanes": lanes,
    })
}

fn parse_hex(v: &Value, what: &str) -> u32 {
    let s = v.as_str().unwrap_or_else(|| panic!("{what}: not a string"));
    u32::from_str_radix(s.trim_start_matches("0x"), 16).unwrap_or_else(|e| panic!("{what}: {e}"))
}

fn from_json(v: &Value) -> FragmentProbe {
    assert_eq!(
        v["inputs"].as_str(),
        Some(INPUTS),
        "{ANSWER} was made from other inputs: remake it"
    );
    let lanes = v["lanes"].as_array().expect("lanes");
    assert_eq!(lanes.len(), PROBE_LANES, "{ANSWER}: lanes");
    let mut p = FragmentProbe {
        a: [[0; 4]; PROBE_LANES],
        ldmatrix: [[0; 4]; PROBE_LANES],
        d: [[0.0; PROBE_ACC]; PROBE_LANES],
    };
    for (l, lane) in lanes.iter().enumerate() {
        assert_eq!(
            lane["lane"].as_u64(),
            Some(l as u64),
            "{ANSWER}: lane order"
        );
        for r in 0..4 {
            p.a[l][r] = parse_hex(&lane["a"][r], "a");
            p.ldmatrix[l][r] = parse_hex(&lane["ldmatrix"][r], "ldmatrix");
        }
        for e in 0..PROBE_ACC {
            p.d[l][e] = f32::from_bits(parse_hex(&lane["d_bits"][e], "d_bits"));
        }
    }
    p
}

fn committed_answer() -> (FragmentProbe, String) {
    let text = std::fs::read_to_string(ANSWER).unwrap_or_else(|e| panic!("{ANSWER}: {e}"));
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{ANSWER}: {e}"));
    (
        from_json(&v),
        v["made_on"].as_str().unwrap_or("?").to_string(),
    )
}

/// Register-by-register differences between two answers, bits compared.
fn diff(dev: &FragmentProbe, soft: &FragmentProbe) -> Vec<String> {
    let mut out = Vec::new();
    for l in 0..PROBE_LANES {
        for r in 0..4 {
            if dev.a[l][r] != soft.a[l][r] {
                out.push(format!(
                    "lane {l} a[{r}] {:#010x} vs {:#010x}",
                    dev.a[l][r], soft.a[l][r]
                ));
            }
            if dev.ldmatrix[l][r] != soft.ldmatrix[l][r] {
                out.push(format!(
                    "lane {l} ldmatrix[{r}] {:#010x} vs {:#010x}",
                    dev.ldmatrix[l][r], soft.ldmatrix[l][r]
                ));
            }
        }
        for e in 0..PROBE_ACC {
            let (x, y) = (dev.d[l][e].to_bits(), soft.d[l][e].to_bits());
            if x != y {
                out.push(format!("lane {l} d[{e}] {x:#010x} vs {y:#010x}"));
            }
        }
    }
    out
}

fn show(lines: &[String]) -> String {
    let mut s = lines
        .iter()
        .take(12)
        .cloned()
        .collect::<Vec<_>>()
        .join("\n  ");
    if lines.len() > 12 {
        s += &format!("\n  ... and {} more", lines.len() - 12);
    }
    s
}

/// The committed software-GPU answer satisfies the product and the PTX tables: no device needed.
#[test]
fn committed_answer_agrees_with_the_ptx_tables() {
    let (soft, made_on) = committed_answer();
    assert!(
        made_on.contains("software GPU"),
        "{ANSWER} was made on {made_on}, not on the software GPU"
    );
    let bad = check_against_ptx(&soft);
    assert!(
        bad.is_empty(),
        "{ANSWER} disagrees with the PTX tables:\n  {}",
        show(&bad)
    );
}

#[test]
fn probe_matches_the_ptx_tables_and_the_software_gpu() {
    let test = "fragment_probe";
    let Some(gpu) = gpu(test) else { return };
    let (a, b) = inputs();
    let dev = gpu.fragment_probe(&a, &b).expect("fragment_probe");
    let name = gpu.device_name();
    let ptx = check_against_ptx(&dev);

    if std::env::var_os("CROSSRANK_WRITE_PROBE").is_some_and(|v| v == "1") {
        assert!(
            name.contains("software GPU"),
            "CROSSRANK_WRITE_PROBE: the answer file is the software GPU's, and this is {name}"
        );
        assert!(
            ptx.is_empty(),
            "not writing {ANSWER}: the answer disagrees with the PTX tables:\n  {}",
            show(&ptx)
        );
        let mut text = serde_json::to_string_pretty(&to_json(&dev, &name)).unwrap();
        text.push('\n');
        std::fs::create_dir_all(std::path::Path::new(ANSWER).parent().unwrap()).unwrap();
        std::fs::write(ANSWER, text).unwrap_or_else(|e| panic!("{ANSWER}: {e}"));
        println!("{test}: wrote {ANSWER}");
    }

    let (soft, _) = committed_answer();
    let differ = diff(&dev, &soft);
    // One line for scripts/gpu-check.sh's report.
    if differ.is_empty() {
        println!("{test}: software GPU answer: MATCH on {name} (512 registers bit for bit)");
    } else {
        println!(
            "{test}: software GPU answer: DIFFERS on {name} ({} of 512 registers; device vs software GPU):\n  {}",
            differ.len(),
            show(&differ)
        );
    }
    println!(
        "{test}: PTX tables and product: {}",
        if ptx.is_empty() {
            "MATCH".to_string()
        } else {
            format!("{} disagreements", ptx.len())
        }
    );
    assert!(
        ptx.is_empty(),
        "{test} on {name} disagrees with the PTX tables or the product:\n  {}",
        show(&ptx)
    );
    assert!(
        differ.is_empty(),
        "{test} on {name} differs from the software GPU's answer ({ANSWER})"
    );
}
