"""Naive layer pruning: the teacher with layers dropped to the size of each interpolated model.

At patch size ``k`` the pruned model keeps exactly the teacher layers that an *untrained* student
patched with ``k`` blocks would hold (``LayerMap.naive_pruning_layers``): the layers boomerang's
initialization drops, minus those patching puts back. No calibration and no training: this is the
paper's "naive pruning" curve, and it equals patching a pure-copy student.
"""

from __future__ import annotations

import torch

from baselines import BaselineError, prune_to_layers
from boomerang.assemble import as_source
from boomerang.layer_map import LayerMap, LayerMapError


def naive_pruning_layers(layer_map: LayerMap, num_layers_to_patch: int, patch_first_k_layers: bool = False) -> list[int]:
    try:
        return layer_map.naive_pruning_layers(num_layers_to_patch, patch_first_k_layers)
    except LayerMapError as e:
        raise BaselineError(str(e)) from None


def build_naive_pruning_model(teacher, layer_map: LayerMap, num_layers_to_patch: int,
                              patch_first_k_layers: bool = False, dtype: torch.dtype | None = None):
    """Return ``(model, info)``: the teacher pruned to the layers of patch size ``k`` and what was kept."""
    src = as_source(teacher)
    depth = src.adapter.num_layers(src.config)
    if depth != layer_map.num_teacher_layers:
        raise BaselineError(f"the student's layer map is for a {layer_map.num_teacher_layers}-layer teacher, but the "
                            f"teacher has {depth} layers: pass the teacher the student was made from")
    kept = naive_pruning_layers(layer_map, num_layers_to_patch, patch_first_k_layers)
    info = {"method": "naive", "num_layers_to_patch": num_layers_to_patch,
            "patch_first_k_layers": bool(patch_first_k_layers), "depth": len(kept),
            "teacher_layers": kept, "removed_teacher_layers": [i for i in range(depth) if i not in kept]}
    return prune_to_layers(src, kept, dtype), info
