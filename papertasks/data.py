"""`papertasks prepare`: raw paper tables -> clean, pruned, split JSONL + label vocabulary + report.

Raw data is never modified: inputs are read, and everything derived goes to `--out`.
Each output row is {"id", "text", "labels", ["date"]}; `text` is 'Title. Abstract' exactly as
the predictor composes it at serving time.
"""
from __future__ import annotations

import csv
import gzip
import json
import logging
import math
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from deployment.inputs import ID_FIELDS, InputError, MalformedRow, csv_records, read_row
from papertasks.cli_support import check_count, check_fraction
from papertasks.errors import UserError
from papertasks.io import atomic_path, write_json, write_text

log = logging.getLogger(__name__)

LABEL_FIELDS = ("labels", "categories", "tasks", "task_id", "label")
SPLITS = ("train", "valid", "test")
PROBLEMS = ("multi-label", "multi-class", "binary")

# arXiv lists these categories under two names; fold each pair into the first name.
ARXIV_ALIASES = {
    "eess.SY": "cs.SY",
    "math.IT": "cs.IT",
    "math.NA": "cs.NA",
    "math-ph": "math.MP",
    "math.ST": "stat.TH",
    "econ.GN": "q-fin.EC",
}


@dataclass
class PrepareConfig:
    inputs: list[str]
    out: str
    text_field: str | None = None
    title_field: str = "title"
    abstract_field: str = "abstract"
    label_field: str | None = None
    label_sep: str | None = None
    id_field: str | None = None
    min_count: int = 1
    top_k: int | None = None
    valid_frac: float = 0.1
    test_frac: float = 0.1
    split_by: str | None = None
    test_from: str | None = None
    valid_from: str | None = None
    max_rows: int | None = None
    fold_aliases: bool = True
    problem: str = "auto"  # or one of PROBLEMS
    labels_json: str | None = None  # another copy of labels.json, only where asked (e.g. json_files/arxiv/labels.json)
    seed: int = 42
    extra: list[str] | None = None  # corrections (e.g. `papertasks feedback export`): their labels win


# ---------------------------------------------------------------- reading

def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


def _read_csv(path: Path, delimiter: str) -> pd.DataFrame:
    """A CSV/TSV as strings ("" for a missing cell), read as uploads and `predict` read it; a line with more
    cells than the header (an unquoted delimiter would shift its columns) stops `prepare` with its line."""
    with gzip.open(path, "rt", encoding="utf-8-sig", newline="") if path.suffix == ".gz" else \
            open(path, encoding="utf-8-sig", newline="") as f:
        records = csv_records(f, str(path), delimiter)
        fields = next(records)[1]
        rows = []
        for _, row in records:
            if isinstance(row, MalformedRow):
                raise UserError(f"{path}:{row.problem.removeprefix('line ')}")
            rows.append(row)
    return pd.DataFrame(rows, columns=fields, dtype=str).fillna("")


def read_table(path: str | Path) -> pd.DataFrame:
    """Read JSONL, CSV or Parquet (optionally .gz); ids and labels stay strings."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    kind = path.name.lower().removesuffix(".gz").rsplit(".", 1)[-1]
    try:
        if kind in ("jsonl", "json", "ndjson"):
            with _open_text(path) as f:
                rows = [json.loads(line) for line in f if line.strip()]
            return pd.DataFrame(rows)
        if kind in ("csv", "tsv"):
            return _read_csv(path, "\t" if kind == "tsv" else ",")
        if kind == "parquet":
            return pd.read_parquet(path)
    except InputError as e:
        raise UserError(str(e)) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValueError, csv.Error) as e:
        raise UserError(f"{path}: cannot read it as {kind.upper()} ({type(e).__name__}: {str(e)[:120]})") from None
    raise UserError(f"{path}: unknown format '{kind}' (use .jsonl, .csv, .tsv or .parquet, optionally .gz)")


def parse_labels(value, sep: str | None = None) -> list[str]:
    """A list/array of labels, one delimited string ('cs.CL, cs.LG' or 'a|b' or 'a;b'), or one whole number
    (a class id; pandas reads a column of them with gaps as floats)."""
    value = _cell(value)
    if value is None:
        return []
    if isinstance(value, (int, float)) and not isinstance(value, bool) and float(value).is_integer():
        return [str(int(value))]
    if not isinstance(value, (str, list, tuple, np.ndarray)):
        raise UserError(f"a label value is a {type(value).__name__} ({str(value)[:60]}); give a list of labels, "
                        "one delimited string or a whole number")
    if isinstance(value, str):
        value = value.strip()
        if value.startswith("["):
            try:
                return parse_labels(json.loads(value))
            except json.JSONDecodeError:
                pass
        seps = [sep] if sep else [s for s in ("|", ";", ",") if s in value][:1]
        parts = value.split(seps[0]) if seps else [value]
        return [p.strip() for p in parts if p.strip()]
    return [str(v).strip() for v in value if str(v).strip()]


def _cell(value):
    """A table cell as the JSON value it was: None for no value (NaN: pandas fills a field that some rows
    lack with it; pd.NA), a Python number for a numpy one."""
    if value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    return value.item() if isinstance(value, np.generic) else value


def _pick(columns, wanted: str | None, candidates, what: str) -> str | None:
    if wanted:
        if wanted not in columns:
            raise UserError(f"no '{wanted}' {what} column; columns are: {', '.join(map(str, columns))}")
        return wanted
    return next((c for c in candidates if c in columns), None)


def to_examples(df: pd.DataFrame, cfg: PrepareConfig, source: str) -> pd.DataFrame:
    """Raw table -> columns id, text, labels (list), error, date (if --split-by). A row's text follows the
    rule every front end applies (deployment.inputs.read_row): one that is not a string, is empty, too long,
    or holds a NUL or a lone surrogate gets `error` ('FILE row N: why'), and `clean` drops and counts it."""
    cols = list(df.columns)
    if df.empty:
        raise UserError(f"{source}: no rows")
    label_col = _pick(cols, cfg.label_field, LABEL_FIELDS, "label")
    if label_col is None:
        raise UserError(f"{source}: no label column (looked for {', '.join(LABEL_FIELDS)}; "
                        f"set --label-field); columns are: {', '.join(map(str, cols))}")
    text_col = _pick(cols, cfg.text_field, ("text",), "text")
    if text_col is not None:
        fields = {text_col: text_col}
    else:
        missing = [c for c in (cfg.title_field, cfg.abstract_field) if c not in cols]
        if missing:
            raise UserError(f"{source}: no 'text' column and no {' / '.join(missing)} column; "
                            f"columns are: {', '.join(map(str, cols))}")
        fields = {"title": cfg.title_field, "abstract": cfg.abstract_field}
    name = Path(source).name
    rows = [read_row({key: _cell(v) for key, v in zip(fields, values)}, i, text_col)
            for i, values in enumerate(zip(*(df[column] for column in fields.values())))]
    id_col = _pick(cols, cfg.id_field, ID_FIELDS, "id")
    ids = [_cell(v) for v in df[id_col]] if id_col else [None] * len(df)
    out = pd.DataFrame({
        "id": [str(v) if v is not None and str(v).strip() else f"{name}:{i}" for i, v in enumerate(ids)],
        "text": [row["text"] for row in rows],
        "labels": [parse_labels(v, cfg.label_sep) for v in df[label_col]],
        "error": [f"{name} row {row['id']}: {row['error']}" if "error" in row else "" for row in rows],
    })
    if cfg.split_by:
        if cfg.split_by not in cols:
            raise UserError(f"{source}: no '{cfg.split_by}' column to split by; columns are: {', '.join(map(str, cols))}")
        dates = [_cell(v) for v in df[cfg.split_by]]
        out["date"] = ["" if d is None else str(d).strip() for d in dates]  # "": no date, dropped by prepare
    return out


def clean(df: pd.DataFrame, fold_aliases: bool) -> tuple[pd.DataFrame, dict]:
    """Drop the rows whose text is unusable (empty, not a string, ...: to_examples' `error`), fold label
    aliases, de-duplicate by id and by text."""
    stats = {"rows_read": len(df)}
    unusable = df["error"] != ""
    stats["unusable_text_dropped"] = int(unusable.sum())
    if unusable.any():
        log.warning("%d rows dropped: their text is unusable (the first: %s)", unusable.sum(),
                    df["error"][unusable].iloc[0])
    df = df[~unusable].drop(columns="error")
    if fold_aliases:
        df = df.assign(labels=[sorted({ARXIV_ALIASES.get(lab, lab) for lab in labs}) for labs in df["labels"]])
    else:
        df = df.assign(labels=[sorted(set(labs)) for labs in df["labels"]])
    before = len(df)
    df = df.drop_duplicates("id").drop_duplicates("text")
    stats["duplicates_dropped"] = before - len(df)
    return df.reset_index(drop=True), stats


# ---------------------------------------------------------------- pruning and splitting

def choose_labels(label_lists, min_count: int, top_k: int | None) -> tuple[list[str], Counter]:
    """Labels with at least `min_count` examples, then the `top_k` most frequent; by frequency."""
    counts = Counter(lab for labs in label_lists for lab in labs)
    kept = [lab for lab, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if n >= min_count]
    return (kept[:top_k] if top_k else kept), counts


def label_matrix(label_lists, labels: list[str]) -> np.ndarray:
    """0/1 matrix, rows x labels. int64, not int8: scikit-learn 1.9's one-vs-rest logistic regression
    learned nothing from an int8 matrix of 145 Papers with Code tasks (test ROC-AUC 0.49; 0.93 as int64)."""
    index = {lab: i for i, lab in enumerate(labels)}
    y = np.zeros((len(label_lists), len(labels)), dtype=np.int64)
    for row, labs in enumerate(label_lists):
        for lab in labs:
            if lab in index:
                y[row, index[lab]] = 1
    return y


def stratified_holdout(y: np.ndarray, frac: float, seed: int, flag: str) -> tuple[np.ndarray, np.ndarray]:
    """Iterative stratification (Sechidis et al.) so rare labels appear in both parts; `flag` names the
    option `frac` comes from when too few rows leave one part empty."""
    from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit

    if math.ceil(frac * len(y)) >= len(y):  # the held-out part, rounded up as scikit-learn does, takes every row
        raise UserError(f"too few labeled rows ({len(y)}) to hold out {flag} and keep rows to train on; "
                        "give more rows or a smaller fraction")
    splitter = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=frac, random_state=seed)
    keep, hold = next(splitter.split(np.zeros(len(y)), y))
    return np.sort(keep), np.sort(hold)


def split(df: pd.DataFrame, cfg: PrepareConfig) -> tuple[dict[str, pd.DataFrame], list[str], Counter]:
    """Random: prune on all rows, then stratify test and valid. Time: rows from --test-from on are
    the test set, labels are pruned on the earlier rows, and valid is either stratified out of those
    or, with --valid-from, the latest of them (thresholds then meet the label mix of recent papers,
    as the test set and real use do)."""
    if cfg.valid_from and not cfg.split_by:
        raise UserError("--valid-from needs --split-by and --test-from (it is a time split)")
    if cfg.split_by:
        if not cfg.test_from:
            raise UserError("--split-by needs --test-from (the first date of the test set)")
        if cfg.valid_from and cfg.valid_from >= cfg.test_from:
            raise UserError(f"--valid-from {cfg.valid_from} must come before --test-from {cfg.test_from}")
        is_test = (df["date"] >= cfg.test_from).to_numpy()
        past, test = df[~is_test], df[is_test]
        if past.empty or test.empty:
            raise UserError(f"--test-from {cfg.test_from} leaves {'no training' if past.empty else 'no test'} rows "
                            f"(dates run {df['date'].min()} .. {df['date'].max()})")
        if cfg.valid_from:
            is_valid = (past["date"] >= cfg.valid_from).to_numpy()
            if is_valid.all() or not is_valid.any():
                raise UserError(f"--valid-from {cfg.valid_from} leaves {'no training' if is_valid.all() else 'no validation'} "
                                f"rows before --test-from (dates run {past['date'].min()} .. {past['date'].max()})")
            train, valid = past[~is_valid], past[is_valid]
        labels, counts = choose_labels((train if cfg.valid_from else past)["labels"], cfg.min_count, cfg.top_k)
        _require_labels(labels, counts, cfg)
        if not cfg.valid_from:
            tr, va = stratified_holdout(label_matrix(past["labels"], labels), cfg.valid_frac, cfg.seed, "--valid-frac")
            train, valid = past.iloc[tr], past.iloc[va]
        parts = {"train": train, "valid": valid, "test": test}
    else:
        labels, counts = choose_labels(df["labels"], cfg.min_count, cfg.top_k)
        _require_labels(labels, counts, cfg)
        y = label_matrix(df["labels"], labels)
        rest, te = stratified_holdout(y, cfg.test_frac, cfg.seed, "--test-frac")
        tr, va = stratified_holdout(y[rest], cfg.valid_frac / (1 - cfg.test_frac), cfg.seed, "--valid-frac")
        parts = {"train": df.iloc[rest[tr]], "valid": df.iloc[rest[va]], "test": df.iloc[te]}
    keep = set(labels)
    for name, part in parts.items():
        part = part.assign(labels=[[lab for lab in labs if lab in keep] for labs in part["labels"]])
        parts[name] = part[part["labels"].map(len) > 0].reset_index(drop=True)
    return parts, labels, counts


def detect_problem(label_lists, n_labels: int, wanted: str = "auto") -> str:
    """multi-class (binary for two labels) when every row has exactly one label, else multi-label;
    `wanted` (from --problem) is checked against the data rather than trusted."""
    multi = sum(len(labs) > 1 for labs in label_lists)
    found = "multi-label" if multi else ("binary" if n_labels == 2 else "multi-class")
    if wanted in ("auto", None, found) or wanted == "multi-label":
        return found if wanted in ("auto", None) else wanted
    if multi:
        raise UserError(f"--problem {wanted} needs one label per row, but {multi} rows have several "
                        "(after pruning); use --problem multi-label, or prune to one label per paper")
    if wanted == "binary" and n_labels != 2:
        raise UserError(f"--problem binary needs exactly 2 labels, the data has {n_labels}; use --top-k 2 or "
                        "--problem multi-class")
    return wanted


def read_problem(data_dir: str | Path) -> str:
    """The problem `prepare` found (report.json); data prepared elsewhere is judged from its train split."""
    report = Path(data_dir) / "report.json"
    if report.is_file():
        problem = json.loads(report.read_text(encoding="utf-8")).get("problem")
        if problem in PROBLEMS:
            return problem
    return detect_problem(read_split(data_dir, "train")["labels"], len(read_labels(data_dir)))


def _require_labels(labels, counts, cfg):
    if not labels:
        top = max(counts.values()) if counts else 0
        raise UserError(f"no label has at least --min-count {cfg.min_count} examples (the most frequent has {top}); "
                        "lower --min-count")
    if len(labels) == 1:  # every row left would have it: nothing to tell apart
        raise UserError(f"only one label ({labels[0]}) is left of the {len(counts)} found; a classifier needs at "
                        "least 2: give more rows, lower --min-count or raise --top-k")


# ---------------------------------------------------------------- writing

def write_jsonl(path: Path, df: pd.DataFrame) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for row in df.to_dict("records"):
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def read_split(data_dir: str | Path, name: str) -> pd.DataFrame:
    path = Path(data_dir) / f"{name}.jsonl"
    if not path.is_file():
        raise UserError(f"{path}: missing; run `papertasks prepare ... --out {data_dir}` first")
    return read_table(path)


def read_labels(data_dir: str | Path) -> list[str]:
    from deployment.predictor import BundleError, load_labels

    path = Path(data_dir) / "labels.json"
    if not path.is_file():
        raise UserError(f"{path}: missing; run `papertasks prepare ... --out {data_dir}` first")
    try:
        return load_labels(path)
    except BundleError as e:
        raise UserError(str(e)) from None


def plot_label_frequency(counts_before: Counter, kept: list[str], min_count: int, path: Path) -> None:
    from matplotlib.figure import Figure

    ranked = sorted(counts_before.items(), key=lambda kv: -kv[1])
    keep = set(kept)
    fig = Figure(figsize=(10, 4))
    ax = fig.subplots()
    ax.bar(range(len(ranked)), [n for _, n in ranked], color=["tab:blue" if lab in keep else "tab:gray" for lab, _ in ranked])
    ax.set_yscale("log")
    if min_count > 1:
        ax.axhline(min_count, color="tab:red", linestyle="--", label=f"--min-count {min_count}")
        ax.legend()
    ax.set_xlabel(f"label rank ({len(ranked)} labels; blue: the {len(kept)} kept)")
    ax.set_ylabel("examples (log)")
    ax.set_title("Label frequency before pruning")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def merge_extra(df: pd.DataFrame, extra: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """Corrected rows over the inputs: a paper already there (same id, else same text) takes the
    extra row's labels and keeps its place and date; a new one is added (dated '', so a time split
    trains on it); of several extra rows for one paper, the last wins."""
    extra = extra.drop_duplicates("id", keep="last").drop_duplicates("text", keep="last")
    by_id, by_text = dict(zip(extra["id"], extra["labels"])), dict(zip(extra["text"], extra["labels"]))
    found_id, found_text = df["id"].isin(by_id), df["text"].isin(by_text)
    df = df.assign(labels=[by_id[i] if i in by_id else by_text.get(t, labs)
                           for i, t, labs in zip(df["id"], df["text"], df["labels"])])
    new = extra[~extra["id"].isin(set(df["id"])) & ~extra["text"].isin(set(df["text"]))]
    if "date" in df.columns:
        new = new.assign(date="")
    stats = {"extra_rows": len(extra), "extra_relabeled": int((found_id | found_text).sum()), "extra_added": len(new)}
    return pd.concat([df, new[df.columns]], ignore_index=True), stats


def check_settings(cfg: PrepareConfig) -> None:
    """Counts at least 1 and fractions strictly between 0 and 1, before anything is read."""
    check_count("--min-count", cfg.min_count)
    for flag, value in (("--top-k", cfg.top_k), ("--max-rows", cfg.max_rows)):
        if value is not None:
            check_count(flag, value)
    check_fraction("--valid-frac", cfg.valid_frac)
    check_fraction("--test-frac", cfg.test_frac)
    if not cfg.split_by and cfg.valid_frac + cfg.test_frac >= 1:
        raise UserError(f"--valid-frac {cfg.valid_frac} and --test-frac {cfg.test_frac} leave no training rows; "
                        "their sum must be below 1")


def check_outputs(cfg: PrepareConfig) -> None:
    """`--out` must not be the folder of an input, nor `--labels-json` an input: prepare writes its
    files there, and raw data is never modified."""
    out = Path(cfg.out).resolve()
    labels_json = Path(cfg.labels_json).resolve() if cfg.labels_json else None
    for path in [*cfg.inputs, *(cfg.extra or [])]:
        resolved = Path(path).resolve()
        if resolved.parent == out:
            raise UserError(f"--out {cfg.out} holds the input {path}; prepare writes its files there, so choose "
                            "another folder")
        if resolved == labels_json:
            raise UserError(f"--labels-json {cfg.labels_json} is the input {path}; choose another path")


def prepare(cfg: PrepareConfig) -> dict:
    check_settings(cfg)
    check_outputs(cfg)
    out = Path(cfg.out)
    frames = [to_examples(read_table(p), cfg, str(p)) for p in cfg.inputs]
    df = pd.concat(frames, ignore_index=True)
    if cfg.max_rows is not None and len(df) > cfg.max_rows:
        df = df.sample(cfg.max_rows, random_state=cfg.seed).reset_index(drop=True)
    extra_stats = {}
    if cfg.split_by:  # a row with no date has no side of --test-from: dropped and counted, not put in test
        undated = df["date"] == ""
        extra_stats["undated_dropped"] = int(undated.sum())
        if undated.any():
            log.warning("%d rows dropped: no %s to split by", undated.sum(), cfg.split_by)
        df = df[~undated].reset_index(drop=True)
    if cfg.extra:  # read as `feedback export` writes them: id, text, labels
        plain = PrepareConfig(inputs=[], out=cfg.out)
        extra = pd.concat([to_examples(read_table(p), plain, str(p)) for p in cfg.extra], ignore_index=True)
        df, extra_stats = merge_extra(df, extra)
    df, stats = clean(df, cfg.fold_aliases)
    stats.update(extra_stats)
    no_label = df["labels"].map(len) == 0
    stats["unlabeled_dropped"] = int(no_label.sum())
    df = df[~no_label].reset_index(drop=True)
    if len(df) < len(SPLITS):
        raise UserError(f"{len(df)} labeled row{'s' * (len(df) != 1)} left of {stats['rows_read']} read "
                        f"({stats['unusable_text_dropped']} with an unusable text, {stats['duplicates_dropped']} "
                        f"duplicate ids or texts, {stats['unlabeled_dropped']} without a label); a train / valid / test "
                        f"split needs at least {len(SPLITS)}")
    parts, labels, counts = split(df, cfg)
    vocab = {lab: i for i, lab in enumerate(labels)}
    problem = detect_problem([labs for part in parts.values() for labs in part["labels"]], len(labels), cfg.problem)

    split_counts = {name: Counter(lab for labs in part["labels"] for lab in labs) for name, part in parts.items()}
    report = {
        "config": asdict(cfg),
        "problem": problem,
        "cleaning": stats,
        "labels_before": len(counts),
        "labels_after": len(labels),
        "rows_before_pruning": len(df),
        "rows": {name: len(part) for name, part in parts.items()},
        "rows_dropped_no_label_left": len(df) - sum(len(p) for p in parts.values()),
        "labels_per_row": {name: round(float(part["labels"].map(len).mean()), 3) if len(part) else 0.0
                           for name, part in parts.items()},
        "label_frequency": {lab: {name: split_counts[name][lab] for name in SPLITS} for lab in labels},
    }
    for name, part in parts.items():
        write_jsonl(out / f"{name}.jsonl", part)
    write_json(out / "labels.json", vocab)
    if cfg.labels_json:
        write_json(cfg.labels_json, vocab)
    write_json(out / "report.json", report)
    plot_label_frequency(counts, labels, cfg.min_count, out / "label_frequency.png")
    write_text(out / "report.md", render_report(report))
    log.info("%s; labels %d -> %d; rows train/valid/test = %d/%d/%d; written to %s", problem, len(counts), len(labels),
             len(parts["train"]), len(parts["valid"]), len(parts["test"]), out)
    return report


def render_report(report: dict) -> str:
    lines = [
        "# Data report", "",
        f"- rows read: {report['cleaning']['rows_read']}; unusable text dropped: {report['cleaning']['unusable_text_dropped']}; "
        f"duplicates dropped: {report['cleaning']['duplicates_dropped']}; unlabeled dropped: {report['cleaning']['unlabeled_dropped']}"
        + (f"; undated dropped: {report['cleaning']['undated_dropped']}" if "undated_dropped" in report["cleaning"] else ""),
        f"- problem: {report['problem']}",
        f"- labels: {report['labels_before']} before pruning -> {report['labels_after']} after "
        f"(min-count {report['config']['min_count']}, top-k {report['config']['top_k']})",
        f"- rows left with no label after pruning (dropped): {report['rows_dropped_no_label_left']}",
        "- rows: " + ", ".join(f"{k} {v}" for k, v in report["rows"].items()),
        "- labels per row: " + ", ".join(f"{k} {v}" for k, v in report["labels_per_row"].items()),
        "", "![label frequency](label_frequency.png)", "",
        "| label | train | valid | test |", "|---|---:|---:|---:|",
    ]
    lines += [f"| {lab} | {c['train']} | {c['valid']} | {c['test']} |" for lab, c in report["label_frequency"].items()]
    return "\n".join(lines) + "\n"
