"""Record the paper's own training run, step by step, as the fixture tests/test_paper_reference.py compares to.

Makes the world (bench/paper_reference/world.py: a tiny random Llama and Qwen3 teacher, 160,000 short documents in
4 files) in this project's environment, then runs the paper's ``train/train.py`` unmodified in the paper's pinned
environment (bench/paper_reference/setup.sh) through harness.py, once per teacher, on CPU in float32, and writes
one JSON record (a few tens of KB) with the command that made it.

    bash bench/paper_reference/setup.sh /path/to/boomerang-distillation   # once: /work/venvs/paper
    python bench/paper_reference/record.py --output tests/fixtures/paper_reference.json
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path[:0] = [HERE, os.path.join(ROOT, "tests")]  # world (this folder), tiny_models (tests/)
import world  # noqa: E402

# The run, as the paper's flags (TrainingArguments of its train/training_args.py). CPU, float32 (--bf16 false: the
# paper's default bf16 would autocast on CPU too); its teacher is cast to bfloat16 by its own code whatever the flag.
RUN = {"max_length": 16, "per_device_train_batch_size": 2, "gradient_accumulation_steps": 2, "max_steps": 4,
       "seed": 0}
PAPER_FLAGS = [*(x for k, v in RUN.items() for x in (f"--{k}", str(v))), "--bf16", "false", "--eval_strategy", "no",
               "--logging_steps", "1", "--report_to", "none", "--dataloader_pin_memory", "false"]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default=os.path.join(ROOT, "tests", "fixtures", "paper_reference.json"))
    p.add_argument("--paper_home", default=os.environ.get("PAPER_HOME", "/work/venvs/paper"),
                   help="setup.sh's PAPER_HOME: venv/ and src/ (the paper's code at the pinned commit)")
    p.add_argument("--work", default=None, help="where the world is made (default: a temporary folder)")
    a = p.parse_args(argv)
    python, src = os.path.join(a.paper_home, "venv", "bin", "python"), os.path.join(a.paper_home, "src")
    for path, what in ((python, "the paper's venv"), (os.path.join(src, "train", "train.py"), "the paper's code")):
        if not os.path.exists(path):
            sys.exit(f"{path} not found ({what}): run bench/paper_reference/setup.sh first")
    with tempfile.TemporaryDirectory() as tmp:
        work = a.work or tmp
        paths = world.make_world(work)
        record = {"command": shlex.join(["python", "bench/paper_reference/record.py", *(argv or sys.argv[1:])]),
                  "run": RUN, "world": {"num_documents": world.NUM_DOCUMENTS, "num_files": world.NUM_FILES,
                                        "num_layers": world.NUM_LAYERS}, "families": {}}
        for family in world.FAMILIES:
            out = os.path.join(work, f"{family}.json")
            cmd = [python, os.path.join(HERE, "harness.py"), "--teacher", paths[family], "--corpus", paths["corpus"],
                   "--out", out, "--save_directory", os.path.join(work, f"{family}-run"), *PAPER_FLAGS]
            env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
            subprocess.run(cmd, check=True, cwd=work, env=dict(env, PAPER_SRC=src, HF_HUB_OFFLINE="1",
                                                               HF_DATASETS_OFFLINE="1", CUDA_VISIBLE_DEVICES=""))
            with open(out) as f:
                record["families"][family] = json.load(f)
            record["layer_mappings"] = record["families"][family].pop("layer_mappings")  # the same for every family
    os.makedirs(os.path.dirname(os.path.abspath(a.output)), exist_ok=True)
    with open(a.output + ".tmp", "w") as f:
        json.dump(record, f, separators=(",", ":"))
    os.replace(a.output + ".tmp", a.output)
    print(f"wrote {a.output} ({os.path.getsize(a.output) // 1024} KiB)")


if __name__ == "__main__":
    main()
