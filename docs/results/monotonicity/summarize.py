"""Summarize the monotonicity study: one row per distilled student and patching order, from its alignment.json.

    python docs/results/monotonicity/summarize.py   # rewrites docs/results/monotonicity/table.md

Every student is compared on the same documents: the first 25 held-out Brown documents, each cut to
512 tokens (a report made on more documents is cut to those 25 from its per-document NLLs; the seam
cosine is the report's own, over all of its documents). A folder not there yet is skipped.
"""

import json
import math
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(HERE))))

from evaluate.bootstrap import step_changes  # noqa: E402

DOCS = 25
RUNS = [  # folder here (alignment.json), the folder whose train_log.jsonl (= the run's log.jsonl) it uses, what differs
    ("paper-120", "paper-120", "the CPU preset: 120 steps, paper loss (cosine 2.0, KL 0.1), lr 3e-4"),
    ("cos20-120", "cos20-120", "cosine weight 20 (10x)"),
    ("lr1e-3-120", "lr1e-3-120", "lr 1e-3 (3.3x)"),
    ("paper-180", "paper-180", "180 steps (1.5x)"),
    ("paper-360", "paper-360", "360 steps (3x)"),
    ("map221-120", "map221-120", "layer map (2, 2, 1) instead of (1, 2, 2), 120 steps"),
    ("paper-120-first-k", "paper-120", "the CPU preset (120 steps)"),
    ("paper-180-first-k", "paper-180", "180 steps (1.5x)"),
    ("paper-360-first-k", "paper-360", "360 steps (3x)"),
    ("map221-120-first-k", "map221-120", "layer map (2, 2, 1), 120 steps"),
    ("map221-180-first-k", "map221-180", "layer map (2, 2, 1), 180 steps (1.5x)"),
]


def final_ce(path: str):
    if not os.path.isfile(path):
        return None
    evals = [json.loads(line) for line in open(path) if '"eval_ce"' in line]
    return evals[-1]["eval_ce"] if evals else None


def main():
    rows = []
    for name, log_dir, what in RUNS:
        path = os.path.join(HERE, name, "alignment.json")
        if not os.path.isfile(path):
            continue
        rep = json.load(open(path))
        ladder = rep["ladder"]
        n = min(DOCS, rep["documents"])
        counts = rep["document_tokens"][:n]
        nlls = [rep["student_document_nll"][:n]] + [r["document_nll"][:n] for r in ladder]
        ppl = [math.exp(sum(x) / sum(counts)) for x in nlls]
        labels = ["student"] + [str(r["depth"]) for r in ladder]
        steps = step_changes(labels, nlls, counts)
        inner = [p["cosine"] for p in rep["pairs"] if p["student_index"] not in (0, -1)]
        rises = [s for s in steps if s["verdict"] == "rises"]
        rows.append((what, rep.get("order", "last-k"), final_ce(os.path.join(HERE, log_dir, "train_log.jsonl")),
                     sum(inner) / len(inner), ppl, rises))
    depths = [str(r["depth"]) for r in ladder]
    out = ["| student | order | held-out CE (train eval) | seam cosine (mean) | student | "
           + " | ".join(depths) + " | significant rises |",
           "|---|---|---|---|---|" + "---|" * len(depths) + "---|"]
    for what, order, ce, cos, ppl, rises in rows:
        r = "; ".join(f"{s['from']}→{s['to']} +{100 * (s['ratio'] - 1):.1f}%" for s in rises) or "none"
        out.append(f"| {what} | {order} | {'' if ce is None else f'{ce:.3f}'} | {cos:.3f} | "
                   + " | ".join(f"{p:.1f}" for p in ppl) + f" | {r} |")
    text = "\n".join(out) + "\n"
    with open(os.path.join(HERE, "table.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
