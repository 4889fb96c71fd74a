"""The layer map against the method's facts (../shared/docs/method.md, worked on SmolLM2): recipes, cosine pairs, every patched size in both orders."""

import json

import pytest

from boomerang.layer_map import LayerMap, LayerMapError, format_layers


def _evens(a, b):
    return list(range(a, b + 1, 2))


def _odds(a, b):
    return list(range(a, b + 1, 2))


@pytest.mark.parametrize(
    "L, recipe, expected",
    [
        (36, (1, 2, 2), _evens(0, 34) + [35]),  # Qwen3-4B
        (30, (1, 2, 2), _evens(0, 28) + [29]),  # SmolLM2-135M
        (28, (2, 2, 1), [0] + _odds(1, 27)),  # Llama-3.2-3B
    ],
)
def test_recipe_layers(L, recipe, expected):
    lm = LayerMap.from_recipe(L, *recipe)
    assert list(lm.copied_teacher_layers) == expected
    assert sorted(lm.copied_teacher_layers + lm.pruned_teacher_layers) == list(range(L))


@pytest.mark.parametrize(
    "L, recipe, depth",
    [(36, (1, 2, 2), 19), (32, (1, 2, 2), 17), (28, (2, 2, 1), 15), (30, (1, 2, 2), 16), (24, (1, 3, 2), 10)],
)
def test_recipe_depths(L, recipe, depth):
    assert LayerMap.from_recipe(L, *recipe).num_student_layers == depth


def test_one_three_two_on_24_layers():
    lm = LayerMap.from_recipe(24, 1, 3, 2)
    # aligned outputs t = 3, 6, ..., 21 (<= 22); each drops t-2, t-1
    assert list(lm.copied_teacher_layers) == [0, 3, 6, 9, 12, 15, 18, 21, 22, 23]
    assert [b - a for a, b in lm.blocks] == [3] * 7 + [1, 1, 1]
    assert lm.max_patch == 7


def test_qwen3_ladder_depths_19_plus_k():
    lm = LayerMap.from_recipe(36, 1, 2, 2)
    assert lm.max_patch == 17
    for first in (False, True):
        depths = [p.depth for p in lm.ladder(first)]
        assert depths == [19 + k for k in range(17)] + [36]
        full = lm.plan(17, first)
        assert full.teacher_layers() == list(range(36)) and full.student_layers() == []
        assert (full.embeddings_from, full.final_norm_from, full.lm_head_from) == ("teacher",) * 3


def test_pythia_and_llama_ladders():
    pythia = LayerMap.from_recipe(32, 1, 2, 2)
    assert [p.depth for p in pythia.ladder()] == [17 + k for k in range(15)] + [32]
    llama = LayerMap.from_recipe(28, 2, 2, 1)
    assert llama.multi_layer_blocks == tuple(range(1, 14))
    assert [p.depth for p in llama.ladder(True)] == [15 + k for k in range(13)] + [28]


# ../shared/docs/method.md, SmolLM2 (30 layers, 16-layer student): the teacher layers of every patched size.
SMOLLM2_TABLE = """
0 | 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28-29 | 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28-29
1 | 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26-29 | 0-2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28-29
2 | 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24-29 | 0-4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28-29
3 | 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22-29 | 0-6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28-29
4 | 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20-29 | 0-8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28-29
5 | 0, 2, 4, 6, 8, 10, 12, 14, 16, 18-29 | 0-10, 12, 14, 16, 18, 20, 22, 24, 26, 28-29
6 | 0, 2, 4, 6, 8, 10, 12, 14, 16-29 | 0-12, 14, 16, 18, 20, 22, 24, 26, 28-29
7 | 0, 2, 4, 6, 8, 10, 12, 14-29 | 0-14, 16, 18, 20, 22, 24, 26, 28-29
8 | 0, 2, 4, 6, 8, 10, 12-29 | 0-16, 18, 20, 22, 24, 26, 28-29
9 | 0, 2, 4, 6, 8, 10-29 | 0-18, 20, 22, 24, 26, 28-29
10 | 0, 2, 4, 6, 8-29 | 0-20, 22, 24, 26, 28-29
11 | 0, 2, 4, 6-29 | 0-22, 24, 26, 28-29
12 | 0, 2, 4-29 | 0-24, 26, 28-29
13 | 0, 2-29 | 0-26, 28-29
14 | 0-29 | 0-29
"""


def _parse(text):
    out = []
    for part in text.split(","):
        a, _, b = part.strip().partition("-")
        out.extend(range(int(a), int(b or a) + 1))
    return out


@pytest.mark.parametrize("row", [r for r in SMOLLM2_TABLE.strip().splitlines()])
def test_smollm2_table_both_orders(row):
    k, last, first = (c.strip() for c in row.split("|"))
    k = int(k)
    lm = LayerMap.from_recipe(30, 1, 2, 2)
    assert lm.max_patch == 14
    for order, text in ((False, last), (True, first)):
        layers = lm.naive_pruning_layers(k, order)
        assert layers == _parse(text), (k, order)
        assert lm.plan(k, order).depth == len(_parse(text)) == 16 + k
        assert format_layers(layers) == text


def test_plan_semantics_last_and_first_k():
    lm = LayerMap.from_recipe(30, 1, 2, 2)
    last = lm.plan(3)
    # last-k: student 0..s-1 with s = M[-4] + 1 = 11, then teacher layers from copied[11] = 22
    assert last.layers == tuple(("student", j) for j in range(11)) + tuple(("teacher", t) for t in range(22, 30))
    assert (last.embeddings_from, last.final_norm_from, last.lm_head_from) == ("student", "teacher", "teacher")
    assert last.replaced_blocks == tuple(range(11, 16))
    first = lm.plan(3, patch_first_k_layers=True)
    # first-k: s = M[3] = 3: teacher layers 0..copied[3]-1 = 0..5, then student layers 3..15
    assert first.layers == tuple(("teacher", t) for t in range(6)) + tuple(("student", j) for j in range(3, 16))
    assert (first.embeddings_from, first.final_norm_from, first.lm_head_from) == ("teacher", "student", "student")
    # k = 0 of last-k already swaps the trailing 1:1 layers, norm and head for the teacher's
    zero = lm.plan(0)
    assert zero.layers[-2:] == (("teacher", 28), ("teacher", 29)) and zero.lm_head_from == "teacher"


def test_plan_blocks_general_form():
    lm = LayerMap.from_recipe(30, 1, 2, 2)
    p = lm.plan_blocks([3, 7, 9])
    assert p.depth == 19 and p.teacher_layers() == [6, 7, 14, 15, 18, 19]
    assert (p.embeddings_from, p.lm_head_from) == ("student", "student")
    with pytest.raises(LayerMapError, match="0..15"):
        lm.plan_blocks([16])
    with pytest.raises(LayerMapError, match="'teacher' or 'student'"):
        lm.plan_blocks([1], embeddings_from="both")


def test_cosine_pairs_smollm2():
    pairs = LayerMap.from_recipe(30, 1, 2, 2).cosine_pairs()
    expected = {0: 0, **{j: 2 * j for j in range(1, 15)}, 15: 29, -1: -1}
    assert dict(pairs) == expected
    assert len(pairs) == 17
    assert pairs[:3] == [(0, 0), (1, 2), (2, 4)] and pairs[-3:] == [(14, 28), (15, 29), (-1, -1)]


def test_cosine_pairs_llama_2_2_1():
    pairs = LayerMap.from_recipe(28, 2, 2, 1).cosine_pairs()
    assert pairs == [(0, 0), (1, 1)] + [(j, 2 * j - 1) for j in range(2, 15)] + [(-1, -1)]
    assert pairs[-2] == (14, 27)


@pytest.mark.parametrize(
    "args, message",
    [
        ((8, 6, 2, 4), "teacher has only 8"),
        ((8, 1, 0, 2), "alternate_every_n_layers must be an integer >= 1"),
        ((8, -1, 2, 2), "first_layers_to_keep must be an integer >= 0"),
        ((8, 1, 2, -1), "last_layers_to_keep must be an integer >= 0"),
        ((8, 0, 2, 2), "drops teacher layer 0"),
        ((8, 0, 1, 0), "keeps no layer"),
        ((0, 0, 2, 0), "drops teacher layer 0"),
    ],
)
def test_recipe_errors(args, message):
    with pytest.raises(LayerMapError, match=message):
        LayerMap.from_recipe(*args)


@pytest.mark.parametrize(
    "L, keep, message",
    [
        (8, (), "empty"),
        (8, (0, 4, 2), "strictly increasing"),
        (8, (1, 3), "must start with teacher layer 0"),
        (8, (0, 2, 9), "only 8 layers"),
    ],
)
def test_invalid_layer_maps(L, keep, message):
    with pytest.raises(LayerMapError, match=message):
        LayerMap(L, keep)


def test_bad_k_names_the_range():
    lm = LayerMap.from_recipe(36, 1, 2, 2)
    for bad in (-1, 18, 2.0, True):
        with pytest.raises(LayerMapError, match=r"0\.\.17"):
            lm.plan(bad)


def test_official_student_config_round_trip(tmp_path):
    """The paper's code writes only the two keys with json.dump; our reader takes that file as is."""
    lm = LayerMap.from_recipe(30, 1, 2, 2)
    with open(tmp_path / "student_config.json", "w") as f:
        json.dump({"pruned_teacher_layers": list(lm.pruned_teacher_layers),
                   "copied_teacher_layers": list(lm.copied_teacher_layers)}, f)
    assert LayerMap.load(tmp_path) == lm
    with pytest.raises(LayerMapError, match="36 layers"):
        LayerMap.load(tmp_path, num_teacher_layers=36)
    # ours: the paper's two keys first, so the paper's code reads it too
    path = lm.save(tmp_path / "ours", recipe=[1, 2, 2])
    cfg = json.load(open(path))
    assert list(cfg)[:2] == ["pruned_teacher_layers", "copied_teacher_layers"]
    assert LayerMap.load(tmp_path / "ours") == lm


@pytest.mark.parametrize(
    "cfg, message",
    [
        ({"pruned_teacher_layers": [1]}, "no 'copied_teacher_layers'"),
        ({"copied_teacher_layers": [0, 2], "pruned_teacher_layers": [2, 1]}, "both as copied and pruned"),
        ({"copied_teacher_layers": [0, 2], "pruned_teacher_layers": [3]}, "must be 0..L-1"),
    ],
)
def test_bad_student_configs(cfg, message):
    with pytest.raises(LayerMapError, match=message):
        LayerMap.from_student_config(cfg)


def test_missing_student_config(tmp_path):
    with pytest.raises(LayerMapError, match="student_config.json"):
        LayerMap.load(tmp_path)


def test_format_layers():
    assert format_layers([0, 2, 4, 5, 6, 7]) == "0, 2, 4-7"
    assert format_layers([]) == ""
    assert format_layers([3]) == "3"
