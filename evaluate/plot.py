"""Plots of sweep results: each metric against parameter count, one curve per method/order.

    python -m evaluate.plot DIR [DIR ...] [--out OUT] [--x total|non_embedding|depth]

Reads ``DIR/results/*.json`` of every folder given (a boomerang sweep, baselines, another order)
and draws one PNG per (task, metric) into ``OUT`` (default ``DIR/plots`` of the first folder),
every curve overlaid, the student and teacher marked. Also rewrites the first folder's summaries.
"""

from __future__ import annotations

import argparse
import os
import re

from boomerang.cli import fail
from evaluate.results import load_results, metric_columns, sort_records, write_summary

MARKERS = {"student": ("s", "student"), "teacher": ("*", "teacher")}


def _safe(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\-]+", "_", s).strip("_")


def plot_records(records: list[dict], out_dir: str, x: str = "total") -> list[str]:
    """One PNG per (task, metric) in ``out_dir``; returns the paths written."""
    import matplotlib  # only where plots are drawn: start-up stays free of it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: matplotlib only when a plot is drawn

    records = sort_records(records)
    os.makedirs(out_dir, exist_ok=True)
    curves: dict[str, list[dict]] = {}
    for r in records:
        curves.setdefault(r.get("curve") or r.get("method") or "model", []).append(r)
    paths = []
    for task, metric in metric_columns(records):
        fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=110)
        marked = set()
        for ci, (curve, recs) in enumerate(curves.items()):
            pts = [(r["depth"] if x == "depth" else r["parameters"][x], r["metrics"][task][metric]["value"],
                    r.get("metrics")[task][metric].get("stderr"), r)
                   for r in recs if r.get("metrics", {}).get(task, {}).get(metric, {}).get("value") is not None]
            if not pts:
                continue
            if all(p[3].get("role") == "teacher" for p in pts) and "teacher" in marked:
                continue  # another folder's teacher point: already marked
            pts.sort(key=lambda p: p[0])
            xs, ys, es = [p[0] for p in pts], [p[1] for p in pts], [p[2] for p in pts]
            color = f"C{ci % 10}"
            # the teacher is a point of its own: with an untied head the largest patched sizes have
            # more parameters than the (tied) teacher, and a line through it would double back
            line = [i for i, p in enumerate(pts) if p[3].get("role") != "teacher"]
            ax.plot([xs[i] for i in line], [ys[i] for i in line], "-o", color=color, ms=4, label=curve)
            if any(e is not None for e in es):
                ax.errorbar(xs, ys, yerr=[e or 0 for e in es], fmt="none", ecolor=color, alpha=0.4, capsize=2)
            for px, py, _, r in pts:
                role = r.get("role")
                if role in MARKERS:
                    mk, lab = MARKERS[role]
                    ax.plot([px], [py], mk, color="black" if role == "teacher" else "tab:red", ms=11,
                            mfc="none" if role == "student" else "gold", mew=1.5,
                            label=lab if role not in marked else None, zorder=5)
                    marked.add(role)
        hib = next((r.get("higher_is_better", {}).get(task, {}).get(metric) for r in records
                    if r.get("higher_is_better", {}).get(task, {}).get(metric) is not None), None)
        if "perplexity" in metric:
            ax.set_yscale("log")
        ax.set_xlabel("depth (layers)" if x == "depth" else f"parameters ({'total' if x == 'total' else 'non-embedding'})")
        arrow = "" if hib is None else (" (higher is better)" if hib else " (lower is better)")
        ax.set_ylabel(f"{metric}{arrow}")
        ax.set_title(f"{task}: {metric}")
        ax.grid(True, alpha=0.3)
        if x != "depth":
            ax.ticklabel_format(axis="x", style="sci", scilimits=(6, 6))
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = os.path.join(out_dir, f"{_safe(task)}__{_safe(metric)}.png")
        tmp = path + ".tmp.png"
        fig.savefig(tmp)
        plt.close(fig)
        os.replace(tmp, path)
        paths.append(path)
    return paths


def main(argv=None) -> list[str]:
    p = argparse.ArgumentParser(prog="python -m evaluate.plot", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dirs", nargs="+", help="sweep folders (holding results/*.json); the first is the main one")
    p.add_argument("--out", default=None, help="folder for the PNGs (default: FIRST_DIR/plots)")
    p.add_argument("--x", choices=("total", "non_embedding", "depth"), default="total",
                   help="the x axis: total or non-embedding parameters, or depth (layers)")
    args = p.parse_args(argv)
    records = []
    for d in args.dirs:
        recs = load_results(d)
        if not recs:
            fail(f"{d} holds no results (expected {os.path.join(d, 'results', '*.json')})")
        records += recs
    write_summary(args.dirs[0])
    paths = plot_records(records, args.out or os.path.join(args.dirs[0], "plots"), x=args.x)
    for path in paths:
        print(path)
    return paths


if __name__ == "__main__":
    main()
