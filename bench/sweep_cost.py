"""A sweep in one process against the same sizes evaluated one process each.

    .venv/bin/python bench/sweep_cost.py [--teacher embedded:smollm2-135m] [--student DIR] \\
        [--data ../shared/data/corpus/brown_heldout.jsonl] [--ks 0,7,14] [--limit 4] [--max_doc_words 64] \\
        [--work_dir runs/bench-sweep-cost] [--dtype float32] [--out FILE.json]

Both ways run ``python -m evaluate.evaluate`` as a subprocess on a local perplexity task:
  * sweep: one process, ``--sweep KS --no_endpoints`` (teacher and student loaded once; each size
    assembled from them in memory);
  * one per process: ``--num_layers_to_patch K`` for each K in KS, a fresh process each (Python and
    library imports, task setup and reading the weights again every time, as the paper's script
    does per size; ours reads only the tensors that size needs).
Each is timed from process start to exit (wall clock); the result JSONs give each size's build and
evaluation times. The metrics of the two ways must agree (same model, same items): checked.
The student (when ``--student`` is not given) is made once by ``python -m train.init_student``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import ROOT, ensure_student, run_part  # noqa: E402
from boomerang.io import atomic_write_json  # noqa: E402
from evaluate.results import load_results  # noqa: E402


def _run(name: str, cmd: list[str], log_dir: str) -> float:
    """Wall seconds of ``cmd`` from process start to exit; its output goes to ``log_dir/name.log``."""
    rec = run_part(name, cmd, None, log_dir, {"TOKENIZERS_PARALLELISM": "false"})
    if rec["status"] != "ok":
        raise SystemExit(f"command failed ({rec['exit_code']}); see {rec['log']}:\n  {rec['command']}")
    return rec["seconds"]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default="embedded:smollm2-135m")
    p.add_argument("--student", default=None, help="student folder (default: made by train.init_student)")
    p.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data", "corpus", "brown_heldout.jsonl"),
                   help="a perplexity corpus (jsonl with 'text', or .txt)")
    p.add_argument("--ks", default="0,7,14")
    p.add_argument("--limit", type=int, default=4)
    p.add_argument("--max_doc_words", type=int, default=64)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--batch_size", default="4")
    p.add_argument("--work_dir", default=os.path.join(ROOT, "runs", "bench-sweep-cost"))
    p.add_argument("--out", default=None, help="write the measurements here as JSON")
    args = p.parse_args(argv)
    data = os.path.abspath(args.data)
    if not os.path.isfile(data):
        raise SystemExit(f"--data {args.data}: no such file (the offline data folder is ../shared/data; "
                         "pass --data PATH)")
    os.makedirs(args.work_dir, exist_ok=True)
    log_dir = os.path.join(args.work_dir, "logs")
    py = sys.executable
    student = args.student or ensure_student(args.teacher, os.path.join(args.work_dir, "student"))
    ks = [int(k) for k in args.ks.split(",")]
    common = ["--teacher_model_name_or_path", args.teacher, "--student_model_name_or_path", student,
              "--tasks", f"ppl=local_ppl:{data}", "--limit", str(args.limit), "--max_doc_words",
              str(args.max_doc_words), "--dtype", args.dtype, "--eval_batch_size", args.batch_size,
              "--device", "cpu", "--no_plots"]
    sweep_dir, single_dir = os.path.join(args.work_dir, "sweep"), os.path.join(args.work_dir, "one-per-process")
    for d in (sweep_dir, single_dir):
        shutil.rmtree(d, ignore_errors=True)

    t_sweep = _run("sweep", [py, "-m", "evaluate.evaluate", *common, "--save_directory", sweep_dir, "--sweep",
                             args.ks, "--no_endpoints"], log_dir)
    per_process = {k: _run(f"k{k}", [py, "-m", "evaluate.evaluate", *common, "--save_directory", single_dir,
                                      "--num_layers_to_patch", str(k)], log_dir) for k in ks}
    t_single = sum(per_process.values())

    a, b = ({r["name"]: r for r in load_results(d)} for d in (sweep_dir, single_dir))
    assert sorted(a) == sorted(b), (sorted(a), sorted(b))
    rows = []
    for name in sorted(a, key=lambda n: a[n]["num_layers_to_patch"]):
        va = a[name]["metrics"]["ppl"]["token_perplexity"]["value"]
        vb = b[name]["metrics"]["ppl"]["token_perplexity"]["value"]
        assert abs(va - vb) <= 1e-4 * abs(vb), f"{name}: sweep {va} vs one-per-process {vb}"
        k, sa, sb = a[name]["num_layers_to_patch"], a[name]["wall_time_s"], b[name]["wall_time_s"]
        rows.append({"name": name, "k": k, "depth": a[name]["depth"], "token_perplexity": va,
                     "sweep_build_s": sa["build"], "sweep_eval_s": sa["evaluate"], "single_build_s": sb["build"],
                     "single_eval_s": sb["evaluate"], "single_process_s": round(per_process[k], 2)})
    report = {"teacher": args.teacher, "student": student, "data": data, "ks": ks, "limit": args.limit,
              "max_doc_words": args.max_doc_words, "dtype": args.dtype, "cpu_count": os.cpu_count(),
              "load_average_at_end": os.getloadavg(),
              "sweep_total_s": round(t_sweep, 2), "one_per_process_total_s": round(t_single, 2),
              "speedup": round(t_single / t_sweep, 2), "sizes": rows}
    print(f"sizes k={ks}, {args.limit} documents x first {args.max_doc_words} words, {args.dtype}, "
          f"{os.cpu_count()} CPU cores (load average at the end {os.getloadavg()[0]:.1f})")
    print(f"{'k':>3} {'depth':>5} {'token ppl':>12} {'sweep build+eval s':>20} {'one process: build+eval s':>26} "
          f"{'its process s':>14}")
    for r in rows:
        print(f"{r['k']:>3} {r['depth']:>5} {r['token_perplexity']:>12.1f} "
              f"{r['sweep_build_s']:>9.2f}+{r['sweep_eval_s']:<10.2f} {r['single_build_s']:>12.2f}+"
              f"{r['single_eval_s']:<13.2f} {r['single_process_s']:>14.2f}")
    print(f"sweep, one process: {t_sweep:.1f} s; one process per size: {t_single:.1f} s ({t_single / t_sweep:.2f}x)")
    if args.out:
        atomic_write_json(args.out, report)
    return report


if __name__ == "__main__":
    main()
