"""Patching: replace student layers by their teacher blocks to build a bigger model, with no training.

    from patching.patch import build_intermediate_model
    model, tokenizer = build_intermediate_model("Qwen/Qwen3-4B-Base", "runs/qwen3-student", 4)

``num_layers_to_patch`` (k) counts student layers that stand for multi-layer teacher blocks.
Last-k (the paper's order for Qwen and Pythia) replaces the last k such blocks (and the 1:1 layers
after them) and takes the teacher's final norm and LM head; first-k (the paper's order for Llama)
replaces the first k blocks (and the 1:1 layers before them) and takes the teacher's input
embeddings. k = 0 is the student's size, k = max the teacher itself. The commands follow the paper's
rule (``boomerang.families.patch_order``): first-k for Llama teachers, last-k for the others,
``--patch_first_k_layers`` / ``--override_llama_patching`` to choose; the Python functions take the
order as an argument (``patch_first_k_layers=False``: last-k).

Command line (writes loadable model folders with a ``boomerang_provenance.json``)::

    python -m patching.patch --teacher_model_name_or_path T --student_model_name_or_path S \\
        --save_directory D (--num_layers_to_patch K | --blocks 3,7,9 | --target_params 100M | --all) \\
        [--patch_first_k_layers] [--dtype bfloat16] [--overwrite]

With ``--all`` D holds one folder per size (``last-k03-19L``) plus ``family.md`` / ``family.csv``.
"""

from __future__ import annotations

import argparse
import csv
import gc
import io
import json
import logging
import math
import os
import re
import signal
import sys
import time
from typing import Iterable

import torch

from tqdm.auto import tqdm

from boomerang.assemble import (SAFETENSORS_DTYPES, CheckpointSource, LayerRef, ModelSource, Source, _empty_model,
                                as_source, assemble)
from boomerang.cli import fail, parse_with_config, setup_logging
from boomerang.errors import BoomerangError
from boomerang.families import FIRST_K, count_parameters, dtype_from_name, patch_order, set_tie
from boomerang.io import atomic_write_text, markdown_table, save_model_folder
from boomerang.layer_map import LayerMap, LayerMapError, PatchPlan, format_layers
from boomerang.models import find_tokenizer, load_model, load_tokenizer, resolve_model_path
from boomerang.scoring import TeacherReference, fixed_length_sequences
from boomerang.text import read_local_documents
from patching.frontier import as_frontier_plan, scored_entries

log = logging.getLogger("boomerang.patch")

PROVENANCE_NAME = "boomerang_provenance.json"


class PatchError(BoomerangError):
    pass


# ---------------------------------------------------------------------------------------------- sources
def _source_path(src) -> str | None:
    """The folder a source (or loaded model) was read from, if it has one."""
    if isinstance(src, ModelSource):
        src = src.model
    path = getattr(src, "path", None) if isinstance(src, Source) else getattr(src, "name_or_path", None)
    return path if path and os.path.isdir(path) else None


class FileReadSource(CheckpointSource):
    """A safetensors folder whose tensors are read with plain file reads, each into its own memory.

    ``safe_open`` hands out tensors backed by a memory map of the whole file: every page a read
    touches stays resident (and counted in the process's memory) as long as the file is open, even
    when the tensor is dropped right after a cast to another dtype. Here a tensor is read into
    memory of its own; with ``dtype`` set, floating-point tensors are cast while they are read,
    ``CHUNK`` bytes at a time, so building a bfloat16 model from float32 checkpoints costs the
    bfloat16 result, not the float32 tensors.
    """

    CHUNK = 16 * 2**20

    def __init__(self, path: str, name: str | None = None, dtype: torch.dtype | None = None):
        super().__init__(path, name)
        self.dtype = dtype

    def get(self, key: str) -> torch.Tensor:
        fn, raw = self._where[key]
        entry = self.layout(fn)[0][raw]
        dtype, shape = SAFETENSORS_DTYPES.get(entry["dtype"]), entry["shape"]
        cast = self.dtype is not None and dtype is not None and dtype.is_floating_point and dtype != self.dtype
        if dtype is None or not shape:  # a rare dtype or a scalar: through safetensors
            t = super().get(key)
            return t.to(self.dtype) if cast else t
        if not cast:
            return self.get_rows(key, 0, shape[0])
        out = torch.empty(shape, dtype=self.dtype)
        step = max(1, self.CHUNK // (math.prod(shape[1:]) * dtype.itemsize or 1))  # rows per read
        for i in range(0, shape[0], step):
            out[i:i + step] = self.get_rows(key, i, i + step)
        return out


def open_source(ref, role: str, dtype: torch.dtype | None = None) -> Source:
    """A weight source for ``ref``: an in-memory model (tensors shared), a ``Source`` (returned as is),
    or a name/folder (safetensors read tensor by tensor, cast to ``dtype`` while read; a folder
    without safetensors is loaded whole)."""
    if isinstance(ref, Source):
        return ref
    if isinstance(ref, torch.nn.Module):
        return as_source(ref, name=getattr(ref, "name_or_path", None) or role)
    path = resolve_model_path(ref)
    try:
        return FileReadSource(path, name=str(ref), dtype=dtype)
    except FileNotFoundError:  # .bin-only folder: no lazy reading possible
        log.warning("%s has no safetensors weights: loading the whole %s model", ref, role)
        return as_source(load_model(path, dtype=None), name=str(ref))


def load_layer_map(student, teacher_depth: int | None = None) -> LayerMap:
    """The student's layer map: from its folder, or from the ``boomerang_layer_map`` attribute of a loaded model."""
    if not isinstance(student, (Source, torch.nn.Module)):
        return LayerMap.load(resolve_model_path(student), teacher_depth)
    lm = getattr(student.model if isinstance(student, ModelSource) else student, "boomerang_layer_map", None)
    if lm is None:
        path = _source_path(student)
        if path is None:
            raise PatchError("the student carries no layer map: load it from its folder (which holds "
                             "student_config.json) or set model.boomerang_layer_map = LayerMap.load(folder)")
        return LayerMap.load(path, teacher_depth)
    if teacher_depth is not None and lm.num_teacher_layers != teacher_depth:
        raise PatchError(f"the student was distilled from a {lm.num_teacher_layers}-layer teacher, but the teacher "
                         f"given has {teacher_depth} layers: pass the teacher the student was made from")
    return lm


def check_pair(teacher: Source, student: Source, layer_map: LayerMap) -> None:
    """Fail early, with a message, when the student cannot have been made from this teacher."""
    t_cfg, s_cfg = teacher.config, student.config
    if teacher.adapter is not student.adapter:
        raise PatchError(f"teacher is a {teacher.adapter.name} model but the student a {student.adapter.name} model")
    t_depth, s_depth = teacher.adapter.num_layers(t_cfg), student.adapter.num_layers(s_cfg)
    if layer_map.num_teacher_layers != t_depth:
        raise PatchError(f"the student's student_config.json describes a {layer_map.num_teacher_layers}-layer "
                         f"teacher, but {teacher.name} has {t_depth} layers: pass the teacher the student was "
                         "distilled from")
    if layer_map.num_student_layers != s_depth:
        raise PatchError(f"student_config.json lists {layer_map.num_student_layers} copied layers but the student "
                         f"model has {s_depth} layers")
    for field in ("hidden_size", "vocab_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
                  "head_dim"):
        a, b = getattr(t_cfg, field, None), getattr(s_cfg, field, None)
        if a is not None and b is not None and a != b:
            raise PatchError(f"teacher and student differ in {field} ({a} vs {b}): they are not a boomerang pair "
                             "(the student must be made from this teacher by train.init_student)")


def _open_pair(args, dtype) -> tuple[Source, Source, LayerMap]:
    """The command line's teacher and student sources and layer map, checked; no weights read."""
    teacher = open_source(args.teacher_model_name_or_path, "teacher", dtype)
    student = open_source(args.student_model_name_or_path, "student", dtype)
    layer_map = load_layer_map(student, teacher.adapter.num_layers(teacher.config))
    check_pair(teacher, student, layer_map)
    return teacher, student, layer_map


# ---------------------------------------------------------------------------------------------- plans
def plan_for(layer_map: LayerMap, num_layers_to_patch: int | None = None, patch_first_k_layers: bool = False,
             blocks: Iterable[int] | None = None, embeddings_from: str | None = None,
             head_from: str | None = None) -> PatchPlan:
    """The plan of one patched model: the paper's order (``num_layers_to_patch``) or any set of ``blocks``.

    With ``blocks`` the parts follow the blocks unless given: the teacher's head (and final norm)
    when the student's last layer is replaced, the teacher's embeddings when its first is. With this
    rule the blocks of any last-k or first-k plan (k >= 1) give back that same plan.
    """
    try:
        if blocks is None:
            return layer_map.plan(num_layers_to_patch, patch_first_k_layers)
        blocks = sorted(set(int(b) for b in blocks))
        emb = embeddings_from or ("teacher" if 0 in blocks else "student")
        head = head_from or ("teacher" if (layer_map.num_student_layers - 1) in blocks else "student")
        return layer_map.plan_blocks(blocks, emb, head)
    except LayerMapError as e:
        raise PatchError(str(e)) from None


def _plan_parts(teacher: Source, student: Source, plan: PatchPlan):
    sources = {"teacher": teacher, "student": student}
    layers = [LayerRef(sources[src], i) for src, i in plan.layers]
    parts = {"embeddings": sources[plan.embeddings_from], "final_norm": sources[plan.final_norm_from],
             "lm_head": sources[plan.lm_head_from]}
    return sources[plan.lm_head_from], layers, parts


def assemble_plan(teacher: Source, student: Source, plan: PatchPlan, dtype: torch.dtype | None = None,
                  copy_untied_head: bool = True):
    """The patched model of ``plan`` from two weight sources (``copy_untied_head`` as in ``assemble``)."""
    return assemble(*_plan_parts(teacher, student, plan), dtype=dtype, copy_untied_head=copy_untied_head)


def plan_config(teacher: Source, student: Source, plan: PatchPlan):
    """The config the patched model of ``plan`` will have (the same rules as ``assemble``), no weights."""
    base, layers, parts = _plan_parts(teacher, student, plan)
    config = base.adapter.config_for_layers(base.config, [(r.source.config, r.index) for r in layers])
    set_tie(config, parts["embeddings"] is parts["lm_head"] and parts["lm_head"].tied())
    return config


def count_plan_parameters(teacher: Source, student: Source, plan: PatchPlan) -> dict[str, int]:
    """``count_parameters`` of the patched model, computed on a weightless (meta-device) model."""
    config = plan_config(teacher, student, plan)
    model = _empty_model(config, teacher.adapter, None)
    if config.tie_word_embeddings:  # a model built on the meta device is tied only when asked
        model.tie_weights()
    return count_parameters(model, teacher.adapter)


def _parse_amount(text, units: dict[str, float], error: str) -> float:
    """A number with an optional unit (case-insensitive; ``""``: the number as is) times that unit's factor."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][0-9]+)?)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).upper() not in units:
        raise PatchError(error)
    return float(m.group(1)) * units[m.group(2).upper()]


def parse_param_count(text) -> int:
    """``"100M"`` -> 100_000_000; also ``1.5B``, ``500k``, ``135e6``, ``98765``."""
    if isinstance(text, (int, float)):
        return int(text)
    units = {"": 1, "K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12}
    return int(round(_parse_amount(text, units, f"cannot read a parameter count from {text!r}; write e.g. 100M, "
                                                "1.5B, 500K or 135000000")))


def parse_memory_gb(text) -> float:
    """``"1.5"``, ``"1.5GB"``, ``"1536MB"`` -> GiB (binary units: 1 GB here is 2**30 bytes)."""
    units = {"": 1, "GB": 1, "GIB": 1, "G": 1, "MB": 1 / 1024, "MIB": 1 / 1024, "M": 1 / 1024}
    return _parse_amount(text, units, f"--max_memory_gb {text!r}: expected a number of GB such as 0.5, 2 or 512MB")


def parse_latency_ms(text) -> float:
    return _parse_amount(text, {"": 1, "MS": 1, "S": 1000},
                         f"--max_latency_ms {text!r}: expected milliseconds such as 250 or 250ms (or 0.25s)")


def human_count(n: int) -> str:
    for unit, div in (("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= div:
            return f"{n / div:.1f}{unit}"
    return str(n)


def plan_for_target(teacher: Source, student: Source, layer_map: LayerMap, target_params, patch_first_k_layers=False,
                    kind: str = "total") -> tuple[int, PatchPlan, dict[str, int]]:
    """The largest model of one order whose ``kind`` ("total" or "non_embedding") parameter count is at
    most ``target_params``: ``(k, plan, counts)``. "Largest" is by that count, not by k: the full
    teacher (tied head) can be smaller than the size before it (untied). No weights are read."""
    target = parse_param_count(target_params)
    if kind not in ("total", "non_embedding"):
        raise PatchError(f"kind must be 'total' or 'non_embedding', got {kind!r}")
    best, sizes = None, []
    for k, plan in enumerate(layer_map.ladder(patch_first_k_layers)):
        counts = count_plan_parameters(teacher, student, plan)
        sizes.append(counts[kind])
        if counts[kind] <= target and (best is None or counts[kind] >= best[2][kind]):
            best = (k, plan, counts)
    if best is None:
        raise PatchError(
            f"no patched model has at most {human_count(target)} {kind} parameters: the smallest of this order has "
            f"{human_count(min(sizes))} ({min(sizes)}); sizes are {', '.join(human_count(s) for s in sizes)}")
    return best


# ---------------------------------------------------------------------------------------------- building
def build_intermediate_model(
    teacher_name_or_path,
    student_name_or_path,
    num_layers_to_patch: int | None = None,
    patch_first_k_layers: bool = False,
    dtype: torch.dtype | str | None = torch.bfloat16,
    blocks: Iterable[int] | None = None,
    return_plan: bool = False,
    target_params=None,
    embeddings_from: str | None = None,
    head_from: str | None = None,
):
    """Build the interpolated model that patches ``num_layers_to_patch`` teacher blocks into the student.

    Teacher and student may be hub names, local folders, already-loaded models or ``Source``
    objects (a sweep opens them once). From folders only the tensors the result needs are read;
    from loaded models tensors are shared, not copied (cast only when ``dtype`` differs; ``None``
    keeps the sources' dtype). Exactly one of ``num_layers_to_patch`` (the paper's orders),
    ``blocks`` (replace exactly those student layers) and ``target_params`` (the largest model of
    the order with at most that many parameters, e.g. ``"100M"``) is given. Returns
    ``(model, tokenizer)`` (and the ``PatchPlan`` with ``return_plan``); the tokenizer is the
    teacher's (or, for an in-memory teacher, the one saved in the student's folder), ``None`` when
    neither has a folder. Every check runs before any weight is read.
    """
    if sum(x is not None for x in (num_layers_to_patch, blocks, target_params)) != 1:
        raise PatchError("give exactly one of num_layers_to_patch, blocks and target_params")
    dtype = dtype_from_name(dtype)
    teacher = open_source(teacher_name_or_path, "teacher", dtype)
    try:
        layer_map = load_layer_map(student_name_or_path, teacher.adapter.num_layers(teacher.config))
    except LayerMapError as e:
        raise PatchError(str(e)) from None
    if target_params is None:  # before the student is opened: a .bin-only one is loaded whole
        plan = plan_for(layer_map, num_layers_to_patch, patch_first_k_layers, blocks, embeddings_from, head_from)
    student = open_source(student_name_or_path, "student", dtype)
    check_pair(teacher, student, layer_map)
    if target_params is not None:
        _, plan, _ = plan_for_target(teacher, student, layer_map, target_params, patch_first_k_layers)
    model = assemble_plan(teacher, student, plan, dtype)
    model.boomerang_plan = plan
    tokenizer = find_tokenizer(_source_path(teacher), _source_path(student))
    return (model, tokenizer, plan) if return_plan else (model, tokenizer)


# ---------------------------------------------------------------------------------------------- saving
def provenance(plan: PatchPlan, layer_map: LayerMap, teacher_name: str, student_name: str, counts: dict,
               num_layers_to_patch: int | None = None, order: str | None = None, dtype=None) -> dict:
    """What a patched model is made of, in plain JSON."""
    keep = layer_map.copied_teacher_layers
    return {
        "teacher": teacher_name,
        "student": student_name,
        "order": order,
        "num_layers_to_patch": num_layers_to_patch,
        "replaced_blocks": list(plan.replaced_blocks),
        "replaced_teacher_blocks": [list(layer_map.blocks[j]) for j in plan.replaced_blocks],
        "teacher_layers_present": plan.teacher_layers(),
        "student_layers_present": plan.student_layers(),
        # Position i of the result and the teacher layer it is (teacher) or was copied from (student).
        "layers": [{"source": s, "index": i, "teacher_layer": i if s == "teacher" else keep[i]} for s, i in plan.layers],
        "embeddings_from": plan.embeddings_from,
        "final_norm_from": plan.final_norm_from,
        "lm_head_from": plan.lm_head_from,
        "depth": plan.depth,
        "num_teacher_layers": layer_map.num_teacher_layers,
        "num_student_layers": layer_map.num_student_layers,
        "copied_teacher_layers": list(keep),
        "parameters": dict(counts),
        "dtype": None if dtype is None else str(dtype).replace("torch.", ""),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def save_patched_model(model, tokenizer, save_directory: str, info: dict, overwrite: bool = False) -> str:
    """Write a loadable model folder atomically: weights, config, tokenizer, ``boomerang_provenance.json``."""
    return save_model_folder(model, tokenizer, save_directory, PROVENANCE_NAME, info, overwrite)


def model_folder_name(plan: PatchPlan, k: int | None, order: str | None) -> str:
    if k is not None and order:
        return f"{order.split('-')[0]}-k{k:02d}-{plan.depth}L"  # last-k03-19L, first-k03-19L
    return f"blocks-{'_'.join(map(str, plan.replaced_blocks)) or 'none'}-{plan.depth}L"


TABLE_COLUMNS = ["name", "k", "size", "depth", "total_parameters", "non_embedding_parameters", "replaced_blocks",
                 "teacher_layers"]


def table_row(name: str, info: dict) -> dict:
    params = info["parameters"]
    return {"name": name, "k": info.get("num_layers_to_patch"), "size": human_count(params["total"]),
            "depth": info["depth"], "total_parameters": params["total"],
            "non_embedding_parameters": params["non_embedding"],
            "replaced_blocks": format_layers(info["replaced_blocks"]) or "-",
            "teacher_layers": format_layers([x["teacher_layer"] for x in info["layers"]])}


def table_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=TABLE_COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------- searched plans and budgets
def load_plan(path: str) -> dict:
    if os.path.isdir(path):
        path = os.path.join(path, "search.json")
    if not os.path.isfile(path):
        raise PatchError(f"--plan {path}: no such file (write one with python -m patching.search)")
    with open(path) as f:
        plan = json.load(f)
    if not isinstance(plan, dict) or not plan.get("ladder"):
        raise PatchError(f"--plan {path}: not a search result (no 'ladder'); write one with python -m patching.search")
    return as_frontier_plan(plan)  # a search.json from before the frontier: its frontier rebuilt from its candidates


def plan_of(e: dict) -> PatchPlan:
    layers = tuple((src, int(i)) for src, i in e["layers"])
    return PatchPlan(layers, e["embeddings_from"], e["final_norm_from"], e["lm_head_from"],
                     tuple(j for j, c in enumerate(e.get("blocks", [])) if c.startswith("T")))


def entry_memory_bytes(teacher_src, student_src, e: dict, batch_size: int, context_length: int,
                       bytes_per_value: int) -> int:
    """Weights plus the KV cache of ``batch_size`` sequences of ``context_length`` tokens (from the config)."""
    cfg = plan_config(teacher_src, student_src, plan_of(e))
    return e["params"] * bytes_per_value + teacher_src.adapter.kv_cache_bytes(cfg, batch_size, context_length,
                                                                              bytes_per_value)


@torch.no_grad()
def measure_latency_ms(model, batch_size: int, context_length: int, repeats: int = 3) -> float:
    """Median wall time of one forward pass over ``batch_size`` x ``context_length`` tokens on the model's device."""
    device = next(model.parameters()).device
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    ids = torch.randint(0, model.config.vocab_size, (batch_size, context_length), device=device,
                        generator=torch.Generator(device=device.type).manual_seed(0))
    model(input_ids=ids)  # warm-up
    times = []
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        model(input_ids=ids)
        sync()
        times.append((time.perf_counter() - t) * 1000)
    return sorted(times)[len(times) // 2]


def check_budget(plan: dict, target_params=None, max_memory_gb=None, max_latency_ms=None) -> dict:
    """Parse the one budget given and check it against the plan's sizes; reads no weights."""
    if sum(x is not None for x in (target_params, max_memory_gb, max_latency_ms)) != 1:
        raise PatchError("with --plan give exactly one budget: --target_params N, --max_memory_gb G or "
                         "--max_latency_ms MS")
    if target_params is not None:
        ladder = plan["ladder"]
        student = next((e for e in plan["fixed_orders"]["last-k"] if e.get("k") == 0), None)
        smallest = min(e["params"] for e in ladder)
        teacher = next((e for e in scored_entries(plan) if e["depth"] == plan["num_teacher_layers"] and all(
            src == "teacher" for src, _ in e["layers"]) and e["embeddings_from"] == "teacher"), None)
        if teacher is None:
            raise PatchError(f"--plan: {plan.get('teacher', 'the search result')} lists no teacher model; write it "
                             "again with python -m patching.search")
        try:
            n = parse_param_count(target_params)
        except PatchError as e:
            raise PatchError(f"--target_params: {e}") from None
        if n < smallest:
            raise PatchError(f"--target_params {target_params}: below the smallest model of the plan "
                             f"({smallest:,} parameters{'' if student is None else ', the student side'}); "
                             "nothing this pair assembles is that small")
        if n >= teacher["params"]:
            raise PatchError(f"--target_params {target_params}: the teacher itself ({teacher['params']:,} parameters) "
                             "fits this budget; use the teacher, or a smaller budget")
        return {"kind": "params", "value": n}
    if max_memory_gb is not None:
        flag, text, kind, value = "--max_memory_gb", max_memory_gb, "memory", parse_memory_gb(max_memory_gb)
    else:
        flag, text, kind, value = "--max_latency_ms", max_latency_ms, "latency", parse_latency_ms(max_latency_ms)
    if value <= 0:
        raise PatchError(f"{flag} {text}: must be positive")
    return {"kind": kind, "value": value}


def choose(plan: dict, budget: dict, teacher_src=None, student_src=None, batch_size: int = 1,
           context_length: int = 2048, dtype: torch.dtype = torch.float32, latency_of=None) -> dict:
    """The searched model with the lowest calibration KL whose size fits ``budget`` (from check_budget).

    Parameters and latency: from the ladder (the frontier in parameters; latency ``latency_of(entry)`` in ms,
    measured by the caller on its device). Memory: weights + KV cache from the config, over every scored model
    (the frontier in memory for this dtype, batch and context: a deeper model can be smaller in parameters and
    larger in KV cache). Returns the entry with ``predicted`` figures added."""
    bpv = torch.finfo(dtype).bits // 8
    fits = []
    for e in scored_entries(plan) if budget["kind"] == "memory" else plan["ladder"]:
        figures = {"params": e["params"]}
        if budget["kind"] == "memory":
            figures["memory_gb"] = entry_memory_bytes(teacher_src, student_src, e, batch_size, context_length,
                                                      bpv) / 2**30
        elif budget["kind"] == "latency":
            figures["latency_ms"] = latency_of(e)
        if list(figures.values())[-1] <= budget["value"]:  # the figure last added is the one the budget bounds
            fits.append((e["calibration_kl"], -e["params"], e, figures))
    if not fits:
        what = {"params": "parameters", "memory": "GB of weights and KV cache", "latency": "ms"}[budget["kind"]]
        raise PatchError(f"no model of the plan fits {budget['value']:g} {what} (batch {batch_size}, context "
                         f"{context_length}); the smallest is the first ladder entry ({plan['ladder'][0]['params']:,} "
                         "parameters)")
    _, _, e, figures = min(fits, key=lambda x: x[:2])
    return {**e, "predicted": figures, "budget": budget}


# ---------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m patching.patch", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher_model_name_or_path", required=True, help="hub name, local folder, or embedded:smollm2-135m")
    p.add_argument("--student_model_name_or_path", required=True, help="student folder (holds student_config.json)")
    p.add_argument("--save_directory", required=True,
                   help="the model folder (one model), or the folder of model folders and tables (--all)")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--num_layers_to_patch", type=int, help="k: multi-layer blocks to take from the teacher")
    what.add_argument("--blocks", help="comma-separated student layers to replace by their teacher blocks, e.g. 3,7,9")
    what.add_argument("--target_params", help="largest model of the order with at most this many parameters (100M, 1.5B); "
                                              "with --plan: the best searched model with at most that many")
    what.add_argument("--all", action="store_true", help="every size of the order, k = 0..max, plus a table")
    what.add_argument("--max_memory_gb", help="with --plan: the best searched model whose weights and KV cache "
                                              "(--batch_size x --context_length tokens, --dtype) fit in G GiB")
    what.add_argument("--max_latency_ms", help="with --plan: the best searched model whose forward pass over "
                                               "--batch_size x --context_length tokens takes at most MS here")
    p.add_argument("--plan", default=None, help="a search result (python -m patching.search): search.json or its folder")
    p.add_argument("--batch_size", type=int, default=1, help="for --max_memory_gb and --max_latency_ms")
    p.add_argument("--context_length", type=int, default=2048, help="for --max_memory_gb and --max_latency_ms")
    p.add_argument("--patch_first_k_layers", action="store_true",
                   help="first-k order (default for Llama teachers, as in the paper; last-k for the others)")
    p.add_argument("--override_llama_patching", action="store_true", help="last-k order for a Llama teacher")
    p.add_argument("--target_kind", default="total", choices=["total", "non_embedding"],
                   help="which parameter count --target_params bounds")
    p.add_argument("--dtype", default="bfloat16", help="float32, bfloat16, float16 or auto (keep the checkpoints')")
    p.add_argument("--overwrite", action="store_true", help="replace existing output folders")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    return p


def _same_model_in(folder: str, info: dict) -> dict | None:
    """The provenance of a model already in ``folder`` when it is the model ``info`` describes, else None."""
    path = os.path.join(folder, PROVENANCE_NAME)
    if not os.path.isfile(path) or not os.path.isfile(os.path.join(folder, "config.json")):
        return None
    with open(path) as f:
        old = json.load(f)
    keys = ("teacher", "student", "layers", "embeddings_from", "lm_head_from", "dtype")
    return old if all(old.get(k) == info.get(k) for k in keys) else None


def main(argv=None) -> list[str]:
    args = parse_with_config(build_parser(), argv)
    setup_logging()
    if args.plan is not None:
        return main_plan(args)
    if args.max_memory_gb is not None or args.max_latency_ms is not None:
        fail("--max_memory_gb and --max_latency_ms choose from a search result: add --plan search.json "
             "(python -m patching.search writes one)")
    if args.num_layers_to_patch is None and args.blocks is None and args.target_params is None and not args.all:
        fail("say which model: --num_layers_to_patch K, --blocks 3,7,9, --target_params N, --all, or --plan FILE "
             "with a budget")
    # ---- every check before any weight is read
    if not args.all and os.path.exists(args.save_directory) and not args.overwrite:
        fail(f"--save_directory {args.save_directory} already exists; choose another folder or pass --overwrite")
    if args.all and os.path.isfile(args.save_directory):
        fail(f"--save_directory {args.save_directory} is a file; --all needs a folder")
    try:
        dtype = dtype_from_name(args.dtype)
        teacher, student, layer_map = _open_pair(args, dtype)
        order = patch_order(teacher.config, args.patch_first_k_layers, args.override_llama_patching)
        first_k = order == FIRST_K
        if args.all:
            jobs = list(enumerate(layer_map.ladder(first_k)))
        elif args.num_layers_to_patch is not None:
            jobs = [(args.num_layers_to_patch, plan_for(layer_map, args.num_layers_to_patch, first_k))]
        elif args.blocks is not None:
            try:
                blocks = [int(b) for b in args.blocks.replace(" ", "").split(",") if b != ""]
            except ValueError:
                raise PatchError(f"--blocks {args.blocks!r}: expected comma-separated student layer indices, e.g. 3,7,9")
            jobs = [(None, plan_for(layer_map, blocks=blocks))]
        else:
            jobs = [plan_for_target(teacher, student, layer_map, args.target_params, first_k, args.target_kind)[:2]]
    except (BoomerangError, ValueError, FileNotFoundError) as e:  # BoomerangError: every library and stage error
        fail(str(e))
    tokenizer = find_tokenizer(_source_path(teacher), _source_path(student))
    written, rows = [], []
    bar = tqdm(jobs, desc="patching", unit="model", disable=args.no_progress)
    for k, plan in bar:
        counts = count_plan_parameters(teacher, student, plan)
        info = provenance(plan, layer_map, args.teacher_model_name_or_path, args.student_model_name_or_path, counts,
                          k, order if k is not None else "blocks", dtype)
        name = model_folder_name(plan, k, order if k is not None else None)
        out = os.path.join(args.save_directory, name) if args.all else args.save_directory
        bar.set_postfix_str(f"{name} ({human_count(counts['total'])})")
        if args.all and os.path.exists(out) and not args.overwrite:
            old = _same_model_in(out, info)
            if old is None:
                fail(f"{out} exists and holds a different model; remove it or pass --overwrite")
            log.info("%s exists with the same contents: kept (pass --overwrite to rebuild)", out)
            rows.append(table_row(name, old))
            written.append(out)
            continue
        model = assemble_plan(teacher, student, plan, dtype)
        got = count_parameters(model)
        if got != counts:  # the plan's count and the model's must agree
            raise RuntimeError(f"parameter count of {name}: planned {counts}, built {got}")
        save_patched_model(model, tokenizer, out, info, overwrite=args.overwrite)
        del model
        gc.collect()
        rows.append(table_row(name, info))
        written.append(out)
        log.info("%s: %d layers, %s parameters -> %s", name, plan.depth, human_count(counts["total"]), out)
    if args.all:
        atomic_write_text(os.path.join(args.save_directory, "family.md"), markdown_table(rows, TABLE_COLUMNS))
        atomic_write_text(os.path.join(args.save_directory, "family.csv"), table_csv(rows))
        print(markdown_table(rows, TABLE_COLUMNS))
    return written


def main_plan(args) -> list[str]:
    """``--plan search.json`` with one budget: build and save the best searched model that fits it."""
    try:  # the budget is checked against the plan before any model is opened
        if os.path.exists(args.save_directory) and not args.overwrite:
            raise PatchError(f"--save_directory {args.save_directory} already exists; choose another folder or pass "
                             "--overwrite")
        if args.batch_size < 1 or args.context_length < 1:
            raise PatchError("--batch_size and --context_length must be positive")
        plan = load_plan(args.plan)
        budget = check_budget(plan, args.target_params, args.max_memory_gb, args.max_latency_ms)
        dtype = dtype_from_name(args.dtype) or torch.float32
        teacher, student, layer_map = _open_pair(args, dtype)
        if list(layer_map.copied_teacher_layers) != plan.get("copied_teacher_layers"):
            raise PatchError(f"--plan {args.plan} was searched for a student with copied layers "
                             f"{plan.get('copied_teacher_layers')}, this one has {list(layer_map.copied_teacher_layers)}")
        chosen = choose(plan, budget, teacher, student, args.batch_size, args.context_length, dtype,
                        lambda e: measure_latency_ms(assemble_plan(teacher, student, plan_of(e), dtype),
                                                     args.batch_size, args.context_length))
    except (BoomerangError, ValueError, FileNotFoundError) as e:  # BoomerangError: every library and stage error
        fail(str(e))
    pplan = plan_of(chosen)
    model = assemble_plan(teacher, student, pplan, dtype)
    counts = count_parameters(model)
    measured = {"params": counts["total"], "calibration_kl": calibration_kl(model, teacher, plan)}
    if budget["kind"] == "memory":
        kv = teacher.adapter.kv_cache_bytes(model.config, args.batch_size, args.context_length,
                                            torch.finfo(dtype).bits // 8)
        measured["memory_gb"] = (model.get_memory_footprint(return_buffers=False) + kv) / 2**30
    if budget["kind"] == "latency":
        measured["latency_ms"] = measure_latency_ms(model, args.batch_size, args.context_length)
    info = provenance(pplan, layer_map, args.teacher_model_name_or_path, args.student_model_name_or_path, counts,
                      None, "searched", dtype)
    info["search"] = {**{k: v for k, v in chosen.items() if k != "layers"}, "plan": os.path.abspath(args.plan)}
    info["measured"] = measured
    tokenizer = find_tokenizer(_source_path(teacher), _source_path(student))
    save_patched_model(model, tokenizer, args.save_directory, info, overwrite=args.overwrite)
    log.info("%s: %d layers, %s parameters, calibration KL %.4f (searched %.4f) -> %s", chosen["description"],
             pplan.depth, human_count(counts["total"]), measured["calibration_kl"], chosen["calibration_kl"],
             args.save_directory)
    return [args.save_directory]


def calibration_kl(model, teacher: Source, plan: dict) -> float | None:
    """The built model's KL from the teacher on the plan's own calibration data (None when the data is gone)."""
    cal = plan.get("calibration") or {}
    t_path = _source_path(teacher)
    if not cal.get("data") or not os.path.exists(cal["data"]) or (not isinstance(teacher, ModelSource)
                                                                   and t_path is None):
        return None
    ids = fixed_length_sequences(load_tokenizer(t_path), read_local_documents(cal["data"], flag="--calibration_data"),
                                 cal["samples"], cal["seq_len"])
    t_model = teacher.model if isinstance(teacher, ModelSource) else load_model(t_path, dtype=torch.float32)
    return TeacherReference(t_model, [r[None] for r in ids]).score(model).kl_per_token


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # kill unwinds like Ctrl-C: no half-written folder is left
    main()
