"""Data: file formats, packing with EOS, per-document positions and attention, padding, determinism."""

import json
import os

import pytest
import torch

from tiny_models import TINY_DECODERS, build, save_tiny_tokenizer
from train.data import (DataError, SequenceStream, check_source, document_attention_mask, model_inputs,
                        position_ids_from_docs, read_local_documents, sequences)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    path = tmp_path_factory.mktemp("tok")
    save_tiny_tokenizer(str(path))
    return AutoTokenizer.from_pretrained(str(path))


def test_packing_eos_and_doc_ids():
    docs = [[5, 6, 7, 2], [8, 9, 2], [10, 11, 12, 13, 2]]
    seqs = list(sequences(iter(docs), max_length=5))
    assert [s["input_ids"].tolist() for s in seqs] == [[5, 6, 7, 2, 8], [9, 2, 10, 11, 12]]
    assert [s["doc_ids"].tolist() for s in seqs] == [[0, 0, 0, 0, 1], [1, 1, 2, 2, 2]]
    pos = position_ids_from_docs(torch.stack([s["doc_ids"] for s in seqs]))
    assert pos.tolist() == [[0, 1, 2, 3, 0], [0, 1, 0, 1, 2]]


def test_no_packing_truncates_and_pads():
    docs = [[5, 6, 2], [7, 8, 9, 10, 11, 12, 2]]
    seqs = list(sequences(iter(docs), max_length=5, packing=False, pad_token_id=0))
    assert [s["input_ids"].tolist() for s in seqs] == [[5, 6, 2, 0, 0], [7, 8, 9, 10, 11]]
    assert [s["doc_ids"].tolist() for s in seqs] == [[0, 0, 0, -1, -1], [0, 0, 0, 0, 0]]


def test_file_formats_and_folder(tmp_path):
    (tmp_path / "a.txt").write_text("first doc\nstill first\n\n\nsecond doc\n")
    with open(tmp_path / "b.jsonl", "w") as f:
        f.write(json.dumps({"text": "third"}) + "\n" + json.dumps({"text": "fourth"}) + "\n")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["fifth", "sixth"]}), tmp_path / "c.parquet")
    assert read_local_documents(str(tmp_path / "a.txt")) == ["first doc\nstill first", "second doc"]
    assert read_local_documents(str(tmp_path)) == ["first doc\nstill first", "second doc", "third", "fourth",
                                                   "fifth", "sixth"]
    with pytest.raises(DataError, match="--text_field"):
        read_local_documents(str(tmp_path / "b.jsonl"), text_field="body")


def test_missing_file_names_the_flag(tmp_path):
    with pytest.raises(DataError, match="--eval_dataset .*no such file"):
        check_source(str(tmp_path / "nope.jsonl"), "--eval_dataset")
    check_source("EleutherAI/the_pile_deduplicated")  # a hub name is not checked locally


def test_stream_is_deterministic_and_skip_resumes(tmp_path, tokenizer):
    with open(tmp_path / "d.jsonl", "w") as f:
        for i in range(30):
            f.write(json.dumps({"text": " ".join(["the", "man", "was", "good"][: 1 + i % 4] * (1 + i % 5))}) + "\n")
    a = SequenceStream(str(tmp_path / "d.jsonl"), tokenizer, 8, seed=3)
    first = a.take(12)
    b = SequenceStream(str(tmp_path / "d.jsonl"), tokenizer, 8, seed=3)
    b.skip(5)
    assert torch.equal(b.take(7)["input_ids"], first["input_ids"][5:])
    # Every document ends with EOS.
    assert (first["input_ids"] == tokenizer.eos_token_id).any()
    c = SequenceStream(str(tmp_path / "d.jsonl"), tokenizer, 8, seed=4)
    assert not torch.equal(c.take(12)["input_ids"], first["input_ids"])


def test_attention_mask_blocks_documents():
    doc = torch.tensor([[0, 0, 1, 1, -1]])
    m = document_attention_mask(doc, torch.float32)[0, 0] == 0
    assert m.tolist() == [[True, False, False, False, False],
                          [True, True, False, False, False],
                          [False, False, True, False, False],
                          [False, False, True, True, False],
                          [False, False, False, False, True]]


@pytest.mark.parametrize("attention", ["dense_mask", "position_ids"])
@pytest.mark.parametrize("family", sorted(TINY_DECODERS))
def test_packed_documents_equal_separate_runs(family, attention):
    """Either way of separating packed documents (tests/test_packing.py) matches separate runs, in every family."""
    from train.data import POSITION_IDS_FAMILIES

    assert set(POSITION_IDS_FAMILIES) == set(TINY_DECODERS)
    model = build(TINY_DECODERS[family](4), seed=0)
    torch.manual_seed(0)
    a, b = torch.randint(3, 100, (1, 20)), torch.randint(3, 100, (1, 9))
    batch = {"input_ids": torch.cat([a, b, torch.zeros(1, 3, dtype=torch.long)], 1),
             "doc_ids": torch.tensor([[0] * 20 + [1] * 9 + [-1] * 3])}
    with torch.no_grad():
        out = model(**model_inputs(batch, "cpu", torch.float32, model.config, attention),
                    output_hidden_states=[2]).logits
        ra, rb = model(a).logits, model(b).logits
    torch.testing.assert_close(out[:, :20], ra, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out[:, 20:29], rb, rtol=1e-4, atol=1e-4)
    assert torch.isfinite(out).all()


class CountingTokenizer:
    """A tokenizer that records the texts it is asked to tokenize."""

    def __init__(self, tokenizer):
        self.tokenizer, self.texts = tokenizer, []

    def __call__(self, text, **kw):
        self.texts.extend([text] if isinstance(text, str) else text)
        return self.tokenizer(text, **kw)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


def test_a_stream_resumed_at_its_cursor_goes_on_without_tokenizing_the_documents_before_it(tmp_path, tokenizer):
    """Packed sequences over several epochs, cut at every point: a stream made with ``start`` = the cursor gives the
    same sequences (document numbers too) and tokenizes only documents from the cursor's document on."""
    from train.data import PaperStream, document_stream

    src = str(tmp_path / "d.jsonl")
    with open(src, "w") as f:
        for i in range(12):
            f.write(json.dumps({"text": f"doc{i} " + " ".join(["the", "man", "was", "good"][: 1 + i % 4] * (1 + i % 5))})
                    + "\n")
    order = [d for d, _ in zip(document_stream(src, seed=3), range(300))]
    reference = SequenceStream(src, tokenizer, 8, seed=3).take(40)
    for cut in range(0, 30, 3):
        a = SequenceStream(src, tokenizer, 8, seed=3)
        a.take(cut) if cut else None
        start = {**a.cursor, "sequences": a.position}
        counting = CountingTokenizer(tokenizer)
        b = SequenceStream(src, counting, 8, seed=3, start=start)
        assert b.position == cut
        got = b.take(40 - cut)
        for key in ("input_ids", "doc_ids"):
            assert torch.equal(got[key], reference[key][cut:]), (cut, key)
        d = start["document"]
        assert counting.texts == order[d:d + len(counting.texts)], cut  # from the cursor's document on, in order
    # the paper's stream: one document a sequence, the documents before the cursor read but not tokenized
    p = PaperStream(src, tokenizer, 12, seed=1, skip=2, buffer_size=4)
    first = p.take(6)
    counting = CountingTokenizer(tokenizer)
    q = PaperStream(src, counting, 12, seed=1, skip=2, buffer_size=4, start={**p.cursor, "sequences": 4})
    assert p.cursor == {"document": 6, "token": 0} and len(counting.texts) == 0
    p2 = PaperStream(src, tokenizer, 12, seed=1, skip=2, buffer_size=4)
    p2.take(4)
    q = PaperStream(src, counting, 12, seed=1, skip=2, buffer_size=4, start={**p2.cursor, "sequences": 4})
    assert torch.equal(q.take(2)["input_ids"], first["input_ids"][4:]) and len(counting.texts) == 2


def test_a_process_tokenizes_only_its_own_sequences_of_the_papers_stream(tmp_path, tokenizer):
    """``take(n, keep)``: the paper's stream (one document a sequence) passes over the other processes' documents
    without tokenizing them; the kept rows are those of the whole batch, and the stream goes on in step."""
    from train.data import PaperStream

    src = str(tmp_path / "d.jsonl")
    with open(src, "w") as f:
        for i in range(30):
            f.write(json.dumps({"text": f"doc{i} the man was good " * (1 + i % 3)}) + "\n")
    whole = PaperStream(src, tokenizer, 12, seed=1, skip=2, buffer_size=4)
    batches = [whole.take(6) for _ in range(2)]
    counting = CountingTokenizer(tokenizer)
    mine = PaperStream(src, counting, 12, seed=1, skip=2, buffer_size=4)
    for b in batches:
        got = mine.take(6, keep=range(2, 4))
        for key in ("input_ids", "attention_mask", "labels"):
            assert torch.equal(got[key], b[key][2:4]), key
    assert len(counting.texts) == 4 and mine.position == 12 and mine.cursor["document"] == 12


def test_tokenize_cost_bench_runs_on_tiny_shapes(tmp_path):
    """bench/tokenize_cost.py at tiny shapes (its figure is taken on idle cores): it times the trainer's own stream
    and compares with a step's FLOPs."""
    import sys

    from tiny_models import llama, save_tiny_model

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from bench.tokenize_cost import main

    teacher = save_tiny_model(str(tmp_path / "t"), llama(4))
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"text": "the man was good " * (3 + i % 7)}) + "\n" for i in range(50)))
    out = main(["--teacher_model_name_or_path", teacher, "--dataset", str(data), "--max_length", "16",
                "--global_batch_size", "4", "--per_device_train_batch_size", "1", "--steps", "2",
                "--output", str(tmp_path / "o.json")])
    assert out["global_batch"] == 4 and len(out["tokenize_seconds"]) == 2 and out["step_seconds"] > 0
    assert out["share_of_step"] == out["tokenize_seconds_median"] / out["step_seconds"]
    assert json.loads((tmp_path / "o.json").read_text())["under_limit"] == out["under_limit"]
