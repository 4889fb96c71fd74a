"""Every supported family: student initialization keeps the right teacher layers, the config follows
the layers, the student runs (forward, greedy generation with the KV cache) and survives save -> reload."""

import json

import pytest
import torch
import transformers

import tiny_models
from boomerang.families import UnsupportedModelError, adapter_for, adapter_for_config, count_parameters
from boomerang.layer_map import LayerMap
from boomerang.models import load_model
from train.init_student import init_student, plan_student, save_student

CONFIGS = {**tiny_models.TINY_DECODERS, "bert": lambda n, tie=True: tiny_models.bert(n),
           "distilbert": lambda n, tie=True: tiny_models.distilbert(n)}
DECODERS = sorted(tiny_models.TINY_DECODERS)


pytestmark = pytest.mark.usefixtures("one_thread")


def _ids(n=10, batch=2):
    return torch.randint(3, tiny_models.VOCAB, (batch, n), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_init_student_keeps_the_right_layers(family, tmp_path):
    teacher = tiny_models.build(CONFIGS[family](10))
    ad = adapter_for(teacher)
    assert ad.name == family
    lm = plan_student(teacher.config)  # (1, 2, 2) on 10 layers
    keep = list(lm.copied_teacher_layers)
    assert keep == [0, 2, 4, 6, 8, 9]
    student = init_student(teacher, lm, dtype=torch.float32)
    t_layers, s_layers = ad.get_layers(teacher), ad.get_layers(student)
    assert len(s_layers) == ad.num_layers(student.config) == len(keep)
    for j, t in enumerate(keep):  # layer j is teacher layer keep[j], tensor for tensor
        a, b = s_layers[j].state_dict(), t_layers[t].state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    t_state, s_state = teacher.state_dict(), student.state_dict()
    for name, tensor in s_state.items():
        if ad.part_of(name)[0] != "layer":  # embeddings, final norm, head: the teacher's
            assert torch.equal(tensor, t_state[name]), name
    assert student.config.tie_word_embeddings == teacher.config.tie_word_embeddings
    assert ad.is_tied(student) == ad.is_tied(teacher)
    # per-layer settings follow the layers
    for field in ad.per_layer_fields:
        if isinstance(getattr(teacher.config, field, None), list):
            assert getattr(student.config, field) == [getattr(teacher.config, field)[t] for t in keep]
    for field in ad.layer_threshold_fields:
        if isinstance(getattr(teacher.config, field, None), int):
            assert getattr(student.config, field) == sum(t < getattr(teacher.config, field) for t in keep)
    for i, layer in enumerate(s_layers):
        for m in layer.modules():
            for attr in ad.layer_index_attrs:
                if isinstance(getattr(m, attr, None), int):
                    assert getattr(m, attr) == i
    # parameters: the teacher's minus the dropped layers
    per_layer = sum(p.numel() for p in t_layers[0].parameters())
    assert count_parameters(student)["total"] == count_parameters(teacher)["total"] - per_layer * 4
    # save -> reload: identical logits, student_config.json in the paper's key order
    tiny_models.save_tiny_tokenizer(str(tmp_path / "tok"))
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "tok")
    out = save_student(student, tok, lm, str(tmp_path / "student"))
    cfg = json.loads((tmp_path / "student" / "student_config.json").read_text())
    assert list(cfg)[:2] == ["pruned_teacher_layers", "copied_teacher_layers"] and cfg["copied_teacher_layers"] == keep
    reloaded = load_model(out, torch.float32)
    ids = _ids()
    with torch.no_grad():
        want = student(ids).logits
        assert want.shape == (2, 10, tiny_models.VOCAB)
        assert torch.equal(reloaded(ids).logits, want)
        reloaded.tie_weights()
        assert torch.equal(reloaded(ids).logits, want)
    assert LayerMap.load(out) == lm


@pytest.mark.parametrize("family", DECODERS)
@pytest.mark.parametrize("tie", [True, False])
def test_student_generates_with_kv_cache(family, tie):
    teacher = tiny_models.build(tiny_models.TINY_DECODERS[family](8, tie))
    student = init_student(teacher, plan_student(teacher.config), dtype=torch.float32)
    ids = _ids(12, 1)
    n_new = 8  # 12 + 8 > the sliding window (16) of the windowed families
    gen = student.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n_new, do_sample=False,
                           use_cache=True, pad_token_id=0, eos_token_id=None)
    seq = ids
    with torch.no_grad():
        for _ in range(n_new):
            seq = torch.cat([seq, student(seq, use_cache=False).logits[:, -1:].argmax(-1)], dim=1)
    assert torch.equal(gen, seq)


def test_unsupported_config_names_the_class_and_lists_supported():
    cfg = transformers.T5Config(num_layers=2, d_model=32, num_heads=2, vocab_size=64)
    with pytest.raises(UnsupportedModelError) as err:
        adapter_for_config(cfg)
    msg = str(err.value)
    assert "T5Config" in msg
    for supported in ("llama (LlamaConfig)", "qwen3 (Qwen3Config)", "gpt_neox (GPTNeoXConfig)", "bert (BertConfig)"):
        assert supported in msg
    with pytest.raises(UnsupportedModelError, match="T5Config"):
        plan_student(cfg)


def test_subclassed_config_finds_its_family():
    class MyLlamaConfig(transformers.LlamaConfig):
        pass

    assert adapter_for_config(MyLlamaConfig()).name == "llama"


def test_official_format_student_config_reads(tmp_path):
    """The paper's code writes json.dump({"pruned_teacher_layers": [...], "copied_teacher_layers": [...]})."""
    teacher = tiny_models.build(tiny_models.qwen3(8))
    lm = plan_student(teacher.config)
    student = init_student(teacher, lm, dtype=torch.float32)
    folder = tmp_path / "student"
    student.save_pretrained(folder)
    with open(folder / "student_config.json", "w") as f:
        json.dump({"pruned_teacher_layers": [1, 3, 5], "copied_teacher_layers": [0, 2, 4, 6, 7]}, f)
    read = LayerMap.load(folder, num_teacher_layers=8)
    assert read == lm and read.num_teacher_layers == 8 and read.max_patch == 3
