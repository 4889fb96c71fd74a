"""Task names -> lm-eval tasks, checked before any model loads; local tasks generated from data files.

Task names accepted by ``resolve_tasks`` (and ``--tasks``):
  * any lm-evaluation-harness task, group or tag (``arc_easy``, ``mmlu``, ...), or a task of one's
    own in an ``--include_path`` folder;
  * ``local_ppl:FILE`` -- perplexity of a local corpus: a ``.jsonl`` file with a ``text`` field per
    line, or a ``.txt`` file (one document per blank-line-separated paragraph);
  * ``local_mc:FILE`` -- multiple choice from a ``.jsonl`` file of ``{"query", "choices", "gold"}``;
  * ``NAME=local_ppl:FILE`` / ``NAME=local_mc:FILE`` -- the same under a name of one's choosing.
``task_data={"NAME": FILE}`` (``--task_data NAME=FILE``) adds a local task, its kind read from the file.

A local task is a small YAML file written at run time into a work folder; it ``include``s the
template beside this file (``local_ppl.yaml`` / ``local_mc.yaml``) and names the data file, so
every task stays a declarative lm-eval config and the run folder records exactly what ran.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from importlib.metadata import version

from boomerang.errors import BoomerangError
from boomerang.io import atomic_write_text
from boomerang.models import cache_root
from boomerang.text import read_jsonl, read_local_documents

TEMPLATE_DIR = os.path.dirname(os.path.abspath(__file__))
LOCAL_KINDS = ("local_ppl", "local_mc")

# The paper's ten classification tasks (the default), and the other four of its fourteen.
PAPER_TASKS = ("arc_easy", "arc_challenge", "boolq", "hellaswag", "openbookqa", "piqa", "winogrande", "race",
               "mmlu", "rte")
PAPER_EXTRA_TASKS = ("wikitext", "gsm8k_cot", "ifeval", "hendrycks_math")


class TaskError(BoomerangError):
    """A task that cannot run: unknown name, missing or malformed data file."""


@dataclass
class LocalTask:
    name: str
    kind: str  # local_ppl | local_mc
    data_file: str  # the file the user gave (absolute)
    num_docs: int
    yaml_path: str = ""
    data_used: str = ""  # the file the task reads (a truncated/converted copy, or data_file)


@dataclass
class TaskSet:
    """Resolved tasks: what to pass to lm-eval, and what they are."""

    names: list[str]  # task names as requested (local ones under their generated names)
    task_manager: object  # lm_eval.tasks.TaskManager
    local: dict[str, LocalTask] = field(default_factory=dict)
    work_dir: str = ""
    include_path: list[str] = field(default_factory=list)

    def describe(self) -> dict:
        """JSON-able description (for result files and for checking a rerun uses the same tasks)."""
        local = {n: {"kind": t.kind, "data_file": t.data_file, "num_docs": t.num_docs} for n, t in self.local.items()}
        return {"tasks": list(self.names), "local": local}


_SANITIZE = re.compile(r"[^A-Za-z0-9_]+")


def _default_name(kind: str, path: str) -> str:
    stem = os.path.splitext(os.path.basename(path))[0]
    return f"{kind}_{_SANITIZE.sub('_', stem).strip('_') or 'data'}"


def _read_jsonl(path: str) -> list[dict]:
    rows = [obj for _, obj in read_jsonl(path)]  # a DataError goes up as it is (a BoomerangError)
    if not rows:
        raise TaskError(f"{path} holds no records")
    return rows


def infer_kind(path: str) -> str:
    """``local_mc`` for a jsonl of query/choices/gold, ``local_ppl`` for text (jsonl ``text`` or .txt)."""
    if not path.endswith(".jsonl") and not path.endswith(".json"):
        return "local_ppl"
    with open(path, encoding="utf-8") as f:
        first = next((line for line in f if line.strip()), "")
    try:
        obj = json.loads(first)
    except json.JSONDecodeError:
        raise TaskError(f"{path}: the first line is not valid JSON") from None
    if isinstance(obj, dict) and {"query", "choices", "gold"} <= set(obj):
        return "local_mc"
    if isinstance(obj, dict) and "text" in obj:
        return "local_ppl"
    keys = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
    raise TaskError(f"{path}: cannot tell the task kind from its records (keys {keys}); a perplexity corpus needs a "
                    "'text' field, a multiple-choice file 'query', 'choices' and 'gold'")


def _check_mc(path: str, rows: list[dict]) -> None:
    for i, r in enumerate(rows, 1):
        missing = [k for k in ("query", "choices", "gold") if k not in r]
        if missing:
            raise TaskError(f"{path}, record {i}: missing {missing}; each line needs query, choices and gold")
        if not isinstance(r["choices"], list) or len(r["choices"]) < 2:
            raise TaskError(f"{path}, record {i}: 'choices' must be a list of at least two strings")
        if not isinstance(r["gold"], int) or not 0 <= r["gold"] < len(r["choices"]):
            raise TaskError(f"{path}, record {i}: 'gold' must be an index into choices, got {r['gold']!r}")


def _prepare_local(name: str, kind: str, path: str, work_dir: str, max_doc_words: int | None) -> LocalTask:
    src = os.path.abspath(os.path.expanduser(path))
    if not os.path.isfile(src):
        raise TaskError(f"data file {path} of task {name} ({kind}) does not exist (resolved to {src})")
    data_used = src
    if kind == "local_mc":
        rows = _read_jsonl(src)
        _check_mc(src, rows)
        num = len(rows)
    else:
        if src.endswith((".jsonl", ".json")):
            rows = _read_jsonl(src)
            bad = next((i for i, r in enumerate(rows, 1) if not isinstance(r.get("text"), str)), None)
            if bad:
                raise TaskError(f"{src}, record {bad}: a perplexity corpus needs a string 'text' field on every line")
            docs = [r["text"] for r in rows]
        else:
            docs = read_local_documents(src, flag="task data")  # paragraphs, read as every command reads text
            rows = None
        num = len(docs)
        if max_doc_words or rows is None:
            # A copy the task reads: text files become jsonl; long documents are cut to their first words.
            if max_doc_words:
                docs = [" ".join(d.split()[:max_doc_words]) for d in docs]
            suffix = f".first{max_doc_words}words" if max_doc_words else ""
            data_used = os.path.join(work_dir, f"{name}{suffix}.jsonl")
            atomic_write_text(data_used, "".join(json.dumps({"text": d}) + "\n" for d in docs))
    return LocalTask(name, kind, src, num, data_used=data_used)


def _write_task_yaml(task: LocalTask, work_dir: str) -> str:
    template = os.path.join(TEMPLATE_DIR, f"{task.kind}.yaml")
    text = (f"# Generated by evaluate.evaluate from {task.data_file}\ninclude: {json.dumps(template)}\n"
            f"task: {task.name}\ndataset_kwargs:\n  data_files:\n    test: {json.dumps(task.data_used)}\n")
    path = os.path.join(work_dir, f"{task.name}.yaml")
    atomic_write_text(path, text)
    return path


def parse_task_list(tasks) -> list[str]:
    """``"a,b"`` or ``["a", "b,c"]`` -> ``["a", "b", "c"]`` (a local spec keeps its path whole)."""
    items = [] if tasks is None else [tasks] if isinstance(tasks, str) else tasks
    return [part.strip() for item in items for part in str(item).split(",") if part.strip()]


def parse_local_spec(spec: str) -> tuple[str | None, str, str] | None:
    """``[NAME=]local_ppl:FILE`` -> (NAME or None, kind, FILE); None for a plain task name."""
    name, body = None, spec
    m = re.match(r"^([A-Za-z0-9_\-\.]+)=(.*)$", spec)
    if m and m.group(2).split(":", 1)[0] in LOCAL_KINDS:
        name, body = m.group(1), m.group(2)
    kind, sep, path = body.partition(":")
    if sep and kind in LOCAL_KINDS:
        if not path:
            raise TaskError(f"task {spec!r}: give the data file after '{kind}:'")
        return name, kind, path
    return None


def resolve_tasks(tasks, task_data: dict[str, str] | None = None, include_path=None, work_dir: str | None = None,
                  max_doc_words: int | None = None) -> TaskSet:
    """Check every task and build the lm-eval TaskManager; raise ``TaskError`` naming what is wrong.

    Loads no model and no dataset: a typo or a missing data file fails in seconds. ``work_dir``
    receives the generated task YAMLs (a temporary folder when None). ``max_doc_words`` cuts each
    document of a local perplexity corpus to its first words (a faster, comparable measurement).
    """
    from lm_eval.tasks import TaskManager  # lazy: lm_eval (heavy) loads only when lm-eval tasks are resolved

    names = parse_task_list(tasks)
    include = [os.path.abspath(p) for p in parse_task_list(include_path)]
    for p in include:
        if not os.path.isdir(p) and not os.path.isfile(p):
            raise TaskError(f"--include_path {p} does not exist")
    if max_doc_words is not None and max_doc_words < 1:
        raise TaskError(f"max_doc_words must be a positive number of words, got {max_doc_words}")
    work_dir = os.path.abspath(tempfile.mkdtemp(prefix="boomerang-tasks-") if work_dir is None else work_dir)
    os.makedirs(work_dir, exist_ok=True)

    local_specs, plain, ordered = [], [], []  # (name, kind, path); lm-eval names; every name in order
    for spec in names:
        parsed = parse_local_spec(spec)
        if parsed is None and spec.split("=")[-1] in LOCAL_KINDS:
            raise TaskError(f"task {spec!r} needs its data file: {spec}:FILE (or --task_data NAME=FILE)")
        if parsed is None:
            plain.append(spec)
            ordered.append(spec)
        else:
            name, kind, path = parsed
            name = name or _default_name(kind, path)
            local_specs.append((name, kind, path))
            ordered.append(name)
    for name, path in (task_data or {}).items():
        src = os.path.abspath(os.path.expanduser(path))
        if not os.path.isfile(src):
            raise TaskError(f"--task_data {name}={path}: no such file (resolved to {src})")
        local_specs.append((name, infer_kind(src), src))
        if name in plain:  # named in --tasks too: the data binds to that name
            plain.remove(name)
        else:
            ordered.append(name)
    if not ordered:
        raise TaskError("no tasks given")
    dupes = sorted({n for n in ordered if ordered.count(n) > 1})
    if dupes:
        raise TaskError(f"task names {dupes} appear twice; name local tasks with NAME=local_ppl:FILE")
    for name, _, _ in local_specs:
        if not re.fullmatch(r"[A-Za-z0-9_\-\.]+", name):
            raise TaskError(f"task name {name!r}: use letters, digits, '_', '-' or '.'")

    local: dict[str, LocalTask] = {}
    for name, kind, path in local_specs:
        t = _prepare_local(name, kind, path, work_dir, max_doc_words)
        t.yaml_path = _write_task_yaml(t, work_dir)
        local[name] = t

    paths = [work_dir] + include
    tm = TaskManager(include_path=paths, include_defaults=False)
    own = set(tm.all_tasks)
    missing = [n for n in plain if n not in own]
    if missing:
        # lm-eval's own tasks: indexing its ~14k YAML files takes tens of seconds, so a list of their
        # names (cached once per lm-eval version) catches a typo at once.
        cached = _cached_default_names()
        if cached is not None:
            unknown = [n for n in missing if n not in cached]
            if unknown:
                raise _unknown_error(unknown, sorted(set(cached) | own))
        tm = TaskManager(include_path=paths, include_defaults=True)
        _save_default_names([n for n in tm.all_tasks if n not in own])
    unknown = [n for n in plain if n not in tm.all_tasks]
    if unknown:
        raise _unknown_error(unknown, tm.all_tasks)
    return TaskSet(ordered, tm, local, work_dir, include)


def _unknown_error(unknown: list[str], known: list[str]) -> TaskError:
    hints = [f"{n!r}" + (f" (did you mean {', '.join(close)}?)" if close else "")
             for n in unknown for close in [difflib.get_close_matches(n, known, n=3)]]
    return TaskError(f"unknown task {', '.join(hints)}. Use an lm-eval task name (`lm_eval ls tasks`), a folder of "
                     "your own task YAMLs with --include_path, or a local file: local_ppl:FILE / local_mc:FILE / "
                     "--task_data NAME=FILE")


def _names_cache_path() -> str:
    return os.path.join(cache_root(), f"lm_eval_task_names-{version('lm_eval')}.json")


def _cached_default_names() -> list[str] | None:
    try:
        with open(_names_cache_path()) as f:
            names = json.load(f)
        return names if isinstance(names, list) and names else None
    except (OSError, ValueError):
        return None


def _save_default_names(names: list[str]) -> None:
    try:
        atomic_write_text(_names_cache_path(), json.dumps(sorted(names)))
    except OSError:
        pass

