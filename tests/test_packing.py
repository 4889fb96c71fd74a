"""Packed documents kept apart through position_ids (transformers builds the masks) or our dense 4D mask.

What runs here (CPU, torch 2.13, transformers 5.x): the ``position_ids`` path under ``sdpa`` and ``eager``, where
transformers derives a boolean block-diagonal mask from the restarting positions (masking_utils.
find_packed_sequence_indices), against the dense-mask path. ``flex_attention`` (a BlockMask) and
``flash_attention_2`` (varlen lengths) need a GPU: on this CPU flex_attention's compiled kernel aborts the
process, and flash-attn is not installed; for flash only the inputs are checked here (scripts/gpu_check.sh runs
the CUDA tests).
"""

import json
import os
import random

import pytest
import torch

from tiny_models import TINY_DECODERS, build, llama, qwen3, save_tiny_model
from train.data import DataError, model_inputs, packed_attention, position_ids_from_docs
from train.losses import LossConfig, distillation_loss

# Two packed rows: documents of 7, 9 and 16 tokens; a document continuing from row 0 (new document in row 1),
# one of 20 tokens and padding. Documents are longer than the tiny configs' sliding window (16).
DOC_IDS = torch.tensor([[0] * 7 + [1] * 9 + [2] * 16,
                        [2] * 5 + [3] * 20 + [-1] * 7])


def test_choice_by_device_attention_and_request(monkeypatch):
    monkeypatch.delenv("BOOMERANG_PACKED_ATTENTION", raising=False)
    cfg = llama(2)
    assert packed_attention("cpu", cfg, "sdpa") == "dense_mask"  # the CPU fallback
    assert packed_attention(torch.device("cuda", 0), cfg, "sdpa") == "position_ids"
    assert packed_attention("cuda", cfg, "flex_attention") == "position_ids"
    assert packed_attention("cpu", cfg, "flash_attention_2") == "position_ids"  # takes no 4D mask
    assert packed_attention("cuda", cfg, "sdpa", requested="dense_mask") == "dense_mask"
    assert packed_attention("cpu", cfg, "eager", requested="position_ids") == "position_ids"
    monkeypatch.setenv("BOOMERANG_PACKED_ATTENTION", "position_ids")
    assert packed_attention("cpu", cfg, "sdpa") == "position_ids"
    monkeypatch.setenv("BOOMERANG_PACKED_ATTENTION", "sparse")
    with pytest.raises(DataError, match="BOOMERANG_PACKED_ATTENTION='sparse'.*auto, position_ids, dense_mask"):
        packed_attention("cpu", cfg, "sdpa")
    monkeypatch.delenv("BOOMERANG_PACKED_ATTENTION")
    # an attention implementation transformers builds no mask for: the dense mask, or a clear error when asked
    assert packed_attention("cuda", cfg, "my_kernel") == "dense_mask"
    with pytest.raises(DataError, match="my_kernel.*no transformers mask builder"):
        packed_attention("cuda", cfg, "my_kernel", requested="position_ids")
    from tiny_models import bert

    with pytest.raises(DataError, match="family bert is not among"):
        packed_attention("cuda", bert(2), "sdpa", requested="position_ids")


def test_flash_attention_inputs_carry_varlen_lengths():
    cfg = llama(2)
    cfg._attn_implementation = "flash_attention_2"
    batch = {"input_ids": DOC_IDS.clamp(min=0) + 3, "doc_ids": DOC_IDS}
    inp = model_inputs(batch, "cpu", torch.float32, cfg)
    assert "attention_mask" not in inp and inp["use_cache"] is False
    # document starts of the flattened rows: 0, 7, 16 | 32, 37, 57 (padding is its own run), 64
    assert inp["cu_seq_lens_q"].tolist() == [0, 7, 16, 32, 37, 57, 64]
    assert inp["max_length_q"] == inp["max_length_k"] == 20
    torch.testing.assert_close(inp["position_ids"], position_ids_from_docs(DOC_IDS))


def pair(family, attn, device="cpu"):
    """A tiny teacher of ``family`` (8 layers), its student (train mode) and their aligned layer pairs."""
    from train.init_student import init_student, plan_student

    teacher = build(TINY_DECODERS[family](8), seed=0)
    student = init_student(teacher, plan_student(teacher.config), dtype=torch.float32)
    for m in (teacher, student):
        m.set_attn_implementation(attn)
        m.to(device)
    return teacher, student.train(), plan_student(teacher.config).cosine_pairs()


def losses(teacher, student, pairs, batch, attention, device="cpu", autocast=None):
    """LossTerms of train/losses.py on ``batch`` and the student's gradients, documents kept apart by
    ``attention`` (position_ids or dense_mask)."""
    import contextlib

    cfg = LossConfig(kl_chunk_size=16)
    s_idx, t_idx = [s for s, _ in pairs], [t for _, t in pairs]
    student.zero_grad(set_to_none=True)
    inputs = model_inputs(batch, device, autocast or torch.float32, student.config, attention)
    with torch.autocast("cuda", dtype=autocast) if autocast else contextlib.nullcontext():
        with torch.no_grad():
            t_out = teacher(**inputs, output_hidden_states=t_idx)
        s_out = student(**inputs, output_hidden_states=s_idx)
    terms = distillation_loss(cfg, s_out.logits, t_out.logits, [s_out.hidden_states[i] for i in s_idx],
                              [t_out.hidden_states[i] for i in t_idx], inputs["input_ids"], batch["doc_ids"].to(device))
    terms.total.backward()
    grads = {n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None}
    return terms, grads


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_position_ids_path_gives_the_dense_mask_losses(family, attn, one_thread):
    """CE, KL and cosine (train/losses.py) and the student's gradients are the same on one packed batch
    whether documents are separated by our dense mask or by transformers from the position ids; without
    either (plain positions, no mask) they differ, so the batch does test the separation."""
    teacher, student, pairs = pair(family, attn)
    torch.manual_seed(1)
    batch = {"input_ids": torch.randint(3, 120, DOC_IDS.shape), "doc_ids": DOC_IDS}
    dense, g_dense = losses(teacher, student, pairs, batch, "dense_mask")
    packed, g_packed = losses(teacher, student, pairs, batch, "position_ids")
    for term in ("ce", "kl", "cosine", "total"):
        torch.testing.assert_close(getattr(packed, term), getattr(dense, term), rtol=1e-5, atol=1e-5)
    assert packed.num_valid == dense.num_valid
    assert set(g_packed) == set(g_dense)
    for n in g_dense:
        torch.testing.assert_close(g_packed[n], g_dense[n], rtol=1e-4, atol=1e-6)
    # one long document per row (no boundaries): the losses change
    whole = {"input_ids": batch["input_ids"], "doc_ids": torch.zeros_like(DOC_IDS)}
    inputs = model_inputs(whole, "cpu", torch.float32, student.config, "position_ids")
    with torch.no_grad():
        leaky = student(**inputs).logits
        sep = student(**model_inputs(batch, "cpu", torch.float32, student.config, "position_ids")).logits
    assert (leaky[1, 5:25] - sep[1, 5:25]).abs().max() > 1e-2


def train_logs(tmp_path, monkeypatch, modes, device="cpu", *extra):
    """log.jsonl records (step, loss terms, eval_ce) of two train.train steps on a tiny Qwen3 teacher, per
    BOOMERANG_PACKED_ATTENTION mode; a mode that is refused raises SystemExit."""
    from train.train import main

    teacher = save_tiny_model(str(tmp_path / "teacher"), qwen3(8))
    words = "the a of and to in is was he it that for on with as his by at be this had not".split()
    r = random.Random(0)
    with open(tmp_path / "train.jsonl", "w") as f:
        for _ in range(40):
            f.write(json.dumps({"text": " ".join(r.choice(words) for _ in range(r.randint(3, 30)))}) + "\n")
    logs = {}
    for mode in modes:
        monkeypatch.setenv("BOOMERANG_PACKED_ATTENTION", mode)
        out = tmp_path / mode
        main(["--teacher_model_name_or_path", teacher, "--save_directory", str(out), "--dataset",
              str(tmp_path / "train.jsonl"), "--eval_dataset", str(tmp_path / "train.jsonl"), "--eval_sequences", "4",
              "--max_length", "32", "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1",
              "--max_steps", "2", "--logging_steps", "1", "--eval_steps", "2", "--save_steps", "0", "--device", device,
              *extra])
        with open(out / "log.jsonl") as f:
            logs[mode] = [{k: v for k, v in rec.items() if k in ("step", "loss", "ce", "kl", "cosine", "eval_ce")}
                          for rec in map(json.loads, f)]
    return logs


def assert_same_logs(a, b, rel):
    assert len(a) == len(b) >= 3
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            assert x[k] == pytest.approx(y[k], rel=rel), (k, x, y)


def test_training_logs_the_same_losses_either_way(tmp_path, monkeypatch, one_thread):
    """Two steps of train.train (CPU, sdpa) with BOOMERANG_PACKED_ATTENTION=position_ids and =dense_mask; a bad
    value is refused with the data checks, before models load."""
    with pytest.raises(SystemExit) as e:
        train_logs(tmp_path, monkeypatch, ["bogus"])
    assert e.value.code == 2 and not os.path.exists(tmp_path / "bogus")
    logs = train_logs(tmp_path, monkeypatch, ["dense_mask", "position_ids"])
    assert_same_logs(logs["dense_mask"], logs["position_ids"], rel=1e-5)
