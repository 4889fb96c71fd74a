"""Assembling a model from layers and parts of other models, without copying what it can share.

One mechanism serves student initialization (teacher layers ``copied``, teacher parts), patching
(student layers, teacher blocks, parts from either) and the pruning baselines (a subset of teacher
layers). Sources are either in-memory models (tensors are shared, never deep-copied) or safetensors
checkpoints (only the tensors the result needs are read from disk), so building a model costs about
the memory of the result.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Iterable

from safetensors import safe_open
import torch
from torch import nn

from boomerang.families import FamilyAdapter, adapter_for_config, set_tie


class Source:
    """Something that hands out named tensors in the current transformers naming, plus its config."""

    config: object
    adapter: FamilyAdapter
    name: str

    def keys(self) -> list[str]:
        raise NotImplementedError

    def get(self, key: str) -> torch.Tensor:
        raise NotImplementedError

    def get_rows(self, key: str, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` (first dimension) of a tensor; a checkpoint reads only those from disk."""
        return self.get(key)[start:stop]

    def tied(self) -> bool:
        return bool(getattr(self.config, "tie_word_embeddings", False)) and self.adapter.tied_head_weight is not None

    def layer_keys(self, index: int) -> list[str]:
        prefix = f"{self.adapter.layer_prefix()}{index}."
        return [k for k in self.keys() if k.startswith(prefix)]

    def role_keys(self, role: str) -> list[str]:
        return [k for k in self.keys() if self.adapter.part_of(k)[0] == role]


class ModelSource(Source):
    """An in-memory model: tensors are handed out as they are (shared with the result)."""

    def __init__(self, model: nn.Module, name: str | None = None):
        self.model = model
        self.config = model.config
        self.adapter = adapter_for_config(model.config)
        self.name = name or getattr(model, "name_or_path", "") or type(model).__name__
        self._params = dict(model.named_parameters(remove_duplicate=False))
        self._views: dict[int, nn.Parameter] = {}
        self._buffers = dict(model.named_buffers(remove_duplicate=False))
        persistent = set(model.state_dict(keep_vars=True))
        self._keys = list(self._params) + [k for k in self._buffers if k in persistent]

    def keys(self) -> list[str]:
        return self._keys

    def get(self, key: str) -> torch.Tensor:
        if key not in self._params:
            return self._buffers[key]
        # A parameter of its own over the same storage (one per source parameter, so that parameters tied in
        # the source stay one object): load_state_dict(assign=True) sets requires_grad on what it is given, and
        # that must never reach the source model's own parameters.
        p = self._params[key]
        if id(p) not in self._views:
            self._views[id(p)] = nn.Parameter(p.detach(), requires_grad=p.requires_grad)
        return self._views[id(p)]


# safetensors dtype names -> torch dtypes, for the plain-file reads below (None: this torch lacks it)
SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                      "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                      "U8": torch.uint8, "BOOL": torch.bool, "F8_E4M3": getattr(torch, "float8_e4m3fn", None),
                      "F8_E5M2": getattr(torch, "float8_e5m2", None)}


class CheckpointSource(Source):
    """A Hugging Face folder with safetensors weights: tensors are read lazily, one at a time."""

    def __init__(self, path: str, name: str | None = None):
        from transformers import AutoConfig  # lazy: transformers takes seconds to import; commands start without it

        self.path = path
        self.name = name or path
        self.config = AutoConfig.from_pretrained(path)
        self.adapter = adapter_for_config(self.config)
        index = os.path.join(path, "model.safetensors.index.json")
        if os.path.isfile(index):
            with open(index) as f:
                files = sorted(set(json.load(f)["weight_map"].values()))
        elif os.path.isfile(os.path.join(path, "model.safetensors")):
            files = ["model.safetensors"]
        else:
            raise FileNotFoundError(f"{path} has no safetensors weights (model.safetensors or its index); "
                                    "re-save the model with save_pretrained(safe_serialization=True)")
        self._handles = {fn: safe_open(os.path.join(path, fn), framework="pt") for fn in files}
        self._layouts: dict[str, tuple[dict, int]] = {}  # file -> (header, where its data starts), for get_rows
        self._where = {self._rename(raw): (fn, raw) for fn, h in self._handles.items() for raw in h.keys()}

    def layout(self, fn: str) -> tuple[dict, int]:
        """One file's safetensors header (tensor name -> dtype, shape, data_offsets) and the byte where its data
        starts: the byte offsets plain file reads need, which ``safe_open`` does not expose (read once, cached)."""
        if fn not in self._layouts:
            with open(os.path.join(self.path, fn), "rb") as f:
                size = int.from_bytes(f.read(8), "little")
                self._layouts[fn] = (json.loads(f.read(size)), 8 + size)
        return self._layouts[fn]

    def _rename(self, raw: str) -> str:
        for old, new in self.adapter.checkpoint_aliases:
            if raw.startswith(old):
                return new + raw[len(old):]
        return raw

    def keys(self) -> list[str]:
        return list(self._where)

    def get(self, key: str) -> torch.Tensor:
        fn, raw = self._where[key]
        return self._handles[fn].get_tensor(raw)

    def get_rows(self, key: str, start: int, stop: int) -> torch.Tensor:
        """Read with plain file reads, not through the memory map: the process then holds only these rows (the
        map would add every page it touched, and the kernel's read-ahead around them, to its resident memory)."""
        fn, raw = self._where[key]
        header, data_start = self.layout(fn)
        entry = header[raw]
        dtype = SAFETENSORS_DTYPES.get(entry["dtype"])
        if dtype is None or not entry["shape"]:  # a rare dtype or a scalar: through safetensors
            return self._handles[fn].get_slice(raw)[start:stop]
        shape = entry["shape"]
        stop = min(stop, shape[0])
        start = min(start, stop)
        out = torch.empty((stop - start, *shape[1:]), dtype=dtype)
        if out.numel():
            row_bytes = out[0].numel() * out.element_size()
            with open(os.path.join(self.path, fn), "rb") as f:
                f.seek(data_start + entry["data_offsets"][0] + start * row_bytes)
                if f.readinto(memoryview(out.view(torch.uint8).numpy()).cast("B")) != out.numel() * out.element_size():
                    raise OSError(f"{os.path.join(self.path, fn)} ends inside tensor {raw}: the file is truncated")
        return out


def as_source(obj, name: str | None = None) -> Source:
    if isinstance(obj, Source):
        return obj
    if isinstance(obj, nn.Module):
        return ModelSource(obj, name)
    if isinstance(obj, (str, os.PathLike)):
        return CheckpointSource(os.fspath(obj), name)
    raise TypeError(f"cannot read weights from {type(obj).__name__}")


@dataclass(frozen=True)
class LayerRef:
    source: Source
    index: int


def _empty_model(config, adapter: FamilyAdapter, dtype: torch.dtype | None):
    """A model of ``config`` whose parameters are on the meta device (buffers are real)."""
    import transformers  # lazy: transformers takes seconds to import; commands start without it
    from accelerate import init_empty_weights  # lazy: accelerate only for meta-device builds

    auto = getattr(transformers, adapter.auto_class)
    with init_empty_weights(include_buffers=False):
        return auto.from_config(config, dtype=dtype) if dtype is not None else auto.from_config(config)


def _drop_capture_hooks(module: nn.Module) -> None:
    """transformers installs hidden-state capturing hooks on layers the first time a model runs; a
    layer moved into another model would then report its hidden state twice."""
    for m in module.modules():
        for hid, hook in list(m._forward_hooks.items()):
            if getattr(hook, "__name__", "") == "output_capturing_hook":
                del m._forward_hooks[hid]


def assemble(base: Source, layers: Iterable[LayerRef], parts: dict[str, Source] | None = None,
             dtype: torch.dtype | None = None, config_overrides: dict | None = None, copy_untied_head: bool = True):
    """Build a model of ``base``'s family whose layers are ``layers`` (in order).

    ``parts`` maps ``"embeddings"``, ``"final_norm"`` and ``"lm_head"`` to the source each comes from (default:
    ``base``). The head stays tied to the embeddings only when both come from the same source and that source is tied;
    otherwise the config says ``tie_word_embeddings=False`` and the head gets its own tensor
    (``copy_untied_head=False``: a model only run, never trained or saved, may share it with its source's embedding
    instead). Every per-layer config field and per-layer index attribute (the KV cache's ``layer_idx``) is rewritten
    for the new depth.
    """
    adapter = base.adapter
    layers = list(layers)
    parts = {role: parts.get(role, base) if parts else base for role in ("embeddings", "final_norm", "lm_head")}
    if other := next((r.source.adapter for r in layers if r.source.adapter is not adapter), None):
        raise ValueError(f"cannot mix families: {other.name} layer into a {adapter.name} model")
    config = adapter.config_for_layers(base.config, [(r.source.config, r.index) for r in layers])
    emb_src, head_src = parts["embeddings"], parts["lm_head"]
    tied = emb_src is head_src and emb_src.tied()
    set_tie(config, tied)
    if dtype is not None:
        config.dtype = str(dtype).replace("torch.", "")
    for k, v in (config_overrides or {}).items():
        setattr(config, k, v)

    def cast(t: torch.Tensor) -> torch.Tensor:
        return t.to(dtype) if dtype is not None and t.is_floating_point() and t.dtype != dtype else t

    state: dict[str, torch.Tensor] = {}
    prefix = adapter.layer_prefix()
    for new_i, ref in enumerate(layers):
        old = f"{prefix}{ref.index}."
        keys = ref.source.layer_keys(ref.index)
        if not keys:
            raise ValueError(f"{ref.source.name} has no layer {ref.index}")
        for k in keys:
            state[f"{prefix}{new_i}.{k[len(old):]}"] = cast(ref.source.get(k))
    for role, src in parts.items():
        state.update((k, cast(src.get(k))) for k in src.role_keys(role))
    if not tied and adapter.tied_head_weight and adapter.tied_head_weight not in state:
        # The head's source is tied: its head *is* its embedding matrix. Give the result its own tensor.
        src_t = head_src.get(adapter.tied_embedding_weight)
        head = cast(src_t)
        # A checkpoint hands out a fresh tensor on every read, and a cast is a copy already: copy only
        # a tensor still shared with an in-memory model.
        shared = isinstance(head_src, ModelSource) and head.data_ptr() == src_t.data_ptr()
        state[adapter.tied_head_weight] = head.clone() if shared and copy_untied_head else head
    if not tied and adapter.tied_head_weight in state and adapter.tied_embedding_weight in state:
        head, emb = state[adapter.tied_head_weight], state[adapter.tied_embedding_weight]
        if head.data_ptr() == emb.data_ptr() and copy_untied_head:
            # In-memory sources can share one matrix (a student fresh from init_student holds its
            # teacher's embedding; a tied source's head *is* it): an untied result needs two tensors.
            state[adapter.tied_head_weight] = head.detach().clone()
    # anything that is neither a layer nor a part (rare: extra buffers)
    state.update({k: cast(base.get(k)) for k in base.keys() if adapter.part_of(k)[0] == "other" and k not in state})

    model = _empty_model(config, adapter, dtype)
    expected = set(model.state_dict())
    if tied:
        expected.discard(adapter.tied_head_weight)
        state.pop(adapter.tied_head_weight, None)
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - set(model.state_dict()))
    if missing or unexpected:
        raise ValueError(f"assembled weights do not fit the {adapter.name} model: missing={missing[:8]} "
                         f"unexpected={unexpected[:8]}")
    model.load_state_dict(state, strict=False, assign=True)
    if tied:
        model.tie_weights()
    _drop_capture_hooks(model)
    adapter.renumber_layers(model)
    meta = [n for n, p in model.named_parameters() if p.is_meta]
    if meta and not all(t.is_meta for t in state.values() if t.is_floating_point()):
        # (sources on the meta device give a model on the meta device: the structure, for sharded loading)
        raise RuntimeError(f"parameters left uninitialized after assembly: {meta[:8]}")
    model.eval()
    return model
