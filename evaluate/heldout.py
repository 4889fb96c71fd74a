"""Held-out KL divergence from the teacher, next to perplexity, for every point of a sweep.

    reference = HeldoutReference(teacher, tokenizer, "../shared/data/corpus/brown_heldout.jsonl", docs=25, max_tokens=512)
    run_sweep(points, out, tasks, reference=reference)     # adds task "heldout_kl": kl, token_perplexity

The teacher's log-probabilities are computed once (``boomerang.scoring.TeacherReference``); each model
then costs one forward pass over the documents, less the layers it shares with a model scored before it
(the prefix cache: the sizes of a ladder, assembled from the same loaded teacher and student, start alike). The per-document sums are kept in each result record
(``heldout_scores``) so that two curves can be compared with a paired bootstrap over documents
(``evaluate.bootstrap.paired_comparison``).
"""

from __future__ import annotations

import os

from boomerang.scoring import Scores, TeacherReference, encode_documents
from boomerang.text import DataError, read_local_documents

TASK_NAME = "heldout_kl"


def encode_file(tokenizer, path: str, docs: int | None, max_tokens: int, flag: str = "--data") -> list:
    """The first ``docs`` documents of a local file as ``[1, n]`` id tensors, each cut to ``max_tokens`` tokens
    (those of 2 or more)."""
    sequences = encode_documents(tokenizer, read_local_documents(path, flag=flag), max_tokens, docs)
    if not sequences:
        raise DataError(f"{flag} {path}: no document has 2 or more tokens")
    return sequences


class HeldoutReference:
    task_name = TASK_NAME

    def __init__(self, teacher, tokenizer, data_file: str, docs: int | None = None, max_tokens: int = 512,
                 cache_bytes: int = 2 * 2**30):
        sequences = encode_file(tokenizer, data_file, docs, max_tokens, "--heldout_kl")
        self.data_file = os.path.abspath(data_file)
        self.requested_docs = docs
        self.docs = len(sequences)
        self.max_tokens = max_tokens
        self.reference = TeacherReference(teacher, sequences, cache_bytes=cache_bytes)

    def describe(self) -> dict:
        """The settings (what a rerun into the same sweep folder must repeat); known before any model loads."""
        return {"task": TASK_NAME, "data_file": self.data_file, "documents": self.requested_docs,
                "max_tokens": self.max_tokens}

    def score(self, model) -> Scores:
        return self.reference.score(model)
