"""Goldens for tokenizer.json files whose own pipeline is not what transformers 5 runs.

transformers 5 rebuilds BertTokenizer's and XLMRobertaTokenizer's normalizer, pre-tokenizer and
post-processor from tokenizer_config.json, keeping the file's vocabulary (src/tokenizer_class.rs).
This writes variants of the committed test tokenizers whose files or configs disagree with the
class, and transformers' own pair encodings of texts where the difference shows (trailing and
repeated spaces, case, accents, CJK):

    tests/data/tokenizers/<variant>/{tokenizer.json, tokenizer_config.json, config.json}
    tests/data/goldens/tokenizer-classes.json

Run with the reference stack (scripts/setup-reference.sh): .venv-ref/bin/python scripts/make_tokenizer_goldens.py
A second run writes byte-identical files.
"""

import json
import shutil
import sys
from pathlib import Path

import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "tests" / "data" / "models"
OUT = ROOT / "tests" / "data" / "tokenizers"
GOLDEN = ROOT / "tests" / "data" / "goldens" / "tokenizer-classes.json"

QUERIES = ["What is a Panda?", "  leading and trailing  ", "Ünïcödé ÀÉÎ 中文字符", "tabs\tand\nnewlines"]
PASSAGES = [
    "The giant panda is a bear native to China. ",
    "double  space  inside",
    "\ttab first, newline last\n",
    "x \u2581 y",
    "UPPER lower MiXeD Case",
    "naïve café crème brûlée",
    "中文 测试 熊猫",
    "trailing spaces   ",
]


def spm_converter(t: dict, cfg: dict) -> None:
    """What transformers' SentencePiece converter writes (the hub's XLM-R files)."""
    t["normalizer"] = {
        "type": "Sequence",
        "normalizers": [t["normalizer"], {"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "}],
    }
    t["pre_tokenizer"] = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always", "split": True}


def no_prefix(t: dict, cfg: dict) -> None:
    cfg["add_prefix_space"] = False


def config_cased(t: dict, cfg: dict) -> None:
    cfg["do_lower_case"] = False


def file_odd(t: dict, cfg: dict) -> None:
    """A file pipeline unlike the class's: the class's wins."""
    t["normalizer"]["handle_chinese_chars"] = False
    t["normalizer"]["strip_accents"] = False
    t["pre_tokenizer"] = {"type": "WhitespaceSplit"}


def roberta_bpe() -> tuple[dict, dict]:
    """A small byte-level BPE tokenizer as RoBERTa's (no committed model has one), trained here."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=700,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(QUERIES + PASSAGES + ["the giant panda is a bear"] * 5, trainer)
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0), trim_offsets=True, add_prefix_space=False)
    cfg = {
        "add_prefix_space": False,
        "bos_token": "<s>",
        "cls_token": "<s>",
        "eos_token": "</s>",
        "mask_token": "<mask>",
        "model_max_length": 512,
        "pad_token": "<pad>",
        "sep_token": "</s>",
        "tokenizer_class": "RobertaTokenizer",
        "unk_token": "<unk>",
    }
    return json.loads(tok.to_str()), cfg


def bpe_prefix_config(t: dict, cfg: dict) -> None:
    """The config asks for a prefix space, the file does not: the config wins."""
    cfg["add_prefix_space"] = True


VARIANTS = [
    ("xlmr-spm-converter", "xlmr-bf16", spm_converter),
    ("xlmr-no-prefix", "xlmr-bf16", no_prefix),
    ("bert-config-cased", "bert-f32", config_cased),
    ("bert-file-odd", "bert-f32", file_odd),
    # base "roberta-bpe": roberta_bpe()'s tokenizer with roberta-sharded's config.json
    ("roberta-bpe", "roberta-bpe", lambda t, cfg: None),
    ("roberta-bpe-prefix-config", "roberta-bpe", bpe_prefix_config),
]


def main() -> None:
    print(f"transformers {transformers.__version__}")
    if OUT.exists():
        shutil.rmtree(OUT)
    golden = {"transformers": transformers.__version__, "variants": []}
    for name, base, change in VARIANTS:
        dst = OUT / name
        dst.mkdir(parents=True)
        if base == "roberta-bpe":
            src = MODELS / "roberta-sharded"
            t, cfg = roberta_bpe()
        else:
            src = MODELS / base
            t = json.loads((src / "tokenizer.json").read_text())
            cfg = json.loads((src / "tokenizer_config.json").read_text())
        change(t, cfg)
        (dst / "tokenizer.json").write_text(json.dumps(t, ensure_ascii=False, indent=2) + "\n")
        (dst / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        shutil.copy(src / "config.json", dst / "config.json")
        tok = AutoTokenizer.from_pretrained(str(dst))
        pairs = []
        for q in QUERIES:
            for p in PASSAGES:
                for max_length in (None, 12):
                    kwargs = {"truncation": True}
                    if max_length:
                        kwargs["max_length"] = max_length
                    enc = tok(q, p, **kwargs)
                    pairs.append(
                        {
                            "query": q,
                            "passage": p,
                            "max_length": max_length,
                            "input_ids": enc["input_ids"],
                            "token_type_ids": enc.get("token_type_ids"),
                        }
                    )
        golden["variants"].append({"name": name, "base": base, "pairs": pairs})
        print(f"{name}: {len(pairs)} pairs")
    GOLDEN.write_text(json.dumps(golden, ensure_ascii=False, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
