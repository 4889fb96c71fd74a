"""Model-family adapters: the only place that knows how an architecture is laid out.

An adapter says where a family's decoder (or encoder) layers, input embeddings, final norm and
LM head live, whether the head can be tied to the embeddings, which config fields change when
layers are removed or added, and which per-layer index attributes must be renumbered (the KV
cache's ``layer_idx``). The family of a model is found from its config *class* (walking the class
hierarchy), never from a model name.

Adding a family is one ``FamilyAdapter(...)`` entry in ``_ADAPTERS`` below plus a tiny config in
``tests/tiny_models.py``.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn

from boomerang.errors import BoomerangError


class UnsupportedModelError(BoomerangError):
    pass


def get_submodule(root: nn.Module, path: str) -> nn.Module:
    return functools.reduce(getattr, path.split("."), root)


def set_submodule(root: nn.Module, path: str, value: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    setattr(get_submodule(root, parent_path) if parent_path else root, name, value)


@dataclass(frozen=True)
class FamilyAdapter:
    """How one model family is laid out (paths are attribute paths from the top-level model)."""

    name: str
    config_class: str  # class name in ``transformers``; subclasses match too
    layers: str  # the nn.ModuleList of decoder/encoder layers
    embeddings: tuple[str, ...]  # every module that is part of the input embedding
    final_norm: str | None  # the norm after the last layer (None: the family has none)
    lm_head: tuple[str, ...]  # every module of the output head
    depth_field: str = "num_hidden_layers"
    # Config fields holding one entry per layer: sliced/reordered with the layers.
    per_layer_fields: tuple[str, ...] = ("layer_types",)
    # Config fields holding a layer *count* threshold (layers below it behave differently): renumbered to the
    # count of kept layers below the old threshold.
    layer_threshold_fields: tuple[str, ...] = ()
    # Attributes of a layer's submodules that hold the layer's own index.
    layer_index_attrs: tuple[str, ...] = ("layer_idx",)
    # Attribute path of the input-embedding weight the head ties to (None: no tying in this family).
    tied_embedding_weight: str | None = None
    tied_head_weight: str | None = None
    # Old checkpoint key prefixes and the names this transformers version uses for them.
    checkpoint_aliases: tuple[tuple[str, str], ...] = ()
    # The transformers Auto class that builds a model of this family from its config.
    auto_class: str = "AutoModelForCausalLM"
    is_encoder: bool = False
    # True when ``inputs_embeds`` is the hidden state that enters layer 0 (nothing is added to it, as
    # GPT-2 adds position embeddings): a forward can then resume from a cached hidden state.
    inputs_embeds_is_hidden_state: bool = True
    # The paper's patch order for this family: first-k for Llama teachers (their first blocks are patched),
    # last-k for every other family. See patch_order().
    first_k_by_default: bool = False
    # Norm classes of this family that transformers 4.51.3 (the paper's pin) adds to ``ALL_LAYERNORM_LAYERS``, so that
    # its Trainer exempts every parameter inside them from weight decay (besides nn.LayerNorm and names holding
    # "bias", "layernorm" or "rmsnorm"): train.train.paper_param_groups.
    paper_decay_exempt_norms: tuple[str, ...] = ()
    notes: str = ""

    # ---------------------------------------------------------------- module access
    def get_layers(self, model: nn.Module) -> nn.ModuleList:
        return get_submodule(model, self.layers)

    def set_layers(self, model: nn.Module, layers: Iterable[nn.Module]) -> None:
        set_submodule(model, self.layers, nn.ModuleList(list(layers)))

    def num_layers(self, config) -> int:
        return int(getattr(config, self.depth_field))

    def parts(self) -> dict[str, tuple[str, ...]]:
        """Module paths of the non-layer parts, by role: embeddings, final_norm, lm_head."""
        final_norm = (self.final_norm,) if self.final_norm else ()
        return {"embeddings": self.embeddings, "final_norm": final_norm, "lm_head": self.lm_head}

    def layer_prefix(self) -> str:
        return self.layers + "."

    def part_of(self, param_name: str) -> tuple[str, int | None]:
        """Which role a state-dict key belongs to: ``("layer", i)`` or ``(role, None)``."""
        prefix = self.layer_prefix()
        if param_name.startswith(prefix):
            return "layer", int(param_name[len(prefix):].split(".", 1)[0])
        for role, paths in self.parts().items():
            if any(param_name == p or param_name.startswith(p + ".") for p in paths):
                return role, None
        return "other", None

    # ---------------------------------------------------------------- config surgery
    def config_for_layers(self, base_config, layer_refs: list[tuple[object, int]]):
        """A copy of ``base_config`` for a model whose layer ``i`` is layer ``layer_refs[i][1]`` of a
        model with config ``layer_refs[i][0]``: depth, per-layer fields and layer-count thresholds
        are rewritten so that every layer keeps the settings it had where it came from."""
        new = copy.deepcopy(base_config)
        setattr(new, self.depth_field, len(layer_refs))
        for fname in self.per_layer_fields:
            if isinstance(getattr(base_config, fname, None), (list, tuple)):
                setattr(new, fname, [list(getattr(cfg, fname))[i] for cfg, i in layer_refs])
        for fname in self.layer_threshold_fields:
            if isinstance(getattr(base_config, fname, None), int):
                setattr(new, fname, sum(1 for cfg, i in layer_refs if i < getattr(cfg, fname)))
        return new

    def renumber_layers(self, model: nn.Module) -> None:
        """Set every per-layer index attribute to the layer's position (the KV cache is indexed by it)."""
        for i, layer in enumerate(self.get_layers(model)):
            for mod in layer.modules():
                for attr in self.layer_index_attrs:
                    if hasattr(mod, attr) and isinstance(getattr(mod, attr), int):
                        setattr(mod, attr, i)

    def kv_cache_bytes(self, config, batch_size: int, context_length: int, bytes_per_value: int) -> int:
        """Bytes of the KV cache of a model with ``config`` holding ``context_length`` tokens of ``batch_size``
        sequences: keys and values of every layer (a sliding-window layer keeps at most its window)."""
        heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        types = getattr(config, "layer_types", None) or ["full_attention"] * self.num_layers(config)
        window = min(context_length, getattr(config, "sliding_window", None) or context_length)
        per_token = 2 * batch_size * heads * head_dim * bytes_per_value
        return sum(per_token * (window if t == "sliding_attention" else context_length) for t in types)

    def is_tied(self, model: nn.Module) -> bool:
        if self.tied_embedding_weight is None or self.tied_head_weight is None:
            return False
        emb = get_submodule(model, self.tied_embedding_weight.rsplit(".", 1)[0]).weight
        head = get_submodule(model, self.tied_head_weight.rsplit(".", 1)[0]).weight
        return emb is head or emb.data_ptr() == head.data_ptr()


FIRST_K, LAST_K = "first-k", "last-k"


def order_name(first_k: bool) -> str:
    """The name of a patch order: ``"first-k"`` or ``"last-k"`` (the one place these names are made)."""
    return FIRST_K if first_k else LAST_K


def patch_order(config, patch_first_k_layers: bool = False, override_llama_patching: bool = False) -> str:
    """The one rule every command follows (as the paper's code does): ``"first-k"`` when asked
    (``--patch_first_k_layers``), else ``"last-k"`` when asked (``--override_llama_patching``), else the
    family's order: first-k for Llama teachers (SmolLM2, Llama 3.x), last-k for the others."""
    if patch_first_k_layers and override_llama_patching:
        raise ValueError("--patch_first_k_layers and --override_llama_patching ask for opposite orders: give one")
    if patch_first_k_layers or override_llama_patching:
        return order_name(patch_first_k_layers)
    return order_name(adapter_for_config(config).first_k_by_default)


def set_tie(config, tied: bool) -> None:
    """Record whether the head is tied, wherever this transformers version reads it from."""
    config.tie_word_embeddings = tied
    text = getattr(config, "get_text_config", None)
    if callable(text):
        text().tie_word_embeddings = tied


# The Hugging Face decoder layout (``model.layers``, ``model.embed_tokens``, ``model.norm``, ``lm_head``).
_HF_DECODER = dict(layers="model.layers", embeddings=("model.embed_tokens",), final_norm="model.norm",
                   lm_head=("lm_head",), tied_embedding_weight="model.embed_tokens.weight",
                   tied_head_weight="lm_head.weight")
_QWEN_THRESHOLDS = ("max_window_layers",)
_ENCODER = dict(final_norm=None, per_layer_fields=(), layer_index_attrs=(), is_encoder=True,
                auto_class="AutoModelForMaskedLM")

_ADAPTERS: tuple[FamilyAdapter, ...] = (
    FamilyAdapter(name="llama", config_class="LlamaConfig", first_k_by_default=True,
                  paper_decay_exempt_norms=("LlamaRMSNorm",), notes="Llama 2/3.x, SmolLM2",
                  **_HF_DECODER),
    FamilyAdapter(name="mistral", config_class="MistralConfig", **_HF_DECODER),
    FamilyAdapter(name="qwen2", config_class="Qwen2Config", layer_threshold_fields=_QWEN_THRESHOLDS, **_HF_DECODER),
    FamilyAdapter(name="qwen3", config_class="Qwen3Config", layer_threshold_fields=_QWEN_THRESHOLDS, **_HF_DECODER),
    FamilyAdapter(name="gemma3_text", config_class="Gemma3TextConfig", notes="Gemma 3 text-only (Gemma3ForCausalLM)",
                  **_HF_DECODER),
    FamilyAdapter(
        name="gpt_neox", config_class="GPTNeoXConfig", layers="gpt_neox.layers", embeddings=("gpt_neox.embed_in",),
        final_norm="gpt_neox.final_layer_norm", lm_head=("lm_head",), tied_embedding_weight="gpt_neox.embed_in.weight",
        tied_head_weight="lm_head.weight", checkpoint_aliases=(("embed_out.", "lm_head."),), notes="Pythia",
    ),
    FamilyAdapter(
        name="gpt2", config_class="GPT2Config", layers="transformer.h", final_norm="transformer.ln_f",
        embeddings=("transformer.wte", "transformer.wpe"), lm_head=("lm_head",), depth_field="n_layer",
        tied_embedding_weight="transformer.wte.weight", tied_head_weight="lm_head.weight",
        inputs_embeds_is_hidden_state=False,
        notes="scale_attn_by_inverse_layer_idx=True makes attention depend on the layer index",
    ),
    FamilyAdapter(
        name="bert", config_class="BertConfig", layers="bert.encoder.layer", embeddings=("bert.embeddings",),
        lm_head=("cls",), tied_embedding_weight="bert.embeddings.word_embeddings.weight",
        tied_head_weight="cls.predictions.decoder.weight", notes="BertForMaskedLM", **_ENCODER,
    ),
    FamilyAdapter(
        name="distilbert", config_class="DistilBertConfig", layers="distilbert.transformer.layer",
        embeddings=("distilbert.embeddings",), lm_head=("vocab_transform", "vocab_layer_norm", "vocab_projector"),
        depth_field="n_layers", tied_embedding_weight="distilbert.embeddings.word_embeddings.weight",
        tied_head_weight="vocab_projector.weight", notes="DistilBertForMaskedLM", **_ENCODER,
    ),
)


def _config_class(name: str):
    import transformers  # lazy: transformers takes seconds to import; commands start without it

    return getattr(transformers, name, None)


def supported_families() -> list[str]:
    return [f"{a.name} ({a.config_class})" for a in _ADAPTERS]


def adapter_for_config(config) -> FamilyAdapter:
    """The adapter of ``config``'s class (or the nearest base class that has one)."""
    by_class = {cls: a for a in _ADAPTERS if (cls := _config_class(a.config_class)) is not None}
    for cls in type(config).__mro__:
        if cls in by_class:
            return by_class[cls]
    raise UnsupportedModelError(
        f"boomerang has no adapter for models with config class {type(config).__name__} "
        f"(model_type={getattr(config, 'model_type', '?')!r}). Supported: {', '.join(supported_families())}. "
        "Adding one is a FamilyAdapter entry in boomerang/families.py."
    )


def adapter_for(model_or_config) -> FamilyAdapter:
    return adapter_for_config(getattr(model_or_config, "config", model_or_config))


def count_parameters(model: nn.Module, adapter: FamilyAdapter | None = None) -> dict[str, int]:
    """Total and non-embedding parameter counts, each shared tensor counted once.

    ``non_embedding`` excludes the input embeddings and, when untied, the LM head's output matrix
    too (the usual convention: the vocabulary matrices are not "model" parameters).
    """
    adapter = adapter or adapter_for(model)
    seen: set[int] = set()
    total = emb = 0
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        role, _ = adapter.part_of(name)
        if role == "embeddings" or (role == "lm_head" and p.dim() == 2 and p.shape[0] == model.config.vocab_size):
            emb += p.numel()
    return {"total": total, "non_embedding": total - emb}


def dtype_from_name(name: str | torch.dtype | None) -> torch.dtype | None:
    if name is None or isinstance(name, torch.dtype):
        return name
    table = {"float32": torch.float32, "fp32": torch.float32, "float": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16, "half": torch.float16}
    if name == "auto":
        return None
    if name not in table:
        raise ValueError(f"unknown dtype {name!r}; use one of float32, bfloat16, float16, auto")
    return table[name]


__all__ = ["FamilyAdapter", "UnsupportedModelError", "adapter_for", "adapter_for_config", "count_parameters",
           "dtype_from_name", "get_submodule", "set_submodule", "set_tie", "supported_families"]
