"""Boomerang distillation: train a student made of a subset of the teacher's layers.

One readable training loop. Single process (GPU or CPU):

    python -m train.train --config configs/smollm2-135m-cpu.yaml \\
        --dataset ../shared/data/corpus/brown_train.jsonl --eval_dataset ../shared/data/corpus/brown_heldout.jsonl \\
        --save_directory runs/smollm2-cpu

Several processes (FSDP2 shards student and teacher; one node or many, as torchrun allows):

    torchrun --nproc-per-node=8 --module train.train --config configs/qwen3-4b.yaml --save_directory runs/qwen3

Loss = CE + kl_loss_weight * T^2 * KL(teacher || student) + cosine_loss_weight * mean over aligned
pairs of (1 - cos); see train/losses.py. The student starts as a copy of the teacher layers chosen by
(first_layers_to_keep, alternate_every_n_layers, last_layers_to_keep) — boomerang/layer_map.py.

Output in --save_directory: the final student (save_pretrained + tokenizer + student_config.json,
ready for patching.patch.build_intermediate_model), log.jsonl, checkpoints/ (for --resume).
Boolean flags take --flag, --flag true or --flag false.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import importlib.util
import json
import logging
import math
import os
import resource
import shutil
import sys
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm
from transformers import get_scheduler

from boomerang.assemble import as_source
from boomerang.cli import fail, parse_with_config, setup_logging
from boomerang.families import adapter_for, count_parameters, dtype_from_name
from boomerang.io import atomic_write_text
from boomerang.layer_map import LayerMapError
from boomerang.models import (ModelNotFoundError, empty_model, load_config, load_model, load_shards, load_tokenizer,
                              resolve_model_path)
from train import checkpoint as ckpt
from train.batch import BatchError, plan_from_args
from train.data import (PAPER_SHUFFLE_BUFFER, PAPER_SKIP, DataError, PaperStream, Prefetcher, SequenceStream,
                        SlottedStream, check_source, model_inputs, slot_cursors)
from train.init_student import init_student, plan_student, provenance_of, save_student, teacher_key
from train.losses import LossConfig, LossTerms, distillation_loss, next_token_labels, paper_loss, valid_positions

log = logging.getLogger("boomerang.train")

# Dense bf16 peak FLOP/s for MFU; anything else: pass --peak_tflops.
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "H800": 989.0, "A100": 312.0, "A800": 312.0, "L40S": 362.0,
                    "B200": 2250.0, "GH200": 989.0}

# The flags by --help group: (name, default[, help[, type or list of choices]]); the type is the default's.
FLAGS = {
    "models": [
        ("teacher_model_name_or_path", None, "hub name, local folder, or embedded:smollm2-135m", str),
        ("save_directory", None, "output folder (student, log.jsonl, checkpoints/)", str),
        ("first_layers_to_keep", 1), ("alternate_every_n_layers", 2), ("last_layers_to_keep", 2),
        ("random_initialization", False, "student of the same shape, fresh weights"),
        ("teacher_dtype", "auto", "auto (bfloat16 with --bf16 on GPU, else float32; --recipe paper: bfloat16 always, as the paper casts it)"),
        ("attn_implementation", "sdpa", "sdpa or eager (a per-document 4D mask is used)"),
    ],
    "recipe": [
        ("recipe", "improved", "improved (default): packed documents, every loss term a mean over real tokens of the "
         "global batch, exact accumulation. paper: exactly the paper's code (padded documents, KL over every "
         "position, the sum of micro-batch means, warmup from 0, its data order); docs/training.md",
         ["improved", "paper"]),
        ("paper_skip_documents", PAPER_SKIP,
         "with --recipe paper: documents skipped before the shuffle buffer (the paper's 50000)"),
        ("paper_shuffle_buffer", PAPER_SHUFFLE_BUFFER, "with --recipe paper: the shuffle buffer (the paper's 100000)"),
    ],
    "data": [
        ("dataset", "EleutherAI/the_pile_deduplicated",
         "Hugging Face dataset name (streamed) or a local .txt/.jsonl/.parquet file or folder"),
        ("dataset_split", "train"),
        ("eval_dataset", None, "held-out data (same forms as --dataset); none: no eval", str),
        ("eval_split", "validation"), ("text_field", "text"), ("max_length", 2048, "tokens per sequence"),
        ("no_packing", False, "one document per sequence, truncated and padded (the paper's recipe)"),
        ("eval_sequences", 32, "held-out sequences per evaluation"),
        ("prefetch_batches", 4, "global batches (this process's rows) read, tokenized and packed ahead in a worker "
         "process while the step computes (0: inside the step); the data are the same either way, and log.jsonl's "
         "data_wait_s says how long each step waited for its batch"),
    ],
    "loss": [
        ("use_cross_entropy", True), ("use_kl_loss", True), ("kl_loss_weight", 0.1), ("T", 1.0, "KL temperature"),
        ("use_cosine_loss", True), ("cosine_loss_weight", 2.0, "split evenly over the aligned pairs"),
        ("kl_chunk_size", 1024, "positions per CE/KL chunk; 0 = dense"),
    ],
    "optimization": [
        ("max_steps", 500), ("per_device_train_batch_size", 2), ("gradient_accumulation_steps", 256),
        ("global_batch_size", None, "sequences per optimizer step; when set, gradient_accumulation_steps is derived "
         "from it and the number of processes (so 1 or N processes train on the same batches)", int),
        ("per_device_eval_batch_size", 8), ("learning_rate", 3e-4), ("adam_beta1", 0.9), ("adam_beta2", 0.95),
        ("adam_epsilon", 1e-8), ("weight_decay", 0.1),
        ("lr_scheduler_type", "cosine", "", ["cosine", "linear", "constant"]),
        ("warmup_ratio", 0.01), ("max_grad_norm", 1.0), ("seed", 0),
    ],
    "hardware": [
        ("device", "auto", "auto, cpu or cuda"),
        ("bf16", True, "bf16 mixed precision (GPU only; CPU runs in float32)"),
        ("fsdp", "auto", "FSDP2 sharding of student and teacher; auto = on when run by torchrun with >1 process",
         ["auto", "on", "off"]),
        ("fsdp_config", None, "the paper's Hugging Face Trainer FSDP file; not read here (FSDP2 wraps every decoder "
         "layer, found through the family adapter): giving it is an error that says which flags to use", str),
        ("process_group_timeout_minutes", 30.0, "how long a process waits in a collective before the job is stopped "
         "(NCCL's default is 10). 30 covers the longest wait: every process waits while the whole student is gathered "
         "to rank 0 at the end, and at each checkpoint for the slowest process's DCP files; no process waits on "
         "rank 0's writing of the student or pruning of checkpoints (docs/training.md)"),
        ("gradient_checkpointing", False, "activation checkpointing in the student"),
        ("peak_tflops", None, "accelerator peak for MFU (default: by GPU name)", float),
        ("num_threads", None, "torch CPU threads", int),
    ],
    "output": [
        ("logging_steps", 5), ("eval_steps", 10), ("save_steps", 100, "checkpoint every N steps (0: only at the end)"),
        ("save_total_limit", 1), ("resume", False, "continue from the newest checkpoint in --save_directory"),
        ("overwrite", False, "delete an existing --save_directory first"),
        ("report_to", "none", "", ["none", "tensorboard", "wandb"]), ("run_name", None, "", str),
        ("stop_at_step", None, "stop after this step as if interrupted (the schedule still follows --max_steps); "
         "for tests", int),
    ],
}


def str2bool(v) -> bool:
    if str(v).lower() not in ("1", "true", "yes", "y", "on", "0", "false", "no", "n", "off"):
        raise argparse.ArgumentTypeError(f"expected true/false, got {v!r}")
    return str(v).lower() in ("1", "true", "yes", "y", "on")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    for group, flags in FLAGS.items():
        g = p.add_argument_group(group)
        for name, default, help_, kind in ((*f, "", None)[:4] for f in flags):
            kind = kind or type(default)
            kw = (dict(choices=kind) if isinstance(kind, list) else
                  dict(type=str2bool, nargs="?", const=True) if kind is bool else dict(type=kind))
            g.add_argument(f"--{name}", default=default, help=help_ or None, **kw)
    return p


# ----------------------------------------------------------------------------- distributed helpers
def dist_setup(args):
    """(rank, world, device, fsdp); a process group under torchrun with several processes, or for --fsdp on."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        fail("--device cuda: no CUDA device is available; use --device cpu")
    fsdp = args.fsdp == "on" or (args.fsdp == "auto" and world > 1)
    if world > 1 and not fsdp:
        fail("several processes need --fsdp on (or auto)")
    use_cuda = torch.cuda.is_available() if args.device == "auto" else args.device.startswith("cuda")
    rank, local = (int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))) if world > 1 else (0, 0)
    if use_cuda and world > 1:
        torch.cuda.set_device(local)
    if fsdp and not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")  # one process with --fsdp on: torchrun sets these
        os.environ.setdefault("MASTER_PORT", "29512")
        timeout = datetime.timedelta(minutes=args.process_group_timeout_minutes)
        # device_id: NCCL binds the communicator to this process's GPU at once (no guessing, no hang on a wrong one)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", rank=rank, world_size=world, timeout=timeout,
                                **({"device_id": torch.device("cuda", local)} if use_cuda else {}))
    return rank, world, torch.device(f"cuda:{local}" if use_cuda else "cpu"), fsdp


def all_sum(values: list[float], device) -> list[float]:
    if not (dist.is_available() and dist.is_initialized()):
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def shard(model, mp_policy, device_type: str, mesh=None):
    """FSDP2: each decoder layer is one unit, the rest (embeddings, norm, head) the root unit. A frozen model (the
    teacher: no parameter requires grad) is resharded after its forward in every unit, the root included: FSDP2
    otherwise keeps the root's parameters (embeddings and head, 0.8 GB of bf16 for a 151,936-token vocabulary)
    gathered from the forward until a backward that a frozen model never runs. The student keeps FSDP2's default
    (the root stays gathered for the backward that follows at once). ``mesh``: default, one over every process."""
    from torch.distributed.device_mesh import init_device_mesh  # FSDP only: one-process runs never load these
    from torch.distributed.fsdp import fully_shard  # lazy: FSDP only with several processes

    kw = {"mesh": mesh or init_device_mesh(device_type, (dist.get_world_size(),))}
    kw.update({"mp_policy": mp_policy} if mp_policy else {})
    if not any(p.requires_grad for p in model.parameters()):
        kw["reshard_after_forward"] = True  # given explicitly, FSDP2 applies it to the root too
    for module in [*adapter_for(model).get_layers(model), model]:
        fully_shard(module, **kw)
    return model


# ----------------------------------------------------------------------------- small pieces
def lr_scheduler(args, optimizer) -> torch.optim.lr_scheduler.LambdaLR:
    """``transformers.get_scheduler``'s schedules. The paper recipe: as Hugging Face's Trainer builds them (warmup
    step s at lr * s / warmup; ``constant`` without warmup). The improved recipe warms up one step ahead, at
    lr * (s + 1) / warmup (``constant`` too), then follows Hugging Face's multiplier, except ``linear``, whose
    (total - s) / (total - warmup) is not bit-identical to this recipe's 1 - (s - warmup) / (total - warmup)."""
    warmup, total, kind = math.ceil(args.warmup_ratio * args.max_steps), args.max_steps, args.lr_scheduler_type
    if args.recipe == "paper":
        return get_scheduler(kind, optimizer, num_warmup_steps=warmup, num_training_steps=total)
    if kind == "linear":
        def after_warmup(s):
            return 1.0 - min(1.0, (s - warmup) / max(1, total - warmup))
    else:  # a scheduler made only to lend its multiplier; the one returned sets the optimizer's lr again
        after_warmup = get_scheduler("constant_with_warmup" if kind == "constant" else kind, optimizer,
                                     num_warmup_steps=warmup, num_training_steps=total).lr_lambdas[0]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: (s + 1) / warmup if s < warmup else after_warmup(s))


def param_groups(model, weight_decay: float, recipe: str = "improved"):
    """AdamW's groups. improved: weight decay on matrices only (not on norms and biases). paper:
    ``paper_param_groups``."""
    if recipe == "paper":
        return paper_param_groups(model, weight_decay)
    ps = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in ps if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in ps if p.dim() < 2], "weight_decay": 0.0}]


# --- recipe: paper, weight decay (issue 26) ---
PAPER_NO_DECAY_NAMES = ("bias", "layernorm", "rmsnorm")  # transformers 4.51.3 Trainer.get_decay_parameter_names


def paper_param_groups(model, weight_decay: float):
    """The groups transformers 4.51.3's Trainer gives AdamW (``create_optimizer``): no decay for a parameter inside
    an ``nn.LayerNorm`` or a norm class that version registers in ``ALL_LAYERNORM_LAYERS`` (the family adapter's
    ``paper_decay_exempt_norms``: Llama's ``LlamaRMSNorm``), or whose name holds "bias", "layernorm" or "rmsnorm";
    decay for every other parameter, 1-D ones included (so Qwen3's final ``model.norm.weight`` and its
    ``q_norm``/``k_norm`` are decayed, Llama's norms are not). Decayed group first, as the Trainer orders them."""
    exempt_classes = set(adapter_for(model).paper_decay_exempt_norms)
    exempt_modules = {name for name, m in model.named_modules()
                      if isinstance(m, torch.nn.LayerNorm) or type(m).__name__ in exempt_classes}

    def decayed(name: str) -> bool:
        parents = name.split(".")[:-1]
        inside = any(".".join(parents[:i]) in exempt_modules for i in range(1, len(parents) + 1))
        return not inside and not any(k in name.lower() for k in PAPER_NO_DECAY_NAMES)

    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [{"params": [p for n, p in named if decayed(n)], "weight_decay": weight_decay},
            {"params": [p for n, p in named if not decayed(n)], "weight_decay": 0.0}]
# --- end recipe: paper, weight decay ---


def flops_per_token(student, teacher, seq: int) -> float:
    """~6 N_student + 2 N_teacher (N: non-embedding parameters plus the LM-head matmul) plus attention."""
    def n_matmul(model):
        return count_parameters(model)["non_embedding"] + model.config.vocab_size * model.config.hidden_size

    def attn(cfg, passes):  # QK^T and AV: 2 matmuls x 2 FLOPs x layers x hidden x (causal) seq/2
        return passes * 2 * 2 * adapter_for(cfg).num_layers(cfg) * cfg.hidden_size * seq / 2

    return 6 * n_matmul(student) + attn(student.config, 3) + 2 * n_matmul(teacher) + attn(teacher.config, 1)


class Reporter:
    """log.jsonl (always) plus TensorBoard or W&B when asked for; rank 0 only."""

    def __init__(self, args, active: bool, resume_step: int | None):
        self.active, self.tb, self.wandb = active, None, None
        self.path = os.path.join(args.save_directory, "log.jsonl")
        if not active:
            return
        os.makedirs(args.save_directory, exist_ok=True)
        if resume_step is not None and os.path.isfile(self.path):
            with open(self.path) as f:  # drop records from after the checkpoint: they are produced again
                keep = [ln for ln in f if ln.strip() and json.loads(ln).get("step", 0) <= resume_step]
            atomic_write_text(self.path, "".join(keep))
        elif os.path.isfile(self.path):
            os.unlink(self.path)
        if args.report_to == "tensorboard":  # optional packages, imported only when asked for
            from torch.utils.tensorboard import SummaryWriter  # optional: only with --report_to tensorboard

            self.tb = SummaryWriter(os.path.join(args.save_directory, "tensorboard"))
        elif args.report_to == "wandb":
            import wandb  # optional: only with --report_to wandb

            self.wandb = wandb.init(project="boomerang", name=args.run_name, config=vars(args), resume="allow")

    def write(self, record: dict) -> None:
        if not self.active:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        step = record.get("step", 0)
        scalars = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, step)
            self.tb.flush()
        if self.wandb is not None:
            self.wandb.log(scalars, step=step)

    def close(self):
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def build_models(args, teacher_path: str, layer_map, teacher_dtype, device, fsdp: bool, mp_policy=None,
                 per_process_loading: bool = True):
    """The frozen teacher and the student to train, on ``device``; under FSDP both sharded.

    One process loads both whole (the paper's code cuts the student from the float32 teacher, then casts the
    teacher; the improved recipe cuts it from the teacher in --teacher_dtype). Under FSDP both are built on the meta
    device and sharded first; then each process reads from the teacher's safetensors files only the rows of its own
    shards (``boomerang.models.load_shards``, the same values as the whole load), so no process ever holds a whole
    model. A random-initialization student is built whole on every process (its values come from the family's
    initializer, the same on each) and then sharded. ``per_process_loading=False``, or a teacher without
    safetensors, loads both whole on every process before sharding (bench/load_memory.py compares the two).
    """
    source = None
    if fsdp and per_process_loading:
        try:
            source = as_source(teacher_path)
        except FileNotFoundError as e:
            log.warning("%s: every process loads the whole teacher before sharding", e)
    cut_from = torch.float32 if args.recipe == "paper" else teacher_dtype
    teacher = load_model(teacher_path, dtype=cut_from) if source is None else empty_model(source.config, cut_from)
    student = init_student(teacher, layer_map, args.random_initialization, torch.float32, args.seed)
    if source is None:
        student = copy.deepcopy(student)  # its tensors are the teacher's
    on_meta = prepare_pair(args, teacher, student, teacher_dtype, device, fsdp, mp_policy)
    if on_meta[0]:
        load_shards(teacher, source, device)
    if on_meta[1]:
        prefix = adapter_for(student).layer_prefix()
        load_shards(student, source, device, name_of=lambda k: teacher_key(k, layer_map, prefix), via_dtype=cut_from)
    return teacher, student


def prepare_pair(args, teacher, student, teacher_dtype, device, fsdp: bool, mp_policy=None, mesh=None) -> list[bool]:
    """What the run does to a built teacher and student before training: the paper's teacher cast, the teacher
    frozen, attention implementation, the student in training mode (activation checkpointing when asked), both on
    ``device`` or, under FSDP, sharded (``shard``; ``mesh`` default: every process). Returns which of the two are
    still on the meta device (``build_models`` loads their shards; ``train.plan`` gives them fake tensors)."""
    if args.recipe == "paper":
        teacher.to(teacher_dtype)  # its floating buffers too (RoPE's inv_freq), on either path
    teacher.requires_grad_(False)
    for model in (teacher, student):
        model.set_attn_implementation(args.attn_implementation)
    student.config.use_cache = False
    student.train()
    if args.gradient_checkpointing:
        student.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    on_meta = [any(p.is_meta for p in m.parameters()) for m in (teacher, student)]
    for model, meta in zip((teacher, student), on_meta):
        if not meta:
            model.to(device)
        if fsdp:
            shard(model, mp_policy, device.type, mesh)
    return on_meta


def make_stream(args, tokenizer, source: str, split: str, flag: str, training: bool, repeat: bool = True,
                start: dict | None = None, slots: int | None = None, own: list[int] | None = None):
    """The recipe's sequences: the paper's (skip, shuffle buffer, one padded document each; held-out data in file
    order) or the improved recipe's (packed, shuffled per epoch; held-out data in file order). ``start``: a
    checkpoint's ``data_resume``, where the stream goes on without tokenizing the documents before it.

    ``slots`` (the global batch) and ``own`` (this process's rows of it, ``process_indices``): the improved recipe's
    training data as a ``SlottedStream``, of which this process tokenizes only its rows; without them (the data check,
    held-out data), or from a checkpoint written before slots (one cursor), a single ``SequenceStream``."""
    if args.recipe == "paper":
        skip, buffer = (args.paper_skip_documents, args.paper_shuffle_buffer) if training else (0, 1)
        return PaperStream(source, tokenizer, args.max_length, split=split, text_field=args.text_field, seed=args.seed,
                           skip=skip, buffer_size=buffer, flag=flag, start=start)
    common = dict(packing=not args.no_packing, split=split, text_field=args.text_field, seed=args.seed,
                  shuffle=training, repeat=repeat, flag=flag, start=start)
    if slots and (start is None or "slots" in start):
        return SlottedStream(source, tokenizer, args.max_length, slots, own, **common)
    if slots:  # the run began on the single stream: it goes on in that order, exactly
        log.warning("the checkpoint records one data cursor (written before the slotted stream): this run goes on in "
                    "the single-stream order it began in, every process tokenizing the whole global batch; a new run "
                    "(--overwrite) tokenizes on each process only its own sequences")
    return SequenceStream(source, tokenizer, args.max_length, **common)


# ----------------------------------------------------------------------------- the run
WINDOW = {"time_s": 0.0, "tokens": 0, "sequence_tokens": 0}  # a logging window's step time and tokens


@dataclass
class Run:
    """Everything one training run holds; ``setup`` builds it, the functions below read and advance it."""

    args: argparse.Namespace
    rank: int
    world: int
    device: torch.device
    fsdp: bool
    accum: int  # micro-batches per process per optimizer step
    global_batch: int  # sequences per optimizer step, all processes
    compute_dtype: torch.dtype
    autocast: contextlib.AbstractContextManager
    loss_cfg: LossConfig
    layer_map: object
    tokenizer: object
    teacher: torch.nn.Module
    student: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    stream: object
    reporter: Reporter | None = None
    eval_batches: list[tuple[dict, bool]] | None = None  # (batch, counted): eval_share
    step: int = 0
    tokens_seen: int = 0  # real (non-padding) tokens trained on so far, logged with every record
    last_good: str | None = None  # the newest checkpoint
    history: list[dict] = field(default_factory=list)
    flops_per_token: float = 0.0
    peak_flops: float | None = None
    window: dict = field(default_factory=lambda: dict(WINDOW))  # per logging window; eval/checkpoint time excluded


def check_args(args):
    """Everything that can be wrong is checked before a model loads -> (loss config, teacher path, layer map,
    checkpoint to resume or None, the batch plan for this world size)."""
    if not args.teacher_model_name_or_path:
        fail("--teacher_model_name_or_path is required (a hub name, a local folder or embedded:smollm2-135m)")
    if not args.save_directory:
        fail("--save_directory is required")
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    if args.fsdp_config is not None:
        fail(f"--fsdp_config {args.fsdp_config}: this trainer does not read Hugging Face Trainer FSDP files. It shards "
             "with FSDP2 on its own (one unit per decoder layer, found through the family adapter) whenever torchrun "
             "starts more than one process; use --fsdp on|off|auto and --gradient_checkpointing instead, and drop "
             "--fsdp_config")
    try:
        check_source(args.dataset, "--dataset")
        check_source(args.eval_dataset, "--eval_dataset")
        loss_cfg = LossConfig(args.use_cross_entropy, args.use_kl_loss, args.kl_loss_weight, args.T,
                              args.use_cosine_loss, args.cosine_loss_weight, args.kl_chunk_size)
        teacher_path = resolve_model_path(args.teacher_model_name_or_path)
        layer_map = plan_student(load_config(teacher_path), args.first_layers_to_keep, args.alternate_every_n_layers,
                                 args.last_layers_to_keep)
    except (DataError, ModelNotFoundError, LayerMapError, ValueError) as e:
        fail(str(e))
    if args.max_steps < 0:
        fail(f"--max_steps must be >= 0, got {args.max_steps}")
    if args.prefetch_batches < 0:
        fail(f"--prefetch_batches must be >= 0 (0: the data are made inside the step), got {args.prefetch_batches}")
    if not args.process_group_timeout_minutes > 0:
        fail(f"--process_group_timeout_minutes must be > 0, got {args.process_group_timeout_minutes}")
    try:  # the processes torchrun starts (WORLD_SIZE), before any process group or model
        batch = plan_from_args(args, int(os.environ.get("WORLD_SIZE", "1")))
    except BatchError as e:
        fail(str(e))
    if args.report_to != "none" and importlib.util.find_spec(args.report_to) is None:
        fail(f"--report_to {args.report_to} needs the package {args.report_to}: pip install {args.report_to} "
             "(or --report_to none)")
    d, resume_from = args.save_directory, None  # what happens to --save_directory is decided here, at start
    if os.path.exists(d) and not (os.path.isdir(d) and not os.listdir(d)) and not args.overwrite:
        if not args.resume:
            fail(f"--save_directory {d} already exists. Pass --resume to continue its run, --overwrite to replace it, "
                 "or choose another folder")
        resume_from = ckpt.latest_checkpoint(d)
        if resume_from is None and os.path.isfile(os.path.join(d, "student_config.json")):
            fail(f"--save_directory {d} holds a finished student and no checkpoint: nothing to resume. "
                 "Use another folder, or --overwrite to train again")
        if resume_from is None:
            fail(f"--resume: --save_directory {d} holds no checkpoint (checkpoints/step-*); use --overwrite to start "
                 "again")
        data_resume = ckpt.read_state(resume_from).get("data_resume") or {}
        if args.recipe != "paper" and "slots" in data_resume:  # its slots are its global batch: this run's must match
            try:
                slot_cursors(data_resume, batch.global_batch)
            except DataError as e:
                fail(f"--resume {resume_from}: {e}")
    return loss_cfg, teacher_path, layer_map, resume_from, batch


def check_data(args, tokenizer) -> None:
    """The data must yield a sequence before any model loads (a hub dataset that cannot be reached, a field that does
    not exist, a file too short for one sequence fail here, in seconds)."""
    for src, split, flag in ((args.dataset, args.dataset_split, "--dataset"),
                             (args.eval_dataset, args.eval_split, "--eval_dataset")):
        if not src:
            continue
        try:
            make_stream(args, tokenizer, src, split, flag, training=flag == "--dataset", repeat=False).next()
        except DataError as e:
            fail(f"{flag} {src}: {e}" if src not in str(e) else str(e))
        except Exception as e:  # e.g. datasets cannot reach the hub
            fail(f"{flag} {src}: cannot read it ({type(e).__name__}: {e})")


def setup(args) -> Run:
    """Checks, processes, data, models, optimizer and schedule, a checkpoint to resume, the reporter."""
    loss_cfg, teacher_path, layer_map, resume_from, batch = check_args(args)
    rank, world, device, fsdp = dist_setup(args)
    accum, global_batch = batch.accumulation, batch.global_batch
    bf16 = args.bf16 and device.type == "cuda"
    compute_dtype = torch.bfloat16 if bf16 else torch.float32
    teacher_dtype = dtype_from_name(args.teacher_dtype) if args.teacher_dtype != "auto" else compute_dtype
    if args.recipe == "paper" and args.teacher_dtype == "auto":  # the paper's teacher_model.to(torch.bfloat16), CPU too
        teacher_dtype = torch.bfloat16

    torch.manual_seed(args.seed)
    if rank == 0:
        log.info("teacher %s: %d layers -> student %d layers, copied %s", args.teacher_model_name_or_path,
                 layer_map.num_teacher_layers, layer_map.num_student_layers, list(layer_map.copied_teacher_layers))
        if args.recipe == "paper" and set(cosine_pairs(args, layer_map)) != set(layer_map.cosine_pairs()):
            log.warning("recipe paper: the paper's cosine pairs %s on this layer map, not %s (outside the presets' "
                        "recipes the paper's code leaves student layers unpaired; docs/training.md)",
                        cosine_pairs(args, layer_map), layer_map.cosine_pairs())
        log.info("%d process(es) on %s, fsdp=%s, bf16=%s; global batch %d sequences x %d tokens "
                 "(%d per device x %d accumulation x %d)", world, device, fsdp, bf16, global_batch,
                 args.max_length, args.per_device_train_batch_size, accum, world)
    tokenizer = load_tokenizer(teacher_path)
    check_data(args, tokenizer)
    if args.overwrite and rank == 0 and os.path.exists(args.save_directory) and resume_from is None:
        shutil.rmtree(args.save_directory)
    if world > 1:
        dist.barrier()

    if fsdp and bf16:
        from torch.distributed.fsdp import MixedPrecisionPolicy  # FSDP only: not loaded by one-process runs
    mp_policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if fsdp and bf16 else None
    paper_fsdp_bf16 = args.recipe == "paper" and fsdp and bf16
    if paper_fsdp_bf16:  # --- recipe: paper, the precision of the paper's FSDP1 bf16 run (docs/training.md) ---
        mp_policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.bfloat16)
    teacher, student = build_models(args, teacher_path, layer_map, teacher_dtype, device, fsdp, mp_policy)
    if paper_fsdp_bf16:  # FSDP1's MixedPrecision(buffer_dtype=bfloat16): the student's floating buffers (inv_freq)
        for module in student.modules():
            for name, buf in module.named_buffers(recurse=False):
                if buf is not None and buf.is_floating_point():
                    module._buffers[name] = buf.to(torch.bfloat16)
    optimizer = torch.optim.AdamW(param_groups(student, args.weight_decay, args.recipe), lr=args.learning_rate,
                                  betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon,
                                  # paper: the Trainer's default optim "adamw_torch" is torch's AdamW, not fused
                                  **({"fused": True} if device.type == "cuda" and args.recipe != "paper" else {}))
    run = Run(args=args, rank=rank, world=world, device=device, fsdp=fsdp, accum=accum, global_batch=global_batch,
              compute_dtype=compute_dtype, loss_cfg=loss_cfg, layer_map=layer_map, tokenizer=tokenizer,
              autocast=torch.autocast("cuda", dtype=torch.bfloat16) if bf16 and (not fsdp or paper_fsdp_bf16)
              else contextlib.nullcontext(),  # paper: accelerate's autocast and the paper's own, under FSDP too
              teacher=teacher, student=student, optimizer=optimizer, scheduler=lr_scheduler(args, optimizer),
              stream=None,
              flops_per_token=flops_per_token(student, teacher, args.max_length), last_good=resume_from)
    if resume_from:
        try:
            state = ckpt.load_checkpoint(resume_from, student, optimizer, run.scheduler, fsdp)
        except ckpt.CheckpointError as e:
            fail(str(e))
        run.step, run.tokens_seen = state["step"], state.get("tokens_seen", 0)
    # where the data goes on, no document re-tokenized; a checkpoint from before data_resume: the single stream from
    # its beginning (make_stream), the consumed sequences tokenized again below to skip them
    start = state.get("data_resume", {"document": 0, "token": 0, "sequences": 0}) if resume_from else None
    run.stream = make_stream(args, tokenizer, args.dataset, args.dataset_split, "--dataset", training=True, start=start,
                             slots=global_batch, own=process_indices(args.recipe, args.per_device_train_batch_size,
                                                                     accum, world, rank))
    if resume_from:
        if "data_resume" not in state:
            log.info("%s records no document position: tokenizing the %d consumed sequences again to skip them",
                     resume_from, state["data_position"])
            run.stream.skip(state["data_position"])
        if rank == 0:
            log.info("resumed from %s (step %d, %d sequences consumed)", resume_from, run.step, run.stream.position)
    run.reporter = Reporter(args, rank == 0, run.step if resume_from else None)
    if args.eval_dataset:  # this process's share of the held-out sequences, in batches
        es = make_stream(args, tokenizer, args.eval_dataset, args.eval_split, "--eval_dataset", training=False,
                         repeat=False)
        try:
            seqs = es.take(args.eval_sequences)
        except DataError:
            fail(f"--eval_dataset {args.eval_dataset} holds fewer than --eval_sequences {args.eval_sequences} "
                 f"sequences of {args.max_length} tokens; lower --eval_sequences")
        run.eval_batches = eval_share(seqs, rank, world, args.per_device_eval_batch_size)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        run.peak_flops = (args.peak_tflops or next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), 0.0)) * 1e12
    # last: from here the next batches are made ahead in a worker process (run_distillation closes it in any case)
    run.stream = Prefetcher(run.stream, global_batch, process_indices(args.recipe, args.per_device_train_batch_size,
                                                                      accum, world, rank),
                            depth=args.prefetch_batches, takes=max(last_step(args) - run.step, 0))
    return run


def last_step(args) -> int:
    """The step this run stops after: --max_steps, or --stop_at_step when that is earlier."""
    return args.max_steps if args.stop_at_step is None else min(args.max_steps, args.stop_at_step)


def eval_share(seqs: dict, rank: int, world: int, batch_size: int) -> list[tuple[dict, bool]]:
    """This process's held-out batches as (batch, counted): sequences ``[rank::world]`` in batches of
    ``batch_size``, then padding batches (one sequence, its result dropped: counted False) up to the number of
    batches of the process with the most. Every process runs the same number of forwards, so FSDP's all-gathers
    pair up at any world size, batch size and sequence count (a process short of a batch, or with none, would
    leave the others waiting until the watchdog kills the job)."""
    n = len(seqs["input_ids"])
    most = math.ceil(math.ceil(n / world) / batch_size)
    mine = {k: v[rank::world] for k, v in seqs.items()}
    share = [({k: v[i:i + batch_size] for k, v in mine.items()}, True)
             for i in range(0, len(mine["input_ids"]), batch_size)]
    return share + [({k: v[:1] for k, v in seqs.items()}, False)] * (most - len(share))


def inputs_for(run: Run, batch: dict, model) -> dict:
    if run.args.recipe == "paper":  # Hugging Face's own masks and positions from the 2D attention mask
        return {k: batch[k].to(run.device) for k in ("input_ids", "attention_mask")}
    return model_inputs(batch, run.device, run.compute_dtype, model.config)


def cosine_pairs(args, layer_map) -> list[tuple[int, int]]:
    """The aligned (student, teacher) hidden-state pairs: the paper's own under recipe: paper (they differ from
    ``LayerMap.cosine_pairs`` outside the presets' recipes: docs/training.md), else ``LayerMap.cosine_pairs``."""
    if args.recipe == "paper":
        return layer_map.paper_cosine_pairs(args.first_layers_to_keep, args.alternate_every_n_layers,
                                            args.last_layers_to_keep)
    return layer_map.cosine_pairs()


def forward(run: Run, batch: dict) -> LossTerms:
    """Student and teacher forward on one micro-batch -> LossTerms (improved: sums over valid positions;
    paper: the micro-batch means the paper's code back-propagates)."""
    cfg, pairs = run.loss_cfg, cosine_pairs(run.args, run.layer_map)
    s_idx, t_idx = [s for s, _ in pairs], [t for _, t in pairs]
    inputs = inputs_for(run, batch, run.student)
    with run.autocast:
        if cfg.use_kl_loss or cfg.use_cosine_loss:
            with torch.no_grad():
                t_out = run.teacher(**inputs, output_hidden_states=t_idx if cfg.use_cosine_loss else None,
                                    **({} if cfg.use_kl_loss else {"logits_to_keep": 1}))
        s_out = run.student(**inputs, output_hidden_states=s_idx if cfg.use_cosine_loss else None)
    s_h = [s_out.hidden_states[i] for i in s_idx] if cfg.use_cosine_loss else []
    t_h = [t_out.hidden_states[i] for i in t_idx] if cfg.use_cosine_loss else []
    t_logits = t_out.logits if cfg.use_kl_loss else None
    if run.args.recipe == "paper":
        return paper_loss(cfg, s_out.logits, t_logits, s_h, t_h, inputs["attention_mask"],
                          batch["labels"].to(run.device))
    return distillation_loss(cfg, s_out.logits, t_logits, s_h, t_h, inputs["input_ids"],
                             batch["doc_ids"].to(run.device))


def process_indices(recipe: str, per: int, accum: int, world: int, rank: int) -> list[int]:
    """The sequences of a global batch that this process trains on: its ``accum`` micro-batches of ``per`` sequences,
    in order. improved: rank r takes the r-th contiguous block. paper (issue 26): as accelerate 1.6.0 dispatches an
    IterableDataset (``DataLoaderDispatcher``: process 0 reads one per-device batch per process and process r gets the
    r-th, for every micro-batch), micro-batch m of rank r is the stream's per-device batch m * world + r. One process:
    the same. Ascending either way, so ``Stream.take(n, keep=...)`` returns them in micro-batch order."""
    if recipe == "paper":  # plain integers: this runs under the memory plan's fake tensors too (train.plan)
        return [(m * world + rank) * per + j for m in range(accum) for j in range(per)]
    return list(range(rank * per * accum, (rank + 1) * per * accum))


def train_step(run: Run) -> dict:
    """One optimizer step on the next global batch -> its log record. Raises FloatingPointError before stepping."""
    args, per = run.args, run.args.per_device_train_batch_size
    t0 = time.perf_counter()
    # this process's sequences of the global batch, the only ones its stream tokenizes (slots; the paper's documents)
    mine = run.stream.take(run.global_batch, keep=process_indices(args.recipe, per, run.accum, run.world, run.rank))
    data_wait = time.perf_counter() - t0  # with prefetching, only what the step waited for its batch
    if args.recipe == "paper":  # loss positions (what the improved recipe averages over) and real tokens (logged)
        counts = [float((mine["labels"][:, 1:] != -100).sum()), float(mine["attention_mask"].sum())]
    else:
        counts = [float(valid_positions(mine["doc_ids"]).sum()), float((mine["doc_ids"] >= 0).sum())]
    n_valid, n_tokens = all_sum(counts, run.device)  # of the global batch
    n_tokens = int(n_tokens)
    sums = LossTerms(0.0, 0.0, 0.0, 0.0, num_valid=0)
    for m in range(run.accum):
        if run.fsdp:
            run.student.set_requires_gradient_sync(m == run.accum - 1)
        terms = forward(run, {k: v[m * per:(m + 1) * per] for k, v in mine.items()})
        # paper: each micro-batch's mean back-propagated undivided, as the paper's code does (transformers 4.51.3 does
        # not divide it by the accumulation steps for this model: docs/training.md); processes are averaged. improved:
        # sum over valid positions / valid positions of the global batch, times the processes FSDP averages over.
        (terms.total if args.recipe == "paper" else terms.total * (run.world / max(n_valid, 1.0))).backward()
        sums = sums + terms
    *values, num_valid = all_sum([*sums.values(), sums.num_valid], run.device)  # summed over processes
    # logged: the mean loss per loss position (improved), or the mean of the micro-batch means (paper)
    denominator = run.accum * run.world if args.recipe == "paper" else max(n_valid, 1.0)
    mean = LossTerms(*values, num_valid=int(num_valid)) / denominator
    if not math.isfinite(mean.total):
        raise FloatingPointError(f"non-finite loss ({mean.total}) at step {run.step + 1}")
    grad_norm = torch.nn.utils.clip_grad_norm_(  # max_grad_norm <= 0: no clipping, norm still logged
        run.student.parameters(), args.max_grad_norm if args.max_grad_norm > 0 else float("inf"))
    grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
    lr = run.scheduler.get_last_lr()[0]
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    run.step += 1
    run.tokens_seen += n_tokens
    rec = {"step": run.step, "loss": mean.total, "ce": mean.ce, "kl": mean.kl, "cosine": mean.cosine, "lr": lr,
           "grad_norm": grad_norm, "step_time_s": time.perf_counter() - t0, "data_wait_s": data_wait,
           "tokens": n_tokens,
           "tokens_seen": run.tokens_seen, "sequence_tokens": run.global_batch * args.max_length,
           "data_position": run.stream.position}
    run.window = {k: run.window[k] + rec[r] for k, r in zip(WINDOW, ("step_time_s", "tokens", "sequence_tokens"))}
    run.history.append(rec)
    return rec


def log_throughput(run: Run, rec: dict) -> None:
    """Add the logging window's throughput (and memory, MFU) to ``rec``, write it, and start a new window."""
    w, dt = run.window, max(run.window["time_s"], 1e-9)
    rec["tokens_per_s"] = w["tokens"] / dt
    if run.device.type == "cuda":
        rec["peak_memory_gb"] = torch.cuda.max_memory_allocated(run.device) / 2**30
        if run.peak_flops:  # padding is computed too: MFU counts every position of every sequence
            rec["mfu"] = w["sequence_tokens"] / dt * run.flops_per_token / run.world / run.peak_flops
    else:
        rec["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    run.reporter.write(rec)
    run.window = dict(WINDOW)


def evaluate(run: Run, model) -> float:
    """Held-out mean next-token CE of ``model`` over every process's share of the evaluation batches."""
    was_training = model.training
    model.eval()
    ce_sum = n = 0.0
    with torch.no_grad(), run.autocast:
        for b, counted in run.eval_batches:  # the paper's CE: every label that is not -100; improved: valid positions
            y = b["labels"][:, 1:] if run.args.recipe == "paper" else \
                next_token_labels(b["input_ids"], valid_positions(b["doc_ids"]))[:, :-1]
            logits = model(**inputs_for(run, b, model)).logits[:, :-1]
            if not counted:  # a padding batch: its forward keeps the processes' collectives paired
                continue
            ce_sum += float(F.cross_entropy(logits.flatten(0, 1).float(), y.flatten().to(run.device), reduction="sum"))
            n += float((y != -100).sum())
    ce_sum, n = all_sum([ce_sum, n], run.device)
    model.train(was_training)
    return ce_sum / max(n, 1.0)


def evaluate_and_log(run: Run, teacher_too: bool = False) -> dict:
    rec = {"step": run.step, "eval_ce": evaluate(run, run.student)}
    if teacher_too:
        rec["teacher_eval_ce"] = evaluate(run, run.teacher)
    rec["eval_ppl"] = math.exp(min(rec["eval_ce"], 50))
    run.reporter.write(rec)
    run.history.append(rec)
    return rec


def cleanup(run: Run) -> dict:
    """Write the student into --save_directory once training reached --max_steps (files moved in one by one, config
    files last), close the reporter and the process group; the summary main returns."""
    args, student = run.args, run.student
    if run.step >= args.max_steps:
        if run.fsdp:
            sd = ckpt.model_state(student, fsdp=True)  # a collective: every process
            if run.rank == 0:  # the gathered tensors become the parameters of a model built on the meta device
                model = empty_model(copy.deepcopy(student.config), torch.float32)
                missing, unexpected = model.load_state_dict(sd, strict=False, assign=True)
                model.tie_weights()
                missing = [k for k in missing if not (adapter_for(model).is_tied(model) and "lm_head" in k)]
                missing += [n for n, p in model.named_parameters() if p.is_meta and n not in missing]
                if missing or unexpected:
                    raise RuntimeError(f"final state dict mismatch: missing={missing} unexpected={unexpected}")
                student = model
        if run.rank == 0:
            tmp = os.path.join(args.save_directory, ".final-student")
            shutil.rmtree(tmp, ignore_errors=True)
            save_student(student, run.tokenizer, run.layer_map, tmp, overwrite=True, **provenance_of(args),
                         training_recipe=args.recipe, trained_steps=run.step, trained_tokens=run.tokens_seen)
            last = ("config.json", "student_config.json")
            for name in sorted(os.listdir(tmp), key=lambda n: (last.index(n) if n in last else -1, n)):
                dst = os.path.join(args.save_directory, name)
                if os.path.isdir(dst):
                    shutil.rmtree(dst)
                os.replace(os.path.join(tmp, name), dst)
            os.rmdir(tmp)
            log.info("student written to %s", args.save_directory)
    run.reporter.close()
    summary = {"step": run.step, "history": run.history, "save_directory": args.save_directory,
               "student_parameters": count_parameters(run.student),
               "teacher_parameters": count_parameters(run.teacher), "flops_per_token": run.flops_per_token}
    if dist.is_available() and dist.is_initialized():  # no barrier: no process waits while rank 0 writes the student
        dist.destroy_process_group()
    ckpt.wait_for_pruning()
    return summary


def main(argv=None) -> dict:
    """The command line: ``torchrun ... --module train.train --config FILE [--flag value ...]``."""
    return run_distillation(parse_with_config(build_parser(), argv))


def distill(config: str | None = None, **settings) -> dict:
    """The same run called as a function: ``distill("configs/x.yaml", save_directory=D, max_steps=120, resume=True)``
    (``settings`` keyed by flag name, Python values; the main job and the experiments call this)."""
    return run_distillation(parse_with_config(build_parser(), [], config, **settings))


def run_distillation(args) -> dict:
    setup_logging()
    run = setup(args)
    try:
        return train_loop(run)
    finally:  # on an error too: the data worker does not outlive its run
        run.stream.close()


def train_loop(run: Run) -> dict:
    """The loop: evaluation at step 0, then train_step to the last step with logging, evaluation and checkpoints;
    cleanup writes the student."""
    args = run.args
    if run.eval_batches and run.step == 0:
        rec = evaluate_and_log(run, teacher_too=True)
        if run.rank == 0:
            log.info("step 0: held-out CE student %.4f, teacher %.4f", rec["eval_ce"], rec["teacher_eval_ce"])
    if run.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(run.device)
    stop = last_step(args)
    bar = tqdm(total=args.max_steps, initial=run.step, disable=run.rank != 0, desc="distill", dynamic_ncols=True,
               mininterval=2.0)
    while run.step < stop:
        try:
            rec = train_step(run)
        except FloatingPointError as e:  # a non-finite loss
            bar.close()
            fail(f"{e}. Last good checkpoint: {run.last_good or 'none (no checkpoint written yet)'}. Lower "
                 "--learning_rate or check the data; continue from the checkpoint with --resume", code=3)
        bar.update(1)
        bar.set_postfix(loss=f"{rec['loss']:.3f}", ce=f"{rec['ce']:.3f}")
        if run.step % max(1, args.logging_steps) == 0 or run.step == stop:
            log_throughput(run, rec)
        if run.eval_batches and args.eval_steps and (run.step % args.eval_steps == 0 or run.step == args.max_steps):
            ev = evaluate_and_log(run)
            if run.rank == 0:
                bar.write(f"step {run.step}: held-out CE {ev['eval_ce']:.4f} (ppl {ev['eval_ppl']:.1f})")
        if (args.save_steps and run.step % args.save_steps == 0) or run.step == stop < args.max_steps:
            run.last_good = ckpt.save_checkpoint(
                args.save_directory, run.step, run.student, run.optimizer, run.scheduler, run.stream.position,
                args.save_total_limit, extra={"world_size": run.world, "global_batch": run.global_batch,
                                              "tokens_seen": run.tokens_seen,
                                              "data_resume": run.stream.resume_state()})  # a collective
    bar.close()
    return cleanup(run)


if __name__ == "__main__":
    main(sys.argv[1:])
