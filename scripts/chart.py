#!/usr/bin/env python3
"""Latency against N, crossrank beside each peer, one PNG per model shape.

    python3 scripts/chart.py perf/2025-01-01-nvidia-h100-80gb-hbm3.json [--out-dir perf]

Reads a combined file from `crossrank bench-table --combine` ({"reports": [...]}) and writes
<out-dir>/<input stem>-<model>.png: one panel per length distribution, end-to-end p50 latency
(ms, log scale) against the candidate count N, one line per system, p99 as a faint band above.
Needs matplotlib (present on the GPU machine).
"""

import argparse
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

STYLE = {"crossrank": dict(color="#d62728", linewidth=2.5, marker="o", zorder=5)}
PEER_COLORS = ["#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#7f7f7f", "#17becf"]


def workload(report, run):
    """A panel: the lengths, and for an image workload's rows the cache state (images/cache-warm)."""
    return f"{report['lengths']}/{run['cache']}" if run.get("cache") else report["lengths"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("combined")
    ap.add_argument("--out-dir", default=None, help="default: the input's folder")
    args = ap.parse_args()
    try:
        with open(args.combined) as f:
            doc = json.load(f)
    except (OSError, ValueError) as e:
        sys.exit(f"chart.py: {args.combined}: {e}")
    reports = doc["reports"] if isinstance(doc, dict) else doc
    out_dir = args.out_dir or os.path.dirname(os.path.abspath(args.combined))
    stem = os.path.splitext(os.path.basename(args.combined))[0]
    models = []
    for r in reports:
        if r["model"]["name"] not in models:
            models.append(r["model"]["name"])
    systems = []
    for r in reports:
        if r["system"] not in systems:
            systems.append(r["system"])
    colors = {s: PEER_COLORS[i % len(PEER_COLORS)] for i, s in enumerate(x for x in systems if x != "crossrank")}
    written = []
    for model in models:
        mine = [r for r in reports if r["model"]["name"] == model]
        lengths = []
        for r in mine:
            for x in r["runs"]:
                if workload(r, x) not in lengths:
                    lengths.append(workload(r, x))
        fig, axes = plt.subplots(1, len(lengths), figsize=(6 * len(lengths), 4.5), squeeze=False)
        device = next((r["device"] for r in mine if r["system"] == "crossrank"), mine[0]["device"])
        for ax, ln in zip(axes[0], lengths):
            for r in mine:
                runs = sorted((x for x in r["runs"] if workload(r, x) == ln), key=lambda x: x["n"])
                if not runs:
                    continue
                ns = [x["n"] for x in runs]
                p50 = [x["e2e_ms"]["p50"] for x in runs]
                p99 = [x["e2e_ms"]["p99"] for x in runs]
                style = STYLE.get(r["system"], dict(color=colors.get(r["system"], "k"), linewidth=1.5, marker="s"))
                ax.plot(ns, p50, label=r["system"], **style)
                ax.fill_between(ns, p50, p99, color=style["color"], alpha=0.12)
            ax.set_yscale("log")
            ax.set_xlabel("candidates per call (N)")
            ax.set_ylabel("end-to-end latency p50 (ms); band to p99")
            ax.set_title(f"{model}, {ln}" if "/" in ln else f"{model}, {ln} lengths")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle(f"{model} on {device} ({doc.get('date', '') if isinstance(doc, dict) else ''})", fontsize=10)
        fig.tight_layout()
        path = os.path.join(out_dir, f"{stem}-{model}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    for p in written:
        print(p)


if __name__ == "__main__":
    main()
