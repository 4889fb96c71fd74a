"""The paper's comparisons on the embedded teacher, in one resumable command.

    bash scripts/main.sh --experiments            # = python -m reproduce.experiments
    python -m reproduce.experiments --seed 1 --students ce-cos,full    # a second seed of some students

Three claims of the paper, each answered with held-out perplexity and KL from the teacher (per
document, so that every comparison has a paired bootstrap interval):

1. Initialization and distillation are both necessary (paper, Fig. 3): the ``random-init`` student
   (same shape, fresh weights, distilled the same way) and naive pruning (the teacher's layers, not
   distilled) against the boomerang ladder.
2. The per-layer cosine loss makes interpolation stable (Fig. 5): students distilled with ``ce``,
   ``ce-kl`` and ``ce-cos`` against ``full`` (CE + KL + cosine), each patched at every size.
3. Interpolated models are on par with same-size distilled models (Fig. 6): students of depth 20, 23
   and 26 (``same-20`` ...), initialized from the teacher layers that the interpolated model of that
   depth holds (layer map (1, 2, l): l = 10, 16, 22) and distilled with the same loss, data, steps and
   tokens, against the interpolated model of that depth; with the multiple-choice tasks too.

Every student is distilled from ``configs/smollm2-135m-cpu.yaml`` (the main job's preset: its data,
batch, steps, seed) with only the settings below changed. The ``full`` student of seed 0 is the main
job's (``--main_dir``, default runs/main-cpu): reused when it exists with the same settings, else
distilled there exactly as ``bash scripts/main.sh`` would.

Stages (a rerun skips what is done and resumes what was interrupted): teacher, one distillation per
student, the held-out reference (the teacher's log-probabilities, once), the ladders, naive pruning,
the same-size points, the multiple-choice points, the report. Output: ``--output_dir`` (default
runs/experiments-cpu): ``seed-<S>/students/<name>/``, ``seed-<S>/eval/<sweep>/``, ``REPORT.md``,
``report.json`` and one plot per claim.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from boomerang.cli import fail, read_config, setup_logging
from boomerang.families import adapter_for, adapter_for_config
from boomerang.io import atomic_write_json, atomic_write_text, markdown_table
from boomerang.layer_map import LayerMap, LayerMapError
from boomerang.models import ModelNotFoundError, load_config, load_model, load_tokenizer, resolve_model_path
from boomerang.scoring import Scores
from evaluate.alignment import paired_comparison, step_changes
from baselines.family import build_family
from evaluate.baselines import family_points
from evaluate.compare import fmt_ppl
from evaluate.evaluate import SweepPoint, boomerang_points, run_sweep
from evaluate.heldout import HeldoutReference
from evaluate.results import load_results
from patching.patch import load_layer_map
from reproduce.common import (ALIGN_TOKENS, MC_TASKS, REPO, TEACHER, chance_levels, check_data, default_data_dir,
                              distill, heldout_subset, read_json, stage, training_log)
from reproduce.main_job import check_student_settings, distill_student, student_settings

CONFIG = "configs/smollm2-135m-cpu.yaml"
# Each student: the settings that differ from CONFIG, and what it is for (same-size ones: same_size_students()).
STUDENTS = {
    "full": ({}, "all three loss terms (the main job's student)"),
    "random-init": ({"random_initialization": True}, "claim 1: random initialization, full loss"),
    "ce": ({"use_kl_loss": False, "use_cosine_loss": False}, "claim 2: cross-entropy only"),
    "ce-kl": ({"use_cosine_loss": False}, "claim 2: CE + KL"),
    "ce-cos": ({"use_kl_loss": False}, "claim 2: CE + cosine"),
}
LADDERS = ("full", "random-init", "ce", "ce-kl", "ce-cos")
SAME_SIZE_DEPTHS = (20, 23, 26)
HELDOUT_DOCS = 25  # the main job's held-out documents, each cut to ALIGN_TOKENS tokens
MC_LIMIT = 40  # items per multiple-choice task, as in the main job's CPU preset


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m reproduce.experiments", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output_dir", default=None, help="default runs/experiments-cpu")
    p.add_argument("--main_dir", default=None,
                   help="the main job's folder, whose student is the full student of seed 0 (default runs/main-cpu)")
    p.add_argument("--data_dir", default=None, help="default $BOOMERANG_DATA, else ../shared/data")
    p.add_argument("--teacher_model_name_or_path", default=TEACHER)
    p.add_argument("--seed", type=int, default=0, help="seed of every student (data order, random init)")
    p.add_argument("--students", default="all",
                   help=f"comma-separated subset of {', '.join(STUDENTS)}, same-<depth> (default: all)")
    p.add_argument("--same_size_depths", default=",".join(map(str, SAME_SIZE_DEPTHS)),
                   help="depths of the same-size students (claim 3); each must be a depth of the ladder")
    p.add_argument("--max_steps", type=int, default=None, help="override the preset's steps (every student)")
    p.add_argument("--config", default=CONFIG, help="the training preset every student starts from")
    p.add_argument("--heldout_docs", type=int, default=HELDOUT_DOCS)
    p.add_argument("--max_tokens", type=int, default=ALIGN_TOKENS, help="tokens of each held-out document")
    p.add_argument("--mc_limit", type=int, default=MC_LIMIT, help="items per multiple-choice task (claim 3)")
    p.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples of the intervals")
    return p


def same_size_students(teacher_depth: int, base: dict, depths) -> dict[str, tuple[dict, str]]:
    """For each depth d: the layer map (f, n, l) whose student holds exactly the teacher layers of the
    untrained last-k interpolated model of depth d (same f and n as the base student, l found by search)."""
    f, n, l0 = base["first_layers_to_keep"], base["alternate_every_n_layers"], base["last_layers_to_keep"]
    full = LayerMap.from_recipe(teacher_depth, f, n, l0)
    by_depth = {full.plan(k).depth: list(full.naive_pruning_layers(k)) for k in range(full.max_patch)}
    out = {}
    for d in depths:
        if d not in by_depth or d == full.num_student_layers:
            fail(f"--same_size_depths: {d} is not an interpolated depth of this student (choose from "
                 f"{sorted(x for x in by_depth if x != full.num_student_layers)})")
        for l in range(l0, teacher_depth):
            try:
                m = LayerMap.from_recipe(teacher_depth, f, n, l)
            except LayerMapError:
                continue
            if list(m.copied_teacher_layers) == by_depth[d]:
                out[f"same-{d}"] = ({"last_layers_to_keep": l}, f"claim 3: {d} layers ({f}, {n}, {l})")
                break
        else:
            fail(f"--same_size_depths: no layer map ({f}, {n}, l) gives the teacher layers of depth {d}")
    return out


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    setup_logging()
    config = args.config if os.path.isabs(args.config) else os.path.join(REPO, args.config)
    if not os.path.isfile(config):
        fail(f"--config {args.config}: no such file")
    base = read_config(config)
    try:
        teacher_path = resolve_model_path(args.teacher_model_name_or_path)
        t_cfg = load_config(teacher_path)
    except ModelNotFoundError as e:
        fail(str(e))
    try:
        depths = [int(d) for d in args.same_size_depths.split(",") if d.strip()]
    except ValueError:
        fail(f"--same_size_depths {args.same_size_depths!r}: expected comma-separated integers such as 20,23,26")
    known = {**STUDENTS, **same_size_students(adapter_for_config(t_cfg).num_layers(t_cfg), base, depths)}
    spec = ",".join(known) if args.students == "all" else args.students
    names = [s.strip() for s in spec.split(",") if s.strip()]
    bad = [s for s in names if s not in known]
    if bad or not names:
        fail(f"--students: unknown {bad or spec!r}; choose from {', '.join(known)}")
    names = list(dict.fromkeys(names))  # in the order given: students are distilled and evaluated in that order
    out = os.path.abspath(args.output_dir or os.path.join(REPO, "runs", "experiments-cpu"))
    main_dir = os.path.abspath(args.main_dir or os.path.join(REPO, "runs", "main-cpu"))
    files = check_data(os.path.abspath(args.data_dir or default_data_dir()))
    steps = args.max_steps if args.max_steps is not None else base["max_steps"]
    seed_dir = os.path.join(out, f"seed-{args.seed}")
    os.makedirs(seed_dir, exist_ok=True)

    # where each student lives; the full student of the main job's seed is the main job's own
    student_dirs = {n: os.path.join(seed_dir, "students", n) for n in names}
    reuse_main = "full" in names and args.seed == base.get("seed", 0)
    if reuse_main:
        student_dirs["full"] = os.path.join(main_dir, "student")
        wanted = student_settings({"train_config": os.path.relpath(config, REPO)},
                                  argparse.Namespace(layer_map=None, max_steps=args.max_steps,
                                                     teacher_model_name_or_path=args.teacher_model_name_or_path))
        check_student_settings(main_dir, student_dirs["full"], wanted)
    common = {"teacher_model_name_or_path": args.teacher_model_name_or_path, "dataset": files["train"],
              "eval_dataset": files["heldout"], "max_steps": steps, "seed": args.seed}
    # a folder never mixes settings: what each student was asked to be is recorded, and checked on a rerun
    plan = {n: {**common, **known[n][0]} for n in names}
    plan_path = os.path.join(seed_dir, "students.json")
    old = read_json(plan_path, {})
    clash = [n for n in names if n in old and old[n] != plan[n]]
    if clash:
        fail(f"{seed_dir} holds students {clash} made with other settings ({plan_path}); pass another --output_dir")
    plan = {**old, **plan}
    atomic_write_json(plan_path, plan)

    timings: dict[str, float] = {}
    ledger = os.path.join(seed_dir, "stage_times.json")  # each stage's time, summed over interrupted runs
    t_start = time.time()
    print(f"boomerang experiments: seed {args.seed}, students {', '.join(names)}, output {out}", flush=True)
    with stage("teacher", timings, ledger):
        print(f"teacher {args.teacher_model_name_or_path}: {t_cfg.num_hidden_layers} layers ({teacher_path})")

    ev = Evaluator(args, teacher_path, files, seed_dir, timings, ledger)
    for n in names:  # each student is distilled, then evaluated at once, and the report rewritten
        with stage(f"distill {n}", timings, ledger):
            if n == "full" and reuse_main:
                distill_student(main_dir, wanted, files, config)
            else:
                distill(student_dirs[n], config, plan[n])
        ev.student(n, student_dirs[n])
        if n == "full" and args.seed == base.get("seed", 0):  # the teacher's layers: the same at every seed
            ev.naive(student_dirs[n])
        if n.startswith("same-") and "full" in names:
            ev.multiple_choice(n, student_dirs["full"])
        write_report(out, timings, time.time() - t_start, files, args)
    with stage("report", timings):
        report = write_report(out, timings, time.time() - t_start, files, args)
    print(report, flush=True)
    return {"output_dir": out, "timings": timings}


class Evaluator:
    """Scores students against the teacher's held-out log-probabilities (computed once, on first use)."""

    def __init__(self, args, teacher_path, files, seed_dir, timings, ledger):
        self.args, self.teacher_path, self.files, self.seed_dir = args, teacher_path, files, seed_dir
        self.timings, self.ledger = timings, ledger
        self._teacher = self._reference = self._tok = None

    def _setup(self):
        if self._reference is not None:
            return
        self._teacher = load_model(self.teacher_path, dtype=torch.float32)
        self._tok = load_tokenizer(self.teacher_path)
        heldout = heldout_subset(self.files["heldout"], self.args.heldout_docs, self.seed_dir)
        with stage("held-out reference", self.timings, self.ledger):
            self._reference = HeldoutReference(self._teacher, self._tok, heldout, None, self.args.max_tokens)
            print(f"teacher log-probabilities on {self._reference.docs} documents, "
                  f"{sum(self._reference.reference.tokens)} predicted tokens", flush=True)

    def _load(self, student_dir):
        s = load_model(student_dir, dtype=torch.float32)
        s.boomerang_layer_map = load_layer_map(student_dir, adapter_for(self._teacher).num_layers(self._teacher.config))
        return s

    def _sweep(self, name, points, tasks=None, **kw):
        return run_sweep(points, os.path.join(self.seed_dir, "eval", name), tasks, reference=self._reference,
                         device="cpu", **kw)

    def _same_point(self, n, model, **meta):
        return SweepPoint(n.replace("-", "_"), lambda: (model, self._tok), {
            "method": "distilled at this size", "curve": "distilled at this size", "role": "intermediate",
            "student_kind": n, **meta})

    def student(self, n, student_dir):
        """A ladder student: every size in last-k order; a same-size student: itself, at its depth."""
        self._setup()
        with stage(f"evaluate {n}", self.timings, self.ledger):
            student = self._load(student_dir)
            if n.startswith("same-"):
                return self._sweep("same-size", [self._same_point(n, student, student=student_dir)])
            pts = boomerang_points(self._teacher, student, None, False, dtype=torch.float32,
                                   teacher_name=self.args.teacher_model_name_or_path, student_name=student_dir,
                                   curve=f"boomerang: {n}")
            if n != "full":
                pts = [p for p in pts if p.name != "teacher"]  # one teacher point (in the full ladder) is enough
            self._sweep(f"ladder-{n}", pts, common_metadata={"student_kind": n})

    def naive(self, full_dir):
        """Naive pruning (the teacher's layers, not distilled) at every depth of the ladder."""
        with stage("evaluate naive pruning", self.timings, self.ledger):
            lm = self._load(full_dir).boomerang_layer_map
            entries = build_family("naive", self._teacher, lm, list(range(lm.max_patch)), False)
            pts = family_points("naive", entries, self.args.teacher_model_name_or_path, full_dir, "last-k",
                                lambda: self._tok, None, dtype=torch.float32)
            self._sweep("naive", pts)

    def multiple_choice(self, n, full_dir):
        """Claim 3 on the multiple-choice tasks: the same-size student and the interpolated model of its depth."""
        with stage(f"multiple choice {n}", self.timings, self.ledger):
            full = self._load(full_dir)
            same = self._load(os.path.join(self.seed_dir, "students", n))
            lm = full.boomerang_layer_map
            d = same.boomerang_layer_map.num_student_layers
            ks = [k for k in range(lm.max_patch) if lm.plan(k, False).depth == d]
            pts = boomerang_points(self._teacher, full, ks, False, dtype=torch.float32, include_endpoints=False,
                                   curve="boomerang: full")
            tasks = [f"{t}=local_mc:{self.files[t]}" for t in MC_TASKS]
            self._sweep("mc", pts + [self._same_point(n, same)], tasks, limit=self.args.mc_limit, batch_size=8)


# ----------------------------------------------------------------------------------------------- report
def _load(seed_dir: str, sweep: str) -> list[dict]:
    return load_results(os.path.join(seed_dir, "eval", sweep))


def _by_depth(records: list[dict]) -> dict:
    """Records of a ladder keyed by depth (the student itself under "student")."""
    return {"student" if r.get("role") == "student" else int(r["depth"]): r for r in records}


def _ppl(r) -> str:
    return fmt_ppl(r["metrics"]["heldout_kl"]["token_perplexity"]["value"])


def _kl(r) -> str:
    return f"{r['metrics']['heldout_kl']['kl']['value']:.3f}"


def _cmp(a, b, resamples: int) -> str:
    """b against a: perplexity ratio b/a and KL difference b - a, each with a 95% paired bootstrap interval."""
    c = paired_comparison(Scores.from_dict(a["heldout_scores"]), Scores.from_dict(b["heldout_scores"]),
                          resamples=resamples)
    return (f"{c['ppl_ratio']:.2f} [{c['ppl_ci95'][0]:.2f}, {c['ppl_ci95'][1]:.2f}] | "
            f"{c['kl_diff']:+.3f} [{c['kl_ci95'][0]:+.3f}, {c['kl_ci95'][1]:+.3f}]")


def _rises(ladder: dict) -> list[str]:
    """Steps along a ladder (student, then every depth) where perplexity rises beyond noise."""
    keys = (["student"] if "student" in ladder else []) + sorted(k for k in ladder if k != "student")
    recs = [ladder[k] for k in keys]
    steps = step_changes([str(k) for k in keys], [r["heldout_scores"]["document_nll"] for r in recs],
                         recs[0]["heldout_scores"]["document_tokens"])
    return [f"{s['from']}->{s['to']} (x{s['ratio']:.2f})" for s in steps if s["verdict"] == "rises"]


def _plot(curves: dict[str, dict], out: str, claim: int, seed: int, title: str) -> list[str]:
    """x = total parameters, y = held-out perplexity (log); one line per curve (records by depth; empty ones left
    out), teacher and students marked.
    Drawn into OUT/claim<claim>-seed<seed>.png; returns the report lines that show it."""
    import matplotlib  # only where plots are drawn: start-up stays free of it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: matplotlib only when a plot is drawn

    fig, ax = plt.subplots(figsize=(7, 4.6), dpi=110)
    for i, (label, recs) in enumerate((k, v) for k, v in curves.items() if v):
        pts = sorted(((r["parameters"]["total"], r["metrics"]["heldout_kl"]["token_perplexity"]["value"], r)
                      for r in recs.values()), key=lambda p: p[0])
        line = [p for p in pts if p[2].get("role") not in ("teacher", "student")]
        style = "s" if len(line) <= 3 else "-o"
        ax.plot([p[0] for p in line], [p[1] for p in line], style, color=f"C{i}", ms=5 if style == "-o" else 8,
                label=label)
        for x, y, r in pts:
            if r.get("role") == "student":
                ax.plot([x], [y], "D", color=f"C{i}", mfc="none", ms=8, mew=1.5)
            if r.get("role") == "teacher":
                ax.plot([x], [y], "*", color="gold", mec="black", ms=14, label="teacher", zorder=5)
    ax.set(yscale="log", xlabel="parameters (total)", ylabel="held-out token perplexity (lower is better)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.ticklabel_format(axis="x", style="sci", scilimits=(6, 6))
    ax.legend(fontsize=7)
    fig.tight_layout()
    name = f"claim{claim}-seed{seed}.png"
    fig.savefig(os.path.join(out, name + ".tmp.png"))
    plt.close(fig)
    os.replace(os.path.join(out, name + ".tmp.png"), os.path.join(out, name))
    return ["", f"![claim {claim}]({name})", ""]


def write_report(out: str, timings: dict, total_s: float, files: dict, args) -> str:
    """REPORT.md, report.json and one plot per claim, from the result files of every seed in ``out``."""
    seeds = sorted(int(d.split("-", 1)[1]) for d in os.listdir(out) if d.startswith("seed-"))
    lines = ["# The paper's comparisons on the embedded teacher", "",
             f"Held-out Brown: the first {args.heldout_docs} documents, each cut to {args.max_tokens} tokens; perplexity "
             "and mean KL(teacher || model) per token. Intervals: 95% paired bootstrap over documents "
             f"({args.resamples} resamples). A ratio is the compared model's perplexity over the reference's; "
             "ΔKL is its KL minus the reference's.", ""]
    facts: dict = {"seeds": {}}
    for seed in seeds:
        sd = os.path.join(out, f"seed-{seed}")
        ladders = {n: v for n in LADDERS if (v := _by_depth(_load(sd, f"ladder-{n}")))}
        full = ladders.get("full")
        if full is None and seed != args.seed:
            continue
        lines += [f"## Seed {seed}", ""]
        plan = read_json(os.path.join(sd, "students.json"))  # training: the same tokens for every student
        table, tok_counts = [], {}
        for n in plan:
            folder = (os.path.join(args.main_dir or os.path.join(REPO, "runs", "main-cpu"), "student")
                      if n == "full" and seed == 0 and not os.path.isdir(os.path.join(sd, "students", n))
                      else os.path.join(sd, "students", n))
            tl = training_log(folder)
            tok_counts[n] = tl.get("tokens")
            changed = ", ".join(f"{k}={v}" for k, v in plan[n].items()
                                if k not in ("teacher_model_name_or_path", "dataset", "eval_dataset", "max_steps",
                                             "seed")) or "none"
            ce = f"{tl['eval_ce']:.4f}" if tl.get("eval_ce") is not None else ""
            table.append([n, changed, tl.get("steps", ""), tl.get("tokens") or "", ce, os.path.relpath(folder, REPO)])
        lines += [markdown_table(table, ["student", "settings changed", "steps", "tokens trained on",
                                         "final held-out CE", "folder"])]
        facts["seeds"][seed] = {"tokens": tok_counts}
        if full is None:
            continue
        depths = [d for d in ["student"] + sorted(k for k in full if k != "student")
                  if d in full and full[d].get("role") != "teacher"]  # the student, then every depth but the teacher's
        naive = _by_depth(_load(sd, "naive"))
        if "random-init" in ladders or naive:
            rnd = ladders.get("random-init", {})
            lines += ["### Claim 1: initialization and distillation are both necessary", ""]
            table = []
            for d in depths:
                b = full[d]
                row = [str(d), f"{b['parameters']['total'] / 1e6:.1f}M", _ppl(b), _kl(b)]
                r = rnd.get(d)
                row += [_ppl(r), _kl(r), *_cmp(b, r, args.resamples).split(" | ")] if r else ["", "", "", ""]
                nv = naive.get(d) if d != "student" else None
                row += [_ppl(nv), _kl(nv), *_cmp(b, nv, args.resamples).split(" | ")] if nv else ["", "", "", ""]
                table.append(row)
            lines.append(markdown_table(table, ["depth", "params", "boomerang ppl", "KL", "random-init ppl", "KL",
                                                "random / boomerang: ppl ratio [CI]", "ΔKL [CI]", "naive ppl", "KL",
                                                "naive / boomerang: ppl ratio [CI]", "ΔKL [CI]"]))
            t = next((r for r in full.values() if r.get("role") == "teacher"), None)
            if t is not None:
                lines.append(f"\nTeacher: perplexity {_ppl(t)}, KL 0.")
            curves = {"boomerang (full loss)": full, "random init, distilled": rnd,
                      "naive pruning (not distilled)": naive}
            lines += _plot(curves, out, 1, seed, "Claim 1: initialization and distillation")
        abl = [n for n in ("ce", "ce-kl", "ce-cos") if n in ladders]
        if abl:
            lines += ["### Claim 2: the cosine loss makes interpolation stable", "",
                      "Perplexity (KL) at every size, and each ablation against the full loss: ppl ratio [CI].", ""]
            table = []
            for d in depths:
                b = full[d]
                row = [str(d), f"{_ppl(b)} ({_kl(b)})"]
                row += [f"{_ppl(ladders[n][d])} ({_kl(ladders[n][d])})" if d in ladders[n] else "" for n in abl]
                row += [_cmp(b, ladders[n][d], args.resamples).split(" | ")[0] if d in ladders[n] else "" for n in abl]
                table.append(row)
            lines.append(markdown_table(table, ["depth", "full", *abl, *(f"{n} / full [CI]" for n in abl)]))
            lines += ["", "Rises beyond noise along each ladder (student, then every added block):", ""]
            for n in ["full"] + abl:
                rises = _rises(ladders[n])
                facts["seeds"][seed].setdefault("rises", {})[n] = rises
                lines.append(f"- {n}: {len(rises)} ({', '.join(rises) or 'none'})")
            lines += _plot({f"boomerang: {n}": ladders[n] for n in ["full"] + abl}, out, 2, seed,
                           "Claim 2: loss ablations, every size")
        same = {int(r["depth"]): r for r in _load(sd, "same-size")}
        if same:
            lines += ["### Claim 3: interpolated models against students distilled at that size", ""]
            table = []
            for d, s in sorted(same.items()):
                b = full.get(d)
                if b is None:
                    continue
                table.append([d, f"{_ppl(b)} ({_kl(b)})", f"{b['parameters']['total'] / 1e6:.1f}M",
                              f"{_ppl(s)} ({_kl(s)})", f"{s['parameters']['total'] / 1e6:.1f}M",
                              *_cmp(b, s, args.resamples).split(" | ")])
            lines.append(markdown_table(table, ["depth", "interpolated ppl (KL)", "params", "distilled ppl (KL)",
                                                "params", "distilled / interpolated: ppl ratio [CI]", "ΔKL [CI]"]))
            mc = _load(sd, "mc")
            if mc:
                chance = chance_levels(files, args.mc_limit)
                lines += ["", f"Multiple-choice accuracy ({args.mc_limit} items per task; ± lm-eval's standard "
                              "error; chance = the mean of 1/choices over the items):", ""]
                table = []
                for r in sorted(mc, key=lambda r: (int(r["depth"]), r["curve"])):
                    accs = [r["metrics"][t]["acc"] for t in MC_TASKS]
                    mean = sum(a["value"] for a in accs) / len(accs)
                    table.append([r["curve"], r["depth"], *(f"{a['value']:.3f} ± {a['stderr']:.3f}" for a in accs),
                                  f"{mean:.3f}"])
                head = ["model", "depth", *(f"{t} (chance {chance[t]:.2f})" for t in MC_TASKS), "mean"]
                lines.append(markdown_table(table, head))
            curves = {"boomerang (full loss)": full, "distilled at that size": same, "naive pruning": naive}
            lines += _plot(curves, out, 3, seed, "Claim 3: interpolated vs distilled at that size")
    lines += ["## Time", ""]
    for seed in seeds:
        book = read_json(os.path.join(out, f"seed-{seed}", "stage_times.json"))
        if book is not None:
            total = sum(e["seconds"] for e in book.values())
            lines += [f"Seed {seed}, each stage's wall time summed over the runs that worked on it, and the cores other "
                      "processes kept busy meanwhile (0.00: idle cores; not measured before 2026-12-02): "
                      + ", ".join(f"{k} {e['seconds']:.0f} s" + _others(e) + ("" if e["complete"] else " (unfinished)")
                                  for k, e in book.items()) + f"; total {total / 60:.1f} min.", ""]
    lines += ["This run: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
              + f"; total {total_s / 60:.1f} min.", ""]
    text = "\n".join(lines) + "\n"
    atomic_write_text(os.path.join(out, "REPORT.md"), text)
    atomic_write_json(os.path.join(out, "report.json"), {"timings": timings, "total_s": round(total_s, 1), "facts": facts})
    return text


def _others(entry: dict) -> str:
    other = entry.get("other_cpu_s")
    return f" [others {other / entry['seconds']:.2f}]" if other is not None and entry["seconds"] > 0 else ""


if __name__ == "__main__":
    main()
