"""Run the paper's own ``train/train.py`` (unmodified, from $PAPER_SRC) and record every step of it.

Runs in the paper's pinned environment (bench/paper_reference/setup.sh), called by record.py; never imports this
repository (its packages ``train`` and ``patching`` share the paper's names). The paper's files are not changed:
the recording is a subclass of its trainer put in place of the original name before its ``main()`` runs, and a
Hugging Face ``TrainerCallback``:

  * per micro-batch (``compute_loss``): the document ids of its rows (read back from the token ids,
    world.doc_ids_of) and the loss it returns;
  * per optimizer step (the callback): the Trainer's logged loss, grad_norm and learning rate, and a checksum and a
    few values of every student tensor after the step (and before the first one);
  * the paper's ``get_layer_mappings`` (cosine pairs and layers cut) on every small recipe;
  * the whole document order of ``load_dataset(corpus, streaming=True).skip(50000).shuffle(100000, seed)`` under
    the pinned datasets (a hash, its length and its head), to check a reproduction of the order beyond the few
    documents a short run consumes.

    python harness.py --teacher DIR --corpus DIR --out FILE.json [paper train.py flags...]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import world  # noqa: E402  (standard library only at import)


def order_record(corpus: str, skip: int, buffer_size: int, seed: int) -> dict:
    """The paper's document order (its own datasets calls) over the whole corpus."""
    from datasets import load_dataset

    ids = [row["id"] for row in load_dataset(corpus, split="train", streaming=True).skip(skip).shuffle(
        buffer_size=buffer_size, seed=seed)]
    return {"sha256": hashlib.sha256(json.dumps(ids).encode()).hexdigest(), "length": len(ids), "head": ids[:64],
            "tail": ids[-16:]}


def layer_mappings(get_layer_mappings) -> dict:
    """The paper's ``get_layer_mappings`` on every small recipe: "L,f,n,l" -> [aligned (student, teacher) pairs in
    the dict's order, layers cut]."""
    out = {}
    for L in range(2, 13):
        for f in range(1, 4):
            for n in range(1, 5):
                for l in range(0, 4):
                    if f + l <= L:
                        aligned, cut = get_layer_mappings(f, l, n, L)
                        out[f"{L},{f},{n},{l}"] = [[[s, t] for s, t in aligned.items()], cut]
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--teacher", required=True)
    p.add_argument("--corpus", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--save_directory", required=True)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    p.add_argument("--speed", action="store_true",
                   help="time the steps only (bench/paper_speed.py): per step the wall time from the end of the "
                        "step before (data included) and the real tokens; no tensors, ids, order or maps")
    ours, paper_flags = p.parse_known_args()

    src = os.environ["PAPER_SRC"]
    sys.path.insert(0, src)
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, TrainerCallback

    import train.train as paper  # the paper's module, as its files are

    if ours.threads:
        torch.set_num_threads(ours.threads)
    rec = {"micro_batches": [], "steps": [], "logs": []}
    if not ours.speed:
        teacher = AutoModelForCausalLM.from_pretrained(ours.teacher, torch_dtype=torch.float32)
        rec["teacher"] = world.tensor_summary(teacher.named_parameters())
        del teacher
    clock = {"last": None}

    class Recorder(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kw):
            clock["last"] = time.perf_counter()
            if not ours.speed:
                rec["init"] = world.tensor_summary(model.named_parameters())

        def on_step_end(self, args, state, control, model=None, **kw):
            now = time.perf_counter()
            step = {"step": state.global_step, "step_time_s": now - clock["last"]}
            if not ours.speed:
                step["tensors"] = world.tensor_summary(model.named_parameters())
            rec["steps"].append(step)
            clock["last"] = time.perf_counter()  # the recording itself is not timed

        def on_log(self, args, state, control, logs=None, **kw):
            rec["logs"].append({"step": state.global_step, **{k: v for k, v in (logs or {}).items()}})

    class RecordingTrainer(paper.BoomerangDistillationTrainer):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.add_callback(Recorder())
            rec["bos_token_id"] = self.processing_class.bos_token_id
            rec["optimizer_groups"] = None  # filled once the optimizer exists (create_optimizer)

        def create_optimizer(self):
            opt = super().create_optimizer()
            names = {id(p): n for n, p in self.model.named_parameters()}
            rec["optimizer_groups"] = [{"weight_decay": g["weight_decay"],
                                        "params": sorted(names[id(p)] for p in g["params"])}
                                       for g in opt.param_groups]
            return opt

        def compute_loss(self, model, inputs, return_outputs=False, **kw):
            out = super().compute_loss(model, inputs, return_outputs=return_outputs, **kw)
            loss = out[0] if return_outputs else out
            mb = {"real_tokens": int(inputs["attention_mask"].sum()), "sequence_tokens": inputs["input_ids"].numel(),
                  "loss": float(loss.detach())}
            if not ours.speed:
                mb["doc_ids"] = world.doc_ids_of(inputs["input_ids"].cpu(), rec["bos_token_id"])
            rec["micro_batches"].append(mb)
            return out

    paper.BoomerangDistillationTrainer = RecordingTrainer
    sys.argv = ["train.py", "--teacher_model_name_or_path", ours.teacher, "--dataset", ours.corpus,
                "--save_directory", ours.save_directory, *paper_flags]
    paper.main()

    import accelerate
    import datasets

    args = paper.HfArgumentParser((paper.ModelArguments, paper.DataArguments, paper.TrainingArguments)) \
        .parse_args_into_dataclasses(sys.argv[1:])[2]
    if not ours.speed:
        rec["order"] = order_record(ours.corpus, 50000, 100_000, args.seed)
        rec["layer_mappings"] = layer_mappings(paper.get_layer_mappings)
    rec["versions"] = {"torch": torch.__version__, "transformers": transformers.__version__,
                       "datasets": datasets.__version__, "accelerate": accelerate.__version__,
                       "paper_commit": open(os.path.join(src, "PAPER_COMMIT")).read().strip()}
    rec["paper_flags"] = sys.argv[1:]
    with open(ours.out + ".tmp", "w") as f:
        json.dump(rec, f)
    os.replace(ours.out + ".tmp", ours.out)


if __name__ == "__main__":
    main()
