"""Reading sweep results and writing their summaries: ``summary.csv`` and ``summary.md`` (plots: ``evaluate.plot``).

A sweep folder holds ``results/<point>.json`` (one per evaluated model) and, for points that
failed, ``failures/<point>.json``. Everything here is derived from those files only, so it can be
redone at any time (``python -m evaluate.plot DIR``).
"""

from __future__ import annotations

import glob
import json
import math
import os
from typing import Iterable

from boomerang.io import atomic_write_text, markdown_table

ROLE_ORDER = {"student": 0, "intermediate": 1, "teacher": 2}


def _read_folder(directory: str, sub: str) -> list[dict]:
    out = []
    for path in sorted(glob.glob(os.path.join(directory, sub, "*.json"))):
        with open(path) as f:
            out.append(json.load(f))
    return out


def load_results(directory: str) -> list[dict]:
    """The result records of one sweep folder (``sort_records`` order), each with ``_dir`` set."""
    return sort_records({**r, "_dir": os.path.abspath(directory)} for r in _read_folder(directory, "results"))


def load_failures(directory: str) -> list[dict]:
    return _read_folder(directory, "failures")


def sort_records(records: Iterable[dict]) -> list[dict]:
    return sorted(records, key=lambda r: (r.get("curve", ""), r.get("parameters", {}).get("total", 0),
                                          ROLE_ORDER.get(r.get("role"), 1), r.get("name", "")))


def metric_columns(records: Iterable[dict]) -> list[tuple[str, str]]:
    """``(task, metric)`` pairs present in any record, in a stable order (tasks as first seen)."""
    cols: list[tuple[str, str]] = []
    for r in records:
        tasks = r.get("settings", {}).get("tasks", {}).get("tasks") or list(r.get("metrics", {}))
        for t in tasks:
            for m in r.get("metrics", {}).get(t, {}):
                if (t, m) not in cols:
                    cols.append((t, m))
    return cols


def _metric(r: dict, task: str, metric: str) -> dict:
    return r.get("metrics", {}).get(task, {}).get(metric, {})


def fmt_number(v, digits: int = 4, style: str = "auto") -> str:
    """A number for a table cell (the one number format of every table and report): "" for a missing value
    (None, NaN); from 1,000 up whole numbers with separators; below, ``digits`` significant digits
    (``style="g"``), ``digits`` decimals (``"f"``), or ``"auto"``: significant digits from 1 up, decimals below 1.
    Anything not a number is written as it is."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if style == "auto":
        style = "g" if abs(v) >= 1 else "f"
    return f"{v:.{digits}{style}}"


def headline(record: dict) -> str:
    parts = []
    for t, ms in record.get("metrics", {}).items():
        for m in ("acc", "token_perplexity", "word_perplexity", "acc_norm"):
            if m in ms and ms[m].get("value") is not None:
                parts.append(f"{t} {m}={fmt_number(ms[m]['value'])}")
                break
    return ", ".join(parts[:4])


def _row(r: dict, cols: list[tuple[str, str]]) -> dict:
    params = r.get("parameters", {})
    row = {"name": r.get("name"), "curve": r.get("curve"), "method": r.get("method"), "role": r.get("role"),
           "order": r.get("order"), "k": r.get("num_layers_to_patch"), "depth": r.get("depth"),
           "params_total": params.get("total"), "params_non_embedding": params.get("non_embedding")}
    for t, m in cols:
        row[f"{t}/{m}"] = _metric(r, t, m).get("value")
        row[f"{t}/{m}_stderr"] = _metric(r, t, m).get("stderr")
    row["eval_time_s"] = r.get("wall_time_s", {}).get("evaluate")
    return row


def summary_csv(records: list[dict]) -> str:
    import pandas as pd  # lazy: only where a table is written

    cols = metric_columns(records)
    rows = [_row(r, cols) for r in records]
    return pd.DataFrame(rows, columns=None if rows else ["name"], dtype=object).to_csv(index=False, lineterminator="\n")


def _cell(e: dict) -> str:
    return fmt_number(e.get("value")) + ("" if e.get("stderr") is None else f" ± {fmt_number(e['stderr'], 2)}")


def summary_markdown(records: list[dict], failures: list[dict] | None = None) -> str:
    cols = metric_columns(records)
    rows = []
    for r in records:
        name, params = r.get("name", ""), r.get("parameters", {})
        rows.append([f"**{name}**" if r.get("role") in ("student", "teacher") else name, r.get("curve", ""),
                     r.get("depth", ""), f"{params.get('total', 0):,}", f"{params.get('non_embedding', 0):,}"]
                    + [_cell(_metric(r, t, m)) for t, m in cols])
    text = markdown_table(rows, ["point", "curve", "depth", "params (total)", "params (non-emb.)"]
                          + [f"{t} {m}" for t, m in cols])
    if records:
        st = records[0].get("settings", {})
        text += (f"\nlimit: {st.get('limit')}, few-shot: {st.get('num_fewshot')}, max_doc_words: "
                 f"{st.get('max_doc_words')}, lm-eval {records[0].get('versions', {}).get('lm_eval')}. "
                 "± is lm-eval's standard error (none for perplexities).\n")
    if failures:
        text += "\nFailed points (rerun the same command to retry them):\n\n"
        text += "".join(f"- {f.get('name')}: {f.get('error')}\n" for f in failures)
    return text


def write_summary(directory: str) -> dict:
    """(Re)write ``summary.csv`` and ``summary.md`` of a sweep folder (its plots: ``evaluate.plot``). Returns the
    paths."""
    records = load_results(directory)
    out = {"csv": os.path.join(directory, "summary.csv"), "md": os.path.join(directory, "summary.md")}
    atomic_write_text(out["csv"], summary_csv(records))
    atomic_write_text(out["md"], summary_markdown(records, load_failures(directory)))
    return out
