"""`papertasks compare`: the reports of `evaluate` and `baseline` in one table, with the first
report's lead over each of the others.

Every report must come from the same split (same labels, same validation and test rows), else the
numbers are not comparable and the command stops. Multi-label reports give two rows each: tuned
per-label thresholds (what is served by default) and the one global threshold; single-label reports
one row (the top class).
"""
from __future__ import annotations

from pathlib import Path

from papertasks.errors import UserError
from papertasks.evaluate import HEADLINE_HEADER, SINGLE_LABEL_HEADER, headline_row, is_single_label
from papertasks.io import read_json, write_json, write_text

# The metrics the lead is given on: what a user of each kind of model looks at first.
LEAD_METRICS = {"multi-label": ("f1_micro", "f1_macro", "precision_at_1"),
                "single-label": ("accuracy", "f1_macro", "f1_weighted")}
SETTINGS = {"test": "per-label thresholds", "test_global_threshold": "global threshold"}


def read_report(folder) -> dict:
    path = Path(folder) / "metrics.json"
    if not path.is_file():
        raise UserError(f"{folder}: no metrics.json; run `papertasks evaluate` or `papertasks baseline` with --out there")
    report = read_json(path)
    if "test" not in report:
        raise UserError(f"{path} holds no test metrics (a --folds run?); compare the split reports")
    return report


def check_same_split(reports: list[dict], folders: list[str]) -> None:
    first = reports[0]
    keys = ("problem", "labels", "valid_rows", "test_rows")
    for report, folder in zip(reports[1:], folders[1:]):
        differ = [k for k in keys if report.get(k, "multi-label" if k == "problem" else None) !=
                  first.get(k, "multi-label" if k == "problem" else None)]
        if differ:
            raise UserError(f"{folder} was measured on other data than {folders[0]} ("
                            + ", ".join(f"{k} {report.get(k)} vs {first.get(k)}" for k in differ) + ")")


def compare_reports(folders: list[str], out=None) -> tuple[dict, str]:
    """Rows of every report, and the lead of the first over each other one, per threshold setting;
    and the same as a markdown table."""
    if len(folders) < 2:
        raise UserError("give at least two report folders: the model, then what it is compared with")
    reports = [read_report(f) for f in folders]
    check_same_split(reports, folders)
    names = [r["model"] for r in reports]
    for report, folder in zip(reports, folders):  # two bundles of one kind: tell them apart by their folder
        if names.count(report["model"]) > 1:
            report["model"] = f"{report['model']} ({Path(folder).name})"
    single = is_single_label(reports[0])
    kind = "single-label" if single else "multi-label"
    settings = ["test"] if single else list(SETTINGS)
    leads = []
    for other in reports[1:]:
        for setting in settings:
            leads.append({"model": reports[0]["model"], "against": other["model"],
                          "setting": "top class" if single else SETTINGS[setting],
                          **{m: _lead(reports[0][setting][m], other[setting][m]) for m in LEAD_METRICS[kind]}})
    result = {"problem": reports[0].get("problem", "multi-label"), "test_rows": reports[0]["test_rows"],
              "reports": {str(f): r["model"] for f, r in zip(folders, reports)},
              "rows": [{"model": r["model"], "setting": "top class" if single else SETTINGS[s],
                        **_scalars(r[s])} for r in reports for s in settings],
              "lead": leads}
    text = render_comparison(reports, settings, result)
    if out is not None:
        write_json(Path(out) / "compare.json", result)
        write_text(Path(out) / "compare.md", text)
    return result, text


def _lead(mine, theirs):
    return None if mine is None or theirs is None else mine - theirs


def _scalars(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) or v is None}


def render_comparison(reports: list[dict], settings: list[str], result: dict) -> str:
    single = is_single_label(reports[0])
    header = SINGLE_LABEL_HEADER if single else HEADLINE_HEADER
    header = header.replace("| model |", "| model | thresholds |", 1).replace("|---|", "|---|---|", 1)
    lines = [f"# {reports[0]['model']} against {len(reports) - 1} other model(s)", "",
             f"Test split: {result['test_rows']} papers, {reports[0]['labels']} labels. "
             + ("The top class is predicted." if single else
                "Thresholds are tuned on validation, per label (labels with too few positives use the global "
                "one) or one global threshold for all labels."), "", header]
    for report in reports:
        for setting in settings:
            row = headline_row({**report, "test": report[setting]})
            cell = "top class" if single else SETTINGS[setting]
            lines.append(row.replace(" |", f" | {cell} |", 1))
    metrics = LEAD_METRICS["single-label" if single else "multi-label"]
    lines += ["", f"Lead of {reports[0]['model']} (points):", "",
              "| against | thresholds | " + " | ".join(metrics) + " |", "|---|---|" + "---:|" * len(metrics)]
    for lead in result["lead"]:
        cells = " | ".join("n/a" if lead[m] is None else f"{100 * lead[m]:+.1f}" for m in metrics)
        lines.append(f"| {lead['against']} | {lead['setting']} | {cells} |")
    return "\n".join(lines) + "\n"
