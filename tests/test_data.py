"""Data: file formats, packing with EOS, per-document positions and attention, padding, determinism."""

import json

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
