"""A sweep split over torchrun processes (gloo, CPU): same summary as one process, a killed process's sizes redone."""

import csv
import io
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from evaluate.evaluate import EvaluationError, split_points, sweep_processes
from test_evaluate import ROOT, _args, _pair, _write_data
from tiny_models import llama

NAMES = ["last_k00", "last_k01", "last_k02", "student", "teacher"]


def test_split_points_is_deterministic_and_balanced():
    # heaviest first, each to the least loaded process; lists keep sweep order
    assert split_points(NAMES, [5, 6, 7, 5, 8], 2) == [["last_k00", "student", "teacher"], ["last_k01", "last_k02"]]
    assert split_points(NAMES, [5, 6, 7, 5, 8], 2) == split_points(NAMES, [5, 6, 7, 5, 8], 2)
    assert split_points(["a", "b"], [1, 1], 4) == [["a"], ["b"], [], []]
    shares = split_points([f"p{i}" for i in range(15)], [16 + i for i in range(15)], 8)
    assert sorted(sum(shares, [])) == sorted(f"p{i}" for i in range(15))
    loads = [sum(16 + int(n[1:]) for n in s) for s in shares]
    assert max(loads) - min(loads) <= 30


def test_processes_need_a_sweep_and_a_plain_device(monkeypatch, capsys):
    from evaluate.evaluate import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(SystemExit):
        main(["--teacher_model_name_or_path", "t", "--student_model_name_or_path", "s", "--save_directory", "d",
              "--num_layers_to_patch", "1"])
    assert "give --sweep" in capsys.readouterr().err
    with pytest.raises(EvaluationError, match="--device cuda:1 with 2 processes"):
        sweep_processes("cuda:1")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert sweep_processes("cuda:1") == (0, 1, "cuda:1")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from evaluate.evaluate import main

    folder = str(tmp_path_factory.mktemp("sweep-procs"))
    teacher, student = _pair(folder, llama(8, tie=True))
    corpus, mc = _write_data(folder)
    t = {"dir": folder, "teacher": teacher, "student": student, "corpus": corpus, "mc": mc}
    one = os.path.join(folder, "one")
    main(_args(t, one, "--sweep", "--override_llama_patching", "--no_plots"))
    return t, one


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(t, save):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", f"--master-port={_free_port()}",
           "--module", "evaluate.evaluate", *_args(t, save, "--sweep", "--override_llama_patching", "--no_plots")]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=ROOT)
    return cmd, env


def _summary(save):
    with open(os.path.join(save, "summary.md")) as f:
        md = f.read()
    with open(os.path.join(save, "summary.csv")) as f:
        rows = [{k: v for k, v in r.items() if k != "eval_time_s"} for r in csv.DictReader(io.StringIO(f.read()))]
    return md, rows


def _same_summary(a, b):
    (md_a, rows_a), (md_b, rows_b) = _summary(a), _summary(b)
    assert md_a == md_b
    assert len(rows_a) == len(rows_b) == 5
    for x, y in zip(rows_a, rows_b):
        assert x.keys() == y.keys()
        for k in x:
            try:
                assert float(x[k]) == pytest.approx(float(y[k]), rel=1e-5, abs=1e-9), k
            except ValueError:
                assert x[k] == y[k], k


@pytest.mark.distributed
@pytest.mark.e2e  # two torchrun processes, each loading lm-eval: a minute or more
def test_two_processes_give_the_one_process_summary(world):
    t, one = world
    two = os.path.join(t["dir"], "two")
    cmd, env = _torchrun(t, two)
    res = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "process 0 of 2: 3 of 5 pending points" in res.stderr
    assert "process 1 of 2: 2 of 5 pending points" in res.stderr
    assert sorted(os.listdir(os.path.join(two, "results"))) == sorted(f"{n}.json" for n in NAMES)
    _same_summary(one, two)


def _rank_pid(parent: int, rank: int) -> int | None:
    """The pid of torchrun's worker with RANK=rank (a child of ``parent``), read from /proc."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            if ppid != parent:
                continue
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
        except (OSError, ValueError, IndexError):
            continue
        if env.get(b"RANK") == str(rank).encode():
            return int(pid)
    return None


@pytest.mark.distributed
@pytest.mark.e2e  # three torchrun launches: a few minutes
def test_a_killed_process_loses_only_its_unfinished_sizes(world):
    """Process 1 is killed (SIGKILL) after its first size; torchrun then stops process 0. The rerun evaluates
    exactly the sizes without a result file (finished files keep their mtime) and the summary is the one-process one."""
    t, one = world
    save = os.path.join(t["dir"], "killed")
    cmd, env = _torchrun(t, save)
    share1 = split_points(NAMES, [5, 6, 7, 5, 8], 2)[1]  # depths of last_k00..02, student, teacher
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    killed = None
    deadline = time.time() + 400
    try:
        while time.time() < deadline and proc.poll() is None:
            if any(os.path.isfile(os.path.join(save, "results", f"{n}.json")) for n in share1):
                killed = _rank_pid(proc.pid, 1)
                if killed:
                    os.kill(killed, signal.SIGKILL)
                break
            time.sleep(0.1)
        err = proc.communicate(timeout=300)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert killed, err[-3000:]
    assert proc.returncode != 0
    finished = {n: os.stat(os.path.join(save, "results", f"{n}.json")).st_mtime_ns
                for n in NAMES if os.path.isfile(os.path.join(save, "results", f"{n}.json"))}
    unfinished = [n for n in NAMES if n not in finished]
    assert any(n in finished for n in share1) and any(n in unfinished for n in share1), (finished, share1)

    res = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"process 0 of 2: " in res.stderr and f"of {len(unfinished)} pending points" in res.stderr
    for n, mtime in finished.items():
        assert os.stat(os.path.join(save, "results", f"{n}.json")).st_mtime_ns == mtime, n
    redone = [ln for ln in res.stderr.splitlines() if ": building" in ln]
    assert sorted(ln.split("] ")[1].split(":")[0] for ln in redone) == sorted(unfinished)
    _same_summary(one, save)
