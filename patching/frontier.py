"""The family as a frontier in size: the models no other model beats while being no larger.

A searched family is kept by **size**, not by depth: ``frontier(items, size, loss)`` is the set of items
that no other item beats (lower or equal loss) while being no larger (smaller or equal size), ordered by
size; along it the loss falls at every step. ``patching.search`` writes the frontier of every scored model
in (parameters, calibration KL) as ``search.json``'s ``ladder``; ``patching.patch --plan`` and
``patching.resident.ResidentFamily`` take members from it; a memory budget takes the frontier in
(weights + KV cache, calibration KL) of every scored model, for its dtype, batch and context.

Search results written before the frontier (their ``ladder`` was the best model at each depth) are read
the same way: ``as_frontier_plan`` rebuilds the frontier from their ``candidates`` (each candidate's
layers follow from its per-position codes and the layer map).
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence, TypeVar

from boomerang.layer_map import LayerMap, format_layers

T = TypeVar("T")

FRONTIER = "frontier"  # search.json's search.ladder when its ladder is the frontier in parameters


def frontier(items: Iterable[T], size: Callable[[T], float], loss: Callable[[T], float],
             tiebreak: Callable[[T], object] = lambda _: 0) -> list[T]:
    """The items no other item beats while being no larger, ordered by size (loss strictly falling).

    An item is left out when another has size <= its size and loss <= its loss (of equal items, the first
    by ``tiebreak`` is kept)."""
    out: list[T] = []
    best = float("inf")
    for it in sorted(items, key=lambda x: (size(x), loss(x), tiebreak(x))):
        if loss(it) < best:
            out.append(it)
            best = loss(it)
    return out


def widest_gap(sizes: Sequence[float]) -> tuple[float, int] | None:
    """``(gap, i)``: the widest step between consecutive sizes (sorted), ``sizes[i]`` -> ``sizes[i + 1]``."""
    sizes = sorted(sizes)
    if len(sizes) < 2:
        return None
    return max((b - a, i) for i, (a, b) in enumerate(zip(sizes, sizes[1:])))


# ---------------------------------------------------------------------------------------------- codes
def parse_layer_list(text: str) -> list[int]:
    """``"0, 2, 4-7"`` -> ``[0, 2, 4, 5, 6, 7]`` (the inverse of ``boomerang.layer_map.format_layers``)."""
    out: list[int] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        a, sep, b = part.partition("-")
        out.extend(range(int(a), int(b) + 1) if sep else [int(a)])
    return out


def block_layers(codes: Sequence[str], layer_map: LayerMap) -> list[tuple[str, int]]:
    """The layers of a searched model from its per-position codes (``S``, ``T``, ``-``, ``T[4]``)."""
    if len(codes) != layer_map.num_student_layers:
        raise ValueError(f"{len(codes)} position codes for a {layer_map.num_student_layers}-layer student")
    layers: list[tuple[str, int]] = []
    for j, (code, (a, b)) in enumerate(zip(codes, layer_map.blocks)):
        if code == "S":
            layers.append(("student", j))
        elif code == "T":
            layers.extend(("teacher", t) for t in range(a, b))
        elif code.startswith("T[") and code.endswith("]"):
            layers.extend(("teacher", t) for t in parse_layer_list(code[2:-1]))
        elif code != "-":
            raise ValueError(f"position code {code!r}: expected S, T, - or T[layers]")
    return layers


def candidate_entry(c: dict, layer_map: LayerMap) -> dict:
    """A ``candidates`` record of search.json as a ladder entry (its layers and parts spelled out)."""
    layers = block_layers(c["blocks"], layer_map)
    full = [f"T[{format_layers(range(a, b))}]" for a, b in layer_map.blocks]
    codes = " ".join("T" if code == f else code for code, f in zip(c["blocks"], full))
    return {"params": c["params"], "depth": c["depth"], "calibration_kl": c["calibration_kl"],
            "description": f"emb {c['embeddings_from'][0].upper()} | {codes} | head {c['head_from'][0].upper()}",
            "blocks": list(c["blocks"]), "layers": [list(x) for x in layers], "embeddings_from": c["embeddings_from"],
            "final_norm_from": c["head_from"], "lm_head_from": c["head_from"]}


def plan_layer_map(plan: dict) -> LayerMap:
    return LayerMap(int(plan["num_teacher_layers"]), tuple(plan["copied_teacher_layers"]))


def scored_entries(plan: dict) -> list[dict]:
    """Every model a search scored, as ladder entries (the ladder's own entries keep their ``found_by``)."""
    lm = plan_layer_map(plan)
    known = {(tuple(e["blocks"]), e["embeddings_from"], e["lm_head_from"]): e for e in plan["ladder"] if "blocks" in e}
    out = []
    for c in plan.get("candidates") or []:
        e = known.get((tuple(c["blocks"]), c["embeddings_from"], c["head_from"]))
        out.append(e if e is not None else candidate_entry(c, lm))
    return out or list(plan["ladder"])


def as_frontier_plan(plan: dict) -> dict:
    """The plan with ``ladder`` the frontier in (parameters, calibration KL); a plan that is one already, or that
    lists no candidates to rebuild it from, is returned as it is."""
    if (plan.get("search") or {}).get("ladder") == FRONTIER or not plan.get("candidates"):
        return plan
    def tiebreak(e):  # of equal size and KL: the fewest student parts (as patching.search breaks ties)
        parts = [src for src, _ in e["layers"]] + [e["embeddings_from"], e["lm_head_from"]]
        return (parts.count("student"), e["depth"], e["blocks"], e["embeddings_from"], e["lm_head_from"])

    ladder = frontier(scored_entries(plan), lambda e: e["params"], lambda e: e["calibration_kl"], tiebreak)
    return {**plan, "depth_ladder": plan["ladder"], "ladder": ladder,
            "search": {**(plan.get("search") or {}), "ladder": FRONTIER}}
