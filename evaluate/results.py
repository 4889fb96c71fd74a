"""Reading sweep results and writing their summaries: ``summary.csv`` and ``summary.md`` (plots: ``evaluate.plot``).

A sweep folder holds ``results/<point>.json`` (one per evaluated model) and, for points that
failed, ``failures/<point>.json``. Everything here is derived from those files only, so it can be
redone at any time (``python -m evaluate.plot DIR``).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from typing import Iterable

from boomerang.io import atomic_write_text

ROLE_ORDER = {"student": 0, "intermediate": 1, "teacher": 2}


def load_results(directory: str) -> list[dict]:
    """The result records of one sweep folder (sorted by parameter count), each with ``_dir`` set."""
    folder = os.path.join(directory, "results")
    out = []
    if not os.path.isdir(folder):
        return out
    for fn in sorted(os.listdir(folder)):
        if fn.endswith(".json") and not fn.startswith("."):
            with open(os.path.join(folder, fn)) as f:
                rec = json.load(f)
            rec["_dir"] = os.path.abspath(directory)
            out.append(rec)
    return sort_records(out)


def load_failures(directory: str) -> list[dict]:
    folder = os.path.join(directory, "failures")
    out = []
    if os.path.isdir(folder):
        for fn in sorted(os.listdir(folder)):
            if fn.endswith(".json") and not fn.startswith("."):
                with open(os.path.join(folder, fn)) as f:
                    out.append(json.load(f))
    return out


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
    row = {
        "name": r.get("name"), "curve": r.get("curve"), "method": r.get("method"), "role": r.get("role"),
        "order": r.get("order"), "k": r.get("num_layers_to_patch"), "depth": r.get("depth"),
        "params_total": r.get("parameters", {}).get("total"),
        "params_non_embedding": r.get("parameters", {}).get("non_embedding"),
    }
    for t, m in cols:
        e = r.get("metrics", {}).get(t, {}).get(m, {})
        row[f"{t}/{m}"] = e.get("value")
        row[f"{t}/{m}_stderr"] = e.get("stderr")
    row["eval_time_s"] = r.get("wall_time_s", {}).get("evaluate")
    return row


def summary_csv(records: list[dict]) -> str:
    cols = metric_columns(records)
    rows = [_row(r, cols) for r in records]
    buf = io.StringIO()
    fields = list(rows[0]) if rows else ["name"]
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return buf.getvalue()


def summary_markdown(records: list[dict], failures: list[dict] | None = None, title: str | None = None) -> str:
    cols = metric_columns(records)
    head = ["point", "curve", "depth", "params (total)", "params (non-emb.)"] + [f"{t} {m}" for t, m in cols]
    lines = []
    if title:
        lines += [f"# {title}", ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in records:
        name = r.get("name", "")
        if r.get("role") in ("student", "teacher"):
            name = f"**{name}**"
        cells = [name, str(r.get("curve", "")), str(r.get("depth", "")),
                 f"{r.get('parameters', {}).get('total', 0):,}", f"{r.get('parameters', {}).get('non_embedding', 0):,}"]
        for t, m in cols:
            e = r.get("metrics", {}).get(t, {}).get(m, {})
            v, s = e.get("value"), e.get("stderr")
            cells.append(fmt_number(v) + (f" ± {fmt_number(s, 2)}" if s is not None else ""))
        lines.append("| " + " | ".join(cells) + " |")
    if records:
        r0 = records[0]
        st = r0.get("settings", {})
        lines += ["", f"limit: {st.get('limit')}, few-shot: {st.get('num_fewshot')}, "
                      f"max_doc_words: {st.get('max_doc_words')}, lm-eval {r0.get('versions', {}).get('lm_eval')}. "
                      "± is lm-eval's standard error (none for perplexities)."]
    if failures:
        lines += ["", "Failed points (rerun the same command to retry them):", ""]
        lines += [f"- {f.get('name')}: {f.get('error')}" for f in failures]
    return "\n".join(lines) + "\n"


def write_summary(directory: str) -> dict:
    """(Re)write ``summary.csv`` and ``summary.md`` of a sweep folder (its plots: ``evaluate.plot``). Returns the
    paths."""
    records = load_results(directory)
    failures = load_failures(directory)
    out = {"csv": os.path.join(directory, "summary.csv"), "md": os.path.join(directory, "summary.md")}
    atomic_write_text(out["csv"], summary_csv(records))
    atomic_write_text(out["md"], summary_markdown(records, failures))
    return out
