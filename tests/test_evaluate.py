"""Evaluation: sweeps, resumption, the paper's one-size command, parameter counts, local tasks, errors.

Tiny random models (tests/tiny_models.py) and tiny local task files, so each evaluation takes
seconds; the lm-eval task index is never built here except in the slow test.
"""

import json
import math
import os
import random
import subprocess
import sys

import pytest
import torch

from tiny_models import llama, mistral, save_tiny_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = ("the a of and to in is was he it that for on with as his by at be this had not are but from or have an "
         "they which one you were her all she there would their we him been has when who will more no").split()


def _write_data(folder):
    rng = random.Random(0)
    corpus = os.path.join(folder, "corpus.jsonl")
    with open(corpus, "w") as f:
        for _ in range(5):
            f.write(json.dumps({"text": " ".join(rng.choice(WORDS) for _ in range(30))}) + "\n")
    mc = os.path.join(folder, "mc.jsonl")
    with open(mc, "w") as f:
        for i in range(6):
            f.write(json.dumps({"query": " ".join(rng.choice(WORDS) for _ in range(5)),
                                "choices": [" ".join(rng.choice(WORDS) for _ in range(2)) for _ in range(3)],
                                "gold": i % 3}) + "\n")
    return corpus, mc


def _pair(folder, config):
    from train.init_student import main as init_main

    teacher = save_tiny_model(os.path.join(folder, "teacher"), config)
    student = os.path.join(folder, "student")
    init_main(["--teacher_model_name_or_path", teacher, "--save_directory", student])
    return teacher, student


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("eval"))
    teacher, student = _pair(folder, llama(8, tie=True))  # 8 layers -> student [0, 2, 4, 6, 7], 3 blocks
    corpus, mc = _write_data(folder)
    return {"dir": folder, "teacher": teacher, "student": student, "corpus": corpus, "mc": mc}


def _args(t, save, *extra):
    return ["--teacher_model_name_or_path", t["teacher"], "--student_model_name_or_path", t["student"],
            "--save_directory", save, "--tasks", f"local_ppl:{t['corpus']},mcq=local_mc:{t['mc']}",
            "--limit", "3", "--dtype", "float32", "--device", "cpu", *extra]


@pytest.fixture(scope="module")
def sweep(tiny):
    from evaluate.evaluate import main

    save = os.path.join(tiny["dir"], "sweep")
    records = main(_args(tiny, save, "--sweep", "--override_llama_patching"))
    return save, records


def test_sweep_writes_every_file(sweep, tiny):
    save, records = sweep
    names = sorted(os.listdir(os.path.join(save, "results")))
    assert names == ["last_k00.json", "last_k01.json", "last_k02.json", "student.json", "teacher.json"]
    for fn in ("summary.csv", "summary.md", "sweep.json", "tasks/local_ppl_corpus.yaml", "tasks/mcq.yaml"):
        assert os.path.isfile(os.path.join(save, fn)), fn
    plots = sorted(os.listdir(os.path.join(save, "plots")))
    assert "mcq__acc.png" in plots and "local_ppl_corpus__token_perplexity.png" in plots
    assert all(os.path.getsize(os.path.join(save, "plots", p)) > 1000 for p in plots)

    rec = json.load(open(os.path.join(save, "results", "last_k01.json")))
    assert rec["teacher"] == tiny["teacher"] and rec["student"] == tiny["student"]
    assert rec["order"] == "last-k" and rec["num_layers_to_patch"] == 1 and rec["method"] == "boomerang"
    assert rec["replaced_blocks"] == [2, 3, 4] and rec["depth"] == 6  # student layers 0,1 + teacher 4..7
    assert set(rec["parameters"]) == {"total", "non_embedding"}
    assert set(rec["metrics"]) == {"local_ppl_corpus", "mcq"}
    assert set(rec["metrics"]["mcq"]) == {"acc", "acc_norm"}
    assert rec["metrics"]["mcq"]["acc"]["stderr"] is not None
    ppl = rec["metrics"]["local_ppl_corpus"]
    assert set(ppl) == {"word_perplexity", "byte_perplexity", "bits_per_byte", "token_perplexity"}
    assert all("stderr" in m for m in ppl.values())
    assert rec["n_samples"] == {"local_ppl_corpus": 3, "mcq": 3}
    assert rec["wall_time_s"]["total"] > 0 and rec["versions"]["lm_eval"]
    roles = {r["name"]: r["role"] for r in records}
    assert roles["student"] == "student" and roles["teacher"] == "teacher" and roles["last_k00"] == "intermediate"

    rows = open(os.path.join(save, "summary.csv")).read().strip().splitlines()
    assert len(rows) == 6 and "mcq/acc" in rows[0] and "local_ppl_corpus/token_perplexity_stderr" in rows[0]
    md = open(os.path.join(save, "summary.md")).read()
    assert "**teacher**" in md and "last_k02" in md


def test_word_level_token_perplexity_matches_manual_nll(sweep, tiny):
    """The word-level tokenizer makes tokens = words: both perplexities equal the model's own NLL."""
    from boomerang.models import load_model, load_tokenizer

    save, _ = sweep
    rec = json.load(open(os.path.join(save, "results", "teacher.json")))
    ppl = rec["metrics"]["local_ppl_corpus"]
    assert ppl["token_perplexity"]["value"] == pytest.approx(ppl["word_perplexity"]["value"], rel=1e-9)
    model, tok = load_model(tiny["teacher"]), load_tokenizer(tiny["teacher"])
    docs = [json.loads(line)["text"] for line in open(tiny["corpus"])][:3]
    nll, n = 0.0, 0
    for d in docs:
        ids = tok(d, add_special_tokens=False).input_ids
        x = torch.tensor([[tok.bos_token_id] + ids])  # lm-eval's rolling windows start from the prefix token
        with torch.no_grad():
            logp = torch.log_softmax(model(x).logits[0, :-1].double(), -1)
        nll -= logp[torch.arange(len(ids)), torch.tensor(ids)].sum().item()
        n += len(ids)
    assert ppl["token_perplexity"]["value"] == pytest.approx(math.exp(nll / n), rel=1e-4)


def test_rerun_skips_finished_sizes_and_redoes_missing(sweep, tiny, monkeypatch):
    import evaluate.evaluate as ev

    save, _ = sweep
    calls = []
    real = ev.evaluate_model
    monkeypatch.setattr(ev, "evaluate_model", lambda *a, **k: calls.append(1) or real(*a, **k))
    before = json.load(open(os.path.join(save, "results", "last_k00.json")))
    os.unlink(os.path.join(save, "results", "last_k01.json"))
    records = ev.main(_args(tiny, save, "--sweep", "--override_llama_patching"))
    assert len(calls) == 1  # only the missing size ran again
    assert len(records) == 5 and os.path.isfile(os.path.join(save, "results", "last_k01.json"))
    assert json.load(open(os.path.join(save, "results", "last_k00.json"))) == before


def test_other_settings_in_same_folder_fail_before_loading(sweep, tiny, monkeypatch, capsys):
    import boomerang.models
    import evaluate.evaluate as ev

    save, _ = sweep
    monkeypatch.setattr(boomerang.models, "load_model", lambda *a, **k: pytest.fail("loaded a model"))
    monkeypatch.setattr(ev, "load_model", lambda *a, **k: pytest.fail("loaded a model"))
    args = _args(tiny, save, "--sweep", "--override_llama_patching")
    args[args.index("--limit") + 1] = "2"
    with pytest.raises(SystemExit):
        ev.main(args)
    assert "other settings" in capsys.readouterr().err


def test_failure_is_recorded_and_other_points_kept(tiny, tmp_path):
    """The Python API with points of one's own (how baselines use it); a failing point does not stop the rest."""
    from boomerang.models import load_model, load_tokenizer
    from evaluate.evaluate import SweepPoint, run_sweep
    from evaluate.plot import main as plot_main

    save = str(tmp_path / "baseline")
    tok = load_tokenizer(tiny["teacher"])

    def ok():
        return load_model(tiny["teacher"]), tok

    def broken():
        raise RuntimeError("this size is broken")

    meta = {"method": "naive_pruning", "curve": "naive pruning"}
    points = [SweepPoint("good", ok, dict(meta)), SweepPoint("bad", broken, dict(meta))]
    tasks = f"mcq=local_mc:{tiny['mc']}"
    done = run_sweep(points, save, tasks, limit=2, device="cpu", plots=False)
    assert [r["name"] for r in done] == ["good"] and done[0]["curve"] == "naive pruning"
    fail = json.load(open(os.path.join(save, "failures", "bad.json")))
    assert "this size is broken" in fail["error"] and "Traceback" in fail["traceback"]
    assert "this size is broken" in open(os.path.join(save, "summary.md")).read()

    points[1] = SweepPoint("bad", ok, dict(meta))  # fixed: the rerun retries it and clears the failure
    done = run_sweep(points, save, tasks, limit=2, device="cpu", plots=False)
    assert sorted(r["name"] for r in done) == ["bad", "good"]
    assert not os.path.exists(os.path.join(save, "failures", "bad.json"))

    # Overlay: the plot command draws every folder's curves (the sweep of the first test needs the same task).
    out = str(tmp_path / "plots")
    paths = plot_main([save, "--out", out])
    assert os.path.basename(paths[0]) == "mcq__acc.png" and os.path.getsize(paths[0]) > 1000


def test_plot_overlays_several_folders(sweep, tiny, tmp_path):
    from evaluate.plot import plot_records
    from evaluate.results import load_results

    save, _ = sweep
    other = load_results(save)
    for r in other:
        r["curve"] = "other order"
    paths = plot_records(load_results(save) + other, str(tmp_path))
    assert len(paths) == 6  # 4 perplexities + acc + acc_norm


def test_paper_single_size_command(tiny, tmp_path):
    """The paper's command: one k, from folders; Llama-family teacher -> first-k unless overridden."""
    from evaluate.evaluate import main

    save = str(tmp_path / "one")
    records = main(_args(tiny, save, "--num_layers_to_patch", "1", "--eval_batch_size", "4"))
    assert [r["name"] for r in records] == ["first_k01"]
    rec = records[0]
    assert rec["order"] == "first-k" and rec["replaced_blocks"] == [0] and rec["depth"] == 6
    assert rec["embeddings_from"] == "teacher" and rec["lm_head_from"] == "student"
    assert os.path.isfile(os.path.join(save, "summary.md"))
    records = main(_args(tiny, save, "--num_layers_to_patch", "1", "--override_llama_patching"))
    assert [r["name"] for r in records] == ["last_k01"] and records[0]["replaced_blocks"] == [2, 3, 4]
    assert sorted(os.listdir(os.path.join(save, "results"))) == ["first_k01.json", "last_k01.json"]
    assert len(open(os.path.join(save, "summary.csv")).read().strip().splitlines()) == 3  # both sizes


def test_order_rule_uses_family_adapter():
    from evaluate.evaluate import use_first_k

    assert use_first_k(llama(4)) is True
    assert use_first_k(llama(4), override_llama_patching=True) is False
    assert use_first_k(mistral(4)) is False  # a Llama-like architecture of another family: last-k
    assert use_first_k(mistral(4), patch_first_k_layers=True) is True


def _expected_counts(model):
    """Counted by hand from the modules: layers + final norm + embeddings (+ head when untied)."""
    cfg = model.config
    layers = sum(p.numel() for p in model.model.layers.parameters())
    norm = sum(p.numel() for p in model.model.norm.parameters())
    vocab = cfg.vocab_size * cfg.hidden_size
    tied = model.lm_head.weight is model.model.embed_tokens.weight
    return {"total": layers + norm + vocab * (1 if tied else 2), "non_embedding": layers + norm}, tied


@pytest.mark.parametrize("tie", [True, False])
def test_parameter_counts_of_patched_models(tmp_path, tie):
    from boomerang.families import count_parameters
    from boomerang.models import load_model
    from evaluate.evaluate import boomerang_points

    teacher_dir, student_dir = _pair(str(tmp_path), llama(8, tie=tie))
    teacher, student = load_model(teacher_dir), load_model(student_dir)
    for first in (False, True):
        for p in boomerang_points(teacher, student, patch_first_k_layers=first, dtype=torch.float32):
            model, _ = p.build()
            expected, tied = _expected_counts(model)
            # Tied only where embeddings and head come from the same tied model (student, teacher).
            assert tied == (tie and p.metadata["role"] != "intermediate"), p.name
            assert count_parameters(model) == expected, p.name
            assert model.config.num_hidden_layers == p.metadata["depth"]
    # A tied 8-layer teacher with hidden 32 and vocab 128: one 4096-parameter matrix, counted once.
    assert count_parameters(teacher)["total"] - count_parameters(teacher)["non_embedding"] == 4096 * (1 if tie else 2)


def test_bad_tasks_fail_fast_with_clear_message(tiny, tmp_path, monkeypatch, capsys):
    import boomerang.models
    import evaluate.evaluate as ev
    from evaluate.evaluate import main
    from evaluate.tasks import TaskError, resolve_tasks

    monkeypatch.setattr(boomerang.models, "load_model", lambda *a, **k: pytest.fail("loaded a model"))
    monkeypatch.setattr(ev, "load_model", lambda *a, **k: pytest.fail("loaded a model"))
    base = ["--teacher_model_name_or_path", tiny["teacher"], "--student_model_name_or_path", tiny["student"],
            "--save_directory", str(tmp_path / "x"), "--num_layers_to_patch", "1"]
    for tasks, message in [
        ("local_ppl:/no/such/corpus.jsonl", "does not exist"),
        (f"local_mc:{tiny['corpus']}", "missing ['query', 'choices', 'gold']"),
        ("local_mc:", "give the data file"),
        ("local_ppl", "needs its data file"),
        (f"a=local_mc:{tiny['mc']},a=local_ppl:{tiny['corpus']}", "appear twice"),
    ]:
        with pytest.raises(SystemExit):
            main(base + ["--tasks", tasks])
        assert message in capsys.readouterr().err, tasks
    with pytest.raises(SystemExit):
        main(base + ["--tasks", f"local_ppl:{tiny['corpus']}", "--task_data", "brown=/no/such.jsonl"])
    assert "--task_data brown=/no/such.jsonl: no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(base + ["--tasks", f"local_ppl:{tiny['corpus']}", "--num_layers_to_patch", "7"])
    assert "0..3" in capsys.readouterr().err

    # An lm-eval name that does not exist, checked against the cached list of lm-eval's task names.
    monkeypatch.setenv("BOOMERANG_CACHE", str(tmp_path / "cache"))
    from evaluate import tasks as tasks_mod

    tasks_mod._save_default_names(["arc_easy", "arc_challenge", "hellaswag"])
    with pytest.raises(TaskError, match=r"unknown task 'arc_easyy' \(did you mean arc_easy"):
        resolve_tasks(f"arc_easyy,local_ppl:{tiny['corpus']}", work_dir=str(tmp_path / "w"))


def test_task_data_infers_kind_and_cuts_documents(tiny, tmp_path):
    from evaluate.tasks import resolve_tasks

    ts = resolve_tasks(None, task_data={"brown": tiny["corpus"], "quiz": tiny["mc"]}, work_dir=str(tmp_path),
                       max_doc_words=7)
    assert ts.names == ["brown", "quiz"]
    assert ts.local["brown"].kind == "local_ppl" and ts.local["quiz"].kind == "local_mc"
    cut = [json.loads(line)["text"] for line in open(ts.local["brown"].data_used)]
    assert len(cut) == 5 and all(len(t.split()) == 7 for t in cut)
    assert ts.local["quiz"].data_used == tiny["mc"]  # multiple choice is read as it is
    txt = tmp_path / "notes.txt"
    txt.write_text("first paragraph here.\n\nsecond one.\n")
    ts = resolve_tasks(f"local_ppl:{txt}", work_dir=str(tmp_path / "t"))
    assert ts.local["local_ppl_notes"].num_docs == 2


def test_parse_sweep():
    from evaluate.evaluate import EvaluationError, parse_sweep

    assert parse_sweep("all", 4) == [0, 1, 2, 3, 4]
    assert parse_sweep(None, 2) == [0, 1, 2]
    assert parse_sweep("0,3,1-2", 14) == [0, 1, 2, 3]
    assert parse_sweep("0-14", 14) == list(range(15))
    with pytest.raises(EvaluationError, match="out of range"):
        parse_sweep("0,15", 14)
    with pytest.raises(EvaluationError, match="expected 'all'"):
        parse_sweep("3-1", 14)


def test_hf_evaluate_name_still_works_from_repo_root():
    """Our package is named `evaluate`; lm-eval tasks that `import evaluate` still get Hugging Face's API."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        version("evaluate")
    except PackageNotFoundError:
        pytest.skip("Hugging Face evaluate is not installed (pip install evaluate)")
    code = ("import evaluate, evaluate.evaluate, evaluate.loading; from evaluate import load, EvaluationModule; "
            "import evaluate.utils.logging; "
            "assert evaluate.evaluate.run_sweep and load.__module__ == 'evaluate.loading'; "
            "assert evaluate.__file__.startswith(%r); print('ok')" % os.path.join(ROOT, "evaluate"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


@pytest.mark.slow
def test_unknown_lm_eval_task_with_full_index(tmp_path, monkeypatch):
    """No cached name list: the full lm-eval index (tens of seconds) decides, and its names are cached."""
    from evaluate import tasks as tasks_mod
    from evaluate.tasks import TaskError, resolve_tasks

    monkeypatch.setenv("BOOMERANG_CACHE", str(tmp_path))
    with pytest.raises(TaskError, match="did you mean arc_easy"):
        resolve_tasks("arc_easyy", work_dir=str(tmp_path / "w"))
    cached = tasks_mod._cached_default_names()
    assert cached and "arc_easy" in cached and "mmlu" in cached
    ts = resolve_tasks("arc_easy", work_dir=str(tmp_path / "w2"))
    assert ts.names == ["arc_easy"] and "arc_easy" in ts.task_manager.all_tasks


def test_known_models_keep_their_scores(tiny, tmp_path, caplog):
    """A second sweep (the searched ladder's) takes the held-out scores of a model the first sweep scored on the
    same reference, and evaluates the models that differ; a different reference reuses nothing."""
    import logging

    from boomerang.models import load_model, load_tokenizer
    from evaluate.evaluate import SweepPoint, boomerang_points, model_identity, run_sweep
    from evaluate.heldout import HeldoutReference

    teacher, student = load_model(tiny["teacher"]), load_model(tiny["student"])
    tok = load_tokenizer(tiny["teacher"])
    reference = HeldoutReference(teacher, tok, tiny["corpus"], docs=3, max_tokens=16)
    names = {"teacher_name": "T", "student_name": "S"}
    first = run_sweep(boomerang_points(teacher, student, [0, 1], **names), str(tmp_path / "a"), None,
                      reference=reference, plots=False, device="cpu")
    by_name = {r["name"]: r for r in first}
    # the same models again, under other names, and one that no record holds (its metadata says another head)
    again = [SweepPoint(f"copy_{p.name}", p.build, {**p.metadata, "method": "searched", "curve": "searched"})
             for p in boomerang_points(teacher, student, [1], **names)]
    other = dict(again[1].metadata, lm_head_from="student")
    points = again + [SweepPoint("other", again[1].build, other)]
    with caplog.at_level(logging.INFO, logger="boomerang.evaluate"):
        second = {r["name"]: r for r in run_sweep(points, str(tmp_path / "b"), None, reference=reference,
                                                   plots=False, device="cpu", known=first)}
    assert second["copy_student"]["same_model_as"] == "student"
    assert second["copy_last_k01"]["same_model_as"] == "last_k01"
    for name in ("copy_student", "copy_last_k01"):
        twin = by_name[second[name]["same_model_as"]]
        assert second[name]["metrics"]["heldout_kl"] == twin["metrics"]["heldout_kl"]
        assert second[name]["heldout_scores"] == twin["heldout_scores"]
        assert second[name]["method"] == "searched"
    assert "same_model_as" not in second["other"] and second["other"]["wall_time_s"]["total"] > 0
    assert "its held-out scores reused" in caplog.text
    assert model_identity({"role": "intermediate", "layers": [["teacher", 0]]}) is None  # sources unknown

    other_ref = HeldoutReference(teacher, tok, tiny["corpus"], docs=2, max_tokens=16)
    third = run_sweep(again[:1], str(tmp_path / "c"), None, reference=other_ref, plots=False, device="cpu",
                      known=first)
    assert "same_model_as" not in third[0]


def test_logits_window_changes_no_score(tiny):
    """The head over the scored positions only (right-padded batches of unequal rows, one-token and longer
    continuations, a context ending in token 0) gives lm-eval's log-likelihoods and greedy flags unchanged."""
    from lm_eval.api.instance import Instance

    from boomerang.models import load_model, load_tokenizer
    from evaluate.evaluate import _token_counting_lm_class

    model, tok = load_model(tiny["student"], dtype=torch.float32), load_tokenizer(tiny["teacher"])
    rng = random.Random(1)
    pairs = [(" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12))),
              " " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 4)))) for _ in range(11)]
    requests = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]
    lm = _token_counting_lm_class()(pretrained=model, tokenizer=tok, batch_size=3)
    seen = []
    call = type(lm)._model_call

    def spy(self, inps, **kw):
        out = call(self, inps, **kw)
        seen.append((inps.shape[1], out.shape[1]))
        return out

    type(lm)._model_call = spy
    try:
        windowed = lm.loglikelihood(requests)
        lm.logits_window = False
        full = lm.loglikelihood(requests)
        # a real token 0 at the end of a context is counted as padding: a wider window, the same scores
        ids = [([5, 7, 0], [9]), ([3, 8, 6, 2, 11], [0, 12]), ([4, 4], [0, 0, 7]), ([6, 5, 4, 3, 2, 9, 8], [7])]
        lm.logits_window = True
        zero_windowed = lm._loglikelihood_tokens([(("a", "b"), c, d) for c, d in ids])
        lm.logits_window = False
        zero_full = lm._loglikelihood_tokens([(("a", "b"), c, d) for c, d in ids])
    finally:
        type(lm)._model_call = call
    for (a, ga), (b, gb) in zip(windowed + zero_windowed, full + zero_full):
        assert a == pytest.approx(b, abs=1e-4) and ga == gb
    assert any(out < length for length, out in seen)  # the window was narrower than the batch at least once
