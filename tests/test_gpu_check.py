"""scripts/gpu_check.sh: argument checks, per-part timeouts, the JSON report, and the whole --dry-run on CPU."""

import json
import os
import subprocess
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PART_KEYS = {"status", "exit_code", "seconds", "timeout_s", "command", "log"}


def test_bad_arguments_fail_before_any_work(tmp_path, capsys):
    from bench.gpu_check import parse_args

    for argv, message in ((["--parts", "train,nope"], "--parts: unknown ['nope']"),
                          (["--timeouts", "bench=soon"], "--timeouts 'bench=soon'"),
                          (["--timeouts", "lunch=30"], "--timeouts 'lunch=30'"),
                          (["--data", str(tmp_path / "absent")], "no such folder"),
                          (["--train_steps", "0"], "--train_steps must be >= 1")):
        with pytest.raises(SystemExit):
            parse_args(argv)
        assert message in capsys.readouterr().err
    a = parse_args(["--output", str(tmp_path / "g.json"), "--timeouts", "bench=240", "--parts", "train,sweep"])
    assert a.timeout["bench"] == 240 and a.timeout["train"] == 80 and a.parts == ["train", "sweep"]
    assert sum(parse_args(["--output", str(tmp_path / "g.json")]).timeout.values()) <= 480  # the 8-minute budget


def test_a_part_past_its_timeout_is_killed_with_its_children(tmp_path):
    from bench.gpu_check import run_part

    t0 = time.time()
    rec = run_part("slow", ["bash", "-c", "sleep 60 & echo started; wait"], 1.5, str(tmp_path))
    assert rec["status"] == "timeout" and rec["exit_code"] is None and time.time() - t0 < 20
    assert "started" in rec["log_tail"]
    ok = run_part("quick", ["bash", "-c", "echo fine"], 30, str(tmp_path))
    assert ok["status"] == "ok" and ok["exit_code"] == 0 and "log_tail" not in ok
    bad = run_part("bad", ["bash", "-c", "echo broken >&2; exit 3"], 30, str(tmp_path))
    assert bad["status"] == "failed" and bad["exit_code"] == 3 and "broken" in bad["log_tail"]


def test_a_missing_optional_package_skips_its_part_and_the_json_says_why(tmp_path, monkeypatch):
    """lm_eval missing: the sweep is "skipped" with the package named, the environment records it as None, the check
    does not crash and is ok; a missing required package stops it with the name and the fix."""
    import bench.gpu_check as g

    real = g.package_version
    monkeypatch.setattr(g, "package_version", lambda name: None if name == "lm_eval" else real(name))
    out = tmp_path / "g.json"
    report = g.main(["--dry-run", "--parts", "sweep", "--output", str(out)])
    saved = json.loads(out.read_text())
    assert saved["parts"]["sweep"]["status"] == "skipped" and "lm_eval" in saved["parts"]["sweep"]["why"]
    assert saved["environment"]["packages"]["lm_eval"] is None and report["ok"] and saved["done"]
    monkeypatch.setattr(g, "package_version", lambda name: None if name == "datasets" else real(name))
    with pytest.raises(SystemExit, match="datasets.*setup_env.sh"):
        g.main(["--dry-run", "--parts", "sweep", "--output", str(out)])


@pytest.mark.e2e  # every part at tiny shapes on CPU, each in its own processes: about 6 minutes on 2 cores
def test_dry_run_writes_one_json_with_every_part(tmp_path):
    out = tmp_path / "out" / "gpu_check.json"
    res = subprocess.run(["bash", "scripts/gpu_check.sh", "--dry-run", "--output", str(out)], cwd=ROOT,
                         capture_output=True, text=True, timeout=2400)
    assert res.returncode == 0, res.stderr[-3000:]
    with open(out) as f:
        report = json.load(f)
    assert report["dry_run"] is True and report["ok"] is True and report["done"] is True
    assert {"environment", "data", "parts", "headline", "wall_s", "started_at", "finished_at"} <= set(report)
    parts = report["parts"]
    assert list(parts) == ["cuda_tests", "train", "fsdp", "bench", "sweep"]
    for name, rec in parts.items():
        assert PART_KEYS <= set(rec) and rec["status"] == "ok", (name, rec.get("log_tail"))
        assert os.path.isfile(rec["log"])
    assert "skipped" in parts["cuda_tests"]["summary"]  # no GPU here: collected, skipped
    f = parts["fsdp"]  # one process, --fsdp on over gloo: checkpoint, stop, resume; without FSDP; the plan
    assert f["checks"] == {"resumed_equal": True, "close_to_no_fsdp": True, "loss_falls": True}
    assert f["resumed_vs_uninterrupted_max_rel"] <= 1e-6 and set(f["runs"]) == {"fsdp", "fsdp_resumed", "no_fsdp"}
    assert all(len(r["losses"]) == 4 for r in f["runs"].values()) and f["plan"]["peak_gib"] > 0
    assert f["plan"]["measured"].startswith("skipped: no CUDA")
    t = parts["train"]
    assert t["steps"] == 2 and t["student_written"] and t["tokens_per_s"] > 0 and t["peak_memory_gb"] > 0
    assert 0 <= t["data_wait_share"] < 1  # the second step's wait for its prefetched batch, against its time
    assert t["packed_attention"].startswith("dense_mask")  # the CPU fallback
    assert set(parts["bench"]["modes"]) == {"packed+chunked", "paper"}
    for row in parts["bench"]["modes"].values():
        assert row["tokens_per_s"] > 0 and row["peak_memory_gb"] > 0
    points = parts["sweep"]["points"]
    assert len(points) == 3 and not parts["sweep"]["failed_points"]
    for p in points.values():
        assert p["metrics"]["heldout_kl/kl"] >= 0 and "arc_easy_local/acc" in p["metrics"]
    assert report["headline"]["train"] == "ok" and "bench_paper_tokens_per_s" in report["headline"]
