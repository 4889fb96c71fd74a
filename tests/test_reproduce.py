"""The main job (reproduce.main_job) end to end on a tiny random teacher and tiny local data."""

import json
import os
import re

import pytest

import tiny_models

@pytest.fixture()
def tiny_world(tmp_path):
    return tiny_models.make_world(tmp_path)


@pytest.mark.e2e  # the main job end to end (a minute or more)
def test_main_job_end_to_end(tiny_world, capsys):
    from reproduce.main_job import main

    teacher, data, out = tiny_world
    argv = ["--teacher_model_name_or_path", teacher, "--data_dir", data, "--output_dir", str(out),
            "--max_steps", "2", "--mc_limit", "4", "--ppl_docs", "2"]
    # a Llama teacher is patched first-k by default (the paper's rule); last-k is asked for, into its own folder
    main(argv + ["--override_llama_patching"])
    lk = out / "last-k"
    assert os.path.isfile(out / "student" / "student_config.json")
    results = os.listdir(lk / "eval" / "results")
    # student, k = 0..2, teacher (k = 3), and naive pruning and ShortGPT at the depths of k = 0..2
    assert sorted(results) == sorted(["student.json", "last_k00.json", "last_k01.json", "last_k02.json",
                                      "teacher.json", "naive_d05.json", "naive_d06.json", "naive_d07.json",
                                      "shortgpt_d05.json", "shortgpt_d06.json", "shortgpt_d07.json"])
    for name in ("summary.csv", "summary.md"):
        assert os.path.isfile(lk / "eval" / name)
    assert any(p.endswith(".png") for p in os.listdir(lk / "eval" / "plots"))
    report = re.sub(" +", " ", (lk / "REPORT.md").read_text())  # table cells are padded
    assert "| 5 (student) |" in report and "| 8 (teacher) |" in report and "Stage times" in report
    facts = json.loads((lk / "report.json").read_text())["facts"]
    assert [d for d, _, _ in facts["boomerang_beats"]["naive"]] == [5, 6, 7]
    assert facts["monotone"] == (not facts["rises"]) and "Perplexity along the boomerang ladder" in report
    for a, b, pa, pb, pct in facts["rises"]:
        assert pb > pa and pct == round(100 * (pb / pa - 1), 1)
    pairs = json.loads((lk / "alignment.json").read_text())["pairs"]
    assert [(p["student_index"], p["teacher_index"]) for p in pairs][0] == (0, 0) and len(pairs) == 6
    assert all(-1 <= p["cosine"] <= 1 for p in pairs) and "Seam alignment" in report
    # every point carries its held-out KL from the teacher; the teacher's own is zero
    teacher_rec = json.loads((lk / "eval" / "results" / "teacher.json").read_text())
    assert teacher_rec["metrics"]["heldout_kl"]["kl"]["value"] == pytest.approx(0.0, abs=1e-6)
    assert json.loads((lk / "eval" / "results" / "last_k01.json").read_text())["metrics"]["heldout_kl"]["kl"]["value"] > 0
    # the CPU preset measures held-out perplexity once (with the KL) and scores naive pruning on it alone
    assert "arc_easy" in teacher_rec["metrics"] and "brown_heldout" not in teacher_rec["metrics"]
    assert set(json.loads((lk / "eval" / "results" / "naive_d06.json").read_text())["metrics"]) == {"heldout_kl"}
    # ... and runs the tasks at the student, the teacher and every 4th size (k = 0 here), not at k = 1 and 2
    for name, with_tasks in (("student", True), ("last_k00", True), ("last_k01", False), ("last_k02", False)):
        metrics = json.loads((lk / "eval" / "results" / f"{name}.json").read_text())["metrics"]
        assert ("arc_easy" in metrics) == with_tasks
    # the searched family: its frontier by parameters, every member scored like the rest; every family by size in
    # the report (the searched frontier, the order, naive pruning, ShortGPT), with one plot of them all
    plan = json.loads((out / "search" / "search.json").read_text())
    params = [e["params"] for e in plan["ladder"]]
    assert params == sorted(params) and plan["search"]["ladder"] == "frontier"
    assert sorted(os.listdir(out / "search" / "eval" / "results")) == sorted(
        f"searched_p{e['params']}_d{e['depth']:02d}.json" for e in plan["ladder"])
    by_size = facts["by_size"]
    assert set(by_size) == {"searched", "boomerang", "naive pruning", "ShortGPT"}
    assert by_size["searched"]["params"] == params and by_size["searched"]["widest_gap"]["params"] == max(
        b - a for a, b in zip(params, params[1:]))
    assert by_size["boomerang"]["members"] == 5 and by_size["ShortGPT"]["members"] == 4  # with the teacher
    assert "Every family by size" in report and "searched frontier" in report
    assert any(p.endswith("heldout_kl__token_perplexity.png") for p in os.listdir(lk / "plots-by-size"))

    # A second run reuses everything: no training, no evaluation.
    mtimes = {n: os.path.getmtime(lk / "eval" / "results" / n) for n in results}
    main(argv + ["--override_llama_patching"])
    assert mtimes == {n: os.path.getmtime(lk / "eval" / "results" / n) for n in results}

    # First-k order, the default for this Llama teacher: the same student, the results in OUTPUT_DIR, beside the
    # last-k results (which stay as they were); --patch_first_k_layers says the same
    student_mtime = os.path.getmtime(out / "student" / "model.safetensors")
    main(argv + ["--patch_first_k_layers"])
    assert os.path.getmtime(out / "student" / "model.safetensors") == student_mtime
    assert mtimes == {n: os.path.getmtime(lk / "eval" / "results" / n) for n in results}
    first = out
    assert sorted(os.listdir(first / "eval" / "results")) == sorted(
        ["student.json", "first_k00.json", "first_k01.json", "first_k02.json", "teacher.json",
         "naive_d05.json", "naive_d06.json", "naive_d07.json", "shortgpt_d05.json", "shortgpt_d06.json",
         "shortgpt_d07.json"])
    naive_first = json.loads((first / "eval" / "results" / "naive_d06.json").read_text())
    naive_last = json.loads((lk / "eval" / "results" / "naive_d06.json").read_text())
    assert (naive_first["order"], naive_last["order"]) == ("first-k", "last-k")
    assert naive_first["teacher_layers"] == [0, 1, 2, 4, 6, 7] and naive_last["teacher_layers"] == [0, 2, 4, 5, 6, 7]
    assert "first-k order" in (first / "REPORT.md").read_text() and (first / "alignment.json").is_file()
    assert json.loads((first / "report.json").read_text())["order"] == "first-k"

    # Other settings never reuse this student silently: they fail, before any work, and say what to do.
    for extra, what in ((["--max_steps", "3"], "max_steps 2 (asked: 3)"),
                        (["--max_steps", "2", "--layer_map", "2,2,1"], "layer_map [1, 2, 2] (asked: [2, 2, 1])")):
        with pytest.raises(SystemExit):
            main(argv[:6] + extra)
        err = capsys.readouterr().err
        assert what in err and "--output_dir" in err
    # a student from before the settings file: its student_config.json says how it was made
    os.remove(out / "student_settings.json")
    with pytest.raises(SystemExit):
        main(argv[:6] + ["--max_steps", "3"])
    err = capsys.readouterr().err
    assert "max_steps 2 (asked: 3)" in err and "student_config.json" in err
    assert os.path.getmtime(out / "student" / "model.safetensors") == student_mtime


@pytest.mark.e2e  # the main job end to end (a minute or more)
def test_gpu_preset_runs_its_whole_path_on_cpu(tmp_path):
    """The GPU preset's own path (its training config, whole held-out documents, ShortGPT and LaCo beside
    naive pruning, bfloat16 evaluation, batch size "auto"), on a CPU and on 4 of the documents: only the
    device and the sizes differ."""
    from reproduce.main_job import main

    # the preset evaluates on 32 held-out sequences of 1024 tokens: 120 documents of 301 one-token words
    teacher, data, out = tiny_models.make_world(tmp_path, heldout_docs=120)
    result = main(["--preset", "gpu", "--teacher_model_name_or_path", teacher, "--data_dir", data,
                   "--output_dir", str(out), "--max_steps", "2", "--mc_limit", "4", "--ppl_docs", "4"])
    assert set(result["timings"]) == {"teacher", "distillation", "evaluation sweep", "search", "alignment", "report"}
    assert json.loads((out / "search" / "search.json").read_text())["calibration"]["samples"] == 32
    steps = [json.loads(line) for line in (out / "student" / "log.jsonl").read_text().splitlines()]
    train_steps = [r for r in steps if "loss" in r]
    # configs/smollm2-135m.yaml: 32 sequences of 1024 tokens a step
    assert train_steps[-1]["step"] == 2 and {r["sequence_tokens"] for r in train_steps} == {32 * 1024}
    results = sorted(os.listdir(out / "eval" / "results"))
    for method in ("naive", "shortgpt", "laco"):
        assert [r for r in results if r.startswith(method + "_d")] == [f"{method}_d0{d}.json" for d in (5, 6, 7)]
    rec = json.loads((out / "eval" / "results" / "first_k01.json").read_text())  # first-k: a Llama teacher
    assert rec["dtype"] == "bfloat16" and rec["preset"] == "gpu"
    facts = json.loads((out / "report.json").read_text())["facts"]
    assert set(facts["boomerang_beats"]) == {"naive", "shortgpt", "laco"}
    report = (out / "REPORT.md").read_text()
    assert "shortgpt ppl" in report and "laco ppl" in report and "(gpu preset)" in report


@pytest.mark.e2e  # the main job end to end (a minute or more)
def test_layer_map_option_trains_that_student(tmp_path):
    from reproduce.main_job import main

    teacher, data, out = tiny_models.make_world(tmp_path)
    main(["--teacher_model_name_or_path", teacher, "--data_dir", data, "--output_dir", str(out), "--layer_map", "2,2,1",
          "--max_steps", "1", "--mc_limit", "2", "--ppl_docs", "1", "--patch_first_k_layers"])
    student_cfg = json.loads((out / "student" / "student_config.json").read_text())
    # 8 teacher layers, keep the first 2, every 2nd after them and the last 1: blocks [0] [1,2] [3,4] [5,6] [7]
    assert student_cfg["copied_teacher_layers"] == [0, 1, 3, 5, 7]
    assert student_cfg["recipe"] == {"first_layers_to_keep": 2, "alternate_every_n_layers": 2, "last_layers_to_keep": 1}
    assert json.loads((out / "student_settings.json").read_text())["layer_map"] == [2, 2, 1]
    results = sorted(os.listdir(out / "eval" / "results"))  # first-k: the default for a Llama teacher
    assert results == sorted(["student.json", "first_k00.json", "first_k01.json", "first_k02.json", "teacher.json",
                              "naive_d05.json", "naive_d06.json", "naive_d07.json",
                              "shortgpt_d05.json", "shortgpt_d06.json", "shortgpt_d07.json"])


@pytest.mark.parametrize("layer_map, message", [("2,2", "expected three integers F,N,L"),
                                                 ("5,2,5", "--layer_map 5,2,5: --first_layers_to_keep 5")])
def test_bad_layer_map_fails_before_distillation(tmp_path, capsys, layer_map, message):
    from reproduce.main_job import main

    teacher, data, out = tiny_models.make_world(tmp_path)
    with pytest.raises(SystemExit):
        main(["--teacher_model_name_or_path", teacher, "--data_dir", data, "--output_dir", str(out),
              "--layer_map", layer_map])
    assert message in capsys.readouterr().err
    assert not os.path.exists(out / "student")


def test_too_little_calibration_text_fails_before_distillation(tmp_path, capsys):
    """The searched ladder's calibration text (the GPU preset asks for 32 documents of 256 tokens) is
    checked with the data, not found short after the distillation."""
    from reproduce.main_job import main

    teacher, data, out = tiny_models.make_world(tmp_path, train_docs=31)
    with pytest.raises(SystemExit):
        main(["--preset", "gpu", "--teacher_model_name_or_path", teacher, "--data_dir", data, "--output_dir", str(out)])
    err = capsys.readouterr().err
    assert "32 documents of 256 tokens" in err and "only 31" in err and "--no_search" in err
    assert not os.path.exists(out / "student")


def test_student_settings_ignore_config_comments_but_not_values(tmp_path):
    from argparse import Namespace

    from reproduce.main_job import student_settings

    args = Namespace(layer_map=None, max_steps=None, teacher_model_name_or_path="t")
    cfg = tmp_path / "c.yaml"

    def settings(text):
        cfg.write_text(text)
        return student_settings({"train_config": str(cfg)}, args)

    base = settings("first_layers_to_keep: 1\nalternate_every_n_layers: 2\nlast_layers_to_keep: 2\nmax_steps: 120\n"
                    "learning_rate: 3.0e-4\n")
    assert base["layer_map"] == [1, 2, 2] and base["max_steps"] == 120
    assert settings("# measured: 5.3 s a step\nfirst_layers_to_keep: 1\nalternate_every_n_layers: 2\n"
                    "last_layers_to_keep: 2\nmax_steps: 120\nlearning_rate: 3.0e-4\n") == base
    changed = settings("first_layers_to_keep: 1\nalternate_every_n_layers: 2\nlast_layers_to_keep: 2\nmax_steps: 120\n"
                       "learning_rate: 1.0e-3\n")
    assert changed["train_config_sha256"] != base["train_config_sha256"]
    # the default recipe written out changes nothing (students from before the setting still match); another does
    common = ("first_layers_to_keep: 1\nalternate_every_n_layers: 2\nlast_layers_to_keep: 2\nmax_steps: 120\n"
              "learning_rate: 3.0e-4\n")
    assert settings(common + "recipe: improved\n") == base
    assert settings(common + "recipe: paper\n")["train_config_sha256"] != base["train_config_sha256"]


def test_bad_mc_every_fails_before_work(tmp_path, capsys):
    from reproduce.main_job import main

    teacher, data, out = tiny_models.make_world(tmp_path)
    with pytest.raises(SystemExit):
        main(["--teacher_model_name_or_path", teacher, "--data_dir", data, "--output_dir", str(out), "--mc_every", "0"])
    assert "--mc_every must be 1 or more" in capsys.readouterr().err
    assert not os.path.exists(out)


def test_missing_data_dir_fails_before_work(tmp_path, capsys):
    from reproduce.main_job import main

    with pytest.raises(SystemExit):
        main(["--data_dir", str(tmp_path / "nowhere"), "--output_dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert "--data_dir" in err and "BOOMERANG_DATA" in err
    assert not os.path.exists(tmp_path / "out")


def test_comparison_reports_every_rise_along_the_ladder():
    from reproduce.main_job import comparison

    def rec(role, method, depth, ppl):
        return {"role": role, "method": method, "depth": depth, "parameters": {"total": depth * 10 ** 6},
                "metrics": {"heldout_kl": {"token_perplexity": {"value": ppl}}}}

    records = [rec("student", "boomerang", 4, 100.0), rec("intermediate", "boomerang", 4, 110.0),
               rec("intermediate", "boomerang", 5, 90.0), rec("intermediate", "boomerang", 6, 95.0),
               rec("teacher", "boomerang", 7, 40.0), rec("intermediate", "naive", 4, 5000.0),
               rec("intermediate", "naive", 5, 80.0)]
    table, facts = comparison(records)
    assert not facts["monotone"]
    assert facts["rises"] == [("4 (student)", "4", 100.0, 110.0, 10.0), ("5", "6", 90.0, 95.0, 5.6)]
    assert facts["boomerang_beats"]["naive"] == [(4, True, 45.45), (5, False, 0.89)]
    assert "| 7 (teacher) | 7.0M | 40.0 |" in re.sub(" +", " ", table)


def test_stage_ledger_sums_time_and_other_processes_load(tmp_path, monkeypatch, capsys):
    """Each stage's ledger entry sums wall time, the CPU seconds other processes used and its own over the runs that
    worked on it; an entry begun by a run that did not measure stays unknown."""
    from reproduce import common

    clock = iter([100.0, 160.0, 200.0, 230.0, 300.0, 310.0])  # time.time() at each stage's start and end
    cpu = iter([(1000.0, 10.0), (1100.0, 60.0),   # 100 s of the machine's CPU, 50 of them ours: others 50
                (1200.0, 70.0), (1230.0, 100.0),  # all ours: others 0
                (2000.0, 0.0), (2010.0, 0.0)])
    monkeypatch.setattr(common.time, "time", lambda: next(clock))
    monkeypatch.setattr(common, "cpu_seconds", lambda: next(cpu))
    ledger, timings = str(tmp_path / "stage_times.json"), {}
    with pytest.raises(KeyboardInterrupt):
        with common.stage("distill", timings, ledger):
            raise KeyboardInterrupt  # interrupted: summed, not complete
    with common.stage("distill", timings, ledger):
        pass
    entry = json.load(open(ledger))["distill"]
    assert entry.pop("max_rss_kib") >= 1  # this process's peak resident memory so far
    assert entry == {"seconds": 90.0, "complete": True, "runs": 2, "other_cpu_s": 50.0, "own_cpu_s": 80.0}
    assert "=== distill: 30 s (other processes: 0.00 cores) ===" in capsys.readouterr().out
    json.dump({"old": {"seconds": 5.0, "complete": False, "runs": 1}}, open(ledger, "w"))
    with common.stage("old", timings, ledger):
        pass
    old = json.load(open(ledger))["old"]
    assert old["other_cpu_s"] is None and old["own_cpu_s"] is None and old["seconds"] == 15.0
