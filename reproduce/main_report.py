"""The main job's results as the README's pages: the family by size and the paper's claims at this budget, written
from the main job's result files alone, one training seed.

``reproduce.main_job --output_dir RUN`` leaves in RUN the sweep's records (``eval/results/*.json``: the fixed order,
its student and teacher, the baselines, each with per-document held-out sums), the search's result
(``search/search.json``) and its frontier's records (``search/eval/results/*.json``), and ``report.json`` (stage
times). ``python -m reproduce.pages --collect_main RUN`` copies exactly those into docs/results/main-cpu/data; this
module reads such a folder and writes:

- ``ladder_block``: the searched frontier at a row per member (parameters, depth, parts, calibration KL, held-out
  perplexity and KL with 95% intervals), every other family's summary at its true sizes, and each fixed-order or
  baseline model against the best frontier member no larger than it (a paired bootstrap over documents);
- ``claims_block``: the paper's claims that one main job can test (beats naive pruning and ShortGPT at the same
  depth, a smooth ladder), each "beyond noise" a 95% paired bootstrap interval over documents.

    report = MainReport.load("docs/results/main-cpu/data")
    report.ladder_block("docs/results/main-cpu/plots-by-size"); report.claims_block()
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import os

from boomerang.io import markdown_table
from boomerang.scoring import Scores
from evaluate.bootstrap import paired_comparison, step_changes
from evaluate.by_size import calibration_lookup, family_rows, families, fmt_params, plot_by_size, render_family
from evaluate.heldout import TASK_NAME
from evaluate.results import load_results
from patching.patch import load_plan
from reproduce.common import read_json

# what --collect_main copies from a main job's folder (globs relative to it): no weights
MAIN_FILES = ("eval/results/*.json", "search/search.json", "search/eval/results/*.json", "report.json",
              "first-k/eval/results/*.json", "last-k/eval/results/*.json")  # the other order, when swept
ORDERS = ("first-k", "last-k")
BASELINES = ("naive", "shortgpt", "laco")


def _scores(r: dict) -> Scores:
    return Scores.from_dict(r["heldout_scores"])


def _ppl(r: dict) -> float:
    return r["metrics"][TASK_NAME]["token_perplexity"]["value"]


def _method(r: dict) -> str:
    """boomerang (the job's fixed order), boomerang:<order> (the other), naive, shortgpt, laco or searched."""
    return r.get("method") or r.get("curve") or "model"


def _order_records(folder: str, order: str, main: bool) -> list[dict]:
    """A fixed order's records, its curve named by the order (the other order's teacher is left out: it is the
    job's, which every family shares)."""
    out = []
    for r in load_results(folder):
        if "heldout_scores" not in r or (not main and r.get("role") == "teacher"):
            continue
        if _method(r) == "boomerang":
            r = {**r, "curve": f"{order} order", "method": "boomerang" if main else f"boomerang:{order}"}
        out.append(r)
    return out


@dataclasses.dataclass
class MainReport:
    records: list[dict]  # the sweep's: the fixed order (curve "boomerang"), its student and teacher, the baselines
    searched: list[dict]  # the searched frontier's
    plan: dict | None  # the search's result
    report: dict  # report.json: stage times, preset, order
    resamples: int = 2000

    @classmethod
    def load(cls, root: str, resamples: int = 2000) -> "MainReport":
        if not glob.glob(os.path.join(root, "eval", "results", "*.json")):
            raise FileNotFoundError(f"{root}: no eval/results/*.json; collect a main job's results with "
                                    "python -m reproduce.pages --collect_main RUN")
        plan_path = os.path.join(root, "search", "search.json")
        searched_dir = os.path.join(root, "search", "eval")
        report = read_json(os.path.join(root, "report.json")) or {}
        order = report.get("order", "fixed")
        records = _order_records(os.path.join(root, "eval"), order, True)
        for other in ORDERS:
            if other != order and os.path.isdir(os.path.join(root, other, "eval")):
                records += _order_records(os.path.join(root, other, "eval"), other, False)
        return cls(records,
                   [r for r in load_results(searched_dir) if "heldout_scores" in r]
                   if os.path.isdir(searched_dir) else [],
                   load_plan(plan_path) if os.path.isfile(plan_path) else None, report, resamples)

    # ------------------------------------------------------------------ pieces
    def _curve(self, method: str) -> list[dict]:
        return [r for r in self.records if _method(r) == method]

    def _by_depth(self, method: str) -> dict[int, dict]:
        return {int(r["depth"]): r for r in self._curve(method) if r.get("role") not in ("student", "teacher")}

    def _ladder(self) -> list[tuple[str, dict]]:
        """The fixed order as blocks are added: the student, then k = 0 .. the teacher."""
        student = next((r for r in self.records if r.get("role") == "student"), None)
        rungs = sorted((r for r in self._curve("boomerang") if r.get("role") != "student"),
                       key=lambda r: (int(r["depth"]), r.get("role") == "teacher"))
        return ([(f"{student['depth']} (student)", student)] if student else []) + [
            (f"{r['depth']}" + (" (teacher)" if r.get("role") == "teacher" else ""), r) for r in rungs]

    @functools.cached_property
    def _frontier_rows(self) -> list[dict]:
        """The frontier, ending at the teacher (the sweep's record, unless the search's family holds it already);
        computed once (a paired bootstrap of every pair of members), for both blocks."""
        teacher = [r for r in self.records if r.get("role") == "teacher"]
        has = {(r["parameters"]["total"], int(r["depth"])) for r in self.searched}
        teacher = [t for t in teacher if (t["parameters"]["total"], int(t["depth"])) not in has]
        return family_rows(self.searched + teacher, calibration_lookup(self.plan), self.resamples)

    def _teacher_params(self) -> int | None:
        return next((r["parameters"]["total"] for r in self.records if r.get("role") == "teacher"), None)

    def _against_frontier(self, others: list[dict]) -> list[dict]:
        """Each model of ``others`` against the frontier member no larger with the lowest held-out perplexity."""
        out = []
        for r in others:
            size = r["parameters"]["total"]
            pool = [f for f in self.searched if f["parameters"]["total"] <= size]
            if not pool:
                out.append({"record": r, "best": None})
                continue
            best = min(pool, key=_ppl)
            c = paired_comparison(_scores(r), _scores(best), self.resamples)
            out.append({"record": r, "best": best, **c})
        return out

    def _head_to_head(self, method: str) -> list[dict]:
        """The fixed order against a baseline at every depth both have: baseline ppl / boomerang ppl."""
        boom, base = self._by_depth("boomerang"), self._by_depth(method)
        out = []
        for d in sorted(set(boom) & set(base)):
            c = paired_comparison(_scores(boom[d]), _scores(base[d]), self.resamples)
            out.append({"depth": d, **c, "wins": c["verdict"] == "worse", "loses": c["verdict"] == "better"})
        return out

    def _steps(self, chain: list[tuple[str, dict]]) -> list[dict]:
        return step_changes([label for label, _ in chain], [_scores(r).nll for _, r in chain],
                            _scores(chain[0][1]).tokens, self.resamples) if len(chain) > 1 else []

    # ------------------------------------------------------------------ blocks
    def heading(self) -> str:
        commits = sorted({(r.get("versions") or {}).get("boomerang_commit") or "unrecorded"
                          for r in self.records + self.searched})
        t = self.report.get("timings") or {}
        docs = len(_scores(self.records[0]).tokens)
        time = (f"; the job took {self.report['total_s'] / 60:.1f} min ("
                + ", ".join(f"{k} {v:.0f} s" for k, v in t.items()) + ")") if self.report.get("total_s") else ""
        return (f"From the main job's result files (`docs/results/main-cpu/data`, {self.report.get('preset', '?')} "
                f"preset, {self.report.get('order', '?')} order, code {', '.join(c if c == 'unrecorded' else c[:7] for c in commits)}{time}). "
                f"Held-out Brown text: {docs} documents, each cut to 512 tokens; every interval is a 95% bootstrap "
                f"over those documents ({self.resamples} resamples), paired where two models are compared.")

    def ladder_block(self, plots: str | None = None, link: str | None = None) -> str:
        """The block's markdown; ``plots``: a folder to draw the by-size plots into, ``link``: that folder as the
        page names it (default ``plots``)."""
        teacher = self._teacher_params()
        lines = [self.heading(), ""]
        if self.searched:
            table, _ = render_family("searched frontier", self._frontier_rows, teacher)
            lines += ["**The searched family, a frontier in size** (`patching.search`: every scored model that no "
                      "other beats on calibration KL while being no larger; the teacher at the end):", "", table]
        summaries = []
        for curve, recs in families(self.records).items():
            rows = family_rows(recs, None, self.resamples)
            if rows:
                summaries.append("- " + render_family(curve, rows, teacher)[0].strip().split("\n")[-1])
        lines += ["Every family at its true size (the teacher, "
                  f"{fmt_params(teacher) if teacher else '?'}, ends each):", ""] + summaries + [""]
        if self.searched:
            lines += ["Each fixed-order and baseline model against the best frontier member no larger than it "
                      "(the frontier's perplexity over the model's; below 1: the frontier's is lower):", "",
                      self._against_frontier_table().rstrip("\n"), ""]
        if plots:
            files = plot_by_size(self.records + self.searched, plots)
            ppl = next((f for f in files if f.endswith("token_perplexity.png")), None)
            if ppl:
                lines.append(f"![held-out perplexity by size]({link or plots}/{os.path.basename(ppl)})")
        return "\n".join(lines).strip() + "\n"

    def _against_frontier_table(self) -> str:
        rows = []
        for method in ["boomerang"] + [f"boomerang:{o}" for o in ORDERS] + list(BASELINES):
            recs = [r for r in self._curve(method) if r.get("role") not in ("student", "teacher")]
            if not recs:
                continue
            vs = [v for v in self._against_frontier(recs) if v["best"] is not None]
            if not vs:
                continue
            count = {k: [int(v["record"]["depth"]) for v in vs if v["verdict"] == k]
                     for k in ("better", "within noise", "worse")}
            ratios = [v["ppl_ratio"] for v in vs]
            rows.append([recs[0].get("curve", method),
                         f"{len(vs)} ({fmt_params(min(v['record']['parameters']['total'] for v in vs))} to "
                         f"{fmt_params(max(v['record']['parameters']['total'] for v in vs))})",
                         f"{min(ratios):.3f} to {max(ratios):.3f}"]
                        + [f"{len(d)}" + (f" ({', '.join(map(str, d))} layers)" if d and len(d) < len(vs) else "")
                           for d in count.values()])
        return markdown_table(rows, ["family", "models (params)", "ratio", "frontier better beyond noise",
                                     "within noise", "frontier worse beyond noise"])

    def claims_block(self) -> str:
        rows = []
        for method in BASELINES:
            hh = self._head_to_head(method)
            if not hh:
                continue
            wins = [h["depth"] for h in hh if h["wins"]]
            losses = [h["depth"] for h in hh if h["loses"]]
            ratios = [h["ppl_ratio"] for h in hh]
            label = {"naive": "the interpolated ladder beats naive pruning (the untrained student patched the same way)",
                     "shortgpt": "... and ShortGPT (the teacher pruned by Block Influence)",
                     "laco": "... and LaCo (layers merged)"}[method]
            name = self._curve(method)[0].get("curve", method)
            measured = (f"{self.report.get('order', 'fixed')} ladder against {name} at {len(hh)} depths: "
                        f"{name}'s perplexity {min(ratios):,.2f}x to {max(ratios):,.2f}x the ladder's; better beyond "
                        f"noise at {len(wins)}, worse at {len(losses)}"
                        + (f" ({', '.join(map(str, losses))} layers)" if losses else ""))
            verdict = ("**holds**" if len(wins) == len(hh) else "**does not hold**" if len(wins) == 0
                       else f"**holds at {len(wins)} of {len(hh)} depths**")
            rows.append([label, measured, verdict])
        chains = [(f"the {self.report.get('order', 'fixed')} order", self._ladder())]
        if self.searched:
            frontier = [(f"{fmt_params(r['params'])}", r) for r in self._frontier_rows]
            by_name = {r["name"]: r for r in self.searched + self.records}
            chains.append(("the searched frontier (by size)", [(label, by_name[r["name"]]) for label, r in frontier]))
        parts, smooth = [], []
        for label, chain in chains:
            steps = self._steps(chain)
            rises = [f"{s['from']} -> {s['to']} (x{s['ratio']:.2f})" for s in steps if s["verdict"] == "rises"]
            parts.append(f"{label}: rises beyond noise at {len(rises)} of {len(steps)} steps"
                         + (f" ({'; '.join(rises)})" if rises else ""))
            smooth.append((label, not rises))
        verdict = ("**holds**" if all(ok for _, ok in smooth) else "**does not hold**" if not any(ok for _, ok in smooth)
                   else "**holds for** " + ", ".join(l for l, ok in smooth if ok) + "; **not for** "
                   + ", ".join(l for l, ok in smooth if not ok))
        rows.append(["the ladder is smooth", "; ".join(parts), verdict])
        return (markdown_table(rows, ["the paper's claim", "measured here (held-out perplexity, 95% paired intervals "
                                      "over documents)", "at this budget"]) + "\n")
