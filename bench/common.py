"""What the benchmarks share: the repository root, the environment of their child processes, timed commands with
a log and a timeout, a synthetic corpus, a student made once, and the memory figure of a trainer's log record.

Light on purpose (no torch): a bench's parent process times and measures its children.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from boomerang.text import read_jsonl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = ("the a of and to in is was he it that for on with as his by at be this had not are but from or have an "
         "they which one you were her all she there would their we him been has when who will more").split()


def child_env(**extra) -> dict:
    """The environment of a child process: the repository importable, offline unless HF_HUB_OFFLINE says otherwise."""
    path = os.pathsep.join(filter(None, (ROOT, os.environ.get("PYTHONPATH"))))
    return dict(os.environ, PYTHONPATH=path, HF_HUB_OFFLINE=os.environ.get("HF_HUB_OFFLINE", "1"), **extra)


def run_part(name: str, cmd: list[str], timeout: float | None, log_dir: str, env: dict | None = None) -> dict:
    """Run ``cmd`` in its own process group, output to ``log_dir/name.log``; on timeout the whole group is killed.
    Returns status (ok, failed, timeout), exit_code, seconds, timeout_s, command, log (and log_tail when not ok)."""
    os.makedirs(log_dir, exist_ok=True)
    log_path = os.path.join(log_dir, f"{name}.log")
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                env=child_env(**(env or {})))
        try:
            rc = proc.wait(timeout=timeout)
            status = "ok" if rc == 0 else "failed"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the part and everything it started
            proc.wait()
            rc, status = None, "timeout"
    rec = {"status": status, "exit_code": rc, "seconds": round(time.perf_counter() - t0, 2), "timeout_s": timeout,
           "command": " ".join(cmd), "log": log_path}
    if status != "ok":
        with open(log_path, errors="replace") as f:
            rec["log_tail"] = f.read()[-2500:]
    return rec


def json_child(what: str, cmd: list[str]) -> dict:
    """Run one measurement child (its own process, offline, tokenizers single-threaded) and return the JSON record
    its last line of output holds; a failed child raises with the end of its error output."""
    res = subprocess.run(cmd, capture_output=True, text=True, env=child_env(TOKENIZERS_PARALLELISM="false"), cwd=ROOT)
    if res.returncode != 0:
        raise RuntimeError(f"measurement {what} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def random_text(rng, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def synthetic_corpus(path: str, docs: int, length, rng) -> str:
    """``docs`` documents of random words, ``length(rng)`` words each, as jsonl ``{"text": ...}``."""
    with open(path, "w") as f:
        for _ in range(docs):
            f.write(json.dumps({"text": random_text(rng, length(rng))}) + "\n")
    return path


def ensure_student(teacher: str, folder: str) -> str:
    """``folder``, where ``python -m train.init_student`` makes a student of ``teacher`` unless one is there."""
    if not os.path.isfile(os.path.join(folder, "student_config.json")):
        print(f"making the student in {folder} (python -m train.init_student)", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "train.init_student", "--teacher_model_name_or_path", teacher,
                        "--save_directory", folder], check=True, cwd=ROOT, env=child_env())
    return folder


def peak_memory(rec: dict) -> dict:
    """The peak memory a trainer's log record reports: GPU max allocated, else the CPU process's peak RSS."""
    return {"peak_memory_gb": rec.get("peak_memory_gb", rec.get("peak_rss_gb")),
            "memory_kind": "gpu_max_allocated" if "peak_memory_gb" in rec else "cpu_peak_rss"}


def trainer_log(folder: str) -> list[dict]:
    """The records of the trainer's ``log.jsonl`` in ``folder`` (none when it has none)."""
    path = os.path.join(folder, "log.jsonl")
    return [r for _, r in read_jsonl(path)] if os.path.isfile(path) else []


def print_results(results: dict, columns: list[tuple[str, str, str]], label: str = "run") -> None:
    """The results table a benchmark prints: one row per run, ``columns`` (header, key, format) read from each run's
    figures; a figure the run lacks shows "-", a run that failed shows its error."""
    width = max([len(label)] + [len(n) for n in results]) + 2
    print("\n" + f"{label:{width}}" + " ".join(f"{h:>{max(len(h), 8)}}" for h, _, _ in columns))
    for name, r in results.items():
        if "error" in r:
            print(f"{name:{width}}{r['error']}")
            continue
        cells = [format(r[k], f) if r.get(k) is not None else "-" for _, k, f in columns]
        print(f"{name:{width}}" + " ".join(f"{c:>{max(len(h), 8)}}" for c, (h, _, _) in zip(cells, columns)))

