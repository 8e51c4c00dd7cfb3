"""Are the explanations faithful, and fast? deployment/explain.py on real test papers.

For each paper and each label the model predicts (its best label when none passes its threshold),
the sentence the explanation ranks first is removed and the text scored again through
Predictor.predict_proba, one text per run (not the explainer's batch); so is the text without a
sentence drawn at random among the others. Faithful: the first removal lowers the label's
probability more. Since occlusion ranks sentences by that very removal, the top-1 comparison mostly
checks that the batched run agrees with the served one; removing the top 3 sentences at once
against 3 random ones is the stricter check (effects of removals do not simply add up). Reported:
the mean difference per paper (averaged over its labels) with a 95% bootstrap interval over papers,
and the time of one explanation (sentences; words on the first papers).

    python bench/explain_faithfulness.py --data data/arxiv --papers 200 --out bench/results/explain_arxiv.json
    python bench/explain_faithfulness.py --input ../shared/data/arxiv_cs.jsonl.gz --papers 200   # the latest papers
"""
from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from deployment.explain import _without, explain  # noqa: E402
from deployment.predictor import Predictor, compose_text  # noqa: E402

TOP = 3
WORD_PAPERS = 20


def read_papers(data: str | None, input: str | None, n: int) -> list[dict]:
    """The first n rows of a prepared folder's test.jsonl, or the n latest papers of a raw file."""
    if data:
        with open(Path(data) / "test.jsonl", encoding="utf-8") as f:
            rows = [json.loads(line) for line, _ in zip(f, range(n))]
        return [{"id": r["id"], "text": r["text"]} for r in rows]
    opener = gzip.open if input.endswith(".gz") else open
    with opener(input, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    rows.sort(key=lambda r: (r.get("listing_date", ""), r.get("id", "")))
    return [{"id": r["id"], "text": compose_text(r.get("title"), r.get("abstract"))} for r in rows[-n:]]


def removed(text: str, spans: list[tuple[int, int]]) -> str:
    """The text without several spans (removed right to left, so the offsets stay valid)."""
    for span in sorted(spans, reverse=True):
        text = _without(text, span)
    return text


def bootstrap(values: np.ndarray, resamples: int, seed: int) -> list[float]:
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (resamples, len(values)))].mean(axis=1)
    return [round(float(q), 4) for q in np.percentile(means, [2.5, 97.5])]


def run(model: str, papers: list[dict], resamples: int = 2000, seed: int = 0, word_papers: int = WORD_PAPERS) -> dict:
    predictor = Predictor(model)
    rng = np.random.default_rng(seed)
    explain(predictor, papers[0]["text"])  # warm-up: the first run of a session is slower
    seconds, word_seconds, rows = [], [], []
    for n, paper in enumerate(papers):
        start = time.perf_counter()
        result = explain(predictor, paper["text"])
        seconds.append(time.perf_counter() - start)
        if n < word_papers:
            start = time.perf_counter()
            explain(predictor, paper["text"], words=True)
            word_seconds.append(time.perf_counter() - start)
        text, spans = result["text"], [(s["start"], s["end"]) for s in result["sentences"]]
        if len(spans) < TOP + 1:
            continue
        full = predictor.predict_proba([text])[0]
        for entry in result["labels"]:
            order = list(np.argsort(-np.array(entry["sentences"])))
            others = rng.permutation(order[1:])
            randoms = rng.permutation(len(spans))[:TOP]
            variants = [removed(text, [spans[order[0]]]), removed(text, [spans[others[0]]]),
                        removed(text, [spans[i] for i in order[:TOP]]), removed(text, [spans[i] for i in randoms])]
            probs = np.array([predictor.predict_proba([v])[0] for v in variants])
            drop = full[predictor.labels.index(entry["label"])] - probs[:, predictor.labels.index(entry["label"])]
            rows.append({"id": paper["id"], "label": entry["label"], "sentences": len(spans),
                         "top_drop": round(float(drop[0]), 5), "random_drop": round(float(drop[1]), 5),
                         f"top{TOP}_drop": round(float(drop[2]), 5), f"random{TOP}_drop": round(float(drop[3]), 5)})

    def paired(top: str, rand: str) -> dict:
        by_paper: dict[str, list[float]] = {}
        for r in rows:
            by_paper.setdefault(str(r["id"]), []).append(r[top] - r[rand])
        diffs = np.array([np.mean(v) for v in by_paper.values()])
        return {"mean_difference": round(float(diffs.mean()), 4), "ci95": bootstrap(diffs, resamples, seed),
                "papers": len(diffs), "top_lowers_more": round(float((diffs > 0).mean()), 3),
                "mean_top_drop": round(float(np.mean([r[top] for r in rows])), 4),
                "mean_random_drop": round(float(np.mean([r[rand] for r in rows])), 4)}

    return {"model": str(model), "papers": len(papers), "labels_explained": len(rows),
            "sentences_per_paper": round(float(np.mean([r["sentences"] for r in rows])), 1) if rows else 0.0,
            "top1_vs_random": paired("top_drop", "random_drop"),
            f"top{TOP}_vs_random{TOP}": paired(f"top{TOP}_drop", f"random{TOP}_drop"),
            "explain_seconds": {"median": round(float(np.median(seconds)), 3),
                                "p90": round(float(np.percentile(seconds, 90)), 3)},
            "explain_words_seconds": {"median": round(float(np.median(word_seconds)), 3) if word_seconds else None,
                                      "papers": len(word_seconds)},
            "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", help="a folder written by `papertasks prepare` (its test.jsonl)")
    source.add_argument("--input", help="a raw JSONL(.gz) of papers: its latest ones by listing_date")
    parser.add_argument("--model", default=str(REPO / "deployment" / "models" / "arxiv"))
    parser.add_argument("--papers", type=int, default=200)
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--word-papers", type=int, default=WORD_PAPERS, help="time word refinement on this many")
    parser.add_argument("--out", help="write the results here (JSON)")
    args = parser.parse_args()
    report = run(args.model, read_papers(args.data, args.input, args.papers), args.resamples, args.seed,
                 args.word_papers)
    summary = {k: v for k, v in report.items() if k != "rows"}
    print(json.dumps(summary, indent=2))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
