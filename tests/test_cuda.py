"""CUDA-only checks (skipped without a GPU; `bash scripts/gpu_check.sh` runs them with `-m cuda`).

Packed attention on the GPU paths that cannot run on CPU here: transformers' masks from position ids under sdpa,
flex_attention (a BlockMask) and flash_attention_2 (varlen lengths; skipped without flash-attn) give the dense
mask's losses; two bf16 training steps choose the position-ids path on their own and match the dense mask's
losses; a sweep evaluates on the GPU.
"""

import importlib.util
import json
import os

import pytest
import torch

from test_packing import DOC_IDS, assert_same_logs, losses, pair, train_logs
from train.data import packed_attention

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")]

# Qwen3's tiny config (head_dim 16, sliding-window layers) for the kernels with head-size limits
ATTENTION = [
    ("llama", "sdpa", None, 1e-4),
    ("qwen3", "sdpa", None, 1e-4),
    ("qwen3", "flex_attention", None, 2e-3),
    pytest.param("qwen3", "flash_attention_2", torch.bfloat16, 5e-2, marks=pytest.mark.skipif(
        importlib.util.find_spec("flash_attn") is None, reason="flash-attn is not installed")),
]


@pytest.mark.parametrize("family,attn,autocast,tol", ATTENTION)
def test_gpu_attention_separates_documents_like_the_dense_mask(family, attn, autocast, tol):
    teacher, student, pairs = pair(family, attn, "cuda")
    assert packed_attention("cuda", student.config) == "position_ids"
    torch.manual_seed(1)
    batch = {"input_ids": torch.randint(3, 120, DOC_IDS.shape), "doc_ids": DOC_IDS}
    got, _ = losses(teacher, student, pairs, batch, "position_ids", "cuda", autocast)
    # the reference: the dense 4D mask under sdpa (flash attention takes no 4D mask)
    ref_t, ref_s, _ = pair(family, "sdpa", "cuda")
    want, _ = losses(ref_t, ref_s, pairs, batch, "dense_mask", "cuda", autocast)
    for term in ("ce", "kl", "cosine"):
        torch.testing.assert_close(getattr(got, term), getattr(want, term), rtol=tol, atol=tol)


def test_bf16_training_steps_choose_position_ids_and_match_the_dense_mask(tmp_path, monkeypatch, caplog):
    import logging

    import train.data

    monkeypatch.setattr(train.data, "_logged_choices", set())  # log the choice again in this test
    with caplog.at_level(logging.INFO, logger="boomerang.data"):
        logs = train_logs(tmp_path, monkeypatch, ["auto", "dense_mask"], "cuda", "--bf16", "true")
    assert "packed attention: position_ids" in caplog.text
    assert_same_logs(logs["auto"], logs["dense_mask"], rel=2e-2)


def test_sweep_on_the_gpu(tmp_path):
    from evaluate.evaluate import main
    from test_evaluate import _args, _pair, _write_data
    from tiny_models import llama

    teacher, student = _pair(str(tmp_path), llama(8))
    corpus, mc = _write_data(str(tmp_path))
    t = {"teacher": teacher, "student": student, "corpus": corpus, "mc": mc}
    args = [a if a != "cpu" else "cuda" for a in _args(t, str(tmp_path / "sweep"), "--sweep", "0,1", "--no_endpoints",
                                                      "--no_plots", "--override_llama_patching")]
    records = main(args)
    assert [r["name"] for r in records] == ["last_k00", "last_k01"]
    with open(tmp_path / "sweep" / "results" / "last_k01.json") as f:
        assert json.load(f)["device"].startswith("cuda")
    assert os.path.isfile(tmp_path / "sweep" / "summary.md")


def test_paper_recipe_under_fsdp_holds_the_papers_bf16_precision(tmp_path):
    """recipe: paper under FSDP2 with bf16 (one process, --fsdp on) as the paper's FSDP1 bf16 run (docs/training.md):
    the student's floating buffers in bf16 (FSDP1's buffer_dtype), autocast on, AdamW not fused; a step is finite."""
    import math

    import torch.distributed as dist

    import tiny_models
    import train.train as tt
    from boomerang.cli import parse_with_config

    teacher = tiny_models.save_tiny_model(str(tmp_path / "t"), tiny_models.llama(8))
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"text": " ".join(tiny_models.WORDS[: 3 + i])}) + "\n" for i in range(8)))
    args = parse_with_config(tt.build_parser(), [
        "--teacher_model_name_or_path", teacher, "--dataset", str(data), "--save_directory", str(tmp_path / "o"),
        "--recipe", "paper", "--fsdp", "on", "--device", "cuda", "--bf16", "true", "--paper_skip_documents", "0",
        "--paper_shuffle_buffer", "1", "--max_length", "16", "--per_device_train_batch_size", "2",
        "--gradient_accumulation_steps", "2", "--max_steps", "1", "--save_steps", "0"])
    try:
        run = tt.setup(args)
        buffers = [b for b in run.student.buffers() if b.is_floating_point()]
        assert buffers and all(b.dtype == torch.bfloat16 for b in buffers)
        assert isinstance(run.autocast, torch.autocast)
        assert not run.optimizer.defaults.get("fused")
        assert math.isfinite(tt.train_step(run)["loss"])
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
