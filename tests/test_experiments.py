"""The paper's comparisons (reproduce.experiments) end to end on a tiny random teacher and tiny local data."""

import json
import os

import pytest

import tiny_models

TINY_CONFIG = """first_layers_to_keep: 1
alternate_every_n_layers: 2
last_layers_to_keep: 2
max_length: 32
per_device_train_batch_size: 2
gradient_accumulation_steps: 1
global_batch_size: 2
per_device_eval_batch_size: 2
eval_sequences: 2
max_steps: 2
learning_rate: 1.0e-3
lr_scheduler_type: cosine
warmup_ratio: 0.0
max_grad_norm: 1.0
use_cross_entropy: true
use_kl_loss: true
kl_loss_weight: 0.1
T: 1.0
use_cosine_loss: true
cosine_loss_weight: 2.0
kl_chunk_size: 16
device: cpu
bf16: false
logging_steps: 1
eval_steps: 2
save_steps: 1
save_total_limit: 1
seed: 0
"""


@pytest.fixture()
def world(tmp_path, one_thread):
    teacher, data, out = tiny_models.make_world(tmp_path)
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY_CONFIG)
    argv = ["--teacher_model_name_or_path", teacher, "--data_dir", data, "--config", str(config),
            "--output_dir", str(out), "--main_dir", str(tmp_path / "main"), "--same_size_depths", "6,7",
            "--heldout_docs", "3", "--max_tokens", "48", "--mc_limit", "4", "--resamples", "200"]
    return argv, out, tmp_path


def _log(folder):
    return [json.loads(line) for line in open(os.path.join(folder, "log.jsonl")) if line.strip()]


class Killed(Exception):
    pass


@pytest.mark.e2e
def test_experiments_end_to_end_and_resume(world, monkeypatch):
    from reproduce import experiments

    argv, out, tmp = world
    seed = out / "seed-0"
    # Interrupted: the evaluation of the ce student dies; everything before it is kept.
    real = experiments.Evaluator._sweep

    def dies_on_ce(self, name, *a, **kw):
        if name == "ladder-ce":
            raise Killed
        return real(self, name, *a, **kw)

    monkeypatch.setattr(experiments.Evaluator, "_sweep", dies_on_ce)
    with pytest.raises(Killed):
        experiments.main(argv + ["--students", "full,random-init,ce"])
    monkeypatch.setattr(experiments.Evaluator, "_sweep", real)
    assert (tmp / "main" / "student" / "student_config.json").is_file()  # the full student is the main job's
    assert (seed / "students" / "ce" / "student_config.json").is_file()
    assert not (seed / "eval" / "ladder-ce").exists()
    ledger = json.loads((seed / "stage_times.json").read_text())
    assert ledger["distill ce"]["complete"] and not ledger["evaluate ce"]["complete"]
    done = {p: os.path.getmtime(p) for p in seed.glob("eval/*/results/*.json")}
    student_mtime = os.path.getmtime(seed / "students" / "ce" / "model.safetensors")

    # An interrupted distillation: ce-kl stopped after its first step, as a killed run would leave it.
    from train import train as train_mod
    from reproduce.common import distill

    plan = json.loads((seed / "students.json").read_text())
    plan_ce_kl = {**plan["ce"], "use_kl_loss": True}
    distill_args = dict(plan_ce_kl, stop_at_step=1)
    distill(str(seed / "students" / "ce-kl"), argv[argv.index("--config") + 1], distill_args)
    assert not (seed / "students" / "ce-kl" / "student_config.json").exists()

    experiments.main(argv)  # everything: resumes, never redoes
    assert {p: os.path.getmtime(p) for p in done} == done
    assert os.path.getmtime(seed / "students" / "ce" / "model.safetensors") == student_mtime
    logs = {n: _log(seed / "students" / n) for n in ("random-init", "ce", "ce-kl", "ce-cos", "same-6", "same-7")}
    logs["full"] = _log(tmp / "main" / "student")
    # every student trained on the same tokens, the resumed one included
    tokens = {n: [r["tokens_seen"] for r in lg if "loss" in r][-1] for n, lg in logs.items()}
    assert len(set(tokens.values())) == 1, tokens
    assert [r["step"] for r in logs["ce-kl"] if "loss" in r] == [1, 2]
    # same-size students hold the teacher layers of the interpolated model of their depth
    for d, layers in ((6, [0, 2, 4, 5, 6, 7]), (7, [0, 2, 3, 4, 5, 6, 7])):
        cfg = json.loads((seed / "students" / f"same-{d}" / "student_config.json").read_text())
        assert cfg["copied_teacher_layers"] == layers
    for n in ("full", "random-init", "ce", "ce-kl", "ce-cos"):
        names = sorted(os.listdir(seed / "eval" / f"ladder-{n}" / "results"))
        expected = ["last_k00.json", "last_k01.json", "last_k02.json", "student.json"]
        assert names == sorted(expected + (["teacher.json"] if n == "full" else [])), (n, names)
        rec = json.loads((seed / "eval" / f"ladder-{n}" / "results" / "last_k01.json").read_text())
        kl = rec["metrics"]["heldout_kl"]
        assert kl["kl"]["value"] > 0 and kl["token_perplexity"]["value"] > 1
        assert len(rec["heldout_scores"]["document_kl"]) == 3
    teacher_rec = json.loads((seed / "eval" / "ladder-full" / "results" / "teacher.json").read_text())
    assert abs(teacher_rec["metrics"]["heldout_kl"]["kl"]["value"]) < 1e-6
    assert sorted(os.listdir(seed / "eval" / "naive" / "results")) == ["naive_d05.json", "naive_d06.json",
                                                                       "naive_d07.json"]
    assert sorted(os.listdir(seed / "eval" / "same-size" / "results")) == ["same_6.json", "same_7.json"]
    mc = sorted(os.listdir(seed / "eval" / "mc" / "results"))
    assert mc == ["last_k01.json", "last_k02.json", "same_6.json", "same_7.json"]
    report = (out / "REPORT.md").read_text()
    for text in ("Claim 1", "Claim 2", "Claim 3", "chance", "tokens trained on", "Each seed's stage ledger",
                 "Seed 0: teacher", "always the shortest choice", "## Verdicts"):
        assert text in report, text
    assert (out / "answer_bias.json").is_file()
    training = json.loads((seed / "training.json").read_text())
    assert {n: t["tokens"] for n, t in training.items()} == tokens

    # more seeds of one student go to their own folders, pooled in one report
    experiments.main(argv + ["--seeds", "1,2", "--students", "ce-cos"])
    for s in (1, 2):
        assert (out / f"seed-{s}" / "students" / "ce-cos" / "student_config.json").is_file()
    report = (out / "REPORT.md").read_text()
    assert "| 1      | ce-cos" in report and "| 2      | ce-cos" in report
    assert "ce-cos (seeds 0, 1, 2 hold the whole ladder)" in report and "full (seeds 0 hold" in report

    # the result files alone (as committed under docs/results/experiments/data) resume without the students:
    # nothing is distilled or evaluated again, and the report is the same
    from reproduce import pages

    copy = tmp / "copy"
    pages.collect(str(out), str(copy))
    at_copy = argv[:argv.index("--output_dir")] + ["--output_dir", str(copy)] + argv[argv.index("--output_dir") + 2:]
    experiments.main(at_copy)
    experiments.main(at_copy + ["--seeds", "1,2", "--students", "ce-cos"])
    assert not any((copy / f"seed-{s}" / "students").exists() for s in (0, 1, 2))
    assert (copy / "REPORT.md").read_text().split("## Time")[0] == report.split("## Time")[0]


@pytest.mark.parametrize("extra, message", [
    (["--students", "full,nope"], "--students: unknown ['nope']"),
    (["--same_size_depths", "5"], "--same_size_depths: 5 is not an interpolated depth"),
    (["--same_size_depths", "x"], "expected comma-separated integers"),
    (["--seeds", "0,x"], "--seeds '0,x': expected comma-separated integers"),
    (["--seeds", "1,1"], "give each seed once"),
    (["--data_dir", "/nowhere"], "BOOMERANG_DATA"),
    (["--config", "/nowhere.yaml"], "--config /nowhere.yaml: no such file"),
])
def test_bad_input_fails_before_work(world, capsys, extra, message):
    from reproduce import experiments

    argv, out, tmp = world
    with pytest.raises(SystemExit):
        experiments.main(argv + extra)
    assert message in capsys.readouterr().err
    assert not (tmp / "main").exists() and not (out / "seed-0" / "students").exists()


def test_main_student_made_with_other_settings_is_refused(world, capsys):
    from reproduce import experiments

    argv, out, tmp = world
    (tmp / "main").mkdir()
    (tmp / "main" / "student_settings.json").write_text(json.dumps({"max_steps": 7}))
    with pytest.raises(SystemExit):
        experiments.main(argv + ["--students", "full"])
    assert "max_steps 7 (asked: 2)" in capsys.readouterr().err
