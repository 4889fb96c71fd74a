"""Build (and optionally evaluate) a baseline family at the sizes of a boomerang sweep.

    python -m evaluate.baselines --method naive shortgpt laco \\
        --teacher_model_name_or_path T --student_model_name_or_path S \\
        --calibration_data ../shared/data/corpus/brown_train.jsonl --save_directory D \\
        [--patch_first_k_layers] [--sizes 0-14] \\
        [--tasks local_ppl:../shared/data/corpus/brown_heldout.jsonl --limit 20 --max_doc_words 300] \\
        [--boomerang_student S2]     # also evaluate boomerang's ladder of S2, for the overlay

The student only supplies the ladder: its layer map fixes the depth of every size ``k`` (and, for
naive pruning, the very teacher layers kept). Any student folder works, a random-init one included.
Methods: ``naive`` (the teacher layers an untrained student keeps at size k), ``shortgpt`` (lowest
Block Influence removed), ``laco`` (RDSC layer merging, threshold and merge width searched per depth).

Writes ``D/<method>/depth-XX/`` (a Hugging Face model folder + ``baseline.json``; skipped when it
exists, so a rerun resumes), ``D/<method>/family.json``, ``D/shortgpt/block_influence.json`` and
``D/laco/search.json`` (every LaCo pass of the threshold/width search). With ``--tasks`` every model
is evaluated with ``evaluate.evaluate.run_sweep`` into ``D/eval`` (one curve per method, the teacher
once, boomerang's curve with ``--boomerang_student``), with ``summary.md`` and overlaid plots.
``--no_save_models`` evaluates in memory without writing model folders.
"""

from __future__ import annotations

import argparse
import logging
import os
import time

import torch

from baselines import BaselineError
from baselines.family import CURVES, METHODS, build_family, calibration_batches, save_family
from baselines.laco import DEFAULT_THRESHOLDS
from boomerang.cli import fail, parse_with_config, setup_logging
from boomerang.errors import BoomerangError
from boomerang.families import FIRST_K, adapter_for_config, dtype_from_name, patch_order
from boomerang.io import atomic_write_text
from boomerang.models import load_config, load_model, load_tokenizer, resolve_model_path
from boomerang.text import load_texts
from evaluate.evaluate import (SweepPoint, _parse_batch_size, boomerang_points, parse_limit, parse_sweep,
                               prepare_sweep_directory, run_sweep)
from evaluate.heldout import HeldoutReference
from evaluate.results import fmt_number, load_results
from patching.patch import load_layer_map

log = logging.getLogger("boomerang.baselines")


def family_points(method: str, entries, teacher_name: str, student_name: str, order: str, tokenizer_fn,
                  save_directory: str | None, dtype=None, overwrite: bool = False, listing_directory: str | None = None):
    """The evaluation points of a family: :func:`baselines.family.save_family`'s members with the tokenizer."""
    members = save_family(method, entries, teacher_name, student_name, order, tokenizer_fn, save_directory, dtype,
                          overwrite, listing_directory)
    return [SweepPoint(name, lambda build=build: (build(), tokenizer_fn()),
                       {k: v for k, v in meta.items() if k != "parameters"}) for name, build, meta in members]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m evaluate.baselines", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", nargs="+", required=True, choices=METHODS, help="one or more baseline families")
    p.add_argument("--teacher_model_name_or_path", required=True)
    p.add_argument("--student_model_name_or_path", required=True,
                   help="a boomerang student folder (student_config.json): its ladder gives the sizes")
    p.add_argument("--save_directory", required=True)
    p.add_argument("--calibration_data", default=None,
                   help="local .jsonl/.json/.txt file or a datasets name (needed by shortgpt and laco)")
    p.add_argument("--calibration_split", default="train")
    p.add_argument("--calibration_dataset_config", default=None)
    p.add_argument("--calibration_text_field", default="text")
    p.add_argument("--calibration_samples", type=int, default=32, help="sequences (one per text)")
    p.add_argument("--calibration_seq_len", type=int, default=256, help="tokens per sequence")
    p.add_argument("--calibration_batch_size", type=int, default=8)
    p.add_argument("--patch_first_k_layers", action="store_true",
                   help="first-k ladder order for naive pruning and boomerang (the default for Llama teachers; the "
                        "depths are the same in both orders)")
    p.add_argument("--override_llama_patching", action="store_true", help="last-k order for a Llama teacher")
    p.add_argument("--sizes", default=None, help="k values of the ladder: 0-14, 0,3,5 (default: all)")
    p.add_argument("--laco_calibration_samples", type=int, default=8,
                   help="LaCo uses the first N calibration sequences (its search runs many forward passes)")
    p.add_argument("--laco_calibration_seq_len", type=int, default=128)
    p.add_argument("--laco_merge_widths", default="2,3", help="merge widths C to search, e.g. 2,3,4")
    p.add_argument("--laco_thresholds", default=None,
                   help="threshold grid (comma-separated); default " + ",".join(str(t) for t in DEFAULT_THRESHOLDS))
    p.add_argument("--laco_refine_steps", type=int, default=2, help="bisection steps per depth after the grid")
    p.add_argument("--laco_interval", type=int, default=2, help="LaCo's minimum interval I between merges")
    p.add_argument("--laco_lowest_layer", type=int, default=1, help="LaCo never merges below this layer")
    p.add_argument("--dtype", default="float32", help="dtype of the saved/evaluated models (search runs in float32)")
    p.add_argument("--no_save_models", action="store_true", help="do not write model folders (evaluate in memory)")
    p.add_argument("--tasks", default=None, help="evaluate every model with these tasks (as evaluate.evaluate)")
    p.add_argument("--heldout_kl", default=None, metavar="FILE",
                   help="also score every model against the teacher on this text (as evaluate.evaluate --heldout_kl)")
    p.add_argument("--heldout_docs", type=int, default=25)
    p.add_argument("--heldout_max_tokens", type=int, default=512)
    p.add_argument("--limit", type=float, default=None)
    p.add_argument("--max_doc_words", type=int, default=None)
    p.add_argument("--max_length", type=int, default=None)
    p.add_argument("--eval_batch_size", default="1")
    p.add_argument("--boomerang_student", action="append", default=None, metavar="FOLDER",
                   help="also evaluate boomerang's ladder of this (distilled) student at the same sizes; repeatable")
    p.add_argument("--overwrite", action="store_true", help="rebuild existing model folders")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--verbose", action="store_true")
    return p


def main(argv=None) -> dict:
    args = parse_with_config(build_parser(), argv)
    setup_logging(args.verbose)
    if args.threads:
        torch.set_num_threads(args.threads)
    methods = list(dict.fromkeys(args.method))
    eval_dir = os.path.join(args.save_directory, "eval")
    # Everything that can be wrong is checked before any weights load.
    try:
        dtype = dtype_from_name(args.dtype)
        teacher_path = resolve_model_path(args.teacher_model_name_or_path)
        t_cfg = load_config(teacher_path)
        adapter = adapter_for_config(t_cfg)
        if adapter.is_encoder:
            raise BaselineError(f"baselines are built for decoder LMs; {adapter.name} is an encoder")
        layer_map = load_layer_map(resolve_model_path(args.student_model_name_or_path), adapter.num_layers(t_cfg))
        order = patch_order(t_cfg, args.patch_first_k_layers, args.override_llama_patching)
        first_k = order == FIRST_K
        ks = parse_sweep(args.sizes, layer_map.max_patch, flag="--sizes")
        texts = None
        if needs_data := [m for m in methods if m in ("shortgpt", "laco")]:
            if not args.calibration_data:
                raise BaselineError(f"--method {' '.join(needs_data)} needs --calibration_data (a local file or dataset)")
            texts = load_texts(args.calibration_data, args.calibration_split, args.calibration_text_field,
                               args.calibration_dataset_config, flag="--calibration_data")
        widths = [int(c) for c in str(args.laco_merge_widths).split(",") if c.strip()]
        thresholds = (DEFAULT_THRESHOLDS if args.laco_thresholds is None else
                      tuple(float(t) for t in str(args.laco_thresholds).split(",") if t.strip()))
        if "laco" in methods and (not widths or min(widths) < 2):
            raise BaselineError(f"--laco_merge_widths {args.laco_merge_widths}: widths must be integers >= 2")
        boomerang_students = []
        for s in args.boomerang_student or []:
            sp = resolve_model_path(s)
            boomerang_students.append((s, sp, load_layer_map(sp, layer_map.num_teacher_layers)))
        ref_desc = None if args.heldout_kl is None else {
            "task": "heldout_kl", "data_file": os.path.abspath(args.heldout_kl), "documents": args.heldout_docs,
            "max_tokens": args.heldout_max_tokens}
        if ref_desc and not os.path.isfile(args.heldout_kl):
            raise BaselineError(f"--heldout_kl {args.heldout_kl}: no such file")
        limit = parse_limit(args.limit)
        taskset = None if not (args.tasks or ref_desc) else prepare_sweep_directory(
            eval_dir, args.tasks or None, limit=limit, max_doc_words=args.max_doc_words, reference=ref_desc)
    except (BoomerangError, ValueError) as e:  # BoomerangError: every library and stage error
        fail(str(e))
    log.info("methods %s; sizes k=%s -> depths %s (%s ladder of %s)", methods, ks,
             [layer_map.plan(k, first_k).depth for k in ks], order, args.student_model_name_or_path)
    teacher = load_model(teacher_path, dtype=torch.float32)
    tok = load_tokenizer(teacher_path)
    batches = laco_batches = calibration = None
    if texts is not None:
        batches = calibration_batches(texts, tok, args.calibration_samples, args.calibration_seq_len,
                                      args.calibration_batch_size)
        laco_batches = calibration_batches(texts, tok, min(args.laco_calibration_samples, args.calibration_samples),
                                           args.laco_calibration_seq_len, args.calibration_batch_size)
        calibration = {"data": args.calibration_data, "split": args.calibration_split,
                       "samples": args.calibration_samples, "seq_len": args.calibration_seq_len,
                       "tokens": sum(int(b["attention_mask"].sum()) for b in batches)}
    laco_options = {"merge_widths": widths, "thresholds": list(thresholds), "refine_steps": args.laco_refine_steps,
                    "interval": args.laco_interval, "lowest_layer": args.laco_lowest_layer,
                    "samples": args.laco_calibration_samples, "seq_len": args.laco_calibration_seq_len}
    os.makedirs(args.save_directory, exist_ok=True)
    family, summary = [], {}
    for method in methods:
        t0 = time.time()
        try:
            entries = build_family(method, teacher, layer_map, ks, first_k, batches, laco_batches,
                                   args.save_directory, laco_options, calibration)
        except BaselineError as e:
            fail(str(e))
        pts = family_points(method, entries, args.teacher_model_name_or_path, args.student_model_name_or_path, order,
                            lambda: tok, None if args.no_save_models else args.save_directory, dtype=dtype,
                            overwrite=args.overwrite, listing_directory=args.save_directory)
        summary[method] = {"seconds": round(time.time() - t0, 1), "points": [p.name for p in pts]}
        family.extend(p for p in pts if p.metadata["depth"] != layer_map.num_teacher_layers)
        log.info("%s: %d models in %.1f s", method, len(pts), time.time() - t0)
    if taskset is None:
        return summary
    reference = None if args.heldout_kl is None else HeldoutReference(
        teacher, tok, args.heldout_kl, args.heldout_docs, args.heldout_max_tokens)
    teacher_eval = teacher if dtype in (None, torch.float32) else load_model(teacher_path, dtype=dtype)
    points = [SweepPoint("teacher", lambda: (teacher_eval, tok), {
        "method": "teacher", "curve": "teacher", "role": "teacher", "depth": layer_map.num_teacher_layers})]
    depths = {layer_map.plan(k, first_k).depth for k in ks}
    for s, sp, smap in boomerang_students:
        student = load_model(sp, dtype=dtype)
        student.boomerang_layer_map = smap
        sks = [k for k in range(smap.max_patch) if smap.plan(k, first_k).depth in depths]
        label = os.path.basename(os.path.normpath(s))
        for p in boomerang_points(teacher_eval, student, sks, first_k, dtype=dtype,
                                  include_endpoints=False, student_name=s, curve=f"boomerang ({label})"):
            p.name = f"boomerang_{label}_d{p.metadata['depth']:02d}".replace("-", "_")
            points.append(p)
    summary["evaluation"] = run_sweep(points + family, eval_dir, taskset, limit=limit, max_doc_words=args.max_doc_words,
                                      batch_size=_parse_batch_size(args.eval_batch_size), max_length=args.max_length,
                                      device="cpu" if not torch.cuda.is_available() else None,
                                      common_metadata={"dtype": args.dtype}, reference=reference)
    try:
        atomic_write_text(os.path.join(args.save_directory, "comparison.md"), comparison_table(eval_dir))
        log.info("table written to %s", os.path.join(args.save_directory, "comparison.md"))
    except BaselineError as e:  # e.g. tasks without a perplexity
        log.info("no comparison table: %s", e)
    return summary


def comparison_table(eval_directory: str, metric: str = "token_perplexity", task: str | None = None) -> str:
    """A markdown table of one metric of an evaluation folder: a row per depth (the teacher's last), a column per
    curve (naive pruning, ShortGPT, LaCo, boomerang, ...)."""
    import pandas as pd  # lazy: only for the table

    records = load_results(eval_directory)
    if not records:
        raise BaselineError(f"no results in {eval_directory}/results")
    task = task or next((t for r in records for t, ms in r.get("metrics", {}).items() if metric in ms), None)
    if task is None:
        raise BaselineError(f"no result in {eval_directory} has the metric {metric!r}")
    df = pd.DataFrame([{"depth": int(r["depth"]), "curve": r.get("curve") or r.get("method"), "role": r.get("role"),
                        "params": r.get("parameters", {}).get("total") or 0,
                        "value": r.get("metrics", {}).get(task, {}).get(metric, {}).get("value")} for r in records])
    teachers, df = df[df.role == "teacher"], df[(df.role != "teacher") & df.value.notna()]
    if df.empty:
        raise BaselineError(f"no curve in {eval_directory} has {task} {metric}")
    table = df.pivot_table(index="depth", columns="curve", values="value", aggfunc="last")
    table = table[[c for c in CURVES.values() if c in table] + sorted(set(table) - set(CURVES.values()))]
    table = table.map(lambda v: fmt_number(v, style="g"))
    table.insert(0, "params (total)", df.groupby("depth").params.first().map("{:,}".format))
    for t in teachers.itertuples():
        table.loc[f"{t.depth} (teacher)"] = [f"{t.params:,}"] + [fmt_number(t.value, style="g")] * (table.shape[1] - 1)
    return f"{task} {metric} (lower is better)\n\n{table.rename_axis('depth').to_markdown(disable_numparse=True)}\n"


if __name__ == "__main__":
    main()
