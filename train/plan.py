"""Memory plan: the peak GPU memory per process of one training step of a preset at its real size, on this machine.

    python -m train.plan --config configs/qwen3-8b.yaml --nproc 8 [--gpu_memory_gb 80] [--flag value ...]

The teacher's and student's real shapes (the teacher's ``config.json``: for a hub teacher the published values
shipped in ``configs/models/<name>.json``, since no hub is needed; a local or embedded teacher's own config) are
built on the meta device, sharded with FSDP2 over a fake process group of ``--nproc`` processes (the device mesh
is made before the fake mode), given fake tensors with ``to_empty``, and one whole optimizer step runs under
torch's ``FakeTensorMode`` and ``FSDPMemTracker``: for each micro-batch the teacher's forward, the student's
forward and the preset's loss (``train.train.forward``, the trainer's own code), backward; then gradient clipping
and the AdamW step. No tensor holds data, so an 8B pair plans in a few CPU-minutes and about no memory.

Micro-batches: the accumulation the batch plan derives for ``--nproc`` (``train.batch``); the plan runs up to three
of them (gradient sync off, off, on, as the trainer does), which covers every state the step's memory goes
through: the first builds the unsharded gradients FSDP2 keeps while sync is off, the second runs with all of them
held, the last reduce-scatters. More micro-batches repeat the second.

The data: every position a real token (the most memory: every loss term counts every row). The few questions the
trainer's code asks of the data (which positions count, whether a mask is needed) have no answer on fake tensors;
``AllPositionsCount`` answers them as a batch of whole documents would (every position counted, no padding).

Output: the peak per process by FSDPMemTracker's categories (sharded and unsharded parameters, gradients,
optimizer state, activations, temporaries of the backward, all-gather and reduce-scatter buffers, inputs), and
whether it fits ``--gpu_memory_gb`` less ``--headroom`` (CUDA context, NCCL buffers, allocator fragmentation).
``--json FILE`` writes the same. The plan is a model of the caching allocator's live tensors, not a measurement:
``scripts/gpu_check.sh`` compares it with ``torch.cuda.max_memory_allocated`` on a GPU, and
``tests/test_plan.py`` with a measured peak on two CPU processes.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import os
import sys
import warnings
from unittest import mock
from dataclasses import dataclass, field

import torch

from boomerang.cli import fail, parse_with_config, setup_logging
from boomerang.families import adapter_for_config, dtype_from_name
from boomerang.models import ModelNotFoundError, empty_model, load_config, resolve_model_path
from train.batch import BatchError, plan_from_args
from train.data import PACKED_ATTENTION_ENV, Stream
from train.init_student import init_student, plan_student
from train.losses import LossConfig

log = logging.getLogger("boomerang.plan")

MODELS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "models")
GIB = 2**30
MMAP_THRESHOLD = 65536  # glibc's malloc: allocations at least this large are their own mappings (--measure)
# FSDPMemTracker's categories, in the order printed
CATEGORIES = ("Sharded Param", "Unsharded Param", "Buffer", "Sharded Grad", "Unsharded Grad", "OptState",
              "Activation", "Temp", "All Gather", "Reduce Scatter", "Inputs")


@dataclass
class MemoryPlan:
    """One process's planned peak: bytes by category at the moment of the peak, and the setting it was planned for."""

    preset: str
    world: int
    per_device: int
    accumulation: int
    micro_batches: int
    max_length: int
    teacher: str
    student_layers: int
    teacher_layers: int
    peak_bytes: int
    by_category: dict = field(default_factory=dict)
    gpu_memory_gb: float = 80.0
    headroom: float = 0.1

    @property
    def peak_gib(self) -> float:
        return self.peak_bytes / GIB

    @property
    def budget_gib(self) -> float:
        return self.gpu_memory_gb * 1e9 / GIB * (1 - self.headroom)

    @property
    def fits(self) -> bool:
        return self.peak_gib <= self.budget_gib

    def as_dict(self) -> dict:
        return {**{k: v for k, v in vars(self).items()}, "peak_gib": round(self.peak_gib, 2),
                "budget_gib": round(self.budget_gib, 2), "fits": self.fits,
                "by_category_gib": {k: round(v / GIB, 3) for k, v in self.by_category.items()}}

    def table(self) -> str:
        rows = [f"{self.preset}: {self.teacher} ({self.teacher_layers} layers) -> {self.student_layers}-layer student, "
                f"{self.world} process(es), {self.per_device} x {self.max_length} tokens a micro-batch, accumulation "
                f"{self.accumulation} ({self.micro_batches} planned)",
                f"  {'category':<16} {'GiB per process':>16}"]
        rows += [f"  {k:<16} {self.by_category.get(k, 0) / GIB:>16.2f}" for k in CATEGORIES if k in self.by_category]
        rows.append(f"  {'peak':<16} {self.peak_gib:>16.2f}")
        rows.append(f"  fits {self.gpu_memory_gb:g} GB less {self.headroom:.0%} headroom ({self.budget_gib:.1f} GiB): "
                    f"{'yes' if self.fits else 'NO'}")
        return "\n".join(rows)


def teacher_config(args):
    """The teacher's config: configs/models/<last part of the hub name>.json when shipped there, else the local or
    embedded teacher's own (no hub is reached)."""
    name = args.teacher_model_name_or_path
    shipped = os.path.join(MODELS_DIR, os.path.basename(name.rstrip("/")) + ".json")
    if os.path.isfile(shipped):
        from transformers import AutoConfig  # lazy: transformers is heavy

        with open(shipped) as f:
            values = json.load(f)
        return AutoConfig.for_model(values.pop("model_type"), **values)
    try:
        return load_config(resolve_model_path(name))
    except (ModelNotFoundError, OSError, ValueError) as e:
        raise ValueError(f"--teacher_model_name_or_path {name}: no shipped config {shipped} and none found locally "
                         f"({e}); add the teacher's published config.json there") from e


class AllPositionsCount(torch.utils._python_dispatch.TorchDispatchMode):
    """Answers, under FakeTensorMode, the questions fake tensors cannot: ``nonzero`` (which positions count) as if
    every element counted (boolean-mask indexing too), and a tensor's value (``.item()``, ``bool()``) as True for a
    boolean (all real tokens: no mask needed) and 1 otherwise (AdamW's first step count; the trainer's token
    counts, which only reach the log). None of these answers changes a tensor's shape beyond "every position"."""

    INDEXING = (torch.ops.aten.index.Tensor, torch.ops.aten.index_put.default, torch.ops.aten.index_put_.default,
                torch.ops.aten._index_put_impl_.default)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.INDEXING and any(i is not None and i.dtype == torch.bool for i in args[1]):
            # a boolean mask of k dims selects what k index tensors of its nonzero positions do: all of them here
            indices = []
            for i in args[1]:
                if i is not None and i.dtype == torch.bool:
                    indices += [torch.empty(i.numel(), dtype=torch.long, device=i.device)] * i.dim()
                else:
                    indices.append(i)
            return func(args[0], indices, *args[2:], **kwargs)
        if func is torch.ops.aten.nonzero.default:
            x = args[0]
            return torch.empty((x.numel(), x.dim()), dtype=torch.long, device=x.device)
        if func is torch.ops.aten._local_scalar_dense.default:
            return True if args[0].dtype == torch.bool else 1
        return func(*args, **kwargs)


class Pair(torch.nn.Module):
    """Teacher and student under one FSDP module (it holds no parameter itself) so that one FSDPMemTracker sees
    both models' units; the step calls the two models, never this."""

    def __init__(self, teacher, student):
        super().__init__()
        self.teacher, self.student = teacher, student

    def forward(self, *args, **kwargs):
        raise RuntimeError("the plan calls the teacher and the student, not the pair")


def fake_process_group(world: int):
    """A process group of ``world`` processes that runs no communication (torch's "fake" backend)."""
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore  # registers nothing; the backend is built in

    if dist.is_initialized():
        dist.destroy_process_group()
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world)


def planned_sequences(args, vocab: int) -> Stream:
    """Sequences of the recipe's fields, every position a real token: what ``train_step`` takes from its stream."""
    def one():
        ids = torch.randint(3, vocab, (args.max_length,))
        if args.recipe == "paper":
            return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
        return {"input_ids": ids, "doc_ids": torch.zeros_like(ids)}  # one document a row

    return Stream(one() for _ in iter(int, 1))


def step_run(args, world: int, teacher, student, layer_map, micro: int, device, bf16: bool):
    """A ``train.train.Run`` whose ``train_step`` runs ``micro`` micro-batches of this process's share (the memory of
    a step with more is that of three: see the module docstring)."""
    from train.train import Run, lr_scheduler, param_groups

    loss_cfg = LossConfig(args.use_cross_entropy, args.use_kl_loss, args.kl_loss_weight, args.T,
                          args.use_cosine_loss, args.cosine_loss_weight, args.kl_chunk_size)
    optimizer = torch.optim.AdamW(param_groups(student, args.weight_decay), lr=args.learning_rate,
                                  betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon,
                                  **({"fused": True} if device.type == "cuda" else {"foreach": True}))
    per = args.per_device_train_batch_size
    return Run(args=args, rank=0, world=world, device=device, fsdp=True, accum=micro, global_batch=per * micro * world,
               compute_dtype=torch.bfloat16 if bf16 else torch.float32, autocast=contextlib.nullcontext(),
               loss_cfg=loss_cfg, layer_map=layer_map, tokenizer=None, teacher=teacher, student=student,
               optimizer=optimizer, scheduler=lr_scheduler(args, optimizer),
               stream=planned_sequences(args, teacher.config.vocab_size))


@contextlib.contextmanager
def own_fake_mode_for_sharding_propagation():
    """DTensor works out each operation's output placement by running it on global-shape tensors under the active
    fake mode (``_sharding_prop``: ``detect_fake_mode() or FakeTensorMode()``). Under the plan's fake mode those
    shadow tensors would be counted by FSDPMemTracker, which skips only operations under *another* fake mode: the
    optimizer step (DTensor parameters, gradients and states) then plans the whole model's size (16.5 MiB instead of
    none at the peak for a 4 x 1024^2 model on 8 processes, where the real-tensor tracker sees 19.19 MiB in all and so
    does the plan with this). Here DTensor propagates under a fake mode of its own."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed.tensor import _sharding_prop

    own = FakeTensorMode()
    with mock.patch.object(_sharding_prop, "detect_fake_mode", lambda *args, **kwargs: own):
        yield


@contextlib.contextmanager
def gpu_packed_attention():
    """The trainer's packed attention on a GPU (transformers' masks from position ids), wherever the plan runs."""
    previous = os.environ.get(PACKED_ATTENTION_ENV)
    os.environ[PACKED_ATTENTION_ENV] = "position_ids"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(PACKED_ATTENTION_ENV, None)
        else:
            os.environ[PACKED_ATTENTION_ENV] = previous


def plan_memory(args, world: int, gpu_memory_gb: float = 80.0, headroom: float = 0.1,
                max_micro_batches: int = 3) -> MemoryPlan:
    """The planned peak of one optimizer step of ``args`` (the trainer's flags) on ``world`` processes."""
    import torch.distributed as dist
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    from train.train import prepare_pair, train_step

    batch = plan_from_args(args, world)
    config = teacher_config(args)
    layer_map = plan_student(config, args.first_layers_to_keep, args.alternate_every_n_layers,
                             args.last_layers_to_keep)
    bf16 = args.bf16  # planned for the GPU: bf16 compute as the trainer runs it there
    compute_dtype = torch.bfloat16 if bf16 else torch.float32
    teacher_dtype = compute_dtype if args.teacher_dtype == "auto" else dtype_from_name(args.teacher_dtype)
    cut_from = torch.float32 if args.recipe == "paper" else teacher_dtype
    mp_policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else None
    cpu = torch.device("cpu")
    micro = min(batch.accumulation, max_micro_batches)

    fake_process_group(world)
    try:
        with gpu_packed_attention(), warnings.catch_warnings():
            # FSDPMemTracker's module tracking (the micro-batches re-enter the roots) and FSDP2's note on views
            warnings.filterwarnings("ignore", message=r"(The module hierarchy tracking|FSDP2-wrapped module)")
            mesh = init_device_mesh("cpu", (world,))  # outside the fake mode
            teacher = empty_model(config, cut_from)
            student = init_student(teacher, layer_map, False, torch.float32, args.seed)
            prepare_pair(args, teacher, student, teacher_dtype, cpu, fsdp=True, mp_policy=mp_policy, mesh=mesh)
            pair = fully_shard(Pair(teacher, student), mesh=mesh)
            with FakeTensorMode(allow_non_fake_inputs=True), own_fake_mode_for_sharding_propagation():
                for model in (teacher, student):
                    model.to_empty(device=cpu)
                if adapter_for_config(config).is_tied(student):
                    student.tie_weights()
                run = step_run(args, world, teacher, student, layer_map, micro, cpu, bf16)
                tracker = FSDPMemTracker(pair, run.optimizer)
                with tracker, AllPositionsCount():
                    # the tracker refuses a root's second forward (the next micro-batch) unless its module
                    # statistics are reset; the peak is kept
                    hooks = [m.register_forward_pre_hook(lambda *_: tracker.reset_mod_stats(), prepend=True)
                             for m in (teacher, student)]
                    train_step(run)
                    for h in hooks:
                        h.remove()
                snapshot = tracker.get_tracker_snapshot("peak")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    by_dev = next(iter(snapshot.values()))
    total = by_dev.pop("Total")
    return MemoryPlan(preset=os.path.basename(args.config or "flags"), world=world, per_device=batch.per_device,
                      accumulation=batch.accumulation, micro_batches=micro, max_length=args.max_length,
                      teacher=args.teacher_model_name_or_path, student_layers=layer_map.num_student_layers,
                      teacher_layers=layer_map.num_teacher_layers, peak_bytes=int(total),
                      by_category={str(getattr(k, "value", k)): int(v) for k, v in by_dev.items() if v},
                      gpu_memory_gb=gpu_memory_gb, headroom=headroom)


# ----------------------------------------------------------------------------- the cross-check (CPU, gloo)
def _status_kib(field_name: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field_name + ":"))


def local_tensor_bytes(*objects) -> int:
    """Bytes of the tensors this process holds for ``objects`` (modules: parameters and buffers, their local shards
    under FSDP; dicts of tensors), each storage once."""
    seen, total = set(), 0
    for obj in objects:
        tensors = [*obj.parameters(), *obj.buffers()] if isinstance(obj, torch.nn.Module) else list(obj.values())
        for t in tensors:
            t = t.to_local() if hasattr(t, "to_local") else t
            st = t.untyped_storage()
            if st.data_ptr() not in seen:
                seen.add(st.data_ptr())
                total += st.nbytes()
    return total


def measure_peak(args) -> dict:
    """Run under ``torchrun`` on CPU (gloo): the same step ``plan_memory`` plans (``train_step`` on the same
    micro-batches, the models loaded and sharded as the trainer does, float32) and its measured peak of tensor bytes:
    the tensors held before the step (parameter and buffer shards) plus the rise of the resident set to its high-water
    mark (VmHWM, reset through /proc/self/clear_refs). Meaningful with glibc's mmap threshold fixed low
    (MALLOC_MMAP_THRESHOLD_=65536, which --measure sets by re-executing itself): every tensor of 64 KiB or more is
    then its own mapping, returned at once when freed, so the resident set follows the live tensors."""
    import torch.distributed as dist

    from train.train import build_models, dist_setup, forward

    rank, world, device, _ = dist_setup(args)
    batch = plan_from_args(args, world)
    config = teacher_config(args)
    layer_map = plan_student(config, args.first_layers_to_keep, args.alternate_every_n_layers,
                             args.last_layers_to_keep)
    micro = min(batch.accumulation, args.micro_batches)
    with gpu_packed_attention():
        teacher, student = build_models(args, resolve_model_path(args.teacher_model_name_or_path), layer_map,
                                        torch.float32, device, fsdp=True)
        run = step_run(args, world, teacher, student, layer_map, micro, device, bf16=False)
        run.rank = rank
        # warm-up, not measured: one micro-batch forward and backward, so that the code pages of the kernels and
        # FSDP's lazy initialization are resident before the high-water mark is reset
        forward(run, run.stream.take(args.per_device_train_batch_size)).total.backward()
        student.zero_grad(set_to_none=True)
        gc.collect()
        held = local_tensor_bytes(teacher, student)
        dist.barrier()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # VmHWM := VmRSS
        rss0 = _status_kib("VmRSS")
        from train.train import train_step

        train_step(run)
        rise = (_status_kib("VmHWM") - rss0) * 1024
    out = {"rank": rank, "held_before_bytes": held, "rss_rise_bytes": rise, "measured_peak_bytes": held + rise}
    gathered = [None] * world
    dist.all_gather_object(gathered, out)
    dist.destroy_process_group()
    return {"ranks": gathered, "measured_peak_bytes": max(r["measured_peak_bytes"] for r in gathered)}


def build_plan_parser() -> argparse.ArgumentParser:
    from train.train import build_parser  # the trainer's flags: a preset and any override plan as they would run

    p = build_parser()
    p.prog = "python -m train.plan"
    p.description = __doc__
    g = p.add_argument_group("plan")
    g.add_argument("--nproc", type=int, default=8, help="processes (GPUs) the run uses (default 8)")
    g.add_argument("--gpu_memory_gb", type=float, default=80.0, help="memory of one GPU in GB (default 80)")
    g.add_argument("--headroom", type=float, default=0.1,
                   help="fraction of the GPU kept for the CUDA context, NCCL and fragmentation (default 0.1)")
    g.add_argument("--micro_batches", type=int, default=3, help="at most this many micro-batches planned (default 3)")
    g.add_argument("--json", default=None, help="also write the plan to this JSON file")
    g.add_argument("--measure", action="store_true",
                   help="under torchrun on CPU: also run the step for real (gloo, float32) and compare its measured "
                        "peak with the plan for the same processes (rank 0 prints both)")
    return p


def main(argv=None) -> MemoryPlan:
    setup_logging()
    args = parse_with_config(build_plan_parser(), argv)
    if not args.teacher_model_name_or_path:
        fail("--teacher_model_name_or_path (or a --config that names one) is required")
    if args.nproc < 1 or args.micro_batches < 1 or not 0 <= args.headroom < 1:
        fail("--nproc and --micro_batches must be >= 1 and --headroom in [0, 1)")
    measured = None
    if args.measure:
        if os.environ.get("MALLOC_MMAP_THRESHOLD_") != str(MMAP_THRESHOLD):  # glibc reads it at start: re-execute
            os.environ["MALLOC_MMAP_THRESHOLD_"] = str(MMAP_THRESHOLD)
            os.execv(sys.executable, [sys.executable, "-m", "train.plan", *(sys.argv[1:] if argv is None else argv)])
        args.device, args.fsdp, args.bf16 = "cpu", "on", False
        args.nproc = int(os.environ.get("WORLD_SIZE", "1"))
        measured = measure_peak(args)
        if int(os.environ.get("RANK", "0")) != 0:
            return None
    try:
        plan = plan_memory(args, args.nproc, args.gpu_memory_gb, args.headroom, args.micro_batches)
    except (BatchError, ValueError) as e:
        fail(str(e))
    print(plan.table())
    result = plan.as_dict()
    if measured:
        result["measured"] = measured
        result["measured_over_planned"] = measured["measured_peak_bytes"] / plan.peak_bytes
        print(f"  measured peak (CPU, gloo, float32): {measured['measured_peak_bytes'] / 2**20:.1f} MiB, planned "
              f"{plan.peak_bytes / 2**20:.1f} MiB: measured / planned = {result['measured_over_planned']:.3f}")
    if args.json:
        from boomerang.io import atomic_write_json

        atomic_write_json(args.json, result)
    return plan


if __name__ == "__main__":
    main(sys.argv[1:])
