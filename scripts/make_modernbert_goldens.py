#!/usr/bin/env python3
"""Tiny seeded ModernBERT cross-encoders and their goldens, made by transformers itself.

    /work/venv-ref/bin/python scripts/make_modernbert_goldens.py

(torch 2.11, transformers 5, float32, attn_implementation="eager"). make_goldens.py calls this
at its end, since it clears tests/data/models and tests/data/goldens first.

Two models, both with BERT's committed tokenizer.json behind PreTrainedTokenizerFast (the class
the hub's ModernBERT rerankers name, which runs the file's post-processor):
- modernbert-cls: 4 layers [full, sliding, sliding, full] from global_attn_every_n_layers=3,
  local_attention 8 (4 keys each side), RoPE thetas 1000 (full) / 50 (sliding), cls pooling,
  no biases anywhere (the hub's settings).
- modernbert-mean: 3 explicit layer_types [sliding, full, sliding], local_attention 6, thetas
  10000 / 300, mean pooling, every bias on (norm, attention, mlp, classifier).
Pairs of ragged lengths, most longer than the window, some cut at the max length.

Goldens go to tests/data/goldens/modernbert/<name>.json (a folder of their own: the BERT-family
tests walk tests/data/goldens/*.json).
"""

import json
import math
import shutil
import sys
from pathlib import Path

import torch
import transformers
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    ModernBertConfig,
    ModernBertForSequenceClassification,
    PreTrainedTokenizerFast,
)

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "tests" / "data" / "models"
GOLDENS = ROOT / "tests" / "data" / "goldens" / "modernbert"
BERT_TOKENIZER = ROOT / "tests" / "data" / "models" / "bert-f32" / "tokenizer.json"
MAX_POS = 48
EXPLICIT_MAX = 20
BATCH_TOLERANCE = 2e-5


def corpus():
    sys.path.insert(0, str(ROOT / "scripts"))
    import make_goldens as mg  # noqa: E402  (its corpus and long passages)

    return mg


def reinit(model, seed: int) -> None:
    """Seeded weights far from the usual init, so that scores differ clearly from pair to pair."""
    g = torch.Generator().manual_seed(seed)
    touched = set()
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear):
                gain = 6.0 if name == "classifier" else 1.5
                module.weight.copy_(torch.randn(module.weight.shape, generator=g) * (gain / math.sqrt(module.weight.shape[1])))
                touched.add(f"{name}.weight")
                if module.bias is not None:
                    module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=g))
                    touched.add(f"{name}.bias")
            elif isinstance(module, torch.nn.Embedding):
                module.weight.copy_(torch.randn(module.weight.shape, generator=g))
                touched.add(f"{name}.weight")
            elif isinstance(module, torch.nn.LayerNorm):
                module.weight.copy_(1.0 + 0.2 * torch.randn(module.weight.shape, generator=g))
                touched.add(f"{name}.weight")
                if module.bias is not None:
                    module.bias.copy_(0.2 * torch.randn(module.bias.shape, generator=g))
                    touched.add(f"{name}.bias")
    missed = {n for n, _ in model.named_parameters()} - touched
    assert not missed, f"parameters left at their default init: {sorted(missed)}"


def tokenizer_dir(directory: Path) -> None:
    shutil.copy(BERT_TOKENIZER, directory / "tokenizer.json")
    (directory / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "model_max_length": MAX_POS,
                "cls_token": "[CLS]",
                "sep_token": "[SEP]",
                "pad_token": "[PAD]",
                "unk_token": "[UNK]",
                "mask_token": "[MASK]",
            },
            indent=2,
        )
        + "\n"
    )


def make_model(name: str, seed: int, **kw) -> Path:
    config = ModernBertConfig(
        vocab_size=1143,
        max_position_embeddings=MAX_POS,
        num_labels=1,
        pad_token_id=0,
        cls_token_id=2,
        sep_token_id=3,
        bos_token_id=2,
        eos_token_id=3,
        hidden_activation="gelu",
        classifier_activation="gelu",
        **kw,
    )
    config.architectures = ["ModernBertForSequenceClassification"]
    torch.manual_seed(seed)
    model = ModernBertForSequenceClassification(config)
    reinit(model, seed)
    directory = MODELS / name
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    model.eval().save_pretrained(str(directory))
    tokenizer_dir(directory)
    return directory


def groups(mg):
    c = mg.CORPUS
    return [
        ("How do cross-encoders rerank search results?", [c[0], c[6], mg.long_passage(0, 6), "", c[1] + " " + c[3], mg.long_passage(3, 2)]),
        (mg.LONG_QUERY, [c[2], mg.long_passage(5, 3), c[9]]),
        ("weather", [c[6], c[4] + " " + c[5], c[8], mg.long_passage(7, 4)]),
    ]


def golden_set(model, tokenizer, groups, max_length):
    out = []
    for query, passages in groups:
        ids, truncated, logits = [], [], []
        for passage in passages:
            enc = tokenizer([query], [passage], truncation="longest_first", max_length=max_length)
            full = tokenizer([query], [passage])
            x = enc["input_ids"][0]
            with torch.no_grad():
                logit = model(input_ids=torch.tensor([x]), attention_mask=torch.ones(1, len(x), dtype=torch.long)).logits[0, 0]
            ids.append(list(x))
            truncated.append(len(full["input_ids"][0]) > max_length)
            logits.append(float(logit))
        # One padded batch agrees with one at a time (the padding mask, mean pooling's mask).
        batch = tokenizer([query] * len(passages), passages, truncation="longest_first", max_length=max_length, padding=True, return_tensors="pt")
        with torch.no_grad():
            batched = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0].tolist()
        worst = max(abs(a - b) for a, b in zip(batched, logits))
        assert worst <= BATCH_TOLERANCE, f"batched vs one-at-a-time differ by {worst}"
        out.append({"query": query, "passages": passages, "input_ids": ids, "truncated": truncated, "logits": logits})
    return out


def make_golden(name: str, directory: Path, mg) -> None:
    model = AutoModelForSequenceClassification.from_pretrained(str(directory), dtype=torch.float32, attn_implementation="eager")
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    assert type(tokenizer).__name__ in ("PreTrainedTokenizerFast", "TokenizersBackend"), type(tokenizer)
    g = groups(mg)
    golden = {
        "model": name,
        "max_length": MAX_POS,
        "groups": golden_set(model, tokenizer, g, MAX_POS),
        "explicit_max_length": {"max_length": EXPLICIT_MAX, "groups": golden_set(model, tokenizer, g, EXPLICIT_MAX)},
    }
    lens = [len(i) for s in (golden["groups"], golden["explicit_max_length"]["groups"]) for grp in s for i in grp["input_ids"]]
    window = model.config.local_attention
    n_trunc = sum(sum(grp["truncated"]) for grp in golden["groups"])
    assert n_trunc > 0 and max(lens) > window + 1, (name, n_trunc, lens)
    logits = [x for grp in golden["groups"] for x in grp["logits"]]
    print(f"{name}: {len(lens)} pairs, lengths {min(lens)}..{max(lens)}, window {window}, {n_trunc} truncated, logits {min(logits):.3f}..{max(logits):.3f}")
    GOLDENS.mkdir(parents=True, exist_ok=True)
    (GOLDENS / f"{name}.json").write_text(mg.to_json(golden) + "\n", encoding="utf-8")


def make_modernbert() -> None:
    torch.set_num_threads(2)
    mg = corpus()
    cls_dir = make_model(
        "modernbert-cls",
        seed=101,
        hidden_size=32,
        num_attention_heads=2,
        intermediate_size=48,
        num_hidden_layers=4,
        global_attn_every_n_layers=3,
        local_attention=8,
        global_rope_theta=1000.0,
        local_rope_theta=50.0,
        norm_eps=1e-5,
        classifier_pooling="cls",
    )
    make_golden("modernbert-cls", cls_dir, mg)
    mean_dir = make_model(
        "modernbert-mean",
        seed=202,
        hidden_size=48,
        num_attention_heads=3,
        intermediate_size=40,
        num_hidden_layers=3,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        rope_parameters={
            "full_attention": {"rope_type": "default", "rope_theta": 10000.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 300.0},
        },
        local_attention=6,
        norm_eps=1e-6,
        norm_bias=True,
        attention_bias=True,
        mlp_bias=True,
        classifier_bias=True,
        classifier_pooling="mean",
    )
    make_golden("modernbert-mean", mean_dir, mg)


if __name__ == "__main__":
    print(f"torch {torch.__version__}, transformers {transformers.__version__}")
    make_modernbert()
