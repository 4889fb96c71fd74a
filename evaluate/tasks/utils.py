"""Functions the local task templates name with ``!function`` (lm-eval loads this file by path)."""

from __future__ import annotations

import re


def count_words(text: str) -> int:
    """Words as lm-eval's perplexity tasks count them (whitespace-separated pieces)."""
    return len(re.split(r"\s+", text))


def process_results_ppl(doc: dict, results: list) -> dict:
    """Per-document (log-likelihood, weight) pairs for the weighted perplexities.

    ``results[0]`` is the document's summed log-likelihood. When the model runs through
    ``evaluate.evaluate`` it is a float that also carries ``num_tokens`` (the tokens scored), which
    gives the token perplexity; a plain float (e.g. the ``lm_eval`` command line) gives the
    other three metrics only.
    """
    (loglikelihood,) = results
    text = doc["text"]
    n_bytes = len(text.encode("utf-8"))
    out = {
        "word_perplexity": (float(loglikelihood), count_words(text)),
        "byte_perplexity": (float(loglikelihood), n_bytes),
        "bits_per_byte": (float(loglikelihood), n_bytes),
    }
    num_tokens = getattr(loglikelihood, "num_tokens", None)
    if num_tokens:
        out["token_perplexity"] = (float(loglikelihood), int(num_tokens))
    return out
