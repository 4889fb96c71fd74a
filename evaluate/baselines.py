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
import json
import logging
import os
import time

import torch

from baselines import BaselineError, METADATA_NAME, load_baseline_metadata, save_baseline, shortgpt
from baselines.laco import DEFAULT_THRESHOLDS, LacoSearch, build_laco_model, replay
from baselines.naive import build_naive_pruning_model, naive_pruning_layers
from boomerang import text
from boomerang.cli import fail, parse_with_config, setup_logging
from boomerang.errors import BoomerangError
from boomerang.families import FIRST_K, adapter_for, adapter_for_config, count_parameters, dtype_from_name, patch_order
from boomerang.io import atomic_write_json, atomic_write_text
from boomerang.models import load_config, load_model, load_tokenizer, resolve_model_path
from evaluate.evaluate import (EvaluationError, SweepPoint, _parse_batch_size, boomerang_points, parse_limit,
                               parse_sweep, prepare_sweep_directory, run_sweep)
from evaluate.heldout import HeldoutReference
from evaluate.results import fmt_number, load_results
from patching.patch import load_layer_map

log = logging.getLogger("boomerang.baselines")

METHODS = ("naive", "shortgpt", "laco")
CURVES = {"naive": "naive pruning", "shortgpt": "ShortGPT", "laco": "LaCo"}


# ----------------------------------------------------------------------------------- calibration data
def load_texts(source: str, split: str = "train", text_field: str = "text", dataset_config: str | None = None) -> list[str]:
    """Calibration texts (``boomerang.text.load_texts``); its errors (DataError) name --calibration_data."""
    return text.load_texts(source, split, text_field, dataset_config, flag="--calibration_data")


def calibration_batches(texts, tokenizer, num_samples: int = 32, seq_len: int = 256, batch_size: int = 8) -> list[dict]:
    """``num_samples`` sequences (the first ``seq_len`` tokens of one text each, in order), right-padded
    into batches with an attention mask (padding never counts)."""
    if num_samples < 1 or seq_len < 2 or batch_size < 1:
        raise BaselineError("calibration samples, batch size must be >= 1 and sequence length >= 2")
    seqs = []
    for t in texts:
        ids = tokenizer(t)["input_ids"][:seq_len]
        if len(ids) >= 2:
            seqs.append(ids)
        if len(seqs) == num_samples:
            break
    if not seqs:
        raise BaselineError("no calibration text is at least 2 tokens long")
    if len(seqs) < num_samples:
        log.warning("only %d calibration sequences available (asked for %d)", len(seqs), num_samples)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    batches = []
    for i in range(0, len(seqs), batch_size):
        chunk = seqs[i: i + batch_size]
        width = max(len(s) for s in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for r, s in enumerate(chunk):
            ids[r, : len(s)] = torch.tensor(s)
            mask[r, : len(s)] = 1
        batches.append({"input_ids": ids, "attention_mask": mask})
    return batches


def parse_sizes(spec: str | None, max_patch: int) -> list[int]:
    """``None``/``all`` -> 0..max_patch; ``0-14``, ``0,3,5``, ``2-6,10`` -> those ``k`` (checked)."""
    try:
        return parse_sweep(spec, max_patch)
    except EvaluationError as e:
        raise BaselineError(str(e).replace("--sweep", "--sizes")) from None


# ----------------------------------------------------------------------------------- the family
def _settings_match(path: str, settings: dict) -> bool:
    if not os.path.isfile(path):
        return False
    with open(path) as f:
        return json.load(f).get("settings") == json.loads(json.dumps(settings))


def build_family(method: str, teacher, layer_map, ks, patch_first_k_layers: bool, batches=None, laco_batches=None,
                 save_directory: str | None = None, laco_options: dict | None = None, calibration: dict | None = None):
    """Return ``[(k, depth, builder, info)]`` for one method. ``builder()`` returns the model.

    Calibration-dependent work (ShortGPT's Block Influence, LaCo's search) runs here, once, and is
    written under ``save_directory/<method>/`` (and reused by a rerun with the same settings).
    """


    depths = {k: layer_map.plan(k, patch_first_k_layers).depth for k in ks}
    out = []
    method_dir = os.path.join(save_directory, method) if save_directory else None
    if method == "naive":
        for k in ks:
            info = {"method": "naive", "num_layers_to_patch": k, "depth": depths[k],
                    "teacher_layers": naive_pruning_layers(layer_map, k, patch_first_k_layers)}
            out.append((k, depths[k], lambda k=k: build_naive_pruning_model(teacher, layer_map, k, patch_first_k_layers)[0], info))
        return out
    if method == "shortgpt":
        settings = {"calibration": calibration}
        path = os.path.join(method_dir, "block_influence.json") if method_dir else None
        if path and _settings_match(path, settings):
            with open(path) as f:
                bi = json.load(f)["block_influence"]
            log.info("ShortGPT: block influence reused from %s", path)
        else:
            t0 = time.time()
            bi = shortgpt.block_influence(teacher, batches)
            log.info("ShortGPT: block influence of %d layers in %.1f s", len(bi), time.time() - t0)
            if path:
                atomic_write_json(path, {"settings": settings, "block_influence": bi,
                                         "seconds": round(time.time() - t0, 1),
                                         "lowest_first": sorted(range(len(bi)), key=lambda i: (bi[i], -i))})
        for k in ks:
            d = depths[k]

            info = {"method": "shortgpt", "num_layers_to_patch": k, "depth": d, "teacher_layers": shortgpt.shortgpt_layers(bi, d)}
            out.append((k, d, lambda d=d: shortgpt.build_shortgpt_model(teacher, d, block_influences=bi)[0], info))
        return out
    if method == "laco":
        opts = dict(laco_options or {})
        settings = {"calibration": calibration, **{k: v for k, v in opts.items()}}
        path = os.path.join(method_dir, "search.json") if method_dir else None
        wanted = sorted(set(depths.values()))
        found = {}
        if path and _settings_match(path, settings):
            with open(path) as f:
                saved = json.load(f)
            found = {int(d): r for d, r in saved["depths"].items()}
            log.info("LaCo: search reused from %s (depths %s)", path, sorted(found))
        missing = [d for d in wanted if d not in found]
        if missing:
            t0 = time.time()
            search = LacoSearch(teacher, laco_batches, lowest_layer=opts["lowest_layer"], interval=opts["interval"])
            results = search.search(missing, merge_widths=opts["merge_widths"], thresholds=opts["thresholds"],
                                    refine_steps=opts["refine_steps"])
            for d, r in results.items():
                found[d] = r["record"]
            if path:
                atomic_write_json(path, {"settings": settings, "depths": {str(d): found[d] for d in sorted(found)},
                                         "search": search.summary(), "seconds": round(time.time() - t0, 1)})
            log.info("LaCo: searched depths %s in %.1f s (%d similarity evaluations)", missing, time.time() - t0,
                     search.evaluations)
        L = layer_map.num_teacher_layers
        teacher_layers = None
        for k in ks:
            d = depths[k]
            rec = found[d]
            chosen = rec["chosen"]
            info = {"method": "laco", "num_layers_to_patch": k, "depth": d, "groups": chosen["groups"],
                    "merges": chosen["merges"], "merge_width": chosen["merge_width"],
                    "threshold": chosen["threshold"], "calibration_similarity": chosen["similarity"]}

            def build(chosen=chosen):
                layers = list(adapter_for(teacher).get_layers(teacher))[:L]
                slots = replay(L, [tuple(m) for m in chosen["merges"]], layers)
                return build_laco_model(teacher, slots)[0]

            out.append((k, d, build, info))
        return out
    raise BaselineError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")


def family_points(method: str, entries, teacher_name: str, student_name: str, order: str, tokenizer_fn,
                  save_directory: str | None, dtype=None, overwrite: bool = False, listing_directory: str | None = None):
    """Save each model of a family (unless ``save_directory`` is None) and return evaluation points.

    A point's builder reloads the saved folder (so what is evaluated is what was written), or builds
    in memory when nothing is saved.
    """

    points, listing = [], []
    for k, depth, builder, info in entries:
        name = f"{method}_d{depth:02d}"
        meta = {"method": method, "curve": CURVES[method], "role": "intermediate", "order": order,
                "num_layers_to_patch": k, "depth": depth, "teacher": teacher_name, "student": student_name,
                **{key: v for key, v in info.items() if key not in ("method", "depth", "num_layers_to_patch")}}
        folder = os.path.join(save_directory, method, f"depth-{depth:02d}") if save_directory else None
        if folder is not None:
            if os.path.isfile(os.path.join(folder, METADATA_NAME)) and not overwrite:
                log.info("%s: %s exists, kept", name, folder)
            else:
                model = builder()
                if dtype is not None:
                    model = model.to(dtype)
                meta["parameters"] = count_parameters(model)
                save_baseline(model, tokenizer_fn(), folder, meta, overwrite=True)
                del model
                log.info("%s: written to %s", name, folder)
            meta = load_baseline_metadata(folder)
            listing.append({"name": name, "folder": folder, **meta})

            def build(folder=folder):
                return load_model(folder, dtype=dtype), tokenizer_fn()
        else:
            listing.append({"name": name, **meta})

            def build(builder=builder):
                model = builder()
                return (model.to(dtype) if dtype is not None else model), tokenizer_fn()

        points.append(SweepPoint(name, build, {k2: v for k2, v in meta.items() if k2 != "parameters"}))
    listing_directory = listing_directory or save_directory
    if listing_directory:
        atomic_write_json(os.path.join(listing_directory, method, "family.json"),
                          {"method": method, "models_saved": save_directory is not None, "points": listing})
    return points


# ----------------------------------------------------------------------------------- command line
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
    # Everything that can be wrong is checked before any weights load.
    try:
        dtype = dtype_from_name(args.dtype)
        teacher_path = resolve_model_path(args.teacher_model_name_or_path)
        student_path = resolve_model_path(args.student_model_name_or_path)
        t_cfg = load_config(teacher_path)
        adapter = adapter_for_config(t_cfg)
        if adapter.is_encoder:
            raise BaselineError(f"baselines are built for decoder LMs; {adapter.name} is an encoder")
        layer_map = load_layer_map(student_path, adapter.num_layers(t_cfg))

        order = patch_order(t_cfg, args.patch_first_k_layers, args.override_llama_patching)
        first_k = order == FIRST_K
        ks = parse_sizes(args.sizes, layer_map.max_patch)
        needs_data = [m for m in methods if m in ("shortgpt", "laco")]
        texts = None
        if needs_data:
            if not args.calibration_data:
                raise BaselineError(f"--method {' '.join(needs_data)} needs --calibration_data (a local file or dataset)")
            texts = load_texts(args.calibration_data, args.calibration_split, args.calibration_text_field,
                               args.calibration_dataset_config)
        widths = [int(c) for c in str(args.laco_merge_widths).split(",") if c.strip()]

        thresholds = (DEFAULT_THRESHOLDS if args.laco_thresholds is None else
                      tuple(float(t) for t in str(args.laco_thresholds).split(",") if t.strip()))
        if "laco" in methods and (not widths or min(widths) < 2):
            raise BaselineError(f"--laco_merge_widths {args.laco_merge_widths}: widths must be integers >= 2")
        boomerang_students = []
        for s in args.boomerang_student or []:
            sp = resolve_model_path(s)
            load_layer_map(sp, adapter.num_layers(t_cfg))
            boomerang_students.append((s, sp))
        taskset = ref_desc = None
        if args.heldout_kl is not None:
            if not os.path.isfile(args.heldout_kl):
                raise BaselineError(f"--heldout_kl {args.heldout_kl}: no such file")
            ref_desc = {"task": "heldout_kl", "data_file": os.path.abspath(args.heldout_kl),
                        "documents": args.heldout_docs, "max_tokens": args.heldout_max_tokens}
        limit = parse_limit(args.limit)
        if args.tasks or ref_desc:
            taskset = prepare_sweep_directory(os.path.join(args.save_directory, "eval"), args.tasks or None,
                                              limit=limit, max_doc_words=args.max_doc_words,
                                              reference=ref_desc)
    except (BoomerangError, ValueError) as e:  # BoomerangError: every library and stage error
        fail(str(e))
    log.info("methods %s; sizes k=%s -> depths %s (%s ladder of %s)", methods, ks,
             [layer_map.plan(k, first_k).depth for k in ks], order, args.student_model_name_or_path)
    teacher = load_model(teacher_path, dtype=torch.float32)
    tok_cache = {}

    def tokenizer_fn():
        if "t" not in tok_cache:
            tok_cache["t"] = load_tokenizer(teacher_path)
        return tok_cache["t"]

    batches = laco_batches = None
    calibration = None
    if texts is not None:
        batches = calibration_batches(texts, tokenizer_fn(), args.calibration_samples, args.calibration_seq_len,
                                      args.calibration_batch_size)
        laco_seqs = calibration_batches(texts, tokenizer_fn(), min(args.laco_calibration_samples, args.calibration_samples),
                                        args.laco_calibration_seq_len, args.calibration_batch_size)
        laco_batches = laco_seqs
        calibration = {"data": args.calibration_data, "split": args.calibration_split,
                       "samples": args.calibration_samples, "seq_len": args.calibration_seq_len,
                       "tokens": sum(int(b["attention_mask"].sum()) for b in batches)}
    laco_options = {"merge_widths": widths, "thresholds": list(thresholds), "refine_steps": args.laco_refine_steps,
                    "interval": args.laco_interval, "lowest_layer": args.laco_lowest_layer,
                    "samples": args.laco_calibration_samples, "seq_len": args.laco_calibration_seq_len}
    save_dir = None if args.no_save_models else args.save_directory
    os.makedirs(args.save_directory, exist_ok=True)
    all_points = []
    summary = {}
    for method in methods:
        t0 = time.time()
        try:
            entries = build_family(method, teacher, layer_map, ks, first_k, batches, laco_batches,
                                   args.save_directory, laco_options, calibration)
        except BaselineError as e:
            fail(str(e))
        pts = family_points(method, entries, args.teacher_model_name_or_path, args.student_model_name_or_path, order,
                            tokenizer_fn, save_dir, dtype=dtype, overwrite=args.overwrite,
                            listing_directory=args.save_directory)
        summary[method] = {"seconds": round(time.time() - t0, 1), "points": [p.name for p in pts]}
        all_points.extend(p for p in pts if p.metadata["depth"] != layer_map.num_teacher_layers)
        log.info("%s: %d models in %.1f s", method, len(pts), time.time() - t0)
    if taskset is not None:
        reference = None
        if args.heldout_kl is not None:
            reference = HeldoutReference(teacher, tokenizer_fn(), args.heldout_kl, args.heldout_docs,
                                         args.heldout_max_tokens)
        teacher_eval = teacher if dtype in (None, torch.float32) else load_model(teacher_path, dtype=dtype)
        points = [SweepPoint("teacher", lambda: (teacher_eval, tokenizer_fn()), {
            "method": "teacher", "curve": "teacher", "role": "teacher", "depth": layer_map.num_teacher_layers})]
        depths = {layer_map.plan(k, first_k).depth for k in ks}
        for s, sp in boomerang_students:
            student = load_model(sp, dtype=dtype)
            smap = load_layer_map(sp, layer_map.num_teacher_layers)
            student.boomerang_layer_map = smap
            sks = [k for k in range(smap.max_patch) if smap.plan(k, first_k).depth in depths]
            label = os.path.basename(os.path.normpath(s))
            for p in boomerang_points(teacher_eval, student, sks, first_k, dtype=dtype,
                                      include_endpoints=False, student_name=s, curve=f"boomerang ({label})"):
                p.name = f"boomerang_{label}_d{p.metadata['depth']:02d}".replace("-", "_")
                points.append(p)
        points.extend(all_points)
        summary["evaluation"] = run_sweep(points, os.path.join(args.save_directory, "eval"), taskset,
                                          limit=limit, max_doc_words=args.max_doc_words,
                                          batch_size=_parse_batch_size(args.eval_batch_size),
                                          max_length=args.max_length, device="cpu" if not torch.cuda.is_available() else None,
                                          common_metadata={"dtype": args.dtype}, reference=reference)

        try:
            table = comparison_table(os.path.join(args.save_directory, "eval"))
            atomic_write_text(os.path.join(args.save_directory, "comparison.md"), table)
            log.info("table written to %s", os.path.join(args.save_directory, "comparison.md"))
        except BaselineError as e:  # e.g. tasks without a perplexity
            log.info("no comparison table: %s", e)
    return summary


def comparison_table(eval_directory: str, metric: str = "token_perplexity", task: str | None = None) -> str:
    """A markdown table of one metric, one row per depth and one column per curve (naive pruning,
    ShortGPT, LaCo, boomerang, ...), from the result files of an evaluation folder."""

    records = load_results(eval_directory)
    if not records:
        raise BaselineError(f"no results in {eval_directory}/results")
    if task is None:
        task = next((t for r in records for t, ms in r.get("metrics", {}).items() if metric in ms), None)
        if task is None:
            raise BaselineError(f"no result in {eval_directory} has the metric {metric!r}")
    teacher = [r for r in records if r.get("role") == "teacher"]
    curves: list[str] = []
    cells: dict[tuple[int, str], float] = {}
    params: dict[int, int] = {}
    for r in records:
        v = r.get("metrics", {}).get(task, {}).get(metric, {}).get("value")
        if v is None or r.get("role") == "teacher":
            continue
        c = r.get("curve") or r.get("method")
        if c not in curves:
            curves.append(c)
        cells[int(r["depth"]), c] = v
        params.setdefault(int(r["depth"]), r.get("parameters", {}).get("total"))
    order = [CURVES[m] for m in METHODS if CURVES[m] in curves] + sorted(c for c in curves if c not in CURVES.values())
    lines = [f"{task} {metric} (lower is better)", "",
             "| depth | params (total) | " + " | ".join(order) + " |", "|---|---|" + "---|" * len(order)]
    for d in sorted({d for d, _ in cells}):
        row = [str(d), f"{params.get(d) or 0:,}"] + [fmt_number(cells.get((d, c)), style="g") for c in order]
        lines.append("| " + " | ".join(row) + " |")
    for t in teacher:
        v = t.get("metrics", {}).get(task, {}).get(metric, {}).get("value")
        lines.append(f"| {t['depth']} (teacher) | {t.get('parameters', {}).get('total', 0):,} | "
                     + " | ".join(fmt_number(v, style="g") for _ in order) + " |")
    return "\n".join(lines) + "\n"




if __name__ == "__main__":
    main()
