"""The searched ladder against last-k, first-k and ShortGPT at every depth (held-out KL and perplexity).

    python docs/results/search-smollm2/summarize.py runs/compare/searched runs/experiments-cpu/seed-0/eval/ladder-full \
        runs/compare/first-k runs/compare/shortgpt/eval runs/search-main/search.json > docs/results/search-smollm2/table.md

Reads the sweep folders (each run with a held-out reference: per-document sums), compares the searched
ladder with the better fixed order at each depth and with ShortGPT (paired bootstrap over documents).
"""

import json
import sys

sys.path.insert(0, ".")
from evaluate.bootstrap import interval_verdict  # noqa: E402
from evaluate.compare import compare_rows, fmt_ppl, ladder_by_depth  # noqa: E402
from evaluate.results import load_results  # noqa: E402

searched_dir, lastk_dir, firstk_dir, shortgpt_dir, plan_path = sys.argv[1:6]
curves = {"searched": ladder_by_depth(load_results(searched_dir)),
          "last-k": ladder_by_depth(load_results(lastk_dir)),
          "first-k": ladder_by_depth(load_results(firstk_dir)),
          "ShortGPT": ladder_by_depth(load_results(shortgpt_dir), "ShortGPT")}
plan = json.load(open(plan_path))
M = "heldout_kl"


def cell(r):
    if r is None:
        return ""
    return f"{fmt_ppl(r['metrics'][M]['token_perplexity']['value'])} ({r['metrics'][M]['kl']['value']:.3f})"


print("| depth | last-k | first-k | ShortGPT | searched | searched / better fixed order: ppl [95% CI] | "
      "searched / ShortGPT: ppl [95% CI] | searched parts |")
print("|---|---|---|---|---|---|---|---|")
summary = {"vs_fixed": [], "vs_shortgpt": []}
for d in sorted(curves["searched"]):
    s = curves["searched"][d]
    fixed = [c for c in ("last-k", "first-k") if d in curves[c]]
    best = min(fixed, key=lambda c: curves[c][d]["metrics"][M]["token_perplexity"]["value"]) if fixed else None
    row = [str(d)] + [cell(curves[c].get(d)) for c in ("last-k", "first-k", "ShortGPT")] + [cell(s)]
    for ref in ([best] if best else []), (["ShortGPT"] if d in curves["ShortGPT"] else []):
        if not ref:
            row.append("")
            continue
        r = compare_rows({d: curves[ref[0]][d]}, {d: s})[0]
        v = interval_verdict(r["ppl_ci95"])
        summary["vs_fixed" if ref[0] != "ShortGPT" else "vs_shortgpt"].append((d, v))
        row.append(f"{r['ppl_ratio']:.3f} [{r['ppl_ci95'][0]:.3f}, {r['ppl_ci95'][1]:.3f}]"
                   + (f" vs {ref[0]}" if ref[0] != "ShortGPT" else "") + f" {v}")
    row.append(s.get("description", ""))
    print("| " + " | ".join(row) + " |")
print()
for key, rows in summary.items():
    print(f"{key}: better at {[d for d, v in rows if v == 'better']}, worse at {[d for d, v in rows if v == 'worse']}, "
          f"within noise at {[d for d, v in rows if v == 'within noise']}")
ppl = [(d, curves["searched"][d]["metrics"][M]["token_perplexity"]["value"]) for d in sorted(curves["searched"])]
rises = [(a, b) for (a, pa), (b, pb) in zip(ppl, ppl[1:]) if pb > pa]
print(f"searched ladder perplexity rises at: {rises or 'no step'}")
c = plan["cost"]
print(f"search cost: {c['models_scored']} models scored, {c['wall_time_s']} s wall ({c['teacher_reference_s']} s of it the "
      f"teacher reference), {c['layers_reused']} of {c['layers_run'] + c['layers_reused']} layer passes reused")
