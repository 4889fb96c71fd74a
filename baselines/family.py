"""A baseline family: one method's models at the sizes of a boomerang ladder, and their model folders.

Under ``D/<method>/`` (``D`` a save directory): ``depth-XX/`` (a Hugging Face model folder with the
teacher's tokenizer and ``baseline.json``: the metadata and parameter counts), ``family.json`` (every
member's metadata) and the calibration-dependent work a rerun with the same settings reuses:
``shortgpt/block_influence.json`` (the Block Influences) and ``laco/search.json`` (every LaCo pass).
"""

from __future__ import annotations

import json
import logging
import os
import time

import torch

from baselines import BaselineError, shortgpt
from baselines.laco import LacoSearch, build_from_slots, replay
from baselines.naive import build_naive_pruning_model, naive_pruning_layers
from boomerang.families import adapter_for, count_parameters
from boomerang.io import atomic_write_json, save_model_folder
from boomerang.models import load_model

log = logging.getLogger("boomerang.baselines")

METADATA_NAME = "baseline.json"
CURVES = {"naive": "naive pruning", "shortgpt": "ShortGPT", "laco": "LaCo"}  # method -> its curve's label
METHODS = tuple(CURVES)


def calibration_batches(texts, tokenizer, num_samples: int = 32, seq_len: int = 256, batch_size: int = 8) -> list[dict]:
    """``num_samples`` sequences (the first ``seq_len`` tokens of one text each, in order), right-padded
    into batches with an attention mask (padding never counts)."""
    if num_samples < 1 or seq_len < 2 or batch_size < 1:
        raise BaselineError("calibration samples, batch size must be >= 1 and sequence length >= 2")
    seqs = []
    for t in texts:
        ids = tokenizer(t)["input_ids"][:seq_len]
        if len(ids) >= 2:
            seqs.append(torch.tensor(ids, dtype=torch.long))
        if len(seqs) == num_samples:
            break
    if not seqs:
        raise BaselineError("no calibration text is at least 2 tokens long")
    if len(seqs) < num_samples:
        log.warning("only %d calibration sequences available (asked for %d)", len(seqs), num_samples)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    chunks = [seqs[i: i + batch_size] for i in range(0, len(seqs), batch_size)]
    return [{"input_ids": torch.nn.utils.rnn.pad_sequence(c, batch_first=True, padding_value=pad),
             "attention_mask": torch.nn.utils.rnn.pad_sequence([torch.ones_like(s) for s in c], batch_first=True)}
            for c in chunks]


def _cached(path: str | None, settings: dict) -> dict | None:
    """The JSON file at ``path`` when it was written with these settings."""
    if not path or not os.path.isfile(path):
        return None
    with open(path) as f:
        saved = json.load(f)
    return saved if saved.get("settings") == json.loads(json.dumps(settings)) else None


def build_family(method: str, teacher, layer_map, ks, patch_first_k_layers: bool, batches=None, laco_batches=None,
                 save_directory: str | None = None, laco_options: dict | None = None, calibration: dict | None = None):
    """``[(k, depth, builder, info)]`` for one method: ``builder()`` returns the model, ``info`` what it holds.

    Calibration-dependent work (ShortGPT's Block Influence, LaCo's search) runs here, once, and is
    written under ``save_directory/<method>/`` (and reused by a rerun with the same settings).
    """
    depths = {k: layer_map.plan(k, patch_first_k_layers).depth for k in ks}
    folder = os.path.join(save_directory, method) if save_directory else None
    t0 = time.time()
    if method == "naive":
        def member(k, d):
            return (lambda: build_naive_pruning_model(teacher, layer_map, k, patch_first_k_layers)[0],
                    {"teacher_layers": naive_pruning_layers(layer_map, k, patch_first_k_layers)})
    elif method == "shortgpt":
        settings = {"calibration": calibration}
        path = folder and os.path.join(folder, "block_influence.json")
        if saved := _cached(path, settings):
            bi = saved["block_influence"]
            log.info("ShortGPT: block influence reused from %s", path)
        else:
            bi = shortgpt.block_influence(teacher, batches)
            log.info("ShortGPT: block influence of %d layers in %.1f s", len(bi), time.time() - t0)
            if path:
                atomic_write_json(path, {"settings": settings, "block_influence": bi,
                                         "seconds": round(time.time() - t0, 1),
                                         "lowest_first": sorted(range(len(bi)), key=lambda i: (bi[i], -i))})

        def member(k, d):
            return (lambda: shortgpt.build_shortgpt_model(teacher, d, block_influences=bi)[0],
                    {"teacher_layers": shortgpt.shortgpt_layers(bi, d)})
    elif method == "laco":
        opts = laco_options or {}
        settings = {"calibration": calibration, **opts}
        path = folder and os.path.join(folder, "search.json")
        saved = _cached(path, settings)
        found = {int(d): r for d, r in saved["depths"].items()} if saved else {}
        if saved:
            log.info("LaCo: search reused from %s (depths %s)", path, sorted(found))
        missing = sorted({d for d in depths.values() if d not in found})
        if missing:
            search = LacoSearch(teacher, laco_batches, lowest_layer=opts["lowest_layer"], interval=opts["interval"])
            found.update((d, r["record"]) for d, r in search.search(
                missing, merge_widths=opts["merge_widths"], thresholds=opts["thresholds"],
                refine_steps=opts["refine_steps"]).items())
            if path:
                atomic_write_json(path, {"settings": settings, "depths": {str(d): found[d] for d in sorted(found)},
                                         "search": search.summary(), "seconds": round(time.time() - t0, 1)})
            log.info("LaCo: searched depths %s in %.1f s (%d similarity evaluations)", missing, time.time() - t0,
                     search.evaluations)

        def member(k, d):
            chosen = found[d]["chosen"]
            layers = adapter_for(teacher).get_layers(teacher)
            return (lambda: build_from_slots(teacher, replay(layer_map.num_teacher_layers, chosen["merges"], layers)),
                    {"groups": chosen["groups"], "merges": chosen["merges"], "merge_width": chosen["merge_width"],
                     "threshold": chosen["threshold"], "calibration_similarity": chosen["similarity"]})
    else:
        raise BaselineError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    return [(k, depths[k], *member(k, depths[k])) for k in ks]


def load_baseline_metadata(folder: str | os.PathLike) -> dict:
    path = os.path.join(os.fspath(folder), METADATA_NAME)
    if not os.path.isfile(path):
        raise BaselineError(f"{path} not found: not a baseline model folder written by `python -m evaluate.baselines`")
    with open(path) as f:
        return json.load(f)


def save_family(method: str, entries, teacher_name: str, student_name: str, order: str, tokenizer_fn,
                save_directory: str | None, dtype=None, overwrite: bool = False, listing_directory: str | None = None):
    """``[(name, build, metadata)]`` for the entries of :func:`build_family`; ``build()`` returns the model.

    With ``save_directory`` each model is written to ``<save_directory>/<method>/depth-XX/`` (an existing folder
    is kept unless ``overwrite``) and ``build()`` reloads it, so what is evaluated is what was written; without,
    ``build()`` builds in memory. ``family.json`` goes to ``<listing_directory or save_directory>/<method>/``.
    """
    members, listing = [], []
    for k, depth, builder, info in entries:
        name = f"{method}_d{depth:02d}"
        meta = {"method": method, "curve": CURVES[method], "role": "intermediate", "order": order,
                "num_layers_to_patch": k, "depth": depth, "teacher": teacher_name, "student": student_name, **info}
        if save_directory is None:
            def build(builder=builder):
                model = builder()
                return model if dtype is None else model.to(dtype)
            listing.append({"name": name, **meta})
        else:
            folder = os.path.join(save_directory, method, f"depth-{depth:02d}")
            if os.path.isfile(os.path.join(folder, METADATA_NAME)) and not overwrite:
                log.info("%s: %s exists, kept", name, folder)
            else:
                model = builder() if dtype is None else builder().to(dtype)
                save_model_folder(model, tokenizer_fn(), folder, METADATA_NAME,
                                  {**meta, "parameters": count_parameters(model)}, overwrite=True)
                del model
                log.info("%s: written to %s", name, folder)
            meta = load_baseline_metadata(folder)
            listing.append({"name": name, "folder": folder, **meta})

            def build(folder=folder):
                return load_model(folder, dtype=dtype)
        members.append((name, build, meta))
    if listing_directory or save_directory:
        atomic_write_json(os.path.join(listing_directory or save_directory, method, "family.json"),
                          {"method": method, "models_saved": save_directory is not None, "points": listing})
    return members
