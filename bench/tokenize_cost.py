"""What tokenizing a preset's global batch costs against one GPU step of the same preset.

    python bench/tokenize_cost.py --config configs/smollm2-135m.yaml --steps 5          # idle cores: the figure
    python bench/tokenize_cost.py --config configs/smollm2-135m.yaml --step_seconds 1.9  # a measured GPU step
    python bench/tokenize_cost.py --teacher_model_name_or_path T --dataset D --max_length 64 --global_batch_size 4 \
        --per_device_train_batch_size 1 --steps 2                                        # tiny check (tests)

Every process of a packed (improved-recipe) run tokenizes and packs the whole global batch (where each sequence
begins depends on every document before it), inside its step. This times exactly that, on this CPU: the trainer's
own stream (``train.train.make_stream``) taking ``global_batch_size`` sequences, ``--steps`` times after one
warm-up batch. The GPU step it is compared with is ``--step_seconds`` when given (the gpu check's
``step_time_s_median``), else the FLOPs of one step (``train.train.flops_per_token``: 6 N_student + 2 N_teacher +
attention, the models built on the meta device from the teacher's config) over ``--nproc`` GPUs at ``--mfu``
of ``--bench_peak_tflops``.
The verdict: tokenizing is under ``--limit`` (2%) of the step, or not. (The paper's recipe tokenizes only each
process's own documents: ``Stream.take(n, keep)``.)
"""

from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from boomerang.cli import parse_with_config  # noqa: E402


def build_parser():
    from train.train import build_parser as trainer_parser

    p = trainer_parser()
    p.prog = "python bench/tokenize_cost.py"
    p.description = __doc__
    g = p.add_argument_group("benchmark")
    g.add_argument("--steps", type=int, default=5, help="global batches timed after one warm-up batch")
    g.add_argument("--step_seconds", type=float, default=None, help="a measured GPU step of the preset (seconds)")
    g.add_argument("--nproc", type=int, default=1, help="GPUs sharing the step's FLOPs (each still tokenizes the "
                   "whole global batch)")
    g.add_argument("--mfu", type=float, default=0.4, help="assumed model FLOPs utilization without --step_seconds")
    g.add_argument("--bench_peak_tflops", type=float, default=989.0, help="GPU bf16 peak (H100: 989)")
    g.add_argument("--limit", type=float, default=0.02, help="the share of a step tokenizing may cost")
    g.add_argument("--output", default=None, help="also write the figures to this JSON file")
    return p


def main(argv=None) -> dict:
    import torch

    from boomerang.models import empty_model, load_tokenizer, resolve_model_path
    from train.batch import plan_from_args
    from train.init_student import init_student, plan_student
    from train.plan import teacher_config
    from train.train import flops_per_token, make_stream

    args = parse_with_config(build_parser(), argv)
    batch = plan_from_args(args, 1)  # the global batch: the same on any number of processes
    tokenizer = load_tokenizer(resolve_model_path(args.teacher_model_name_or_path))
    stream = make_stream(args, tokenizer, args.dataset, args.dataset_split, "--dataset", training=True)
    stream.take(batch.global_batch)  # warm-up: the file read, the tokenizer's first call
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        stream.take(batch.global_batch)
        times.append(time.perf_counter() - t0)
    tokenize_s = sorted(times)[len(times) // 2]
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
    out = {"config": args.config, "global_batch": batch.global_batch, "max_length": args.max_length,
           "tokenize_seconds_median": tokenize_s, "tokenize_seconds": times, "step_seconds": step_s,
           "step_basis": basis, "share_of_step": tokenize_s / step_s, "limit": args.limit,
           "under_limit": tokenize_s / step_s < args.limit}
    print(json.dumps(out, indent=2))
    if args.output:
        from boomerang.io import atomic_write_json

        atomic_write_json(args.output, out)
    return out


if __name__ == "__main__":
    main()
