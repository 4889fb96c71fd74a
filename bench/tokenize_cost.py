"""What one process's tokenizing costs against one GPU step of the same preset.

    python bench/tokenize_cost.py --config configs/smollm2-135m.yaml --steps 5 --nproc 8  # idle cores: the figure
    python bench/tokenize_cost.py --config configs/smollm2-135m.yaml --nproc 8 --step_seconds 1.9  # a measured step
    python bench/tokenize_cost.py --config configs/qwen3-4b.yaml --nproc 8 --steps 2 \
        --tokenizer embedded:smollm2-135m --dataset ../shared/data/corpus/brown_train.jsonl  # hub preset, offline
    python bench/tokenize_cost.py --teacher_model_name_or_path T --dataset D --max_length 64 --global_batch_size 4 \
        --per_device_train_batch_size 1 --nproc 2 --steps 2                                        # tiny check (tests)

Each process tokenizes and packs only the sequences of the global batch it trains on (the improved recipe's
``train.data.SlottedStream``: one slot a sequence; the paper's recipe: its own documents), and by default does so
ahead, in a worker process, while the step computes (``train.data.Prefetcher``, ``--prefetch_batches``). This
times, on this CPU, the trainer's own stream (``train.train.make_stream``) as rank 0 of ``--nproc`` processes makes
it, ``--steps`` global batches after one warm-up batch:

* inside the step (``--prefetch_batches 0``): how long making rank 0's rows takes, and beside it the whole global
  batch (what one process makes, and what every process made before the slots);
* prefetched: how long each step waits for its batch when the step itself lasts ``step_seconds`` and the worker
  works meanwhile. The step is simulated twice, as its two bounds: the process sleeping (a GPU-bound step: the
  CPU waits on the device) and the process running Python the whole step (a launch-bound step: it holds Python's
  lock except at the interpreter's switch interval).

The GPU step is ``--step_seconds`` when given (the gpu check's ``step_time_s_median``), else the FLOPs of one step
(``train.train.flops_per_token``: 6 N_student + 2 N_teacher + attention, the models built on the meta device from
the teacher's config) over ``--nproc`` GPUs at ``--mfu`` of ``--bench_peak_tflops``.
The verdict: what rank 0's step waits for its data (prefetched, the worse bound; mean, so the rare steps that start
a new document count) is under ``--limit`` (2%) of the step, or not.
"""

from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from boomerang.cli import fail, parse_with_config  # noqa: E402


def build_parser():
    from train.train import build_parser as trainer_parser

    p = trainer_parser()
    p.prog = "python bench/tokenize_cost.py"
    p.description = __doc__
    g = p.add_argument_group("benchmark")
    g.add_argument("--steps", type=int, default=5, help="global batches timed after one warm-up batch")
    g.add_argument("--step_seconds", type=float, default=None, help="a measured GPU step of the preset (seconds)")
    g.add_argument("--nproc", type=int, default=1, help="processes (GPUs): they share the step's FLOPs, and each "
                   "tokenizes its share of the global batch (rank 0's is timed)")
    g.add_argument("--mfu", type=float, default=0.4, help="assumed model FLOPs utilization without --step_seconds")
    g.add_argument("--bench_peak_tflops", type=float, default=989.0, help="GPU bf16 peak (H100: 989)")
    g.add_argument("--limit", type=float, default=0.02, help="the share of a step tokenizing may cost")
    g.add_argument("--tokenizer", default=None, help="time with this tokenizer (a local folder or embedded:...) "
                   "instead of the teacher's, for a preset whose tokenizer is not on this machine (no hub)")
    g.add_argument("--output", default=None, help="also write the figures to this JSON file")
    return p


def median_take(stream, global_batch: int, keep, steps: int) -> tuple[float, list[float]]:
    """(median, all) seconds of ``steps`` takes of one global batch's rows ``keep``, after one warm-up take (the file
    read, the tokenizer's first call)."""
    stream.take(global_batch, keep=keep)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        stream.take(global_batch, keep=keep)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2], times


def simulated_step(seconds: float, python: bool) -> None:
    """A step's time on the CPU side: asleep (waiting on the GPU), or running Python throughout (launching kernels)."""
    if not python:
        time.sleep(seconds)
        return
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def prefetched_waits(stream, global_batch: int, keep, steps: int, depth: int, step_s: float, python: bool) -> dict:
    """What each of ``steps`` steps of ``step_s`` waits for its batch from a ``Prefetcher`` of ``depth`` (after one
    warm-up batch): {median, mean, max, all} seconds."""
    from train.data import Prefetcher

    fetch = Prefetcher(stream, global_batch, keep, depth=depth, takes=steps + 1)
    fetch.take(global_batch, keep=keep)
    waits = []
    for _ in range(steps):
        simulated_step(step_s, python)
        t0 = time.perf_counter()
        fetch.take(global_batch, keep=keep)
        waits.append(time.perf_counter() - t0)
    fetch.close()
    return {"median": sorted(waits)[len(waits) // 2], "mean": sum(waits) / len(waits), "max": max(waits),
            "all": waits}


def main(argv=None) -> dict:
    import torch

    from boomerang.models import empty_model, load_tokenizer, resolve_model_path
    from train.batch import BatchError, plan_from_args
    from train.init_student import init_student, plan_student
    from train.plan import teacher_config
    from train.train import flops_per_token, make_stream, process_indices

    args = parse_with_config(build_parser(), argv)
    try:
        batch = plan_from_args(args, args.nproc)
    except BatchError as e:  # it names the batches that would work on --nproc processes
        fail(str(e))
    mine = process_indices(args.recipe, batch.per_device, batch.accumulation, batch.world, 0)
    tokenizer = load_tokenizer(resolve_model_path(args.tokenizer or args.teacher_model_name_or_path))

    def stream(own):
        return make_stream(args, tokenizer, args.dataset, args.dataset_split, "--dataset", training=True,
                           slots=batch.global_batch, own=own)

    config = teacher_config(args)
    teacher = empty_model(config, torch.bfloat16)
    student = init_student(teacher, plan_student(config, args.first_layers_to_keep, args.alternate_every_n_layers,
                                                 args.last_layers_to_keep), dtype=torch.float32)
    step_flops = flops_per_token(student, teacher, args.max_length) * batch.global_batch * args.max_length
    if args.step_seconds:
        step_s, basis = args.step_seconds, "measured (--step_seconds)"
    else:
        step_s = step_flops / (args.nproc * args.bench_peak_tflops * 1e12 * args.mfu)
        basis = (f"estimated: {step_flops:.3g} FLOPs over {args.nproc} GPU(s) at {args.mfu:.0%} of "
                 f"{args.bench_peak_tflops:g} TFLOP/s")
    tokenize_s, times = median_take(stream(mine), batch.global_batch, mine, args.steps)
    whole_s, whole_times = median_take(stream(None), batch.global_batch, None, args.steps)
    depth = max(args.prefetch_batches, 1)  # what the trainer makes ahead (0 there: measured here as 1)
    waits = {bound: prefetched_waits(stream(mine), batch.global_batch, mine, args.steps, depth, step_s,
                                     bound == "python") for bound in ("sleeping", "python")}
    worst = max(w["mean"] for w in waits.values())
    out = {"config": args.config, "recipe": args.recipe, "tokenizer": args.tokenizer or args.teacher_model_name_or_path,
           "global_batch": batch.global_batch,
           "max_length": args.max_length, "nproc": args.nproc, "rank_sequences": len(mine),
           "tokenize_seconds_median": tokenize_s, "tokenize_seconds": times,
           "whole_batch_tokenize_seconds_median": whole_s, "whole_batch_tokenize_seconds": whole_times,
           "step_seconds": step_s, "step_basis": basis, "share_of_step": tokenize_s / step_s,
           "whole_batch_share_of_step": whole_s / step_s, "prefetch_batches": depth,
           "prefetched_wait_seconds": waits, "prefetched_wait_share_of_step": worst / step_s, "limit": args.limit,
           "under_limit": worst / step_s < args.limit}
    print(json.dumps(out, indent=2))
    if args.output:
        from boomerang.io import atomic_write_json

        atomic_write_json(args.output, out)
    return out


if __name__ == "__main__":
    main()
