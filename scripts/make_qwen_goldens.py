#!/usr/bin/env python3
"""Tiny seeded LLM rerankers (Qwen3-Reranker, mxbai-rerank-v2) and their goldens, made by transformers.

    /work/venv-ref/bin/python scripts/make_qwen_goldens.py

(torch 2.11, transformers 5.24, CPU, float32, attn_implementation="eager"; any venv made by
scripts/setup-reference.sh works too). Deterministic: a second run writes byte-identical files.
Optional cross-check against Mixedbread's own package, which needs transformers 4 (it calls
tokenizer.prepare_for_model, gone in transformers 5); it only reads the committed files:
    pip install --no-deps --target /tmp/mxpkg mxbai-rerank==0.1.6 batched accelerate
    pip install --no-deps --target /tmp/tf4 transformers==4.57.1 tokenizers==0.22.1 huggingface_hub==0.36.0
    pip install --target /tmp/tf4 requests
    PYTHONPATH=/tmp/tf4:/tmp/mxpkg /work/venv-ref/bin/python scripts/make_qwen_goldens.py --check-mxbai
It runs MxbaiRerankV2 itself on mxbai-rerank-tiny and asserts the golden ids and logits (1e-5).

What it writes (issue 11):
- One byte-level BPE tokenizer, trained here by a small deterministic trainer (ties broken by the
  pair's text, not by hash order) on a seeded English + unicode corpus, built with exactly the
  pipeline transformers 5's `Qwen2Tokenizer` builds (NFC normalizer; pre-tokenizer Sequence of
  Split(Qwen2's regex, isolated) + ByteLevel(add_prefix_space false, use_regex false); ByteLevel
  decoder; no post-processor), with added tokens <|endoftext|>, <|im_start|>, <|im_end|> (special)
  and <think>, </think> (not special, as in Qwen3's own tokenizer.json), right after the BPE vocab.
  "yes", "no", "1" and "0" are single tokens. Saved by transformers' own save_pretrained.
- tests/data/models/qwen3-reranker-tiny: Qwen3ForCausalLM, 3 layers, hidden 64, 4 query / 2 KV
  heads, head_dim 16, intermediate 96, rope_theta 5000, rms_norm_eps 1e-6, tied embeddings,
  256 positions, embedding rows padded past the tokenizer (vocab_size > len(tokenizer), as the
  hub's Qwen models have). bf16 on disk.
- tests/data/models/mxbai-rerank-tiny: Qwen2ForCausalLM (QKV bias), 3 layers, hidden 64, 4 query /
  1 KV head, head_dim 16, intermediate 80, rope_theta 20000, rms_norm_eps 1e-5, UNtied lm_head,
  256 positions, same tokenizer. bf16 on disk.
- tests/data/goldens/llm/<model>.json: logits (z_yes - z_no at the last position) of every pair,
  computed one pair at a time with no padding from the bf16 files upcast to float32; the script
  also scores each case as one left-padded batch the way the reference code does and asserts
  agreement within 1e-5.

Templates, copied from their sources (not guessed):
- Qwen3-Reranker: the transformers snippet of the model card, https://huggingface.co/Qwen/Qwen3-Reranker-0.6B
  (README "Transformers Usage": format_instruction, process_inputs, compute_logits; the same code
  is in https://github.com/QwenLM/Qwen3-Embedding). prefix = <|im_start|>system ... <|im_start|>user\\n,
  middle = "<Instruct>: {instruction}\\n<Query>: {query}\\n<Document>: {doc}" tokenized as one text
  (truncation='longest_first', max_length = max_length - len(prefix) - len(suffix)), suffix =
  <|im_end|>\\n<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n; prefix and suffix via
  tokenizer.encode(..., add_special_tokens=False); labels convert_tokens_to_ids("yes") / ("no");
  the card pads left (padding_side='left') and reads logits[:, -1, :].
- mxbai-rerank-base/large-v2: Mixedbread's reference package `mxbai-rerank`
  (https://github.com/mixedbread-ai/mxbai-rerank, file mxbai_rerank/mxbai_rerank_v2.py at commit
  8e709dca09e0fdba6bc7f6d4983940fdd1b783c5, identical in the scoring code to PyPI mxbai-rerank
  0.1.6), which the hub model card https://huggingface.co/mixedbread-ai/mxbai-rerank-base-v2 uses
  (`from mxbai_rerank import MxbaiRerankV2`). Class attributes: sep "\\n",
  instruction_prompt "instruction: {instruction}", query_prompt "query: {query}",
  doc_prompt "document: {document}", task_prompt "You are a search relevance expert ... (0 for
  not relevant, 1 for relevant).\\nRelevance:", chat prefix "<|im_start|>system\\nYou are Qwen,
  created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n<|im_start|>user\\n", chat
  suffix "<|im_end|>\\n<|im_start|>assistant\\n"; labels: yes = first id of "1", no = first id of
  "0"; logit = z("1") - z("0") at the last position. prepare_inputs() is transcribed in
  MxbaiTemplate below (query and document are tokenized SEPARATELY, each with its own cut).

Cases per model: ragged documents (1 word to ~150 tokens), an empty document, unicode (accents,
CJK, emoji), documents cut at a small max_length, a custom instruction, and
"bpe-merges-across-boundary", where every document starts with a letter so that the byte-level
pre-tokenizer glues the space of the template's ": " to the document's first word: the longest
common id prefix of the pairs is then shorter than the tokenized text up to the document
(asserted). mxbai also has "long-query", where the query itself is cut (its 3/4 rule).

make_goldens.py clears tests/data/models and tests/data/goldens: make_qwen() must be run after it.
"""

import json
import math
import random
import shutil
import sys
from collections import Counter
from pathlib import Path

import torch
import transformers
from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import BPE
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

transformers.utils.logging.disable_progress_bar()

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "tests" / "data" / "models"
GOLDENS = ROOT / "tests" / "data" / "goldens" / "llm"
MAX_POS = 256
N_MERGES = 1000
BATCH_TOLERANCE = 1e-5
MIN_SPREAD = 0.5  # smallest max-min of logits allowed within a case of 3 or more documents

ENDOFTEXT, IM_START, IM_END, THINK, END_THINK = "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"

# ---- Qwen3-Reranker, model card (huggingface.co/Qwen/Qwen3-Reranker-0.6B) ---------------------------
QWEN3_PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the "
    'Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
)
QWEN3_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
QWEN3_DEFAULT_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"


def qwen3_format_instruction(instruction, query, doc):
    if instruction is None:
        instruction = QWEN3_DEFAULT_INSTRUCTION
    return "<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {doc}".format(instruction=instruction, query=query, doc=doc)


# ---- mxbai-rerank-v2, mxbai_rerank/mxbai_rerank_v2.py (class MxbaiRerankV2) ----------------------------
MX_SEP = "\n"
MX_INSTRUCTION_PROMPT = "instruction: {instruction}"
MX_QUERY_PROMPT = "query: {query}"
MX_DOC_PROMPT = "document: {document}"
MX_TASK_PROMPT = (
    "You are a search relevance expert who evaluates how well documents match search queries. For each "
    "query-document pair, carefully analyze the semantic relationship between them, then provide your binary "
    "relevance judgment (0 for not relevant, 1 for relevant).\nRelevance:"
)
MX_CHAT_PREFIX = "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
MX_CHAT_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n"
MX_DEFAULT_MAX_LENGTH = 8192  # MxbaiRerankV2.__init__'s default

# --------------------------------------------------------------------------------------------------
# Text
# --------------------------------------------------------------------------------------------------

SENTENCES = [
    "A reranker reads the query and the document together and returns one relevance score.",
    "Search engines index billions of web pages and answer queries in milliseconds.",
    "The capital of France is Paris, a city on the river Seine.",
    "The capital of China is Beijing, and Shanghai is its largest city.",
    "Gravity is the force by which a planet or other body draws objects toward its center.",
    "Photosynthesis turns sunlight, water and carbon dioxide into sugar and oxygen.",
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Attention lets every token look at the tokens before it in a causal language model.",
    "Rotary position embeddings rotate the query and key vectors by an angle that grows with position.",
    "Grouped query attention shares one key and value head among several query heads.",
    "The weather in London was cold and rainy, but the weekend will be sunny and warm.",
    "To bake bread you need flour, water, salt and yeast, and an oven that is hot enough.",
    "A good recipe for tomato soup starts with onions, garlic and ripe tomatoes.",
    "Machine learning models learn patterns from examples instead of explicit rules.",
    "The museum opens at nine in the morning and closes at six in the evening.",
    "Python is a programming language that is easy to read and quick to write.",
    "The train to Berlin leaves from platform four every hour on the hour.",
    "Coffee contains caffeine, which keeps people awake and alert.",
    "The library lends books, films and music to everyone with a card.",
    "Judge whether the answer is relevant; the answer can only be yes or no.",
    "Is this document relevant to the query? Answer yes or no.",
    "Relevance: 1 means relevant and 0 means not relevant.",
    "Café, naïve, façade, jalapeño, Zürich, São Paulo, Ångström, crème brûlée.",
    "Über den Wolken ist die Freiheit wohl grenzenlos, sagt man in München.",
    "L'été dernier, nous avons visité les châteaux de la Loire à vélo.",
    "El niño comió una manzana y bebió agua en la mañana.",
    "机器学习是人工智能的一个分支。",
    "搜索引擎根据相关性对文档进行排序。",
    "今天天气很好，我们去公园散步吧。",
    "東京は日本の首都です。",
    "Great news 🎉 the model finally works 😀👍",
    "I love pizza 🍕 and sushi 🍣 on Fridays ❤️",
    "Numbers like 3.14159, 2048 and 1e-6 appear in technical text.",
]

TEMPLATE_TEXTS = [
    QWEN3_PREFIX + qwen3_format_instruction(None, "what is the capital of France", "Paris is the capital.") + QWEN3_SUFFIX,
    MX_CHAT_PREFIX + "query: what is gravity" + MX_SEP + "document: Gravity pulls things down." + MX_SEP + MX_TASK_PROMPT + MX_CHAT_SUFFIX,
]


def training_corpus(seed: int = 11) -> list[str]:
    """Fixed sentences, the two templates, answer lines, and seeded word salad from their words."""
    rng = random.Random(seed)
    texts = list(SENTENCES) * 3 + TEMPLATE_TEXTS * 4
    texts += ["Answer:\nyes", "Answer:\nno", "yes", "no", "\nyes\n", "\nno\n"] * 10
    words = sorted({w for s in SENTENCES + TEMPLATE_TEXTS for w in s.split()})
    for _ in range(300):
        texts.append(" ".join(rng.choice(words) for _ in range(rng.randint(4, 14))))
    return texts


# --------------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------------


def qwen2_pipeline(vocab: dict[str, int], merges: list[tuple[str, str]]) -> Tokenizer:
    """The tokenizer Qwen2Tokenizer.__init__ builds in transformers 5 (tokenization_qwen2.py)."""
    tok = Tokenizer(
        BPE(
            vocab=vocab,
            merges=merges,
            dropout=None,
            unk_token=None,
            continuing_subword_prefix="",
            end_of_word_suffix="",
            fuse_unk=False,
            byte_fallback=False,
        )
    )
    tok.decoder = decoders.ByteLevel()
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    return tok


def train_bpe(texts: list[str], n_merges: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Byte-level BPE: the 256 byte symbols in GPT-2 order, then merges by count, ties by pair text."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())  # code point order == bytes_to_unicode order
    vocab = {c: i for i, c in enumerate(alphabet)}
    splitter = qwen2_pipeline(dict(vocab), [])
    counts: Counter = Counter()
    for text in texts:
        norm = splitter.normalizer.normalize_str(text)
        for piece, _ in splitter.pre_tokenizer.pre_tokenize_str(norm):
            counts[piece] += 1
    words = [(list(w), c) for w, c in sorted(counts.items())]
    pairs: Counter = Counter()
    where: dict[tuple[str, str], set[int]] = {}
    for i, (syms, c) in enumerate(words):
        for p in zip(syms, syms[1:]):
            pairs[p] += c
            where.setdefault(p, set()).add(i)
    merges: list[tuple[str, str]] = []
    while len(merges) < n_merges:
        best = min((p for p, c in pairs.items() if c > 0), key=lambda p: (-pairs[p], p), default=None)
        if best is None or pairs[best] < 2:
            break
        merges.append(best)
        new = best[0] + best[1]
        if new not in vocab:
            vocab[new] = len(vocab)
        for i in sorted(where.pop(best, set())):
            syms, c = words[i]
            for p in zip(syms, syms[1:]):
                pairs[p] -= c
            out, j = [], 0
            while j < len(syms):
                if j + 1 < len(syms) and (syms[j], syms[j + 1]) == best:
                    out.append(new)
                    j += 2
                else:
                    out.append(syms[j])
                    j += 1
            words[i] = (out, c)
            for p in zip(out, out[1:]):
                pairs[p] += c
                where.setdefault(p, set()).add(i)
        pairs.pop(best, None)
    assert len(merges) == n_merges, f"corpus too small: only {len(merges)} merges"
    return vocab, merges


def make_tokenizer(staging: Path):
    vocab, merges = train_bpe(training_corpus(), N_MERGES)
    tok = qwen2_pipeline(vocab, merges)
    n = tok.get_vocab_size()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in (ENDOFTEXT, IM_START, IM_END)])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in (THINK, END_THINK)])
    ids = [tok.token_to_id(t) for t in (ENDOFTEXT, IM_START, IM_END, THINK, END_THINK)]
    assert ids == list(range(n, n + 5)), ids
    staging.mkdir(parents=True, exist_ok=True)
    tok.save(str(staging / "tokenizer.json"))
    (staging / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "Qwen2Tokenizer",
                "model_max_length": MAX_POS,
                "bos_token": None,
                "eos_token": IM_END,
                "pad_token": ENDOFTEXT,
                "unk_token": None,
                "add_prefix_space": False,
                "clean_up_tokenization_spaces": False,
                "split_special_tokens": False,
                "errors": "replace",
            }
        )
    )
    # Transformers rebuilds it through Qwen2Tokenizer; what it then saves is what the model dirs get.
    hf = AutoTokenizer.from_pretrained(str(staging))
    assert type(hf).__name__ == "Qwen2Tokenizer", type(hf)
    for t in ("yes", "no", "1", "0"):
        assert hf.convert_tokens_to_ids(t) is not None and hf.convert_tokens_to_ids(t) < n, t
        assert hf(t, add_special_tokens=False)["input_ids"] == [hf.convert_tokens_to_ids(t)], t
    for t, i in zip((ENDOFTEXT, IM_START, IM_END, THINK, END_THINK), ids):
        assert hf.convert_tokens_to_ids(t) == i, (t, i)
    return hf


def check_tokenizer_files(directory: Path, hf, texts: list[str]) -> None:
    """tokenizer.json read by the tokenizers library alone encodes as transformers' Qwen2Tokenizer."""
    raw = Tokenizer.from_file(str(directory / "tokenizer.json"))
    again = AutoTokenizer.from_pretrained(str(directory))
    assert type(again).__name__ == "Qwen2Tokenizer"
    spec = json.loads((directory / "tokenizer.json").read_text())
    post = spec["post_processor"]  # transformers 5 writes a TemplateProcessing that adds nothing
    assert post is None or post["type"] == "ByteLevel" or (
        post["type"] == "TemplateProcessing" and not post["special_tokens"] and post["single"] == [{"Sequence": {"id": "A", "type_id": 0}}]
    ), post
    assert spec["normalizer"]["type"] == "NFC" and spec["pre_tokenizer"]["type"] == "Sequence"
    for text in texts:
        a = raw.encode(text, add_special_tokens=False).ids
        b = hf(text, add_special_tokens=False)["input_ids"]
        c = again(text)["input_ids"]
        assert a == b == c, (text, a, b, c)


# --------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------


def reinit(model, seed: int, emb_std: float, lin_gain: float, head_gain) -> None:
    """Seeded weights far from the 0.02 init, so that yes-no logits differ clearly between documents."""
    g = torch.Generator().manual_seed(seed)
    touched = set()
    with torch.no_grad():
        for name, module in model.named_modules():
            if name == "lm_head" and model.config.tie_word_embeddings:
                continue  # the embedding matrix itself
            if isinstance(module, torch.nn.Linear):
                gain = head_gain if name == "lm_head" else lin_gain
                module.weight.copy_(torch.randn(module.weight.shape, generator=g) * (gain / math.sqrt(module.weight.shape[1])))
                touched.add(f"{name}.weight")
                if module.bias is not None:
                    module.bias.copy_(0.3 * torch.randn(module.bias.shape, generator=g))
                    touched.add(f"{name}.bias")
            elif isinstance(module, torch.nn.Embedding):
                module.weight.copy_(emb_std * torch.randn(module.weight.shape, generator=g))
                touched.add(f"{name}.weight")
            elif type(module).__name__.endswith("RMSNorm"):
                module.weight.copy_(1.0 + 0.2 * torch.randn(module.weight.shape, generator=g))
                touched.add(f"{name}.weight")
    params = {n for n, _ in model.named_parameters()}
    if model.config.tie_word_embeddings:
        touched.discard("lm_head.weight")
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    missed = params - touched
    assert not missed, f"parameters left at their default init: {sorted(missed)}"


def padded_vocab(n: int) -> int:
    return (n + 63) // 64 * 64


def save_model(model, hf_tok, name: str) -> Path:
    directory = MODELS / name
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    model.to(torch.bfloat16).eval().save_pretrained(str(directory))
    hf_tok.save_pretrained(str(directory))
    return directory


def make_qwen3(hf_tok) -> Path:
    config = Qwen3Config(
        vocab_size=padded_vocab(len(hf_tok)),
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=MAX_POS,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 5000.0},
        tie_word_embeddings=True,
        bos_token_id=hf_tok.convert_tokens_to_ids(ENDOFTEXT),
        eos_token_id=hf_tok.convert_tokens_to_ids(IM_END),
    )
    torch.manual_seed(311)
    model = Qwen3ForCausalLM(config)
    reinit(model, 311, emb_std=0.4, lin_gain=1.5, head_gain=None)
    return save_model(model, hf_tok, "qwen3-reranker-tiny")


def make_qwen2(hf_tok) -> Path:
    config = Qwen2Config(
        vocab_size=padded_vocab(len(hf_tok)),
        hidden_size=64,
        intermediate_size=80,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=1,
        max_position_embeddings=MAX_POS,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 20000.0},
        tie_word_embeddings=False,
        bos_token_id=hf_tok.convert_tokens_to_ids(ENDOFTEXT),
        eos_token_id=hf_tok.convert_tokens_to_ids(IM_END),
    )
    torch.manual_seed(222)
    model = Qwen2ForCausalLM(config)
    reinit(model, 222, emb_std=1.0, lin_gain=1.5, head_gain=2.0)
    assert model.model.layers[0].self_attn.q_proj.bias is not None
    return save_model(model, hf_tok, "mxbai-rerank-tiny")


def load(directory: Path):
    model = AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32, attn_implementation="eager")
    model.eval()
    tok = AutoTokenizer.from_pretrained(str(directory), padding_side="left")
    assert type(tok).__name__ == "Qwen2Tokenizer"
    return model, tok


@torch.no_grad()
def last_logits_alone(model, ids: list[int]) -> torch.Tensor:
    return model(input_ids=torch.tensor([ids])).logits[0, -1]


def common_prefix_len(seqs: list[list[int]]) -> int:
    n = min(len(s) for s in seqs)
    for k in range(n):
        if any(s[k] != seqs[0][k] for s in seqs):
            return k
    return n


# --------------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------------

LONG_DOC = " ".join(SENTENCES[i] for i in (0, 7, 8, 9, 1, 13, 15, 5, 19))  # 136 tokens with this tokenizer
LONG_DOC_2 = " ".join(SENTENCES[i] for i in (10, 11, 12, 17, 14, 16, 18, 2))
LONG_QUERY = (
    "I am looking for a detailed explanation of how a reranker reads a query and a document together, why a "
    "causal language model can judge relevance from the logits of two answer tokens, what rotary position "
    "embeddings do to the query and key vectors, and how grouped query attention shares key and value heads"
)

UNICODE_DOCS = [
    "Café, naïve, façade, jalapeño, Zürich, São Paulo, Ångström.",
    "机器学习是人工智能的一个分支。",
    "Great news 🎉 the model finally works 😀👍",
    "東京は日本の首都です。Tokyo is the capital of Japan 🗼",
    "El niño comió una manzana ❤️ en la mañana.",
]


def cases(long_cut_max: int):
    return [
        {
            "name": "ragged",
            "query": "How do rerankers sort search results?",
            "documents": ["Rerankers.", SENTENCES[0], SENTENCES[6], LONG_DOC, SENTENCES[1] + " " + SENTENCES[13]],
            "instruction": None,
            "max_length": MAX_POS,
        },
        {
            "name": "empty-document",
            "query": "what is the capital of France",
            "documents": ["", SENTENCES[2], "Beijing.", SENTENCES[3]],
            "instruction": None,
            "max_length": MAX_POS,
        },
        {
            "name": "unicode",
            "query": "Où est la capitale? 首都在哪里 🏙️",
            "documents": UNICODE_DOCS,
            "instruction": None,
            "max_length": MAX_POS,
        },
        {
            "name": "truncated",
            "query": "How does attention work in a language model?",
            "documents": [LONG_DOC, SENTENCES[7], LONG_DOC_2, SENTENCES[8] + " " + SENTENCES[9]],
            "instruction": None,
            "max_length": long_cut_max,
        },
        {
            "name": "custom-instruction",
            "query": "tomato soup",
            "documents": [SENTENCES[12], SENTENCES[11], SENTENCES[4], "Soup."],
            "instruction": "Given a cooking question, retrieve recipes that answer it",
            "max_length": MAX_POS,
        },
        {
            "name": "bpe-merges-across-boundary",
            "query": "capital city",
            "documents": ["the capital of France is Paris.", "Paris is the capital.", "capital", "über den Wolken", "yes"],
            "instruction": None,
            "max_length": MAX_POS,
        },
    ]


def check_spread(name: str, logits: list[float]) -> None:
    if len(logits) >= 3:
        spread = max(logits) - min(logits)
        assert spread >= MIN_SPREAD, f"{name}: logits too alike ({spread:.3f})"
        assert len({round(x, 4) for x in logits}) == len(logits), f"{name}: tied logits {logits}"


# ---- Qwen3-Reranker ---------------------------------------------------------------------------------


def qwen3_golden(directory: Path) -> dict:
    model, tok = load(directory)
    yes, no = tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no")
    prefix = tok.encode(QWEN3_PREFIX, add_special_tokens=False)
    suffix = tok.encode(QWEN3_SUFFIX, add_special_tokens=False)
    out_cases = []
    texts = [QWEN3_PREFIX, QWEN3_SUFFIX]
    for case in cases(128):
        max_length = case["max_length"]
        budget = max_length - len(prefix) - len(suffix)
        pairs = [qwen3_format_instruction(case["instruction"], case["query"], d) for d in case["documents"]]
        texts += pairs
        # The card's process_inputs, step by step.
        inputs = tok(pairs, padding=False, truncation="longest_first", return_attention_mask=False, max_length=budget)
        full = tok(pairs, padding=False, truncation=False, return_attention_mask=False)
        ids, truncated, logits = [], [], []
        for i, ele in enumerate(inputs["input_ids"]):
            assert full["input_ids"][i] == tok(pairs[i], add_special_tokens=False)["input_ids"]  # no special tokens added
            assert ele == full["input_ids"][i][:budget]  # cut from the end
            x = prefix + ele + suffix
            z = last_logits_alone(model, x)
            ids.append(x)
            truncated.append(len(full["input_ids"][i]) > budget)
            logits.append(float(z[yes] - z[no]))
        # The card's batch: left padding, logits[:, -1, :], log_softmax over [no, yes].
        batch = {"input_ids": [list(x) for x in ids]}
        batch = tok.pad(batch, padding=True, return_tensors="pt", max_length=max_length)
        with torch.no_grad():
            scores = model(**batch).logits[:, -1, :]
        both = torch.stack([scores[:, no], scores[:, yes]], dim=1)
        card_scores = torch.nn.functional.log_softmax(both, dim=1)[:, 1].exp().tolist()
        batched = (scores[:, yes] - scores[:, no]).tolist()
        worst = max(abs(a - b) for a, b in zip(batched, logits))
        assert worst <= BATCH_TOLERANCE, f"{case['name']}: padded batch vs alone differ by {worst}"
        for s, l in zip(card_scores, logits):
            assert abs(s - 1 / (1 + math.exp(-l))) < 1e-5
        check_spread(case["name"], logits)
        if case["name"] == "truncated":
            assert any(truncated) and not all(truncated), truncated
        lcp = common_prefix_len(ids)
        if case["name"] == "bpe-merges-across-boundary":
            text_prefix = prefix + tok(qwen3_format_instruction(case["instruction"], case["query"], ""), add_special_tokens=False)["input_ids"]
            assert lcp < len(text_prefix), (lcp, len(text_prefix))
            assert ids[0][:lcp] == text_prefix[:lcp]
            print(f"  bpe-merges-across-boundary: tokenized text up to the document {len(text_prefix)} ids, "
                  f"longest common id prefix {lcp} (last text-prefix token {tok.convert_ids_to_tokens(text_prefix[-1])!r} "
                  f"merged into each document's first token)")
        print(f"  {case['name']}: lengths {[len(x) for x in ids]}, common prefix {lcp}, truncated {truncated}, "
              f"logits {[round(v, 3) for v in logits]}, batch diff {worst:.1e}")
        out_cases.append({**case, "input_ids": ids, "truncated": truncated, "logits": logits})
    check_tokenizer_files(directory, tok, texts)
    return {
        "model": directory.name,
        "template": "qwen3-reranker",
        "yes_token_id": yes,
        "no_token_id": no,
        "prefix_ids": prefix,
        "suffix_ids": suffix,
        "default_instruction": QWEN3_DEFAULT_INSTRUCTION,
        "cases": out_cases,
    }


# ---- mxbai-rerank-v2 ------------------------------------------------------------------------------


def prepare_for_model_only_second(ids: list[int], pair_ids: list[int], max_length: int) -> list[int]:
    """transformers 4's tokenizer.prepare_for_model(ids, pair_ids, truncation="only_second", max_length=...,
    add_special_tokens=False)["input_ids"], which mxbai-rerank calls (transformers 5 no longer has it):
    truncate_sequences cuts pair_ids from the end (truncation_side "right") by the overflow, or, when
    pair_ids is not longer than the overflow, logs an error and cuts nothing."""
    overflow = len(ids) + len(pair_ids) - max_length
    if overflow > 0:
        assert len(pair_ids) > overflow, "mxbai-rerank would log an error and not truncate"
        pair_ids = pair_ids[:-overflow]
    return ids + pair_ids


class MxbaiTemplate:
    """MxbaiRerankV2.prepare_predefined_inputs / prepare_inputs (mxbai_rerank_v2.py), no model attached."""

    def __init__(self, tok, model_max_length: int, max_length: int = MX_DEFAULT_MAX_LENGTH):
        self.tok = tok

        def get_input_ids(x):
            return tok(x, return_tensors=None, add_special_tokens=False)["input_ids"]

        self.yes_loc = get_input_ids("1")[0]
        self.no_loc = get_input_ids("0")[0]
        self.task_prompt_inputs = get_input_ids(MX_TASK_PROMPT)
        self.sep_inputs = get_input_ids(MX_SEP)
        self.prefix_inputs = get_input_ids(MX_CHAT_PREFIX)
        self.suffix_inputs = get_input_ids(MX_CHAT_SUFFIX)
        self.predefined_length = len(self.prefix_inputs) + len(self.task_prompt_inputs) + len(self.suffix_inputs) + len(self.sep_inputs)
        self.model_max_length = model_max_length
        self.max_length = max_length
        if self.max_length + self.predefined_length > self.model_max_length:
            self.max_length = self.model_max_length - self.predefined_length

    def ids(self, query: str, document: str, instruction):
        """(input_ids, query cut?, document part cut?) of one pair."""
        tok = self.tok
        query_prompt = MX_QUERY_PROMPT.format(query=query)
        if instruction:
            query_prompt = "".join([MX_INSTRUCTION_PROMPT.format(instruction=instruction), MX_SEP, query_prompt])
        q_full = tok(query_prompt, add_special_tokens=False)["input_ids"]
        q = tok(query_prompt, return_tensors=None, add_special_tokens=False, max_length=self.max_length * 3 // 4, truncation=True)["input_ids"]
        available = self.model_max_length - len(q) - self.predefined_length
        doc_maxlen = min(available, self.max_length)
        d_text = MX_DOC_PROMPT.format(document=document)
        d_full = tok(d_text, add_special_tokens=False)["input_ids"]
        d = tok(d_text, return_tensors=None, add_special_tokens=False, max_length=doc_maxlen, truncation=True)["input_ids"]
        pair = prepare_for_model_only_second(q, self.sep_inputs + d, self.max_length)
        assert pair[: len(q)] == q and q == q_full[: len(q)] and (self.sep_inputs + d_full)[: len(pair) - len(q)] == pair[len(q):]
        ids = self.prefix_inputs + pair + self.sep_inputs + self.task_prompt_inputs + self.suffix_inputs
        return ids, len(q) < len(q_full), len(pair) - len(q) < len(self.sep_inputs) + len(d_full)


def mxbai_cases():
    out = cases(48)
    for c in out:
        if c["max_length"] == MAX_POS:
            c["max_length"] = MX_DEFAULT_MAX_LENGTH
    out.append(
        {
            "name": "long-query",
            "query": LONG_QUERY,
            "documents": [SENTENCES[7], SENTENCES[9], LONG_DOC],
            "instruction": None,
            "max_length": 48,
        }
    )
    return out


def check_mxbai_package() -> None:
    """--check-mxbai: Mixedbread's own MxbaiRerankV2 on the committed tiny model gives the golden ids and
    logits. mxbai-rerank 0.1.6 needs transformers 4 (it calls tokenizer.prepare_for_model), so run this
    mode in an environment with transformers 4.57 + mxbai-rerank (see the top of this file)."""
    from mxbai_rerank import MxbaiRerankV2

    directory = MODELS / "mxbai-rerank-tiny"
    golden = json.loads((GOLDENS / "mxbai-rerank-tiny.json").read_text(encoding="utf-8"))
    theta = json.loads((directory / "config.json").read_text())["rope_parameters"]["rope_theta"]
    worst = 0.0
    for case in golden["cases"]:
        # transformers 4 reads rope_theta, not transformers 5's rope_parameters: pass it on.
        ref = MxbaiRerankV2(str(directory), device="cpu", torch_dtype=torch.float32, max_length=case["max_length"],
                            attn_implementation="eager", rope_theta=theta)
        assert (ref.yes_loc, ref.no_loc) == (golden["yes_token_id"], golden["no_token_id"])
        n = len(case["documents"])
        inputs = ref.prepare_inputs([case["query"]] * n, case["documents"], instruction=case["instruction"])
        for row, mask, want in zip(inputs["input_ids"].tolist(), inputs["attention_mask"].tolist(), case["input_ids"]):
            assert [t for t, m in zip(row, mask) if m] == want, case["name"]
        scores = ref.predict([case["query"]] * n, case["documents"], instruction=case["instruction"]).tolist()
        diff = max(abs(a - b) for a, b in zip(scores, case["logits"]))
        assert diff <= BATCH_TOLERANCE, (case["name"], diff)
        worst = max(worst, diff)
    print(f"MxbaiRerankV2 (mxbai-rerank, transformers {transformers.__version__}): same ids on every case, "
          f"logits within {worst:.1e} of the goldens")


def mxbai_golden(directory: Path) -> dict:
    model, tok = load(directory)
    model_max_length = model.config.max_position_embeddings
    base = MxbaiTemplate(tok, model_max_length)
    assert tok("1", add_special_tokens=False)["input_ids"] == [base.yes_loc]
    assert tok("0", add_special_tokens=False)["input_ids"] == [base.no_loc]
    out_cases = []
    texts = [MX_CHAT_PREFIX, MX_CHAT_SUFFIX, MX_TASK_PROMPT, MX_SEP]
    for case in mxbai_cases():
        t = MxbaiTemplate(tok, model_max_length, case["max_length"])
        ids, truncated, logits = [], [], []
        for d in case["documents"]:
            x, q_cut, d_cut = t.ids(case["query"], d, case["instruction"])
            z = last_logits_alone(model, x)
            ids.append(x)
            truncated.append(q_cut or d_cut)
            logits.append(float(z[t.yes_loc] - z[t.no_loc]))
            texts += [MX_QUERY_PROMPT.format(query=case["query"]), MX_DOC_PROMPT.format(document=d)]
        # The package's batch: tokenizer.pad, left, multiple of 8; logits[:, -1, yes] - logits[:, -1, no].
        batch = tok.pad(
            [{"input_ids": x, "attention_mask": [1] * len(x)} for x in ids],
            padding="longest",
            max_length=model_max_length,
            pad_to_multiple_of=8,
            return_tensors="pt",
        )
        assert batch["input_ids"].shape[1] % 8 == 0 and (batch["attention_mask"][:, -1] == 1).all()
        with torch.no_grad():
            scores = model(**batch).logits[:, -1, :]
        batched = (scores[:, t.yes_loc] - scores[:, t.no_loc]).tolist()
        worst = max(abs(a - b) for a, b in zip(batched, logits))
        assert worst <= BATCH_TOLERANCE, f"{case['name']}: padded batch vs alone differ by {worst}"
        check_spread(case["name"], logits)
        if case["name"] in ("truncated", "long-query"):
            assert any(truncated), truncated
        if case["name"] == "long-query":
            assert all(truncated)
        lcp = common_prefix_len(ids)
        if case["name"] == "bpe-merges-across-boundary":
            q = tok(MX_QUERY_PROMPT.format(query=case["query"]), add_special_tokens=False)["input_ids"]
            text_prefix = t.prefix_inputs + q + t.sep_inputs + tok(MX_DOC_PROMPT.format(document=""), add_special_tokens=False)["input_ids"]
            assert lcp < len(text_prefix), (lcp, len(text_prefix))
            assert ids[0][:lcp] == text_prefix[:lcp]
            print(f"  bpe-merges-across-boundary: tokenized text up to the document {len(text_prefix)} ids, "
                  f"longest common id prefix {lcp} (last text-prefix token {tok.convert_ids_to_tokens(text_prefix[-1])!r})")
        print(f"  {case['name']}: lengths {[len(x) for x in ids]}, common prefix {lcp}, truncated {truncated}, "
              f"logits {[round(v, 3) for v in logits]}, batch diff {worst:.1e}")
        out_cases.append({**case, "input_ids": ids, "truncated": truncated, "logits": logits})
    check_tokenizer_files(directory, tok, texts)
    return {
        "model": directory.name,
        "template": "mxbai-rerank-v2",
        "yes_token_id": base.yes_loc,
        "no_token_id": base.no_loc,
        "prefix_ids": base.prefix_inputs,
        "suffix_ids": base.sep_inputs + base.task_prompt_inputs + base.suffix_inputs,
        "default_instruction": None,
        "notes": (
            "Not one prefix + middle + suffix text. ids = prefix_ids + Q + (sep_ids + D)[:max_eff - len(Q)] + suffix_ids, "
            "where suffix_ids = sep_ids + task_prompt_ids + chat_suffix_ids. predefined = len(prefix_ids) + len(suffix_ids); "
            "model_max_length = config max_position_embeddings; max_eff = max_length if max_length + predefined <= "
            "model_max_length else model_max_length - predefined (max_length: MxbaiRerankV2's argument, default 8192). "
            "Q = ids of 'query: {query}', or of 'instruction: {instruction}\\nquery: {query}' when an instruction is given "
            "(no default instruction), cut from the end to max_eff * 3 // 4; D = ids of 'document: {document}' tokenized "
            "on its own, cut from the end to min(model_max_length - len(Q) - predefined, max_eff). All texts tokenized "
            "with add_special_tokens=False. truncated = Q or D (or sep + D) was cut. logit = z[yes_token_id] - "
            "z[no_token_id] (tokens '1' and '0') at the last position. Source: mxbai_rerank/mxbai_rerank_v2.py "
            "(github.com/mixedbread-ai/mxbai-rerank @ 8e709dc, PyPI mxbai-rerank 0.1.6)."
        ),
        "sep_ids": base.sep_inputs,
        "task_prompt_ids": base.task_prompt_inputs,
        "cases": out_cases,
    }


# --------------------------------------------------------------------------------------------------


def to_json(value, indent: int = 0) -> str:
    """json with scalar lists kept on one line (as make_goldens.py writes them)."""
    pad = "  " * indent
    if isinstance(value, dict):
        items = [f"{pad}  {json.dumps(k)}: {to_json(v, indent + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + f"\n{pad}}}"
    if isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
        items = [f"{pad}  {to_json(v, indent + 1)}" for v in value]
        return "[\n" + ",\n".join(items) + f"\n{pad}]"
    return json.dumps(value, ensure_ascii=False)


def make_qwen() -> None:
    torch.set_num_threads(2)
    staging = MODELS / ".qwen-tokenizer-staging"
    try:
        hf_tok = make_tokenizer(staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    ids = {t: hf_tok.convert_tokens_to_ids(t) for t in ("yes", "no", "1", "0", ENDOFTEXT, IM_START, IM_END, THINK, END_THINK)}
    print(f"byte-level BPE: {len(hf_tok)} tokens ({N_MERGES} merges), ids {ids}")
    GOLDENS.mkdir(parents=True, exist_ok=True)
    for make, golden in ((make_qwen3, qwen3_golden), (make_qwen2, mxbai_golden)):
        directory = make(hf_tok)
        print(f"{directory.name}:")
        g = golden(directory)
        (GOLDENS / f"{directory.name}.json").write_text(to_json(g) + "\n", encoding="utf-8")


if __name__ == "__main__":
    print(f"torch {torch.__version__}, transformers {transformers.__version__}")
    if sys.argv[1:] == ["--check-mxbai"]:
        check_mxbai_package()
    else:
        make_qwen()
