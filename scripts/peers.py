#!/usr/bin/env python3
"""The PyTorch peers of `crossrank bench`, on the same model files and the same inputs.

    crossrank bench --shape S --lengths L --export-workload W.json ...   # the inputs
    python3 scripts/peers.py --model DIR --workload W.json [--workload W2.json] --device cuda --out peers.json

Each system loads (and compiles) the model once and then runs every workload given.

Systems (each one JSON report in crossrank's schema, src/bench/report.rs):
  st-default   sentence-transformers CrossEncoder.predict, fp16, its default batch size (32)
  st-batch-n   the same with batch_size = N (one batch per call)
  hf-sdpa      transformers AutoModelForSequenceClassification, fp16, attn_implementation="sdpa",
               one padded batch per call (tokenizer(..., padding=True, truncation=True))
  hf-compile   hf-sdpa under torch.compile(dynamic=True); compile time is in the notes

A decoder LLM reranker (config `*ForCausalLM`, the qwen3-reranker-0.6b shape) runs as
Qwen3-Reranker's model card scores it: AutoModelForCausalLM in bf16 (crossrank's CUDA dtype for
the family; the card's example uses fp16 with flash-attention 2, not installed here), the
tokenizer padded on the left, each pair formatted `<Instruct>: {instruction}\n<Query>: {query}\n
<Document>: {doc}` with the default instruction, cut to max_length minus the prompt's fixed
tokens, the chat prefix and suffix ids added, one padded batch per call, the yes / no logits of
the last position through a two-way log-softmax (the card's code computes the LM head over every
position; so does this peer). hf-sdpa and hf-compile only: sentence-transformers' CrossEncoder
does not load it.

Figures per N, as crossrank reports them: end-to-end latency (strings in, sigmoid scores on the
host), the forward alone (hf-*: tensors already on the device, logits synchronised on the device;
st-*: not separable, reported equal to end to end), the split (hf-*: tokenize, upload, forward,
download), FLOPs of the tokens actually present (padding is not useful work: Σ attention_mask),
MFU against a torch.matmul fp16 8192³ rate measured here. Runs offline (local_files_only).

An image-text model (config `BlipForImageTextRetrieval`: the blip-itm-base and tiny-blip shapes)
takes the image workload (`crossrank bench --export-workload W.json` on it writes W.json and the
images in W.images/) and has one system:
  hf-itm       transformers BlipForImageTextRetrieval, fp16 (fp32 on the CPU), eager, the
               images decoded by PIL from the exported bytes (read into memory first) and
               preprocessed by the model's AutoImageProcessor (BlipImageProcessor: the PIL or,
               with torchvision installed, the torchvision backend; the report's notes say which),
               the query tokenized N times, one batch per call, score = softmax(itm_score)[:, 1].
It reports crossrank's two rows per N: `cache-cold` (the call's query) and `cache-warm` (the
call's repeat_query, timed after an untimed call of its query over the same images; transformers
keeps no image cache, so the two rows do the same work). preprocess_ms is decode + processor;
forward_ms is everything after it (tokenize, upload, forward, scores to the host, sort), as
crossrank times its forward. --scores FILE also writes every timed query's logits
(z[1] - z[0], in image order) for each call, to compare with crossrank's.

On the CPU (--device cpu, a dry run for a tiny shape) the dtype is float32 and the GEMM is f32
1024³; the figures mean nothing there, only that the script works.
"""

import argparse
import datetime
import json
import math
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

import torch  # noqa: E402

SYSTEMS = ["st-default", "st-batch-n", "hf-sdpa", "hf-compile"]
IMAGE_SYSTEMS = ["hf-itm"]
SCHEMA = 1


def stats(samples_ms):
    """Nearest-rank percentiles, as src/bench/report.rs computes them."""
    if not samples_ms:
        return {"p50": 0.0, "p99": 0.0, "mean": 0.0, "min": 0.0, "max": 0.0, "samples": 0}
    s = sorted(samples_ms)

    def rank(p):
        k = math.ceil(p / 100.0 * len(s))
        return s[min(max(k, 1), len(s)) - 1]

    return {"p50": rank(50), "p99": rank(99), "mean": sum(s) / len(s), "min": s[0],
            "max": s[-1], "samples": len(s)}


def median(xs):
    return stats(xs)["p50"] if xs else None


def is_llm(c):
    return any(a.endswith("ForCausalLM") for a in c.get("architectures", []))


def is_blip(c):
    return "BlipForImageTextRetrieval" in c.get("architectures", [])


def blip_forward_flops(lens, c):
    """src/bench/report.rs's BLIP formula: every pair's image through the vision tower, the text
    tower with cross-attention to it, the two-way ITM head."""
    t_cfg, v_cfg = c["text_config"], c["vision_config"]
    h, i, layers = float(t_cfg["hidden_size"]), float(t_cfg["intermediate_size"]), t_cfg["num_hidden_layers"]
    vh, vi, vl = float(v_cfg["hidden_size"]), float(v_cfg["intermediate_size"]), v_cfg["num_hidden_layers"]
    p = v_cfg["patch_size"]
    rows = float((v_cfg["image_size"] // p) ** 2 + 1)
    n, t = float(len(lens)), float(sum(lens))
    sq = float(sum(x * x for x in lens))
    vision = 2 * (rows - 1) * 3 * p * p * vh + vl * (2 * rows * (4 * vh * vh + 2 * vh * vi) + 4 * vh * rows * rows)
    text = layers * (2 * t * (6 * h * h + 2 * h * i) + 4 * h * sq + n * 4 * rows * h * vh + 4 * h * rows * t)
    return n * vision + text + 4 * n * h


def forward_flops(lens, c):
    """The FLOP count of src/bench/report.rs (model_forward_flops) for config.json `c`: matrix
    products of the full forward; ModernBERT's GeGLU and windowed layers, and the decoder LLMs'
    GQA, causal attention and SwiGLU, by their own formulas."""
    h, i, layers = float(c["hidden_size"]), float(c["intermediate_size"]), c["num_hidden_layers"]
    if is_llm(c):
        d = c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
        q, kv = float(c["num_attention_heads"] * d), float(c["num_key_value_heads"] * d)
        t = float(sum(lens))
        causal = float(sum(x * (x + 1) / 2 for x in lens))
        return layers * (2 * t * (h * (q + 2 * kv) + q * h + 3 * h * i) + 4 * q * causal) \
            + 2 * len(lens) * h
    t = float(sum(lens))
    sq = float(sum(x * x for x in lens))
    head = 2 * len(lens) * (h * h + h)
    if c.get("model_type") != "modernbert":
        return layers * (2 * t * (4 * h * h + 2 * h * i) + 4 * h * sq) + head
    w = c["local_attention"] // 2
    every = c.get("global_attn_every_n_layers", 1)
    kinds = c.get("layer_types") or ["full_attention" if l % every == 0 else "sliding_attention"
                                     for l in range(layers)]
    windowed = float(sum(min(n, q + w + 1) - max(0, q - w) for n in lens for q in range(n)))
    keys = sum(sq if k == "full_attention" else windowed for k in kinds)
    return layers * 2 * t * (4 * h * h + 3 * h * i) + 4 * h * keys + head


class Device:
    def __init__(self, name):
        self.name = name
        self.cuda = name.startswith("cuda")
        self.dtype = torch.float16 if self.cuda else torch.float32

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def describe(self):
        if self.cuda:
            idx = torch.device(self.name).index or 0
            return f"cuda:{idx} {torch.cuda.get_device_name(idx)}"
        return f"cpu ({torch.get_num_threads()} threads)"


def measure_gemm(dev):
    size, reps = (8192, 20) if dev.cuda else (1024, 3)
    a = torch.randn(size, size, device=dev.name, dtype=dev.dtype) * 0.1
    b = torch.randn(size, size, device=dev.name, dtype=dev.dtype) * 0.1
    for _ in range(2):
        torch.matmul(a, b)
    dev.sync()
    t0 = time.perf_counter()
    for _ in range(reps):
        torch.matmul(a, b)
    dev.sync()
    secs = time.perf_counter() - t0
    dtype = "f16" if dev.cuda else "f32"
    return {"dtype": dtype, "m": size, "n": size, "k": size,
            "tflops": 2.0 * size ** 3 * reps / secs / 1e12,
            "note": f"torch.matmul {dtype}, {reps} products timed after 2 warm-ups"}


def model_facts(model_dir, name):
    with open(os.path.join(model_dir, "config.json")) as f:
        c = json.load(f)
    if is_blip(c):
        # crossrank's count: the checkpoint less the contrastive projections (not used by ITM).
        with open(os.path.join(model_dir, "model.safetensors"), "rb") as f:
            header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
        params = sum(math.prod(t["shape"]) for k, t in header.items()
                     if k != "__metadata__" and not k.startswith(("vision_proj.", "text_proj.")))
        t = c["text_config"]
        return {"name": name or c.get("crossrank_shape") or os.path.basename(os.path.normpath(model_dir)),
                "architecture": c["architectures"][0], "layers": t["num_hidden_layers"],
                "hidden": t["hidden_size"], "heads": t["num_attention_heads"],
                "intermediate": t["intermediate_size"], "vocab": t["vocab_size"], "parameters": params}
    h, i, v = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    layers, pos, types = c["num_hidden_layers"], c["max_position_embeddings"], c.get("type_vocab_size", 2)
    params = (v + pos + types) * h + 2 * h + layers * (4 * (h * h + h) + 2 * h * i + i + h + 4 * h) \
        + h * h + h + h + 1
    if c.get("model_type") == "modernbert" or is_llm(c):
        # No position or type tables, no biases: count the checkpoint's tensors, as crossrank does.
        with open(os.path.join(model_dir, "model.safetensors"), "rb") as f:
            header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
        params = sum(math.prod(t["shape"]) for k, t in header.items() if k != "__metadata__")
    return {"name": name or c.get("crossrank_shape") or os.path.basename(os.path.normpath(model_dir)),
            "architecture": c["architectures"][0], "layers": layers, "hidden": h,
            "heads": c["num_attention_heads"], "intermediate": i, "vocab": v, "parameters": params}


def finish(run, gemm_tflops):
    """The derived figures, as report::derive computes them."""
    secs = run["e2e_ms"]["mean"] / 1e3
    run["pairs_per_s"] = run["n"] / secs if secs > 0 else 0.0
    run["tokens_per_s"] = run["tokens_per_call"] / secs if secs > 0 else 0.0
    fwd = run["forward_ms"]["p50"]
    e2e = run["e2e_ms"]["p50"]
    run["tflops"] = run["flops_per_call"] / (fwd / 1e3) / 1e12 if fwd > 0 else 0.0
    run["e2e_tflops"] = run["flops_per_call"] / (e2e / 1e3) / 1e12 if e2e > 0 else 0.0
    run["mfu"] = run["tflops"] / gemm_tflops if gemm_tflops else None
    tok = run["split"].get("tokenize_ms")
    run["tokenize_share"] = tok / e2e if tok is not None and e2e > 0 else None
    return run


class HfPeer:
    """transformers, one padded batch per call; optionally under torch.compile."""

    def __init__(self, model_dir, dev, compiled):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        self.dev = dev
        self.tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        try:
            m = AutoModelForSequenceClassification.from_pretrained(
                model_dir, dtype=dev.dtype, attn_implementation="sdpa", local_files_only=True)
        except TypeError:
            m = AutoModelForSequenceClassification.from_pretrained(
                model_dir, torch_dtype=dev.dtype, attn_implementation="sdpa", local_files_only=True)
        self.model = m.to(dev.name).eval()
        self.compile_s = None
        if compiled:
            self.model = torch.compile(self.model, dynamic=True)

    def tokenize(self, call):
        q = [call["query"]] * len(call["passages"])
        return self.tok(q, call["passages"], padding=True, truncation=True, return_tensors="pt")

    @torch.inference_mode()
    def forward(self, enc_dev):
        return self.model(**enc_dev).logits

    def lens(self, enc):
        return enc["attention_mask"].sum(dim=1).tolist()

    @torch.inference_mode()
    def e2e(self, call):
        """Strings in, sorted sigmoid scores out; returns the split in seconds."""
        t0 = time.perf_counter()
        enc = self.tokenize(call)
        t1 = time.perf_counter()
        enc_dev = {k: v.to(self.dev.name, non_blocking=False) for k, v in enc.items()}
        self.dev.sync()
        t2 = time.perf_counter()
        logits = self.forward(enc_dev)
        self.dev.sync()
        t3 = time.perf_counter()
        scores = torch.sigmoid(logits.float().squeeze(-1)).cpu()
        order = torch.argsort(scores, descending=True)
        t4 = time.perf_counter()
        return (scores, order), (t1 - t0, t2 - t1, t3 - t2, t4 - t3)


QWEN_PREFIX = ("<|im_start|>system\nJudge whether the Document meets the requirements based on the "
               "Query and the Instruct provided. Note that the answer can only be \"yes\" or \"no\"."
               "<|im_end|>\n<|im_start|>user\n")
QWEN_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
QWEN_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"


class HfLlmPeer(HfPeer):
    """A decoder LLM reranker as Qwen3-Reranker's model card runs it (module docstring)."""

    def __init__(self, model_dir, dev, compiled, max_length):
        from transformers import AutoModelForCausalLM, AutoTokenizer
        self.dev = dev
        self.dtype = torch.bfloat16 if dev.cuda else torch.float32
        self.tok = AutoTokenizer.from_pretrained(model_dir, padding_side="left", local_files_only=True)
        m = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=self.dtype, attn_implementation="sdpa", local_files_only=True)
        self.model = m.to(dev.name).eval()
        self.compile_s = None
        if compiled:
            self.model = torch.compile(self.model, dynamic=True)
        self.prefix = self.tok.encode(QWEN_PREFIX, add_special_tokens=False)
        self.suffix = self.tok.encode(QWEN_SUFFIX, add_special_tokens=False)
        self.yes = self.tok.convert_tokens_to_ids("yes")
        self.no = self.tok.convert_tokens_to_ids("no")
        self.max_length = max_length

    def prompts(self, call):
        """The pairs' ids, cut as the card's code cuts them, unpadded."""
        texts = [f"<Instruct>: {QWEN_INSTRUCTION}\n<Query>: {call['query']}\n<Document>: {p}"
                 for p in call["passages"]]
        room = self.max_length - len(self.prefix) - len(self.suffix)
        enc = self.tok(texts, padding=False, truncation="longest_first",
                       return_attention_mask=False, max_length=room)
        full = self.tok(texts, padding=False, truncation=False, return_attention_mask=False)
        ids = [self.prefix + e + self.suffix for e in enc["input_ids"]]
        cut = sum(len(a) != len(b) for a, b in zip(enc["input_ids"], full["input_ids"]))
        return ids, cut

    def tokenize(self, call):
        ids, _ = self.prompts(call)
        return self.tok.pad({"input_ids": ids}, padding=True, return_tensors="pt")

    @torch.inference_mode()
    def forward(self, enc_dev):
        last = self.model(**enc_dev).logits[:, -1, :]
        pair = torch.stack([last[:, self.no], last[:, self.yes]], dim=1).float()
        # log P(yes): HfPeer.e2e's sigmoid of it keeps the order (timing is what is measured).
        return torch.nn.functional.log_softmax(pair, dim=1)[:, 1:]


class StPeer:
    """sentence-transformers CrossEncoder.predict."""

    def __init__(self, model_dir, dev, batch_n):
        from sentence_transformers import CrossEncoder
        self.dev = dev
        self.batch_n = batch_n
        self.ce = CrossEncoder(model_dir, device=dev.name, local_files_only=True,
                               model_kwargs={"dtype": dev.dtype})
        self.ce.to(dev.dtype)
        self.ce.eval()
        self.tok = self.ce.tokenizer if hasattr(self.ce, "tokenizer") else None

    def e2e(self, call):
        pairs = [(call["query"], p) for p in call["passages"]]
        kw = {"batch_size": len(pairs)} if self.batch_n else {}
        t0 = time.perf_counter()
        scores = self.ce.predict(pairs, show_progress_bar=False, **kw)
        order = scores.argsort()[::-1]
        t1 = time.perf_counter()
        return (scores, order), (None, None, None, None, t1 - t0)


def bench_system(system, model_dir, dev, workloads, iters, warmup, flops_of, hf_lens,
                 llm_max_length=None):
    """Runs one system over every workload and N; returns [(workload, runs, notes)]."""
    notes = []
    if system.startswith("st-"):
        peer = StPeer(model_dir, dev, batch_n=(system == "st-batch-n"))
        notes.append("st: tokenize and forward are not separable inside CrossEncoder.predict; "
                     "forward_ms is the end-to-end time")
        if system == "st-default":
            notes.append("st-default: CrossEncoder.predict's default batch_size=32")
    elif llm_max_length is not None:
        peer = HfLlmPeer(model_dir, dev, (system == "hf-compile"), llm_max_length)
        notes.append("decoder LLM: bf16, the model card's formatting and scoring, padded left")
    else:
        peer = HfPeer(model_dir, dev, compiled=(system == "hf-compile"))
    out = []
    for workload in workloads:
        runs, wnotes = run_workload(system, peer, dev, workload, iters, warmup, flops_of, hf_lens)
        out.append((workload, runs, notes + wnotes))
    del peer
    if dev.cuda:
        torch.cuda.empty_cache()
    return out


def run_workload(system, peer, dev, workload, iters, warmup, flops_of, hf_lens):
    notes = []
    runs = []
    for cs in workload["sets"]:
        n, calls = cs["n"], cs["calls"]
        k = len(calls)
        measured = [hf_lens(c) for c in calls]  # unpadded pair lengths, from the tokenizer
        lens = [m[0] for m in measured]
        truncated = sum(m[1] for m in measured)
        e2e, tok, up, fw, down, fwd_only = [], [], [], [], [], []
        first = None
        for i in range(warmup + iters):
            c = calls[i % k]
            t0 = time.perf_counter()
            _, split = peer.e2e(c)
            total = time.perf_counter() - t0
            if first is None:
                first = total
            if i < warmup:
                continue
            e2e.append(total * 1e3)
            if split[0] is not None:
                tok.append(split[0] * 1e3)
                up.append(split[1] * 1e3)
                fw.append(split[2] * 1e3)
                down.append(split[3] * 1e3)
        if isinstance(peer, HfPeer):
            encs = [{kk: v.to(dev.name) for kk, v in peer.tokenize(c).items()} for c in calls]
            for i in range(warmup + iters):
                dev.sync()
                t0 = time.perf_counter()
                peer.forward(encs[i % k])
                dev.sync()
                if i >= warmup:
                    fwd_only.append((time.perf_counter() - t0) * 1e3)
            if system == "hf-compile":
                notes.append(f"N={n}: first call (compile included) took {first:.1f} s")
        else:
            fwd_only = list(e2e)
        flops = [flops_of(l) for l in lens]
        tokens = [sum(l) for l in lens]
        runs.append({
            "n": n, "calls": k, "iterations": iters,
            "tokens_per_call": sum(tokens) / k,
            "max_seqlen": max(max(l) for l in lens),
            "truncated_pairs": truncated,
            "flops_per_call": sum(flops) / k,
            "e2e_ms": stats(e2e), "forward_ms": stats(fwd_only),
            "pairs_per_s": 0.0, "tokens_per_s": 0.0, "tflops": 0.0, "e2e_tflops": 0.0,
            "mfu": None,
            "split": {"tokenize_ms": median(tok), "pack_ms": None, "upload_ms": median(up),
                      "forward_ms": median(fw), "download_ms": median(down)},
            "tokenize_share": None,
        })
        print(f"peers: {system} {workload['lengths']} N={n}: e2e p50 {stats(e2e)['p50']:.2f} ms",
              file=sys.stderr, flush=True)
    return runs, notes


class ItmPeer:
    """transformers' BlipForImageTextRetrieval with its ITM head (module docstring)."""

    def __init__(self, model_dir, dev):
        from transformers import AutoImageProcessor, AutoTokenizer, BlipForImageTextRetrieval
        self.dev = dev
        self.tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        self.processor = AutoImageProcessor.from_pretrained(model_dir, local_files_only=True)
        m = BlipForImageTextRetrieval.from_pretrained(
            model_dir, dtype=dev.dtype, attn_implementation="eager", local_files_only=True)
        self.model = m.to(dev.name).eval()

    def preprocess(self, blobs):
        import io
        from PIL import Image
        images = []
        for b in blobs:
            im = Image.open(io.BytesIO(b))
            im.load()
            images.append(im)
        return self.processor(images=images, return_tensors="pt")["pixel_values"]

    @torch.inference_mode()
    def score(self, query, pixel_values):
        """Logits z[1] - z[0] on the host, the order, and (tokenize, upload, forward, download)."""
        t0 = time.perf_counter()
        enc = self.tok([query] * pixel_values.shape[0], padding=True, truncation=True, return_tensors="pt")
        t1 = time.perf_counter()
        ids = enc["input_ids"].to(self.dev.name)
        mask = enc["attention_mask"].to(self.dev.name)
        pv = pixel_values.to(self.dev.name, dtype=self.dev.dtype)
        self.dev.sync()
        t2 = time.perf_counter()
        z = self.model(input_ids=ids, attention_mask=mask, pixel_values=pv, use_itm_head=True).itm_score
        scores = torch.softmax(z.float(), dim=1)[:, 1]
        self.dev.sync()
        t3 = time.perf_counter()
        z = z.float().cpu()
        order = torch.argsort(scores.cpu(), descending=True)
        t4 = time.perf_counter()
        return (z[:, 1] - z[:, 0]).tolist(), order, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)

    def call(self, blobs, query):
        t0 = time.perf_counter()
        pv = self.preprocess(blobs)
        t1 = time.perf_counter()
        logits, _, split = self.score(query, pv)
        t2 = time.perf_counter()
        return logits, t1 - t0, t2 - t1, split


def run_image_workload(peer, workload, blobs, iters, warmup, config, scores):
    """crossrank's cache-cold and cache-warm rows for every N of an image workload."""
    runs = []
    for cs in workload["sets"]:
        n, calls = cs["n"], cs["calls"]
        k = len(calls)
        for label, warm in (("cache-cold", False), ("cache-warm", True)):
            e2e, prep, fwd, tok, up, fw, down = [], [], [], [], [], [], []
            for i in range(warmup + iters):
                c = calls[i % k]
                imgs = [blobs[j] for j in c["images"]]
                if warm:
                    peer.call(imgs, c["query"])
                query = c["repeat_query"] if warm else c["query"]
                logits, p, f, split = peer.call(imgs, query)
                if i < warmup:
                    continue
                e2e.append((p + f) * 1e3)
                prep.append(p * 1e3)
                fwd.append(f * 1e3)
                for xs, x in zip((tok, up, fw, down), split):
                    xs.append(x * 1e3)
                scores.append({"n": n, "call": i % k, "query": query, "images": c["images"], "logits": logits})
            lens = []
            truncated = 0
            for c in calls:
                q = c["repeat_query"] if warm else c["query"]
                ids = peer.tok(q, truncation=True)["input_ids"]
                full = peer.tok(q, truncation=False)["input_ids"]
                lens.append([len(ids)] * len(c["images"]))
                truncated += len(c["images"]) if len(ids) != len(full) else 0
            runs.append({
                "n": n, "calls": k, "iterations": iters,
                "tokens_per_call": sum(sum(l) for l in lens) / k,
                "max_seqlen": max(max(l) for l in lens),
                "truncated_pairs": truncated,
                "flops_per_call": sum(blip_forward_flops(l, config) for l in lens) / k,
                "e2e_ms": stats(e2e), "forward_ms": stats(fwd),
                "pairs_per_s": 0.0, "tokens_per_s": 0.0, "tflops": 0.0, "e2e_tflops": 0.0,
                "mfu": None,
                "split": {"tokenize_ms": median(tok), "pack_ms": None, "upload_ms": median(up),
                          "forward_ms": median(fw), "download_ms": median(down),
                          "preprocess_ms": median(prep)},
                "tokenize_share": None,
                "cache": label,
            })
            print(f"peers: hf-itm images N={n} {label}: e2e p50 {stats(e2e)['p50']:.2f} ms",
                  file=sys.stderr, flush=True)
    return runs


def image_main(args, config, workloads, paths, dev, facts):
    systems = [s for s in args.systems.split(",") if s]
    bad = [s for s in systems if s not in IMAGE_SYSTEMS]
    if bad:
        sys.exit(f"peers.py: {', '.join(bad)}: an image-text model has these systems only: "
                 f"{', '.join(IMAGE_SYSTEMS)}")
    loaded = []
    for w, path in zip(workloads, paths):
        if w.get("kind") != "images":
            sys.exit(f"peers.py: {path}: a text workload; {facts['architecture']} takes an image "
                     f"workload (crossrank bench --export-workload on the image model)")
        folder = os.path.join(os.path.dirname(os.path.abspath(path)), w["image_dir"])
        blobs = []
        for im in w["images"]:
            try:
                with open(os.path.join(folder, im["file"]), "rb") as f:
                    blobs.append(f.read())
            except OSError as e:
                sys.exit(f"peers.py: {path}: image {im['file']}: {e}")
        loaded.append((w, blobs))
    gemm = measure_gemm(dev)
    import transformers
    import PIL
    versions = f"torch {torch.__version__}, transformers {transformers.__version__}, pillow {PIL.__version__}"
    peer = ItmPeer(args.model, dev)
    notes = [f"image processor: {type(peer.processor).__name__}; images decoded by PIL from bytes "
             f"in memory", "transformers keeps no image cache: cache-cold and cache-warm rows do "
             "the same work; cache-warm times the repeat query after its first query"]
    if not dev.cuda:
        notes.append("CPU dry run: float32, MFU against torch's f32 GEMM rate")
    reports, scores = [], []
    for w, blobs in loaded:
        runs = run_image_workload(peer, w, blobs, args.iters, args.warmup, config, scores)
        for r in runs:
            finish(r, gemm["tflops"])
        reports.append({
            "schema": SCHEMA, "system": "hf-itm", "version": versions, "commit": None,
            "date": datetime.date.today().isoformat(), "device": dev.describe(),
            "dtype": "f16" if dev.cuda else "f32", "gemm": gemm, "model": facts,
            "lengths": w["lengths"], "seed": w["seed"], "runs": runs, "notes": list(notes),
        })
    with open(args.out, "w") as f:
        json.dump(reports, f, indent=1)
    if args.scores:
        with open(args.scores, "w") as f:
            json.dump(scores, f)
    print(f"peers.py: wrote {len(reports)} reports to {args.out}", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="model directory (crossrank make-shape)")
    ap.add_argument("--workload", required=True, action="append",
                    help="JSON from crossrank bench --export-workload (repeatable)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--systems", default=",".join(SYSTEMS))
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--name", default=None, help="model name in the report (default: the shape)")
    ap.add_argument("--max-length", type=int, default=None,
                    help="decoder LLMs: the prompt's max length (default: the tokenizer's, as crossrank)")
    ap.add_argument("--out", required=True, help="write the list of reports here")
    ap.add_argument("--scores", default=None,
                    help="image-text models: also write every timed call's logits here (JSON)")
    args = ap.parse_args()

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("peers.py: --device cuda but torch sees no CUDA device")
    try:
        with open(os.path.join(args.model, "config.json")) as f:
            config = json.load(f)
    except (OSError, ValueError) as e:
        sys.exit(f"peers.py: {args.model}: {e}")
    workloads = []
    for path in args.workload:
        try:
            with open(path) as f:
                workloads.append(json.load(f))
        except (OSError, ValueError) as e:
            sys.exit(f"peers.py: {path}: {e}")
    if is_blip(config):
        if args.systems == ",".join(SYSTEMS):
            args.systems = ",".join(IMAGE_SYSTEMS)
        image_main(args, config, workloads, args.workload, Device(args.device),
                   model_facts(args.model, args.name))
        return

    systems = [s for s in args.systems.split(",") if s]
    for s in systems:
        if s not in SYSTEMS:
            sys.exit(f"peers.py: system `{s}` is not one of: {', '.join(SYSTEMS)}")
    for w, path in zip(workloads, args.workload):
        if w.get("kind") == "images":
            sys.exit(f"peers.py: {path}: an image workload; {args.model} is a text model")
    dev = Device(args.device)
    facts = model_facts(args.model, args.name)
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(args.model, local_files_only=True)
    llm_max_length = None
    if is_llm(config):
        llm_max_length = args.max_length or tok.model_max_length
        bad = [s for s in systems if s.startswith("st-")]
        if bad:
            sys.exit(f"peers.py: {', '.join(bad)}: sentence-transformers does not load a causal-LM "
                     f"reranker; use --systems hf-sdpa,hf-compile")
        lens_of = HfLlmPeer.__new__(HfLlmPeer)
        lens_of.tok, lens_of.max_length = tok, llm_max_length
        lens_of.prefix = tok.encode(QWEN_PREFIX, add_special_tokens=False)
        lens_of.suffix = tok.encode(QWEN_SUFFIX, add_special_tokens=False)

    def hf_lens(call):
        if llm_max_length is not None:
            ids, cut = lens_of.prompts(call)
            return [len(x) for x in ids], cut
        """Unpadded pair lengths after truncation, and how many pairs were cut."""
        q = [call["query"]] * len(call["passages"])
        cut = tok(q, call["passages"], truncation=True)["input_ids"]
        full = tok(q, call["passages"], truncation=False)["input_ids"]
        return [len(x) for x in cut], sum(len(a) != len(b) for a, b in zip(cut, full))

    gemm = measure_gemm(dev)
    import sentence_transformers
    import transformers
    versions = (f"torch {torch.__version__}, transformers {transformers.__version__}, "
                f"sentence-transformers {sentence_transformers.__version__}")
    reports = []
    for system in systems:
        for workload, runs, notes in bench_system(
                system, args.model, dev, workloads, args.iters, args.warmup,
                lambda lens: forward_flops(lens, config), hf_lens, llm_max_length):
            for r in runs:
                finish(r, gemm["tflops"])
            if not dev.cuda:
                notes.append("CPU dry run: float32, MFU against torch's f32 GEMM rate")
            reports.append({
                "schema": SCHEMA, "system": system, "version": versions, "commit": None,
                "date": datetime.date.today().isoformat(), "device": dev.describe(),
                "dtype": ("bf16" if llm_max_length else "f16") if dev.cuda else "f32",
                "gemm": gemm, "model": facts,
                "lengths": workload["lengths"], "seed": workload["seed"], "runs": runs,
                "notes": notes,
            })
    with open(args.out, "w") as f:
        json.dump(reports, f, indent=1)
    print(f"peers.py: wrote {len(reports)} reports to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
