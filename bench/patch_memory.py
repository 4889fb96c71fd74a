"""Time and peak memory of building and saving every patched size of the embedded SmolLM2 pair.

    .venv/bin/python bench/patch_memory.py [--teacher embedded:smollm2-135m] [--student DIR] \\
        [--work_dir runs/bench-patch-memory] [--dtype float32] [--patch_first_k_layers] [--ks 0,7,14]

Each size is built and saved in a fresh subprocess (``patching.patch.build_intermediate_model``
from the two safetensors folders, then ``save_pretrained``); the subprocess reports its wall times
and its peak resident memory (``resource.getrusage(RUSAGE_SELF).ru_maxrss``). A separate
subprocess that only starts the interpreter and imports the same modules gives the baseline. The
student (when ``--student`` is not given) is made once by ``python -m train.init_student``.
The check printed per row: peak RSS <= 1.5 x the result's size + the baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import ROOT, ensure_student, json_child  # noqa: E402  (no torch: the children time imports)


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kilobytes


def child(args) -> None:
    """One measurement, printed as one JSON line."""
    t0 = time.perf_counter()  # everything a build imports, the model family's modeling module included
    import torch  # noqa: F401  (lazy: the children import what they measure)
    import transformers

    import patching.patch  # noqa: F401
    from boomerang.models import resolve_model_path

    config = transformers.AutoConfig.from_pretrained(resolve_model_path(args.teacher))
    transformers.AutoModelForCausalLM._model_mapping[type(config)]  # loads modeling_<family>
    t_import = time.perf_counter() - t0
    if args.child == "baseline":
        print(json.dumps({"what": "baseline", "peak_rss": _peak_rss_bytes(), "import_s": t_import}))
        return
    from patching.patch import build_intermediate_model, save_patched_model  # (imported above, inside the timed import block)

    k = int(args.child)
    t1 = time.perf_counter()
    model, tokenizer, plan = build_intermediate_model(args.teacher, args.student, k, args.patch_first_k_layers,
                                                      dtype=args.dtype, return_plan=True)
    t_build = time.perf_counter() - t1
    rss_built = _peak_rss_bytes()
    nbytes = model.get_memory_footprint()  # parameters and buffers, each tensor once
    out = os.path.join(args.work_dir, f"out-k{k:02d}")
    shutil.rmtree(out, ignore_errors=True)
    t2 = time.perf_counter()
    save_patched_model(model, tokenizer, out, {"benchmark": True, "num_layers_to_patch": k})
    t_save = time.perf_counter() - t2
    saved = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out) if f.endswith(".safetensors"))
    shutil.rmtree(out, ignore_errors=True)
    print(json.dumps({"what": k, "depth": plan.depth, "params": model.num_parameters(), "result_bytes": nbytes,
                      "saved_bytes": saved, "peak_rss": _peak_rss_bytes(), "peak_rss_after_build": rss_built,
                      "import_s": t_import, "build_s": t_build, "save_s": t_save}))


def run_child(args, what) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", str(what), "--teacher", args.teacher,
           "--student", args.student, "--work_dir", args.work_dir, "--dtype", args.dtype]
    if args.patch_first_k_layers:
        cmd.append("--patch_first_k_layers")
    return json_child(str(what), cmd)


def mib(n: float) -> str:
    return f"{n / 2**20:.0f}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default="embedded:smollm2-135m")
    p.add_argument("--student", default=None, help="student folder (default: made in --work_dir by train.init_student)")
    p.add_argument("--work_dir", default=os.path.join(ROOT, "runs", "bench-patch-memory"))
    p.add_argument("--dtype", default="float32", help="dtype of the built models (float32: the checkpoints' own)")
    p.add_argument("--patch_first_k_layers", action="store_true")
    p.add_argument("--ks", default=None, help="comma-separated sizes k (default: all)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    os.makedirs(args.work_dir, exist_ok=True)
    if args.student is None:
        args.student = os.path.join(args.work_dir, "student")
    if args.child is not None:
        child(args)
        return 0
    ensure_student(args.teacher, args.student)
    from boomerang.families import order_name  # lazy: this file's children time their own imports
    from boomerang.layer_map import LayerMap

    lm = LayerMap.load(args.student)
    ks = [int(k) for k in args.ks.split(",")] if args.ks else list(range(lm.max_patch + 1))
    base = run_child(args, "baseline")
    order = order_name(args.patch_first_k_layers)
    print(f"teacher {args.teacher}, student {args.student}, {order}, dtype {args.dtype}, one fresh process per row")
    print(f"baseline (interpreter + imports): peak RSS {mib(base['peak_rss'])} MiB, imports {base['import_s']:.1f} s")
    head = ("| k | depth | params | result MiB | peak RSS MiB | peak - baseline MiB | (peak - baseline) / result "
            "| limit 1.5 x result + baseline MiB | ok | peak RSS after build MiB | build s | save s |")
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    all_ok = True
    for k in ks:
        r = run_child(args, k)
        extra = r["peak_rss"] - base["peak_rss"]
        limit = 1.5 * r["result_bytes"] + base["peak_rss"]
        ok = r["peak_rss"] <= limit
        all_ok &= ok
        print(f"| {k} | {r['depth']} | {r['params'] / 1e6:.1f}M | {mib(r['result_bytes'])} | {mib(r['peak_rss'])} "
              f"| {mib(extra)} | {extra / r['result_bytes']:.2f} | {mib(limit)} | {'yes' if ok else 'NO'} "
              f"| {mib(r['peak_rss_after_build'])} | {r['build_s']:.1f} | {r['save_s']:.1f} |", flush=True)
    print("all within the limit" if all_ok else "SOME ROWS EXCEED THE LIMIT")
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
