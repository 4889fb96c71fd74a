"""Boomerang distillation in an off-the-shelf distilled encoder: BERT (teacher) and DistilBERT (student).

DistilBERT was initialized from BERT layers ``[0, 2, 4, 7, 9, 11]`` and distilled with a cosine
loss on hidden states, so its layer ``j`` stands for the BERT block that starts at layer
``copied[j]`` (the blocks ``[0,2) [2,4) [4,7) [7,9) [9,11) [11,12)``) and BERT's blocks can be
patched back into it. The two families compute the same thing under different names:

    DistilBERT TransformerBlock      BertLayer
    attention.q_lin / k_lin / v_lin  attention.self.query / key / value
    attention.out_lin                attention.output.dense
    sa_layer_norm                    attention.output.LayerNorm
    ffn.lin1 / ffn.lin2              intermediate.dense / output.dense
    output_layer_norm                output.LayerNorm

DistilBERT's embeddings have no token-type table; a BERT model that stands for DistilBERT gets a
zero token-type table, so ``LayerNorm(word + position + 0)`` is exactly DistilBERT's embedding.
The MLM heads match as well (``vocab_transform``/``vocab_layer_norm``/``vocab_projector`` ->
``cls.predictions.transform.dense``/``transform.LayerNorm``/``decoder``).

So the student is converted once into a ``BertForMaskedLM`` (:func:`distilbert_to_bert`, exact),
and every interpolated model is then an ordinary same-family patch (``patching.patch``), last-k
order: the student's embeddings, then student layers, then BERT blocks to the end, BERT's MLM head.

    from patching.encoder import distilbert_layer_map, distilbert_to_bert, interpolated_encoders
    layer_map = distilbert_layer_map(teacher.config.num_hidden_layers)
    student_bert = distilbert_to_bert(student, teacher.config)
    for k, plan, model in interpolated_encoders(teacher, student_bert, layer_map): ...
"""

from __future__ import annotations

import copy
from typing import Iterator, Sequence

import torch
from torch import nn

from boomerang.assemble import LayerRef, as_source, assemble
from boomerang.errors import BoomerangError
from boomerang.families import adapter_for
from boomerang.layer_map import LayerMap, PatchPlan
from patching.patch import build_intermediate_model

# The BERT layers DistilBERT's layers were initialized from (Sanh et al., 2019; the distillation script).
DISTILBERT_COPIED_LAYERS: tuple[int, ...] = (0, 2, 4, 7, 9, 11)

# DistilBERT parameter prefix -> BERT parameter prefix: within a layer, and outside the layers (DistilBertForMaskedLM
# -> BertForMaskedLM; the projector's bias is also BERT's cls.predictions.bias)
_LAYER_KEYS = {"attention.q_lin.": "attention.self.query.", "attention.k_lin.": "attention.self.key.",
               "attention.v_lin.": "attention.self.value.", "attention.out_lin.": "attention.output.dense.",
               "sa_layer_norm.": "attention.output.LayerNorm.", "ffn.lin1.": "intermediate.dense.",
               "ffn.lin2.": "output.dense.", "output_layer_norm.": "output.LayerNorm."}
_OTHER_KEYS = {"distilbert.embeddings.": "bert.embeddings.", "vocab_transform.": "cls.predictions.transform.dense.",
               "vocab_layer_norm.": "cls.predictions.transform.LayerNorm.",
               "vocab_projector.": "cls.predictions.decoder."}
_DISTILBERT_LAYER_NORM_EPS = 1e-12  # hard-coded in DistilBERT's modules


class EncoderPatchError(BoomerangError):
    pass


def _family(model_or_config) -> str:
    return adapter_for(model_or_config).name


def _require(model_or_config, family: str, role: str) -> None:
    got = _family(model_or_config)
    if got != family:
        raise EncoderPatchError(f"the {role} must be a {family} model, got a {got} model")


# ------------------------------------------------------------------------------------- layer map
def distilbert_layer_map(num_teacher_layers: int = 12,
                         copied_teacher_layers: Sequence[int] = DISTILBERT_COPIED_LAYERS) -> LayerMap:
    """The cross-architecture layer map: DistilBERT layer j stands for BERT block ``[copied[j], copied[j+1])``."""
    return LayerMap(int(num_teacher_layers), tuple(int(i) for i in copied_teacher_layers))


# ------------------------------------------------------------------------------------- conversion
def bert_config_from_distilbert(distil_config, teacher_config=None):
    """A ``BertConfig`` computing what ``distil_config`` computes.

    With ``teacher_config`` (the BERT the student was distilled from) the result is a copy of it
    with the student's depth, after checking that every shape and setting the layers depend on
    agrees; without it, one is built from the DistilBERT fields.
    """
    from transformers import BertConfig  # lazy: transformers takes seconds to import; commands start without it

    _require(distil_config, "distilbert", "student")
    c = distil_config
    tie = getattr(c, "tie_word_embeddings", True)
    fields = dict(vocab_size=c.vocab_size, hidden_size=c.dim, num_hidden_layers=c.n_layers,
                  num_attention_heads=c.n_heads, intermediate_size=c.hidden_dim, hidden_act=c.activation,
                  max_position_embeddings=c.max_position_embeddings, layer_norm_eps=_DISTILBERT_LAYER_NORM_EPS)
    if teacher_config is None:
        return BertConfig(**fields, hidden_dropout_prob=c.dropout, attention_probs_dropout_prob=c.attention_dropout,
                          pad_token_id=c.pad_token_id, tie_word_embeddings=tie)
    _require(teacher_config, "bert", "teacher")
    differ = [f"{name} (teacher {getattr(teacher_config, name)!r}, student {value!r})" for name, value in fields.items()
              if name != "num_hidden_layers" and getattr(teacher_config, name) != value]
    if differ:
        raise EncoderPatchError("the DistilBERT student and the BERT teacher differ in " + "; ".join(differ)
                                + ": their layers cannot be mixed (DistilBERT computes with layer_norm_eps=1e-12)")
    config = copy.deepcopy(teacher_config)
    config.num_hidden_layers, config.tie_word_embeddings = c.n_layers, tie
    return config


def _renamed(key: str, prefixes: dict[str, str]) -> str:
    for old, new in prefixes.items():
        if key.startswith(old):
            return new + key[len(old):]
    raise EncoderPatchError(f"unexpected DistilBERT parameter {key!r}")


def distilbert_layer_state_to_bert(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename one DistilBERT layer's state dict to BertLayer names (tensors are not copied)."""
    return {_renamed(key, _LAYER_KEYS): value for key, value in state.items()}


def distilbert_layer_to_bert(layer: nn.Module, bert_config) -> nn.Module:
    """A ``BertLayer`` with a DistilBERT ``TransformerBlock``'s weights: the same function of its input."""
    from transformers.models.bert.modeling_bert import BertLayer  # lazy: heavy, loaded on first use

    new = BertLayer(bert_config)
    ref = next(layer.parameters())
    new.to(device=ref.device, dtype=ref.dtype)
    new.load_state_dict(distilbert_layer_state_to_bert(layer.state_dict()), strict=True)
    new.train(layer.training)
    return new


def distilbert_to_bert(student: nn.Module, teacher_config=None, share: bool = True) -> nn.Module:
    """A ``BertForMaskedLM`` with the same outputs as the ``DistilBertForMaskedLM`` ``student``.

    Token-type embeddings are zero (DistilBERT has none), so any ``token_type_ids`` give DistilBERT's
    embeddings. With ``share`` the result's tensors are the student's own (no memory copy).
    """
    import transformers  # lazy: transformers takes seconds to import; commands start without it
    from accelerate import init_empty_weights  # lazy: accelerate only for meta-device builds

    _require(student, "distilbert", "student")
    if not hasattr(student, "vocab_projector"):
        raise EncoderPatchError("the student must be a DistilBertForMaskedLM (it has no MLM head)")
    config = bert_config_from_distilbert(student.config, teacher_config)
    config.dtype = str(next(student.parameters()).dtype).replace("torch.", "")
    params = dict(student.named_parameters(remove_duplicate=False))
    state: dict[str, torch.Tensor] = {}
    layer_prefix = "distilbert.transformer.layer."
    for key, value in params.items():
        if key.startswith(layer_prefix):
            index, rest = key[len(layer_prefix):].split(".", 1)
            state[f"bert.encoder.layer.{index}.{_renamed(rest, _LAYER_KEYS)}"] = value
        else:
            state[_renamed(key, _OTHER_KEYS)] = value
    state["cls.predictions.bias"] = params["vocab_projector.bias"]
    word = params["distilbert.embeddings.word_embeddings.weight"]
    state["bert.embeddings.token_type_embeddings.weight"] = torch.zeros(config.type_vocab_size, config.hidden_size,
                                                                        dtype=word.dtype, device=word.device)
    if not share:
        state = {k: v.detach().clone() for k, v in state.items()}

    with init_empty_weights(include_buffers=False):
        model = transformers.BertForMaskedLM(config)
    expected = set(model.state_dict().keys())
    tied = bool(config.tie_word_embeddings) and params["vocab_projector.weight"] is word
    if tied:
        state.pop("cls.predictions.decoder.weight")
        expected.discard("cls.predictions.decoder.weight")
    missing, unexpected = expected - set(state), set(state) - expected
    if missing or unexpected:
        raise EncoderPatchError(f"DistilBERT -> BERT conversion: missing={sorted(missing)} unexpected={sorted(unexpected)}")
    model.load_state_dict(state, strict=False, assign=True)
    if tied:
        model.tie_weights()
    model.to(word.device)  # buffers (position ids) follow the weights
    meta = [n for n, p in model.named_parameters() if p.is_meta]
    if meta:
        raise EncoderPatchError(f"parameters left uninitialized by the conversion: {meta[:8]}")
    model.name_or_path = getattr(student, "name_or_path", "")
    model.train(student.training)
    return model


# ------------------------------------------------------------------------------------- patching
def _as_bert_student(student: nn.Module, teacher: nn.Module, layer_map: LayerMap) -> nn.Module:
    family = _family(student)
    if family == "distilbert":
        student = distilbert_to_bert(student, teacher.config)
    elif family != "bert":
        raise EncoderPatchError(f"the student must be a DistilBERT or BERT model, got a {family} model")
    depth = student.config.num_hidden_layers
    if depth != layer_map.num_student_layers:
        raise EncoderPatchError(f"the layer map copies {layer_map.num_student_layers} teacher layers but the student "
                                f"has {depth} layers")
    student.boomerang_layer_map = layer_map
    return student


def _teacher_map(teacher: nn.Module, layer_map: LayerMap | None) -> LayerMap:
    """``layer_map`` (default: DistilBERT's for this teacher's depth), checked against the teacher."""
    layer_map = layer_map or distilbert_layer_map(teacher.config.num_hidden_layers)
    _require(teacher, "bert", "teacher")
    if teacher.config.num_hidden_layers != layer_map.num_teacher_layers:
        raise EncoderPatchError(f"the layer map is for a {layer_map.num_teacher_layers}-layer teacher but the teacher "
                                f"has {teacher.config.num_hidden_layers} layers")
    return layer_map


def interpolated_encoder(teacher: nn.Module, student: nn.Module, num_layers_to_patch: int,
                         layer_map: LayerMap | None = None) -> tuple[nn.Module, PatchPlan]:
    """The ``BertForMaskedLM`` that patches the last ``num_layers_to_patch`` BERT blocks into the student.

    ``student`` is a DistilBertForMaskedLM (converted here) or its :func:`distilbert_to_bert`
    conversion (convert once when building many). Tensors are shared with teacher and student.
    """
    layer_map = _teacher_map(teacher, layer_map)
    student = _as_bert_student(student, teacher, layer_map)
    model, _, plan = build_intermediate_model(teacher, student, num_layers_to_patch, patch_first_k_layers=False,
                                              dtype=None, return_plan=True)
    return model, plan


def interpolated_encoders(teacher: nn.Module, student: nn.Module,
                          layer_map: LayerMap | None = None) -> Iterator[tuple[int, PatchPlan, nn.Module]]:
    """Every interpolated model, smallest first: ``(k, plan, model)`` for k = 0 .. max (the teacher)."""
    layer_map = _teacher_map(teacher, layer_map)
    student = _as_bert_student(student, teacher, layer_map)
    for k in range(layer_map.max_patch + 1):
        model, plan = interpolated_encoder(teacher, student, k, layer_map)
        yield k, plan, model


def pruned_encoder(teacher: nn.Module, layers: Sequence[int]) -> nn.Module:
    """The teacher with only ``layers`` kept (in order), its own embeddings and head: naive pruning."""
    src = as_source(teacher)
    depth = src.adapter.num_layers(src.config)
    bad = [i for i in layers if not 0 <= i < depth]
    if bad or not layers:
        raise EncoderPatchError(f"layers to keep must be a non-empty list in 0..{depth - 1}, got {list(layers)}")
    return assemble(src, [LayerRef(src, int(i)) for i in layers])


def naive_pruned_encoders(teacher: nn.Module,
                          layer_map: LayerMap | None = None) -> Iterator[tuple[int, list[int], nn.Module]]:
    """The naive-pruning baseline at every interpolated depth: ``(k, kept teacher layers, model)``."""
    layer_map = _teacher_map(teacher, layer_map)
    for k in range(layer_map.max_patch + 1):
        layers = layer_map.naive_pruning_layers(k)
        yield k, layers, pruned_encoder(teacher, layers)

