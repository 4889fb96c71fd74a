"""The batch of one optimizer step: global batch, per-device batch and accumulation, for a number of processes.

A preset states the global batch (``global_batch_size``: sequences per optimizer step, all processes) and the
per-device batch (``per_device_train_batch_size``); the accumulation is derived for the world size it runs on:

    accumulation = global / (per_device x processes)

The paper's flag ``--gradient_accumulation_steps`` may still be given alone (the global batch is then
per_device x accumulation x processes), or with a global batch it agrees with on this world size. Whatever
cannot hold (a global batch that is not a multiple of per_device x processes, or an accumulation that
contradicts the global batch) is a ``BatchError`` whose message names the numbers that would work. It is
computed from the flags alone, before any model loads (``train.train.setup``; ``python -m train.plan``).
"""

from __future__ import annotations

from dataclasses import dataclass


class BatchError(ValueError):
    pass


@dataclass(frozen=True)
class BatchPlan:
    per_device: int  # sequences per micro-batch on one process
    accumulation: int  # micro-batches per process per optimizer step
    world: int  # processes

    @property
    def global_batch(self) -> int:
        return self.per_device * self.accumulation * self.world


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _workable(global_batch: int, per_device: int, world: int) -> str:
    """What would work instead: other per-device batches on these processes, other process counts at this
    per-device batch, the nearest global batches for both unchanged."""
    options = []
    if global_batch % world == 0:
        pers = [d for d in _divisors(global_batch // world) if d <= max(per_device, 1) * 2][-4:]
        options.append(f"--per_device_train_batch_size {' or '.join(map(str, pers))} on {world} process(es)")
    if global_batch % per_device == 0:
        worlds = [d for d in _divisors(global_batch // per_device) if d <= 4 * max(world, 8)][-8:]
        options.append(f"{', '.join(map(str, worlds))} processes at --per_device_train_batch_size {per_device}")
    step = per_device * world
    lower, upper = (global_batch // step) * step, (global_batch // step + 1) * step
    near = [g for g in (lower, upper) if g > 0]
    options.append(f"--global_batch_size {' or '.join(map(str, near))} (multiples of {per_device} x {world})")
    return "; ".join(options)


def plan_batch(per_device: int, world: int, global_batch: int | None = None,
               accumulation: int | None = None) -> BatchPlan:
    """The batch of one optimizer step on ``world`` processes. ``global_batch`` None: ``accumulation`` (the paper's
    flag) decides. ``accumulation`` None: derived from ``global_batch``. Both: they must agree on this world size."""
    if per_device < 1 or world < 1:
        raise BatchError(f"--per_device_train_batch_size must be >= 1 (got {per_device}) on >= 1 process (got {world})")
    if accumulation is not None and accumulation < 1:
        raise BatchError(f"--gradient_accumulation_steps must be >= 1, got {accumulation}")
    if not global_batch:
        return BatchPlan(per_device, accumulation or 1, world)
    if global_batch < 1:
        raise BatchError(f"--global_batch_size must be >= 1, got {global_batch}")
    step = per_device * world
    if global_batch % step:
        raise BatchError(f"--global_batch_size {global_batch} is not a multiple of --per_device_train_batch_size "
                         f"{per_device} x {world} process(es) = {step}. Would work: "
                         f"{_workable(global_batch, per_device, world)}")
    derived = global_batch // step
    if accumulation is not None and accumulation != derived:
        raise BatchError(f"--global_batch_size {global_batch} with --per_device_train_batch_size {per_device} on "
                         f"{world} process(es) means {derived} accumulation step(s), but --gradient_accumulation_steps "
                         f"{accumulation} is also set: give only one of --global_batch_size and "
                         f"--gradient_accumulation_steps (a preset states the global and per-device batch; the "
                         f"accumulation follows from the process count), or --gradient_accumulation_steps {derived}")
    return BatchPlan(per_device, derived, world)


def plan_from_args(args, world: int) -> BatchPlan:
    """``plan_batch`` for the trainer's flags: the accumulation counts as given only when the user (a flag, a
    config file, a setting) gave it."""
    given = "gradient_accumulation_steps" in getattr(args, "explicit_settings", ())
    accumulation = args.gradient_accumulation_steps if given or not args.global_batch_size else None
    return plan_batch(args.per_device_train_batch_size, world, args.global_batch_size, accumulation)
