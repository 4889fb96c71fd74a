"""ShortGPT (Men et al., 2024, "ShortGPT: Layers in Large Language Models are More Redundant Than You
Expect"): remove the layers that change the hidden state least.

Block Influence of layer ``i``: ``BI_i = 1 - mean_t cos(x_i[t], x_{i+1}[t])`` where ``x_i`` is the
hidden state entering layer ``i`` and ``x_{i+1}`` the one leaving it, the mean running over every
real token of the calibration text (padding excluded), all batches pooled. BI is measured once on
the full model; the ``L - depth`` layers with the lowest BI are removed (ties: the later layer goes
first) and the rest keep their order.
"""

from __future__ import annotations

import torch

from baselines import BaselineError, check_batches, check_depth, model_inputs, prune_to_layers, token_mask
from boomerang.families import adapter_for


@torch.no_grad()
def block_influence(model, batches) -> list[float]:
    """BI of every layer of ``model`` on the calibration batches (see the module docstring)."""
    batches = check_batches(batches)
    adapter = adapter_for(model)
    layers = list(adapter.get_layers(model))[: adapter.num_layers(model.config)]
    sums = [0.0] * len(layers)
    count = 0
    current: dict = {}

    def make_hooks(i):
        def pre(module, args, kwargs):
            current["in", i] = args[0] if args else kwargs["hidden_states"]

        def post(module, args, kwargs, output):
            x_out = output[0] if isinstance(output, (tuple, list)) else output
            cos = torch.nn.functional.cosine_similarity(current.pop(("in", i)).float(), x_out.float(), dim=-1)
            sums[i] += float(cos[current["mask"].to(cos.device)].sum())

        return pre, post

    handles = []
    try:
        for i, layer in enumerate(layers):
            pre, post = make_hooks(i)
            handles.append(layer.register_forward_pre_hook(pre, with_kwargs=True))
            handles.append(layer.register_forward_hook(post, with_kwargs=True))
        device = next(model.parameters()).device
        for batch in batches:
            current["mask"] = token_mask(batch)
            model.base_model(**model_inputs(batch, device), use_cache=False)  # the backbone: no LM head needed
            count += int(current["mask"].sum())
    finally:
        for h in handles:
            h.remove()
    return [1.0 - s / count for s in sums]


def shortgpt_layers(block_influences, depth: int) -> list[int]:
    """The layers kept at ``depth``: all but the ``L - depth`` with the lowest BI, in their original order."""
    bi = [float(x) for x in block_influences]
    check_depth(depth, len(bi))
    order = sorted(range(len(bi)), key=lambda i: (bi[i], -i))  # lowest BI first; on a tie the later layer
    removed = set(order[: len(bi) - depth])
    return [i for i in range(len(bi)) if i not in removed]


def build_shortgpt_model(teacher, depth: int, block_influences=None, batches=None, dtype: torch.dtype | None = None):
    """Return ``(model, info)``: ``teacher`` cut to ``depth`` layers by Block Influence.

    Pass the BI list (computed once per family with :func:`block_influence`) or calibration batches.
    """
    if block_influences is None:
        if batches is None:
            raise BaselineError("ShortGPT needs calibration batches (or precomputed block influences)")
        block_influences = block_influence(teacher, batches)
    depth_of_teacher = adapter_for(teacher).num_layers(teacher.config)
    if len(block_influences) != depth_of_teacher:
        raise BaselineError(f"{len(block_influences)} block influences for a {depth_of_teacher}-layer teacher: "
                            "they were measured on another model")
    kept = shortgpt_layers(block_influences, depth)
    info = {"method": "shortgpt", "depth": depth, "teacher_layers": kept,
            "removed_teacher_layers": [i for i in range(depth_of_teacher) if i not in kept],
            "block_influence": [round(float(b), 6) for b in block_influences]}
    return prune_to_layers(teacher, kept, dtype), info
