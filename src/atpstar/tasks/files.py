"""Load your own prompt pairs from JSONL or CSV, validating every row.

Schema (one pair per row): ``clean``, ``noise``, ``answer`` (one token, e.g. ``" Mary"``),
optional ``distractor`` (one token) and optional ``metric`` (a builtin metric name, the same on
every row that gives one). All malformed rows are reported together, with line numbers.
"""

from __future__ import annotations

import csv
import json
import warnings

from ..metrics import BUILTIN
from ..pairs import PromptPairs
from .common import encode, tokenizer, word_ids

REQUIRED = ("clean", "noise", "answer")
OPTIONAL = ("distractor", "metric")
SHOWN_ERRORS = 20


def from_jsonl(path, model, skip_bad: bool = False) -> PromptPairs:
    """Pairs from a JSON-lines file (one object per line; blank lines are ignored)."""
    records = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                records.append((lineno, _json_record(line)))
    return _build(path, model, records, skip_bad)


def from_csv(path, model, skip_bad: bool = False) -> PromptPairs:
    """Pairs from a CSV file with a header row naming the columns."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        records = [(reader.line_num, {k: v for k, v in row.items() if k is not None}) for row in reader]
    return _build(path, model, records, skip_bad)


def _json_record(line: str):
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        return f"bad JSON ({e.msg} at column {e.colno})"
    return record if isinstance(record, dict) else f"expected a JSON object, got {type(record).__name__}"


def _build(path, model, records: list, skip_bad: bool) -> PromptPairs:
    if not records:
        raise ValueError(f"{path}: no rows found")
    tok = tokenizer(model)
    rows, errors = [], []
    for lineno, record in records:
        try:
            if isinstance(record, str):
                raise ValueError(record)
            rows.append((lineno, *_parse_row(tok, record)))
        except ValueError as e:
            errors.append(f"line {lineno}: {e}")
    if errors and not skip_bad:
        raise ValueError(_report(f"{path}: {len(errors)} malformed row(s) (pass skip_bad=True to skip them)", errors))
    if errors:
        headline = f"{path}: skipped {len(errors)} malformed row(s) of {len(records)}"
        warnings.warn(_report(headline, errors), stacklevel=3)
    if not rows:
        raise ValueError(f"{path}: every row is malformed, no prompt pairs left")
    _, clean, noise, answer, distractor, texts, _ = zip(*rows)
    return PromptPairs.from_ids(clean, noise, answer, distractor, _file_metric(path, rows), texts)


def _file_metric(path, rows: list):
    """The one metric named by the rows (``None`` if none names one)."""
    metrics = sorted({row[-1] for row in rows if row[-1]})
    if len(metrics) > 1:
        raise ValueError(f"{path}: the metric column must name the same metric on every row, found {metrics}")
    no_distractor = [row[0] for row in rows if row[4] is None]
    if metrics == ["logit_diff"] and no_distractor:
        raise ValueError(f"{path}: metric logit_diff needs a distractor, missing on line(s) "
                         f"{no_distractor[:SHOWN_ERRORS]}")
    return metrics[0] if metrics else None


def _parse_row(tok, record: dict):
    """``(clean_ids, noise_ids, answer_id, distractor_id | None, texts, metric | None)`` or ValueError."""
    values = {k: record.get(k) for k in REQUIRED + OPTIONAL}
    missing = [k for k in REQUIRED if values[k] is None]
    if missing:
        raise ValueError(f"missing field(s) {', '.join(missing)}")
    for k, v in values.items():
        if v is not None and not isinstance(v, str):
            raise ValueError(f"field '{k}' must be a string, got {type(v).__name__}")
    empty = [k for k in REQUIRED if values[k] == ""]
    if empty:
        raise ValueError(f"empty field(s) {', '.join(empty)}")
    clean, noise = encode(tok, values["clean"]), encode(tok, values["noise"])
    if len(clean) != len(noise):
        raise ValueError(f"clean is {len(clean)} tokens but noise is {len(noise)}; they must be equal")
    metric = values["metric"] or None
    if metric is not None and metric not in BUILTIN:
        raise ValueError(f"unknown metric {metric!r}; use one of {sorted(BUILTIN)}")
    distractor = _one_token(tok, values["distractor"], "distractor") if values["distractor"] else None
    answer = _one_token(tok, values["answer"], "answer")
    return clean, noise, answer, distractor, (values["clean"], values["noise"]), metric


def _one_token(tok, text: str, what: str) -> int:
    ids = word_ids(tok, text)
    if len(ids) != 1:
        pieces = [tok.decode([i]) for i in ids]
        raise ValueError(f"{what} {text!r} is {len(ids)} tokens {pieces}, must be exactly one "
                         "(often a word with a leading space, e.g. ' Mary')")
    return ids[0]


def _report(headline: str, errors: list[str]) -> str:
    lines = [headline + ":"] + ["  " + e for e in errors[:SHOWN_ERRORS]]
    if len(errors) > SHOWN_ERRORS:
        lines.append(f"  ... and {len(errors) - SHOWN_ERRORS} more")
    return "\n".join(lines)
