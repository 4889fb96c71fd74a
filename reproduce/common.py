"""What the main job and the experiments share: the data folder, stage timing, and distilling a student."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import time

from boomerang.cli import fail
from boomerang.io import atomic_write_text

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEACHER = "embedded:smollm2-135m"
MC_TASKS = ("arc_easy", "piqa", "boolq", "openbook_qa", "copa")
ALIGN_TOKENS = 512  # each held-out document cut to this many tokens for the seam alignment and held-out KL
# A stage shorter than this is too short for /proc/stat's clock ticks to say how busy other processes kept the cores.
MIN_LOAD_SECONDS = 5.0


def default_data_dir() -> str:
    return os.environ.get("BOOMERANG_DATA") or os.path.join(os.path.dirname(REPO), "shared", "data")


def read_json(path: str, default=None):
    """The JSON in ``path``, or ``default`` where there is no such file."""
    if not os.path.isfile(path):
        return default
    with open(path) as f:
        return json.load(f)


def read_jsonl(path: str) -> list:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def check_data(data_dir: str) -> dict[str, str]:
    """The data files of the main job, or a clear error naming the setting and what is missing."""
    if not os.path.isdir(data_dir):
        fail(f"data folder {data_dir} not found. Pass --data_dir DIR or set BOOMERANG_DATA to a folder holding "
             "corpus/brown_train.jsonl, corpus/brown_heldout.jsonl and tasks/*.jsonl (see ../shared/data/README.md)")
    files = {"train": os.path.join(data_dir, "corpus", "brown_train.jsonl"),
             "heldout": os.path.join(data_dir, "corpus", "brown_heldout.jsonl"),
             **{t: os.path.join(data_dir, "tasks", f"{t}.jsonl") for t in MC_TASKS}}
    missing = [p for p in files.values() if not os.path.isfile(p)]
    if missing:
        fail(f"the data folder {data_dir} lacks {', '.join(missing)}; pass --data_dir (or BOOMERANG_DATA) "
             "pointing at a complete copy")
    return files


def chance_levels(files: dict[str, str], limit: int | None) -> dict[str, float]:
    """Expected accuracy of a uniform guess on the first ``limit`` items of each multiple-choice task."""
    items = {t: read_jsonl(files[t])[:limit] for t in MC_TASKS}
    return {t: sum(1 / len(it["choices"]) for it in items[t]) / len(items[t]) for t in MC_TASKS}


def answer_bias(files: dict[str, str], limit: int | None) -> dict[str, dict]:
    """What answering without reading scores on the first ``limit`` items of each multiple-choice task:
    ``one_position`` the lowest and highest accuracy of always choosing the same position (for boolq: always "no",
    always "yes"), ``shortest`` the accuracy of always choosing the shortest choice (in characters; lm-eval's
    ``acc`` compares unnormalized log-likelihoods, which favour short choices)."""
    out = {}
    for t in MC_TASKS:
        items = read_jsonl(files[t])[:limit]
        positions = range(max(len(it["choices"]) for it in items))
        by_position = [sum(it["gold"] == i for it in items) / len(items) for i in positions]
        shortest = sum(min(range(len(it["choices"])), key=lambda i: len(it["choices"][i])) == it["gold"]
                       for it in items) / len(items)
        out[t] = {"one_position": [min(by_position), max(by_position)], "shortest": shortest, "items": len(items)}
    return out


def heldout_subset(src: str, n_docs: int | None, out_dir: str) -> str:
    """The first ``n_docs`` held-out documents as a file of their own (the task records which file ran)."""
    if n_docs is None:
        return src
    with open(src) as f:
        lines = [line for line in f if line.strip()][:n_docs]
    path = os.path.join(out_dir, f"brown_heldout_first{n_docs}.jsonl")
    atomic_write_text(path, "".join(lines))
    return path


def cpu_seconds() -> tuple[float, float] | None:
    """(CPU seconds every process of the machine has used since boot, CPU seconds this process and its waited-for
    children have used), or None where /proc/stat cannot be read. Their difference over a stage is the work of
    other processes: what says whether a stage's time was taken on idle cores."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    hz = os.sysconf("SC_CLK_TCK")
    busy = sum(fields) - fields[3] - (fields[4] if len(fields) > 4 else 0)  # all but idle and iowait
    own = sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
              for f in ("ru_utime", "ru_stime"))
    return busy / hz, own


def peak_rss_kib() -> int:
    """The largest resident memory of this process or any of its waited-for children so far (KiB, as Linux reports
    ru_maxrss)."""
    return max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))


@contextlib.contextmanager
def stage(name: str, timings: dict, ledger: str | None = None):
    """Print a stage's start and end, and record its wall time in ``timings``. ``ledger``: a JSON file that keeps
    each stage's time across runs of a resumable job, summed until the stage completes once, and the CPU seconds
    other processes used meanwhile (``other_cpu_s``; divided by ``seconds``: the cores they kept busy on average; not
    shown for a stage shorter than MIN_LOAD_SECONDS), the CPU seconds of this process and its waited-for children
    (``own_cpu_s``: far below the cores' worth of wall time when the job was stopped or starved) and the peak resident
    memory so far (``max_rss_kib``)."""
    start, cpu0 = time.time(), cpu_seconds()
    print(f"\n=== {name} ===", flush=True)
    done = False
    try:
        yield
        done = True
    finally:
        timings[name] = round(time.time() - start, 1)
        cpu1 = cpu_seconds()
        own = None if cpu0 is None or cpu1 is None else cpu1[1] - cpu0[1]
        other = None if own is None else max(0.0, (cpu1[0] - cpu0[0]) - own)
        if ledger is not None:
            book = read_json(ledger, {})
            entry = book.setdefault(name, {"seconds": 0.0, "complete": False, "runs": 0})
            if not entry["complete"]:
                for key, cpu in (("other_cpu_s", other), ("own_cpu_s", own)):
                    before = entry.get(key, 0.0 if entry["runs"] == 0 else None)  # None: a run not measured
                    entry[key] = None if cpu is None or before is None else round(before + cpu, 1)
                entry["seconds"] = round(entry["seconds"] + timings[name], 1)
                entry["runs"] += 1
                entry["complete"] = done
                entry["max_rss_kib"] = max(entry.get("max_rss_kib", 0), peak_rss_kib())
            atomic_write_text(ledger, json.dumps(book, indent=1) + "\n")
        if done:
            load = "" if other is None else (f" (other processes: {other / timings[name]:.2f} cores)"
                                             if timings[name] >= MIN_LOAD_SECONDS else " (too short to measure the load "
                                                                                     "of other processes)")
            print(f"=== {name}: {timings[name]:.0f} s{load} ===", flush=True)


def is_finished(student_dir: str) -> bool:
    return os.path.isfile(os.path.join(student_dir, "student_config.json"))


def distill(student_dir: str, config: str, settings: dict) -> None:
    """Distill a student into ``student_dir`` with ``train.train``: ``config`` (YAML) with the flags ``settings``
    changed. A finished student is left alone; an interrupted run resumes from its newest checkpoint."""
    if is_finished(student_dir):
        print(f"student already distilled in {student_dir}: reused", flush=True)
        return
    from train import train as train_mod  # loads only when a student must be distilled (train imports transformers)

    ckpt_dir = os.path.join(student_dir, "checkpoints")
    settings = {**settings, "save_directory": student_dir}
    if os.path.isdir(ckpt_dir) and os.listdir(ckpt_dir):
        settings["resume"] = True
        print(f"resuming the interrupted distillation in {student_dir}", flush=True)
    elif os.path.isdir(student_dir) and os.listdir(student_dir):
        settings["overwrite"] = True  # a run that died before its first checkpoint: nothing to keep
    train_mod.distill(config, **settings)


def training_log(student_dir: str) -> dict:
    """What a distillation log says about the run: steps, real tokens trained on, final held-out CE, time."""
    path = os.path.join(student_dir, "log.jsonl")
    if not os.path.isfile(path):
        return {}
    recs = read_jsonl(path)
    steps = [r for r in recs if "loss" in r]
    evals = [r for r in recs if "eval_ce" in r]
    out = {"steps": steps[-1]["step"] if steps else 0,
           "tokens": steps[-1].get("tokens_seen") if steps else None,
           "eval_ce": evals[-1]["eval_ce"] if evals else None}
    if steps:
        out["mean_step_time_s"] = sum(r["step_time_s"] for r in steps) / len(steps)
    return out
