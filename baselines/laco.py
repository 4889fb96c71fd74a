"""LaCo (Yang et al., 2024, "LaCo: Large Language Model Pruning via Layer Collapse").

Reserving-Differences-while-Seeking-Common (RDSC) merges a run of ``w`` consecutive layers into one:
``theta* = theta_l + sum_{k=1}^{w-1} (theta_{l+k} - theta_l)`` for every parameter (so ``w = 2`` keeps
the upper layer's weights). The search walks down from the top of the model: at position ``l`` it
merges layers ``l .. l+C-1`` of the current model, runs the calibration text and compares the final
hidden states (after the final norm) with the original model's by cosine similarity, averaged over
every real token. The merge is kept when the similarity is above the threshold ``T`` (then ``l``
moves down by the interval ``I``), else ``l`` moves down by one; ``l`` never goes below
``lowest_layer`` and the run of ``C`` layers always fits in the current model.

To hit a *requested* depth (the paper tunes C, I and T by hand) the run stops as soon as the model
has the target depth, and a last merge that would overshoot is narrowed to the width that lands
exactly on it. :meth:`LacoSearch.search` finds, for each merge width, the highest threshold that
still reaches each depth (a threshold grid shared by all depths, then a few bisection steps per
depth), then keeps the width whose model is most similar to the original. Every pass is recorded.
Similarities are memoized by merge history, so probes that share a prefix of decisions share its forward
passes, and layers below the scan position (still the teacher's own) start from cached teacher hidden states
rather than being recomputed.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from baselines import BaselineError, check_batches, check_depth, model_inputs, token_mask
from boomerang.assemble import LayerRef, as_source, assemble

log = logging.getLogger("boomerang.baselines.laco")

# Thresholds tried for every merge width (highest first); each target then refines between two of them.
DEFAULT_THRESHOLDS = (0.99, 0.98, 0.96, 0.93, 0.9, 0.85, 0.8, 0.7, 0.5, 0.0)


# ---------------------------------------------------------------------------------------------- RDSC
def rdsc_merge_tensors(tensors) -> torch.Tensor:
    """``t_0 + sum_{k>=1} (t_k - t_0)``, computed in float32 and returned in ``t_0``'s dtype."""
    tensors = list(tensors)
    if not tensors:
        raise BaselineError("RDSC needs at least one tensor")
    base = tensors[0].float()
    out = base.clone()
    for t in tensors[1:]:
        if t.shape != base.shape:
            raise BaselineError(f"cannot merge tensors of shapes {tuple(base.shape)} and {tuple(t.shape)}")
        out += t.float() - base
    return out.to(tensors[0].dtype)


def rdsc_merge_states(states) -> dict[str, torch.Tensor]:
    """RDSC of several layers given as ``{parameter name: tensor}`` dicts (the first is the base)."""
    states = list(states)
    names = list(states[0])
    for s in states[1:]:
        if list(s) != names:
            raise BaselineError("layers to merge have different parameters: they are not of one architecture")
    return {n: rdsc_merge_tensors([s[n] for s in states]) for n in names}


# ---------------------------------------------------------------------------------------------- slots
@dataclass(frozen=True)
class Slot:
    """One layer of a LaCo model: the teacher layers it stands for and, when merged, its weights."""

    covered: tuple[int, ...]
    params: dict | None = field(default=None, compare=False, hash=False)  # None: teacher layer covered[0]


def initial_slots(num_layers: int) -> list[Slot]:
    return [Slot((i,)) for i in range(num_layers)]


def merge_slots(slots: list[Slot], position: int, width: int, teacher_layers) -> list[Slot]:
    """Replace ``slots[position : position+width]`` by their RDSC merge (merged slots merge as they are)."""
    if width < 1 or position < 0 or position + width > len(slots):
        raise BaselineError(f"cannot merge {width} layers at position {position} of a {len(slots)}-layer model")
    run = slots[position: position + width]
    states = [s.params if s.params is not None else
              {n: p.detach() for n, p in teacher_layers[s.covered[0]].named_parameters()} for s in run]
    merged = Slot(tuple(i for s in run for i in s.covered), rdsc_merge_states(states) if width > 1 else run[0].params)
    return slots[:position] + [merged] + slots[position + width:]


def replay(num_layers: int, merges, teacher_layers) -> list[Slot]:
    """The slots after applying ``merges`` (a list of ``(position, width)``) to the original model."""
    slots = initial_slots(num_layers)
    for position, width in merges:
        slots = merge_slots(slots, position, width, teacher_layers)
    return slots


def build_from_slots(teacher, slots: list[Slot], dtype: torch.dtype | None = None):
    """A model of the teacher's family whose layers are ``slots`` (teacher embeddings, norm and head)."""
    src = as_source(teacher)
    model = assemble(src, [LayerRef(src, s.covered[0]) for s in slots], dtype=dtype)
    layers = src.adapter.get_layers(model)
    for j, s in enumerate(slots):
        if s.params is None:
            continue
        for name, tensor in s.params.items():
            owner_path, _, leaf = name.rpartition(".")
            owner = layers[j].get_submodule(owner_path) if owner_path else layers[j]
            t = tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor
            # A new Parameter: the assembled layer shares the teacher's, which must stay untouched.
            setattr(owner, leaf, nn.Parameter(t.contiguous(), requires_grad=False))
    return model


def groups_of(slots: list[Slot]) -> list[list[int]]:
    return [list(s.covered) for s in slots]


# ---------------------------------------------------------------------------------------------- search
class LacoSearch:
    """LaCo runs on one teacher and one calibration set, with a shared similarity memo."""

    @torch.no_grad()
    def __init__(self, teacher: nn.Module, batches, lowest_layer: int = 1, interval: int = 2):
        self.src = as_source(teacher)
        self.adapter = self.src.adapter
        self.L = self.adapter.num_layers(teacher.config)
        self.layers = list(self.adapter.get_layers(teacher))[: self.L]
        self.batches = check_batches(batches)
        if not 0 <= lowest_layer < self.L:
            raise BaselineError(f"lowest_layer must be in 0..{self.L - 1}, got {lowest_layer}")
        if interval < 1:
            raise BaselineError(f"the LaCo interval must be >= 1, got {interval}")
        self.lowest_layer, self.interval = lowest_layer, interval
        self.memo: dict[tuple, float] = {}
        self.evaluations, self.eval_seconds, self.grid_record = 0, 0.0, []
        # Teacher hidden states entering every layer (a candidate starts from them at its scan position) and
        # the final hidden states every candidate is compared with.
        self.device = next(teacher.parameters()).device
        self.inputs, self.final = [], []
        for b in self.batches:
            out = teacher.base_model(**model_inputs(b, self.device), output_hidden_states=True, use_cache=False)
            self.inputs.append(out.hidden_states[: self.L])
            self.final.append(out.last_hidden_state)

    @torch.no_grad()
    def similarity(self, slots: list[Slot], start: int) -> float:
        """Mean cosine similarity (over real tokens) of the final hidden states of ``slots`` to the teacher's,
        running only layers ``start..`` (the ones below are the teacher's own and start from its cache)."""
        if any(s.covered != (i,) or s.params is not None for i, s in enumerate(slots[:start])):
            raise AssertionError("layers below the scan position must be the teacher's own")
        t0 = time.time()
        model = build_from_slots(self.src, slots[start:])
        inject: dict = {}

        def pre(module, args, kwargs):  # the first layer's input is the cached teacher hidden state
            if args:
                return (inject["h"],) + tuple(args[1:]), kwargs
            return args, {**kwargs, "hidden_states": inject["h"]}

        handle = self.adapter.get_layers(model)[0].register_forward_pre_hook(pre, with_kwargs=True)
        total, count = 0.0, 0
        try:
            for b, cached, ref in zip(self.batches, self.inputs, self.final):
                inject["h"] = cached[start]
                out = model.base_model(**model_inputs(b, self.device), use_cache=False).last_hidden_state
                cos = torch.nn.functional.cosine_similarity(out.float(), ref.float(), dim=-1)
                mask = token_mask(b).to(cos.device)
                total += float(cos[mask].sum())
                count += int(mask.sum())
        finally:
            handle.remove()
        self.evaluations += 1
        self.eval_seconds += time.time() - t0
        return total / count

    def run(self, target_depth: int, merge_width: int, threshold: float) -> dict:
        """One LaCo pass that stops at ``target_depth``; returns its merges, slots and probe log."""
        check_depth(target_depth, self.L)
        if merge_width < 2:
            raise BaselineError(f"a LaCo merge joins at least 2 layers, got merge width {merge_width}")
        slots, merges, steps, last_sim = initial_slots(self.L), [], [], 1.0
        C = merge_width
        pos = len(slots) - C
        while pos >= self.lowest_layer and len(slots) > target_depth:
            width = min(C, len(slots) - target_depth + 1)
            pos = min(pos, len(slots) - width)
            if pos < self.lowest_layer:
                break
            key = (tuple(merges), (pos, width))
            candidate = None
            if key not in self.memo:
                candidate = merge_slots(slots, pos, width, self.layers)
                self.memo[key] = self.similarity(candidate, pos)
            s = self.memo[key]
            accepted = s > threshold
            steps.append({"position": pos, "width": width, "similarity": round(s, 6), "accepted": accepted})
            if accepted:
                slots = candidate or merge_slots(slots, pos, width, self.layers)
                merges.append((pos, width))
                last_sim = s
            pos = min(pos - (self.interval if accepted else 1), len(slots) - C)
        return {"target_depth": target_depth, "merge_width": merge_width, "threshold": threshold,
                "depth": len(slots), "reached": len(slots) == target_depth, "similarity": last_sim,
                "merges": merges, "groups": groups_of(slots), "steps": steps, "slots": slots}

    def search(self, target_depths, merge_widths=(2, 3), thresholds=DEFAULT_THRESHOLDS, refine_steps: int = 2) -> dict:
        """Reach every depth of ``target_depths``, searching the threshold and the merge width.

        For each merge width ``C``, one LaCo pass per threshold of the grid ``thresholds`` (stopping at
        the smallest target) tells which depths that threshold reaches. For each target, the highest
        grid threshold that reaches it is then refined by ``refine_steps`` bisection steps towards the
        next grid threshold (which did not reach it); the model kept for that width is the pass at the
        highest threshold that reached the target. Across widths, the model whose final hidden states
        are most similar to the original's wins. Returns ``{depth: {"record": ..., "run": ...}}``;
        every pass is recorded (threshold, depth reached, similarity, merges).
        """
        targets = sorted({check_depth(int(d), self.L) for d in target_depths}, reverse=True)
        if not targets:
            raise BaselineError("no target depth given")
        widths = [int(c) for c in merge_widths]
        if not widths or min(widths) < 2:
            raise BaselineError(f"LaCo merge widths must be >= 2, got {list(merge_widths)}")
        grid = sorted({float(t) for t in thresholds}, reverse=True)
        passes: dict[tuple[int, float], dict] = {}
        self.grid_record = []
        for C in widths:
            for T in grid:
                r = passes[C, T] = self.run(min(targets), C, T)
                self.grid_record.append({"merge_width": C, "threshold": T, "final_depth": r["depth"],
                                         "merges": r["merges"], "accepted_similarities":
                                             [s["similarity"] for s in r["steps"] if s["accepted"]]})
                log.info("LaCo grid: width %d threshold %.3f -> depth %d (%d similarity evaluations so far, %.0f s)",
                         C, T, r["depth"], self.evaluations, self.eval_seconds)
        out = {}
        for d in targets:
            record = {"target_depth": d, "interval": self.interval, "lowest_layer": self.lowest_layer, "widths": []}
            if d == self.L:  # the teacher's own depth: nothing to merge
                run = self.run(d, widths[0], 1.0)
                record["chosen"] = {"merge_width": None, "threshold": None, "similarity": 1.0, "merges": [],
                                    "groups": run["groups"]}
                out[d] = {"record": record, "run": run}
                continue
            best = None
            for C in widths:
                probes = []

                def probe(T):
                    r = self.run(d, C, T)
                    probes.append({"threshold": round(T, 6), "depth": r["depth"], "reached": r["reached"],
                                   "similarity": round(r["similarity"], 6), "merges": r["merges"]})
                    return r

                # highest first; an early stop can differ from the full pass, so check it
                for lo in (T for T in grid if passes[C, T]["depth"] <= d):
                    lo_run = probe(lo)
                    if lo_run["reached"]:
                        break
                else:
                    record["widths"].append({"merge_width": C, "reached": False, "probes": probes})
                    continue
                hi = min((T for T in grid if T > lo), default=None)
                for _ in range(refine_steps if hi is not None else 0):
                    mid = (lo + hi) / 2
                    r = probe(mid)
                    if r["reached"]:
                        lo, lo_run = mid, r
                    else:
                        hi = mid
                record["widths"].append({"merge_width": C, "reached": True, "threshold": round(lo, 6),
                                         "failed_above": None if hi is None else round(hi, 6),
                                         "similarity": round(lo_run["similarity"], 6), "merges": lo_run["merges"],
                                         "groups": lo_run["groups"], "probes": probes})
                if best is None or lo_run["similarity"] > best["similarity"]:
                    best = lo_run
            if best is None:
                raise BaselineError(
                    f"LaCo cannot reach depth {d} with merge widths {widths}, thresholds down to {min(grid)}, "
                    f"interval {self.interval} and lowest layer {self.lowest_layer}: add a lower threshold, wider "
                    "merges (--laco_merge_widths), a smaller --laco_interval or a lower --laco_lowest_layer"
                )
            record["chosen"] = {"merge_width": best["merge_width"], "threshold": round(best["threshold"], 6),
                                "similarity": round(best["similarity"], 6), "merges": best["merges"],
                                "groups": best["groups"]}
            out[d] = {"record": record, "run": best}
        return out

    def summary(self) -> dict:
        return {"similarity_evaluations": self.evaluations, "evaluation_seconds": round(self.eval_seconds, 1),
                "grid": self.grid_record}


def build_laco_model(teacher, slots_or_run, dtype: torch.dtype | None = None):
    """Return ``(model, info)`` from a :meth:`LacoSearch.run` / :meth:`LacoSearch.search` result or a slot list."""
    run = slots_or_run.get("run", slots_or_run) if isinstance(slots_or_run, dict) else {"slots": slots_or_run}
    slots = run["slots"]
    info = {"method": "laco", "depth": len(slots), "groups": groups_of(slots),
            "merges": [list(m) for m in run.get("merges", [])], "merge_width": run.get("merge_width"),
            "threshold": run.get("threshold"), "calibration_similarity": run.get("similarity")}
    return build_from_slots(teacher, slots, dtype), info
