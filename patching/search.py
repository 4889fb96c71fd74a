"""Search for the best model a student/teacher pair can assemble at every size, without training.

The paper builds intermediate models in a fixed order (last-k or first-k). This searches the space the
pair spans instead. At each position ``j`` of the student's layer map one of:

- ``S``: student layer j;
- ``T``: the teacher block it stands for (teacher layers ``[copied[j], copied[j+1])``);
- with ``--allow_drop``: nothing (the position removed, as layer pruning does), or part of the
  teacher block (some of its layers dropped), so that ShortGPT-style pruning of the teacher is a
  point of the space too;

and the embeddings, and the final norm with the head, from either model. Both fixed orders are points
of this space, and are always scored.

The criterion is the mean per-token KL(teacher || model) of the next-token distribution on a
calibration text. The teacher's log-probabilities are computed once; candidates are assembled from
the two loaded models' tensors (shared, not copied), and a candidate that shares a prefix of layers
(and embeddings) with one already run starts from the cached hidden state after that prefix.

Two searches, whose candidates are pooled:
- greedy from the student: at each step the change toward the teacher (a block to the teacher's, or
  the embeddings or head to the teacher's) that lowers KL most per added parameter;
- beam search of width W over depths: at each depth the W best models found so far are expanded by
  every single change; with ``--allow_drop`` first downward from the student, then upward.

Then the gaps: wherever two consecutive models of the frontier (below) are further apart than the
largest teacher block's parameters, every model one change away from a scored model whose size falls
in the gap (or equals the smaller one's) is scored (up to ``--gap_candidates`` a gap, from the lowest-KL models first).

The result is the family as a frontier in size (``patching.frontier``): every scored model that no
other scored model beats (lower or equal calibration KL) while being no larger, ordered by parameters,
in ``search.json``'s ``ladder`` (depth is a property of each model; ``depth_ladder`` keeps the lowest
KL at each depth). ``python -m patching.patch --plan search.json --target_params N`` (or
``--max_memory_gb`` / ``--max_latency_ms``) builds the best model under a budget, ``python -m
evaluate.evaluate --sweep --plan search.json`` evaluates the frontier, ``python -m patching.generate``
runs any of its members from one resident copy of teacher and student.

    python -m patching.search --teacher_model_name_or_path T --student_model_name_or_path S \\
        --calibration_data ../shared/data/corpus/brown_train.jsonl --save_directory D \\
        [--calibration_samples 16] [--calibration_seq_len 128] [--beam_width 2] [--allow_drop]
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import time
from dataclasses import dataclass, replace

import torch

from boomerang.assemble import ModelSource
from boomerang.cli import fail, setup_logging
from boomerang.errors import BoomerangError
from boomerang.families import adapter_for_config, dtype_from_name
from boomerang.io import atomic_write_json
from boomerang.layer_map import LayerMap, PatchPlan, format_layers
from boomerang.models import load_config, load_model, load_tokenizer, resolve_model_path
from boomerang.scoring import TeacherReference, fixed_length_sequences
from boomerang.text import read_local_documents
from patching.frontier import FRONTIER, frontier, widest_gap
from patching.patch import assemble_plan, load_layer_map

log = logging.getLogger("boomerang.search")

SEARCH_FILE = "search.json"
Layers = tuple[tuple[str, int], ...]


class SearchError(BoomerangError):
    pass


# --------------------------------------------------------------------------------------------- candidates
@dataclass(frozen=True)
class Candidate:
    """One point of the search space: the layers taken at each position, and where the parts come from."""

    blocks: tuple[Layers, ...]  # per student position: (("student", j),), the teacher block, part of it, or ()
    embeddings_from: str
    head_from: str  # the final norm and the LM head

    @property
    def layers(self) -> Layers:
        return tuple(x for b in self.blocks for x in b)

    @property
    def depth(self) -> int:
        return sum(len(b) for b in self.blocks)

    def at(self, j: int, block: Layers) -> "Candidate":
        """This candidate with ``block`` at position ``j``."""
        return Candidate(self.blocks[:j] + (block,) + self.blocks[j + 1:], self.embeddings_from, self.head_from)

    def plan(self) -> PatchPlan:
        replaced = tuple(j for j, b in enumerate(self.blocks) if any(src == "teacher" for src, _ in b))
        return PatchPlan(self.layers, self.embeddings_from, self.head_from, self.head_from, replaced)

    def codes(self) -> list[str]:
        """Per position: ``S``, ``T``, ``-`` (dropped) or ``T[4]`` (part of the teacher block: its layer 4)."""
        return ["-" if not b else "S" if b[0][0] == "student" else f"T[{format_layers([i for _, i in b])}]"
                for b in self.blocks]

    def describe(self, full_blocks: list[Layers]) -> str:
        codes = ["T" if b == full and b and b[0][0] == "teacher" else c
                 for c, b, full in zip(self.codes(), self.blocks, full_blocks)]
        return f"emb {self.embeddings_from[0].upper()} | {' '.join(codes)} | head {self.head_from[0].upper()}"


class SearchSpace:
    """The options at each position and the parameter count of any candidate (computed, not built)."""

    def __init__(self, teacher: ModelSource, student: ModelSource, layer_map: LayerMap, allow_drop: bool = False):
        self.teacher, self.student, self.layer_map, self.allow_drop = teacher, student, layer_map, allow_drop
        self.adapter = teacher.adapter
        self.full_blocks: list[Layers] = [tuple(("teacher", t) for t in range(a, b)) for a, b in layer_map.blocks]
        self.options: list[list[Layers]] = []
        for j, full in enumerate(self.full_blocks):
            opts = [(("student", j),), full]
            if allow_drop:
                opts.append(())
                idx = [i for _, i in full]
                if len(idx) > 1:  # part of the block: every proper subset up to 4 layers, else drop one
                    sizes = range(1, len(idx)) if len(idx) <= 4 else [len(idx) - 1]
                    for r in sizes:
                        opts += [tuple(("teacher", i) for i in sub) for sub in itertools.combinations(idx, r)]
            self.options.append(opts)
        self._sources = {"teacher": teacher, "student": student}
        self._layer_params = {}
        for name, src in self._sources.items():
            for key in src.keys():
                role, i = src.adapter.part_of(key)
                if role == "layer":
                    self._layer_params[(name, i)] = self._layer_params.get((name, i), 0) + src.get(key).numel()
        self._part_params = {(name, role): sum(src.get(k).numel() for k in src.role_keys(role))
                             for name, src in self._sources.items() for role in ("embeddings", "final_norm", "lm_head")}
        # parameters of each whole teacher block: the frontier's gaps are filled down to the largest of them
        self.block_params = [sum(self._layer_params[x] for x in full) for full in self.full_blocks]
        self._vocab_matrix = {name: src.get(self.adapter.tied_embedding_weight).numel()
                              if self.adapter.tied_embedding_weight else 0 for name, src in self._sources.items()}

    def student_candidate(self) -> Candidate:
        return Candidate(tuple(opts[0] for opts in self.options), "student", "student")

    def teacher_candidate(self) -> Candidate:
        return Candidate(tuple(self.full_blocks), "teacher", "teacher")

    def from_plan(self, plan: PatchPlan) -> Candidate:
        """The candidate of a fixed-order plan (its replaced blocks taken whole)."""
        blocks = tuple(self.full_blocks[j] if j in plan.replaced_blocks else (("student", j),)
                       for j in range(self.layer_map.num_student_layers))
        cand = Candidate(blocks, plan.embeddings_from, plan.lm_head_from)
        assert cand.layers == tuple(plan.layers), "a fixed-order plan is not a point of the search space"
        return cand

    def tied(self, cand: Candidate) -> bool:
        return cand.embeddings_from == cand.head_from and self._sources[cand.head_from].tied()

    def params(self, cand: Candidate) -> int:
        """Total parameters of the assembled model (each shared tensor once), as ``count_parameters`` counts."""
        n = sum(self._layer_params[x] for x in cand.layers)
        n += self._part_params[(cand.embeddings_from, "embeddings")] + self._part_params[(cand.head_from, "final_norm")]
        head = self._part_params[(cand.head_from, "lm_head")]
        if not self.tied(cand) and head == 0:  # the head source is tied: the result gets its own head matrix
            head = self._vocab_matrix[cand.head_from]
        return n + (0 if self.tied(cand) else head)

    def moves(self, cand: Candidate):
        """Every candidate one change away: one position's option, or the embeddings' or head's source."""
        for j, opts in enumerate(self.options):
            yield from (cand.at(j, o) for o in opts if o != cand.blocks[j])
        other = {"student": "teacher", "teacher": "student"}
        yield replace(cand, embeddings_from=other[cand.embeddings_from])
        yield replace(cand, head_from=other[cand.head_from])

    def toward_teacher(self, cand: Candidate):
        """The changes greedy may make: a position to its whole teacher block, embeddings or head to the teacher's."""
        yield from (cand.at(j, full) for j, full in enumerate(self.full_blocks) if cand.blocks[j] != full)
        if cand.embeddings_from != "teacher":
            yield replace(cand, embeddings_from="teacher")
        if cand.head_from != "teacher":
            yield replace(cand, head_from="teacher")


# ---------------------------------------------------------------------------------------------- scoring
class Scorer:
    """Mean KL(teacher || candidate) per token on the calibration batch.

    Each candidate is assembled from the two loaded models' tensors (shared, not copied), so the teacher
    reference's prefix cache (``boomerang.scoring.PrefixCache``, bounded by ``cache_bytes``) serves every
    candidate that starts with the same embeddings and layers as one already run: only the rest is run.
    """

    def __init__(self, space: SearchSpace, calibration: torch.Tensor, cache_bytes: int = 2 * 2**30):
        self.space = space
        self.reference = TeacherReference(space.teacher.model, [row[None] for row in calibration],
                                          batch_size=len(calibration), cache_bytes=cache_bytes)
        self.scores: dict[Candidate, float] = {}
        self.stats = self.reference.stats  # models_scored, layers_run, layers_reused

    def model(self, cand: Candidate):
        return assemble_plan(self.space.teacher, self.space.student, cand.plan(), copy_untied_head=False)

    def __call__(self, cand: Candidate) -> float:
        if cand in self.scores:
            return self.scores[cand]
        if cand.depth == 0:
            self.scores[cand] = float("inf")  # no layer at all: not a model
            return self.scores[cand]
        self.scores[cand] = self.reference.score(self.model(cand)).kl_per_token
        st = self.stats
        if st["models_scored"] % 25 == 0:
            log.info("%d models scored (%d of %d layer passes reused from the prefix cache)", st["models_scored"],
                     st["layers_reused"], st["layers_reused"] + st["layers_run"])
        return self.scores[cand]


# ---------------------------------------------------------------------------------------------- searches
def greedy(space: SearchSpace, score: Scorer) -> list[Candidate]:
    """From the student to the teacher, one change toward the teacher at a time: the change that lowers
    KL most per added parameter (a change that adds none and lowers KL comes first; one that adds none
    and raises KL last)."""
    cur = space.student_candidate()
    path = [cur]
    target = space.teacher_candidate()
    while cur != target:
        kl, p = score(cur), space.params(cur)

        def key(c):
            gain, added = kl - score(c), space.params(c) - p
            if added > 0:
                return (1, gain / added)
            return (2, gain) if gain > 0 else (0, gain)

        cur = max(space.toward_teacher(cur), key=key)
        path.append(cur)
        log.info("greedy step %d: depth %d, KL %.4f: %s", len(path) - 1, cur.depth, score(cur),
                 cur.describe(space.full_blocks))
    return path


def beam(space: SearchSpace, score: Scorer, width: int, seeds: list[Candidate]) -> list[Candidate]:
    """Beam search over depths: at each depth keep the ``width`` best candidates found so far and score
    every single change of each. Without drops only changes that keep or add depth exist, so one
    upward pass from the student's depth covers the space; with drops a downward pass comes first."""
    by_depth: dict[int, set[Candidate]] = {}

    def add(c):
        by_depth.setdefault(c.depth, set()).add(c)

    for c in seeds:
        add(c)

    def expand(d, direction):
        seen: set[Candidate] = set()
        while True:  # same-depth changes can improve the beam: expand until its members are all expanded
            top = sorted(by_depth.get(d, ()), key=lambda c: (score(c), c.codes()))[:width]
            todo = [c for c in top if c not in seen]
            if not todo:
                if top:
                    log.info("beam: depth %d, best KL %.4f: %s", d, score(top[0]), top[0].describe(space.full_blocks))
                return
            for c in todo:
                seen.add(c)
                for m in space.moves(c):
                    if (m.depth - d) * direction >= 0 and m.depth > 0:
                        score(m)
                        add(m)

    d0 = space.layer_map.num_student_layers
    if space.allow_drop:
        for d in range(d0, 0, -1):
            expand(d, -1)
    for d in range(1 if space.allow_drop else d0, space.layer_map.num_teacher_layers + 1):
        expand(d, +1)
    # the beam's answer: its members at every depth
    return [c for d in sorted(by_depth) for c in sorted(by_depth[d], key=lambda c: (score(c), c.codes()))[:width]]


def fill_gaps(space: SearchSpace, score: "Scorer", max_gap: int, per_gap: int, tries: int = 3) -> list[Candidate]:
    """Score models inside the frontier's gaps wider than ``max_gap`` parameters, until none can be filled.

    For a gap between consecutive frontier models of ``lo`` and ``hi`` parameters: every model one change away
    from a scored model (the lowest-KL first) whose size lies in ``[lo, hi)`` (the size of the model below the
    gap counts: a better model of that size replaces it), up to ``per_gap`` of them, is scored; the frontier is then taken again. A gap that stays is tried again (models two, three changes away
    become one change away from those just scored), up to ``tries`` times, or until nothing new lies in it within
    one change of a scored model."""
    attempts: dict[tuple[Candidate, Candidate], int] = {}
    added: list[Candidate] = []
    while True:
        front = search_frontier(space, score)
        gaps = [(a, b) for a, b in zip(front, front[1:])
                if space.params(b) - space.params(a) > max_gap and attempts.get((a, b), 0) < tries]
        if not gaps:
            return added
        for a, b in gaps:
            lo, hi = space.params(a), space.params(b)
            todo: list[Candidate] = []
            # every scored model is a source: a change can also make a model smaller (an untied head tied again)
            for src in sorted((c for c in score.scores if c.depth), key=lambda c: (score(c), c.codes())):
                for m in space.moves(src):
                    if m.depth and m not in score.scores and m not in todo and lo <= space.params(m) < hi:
                        todo.append(m)
                if len(todo) >= per_gap:
                    break
            attempts[(a, b)] = attempts.get((a, b), 0) + 1 if todo else tries  # nothing left to try: closed
            for m in todo[:per_gap]:
                score(m)
                added.append(m)
            log.info("gap %.2fM-%.2fM: %d models scored", lo / 1e6, hi / 1e6, len(todo[:per_gap]))


def search_frontier(space: SearchSpace, score: "Scorer") -> list[Candidate]:
    """Every scored model that no other scored model beats while being no larger, by parameters."""
    def tiebreak(c):  # of equal size and KL: the fewest student parts (the teacher itself over an exact copy of it)
        parts = [src for src, _ in c.layers] + [c.embeddings_from, c.head_from]
        return (parts.count("student"), c.depth, c.codes(), c.embeddings_from, c.head_from)

    return frontier((c for c in score.scores if c.depth), space.params, score, tiebreak)


def entry(space: SearchSpace, score: Scorer, cand: Candidate, **extra) -> dict:
    plan = cand.plan()
    return {"params": space.params(cand), "depth": cand.depth, "calibration_kl": score(cand),
            "description": cand.describe(space.full_blocks), "blocks": cand.codes(),
            "layers": [list(x) for x in plan.layers], "embeddings_from": plan.embeddings_from,
            "final_norm_from": plan.final_norm_from, "lm_head_from": plan.lm_head_from, **extra}


def run_search(teacher, student, layer_map: LayerMap, calibration: torch.Tensor, *, beam_width: int = 2,
               allow_drop: bool = False, use_greedy: bool = True, cache_bytes: int = 2 * 2**30,
               fill: bool = True, gap_candidates: int | None = None) -> dict:
    """Score the fixed orders, run greedy and the beam search, fill the frontier's gaps (``fill``), and return the
    ladder (the frontier in parameters and calibration KL) with everything ``search.json`` holds. ``teacher``/``student``: loaded models, one dtype
    (their parts are mixed in every candidate)."""
    t_dtype, s_dtype = next(teacher.parameters()).dtype, next(student.parameters()).dtype
    if t_dtype != s_dtype:
        raise SearchError(f"the teacher is {t_dtype} and the student {s_dtype}: a searched model mixes their layers, "
                          "so load both in one dtype (the search scores in float32)")
    t0 = time.time()
    space = SearchSpace(ModelSource(teacher), ModelSource(student), layer_map, allow_drop)
    score = Scorer(space, calibration, cache_bytes)
    t_ref = time.time() - t0
    found: dict[Candidate, set[str]] = {}

    def note(c, how):
        score(c)
        found.setdefault(c, set()).add(how)

    note(space.student_candidate(), "student")
    note(space.teacher_candidate(), "teacher")
    fixed = {order: [(k, space.from_plan(layer_map.plan(k, order == "first-k")))
                     for k in range(layer_map.max_patch + 1)] for order in ("last-k", "first-k")}
    for order, cands in fixed.items():
        for _, c in cands:
            note(c, order)
    if use_greedy:
        for c in greedy(space, score):
            note(c, "greedy")
    if beam_width > 0:
        for c in beam(space, score, beam_width, list(found)):
            found.setdefault(c, set()).add("beam")
    max_gap = max(space.block_params)
    if fill:
        per_gap = gap_candidates if gap_candidates is not None else 2 * (layer_map.num_student_layers + 2)
        for c in fill_gaps(space, score, max_gap, per_gap):
            found.setdefault(c, set()).add("gap")
    best = {d: min((c for c in score.scores if c.depth == d), key=lambda c: (score(c), space.params(c)))
            for d in {c.depth for c in score.scores if c.depth}}  # per depth: the lowest KL, then the fewest parameters

    def found_by(c):  # the searches whose answer holds it (a fixed order, greedy's path, the beam, the gap
        return sorted(found.get(c, {"scored"}))  # filling), or "scored" for a candidate only met as a neighbour

    front = search_frontier(space, score)
    gap = widest_gap([space.params(c) for c in front])
    candidates = sorted(score.scores, key=lambda c: (c.depth, score(c)))
    return {
        "ladder": [entry(space, score, c, found_by=found_by(c)) for c in front],
        "depth_ladder": [entry(space, score, best[d], found_by=found_by(best[d])) for d in sorted(best)],
        "fixed_orders": {order: [entry(space, score, c, k=k) for k, c in cands] for order, cands in fixed.items()},
        "candidates": [{"params": space.params(c), "depth": c.depth, "calibration_kl": score(c),
                        "embeddings_from": c.embeddings_from, "head_from": c.head_from, "blocks": c.codes()}
                       for c in candidates if c.depth],
        "search": {"ladder": FRONTIER, "greedy": use_greedy, "beam_width": beam_width, "allow_drop": allow_drop,
                   "fill_gaps": fill, "max_gap_params": max_gap, "widest_gap_params": gap[0] if gap else 0,
                   "positions": layer_map.num_student_layers, "options_per_position": [len(o) for o in space.options]},
        "cost": {**score.stats, "wall_time_s": round(time.time() - t0, 1), "teacher_reference_s": round(t_ref, 1)},
        "copied_teacher_layers": list(layer_map.copied_teacher_layers),
        "num_teacher_layers": layer_map.num_teacher_layers,
    }


# ---------------------------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m patching.search", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher_model_name_or_path", required=True)
    p.add_argument("--student_model_name_or_path", required=True, help="student folder (holds student_config.json)")
    p.add_argument("--calibration_data", required=True, help="local .jsonl/.txt/.parquet file or folder")
    p.add_argument("--save_directory", required=True, help="search.json is written here")
    p.add_argument("--calibration_samples", type=int, default=16)
    p.add_argument("--calibration_seq_len", type=int, default=128)
    p.add_argument("--beam_width", type=int, default=2, help="0: greedy only")
    p.add_argument("--no_greedy", action="store_true", help="beam search only")
    p.add_argument("--allow_drop", action="store_true",
                   help="positions may also be removed, and teacher blocks taken in part (as layer pruning does)")
    p.add_argument("--no_fill", action="store_true",
                   help="do not score models inside the frontier's gaps wider than the largest teacher block")
    p.add_argument("--gap_candidates", type=int, default=None,
                   help="models scored per gap (default: 2 x (student layers + 2))")
    p.add_argument("--dtype", default="float32", help="float32 (default) or bfloat16")
    p.add_argument("--cache_gb", type=float, default=2.0, help="memory for cached prefix hidden states")
    p.add_argument("--overwrite", action="store_true", help="replace an existing search.json")
    return p


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    setup_logging()
    out = os.path.join(args.save_directory, SEARCH_FILE)
    try:
        if args.beam_width < 0:
            raise SearchError(f"--beam_width must be >= 0, got {args.beam_width}")
        if args.no_greedy and args.beam_width == 0:
            raise SearchError("--no_greedy with --beam_width 0 leaves no search to run")
        if args.gap_candidates is not None and args.gap_candidates < 1:
            raise SearchError(f"--gap_candidates must be >= 1, got {args.gap_candidates} (--no_fill: no gap filling)")
        if args.calibration_samples < 1 or args.calibration_seq_len < 2:
            raise SearchError("--calibration_samples must be >= 1 and --calibration_seq_len >= 2")
        if os.path.isfile(out) and not args.overwrite:
            raise SearchError(f"{out} exists; pass --overwrite to replace it, or another --save_directory")
        dtype = dtype_from_name(args.dtype)
        texts = read_local_documents(args.calibration_data, flag="--calibration_data")
        teacher_path = resolve_model_path(args.teacher_model_name_or_path)
        student_path = resolve_model_path(args.student_model_name_or_path)
        t_cfg = load_config(teacher_path)
        layer_map = load_layer_map(student_path, adapter_for_config(t_cfg).num_layers(t_cfg))
        tok = load_tokenizer(teacher_path)
        ids = fixed_length_sequences(tok, texts, args.calibration_samples, args.calibration_seq_len,
                                     "--calibration_data", "--calibration_samples", "--calibration_seq_len")
    except (BoomerangError, ValueError) as e:  # BoomerangError: every library and stage error
        fail(str(e))
    teacher = load_model(teacher_path, dtype=dtype)
    student = load_model(student_path, dtype=dtype)
    result = run_search(teacher, student, layer_map, ids, beam_width=args.beam_width, allow_drop=args.allow_drop,
                        use_greedy=not args.no_greedy, cache_bytes=int(args.cache_gb * 2**30), fill=not args.no_fill,
                        gap_candidates=args.gap_candidates)
    result = {"teacher": args.teacher_model_name_or_path, "student": args.student_model_name_or_path,
              "calibration": {"data": os.path.abspath(args.calibration_data), "samples": args.calibration_samples,
                              "seq_len": args.calibration_seq_len}, "dtype": args.dtype, **result}
    atomic_write_json(out, result)
    c = result["cost"]
    print(f"{out}: {len(result['ladder'])} sizes on the frontier (widest gap "
          f"{result['search']['widest_gap_params']:,} parameters); {c['models_scored']} models scored in {c['wall_time_s']:.0f} s "
          f"({c['layers_reused']} of {c['layers_run'] + c['layers_reused']} layer passes reused from the prefix cache)")
    for e in result["ladder"]:
        print(f"  {e['params']:>14,}  depth {e['depth']:3d}  KL {e['calibration_kl']:.4f}  {e['description']}")
    return result


if __name__ == "__main__":
    main()
