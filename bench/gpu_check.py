"""One GPU check, in at most ~8 minutes on one NVIDIA GPU, writing ONE JSON of figures.

    bash scripts/gpu_check.sh [--output $OUT/gpu_check.json] [--data ../shared/data]
    bash scripts/gpu_check.sh --dry-run --output /tmp/gpu_check.json     # CPU: tiny shapes, a couple of steps

Parts, each a separate process group with its own timeout (a part that fails or times out is recorded and the
next one runs; the JSON is rewritten after every part):

  cuda_tests  pytest -m cuda (tests/test_cuda.py: packed attention under sdpa, flex_attention and flash_attention_2
              against the dense mask, bf16 training steps, a sweep on the GPU)
  train       20 steps of the GPU preset (configs/smollm2-135m.yaml, reproduce.main_job's "gpu" preset) on the
              embedded teacher embedded:smollm2-135m in bfloat16: tokens/s, MFU, peak memory, losses, held-out CE
  fsdp        one process with --fsdp on over NCCL (a single rank): 8 steps with a checkpoint at step 4; the same
              run stopped there and resumed; the same steps without FSDP. Verdict: resumed losses equal to the
              uninterrupted run's, close to the non-FSDP run's (FSDP_TOLERANCE: bf16), the loss falls; and the memory
              plan (python -m train.plan, the same flags, 1 process) against torch.cuda.max_memory_allocated
  bench       bench/train_throughput.py on a Qwen3-1.7B-shaped random pair at sequence 2048: the packed recipe
              (transformers' masks from position ids), the same with the dense 4D mask, and the paper's padded
              recipe (--recipe paper): tokens/s, MFU, peak memory each
  sweep       a 3-size sweep (k = 0, max/2, max, --no_endpoints) of the trained student (an initialized one
              if training failed): perplexity, a multiple-choice task, held-out KL, seconds per size

--dry-run (CPU): the same parts with tiny shapes: the CUDA tests are collected (and skipped), 2 training steps of
a tiny random teacher with the preset's settings, the FSDP-and-resume part over gloo (4 steps, checkpoint at 2),
the bench on random:tiny, a 3-size sweep of that student.

The environment is checked first (scripts/gpu_check.sh creates .venv with scripts/setup_env.sh when there is
none): required packages missing stop the check with their names; a part whose optional package is missing
(lm_eval for the sweep, pytest for the CUDA tests) is recorded as "skipped" with why, and the others run. Every
part's result is in the JSON whatever happens to the others.

Data: --data, else $BOOMERANG_DATA, else ../shared/data beside the repository; where that folder is absent a
small synthetic corpus and task are written and the JSON says so ("data": {"synthetic": true}).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import shutil
import sys
import tempfile
import time
from importlib.metadata import version

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# light modules only: torch loads inside the parts, so this parent (it times them, writes the report) stays small
from bench.common import peak_memory, random_text, run_part, synthetic_corpus, trainer_log  # noqa: E402
from boomerang.io import atomic_write_json  # noqa: E402
from boomerang.layer_map import LayerMap  # noqa: E402
from evaluate.results import load_failures, load_results  # noqa: E402
from reproduce.common import default_data_dir  # noqa: E402

PARTS = ("cuda_tests", "train", "fsdp", "bench", "sweep")
# seconds per part on the GPU: 470 in all, leaving ~10 s of the 8 minutes for start-up and the report
GPU_TIMEOUTS = {"cuda_tests": 90, "train": 80, "fsdp": 120, "bench": 125, "sweep": 55}
DRY_TIMEOUTS = {"cuda_tests": 120, "train": 180, "fsdp": 900, "bench": 300, "sweep": 240}
# what each part needs beyond torch and transformers: a part whose package is missing is "skipped", with why
PART_NEEDS = {"cuda_tests": ("pytest",), "train": (), "fsdp": (), "bench": (), "sweep": ("lm_eval",)}
REQUIRED = ("torch", "transformers", "datasets", "accelerate", "safetensors", "yaml", "tqdm")
OPTIONAL = ("lm_eval", "pytest", "flash_attn", "tensorboard", "wandb")
# the fsdp part: resumed vs uninterrupted, on one GPU the same kernels on the same data, but some backward kernels
# (the embedding's index_add) add in a nondeterministic order: relative 1e-3; FSDP2 (bf16 parameters through
# MixedPrecisionPolicy) vs the one-process run (autocast over float32 parameters): the two round differently in
# bf16 (8 bits of mantissa, relative 4e-3 per operation): relative 3e-2 on the loss. CPU (the dry run): float32.
FSDP_TOLERANCE = {"gpu": {"resumed": 1e-3, "no_fsdp": 3e-2}, "cpu": {"resumed": 1e-6, "no_fsdp": 1e-4}}
GPU_PRESET = "configs/smollm2-135m.yaml"  # reproduce.main_job.PRESETS["gpu"]["train_config"]
TEACHER = "embedded:smollm2-135m"
BENCH_MODES = "packed+chunked,packed+dense_mask,paper"


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="bash scripts/gpu_check.sh", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", dest="dry_run", action="store_true", help="CPU, tiny shapes (checks the script)")
    p.add_argument("--output", default=None,
                   help="the JSON (default: $OUT/gpu_check.json when $OUT is set, else gpu_check.json in a temp folder)")
    p.add_argument("--data", default=None, help="data folder (corpus/, tasks/); default $BOOMERANG_DATA or ../shared/data")
    p.add_argument("--parts", default=",".join(PARTS), help="comma-separated subset of " + ", ".join(PARTS))
    p.add_argument("--timeouts", default="", metavar="PART=S,...", help="override seconds per part, e.g. bench=240")
    p.add_argument("--teacher", default=None, help=f"teacher of the train and sweep parts (default {TEACHER}; "
                                                     "dry run: a tiny random one)")
    p.add_argument("--train_steps", type=int, default=None, help="default 20 (dry run: 2)")
    p.add_argument("--bench_batch", type=int, default=4, help="sequences per step in the bench (GPU)")
    p.add_argument("--keep", action="store_true", help="keep the work folder (students, random teacher)")
    args = p.parse_args(argv)
    parts = [x.strip() for x in args.parts.split(",") if x.strip()]
    bad = [x for x in parts if x not in PARTS]
    if bad or not parts:
        p.error(f"--parts: unknown {bad or 'none given'}; choose from {', '.join(PARTS)}")
    args.parts = parts
    args.timeout = dict(DRY_TIMEOUTS if args.dry_run else GPU_TIMEOUTS)
    for item in filter(None, (x.strip() for x in args.timeouts.split(","))):
        name, _, value = item.partition("=")
        try:
            seconds = float(value)
        except ValueError:
            seconds = -1.0
        if name not in PARTS or seconds <= 0:
            p.error(f"--timeouts {item!r}: expected PART=SECONDS with PART one of {', '.join(PARTS)}")
        args.timeout[name] = seconds
    if args.train_steps is not None and args.train_steps < 1:
        p.error(f"--train_steps must be >= 1, got {args.train_steps}")
    if args.data is not None and not os.path.isdir(args.data):
        p.error(f"--data {args.data}: no such folder (it holds corpus/brown_train.jsonl, corpus/brown_heldout.jsonl, "
                "tasks/arc_easy.jsonl)")
    if args.output is None:
        folder = os.environ.get("OUT") or tempfile.mkdtemp(prefix="gpu-check-")
        args.output = os.path.join(folder, "gpu_check.json")
    args.output = os.path.abspath(args.output)
    return args


# ----------------------------------------------------------------------------- pieces
def package_version(name: str) -> str | None:
    """The installed version of an importable package (its distribution's version where known), or None."""
    if importlib.util.find_spec(name) is None:
        return None
    dist = {"yaml": "pyyaml", "lm_eval": "lm_eval"}.get(name, name)
    try:
        return version(dist)
    except Exception:  # importable but not installed as a distribution (e.g. from a source tree)
        return "present"


def environment() -> dict:
    """Checked first: the Python packages (required and optional, with versions; None = missing), CUDA and the GPU.
    A missing required package stops the check with its name; a missing optional one skips the parts needing it."""
    packages = {name: package_version(name) for name in (*REQUIRED, *OPTIONAL)}
    if missing := [n for n in REQUIRED if packages[n] is None]:
        raise SystemExit(f"missing required packages {missing}: run bash scripts/setup_env.sh (it installs "
                         "requirements.txt into .venv) or pip install -r requirements.txt")
    import torch  # lazy: see the imports at the top

    env = {"python": sys.version.split()[0], "packages": packages, "setup": os.environ.get("BOOMERANG_SETUP_STATUS"),
           "torch": torch.__version__, "transformers": packages["transformers"], "lm_eval": packages["lm_eval"],
           "cuda": torch.version.cuda, "gpu": None, "flash_attn": packages["flash_attn"] is not None}
    if torch.cuda.is_available():
        prop = torch.cuda.get_device_properties(0)
        env["gpu"] = {"name": prop.name, "memory_gib": round(prop.total_memory / 2**30, 1),
                      "count": torch.cuda.device_count(), "capability": f"{prop.major}.{prop.minor}"}
    return env


def data_files(args, work: str) -> dict:
    """The corpus and task files the parts read: the real ones, or a synthetic stand-in (said in the JSON)."""
    folder = os.path.abspath(args.data or default_data_dir())
    files = {"train": os.path.join(folder, "corpus", "brown_train.jsonl"),
             "heldout": os.path.join(folder, "corpus", "brown_heldout.jsonl"),
             "mc": os.path.join(folder, "tasks", "arc_easy.jsonl")}
    if all(os.path.isfile(f) for f in files.values()):
        return {"folder": folder, "synthetic": False, **files}
    if args.data is not None:
        raise SystemExit(f"--data {args.data}: missing {[f for f in files.values() if not os.path.isfile(f)]}")
    r = random.Random(0)
    os.makedirs(os.path.join(work, "data"), exist_ok=True)
    files = {k: os.path.join(work, "data", f"{k}.jsonl") for k in ("train", "heldout", "mc")}
    for key, n in (("train", 400), ("heldout", 40)):
        synthetic_corpus(files[key], n, lambda r: r.randint(50, 600), r)
    with open(files["mc"], "w") as f:
        for i in range(200):
            f.write(json.dumps({"query": random_text(r, 8), "choices": [random_text(r, 3) for _ in range(4)],
                                "gold": i % 4}) + "\n")
    return {"folder": folder, "synthetic": True, "why": f"{folder} holds no corpus/ and tasks/ files", **files}


def train_figures(save_directory: str, log_path: str) -> dict:
    """Figures from the trainer's log.jsonl: throughput of the steps after the first logging window (start-up and
    compilation excluded), MFU, peak memory, first and last losses and held-out CE."""
    recs = trainer_log(save_directory)
    steps = [r for r in recs if "loss" in r]
    windows = [r for r in steps if "tokens_per_s" in r]
    later = windows[1:] or windows
    evals = [r for r in recs if "eval_ce" in r]
    out = {"steps": steps[-1]["step"] if steps else 0,
           "loss_first": steps[0]["loss"] if steps else None, "loss_last": steps[-1]["loss"] if steps else None,
           "step_time_s_median": sorted(r["step_time_s"] for r in steps)[len(steps) // 2] if steps else None,
           # what the steps after the first waited for their prefetched batch, against their time (the 2% limit of
           # docs/training.md's tokenizing figure)
           "data_wait_share": (sum(r.get("data_wait_s", 0.0) for r in steps[1:]) /
                               max(sum(r["step_time_s"] for r in steps[1:]), 1e-9)) if len(steps) > 1 else None,
           "tokens_per_s": sum(r["tokens_per_s"] for r in later) / len(later) if later else None,
           "mfu": (sum(r["mfu"] for r in later) / len(later)) if later and "mfu" in later[-1] else None,
           **peak_memory(windows[-1] if windows else {}),
           "eval_ce_first": evals[0]["eval_ce"] if evals else None, "eval_ce_last": evals[-1]["eval_ce"] if evals else None,
           "teacher_eval_ce": next((r["teacher_eval_ce"] for r in evals if "teacher_eval_ce" in r), None),
           "student_written": os.path.isfile(os.path.join(save_directory, "student_config.json"))}
    with open(log_path, errors="replace") as f:
        chosen = [ln.split("packed attention: ", 1)[1].strip() for ln in f if "packed attention: " in ln]
    out["packed_attention"] = chosen[-1] if chosen else None
    return out


def sweep_figures(save_directory: str) -> dict:
    points = {r["name"]: {"depth": r.get("depth"), "parameters": r.get("parameters", {}).get("total"),
                          "seconds": r.get("wall_time_s"), "device": r.get("device"),
                          "metrics": {f"{t}/{m}": v.get("value") for t, ms in r.get("metrics", {}).items()
                                      for m, v in ms.items()}} for r in load_results(save_directory)}
    return {"points": points, "failed_points": [f["name"] for f in load_failures(save_directory)]}


def losses_of(folder: str) -> list[float]:
    return [r["loss"] for r in trainer_log(folder) if "loss" in r]


def fsdp_part(py: str, common_train: list[str], work: str, log_dir: str, timeout: float, dry: bool) -> dict:
    """One process with --fsdp on (NCCL on the GPU, gloo in the dry run): an uninterrupted run with a checkpoint, the
    same run stopped at the checkpoint and resumed, and the same steps without FSDP. Its verdict: the resumed losses
    equal the uninterrupted ones and are close to the non-FSDP ones (FSDP_TOLERANCE), the loss falls, and the memory
    plan (train.plan, the same flags, 1 process) against torch.cuda.max_memory_allocated."""
    import torch  # lazy: see the imports at the top

    steps, stop = (4, 2) if dry else (8, 4)
    flags = [*common_train, "--max_steps", str(steps), "--save_steps", str(stop), "--logging_steps", "1",
             "--eval_steps", "0", "--eval_dataset", "", "--learning_rate", "1e-3"]
    if not dry:  # shorter than the train part's sequences: three runs share this part's minutes
        flags += ["--max_length", "512", "--global_batch_size", "8", "--per_device_train_batch_size", "4"]
    runs = {"fsdp": ["--fsdp", "on"], "fsdp_resumed": ["--fsdp", "on", "--stop_at_step", str(stop)],
            "no_fsdp": ["--fsdp", "off"]}
    rec, t0 = {"runs": {}}, time.time()
    for name, extra in runs.items():
        folder = os.path.join(work, name)
        cmd = [py, "-m", "train.train", "--config", GPU_PRESET, *flags, *extra, "--save_directory", folder,
               "--overwrite"]
        r = run_part(f"fsdp_{name}", cmd, max(10.0, timeout - (time.time() - t0)), log_dir)
        if name == "fsdp_resumed" and r["status"] == "ok":
            resume = [py, "-m", "train.train", "--config", GPU_PRESET, *flags, "--fsdp", "on", "--save_directory",
                      folder, "--resume"]  # on to the end from the checkpoint at step `stop`
            r2 = run_part(f"fsdp_{name}_resume", resume, max(10.0, timeout - (time.time() - t0)), log_dir)
            r = {**r2, "first_part": {k: r[k] for k in ("status", "seconds")}}
        r["losses"] = losses_of(folder)
        rec["runs"][name] = r
    full, resumed, plain = (rec["runs"][n]["losses"] for n in runs)
    kind = "cpu" if dry else "gpu"
    tol = FSDP_TOLERANCE[kind]

    def rel(a, b):
        return max((abs(x - y) / max(abs(y), 1e-12) for x, y in zip(a, b)), default=None)

    rec["tolerance"] = tol
    rec["resumed_vs_uninterrupted_max_rel"] = rel(resumed, full) if len(resumed) == len(full) == steps else None
    rec["fsdp_vs_no_fsdp_max_rel"] = rel(full, plain) if len(plain) == len(full) == steps else None
    rec["loss_first"], rec["loss_last"] = (full[0], full[-1]) if full else (None, None)
    checks = {"resumed_equal": rec["resumed_vs_uninterrupted_max_rel"] is not None
              and rec["resumed_vs_uninterrupted_max_rel"] <= tol["resumed"],
              "close_to_no_fsdp": rec["fsdp_vs_no_fsdp_max_rel"] is not None
              and rec["fsdp_vs_no_fsdp_max_rel"] <= tol["no_fsdp"],
              "loss_falls": bool(full) and full[-1] < full[0]}
    measured = [r.get("peak_memory_gb") for r in trainer_log(os.path.join(work, "fsdp")) if "peak_memory_gb" in r]
    plan_json = os.path.join(work, "fsdp_plan.json")
    plan = run_part("fsdp_plan", [py, "-m", "train.plan", "--config", GPU_PRESET, *flags, "--nproc", "1",
                                  "--json", plan_json], max(10.0, timeout - (time.time() - t0)), log_dir)
    rec["plan"] = {"status": plan["status"], "seconds": plan["seconds"]}
    if os.path.isfile(plan_json):
        with open(plan_json) as f:
            p = json.load(f)
        rec["plan"].update(peak_gib=p["peak_gib"], by_category_gib=p["by_category_gib"])
        if measured and torch.cuda.is_available():
            rec["plan"]["max_memory_allocated_gib"] = max(measured)  # the trainer logs GiB (2**30)
            rec["plan"]["measured_over_planned"] = max(measured) / max(p["peak_gib"], 1e-9)
        else:
            rec["plan"]["measured"] = "skipped: no CUDA (dry run), torch.cuda.max_memory_allocated does not exist"
    rec["checks"] = checks
    rec["status"] = "ok" if all(r["status"] == "ok" for r in rec["runs"].values()) and all(checks.values()) \
        and plan["status"] == "ok" else "failed"
    rec.update(seconds=round(time.time() - t0, 2), timeout_s=timeout, command="(four train.train runs, train.plan)",
               log=rec["runs"]["fsdp"]["log"], exit_code=0 if rec["status"] == "ok" else 1)
    return rec


def skipped(name: str, why: str, timeout: float) -> dict:
    return {"status": "skipped", "why": why, "exit_code": None, "seconds": 0.0, "timeout_s": timeout,
            "command": None, "log": None}


def headline(parts: dict) -> dict:
    """The figures to read first, one level deep."""
    out = {name: rec["status"] for name, rec in parts.items()}
    t = parts.get("train", {})
    for k in ("tokens_per_s", "mfu", "peak_memory_gb", "loss_last", "eval_ce_last", "packed_attention"):
        out[f"train_{k}"] = t.get(k)
    for mode, r in parts.get("bench", {}).get("modes", {}).items():
        for k in ("tokens_per_s", "mfu", "peak_memory_gb", "error"):
            if k in r:
                out[f"bench_{mode}_{k}"] = r[k]
    f = parts.get("fsdp", {})
    for k in ("resumed_vs_uninterrupted_max_rel", "fsdp_vs_no_fsdp_max_rel", "loss_first", "loss_last"):
        out[f"fsdp_{k}"] = f.get(k)
    out["fsdp_measured_over_planned"] = f.get("plan", {}).get("measured_over_planned")
    points = parts.get("sweep", {}).get("points", {})
    out["sweep_seconds_per_size"] = {n: (p.get("seconds") or {}).get("total") for n, p in points.items()}
    return out


def write_report(path: str, report: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    report["finished_at" if report.get("done") else "updated_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    atomic_write_json(path, report)


# ----------------------------------------------------------------------------- the check
def main(argv=None) -> dict:
    args = parse_args(argv)
    os.environ.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")  # for every part
    py, dry = sys.executable, args.dry_run
    work = tempfile.mkdtemp(prefix="gpu-check-work-")
    log_dir = os.path.join(os.path.dirname(args.output), "gpu_check_logs")
    t_start = time.time()
    report = {"dry_run": dry, "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "output": args.output, "work": work, "environment": environment(), "parts": {}}
    import torch  # lazy: --help and the dry run's argument checks need no torch

    if not dry and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this check needs one NVIDIA GPU (use --dry-run to check the script on CPU)")
    data = report["data"] = data_files(args, work)
    write_report(args.output, report)

    if dry:
        from bench.train_throughput import random_teacher  # lazy: only the dry run builds its own teacher
    tiny_teacher = random_teacher("tiny", os.path.join(work, "tiny-teacher")) if dry else None
    teacher = args.teacher or tiny_teacher or TEACHER
    steps = args.train_steps or (2 if dry else 20)
    student = os.path.join(work, "train")
    common_train = ["--teacher_model_name_or_path", teacher, "--dataset", data["train"], "--eval_dataset",
                    data["heldout"]]
    if dry:  # the preset's settings at tiny shapes, on CPU
        common_train += ["--max_length", "64", "--global_batch_size", "4", "--per_device_train_batch_size", "1",
                         "--per_device_eval_batch_size", "2", "--eval_sequences", "4", "--kl_chunk_size", "32",
                         "--device", "cpu"]

    for name in args.parts:
        timeout = args.timeout[name]
        print(f"[gpu_check] {name} (timeout {timeout:g} s)", file=sys.stderr, flush=True)
        missing = [pkg for pkg in PART_NEEDS[name] if report["environment"]["packages"].get(pkg) is None]
        if missing:
            rec = skipped(name, f"skipped: package {', '.join(missing)} is not installed "
                                f"(pip install {' '.join(m.replace('_', '-') for m in missing)})", timeout)
        elif name == "fsdp":
            rec = fsdp_part(py, common_train, work, log_dir, timeout, dry)
        elif name == "cuda_tests":
            rec = run_part(name, [py, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rs", "-m", "cuda",
                                  "tests/test_cuda.py"], timeout, log_dir)
            with open(rec["log"], errors="replace") as f:
                tail = [ln.strip() for ln in f if " in " in ln and ("passed" in ln or "skipped" in ln or "failed" in ln)]
            rec["summary"] = tail[-1] if tail else None
        elif name == "train":
            rec = run_part(name, [py, "-m", "train.train", "--config", GPU_PRESET, *common_train, "--max_steps",
                                  str(steps), "--save_directory", student, "--overwrite", "--logging_steps",
                                  "1" if dry else "5", "--eval_steps", str(steps), "--save_steps", "0"],
                           timeout, log_dir)
            rec.update(train_figures(student, rec["log"]))
        elif name == "bench":
            bench_json = os.path.join(work, "bench.json")
            modes = BENCH_MODES if not dry else "packed+chunked,paper"
            n_modes = len(modes.split(","))
            shape = ["--teacher", "random:tiny", "--max_length", "64", "--batch", "2", "--steps", "1", "--warmup", "1"] \
                if dry else ["--teacher", "random:qwen3-1.7b", "--max_length", "2048", "--batch", str(args.bench_batch),
                             "--steps", "3", "--warmup", "1"]
            rec = run_part(name, [py, "bench/train_throughput.py", *shape, "--dataset", data["train"],
                                  "--modes", modes, "--mode_timeout", str(int(max(30, (timeout - 45) / n_modes))),
                                  "--output", bench_json], timeout, log_dir)
            if os.path.isfile(bench_json):
                with open(bench_json) as f:
                    rec["modes"] = {m: {k: v for k, v in r.items() if k != "stderr_tail"} | (
                        {"stderr_tail": r["stderr_tail"][-800:]} if "stderr_tail" in r else {})
                        for m, r in json.load(f)["results"].items()}
            rec.update(shape="tiny" if dry else "qwen3-1.7b", sequence_length=64 if dry else 2048)
        else:  # sweep
            rec, t_left = {}, timeout
            if not os.path.isfile(os.path.join(student, "student_config.json")):
                # training failed or was not run: an initialized student (0 steps) still tests the sweep
                init = run_part("sweep_init", [py, "-m", "train.train", "--config", GPU_PRESET, *common_train,
                                               "--max_steps", "0", "--save_directory", student, "--overwrite",
                                               "--eval_dataset", ""], timeout / 2, log_dir)
                rec["student"] = f"initialized (0 steps): {init['status']} in {init['seconds']} s"
                t_left -= init["seconds"]
            sizes = "0,1,2"
            try:
                top = LayerMap.load(student).max_patch
                sizes = f"0,{top // 2},{top}"
            except Exception as e:  # the sweep itself will say what is wrong with the student
                rec["sizes_error"] = f"{type(e).__name__}: {e}"
            cmd = [py, "-m", "evaluate.evaluate", "--teacher_model_name_or_path", teacher,
                   "--student_model_name_or_path", student, "--save_directory", os.path.join(work, "sweep"),
                   "--sweep", sizes, "--no_endpoints", "--tasks", f"local_ppl:{data['heldout']}",
                   "--task_data", f"arc_easy_local={data['mc']}", "--no_plots", "--overwrite",
                   "--heldout_kl", data["heldout"]]
            cmd += (["--limit", "3", "--max_doc_words", "50", "--heldout_docs", "3", "--heldout_max_tokens", "64",
                     "--dtype", "float32", "--device", "cpu", "--eval_batch_size", "4"] if dry else
                    ["--limit", "100", "--max_doc_words", "300", "--heldout_docs", "10", "--dtype", "bfloat16",
                     "--eval_batch_size", "16"])
            rec = {**run_part(name, cmd, max(10.0, t_left), log_dir), **rec, "sizes": sizes}
            rec.update(sweep_figures(os.path.join(work, "sweep")))
        report["parts"][name] = rec
        print(f"[gpu_check] {name}: {rec['status']} in {rec['seconds']} s", file=sys.stderr, flush=True)
        write_report(args.output, report)

    report.update(wall_s=round(time.time() - t_start, 1),
                  ok=all(r["status"] in ("ok", "skipped") for r in report["parts"].values()),
                  headline=headline(report["parts"]), done=True)
    write_report(args.output, report)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    print(f"[gpu_check] {'all parts ok' if report['ok'] else 'some parts failed'}: {args.output}", file=sys.stderr)
    return report


if __name__ == "__main__":
    sys.exit(0 if main()["ok"] else 1)
