"""Training speed beside the paper's own code: useful (non-padding) tokens per second, same machine, one invocation.

    python bench/paper_speed.py --steps 6 --warmup 1 --output runs/bench/paper_speed.json

Three runs, one after the other, each a fresh process, on the same teacher (default: the embedded SmolLM2-135M,
converted to a Hugging Face folder by boomerang.models, which the paper's code loads like any local model), the same
documents, sequence length, per-device batch and accumulation, for the same number of optimizer steps:

  paper_code     the paper's ``train/train.py``, unmodified, in its pinned environment (bench/paper_reference/
                 setup.sh: torch 2.9.0, transformers 4.51.3, datasets 3.6.0, accelerate 1.6.0), timed from outside
                 by bench/paper_reference/harness.py --speed (a Trainer callback: the wall time from the end of one
                 optimizer step to the end of the next, data loading included)
  ours_paper     this trainer, ``--recipe paper`` (the same padded documents, loss and order)
  ours_improved  this trainer, ``--recipe improved`` with packing (the default): full sequences, no padding

Both paper-recipe runs read the paper's stream: ``skip(50000)`` then a 100,000-document shuffle buffer. A small
corpus such as Brown (450 documents) would be skipped whole, so the corpus folder given to them holds 50,000 one-word
filler documents first (a file sorted before the corpus): the skip drops exactly those and both train on the corpus's
documents, shuffled. The improved run reads the corpus itself.

Reported per run: useful tokens/s (real tokens: the paper's attention-mask sum, BOS included; packed tokens for the
improved recipe), sequence tokens/s (padding included), seconds a step, and each run's useful tokens/s as a ratio
to the paper's code. The first ``--warmup`` steps are not timed. Take timings on idle cores only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from bench.common import print_results, run_part, trainer_log  # noqa: E402
from boomerang.io import atomic_write_json  # noqa: E402

PAPER_SKIP = 50_000  # the paper's train_dataset.skip(50000)
RUNS = ("paper_code", "ours_paper", "ours_improved")


def paper_corpus(dataset: str, folder: str) -> str:
    """A folder the paper's ``load_dataset(folder, streaming=True)`` and this trainer read alike: 50,000 filler
    documents (skipped by both), then the corpus's own file."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "0-skipped.jsonl"), "w") as f:
        f.writelines(json.dumps({"text": "skipped"}) + "\n" for _ in range(PAPER_SKIP))
    if not dataset.endswith(".jsonl"):
        raise SystemExit(f"--dataset {dataset}: give a .jsonl file with a 'text' field")
    os.symlink(os.path.abspath(dataset), os.path.join(folder, "1-corpus.jsonl"))
    return folder


def paper_teacher(teacher: str, folder: str) -> str:
    """The teacher folder as transformers 4.51.3 reads it: every file linked, and the tokenizer named by the class both
    versions know (transformers 5 writes "TokenizersBackend", which 4.51.3 does not have; the tokenizer.json is the
    same)."""
    os.makedirs(folder, exist_ok=True)
    for name in os.listdir(teacher):
        if name != "tokenizer_config.json":
            os.symlink(os.path.join(teacher, name), os.path.join(folder, name))
    with open(os.path.join(teacher, "tokenizer_config.json")) as f:
        cfg = json.load(f)
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    return folder


def summarize(steps: list[dict], warmup: int) -> dict:
    """steps: {step, step_time_s, tokens, sequence_tokens} per optimizer step -> the timed steps' rates."""
    timed = [s for s in steps if s["step"] > warmup]
    if not timed:
        raise SystemExit("no timed step: raise --steps")
    t = sum(s["step_time_s"] for s in timed)
    tok, seq = sum(s["tokens"] for s in timed), sum(s["sequence_tokens"] for s in timed)
    return {"useful_tokens_per_s": tok / t, "sequence_tokens_per_s": seq / t, "step_time_s": t / len(timed),
            "useful_fraction": tok / seq, "timed_steps": len(timed)}


def paper_steps(record: dict, accumulation: int) -> list[dict]:
    """The harness's record -> per optimizer step: time, real and sequence tokens (its micro-batches in order)."""
    mbs = record["micro_batches"]
    return [{"step": s["step"], "step_time_s": s["step_time_s"],
             "tokens": sum(m["real_tokens"] for m in mbs[i * accumulation:(i + 1) * accumulation]),
             "sequence_tokens": sum(m["sequence_tokens"] for m in mbs[i * accumulation:(i + 1) * accumulation])}
            for i, s in enumerate(record["steps"])]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default="embedded:smollm2-135m")
    p.add_argument("--dataset", default=os.path.join(ROOT, "..", "shared", "data", "corpus", "brown_train.jsonl"))
    p.add_argument("--max_length", type=int, default=256)
    p.add_argument("--per_device_train_batch_size", type=int, default=2)
    p.add_argument("--gradient_accumulation_steps", type=int, default=2)
    p.add_argument("--steps", type=int, default=6, help="timed optimizer steps per run")
    p.add_argument("--warmup", type=int, default=1, help="untimed optimizer steps per run")
    p.add_argument("--runs", default=",".join(RUNS), help="comma-separated, of: " + ", ".join(RUNS))
    p.add_argument("--paper_home", default=os.environ.get("PAPER_HOME", "/work/venvs/paper"),
                   help="bench/paper_reference/setup.sh's PAPER_HOME (venv/ and src/)")
    p.add_argument("--run_timeout", type=float, default=None, help="seconds allowed to each run")
    p.add_argument("--output", default=None, help="write the results as JSON here")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder")
    a = p.parse_args(argv)
    runs = [r.strip() for r in a.runs.split(",") if r.strip()]
    if not runs or set(runs) - set(RUNS):
        raise SystemExit(f"--runs: choose from {RUNS}")
    if a.steps < 1 or a.warmup < 0:
        raise SystemExit(f"--steps must be >= 1 and --warmup >= 0, got {a.steps} and {a.warmup}")
    python, src = os.path.join(a.paper_home, "venv", "bin", "python"), os.path.join(a.paper_home, "src")
    if "paper_code" in runs and not os.path.isfile(os.path.join(src, "train", "train.py")):
        raise SystemExit(f"{src}: no paper code; run bench/paper_reference/setup.sh first (or leave out paper_code)")
    if not os.path.isfile(a.dataset):
        raise SystemExit(f"--dataset {a.dataset}: no such file")

    from boomerang.models import resolve_model_path  # converts an embedded teacher to a local folder once

    teacher = resolve_model_path(a.teacher)
    work = tempfile.mkdtemp(prefix="bench-paper-speed-")
    corpus = paper_corpus(a.dataset, os.path.join(work, "paper_corpus"))
    shape = {"max_length": a.max_length, "per_device_train_batch_size": a.per_device_train_batch_size,
             "gradient_accumulation_steps": a.gradient_accumulation_steps, "max_steps": a.warmup + a.steps, "seed": 0}
    shape_flags = [x for k, v in shape.items() for x in (f"--{k}", str(v))]
    ours = [sys.executable, "-m", "train.train", "--teacher_model_name_or_path", teacher, *shape_flags,
            "--logging_steps", "1", "--save_steps", "0", "--eval_steps", "0"]
    commands = {
        "paper_code": [python, os.path.join(ROOT, "bench", "paper_reference", "harness.py"), "--speed",
                       "--threads", "0", "--teacher", paper_teacher(teacher, os.path.join(work, "paper_teacher")),
                       "--corpus", corpus,
                       "--out", os.path.join(work, "paper_code.json"), "--save_directory",
                       os.path.join(work, "paper_code"), *shape_flags, "--eval_strategy", "no", "--logging_steps", "1",
                       "--report_to", "none", "--dataloader_pin_memory", "false",
                       "--bf16", "true" if _cuda() else "false"],
        "ours_paper": [*ours, "--dataset", corpus, "--recipe", "paper", "--save_directory",
                       os.path.join(work, "ours_paper")],
        "ours_improved": [*ours, "--dataset", a.dataset, "--recipe", "improved", "--save_directory",
                          os.path.join(work, "ours_improved")],
    }
    results = {}
    for name in runs:
        env = {"PAPER_SRC": src, "HF_DATASETS_OFFLINE": "1"} if name == "paper_code" else {}
        print(f"[{name}] {' '.join(commands[name])}", file=sys.stderr, flush=True)
        res = run_part(name, commands[name], a.run_timeout, os.path.join(work, "logs"), env)
        if res["status"] != "ok":
            print(res["log_tail"], file=sys.stderr)
            results[name] = {"error": res["status"], "log_tail": res["log_tail"][-2000:]}
            continue
        if name == "paper_code":
            with open(os.path.join(work, "paper_code.json")) as f:
                steps = paper_steps(json.load(f), a.gradient_accumulation_steps)
        else:
            steps = [r for r in trainer_log(os.path.join(work, name)) if "loss" in r]
        results[name] = summarize(steps, a.warmup)
    base = results.get("paper_code", {}).get("useful_tokens_per_s")
    for r in results.values():
        if base and "useful_tokens_per_s" in r:
            r["ratio_to_paper_code"] = r["useful_tokens_per_s"] / base
    print_results(results, [("useful tok/s", "useful_tokens_per_s", ".1f"), ("seq tok/s", "sequence_tokens_per_s", ".1f"),
                            ("s/step", "step_time_s", ".2f"), ("useful", "useful_fraction", ".0%"),
                            ("x paper", "ratio_to_paper_code", ".2f")])
    if a.output:
        atomic_write_json(a.output, {"args": vars(a), "teacher_folder": teacher, "results": results})
    if not a.keep:
        shutil.rmtree(work, ignore_errors=True)
    return results


def _cuda() -> bool:
    import torch  # lazy: only asked once, for the paper's --bf16 (its default bf16 would autocast on CPU too)

    return torch.cuda.is_available()


if __name__ == "__main__":
    main()
