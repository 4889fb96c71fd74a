"""patching.patch on tiny random teachers of every decoder family, students made by train.init_student.

What must hold: the full patch is the teacher; with an un-trained student every patched model is the
teacher with the layers the plan drops removed; depths and parameter counts follow the layer map;
save -> reload keeps the logits (tied and untied); greedy generation with the KV cache equals the
step-by-step forward; bad input fails before any weight is read.
"""

import copy
import json
import os

import pytest
import torch

import tiny_models
from boomerang.assemble import CheckpointSource
from boomerang.families import adapter_for, count_parameters
from boomerang.layer_map import LayerMap
from boomerang.models import load_model
from patching import patch as P
from patching.patch import PatchError, build_intermediate_model
from train.init_student import main as init_student_main

FAMILIES = sorted(tiny_models.TINY_DECODERS)
F32 = torch.float32


def _make_pair(root, family, tie, num_layers=8, trained=False):
    """A tiny teacher folder and its student folder (python -m train.init_student, default recipe 1,2,2).

    ``trained``: every student tensor is perturbed, as training would, so that a part taken from the
    wrong model shows in the logits."""
    name = f"{family}-{'tied' if tie else 'untied'}-{num_layers}"
    tdir = os.path.join(root, name)
    if not os.path.isdir(tdir):
        tiny_models.save_tiny_model(tdir, tiny_models.TINY_DECODERS[family](num_layers, tie))
    sdir = os.path.join(root, name + "-student")
    if not os.path.isdir(sdir):
        init_student_main(["--teacher_model_name_or_path", tdir, "--save_directory", sdir])
    if not trained:
        return tdir, sdir
    tsdir = os.path.join(root, name + "-trained")
    if not os.path.isdir(tsdir):
        student = load_model(sdir, F32)
        torch.manual_seed(1)
        with torch.no_grad():
            for p in student.parameters():
                p.add_(torch.randn_like(p) * 0.1)
        student.save_pretrained(tsdir)
        with open(os.path.join(sdir, "student_config.json")) as f, open(os.path.join(tsdir, "student_config.json"), "w") as g:
            g.write(f.read())
    return tdir, tsdir


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("patching"))


def _drop_layers(teacher, keep):
    """The teacher with only layers ``keep`` (naive pruning), built by module surgery on a copy."""
    ref = copy.deepcopy(teacher)
    ad = adapter_for(ref)
    layers = ad.get_layers(ref)
    ad.set_layers(ref, [layers[i] for i in keep])
    setattr(ref.config, ad.depth_field, len(keep))
    if getattr(teacher.config, "layer_types", None) is not None:
        ref.config.layer_types = [teacher.config.layer_types[i] for i in keep]
    ad.renumber_layers(ref)
    return ref


def _ids(n=12, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, tiny_models.VOCAB, (batch, n), generator=g)


@torch.no_grad()
def _logits(model, ids):
    return model(ids).logits.float()


# ------------------------------------------------------------------------------------- semantics
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("tie", [True, False])
def test_every_patch_of_untrained_student_is_teacher_with_layers_dropped(root, family, tie):
    tdir, sdir = _make_pair(root, family, tie)
    teacher = load_model(tdir, F32)
    lm = LayerMap.load(sdir)
    ids = _ids()
    want_full = _logits(teacher, ids)
    per_layer = sum(p.numel() for p in adapter_for(teacher).get_layers(teacher)[0].parameters())
    for first in (False, True):
        for k in range(lm.max_patch + 1):
            model, tok, plan = build_intermediate_model(tdir, sdir, k, first, dtype=F32, return_plan=True)
            assert tok is not None and tok.name_or_path == tdir  # the teacher's tokenizer
            ad = adapter_for(model)
            # depth: the layer map's, in the modules and in the config
            assert plan == lm.plan(k, first)
            assert len(ad.get_layers(model)) == ad.num_layers(model.config) == plan.depth
            # parameter count: the plan's (no weights) and the arithmetic of the layer map
            counts = count_parameters(model)
            assert counts == P.count_plan_parameters(P.open_source(tdir, "t"), P.open_source(sdir, "s"), plan)
            assert counts["non_embedding"] == count_parameters(teacher)["non_embedding"] - per_layer * (
                lm.num_teacher_layers - plan.depth)
            got = _logits(model, ids)
            if k == lm.max_patch:
                assert torch.equal(got, want_full), "the full patch must be the teacher exactly"
                assert model.config.tie_word_embeddings == teacher.config.tie_word_embeddings
            else:
                want = _logits(_drop_layers(teacher, lm.naive_pruning_layers(k, first)), ids)
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["qwen2", "qwen3", "gemma3_text", "mistral"])
def test_per_layer_settings_and_cache_indices_follow_the_layers(root, family):
    tdir, sdir = _make_pair(root, family, True, num_layers=10)
    teacher_cfg = load_model(tdir, F32).config
    lm = LayerMap.load(sdir)
    for first in (False, True):
        for k in range(lm.max_patch + 1):
            model, _, plan = build_intermediate_model(tdir, sdir, k, first, dtype=F32, return_plan=True)
            origin = lm.naive_pruning_layers(k, first)
            if getattr(teacher_cfg, "layer_types", None) is not None:
                assert model.config.layer_types == [teacher_cfg.layer_types[t] for t in origin]
            if isinstance(getattr(teacher_cfg, "max_window_layers", None), int):
                assert model.config.max_window_layers == sum(t < teacher_cfg.max_window_layers for t in origin)
            for i, layer in enumerate(adapter_for(model).get_layers(model)):
                idx = [m.layer_idx for m in layer.modules() if isinstance(getattr(m, "layer_idx", None), int)]
                assert idx and set(idx) == {i}


# ------------------------------------------------------------------------------------- trained student
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("tie", [True, False])
def test_parts_save_reload_and_generate(root, tmp_path, family, tie):
    """A (perturbed) trained student: parts come from the right model, save -> reload keeps the logits
    (also after lm-eval's tie_weights()), greedy generation with the KV cache equals the step-by-step
    forward without cache."""
    import transformers

    tdir, sdir = _make_pair(root, family, tie, trained=True)
    teacher, student = load_model(tdir, F32), load_model(sdir, F32)
    ad = adapter_for(teacher)
    lm = LayerMap.load(sdir)
    ids = _ids(10, 1)
    for first, k in ((False, 0), (False, 2), (True, 1)):
        model, tok, plan = build_intermediate_model(tdir, sdir, k, first, dtype=F32, return_plan=True)
        emb = ad.tied_embedding_weight
        want_emb = (teacher if plan.embeddings_from == "teacher" else student).get_parameter(emb)
        assert torch.equal(model.get_parameter(emb), want_emb)
        head_src = teacher if plan.lm_head_from == "teacher" else student
        head_key = emb if head_src.config.tie_word_embeddings else ad.tied_head_weight
        assert torch.equal(model.get_parameter(ad.tied_head_weight), head_src.get_parameter(head_key))
        # tied only when embeddings and head are one tensor of one tied model
        tied = plan.embeddings_from == plan.lm_head_from and tie
        assert model.config.tie_word_embeddings == tied == ad.is_tied(model)
        # save -> reload, then lm-eval's tie_weights(): same logits
        out = tmp_path / f"{int(first)}-{k}"
        model.save_pretrained(out)
        reloaded = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=F32).eval()
        want = _logits(model, ids)
        assert torch.equal(_logits(reloaded, ids), want)
        reloaded.tie_weights()
        assert torch.equal(_logits(reloaded, ids), want)
        assert ad.num_layers(reloaded.config) == plan.depth
        # greedy generation with the cache == argmax loop without the cache
        n_new = 8  # prompt 10 + 8 > the sliding window (16) of the windowed families
        gen = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n_new, do_sample=False,
                             use_cache=True, pad_token_id=0, eos_token_id=None)
        seq = ids
        with torch.no_grad():
            for _ in range(n_new):
                nxt = model(seq, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
                seq = torch.cat([seq, nxt], dim=1)
        assert torch.equal(gen, seq)
    # the student with none of its layers replaced is the student
    model, _ = build_intermediate_model(tdir, sdir, blocks=[], dtype=F32)
    assert torch.equal(_logits(model, ids), _logits(student, ids))
    full, _ = build_intermediate_model(tdir, sdir, lm.max_patch, dtype=F32)
    assert torch.equal(_logits(full, ids), _logits(teacher, ids))


def test_in_memory_models_share_tensors_and_match_folders(root):
    tdir, sdir = _make_pair(root, "llama", True, trained=True)
    teacher, student = load_model(tdir, F32), load_model(sdir, F32)
    ids = _ids()
    for first, k in ((False, 1), (True, 2)):
        from_folders, _ = build_intermediate_model(tdir, sdir, k, first, dtype=F32)
        in_memory, tok = build_intermediate_model(teacher, student, k, first, dtype=F32)
        assert tok is not None
        assert torch.equal(_logits(in_memory, ids), _logits(from_folders, ids))
        ptrs = {p.data_ptr() for p in teacher.parameters()} | {p.data_ptr() for p in student.parameters()}
        new = [p for p in in_memory.parameters()]
        # every tensor is shared except the head's own copy where the head stops being tied
        assert sum(p.data_ptr() not in ptrs for p in new) <= 1
    # a cast (different dtype) copies instead, and leaves the sources as they were
    bf, _ = build_intermediate_model(teacher, student, 1, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in bf.parameters())
    assert all(p.dtype == F32 for p in teacher.parameters())
    # a loaded student without a folder needs its layer map
    student.name_or_path = ""
    with pytest.raises(PatchError, match="boomerang_layer_map"):
        build_intermediate_model(teacher, student, 1)
    student.boomerang_layer_map = LayerMap.load(sdir)
    build_intermediate_model(teacher, student, 1)


def test_reads_only_the_tensors_the_result_needs(root, monkeypatch):
    tdir, sdir = _make_pair(root, "qwen3", False)
    read = []
    real_get = P.FileReadSource.get
    monkeypatch.setattr(P.FileReadSource, "get", lambda self, key: read.append((self.path, key)) or real_get(self, key))
    lm = LayerMap.load(sdir)
    for first, k in ((False, 1), (True, 2)):
        read.clear()
        model, _, plan = build_intermediate_model(tdir, sdir, k, first, dtype=F32, return_plan=True)
        prefix = "model.layers."
        for src, folder in (("teacher", tdir), ("student", sdir)):
            got = sorted({int(key[len(prefix):].split(".")[0]) for p, key in read if p == folder and key.startswith(prefix)})
            assert got == sorted(i for s, i in plan.layers if s == src)
        assert len(read) == len(model.state_dict())  # one read per tensor of the result, nothing else
    assert lm.max_patch == 3


def test_paper_format_student_config(root, tmp_path):
    """A student folder whose student_config.json is the paper's own (json.dump of the two keys)."""
    import shutil

    tdir, sdir = _make_pair(root, "qwen3", True)
    paper = tmp_path / "paper-student"
    shutil.copytree(sdir, paper)
    lm = LayerMap.load(sdir)
    with open(paper / "student_config.json", "w") as f:
        json.dump({"pruned_teacher_layers": list(lm.pruned_teacher_layers),
                   "copied_teacher_layers": list(lm.copied_teacher_layers)}, f)
    ids = _ids()
    for k in range(lm.max_patch + 1):
        a, _ = build_intermediate_model(tdir, str(paper), k, dtype=F32)
        b, _ = build_intermediate_model(tdir, sdir, k, dtype=F32)
        assert torch.equal(_logits(a, ids), _logits(b, ids))


# ------------------------------------------------------------------------------------- general forms
def test_blocks_general_form(root):
    tdir, sdir = _make_pair(root, "gpt_neox", False, num_layers=12)
    lm = LayerMap.load(sdir)  # 12 layers, (1,2,2): copied 0,2,4,6,8,10,11 -> 5 multi-layer blocks
    ids = _ids()
    teacher = load_model(tdir, F32)
    # the blocks of a paper-order plan give the same model
    for first, k in ((False, 2), (True, 3)):
        plan = lm.plan(k, first)
        assert P.plan_for(lm, blocks=plan.replaced_blocks) == plan
    # any set: the un-trained student is then the teacher without the dropped layers
    model, _, plan = build_intermediate_model(tdir, sdir, blocks=[1, 3], dtype=F32, return_plan=True)
    assert plan.teacher_layers() == [2, 3, 6, 7] and plan.depth == 9
    origin = [i if s == "teacher" else lm.copied_teacher_layers[i] for s, i in plan.layers]
    assert origin == [0, 2, 3, 4, 6, 7, 8, 10, 11]
    torch.testing.assert_close(_logits(model, ids), _logits(_drop_layers(teacher, origin), ids), rtol=1e-5, atol=1e-5)
    with pytest.raises(PatchError, match=r"0\.\.6"):
        build_intermediate_model(tdir, sdir, blocks=[7])
    with pytest.raises(PatchError, match="exactly one"):
        build_intermediate_model(tdir, sdir, 1, blocks=[1])


def test_target_params_picks_the_largest_that_fits(root):
    tdir, sdir = _make_pair(root, "llama", False, num_layers=12)
    t, s = P.open_source(tdir, "t"), P.open_source(sdir, "s")
    lm = LayerMap.load(sdir)
    for first in (False, True):
        sizes = [P.count_plan_parameters(t, s, p)["total"] for p in lm.ladder(first)]
        assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes)
        for k in ((1, len(sizes) - 1) if first else (2,)):
            assert P.plan_for_target(t, s, lm, sizes[k], first)[0] == k
            assert P.plan_for_target(t, s, lm, sizes[k] - 1, first)[0] == k - 1
        model, _, plan = build_intermediate_model(tdir, sdir, target_params=sizes[3] + 10, patch_first_k_layers=first,
                                                  dtype=F32, return_plan=True)
        assert plan == lm.plan(3, first) and count_parameters(model)["total"] == sizes[3]
        with pytest.raises(PatchError, match="smallest of this order"):
            P.plan_for_target(t, s, lm, sizes[0] - 1, first)
    assert P.parse_param_count("100M") == 100_000_000
    assert P.parse_param_count("1.5B") == 1_500_000_000
    assert P.parse_param_count("500k") == 500_000 and P.parse_param_count("135e6") == 135_000_000
    with pytest.raises(PatchError, match="100M"):
        P.parse_param_count("lots")


# ------------------------------------------------------------------------------------- errors
def _forbid_weights(monkeypatch):
    """Any read of weights from here on fails the test: errors must come first."""
    fail = lambda *a, **k: pytest.fail("weights were read before the error")  # noqa: E731
    monkeypatch.setattr(CheckpointSource, "get", fail)
    monkeypatch.setattr(P.FileReadSource, "get", fail)
    monkeypatch.setattr(P, "assemble", fail)


@pytest.mark.parametrize("k", [-1, 4, 99])
def test_bad_k_fails_before_weights(root, monkeypatch, k):
    tdir, sdir = _make_pair(root, "llama", True)
    _forbid_weights(monkeypatch)
    with pytest.raises(PatchError, match=r"0\.\.3 for this student"):
        build_intermediate_model(tdir, sdir, k)


def test_mismatched_teacher_fails_before_weights(root, monkeypatch):
    _, sdir = _make_pair(root, "llama", True)  # student of an 8-layer teacher
    deeper, _ = _make_pair(root, "llama", True, num_layers=10)
    other, _ = _make_pair(root, "qwen3", True)
    wide = os.path.join(root, "llama-wide")
    if not os.path.isdir(wide):
        cfg = tiny_models.llama(8)
        cfg.hidden_size, cfg.intermediate_size = 64, 128
        tiny_models.save_tiny_model(wide, cfg)
    _forbid_weights(monkeypatch)
    with pytest.raises(PatchError, match="8-layer teacher.*10 layers"):
        build_intermediate_model(deeper, sdir, 1)
    with pytest.raises(PatchError, match="differ in hidden_size"):
        build_intermediate_model(wide, sdir, 1)
    with pytest.raises(PatchError, match="teacher is a qwen3 model but the student a llama model"):
        build_intermediate_model(other, sdir, 1)


# ------------------------------------------------------------------------------------- command line
def _cli(*args):
    return P.main([*map(str, args), "--no_progress", "--dtype", "float32"])


def test_cli_one_model_and_refuses_to_overwrite(root, tmp_path, capsys):
    import transformers

    tdir, sdir = _make_pair(root, "qwen2", True, trained=True)
    out = tmp_path / "k1"
    _cli("--teacher_model_name_or_path", tdir, "--student_model_name_or_path", sdir, "--save_directory", out,
         "--num_layers_to_patch", 1)
    files = set(os.listdir(out))
    assert {"config.json", "model.safetensors", "tokenizer.json", P.PROVENANCE_NAME} <= files
    prov = json.loads((out / P.PROVENANCE_NAME).read_text())
    model, _, plan = build_intermediate_model(tdir, sdir, 1, dtype=F32, return_plan=True)
    assert prov["teacher"] == tdir and prov["student"] == sdir and prov["order"] == "last-k"
    assert prov["replaced_blocks"] == list(plan.replaced_blocks)
    assert prov["teacher_layers_present"] == plan.teacher_layers() and prov["depth"] == plan.depth
    assert prov["parameters"] == count_parameters(model)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=F32).eval()
    ids = _ids()
    assert torch.equal(_logits(reloaded, ids), _logits(model, ids))
    transformers.AutoTokenizer.from_pretrained(out)
    before = os.path.getmtime(out / "model.safetensors")
    with pytest.raises(SystemExit):
        _cli("--teacher_model_name_or_path", tdir, "--student_model_name_or_path", sdir, "--save_directory", out,
             "--num_layers_to_patch", 2)
    assert "already exists" in capsys.readouterr().err
    assert os.path.getmtime(out / "model.safetensors") == before
    with pytest.raises(SystemExit):
        _cli("--teacher_model_name_or_path", tdir, "--student_model_name_or_path", sdir, "--save_directory",
             tmp_path / "bad", "--num_layers_to_patch", 9)
    assert "0..3" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    _cli("--teacher_model_name_or_path", tdir, "--student_model_name_or_path", sdir, "--save_directory",
         tmp_path / "blocks", "--blocks", "0,2")
    prov = json.loads((tmp_path / "blocks" / P.PROVENANCE_NAME).read_text())
    assert prov["replaced_blocks"] == [0, 2] and prov["order"] == "blocks" and prov["embeddings_from"] == "teacher"
    _cli("--teacher_model_name_or_path", tdir, "--student_model_name_or_path", sdir, "--save_directory",
         tmp_path / "target", "--target_params", count_parameters(model)["total"], "--patch_first_k_layers")
    prov = json.loads((tmp_path / "target" / P.PROVENANCE_NAME).read_text())
    assert prov["order"] == "first-k" and prov["parameters"]["total"] <= count_parameters(model)["total"]


def test_cli_all_writes_the_family_and_resumes(root, tmp_path):
    tdir, sdir = _make_pair(root, "llama", True, trained=True)
    lm = LayerMap.load(sdir)
    out = tmp_path / "family"
    written = _cli("--teacher_model_name_or_path", tdir, "--student_model_name_or_path", sdir, "--save_directory", out,
                   "--all", "--patch_first_k_layers")
    assert len(written) == lm.max_patch + 1
    names = sorted(n for n in os.listdir(out) if os.path.isdir(out / n))
    assert names == [f"first-k{k:02d}-{lm.plan(k, True).depth}L" for k in range(lm.max_patch + 1)]
    csv_rows = (out / "family.csv").read_text().strip().splitlines()
    assert csv_rows[0].split(",")[:6] == ["name", "k", "size", "depth", "total_parameters", "non_embedding_parameters"]
    assert len(csv_rows) == lm.max_patch + 2
    md = (out / "family.md").read_text()
    assert md.count("\n") == lm.max_patch + 3 and "first-k00" in md
    for k in range(lm.max_patch + 1):
        prov = json.loads((out / names[k] / P.PROVENANCE_NAME).read_text())
        assert prov["num_layers_to_patch"] == k and prov["depth"] == lm.plan(k, True).depth
    # a second run keeps what is there (same contents) instead of rewriting it
    stamp = os.path.getmtime(out / names[1] / "model.safetensors")
    _cli("--teacher_model_name_or_path", tdir, "--student_model_name_or_path", sdir, "--save_directory", out,
         "--all", "--patch_first_k_layers")
    assert os.path.getmtime(out / names[1] / "model.safetensors") == stamp
    # a folder that holds a different model is not overwritten silently
    prov_path = out / names[1] / P.PROVENANCE_NAME
    prov = json.loads(prov_path.read_text())
    prov["student"] = "something else"
    prov_path.write_text(json.dumps(prov))
    with pytest.raises(SystemExit):
        _cli("--teacher_model_name_or_path", tdir, "--student_model_name_or_path", sdir, "--save_directory", out,
             "--all", "--patch_first_k_layers")
    assert json.loads(prov_path.read_text())["student"] == "something else"


def test_target_params_largest_by_size_not_by_k(tmp_path):
    """With a large vocabulary, the full (tied) teacher is smaller than the size before it (untied head).
    Also: a student fresh from init_student in memory shares its teacher's embedding; an untied patched
    model made from the two still gets a head of its own, and survives save -> reload."""
    import transformers

    from train.init_student import init_student, plan_student

    cfg = tiny_models.llama(8, tie=True)
    cfg.vocab_size = 4096
    teacher = tiny_models.build(cfg)
    lm = plan_student(teacher.config)
    student = init_student(teacher, lm, dtype=F32)
    student.boomerang_layer_map = lm
    t, s = P.open_source(teacher, "t"), P.open_source(student, "s")
    sizes = [P.count_plan_parameters(t, s, p)["total"] for p in lm.ladder()]
    assert sizes[-1] < sizes[-2]  # the premise
    assert P.plan_for_target(t, s, lm, sizes[-2])[0] == lm.max_patch - 1
    assert P.plan_for_target(t, s, lm, sizes[-1])[0] == lm.max_patch
    assert P.plan_for_target(t, s, lm, 10**12)[0] == lm.max_patch - 1
    model, _, plan = build_intermediate_model(teacher, student, target_params=sizes[-2], dtype=None, return_plan=True)
    assert plan.depth == lm.plan(lm.max_patch - 1).depth and count_parameters(model)["total"] == sizes[-2]
    assert not model.config.tie_word_embeddings and not adapter_for(model).is_tied(model)
    model.save_pretrained(tmp_path / "m")
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "m", dtype=F32).eval()
    reloaded.tie_weights()
    ids = _ids()
    assert torch.equal(_logits(reloaded, ids), _logits(model, ids))


def test_file_read_source_reads_and_casts_exactly(root, monkeypatch):
    """Tensors read with plain file reads equal safe_open's; cast while read (in small chunks) equals .to()."""
    from safetensors import safe_open

    tdir, sdir = _make_pair(root, "qwen3", False)
    monkeypatch.setattr(P.FileReadSource, "CHUNK", 1000)  # many chunks per tensor, ragged last chunk
    plain = P.FileReadSource(tdir)
    cast = P.FileReadSource(tdir, dtype=torch.bfloat16)
    with safe_open(os.path.join(tdir, "model.safetensors"), framework="pt") as f:
        for key in f.keys():
            want = f.get_tensor(key)
            assert torch.equal(plain.get(key), want)
            got = cast.get(key)
            assert got.dtype == (torch.bfloat16 if want.is_floating_point() else want.dtype)
            assert torch.equal(got, want.to(got.dtype))
    # built from folders in bfloat16 == built from loaded float32 models and cast
    ids = _ids()
    a, _ = build_intermediate_model(tdir, sdir, 1, dtype=torch.bfloat16)
    b, _ = build_intermediate_model(load_model(tdir, F32), load_model(sdir, F32), 1, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in a.parameters())
    assert torch.equal(_logits(a, ids), _logits(b, ids))


@pytest.mark.slow  # ~10 s on an idle 2-core box, ~55 s on a busy one (making the 36-layer pair)
def test_qwen3_36_layer_teacher_depths(root):
    """The issue's example at full depth: a 36-layer Qwen3 teacher, its 19-layer student: 19 + k layers for
    k = 0..16 and the teacher (36) at k = 17, in the modules and in the config."""
    tdir, sdir = _make_pair(root, "qwen3", True, num_layers=36)
    lm = LayerMap.load(sdir)
    assert lm.num_student_layers == 19 and lm.max_patch == 17
    t, s = P.open_source(tdir, "t", F32), P.open_source(sdir, "s", F32)  # opened once, reused by every k
    for k in range(18):
        depth = 36 if k == 17 else 19 + k
        cfg = P.plan_config(t, s, P.plan_for(lm, k))  # the config each size gets, without weights
        assert cfg.num_hidden_layers == len(cfg.layer_types) == depth
        if k in (0, 16, 17):
            model = build_intermediate_model(t, s, k, dtype=F32)[0]
            assert len(model.model.layers) == model.config.num_hidden_layers == len(model.config.layer_types) == depth
    with pytest.raises(PatchError, match=r"0\.\.17"):
        build_intermediate_model(t, s, 18)
