"""Input checks shared by the Gradio app, the REST API, the job workers and batch prediction.

One place decides what a usable row is (read_row: its id, its text or its error), how an uploaded
CSV/JSONL file is read and how results are written back as CSV, so the app, the API, the jobs,
`papertasks predict` and `papertasks predict-dask` refuse the same inputs with the same messages.
Standard library only (no torch, no pandas): the Space folder runs it as it is.

Limits (documented in the README):
- a row's id is its first non-blank `id` / `arxiv_id` / `paper_id`, as given, else its position in
  the input (from 0); duplicate ids are kept;
- a row's text is its `text` field (or the field named by text_field), else `title` + `abstract`;
  it must be a string (null counts as empty) with at least one non-space character, no NUL and at
  most MAX_TEXT_CHARS characters after whitespace normalization; an abstract has far fewer;
- a row whose text breaks a rule (fields missing, not a string, empty, too long, NUL, a lone UTF-16
  surrogate such as JSON's "\\ud800"), whose id holds a lone surrogate, or a CSV/TSV line with more cells
  than its header (an unquoted comma: its columns would be shifted) gets an `error` and no labels; the
  other rows are still scored, in input order;
- an uploaded file must be UTF-8 CSV/TSV or JSON Lines (or a JSON array of objects), at most
  MAX_FILE_BYTES bytes and MAX_FILE_ROWS rows; a CSV/TSV header without the text columns, or a
  line that cannot be parsed at all, fails the whole file;
- CSV written back (results_to_csv) escapes cells that a spreadsheet would run as a formula
  (starting with = + - @, tab or carriage return) with a leading single quote;
- the model was trained on English abstracts: text that is mostly in another script, or Latin-script
  text with almost no English function words, is still scored but gets a warning.
"""
from __future__ import annotations

import csv
import io
import json
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Sequence

try:  # imported as part of the papertasks package, or as a sibling module in the Space
    from .predictor import compose_text, normalize_whitespace
except ImportError:
    from predictor import compose_text, normalize_whitespace

MAX_TEXT_CHARS = 20_000
MAX_FILE_BYTES = 10 * 2**20
MAX_FILE_ROWS = 50_000
ID_FIELDS = ("id", "arxiv_id", "paper_id")  # id columns, in order of preference (prepare, predict, uploads)
FILE_TYPES = (".csv", ".tsv", ".jsonl", ".ndjson", ".json")
CSV_COLUMNS = ("id", "labels", "top_label", "top_score", "scores", "warnings", "error")

# Frequent English function words: real abstracts have 25-45% of their words in this set.
_ENGLISH = frozenset("""a about after all also an and any are as at be been between both but by can could do
does each for from had has have how however if in into is it its may more most new no not of on one only or
other our over same several show shows such than that the their them then there these they this those through
to two under up use used using very was we well were what when where which while who with within without would
""".split())
_WORD = re.compile(r"[a-z]+")
# A lone UTF-16 surrogate: JSON can carry one ("\ud800"), but it is no character: UTF-8 cannot encode
# it and the tokenizer refuses it, so one such row would stop a whole run.
_SURROGATE = re.compile("[\ud800-\udfff]")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # a spreadsheet runs such a cell (CSV formula injection)


class MalformedRow(dict):
    """A row whose line could not be read into its columns (a CSV line with more cells than its
    header): read_row gives it `problem` as its error instead of scoring shifted columns."""

    def __init__(self, cells: dict, problem: str):
        super().__init__(cells)
        self.problem = problem


def _printable(text: str) -> str:
    """`text` with lone surrogates replaced by U+FFFD, so a message about it can be written as UTF-8."""
    return _SURROGATE.sub("\ufffd", text)


class InputError(ValueError):
    """Bad input from a user: `str(e)` is one line saying what is wrong and how to fix it;
    `status` is the HTTP status the API answers with (422 unusable, 413 too large, 415 wrong type)."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


def _kind(value) -> str:
    """What a non-string JSON value is, for a message."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"


def _field_text(value, field: str) -> str:
    """One text field's value as a string (None: empty); InputError for anything else or a NUL."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InputError(f"{field} is {_kind(value)}, not a string; send a paper's title and abstract as text")
    if "\x00" in value:
        raise InputError(f"{field} contains a NUL character (U+0000); remove it")
    if _SURROGATE.search(value):
        raise InputError(_surrogate_message(field))
    return value


def _surrogate_message(field: str) -> str:
    return (f"{field} contains a lone UTF-16 surrogate (such as \\ud800 in JSON), which is not a character; "
            "remove it or send the whole character")


def _row_text(row: dict, text_field: str | None = None) -> str:
    """The model input of a row: `text_field`, else `text`, else `title` + `abstract`, whitespace-
    normalized; InputError (one line, no location) when the row has no usable text."""
    if text_field:
        if text_field not in row:
            raise InputError(f"no '{text_field}' field (fields: {_shown(list(row))})")
        field = f"'{text_field}'"
        joined = normalize_whitespace(_field_text(row[text_field], field))
    elif "text" in row:
        field = "'text'"
        joined = normalize_whitespace(_field_text(row["text"], field))
    elif "title" in row or "abstract" in row:
        field = "'title' / 'abstract'"
        joined = compose_text(_field_text(row.get("title"), "'title'"), _field_text(row.get("abstract"), "'abstract'"))
    else:
        raise InputError(f"needs a 'text' field or 'title' and 'abstract' fields (found: {_shown(list(row))})")
    if not joined:
        raise InputError(f"{field} is empty; send a paper's title and abstract")
    if len(joined) > MAX_TEXT_CHARS:
        raise InputError(f"{len(joined):,} characters; the limit is {MAX_TEXT_CHARS:,} "
                         "(a title and abstract is far shorter)")
    return joined


def _row_id(row: dict, index: int):
    """The first of ID_FIELDS that is not None nor blank, as given (a number stays a number), else `index`."""
    return next((row[k] for k in ID_FIELDS if row.get(k) is not None and str(row[k]).strip()), index)


def read_row(row: dict, index: int, text_field: str | None = None) -> dict:
    """The one rule for an input row, whichever front end read it: {'id', 'text'} when it can be
    scored, else {'id', 'text': '', 'error': 'one line'}. `index` is the row's position in the input
    (from 0), its id when it has none."""
    record = {"id": _row_id(row, index)}
    try:
        if isinstance(record["id"], str) and _SURROGATE.search(record["id"]):
            record["id"] = index  # it could not be written back
            raise InputError(_surrogate_message("the id"))
        if isinstance(row, MalformedRow):
            raise InputError(row.problem)
        record["text"] = _row_text(row, text_field)
    except InputError as e:
        record.update(text="", error=str(e))
    return record


def text_from(text: object = None, title: object = None, abstract: object = None) -> str:
    """One text from a single-text request (`text`, or `title` + `abstract`, as sent: None when absent),
    checked by the rows' rule: InputError with the message its row would get."""
    if text is not None and (title is not None or abstract is not None):
        raise InputError("give either 'text' or 'title' + 'abstract', not both")
    if title is not None or abstract is not None:
        return _row_text({"title": title, "abstract": abstract})
    return _row_text({"text": text})


def language_warnings(text: str) -> list[str]:
    """Warnings for text the English-only model cannot judge well (the text is still scored)."""
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return ["the text has no letters; the scores are meaningless"]
    latin = sum(c < "\u0250" for c in letters)  # ASCII, Latin-1 and Latin Extended-A/B
    if latin < 0.5 * len(letters):
        scripts = Counter(unicodedata.name(c, "UNKNOWN").split()[0] for c in letters if c >= "\u0250")
        script = scripts.most_common(1)[0][0]
        script = "CJK (Chinese, Japanese or Korean)" if script == "CJK" else script.title()
        return [f"the text is mostly in {script} script, not English; the model was trained on English "
                "abstracts, so these scores are unreliable"]
    words = _WORD.findall(text.lower())
    if len(words) >= 12 and sum(w in _ENGLISH for w in words) < 0.08 * len(words):
        return ["the text does not look like English; the model was trained on English abstracts, "
                "so these scores are unreliable"]
    return []


def _decode(data: bytes, name: str) -> str:
    if not data.strip():
        raise InputError(f"{name}: the file is empty")
    if b"\x00" in data[:65536]:
        raise InputError(f"{name}: this is a binary file, not CSV or JSON Lines text", status=415)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise InputError(f"{name}: not UTF-8 text (byte 0x{data[e.start]:02x} on line {line}); "
                         "save the file as UTF-8") from None


def file_kind(name: str) -> str:
    lower = name.lower()
    for ext in FILE_TYPES:
        if lower.endswith(ext):
            return {".ndjson": ".jsonl"}.get(ext, ext)
    shown = name.rsplit("/", 1)[-1] or "the file"
    raise InputError(f"{shown}: unknown file type; upload a .csv or .jsonl file "
                     "(rows with 'text', or 'title' and 'abstract')", status=415)


def _shown(fields: Sequence[str]) -> str:
    """Field names for a one-line message: whitespace folded, long names and long lists cut."""
    names = [_printable(normalize_whitespace(str(f))[:40]) or "''" for f in fields[:20]]
    return ", ".join(names) + (f", ... ({len(fields)} in all)" if len(fields) > 20 else "") if names else "none"


def check_text_columns(fields: Sequence[str], text_field: str | None, where: str) -> None:
    """A table's header (CSV/TSV, Parquet) must hold the text columns: else every row would fail,
    so the whole file is refused."""
    if text_field:
        if text_field not in fields:
            raise InputError(f"{where}: no '{text_field}' field (fields: {_shown(fields)})")
    elif "text" not in fields and "title" not in fields and "abstract" not in fields:
        raise InputError(f"{where}: needs a 'text' column or 'title' and 'abstract' columns "
                         f"(found: {_shown(fields)})")


def _json_records(text: str, name: str):
    stripped = text.lstrip()
    if stripped.startswith("["):  # a JSON array of objects
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(f"{name}: not valid JSON ({e.msg}, line {e.lineno})") from None
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                raise InputError(f"{name}: item {i} is not a JSON object")
            yield f"{name} item {i}", row
        return
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.strip():
            yield f"{name}:{lineno}", json_object_line(line, f"{name}:{lineno}")


def json_object_line(line: str, where: str) -> dict:
    """One JSON Lines line -> its object; an InputError naming `where` (file:line) otherwise."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise InputError(f"{where}: not valid JSON ({e.msg}); one JSON object per line") from None
    if not isinstance(row, dict):
        raise InputError(f"{where}: expected a JSON object per line")
    return row


def csv_records(lines: Iterable[str], name: str, delimiter: str = ","):
    """Read CSV/TSV lines (a file opened with newline=""): first (None, header fields), then
    (name:line, row) for each row. A line with more cells than the header (an unquoted delimiter: its
    columns would be shifted) comes as a MalformedRow, so it becomes an error row and is never scored; a
    line that cannot be parsed at all (an unclosed quote) is an InputError for the whole file."""
    # a cell may hold a whole (too long) text: let it through, so the row gets its own clear error
    csv.field_size_limit(max(csv.field_size_limit(), MAX_FILE_BYTES))
    reader = csv.DictReader(lines, delimiter=delimiter, strict=True)
    try:
        fields = [f.strip() for f in (reader.fieldnames or [])]
        reader.fieldnames = fields
        yield None, fields
        for row in reader:
            where = f"{name}:{reader.line_num}"
            if None in row:  # more cells than header columns
                extra = row.pop(None)
                shown = "comma" if delimiter == "," else "tab"
                row = MalformedRow(row, f"line {reader.line_num}: {len(fields) + len(extra)} cells but the header has "
                                        f"{len(fields)} column{'s' * (len(fields) != 1)}; put double quotes around a "
                                        f"cell that contains a {shown}")
            yield where, row
    except csv.Error as e:
        raise InputError(f"{name}:{reader.line_num + 1}: not valid CSV ({e})") from None


def _records(text: str, name: str, kind: str):
    if kind in (".csv", ".tsv"):
        return csv_records(io.StringIO(text, newline=""), name, "\t" if kind == ".tsv" else ",")
    return _json_records(text, name)


def check_file_header(data: bytes, name: str, text_field: str | None = None,
                      max_bytes: int = MAX_FILE_BYTES) -> None:
    """Quick checks the API does before queueing: size, type, UTF-8, a CSV header's columns, and that
    the first record can be read.
    The worker reads the whole file later (read_batch_file) and reports what is wrong further down."""
    if len(data) > max_bytes:
        raise InputError(f"{name}: {len(data):,} bytes; the limit is {max_bytes:,}", status=413)
    kind = file_kind(name)
    text = _decode(data, name)
    records = _records(text, name, kind)
    try:
        where, first = next(records)
        if where is None:  # the CSV header; a JSON row without the text fields is that row's error
            check_text_columns(first, text_field, name)
            next(records)
    except StopIteration:
        raise InputError(f"{name}: no rows") from None


def read_batch_file(data: bytes, name: str, text_field: str | None = None, max_rows: int = MAX_FILE_ROWS,
                    max_bytes: int = MAX_FILE_BYTES) -> list[dict]:
    """Rows of an uploaded file as [{'id', 'text'} | {'id', 'text': '', 'error'}]; InputError for a
    file that cannot be used as a whole (type, encoding, syntax, missing columns, size)."""
    if len(data) > max_bytes:
        raise InputError(f"{name}: {len(data):,} bytes; the limit is {max_bytes:,}", status=413)
    kind = file_kind(name)
    text = _decode(data, name)
    rows = []
    for where, row in _records(text, name, kind):
        if where is None:  # the CSV header
            check_text_columns(row, text_field, name)
            continue
        if len(rows) == max_rows:
            raise InputError(f"{name}: more than {max_rows:,} rows; split the file", status=413)
        rows.append(read_row(row, len(rows), text_field))
    if not rows:
        raise InputError(f"{name}: no rows")
    return rows


def predict_rows(predictor, rows: list[dict], threshold: float | None = None, top_k: int | None = None,
                 chunk_rows: int = 64, progress: Callable[[int, int], None] | None = None, batch_size: int = 32,
                 warnings: bool = True, policy: str = "tuned") -> list[dict]:
    """Score read_row rows in chunks (calling progress(done, total) after each); each result is
    {'id', 'labels', 'scores', 'warnings'} ('warnings' only if asked) or
    {'id', 'labels': [], 'scores': {}, 'error'}, in input order."""
    results = []
    total = len(rows)
    for start in range(0, total, chunk_rows):
        chunk = rows[start:start + chunk_rows]
        good = [r for r in chunk if not r.get("error")]
        predictions = iter(predictor.predict([r["text"] for r in good], threshold=threshold, top_k=top_k,
                                             batch_size=batch_size, policy=policy))
        for row in chunk:
            if row.get("error"):
                results.append({"id": row["id"], "labels": [], "scores": {}, "error": row["error"]})
                continue
            results.append({"id": row["id"], **next(predictions)})
            if warnings:
                results[-1]["warnings"] = language_warnings(row["text"])
        if progress:
            progress(min(start + chunk_rows, total), total)
    return results


def _cell(value):
    """A CSV cell a spreadsheet shows as text: a string that it would run as a formula gets a leading '."""
    return "'" + value if isinstance(value, str) and value.startswith(_FORMULA_START) else value


def results_to_csv(results: list[dict]) -> str:
    """One CSV row per result: id, labels (';'-joined), top_label, top_score, scores (JSON),
    warnings ('; '-joined), error; text cells escaped against formula injection (_cell)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in results:
        scores = r.get("scores") or {}
        top = max(scores, key=scores.get) if scores else ""
        writer.writerow(map(_cell, [r["id"], ";".join(r.get("labels", [])), top, scores.get(top, ""),
                                    json.dumps(scores) if scores else "", "; ".join(r.get("warnings", [])),
                                    r.get("error", "")]))
    return out.getvalue()
