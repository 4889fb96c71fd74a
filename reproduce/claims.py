"""The paper's three claims judged from the experiments' result files, every seed pooled.

``reproduce.experiments`` writes, for each training seed S, ``seed-S/`` with ``students.json`` (what each student
was asked to be), ``training.json`` (what its distillation log says: steps, tokens, final held-out CE),
``stage_times.json`` (the stage ledger) and ``eval/<sweep>/results/*.json`` (one record per scored model, with
per-document held-out sums). This module reads such a folder (a run's, or the copy committed under
docs/results/experiments/data) and writes the report: every table, every "beyond noise" and every verdict is
computed here from those files, with the two-level bootstrap of ``evaluate.bootstrap`` (documents and seeds).

    report = ClaimsReport.load("docs/results/experiments/data", resamples=2000)
    text = report.markdown(); report.claims_table()      # the page, and the claims table the README shows
"""

from __future__ import annotations

import dataclasses
import math
import os

from boomerang.io import markdown_table
from boomerang.scoring import Scores
from evaluate.bootstrap import seeded_comparison, seeded_steps
from evaluate.compare import fmt_ppl
from evaluate.results import load_results
from reproduce.common import MC_TASKS, MIN_LOAD_SECONDS, read_json

LADDERS = ("full", "random-init", "ce", "ce-kl", "ce-cos")
ABLATIONS = ("ce", "ce-kl", "ce-cos")
NO_COSINE = ("ce", "ce-kl")  # the ablations without the cosine term: what claim 2 is about
IDLE_LOAD = 0.05  # a stage whose other processes kept at most this many cores busy on average ran on idle cores


def _heldout(r: dict, metric: str) -> float:
    return r["metrics"]["heldout_kl"][metric]["value"]


def _scores(r: dict) -> Scores:
    return Scores.from_dict(r["heldout_scores"])


def _count(items, noun: str) -> str:
    return f"{len(items)} {noun}{'' if len(items) == 1 else 's'}"


def _key(r: dict):
    """A ladder record's place: "student" for the student itself, else its depth."""
    return "student" if r.get("role") == "student" else int(r["depth"])


@dataclasses.dataclass
class Seed:
    """What one training seed's folder holds."""

    seed: int
    plan: dict  # student name -> the settings it was distilled with
    training: dict  # student name -> its distillation log's summary
    ledger: dict | None
    ladders: dict  # student name -> {depth | "student": record}
    naive: dict  # depth -> record
    same: dict  # depth -> record of the student distilled at that depth
    mc: list
    notes: dict  # stage -> what else ran during it (stage_notes.json, written by whoever ran the stage)

    @classmethod
    def load(cls, folder: str, seed: int) -> "Seed":
        def sweep(name):
            return load_results(os.path.join(folder, "eval", name))

        ladders = {n: {_key(r): r for r in recs} for n in LADDERS if (recs := sweep(f"ladder-{n}"))}
        return cls(seed, read_json(os.path.join(folder, "students.json"), {}),
                   read_json(os.path.join(folder, "training.json"), {}),
                   read_json(os.path.join(folder, "stage_times.json")), ladders,
                   {int(r["depth"]): r for r in sweep("naive")}, {int(r["depth"]): r for r in sweep("same-size")},
                   sweep("mc"), read_json(os.path.join(folder, "stage_notes.json"), {}))


class ClaimsReport:
    """Every seed of an experiments folder, and the claims judged from them."""

    def __init__(self, seeds: dict[int, Seed], resamples: int = 2000, heldout: str = ""):
        self.seeds, self.resamples, self.heldout = seeds, resamples, heldout
        self.chance: dict = {}  # task -> accuracy of a uniform guess on the items scored (chance.json)
        self.bias: dict = {}  # task -> accuracy of answers given without reading (answer_bias.json)
        self.facts: dict = {}
        self.rise_seeds: dict[str, list[int]] = {}  # student -> the seeds its ladder's steps were judged on

    @classmethod
    def load(cls, root: str, resamples: int = 2000, heldout: str = "") -> "ClaimsReport":
        names = os.listdir(root) if os.path.isdir(root) else []  # no folder yet: a report of no seeds
        seeds = sorted(int(d.split("-", 1)[1]) for d in names if d.startswith("seed-") and d.split("-", 1)[1].isdigit())
        report = cls({s: Seed.load(os.path.join(root, f"seed-{s}"), s) for s in seeds}, resamples, heldout)
        report.chance = read_json(os.path.join(root, "chance.json"), {})
        report.bias = read_json(os.path.join(root, "answer_bias.json"), {})
        return report

    # ------------------------------------------------------------------------------------------ pooling
    def seeded(self, student: str, depth) -> dict[int, dict]:
        """{seed: record} of one student's ladder at one depth, over the seeds that hold it."""
        return {s: sd.ladders[student][depth] for s, sd in self.seeds.items()
                if student in sd.ladders and depth in sd.ladders[student]}

    def same_size(self, depth: int) -> dict[int, dict]:
        return {s: sd.same[depth] for s, sd in self.seeds.items() if depth in sd.same}

    def naive(self) -> dict:
        """Naive pruning's records: the teacher's layers, the same at every seed (from the first seed holding them)."""
        return next((sd.naive for sd in self.seeds.values() if sd.naive), {})

    def ladder_seeds(self, student: str) -> list[int]:
        """The seeds that hold any place of one student's ladder."""
        return sorted({s for d in self.depths() for s in self.seeded(student, d)})

    def compare(self, a: dict[int, dict], b: dict[int, dict], paired: bool = False) -> dict:
        return seeded_comparison({s: _scores(r) for s, r in a.items()}, {s: _scores(r) for s, r in b.items()},
                                 paired_seeds=paired, resamples=self.resamples)

    def depths(self) -> list:
        """The full ladder's places (the student, then every depth), the teacher's left out."""
        keys = {k for sd in self.seeds.values() for k, r in sd.ladders.get("full", {}).items()
                if r.get("role") != "teacher"}
        return (["student"] if "student" in keys else []) + sorted(k for k in keys if k != "student")

    def teacher(self) -> dict | None:
        return next((r for sd in self.seeds.values() for r in sd.ladders.get("full", {}).values()
                     if r.get("role") == "teacher"), None)

    # ------------------------------------------------------------------------------------------ cells
    @staticmethod
    def pooled_ppl(recs: dict[int, dict]) -> str:
        """Geometric mean of the seeds' perplexities, then each seed's: "144.0 (140.6 / 152.9 / 138.5)"."""
        if not recs:
            return ""
        vals = [_heldout(r, "token_perplexity") for _, r in sorted(recs.items())]
        pooled = math.exp(sum(math.log(v) for v in vals) / len(vals))
        return fmt_ppl(pooled) + ("" if len(vals) == 1 else " (" + " / ".join(fmt_ppl(v) for v in vals) + ")")

    @staticmethod
    def ratio_cell(c: dict) -> str:
        mark = {"worse": " ▲", "better": " ▼"}.get(c["verdict"], "")
        return f"{c['ppl_ratio']:.2f} [{c['ppl_ci95'][0]:.2f}, {c['ppl_ci95'][1]:.2f}]{mark}"

    @staticmethod
    def seeds_of(recs: dict) -> str:
        return ",".join(str(s) for s in sorted(recs)) or "none"

    # ------------------------------------------------------------------------------------------ sections
    def commits(self) -> dict[int, dict[str, int]]:
        """{seed: {code commit: records it made}}: which code version each seed's figures come from."""
        out = {}
        for s, sd in self.seeds.items():
            recs = [r for lad in sd.ladders.values() for r in lad.values()] + list(sd.naive.values()) \
                + list(sd.same.values()) + sd.mc
            for r in recs:
                c = ((r.get("versions") or {}).get("boomerang_commit") or "unknown")[:7]
                out.setdefault(s, {}).setdefault(c, 0)
                out[s][c] += 1
        return out

    def students_section(self) -> list[str]:
        rows = []
        for s, sd in self.seeds.items():
            for n, settings in sd.plan.items():
                tl = sd.training.get(n, {})
                changed = ", ".join(f"{k}={v}" for k, v in settings.items()
                                    if k not in ("teacher_model_name_or_path", "dataset", "eval_dataset",
                                                 "max_steps", "seed")) or "none"
                ce = f"{tl['eval_ce']:.4f}" if tl.get("eval_ce") is not None else ""
                rows.append([s, n, changed, tl.get("steps", ""), tl.get("tokens") or "", ce])
        code = "; ".join(f"seed {s}: " + ", ".join(f"{c} ({n} records)" for c, n in sorted(cs.items()))
                         for s, cs in self.commits().items())
        return ["## Students", "", markdown_table(rows, ["seed", "student", "settings changed", "steps",
                                                         "tokens trained on", "final held-out CE"]), "",
                f"Code that scored the records (commit): {code or 'none yet'}.", ""]

    def claim1(self) -> list[str]:
        naive = self.naive()
        rnd_depths = [d for d in self.depths() if self.seeded("random-init", d)]
        if not rnd_depths and not naive:
            return []
        rows, verdicts = [], {"random-init": [], "naive": []}
        for d in self.depths():
            full = self.seeded("full", d)
            rnd = self.seeded("random-init", d)
            row = [str(d), f"{next(iter(full.values()))['parameters']['total'] / 1e6:.1f}M", self.pooled_ppl(full)]
            if rnd:
                c = self.compare(full, rnd)
                verdicts["random-init"].append(c["verdict"])
                row += [self.pooled_ppl(rnd), self.ratio_cell(c)]
            else:
                row += ["", ""]
            nv = naive.get(d) if d != "student" else None
            if nv:
                c = self.compare(full, {0: nv})
                verdicts["naive"].append(c["verdict"])
                row += [self.pooled_ppl({0: nv}), self.ratio_cell(c)]
            else:
                row += ["", ""]
            rows.append(row)
        self.facts["claim1"] = {k: {"worse": v.count("worse"), "of": len(v)} for k, v in verdicts.items()}
        out = ["## Claim 1: initialization and distillation are both necessary", "",
               f"Boomerang (full loss, seeds {self.seeds_of(self.seeded('full', 'student'))}) against the random-init "
               f"student (seeds {self.seeds_of(self.seeded('random-init', 'student'))}), distilled the same way, and "
               "naive pruning (the teacher's layers, not distilled; no training seed).", "",
               markdown_table(rows, ["depth", "params", "boomerang ppl", "random-init ppl",
                                     "random / boomerang [CI]", "naive ppl", "naive / boomerang [CI]"])]
        t = self.teacher()
        if t is not None:
            out += ["", f"Teacher: perplexity {fmt_ppl(_heldout(t, 'token_perplexity'))}."]
        return out + [""]

    def rises(self, student: str) -> list[dict]:
        keys = [d for d in self.depths() if self.seeded(student, d)]
        seeds = set.intersection(*(set(self.seeded(student, d)) for d in keys)) if keys else set()
        self.rise_seeds[student] = sorted(seeds)  # only seeds that hold every step of the ladder
        ladder = [{s: _scores(self.seeded(student, d)[s]) for s in sorted(seeds)} for d in keys]
        return [st for st in seeded_steps([str(k) for k in keys], ladder, self.resamples) if st["verdict"] == "rises"]

    def claim2(self) -> list[str]:
        abl = [n for n in ABLATIONS if any(n in sd.ladders for sd in self.seeds.values())]
        if not abl:
            return []
        rows, counts = [], {n: {"worse": 0, "better": 0, "within noise": 0} for n in abl}
        at_student = {}
        for d in self.depths():
            full = self.seeded("full", d)
            row, cmp = [str(d), self.pooled_ppl(full)], []
            for n in abl:
                recs = self.seeded(n, d)
                row.append(self.pooled_ppl(recs))
                if recs:
                    c = self.compare(full, recs)
                    counts[n][c["verdict"]] += 1
                    if d == "student":
                        at_student[n] = c["verdict"]
                    cmp.append(self.ratio_cell(c))
                else:
                    cmp.append("")
            rows.append(row + cmp)
        rises = {n: self.rises(n) for n in ["full"] + abl}
        self.facts["claim2"] = {"against_full": counts, "rises": {n: [f"{s['from']}->{s['to']}" for s in r]
                                                                  for n, r in rises.items()},
                                "seeds": {n: sorted(self.seeded(n, "student")) for n in ["full"] + abl},
                                "at_student": at_student}
        seeds = ", ".join(f"{n} {' / '.join(map(str, self.ladder_seeds(n)))}" for n in ["full"] + abl)
        out = ["## Claim 2: the cosine loss makes interpolation stable", "",
               f"Held-out perplexity at every size, pooled over seeds (geometric mean; each seed's value in brackets, "
               f"in seed order: {seeds}), and each ablation against the full loss: perplexity ratio [95% two-level "
               "interval]; ▲ worse beyond noise, ▼ better beyond noise (the interval and every seed agree).", "",
               markdown_table(rows, ["depth", "full", *abl, *(f"{n} / full [CI]" for n in abl)]), "",
               "Rises beyond noise along each ladder (student, then every added block; seeds paired):", ""]
        for n, r in rises.items():
            steps = ", ".join(f"{st['from']}->{st['to']} (x{st['ratio']:.2f})" for st in r) or "none"
            used = self.rise_seeds.get(n, [])
            seeds = ", ".join(map(str, used)) or "none"
            out.append(f"- {n} (seeds {seeds} hold the whole ladder): {len(r)} ({steps})")
        return out + [""]

    def claim3(self) -> list[str]:
        depths = sorted({d for sd in self.seeds.values() for d in sd.same})
        if not depths:
            return []
        rows, verdicts, extra = [], {}, {}
        for d in depths:
            interp, same = self.seeded("full", d), self.same_size(d)
            if not interp:
                continue
            pi, ps = (next(iter(x.values()))["parameters"] for x in (interp, same))
            extra[d] = (pi["total"] - ps["total"], pi.get("non_embedding", 0) - ps.get("non_embedding", 0))
            c = self.compare(interp, same)
            verdicts[d] = c["verdict"]
            rows.append([d, self.pooled_ppl(interp), f"{pi['total'] / 1e6:.1f}M", self.pooled_ppl(same),
                         f"{ps['total'] / 1e6:.1f}M", self.seeds_of(same), self.ratio_cell(c)])
        self.facts["claim3"] = {"verdicts": verdicts}
        out = ["## Claim 3: interpolated models against students distilled at that size", "",
               "The interpolated model of each depth (the full-loss student patched, last-k) against a student "
               "distilled at that depth from the same teacher layers: perplexity ratio distilled / interpolated "
               "[95% two-level interval]; ▼ the distilled student better beyond noise, ▲ worse.", "",
               markdown_table(rows, ["depth", "interpolated ppl", "params", "distilled ppl", "params",
                                     "distilled seeds", "distilled / interpolated [CI]"])]
        if extra:
            total = sorted({t for t, _ in extra.values()})
            if all(ne == 0 for _, ne in extra.values()):
                out += ["", "The two hold the same non-embedding parameters at every depth. The interpolated model "
                            f"holds {'/'.join(f'{t / 1e6:.1f}M' for t in total)} more in all: its input embedding and "
                            "output head are two matrices (the student's embedding, the teacher's head), where the "
                            "distilled student ties one matrix to both."]
            else:
                out += ["", "Parameters, interpolated minus distilled (in all / non-embedding): " + "; ".join(
                    f"{d} layers {t / 1e6:+.1f}M / {ne / 1e6:+.1f}M" for d, (t, ne) in extra.items()) + "."]
        return out + [""] + self.multiple_choice()

    def multiple_choice(self) -> list[str]:
        """Accuracy of each model at each seed, the seeds' mean beside chance and beside answers given without
        reading, and what stands out of one standard error."""
        cells: dict = {}
        for s, sd in self.seeds.items():
            for r in sd.mc:
                model = "distilled at this size" if r.get("curve") == "distilled at this size" else "interpolated"
                cells.setdefault((int(r["depth"]), model), {})[s] = r
        if not cells:
            return []
        limit = next(iter(next(iter(cells.values())).values())).get("settings", {}).get("limit")
        chance = self.chance
        rows, notes, means = [], [], {}
        for (d, model), by_seed in sorted(cells.items()):
            accs = {t: [by_seed[s]["metrics"][t]["acc"] for s in sorted(by_seed)] for t in MC_TASKS}
            mean = {t: sum(a["value"] for a in v) / len(v) for t, v in accs.items()}
            # the seeds answer the same items, so their errors are not independent: the mean of the seeds' standard
            # errors bounds the standard error of their mean from above
            se = {t: sum(a["stderr"] for a in v) / len(v) for t, v in accs.items()}
            means[d, model] = (mean, se)
            rows.append([d, model, self.seeds_of(by_seed),
                         *(f"{mean[t]:.3f} ± {se[t]:.3f}" + (" ↓" if t in chance and mean[t] < chance[t] - se[t]
                                                             else "") for t in MC_TASKS),
                         f"{sum(mean.values()) / len(mean):.3f}"])
        for d in sorted({d for d, _ in means}):
            if (d, "interpolated") in means and (d, "distilled at this size") in means:
                (mi, si), (md, sdv) = means[d, "interpolated"], means[d, "distilled at this size"]
                apart = [f"{t} ({md[t]:.3f} distilled vs {mi[t]:.3f} interpolated)" for t in MC_TASKS
                         if abs(md[t] - mi[t]) > math.hypot(si[t], sdv[t])]
                notes.append(f"- {d} layers: " + ("every task within one standard error of the difference"
                                                  if not apart else "apart by more than one standard error: "
                                                  + ", ".join(apart)))
        below = sorted({t for (d, m), (mean, se) in means.items() for t in MC_TASKS
                        if t in chance and mean[t] < chance[t] - se[t]})
        head = ["depth", "model", "seeds", *(f"{t} (chance {chance[t]:.2f})" if t in chance else t for t in MC_TASKS),
                "mean"]
        out = ["", f"Multiple-choice accuracy (lm-eval's `acc`, {limit} items per task), mean over seeds ± the seeds' "
                   "mean standard error (the seeds answer the same items, so this bounds the error of their mean "
                   "from above); chance = the mean of 1/choices over the items; ↓ more than one standard error below "
                   "chance:", "", markdown_table(rows, head), ""] + notes
        if self.bias:
            out += ["", "What answers given without reading the items score on the same items (`answer_bias.json`): "
                        "lm-eval's `acc` picks the choice of highest unnormalized log-likelihood, which favours short "
                        "choices.", "",
                    markdown_table([[t, f"{chance[t]:.2f}" if t in chance else "",
                                     "{:.3f} to {:.3f}".format(*self.bias[t]["one_position"]),
                                     f"{self.bias[t]['shortest']:.3f}"] for t in MC_TASKS if t in self.bias],
                                   ["task", "chance", "always the same position", "always the shortest choice"])]
        if below:
            out += ["", f"Below chance by more than one standard error somewhere: {', '.join(below)}."]
            for t in below:
                b = self.bias.get(t)
                cells_t = [(mean[t], se[t]) for mean, se in means.values()]
                if b:
                    refs = [*b["one_position"], b["shortest"]]
                    near = sum(any(abs(m - r) <= e for r in refs) for m, e in cells_t)
                    out.append(f"- {t}: {min(m for m, _ in cells_t):.3f} to {max(m for m, _ in cells_t):.3f}; "
                               f"{near} of {len(cells_t)} models within one standard error of an answer given without "
                               "reading (the same position, or the shortest choice)")
        return out + [""]

    def time_section(self) -> list[str]:
        out = ["## Time", "",
               "Each seed's stage ledger: each stage's wall time summed over the runs that worked on it; [others X]: "
               "the cores other processes kept busy meanwhile on average (0.00: idle cores); [own X]: the cores the stage "
               "itself kept busy (where recorded; far below 2 when the job was stopped or starved); [peak so far]: the "
               "job's peak resident memory by the stage's end; in brackets after a stage, what else ran (the seed's "
               "`stage_notes.json`). A stage ran on idle cores when others kept at most "
               f"{IDLE_LOAD:.2f} cores busy.", ""]
        for s, sd in self.seeds.items():
            book = sd.ledger
            if not book:
                continue
            total = sum(e["seconds"] for e in book.values())
            parts, idle = [], []
            for k, e in book.items():
                text = f"{k} {e['seconds']:.0f} s"
                other, own = e.get("other_cpu_s"), e.get("own_cpu_s")
                if e["seconds"] < MIN_LOAD_SECONDS:
                    text += " [too short to measure others' load]"
                else:
                    if other is not None:
                        text += f" [others {other / e['seconds']:.2f}]"
                        if e["complete"] and other / e["seconds"] <= IDLE_LOAD:
                            idle.append(e["seconds"])
                    if own is not None:
                        text += f" [own {own / e['seconds']:.2f}]"
                if e.get("max_rss_kib"):
                    text += f" [peak so far {e['max_rss_kib'] / 2**20:.1f} GiB]"
                if sd.notes.get(k):
                    text += f" ({sd.notes[k]})"
                parts.append(text + ("" if e["complete"] else " (unfinished)"))
            out += [f"Seed {s}: " + ", ".join(parts) + f"; total {total / 60:.1f} min, of which "
                    f"{sum(idle) / 60:.1f} min in {_count(idle, 'stage')} on idle cores.", ""]
        return out if len(out) > 3 else []

    # ------------------------------------------------------------------------------------------ plots
    def plots(self, out: str) -> list[str]:
        """One PNG per claim in OUT (claim<N>.png): held-out perplexity against total parameters, each curve pooled
        over its seeds (a line), each seed's own values (faint points); returns the report lines that show them."""
        import matplotlib  # only where plots are drawn: start-up stays free of it

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # lazy: matplotlib only when a plot is drawn

        naive = {d: {0: r} for d, r in self.naive().items()}
        same = {d: self.same_size(d) for d in sorted({d for sd in self.seeds.values() for d in sd.same})}
        figures = {1: ("Claim 1: initialization and distillation", {"boomerang (full loss)": "full",
                                                                       "random init, distilled": "random-init"},
                       {"naive pruning (not distilled)": naive}),
                   2: ("Claim 2: loss ablations, every size", {f"boomerang: {n}": n for n in ("full", *ABLATIONS)}, {}),
                   3: ("Claim 3: interpolated vs distilled at that size", {"boomerang (full loss)": "full"},
                       {"distilled at that size": same})}
        lines = []
        for claim, (title, students, extra) in figures.items():
            curves = {label: {d: self.seeded(n, d) for d in self.depths() if self.seeded(n, d)}
                      for label, n in students.items()}
            curves.update(extra)
            curves = {k: v for k, v in curves.items() if v}
            if len(curves) < 2:
                continue
            fig, ax = plt.subplots(figsize=(7, 4.6), dpi=110)
            for i, (label, by_depth) in enumerate(curves.items()):
                pts = []
                for d, recs in by_depth.items():
                    ppl = [_heldout(r, "token_perplexity") for r in recs.values()]
                    x = next(iter(recs.values()))["parameters"]["total"]
                    pts.append((x, math.exp(sum(map(math.log, ppl)) / len(ppl)), ppl, d))
                pts.sort()
                style = "-o" if len(pts) > 3 else "s"
                ax.plot([p[0] for p in pts if p[3] != "student"], [p[1] for p in pts if p[3] != "student"], style,
                        color=f"C{i}", ms=5, label=f"{label} ({_count(max((p[2] for p in pts), key=len), 'seed')})")
                for x, y, ppl, d in pts:
                    ax.plot([x] * len(ppl), ppl, ".", color=f"C{i}", alpha=0.35, ms=4)
                    if d == "student":
                        ax.plot([x], [y], "D", color=f"C{i}", mfc="none", ms=8, mew=1.5)
            t = self.teacher()
            if t is not None:
                ax.plot([t["parameters"]["total"]], [_heldout(t, "token_perplexity")], "*", color="gold",
                        mec="black", ms=14, label="teacher", zorder=5)
            ax.set(yscale="log", xlabel="parameters (total)", ylabel="held-out token perplexity (lower is better)")
            ax.set_title(title + "\n(line: seeds pooled; dots: each seed; diamond: the student)", fontsize=9)
            ax.grid(True, alpha=0.3)
            ax.ticklabel_format(axis="x", style="sci", scilimits=(6, 6))
            ax.legend(fontsize=7)
            fig.tight_layout()
            name = f"claim{claim}.png"
            fig.savefig(os.path.join(out, name + ".tmp.png"))
            plt.close(fig)
            os.replace(os.path.join(out, name + ".tmp.png"), os.path.join(out, name))
            lines.append(f"![claim {claim}]({name})")
        return lines

    # ------------------------------------------------------------------------------------------ verdicts
    def claims_table(self) -> str:
        """One row per claim: what was measured and the verdict, both written from the facts computed above (call
        ``markdown`` first)."""
        rows = []
        c1 = self.facts.get("claim1")
        if c1:
            parts, holds = [], {}
            for k, label in (("random-init", "the random-init student"), ("naive", "naive pruning")):
                if c1[k]["of"]:
                    parts.append(f"{label} is worse beyond noise at {c1[k]['worse']} of {c1[k]['of']} sizes")
                    holds[k] = c1[k]["worse"] == c1[k]["of"]
            what = {"random-init": "initialization", "naive": "distillation"}
            if len(holds) == 2:
                verdict = "**holds**" if all(holds.values()) else "**partly**"
            else:  # one side measured: say which, and that the other is not
                (k, ok), = holds.items()
                other = what["naive" if k == "random-init" else "random-init"]
                verdict = f"**{'holds for' if ok else 'partly, for'} {what[k]}**; {other} not measured"
            rows.append(["1. initialization and distillation are both necessary (Fig. 3)", "; ".join(parts), verdict])
        c2 = self.facts.get("claim2")
        if c2:
            full = _count(c2["seeds"]["full"], "seed")
            sizes = {n: sum(v.values()) for n, v in c2["against_full"].items()}
            parts = [f"{n} ({_count(c2['seeds'][n], 'seed')}) against the full loss ({full}): worse beyond noise at "
                     f"{v['worse']} of {sizes[n]} sizes"
                     + (" (the student included)" if c2["at_student"].get(n) == "worse" else "")
                     + f", better at {v['better']}" for n, v in c2["against_full"].items()]
            parts.append("rises beyond noise: " + ", ".join(f"{n} {len(r)}" for n, r in c2["rises"].items()))
            no_cos = [n for n in NO_COSINE if n in c2["against_full"]]
            v = {n: c2["against_full"][n] for n in no_cos}
            if no_cos and all(v[n]["worse"] == sizes[n] for n in no_cos):
                level = "without the cosine term every size is worse beyond noise"
            elif no_cos and all(v[n]["worse"] > 0 and v[n]["better"] == 0 for n in no_cos):
                level = "without the cosine term some sizes are worse beyond noise, none better"
            else:
                level = None
            more = [n for n in no_cos if len(c2["rises"].get(n, [])) > len(c2["rises"]["full"])]
            names = " and ".join(no_cos)
            if more:
                rises = f"the ladder without it rises more often than the full loss's ({', '.join(more)})"
            else:
                rises = (f"{'neither ladder' if len(no_cos) > 1 else 'the ladder'} without it ({names}) rises "
                         f"{'more' if len(no_cos) > 1 else 'no more'} often than the full loss's, so no breakdown as in "
                         "the paper")
            if not no_cos:
                verdict = "**not measured** (no ablation without the cosine term)"
            elif level and more:
                verdict = f"**holds**: {level}, and {rises}"
            elif level:
                verdict = f"**holds for perplexity, not for stability**: {level}; but {rises}"
            elif more:
                verdict = (f"**holds for stability only**: {rises}; its perplexity is not consistently worse beyond "
                           "noise")
            else:
                verdict = f"**not shown** beyond training-seed noise: {rises}"
            rows.append(["2. the cosine loss makes interpolation stable (Fig. 5)", "; ".join(parts), verdict])
        c3 = self.facts.get("claim3")
        if c3 and c3["verdicts"]:
            v = c3["verdicts"]
            better = [d for d, x in v.items() if x == "better"]
            parts = [f"the student distilled at that size is better beyond noise at {len(better)} of {len(v)} depths"
                     + (f" ({', '.join(map(str, better))})" if better else "")]
            verdict = ("**does not hold**" if len(better) == len(v) else "**holds**" if not better
                       else f"**holds at {', '.join(str(d) for d in v if d not in better)} layers only**")
            rows.append(["3. interpolated models match same-size distilled ones (Fig. 6)", "; ".join(parts), verdict])
        return markdown_table(rows, ["claim", "measured (held-out perplexity, two-level intervals)", "at this budget"])

    def markdown(self, figures: list[str] = ()) -> str:
        """The whole report (the facts for ``claims_table`` are gathered on the way); ``figures``: the lines that
        show its plots (``plots``)."""
        self.facts = {}
        seeds = ", ".join(str(s) for s in self.seeds)
        intro = ["# The paper's comparisons on the embedded teacher", "",
                 f"Seeds: {seeds}. Held-out Brown{(' (' + self.heldout + ')') if self.heldout else ''}: token "
                 "perplexity per model. Intervals: 95% two-level bootstrap, documents and training seeds resampled "
                 f"together ({self.resamples} resamples; `evaluate.bootstrap`); beyond noise = the interval excludes "
                 "1 and every seed agrees. A ratio is the compared model's perplexity over the reference's.", ""]
        body = self.students_section() + self.claim1() + self.claim2() + self.claim3()
        verdicts = ["## Verdicts", "", self.claims_table(), ""]
        shown = ["## Plots", "", *(f"{f}\n" for f in figures)] if figures else []
        return "\n".join(intro + verdicts + body + shown + self.time_section()).rstrip() + "\n"
