"""Training checkpoints: student weights, optimizer, scheduler, data position and RNG states.

Layout: ``<save_directory>/checkpoints/step-000040/`` holding ``model.pt``, ``optimizer.pt``,
``state.json`` (step, data position, scheduler) and ``rng.pt`` (one entry per rank). Each checkpoint
folder is written atomically (``boomerang.io.atomic_directory``): a crash mid-write leaves the previous
checkpoints intact. Only the newest ``save_total_limit`` are kept.

Under FSDP the full (unsharded) state dicts are gathered to CPU and rank 0 writes them; on resume
every rank reads them and re-shards. A run can therefore resume on a different number of processes
(the data position is counted in sequences of the global stream).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil

import numpy as np
import torch
import torch.distributed as dist

from boomerang.io import atomic_directory

CKPT_DIR = "checkpoints"
_STEP_RE = re.compile(r"^step-(\d+)$")


def list_checkpoints(save_directory: str) -> list[str]:
    root = os.path.join(save_directory, CKPT_DIR)
    if not os.path.isdir(root):
        return []
    found = []
    for name in os.listdir(root):
        m = _STEP_RE.match(name)
        if m and os.path.isfile(os.path.join(root, name, "state.json")):
            found.append((int(m.group(1)), os.path.join(root, name)))
    return [p for _, p in sorted(found)]


def latest_checkpoint(save_directory: str) -> str | None:
    found = list_checkpoints(save_directory)
    return found[-1] if found else None


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def model_state(model, fsdp: bool) -> dict:
    if not fsdp:
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def optimizer_state(model, optimizer, fsdp: bool) -> dict:
    if not fsdp:
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer,
                                    options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def save_checkpoint(save_directory: str, step: int, model, optimizer, scheduler, data_position: int,
                    fsdp: bool, save_total_limit: int = 1, extra: dict | None = None) -> str:
    """Write ``checkpoints/step-XXXXXX`` atomically (collective under FSDP: every rank must call)."""
    msd = model_state(model, fsdp)
    osd = optimizer_state(model, optimizer, fsdp)
    rngs = [None] * dist.get_world_size() if _distributed() else None
    if _distributed():
        dist.all_gather_object(rngs, rng_state())
    else:
        rngs = [rng_state()]
    path = os.path.join(save_directory, CKPT_DIR, f"step-{step:06d}")
    rank0 = not _distributed() or dist.get_rank() == 0
    if rank0:
        with atomic_directory(path, overwrite=True) as tmp:
            torch.save(msd, os.path.join(tmp, "model.pt"))
            torch.save(osd, os.path.join(tmp, "optimizer.pt"))
            torch.save(rngs, os.path.join(tmp, "rng.pt"))
            with open(os.path.join(tmp, "state.json"), "w") as f:
                json.dump({"step": step, "data_position": data_position, "scheduler": scheduler.state_dict(),
                           **(extra or {})}, f, indent=2, default=str)
        for old in list_checkpoints(save_directory)[:-max(1, save_total_limit)]:
            shutil.rmtree(old, ignore_errors=True)
    if _distributed():
        dist.barrier()
    return path


def load_checkpoint(path: str, model, optimizer, scheduler, fsdp: bool) -> dict:
    """Restore model, optimizer, scheduler and this rank's RNG; returns ``state.json``'s dict."""
    with open(os.path.join(path, "state.json")) as f:
        state = json.load(f)
    msd = torch.load(os.path.join(path, "model.pt"), map_location="cpu", weights_only=True)
    osd = torch.load(os.path.join(path, "optimizer.pt"), map_location="cpu", weights_only=False)
    if fsdp:
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                             set_optimizer_state_dict)

        opts = StateDictOptions(full_state_dict=True)
        set_model_state_dict(model, msd, options=opts)
        set_optimizer_state_dict(model, optimizer, osd, options=opts)
    else:
        model.load_state_dict(msd)
        optimizer.load_state_dict(osd)
    scheduler.load_state_dict(state["scheduler"])
    rngs = torch.load(os.path.join(path, "rng.pt"), weights_only=False)
    rank = dist.get_rank() if _distributed() else 0
    set_rng_state(rngs[rank] if rank < len(rngs) else rngs[0])
    return state
