"""Evaluate boomerang models with lm-evaluation-harness: one patched size (the paper's command) or a sweep.

One size (the paper's command; loads only the tensors that size needs):

    python -m evaluate.evaluate --teacher_model_name_or_path T --student_model_name_or_path S \\
        --save_directory D --num_layers_to_patch K [--patch_first_k_layers] [--override_llama_patching] \\
        [--tasks a,b] [--eval_batch_size 4] [--dtype bfloat16]

Every size in one process (teacher and student loaded once; each size built from them in memory,
tensors shared, freed after; a rerun skips the sizes already done):

    python -m evaluate.evaluate ... --sweep              # student, k = 0..max, teacher
    python -m evaluate.evaluate ... --sweep 0,3,5        # or 0-14, 2-6,10
    python -m evaluate.evaluate ... --sweep --tasks local_ppl:../shared/data/corpus/brown_heldout.jsonl \\
        --task_data arc_local=../shared/data/tasks/arc_easy.jsonl --limit 200 --dtype float32

The sizes of a sweep split over processes (each on its own GPU, cuda:LOCAL_RANK, or CPU; each result written as
it finishes, the summary by rank 0 once all are done; a rerun evaluates only the sizes without a result):

    torchrun --nproc-per-node=8 -m evaluate.evaluate ... --sweep

Patch order: last-k by default; first-k with --patch_first_k_layers, and for Llama-family
models (decided by the family adapter) unless --override_llama_patching is given.

Writes ``D/results/<point>.json`` per size, ``D/summary.csv``, ``D/summary.md`` and ``D/plots/*.png``
(``python -m evaluate.plot D [D2 ...]`` redraws them). Python API: ``evaluate_model``, ``run_sweep``,
``SweepPoint``, ``boomerang_points``, ``resolve_tasks``.
"""

from __future__ import annotations

import argparse
import copy
import gc
import inspect
import json
import logging
import os
import platform
import shutil
import subprocess
import time
import traceback
from dataclasses import dataclass, field
from datetime import timedelta
from importlib.metadata import version
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence
from unittest import mock

import torch
import torch.distributed as dist

from boomerang.cli import fail, parse_with_config, setup_logging
from boomerang.errors import BoomerangError
from boomerang.families import (FIRST_K, adapter_for, adapter_for_config, count_parameters, dtype_from_name, order_name,
                                patch_order)
from boomerang.io import atomic_write_json
from boomerang.models import load_config, load_model, load_tokenizer, resolve_model_path
from evaluate import results as results_mod
from evaluate.heldout import TASK_NAME as HELDOUT_TASK, HeldoutReference
from evaluate.plot import plot_records
from evaluate.tasks import PAPER_EXTRA_TASKS, PAPER_TASKS, TaskError, TaskSet, resolve_tasks
from patching.patch import build_intermediate_model, load_layer_map, load_plan
from patching.resident import ResidentFamily

log = logging.getLogger("boomerang.evaluate")

RESULTS_DIR, FAILURES_DIR, TASKS_DIR, SWEEP_FILE = "results", "failures", "tasks", "sweep.json"


class EvaluationError(BoomerangError):
    pass


# --------------------------------------------------------------------------- one model
def _token_counting_lm_class():
    """HFLM with two changes: rolling log-likelihoods also carry the number of tokens scored (token perplexity), and
    a causal model computes its head only over the positions lm-eval reads (``_logits_window``)."""
    from lm_eval.models.huggingface import HFLM  # lazy: lm_eval (heavy) loads only when a model is evaluated

    class _LogLikelihood(float):
        num_tokens: int = 0

    class TokenCountingHFLM(HFLM):
        continuations: dict | None = None  # while _loglikelihood_tokens runs: model input -> continuation length
        logits_window: bool = True  # False: every position's logits, as HFLM computes them

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            out = super().loglikelihood_rolling(requests, disable_tqdm=disable_tqdm)
            wrapped = []
            for req, ll in zip(requests, out):
                v = _LogLikelihood(ll)
                v.num_tokens = len(self.tok_encode(req.args[0]))
                wrapped.append(v)
            return wrapped

        def _loglikelihood_tokens(self, requests, *args, **kwargs):
            conts: dict[tuple, int] = {}
            for _, context, continuation in requests:  # the input row lm-eval builds for the request
                key = tuple((context + continuation)[-(self.max_length + 1):][:-1])
                conts[key] = max(conts.get(key, 0), len(continuation))
            self.continuations = conts
            try:
                return super()._loglikelihood_tokens(requests, *args, **kwargs)
            finally:
                self.continuations = None

        def _logits_window(self, inps) -> int | None:
            """How many last positions of a right-padded batch hold every logit lm-eval reads, or None for all.

            A row scores its continuation, its last real positions, and is padded with zeros (lm-eval's
            ``pad_and_concat``): the row is matched to its request with each count of its trailing zeros taken as
            padding (a real token 0 can end a row: every match counts), and the window covers padding plus
            continuation for every row. lm-eval locates each continuation from the end of the returned logits
            (its ``ctx_len`` shift), so returning only these positions changes no score."""
            if not self.logits_window or self.continuations is None or self.backend != "causal":
                return None
            if "logits_to_keep" not in inspect.signature(self.model.forward).parameters:
                return None
            length, window = inps.shape[1], 0
            for row in inps.tolist():
                trailing = next((i for i, x in enumerate(reversed(row)) if x != 0), length)
                needs = [pad + self.continuations[key] for pad in range(trailing + 1)
                         if (key := tuple(row[:length - pad])) in self.continuations]
                if not needs:
                    return None  # a row no request explains: every position
                window = max(window, *needs)
            return window if window < length else None

        def _model_call(self, inps, attn_mask=None, labels=None):
            window = self._logits_window(inps) if attn_mask is None and labels is None else None
            if window is None:
                return super()._model_call(inps, attn_mask=attn_mask, labels=labels)
            with torch.no_grad(), torch.autocast(device_type=self.device.type, dtype=self.mixed_precision_dtype,
                                                 enabled=self.mixed_precision_dtype is not None):
                return self.model(inps, logits_to_keep=window).logits

    return TokenCountingHFLM


def _parse_batch_size(bs):
    s = "1" if bs is None else str(bs)
    if s == "auto" or s.startswith("auto:"):
        return s
    try:
        return int(s)
    except ValueError:
        raise EvaluationError(f"batch size must be a positive integer or 'auto', got {bs!r}") from None


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _parse_lm_eval_results(out: dict) -> dict:
    """lm-eval's ``results`` -> ``{task: {metric: {"value", "stderr"}}}`` (filter kept when not 'none')."""
    metrics: dict[str, dict[str, dict]] = {}
    for task, row in out.get("results", {}).items():
        vals: dict[str, dict] = {}
        for key, v in row.items():
            if "," not in key:
                continue
            metric, filt = key.split(",", 1)
            is_stderr = metric.endswith("_stderr")
            base = metric[: -len("_stderr")] if is_stderr else metric
            label = base if filt == "none" else f"{base}[{filt}]"
            entry = vals.setdefault(label, {"value": None, "stderr": None})
            entry["stderr" if is_stderr else "value"] = None if v in ("N/A", None) else float(v)
        metrics[task] = vals
    return metrics


def evaluate_model(model, tokenizer, tasks, *, limit: int | float | None = None, num_fewshot: int | None = None,
                   batch_size: int | str = 1, max_batch_size: int = 64, device: str | None = None,
                   include_path=None, task_data: dict[str, str] | None = None, max_doc_words: int | None = None,
                   bootstrap_iters: int = 1000, random_seed: int = 0, max_length: int | None = None,
                   log_samples: bool = False) -> dict:
    """Evaluate one in-memory model with lm-evaluation-harness (``HFLM`` + ``simple_evaluate``).

    ``tasks``: a ``TaskSet`` from ``resolve_tasks`` (reuse it across models) or task names/specs
    (``"arc_easy,local_ppl:FILE"``, a list, ...; then ``include_path``/``task_data``/``max_doc_words``
    are used to resolve them). ``batch_size`` may be ``"auto"``. Returns
    ``{"metrics": {task: {metric: {"value", "stderr"}}}, "n_samples": {task: n}, "tasks": [...],
    "higher_is_better": {...}, "lm_eval_version": ..., "eval_time_s": ...}``; stderr is None where
    lm-eval gives none (perplexities).
    """
    from lm_eval import evaluator  # lazy: lm_eval (heavy) loads only when a model is evaluated

    taskset = tasks if isinstance(tasks, TaskSet) else resolve_tasks(tasks, task_data, include_path,
                                                                      max_doc_words=max_doc_words)
    if tokenizer is None:
        raise EvaluationError("evaluate_model needs the model's tokenizer")
    model = model.to(device or default_device()).eval()
    # a copy: lm-eval sets a missing pad token, and load_tokenizer's tokenizers are shared
    lm = _token_counting_lm_class()(pretrained=model, tokenizer=copy.deepcopy(tokenizer), max_batch_size=max_batch_size,
                                    batch_size=_parse_batch_size(batch_size),
                                    **({"max_length": max_length} if max_length else {}))
    t0 = time.time()
    # Under torchrun (a sweep split over processes) lm-eval returns results only where LOCAL_RANK is 0; each process
    # evaluates its own model alone here, so it is told it is process 0.
    saved_local_rank = os.environ.get("LOCAL_RANK")
    os.environ["LOCAL_RANK"] = "0"
    try:
        # lm-eval ends every run with torch's environment report (a dozen subprocesses, seconds each time): skipped,
        # the result files record versions themselves.
        with mock.patch.object(evaluator, "add_env_info", lambda results: None):
            out = evaluator.simple_evaluate(
                model=lm, tasks=list(taskset.names), task_manager=taskset.task_manager, limit=limit,
                num_fewshot=num_fewshot, bootstrap_iters=bootstrap_iters, log_samples=log_samples,
                random_seed=random_seed, numpy_random_seed=random_seed, torch_random_seed=random_seed,
                fewshot_random_seed=random_seed)
    finally:
        if saved_local_rank is None:
            del os.environ["LOCAL_RANK"]
        else:
            os.environ["LOCAL_RANK"] = saved_local_rank
    if out is None:
        raise EvaluationError("lm-eval returned no results")
    result = {
        "metrics": _parse_lm_eval_results(out),
        "n_samples": {t: v.get("effective", v.get("original")) if isinstance(v, dict) else v
                      for t, v in out.get("n-samples", {}).items()},
        "tasks": list(taskset.names),
        "higher_is_better": {t: {m: None if b is None else bool(b) for m, b in d.items()}
                             for t, d in out.get("higher_is_better", {}).items()},
        "lm_eval_version": _version("lm_eval"),
        "eval_time_s": round(time.time() - t0, 3),
    }
    if log_samples:
        result["samples"] = out.get("samples")
    return result


# --------------------------------------------------------------------------- sweeps
@dataclass
class SweepPoint:
    """One model of a sweep.

    ``name``: file-safe and unique within the sweep folder (``student``, ``last_k03``, ``shortgpt_20``).
    ``build()``: returns ``(model, tokenizer)``; called once, the model freed after its evaluation.
    ``metadata``: copied into the result JSON; recognized keys: ``method`` (e.g. ``boomerang``,
    ``naive_pruning``, ``shortgpt``, ``laco``), ``curve`` (the plot legend label; default
    ``method``), ``role`` (``student`` / ``teacher`` / ``intermediate``: the plot marks the first two),
    ``order``, ``num_layers_to_patch``, ``replaced_blocks``, ``depth``, ``layers``, ``teacher``,
    ``student``; anything else is kept as given.
    ``tasks``: False to score this point on the sweep's held-out reference only, without the lm-eval tasks
    (a baseline whose accuracy is known to sit at chance, where the tasks would cost most of the sweep).
    """

    name: str
    build: Callable[[], tuple[Any, Any]]
    metadata: dict = field(default_factory=dict)
    tasks: bool = True


def _version(pkg: str) -> str | None:
    try:
        return version(pkg)
    except Exception:
        return None


def versions() -> dict:
    v = {"python": platform.python_version(), "torch": torch.__version__,
         **{pkg: _version(pkg) for pkg in ("transformers", "lm_eval", "datasets")}}
    try:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        v["boomerang_commit"] = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True,
                                               text=True, timeout=5).stdout.strip() or None
    except Exception:
        v["boomerang_commit"] = None
    return v


def _settings(taskset: TaskSet, limit, num_fewshot, max_doc_words, reference: dict | None = None) -> dict:
    out = {"tasks": taskset.describe(), "limit": limit, "num_fewshot": num_fewshot, "max_doc_words": max_doc_words}
    if reference is not None:
        out["reference"] = reference
    return out


def prepare_sweep_directory(save_directory: str, tasks, *, limit=None, num_fewshot=None, include_path=None,
                            task_data=None, max_doc_words=None, overwrite: bool = False,
                            reference: dict | None = None) -> TaskSet:
    """Resolve the tasks into ``save_directory/tasks`` and check that earlier results there were made
    with the same settings (tasks, limit, few-shot, document cut, KL reference); fails before any model
    loads. No tasks (None or empty) is allowed when a ``reference`` describes the held-out scoring."""
    os.makedirs(save_directory, exist_ok=True)
    if isinstance(tasks, TaskSet):
        taskset = tasks
    elif tasks or task_data:
        taskset = resolve_tasks(tasks, task_data, include_path, work_dir=os.path.join(save_directory, TASKS_DIR),
                                max_doc_words=max_doc_words)
    elif reference is None:
        raise EvaluationError("no tasks given, and no held-out reference to score against: nothing to evaluate")
    else:
        taskset = TaskSet([], None)
    settings = json.loads(json.dumps(_settings(taskset, limit, num_fewshot, max_doc_words, reference)))
    path = os.path.join(save_directory, SWEEP_FILE)
    if os.path.isfile(path) and not overwrite:
        with open(path) as f:
            old = json.load(f).get("settings")
        if old != settings:
            raise EvaluationError(f"{save_directory} holds results made with other settings ({_diff(old, settings)}); "
                                  "use another --save_directory, or --overwrite to discard them")
    if overwrite:
        for sub in (RESULTS_DIR, FAILURES_DIR):
            shutil.rmtree(os.path.join(save_directory, sub), ignore_errors=True)
    atomic_write_json(path, {"settings": settings})
    return taskset


def _diff(old, new: dict) -> str:
    if not isinstance(old, dict):
        return "unreadable sweep.json"
    return "; ".join(f"{k}: {old.get(k)!r} then, {new.get(k)!r} now" for k in sorted(set(old) | set(new))
                     if old.get(k) != new.get(k))


def result_path(save_directory: str, name: str) -> str:
    return os.path.join(save_directory, RESULTS_DIR, f"{name}.json")


# --------------------------------------------------------------------------- a sweep over several processes
def sweep_processes(device: str | None = None) -> tuple[int, int, str | None]:
    """(rank, world size, device) of this process. Under torchrun (WORLD_SIZE > 1) the process group is set up
    here (gloo: only barriers and one broadcast travel through it) and each process takes ``cuda:LOCAL_RANK``
    (``--device`` unset or ``cuda``) or the CPU (``--device cpu``, or no GPU); one process: ``device`` as given."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, device
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device not in (None, "auto", "cuda", "cpu"):
        raise EvaluationError(f"--device {device} with {world} processes: give --device cuda (process r takes "
                              "cuda:LOCAL_RANK) or --device cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise EvaluationError("--device cuda: no CUDA device is available; use --device cpu")
    if device != "cpu" and torch.cuda.is_available():
        if local >= torch.cuda.device_count():
            raise EvaluationError(f"process with LOCAL_RANK {local} but only {torch.cuda.device_count()} GPU(s): "
                                  "start at most that many processes per node")
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    else:
        device = "cpu"
    if not dist.is_initialized():
        # The summary barrier waits for the slowest process's sizes: hours on a large sweep.
        dist.init_process_group(backend="gloo", timeout=timedelta(days=7))
    return rank, world, device


def _rank0_first(fn: Callable[[bool], Any], rank: int, world_size: int):
    """``fn(True)`` on rank 0, then ``fn(False)`` on the other ranks (e.g. only rank 0 may delete old results)."""
    if world_size > 1 and rank != 0:
        dist.barrier()
    out = fn(rank == 0)
    if world_size > 1 and rank == 0:
        dist.barrier()
    return out


def split_points(names: Sequence[str], weights: Sequence[float], world_size: int) -> list[list[str]]:
    """Deterministic split of sweep points over ``world_size`` processes: heaviest first (weight = depth), each to
    the process with the least weight so far (the lowest rank on ties); each list kept in sweep order."""
    load = [0.0] * world_size
    owner = {}
    for i in sorted(range(len(names)), key=lambda i: (-weights[i], i)):
        owner[i] = min(range(world_size), key=lambda r: (load[r], r))
        load[owner[i]] += weights[i]
    return [[names[i] for i in range(len(names)) if owner[i] == r] for r in range(world_size)]


def _my_points(points: list[SweepPoint], save_directory: str, rank: int, world_size: int) -> set[str] | None:
    """The names this process evaluates: rank 0 lists the points without a result file (finished ones are never
    redone), every process receives that list and takes its share (``split_points``). None: one process."""
    if world_size <= 1:
        return None
    pending = [[p.name for p in points if not os.path.isfile(result_path(save_directory, p.name))]]
    dist.broadcast_object_list(pending, src=0)
    weight = {p.name: float(p.metadata.get("depth") or 1) for p in points}
    shares = split_points(pending[0], [weight[n] for n in pending[0]], world_size)
    log.info("process %d of %d: %d of %d pending points: %s", rank, world_size, len(shares[rank]), len(pending[0]),
             ", ".join(shares[rank]) or "none")
    return set(shares[rank])


def run_sweep(points: Iterable[SweepPoint], save_directory: str, tasks, *, limit: int | float | None = None,
              num_fewshot: int | None = None, batch_size: int | str = 1, max_batch_size: int = 64,
              device: str | None = None, include_path=None, task_data: dict[str, str] | None = None,
              max_doc_words: int | None = None, bootstrap_iters: int = 1000, overwrite: bool = False,
              plots: bool = True, common_metadata: dict | None = None, max_length: int | None = None,
              reference=None, rank: int | None = None, world_size: int | None = None,
              known: Iterable[dict] = ()) -> list[dict]:
    """Evaluate every point into ``save_directory``, one result JSON each; resumable and failure-tolerant.

    ``reference``: a ``HeldoutReference`` (evaluate.heldout); each point is also scored against the
    teacher on its text: task ``heldout_kl`` with metrics ``kl`` (mean KL(teacher || model) per token)
    and ``token_perplexity``, the per-document sums in the record's ``heldout_scores``. With a
    reference, ``tasks`` may be empty (no lm-eval run).

    A point whose ``results/<name>.json`` exists is skipped (its saved result is reused); a point that
    raises is recorded in ``failures/<name>.json`` (with the traceback) and the sweep goes on; a rerun
    retries it. After the points: ``summary.csv``, ``summary.md`` and ``plots/*.png``. ``tasks`` as in
    ``evaluate_model`` (resolved once, into ``save_directory/tasks``). ``common_metadata`` is merged
    under each point's metadata. Returns the result dicts of the points that succeeded (new and saved).

    ``known``: result records of another sweep (the main job passes its fixed-order sweep to the searched ladder's).
    A point scored on the held-out reference only whose model is one of theirs (``model_identity``: same teacher,
    student, dtype, layers, embeddings, norm and head) and that was scored on the same reference takes its scores
    (``same_model_as`` names it) instead of being evaluated again.

    Several processes (``rank``/``world_size``, default: the initialized torch.distributed group, as
    ``sweep_processes`` sets up under torchrun): the pending points are split among them (``split_points``),
    each process evaluates its share on its own ``device``; after a barrier every process returns all results
    and rank 0 writes the summary. A process that dies loses only its unfinished points.
    """
    points = list(points)
    names = [p.name for p in points]
    bad = [n for n in names if not n or n.startswith(".") or any(c in n for c in "/\\ \t\n")]
    if bad:
        raise EvaluationError(f"sweep point names {bad} must be non-empty file-safe names (no spaces or slashes)")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise EvaluationError(f"sweep point names must be unique, repeated: {dup}")
    if rank is None or world_size is None:
        group = dist.is_available() and dist.is_initialized()
        rank, world_size = (dist.get_rank(), dist.get_world_size()) if group else (0, 1)
    ref_desc = reference.describe() if reference is not None else None
    taskset = _rank0_first(lambda first: prepare_sweep_directory(
        save_directory, tasks, limit=limit, num_fewshot=num_fewshot, include_path=include_path, task_data=task_data,
        max_doc_words=max_doc_words, overwrite=overwrite and first, reference=ref_desc), rank, world_size)
    device = device or default_device()
    run_info = {"settings": _settings(taskset, limit, num_fewshot, max_doc_words, ref_desc),
                "batch_size": str(batch_size), "device": str(device), "versions": versions()}
    eval_kwargs = dict(limit=limit, num_fewshot=num_fewshot, batch_size=batch_size, max_batch_size=max_batch_size,
                       device=device, bootstrap_iters=bootstrap_iters, max_length=max_length)
    mine = _my_points(points, save_directory, rank, world_size)
    twins = {}
    for r in known if reference is not None else ():
        identity = model_identity(r)
        if identity and (r.get("settings") or {}).get("reference") == ref_desc \
                and reference.task_name in r.get("metrics", {}):
            twins.setdefault(identity, r)
    for i, point in enumerate(points, 1):
        path = result_path(save_directory, point.name)
        fail_path = os.path.join(save_directory, FAILURES_DIR, f"{point.name}.json")
        if mine is not None and point.name not in mine:
            continue  # another process's, or finished before: read after the barrier
        if os.path.isfile(path):
            log.info("[%d/%d] %s: already done, skipped", i, len(points), point.name)
            continue
        meta = {**(common_metadata or {}), **point.metadata}
        twin = twins.get(model_identity(meta)) if not (taskset.names and point.tasks) else None
        if twin is not None:
            atomic_write_json(path, _reused_record(point.name, meta, twin, reference.task_name, run_info))
            log.info("[%d/%d] %s: the same model as %s, its held-out scores reused", i, len(points), point.name,
                     twin["name"])
            continue
        log.info("[%d/%d] %s: building", i, len(points), point.name)
        try:
            record = _evaluate_point(point, meta, taskset, reference, run_info, eval_kwargs)
        except Exception as e:  # recorded; the other points still run
            log.error("[%d/%d] %s failed: %s", i, len(points), point.name, e)
            atomic_write_json(fail_path, {"name": point.name, "metadata": meta, "error": f"{type(e).__name__}: {e}",
                                          "traceback": traceback.format_exc(), "finished_at": _now()})
            continue
        finally:  # the point's model is unreferenced by now
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        atomic_write_json(path, record)
        if os.path.isfile(fail_path):
            os.unlink(fail_path)
        log.info("[%d/%d] %s: done in %.1f s (%s)", i, len(points), point.name, record["wall_time_s"]["total"],
                 results_mod.headline(record))
    if world_size > 1:
        dist.barrier()  # every process's points are finished (or failed)
    if rank == 0:
        results_mod.write_summary(save_directory)
        records = results_mod.load_results(save_directory)
        if plots and records:
            plot_records(records, os.path.join(save_directory, "plots"))
    paths = [result_path(save_directory, n) for n in names]
    return [json.loads(Path(p).read_text()) for p in paths if os.path.isfile(p)]


def _evaluate_point(point: SweepPoint, meta: dict, taskset: TaskSet, reference, run_info: dict,
                    eval_kwargs: dict) -> dict:
    """Build one point, evaluate it (lm-eval tasks, then the held-out reference) and return its result record."""
    t0 = time.time()
    model, tokenizer = point.build()
    t_build = time.time() - t0
    ev = {"metrics": {}, "n_samples": {}, "higher_is_better": {}, "eval_time_s": 0.0}
    if taskset.names and point.tasks:
        ev = evaluate_model(model, tokenizer, taskset, **eval_kwargs)
    heldout = None
    if reference is not None:
        t1 = time.time()
        heldout = reference.score(model.to(eval_kwargs["device"]))
        t_heldout = time.time() - t1
        ev["metrics"][reference.task_name] = {"kl": {"value": heldout.kl_per_token, "stderr": None},
                                              "token_perplexity": {"value": heldout.token_perplexity, "stderr": None}}
        ev["higher_is_better"][reference.task_name] = {"kl": False, "token_perplexity": False}
        ev["eval_time_s"] = round(ev["eval_time_s"] + time.time() - t1, 3)
    depth = meta["depth"] if meta.get("depth") is not None else adapter_for(model).num_layers(model.config)
    record = {**_point_fields(point.name, meta), "depth": int(depth), "parameters": count_parameters(model),
              **{k: ev[k] for k in ("metrics", "n_samples", "higher_is_better")}, **run_info,
              "wall_time_s": {"build": round(t_build, 3), "evaluate": ev["eval_time_s"],
                              **({"heldout": round(t_heldout, 3)} if heldout is not None else {}),
                              "total": round(time.time() - t0, 3)},
              "finished_at": _now()}
    if heldout is not None:
        record["heldout_scores"] = heldout.to_dict()
    return record


def model_identity(meta: dict) -> tuple | None:
    """What a sweep point's model is made of, as its metadata (or result record) says: the teacher and student it
    is assembled from, its dtype, its layers in order and the sources of its embeddings, final norm and head (the
    ``student`` and ``teacher`` roles take all three from themselves). None when the metadata does not say."""
    own = meta.get("role") if meta.get("role") in ("student", "teacher") else None
    parts = tuple(meta.get(k, own) for k in ("embeddings_from", "final_norm_from", "lm_head_from"))
    if not meta.get("layers") or None in parts:
        return None
    return (meta.get("teacher"), meta.get("student"), meta.get("dtype"), tuple(tuple(x) for x in meta["layers"]),
            parts)


def _point_fields(name: str, meta: dict) -> dict:
    """The part of a result record that the point's name and metadata give (method, curve and role defaulted)."""
    return {"name": name, "method": meta.get("method", "model"),
            "curve": meta.get("curve") or meta.get("method", "model"), "role": meta.get("role", "intermediate"),
            **{k: v for k, v in meta.items() if k not in ("method", "curve", "role")}}


def _reused_record(name: str, meta: dict, twin: dict, task: str, run_info: dict) -> dict:
    """The result record of a point whose model ``twin`` (a record) has already been scored on the reference."""
    return {**_point_fields(name, meta), "depth": int(twin["depth"]), "parameters": twin["parameters"], "metrics": {task: twin["metrics"][task]},
            "n_samples": {}, "higher_is_better": {task: twin["higher_is_better"][task]}, **run_info,
            "wall_time_s": {"build": 0.0, "evaluate": 0.0, "total": 0.0}, "finished_at": _now(),
            "same_model_as": twin["name"], "heldout_scores": twin["heldout_scores"]}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# --------------------------------------------------------------------------- boomerang points
def use_first_k(teacher, patch_first_k_layers: bool = False, override_llama_patching: bool = False) -> bool:
    """The patch order rule (``boomerang.families.patch_order``) for a loaded model, a config, or a name/folder."""
    cfg = teacher if hasattr(teacher, "model_type") else getattr(teacher, "config", None)
    if cfg is None:
        cfg = load_config(teacher)
    return patch_order(cfg, patch_first_k_layers, override_llama_patching) == FIRST_K


def parse_limit(limit: float | None, flag: str = "--limit") -> int | float | None:
    """Items per task: None (every item), a count (a whole number >= 1, as an int) or a fraction below 1."""
    if limit is None:
        return None
    if limit <= 0:
        raise EvaluationError(f"{flag} must be positive, got {limit}")
    if limit >= 1:
        if limit != int(limit):
            raise EvaluationError(f"{flag} {limit}: give an integer number of items or a fraction below 1")
        return int(limit)
    return limit


def parse_sweep(spec: str | Sequence[int] | None, max_patch: int, flag: str = "--sweep") -> list[int]:
    """``None``/``"all"`` -> 0..max_patch; ``"0,3,5"``, ``"0-14"``, ``"2-6,10"`` or a list -> those k (checked)."""
    if spec is None or spec == "all" or spec == "":
        return list(range(max_patch + 1))
    if not isinstance(spec, str):
        ks = [int(k) for k in spec]
    else:
        ks = []
        for part in filter(None, (p.strip() for p in spec.split(","))):
            try:
                a, sep, b = part.partition("-")
                a, b = int(a), int(b if sep else a)
                if b < a:
                    raise ValueError
                ks.extend(range(a, b + 1))
            except ValueError:
                raise EvaluationError(f"{flag} {spec!r}: expected 'all' or k values like 0,3,5 or 0-14 or "
                                      "2-6,10") from None
    bad = [k for k in ks if not 0 <= k <= max_patch]
    if bad:
        raise EvaluationError(f"{flag}: k values {bad} out of range; this student allows 0..{max_patch} "
                              f"({max_patch} = the teacher)")
    return sorted(set(ks))


def boomerang_points(teacher, student, ks: Iterable[int] | None = None, patch_first_k_layers: bool = False,
                     dtype: torch.dtype | str | None = None, include_endpoints: bool = True,
                     teacher_name: str | None = None, student_name: str | None = None,
                     curve: str | None = None) -> list[SweepPoint]:
    """Sweep points of boomerang distillation: the student, each patched size k, and the teacher.

    ``teacher``/``student``: loaded models (the student with a layer map: loaded from its folder or
    with ``model.boomerang_layer_map``); every point is assembled from them in memory (tensors
    shared). Without ``include_endpoints`` they may be folders instead: each size then reads only the
    tensors it needs. ``ks`` default: every k from 0 to ``max_patch``; k = ``max_patch`` is the teacher point
    (with ``include_endpoints``, student and teacher are added whatever ``ks`` says).
    Names: ``student``, ``last_k03`` / ``first_k03``, ``teacher``.
    """
    t_cfg = teacher.config if hasattr(teacher, "config") else load_config(teacher)
    layer_map = load_layer_map(student, adapter_for_config(t_cfg).num_layers(t_cfg))
    n_s, n_t, top = layer_map.num_student_layers, layer_map.num_teacher_layers, layer_map.max_patch
    ks = parse_sweep(ks, top, "ks")
    if include_endpoints and top not in ks:
        ks.append(top)  # the teacher is always a point
    order = order_name(patch_first_k_layers)
    base = {"method": "boomerang", "curve": curve or f"boomerang ({order})",
            "teacher": teacher_name or getattr(teacher, "name_or_path", None),
            "student": student_name or getattr(student, "name_or_path", None)}
    points: list[SweepPoint] = []
    if include_endpoints:
        points.append(SweepPoint("student", lambda: (student, load_tokenizer(teacher)), {
            **base, "role": "student", "order": None, "num_layers_to_patch": None, "replaced_blocks": [],
            "depth": n_s, "layers": [["student", j] for j in range(n_s)]}))
    for k in ks:
        if k == top and include_endpoints:
            points.append(SweepPoint("teacher", lambda: (teacher, load_tokenizer(teacher)), {
                **base, "role": "teacher", "order": None, "num_layers_to_patch": k,
                "replaced_blocks": list(range(n_s)), "depth": n_t, "layers": [["teacher", t] for t in range(n_t)]}))
            continue
        plan = layer_map.plan(k, patch_first_k_layers)

        def build(k=k):
            model, _ = build_intermediate_model(teacher, student, k, patch_first_k_layers, dtype=dtype)
            return model, load_tokenizer(teacher)

        points.append(SweepPoint(point_name(order, k), build, {
            **base, "role": "teacher" if k == top else "intermediate", "order": order, "num_layers_to_patch": k,
            "replaced_blocks": list(plan.replaced_blocks), "depth": plan.depth,
            "layers": [list(x) for x in plan.layers], "embeddings_from": plan.embeddings_from,
            "final_norm_from": plan.final_norm_from, "lm_head_from": plan.lm_head_from}))
    return points


def plan_points(plan: dict, teacher, student, curve: str = "searched", teacher_name: str | None = None,
                student_name: str | None = None) -> list[SweepPoint]:
    """Sweep points of a searched family (``patching.search``): one model per member of its frontier, named
    ``searched_p<parameters>_d<depth>``, each a member of one ``patching.resident.ResidentFamily`` of the loaded
    teacher and student (one dtype; tensors shared, nothing copied)."""
    family = ResidentFamily(teacher, student, plan)
    points = []
    for e in family.entries:
        def build(e=e):  # not kept by the family: the sweep frees it after its evaluation
            return family.model(e, keep=False), load_tokenizer(teacher)

        points.append(SweepPoint(f"searched_p{e['params']}_d{e['depth']:02d}", build, {
            "method": "searched", "curve": curve, "role": "intermediate", "order": "searched",
            "depth": e["depth"], "layers": e["layers"], "description": e["description"],
            "calibration_kl": e["calibration_kl"], "embeddings_from": e["embeddings_from"],
            "final_norm_from": e["final_norm_from"], "lm_head_from": e["lm_head_from"],
            "teacher": teacher_name, "student": student_name}))
    return points


def point_name(order: str, k: int) -> str:
    return f"{order.replace('-', '_')}{k:02d}"


# --------------------------------------------------------------------------- command line
def _task_data(items: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or []:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise TaskError(f"--task_data {item!r}: expected NAME=FILE")
        if name in out:
            raise TaskError(f"--task_data names {name} twice")
        out[name] = path
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m evaluate.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher_model_name_or_path", required=True)
    p.add_argument("--student_model_name_or_path", required=True,
                   help="student folder (holds student_config.json)")
    p.add_argument("--save_directory", required=True)
    p.add_argument("--num_layers_to_patch", type=int, default=None, help="k: evaluate this one size")
    p.add_argument("--sweep", nargs="?", const="all", default=None,
                   help="evaluate several sizes in one process (or split over torchrun's processes): 'all' (default "
                        "when given alone), '0,3,5', '0-14'; student and teacher are included unless --no_endpoints")
    p.add_argument("--no_endpoints", action="store_true",
                   help="with --sweep: only the listed k (k=max is then the teacher assembled like any size)")
    p.add_argument("--patch_first_k_layers", action="store_true")
    p.add_argument("--override_llama_patching", action="store_true",
                   help="use last-k for a Llama-family model (whose default is first-k)")
    p.add_argument("--tasks", default=None,
                   help="comma-separated lm-eval task names and local tasks (local_ppl:FILE, local_mc:FILE, "
                        "NAME=local_mc:FILE); default: the paper's 10 classification tasks")
    p.add_argument("--all_paper_tasks", action="store_true",
                   help="add the paper's other 4 tasks (wikitext, gsm8k_cot, ifeval, hendrycks_math)")
    p.add_argument("--task_data", action="append", default=None, metavar="NAME=FILE",
                   help="add a local task NAME from FILE (kind read from the file); repeatable")
    p.add_argument("--include_path", default=None, help="folder(s) of task YAMLs of your own (comma-separated)")
    p.add_argument("--max_doc_words", type=int, default=None,
                   help="cut each document of a local perplexity corpus to its first N words")
    p.add_argument("--limit", type=float, default=None, help="items per task (an integer), or a fraction < 1")
    p.add_argument("--num_fewshot", type=int, default=None)
    p.add_argument("--eval_batch_size", default="1", help="an integer or 'auto'")
    p.add_argument("--max_batch_size", type=int, default=64)
    p.add_argument("--device", default=None, help="cuda, cpu, cuda:1, ... (default: cuda when available)")
    p.add_argument("--dtype", default="bfloat16", help="float32, bfloat16, float16 or auto")
    p.add_argument("--max_length", type=int, default=None, help="context length for lm-eval (default: the model's)")
    p.add_argument("--bootstrap_iters", type=int, default=1000)
    p.add_argument("--curve", default=None, help="legend label of this run's curve in the plots")
    p.add_argument("--plan", default=None,
                   help="with --sweep: evaluate the ladder of a search result (python -m patching.search) instead of "
                        "a fixed order: search.json or its folder")
    p.add_argument("--heldout_kl", default=None, metavar="FILE",
                   help="also score every model against the teacher on this text: task heldout_kl, metrics kl (mean "
                        "KL(teacher || model) per token) and token_perplexity, per-document sums kept for bootstraps")
    p.add_argument("--heldout_docs", type=int, default=25, help="documents of --heldout_kl (the first N)")
    p.add_argument("--heldout_max_tokens", type=int, default=512, help="tokens of each --heldout_kl document")
    p.add_argument("--overwrite", action="store_true", help="discard earlier results in --save_directory")
    p.add_argument("--no_plots", action="store_true")
    p.add_argument("--verbose", action="store_true")
    return p


def main(argv=None) -> list[dict]:
    args = parse_with_config(build_parser(), argv)
    setup_logging(args.verbose)
    try:  # everything that can be wrong is checked before any weights load
        if (args.num_layers_to_patch is None) == (args.sweep is None):
            raise EvaluationError("give --num_layers_to_patch K (one size) or --sweep [SPEC] (several sizes)")
        if args.plan is not None and args.sweep is None:
            raise EvaluationError("--plan evaluates a searched ladder: give it with --sweep")
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and args.sweep is None:
            raise EvaluationError("several processes (torchrun) split the sizes of a --sweep among them: give "
                                  "--sweep, or run --num_layers_to_patch in one process")
        rank, world, device = sweep_processes(args.device)
        limit = parse_limit(args.limit)
        dtype = dtype_from_name(args.dtype)
        batch_size = _parse_batch_size(args.eval_batch_size)
        task_names = args.tasks if args.tasks is not None else ",".join(PAPER_TASKS)
        if args.all_paper_tasks:
            task_names = ",".join([task_names, *PAPER_EXTRA_TASKS])
        teacher_path = resolve_model_path(args.teacher_model_name_or_path)
        student_path = resolve_model_path(args.student_model_name_or_path)
        t_cfg = load_config(teacher_path)
        adapter = adapter_for_config(t_cfg)
        layer_map = load_layer_map(student_path, adapter.num_layers(t_cfg))
        first_k = use_first_k(t_cfg, args.patch_first_k_layers, args.override_llama_patching)
        if args.sweep is not None:
            ks = parse_sweep(args.sweep, layer_map.max_patch)
        else:
            ks = parse_sweep([args.num_layers_to_patch], layer_map.max_patch, "--num_layers_to_patch")
        plan = load_plan(args.plan) if args.plan is not None else None
        if plan is not None and list(layer_map.copied_teacher_layers) != plan.get("copied_teacher_layers"):
            raise EvaluationError(f"--plan {args.plan} was searched for another student (copied layers "
                                  f"{plan.get('copied_teacher_layers')})")
        ref_desc = None
        if args.heldout_kl is not None:  # described now, so that a rerun with other settings fails before loading
            if not os.path.isfile(args.heldout_kl):
                raise EvaluationError(f"--heldout_kl {args.heldout_kl}: no such file")
            ref_desc = {"task": HELDOUT_TASK, "data_file": os.path.abspath(args.heldout_kl),
                        "documents": args.heldout_docs, "max_tokens": args.heldout_max_tokens}
        task_data = _task_data(args.task_data)
        taskset = _rank0_first(lambda first: prepare_sweep_directory(  # only rank 0 may discard old results
            args.save_directory, task_names, limit=limit, num_fewshot=args.num_fewshot,
            include_path=args.include_path, task_data=task_data, max_doc_words=args.max_doc_words,
            overwrite=args.overwrite and first, reference=ref_desc), rank, world)
    except (BoomerangError, ValueError) as e:  # BoomerangError: every library and stage error
        fail(str(e))
    log.info("order %s (%s teacher), sizes k=%s, tasks %s", order_name(first_k), adapter.name, ks, taskset.names)
    names = {"teacher_name": args.teacher_model_name_or_path, "student_name": args.student_model_name_or_path}
    teacher = None
    if args.sweep is None:  # the paper's one-size command: only the tensors this size needs, read from the folders
        points = boomerang_points(teacher_path, student_path, ks, first_k, dtype, include_endpoints=False,
                                  curve=args.curve, **names)
    else:
        teacher, student = load_model(teacher_path, dtype=dtype), load_model(student_path, dtype=dtype)
        student.boomerang_layer_map = layer_map
        if plan is not None:
            points = plan_points(plan, teacher, student, curve=args.curve or "searched", **names)
        else:
            points = boomerang_points(teacher, student, ks, first_k, dtype, include_endpoints=not args.no_endpoints,
                                      curve=args.curve, **names)
    reference = None
    if args.heldout_kl is not None:
        reference = HeldoutReference(teacher if teacher is not None else load_model(teacher_path, dtype=dtype),
                                     load_tokenizer(teacher_path), args.heldout_kl, args.heldout_docs,
                                     args.heldout_max_tokens)
    records = run_sweep(points, args.save_directory, taskset, limit=limit, num_fewshot=args.num_fewshot,
                        batch_size=batch_size, max_batch_size=args.max_batch_size, device=device,
                        max_doc_words=args.max_doc_words, bootstrap_iters=args.bootstrap_iters,
                        plots=not args.no_plots, max_length=args.max_length, reference=reference, rank=rank,
                        world_size=world, common_metadata={"teacher": args.teacher_model_name_or_path,
                                                           "student": args.student_model_name_or_path,
                                                           "dtype": args.dtype})
    if world > 1:
        dist.destroy_process_group()
    return records


if __name__ == "__main__":
    main()
