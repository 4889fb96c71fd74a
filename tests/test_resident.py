"""patching.resident and patching.generate: one resident family serving every member, no weight copied."""

import json

import pytest
import torch
import transformers

import tiny_models
from boomerang.assemble import ModelSource
from boomerang.families import adapter_for
from patching.patch import assemble_plan, plan_of
from patching.resident import ResidentFamily
from test_search import _pair, _write_plan

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPT = torch.tensor([[5, 9, 17, 33, 4, 60, 7]])


def _greedy(model, n=8):
    with torch.no_grad():
        out = model.generate(PROMPT, attention_mask=torch.ones_like(PROMPT), max_new_tokens=n, do_sample=False,
                             use_cache=True, pad_token_id=0, eos_token_id=None)
    return out[0, PROMPT.shape[1]:].tolist()


def _storages(*models):
    return {t.untyped_storage().data_ptr() for m in models for t in m.parameters()}


@pytest.mark.parametrize("family", sorted(tiny_models.TINY_DECODERS))
def test_a_resident_member_generates_as_its_saved_standalone_model(family, tmp_path):
    teacher, student, lm = _pair(family, 8, tie=True)
    fam = ResidentFamily(teacher, student)
    n = lm.num_student_layers
    members = [fam.entries[1], fam.entries[-2],  # the paper's order at two sizes
               fam.by_blocks([1, n - 1], embeddings_from="teacher", head_from="student"),  # an untied head, shared
               fam.by_blocks([0, 2], embeddings_from="student", head_from="teacher"),
               fam.teacher_entry(), fam.student_entry()]
    resident = _storages(teacher, student)
    first = {}
    for i, e in enumerate(members):
        model = fam.model(e)
        assert isinstance(model, transformers.PreTrainedModel)
        assert _storages(model) <= resident, "a member holds a tensor of its own"
        for pos, layer in enumerate(adapter_for(model).get_layers(model)):  # each member indexes its own cache
            for mod in layer.modules():
                if isinstance(getattr(mod, "layer_idx", None), int):
                    assert mod.layer_idx == pos
        first[i] = _greedy(model)
        # the standalone model: built with its own tensors, saved and loaded as any Hugging Face folder
        standalone = assemble_plan(ModelSource(teacher), ModelSource(student), plan_of(e))
        standalone.save_pretrained(tmp_path / f"m{i}")
        loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / f"m{i}").eval()
        assert _greedy(loaded) == first[i], (family, e["description"])
    for i, e in reversed(list(enumerate(members))):  # switching back and forth: same tokens, same objects
        assert fam.model(e) is fam.model(e)
        assert _greedy(fam.model(e)) == first[i]
    assert fam.resident_bytes() == sum(t.untyped_storage().nbytes() for m in (teacher, student)
                                       for t in {t.untyped_storage().data_ptr(): t for t in
                                                 list(m.parameters()) + list(m.buffers())}.values())


def test_members_by_parameters_memory_and_depth_follow_the_search_frontier(tmp_path):
    tdir, sdir, out, result = _write_plan(tmp_path)
    fam = ResidentFamily.load(tdir, sdir, str(out))
    ladder = result["ladder"]
    assert fam.entries == json.loads((out / "search.json").read_text())["ladder"]
    mid = ladder[len(ladder) // 2]
    assert fam.by_params(mid["params"])["params"] == mid["params"]
    assert fam.by_params(mid["params"] - 1)["params"] < mid["params"]
    with pytest.raises(Exception, match="no member of the family fits"):
        fam.by_params(ladder[0]["params"] - 1)
    e = fam.by_depth(mid["depth"])
    assert e["depth"] == mid["depth"] and e["calibration_kl"] <= mid["calibration_kl"]
    limit = fam.memory_bytes(mid, 1, 16) / 2**30
    assert fam.memory_bytes(fam.by_memory(limit, 1, 16), 1, 16) <= limit * 2**30
    assert fam.model(fam.teacher_entry()) is fam.teacher


def test_generate_cli_matches_the_model_patch_builds_for_the_same_budget(tmp_path, capsys):
    from boomerang.models import load_model
    from patching.generate import main as generate_main
    from patching.patch import main as patch_main

    tdir, sdir, out, result = _write_plan(tmp_path)
    mid = result["ladder"][len(result["ladder"]) // 2]["params"]
    got = generate_main(["--teacher", tdir, "--student", sdir, "--search", str(out), "--sizes",
                         f"{mid},teacher,student", "--prompt", "the a of and to", "--max_new_tokens", "6"])
    text = capsys.readouterr().out
    assert [g["size"] for g in got] == [str(mid), "teacher", "student"] and "tokens/s" in text
    patch_main(["--teacher_model_name_or_path", tdir, "--student_model_name_or_path", sdir, "--save_directory",
                str(tmp_path / "m"), "--plan", str(out), "--target_params", str(mid), "--dtype", "float32"])
    saved = load_model(str(tmp_path / "m"))
    from patching.generate import generate
    from boomerang.models import load_tokenizer

    _, ids, _ = generate(saved, load_tokenizer(tdir), "the a of and to", 6)
    assert got[0]["token_ids"] == ids and got[0]["params"] == sum(p.numel() for p in saved.parameters())


@pytest.mark.parametrize("sizes, message", [("12 parsecs", "expected a parameter count"), ("", "empty"),
                                            ("blocks:x", "blocks:3,7,9")])
def test_bad_sizes_fail_before_any_model_loads(tmp_path, monkeypatch, capsys, sizes, message):
    from patching import generate as G

    monkeypatch.setattr(G.ResidentFamily, "load", lambda *a, **k: pytest.fail("a model loaded before the error"))
    with pytest.raises(SystemExit):
        G.main(["--teacher", "x", "--student", "y", "--sizes", sizes, "--prompt", "hi"])
    assert message in capsys.readouterr().err
