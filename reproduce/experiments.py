"""The paper's comparisons on the embedded teacher, in one resumable command.

    bash scripts/main.sh --experiments            # = python -m reproduce.experiments
    python -m reproduce.experiments --seeds 0,1,2 --students full,ce,ce-kl,ce-cos    # three training seeds

Three claims of the paper, each answered with held-out perplexity and KL from the teacher (per
document, so that every comparison has a paired bootstrap interval):

1. Initialization and distillation are both necessary (paper, Fig. 3): the ``random-init`` student
   (same shape, fresh weights, distilled the same way) and naive pruning (the teacher's layers, not
   distilled) against the boomerang ladder.
2. The per-layer cosine loss makes interpolation stable (Fig. 5): students distilled with ``ce``,
   ``ce-kl`` and ``ce-cos`` against ``full`` (CE + KL + cosine), each patched at every size.
3. Interpolated models are on par with same-size distilled models (Fig. 6): students of depth 20, 23
   and 26 (``same-20`` ...), initialized from the teacher layers that the interpolated model of that
   depth holds (layer map (1, 2, l): l = 9, 15, 21, the first l that gives that layer set; l + 1 gives the same
   set) and distilled with the same loss, data, steps and tokens, against the interpolated model of that depth;
   with the multiple-choice tasks too.

Every student is distilled from ``configs/smollm2-135m-cpu.yaml`` (the main job's preset: its data,
batch, steps, seed) with only the settings below changed. The ``full`` student of seed 0 is the main
job's (``--main_dir``, default runs/main-cpu): reused when it exists with the same settings, else
distilled there exactly as ``bash scripts/main.sh`` would.

Every seed (``--seeds``) is a level of the statistics: each comparison pools the seeds that hold both of its
models, with intervals that resample documents and seeds (``reproduce.claims``, ``evaluate.bootstrap``).

Stages (a rerun skips what is done and resumes what was interrupted): teacher, one distillation per
student, the held-out reference (the teacher's log-probabilities, once per seed), the ladders, naive pruning
(at the preset's seed only: it does not depend on training), the same-size points, the multiple-choice points,
the report. A student whose evaluations the stage ledger records as complete is not distilled again (so a
folder holding only result files, such as a copy of docs/results/experiments/data, resumes without its
students). Output: ``--output_dir`` (default runs/experiments-cpu): ``seed-<S>/students/<name>/``,
``seed-<S>/eval/<sweep>/``, ``seed-<S>/training.json``, ``chance.json``, ``answer_bias.json``, ``REPORT.md`` and
``report.json``.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from boomerang.cli import fail, read_config, setup_logging
from boomerang.families import adapter_for, adapter_for_config
from boomerang.io import atomic_write_json, atomic_write_text
from boomerang.layer_map import LayerMap, LayerMapError
from boomerang.models import ModelNotFoundError, load_config, load_model, load_tokenizer, resolve_model_path
from baselines.family import build_family
from evaluate.baselines import family_points
from evaluate.evaluate import SweepPoint, boomerang_points, run_sweep
from evaluate.heldout import HeldoutReference
from patching.patch import load_layer_map
from reproduce.common import (ALIGN_TOKENS, MC_TASKS, REPO, TEACHER, answer_bias, chance_levels, check_data,
                              default_data_dir, distill, heldout_subset, read_json, stage, training_log)
from reproduce.claims import ClaimsReport
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
    p.add_argument("--seeds", default=None,
                   help="comma-separated training seeds, run one after another (default: --seed), e.g. 0,1,2")
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
    try:
        seeds = [int(x) for x in args.seeds.split(",") if x.strip()] if args.seeds else [args.seed]
    except ValueError:
        fail(f"--seeds {args.seeds!r}: expected comma-separated integers such as 0,1,2")
    if not seeds or len(set(seeds)) != len(seeds):
        fail(f"--seeds {args.seeds!r}: give each seed once")
    known = {**STUDENTS, **same_size_students(adapter_for_config(t_cfg).num_layers(t_cfg), base, depths)}
    spec = ",".join(known) if args.students == "all" else args.students
    names = [s.strip() for s in spec.split(",") if s.strip()]
    bad = [s for s in names if s not in known]
    if bad or not names:
        fail(f"--students: unknown {bad or spec!r}; choose from {', '.join(known)}")
    names = list(dict.fromkeys(names))  # in the order given: students are distilled and evaluated in that order
    out = os.path.abspath(args.output_dir or os.path.join(REPO, "runs", "experiments-cpu"))
    files = check_data(os.path.abspath(args.data_dir or default_data_dir()))
    os.makedirs(out, exist_ok=True)
    atomic_write_json(os.path.join(out, "chance.json"), chance_levels(files, args.mc_limit))
    atomic_write_json(os.path.join(out, "answer_bias.json"), answer_bias(files, args.mc_limit))
    timings: dict[str, float] = {}
    t_start = time.time()
    for seed in seeds:
        run_seed(args, seed, names, known, base, config, teacher_path, t_cfg, files, out, timings, t_start)
    with stage("report", timings):
        report = write_report(out, args)
    print(report, flush=True)
    return {"output_dir": out, "timings": timings}


def run_seed(args, seed, names, known, base, config, teacher_path, t_cfg, files, out, timings, t_start) -> None:
    """Distill and evaluate the students of one training seed, into OUT/seed-<seed>."""
    main_dir = os.path.abspath(args.main_dir or os.path.join(REPO, "runs", "main-cpu"))
    steps = args.max_steps if args.max_steps is not None else base["max_steps"]
    seed_dir = os.path.join(out, f"seed-{seed}")
    os.makedirs(seed_dir, exist_ok=True)

    # where each student lives; the full student of the main job's seed is the main job's own
    student_dirs = {n: os.path.join(seed_dir, "students", n) for n in names}
    reuse_main = "full" in names and seed == base.get("seed", 0)
    if reuse_main:
        student_dirs["full"] = os.path.join(main_dir, "student")
        wanted = student_settings({"train_config": os.path.relpath(config, REPO)},
                                  argparse.Namespace(layer_map=None, max_steps=args.max_steps,
                                                     teacher_model_name_or_path=args.teacher_model_name_or_path))
        check_student_settings(main_dir, student_dirs["full"], wanted)
    common = {"teacher_model_name_or_path": args.teacher_model_name_or_path, "dataset": files["train"],
              "eval_dataset": files["heldout"], "max_steps": steps, "seed": seed}
    # a folder never mixes settings: what each student was asked to be is recorded, and checked on a rerun
    plan = {n: {**common, **known[n][0]} for n in names}
    plan_path = os.path.join(seed_dir, "students.json")
    old = read_json(plan_path, {})
    clash = [n for n in names if n in old and old[n] != plan[n]]
    if clash:
        fail(f"{seed_dir} holds students {clash} made with other settings ({plan_path}); pass another --output_dir")
    plan = {**old, **plan}
    atomic_write_json(plan_path, plan)

    ledger = os.path.join(seed_dir, "stage_times.json")  # each stage's time, summed over interrupted runs
    print(f"boomerang experiments: seed {seed}, students {', '.join(names)}, output {out}", flush=True)
    with stage("teacher", timings, ledger):
        print(f"teacher {args.teacher_model_name_or_path}: {t_cfg.num_hidden_layers} layers ({teacher_path})")

    def done(name: str) -> bool:
        return bool((read_json(ledger, {}).get(name) or {}).get("complete"))

    def pending(n: str) -> list[str]:
        """The stages that still need student n's weights."""
        todo = [f"evaluate {n}"]
        if n == "full" and seed == base.get("seed", 0):
            todo.append("evaluate naive pruning")
        if n == "full":
            todo += [f"multiple choice {m}" for m in names if m.startswith("same-")]
        if n.startswith("same-") and "full" in names:
            todo.append(f"multiple choice {n}")
        return [t for t in todo if not done(t)]

    ev = Evaluator(args, teacher_path, files, seed_dir, timings, ledger)
    for n in names:  # each student is distilled, then evaluated at once, and the report rewritten
        if not pending(n):
            print(f"student {n} of seed {seed}: every evaluation that needs it is recorded; not distilled again",
                  flush=True)
            if os.path.isfile(os.path.join(student_dirs[n], "log.jsonl")):
                record_training(seed_dir, n, student_dirs[n])  # a run of older code may not have recorded it
            continue
        with stage(f"distill {n}", timings, ledger):
            if n == "full" and reuse_main:
                distill_student(main_dir, wanted, files, config)
            else:
                distill(student_dirs[n], config, plan[n])
        record_training(seed_dir, n, student_dirs[n])
        if not done(f"evaluate {n}"):
            ev.student(n, student_dirs[n])
        if n == "full" and seed == base.get("seed", 0) and not done("evaluate naive pruning"):
            ev.naive(student_dirs[n])  # the teacher's layers: the same at every seed
        if n.startswith("same-") and "full" in names and not done(f"multiple choice {n}"):
            ev.multiple_choice(n, student_dirs["full"])
        write_report(out, args)


def record_training(seed_dir: str, name: str, student_dir: str) -> None:
    """What the student's distillation log says (steps, tokens, final held-out CE), kept in SEED/training.json so that
    the report needs no student folder."""
    path = os.path.join(seed_dir, "training.json")
    atomic_write_json(path, {**read_json(path, {}), name: training_log(student_dir)})


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
def write_report(out: str, args) -> str:
    """REPORT.md and report.json from the result files of every seed in ``out`` (``reproduce.claims``)."""
    report = ClaimsReport.load(out, args.resamples, f"the first {args.heldout_docs} documents, each cut to "
                                                    f"{args.max_tokens} tokens")
    text = report.markdown(report.plots(out))
    atomic_write_text(os.path.join(out, "REPORT.md"), text)
    atomic_write_json(os.path.join(out, "report.json"), {"facts": report.facts})
    return text


if __name__ == "__main__":
    main()
