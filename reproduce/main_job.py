"""The main job: boomerang distillation end to end on the embedded SmolLM2-135M teacher.

    bash scripts/main.sh                      # = python -m reproduce.main_job --preset cpu
    python -m reproduce.main_job --preset gpu --output_dir runs/main-gpu

Stages (each resumable: a rerun skips what is done and continues what was interrupted):
  1. resolve ``embedded:smollm2-135m`` (30 layers) and check the data folder;
  2. distill the 16-layer (1, 2, 2) student (``--layer_map F,N,L`` for another) on the Brown training split
     (``train.train``); a folder whose student was made with other settings is refused, never reused;
  3. sweep every size from student to teacher in the paper's order for the teacher's family (first-k for
     Llama teachers such as SmolLM2; ``--override_llama_patching``: last-k, into OUTPUT_DIR/last-k/) on held-out
     Brown perplexity and KL from the teacher and the multiple-choice tasks of ``DATA/tasks`` (the CPU preset:
     at the student, the teacher and every 4th size, ``--mc_every``), with the naive-pruning and ShortGPT
     baselines (and, in the GPU preset, LaCo) at the same sizes, in one sweep folder;
  3b. search the family the pair assembles as a frontier in size (``patching.search``: every scored model no
     other beats while being no larger; ``--no_search`` skips it) and score its members on the same held-out text;
  4. measure the seam alignment: the cosine of student and teacher hidden states at every aligned
     pair, on the held-out documents (``alignment.md``; ``python -m evaluate.alignment`` goes further);
  5. write the results (per-size JSON, summary CSV/markdown, plots, a boomerang-vs-baselines table)
     and print a short report: the table, every family by size (``evaluate.by_size``: parameters, depth, parts,
     calibration KL, held-out perplexity and KL with bootstrap intervals, members beaten beyond noise by a
     smaller one, the widest gap; one plot of them all against parameters in ``plots-by-size``), where
     perplexity rises along the ladder and by how much, where the plots are, how long each stage took.

The data folder is ``--data_dir`` (default ``$BOOMERANG_DATA``, else ``../shared/data`` beside the
repository): ``corpus/brown_train.jsonl``, ``corpus/brown_heldout.jsonl`` and ``tasks/*.jsonl``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import time
from dataclasses import replace

import torch

from baselines.laco import DEFAULT_THRESHOLDS
from boomerang.cli import fail, read_config, setup_logging
from boomerang.families import FIRST_K, adapter_for, dtype_from_name, patch_order
from boomerang.io import atomic_write_json, atomic_write_text, markdown_table
from boomerang.layer_map import LayerMapError
from boomerang.models import load_config, load_model, load_tokenizer, resolve_model_path
from boomerang.scoring import fixed_length_sequences
from boomerang.text import read_local_documents
from evaluate.alignment import alignment_report, encode_documents
from evaluate.alignment import render as render_alignment
from baselines.family import build_family, calibration_batches
from boomerang.text import load_texts
from evaluate.baselines import family_points
from evaluate.by_size import family_tables, plot_by_size
from evaluate.evaluate import boomerang_points, plan_points, run_sweep
from evaluate.heldout import TASK_NAME as HELDOUT_TASK, HeldoutReference
from evaluate.results import fmt_number
from patching.patch import load_layer_map, load_plan
from patching.search import SEARCH_FILE, run_search
from reproduce.common import (ALIGN_TOKENS, MC_TASKS, REPO, TEACHER, check_data, default_data_dir, distill,
                              heldout_subset, is_finished, read_json, stage)
from train.init_student import plan_student

log = logging.getLogger("boomerang.main_job")

# Each preset: the training config and its overrides, and what the sweep evaluates.
PRESETS = {
    "cpu": {"train_config": "configs/smollm2-135m-cpu.yaml",
            # held-out perplexity and KL on the first 25 documents, each cut to 512 tokens (boomerang.scoring); no
            # second perplexity through lm-eval (it measured the same text again: a third of the sweep's time)
            "ppl_docs": 25, "lm_eval_ppl": False,
            "mc_limit": 40,  # items per multiple-choice task (100 made the sweep ~56 min on 2 cores)
            # the tasks at the student, the teacher and every 4th size (k = 0, 4, 8, ...): 30-45 s a size on 2 cores, and
            # at this budget they sit near chance at every size; perplexity and KL are measured at every size
            "mc_every": 4,
            # naive pruning on held-out perplexity and KL only: its accuracy sat at chance at every size (0.31-0.375,
            # docs/results/main-cpu), and the five tasks would cost it 14 x 30-45 s on 2 cores
            # ShortGPT on held-out perplexity and KL only, for the families-by-size table and plot (its calibration: one
            # teacher pass over 32 x 256 tokens)
            "baselines": ["naive", "shortgpt"], "baseline_tasks": False, "dtype": "float32", "eval_batch_size": "8",
            # greedy and both fixed orders (199 models) on 8 x 128 calibration tokens: 296 s on 2 idle cores against 696 s
            # for 16 x 128 (runs/main-e2e2, runs/main-e2e), and on the held-out text no worse: 10 of the 15 depths chose
            # the same model, and over the other 5 the held-out KL summed 0.10 lower (runs/search-cal8, 2026-12-02). A
            # beam (docs/results/search-smollm2: width 2, 466 models) finds 3-6% lower calibration KL at most depths, at
            # 2-3x the cost
            "search": {"samples": 8, "seq_len": 128, "beam_width": 0}},
    "gpu": {"train_config": "configs/smollm2-135m.yaml",
            # all 50 held-out documents: 512 tokens each for perplexity and KL, and whole through lm-eval; every item
            "ppl_docs": None, "lm_eval_ppl": True, "mc_limit": None, "mc_every": 1,
            "baselines": ["naive", "shortgpt", "laco"], "baseline_tasks": True, "dtype": "bfloat16",
            "eval_batch_size": "auto",
            "search": {"samples": 32, "seq_len": 256, "beam_width": 2}},
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m reproduce.main_job", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="cpu (default without a GPU; 41.7 min on 2 idle cores on 2026-12-06, 43.5 with a fresh setup) or gpu (the full-size micro-reproduction)")
    p.add_argument("--output_dir", default=None, help="default runs/main-<preset>")
    p.add_argument("--data_dir", default=None, help="default $BOOMERANG_DATA, else ../shared/data")
    p.add_argument("--max_steps", type=int, default=None, help="override the preset's distillation steps")
    p.add_argument("--mc_limit", type=int, default=None, help="override items per multiple-choice task")
    p.add_argument("--ppl_docs", type=int, default=None, help="override held-out documents for perplexity")
    p.add_argument("--mc_every", type=int, default=None,
                   help="run the multiple-choice tasks at the student, the teacher and every N-th size (k = 0, N, 2N, "
                        "...); 1: every size (the cpu preset's is 4, the gpu preset's 1)")
    p.add_argument("--baselines", default=None, help="comma-separated: naive, shortgpt, laco (default: the preset's)")
    p.add_argument("--patch_first_k_layers", action="store_true",
                   help="sweep in first-k order; the paper's order, and the default, for Llama teachers such as SmolLM2. "
                        "An order other than the teacher family's goes to OUTPUT_DIR/<order>/; the student is shared")
    p.add_argument("--override_llama_patching", action="store_true",
                   help="sweep a Llama teacher in last-k order (the paper's flag), into OUTPUT_DIR/last-k/")
    p.add_argument("--layer_map", default=None, metavar="F,N,L",
                   help="the student's layer map: keep the first F teacher layers, every N-th after them and the last "
                        "L (default: the preset's, the paper's 1,2,2; 2,2,1 is the paper's map for Llama-3.2-3B). "
                        "Another map gets its own default folder, runs/main-<preset>-map<F><N><L>")
    p.add_argument("--teacher_model_name_or_path", default=TEACHER)
    p.add_argument("--no_search", action="store_true",
                   help="skip the searched ladder (patching.search: the best model the pair assembles at every depth)")
    p.add_argument("--skip_training", action="store_true",
                   help="evaluate an existing student in OUTPUT_DIR/student (e.g. after a run on another machine)")
    return p


def student_settings(preset: dict, args) -> dict:
    """What the distilled student depends on: the teacher, the training config, the layer map and the steps."""
    cfg = read_config(os.path.join(REPO, preset["train_config"]))  # the base chain resolved: only values count
    layer_map = [cfg["first_layers_to_keep"], cfg["alternate_every_n_layers"], cfg["last_layers_to_keep"]]
    if args.layer_map:
        layer_map = [p.strip() for p in args.layer_map.split(",")]
        if len(layer_map) != 3 or not all(p.isdigit() for p in layer_map):
            fail(f"--layer_map {args.layer_map!r}: expected three integers F,N,L (first layers kept, every N-th after "
                 "them, last layers kept), e.g. 1,2,2 (the paper's) or 2,2,1")
        layer_map = [int(p) for p in layer_map]
    return {"teacher": args.teacher_model_name_or_path, "train_config": preset["train_config"],
            # the hash of the parsed settings, so that editing a comment of the config changes nothing
            # (the default recipe, "improved", is left out: students made before the setting existed still match)
            "train_config_sha256": hashlib.sha256(json.dumps(
                {k: v for k, v in cfg.items() if not (k == "recipe" and v == "improved")},
                sort_keys=True).encode()).hexdigest()[:16],
            "layer_map": layer_map,
            "max_steps": args.max_steps if args.max_steps is not None else cfg["max_steps"]}


def distill_student(out: str, wanted: dict, files: dict, config: str) -> None:
    """Distill the main job's student into OUT/student, its settings recorded first for check_student_settings."""
    if not is_finished(os.path.join(out, "student")):
        atomic_write_json(os.path.join(out, "student_settings.json"), wanted)
    f, n, l = wanted["layer_map"]
    distill(os.path.join(out, "student"), config, {
        "teacher_model_name_or_path": wanted["teacher"], "dataset": files["train"], "eval_dataset": files["heldout"],
        "first_layers_to_keep": f, "alternate_every_n_layers": n, "last_layers_to_keep": l,
        "max_steps": wanted["max_steps"]})


def check_student_settings(out: str, student_dir: str, wanted: dict) -> None:
    """Refuse, before any work, to reuse or resume a student that was made with other settings, as told by
    OUTPUT_DIR/student_settings.json (written when its distillation starts), else by its student_config.json."""
    source = os.path.join(out, "student_settings.json")
    found = read_json(source)
    if found is None and os.path.isfile(os.path.join(student_dir, "student_config.json")):
        source = os.path.join(student_dir, "student_config.json")  # from a main job that wrote no settings file
        sc = read_json(source)
        recipe = sc.get("recipe") or {}
        found = {"teacher": sc.get("teacher_model_name_or_path"),
                 "layer_map": [recipe.get("first_layers_to_keep"), recipe.get("alternate_every_n_layers"),
                               recipe.get("last_layers_to_keep")], "max_steps": sc.get("trained_steps")}
    if found is None:
        return
    # (a student without a settings file cannot say which config made it: those keys are skipped)
    diff = [f"{k} {found.get(k)!r} (asked: {wanted[k]!r})" for k in wanted if k in found and found[k] != wanted[k]]
    if diff:
        fail(f"{out} holds a student made with other settings: {'; '.join(diff)} (from {source}). "
             "Pass --output_dir NEW_DIR for these settings, or --skip_training to evaluate the student that is there")


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    setup_logging()
    preset_name = args.preset or ("gpu" if torch.cuda.is_available() else "cpu")
    preset = PRESETS[preset_name]
    wanted = student_settings(preset, args)
    map_tag = "" if wanted["layer_map"] == [1, 2, 2] else "-map" + "".join(str(v) for v in wanted["layer_map"])
    out = os.path.abspath(args.output_dir or os.path.join(REPO, "runs", f"main-{preset_name}{map_tag}"))
    data_dir = os.path.abspath(args.data_dir or default_data_dir())
    files = check_data(data_dir)
    baselines = [b.strip() for b in (args.baselines or ",".join(preset["baselines"])).split(",") if b.strip()]
    bad = [b for b in baselines if b not in ("naive", "shortgpt", "laco")]
    if bad:
        fail(f"--baselines: unknown {bad}; choose from naive, shortgpt, laco")
    mc_limit = args.mc_limit if args.mc_limit is not None else preset["mc_limit"]
    mc_every = args.mc_every if args.mc_every is not None else preset["mc_every"]
    if mc_every < 1:
        fail(f"--mc_every must be 1 or more (1: the multiple-choice tasks at every size), got {mc_every}")
    ppl_docs = args.ppl_docs if args.ppl_docs is not None else preset["ppl_docs"]
    student_dir = os.path.join(out, "student")
    if not args.skip_training:
        check_student_settings(out, student_dir, wanted)
    if args.patch_first_k_layers and args.override_llama_patching:
        fail("--patch_first_k_layers and --override_llama_patching ask for opposite orders: give one")
    os.makedirs(out, exist_ok=True)
    timings: dict[str, float] = {}
    t_start = time.time()
    print(f"boomerang main job: preset {preset_name}, output {out}, data {data_dir}", flush=True)

    with stage("teacher", timings):  # 1.
        teacher_path = resolve_model_path(args.teacher_model_name_or_path)
        cfg = load_config(teacher_path)
        print(f"teacher {args.teacher_model_name_or_path}: {cfg.num_hidden_layers} layers ({teacher_path})")
        # the teacher family's own order is swept into OUTPUT_DIR, the other into OUTPUT_DIR/<order>
        order = patch_order(cfg, args.patch_first_k_layers, args.override_llama_patching)
        results_dir = out if order == patch_order(cfg) else os.path.join(out, order)
        eval_dir = os.path.join(results_dir, "eval")
        print(f"patch order: {order}; results in {results_dir}")
        calibration_ids, cal = None, preset["search"]
        if not args.no_search and not os.path.isfile(os.path.join(out, "search", SEARCH_FILE)):
            try:  # the search's calibration text is checked here, before the distillation, not after it
                calibration_ids = fixed_length_sequences(load_tokenizer(teacher_path), read_local_documents(
                    files["train"]), cal["samples"], cal["seq_len"], data_flag=files["train"])
            except ValueError as e:
                fail(f"the searched ladder of preset {preset_name!r} calibrates on {cal['samples']} documents of "
                     f"{cal['seq_len']} tokens: {e}. Add training documents, or pass --no_search")
        if not args.skip_training:
            try:  # a map the teacher cannot take fails here, before the distillation starts
                planned = plan_student(cfg, *wanted["layer_map"])
            except LayerMapError as e:
                fail(f"--layer_map {','.join(map(str, wanted['layer_map']))}: {e}")
            print(f"student: layer map {tuple(wanted['layer_map'])}, {planned.num_student_layers} layers, "
                  f"copied teacher layers {list(planned.copied_teacher_layers)}")

    with stage("distillation", timings):  # 2. fresh, resumed, or already finished
        if not args.skip_training:
            distill_student(out, wanted, files, os.path.join(REPO, preset["train_config"]))
        elif not is_finished(student_dir):
            fail(f"--skip_training: no finished student in {student_dir}")
        else:
            print(f"student already distilled in {student_dir}: reused")

    with stage("evaluation sweep", timings):  # 3. boomerang and the baselines at the same sizes, one folder
        dtype = dtype_from_name(preset["dtype"])
        os.makedirs(eval_dir, exist_ok=True)
        heldout = heldout_subset(files["heldout"], ppl_docs, out)
        tasks = ([f"brown_heldout=local_ppl:{heldout}"] if preset["lm_eval_ppl"] else []) + [
            f"{t}=local_mc:{files[t]}" for t in MC_TASKS]
        teacher = load_model(teacher_path, dtype=torch.float32)
        student = load_model(student_dir, dtype=dtype)
        layer_map = load_layer_map(student_dir, adapter_for(teacher).num_layers(teacher.config))
        student.boomerang_layer_map = layer_map
        tok = load_tokenizer(teacher_path)
        ks = list(range(layer_map.max_patch + 1))
        # the baselines calibrate on the float32 teacher, as their standalone command does; sizes are evaluated
        # in the preset's dtype (a second copy only when that dtype differs)
        teacher_eval = teacher if dtype == torch.float32 else load_model(teacher_path, dtype=dtype)
        reference = HeldoutReference(teacher, tok, heldout, None, ALIGN_TOKENS)  # held-out KL of every point
        points = boomerang_points(teacher_eval, student, ks, patch_first_k_layers=order == FIRST_K, dtype=dtype,
                                  teacher_name=args.teacher_model_name_or_path, student_name=student_dir,
                                  curve="boomerang")
        points = [replace(p, tasks=p.metadata["role"] != "intermediate"
                          or p.metadata["num_layers_to_patch"] % mc_every == 0) for p in points]
        batches = laco_batches = calibration = None
        if any(b in ("shortgpt", "laco") for b in baselines):
            texts = load_texts(files["train"])
            batches = calibration_batches(texts, tok, 32, 256, 8)
            laco_batches = calibration_batches(texts, tok, 8, 128, 8)
            calibration = {"data": files["train"], "samples": 32, "seq_len": 256}
        laco_options = {"merge_widths": [2, 3], "thresholds": list(DEFAULT_THRESHOLDS) if "laco" in baselines else None,
                        "refine_steps": 2, "interval": 2, "lowest_layer": 1, "samples": 8, "seq_len": 128}
        bdir = os.path.join(results_dir, "baselines")
        for method in baselines:  # at every interpolated size (the teacher and the student's own depth included)
            entries = build_family(method, teacher, layer_map, ks[:-1], order == FIRST_K, batches, laco_batches, bdir,
                                   laco_options, calibration)
            family = family_points(method, entries, args.teacher_model_name_or_path, student_dir, order, lambda: tok,
                                   None, dtype=dtype, listing_directory=bdir)
            points += [replace(p, tasks=preset["baseline_tasks"]) for p in family]
        records = run_sweep(points, eval_dir, tasks, limit=mc_limit, batch_size=preset["eval_batch_size"],
                            common_metadata={"preset": preset_name, "dtype": preset["dtype"]}, reference=reference)

    searched, plan = [], None  # 3b. the searched family (patching.search), evaluated on the held-out text
    if not args.no_search:
        with stage("search", timings):
            searched, plan = searched_ladder(os.path.join(out, "search"), teacher, teacher_eval, student, layer_map, tok,
                                       files["train"], reference, cal, args, student_dir, calibration_ids, known=records,
                                       common_metadata={"preset": preset_name, "dtype": preset["dtype"]})

    with stage("alignment", timings):  # 4. student vs teacher hidden states at every seam a patched size has
        align_batches = encode_documents(tok, heldout, None, ALIGN_TOKENS)
        # pairs only: the sweep has measured every size's perplexity already (on its own cut of the documents)
        alignment = alignment_report(teacher_eval, student, layer_map, align_batches,
                                     teacher_name=args.teacher_model_name_or_path, student_name=student_dir,
                                     data=heldout, max_tokens=ALIGN_TOKENS, perplexities=False)
        atomic_write_json(os.path.join(results_dir, "alignment.json"), alignment)
        atomic_write_text(os.path.join(results_dir, "alignment.md"), render_alignment(alignment))

    with stage("report", timings):  # 5.
        report = write_report(results_dir, eval_dir, records, timings, preset_name, time.time() - t_start, alignment,
                              order, searched, plan)
    print(report, flush=True)
    return {"output_dir": out, "timings": timings}


def searched_ladder(search_dir, teacher, teacher_eval, student, layer_map, tok, train_file, reference, cal, args,
                    student_dir, ids=None, known=(), common_metadata=None) -> tuple[list[dict], dict]:
    """Run the search once (its search.json is reused by a rerun) and score its frontier against the teacher
    (``teacher``: float32, for the search; ``teacher_eval``: in the student's dtype, the family's resident copy).
    Returns the frontier's result records and the search result."""
    path = os.path.join(search_dir, SEARCH_FILE)
    if not os.path.isfile(path):
        if ids is None:
            ids = fixed_length_sequences(tok, read_local_documents(train_file), cal["samples"], cal["seq_len"])
        search_student = student
        if next(student.parameters()).dtype != torch.float32:  # the search scores in float32 (search.json says so),
            search_student = load_model(student_dir, dtype=torch.float32)  # as the float32 teacher it is paired with
        result = run_search(teacher, search_student, layer_map, ids, beam_width=cal["beam_width"])
        del search_student
        calibration = {"data": train_file, "samples": cal["samples"], "seq_len": cal["seq_len"]}
        atomic_write_json(path, {"teacher": args.teacher_model_name_or_path, "student": student_dir,
                                 "calibration": calibration, "dtype": "float32", **result})
    plan = load_plan(path)
    c = plan["cost"]
    print(f"search: {len(plan['ladder'])} models on the frontier, {c['models_scored']} models scored in "
          f"{c['wall_time_s']:.0f} s")
    points = plan_points(plan, teacher_eval, student, teacher_name=args.teacher_model_name_or_path,
                         student_name=student_dir)
    # a searched model that is also a point of the sweep (the student, the teacher, a fixed-order size) keeps its scores
    return run_sweep(points, os.path.join(search_dir, "eval"), None, reference=reference, known=known,
                     common_metadata=common_metadata), plan


def _value(r: dict, task: str, metric: str):
    return r.get("metrics", {}).get(task, {}).get(metric, {}).get("value")


def comparison(records: list[dict]) -> tuple[str, dict]:
    """Boomerang vs every baseline at each depth: held-out perplexity and mean multiple-choice accuracy."""
    by: dict[str, dict[int, dict]] = {}
    student = None  # the distilled student itself (the k=0 model takes the teacher's last layers and head)
    for r in records:
        if r.get("role") == "student":
            student = r
        else:
            by.setdefault(r.get("method"), {})[int(r["depth"])] = r
    boom = by.get("boomerang", {})
    methods = [m for m in ("naive", "shortgpt", "laco") if m in by]

    def acc(r):
        vals = [v for v in (_value(r, t, "acc") for t in MC_TASKS) if v is not None]
        return sum(vals) / len(vals) if vals else None

    head = ["depth", "params", "boomerang ppl"] + [f"{m} ppl" for m in methods] + ["boomerang acc"] + [f"{m} acc" for m in methods]
    rows = []
    facts = {"monotone": True, "rises": [], "boomerang_beats": {m: [] for m in methods}}
    # the ladder in the order blocks are added: the student (no baseline columns), then k = 0 .. teacher
    ladder = ([(f"{student['depth']} (student)", student, None)] if student is not None else []) + [
        (str(d) + (" (teacher)" if boom[d].get("role") == "teacher" else ""), boom[d], d) for d in sorted(boom)]
    chain = []
    for label, r, d in ladder:
        ppl = _value(r, HELDOUT_TASK, "token_perplexity")
        chain.append((label, ppl))
        row = [label, f"{r['parameters']['total'] / 1e6:.1f}M", fmt_number(ppl, 1, "f")]
        for m in methods:
            b = by[m].get(d)
            bp = _value(b, HELDOUT_TASK, "token_perplexity") if b else None
            row.append(fmt_number(bp, 1, "f"))
            if b is not None and ppl is not None and bp is not None:
                facts["boomerang_beats"][m].append((d, ppl < bp, round(bp / ppl, 2)))
        row += [fmt_number(acc(r), 3, "f")] + [fmt_number(acc(by[m][d]), 3, "f") if d in by[m] else "" for m in methods]
        rows.append(row)
    chain = [(label, v) for label, v in chain if v is not None]
    for (a, pa), (b, pb) in zip(chain, chain[1:]):
        if pb > pa:
            facts["monotone"] = False
            facts["rises"].append((a, b, round(pa, 2), round(pb, 2), round(100 * (pb / pa - 1), 1)))
    return markdown_table(rows, head), facts


def write_report(out: str, eval_dir: str, records: list[dict], timings: dict, preset: str, total_s: float,
                 alignment: dict | None = None, order: str = "last-k", searched: list[dict] | None = None,
                 plan: dict | None = None) -> str:
    table, facts = comparison(records)
    lines = [f"# boomerang main job ({preset} preset)", "",
             "Held-out Brown token perplexity (lower is better) and mean accuracy over "
             f"{', '.join(MC_TASKS)} (higher is better), {order} order:", "", table]
    by_size, facts["by_size"] = family_tables(records + list(searched or []), plan)
    plots = plot_by_size(records + list(searched or []), os.path.join(out, "plots-by-size"))
    lines += ["## Every family by size", "",
              f"Each family ordered by parameters (its teacher at the right): the searched frontier (python -m "
              f"patching.search: every scored model that no other beats on calibration KL while being no larger), the "
              f"{order} order (the curve `boomerang`, with its student and teacher) and the baselines, each model at its "
              "true size. Held-out perplexity and mean KL(teacher || model) per token on the held-out documents cut to "
              "512 tokens, 95% bootstrap intervals over documents; \"beaten beyond noise\": a model of the same family "
              "with no more parameters whose perplexity is lower, the whole paired-bootstrap interval of the ratio "
              "above 1; \"gap\": parameters added since the member before.", "", by_size,
              f"Plots by size: {os.path.join(out, 'plots-by-size')} ({len(plots)} files)", ""]
    if facts["monotone"]:
        lines.append("Perplexity along the boomerang ladder (student, then every added block): monotone, never rises.")
    else:
        rises = "; ".join(f"{a} -> {b}: {pa:,.1f} -> {pb:,.1f} (+{pct}%)" for a, b, pa, pb, pct in facts["rises"])
        lines.append(f"Perplexity along the boomerang ladder (student, then every added block) rises "
                     f"{len(facts['rises'])} time(s): {rises}.")
    for m, rows in facts["boomerang_beats"].items():
        if rows:
            wins = sum(1 for _, w, _ in rows if w)
            ratios = ", ".join(f"{d}: {r}x" for d, _, r in rows)
            lines.append(f"Boomerang beats {m} at {wins} of {len(rows)} sizes (baseline ppl / boomerang ppl: {ratios}).")
    if alignment and alignment["pairs"]:
        inner = [p for p in alignment["pairs"] if p["student_index"] not in (0, -1)]
        worst = min(inner or alignment["pairs"], key=lambda p: p["cosine"])
        mean = sum(p["cosine"] for p in inner) / max(len(inner), 1)
        facts["seam_cosine_mean"] = round(mean, 4)
        lines.append(f"Seam alignment (cosine of student and teacher hidden states at the layer seams, held-out): "
                     f"mean {mean:.3f}, lowest {worst['cosine']:.3f} (student {worst['student_index']} <-> teacher "
                     f"{worst['teacher_index']}); embeddings {alignment['pairs'][0]['cosine']:.3f}, final norm "
                     f"{alignment['pairs'][-1]['cosine']:.3f}. Table: {os.path.join(out, 'alignment.md')}")
    lines += ["", f"Plots: {os.path.join(eval_dir, 'plots')}", f"All results: {eval_dir} (summary.csv, summary.md)",
              "", "Stage times: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()) + f"; total {total_s / 60:.1f} min"]
    text = "\n".join(lines) + "\n"
    atomic_write_text(os.path.join(out, "REPORT.md"), text)
    atomic_write_json(os.path.join(out, "report.json"), {"timings": timings, "total_s": round(total_s, 1),
                                                         "facts": facts, "preset": preset, "order": order})
    return text


if __name__ == "__main__":
    main()
