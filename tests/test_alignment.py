"""evaluate.alignment: seam alignment and quick ladder perplexity, on a tiny Llama pair.

An untrained student is a pure copy, so every number has a value known in advance: its embedding
pair aligns exactly, the teacher-sized patch scores the teacher's perplexity, and swapping a part
for the teacher's identical copy changes nothing. A perturbed ("trained") student must differ.
"""

import json
import math
import os
import re

import pytest
import torch

import tiny_models
from boomerang.assemble import ModelSource
from boomerang.layer_map import LayerMap
from boomerang.models import load_model, load_tokenizer
from evaluate.bootstrap import step_changes
from evaluate import alignment as A
from train.init_student import main as init_student_main

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("alignment")
    tdir = tiny_models.save_tiny_model(str(root / "teacher"), tiny_models.llama(8, tie=True))
    sdir = str(root / "student")
    init_student_main(["--teacher_model_name_or_path", tdir, "--save_directory", sdir])
    data = root / "heldout.jsonl"
    with open(data, "w") as f:
        for i in range(3):
            f.write(json.dumps({"text": " ".join(f"w{(i * 7 + j) % 40}" for j in range(30))}) + "\n")
    return {"teacher": tdir, "student": sdir, "data": str(data), "root": root}


def _unpadded(markdown):  # tables are laid out by pandas (columns padded to a common width)
    return re.sub(r" +", " ", markdown)


def _batches(pair, max_tokens=16):
    return A.encode_documents(load_tokenizer(pair["teacher"]), pair["data"], None, max_tokens)


def test_token_perplexity_is_exp_of_mean_token_nll(pair):
    model = load_model(pair["teacher"], torch.float32).eval()
    batches = _batches(pair)
    with torch.no_grad():
        losses = [model(input_ids=b, labels=b).loss.item() for b in batches]
    counts = [b.shape[1] - 1 for b in batches]
    expected = math.exp(sum(l * c for l, c in zip(losses, counts)) / sum(counts))
    assert A.token_perplexity(model, batches) == pytest.approx(expected, rel=1e-5)


def test_pairs_of_an_untrained_student(pair):
    teacher = load_model(pair["teacher"], torch.float32).eval()
    student = load_model(pair["student"], torch.float32).eval()
    lm = LayerMap.load(pair["student"], 8)
    rows = A.pair_alignment(student, teacher, lm, _batches(pair))
    assert [(r["student_index"], r["teacher_index"]) for r in rows] == lm.cosine_pairs()
    first = rows[0]
    assert first["cosine"] == pytest.approx(1.0, abs=1e-5) and first["relative_l2"] == pytest.approx(0.0, abs=1e-5)
    # student layer 0 is a copy of teacher layer 0 but stands for teacher layers 0-1: not aligned yet
    assert rows[1]["cosine"] < 0.999


def test_ladder_of_an_untrained_student(pair):
    teacher = load_model(pair["teacher"], torch.float32).eval()
    student = load_model(pair["student"], torch.float32).eval()
    lm = LayerMap.load(pair["student"], 8)
    batches = _batches(pair)
    rows = A.ladder_perplexity(ModelSource(teacher), ModelSource(student), lm, batches, False, list(A.VARIANTS))
    assert [r["k"] for r in rows] == list(range(lm.max_patch + 1))
    assert rows[-1]["paper"] == pytest.approx(A.token_perplexity(teacher, batches), rel=1e-5)
    assert rows[-1]["teacher_embeddings"] is None  # the teacher already has the teacher's embeddings
    for r in rows:  # a pure copy's parts are the teacher's: swapping them changes nothing
        assert r["teacher_embeddings"] is None or r["teacher_embeddings"] == pytest.approx(r["paper"], rel=1e-5)
        assert r["student_head"] == pytest.approx(r["paper"], rel=1e-5)


def test_variants_take_the_part_from_the_other_model(pair):
    lm = LayerMap.load(pair["student"], 8)
    plan = lm.plan(0)
    assert (plan.embeddings_from, plan.lm_head_from) == ("student", "teacher")
    v = A.variant_plan(plan, "teacher_embeddings")
    assert v.embeddings_from == "teacher" and v.layers == plan.layers and v.lm_head_from == "teacher"
    v = A.variant_plan(plan, "student_head")
    assert (v.final_norm_from, v.lm_head_from, v.embeddings_from) == ("student", "student", "student")


def test_alignment_report_pairs_only_and_first_k(pair):
    teacher = load_model(pair["teacher"], torch.float32).eval()
    student = load_model(pair["student"], torch.float32).eval()
    lm = LayerMap.load(pair["student"], 8)
    batches = _batches(pair)
    kw = dict(teacher_name="t", student_name="s", data=pair["data"], max_tokens=16)
    short = A.alignment_report(teacher, student, lm, batches, perplexities=False, **kw)
    full = A.alignment_report(teacher, student, lm, batches, patch_first_k_layers=True, **kw)
    assert short["pairs"] == full["pairs"] and short["ladder"] == [] and short["student_ppl"] is None
    assert full["order"] == "first-k" and [r["k"] for r in full["ladder"]] == list(range(lm.max_patch + 1))
    assert full["ladder"][-1]["paper"] == pytest.approx(full["teacher_ppl"], rel=1e-5)
    assert len(full["steps"]) == len(full["ladder"]) and full["document_tokens"] == [b.shape[1] - 1 for b in batches]
    # first-k k=0 runs every student layer: an untrained student with its (identical) embeddings and head
    assert full["ladder"][0]["paper"] == pytest.approx(full["student_ppl"], rel=1e-5)
    assert "first-k" in A.render(full) and "| k | depth | paper plan |" in _unpadded(A.render(full))


def test_cli_trained_student_writes_report(pair, tmp_path):
    trained = str(tmp_path / "trained")
    student = load_model(pair["student"], torch.float32)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    student.save_pretrained(trained)
    with open(os.path.join(pair["student"], "student_config.json")) as f:
        open(os.path.join(trained, "student_config.json"), "w").write(f.read())
    out = str(tmp_path / "report")
    report = A.main(["--teacher_model_name_or_path", pair["teacher"], "--student_model_name_or_path", trained,
                     "--data", pair["data"], "--max_tokens", "16", "--variants", "teacher_embeddings",
                     "--save_directory", out])
    assert report["pairs"][0]["cosine"] < 0.9999  # perturbed embeddings
    assert report["ladder"][0]["teacher_embeddings"] != pytest.approx(report["ladder"][0]["paper"], rel=1e-6)
    saved = json.load(open(os.path.join(out, "alignment.json")))
    assert saved["ladder"] == report["ladder"] and len(saved["steps"]) == len(report["ladder"])
    assert "| k | depth | paper plan | teacher_embeddings |" in _unpadded(open(os.path.join(out, "alignment.md")).read())


@pytest.mark.parametrize("args, message", [
    (["--variants", "bogus"], "--variants: unknown"),
    (["--data", "/nonexistent/heldout.jsonl"], "not found"),
])
def test_cli_bad_input_fails_before_loading(pair, capsys, monkeypatch, args, message):
    monkeypatch.setattr(A, "load_model", lambda *a, **k: pytest.fail("loaded a model"))
    base = {"--teacher_model_name_or_path": pair["teacher"], "--student_model_name_or_path": pair["student"],
            "--data": pair["data"]}
    for flag, value in zip(args[::2], args[1::2]):
        base[flag] = value
    with pytest.raises(SystemExit):
        A.main([x for kv in base.items() for x in kv])
    assert message in capsys.readouterr().err


def test_step_changes_ratio_interval_and_verdict():
    counts = [10, 20, 30, 40]
    base = [25.0, 41.0, 70.0, 95.0]
    worse = [n + 0.1 * c for n, c in zip(base, counts)]  # +0.1 nat on every token of every document
    mixed = [base[0] + 5.0, base[1] - 5.0, base[2] + 4.0, base[3] - 4.0]  # no change in total
    steps = step_changes(["a", "b", "c", "d"], [base, worse, worse, mixed], counts)
    assert [s["from"] + s["to"] for s in steps] == ["ab", "bc", "cd"]
    assert steps[0]["ratio"] == pytest.approx(math.exp(0.1)) and steps[0]["verdict"] == "rises"
    assert steps[0]["ci95"] == pytest.approx([math.exp(0.1)] * 2)  # the same change in every document
    assert steps[1]["ratio"] == 1.0 and steps[1]["ci95"] == [1.0, 1.0] and steps[1]["verdict"] == "within noise"
    assert steps[2]["ratio"] == pytest.approx(math.exp(-0.1)) and steps[2]["verdict"] in ("falls", "within noise")
    lo, hi = steps[2]["ci95"]
    assert lo <= steps[2]["ratio"] <= hi
