#!/usr/bin/env python3
"""The software GPU's mutation check: plants plausible kernel bugs in a copy of kernels/, one at
a time, rebuilds only the software GPU's kernels library from that copy, and runs the already
built CUDA test binaries (tests/cuda_*.rs, as scripts/test-softgpu.sh runs them) on it until one
fails. Every mutant must be caught; prints a markdown table (mutant, caught by, first line of
why) and exits non-zero if one survives.

Usage: bash scripts/softgpu-mutants.sh [NAME...]   (all mutants by default)
"""
import json
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORK = os.path.join(ROOT, "target", "softgpu-mutants")

# (name, kind, file, original text, planted text). Each original must occur exactly once.
MUTANTS = [
    ("drop-tile-barrier", "a dropped barrier", "attention.cu",
     "        __syncthreads();  // every warp is done reading the previous tile\n", ""),
    ("drop-load-barrier", "a dropped barrier", "attention.cu",
     "            *reinterpret_cast<uint4*>(&v_tile[r * Tr::kStride + c]) = vv;\n        }\n        __syncthreads();\n",
     "            *reinterpret_cast<uint4*>(&v_tile[r * Tr::kStride + c]) = vv;\n        }\n"),
    ("drop-block-sum-barrier", "a dropped barrier", "common.cuh",
     "    const float total = scratch[0];\n    __syncthreads();\n",
     "    const float total = scratch[0];\n"),
    ("p-fragment-register", "a wrong fragment register", "attention.cu",
     "                pack_half2(s[2 * kk][2], s[2 * kk][3]),\n                pack_half2(s[2 * kk + 1][0], s[2 * kk + 1][1]),\n",
     "                pack_half2(s[2 * kk + 1][0], s[2 * kk + 1][1]),\n                pack_half2(s[2 * kk][2], s[2 * kk][3]),\n"),
    ("q-fragment-row", "a wrong fragment register", "attention.cu",
     "        qf[ks][1] = r1 < len ? p1[0] : 0u;\n", "        qf[ks][1] = r0 < len ? p0[0] : 0u;\n"),
    ("ldmatrix-lane-mapping", "a wrong ldmatrix lane mapping", "attention.cu",
     "            const int key = kk * 16 + (lane % 8) + 8 * ((lane / 8) % 2);\n",
     "            const int key = kk * 16 + (lane % 8) + 8 * (lane / 16);\n"),
    ("ldmatrix-register-order", "a wrong ldmatrix lane mapping", "attention.cu",
     "                mma_16816(o[dt], a, b[0], b[1]);\n", "                mma_16816(o[dt], a, b[0], b[2]);\n"),
    ("key-mask-off-by-one", "an off-by-one mask", "attention.cu",
     "if (key >= len || (windowed", "if (key > len || (windowed"),
    ("tile-load-bounds-guard", "a missing bounds guard", "attention.cu",
     "            if (k0 + r < len) {\n", "            {\n"),
    ("query-store-guard", "a missing bounds guard", "attention.cu",
     "        if (r1 < len)\n            *reinterpret_cast<__half2*>(out1", "        \n            *reinterpret_cast<__half2*>(out1"),
    ("row-max-shuffle-lanes", "a shuffle over the wrong lanes", "attention.cu",
     "            mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 2));\n",
     "            mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 4));\n"),
    ("warp-sum-half-mask", "a shuffle over the wrong lanes", "common.cuh",
     "    for (int o = kWarp / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);\n",
     "    for (int o = kWarp / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0x0000ffffu, v, o);\n"),
    ("divergent-block-sum-barrier", "a divergent barrier", "common.cuh",
     "        if (lane == 0) scratch[0] = t;\n    }\n    __syncthreads();\n",
     "        if (lane == 0) scratch[0] = t;\n        __syncthreads();\n    }\n"),
    ("gelu-tail-past-end", "a write past the end", "gelu.cu",
     "    for (size_t i = vecs * kVec + first; i < n; i += stride)\n",
     "    for (size_t i = vecs * kVec + first; i <= n; i += stride)\n"),
    ("gather-cls-past-row", "a write past the end", "head.cu",
     "    for (int c = threadIdx.x; c < width / kVec; c += blockDim.x) to[c] = from[c];\n",
     "    for (int c = threadIdx.x; c <= width / kVec; c += blockDim.x) to[c] = from[c];\n"),
    ("layernorm-store-unguarded", "a write past the end", "layernorm.cu",
     "    if (active) store_vec(hidden + row * width + col, y);\n",
     "    store_vec(hidden + row * width + col, y);\n"),
    ("head-pooled-barrier", "a dropped barrier", "head.cu",
     "        if (lane == 0) pooled[j] = tanhf(dot + __half2float(b1[j]));\n    }\n    __syncthreads();\n",
     "        if (lane == 0) pooled[j] = tanhf(dot + __half2float(b1[j]));\n    }\n"),
    ("warp-early-exit", "a divergent barrier", "attention.cu",
     "    const int r0 = q0 + warp * 16 + g;  // this thread's two query rows (r0, r0 + 8)\n",
     "    const int r0 = q0 + warp * 16 + g;  // this thread's two query rows (r0, r0 + 8)\n"
     "    if (q0 + warp * 16 >= len) return;  // planted: a warp with no rows leaves its block\n"),
    ("embed-misaligned-row", "a misaligned vector access", "embed.cu",
     "const Vec8 w = load_vec(word + size_t(ids[row]) * width + col);",
     "const Vec8 w = load_vec(word + size_t(ids[row]) * width + col + 4);"),
    # The pre-norm families' kernels (ModernBERT).
    ("window-mask-off-by-one", "an off-by-one mask", "attention.cu",
     "(dist > window || -dist > window)", "(dist > window || -dist >= window)"),
    ("window-tile-range-short", "an off-by-one mask", "attention.cu",
     "min(len, q0 + Tr::kBlockM + window)\n", "min(len, q0 + Tr::kBlockM + window - 1)\n"),
    ("window-edge-test-one-side", "an off-by-one mask", "attention.cu",
     "        const bool edge = (windowed && (j0 < q0 + Tr::kBlockM - 1 - window ||\n",
     "        const bool edge = (windowed && (false ||\n"),
    ("rope-rotation-sign", "wrong arithmetic", "rope.cu",
     "from_float<T>(b[k] * cs[k] + a[k] * sn[k]);", "from_float<T>(b[k] * cs[k] - a[k] * sn[k]);"),
    ("rope-pairs-adjacent", "wrong arithmetic", "rope.cu",
     "b[k] = i < half ? to_float(x[i + half]) : 0.f;", "b[k] = i < half ? to_float(x[i ^ 1]) : 0.f;"),
    ("rope-skips-k", "a missing loop range", "rope.cu",
     "for (int h = warp; h < heads + kv_heads; h += warps) {", "for (int h = warp; h < heads; h += warps) {"),
    ("geglu-gate-input-swapped", "wrong arithmetic", "gelu.cu",
     "y.v[j] = gate_act<G>(a.v[j]) * g.v[j];", "y.v[j] = gate_act<G>(g.v[j]) * a.v[j];"),
    ("geglu-scalar-past-end", "a write past the end", "gelu.cu",
     "    for (size_t i = first; i < rows * inter; i += stride) {", "    for (size_t i = first; i <= rows * inter; i += stride) {"),
    ("mean-pool-skips-last-row", "a missing loop range", "head.cu",
     "        for (int r = 0; r < len; ++r) {", "        for (int r = 0; r + 1 < len; ++r) {"),
    ("residual-stream-not-stored", "a missing store", "layernorm.cu",
     "        store_vec(hidden + row * width + col, x);\n", ""),
    ("classify-drops-bias", "wrong arithmetic", "head.cu",
     "logits[seq] = total + to_float(b[0]);", "logits[seq] = total;"),
    # The decoder LLMs' ops (issue 11): causal GQA attention with a shared prefix, RMSNorm,
    # Q/K norm, SwiGLU, the last-row gather.
    ("causal-mask-off-by-one", "an off-by-one mask", "attention.cu",
     "(causal && dist < 0)", "(causal && dist < -1)"),
    ("causal-tile-range-short", "an off-by-one mask", "attention.cu",
     ": causal ? min(len, q0 + Tr::kBlockM)", ": causal ? min(len, q0 + Tr::kBlockM - 1)"),
    ("causal-edge-test-off", "an off-by-one mask", "attention.cu",
     "(causal && j0 + Tr::kBlockN - 1 > q0);", "(causal && j0 + Tr::kBlockN - 1 > q0 + 1);"),
    ("prefix-not-seen", "a missing loop range", "attention.cu",
     "const int pre = seq > 0 ? int(prefix[0]) : 0;", "const int pre = 0;"),
    ("prefix-rows-from-own-sequence", "a wrong index", "attention.cu",
     "key < pre ? size_t(key) : size_t(start + key - pre)", "key < pre ? size_t(start + key) : size_t(start + key - pre)"),
    ("gqa-kv-head-modulo", "a wrong index", "attention.cu",
     "const int kv_head = head / (heads / kv_heads);", "const int kv_head = head % kv_heads;"),
    ("rmsnorm-drops-eps", "wrong arithmetic", "rmsnorm.cu",
     "rsqrtf(block_sum(q) / width + eps)", "rsqrtf(block_sum(q) / width)"),
    ("rmsnorm-residual-not-stored", "a missing store", "rmsnorm.cu",
     "            store_vec(hidden + row * width + col, x);\n", ""),
    ("qk-norm-weights-swapped", "a wrong index", "rope.cu",
     "const T* w = h < heads ? q_norm : k_norm;", "const T* w = h < heads ? k_norm : q_norm;"),
    ("qk-norm-over-half-head", "a missing loop range", "rope.cu",
     "            ss += a[k] * a[k] + b[k] * b[k];", "            ss += a[k] * a[k];"),
    ("swiglu-is-gelu", "wrong arithmetic", "gelu.cu",
     "return G == Gate::kGelu ? gelu_erf(x) : silu(x);", "return gelu_erf(x);"),
    ("gather-last-takes-first", "a wrong index", "head.cu",
     "const int row = kLast ? end - 1 : start;", "const int row = kLast ? end - 2 : start;"),
]

# The test binaries in the order they run: the kernel tests catch most, quickest.
ORDER = ["cuda_kernels", "cuda_e2e", "cuda_llm", "cuda_modernbert", "cuda_tune", "cuda_cli", "cuda_probe"]
SCHEDULES = ["lockstep", "warp-serial"]


def test_binaries():
    tests = []
    for f in sorted(os.listdir(os.path.join(ROOT, "tests"))):
        if f.startswith("cuda_") and f.endswith(".rs"):
            tests += ["--test", f[:-3]]
    out = subprocess.run(["cargo", "test", "--features", "cuda", *tests, "--no-run",
                          "--message-format=json"], cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit("softgpu_mutants.py: building the CUDA tests failed:\n" + out.stderr[-3000:])
    bins = {}
    for line in out.stdout.splitlines():
        try:
            m = json.loads(line)
        except ValueError:
            continue
        if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
            bins[m["target"]["name"]] = m["executable"]
    return sorted(bins.items(), key=lambda kv: ORDER.index(kv[0]) if kv[0] in ORDER else 99)


def why(stdout, stderr):
    """The first line that says what caught the mutant: the software GPU's own fault line (on
    stderr) when a checker caught it, else the failing assertion's message."""
    for line in stderr.splitlines():
        if line.startswith("softgpu: FAULT"):
            return line[len("softgpu: FAULT "):].strip()[:200]
    lines = stdout.splitlines()
    for i, line in enumerate(lines):
        if "panicked at" in line and i + 1 < len(lines):
            return lines[i + 1].strip()[:200]
    text = (stdout + stderr).strip()
    return text.splitlines()[-1][:200] if text else "(no output)"


def main():
    names = sys.argv[1:]
    chosen = [m for m in MUTANTS if not names or m[0] in names]
    bins = test_binaries()
    out_dir = os.path.join(WORK, "softgpu")
    kdir = os.path.join(WORK, "kernels")
    rows, survivors = [], []
    for name, kind, fname, old, new in chosen:
        shutil.rmtree(kdir, ignore_errors=True)
        shutil.copytree(os.path.join(ROOT, "kernels"), kdir)
        path = os.path.join(kdir, fname)
        text = open(path).read()
        if text.count(old) != 1:
            sys.exit(f"softgpu_mutants.py: mutant {name}: its original text occurs {text.count(old)} times in {fname}")
        open(path, "w").write(text.replace(old, new))
        env = dict(os.environ, SOFTGPU_KERNELS=kdir, SOFTGPU_OUT=out_dir)
        build = subprocess.run(["bash", "scripts/softgpu.sh", "checked"], cwd=ROOT, env=env,
                               capture_output=True, text=True)
        started = time.time()
        caught = None
        if build.returncode != 0:
            caught = ("the build", build.stderr.strip().splitlines()[-1][:160])
        lib = build.stdout.strip().splitlines()[-1] if build.returncode == 0 else ""
        for schedule in SCHEDULES if caught is None else []:
            for test, exe in bins:
                run_env = dict(os.environ, LD_LIBRARY_PATH=lib, CROSSRANK_SOFTGPU_SCHEDULE=schedule,
                               CROSSRANK_REQUIRE_GPU="1")
                try:
                    r = subprocess.run([exe, "--test-threads", "2"], cwd=ROOT, env=run_env,
                                       capture_output=True, text=True, timeout=600)
                    failed, out, err = r.returncode != 0, r.stdout, r.stderr
                except subprocess.TimeoutExpired:
                    failed, out, err = True, "timed out after 600 s (a hang)", ""
                if failed:
                    caught = (f"{test} ({schedule})", why(out, err))
                    break
            if caught:
                break
        secs = time.time() - started
        if caught:
            rows.append((name, kind, fname, caught[0], caught[1], secs))
        else:
            survivors.append(name)
            rows.append((name, kind, fname, "SURVIVED", "no test failed", secs))
        print(f"softgpu_mutants.py: {name}: {rows[-1][3]} ({secs:.0f} s): {rows[-1][4]}", flush=True)
    print()
    print("| mutant | bug | file | caught by | first failure |")
    print("| --- | --- | --- | --- | --- |")
    for name, kind, fname, by, what, _ in rows:
        print(f"| {name} | {kind} | {fname} | {by} | {what.replace('|', '/')} |")
    print(f"\nsoftgpu_mutants.py: {len(rows) - len(survivors)} of {len(rows)} mutants caught")
    if survivors:
        print("softgpu_mutants.py: SURVIVED: " + " ".join(survivors))
        sys.exit(1)


if __name__ == "__main__":
    main()
