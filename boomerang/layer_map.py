"""The layer map: which teacher layers a student copies, and what each student layer stands for.

Notation (as in ``docs/patching.md``): the teacher has ``L`` layers ``0..L-1``; ``copied`` is the sorted
list of teacher layers the student copies (``copied_teacher_layers`` in ``student_config.json``).
Student layer ``j`` is a copy of teacher layer ``copied[j]`` and stands for the teacher *block*
``[copied[j], copied[j+1])`` (the last one for ``[copied[-1], L)``). A block is *multi-layer* when it
holds more than one teacher layer; ``num_layers_to_patch`` counts multi-layer blocks only.

Everything about which layers go where — student initialization, the cosine-loss pairs, every
patched size in either order — is derived here from ``copied`` and ``L`` alone, so the trainer,
patching, the baselines and the evaluation all agree by construction.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Iterable, Sequence

from boomerang.errors import BoomerangError
from boomerang.io import atomic_write_text

STUDENT_CONFIG_NAME = "student_config.json"


class LayerMapError(BoomerangError):
    """A layer map that cannot exist (bad recipe, or a student that does not fit its teacher)."""


@dataclass(frozen=True)
class PatchPlan:
    """What a patched model is made of: its layers in order and where embeddings, norm and head come from.

    ``layers`` holds ``(source, index)`` pairs: ``source`` is ``"teacher"`` or ``"student"``, ``index`` the layer's
    index in that model."""

    layers: tuple[tuple[str, int], ...]
    embeddings_from: str
    final_norm_from: str
    lm_head_from: str
    replaced_blocks: tuple[int, ...]  # student layer indices whose block is taken from the teacher

    @property
    def depth(self) -> int:
        return len(self.layers)

    def teacher_layers(self) -> list[int]:
        return [i for s, i in self.layers if s == "teacher"]

    def student_layers(self) -> list[int]:
        return [i for s, i in self.layers if s == "student"]


@dataclass(frozen=True)
class LayerMap:
    """Teacher depth plus the teacher layers the student copied. Immutable; cheap to build."""

    num_teacher_layers: int
    copied_teacher_layers: tuple[int, ...]

    def __post_init__(self) -> None:
        L, keep = self.num_teacher_layers, self.copied_teacher_layers
        if L < 1:
            raise LayerMapError(f"the teacher must have at least one layer, got {L}")
        if not keep:
            raise LayerMapError("copied_teacher_layers is empty: a student needs at least one layer")
        if list(keep) != sorted(set(keep)):
            raise LayerMapError(f"copied_teacher_layers must be strictly increasing, got {list(keep)}")
        if keep[0] != 0:
            raise LayerMapError(f"copied_teacher_layers must start with teacher layer 0 (got {keep[0]}): student "
                                "layer 0 stands for the block that starts at the teacher's first layer")
        if keep[-1] >= L:
            raise LayerMapError(f"copied_teacher_layers names teacher layer {keep[-1]} but the teacher has only {L} "
                                f"layers (0..{L - 1}): this student was not made from a teacher of this depth")

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_recipe(cls, num_teacher_layers: int, first_layers_to_keep: int = 1, alternate_every_n_layers: int = 2,
                    last_layers_to_keep: int = 2) -> "LayerMap":
        """The paper's construction: keep the first ``f`` layers, then every ``n``-th, then the last ``l``.

        The aligned teacher outputs are ``t = f+n-1, f+2n-1, ...`` while ``t <= L-l``; for each such
        ``t`` the ``n-1`` layers ``t-n+1 .. t-1`` are dropped.
        """
        L, f, n, l = num_teacher_layers, first_layers_to_keep, alternate_every_n_layers, last_layers_to_keep
        for name, value in (("first_layers_to_keep", f), ("last_layers_to_keep", l)):
            if not isinstance(value, int) or value < 0:
                raise LayerMapError(f"--{name} must be an integer >= 0, got {value!r}")
        if not isinstance(n, int) or n < 1:
            raise LayerMapError(f"--alternate_every_n_layers must be an integer >= 1, got {n!r} "
                                "(1 keeps every layer, 2 keeps every other layer, ...)")
        if f + l > L:
            raise LayerMapError(f"--first_layers_to_keep {f} + --last_layers_to_keep {l} = {f + l} layers, but the "
                                f"teacher has only {L}: lower one of them")
        if f == 0 and n == 1 and l == 0:
            raise LayerMapError("this recipe keeps no layer")
        pruned = {i for t in range(f + n - 1, L - l + 1, n) for i in range(t - n + 1, t)}
        keep = tuple(i for i in range(L) if i not in pruned)
        if not keep or keep[0] != 0:
            # f == 0 and n > 1 drops layer 0 itself; the student's first layer would then stand for
            # nothing before it. The paper always keeps layer 0 (f >= 1) — so do we.
            raise LayerMapError(f"the recipe (first={f}, every={n}, last={l}) drops teacher layer 0; use "
                                "--first_layers_to_keep 1 or more")
        return cls(L, keep)

    @classmethod
    def from_student_config(cls, cfg: dict, num_teacher_layers: int | None = None) -> "LayerMap":
        """Read the paper's ``student_config.json`` dict (``copied_teacher_layers``, ``pruned_teacher_layers``).

        The paper's file has no teacher depth; it is the size of the union of both lists. Extra keys
        written by this project (``num_teacher_layers``, the recipe) are used when present.
        """
        if "copied_teacher_layers" not in cfg:
            raise LayerMapError(f"{STUDENT_CONFIG_NAME} has no 'copied_teacher_layers' (keys: {sorted(cfg)}); "
                                "it must list the teacher layers the student copied")
        keep = tuple(int(i) for i in cfg["copied_teacher_layers"])
        pruned = tuple(int(i) for i in cfg.get("pruned_teacher_layers", ()))
        if both := set(keep) & set(pruned):
            raise LayerMapError(f"{STUDENT_CONFIG_NAME}: layers {sorted(both)} are listed both as copied and pruned")
        L = cfg.get("num_teacher_layers")
        if L is None:
            L = len(keep) + len(pruned)
            if sorted(keep + pruned) != list(range(L)):
                raise LayerMapError(f"{STUDENT_CONFIG_NAME}: copied and pruned layers together must be 0..L-1 "
                                    f"(got copied={list(keep)}, pruned={list(pruned)})")
        if num_teacher_layers is not None and int(L) != num_teacher_layers:
            raise LayerMapError(f"the student was distilled from a {L}-layer teacher, but the teacher given has "
                                f"{num_teacher_layers} layers: pass the teacher the student was made from")
        return cls(int(L), keep)

    @classmethod
    def load(cls, student_dir: str | os.PathLike, num_teacher_layers: int | None = None) -> "LayerMap":
        path = os.path.join(os.fspath(student_dir), STUDENT_CONFIG_NAME)
        if not os.path.isfile(path):
            raise LayerMapError(f"{path} not found: a boomerang student folder holds {STUDENT_CONFIG_NAME} next to its "
                                "weights (written by `python -m train.init_student` and `train.train`)")
        with open(path) as f:
            return cls.from_student_config(json.load(f), num_teacher_layers)

    def to_student_config(self, **extra) -> dict:
        """The paper's two keys first (so its code reads our files), then ``num_teacher_layers`` and extras."""
        return {"pruned_teacher_layers": list(self.pruned_teacher_layers),
                "copied_teacher_layers": list(self.copied_teacher_layers),
                "num_teacher_layers": self.num_teacher_layers, **extra}

    def save(self, student_dir: str | os.PathLike, **extra) -> str:
        path = os.path.join(os.fspath(student_dir), STUDENT_CONFIG_NAME)
        atomic_write_text(path, json.dumps(self.to_student_config(**extra), indent=2) + "\n")
        return path

    # ------------------------------------------------------------------ derived facts
    @property
    def num_student_layers(self) -> int:
        return len(self.copied_teacher_layers)

    @property
    def pruned_teacher_layers(self) -> tuple[int, ...]:
        keep = set(self.copied_teacher_layers)
        return tuple(i for i in range(self.num_teacher_layers) if i not in keep)

    @property
    def blocks(self) -> tuple[tuple[int, int], ...]:
        """For each student layer j, the teacher block ``[start, end)`` it stands for."""
        keep = self.copied_teacher_layers
        return tuple(zip(keep, keep[1:] + (self.num_teacher_layers,)))

    @property
    def multi_layer_blocks(self) -> tuple[int, ...]:
        """Student indices whose block holds more than one teacher layer (the ones patching can replace)."""
        return tuple(j for j, (a, b) in enumerate(self.blocks) if b - a > 1)

    @property
    def max_patch(self) -> int:
        return len(self.multi_layer_blocks)

    def cosine_pairs(self) -> list[tuple[int, int]]:
        """Aligned ``hidden_states`` indices ``(student, teacher)`` for the cosine loss.

        Index 0 is the embedding output and -1 the output after the final norm (Hugging Face's
        convention). Student index ``j+1`` (output of student layer j) is aligned with teacher index
        ``copied[j+1]`` (output of the last teacher layer of block j), for every student layer but
        the last, whose output is only seen through the final norm (the -1 pair).
        """
        keep = self.copied_teacher_layers
        return [(0, 0)] + [(j + 1, keep[j + 1]) for j in range(self.num_student_layers - 1)] + [(-1, -1)]

    def paper_cosine_pairs(self, first_layers_to_keep: int, alternate_every_n_layers: int,
                           last_layers_to_keep: int) -> list[tuple[int, int]]:
        """The aligned pairs of the paper's code (``get_layer_mappings`` in its train/train.py), in its dict's order.

        On the recipes of the presets they are ``cosine_pairs()``. Elsewhere they differ: the paper pairs the first
        ``f`` outputs, then one per ``t = f+n-1, f+2n-1, ... <= L-l``, then continues with the teacher layers
        ``L-l+1 .. L-1`` as if the last ``t`` were ``L-l``; when it is not, the student layers kept between the last
        ``t`` and the last ``l`` get no pair (L=4, (1,2,1): student = teacher layers 0, 2, 3; the paper pairs
        (0,0), (1,2), (-1,-1), leaving student output 2 = teacher layer 2's unpaired; ``cosine_pairs()`` adds
        (2,3); L=5, (1,2,2): student = 0, 2, 3, 4 and the paper pairs student output 2 (teacher layer 2's) with
        teacher output 4 (layer 3's), leaving student output 3 unpaired; with l = 0 the last t is L, the final-norm
        output, paired twice). A student index the dict assigns twice keeps its first place and its last teacher
        index, as a dict does. ``recipe: paper`` uses these (train.train.forward); docs/training.md."""
        L, f, n, l = self.num_teacher_layers, first_layers_to_keep, alternate_every_n_layers, last_layers_to_keep
        aligned = {i: i for i in range(f)}
        largest = 0
        for i, t in enumerate(range(f + n - 1, L - l + 1, n)):
            aligned[i + f] = t
            largest = i + f
        for t in range(L - l + 1, L):
            largest += 1
            aligned[largest] = t
        aligned[-1] = -1
        return list(aligned.items())

    # ------------------------------------------------------------------ patching
    def _check_blocks(self, blocks: Iterable[int]) -> tuple[int, ...]:
        blocks = tuple(sorted(set(int(b) for b in blocks)))
        n = self.num_student_layers
        if bad := [b for b in blocks if not 0 <= b < n]:
            raise LayerMapError(f"student layers {bad} do not exist: the student has layers 0..{n - 1}")
        return blocks

    def plan_blocks(self, blocks: Iterable[int], embeddings_from: str = "student",
                    head_from: str = "student") -> PatchPlan:
        """The general form: replace the given student layers by their teacher blocks.

        Replacing a 1:1 block swaps the student layer for its (identical-position) teacher layer.
        ``embeddings_from`` / ``head_from`` say whose embeddings, final norm and LM head to use.
        """
        blocks = self._check_blocks(blocks)
        layers: list[tuple[str, int]] = []
        for j, (a, b) in enumerate(self.blocks):
            if j in blocks:
                layers.extend(("teacher", t) for t in range(a, b))
            else:
                layers.append(("student", j))
        for name, v in (("embeddings_from", embeddings_from), ("head_from", head_from)):
            if v not in ("teacher", "student"):
                raise LayerMapError(f"{name} must be 'teacher' or 'student', got {v!r}")
        return PatchPlan(tuple(layers), embeddings_from, head_from, head_from, blocks)

    def plan(self, num_layers_to_patch: int, patch_first_k_layers: bool = False) -> PatchPlan:
        """The paper's orders: replace the last (default) or first ``k`` multi-layer blocks.

        Last-k: with ``M`` the multi-layer block indices and ``s = M[-(k+1)] + 1``, the result is
        student layers ``0..s-1`` followed by every teacher layer from ``copied[s]``, with the
        teacher's final norm and head (so ``k = 0`` already swaps the trailing 1:1 layers).
        First-k: with ``s = M[k]``, teacher layers ``0..copied[s]-1`` followed by student layers
        ``s..``, with the teacher's embeddings. ``k = len(M)`` is the teacher itself.
        """
        k = num_layers_to_patch
        M = self.multi_layer_blocks
        if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k <= len(M):
            raise LayerMapError(f"num_layers_to_patch must be an integer in 0..{len(M)} for this student "
                                f"({len(M)} multi-layer blocks; {len(M)} gives the full teacher), got {k!r}")
        n = self.num_student_layers
        if k == len(M):
            return self.plan_blocks(range(n), "teacher", "teacher")
        if patch_first_k_layers:
            return self.plan_blocks(range(M[k]), "teacher", "student")
        return self.plan_blocks(range(M[-(k + 1)] + 1, n), "student", "teacher")

    def ladder(self, patch_first_k_layers: bool = False) -> list[PatchPlan]:
        """Every size of one order, from the student's (k=0) to the teacher's (k=max_patch)."""
        return [self.plan(k, patch_first_k_layers) for k in range(self.max_patch + 1)]

    def naive_pruning_layers(self, num_layers_to_patch: int, patch_first_k_layers: bool = False) -> list[int]:
        """Teacher layers kept by naive pruning at the size of patch ``k``: the plan with every
        student layer read as the teacher layer it was copied from (an untrained student)."""
        plan = self.plan(num_layers_to_patch, patch_first_k_layers)
        keep = self.copied_teacher_layers
        return [i if s == "teacher" else keep[i] for s, i in plan.layers]


def format_layers(layers: Sequence[int]) -> str:
    """``[0, 2, 4, 5, 6, 7]`` -> ``"0, 2, 4-7"`` (for tables and provenance files)."""
    out: list[str] = []
    layers = list(layers)
    i = 0
    while i < len(layers):
        j = i
        while j + 1 < len(layers) and layers[j + 1] == layers[j] + 1:
            j += 1
        out.append(str(layers[i]) if j == i else f"{layers[i]}-{layers[j]}")
        i = j + 1
    return ", ".join(out)
