"""Baselines: naive pruning, ShortGPT, LaCo and their command line, on tiny random models (CPU, seconds)."""

import json
import os

import pytest
import torch

from baselines import BaselineError, prune_to_layers
from baselines.family import load_baseline_metadata
from baselines.laco import (LacoSearch, build_from_slots, build_laco_model, initial_slots, merge_slots,
                            rdsc_merge_states, rdsc_merge_tensors, replay)
from baselines.naive import build_naive_pruning_model
from baselines.shortgpt import block_influence, build_shortgpt_model, shortgpt_layers
from boomerang.families import adapter_for
from boomerang.layer_map import LayerMap
from tiny_models import TINY_DECODERS, build, save_tiny_model


def _batches(seed=0, pad_row=True):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 128, (3, 12), generator=g)
    mask = torch.ones_like(ids)
    if pad_row:
        ids[1, 7:] = 0
        mask[1, 7:] = 0
    return [{"input_ids": ids, "attention_mask": mask}]


def _layers(model):
    return list(adapter_for(model).get_layers(model))


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


# ------------------------------------------------------------------------------------------ ShortGPT
def _make_identity(layer):
    """Zero the layer's residual writes (attention output and MLP down projection): x_out == x_in."""
    with torch.no_grad():
        layer.self_attn.o_proj.weight.zero_()
        layer.mlp.down_proj.weight.zero_()


def test_block_influence_is_zero_for_an_identity_layer_and_matches_hand_computation():
    model = build(TINY_DECODERS["llama"](4))
    _make_identity(_layers(model)[2])
    batches = _batches()
    bi = block_influence(model, batches)
    assert len(bi) == 4
    assert abs(bi[2]) < 1e-6  # cos(x, x) = 1 on every token
    # By hand: each real token's cosine between the input and output of layer i, sequences run unpadded.
    ids, mask = batches[0]["input_ids"], batches[0]["attention_mask"]
    sums, count = [0.0] * 4, 0
    for row in range(ids.shape[0]):
        n = int(mask[row].sum())
        with torch.no_grad():
            hs = model.model(input_ids=ids[row: row + 1, :n], output_hidden_states=True).hidden_states
            # hidden_states[-1] is after the final norm: the last layer's raw output = norm input.
            captured = {}
            h = _layers(model)[3].register_forward_hook(lambda m, a, o: captured.setdefault("out", o))
            model.model(input_ids=ids[row: row + 1, :n])
            h.remove()
        outs = list(hs[1:4]) + [captured["out"]]
        for i in range(4):
            x_in = hs[i][0]
            x_out = outs[i][0]
            sums[i] += sum(float(torch.dot(a, b) / (a.norm() * b.norm())) for a, b in zip(x_in, x_out))
        count += n
    expected = [1 - s / count for s in sums]
    assert bi == pytest.approx(expected, abs=1e-5)
    assert min(bi[0], bi[1], bi[3]) > 1e-3  # the other layers do change the hidden state


def test_shortgpt_removes_lowest_block_influence():
    bi = [0.9, 0.1, 0.3, 0.05, 0.3, 0.8]
    assert shortgpt_layers(bi, 6) == [0, 1, 2, 3, 4, 5]
    assert shortgpt_layers(bi, 5) == [0, 1, 2, 4, 5]
    assert shortgpt_layers(bi, 4) == [0, 2, 4, 5]
    assert shortgpt_layers(bi, 3) == [0, 2, 5]  # tie 0.3/0.3: the later layer goes first
    with pytest.raises(BaselineError, match="1..6"):
        shortgpt_layers(bi, 0)
    with pytest.raises(BaselineError, match="1..6"):
        shortgpt_layers(bi, 7)


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt_neox"])
def test_shortgpt_model_has_requested_depth_and_teacher_layers(family):
    teacher = build(TINY_DECODERS[family](6))
    batches = _batches()
    bi = block_influence(teacher, batches)
    for depth in (6, 4, 2, 1):
        model, info = build_shortgpt_model(teacher, depth, block_influences=bi)
        assert adapter_for(model).num_layers(model.config) == depth == len(_layers(model))
        assert info["teacher_layers"] == shortgpt_layers(bi, depth)
        ids = batches[0]["input_ids"]
        ref = prune_to_layers(teacher, info["teacher_layers"])
        torch.testing.assert_close(_logits(model, ids), _logits(ref, ids))
    with pytest.raises(BaselineError, match="calibration"):
        build_shortgpt_model(teacher, 3)


# ------------------------------------------------------------------------------------------ LaCo
def test_rdsc_merge_arithmetic():
    a, b, c = torch.tensor([1.0, 2.0]), torch.tensor([3.0, 5.0]), torch.tensor([4.0, 4.0])
    # a + (b - a) + (c - a) = [1 + 2 + 3, 2 + 3 + 2]
    torch.testing.assert_close(rdsc_merge_tensors([a, b, c]), torch.tensor([6.0, 7.0]))
    torch.testing.assert_close(rdsc_merge_tensors([a, b]), b)  # width 2 keeps the upper layer
    torch.testing.assert_close(rdsc_merge_tensors([a]), a)
    half = rdsc_merge_tensors([a.bfloat16(), b.bfloat16(), c.bfloat16()])
    assert half.dtype == torch.bfloat16
    merged = rdsc_merge_states([{"w": a, "n": torch.ones(1)}, {"w": b, "n": 2 * torch.ones(1)},
                                {"w": c, "n": 4 * torch.ones(1)}])
    torch.testing.assert_close(merged["n"], torch.tensor([5.0]))  # 1 + 1 + 3
    with pytest.raises(BaselineError, match="shapes"):
        rdsc_merge_tensors([a, torch.zeros(3)])


def test_laco_merged_model_weights_and_teacher_untouched():
    teacher = build(TINY_DECODERS["llama"](6))
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    layers = _layers(teacher)
    slots = merge_slots(initial_slots(6), 2, 3, layers)  # teacher 2,3,4 -> one layer
    slots = merge_slots(slots, 1, 2, layers)  # teacher 1 with the merged layer: keeps the merged layer's weights
    assert [s.covered for s in slots] == [(0,), (1, 2, 3, 4), (5,)]
    model = build_from_slots(teacher, slots)
    assert len(_layers(model)) == 3
    name = "mlp.up_proj.weight"
    p = {i: dict(layers[i].named_parameters())[name] for i in range(6)}
    expected = p[2] + (p[3] - p[2]) + (p[4] - p[2])
    torch.testing.assert_close(dict(_layers(model)[1].named_parameters())[name], expected)
    torch.testing.assert_close(dict(_layers(model)[2].named_parameters())[name], p[5])
    for k, v in teacher.state_dict().items():
        torch.testing.assert_close(v, before[k])
    # Replaying the merge list gives the same model.
    again = build_from_slots(teacher, replay(6, [(2, 3), (1, 2)], layers))
    ids = _batches()[0]["input_ids"]
    torch.testing.assert_close(_logits(again, ids), _logits(model, ids))


def test_laco_similarity_from_cached_inputs_equals_full_forward():
    teacher = build(TINY_DECODERS["llama"](6))
    batches = _batches()
    search = LacoSearch(teacher, batches)
    assert search.similarity(initial_slots(6), 3) == pytest.approx(1.0, abs=1e-6)
    slots = merge_slots(initial_slots(6), 3, 2, search.layers)
    fast = search.similarity(slots, 3)
    model = build_from_slots(teacher, slots)
    b = batches[0]
    with torch.no_grad():
        out = model.model(**b).last_hidden_state
        ref = teacher.model(**b).last_hidden_state
    cos = torch.nn.functional.cosine_similarity(out, ref, dim=-1)[b["attention_mask"].bool()]
    assert fast == pytest.approx(float(cos.mean()), abs=1e-5)
    assert fast < 0.9999


def test_laco_search_hits_every_depth_and_records_it():
    teacher = build(TINY_DECODERS["qwen2"](8))
    search = LacoSearch(teacher, _batches(), lowest_layer=1, interval=1)
    results = search.search([8, 7, 5, 3], merge_widths=(2, 3), thresholds=(0.99, 0.9, 0.5, 0.0), refine_steps=2)
    assert sorted(results) == [3, 5, 7, 8]
    for d, r in results.items():
        model, info = build_laco_model(teacher, r)
        assert len(_layers(model)) == d == info["depth"]
        rec = r["record"]
        assert rec["target_depth"] == d
        assert sorted(i for g in rec["chosen"]["groups"] for i in g) == list(range(8))
        if d < 8:
            assert rec["chosen"]["merge_width"] in (2, 3)
            assert any(w["reached"] for w in rec["widths"])
            # The recorded similarity is the similarity of the model built from the recorded merges.
            slots = replay(8, [tuple(m) for m in rec["chosen"]["merges"]], search.layers)
            assert search.similarity(slots, 0) == pytest.approx(rec["chosen"]["similarity"], abs=1e-5)
            # No reaching pass of the chosen width had a higher threshold than the chosen one.
            w = next(x for x in rec["widths"] if x["merge_width"] == rec["chosen"]["merge_width"])
            assert all(p["threshold"] <= w["threshold"] for p in w["probes"] if p["reached"])
    assert search.summary()["similarity_evaluations"] == search.evaluations > 0
    with pytest.raises(BaselineError, match="cannot reach"):
        LacoSearch(teacher, _batches(), lowest_layer=6, interval=1).search([2], merge_widths=(2,), thresholds=(0.0,))


# ------------------------------------------------------------------------------------------ naive pruning
def test_naive_pruning_equals_patching_an_untrained_student(tmp_path):
    from patching.patch import build_intermediate_model
    from train.init_student import init_student, save_student

    from boomerang.models import load_model, load_tokenizer

    teacher_dir = save_tiny_model(str(tmp_path / "teacher"), TINY_DECODERS["llama"](8))
    teacher = load_model(teacher_dir)
    layer_map = LayerMap.from_recipe(8, 1, 2, 2)
    student = init_student(teacher, layer_map)
    folder = str(tmp_path / "student")
    save_student(student, load_tokenizer(teacher_dir), layer_map, folder)
    ids = _batches()[0]["input_ids"]
    for first in (False, True):
        for k in range(layer_map.max_patch + 1):
            model, info = build_naive_pruning_model(teacher, layer_map, k, first)
            patched, _ = build_intermediate_model(teacher_dir, folder, k, first, dtype=torch.float32)
            assert info["depth"] == layer_map.plan(k, first).depth == len(_layers(model))
            assert info["teacher_layers"] == layer_map.naive_pruning_layers(k, first)
            torch.testing.assert_close(_logits(model, ids), _logits(patched, ids))
    with pytest.raises(BaselineError, match="0..3"):
        build_naive_pruning_model(teacher, layer_map, 4)
    with pytest.raises(BaselineError, match="10-layer teacher"):
        build_naive_pruning_model(teacher, LayerMap.from_recipe(10, 1, 2, 2), 0)


# ------------------------------------------------------------------------------------------ command line
@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory):
    from train.init_student import main as init_main

    root = tmp_path_factory.mktemp("baselines")
    teacher = save_tiny_model(str(root / "teacher"), TINY_DECODERS["llama"](8))
    student = str(root / "student")
    init_main(["--teacher_model_name_or_path", teacher, "--save_directory", student])
    words = "the man said that the people of the state were not good but the world is new and we will see".split()
    g = torch.Generator().manual_seed(0)
    calib = root / "calib.jsonl"
    with open(calib, "w") as f:
        for i in range(6):
            idx = torch.randint(0, len(words), (30,), generator=g)
            f.write(json.dumps({"id": i, "text": " ".join(words[j] for j in idx)}) + "\n")
    return teacher, student, str(calib), root


def test_cli_builds_saves_and_reloads_every_family(tiny_pair, tmp_path):
    from boomerang.models import load_model
    from evaluate.baselines import main

    teacher, student, calib, _ = tiny_pair
    out = str(tmp_path / "families")
    args = ["--method", "naive", "shortgpt", "laco", "--teacher_model_name_or_path", teacher,
            "--student_model_name_or_path", student, "--calibration_data", calib, "--save_directory", out,
            "--calibration_samples", "4", "--calibration_seq_len", "16", "--laco_calibration_samples", "2",
            "--laco_calibration_seq_len", "16", "--laco_thresholds", "0.9,0.5,0.0", "--laco_interval", "1",
            "--sizes", "0-3"]
    summary = main(args)
    lm = LayerMap.load(student)
    depths = [lm.plan(k).depth for k in range(4)]
    assert depths == [5, 6, 7, 8]
    teacher_model = load_model(teacher)
    ids = _batches()[0]["input_ids"]
    for method in ("naive", "shortgpt", "laco"):
        fam = json.load(open(os.path.join(out, method, "family.json")))
        assert [p["depth"] for p in fam["points"]] == depths
        for p in fam["points"]:
            model = load_model(p["folder"])
            assert len(_layers(model)) == p["depth"]
            meta = load_baseline_metadata(p["folder"])
            assert meta["method"] == method and meta["parameters"]["total"] > 0
            if method != "laco":  # pure pruning: the reloaded model is the teacher's kept layers
                ref = prune_to_layers(teacher_model, meta["teacher_layers"])
                torch.testing.assert_close(_logits(model, ids), _logits(ref, ids))
            assert os.path.isfile(os.path.join(p["folder"], "tokenizer.json"))
    naive = json.load(open(os.path.join(out, "naive", "family.json")))["points"]
    # the tiny teacher is a Llama: the paper's rule patches (and prunes naively) first-k
    assert [p["teacher_layers"] for p in naive] == [lm.naive_pruning_layers(k, True) for k in range(4)]
    search = json.load(open(os.path.join(out, "laco", "search.json")))
    assert sorted(int(d) for d in search["depths"]) == depths
    bi = json.load(open(os.path.join(out, "shortgpt", "block_influence.json")))
    assert len(bi["block_influence"]) == 8
    assert summary["laco"]["points"] == [f"laco_d{d:02d}" for d in depths]
    # A rerun reuses the block influences, the LaCo search and the model folders.
    stamp = os.path.getmtime(os.path.join(out, "laco", "depth-05", "model.safetensors"))
    main(args)
    assert os.path.getmtime(os.path.join(out, "laco", "depth-05", "model.safetensors")) == stamp


def test_cli_evaluates_baselines_like_patched_models(tiny_pair, tmp_path):
    from evaluate.baselines import main

    teacher, student, calib, root = tiny_pair
    out = str(tmp_path / "eval")
    summary = main(["--method", "naive", "shortgpt", "--teacher_model_name_or_path", teacher,
                    "--student_model_name_or_path", student, "--calibration_data", calib, "--save_directory", out,
                    "--calibration_samples", "4", "--calibration_seq_len", "16", "--sizes", "0,2",
                    "--tasks", f"local_ppl:{calib}", "--limit", "2", "--boomerang_student", student])
    names = sorted(r["name"] for r in summary["evaluation"])
    assert names == ["boomerang_student_d05", "boomerang_student_d07", "naive_d05", "naive_d07",
                     "shortgpt_d05", "shortgpt_d07", "teacher"]
    for r in summary["evaluation"]:
        ppl = r["metrics"]["local_ppl_calib"]["token_perplexity"]["value"]
        assert ppl > 1
    by = {r["name"]: r for r in summary["evaluation"]}
    # An untrained student patched at k is the naive-pruned model of the same size: same perplexity.
    for d in ("05", "07"):
        a = by[f"naive_d{d}"]["metrics"]["local_ppl_calib"]["token_perplexity"]["value"]
        b = by[f"boomerang_student_d{d}"]["metrics"]["local_ppl_calib"]["token_perplexity"]["value"]
        assert a == pytest.approx(b, rel=1e-4)
    assert os.path.isfile(os.path.join(out, "eval", "summary.md"))


def test_cli_rejects_bad_input_before_loading_weights(tiny_pair, tmp_path, capsys):
    from evaluate.baselines import main

    teacher, student, calib, _ = tiny_pair
    base = ["--teacher_model_name_or_path", teacher, "--student_model_name_or_path", student,
            "--save_directory", str(tmp_path / "x")]
    with pytest.raises(SystemExit):
        main(["--method", "shortgpt", *base])
    assert "needs --calibration_data" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--method", "naive", *base, "--sizes", "0-9"])
    err = capsys.readouterr().err
    assert "--sizes" in err and "0..3" in err
    with pytest.raises(SystemExit):
        main(["--method", "laco", *base, "--calibration_data", str(tmp_path / "nope.jsonl")])
    assert "no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--method", "laco", *base, "--calibration_data", calib, "--laco_merge_widths", "1"])
    assert ">= 2" in capsys.readouterr().err


def test_cli_takes_a_random_init_student(tiny_pair, tmp_path):
    from evaluate.baselines import main
    from train.init_student import main as init_main

    teacher, _, _, _ = tiny_pair
    student = str(tmp_path / "random-student")
    init_main(["--teacher_model_name_or_path", teacher, "--save_directory", student, "--random_initialization"])
    out = str(tmp_path / "naive")
    summary = main(["--method", "naive", "--teacher_model_name_or_path", teacher, "--student_model_name_or_path",
                    student, "--save_directory", out, "--no_save_models"])
    assert summary["naive"]["points"] == ["naive_d05", "naive_d06", "naive_d07", "naive_d08"]
    fam = json.load(open(os.path.join(out, "naive", "family.json")))
    assert fam["models_saved"] is False and [p["depth"] for p in fam["points"]] == [5, 6, 7, 8]
