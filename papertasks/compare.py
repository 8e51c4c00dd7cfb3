"""`papertasks compare`: the reports of `evaluate` and `baseline` in one table, with the first
report's lead over each of the others.

Every report must come from the same split (same labels, same validation and test rows), else the
numbers are not comparable and the command stops. Multi-label reports give two rows each: the tuned
policy (what is served by default: per-label thresholds, and a relative cut where validation chose one)
and the one global threshold; single-label reports one row (the top class).

Each lead comes with a 95% interval from a paired bootstrap of the test papers (papertasks.bootstrap),
where both reports kept their test scores: a lead whose interval holds 0 is within test-sampling noise.
"""
from __future__ import annotations

from pathlib import Path

from papertasks.bootstrap import full_sample_metrics, paired_bootstrap
from papertasks.errors import UserError
from papertasks.evaluate import HEADLINE_HEADER, SINGLE_LABEL_HEADER, headline_row, is_single_label
from papertasks.io import read_json, write_json, write_text
from papertasks.test_scores import read_test_scores

# The metrics the lead is given on: what a user of each kind of model looks at first.
LEAD_METRICS = {"multi-label": ("f1_micro", "f1_macro", "precision_at_1"),
                "single-label": ("accuracy", "f1_macro", "f1_weighted")}
SETTINGS = {"test": "tuned (default)", "test_global_threshold": "global threshold"}


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


def check_scores_match(report: dict, scores: dict, settings: list[str], metrics: tuple[str, ...],
                       folder) -> None:
    """The kept test scores must reproduce the report's numbers (not left over from another run)."""
    for setting in settings:
        recomputed = full_sample_metrics(report, scores, setting)
        if any(abs(recomputed[m] - report[setting][m]) > 1e-5 for m in metrics):
            raise UserError(f"{folder}: test_scores.npz does not match metrics.json (from another run?); "
                            "rerun the command that wrote the report")


def compare_reports(folders: list[str], out=None, resamples: int = 1000, seed: int = 0) -> tuple[dict, str]:
    """Rows of every report, and the lead of the first over each other one, per threshold setting,
    with bootstrap intervals (`resamples` 0: none); and the same as a markdown table."""
    if len(folders) < 2:
        raise UserError("give at least two report folders: the model, then what it is compared with")
    if resamples < 0:
        raise UserError(f"--bootstrap {resamples}: give a number of resamples, or 0 for no intervals")
    reports = [read_report(f) for f in folders]
    check_same_split(reports, folders)
    names = [r["model"] for r in reports]
    for report, folder in zip(reports, folders):  # two bundles of one kind: tell them apart by their folder
        if names.count(report["model"]) > 1:
            report["model"] = f"{report['model']} ({Path(folder).name})"
    single = is_single_label(reports[0])
    kind = "single-label" if single else "multi-label"
    settings = ["test"] if single else list(SETTINGS)
    metrics = LEAD_METRICS[kind]
    scores = [read_test_scores(f) if resamples else None for f in folders]
    for report, kept, folder in zip(reports, scores, folders):
        if kept is not None:
            check_scores_match(report, kept, settings, metrics, folder)
    leads = []
    for other, other_scores in zip(reports[1:], scores[1:]):
        for setting in settings:
            lead = {"model": reports[0]["model"], "against": other["model"],
                    "setting": "top class" if single else SETTINGS[setting],
                    **{m: _lead(reports[0][setting][m], other[setting][m]) for m in metrics}}
            if scores[0] is not None and other_scores is not None:
                lead["interval_95"] = paired_bootstrap((reports[0], scores[0]), (other, other_scores), setting,
                                                       metrics, resamples, seed)
            leads.append(lead)
    result = {"problem": reports[0].get("problem", "multi-label"), "test_rows": reports[0]["test_rows"],
              "bootstrap": {"resamples": resamples, "seed": seed,
                            "without_scores": [str(f) for f, kept in zip(folders, scores) if kept is None]},
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
                "Thresholds are tuned on validation: each report's tuned policy (per-label thresholds, with a "
                "relative cut where validation chose one) or one global threshold for all labels."), "", header]
    for report in reports:
        for setting in settings:
            row = headline_row({**report, "test": report[setting]})
            cell = "top class" if single else SETTINGS[setting]
            lines.append(row.replace(" |", f" | {cell} |", 1))
    metrics = LEAD_METRICS["single-label" if single else "multi-label"]
    lines += ["", f"Lead of {reports[0]['model']} (points):", "",
              "| against | thresholds | " + " | ".join(metrics) + " |", "|---|---|" + "---:|" * len(metrics)]
    for lead in result["lead"]:
        cells = " | ".join(_lead_cell(lead, m) for m in metrics)
        lines.append(f"| {lead['against']} | {lead['setting']} | {cells} |")
    boot = result["bootstrap"]
    if any("interval_95" in lead for lead in result["lead"]):
        lines += ["", f"In brackets: the 95% interval of the lead over {boot['resamples']} paired bootstrap resamples "
                      "of the test papers (thresholds as tuned on validation). An interval that holds 0 is "
                      "within test-sampling noise."]
    if boot["resamples"] and boot["without_scores"]:
        lines += ["", "No interval against a report without test_scores.npz (written before evaluate and baseline "
                      "kept their test scores; rerun its command): " + ", ".join(boot["without_scores"]) + "."]
    return "\n".join(lines) + "\n"


def _lead_cell(lead: dict, metric: str) -> str:
    if lead[metric] is None:
        return "n/a"
    cell = f"{100 * lead[metric]:+.1f}"
    interval = lead.get("interval_95", {}).get(metric)
    return cell if interval is None else f"{cell} ({100 * interval['low']:+.1f} .. {100 * interval['high']:+.1f})"
