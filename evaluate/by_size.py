"""Families of models by size: each family's table ordered by parameters, with held-out scores and their
bootstrap intervals, the members another member beats beyond noise while being no larger, and the widest
gap between consecutive members; one plot of every family against parameters.

    python -m evaluate.by_size runs/main-cpu/eval runs/main-cpu/search/eval [--plan runs/main-cpu/search] \\
        [--out by_size.md] [--plots runs/main-cpu/plots-by-size]

A family is one curve of the sweep folders' results (the searched frontier, a fixed order with its student
and teacher, naive pruning, ShortGPT, ...), every member at its true parameter count. With ``--plan`` (a
search result) each member the search scored shows its calibration KL. The tables are made by
``family_tables`` from result files alone, so a report or a README can be regenerated at any time.
"""

from __future__ import annotations

import argparse

import torch

from boomerang.cli import fail
from boomerang.io import atomic_write_text, markdown_table
from boomerang.layer_map import format_layers
from boomerang.scoring import Scores
from evaluate.bootstrap import paired_comparison
from evaluate.heldout import TASK_NAME
from evaluate.plot import plot_records
from evaluate.results import fmt_number, load_results
from patching.frontier import scored_entries, widest_gap

SEARCHED = "searched"  # the curve of a searched family (evaluate.evaluate.plan_points)


def heldout_interval(scores: Scores, resamples: int = 2000, seed: int = 0) -> dict:
    """Perplexity and mean KL per token of one model with 95% bootstrap intervals over its documents."""
    g = torch.Generator().manual_seed(seed)
    n = len(scores.tokens)
    idx = torch.randint(0, n, (resamples, n), generator=g)
    tok = torch.tensor(scores.tokens, dtype=torch.float64)[idx].sum(1)
    q = torch.tensor([0.025, 0.975], dtype=torch.float64)
    nll = torch.tensor(scores.nll, dtype=torch.float64)[idx].sum(1) / tok
    kl = torch.tensor(scores.kl, dtype=torch.float64)[idx].sum(1) / tok
    return {"ppl": scores.token_perplexity, "ppl_ci95": torch.quantile(torch.exp(nll), q).tolist(),
            "kl": scores.kl_per_token, "kl_ci95": torch.quantile(kl, q).tolist()}


def _identity(r: dict) -> tuple | None:
    own = r.get("role") if r.get("role") in ("student", "teacher") else None
    emb, head = r.get("embeddings_from", own), r.get("lm_head_from", own)
    return None if not r.get("layers") or None in (emb, head) else (tuple(tuple(x) for x in r["layers"]), emb, head)


def calibration_lookup(plan: dict | None) -> dict:
    """(layers, embeddings, head) -> calibration KL of every model a search scored (its fixed orders included)."""
    if plan is None:
        return {}
    entries = scored_entries(plan) + [e for es in (plan.get("fixed_orders") or {}).values() for e in es]
    return {(tuple(tuple(x) for x in e["layers"]), e["embeddings_from"], e["lm_head_from"]): e["calibration_kl"]
            for e in entries}


def parts(r: dict) -> str:
    """What a member is made of, in a table cell."""
    if r.get("description"):
        return r["description"]
    if r.get("role") in ("student", "teacher"):
        return r["role"]
    if r.get("teacher_layers"):
        return f"teacher layers {format_layers(r['teacher_layers'])}"
    if r.get("order") and r.get("num_layers_to_patch") is not None:
        return (f"{r['order']} k={r['num_layers_to_patch']}: emb {str(r.get('embeddings_from', '?'))[0].upper()}, "
                f"head {str(r.get('lm_head_from', '?'))[0].upper()}")
    return r.get("name", "")


def family_rows(records: list[dict], calibration: dict | None = None, resamples: int = 2000) -> list[dict]:
    """One family's members with held-out scores, by parameters; each with its intervals and the smaller (or
    equal) members whose perplexity is lower beyond noise (``dominated_by``: paired bootstrap over documents)."""
    recs = sorted((r for r in records if "heldout_scores" in r),
                  key=lambda r: (r["parameters"]["total"], r["metrics"][TASK_NAME]["token_perplexity"]["value"]))
    rows = []
    for i, r in enumerate(recs):
        scores = Scores.from_dict(r["heldout_scores"])
        row = {"name": r["name"], "params": r["parameters"]["total"], "depth": int(r["depth"]), "parts": parts(r),
               "role": r.get("role"), "calibration_kl": r.get("calibration_kl"),
               **heldout_interval(scores, resamples), "dominated_by": []}
        if row["calibration_kl"] is None and calibration:
            row["calibration_kl"] = calibration.get(_identity(r))
        for o in recs:
            if o is r or o["parameters"]["total"] > row["params"]:
                continue
            c = paired_comparison(Scores.from_dict(o["heldout_scores"]), scores, resamples)
            if c["verdict"] == "worse":  # this member's perplexity over the other's: above 1 beyond noise
                row["dominated_by"].append({"name": o["name"], "params": o["parameters"]["total"],
                                            "ppl_ratio": c["ppl_ratio"], "ppl_ci95": c["ppl_ci95"]})
        row["gap"] = row["params"] - rows[-1]["params"] if rows else None
        rows.append(row)
    return rows


def fmt_params(n: int) -> str:
    """Millions with two decimals; exact below 10M (tiny models differ by thousands)."""
    return f"{n / 1e6:.2f}M" if n >= 10**7 else f"{n:,}"


def render_family(label: str, rows: list[dict], teacher_params: int | None = None) -> tuple[str, dict]:
    """A family's table and its facts: members, widest gap, members dominated beyond noise."""
    def ci(lo_hi, digits, style="f"):
        return f"[{fmt_number(lo_hi[0], digits, style)}, {fmt_number(lo_hi[1], digits, style)}]"

    table = markdown_table([[fmt_params(r["params"]), r["depth"], r["parts"],
                             fmt_number(r["calibration_kl"], 3, "f"),
                             f"{fmt_number(r['ppl'], 1, 'f')} {ci(r['ppl_ci95'], 1)}",
                             f"{r['kl']:.3f} {ci(r['kl_ci95'], 3)}",
                             "" if r["gap"] is None else f"+{fmt_params(r['gap'])}",
                             "; ".join(f"{d['name']} ({fmt_params(d['params'])}, x{d['ppl_ratio']:.2f})"
                                       for d in r["dominated_by"][:2]) + (" ..." if len(r["dominated_by"]) > 2 else "")
                             ] for r in rows],
                           ["params", "depth", "parts", "calibration KL", "held-out ppl [95% CI]",
                            "KL [95% CI]", "gap", "beaten beyond noise by (no larger)"])
    gap = widest_gap([r["params"] for r in rows])
    dominated = [r["name"] for r in rows if r["dominated_by"]]
    facts = {"members": len(rows), "params": [r["params"] for r in rows],
             "widest_gap": None if gap is None else {"params": gap[0], "from": rows[gap[1]]["name"],
                                                     "to": rows[gap[1] + 1]["name"]},
             "dominated": dominated,
             "larger_than_teacher": [r["name"] for r in rows if teacher_params and r["params"] > teacher_params]}
    lines = [f"**{label}**: {len(rows)} models, {fmt_params(rows[0]['params'])} to {fmt_params(rows[-1]['params'])} "
             "parameters"]
    if gap is not None:
        lines.append(f"widest gap {fmt_params(gap[0])} ({rows[gap[1]]['name']} -> {rows[gap[1] + 1]['name']})")
    lines.append(f"beaten beyond noise by a model of the same family no larger: {', '.join(dominated) or 'none'}")
    if facts["larger_than_teacher"]:
        lines.append(f"larger than the teacher: {', '.join(facts['larger_than_teacher'])}")
    return f"{table}\n{'; '.join(lines)}.\n", facts


def families(records: list[dict]) -> dict[str, list[dict]]:
    """Records by curve (family). The teacher belongs to every family: a family without it (a baseline's, whose
    teacher is a record of its own, curve ``teacher``) gets the teacher's record."""
    out: dict[str, list[dict]] = {}
    for r in records:
        out.setdefault(r.get("curve") or r.get("method") or "model", []).append(r)
    teacher = next((r for r in records if r.get("role") == "teacher" and "heldout_scores" in r), None)
    out.pop("teacher", None)
    for recs in out.values():
        if teacher is not None and not any(_identity(r) == _identity(teacher) for r in recs):
            recs.append(teacher)
    return out


def family_tables(records: list[dict], plan: dict | None = None, resamples: int = 2000) -> tuple[str, dict]:
    """Every family of ``records`` by size (the searched frontier first): markdown and facts per family."""
    calibration = calibration_lookup(plan)
    teacher = next((r["parameters"]["total"] for r in records if r.get("role") == "teacher"), None)
    fams = families(records)
    text, facts = [], {}
    for c in sorted(fams, key=lambda c: c != SEARCHED):  # the searched frontier, then the others as they come
        rows = family_rows(fams[c], calibration, resamples)
        if rows:
            table, facts[c] = render_family("searched frontier" if c == SEARCHED else c, rows, teacher)
            text.append(table)
    return "\n".join(text), facts


def plot_by_size(records: list[dict], out_dir: str) -> list[str]:
    """Held-out perplexity and KL of every family against parameters, on one plot each (the teacher at the right)."""
    keep = [{**r, "metrics": {TASK_NAME: r["metrics"][TASK_NAME]},
             "curve": "searched frontier" if r.get("curve") == SEARCHED else r.get("curve")}
            for r in records if TASK_NAME in r.get("metrics", {})]
    return plot_records(keep, out_dir, x="total") if keep else []


def main(argv=None) -> str:
    from patching.patch import load_plan

    p = argparse.ArgumentParser(prog="python -m evaluate.by_size", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dirs", nargs="+", help="sweep folders run with held-out scores (--heldout_kl, or the main job)")
    p.add_argument("--plan", default=None, help="a search result: calibration KL of the members it scored")
    p.add_argument("--resamples", type=int, default=2000)
    p.add_argument("--out", default=None, help="also write the tables to this markdown file")
    p.add_argument("--plots", default=None, help="draw the by-size plots into this folder")
    args = p.parse_args(argv)
    records = [r for d in args.dirs for r in load_results(d)]
    if not any("heldout_scores" in r for r in records):
        fail(f"{', '.join(args.dirs)}: no results with held-out scores; run the sweeps with --heldout_kl FILE")
    try:
        plan = load_plan(args.plan) if args.plan else None
    except Exception as e:  # PatchError: a clear message
        fail(str(e))
    text, _ = family_tables(records, plan, args.resamples)
    if args.out:
        atomic_write_text(args.out, text)
    if args.plots:
        for path in plot_by_size(records, args.plots):
            print(path)
    print(text)
    return text


if __name__ == "__main__":
    main()

