"""Summarize the monotonicity study: one row per distilled student, from its alignment.json.

    python docs/results/monotonicity/summarize.py   # rewrites docs/results/monotonicity/table.md

Every student is compared on the same documents: the first 25 held-out Brown documents, each cut to
512 tokens (a report made on more documents is cut to those 25 from its per-document NLLs).
"""

import json
import math
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(HERE))))

from evaluate.alignment import step_changes  # noqa: E402

DOCS = 25
RUNS = [  # folder here, what differs from the CPU preset, its training log
    ("paper-120", "the preset (paper loss: cosine 2.0, KL 0.1; lr 3e-4)", "runs/smollm2-cpu/log.jsonl"),
    ("cos20-120", "cosine weight 20 (10x)", "runs/exp-cos20/log.jsonl"),
    ("lr1e-3-120", "lr 1e-3", "runs/exp-lr1e-3/log.jsonl"),
    ("cos20-240", "cosine weight 20, 240 steps", "runs/exp-cos20-240/log.jsonl"),
    ("paper-240", "240 steps", "runs/exp-paper-240/log.jsonl"),
]


def final_ce(log_path: str):
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(HERE))), log_path)
    if not os.path.isfile(path):
        return None
    evals = [json.loads(line) for line in open(path) if '"eval_ce"' in line]
    return evals[-1]["eval_ce"] if evals else None


def main():
    rows, steps_out = [], []
    for name, what, log in RUNS:
        path = os.path.join(HERE, name, "alignment.json")
        if not os.path.isfile(path):
            continue
        rep = json.load(open(path))
        ladder = rep["ladder"]
        n = min(DOCS, rep["documents"])
        # token counts of the first n documents: each is cut to max_tokens, so recover them from the
        # stored total only when every document was cut; otherwise the report must hold them
        counts = rep.get("document_tokens") or [rep["max_tokens"] - 1] * rep["documents"]
        counts = counts[:n]
        nlls = [rep["student_document_nll"][:n]] + [r["document_nll"][:n] for r in ladder]
        ppl = [math.exp(sum(x) / sum(counts)) for x in nlls]
        labels = ["student"] + [str(r["depth"]) for r in ladder]
        steps = step_changes(labels, nlls, counts)
        inner = [p["cosine"] for p in rep["pairs"] if p["student_index"] not in (0, -1)]
        rises = [s for s in steps if s["verdict"] == "rises"]
        rows.append((name, what, final_ce(log), sum(inner) / len(inner), ppl, rises))
    depths = [str(r["depth"]) for r in ladder]
    out = ["| student | held-out CE (train eval) | seam cosine (mean) | student | "
           + " | ".join(depths) + " | significant rises |",
           "|---|---|---|---|" + "---|" * len(depths) + "---|"]
    for name, what, ce, cos, ppl, rises in rows:
        r = "; ".join(f"{s['from']}→{s['to']} +{100 * (s['ratio'] - 1):.1f}%" for s in rises) or "none"
        out.append(f"| {what} | {'' if ce is None else f'{ce:.3f}'} | {cos:.3f} | "
                   + " | ".join(f"{p:.1f}" for p in ppl) + f" | {r} |")
    text = "\n".join(out) + "\n"
    with open(os.path.join(HERE, "table.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
