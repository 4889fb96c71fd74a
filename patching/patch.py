"""Patching: replace student layers by their teacher blocks to build a bigger model, with no training.

    from patching.patch import build_intermediate_model
    model, tokenizer = build_intermediate_model("Qwen/Qwen3-4B-Base", "runs/qwen3-student", 4)

``num_layers_to_patch`` (k) counts student layers that stand for multi-layer teacher blocks.
Last-k (default; the paper's order for Qwen and Pythia) replaces the last k such blocks (and the
1:1 layers after them) and takes the teacher's final norm and LM head; first-k (the paper's order
for Llama) replaces the first k blocks (and the 1:1 layers before them) and takes the teacher's
input embeddings. k = 0 is the student's size, k = max the teacher itself.
"""

from __future__ import annotations

import logging
import os
from typing import Iterable

import torch

from boomerang.assemble import LayerRef, Source, as_source, assemble
from boomerang.families import dtype_from_name
from boomerang.layer_map import LayerMap, LayerMapError, PatchPlan
from boomerang.models import load_tokenizer, resolve_model_path

log = logging.getLogger("boomerang.patch")


class PatchError(ValueError):
    pass


def _open(ref, role: str) -> tuple[Source, str | None]:
    """A weight source for a model given as an in-memory model or a name/path, and its folder."""
    if isinstance(ref, torch.nn.Module):
        return as_source(ref, name=getattr(ref, "name_or_path", role)), getattr(ref, "name_or_path", None)
    path = resolve_model_path(ref)
    return as_source(path, name=str(ref)), path


def load_layer_map(student, teacher_depth: int | None = None) -> LayerMap:
    """The student's layer map, from its folder or from the ``layer_map`` attribute of a loaded model."""
    if isinstance(student, torch.nn.Module):
        lm = getattr(student, "boomerang_layer_map", None)
        if lm is not None:
            return lm
        path = getattr(student, "name_or_path", None)
        if not path or not os.path.isdir(path):
            raise PatchError(
                "the student model carries no layer map: load it from its folder (which holds student_config.json) "
                "or set model.boomerang_layer_map = LayerMap.load(folder)"
            )
        return LayerMap.load(path, teacher_depth)
    return LayerMap.load(resolve_model_path(student), teacher_depth)


def check_pair(teacher: Source, student: Source, layer_map: LayerMap) -> None:
    """Fail early, with a message, when the student cannot have been made from this teacher."""
    t_cfg, s_cfg = teacher.config, student.config
    if teacher.adapter is not student.adapter:
        raise PatchError(f"teacher is a {teacher.adapter.name} model but the student a {student.adapter.name} model")
    t_depth = teacher.adapter.num_layers(t_cfg)
    s_depth = student.adapter.num_layers(s_cfg)
    if layer_map.num_teacher_layers != t_depth:
        raise PatchError(
            f"the student's student_config.json describes a {layer_map.num_teacher_layers}-layer teacher, "
            f"but {teacher.name} has {t_depth} layers: pass the teacher the student was distilled from"
        )
    if layer_map.num_student_layers != s_depth:
        raise PatchError(
            f"student_config.json lists {layer_map.num_student_layers} copied layers but the student model has "
            f"{s_depth} layers"
        )
    for field in ("hidden_size", "vocab_size", "intermediate_size", "num_attention_heads"):
        a, b = getattr(t_cfg, field, None), getattr(s_cfg, field, None)
        if a is not None and b is not None and a != b:
            raise PatchError(f"teacher and student differ in {field} ({a} vs {b}): they are not a boomerang pair")


def plan_for(layer_map: LayerMap, num_layers_to_patch: int | None = None, patch_first_k_layers: bool = False,
             blocks: Iterable[int] | None = None) -> PatchPlan:
    if blocks is not None:
        blocks = sorted(set(int(b) for b in blocks))
        # Parts follow the blocks: the head is the teacher's when the last block is the teacher's,
        # the embeddings when the first is.
        n = layer_map.num_student_layers
        emb = "teacher" if 0 in blocks else "student"
        head = "teacher" if (n - 1) in blocks else "student"
        return layer_map.plan_blocks(blocks, emb, head)
    try:
        return layer_map.plan(num_layers_to_patch, patch_first_k_layers)
    except LayerMapError as e:
        raise PatchError(str(e)) from None


def assemble_plan(teacher: Source, student: Source, plan: PatchPlan, dtype: torch.dtype | None = None):
    """The patched model of ``plan`` from two weight sources."""
    sources = {"teacher": teacher, "student": student}
    layers = [LayerRef(sources[src], i) for src, i in plan.layers]
    parts = {
        "embeddings": sources[plan.embeddings_from],
        "final_norm": sources[plan.final_norm_from],
        "lm_head": sources[plan.lm_head_from],
    }
    base = teacher if plan.lm_head_from == "teacher" else student
    return assemble(base, layers, parts, dtype=dtype)


def build_intermediate_model(
    teacher_name_or_path,
    student_name_or_path,
    num_layers_to_patch: int | None = None,
    patch_first_k_layers: bool = False,
    dtype: torch.dtype | str | None = torch.bfloat16,
    blocks: Iterable[int] | None = None,
    return_plan: bool = False,
):
    """Build the interpolated model that patches ``num_layers_to_patch`` teacher blocks into the student.

    Teacher and student may be hub names, local folders or already-loaded models (a sweep loads them
    once). From folders only the tensors the result needs are read; from loaded models tensors are
    shared, not copied (cast only when ``dtype`` differs). ``blocks`` instead of
    ``num_layers_to_patch`` replaces exactly those student layers. Returns ``(model, tokenizer)``
    (and the ``PatchPlan`` with ``return_plan``); the tokenizer is the teacher's.
    """
    if (num_layers_to_patch is None) == (blocks is None):
        raise PatchError("give exactly one of num_layers_to_patch and blocks")
    dtype = dtype_from_name(dtype)
    teacher, teacher_path = _open(teacher_name_or_path, "teacher")
    layer_map = load_layer_map(student_name_or_path, teacher.adapter.num_layers(teacher.config))
    plan = plan_for(layer_map, num_layers_to_patch, patch_first_k_layers, blocks)  # bad k fails before weights
    student, _ = _open(student_name_or_path, "student")
    check_pair(teacher, student, layer_map)
    model = assemble_plan(teacher, student, plan, dtype)
    model.boomerang_plan = plan
    tokenizer = load_tokenizer(teacher_path) if teacher_path and os.path.isdir(teacher_path) else None
    return (model, tokenizer, plan) if return_plan else (model, tokenizer)
