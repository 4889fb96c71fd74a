"""patching.search: the space, the scorer with its prefix cache, greedy and beam search, budgets."""

import copy
import itertools
import json
import os

import pytest
import torch

import tiny_models
from boomerang.assemble import ModelSource
from boomerang.layer_map import LayerMap
from boomerang.scoring import TeacherReference
from patching import search as S
from patching import patch as P
from patching.frontier import scored_entries
from patching.patch import assemble_plan, count_plan_parameters
from train.init_student import init_student

pytestmark = pytest.mark.usefixtures("one_thread")


def _pair(family="llama", layers=8, recipe=(1, 2, 2), tie=True, seed=0):
    """An in-memory teacher and a student cut from it and perturbed, as training would."""
    teacher = tiny_models.build(tiny_models.TINY_DECODERS[family](layers, tie), seed)
    lm = LayerMap.from_recipe(layers, *recipe)
    student = copy.deepcopy(init_student(teacher, lm, False, torch.float32, 0))
    torch.manual_seed(seed + 1)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p) * 0.15)
    student.boomerang_layer_map = lm
    return teacher, student.eval(), lm


def _ids(n=3, length=12, seed=0):
    return torch.randint(3, tiny_models.VOCAB, (n, length), generator=torch.Generator().manual_seed(seed))


def _space(teacher, student, lm, allow_drop=False):
    return S.SearchSpace(ModelSource(teacher), ModelSource(student), lm, allow_drop)


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma3_text", "gpt_neox", "gpt2"])
def test_scorer_with_prefix_cache_equals_the_assembled_model(family):
    teacher, student, lm = _pair(family)
    space = _space(teacher, student, lm, allow_drop=True)
    ids = _ids()
    scorer = S.Scorer(space, ids)
    ref = TeacherReference(teacher, [r[None] for r in ids])
    rng = torch.Generator().manual_seed(0)
    cands = [space.student_candidate(), space.teacher_candidate()]
    for _ in range(12):  # random points of the space, scored in an order that shares prefixes
        blocks = tuple(opts[int(torch.randint(len(opts), (1,), generator=rng))] for opts in space.options)
        if sum(len(b) for b in blocks):
            cands.append(S.Candidate(blocks, ["student", "teacher"][int(torch.randint(2, (1,), generator=rng))],
                                     ["student", "teacher"][int(torch.randint(2, (1,), generator=rng))]))
    for c in cands:
        model = assemble_plan(space.teacher, space.student, c.plan())
        want = ref.score(model).kl_per_token
        assert scorer(c) == pytest.approx(want, rel=1e-4, abs=1e-6), c.codes()
        # parameters are computed, not built: equal to counting the assembled model
        assert space.params(c) == count_plan_parameters(space.teacher, space.student, c.plan())["total"]
    assert scorer(space.teacher_candidate()) == pytest.approx(0.0, abs=1e-6)
    if family != "gpt2":
        assert scorer.stats["layers_reused"] > 0  # the cache was used
    else:
        assert scorer.stats["layers_reused"] == 0  # gpt2 adds position embeddings to inputs_embeds: no reuse


@pytest.mark.parametrize("allow_drop", [False, True])
def test_large_beam_finds_the_exhaustive_optimum(allow_drop):
    # 4 teacher layers, (1, 2, 1): copied [0, 2, 3], blocks [0, 2), [2, 3), [3, 4): small enough to enumerate
    teacher, student, lm = _pair("llama", 4, (1, 2, 1))
    ids = _ids()
    result = S.run_search(teacher, student, lm, ids, beam_width=10_000, allow_drop=allow_drop, use_greedy=False)
    space = _space(teacher, student, lm, allow_drop)
    scorer = S.Scorer(space, ids)
    best: dict[int, float] = {}
    n = 0
    for blocks in itertools.product(*space.options):
        for emb, head in itertools.product(("student", "teacher"), repeat=2):
            c = S.Candidate(blocks, emb, head)
            if c.depth:
                n += 1
                best[c.depth] = min(best.get(c.depth, float("inf")), scorer(c))
    assert n == (2 * 2 * 2 * 4 if not allow_drop else 5 * 3 * 3 * 4 - 4)
    ladder = {e["depth"]: e["calibration_kl"] for e in result["depth_ladder"]}
    assert set(ladder) == set(best)
    for d in best:
        assert ladder[d] == pytest.approx(best[d], rel=1e-6, abs=1e-9), d
    assert result["cost"]["models_scored"] == n  # the large beam scored every point once


def test_ladder_is_never_worse_than_either_fixed_order_and_is_deterministic():
    teacher, student, lm = _pair("llama", 8)
    ids = _ids()
    a = S.run_search(teacher, student, lm, ids, beam_width=1)
    b = S.run_search(teacher, student, lm, ids, beam_width=1)
    strip = lambda r: [(e["depth"], e["calibration_kl"], e["description"]) for e in r["ladder"]]  # noqa: E731
    assert strip(a) == strip(b)
    ladder = {e["depth"]: e["calibration_kl"] for e in a["depth_ladder"]}
    for order, entries in a["fixed_orders"].items():
        assert [e["k"] for e in entries] == list(range(lm.max_patch + 1))
        for e in entries:
            assert ladder[e["depth"]] <= e["calibration_kl"] + 1e-12, (order, e["depth"])
            # by size: a frontier model no larger is no worse
            assert any(f["params"] <= e["params"] and f["calibration_kl"] <= e["calibration_kl"] + 1e-12
                       for f in a["ladder"]), (order, e["k"])
    assert a["depth_ladder"][0]["depth"] == lm.num_student_layers and a["depth_ladder"][-1]["depth"] == 8
    assert a["ladder"][-1]["depth"] == 8
    assert a["ladder"][-1]["calibration_kl"] == pytest.approx(0.0, abs=1e-6)  # the teacher
    # greedy walks from the student to the teacher, one change toward the teacher at a time
    space = _space(teacher, student, lm)
    path = S.greedy(space, S.Scorer(space, ids))
    assert path[0] == space.student_candidate() and path[-1] == space.teacher_candidate()
    assert len(path) == lm.num_student_layers + 2 + 1  # every position, the embeddings and the head, once each


def test_greedy_takes_the_best_gain_per_added_parameter():
    teacher, student, lm = _pair("llama", 8)
    space = _space(teacher, student, lm)
    scorer = S.Scorer(space, _ids())
    path = S.greedy(space, scorer)
    for cur, nxt in zip(path, path[1:]):
        kl, p = scorer(cur), space.params(cur)

        def key(c):
            gain, added = kl - scorer(c), space.params(c) - p
            return (1, gain / added) if added > 0 else ((2, gain) if gain > 0 else (0, gain))

        assert max(key(c) for c in space.toward_teacher(cur)) == key(nxt)


def _write_plan(tmp_path, family="llama"):
    teacher, student, lm = _pair(family, 8)
    tdir, sdir = str(tmp_path / "teacher"), str(tmp_path / "student")
    teacher.save_pretrained(tdir)
    tiny_models.save_tiny_tokenizer(tdir)
    student.save_pretrained(sdir)
    lm.save(sdir)
    data = tmp_path / "calib.jsonl"
    with open(data, "w") as f:
        for i in range(6):
            f.write(json.dumps({"text": " ".join(["the", "a", "of", "and", "to", "in"][(i + j) % 6] for j in range(40))}) + "\n")
    out = tmp_path / "search"
    result = S.main(["--teacher_model_name_or_path", tdir, "--student_model_name_or_path", sdir,
                     "--calibration_data", str(data), "--save_directory", str(out), "--calibration_samples", "4",
                     "--calibration_seq_len", "16", "--beam_width", "1"])
    return tdir, sdir, out, result


def test_cli_writes_search_json_and_patch_builds_the_budgeted_model(tmp_path):
    from boomerang.models import load_model
    from patching.patch import main as patch_main

    tdir, sdir, out, result = _write_plan(tmp_path)
    saved = json.loads((out / "search.json").read_text())
    for e in saved["ladder"] + saved["fixed_orders"]["last-k"] + saved["fixed_orders"]["first-k"]:
        assert {"params", "depth", "calibration_kl", "description"} <= set(e)
    assert saved["cost"]["models_scored"] > 0 and saved["calibration"]["samples"] == 4
    sizes = sorted(e["params"] for e in saved["ladder"])
    budget = sizes[len(sizes) // 2]
    dest = tmp_path / "chosen"
    patch_main(["--teacher_model_name_or_path", tdir, "--student_model_name_or_path", sdir, "--save_directory",
                str(dest), "--plan", str(out / "search.json"), "--target_params", str(budget), "--dtype", "float32"])
    folder = dest
    model = load_model(str(folder))
    info = json.loads((folder / "boomerang_provenance.json").read_text())
    assert info["parameters"]["total"] <= budget and info["search"]["predicted"]["params"] == info["parameters"]["total"]
    fits = [e for e in saved["ladder"] if e["params"] <= budget]
    assert info["search"]["calibration_kl"] == min(e["calibration_kl"] for e in fits)
    assert sum(p.numel() for p in model.parameters()) <= budget
    assert info["measured"]["calibration_kl"] == pytest.approx(info["search"]["calibration_kl"], rel=1e-4)
    # a memory budget between two sizes: the best model whose weights and KV cache fit
    from boomerang.assemble import CheckpointSource

    t_src, s_src = CheckpointSource(tdir), CheckpointSource(sdir)
    mem = {i: P.entry_memory_bytes(t_src, s_src, e, 1, 32, 4) / 2**30 for i, e in enumerate(saved["ladder"])}
    limit = sorted(mem.values())[len(mem) // 2]
    d2 = tmp_path / "chosen-memory"
    patch_main(["--teacher_model_name_or_path", tdir, "--student_model_name_or_path", sdir, "--save_directory",
                str(d2), "--plan", str(out), "--max_memory_gb", str(limit), "--batch_size", "1", "--context_length", "32",
                "--dtype", "float32"])
    info2 = json.loads(d2.joinpath("boomerang_provenance.json").read_text())
    assert info2["search"]["predicted"]["memory_gb"] <= limit
    scored = scored_entries(saved)  # a memory budget chooses among every scored model (the frontier in memory)
    assert info2["search"]["calibration_kl"] == min(
        e["calibration_kl"] for e in scored if P.entry_memory_bytes(t_src, s_src, e, 1, 32, 4) / 2**30 <= limit)
    # a latency budget that every size meets: the best of the ladder (the teacher)
    d3 = tmp_path / "chosen-latency"
    patch_main(["--teacher_model_name_or_path", tdir, "--student_model_name_or_path", sdir, "--save_directory",
                str(d3), "--plan", str(out), "--max_latency_ms", "100000", "--batch_size", "1", "--context_length", "8",
                "--dtype", "float32"])
    info3 = json.loads(d3.joinpath("boomerang_provenance.json").read_text())
    assert info3["search"]["calibration_kl"] == min(e["calibration_kl"] for e in saved["ladder"])
    assert info3["search"]["predicted"]["latency_ms"] > 0 and info3["measured"]["latency_ms"] > 0


@pytest.mark.parametrize("flag, value, message", [
    ("--target_params", "1", "below the smallest model of the plan"),
    ("--target_params", "10G", "the teacher itself"),
    ("--target_params", "12 parsecs", "cannot read a parameter count"),
    ("--max_memory_gb", "2 furlongs", "expected a number of GB"),
    ("--max_memory_gb", "0", "must be positive"),
    ("--max_latency_ms", "fast", "expected milliseconds"),
])
def test_bad_budgets_fail_before_any_model_loads(tmp_path, monkeypatch, capsys, flag, value, message):
    from patching import patch as P

    tdir, sdir, out, _ = _write_plan(tmp_path)
    monkeypatch.setattr(P, "assemble", lambda *a, **k: pytest.fail("a model was built before the error"))
    monkeypatch.setattr("boomerang.models.load_model", lambda *a, **k: pytest.fail("a model loaded before the error"))
    monkeypatch.setattr(P, "load_model", lambda *a, **k: pytest.fail("a model loaded before the error"))
    with pytest.raises(SystemExit):
        P.main(["--teacher_model_name_or_path", tdir, "--student_model_name_or_path", sdir, "--save_directory",
                str(tmp_path / "x"), "--plan", str(out), flag, value])
    assert message in capsys.readouterr().err


def test_memory_budget_counts_weights_and_kv_cache():
    from boomerang.families import adapter_for_config

    cfg = tiny_models.llama(8)
    adapter = adapter_for_config(cfg)
    # 2 (k, v) x batch x length x kv heads x head dim x bytes, every layer
    assert adapter.kv_cache_bytes(cfg, 2, 100, 4) == 8 * 2 * 2 * 100 * 2 * (32 // 4) * 4
    q = tiny_models.qwen2(8)  # sliding window 16 on some layers: those keep 16 positions
    types = q.layer_types
    want = sum(2 * 1 * (16 if t == "sliding_attention" else 100) * 2 * 8 * 2 for t in types)
    assert adapter_for_config(q).kv_cache_bytes(q, 1, 100, 2) == want


def test_evaluate_sweep_of_a_plan(tmp_path):
    from evaluate.evaluate import main as eval_main

    tdir, sdir, out, result = _write_plan(tmp_path)
    heldout = tmp_path / "calib.jsonl"
    records = eval_main(["--teacher_model_name_or_path", tdir, "--student_model_name_or_path", sdir,
                         "--save_directory", str(tmp_path / "eval"), "--sweep", "--plan", str(out),
                         "--tasks", "", "--heldout_kl", str(heldout), "--dtype", "float32"])
    names = sorted(r["name"] for r in records)
    assert names == sorted(f"searched_p{e['params']}_d{e['depth']:02d}" for e in result["ladder"])
    assert all(r["curve"] == "searched" and "heldout_kl" in r["metrics"] for r in records)


def test_a_teacher_and_student_in_two_dtypes_are_refused_before_scoring():
    teacher, student, lm = _pair("llama", 8)
    with pytest.raises(S.SearchError, match="torch.float32 and the student torch.bfloat16"):
        S.run_search(teacher, student.to(torch.bfloat16), lm, _ids(), beam_width=1)


# ---------------------------------------------------------------------------------------------- the frontier
def _dominated(e, others):
    """Another model no larger with a KL no higher, better in one of the two."""
    return any(o["params"] <= e["params"] and o["calibration_kl"] <= e["calibration_kl"]
               and (o["params"], o["calibration_kl"]) != (e["params"], e["calibration_kl"]) for o in others)


@pytest.mark.parametrize("family", ["llama", "qwen3", "gpt_neox"])
@pytest.mark.parametrize("tie", [True, False])
def test_no_frontier_member_is_dominated_and_the_gaps_are_filled(family, tie):
    teacher, student, lm = _pair(family, 8, tie=tie)
    ids = _ids()
    result = S.run_search(teacher, student, lm, ids, beam_width=0, allow_drop=family == "qwen3")  # greedy, gaps
    ladder, cands = result["ladder"], result["candidates"]
    # ordered by parameters, KL falling at every step, no member beaten by any scored model no larger
    assert [e["params"] for e in ladder] == sorted(e["params"] for e in ladder)
    assert all(b["params"] > a["params"] and b["calibration_kl"] < a["calibration_kl"]
               for a, b in zip(ladder, ladder[1:]))
    for e in ladder:
        assert not _dominated(e, cands), e["description"]
    on = {(e["params"], e["calibration_kl"]) for e in ladder}
    assert all(_dominated(c, ladder) or (c["params"], c["calibration_kl"]) in on for c in cands)
    # the teacher at the top; nothing larger than it, nothing the student's size and worse than it
    space = _space(teacher, student, lm, allow_drop=family == "qwen3")
    assert ladder[-1]["params"] == space.params(space.teacher_candidate()) and ladder[-1]["calibration_kl"] < 1e-6
    student_e = next(e for e in result["fixed_orders"]["last-k"] if e["k"] == 0)
    assert ladder[0]["params"] <= space.params(space.student_candidate())
    # every entry a ladder had keeps its fields; depth is a property, several members may share one
    assert all({"params", "depth", "calibration_kl", "description", "blocks", "layers", "found_by"} <= set(e)
               for e in ladder)
    # the gaps: where two members are further apart than the largest teacher block, no model of the whole
    # space (enumerated) lies between them with a lower KL than the member below
    max_gap = max(space.block_params)
    assert result["search"]["max_gap_params"] == max_gap
    wide = [(a, b) for a, b in zip(ladder, ladder[1:]) if b["params"] - a["params"] > max_gap]
    if wide:
        scorer = S.Scorer(space, ids)
        for blocks in itertools.product(*space.options):
            for emb, head in itertools.product(("student", "teacher"), repeat=2):
                c = S.Candidate(blocks, emb, head)
                if not c.depth:
                    continue
                for a, b in wide:
                    if a["params"] < space.params(c) < b["params"]:
                        assert scorer(c) >= a["calibration_kl"] - 1e-9, (c.codes(), a["description"])
    assert result["search"]["widest_gap_params"] == max((b["params"] - a["params"] for a, b in zip(ladder, ladder[1:])),
                                                        default=0)
    del student_e


@pytest.mark.parametrize("tie", [True, False])
def test_gap_filling_leaves_no_gap_the_space_could_fill(tie):
    # from a frontier of two (student and teacher) and every gap counted wide: after filling, no model of the
    # whole space (enumerated) lies inside a gap of the frontier with a lower KL than the member below it
    teacher, student, lm = _pair("llama", 6, tie=tie)  # 4 positions: 64 models in the whole space
    space = _space(teacher, student, lm)
    score = S.Scorer(space, _ids())
    lo, hi = space.student_candidate(), space.teacher_candidate()
    for c in (lo, hi):
        score(c)
    added = S.fill_gaps(space, score, 0, per_gap=1000)
    assert added and all(space.params(lo) <= space.params(c) < space.params(hi) for c in added)
    front = S.search_frontier(space, score)
    assert len(front) > 2
    for blocks in itertools.product(*space.options):
        for emb, head in itertools.product(("student", "teacher"), repeat=2):
            c = S.Candidate(blocks, emb, head)
            for a, b in zip(front, front[1:]):
                if space.params(a) < space.params(c) < space.params(b):
                    assert score(c) >= score(a) - 1e-9, (c.codes(), a.codes())


def test_an_old_search_json_is_read_as_its_frontier(tmp_path):
    from patching.frontier import as_frontier_plan

    teacher, student, lm = _pair("llama", 8, tie=True)
    result = S.run_search(teacher, student, lm, _ids(), beam_width=0)
    old = {**result, "ladder": result["depth_ladder"], "search": {k: v for k, v in result["search"].items()
                                                                   if k != "ladder"}}
    rebuilt = as_frontier_plan(old)
    assert [(e["params"], e["calibration_kl"], e["layers"], e["lm_head_from"]) for e in rebuilt["ladder"]] == \
        [(e["params"], e["calibration_kl"], e["layers"], e["lm_head_from"]) for e in result["ladder"]]
    assert [e["description"] for e in rebuilt["ladder"]] == [e["description"] for e in result["ladder"]]
    assert as_frontier_plan(result) is result
