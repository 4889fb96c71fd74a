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
import gc
import json
import logging
import os
import platform
import shutil
import subprocess
import time
import traceback
from datetime import timedelta
from importlib.metadata import version
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.distributed as dist

from boomerang.assemble import ModelSource
from boomerang.cli import fail, parse_with_config, setup_logging
from boomerang.errors import BoomerangError
from boomerang.families import (FIRST_K, adapter_for, adapter_for_config, count_parameters, dtype_from_name, order_name,
                                patch_order)
from boomerang.io import atomic_write_json
from boomerang.models import load_config, load_model, load_tokenizer, resolve_model_path
from evaluate import results as results_mod
from evaluate.heldout import HeldoutReference
from evaluate.plot import plot_records
from evaluate.tasks import PAPER_EXTRA_TASKS, PAPER_TASKS, TaskError, TaskSet, resolve_tasks
from patching.patch import assemble_plan, build_intermediate_model, load_layer_map, load_plan, plan_of

log = logging.getLogger("boomerang.evaluate")

RESULTS_DIR = "results"
FAILURES_DIR = "failures"
TASKS_DIR = "tasks"
SWEEP_FILE = "sweep.json"


class EvaluationError(BoomerangError):
    pass


# --------------------------------------------------------------------------- one model
def _token_counting_lm_class():
    """HFLM whose rolling log-likelihoods also carry the number of tokens scored (token perplexity)."""
    from lm_eval.models.huggingface import HFLM  # lazy: lm_eval (heavy) loads only when a model is evaluated

    class _LogLikelihood(float):
        num_tokens: int = 0

    class TokenCountingHFLM(HFLM):
        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            out = super().loglikelihood_rolling(requests, disable_tqdm=disable_tqdm)
            wrapped = []
            for req, ll in zip(requests, out):
                v = _LogLikelihood(ll)
                v.num_tokens = len(self.tok_encode(req.args[0]))
                wrapped.append(v)
            return wrapped

    return TokenCountingHFLM


def _parse_batch_size(bs):
    if bs is None:
        return 1
    if isinstance(bs, int):
        return bs
    s = str(bs)
    if s == "auto" or s.startswith("auto:"):
        return s
    try:
        return int(s)
    except ValueError:
        raise EvaluationError(f"batch size must be a positive integer or 'auto', got {bs!r}") from None


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _parse_lm_eval_results(out: dict, names: Sequence[str]) -> dict:
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
            v = None if v in ("N/A", None) else float(v)
            entry = vals.setdefault(label, {"value": None, "stderr": None})
            entry["stderr" if is_stderr else "value"] = v
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
    device = device or default_device()
    model = model.to(device)
    model.eval()
    lm_cls = _token_counting_lm_class()
    kwargs = dict(pretrained=model, tokenizer=tokenizer, batch_size=_parse_batch_size(batch_size),
                  max_batch_size=max_batch_size)
    if max_length:
        kwargs["max_length"] = max_length
    lm = lm_cls(**kwargs)
    t0 = time.time()
    # lm-eval ends every run with torch's environment report (a dozen subprocesses, seconds each
    # time): skipped, the result files record versions themselves.
    saved_env_info = evaluator.add_env_info
    evaluator.add_env_info = lambda results: None
    # Under torchrun (a sweep split over processes) lm-eval returns results only where LOCAL_RANK is 0; each process
    # evaluates its own model alone here, so it is told it is process 0.
    saved_local_rank = os.environ.get("LOCAL_RANK")
    os.environ["LOCAL_RANK"] = "0"
    try:
        out = evaluator.simple_evaluate(
            model=lm, tasks=list(taskset.names), task_manager=taskset.task_manager, limit=limit,
            num_fewshot=num_fewshot, bootstrap_iters=bootstrap_iters, log_samples=log_samples,
            random_seed=random_seed, numpy_random_seed=random_seed, torch_random_seed=random_seed,
            fewshot_random_seed=random_seed,
        )
    finally:
        evaluator.add_env_info = saved_env_info
        if saved_local_rank is None:
            os.environ.pop("LOCAL_RANK", None)
        else:
            os.environ["LOCAL_RANK"] = saved_local_rank
    elapsed = time.time() - t0
    if out is None:
        raise EvaluationError("lm-eval returned no results")
    n_samples = {t: (v.get("effective", v.get("original")) if isinstance(v, dict) else v)
                 for t, v in out.get("n-samples", {}).items()}
    hib = {}
    for task, d in out.get("higher_is_better", {}).items():
        hib[task] = {m: bool(b) if b is not None else None for m, b in d.items()}
    result = {
        "metrics": _parse_lm_eval_results(out, taskset.names),
        "n_samples": n_samples,
        "tasks": list(taskset.names),
        "higher_is_better": hib,
        "lm_eval_version": _version("lm_eval"),
        "eval_time_s": round(elapsed, 3),
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
    """

    name: str
    build: Callable[[], tuple[Any, Any]]
    metadata: dict = field(default_factory=dict)


def _version(pkg: str) -> str | None:
    try:
        return version(pkg)
    except Exception:
        return None


def versions() -> dict:
    v = {"python": platform.python_version(), "torch": torch.__version__, "transformers": _version("transformers"),
         "lm_eval": _version("lm_eval"), "datasets": _version("datasets")}
    try:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        v["boomerang_commit"] = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True,
                                               text=True, timeout=5).stdout.strip() or None
    except Exception:
        v["boomerang_commit"] = None
    return v


def _check_name(name: str) -> None:
    if not name or any(c in name for c in "/\\ \t\n") or name.startswith("."):
        raise EvaluationError(f"sweep point name {name!r} must be a non-empty file-safe name (no spaces or slashes)")


def _settings(taskset: TaskSet, limit, num_fewshot, max_doc_words, reference: dict | None = None) -> dict:
    out = {"tasks": taskset.describe(), "limit": limit, "num_fewshot": num_fewshot, "max_doc_words": max_doc_words}
    if reference is not None:
        out["reference"] = reference
    return out


def _no_tasks(tasks) -> bool:
    return tasks is None or tasks == "" or (isinstance(tasks, (list, tuple)) and not tasks)


def prepare_sweep_directory(save_directory: str, tasks, *, limit=None, num_fewshot=None, include_path=None,
                            task_data=None, max_doc_words=None, overwrite: bool = False,
                            reference: dict | None = None) -> TaskSet:
    """Resolve the tasks into ``save_directory/tasks`` and check that earlier results there were made
    with the same settings (tasks, limit, few-shot, document cut, KL reference); fails before any model
    loads. No tasks (None or empty) is allowed when a ``reference`` describes the held-out scoring."""
    os.makedirs(save_directory, exist_ok=True)
    if _no_tasks(tasks) and not task_data:
        if reference is None:
            raise EvaluationError("no tasks given, and no held-out reference to score against: nothing to evaluate")
        taskset = TaskSet([], None)
    else:
        taskset = tasks if isinstance(tasks, TaskSet) else resolve_tasks(
            tasks, task_data, include_path, work_dir=os.path.join(save_directory, TASKS_DIR),
            max_doc_words=max_doc_words)
    settings = _settings(taskset, limit, num_fewshot, max_doc_words, reference)
    path = os.path.join(save_directory, SWEEP_FILE)
    if os.path.isfile(path):
        with open(path) as f:
            old = json.load(f)
        if old.get("settings") != json.loads(json.dumps(settings)):
            if not overwrite:
                raise EvaluationError(
                    f"{save_directory} holds results made with other settings ({_diff(old.get('settings'), settings)}); "
                    "use another --save_directory, or --overwrite to discard them"
                )
    if overwrite:
        for sub in (RESULTS_DIR, FAILURES_DIR):
            shutil.rmtree(os.path.join(save_directory, sub), ignore_errors=True)

    atomic_write_json(path, {"settings": settings})
    return taskset


def _diff(old, new) -> str:
    new = json.loads(json.dumps(new))
    if not isinstance(old, dict):
        return "unreadable sweep.json"
    keys = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    return "; ".join(f"{k}: {old.get(k)!r} then, {new.get(k)!r} now" for k in keys)


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


def _group() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _rank0_first(fn: Callable[[bool], Any], rank: int, world_size: int):
    """``fn(True)`` on rank 0, then ``fn(False)`` on the other ranks (e.g. only rank 0 may delete old results)."""
    if world_size <= 1:
        return fn(True)

    if rank == 0:
        out = fn(True)
        dist.barrier()
        return out
    dist.barrier()
    return fn(False)


def split_points(names: Sequence[str], weights: Sequence[float], world_size: int) -> list[list[str]]:
    """Deterministic split of sweep points over ``world_size`` processes: heaviest first (weight = depth), each to
    the process with the least weight so far (the lowest rank on ties); each list kept in sweep order."""
    order = sorted(range(len(names)), key=lambda i: (-weights[i], i))
    load = [0.0] * world_size
    owner = {}
    for i in order:
        r = min(range(world_size), key=lambda r: (load[r], r))
        owner[i] = r
        load[r] += weights[i]
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
              reference=None, rank: int | None = None, world_size: int | None = None) -> list[dict]:
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

    Several processes (``rank``/``world_size``, default: the initialized torch.distributed group, as
    ``sweep_processes`` sets up under torchrun): every process holds the same points; the pending ones are split
    among them (``split_points``), each process evaluates its share on its own ``device`` and writes each result as
    it finishes; after a barrier every process returns all results and rank 0 writes the summary. A process that
    dies loses only its unfinished points: the rerun evaluates what has no result file.
    """


    points = list(points)
    for p in points:
        _check_name(p.name)
    dup = sorted({p.name for p in points if sum(q.name == p.name for q in points) > 1})
    if dup:
        raise EvaluationError(f"sweep point names must be unique, repeated: {dup}")
    if rank is None or world_size is None:
        rank, world_size = _group()
    ref_desc = reference.describe() if reference is not None else None
    taskset = _rank0_first(lambda first: prepare_sweep_directory(
        save_directory, tasks, limit=limit, num_fewshot=num_fewshot, include_path=include_path, task_data=task_data,
        max_doc_words=max_doc_words, overwrite=overwrite and first, reference=ref_desc), rank, world_size)
    settings = _settings(taskset, limit, num_fewshot, max_doc_words, ref_desc)
    device = device or default_device()
    vers = versions()
    mine = _my_points(points, save_directory, rank, world_size)
    done: list[dict] = []
    for i, point in enumerate(points, 1):
        path = result_path(save_directory, point.name)
        fail_path = os.path.join(save_directory, FAILURES_DIR, f"{point.name}.json")
        if mine is not None and point.name not in mine:
            continue  # another process's, or finished before: read after the barrier
        if os.path.isfile(path):
            with open(path) as f:
                done.append(json.load(f))
            log.info("[%d/%d] %s: already done, skipped", i, len(points), point.name)
            continue
        log.info("[%d/%d] %s: building", i, len(points), point.name)
        meta = {**(common_metadata or {}), **point.metadata}
        t0 = time.time()
        model = tokenizer = None
        try:
            model, tokenizer = point.build()
            t_build = time.time() - t0
            counts = count_parameters(model)
            depth = meta.get("depth")
            if depth is None:
                depth = adapter_for(model).num_layers(model.config)
            ev = {"metrics": {}, "n_samples": {}, "higher_is_better": {}, "eval_time_s": 0.0}
            if taskset.names:
                ev = evaluate_model(model, tokenizer, taskset, limit=limit, num_fewshot=num_fewshot,
                                    batch_size=batch_size, max_batch_size=max_batch_size, device=device,
                                    bootstrap_iters=bootstrap_iters, max_length=max_length)
            heldout = None
            if reference is not None:
                t1 = time.time()
                heldout = reference.score(model.to(device))
                ev["metrics"][reference.task_name] = {
                    "kl": {"value": heldout.kl_per_token, "stderr": None},
                    "token_perplexity": {"value": heldout.token_perplexity, "stderr": None}}
                ev["higher_is_better"][reference.task_name] = {"kl": False, "token_perplexity": False}
                ev["eval_time_s"] = round(ev["eval_time_s"] + time.time() - t1, 3)
        except Exception as e:  # recorded; the other points still run
            log.error("[%d/%d] %s failed: %s", i, len(points), point.name, e)
            atomic_write_json(fail_path, {"name": point.name, "metadata": meta, "error": f"{type(e).__name__}: {e}",
                                          "traceback": traceback.format_exc(), "finished_at": _now()})
            continue
        finally:
            del model, tokenizer
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        record = {
            "name": point.name,
            "method": meta.get("method", "model"),
            "curve": meta.get("curve") or meta.get("method", "model"),
            "role": meta.get("role", "intermediate"),
            **{k: v for k, v in meta.items() if k not in ("method", "curve", "role")},
            "depth": int(depth),
            "parameters": counts,
            "metrics": ev["metrics"],
            "n_samples": ev["n_samples"],
            "higher_is_better": ev["higher_is_better"],
            "settings": settings,
            "batch_size": str(batch_size),
            "device": str(device),
            "wall_time_s": {"build": round(t_build, 3), "evaluate": ev["eval_time_s"],
                            "total": round(time.time() - t0, 3)},
            "versions": vers,
            "finished_at": _now(),
        }
        if heldout is not None:
            record["heldout_scores"] = heldout.to_dict()
        atomic_write_json(path, record)
        if os.path.isfile(fail_path):
            os.unlink(fail_path)
        done.append(record)
        log.info("[%d/%d] %s: done in %.1f s (%s)", i, len(points), point.name, record["wall_time_s"]["total"],
                 results_mod.headline(record))
    if world_size > 1:
        dist.barrier()  # every process's points are finished (or failed)
        done = []
        for point in points:
            if os.path.isfile(result_path(save_directory, point.name)):
                with open(result_path(save_directory, point.name)) as f:
                    done.append(json.load(f))
    if rank == 0:
        results_mod.write_summary(save_directory)
        records = results_mod.load_results(save_directory)
        if plots and records:
            plot_records(records, os.path.join(save_directory, "plots"))
    return done


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


def parse_sweep(spec: str | Sequence[int] | None, max_patch: int) -> list[int]:
    """``None``/``"all"`` -> 0..max_patch; ``"0,3,5"``, ``"0-14"``, ``"2-6,10"`` -> those k (checked)."""
    if spec is None or spec == "all" or spec == "":
        return list(range(max_patch + 1))
    if not isinstance(spec, str):
        ks = [int(k) for k in spec]
    else:
        ks = []
        for part in spec.split(","):
            part = part.strip()
            if not part:
                continue
            try:
                if "-" in part:
                    a, b = part.split("-", 1)
                    a, b = int(a), int(b)
                    if b < a:
                        raise ValueError
                    ks.extend(range(a, b + 1))
                else:
                    ks.append(int(part))
            except ValueError:
                raise EvaluationError(f"--sweep {spec!r}: expected 'all' or k values like 0,3,5 or 0-14 or 2-6,10") from None
    bad = [k for k in ks if not 0 <= k <= max_patch]
    if bad:
        raise EvaluationError(f"--sweep: k values {bad} out of range; this student allows 0..{max_patch} "
                              f"({max_patch} = the teacher)")
    return sorted(set(ks))


def boomerang_points(teacher, student, ks: Iterable[int] | None = None, patch_first_k_layers: bool = False,
                     dtype: torch.dtype | str | None = None, include_endpoints: bool = True,
                     teacher_name: str | None = None, student_name: str | None = None,
                     curve: str | None = None) -> list[SweepPoint]:
    """Sweep points of boomerang distillation: the student, each patched size k, and the teacher.

    ``teacher``/``student``: loaded models (the student with a layer map: loaded from its folder or
    with ``model.boomerang_layer_map``); every point is assembled from them in memory (tensors
    shared). ``ks`` default: every k from 0 to ``max_patch``; k = ``max_patch`` is the teacher point
    (with ``include_endpoints``, student and teacher are added whatever ``ks`` says).
    Names: ``student``, ``last_k03`` / ``first_k03``, ``teacher``.
    """


    adapter = adapter_for(teacher)
    layer_map = load_layer_map(student, adapter.num_layers(teacher.config))
    order = order_name(patch_first_k_layers)
    ks = list(range(layer_map.max_patch + 1)) if ks is None else sorted(set(int(k) for k in ks))
    bad = [k for k in ks if not 0 <= k <= layer_map.max_patch]
    if bad:
        raise EvaluationError(f"k values {bad} out of range 0..{layer_map.max_patch} for this student")
    if include_endpoints and layer_map.max_patch not in ks:
        ks.append(layer_map.max_patch)  # the teacher is always a point
    tname = teacher_name or getattr(teacher, "name_or_path", None)
    sname = student_name or getattr(student, "name_or_path", None)
    base = {"method": "boomerang", "curve": curve or f"boomerang ({order})", "teacher": tname, "student": sname}
    tok_cache: dict[str, Any] = {}

    def tokenizer():
        if "tok" not in tok_cache:
            tok_cache["tok"] = load_tokenizer(teacher)
        return tok_cache["tok"]

    points: list[SweepPoint] = []
    if include_endpoints:
        points.append(SweepPoint("student", lambda: (student, tokenizer()), {
            **base, "role": "student", "order": None, "num_layers_to_patch": None, "replaced_blocks": [],
            "depth": layer_map.num_student_layers,
            "layers": [["student", j] for j in range(layer_map.num_student_layers)],
        }))
    for k in ks:
        if k == layer_map.max_patch and include_endpoints:
            points.append(SweepPoint("teacher", lambda: (teacher, tokenizer()), {
                **base, "role": "teacher", "order": None, "num_layers_to_patch": k,
                "replaced_blocks": list(range(layer_map.num_student_layers)),
                "depth": layer_map.num_teacher_layers,
                "layers": [["teacher", t] for t in range(layer_map.num_teacher_layers)],
            }))
            continue
        plan = layer_map.plan(k, patch_first_k_layers)
        role = "teacher" if k == layer_map.max_patch else "intermediate"

        def build(k=k):
            model, _ = build_intermediate_model(teacher, student, k, patch_first_k_layers, dtype=dtype)
            return model, tokenizer()

        points.append(SweepPoint(point_name(order, k), build, {
            **base, "role": role, "order": order, "num_layers_to_patch": k,
            "replaced_blocks": list(plan.replaced_blocks), "depth": plan.depth,
            "layers": [list(x) for x in plan.layers],
            "embeddings_from": plan.embeddings_from, "final_norm_from": plan.final_norm_from,
            "lm_head_from": plan.lm_head_from,
        }))
    return points


def plan_points(plan: dict, teacher, student, dtype=None, curve: str = "searched", teacher_name: str | None = None,
                student_name: str | None = None) -> list[SweepPoint]:
    """Sweep points of a searched ladder (``patching.search``): one model per depth, named ``searched_dNN``,
    each assembled from the loaded teacher and student (tensors shared)."""

    t_src, s_src = ModelSource(teacher), ModelSource(student)
    tok_cache: dict[str, Any] = {}

    def tokenizer():
        if "tok" not in tok_cache:
            tok_cache["tok"] = load_tokenizer(teacher)
        return tok_cache["tok"]

    points = []
    for e in plan["ladder"]:
        def build(e=e):
            return assemble_plan(t_src, s_src, plan_of(e), dtype), tokenizer()

        points.append(SweepPoint(f"searched_d{e['depth']:02d}", build, {
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
                   help="evaluate several sizes in one process (or split over torchrun's processes): 'all' (default when "
                        "given alone), '0,3,5', '0-14'; "
                        "student and teacher are included unless --no_endpoints")
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
    if (args.num_layers_to_patch is None) == (args.sweep is None):
        fail("give --num_layers_to_patch K (one size) or --sweep [SPEC] (several sizes)")
    if args.plan is not None and args.sweep is None:
        fail("--plan evaluates a searched ladder: give it with --sweep")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and args.sweep is None:
        fail("several processes (torchrun) split the sizes of a --sweep among them: give --sweep, or run "
             "--num_layers_to_patch in one process")
    try:
        rank, world, device = sweep_processes(args.device)
    except EvaluationError as e:
        fail(str(e))
    try:
        limit = parse_limit(args.limit)
    except EvaluationError as e:
        fail(str(e))
    # Everything that can be wrong is checked before any weights load.
    try:
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
        order = order_name(first_k)
        ks = parse_sweep(args.sweep, layer_map.max_patch) if args.sweep is not None else [args.num_layers_to_patch]
        if args.sweep is None and not 0 <= args.num_layers_to_patch <= layer_map.max_patch:
            raise EvaluationError(f"--num_layers_to_patch must be in 0..{layer_map.max_patch} for this student "
                                  f"({layer_map.max_patch} multi-layer blocks), got {args.num_layers_to_patch}")
        plan = None
        if args.plan is not None:
            plan = load_plan(args.plan)
            if list(layer_map.copied_teacher_layers) != plan.get("copied_teacher_layers"):
                raise EvaluationError(f"--plan {args.plan} was searched for another student (copied layers "
                                      f"{plan.get('copied_teacher_layers')})")
        if args.heldout_kl is not None and not os.path.isfile(args.heldout_kl):
            raise EvaluationError(f"--heldout_kl {args.heldout_kl}: no such file")
        ref_desc = None
        if args.heldout_kl is not None:  # described now, so that a rerun with other settings fails before loading
            ref_desc = {"task": "heldout_kl", "data_file": os.path.abspath(args.heldout_kl),
                        "documents": args.heldout_docs, "max_tokens": args.heldout_max_tokens}
        task_data = _task_data(args.task_data)
        taskset = _rank0_first(lambda first: prepare_sweep_directory(  # only rank 0 may discard old results
            args.save_directory, task_names, limit=limit, num_fewshot=args.num_fewshot,
            include_path=args.include_path, task_data=task_data, max_doc_words=args.max_doc_words,
            overwrite=args.overwrite and first, reference=ref_desc), rank, world)
    except (BoomerangError, ValueError) as e:  # BoomerangError: every library and stage error
        fail(str(e))
    log.info("order %s (%s teacher), sizes k=%s, tasks %s", order, adapter.name, ks, taskset.names)
    common = {"teacher": args.teacher_model_name_or_path, "student": args.student_model_name_or_path,
              "dtype": args.dtype}
    reference = None
    if args.sweep is not None:
        teacher = load_model(teacher_path, dtype=dtype)
        student = load_model(student_path, dtype=dtype)
        student.boomerang_layer_map = layer_map
        if plan is not None:
            points = plan_points(plan, teacher, student, dtype, curve=args.curve or "searched",
                                 teacher_name=args.teacher_model_name_or_path,
                                 student_name=args.student_model_name_or_path)
        else:
            points = boomerang_points(teacher, student, ks, first_k, dtype=dtype,
                                      include_endpoints=not args.no_endpoints,
                                      teacher_name=args.teacher_model_name_or_path,
                                      student_name=args.student_model_name_or_path, curve=args.curve)
    else:
        # The paper's one-size command: read only the tensors this size needs, straight from the folders.
        k = args.num_layers_to_patch

        def build():
            return build_intermediate_model(teacher_path, student_path, k, first_k, dtype=dtype)

        plan = layer_map.plan(k, first_k)
        points = [SweepPoint(point_name(order, k), build, {
            "method": "boomerang", "curve": args.curve or f"boomerang ({order})",
            "role": "teacher" if k == layer_map.max_patch else "intermediate", "order": order,
            "num_layers_to_patch": k, "replaced_blocks": list(plan.replaced_blocks), "depth": plan.depth,
            "layers": [list(x) for x in plan.layers], "embeddings_from": plan.embeddings_from,
            "final_norm_from": plan.final_norm_from, "lm_head_from": plan.lm_head_from})]
    if args.heldout_kl is not None:
        t_ref = teacher if args.sweep is not None else load_model(teacher_path, dtype=dtype)
        reference = HeldoutReference(t_ref, load_tokenizer(teacher_path), args.heldout_kl, args.heldout_docs,
                                     args.heldout_max_tokens)
    records = run_sweep(points, args.save_directory, taskset, limit=limit, num_fewshot=args.num_fewshot,
                        batch_size=batch_size, max_batch_size=args.max_batch_size, device=device,
                        max_doc_words=args.max_doc_words, bootstrap_iters=args.bootstrap_iters,
                        plots=not args.no_plots, common_metadata=common, max_length=args.max_length,
                        reference=reference, rank=rank, world_size=world)
    if world > 1:
        dist.destroy_process_group()
    return records


if __name__ == "__main__":
    main()
