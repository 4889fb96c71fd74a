"""Training checkpoints: student weights, optimizer, scheduler, data position and RNG states.

Layout: ``<save_directory>/checkpoints/step-000040/`` holding

* a ``torch.distributed.checkpoint`` (DCP) checkpoint of the model and optimizer state: ``.metadata`` plus one
  ``__<rank>_0.distcp`` file per process that wrote it, each holding only that process's shards (FSDP2) or
  everything (one process, no FSDP);
* ``rng-<rank>.pt``: each process's Python, NumPy, torch (and CUDA) RNG states;
* ``state.json``: step, data position (sequences of the global stream) and ``data_resume`` (where the data goes on:
  ``train.data.SlottedStream.resume_state``), scheduler, world size, ``"format": "dcp"``.

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
import pickle
import random
import re
import shutil
import threading
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
    """This process's RNG states as tensors and plain values, so that ``torch.load(weights_only=True)`` reads them."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    if isinstance(n, dict):
        np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                             n["cached_gaussian"]))
    else:  # the earlier files: NumPy's own tuple (read with NumPy arrays allowed, nothing else)
        np.random.set_state(n)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# What the earlier format's RNG files hold besides tensors and plain values: NumPy arrays (the NumPy RNG state). A
# NumPy array of a plain dtype is data, not code; anything else in a checkpoint file is refused.
def _numpy_globals() -> list:
    core = getattr(np, "_core", None) or np.core
    plain = [type(np.dtype(t)) for t in (np.uint32, np.int64, np.float64)]  # the dtypes NumPy's RNG state uses
    return [core.multiarray._reconstruct, np.ndarray, np.dtype, *plain]


def safe_load(path: str, numpy_arrays: bool = False):
    """``torch.load(path, weights_only=True)``: tensors and plain Python values only (NumPy arrays too when
    ``numpy_arrays``, for the earlier format); a file holding any other pickled object is a CheckpointError, never
    unpickled."""
    try:
        with torch.serialization.safe_globals(_numpy_globals() if numpy_arrays else []):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        lines = str(e).splitlines() or [type(e).__name__]
        what = next((ln.strip() for ln in lines if "Unsupported global" in ln or "but got" in ln), lines[0])
        raise CheckpointError(
            f"{path} holds pickled Python objects that are not tensors or plain values; loading it could run code, so "
            f"it is refused ({what[:300]}). Resume only from checkpoints this trainer wrote, or use --overwrite to "
            "start again") from e


class _MetadataUnpickler(pickle.Unpickler):
    """DCP's ``.metadata`` is a pickle (``FileSystemReader.read_metadata`` calls ``pickle.load``): this unpickler
    builds only DCP's metadata classes, torch sizes, dtypes and layouts, and paths; anything else is refused."""

    ALLOWED = {("torch.distributed.checkpoint.filesystem", "_StorageInfo"), ("torch", "Size"),
               ("torch.serialization", "_get_layout"), ("collections", "OrderedDict"), ("pathlib", "PosixPath"),
               ("pathlib", "PurePosixPath"), ("pathlib", "WindowsPath"), ("pathlib", "PureWindowsPath")}

    def find_class(self, module, name):
        import torch.distributed.checkpoint.metadata as meta  # lazy: DCP only for runs that save or resume

        if module == meta.__name__ and isinstance(getattr(meta, name, None), type):
            return getattr(meta, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a checkpoint's metadata")


def _safe_reader(path: str):
    """A ``FileSystemReader`` whose metadata is read by ``_MetadataUnpickler`` (the tensors DCP reads raw, its byte
    items with ``torch.load(weights_only=True)``)."""
    from torch.distributed.checkpoint import FileSystemReader  # lazy: DCP only for runs that save or resume
    from torch.distributed.checkpoint.metadata import StorageMeta

    class SafeReader(FileSystemReader):
        def read_metadata(self, *args, **kwargs):
            meta_path = self._get_metadata_path(kwargs.get("rank"))
            with self.fs.create_stream(meta_path, "rb") as f:
                try:
                    metadata = _MetadataUnpickler(f).load()
                except pickle.UnpicklingError as e:
                    raise CheckpointError(f"{meta_path}: {e}; loading it could run code, so it is refused") from e
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return SafeReader(path)


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
    if _distributed():
        dist.barrier()  # step-N is in place (rank 0 renamed it before this barrier)
    if rank == 0:  # older checkpoints are deleted in the background: no process waits on it
        wait_for_pruning()
        _pruning.append(threading.Thread(target=_prune, args=(save_directory, save_total_limit), name="prune"))
        _pruning[-1].start()
    return path


_pruning: list = []  # rank 0's pruning thread, at most one


def _prune(save_directory: str, save_total_limit: int) -> None:
    for old in list_checkpoints(save_directory)[:-max(1, save_total_limit)]:
        shutil.rmtree(old, ignore_errors=True)


def wait_for_pruning() -> None:
    """Wait until the older checkpoints are deleted (before the next save, and at the end of a run)."""
    while _pruning:
        _pruning.pop().join()


def read_state(path: str) -> dict:
    """A checkpoint's ``state.json`` (step, data position and ``data_resume``, scheduler, world size)."""
    with open(os.path.join(path, "state.json")) as f:
        return json.load(f)


def load_checkpoint(path: str, model, optimizer, scheduler, fsdp: bool) -> dict:
    """Restore model, optimizer, scheduler and this rank's RNG; returns ``state.json``'s dict."""
    state = read_state(path)
    if os.path.isfile(os.path.join(path, "model.pt")):  # the earlier format: whole state dicts, read by every process
        log.warning("%s is a checkpoint of the earlier format (whole state dicts): every process reads all of it; "
                    "checkpoints written from now on are sharded", path)
        msd = safe_load(os.path.join(path, "model.pt"))
        osd = safe_load(os.path.join(path, "optimizer.pt"))
        if fsdp:
            # lazy: DCP only for sharded (FSDP) runs
            from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                                 set_optimizer_state_dict)

            set_model_state_dict(model, msd, options=StateDictOptions(full_state_dict=True))
            set_optimizer_state_dict(model, optimizer, osd, options=StateDictOptions(full_state_dict=True))
        else:
            model.load_state_dict(msd)
            optimizer.load_state_dict(osd)
        rngs = safe_load(os.path.join(path, "rng.pt"), numpy_arrays=True)
        set_rng_state(rngs[_rank()] if _rank() < len(rngs) else rngs[0])
    elif os.path.isfile(os.path.join(path, ".metadata")):
        import torch.distributed.checkpoint as dcp  # lazy: DCP only for sharded (FSDP) runs
        from torch.distributed.checkpoint.state_dict import set_state_dict

        sd = _train_state(model, optimizer)
        try:
            # dcp.load fills what the template asks for and ignores the rest: a student with fewer layers than
            # the checkpoint's would load without a word, so compare the model's names first.
            reader = _safe_reader(path)
            saved = {k for k in reader.read_metadata().state_dict_metadata if k.startswith("model.")}
            wanted = {"model." + k for k in sd["model"]}
            if saved != wanted:
                raise CheckpointError(f"{path}: its model does not fit this run's student (only in the checkpoint: "
                                      f"{sorted(saved - wanted)[:4]}, only in the student: "
                                      f"{sorted(wanted - saved)[:4]})")
            with _single_process_quiet():
                dcp.load(sd, storage_reader=reader)
        except Exception as e:
            detail = str(e) if isinstance(e, CheckpointError) else f"{path}: cannot read it ({type(e).__name__}: {e})"
            raise CheckpointError(f"{detail}. A checkpoint resumes only the run that wrote it (same teacher, layer "
                                  "recipe and flags); use --overwrite to start again") from e
        set_state_dict(model, optimizer, model_state_dict=sd["model"], optim_state_dict=sd["optimizer"])
        mine = os.path.join(path, f"rng-{_rank()}.pt")
        # More processes than wrote it: the new ones take rank 0's RNG state.
        set_rng_state(safe_load(mine if os.path.isfile(mine) else os.path.join(path, "rng-0.pt"), numpy_arrays=True))
    else:
        raise CheckpointError(f"{path} holds state.json but neither a DCP checkpoint (.metadata) nor model.pt: "
                              "it is incomplete. Delete that folder to resume from the one before it, or use "
                              "--overwrite to start again")
    scheduler.load_state_dict(state["scheduler"])
    return state
