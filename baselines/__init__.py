"""Baselines the paper compares boomerang distillation against, as pure model-building logic.

* :mod:`baselines.naive`    -- naive layer pruning: the teacher with the layers an untrained student
  drops at each interpolated size (no calibration, no training).
* :mod:`baselines.shortgpt` -- ShortGPT (Men et al., 2024): drop the layers with the lowest Block
  Influence measured on calibration text.
* :mod:`baselines.laco`     -- LaCo (Yang et al., 2024): merge runs of layers with Reserving-Differences-
  while-Seeking-Common, keeping a merge while the final hidden states stay close to the original's.
* :mod:`baselines.family`   -- one method's models at the sizes of a boomerang ladder, cached and saved.

Every builder takes the teacher (an in-memory model) and, where it needs data, *calibration batches*:
a list of ``{"input_ids": LongTensor[B, T], "attention_mask": LongTensor[B, T]}`` dicts (padding
positions have mask 0 and never count). Every builder returns an ordinary Hugging Face model of the
teacher's family, assembled with :func:`boomerang.assemble.assemble`, that saves, reloads and
evaluates like a patched model. The command line is ``python -m evaluate.baselines``.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch

from boomerang.assemble import LayerRef, as_source, assemble
from boomerang.errors import BoomerangError


class BaselineError(BoomerangError):
    """A request a baseline cannot satisfy (an impossible depth, no calibration data, ...)."""


def check_batches(batches: Sequence[dict]) -> list[dict]:
    """Validate calibration batches early, with a message that says what is expected."""
    batches = list(batches)
    if not batches:
        raise BaselineError("no calibration batches: pass --calibration_data with at least one non-empty text")
    for i, b in enumerate(batches):
        if not isinstance(b, dict) or "input_ids" not in b:
            raise BaselineError(f"calibration batch {i} must be a dict with 'input_ids' (and 'attention_mask')")
        ids = b["input_ids"]
        if ids.dim() != 2:
            raise BaselineError(f"calibration batch {i}: input_ids must be [batch, tokens], got shape {tuple(ids.shape)}")
        mask = b.get("attention_mask")
        if mask is not None and mask.shape != ids.shape:
            raise BaselineError(f"calibration batch {i}: attention_mask shape {tuple(mask.shape)} != input_ids {tuple(ids.shape)}")
    if sum(int(token_mask(b).sum()) for b in batches) == 0:
        raise BaselineError("the calibration batches hold no real (unpadded) token")
    return batches


def token_mask(batch: dict) -> torch.Tensor:
    """Boolean ``[B, T]`` mask of the real (non-padding) tokens of a batch."""
    mask = batch.get("attention_mask")
    return torch.ones_like(batch["input_ids"], dtype=torch.bool) if mask is None else mask.bool()


def model_inputs(batch: dict, device) -> dict:
    return {k: batch[k].to(device) for k in ("input_ids", "attention_mask") if batch.get(k) is not None}


def prune_to_layers(teacher, layers: Iterable[int], dtype: torch.dtype | None = None):
    """The teacher with only ``layers`` (teacher indices, in the order given) and its own embeddings and head."""
    src = as_source(teacher)
    layers = [int(i) for i in layers]
    depth = src.adapter.num_layers(src.config)
    bad = [i for i in layers if not 0 <= i < depth]
    if bad:
        raise BaselineError(f"teacher layers {bad} do not exist (the teacher has layers 0..{depth - 1})")
    if not layers:
        raise BaselineError("a pruned model needs at least one layer")
    return assemble(src, [LayerRef(src, i) for i in layers], dtype=dtype)


def check_depth(depth: int, num_layers: int) -> int:
    if not isinstance(depth, int) or isinstance(depth, bool) or not 1 <= depth <= num_layers:
        raise BaselineError(f"target depth must be an integer in 1..{num_layers} (the teacher's depth), got {depth!r}")
    return depth
