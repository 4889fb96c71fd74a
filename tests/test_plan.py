"""train/plan.py: the memory plan of one training step on fake tensors and a fake process group (tiny shapes), its
categories, its growth with the batch, the shipped model configs, and a cross-check against a measured peak on two
CPU processes."""

import glob
import json
import os
import subprocess
import sys

import pytest
import torch
import transformers

from boomerang.cli import parse_with_config
from tiny_models import llama, save_tiny_model
from train.plan import build_plan_parser, local_tensor_bytes, plan_memory, teacher_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return save_tiny_model(str(tmp_path_factory.mktemp("plan") / "teacher"), llama(8))


def plan_args(teacher, *extra):
    return parse_with_config(build_plan_parser(), ["--teacher_model_name_or_path", teacher, "--max_length", "32",
                                                   "--recipe", "paper", *map(str, extra)])


def sharded_bytes(model, world):
    """What FSDP2 keeps of a model on one process: every parameter's dim-0 rows padded to a multiple of ``world``."""
    return sum(-(-p.shape[0] // world) * (p.numel() // p.shape[0]) * p.element_size()
               for p in dict(model.named_parameters()).values())


def test_categories_add_up_and_a_larger_batch_plans_more(teacher):
    from boomerang.models import load_model
    from train.init_student import init_student, plan_student

    plans = {per: plan_memory(plan_args(teacher, "--per_device_train_batch_size", per, "--global_batch_size",
                                        4 * per), world=2) for per in (1, 4)}
    for per, plan in plans.items():
        assert sum(plan.by_category.values()) == plan.peak_bytes, per
        assert plan.accumulation == 2 and plan.micro_batches == 2 and plan.world == 2
        assert plan.fits and plan.as_dict()["peak_gib"] < 0.01
    small, large = plans[1], plans[4]
    assert large.peak_bytes > small.peak_bytes
    assert large.by_category["Activation"] > 2 * small.by_category["Activation"]
    # the sharded parameters at the peak: the bf16 teacher's (the paper's cast) and the float32 student's halves
    t = load_model(teacher, dtype=torch.float32)
    s = init_student(t, plan_student(t.config), dtype=torch.float32)
    assert small.by_category["Sharded Param"] == sharded_bytes(t.to(torch.bfloat16), 2) + sharded_bytes(s, 2)


def test_more_processes_plan_less_and_the_improved_recipe_plans_too(teacher):
    two = plan_memory(plan_args(teacher, "--per_device_train_batch_size", 2, "--global_batch_size", 16), world=2)
    eight = plan_memory(plan_args(teacher, "--per_device_train_batch_size", 2, "--global_batch_size", 16), world=8)
    assert eight.by_category["Sharded Param"] < two.by_category["Sharded Param"]
    improved = plan_memory(parse_with_config(build_plan_parser(), [
        "--teacher_model_name_or_path", teacher, "--max_length", "32", "--per_device_train_batch_size", "2",
        "--global_batch_size", "4"]), world=2)
    assert improved.peak_bytes > 0 and sum(improved.by_category.values()) == improved.peak_bytes


def test_bad_batch_or_teacher_is_refused_before_any_model_is_built(teacher, capsys, tmp_path):
    from train.plan import main

    with pytest.raises(SystemExit):
        main(["--config", os.path.join(ROOT, "configs", "qwen3-8b.yaml"), "--nproc", "7"])
    assert "Would work:" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--teacher_model_name_or_path", "someone/unknown-model", "--nproc", "2", "--global_batch_size", "4",
              "--per_device_train_batch_size", "1"])
    assert "configs/models" in capsys.readouterr().err


@pytest.mark.parametrize("preset,layers,vocab", [("qwen3-4b", 36, 151936), ("qwen3-8b", 36, 151936),
                                                 ("pythia-2.8b", 32, 50304), ("pythia-6.9b", 32, 50432),
                                                 ("llama-3.2-3b", 28, 128256)])
def test_every_paper_preset_has_its_teachers_published_config(preset, layers, vocab):
    args = parse_with_config(build_plan_parser(), ["--config", os.path.join(ROOT, "configs", f"{preset}.yaml")])
    config = teacher_config(args)
    assert config.num_hidden_layers == layers and config.vocab_size == vocab
    assert len(glob.glob(os.path.join(ROOT, "configs", "models", "*.json"))) == 5


def test_local_tensor_bytes_counts_each_storage_once():
    m = torch.nn.Linear(4, 4)
    m2 = torch.nn.Linear(4, 4)
    m2.weight = m.weight
    assert local_tensor_bytes(m) == (16 + 4) * 4
    assert local_tensor_bytes(m, m2) == (16 + 4 + 4) * 4


@pytest.mark.distributed
@pytest.mark.e2e  # torchrun, 2 processes, a step of a 10M-parameter pair: about a minute on two cores
def test_the_plan_matches_a_measured_peak_on_two_cpu_processes(tmp_path):
    """The same step run for real on two gloo processes (float32), its peak of tensor bytes measured from the
    resident set's high-water mark (glibc's mmap threshold fixed low, so the resident set follows the tensors):
    within 10% of the plan (seen: measured / planned = 0.985)."""
    config = transformers.LlamaConfig(vocab_size=8192, hidden_size=256, intermediate_size=1024, num_hidden_layers=8,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                                      bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)
    teacher = save_tiny_model(str(tmp_path / "teacher"), config)
    out = tmp_path / "plan.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=ROOT)
    from test_train_distributed import free_port

    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2",
                          f"--master-port={free_port()}", "-m", "train.plan", "--teacher_model_name_or_path", teacher,
                          "--max_length", "256", "--per_device_train_batch_size", "2", "--global_batch_size", "8",
                          "--recipe", "paper", "--measure", "--json", str(out)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["world"] == 2 and len(result["measured"]["ranks"]) == 2
    assert 0.9 < result["measured_over_planned"] < 1.1, result
