"""Two or more sweeps compared depth by depth on held-out KL and perplexity, with paired bootstrap intervals.

    python -m evaluate.compare runs/main-cpu/eval runs/main-cpu/search/eval [more sweep folders] \\
        [--curve boomerang] [--curve searched] [--out table.md]

Every sweep must have been run with a held-out reference (``--heldout_kl FILE``, or the main job), so that
each record holds per-document sums; the first folder (its first curve, or ``--curve``) is the reference
each other curve is compared with at every depth they share: perplexity ratio (other / reference) and
KL difference (other - reference), each with a 95% paired bootstrap interval over documents.
"""

from __future__ import annotations

import argparse

from boomerang.cli import fail
from boomerang.io import atomic_write_text, markdown_table
from boomerang.scoring import Scores
from evaluate.bootstrap import interval_verdict, paired_comparison
from evaluate.heldout import TASK_NAME
from evaluate.results import fmt_number, load_results


def ladder_by_depth(records: list[dict], curve: str | None = None) -> dict[int, dict]:
    """One record per depth (students left out) of one curve, where each holds held-out scores."""
    out = {}
    for r in records:
        if r.get("role") == "student" or "heldout_scores" not in r or (curve and r.get("curve") != curve):
            continue
        out[int(r["depth"])] = r
    return out


def heldout(r: dict, metric: str) -> float:
    return r["metrics"][TASK_NAME][metric]["value"]


def compare_rows(reference: dict[int, dict], other: dict[int, dict], resamples: int = 2000) -> list[dict]:
    rows = []
    for d in sorted(set(reference) & set(other)):
        a, b = reference[d], other[d]
        c = paired_comparison(Scores.from_dict(a["heldout_scores"]), Scores.from_dict(b["heldout_scores"]),
                              resamples=resamples)
        rows.append({"depth": d, "ref_params": a["parameters"]["total"], "params": b["parameters"]["total"],
                     "ref_ppl": heldout(a, "token_perplexity"), "ppl": heldout(b, "token_perplexity"),
                     "ref_kl": heldout(a, "kl"), "kl": heldout(b, "kl"), **c,
                     "description": b.get("description", "")})
    return rows


def fmt_ppl(v: float) -> str:
    """A perplexity cell: one decimal (``evaluate.results.fmt_number``)."""
    return fmt_number(v, 1, "f")


def render(rows: list[dict], ref_label: str, label: str) -> str:
    table = markdown_table([[r["depth"], fmt_ppl(r["ref_ppl"]), fmt_ppl(r["ppl"]),
                             f"{r['ppl_ratio']:.3f} [{r['ppl_ci95'][0]:.3f}, {r['ppl_ci95'][1]:.3f}]",
                             f"{r['ref_kl']:.3f}", f"{r['kl']:.3f}",
                             f"{r['kl_diff']:+.3f} [{r['kl_ci95'][0]:+.3f}, {r['kl_ci95'][1]:+.3f}]",
                             f"{r['params'] / 1e6:.1f}M", r["description"]] for r in rows],
                           ["depth", f"{ref_label} ppl", f"{label} ppl", "ratio [95% CI]", f"{ref_label} KL",
                            f"{label} KL", "ΔKL [95% CI]", f"{label} params", "parts"])
    n = {(key, v): sum(interval_verdict(r[f"{key}_ci95"], one) == v for r in rows)
         for key, one in (("ppl", 1.0), ("kl", 0.0)) for v in ("better", "worse")}
    return (f"{table}\n{label} against {ref_label}: perplexity better beyond noise at {n['ppl', 'better']} of "
            f"{len(rows)} depths, worse at {n['ppl', 'worse']}; KL better at {n['kl', 'better']}, "
            f"worse at {n['kl', 'worse']}.\n")


def main(argv=None) -> str:
    p = argparse.ArgumentParser(prog="python -m evaluate.compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dirs", nargs="+", help="sweep folders; the first is the reference")
    p.add_argument("--curve", action="append", default=None,
                   help="the curve to take from each folder, in order (default: each folder's first curve)")
    p.add_argument("--resamples", type=int, default=2000)
    p.add_argument("--out", default=None, help="also write the tables to this markdown file")
    args = p.parse_args(argv)
    if len(args.dirs) < 2:
        fail("give a reference sweep folder and at least one other")
    curves = args.curve or []
    ladders = []
    for i, d in enumerate(args.dirs):
        recs = load_results(d)
        curve = curves[i] if i < len(curves) else next((r.get("curve") for r in recs if "heldout_scores" in r), None)
        lad = ladder_by_depth(recs, curve)
        if not lad:
            fail(f"{d}: no results with held-out scores{f' for curve {curve!r}' if curve else ''}; run the sweep with "
                 "--heldout_kl FILE")
        ladders.append((curve or d, lad))
    ref_label, ref = ladders[0]
    text = "".join(f"## {lab} against {ref_label}\n\n{render(compare_rows(ref, lad, args.resamples), ref_label, lab)}\n"
                   for lab, lad in ladders[1:])
    if args.out:
        atomic_write_text(args.out, text)
    print(text)
    return text


if __name__ == "__main__":
    main()
