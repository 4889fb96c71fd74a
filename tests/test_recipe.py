"""The paper's recipe (--recipe paper): its loss, its data stream and its gradient scale, each checked against the
paper's code written out independently here (dcml-lab/boomerang-distillation train/train.py, transformers 4.51.3)."""

import copy
import json

import pytest
import torch

import tiny_models
from train.data import PaperStream, paper_sequence
from train.losses import LossConfig, distillation_loss, paper_loss

pytestmark = pytest.mark.usefixtures("one_thread")


def _bos_tokenizer(path):
    """The tiny word-level tokenizer, made to add a BOS the way Llama 3.2's does."""
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoTokenizer

    tiny_models.save_tiny_tokenizer(path)
    tok = AutoTokenizer.from_pretrained(path)
    tok._tokenizer.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.bos_token_id)])
    return tok


def _paper_formula(s_out, t_out, inputs, aligned, kl_w, cos_w, T):
    """The paper's compute_loss, line by line (without autocast)."""
    logits = s_out.logits
    mask = (inputs["attention_mask"] > 0).unsqueeze(-1).expand_as(s_out.hidden_states[-1])
    hid = s_out.hidden_states[-1].size(-1)
    hs = {l: torch.masked_select(s_out.hidden_states[l], mask) for l in aligned}
    labels = inputs["labels"][..., 1:].contiguous()
    ce = torch.nn.CrossEntropyLoss()(logits[..., :-1, :].contiguous().view(-1, logits.size(-1)), labels.view(-1))
    loss = [ce]
    ths = {aligned[l]: torch.masked_select(t_out.hidden_states[aligned[l]], mask) for l in aligned}
    soft_targets = torch.nn.functional.softmax(t_out.logits.view(-1, logits.size(-1)) / T, dim=-1)
    soft_prob = torch.nn.functional.log_softmax(logits.view(-1, logits.size(-1)) / T, dim=-1)
    loss.append(kl_w * torch.nn.KLDivLoss(reduction="batchmean")(soft_prob, soft_targets) * T ** 2)
    for l in aligned:
        th = ths[aligned[l]].view(-1, hid)
        sh = hs[l].view(-1, hid)
        target = sh.new(sh.size(0)).fill_(1)
        loss.append(cos_w * torch.nn.CosineEmbeddingLoss()(th.float(), sh.float(), target.float()) / len(aligned))
    return sum(loss)


def _pair(layers=8):
    from boomerang.layer_map import LayerMap
    from train.init_student import init_student

    teacher = tiny_models.build(tiny_models.llama(layers))
    lm = LayerMap.from_recipe(layers)
    student = copy.deepcopy(init_student(teacher, lm, False, torch.float32, 0))
    torch.manual_seed(3)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return teacher, student, lm


def test_paper_loss_equals_the_papers_formula_on_a_padded_batch(tmp_path):
    tok = _bos_tokenizer(str(tmp_path / "tok"))
    texts = ["the a of and to in is was he it that for on with as his by at be this",  # full row, truncated
             "the a", "of", "and to in is was"]  # rows that are mostly padding
    seqs = [paper_sequence(tok, t, 16) for t in texts]
    batch = {k: torch.stack([s[k] for s in seqs]) for k in seqs[0]}
    assert (batch["attention_mask"].sum(1) < 4).sum() == 2
    teacher, student, lm = _pair()
    pairs = lm.cosine_pairs()
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        t_out = teacher(**inputs, output_hidden_states=True)
    s_out = student(**inputs, output_hidden_states=True)
    cfg = LossConfig(kl_loss_weight=0.1, T=2.0, cosine_loss_weight=2.0, kl_chunk_size=0)
    got = paper_loss(cfg, s_out.logits, t_out.logits, [s_out.hidden_states[s] for s, _ in pairs],
                     [t_out.hidden_states[t] for _, t in pairs], batch["attention_mask"], batch["labels"])
    want = _paper_formula(s_out, t_out, {**inputs, "labels": batch["labels"]}, dict(pairs), 0.1, 2.0, 2.0)
    assert got.total.item() == pytest.approx(want.item(), rel=1e-6, abs=1e-6)
    # the improved recipe on the same rows (each one document, padding excluded from every term) differs
    doc_ids = torch.where(batch["attention_mask"] > 0, 0, -1)
    imp = distillation_loss(cfg, s_out.logits, t_out.logits, [s_out.hidden_states[s] for s, _ in pairs],
                            [t_out.hidden_states[t] for _, t in pairs], batch["input_ids"], doc_ids)
    assert abs(imp.total.item() / imp.num_valid - want.item()) > 1e-3


def test_paper_stream_is_skip_then_buffered_shuffle_with_bos_and_masked_eos(tmp_path):
    """The stream is ``paper_order`` (datasets 3.6.0's skip + shuffle buffer, checked against the paper's own run in
    tests/test_paper_reference.py) over the documents in file order, each made as the paper's tokenizer call does."""
    from train.data import paper_order

    tok = _bos_tokenizer(str(tmp_path / "tok"))
    docs = [" ".join(tiny_models.WORDS[(i + j) % len(tiny_models.WORDS)] for j in range(3 + i % 5)) + f" {i}"
            for i in range(60)]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))

    def stream_order(seed):
        s = PaperStream(str(data), tok, 12, seed=seed, skip=10, buffer_size=16)
        return [s.next() for _ in range(50)]

    texts = list(paper_order(iter(docs), skip=10, buffer_size=16, seed=5))
    want = [paper_sequence(tok, t, 12) for t in texts]
    got = stream_order(5)
    assert [g["input_ids"].tolist() for g in got] == [w["input_ids"].tolist() for w in want]
    assert sorted(texts) == sorted(docs[10:]) and texts != docs[10:]  # skipped, then shuffled
    for k, t in enumerate(texts[:len(docs) - 10 - 16]):  # while the source lasts: from a buffer of 16
        assert docs.index(t) < 10 + 16 + k
    assert [g["input_ids"].tolist() for g in stream_order(6)] != [g["input_ids"].tolist() for g in got]
    eos, bos = tok.eos_token_id, tok.bos_token_id
    for g in got:
        n = int(g["attention_mask"].sum())
        assert g["input_ids"][0] == bos  # the tokenizer's own special tokens
        assert (g["input_ids"][n:] == eos).all() and (g["labels"][n:] == -100).all()  # padded with EOS, masked
        assert (g["labels"][:n] == g["input_ids"][:n]).all()
    with pytest.raises(Exception, match="ran out of documents"):
        PaperStream(str(data), tok, 12, skip=60).next()


def test_paper_gradient_is_the_sum_of_micro_batch_means(tmp_path):
    """transformers 4.51.3 does not divide the paper's micro-batch loss by the accumulation steps: with 2
    micro-batches the step's gradient is the sum of their mean-loss gradients (twice the improved recipe's scale)."""
    from boomerang.models import load_model
    from train.init_student import init_student, plan_student
    from train.train import main

    teacher_dir = tiny_models.save_tiny_model(str(tmp_path / "t"), tiny_models.llama(8))
    tok_docs = [" ".join(tiny_models.WORDS[(3 * i + j) % len(tiny_models.WORDS)] for j in range(4 + 3 * i)) for i in range(8)]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"text": d}) + "\n" for d in tok_docs))
    out = main(["--teacher_model_name_or_path", teacher_dir, "--save_directory", str(tmp_path / "o"),
                "--dataset", str(data), "--recipe", "paper", "--paper_skip_documents", "0", "--paper_shuffle_buffer", "1",
                "--max_length", "12", "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "2",
                "--max_steps", "1", "--max_grad_norm", "0", "--logging_steps", "1", "--save_steps", "0",
                "--device", "cpu", "--kl_loss_weight", "0.1", "--cosine_loss_weight", "2.0"])
    logged = [h for h in out["history"] if "grad_norm" in h][0]["grad_norm"]

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(teacher_dir)
    teacher = load_model(teacher_dir, dtype=torch.float32)
    lm = plan_student(teacher.config)
    student = copy.deepcopy(init_student(teacher, lm, False, torch.float32, 0)).train()
    teacher.to(torch.bfloat16)  # the paper's teacher_model.to(torch.bfloat16) after the cut, on CPU too
    pairs = dict(lm.cosine_pairs())
    seqs = [paper_sequence(tok, d, 12) for d in tok_docs[:4]]  # buffer 1: file order
    for m in range(2):
        mb = {k: torch.stack([s[k] for s in seqs[2 * m:2 * m + 2]]) for k in seqs[0]}
        inputs = {"input_ids": mb["input_ids"], "attention_mask": mb["attention_mask"]}
        with torch.no_grad():
            t_out = teacher(**inputs, output_hidden_states=True)
        s_out = student(**inputs, output_hidden_states=True)
        _paper_formula(s_out, t_out, {**inputs, "labels": mb["labels"]}, pairs, 0.1, 2.0, 1.0).backward()
    summed = torch.norm(torch.stack([p.grad.norm() for p in student.parameters() if p.grad is not None])).item()
    assert logged == pytest.approx(summed, rel=1e-4)
