"""Training checkpoints: student weights, optimizer, scheduler, data position and RNG states.

Layout: ``<save_directory>/checkpoints/step-000040/`` holding

* a ``torch.distributed.checkpoint`` (DCP) checkpoint of the model and optimizer state: ``.metadata`` plus one
  ``__<rank>_0.distcp`` file per process that wrote it, each holding only that process's shards (FSDP2) or
  everything (one process, no FSDP);
* ``rng-<rank>.pt``: each process's Python, NumPy, torch (and CUDA) RNG states;
* ``state.json``: step, data position (sequences of the global stream), scheduler, world size, ``"format": "dcp"``.

Every process writes its own files into one temporary folder that rank 0 renames to ``step-N`` once all of them
are done (``boomerang.io.atomic_directory``): a crash mid-write never leaves a half-written checkpoint that
``latest_checkpoint`` would pick. Only the newest ``save_total_limit`` are kept. The checkpoint folder must be on a
file system every process sees (one node: any folder; several nodes: a shared one).

Resuming reads the same checkpoint on any number of processes: DCP reshards model and optimizer states to the
new processes' shards, and a single process without FSDP reads whole tensors into its plain model. Checkpoints of
the earlier format (``model.pt``, ``optimizer.pt``, ``rng.pt``: whole state dicts) are still read.

torch.distributed.checkpoint takes seconds to import: only runs that save or resume import it.
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import random
import re
import shutil
import warnings

import numpy as np
import torch
import torch.distributed as dist

from boomerang.io import atomic_directory

log = logging.getLogger("boomerang.train")

CKPT_DIR = "checkpoints"
FORMAT = "dcp"
_STEP_RE = re.compile(r"^step-(\d+)$")


class CheckpointError(RuntimeError):
    pass


def list_checkpoints(save_directory: str) -> list[str]:
    """The complete checkpoints (``step-N`` folders holding state.json), oldest first."""
    found = glob.glob(os.path.join(glob.escape(save_directory), CKPT_DIR, "step-*", "state.json"))
    steps = {os.path.dirname(p): _STEP_RE.match(os.path.basename(os.path.dirname(p))) for p in found}
    return sorted((d for d, m in steps.items() if m), key=lambda d: int(steps[d].group(1)))


def latest_checkpoint(save_directory: str) -> str | None:
    found = list_checkpoints(save_directory)
    return found[-1] if found else None


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _rank() -> int:
    return dist.get_rank() if _distributed() else 0


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
    """The whole (unsharded) model state on CPU; under FSDP a collective whose result only rank 0 keeps."""
    if not fsdp:
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}
    # lazy: DCP only for sharded (FSDP) runs
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def _train_state(model, optimizer) -> dict:
    """Model and optimizer state by parameter name: this process's shards under FSDP (DTensors), whole tensors
    otherwise. Also the template ``dcp.load`` fills in place."""
    from torch.distributed.checkpoint.state_dict import get_state_dict  # lazy: DCP only for sharded (FSDP) runs

    return dict(zip(("model", "optimizer"), get_state_dict(model, optimizer)))


@contextlib.contextmanager
def _single_process_quiet():
    """DCP warns on every call without a process group that it assumes one process: that is the intent here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"torch\.distributed is (disabled|unavailable)")
        yield


def save_checkpoint(save_directory: str, step: int, model, optimizer, scheduler, data_position: int,
                    save_total_limit: int = 1, extra: dict | None = None) -> str:
    """Write ``checkpoints/step-XXXXXX`` atomically; every process writes its own shards (a collective under
    torchrun: every rank must call)."""
    import torch.distributed.checkpoint as dcp  # lazy: DCP only for sharded (FSDP) runs

    path = os.path.join(save_directory, CKPT_DIR, f"step-{step:06d}")
    rank = _rank()
    with atomic_directory(path, overwrite=True) if rank == 0 else contextlib.nullcontext() as tmp:
        if _distributed():  # rank 0 made the temporary folder; every process writes into it
            dist.broadcast_object_list(box := [tmp], src=0)
            tmp = box[0]
        with _single_process_quiet():
            dcp.save(_train_state(model, optimizer), checkpoint_id=tmp)
        torch.save(rng_state(), os.path.join(tmp, f"rng-{rank}.pt"))
        if _distributed():
            dist.barrier()  # every process's files are in place before the folder becomes step-N
        if rank == 0:
            with open(os.path.join(tmp, "state.json"), "w") as f:
                json.dump({"format": FORMAT, "step": step, "data_position": data_position,
                           "scheduler": scheduler.state_dict(), **(extra or {})}, f, indent=2, default=str)
    if rank == 0:
        for old in list_checkpoints(save_directory)[:-max(1, save_total_limit)]:
            shutil.rmtree(old, ignore_errors=True)
    if _distributed():
        dist.barrier()
    return path


def load_checkpoint(path: str, model, optimizer, scheduler, fsdp: bool) -> dict:
    """Restore model, optimizer, scheduler and this rank's RNG; returns ``state.json``'s dict."""
    with open(os.path.join(path, "state.json")) as f:
        state = json.load(f)
    if os.path.isfile(os.path.join(path, "model.pt")):  # the earlier format: whole state dicts, read by every process
        log.warning("%s is a checkpoint of the earlier format (whole state dicts): every process reads all of it; "
                    "checkpoints written from now on are sharded", path)
        msd = torch.load(os.path.join(path, "model.pt"), map_location="cpu", weights_only=True)
        osd = torch.load(os.path.join(path, "optimizer.pt"), map_location="cpu", weights_only=False)
        if fsdp:
            # lazy: DCP only for sharded (FSDP) runs
            from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                                 set_optimizer_state_dict)

            set_model_state_dict(model, msd, options=StateDictOptions(full_state_dict=True))
            set_optimizer_state_dict(model, optimizer, osd, options=StateDictOptions(full_state_dict=True))
        else:
            model.load_state_dict(msd)
            optimizer.load_state_dict(osd)
        rngs = torch.load(os.path.join(path, "rng.pt"), weights_only=False)
        set_rng_state(rngs[_rank()] if _rank() < len(rngs) else rngs[0])
    elif os.path.isfile(os.path.join(path, ".metadata")):
        import torch.distributed.checkpoint as dcp  # lazy: DCP only for sharded (FSDP) runs
        from torch.distributed.checkpoint.state_dict import set_state_dict

        sd = _train_state(model, optimizer)
        try:
            # dcp.load fills what the template asks for and ignores the rest: a student with fewer layers than
            # the checkpoint's would load without a word, so compare the model's names first.
            saved = {k for k in dcp.FileSystemReader(path).read_metadata().state_dict_metadata
                     if k.startswith("model.")}
            wanted = {"model." + k for k in sd["model"]}
            if saved != wanted:
                raise CheckpointError(f"{path}: its model does not fit this run's student (only in the checkpoint: "
                                      f"{sorted(saved - wanted)[:4]}, only in the student: "
                                      f"{sorted(wanted - saved)[:4]})")
            with _single_process_quiet():
                dcp.load(sd, checkpoint_id=path)
        except Exception as e:
            detail = str(e) if isinstance(e, CheckpointError) else f"{path}: cannot read it ({type(e).__name__}: {e})"
            raise CheckpointError(f"{detail}. A checkpoint resumes only the run that wrote it (same teacher, layer "
                                  "recipe and flags); use --overwrite to start again") from e
        set_state_dict(model, optimizer, model_state_dict=sd["model"], optim_state_dict=sd["optimizer"])
        mine = os.path.join(path, f"rng-{_rank()}.pt")
        # More processes than wrote it: the new ones take rank 0's RNG state.
        set_rng_state(torch.load(mine if os.path.isfile(mine) else os.path.join(path, "rng-0.pt"),
                                 weights_only=False))
    else:
        raise CheckpointError(f"{path} holds state.json but neither a DCP checkpoint (.metadata) nor model.pt: "
                              "it is incomplete. Delete that folder to resume from the one before it, or use "
                              "--overwrite to start again")
    scheduler.load_state_dict(state["scheduler"])
    return state
