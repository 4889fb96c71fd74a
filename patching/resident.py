"""One resident family: a teacher and a student held once, every member of their family served from them.

    family = ResidentFamily.load("embedded:smollm2-135m", "runs/main-cpu/student", "runs/main-cpu/search")
    model = family.model(family.by_params("110M"))      # an ordinary PreTrainedModel
    model.generate(...)
    family.model(family.by_depth(20)); family.model(family.teacher_entry()); family.model(family.by_blocks([3, 7]))

A member is an ordinary ``PreTrainedModel`` whose tensors *are* the teacher's and the student's (assembled
with ``boomerang.assemble.assemble(copy_untied_head=False)`` from the two loaded models: no tensor is
copied, an untied head of a tied source shares that source's embedding matrix). Members are kept once
built (a member costs its module objects and small buffers, not its weights), so switching between them
costs no weight copy and, after the first time, no building either. The memory of the whole family is the
teacher's tensors plus the student's, whatever number of members are in use
(``bench/resident_family.py`` measures it).

Each member has its own layer modules (over shared tensors), so the KV cache's per-layer index is that
member's: a student layer that sits at position 5 in one member and 9 in another caches at 5 and 9.

The family is the search's frontier when a search result is given (``patching.search``; members by
parameters take the lowest calibration KL that fits, as ``patching.patch --plan --target_params`` does),
else the paper's fixed order for the teacher's family (``boomerang.families.patch_order``; members by
parameters: the largest that fits). Members can also be asked for by memory (weights + KV cache for a
dtype, batch and context), by depth, or by the set of student layers replaced by their teacher blocks.
"""

from __future__ import annotations

import torch

from boomerang.assemble import ModelSource
from boomerang.families import FIRST_K, adapter_for, patch_order
from boomerang.layer_map import LayerMap, PatchPlan, format_layers
from boomerang.models import load_model, resolve_model_path
from patching.frontier import scored_entries
from patching.patch import (PatchError, assemble_plan, check_pair, count_plan_parameters, entry_memory_bytes,
                            human_count, load_layer_map, load_plan, parse_memory_gb, parse_param_count, plan_for,
                            plan_of)


def plan_entry(teacher, student, layer_map: LayerMap, plan: PatchPlan, **extra) -> dict:
    """A ladder entry (as search.json's) of any patch plan: its parameters counted, no weights read."""
    codes = []
    for j, (a, b) in enumerate(layer_map.blocks):
        here = [i for s, i in plan.layers if s == "teacher" and a <= i < b]
        codes.append("S" if ("student", j) in plan.layers else "T" if here == list(range(a, b))
                     else f"T[{format_layers(here)}]" if here else "-")
    return {"params": count_plan_parameters(teacher, student, plan)["total"], "depth": plan.depth,
            "calibration_kl": None,
            "description": f"emb {plan.embeddings_from[0].upper()} | {' '.join(codes)} | head "
                           f"{plan.lm_head_from[0].upper()}",
            "blocks": codes, "layers": [list(x) for x in plan.layers], "embeddings_from": plan.embeddings_from,
            "final_norm_from": plan.final_norm_from, "lm_head_from": plan.lm_head_from, **extra}


class ResidentFamily:
    """A teacher and a student (loaded models, one dtype) and the family they span, held once."""

    def __init__(self, teacher, student, plan: dict | None = None, layer_map: LayerMap | None = None,
                 order: str | None = None):
        t_dtype, s_dtype = next(teacher.parameters()).dtype, next(student.parameters()).dtype
        if t_dtype != s_dtype:
            raise PatchError(f"the teacher is {t_dtype} and the student {s_dtype}: a member mixes their tensors "
                             "without copying them, so load both in one dtype")
        self.teacher, self.student = teacher, student
        self.teacher_src, self.student_src = ModelSource(teacher, "teacher"), ModelSource(student, "student")
        self.layer_map = layer_map or load_layer_map(student, self.teacher_src.adapter.num_layers(teacher.config))
        check_pair(self.teacher_src, self.student_src, self.layer_map)
        self.order = order or patch_order(teacher.config)
        if plan is not None and list(self.layer_map.copied_teacher_layers) != plan.get("copied_teacher_layers"):
            raise PatchError(f"the search result was made for a student with copied layers "
                             f"{plan.get('copied_teacher_layers')}, this one has "
                             f"{list(self.layer_map.copied_teacher_layers)}")
        self.plan = plan
        if plan is not None:
            self.entries = list(plan["ladder"])
        else:
            self.entries = [plan_entry(self.teacher_src, self.student_src, self.layer_map, p, k=k, order=self.order)
                            for k, p in enumerate(self.layer_map.ladder(self.order == FIRST_K))]
        self._members: dict[PatchPlan, torch.nn.Module] = {}
        n = self.layer_map.num_student_layers
        self._teacher_plan = self.layer_map.plan_blocks(range(n), "teacher", "teacher")
        self._student_plan = self.layer_map.plan_blocks([], "student", "student")

    @classmethod
    def load(cls, teacher, student, search=None, dtype: torch.dtype = torch.float32) -> "ResidentFamily":
        """From names or folders: both models loaded once in ``dtype``; ``search``: search.json or its folder."""
        plan = load_plan(search) if search is not None else None
        t = load_model(resolve_model_path(teacher), dtype=dtype)
        s_path = resolve_model_path(student)
        s = load_model(s_path, dtype=dtype)
        s.boomerang_layer_map = load_layer_map(s_path, adapter_for(t).num_layers(t.config))
        return cls(t, s, plan)

    # ------------------------------------------------------------------ which member
    def teacher_entry(self) -> dict:
        return self.entry_of(self._teacher_plan, role="teacher")

    def student_entry(self) -> dict:
        return self.entry_of(self._student_plan, role="student")

    def entry_of(self, plan: PatchPlan, **extra) -> dict:
        """The family's entry for ``plan`` when it has one (with its calibration KL), else one made for it."""
        for e in self.all_entries():
            if plan_of(e) == plan:
                return {**e, **extra}
        return plan_entry(self.teacher_src, self.student_src, self.layer_map, plan, **extra)

    def all_entries(self) -> list[dict]:
        """The family, and with a search result every model it scored."""
        return scored_entries(self.plan) if self.plan is not None else self.entries

    @staticmethod
    def _best(fits: list[dict], what: str) -> dict:
        if not fits:
            raise PatchError(f"no member of the family fits {what}")
        known = [e for e in fits if e.get("calibration_kl") is not None]
        if known:  # the lowest calibration KL, then the fewest parameters
            return min(known, key=lambda e: (e["calibration_kl"], e["params"]))
        return max(fits, key=lambda e: e["params"])  # a fixed order: the largest that fits

    def by_params(self, target) -> dict:
        n = parse_param_count(target)
        return self._best([e for e in self.entries if e["params"] <= n], f"{human_count(n)} parameters (the "
                          f"smallest member has {human_count(min(e['params'] for e in self.entries))})")

    def memory_bytes(self, e: dict, batch_size: int = 1, context_length: int = 2048) -> int:
        bpv = torch.finfo(next(self.teacher.parameters()).dtype).bits // 8
        return entry_memory_bytes(self.teacher_src, self.student_src, e, batch_size, context_length, bpv)

    def by_memory(self, gb, batch_size: int = 1, context_length: int = 2048) -> dict:
        """Weights plus the KV cache of ``batch_size`` x ``context_length`` tokens in at most ``gb`` GiB."""
        limit = parse_memory_gb(gb) * 2**30
        return self._best([e for e in self.all_entries()
                           if self.memory_bytes(e, batch_size, context_length) <= limit],
                          f"{gb} GiB at batch {batch_size} and context {context_length}")

    def by_depth(self, depth: int) -> dict:
        return self._best([e for e in self.all_entries() if e["depth"] == int(depth)], f"depth {depth}")

    def by_blocks(self, blocks, embeddings_from: str | None = None, head_from: str | None = None) -> dict:
        """The student with these student layers replaced by their teacher blocks (``patching.patch --blocks``)."""
        return self.entry_of(plan_for(self.layer_map, blocks=blocks, embeddings_from=embeddings_from,
                                      head_from=head_from))

    # ------------------------------------------------------------------ the member itself
    def model(self, e: dict | PatchPlan, keep: bool = True):
        """The member as a ``PreTrainedModel`` over the resident tensors (built once, then kept; ``keep=False``: not
        kept, for a caller that moves it to another device, which copies its tensors there)."""
        plan = e if isinstance(e, PatchPlan) else plan_of(e)
        if plan == self._teacher_plan:
            return self.teacher
        if plan == self._student_plan:
            return self.student
        model = self._members.get(plan)
        if model is None:
            model = assemble_plan(self.teacher_src, self.student_src, plan, copy_untied_head=False)
            if keep:
                self._members[plan] = model
        return model

    def release(self, e: dict | PatchPlan | None = None) -> None:
        """Forget one kept member's modules (all with None); the resident tensors stay."""
        if e is None:
            self._members.clear()
        else:
            self._members.pop(e if isinstance(e, PatchPlan) else plan_of(e), None)

    def resident_bytes(self) -> int:
        """Bytes of the distinct tensor storages of the teacher and the student: the family's weights."""
        seen, total = set(), 0
        for m in (self.teacher, self.student):
            for t in list(m.parameters()) + list(m.buffers()):
                key = t.untyped_storage().data_ptr()
                if key not in seen:
                    seen.add(key)
                    total += t.untyped_storage().nbytes()
        return total

    def to(self, device) -> "ResidentFamily":
        """Move teacher and student (and so every member) to ``device``; kept members are dropped."""
        self.teacher.to(device)
        self.student.to(device)
        self.teacher_src = ModelSource(self.teacher, "teacher")
        self.student_src = ModelSource(self.student, "student")
        self._members.clear()
        return self
