#!/usr/bin/env python3
"""A tiny seeded BLIP image-text matching model, small test images, and their goldens (issue 13).

    /work/venv-ref/bin/python scripts/make_blip_goldens.py

(torch 2.11, transformers 5.24, pillow 13, CPU, float32, attn_implementation="eager").
make_goldens.py calls this at its end, since it clears tests/data/models and tests/data/goldens
first. Deterministic: a second run writes byte-identical files.

What it writes:
- tests/data/models/blip-itm-tiny: `BlipForImageTextRetrieval` (the ITM head is what crossrank
  scores with), vision tower hidden 48, 2 layers, 3 heads, image 32x32 in 8x8 patches (17 image
  tokens), text tower hidden 32, 2 layers, 2 heads, 48 positions; the vision width differs
  from the text width so that cross-attention's K/V projections (in = vision hidden) cannot be
  mixed up with the self-attention's. BERT's committed WordPiece tokenizer (bert-f32's) as a
  `BertTokenizer`, and a preprocessor_config.json for a 32x32 BlipImageProcessor with BLIP's
  (OpenAI CLIP) mean and std. f32 on disk.
- tests/data/images/: alpha.png (RGBA, alpha from 0 to 255), gray.jpg (grayscale JPEG),
  wide.png (64x24 RGB: shrunk in x, stretched in y), tiny.png (5x7 RGB, upscaled),
  photo.webp (lossless WebP, 50x40), palette.png (P mode with a transparent index).
- tests/data/images/resize/ and tests/data/goldens/blip/resize.json: PIL's bicubic resize at
  shapes that take both of Pillow 13's pass orders (`... make_blip_goldens.py resize` remakes
  only these).
- tests/data/images/decode/ and tests/data/goldens/blip/decode.json: more encodings, for the
  decoder and RGB conversion alone (no model): colour JPEG in 4:2:0 (PIL's default) and
  4:4:4, lossy WebP with and without alpha, an RGB PNG with a tRNS colour key, grey+alpha,
  1-bit and 16-bit grey PNGs; each with the processor's 8-bit image after conversion and a
  resize to 32x32 (`resized`, HWC).
- tests/data/goldens/blip/blip-itm-tiny.json: for each image, the processor's 8-bit RGB image
  after conversion and resize (`resized`, HWC) and its float32 `pixel_values` (CHW); the
  queries' input ids; the ITM logits z (2 per pair) and logit = z[1] - z[0] for every (query,
  image) pair, one pair at a time (a batched call is asserted to agree within 1e-5).

The image processor is transformers' PIL backend (`BlipImageProcessorPil`): what
`AutoImageProcessor` gives without torchvision, and the one whose resize is PIL's bicubic. Its
RGB conversion composites a transparent image onto white (transformers' convert_to_rgb), it does
not just drop the alpha channel.
"""

import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
import transformers
from PIL import Image
from transformers import AutoTokenizer, BlipConfig, BlipForImageTextRetrieval
from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "tests" / "data" / "models"
IMAGES = ROOT / "tests" / "data" / "images"
GOLDENS = ROOT / "tests" / "data" / "goldens" / "blip"
BERT_TOKENIZER = ROOT / "tests" / "data" / "models" / "bert-f32" / "tokenizer.json"
NAME = "blip-itm-tiny"
IMAGE_SIZE = 32
MAX_POS = 48
BATCH_TOLERANCE = 1e-5
MIN_SPREAD = 0.5

QUERIES = [
    "a photo of a cat",
    "How do cross-encoders rerank search results?",
    "red",
    "Crème brûlée à São Paulo 🍰",
]


def f32(x) -> float:
    """The shortest decimal that reads back as this float32 (half the size of the double's repr)."""
    return float(np.format_float_positional(np.float32(x), unique=True, trim="-"))


def mg():
    sys.path.insert(0, str(ROOT / "scripts"))
    import make_goldens  # noqa: E402  (its to_json)

    return make_goldens


def make_images() -> list[str]:
    """Small seeded images, each exercising one step of the processor."""
    if IMAGES.exists():
        shutil.rmtree(IMAGES)
    IMAGES.mkdir(parents=True)
    rng = np.random.default_rng(1313)

    def smooth(h, w, c):
        # Gradients plus noise: resampling has something to smooth, and no value sits on a tie.
        y, x = np.mgrid[0:h, 0:w]
        base = np.stack([(x * 255 // max(w - 1, 1)), (y * 255 // max(h - 1, 1)), ((x + y) * 97) % 256], -1)[..., :c]
        noise = rng.integers(-40, 41, size=(h, w, c))
        return np.clip(base + noise, 0, 255).astype(np.uint8)

    rgba = smooth(30, 40, 3)
    alpha = np.clip(np.mgrid[0:30, 0:40][1] * 7 - 20 + rng.integers(-30, 31, size=(30, 40)), 0, 255).astype(np.uint8)
    alpha[:, :3] = 0
    alpha[:, -3:] = 255
    Image.fromarray(np.dstack([rgba, alpha]), "RGBA").save(IMAGES / "alpha.png")
    Image.fromarray(smooth(48, 48, 3)[..., 0], "L").save(IMAGES / "gray.jpg", quality=90)
    Image.fromarray(smooth(24, 64, 3), "RGB").save(IMAGES / "wide.png")
    Image.fromarray(smooth(7, 5, 3), "RGB").save(IMAGES / "tiny.png")
    Image.fromarray(smooth(40, 50, 3), "RGB").save(IMAGES / "photo.webp", lossless=True)
    pal = Image.fromarray(smooth(20, 20, 3), "RGB").quantize(colors=16, method=Image.Quantize.MEDIANCUT)
    pal.save(IMAGES / "palette.png", transparency=0)
    return ["alpha.png", "gray.jpg", "wide.png", "tiny.png", "photo.webp", "palette.png"]


def processor_resized(processor, im) -> np.ndarray:
    """The processor's 8-bit image after RGB conversion and resize, before rescale (CHW)."""
    rgb = processor.convert_to_rgb(im)
    size = transformers.image_processing_utils.SizeDict(height=IMAGE_SIZE, width=IMAGE_SIZE)
    return processor.resize(np.moveaxis(rgb, -1, 0), size=size, resample=processor.resample)


def make_decode_checks() -> None:
    """More encodings for the decoder and RGB conversion, with the processor's resized images."""
    directory = IMAGES / "decode"
    directory.mkdir(parents=True)
    rng = np.random.default_rng(1314)
    h, w = 45, 61
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 // (w - 1), y * 255 // (h - 1), ((x + y) * 97) % 256], -1)
    rgb = np.clip(base + rng.integers(-40, 41, size=(h, w, 3)), 0, 255).astype(np.uint8)
    alpha = rng.integers(0, 256, size=(h, w)).astype(np.uint8)
    Image.fromarray(rgb).save(directory / "color420.jpg", quality=90)
    Image.fromarray(rgb).save(directory / "color444.jpg", quality=90, subsampling=0)
    Image.fromarray(rgb).save(directory / "lossy.webp", quality=80)
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(directory / "lossy-alpha.webp", quality=80)
    Image.fromarray(rgb).save(directory / "color-key.png", transparency=tuple(int(v) for v in rgb[3, 4]))
    Image.fromarray(np.dstack([rgb[..., 0], alpha]), "LA").save(directory / "grey-alpha.png")
    Image.fromarray(rgb[..., 1] > 128).save(directory / "bits.png")
    Image.fromarray(rng.integers(0, 65536, size=(h, w)).astype(np.uint16)).save(directory / "grey16.png")
    processor = BlipImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    checks = []
    for path in sorted(directory.iterdir()):
        with Image.open(path) as im:
            im.load()
            resized = processor_resized(processor, im)
            mode = im.mode
        checks.append({"file": path.name, "mode": mode, "resized": np.moveaxis(resized, 0, -1).reshape(-1).tolist()})
    GOLDENS.mkdir(parents=True, exist_ok=True)
    golden = {"image_size": IMAGE_SIZE, "images": checks}
    (GOLDENS / "decode.json").write_text(mg().to_json(golden) + "\n", encoding="utf-8")


# (input width, height, output width, height): both of Pillow 13's pass orders, its boundary
# (h - oh = 2 (w - ow) goes horizontal first, one more row vertical first), an upscaled width
# with a shrunk height, a wide image and non-square outputs.
RESIZE_CASES = [
    (30, 61, 32, 32),
    (40, 90, 32, 32),
    (50, 95, 32, 32),
    (40, 48, 32, 32),
    (40, 49, 32, 32),
    (60, 70, 32, 32),
    (90, 40, 32, 32),
    (45, 80, 24, 40),
    (45, 80, 40, 24),
    (20, 30, 48, 40),
]


def make_resize_checks() -> None:
    """PIL's bicubic resize at several shapes, through the processor's own resize call."""
    directory = IMAGES / "resize"
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    rng = np.random.default_rng(1315)
    processor = BlipImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    cases = []
    for w, h, ow, oh in RESIZE_CASES:
        y, x = np.mgrid[0:h, 0:w]
        base = np.stack([x * 255 // (w - 1), y * 255 // (h - 1), ((x + y) * 97) % 256], -1)
        rgb = np.clip(base + rng.integers(-40, 41, size=(h, w, 3)), 0, 255).astype(np.uint8)
        name = f"{w}x{h}-to-{ow}x{oh}.png"
        Image.fromarray(rgb).save(directory / name)
        size = transformers.image_processing_utils.SizeDict(height=oh, width=ow)
        resized = processor.resize(np.moveaxis(rgb, -1, 0), size=size, resample=processor.resample)
        cases.append({"file": name, "width": ow, "height": oh, "resized": np.moveaxis(resized, 0, -1).reshape(-1).tolist()})
    GOLDENS.mkdir(parents=True, exist_ok=True)
    golden = {"pillow": Image.__version__, "cases": cases}
    (GOLDENS / "resize.json").write_text(mg().to_json(golden) + "\n", encoding="utf-8")


def reinit(model, seed: int) -> None:
    """Seeded weights far from the usual init, so that scores differ clearly from pair to pair."""
    g = torch.Generator().manual_seed(seed)
    touched = set()
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
                fan_in = module.weight[0].numel()
                gain = 6.0 if name == "itm_head" else 1.5
                module.weight.copy_(torch.randn(module.weight.shape, generator=g) * (gain / math.sqrt(fan_in)))
                touched.add(f"{name}.weight")
                if module.bias is not None:
                    module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=g))
                    touched.add(f"{name}.bias")
            elif isinstance(module, torch.nn.Embedding):
                module.weight.copy_(torch.randn(module.weight.shape, generator=g))
                touched.add(f"{name}.weight")
            elif isinstance(module, torch.nn.LayerNorm):
                module.weight.copy_(1.0 + 0.2 * torch.randn(module.weight.shape, generator=g))
                module.bias.copy_(0.2 * torch.randn(module.bias.shape, generator=g))
                touched.update({f"{name}.weight", f"{name}.bias"})
        emb = model.vision_model.embeddings
        for p in ("class_embedding", "position_embedding"):
            getattr(emb, p).copy_(torch.randn(getattr(emb, p).shape, generator=g))
            touched.add(f"vision_model.embeddings.{p}")
    missed = {n for n, _ in model.named_parameters()} - touched
    assert not missed, f"parameters left at their default init: {sorted(missed)}"


def make_model() -> Path:
    tokenizer_src = AutoTokenizer.from_pretrained(str(BERT_TOKENIZER.parent))
    vocab = len(tokenizer_src)
    config = BlipConfig(
        text_config=dict(
            vocab_size=vocab,
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=MAX_POS,
            layer_norm_eps=1e-12,
            hidden_act="gelu",
            pad_token_id=0,
            bos_token_id=2,
            sep_token_id=3,
            eos_token_id=3,
        ),
        vision_config=dict(
            hidden_size=48,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=3,
            image_size=IMAGE_SIZE,
            patch_size=8,
            layer_norm_eps=1e-5,
            hidden_act="gelu",
        ),
        image_text_hidden_size=16,
    )
    config.architectures = ["BlipForImageTextRetrieval"]
    torch.manual_seed(1313)
    model = BlipForImageTextRetrieval(config)
    reinit(model, 1313)
    directory = MODELS / NAME
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    model.eval().save_pretrained(str(directory))
    shutil.copy(BERT_TOKENIZER, directory / "tokenizer.json")
    (directory / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "BertTokenizer",
                "do_lower_case": True,
                "model_max_length": 512,
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
    processor = BlipImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    processor.save_pretrained(str(directory))
    return directory


def make_golden(directory: Path, images: list[str]) -> None:
    model = BlipForImageTextRetrieval.from_pretrained(str(directory), dtype=torch.float32, attn_implementation="eager")
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    processor = BlipImageProcessorPil.from_pretrained(str(directory))
    assert processor.backend == "pil" and processor.size["height"] == IMAGE_SIZE, processor

    image_goldens = []
    pixel_values = []
    for name in images:
        with Image.open(IMAGES / name) as im:
            im.load()
            pv = processor(images=[im], return_tensors="pt")["pixel_values"]
            # The 8-bit image the processor resamples to, before rescale and normalize.
            resized = processor_resized(processor, im)
            mode, size = im.mode, im.size
        assert resized.dtype == np.uint8 and resized.shape == (3, IMAGE_SIZE, IMAGE_SIZE), resized.shape
        # Check the 8-bit image is the one pixel_values came from.
        mean = np.array(processor.image_mean, dtype=np.float32)[:, None, None]
        std = np.array(processor.image_std, dtype=np.float32)[:, None, None]
        again = ((resized.astype(np.float64) * processor.rescale_factor).astype(np.float32) - mean) / std
        assert np.array_equal(again, pv[0].numpy()), name
        pixel_values.append(pv)
        image_goldens.append(
            {
                "file": name,
                "mode": mode,
                "size": list(size),
                "resized": np.moveaxis(resized, 0, -1).reshape(-1).tolist(),
                # float32's shortest repr: parses back to the same float32.
                "pixel_values": [f32(x) for x in pv[0].reshape(-1).numpy()],
            }
        )

    queries = []
    for q in QUERIES:
        enc = tokenizer(q, truncation=True, max_length=MAX_POS)
        ids = list(enc["input_ids"])
        z_rows, logits = [], []
        for pv in pixel_values:
            with torch.no_grad():
                z = model(input_ids=torch.tensor([ids]), pixel_values=pv, use_itm_head=True).itm_score[0]
            z_rows.append([float(z[0]), float(z[1])])
            logits.append(float(z[1] - z[0]))
        # All images against this query in one call agree with one at a time.
        with torch.no_grad():
            batched = model(
                input_ids=torch.tensor([ids] * len(pixel_values)), pixel_values=torch.cat(pixel_values), use_itm_head=True
            ).itm_score
        worst = max(abs(float(b[1] - b[0]) - l) for b, l in zip(batched, logits))
        assert worst <= BATCH_TOLERANCE, f"batched vs one-at-a-time differ by {worst}"
        spread = max(logits) - min(logits)
        assert spread >= MIN_SPREAD, f"query {q!r}: logits spread only {spread}"
        queries.append({"query": q, "input_ids": ids, "z": z_rows, "logits": logits})

    golden = {
        "model": NAME,
        "image_size": IMAGE_SIZE,
        "image_mean": [float(x) for x in processor.image_mean],
        "image_std": [float(x) for x in processor.image_std],
        "images": image_goldens,
        "queries": queries,
    }
    all_logits = [x for q in queries for x in q["logits"]]
    print(f"{NAME}: {len(images)} images, {len(queries)} queries, logits {min(all_logits):.3f}..{max(all_logits):.3f}")
    GOLDENS.mkdir(parents=True, exist_ok=True)
    (GOLDENS / f"{NAME}.json").write_text(mg().to_json(golden) + "\n", encoding="utf-8")


def make_blip() -> None:
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    images = make_images()
    make_decode_checks()
    make_resize_checks()
    directory = make_model()
    make_golden(directory, images)


if __name__ == "__main__":
    print(f"torch {torch.__version__}, transformers {transformers.__version__}")
    if sys.argv[1:] == ["resize"]:
        make_resize_checks()
    else:
        make_blip()
