#!/usr/bin/env python3
"""End-to-end parity and throughput of the crossrank binary against transformers itself.

Run by scripts/gpu-check.sh on a GPU machine (no network, no Rust): for each model shape
(MiniLM-L6 / BERT, bge-reranker-base / XLM-R base, bge-reranker-large / XLM-R large), builds the
model from a config with seeded random weights (the tokenizers come from the committed test models
under tests/data/models, so nothing is downloaded), scores 100 (query, passage) pairs with
transformers in float32 (eager attention) and with `crossrank rerank --raw-scores`, and reports
the largest absolute logit difference. Then times crossrank on a bigger set for pairs per second.

    python3 scripts/gpu_parity.py --bin target/release/crossrank --device cuda --out report.json
    python3 scripts/gpu_parity.py --device cpu --models minilm-l6 --pairs 20 --no-throughput  # dry run

Prints one JSON object (and writes it to --out): {"parity": {...}, "throughput": {...}, ...}.
"""

import argparse
import copy
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# name -> (family, hidden, heads, intermediate, layers, committed tokenizer to reuse)
SHAPES = {
    "minilm-l6": ("bert", 384, 12, 1536, 6, "bert-f32"),
    "bge-base": ("xlm-roberta", 768, 12, 3072, 12, "xlmr-bf16"),
    "bge-large": ("xlm-roberta", 1024, 16, 4096, 24, "xlmr-bf16"),
}

WORDS = (
    "the a of and to in is that for on with as by at from rerank query passage search engine "
    "model token attention layer vector score relevance document retrieval neural network "
    "kernel memory fast slow river bank fox dog paris rain coffee translation german french "
    "schnelle braune Fuchs Hund Lernen Intelligenz 机器 学习 搜索 引擎 données recherche "
    "modèle réseau быстрый поиск модель بحث نموذج 🚀 café naïve Ångström"
).split()


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def text(rng, lo, hi):
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def groups(seed, n_queries, per_query, lo=20, hi=300):
    rng = random.Random(seed)
    return [
        (text(rng, 3, 15), [text(rng, lo, hi) for _ in range(per_query)])
        for _ in range(n_queries)
    ]


def build_model(name, dest, torch, transformers):
    family, hidden, heads, inter, layers, tok_from = SHAPES[name]
    src = ROOT / "tests" / "data" / "models" / tok_from
    tok_cfg = json.loads((src / "config.json").read_text())
    common = dict(
        vocab_size=tok_cfg["vocab_size"],
        hidden_size=hidden,
        num_attention_heads=heads,
        intermediate_size=inter,
        num_hidden_layers=layers,
        hidden_act="gelu",
        num_labels=1,
        pad_token_id=tok_cfg["pad_token_id"],
    )
    if family == "bert":
        cfg = transformers.BertConfig(
            max_position_embeddings=512, type_vocab_size=2, layer_norm_eps=1e-12, **common
        )
        cls = transformers.BertForSequenceClassification
    else:
        cfg = transformers.XLMRobertaConfig(
            max_position_embeddings=514, type_vocab_size=1, layer_norm_eps=1e-5,
            bos_token_id=0, eos_token_id=2, **common
        )
        cls = transformers.XLMRobertaForSequenceClassification
    torch.manual_seed(1234)
    model = cls(cfg).eval()
    # Re-draw every weight far from the 0.02 init so that scores spread (as make_goldens.py
    # does): Linear ~ N(0, 1/fan_in), embeddings ~ N(0, 1), LayerNorm around 1 / 0.
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "LayerNorm" in pname or "layer_norm" in pname:
                if pname.endswith("weight"):
                    p.copy_(1 + 0.1 * torch.randn_like(p))
                else:
                    p.copy_(0.1 * torch.randn_like(p))
            elif "embeddings" in pname:
                p.copy_(torch.randn_like(p))
            elif pname.endswith("weight"):
                p.copy_(torch.randn_like(p) / p.shape[1] ** 0.5)
            else:
                p.copy_(0.05 * torch.randn_like(p))
    if dest.exists():
        shutil.rmtree(dest)
    model.save_pretrained(dest, safe_serialization=True)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(src / f, dest / f)
    return model


def crossrank_scores(binary, model_dir, query, passages, device, workdir, extra=()):
    docs = workdir / "docs.jsonl"
    with docs.open("w") as f:
        for p in passages:
            f.write(json.dumps({"text": p}) + "\n")
    cmd = [str(binary), "rerank", "--model", str(model_dir), "--query", query,
           "--docs", str(docs), "--raw-scores", "--device", device, *extra]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {out.stderr.strip()}")
    ranked = json.loads(out.stdout)
    results = ranked["results"] if isinstance(ranked, dict) else ranked
    scores = [None] * len(passages)
    for r in results:
        scores[r["index"]] = r["score"]
    if any(s is None for s in scores):
        raise RuntimeError(f"crossrank returned {len(results)} results for {len(passages)} passages")
    return scores


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=str(ROOT / "target" / "release" / "crossrank"))
    ap.add_argument("--device", default="cuda", help="cuda (GPU machine) or cpu (dry run)")
    ap.add_argument("--models", default=",".join(SHAPES))
    ap.add_argument("--pairs", type=int, default=100)
    ap.add_argument("--throughput-pairs", type=int, default=2000)
    ap.add_argument("--no-throughput", action="store_true")
    ap.add_argument("--workdir", default="/tmp/crossrank-gpu-check")
    ap.add_argument("--out")
    a = ap.parse_args()

    import torch
    import transformers

    tdev = "cuda" if a.device.startswith("cuda") else "cpu"
    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    # parity_torch_fp16: the same pairs through transformers with the model in fp16, against its
    # fp32 logits: what fp16 storage alone costs on that shape, to judge "parity" against.
    report = {"parity": {}, "parity_torch_fp16": {}, "throughput": {}, "pairs": a.pairs,
              "torch": torch.__version__, "transformers": transformers.__version__}
    for name in a.models.split(","):
        t0 = time.time()
        mdir = work / name
        model = build_model(name, mdir, torch, transformers).to(tdev)
        model16 = copy.deepcopy(model).half()
        tok = transformers.AutoTokenizer.from_pretrained(mdir)
        # 25 passages per query: 4 crossrank calls (each loads the model) for 100 pairs.
        per_query = max(1, min(25, a.pairs))
        gs = groups(7, -(-a.pairs // per_query), per_query)
        worst = worst16 = 0.0
        for q, ps in gs:
            with torch.no_grad():
                want = []
                for p in ps:  # one pair at a time: no padding in the reference
                    enc = tok(q, p, truncation=True, max_length=512, return_tensors="pt").to(tdev)
                    want.append(float(model(**enc).logits[0, 0]))
                    worst16 = max(worst16, abs(float(model16(**enc).logits[0, 0]) - want[-1]))
            got = crossrank_scores(a.bin, mdir, q, ps, a.device, work)
            worst = max(worst, max(abs(x - y) for x, y in zip(got, want)))
        report["parity"][name] = worst
        report["parity_torch_fp16"][name] = worst16
        log(f"gpu_parity: {name}: max |crossrank - transformers| = {worst:.3e} "
            f"(transformers in fp16: {worst16:.3e}; {len(gs) * per_query} pairs, "
            f"{time.time() - t0:.1f} s)")
        del model, model16
        if tdev == "cuda":
            torch.cuda.empty_cache()

        if not a.no_throughput:
            # Pairs per second of one call, its model load subtracted: time a call with n
            # passages and one with 10 (same query, passages of 20-200 words, up to 512 tokens).
            q, big = groups(11, 1, a.throughput_pairs, 20, 200)[0]
            def timed(ps):
                t = time.perf_counter()
                crossrank_scores(a.bin, mdir, q, ps, a.device, work)
                return time.perf_counter() - t
            timed(big[:10])  # warm the page cache
            small = min(timed(big[:10]) for _ in range(2))
            full = min(timed(big) for _ in range(2))
            pps = (len(big) - 10) / max(full - small, 1e-9)
            report["throughput"][name] = round(pps, 1)
            log(f"gpu_parity: {name}: {pps:.0f} pairs/s ({len(big)} pairs in {full:.2f} s, "
                f"10 pairs in {small:.2f} s)")
    text_out = json.dumps(report, indent=2)
    if a.out:
        Path(a.out).write_text(text_out + "\n")
    print(text_out)


if __name__ == "__main__":
    main()
