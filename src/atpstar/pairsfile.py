"""Read your own prompt pairs from JSONL or CSV, validating every row (``PromptPairs.from_jsonl`` /
``from_csv`` and ``atpstar.tasks.from_jsonl`` / ``from_csv`` build the pairs from what this returns).

Schema (one pair per row): ``clean``, ``noise``, ``answer`` (one token, e.g. ``" Mary"``),
optional ``distractor`` (one token) and optional ``metric`` (a builtin metric name, the same on
every row that gives one). All malformed rows are reported together, with line numbers. Prompts get
the model's beginning-of-sequence token in front unless ``bos=False`` (see :mod:`atpstar.tokens`).
"""

from __future__ import annotations

import csv
import io
import json
import warnings
from pathlib import Path

from .metrics import BUILTIN
from .tokens import with_bos, word_ids

REQUIRED = ("clean", "noise", "answer")
OPTIONAL = ("distractor", "metric")
SHOWN_ERRORS = 20


def read_jsonl(path, tok, skip_bad: bool = False, bos: bool = True) -> tuple:
    """Rows of a JSON-lines file (one object per line; blank lines are ignored): see :func:`_build`."""
    records = [(lineno, _json_record(line)) for lineno, line in enumerate(_read_text(path).split("\n"), 1)
               if line.strip()]
    return _build(path, tok, records, skip_bad, bos)


def read_csv(path, tok, skip_bad: bool = False, bos: bool = True) -> tuple:
    """Rows of a CSV file with a header row naming the columns: see :func:`_build`."""
    reader = csv.DictReader(io.StringIO(_read_text(path), newline=""))
    try:
        records = [(reader.line_num, {k: v for k, v in row.items() if k is not None}) for row in reader]
    except csv.Error as err:
        raise ValueError(f"{path}: line {reader.line_num}: not readable as CSV ({err})") from None
    return _build(path, tok, records, skip_bad, bos)


def _read_text(path) -> str:
    """The whole file as text. A missing file, a directory, or bytes that are not UTF-8 (a binary file,
    another encoding) raise an error naming the file and the line; a UTF-8 byte-order mark is dropped."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory, not a pairs file (.jsonl or .csv)")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"pairs file not found: {path}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        column = err.start - data.rfind(b"\n", 0, err.start)
        raise ValueError(f"{path}: line {line} is not UTF-8 text (byte 0x{data[err.start]:02x} at column {column}); "
                         "pairs files must be UTF-8 JSONL or CSV: is it a binary file, or saved in another "
                         "encoding? Save it as UTF-8") from None


def _json_record(line: str):
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        return f"bad JSON ({e.msg} at column {e.colno})"
    return record if isinstance(record, dict) else f"expected a JSON object, got {type(record).__name__}"


def _build(path, tok, records: list, skip_bad: bool, bos: bool) -> tuple:
    """``(clean, noise, answer, distractor, metric, texts)``, the arguments of ``PromptPairs.from_ids``."""
    if not records:
        raise ValueError(f"{path}: no rows found")
    rows, errors = [], []
    for lineno, record in records:
        try:
            if isinstance(record, str):
                raise ValueError(record)
            rows.append((lineno, *_parse_row(tok, record, bos)))
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
    return clean, noise, answer, distractor, _file_metric(path, rows), texts


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


def _parse_row(tok, record: dict, bos: bool):
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
    clean, noise = word_ids(tok, values["clean"]), word_ids(tok, values["noise"])
    if len(clean) != len(noise):  # the texts' own tokens, as the user wrote them (a BOS token comes on top)
        raise ValueError(f"clean is {len(clean)} tokens but noise is {len(noise)}; they must be equal")
    clean, noise = with_bos(tok, clean, bos), with_bos(tok, noise, bos)
    metric = values["metric"] or None
    if metric is not None and metric not in BUILTIN:
        raise ValueError(f"unknown metric {metric!r}; use one of {sorted(BUILTIN)}")
    distractor = _one_token(tok, values["distractor"], "distractor") if values["distractor"] else None
    answer = _one_token(tok, values["answer"], "answer")
    if distractor == answer:
        raise ValueError(f"answer and distractor are the same token {values['answer']!r}: the logit difference "
                         "would be 0 and so would every effect")
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
