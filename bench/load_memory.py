"""Peak host memory per process of loading teacher and student under FSDP: every process loads both whole (the
earlier loader) against each process reading only its own shards (``train.train.build_models``).

    .venv/bin/python bench/load_memory.py [--nproc 2] [--work_dir /tmp/bench-load-memory] [--keep]

A random Llama of the SmolLM2-135M shape (30 layers, hidden 576, MLP 1536, 9 heads, 3 KV heads, vocabulary 49152,
tied head: 135M parameters) is saved once with ``save_pretrained`` (float32 safetensors). Then, for each loader,
``torchrun --nproc-per-node N`` starts N processes (gloo, CPU) that each build the frozen teacher and the student
(the default layer recipe), sharded with FSDP2, exactly as ``python -m train.train`` does, and report:

* ``baseline_mib``: resident memory after imports and process-group start, before loading;
* ``peak_mib``: the high-water mark of resident memory (``VmHWM``: anonymous memory and the pages of the
  memory-mapped safetensors file the process touched);
* ``after_anon_mib``: anonymous resident memory once loaded (the tensors it keeps);
* ``load_s``: wall time of the build.

Printed as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import ROOT, child_env  # noqa: E402
SHAPE = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
             num_key_value_heads=3, max_position_embeddings=2048, tie_word_embeddings=True, rope_theta=100000.0,
             bos_token_id=1, eos_token_id=2)


def _status_mib(*fields: str) -> dict:
    with open("/proc/self/status") as f:
        values = dict(line.split(":", 1) for line in f if ":" in line)
    return {k: int(values[k].split()[0]) / 1024 for k in fields}  # kB


def worker(args) -> None:
    """One process of the torchrun group: build both models, write this rank's figures as JSON."""
    import torch  # lazy: the parent (it measures this worker) stays free of torch
    import torch.distributed as dist

    from boomerang.models import load_config
    from train.init_student import plan_student
    from train.train import build_models, build_parser

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    a = build_parser().parse_args(["--teacher_model_name_or_path", args.teacher])
    layer_map = plan_student(load_config(args.teacher))
    baseline = _status_mib("VmRSS")["VmRSS"]
    dist.barrier()
    t0 = time.perf_counter()
    teacher, student = build_models(a, args.teacher, layer_map, torch.float32, torch.device("cpu"), fsdp=True,
                                    per_process_loading=args.worker == "per-process")
    dist.barrier()
    load_s = time.perf_counter() - t0
    status = _status_mib("VmHWM", "RssAnon")
    kept = sum(p.to_local().numel() * p.element_size() for m in (teacher, student) for p in m.parameters()) / 2**20
    with open(os.path.join(args.out, f"{args.worker}-{rank}.json"), "w") as f:
        json.dump({"rank": rank, "baseline_mib": round(baseline), "peak_mib": round(status["VmHWM"]),
                   "after_anon_mib": round(status["RssAnon"]), "shard_tensors_mib": round(kept),
                   "load_s": round(load_s, 1)}, f)
    dist.destroy_process_group()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--work_dir", default="/tmp/bench-load-memory")
    p.add_argument("--keep", action="store_true", help="keep the saved teacher in --work_dir")
    p.add_argument("--worker", choices=["whole", "per-process"], help=argparse.SUPPRESS)
    p.add_argument("--teacher", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)

    teacher = os.path.join(args.work_dir, "teacher")
    os.makedirs(args.work_dir, exist_ok=True)
    if not os.path.isfile(os.path.join(teacher, "config.json")):
        import torch  # lazy: only to write the random teacher once
        import transformers

        torch.manual_seed(0)
        transformers.LlamaForCausalLM(transformers.LlamaConfig(**SHAPE)).save_pretrained(teacher)
    from safetensors import safe_open  # lazy: the parent stays light (it measures the workers)

    with safe_open(os.path.join(teacher, "model.safetensors"), framework="pt") as f:
        parameters = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    result = {"shape": SHAPE, "parameters": parameters, "processes": args.nproc,
              "safetensors_mib": round(os.path.getsize(os.path.join(teacher, "model.safetensors")) / 2**20)}
    for loader in ("whole", "per-process"):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={args.nproc}",
               f"--master-port={port}", os.path.abspath(__file__), "--worker", loader, "--teacher", teacher,
               "--out", args.work_dir]
        res = subprocess.run(cmd, env=child_env(OMP_NUM_THREADS="1"), capture_output=True, text=True, cwd=ROOT)
        if res.returncode:
            sys.exit(f"{loader}: torchrun failed\n{res.stderr[-3000:]}")
        result[loader] = [json.loads(Path(args.work_dir, f"{loader}-{r}.json").read_text()) for r in range(args.nproc)]
    if not args.keep:
        shutil.rmtree(teacher)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
