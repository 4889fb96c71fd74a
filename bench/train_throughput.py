"""Training throughput and peak memory of the distillation trainer, in four modes, in one run.

    python bench/train_throughput.py --config configs/smollm2-135m-cpu.yaml --steps 3 --warmup 1
    python bench/train_throughput.py --teacher random:tiny --max_length 128 --batch 4 --steps 5
    python bench/train_throughput.py --teacher random:qwen3-4b --max_length 2048 --batch 2 --steps 10   # GPU

Modes (each a fresh ``python -m train.train`` process, so peak memory is per mode; the first four by default):
  packed+chunked   documents packed into full sequences, CE/KL in chunks of --kl_chunk_size positions
  packed+dense     packed, CE/KL over all positions at once
  padded+chunked   one document per sequence, padded (--no_packing)
  padded+dense     padded sequences and dense KL
  packed+dense_mask      packed+chunked with documents kept apart by the dense 4D mask (the CPU fallback) even
                         on GPU, where packed+chunked lets transformers build the masks from position ids
  packed+flex_attention  packed+chunked under --attn_implementation flex_attention (a block mask; GPU)
  paper            the paper's recipe (--recipe paper: padded documents, its loss and data order; no skipped
                   documents here, so a small corpus suffices)

Reported per mode: tokens/s counting real (non-padding) tokens, sequence tokens/s (padding included),
peak memory (GPU: max allocated; CPU: peak RSS of the process), MFU on GPU, mean loss. Steps after
--warmup are timed (time of the optimizer steps as the trainer logs them, data loading included).

``--teacher random:<shape>`` builds a teacher with random weights (shapes: tiny, smollm2-135m, qwen3-1.7b,
qwen3-4b, qwen3-8b) with a small word-level tokenizer: enough for throughput, no download. Each mode also
reports the packed-attention path the trainer chose (train.data.packed_attention); ``--mode_timeout`` bounds
each mode's process.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import peak_memory, print_results, run_part, synthetic_corpus, trainer_log  # noqa: E402
from boomerang.io import atomic_write_json  # noqa: E402

MODES = {  # name: (train.train flags, environment)
    "packed+chunked": ([], {}),
    "packed+dense": (["--kl_chunk_size", "0"], {}),
    "padded+chunked": (["--no_packing"], {}),
    "padded+dense": (["--no_packing", "--kl_chunk_size", "0"], {}),
    "packed+dense_mask": ([], {"BOOMERANG_PACKED_ATTENTION": "dense_mask"}),
    "packed+flex_attention": (["--attn_implementation", "flex_attention"], {}),
    "paper": (["--recipe", "paper", "--paper_skip_documents", "0", "--paper_shuffle_buffer", "1000"], {}),
}
DEFAULT_MODES = ("packed+chunked", "packed+dense", "padded+chunked", "padded+dense")

SHAPES = {  # Qwen3 shapes (random weights); tiny for smoke tests
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=8, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, vocab_size=512),
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, head_dim=64, vocab_size=49152),
    "qwen3-1.7b": dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
                       num_key_value_heads=8, head_dim=128, vocab_size=151936, tie_word_embeddings=True),
    "qwen3-4b": dict(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
                     num_key_value_heads=8, head_dim=128, vocab_size=151936),
    "qwen3-8b": dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
                     num_key_value_heads=8, head_dim=128, vocab_size=151936),
}


def random_teacher(shape: str, folder: str) -> str:
    import torch  # lazy: the parent (it times each mode in a child) stays free of torch
    import transformers

    from tests.tiny_models import save_tiny_tokenizer

    if shape not in SHAPES:
        raise SystemExit(f"unknown random shape {shape!r}; choose from {sorted(SHAPES)}")
    cfg = transformers.Qwen3Config(**{"tie_word_embeddings": False, **SHAPES[shape]}, max_position_embeddings=32768,
                                   bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):  # random init of billions: faster on a GPU
        model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16 if shape.startswith("qwen3")
                                                              else torch.float32)
    model.save_pretrained(folder)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the modes run in other processes
    save_tiny_tokenizer(folder)
    return folder


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help="a training preset (its model, data and loss settings)")
    p.add_argument("--teacher", default=None, help="model reference, or random:<shape> (overrides the config's)")
    p.add_argument("--dataset", default=None, help="data (default: the config's, else a synthetic corpus)")
    p.add_argument("--max_length", type=int, default=None)
    p.add_argument("--batch", type=int, default=None, help="sequences per step (one micro-batch)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per mode")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per mode")
    p.add_argument("--kl_chunk_size", type=int, default=None)
    p.add_argument("--modes", default=",".join(DEFAULT_MODES), help="comma-separated, of: " + ", ".join(MODES))
    p.add_argument("--mode_timeout", type=float, default=None, help="seconds allowed to each mode's process")
    p.add_argument("--extra", default="", help="more train.train flags, one string")
    p.add_argument("--output", default=None, help="write the results as JSON here")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (runs, random teacher)")
    args = p.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise SystemExit(f"--modes: unknown {unknown or 'none given'}; choose from {list(MODES)}")
    if args.steps < 1 or args.warmup < 0:
        raise SystemExit(f"--steps must be >= 1 and --warmup >= 0, got {args.steps} and {args.warmup}")

    work = tempfile.mkdtemp(prefix="bench-train-")
    teacher = args.teacher
    if teacher and teacher.startswith("random:"):
        teacher = random_teacher(teacher.split(":", 1)[1], os.path.join(work, "teacher"))
    if not (teacher or args.config):
        raise SystemExit("give --config or --teacher")
    # a spread of document lengths, like real text
    dataset = args.dataset or (None if args.config else synthetic_corpus(
        os.path.join(work, "corpus.jsonl"), 2000, lambda r: int(r.lognormvariate(5.0, 1.0)) + 5, random.Random(0)))
    given = {"--config": args.config or None, "--teacher_model_name_or_path": teacher or None, "--dataset": dataset,
             "--max_length": args.max_length or None, "--kl_chunk_size": args.kl_chunk_size}
    flags = [x for flag, v in given.items() if v is not None for x in (flag, str(v))]
    if args.batch:
        flags += ["--per_device_train_batch_size", str(args.batch), "--gradient_accumulation_steps", "1",
                  "--global_batch_size", str(args.batch)]
    flags += ["--max_steps", str(args.warmup + args.steps), "--logging_steps", "1", "--save_steps", "0",
              "--eval_dataset", "", "--eval_steps", "0", "--warmup_ratio", "0"] + args.extra.split()
    results = {}
    for mode in modes:
        mode_flags, mode_env = MODES[mode]
        out = os.path.join(work, mode.replace("+", "_"))
        cmd = [sys.executable, "-m", "train.train", *flags, *mode_flags, "--save_directory", out]
        print(f"[{mode}] {' '.join(cmd[2:])}", file=sys.stderr, flush=True)
        res = run_part(mode.replace("+", "_"), cmd, args.mode_timeout, os.path.join(work, "logs"), mode_env)
        if res["status"] != "ok":
            print(res["log_tail"], file=sys.stderr)
            error = f"timeout after {args.mode_timeout:g} s" if res["status"] == "timeout" else f"exit {res['exit_code']}"
            results[mode] = {"error": error, "stderr_tail": res["log_tail"][-2000:]}
            continue
        recs = [r for r in trainer_log(out) if "loss" in r]
        timed = [r for r in recs if r["step"] > args.warmup]
        t = sum(r["step_time_s"] for r in timed)
        tok, seq = (sum(r[k] for r in timed) for k in ("tokens", "sequence_tokens"))
        row = {"tokens_per_s": tok / t, "sequence_tokens_per_s": seq / t, "step_time_s": t / len(timed),
               "real_token_fraction": tok / seq, "loss": sum(r["loss"] for r in timed) / len(timed),
               **peak_memory(recs[-1])}
        if "mfu" in recs[-1]:
            row["mfu"] = sum(r.get("mfu", 0.0) for r in timed) / len(timed)
        with open(res["log"], errors="replace") as f:
            chosen = re.findall(r"packed attention: (\w+) \(", f.read())
        row["packed_attention"] = chosen[-1] if chosen else None  # None: the paper's recipe (its own masks)
        results[mode] = row
        print(f"[{mode}] {json.dumps(row)}", file=sys.stderr, flush=True)
    print_results(results, [("tok/s(real)", "tokens_per_s", ".1f"), ("tok/s(seq)", "sequence_tokens_per_s", ".1f"),
                            ("s/step", "step_time_s", ".2f"), ("real", "real_token_fraction", ".0%"),
                            ("peak GB", "peak_memory_gb", ".2f"), ("MFU", "mfu", ".1%")], label="mode")
    if args.output:
        atomic_write_json(args.output, {"args": vars(args), "results": results})
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return results


if __name__ == "__main__":
    main()
