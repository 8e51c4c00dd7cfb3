"""Why a label: sentence occlusion through the served predictor (onnxruntime, tokenizers, numpy only).

The text is scored again with each sentence left out, every variant through the
same Predictor (same windows, same hybrid bag when the bundle has one), so an explanation describes
the int8 model that is served, not a stand-in. A sentence's contribution to a label is the label's
probability with the whole text minus its probability without that sentence: positive, the sentence
raised it; negative, it lowered it. Optionally the words of the top sentences are occluded the same
way. bench/explain_faithfulness.py checks that the ranking is faithful.
"""
from __future__ import annotations

import re

import numpy as np

try:  # imported as part of the papertasks package, or as a sibling module in the Space
    from .inputs import InputError
    from .predictor import normalize_whitespace
    from .truncation import encode_windows
except ImportError:
    from inputs import InputError
    from predictor import normalize_whitespace
    from truncation import encode_windows

MAX_UNITS = 40  # occluded units per text: more sentences than this are grouped, so the cost stays bounded
WORD_SENTENCES = 2  # sentences refined to words, by their largest effect on the explained labels
MAX_WORDS = 60  # words occluded in those sentences at most
DIGITS = 4

_BOUNDARY = re.compile(r"[.!?]+[\"')\]]*\s+(?=[A-Z0-9\"'(\[])")
_ABBREVIATIONS = frozenset("e.g. i.e. et al. etc. vs. cf. fig. figs. eq. eqs. sec. no. resp. approx. ref. refs. "
                           "dr. mr. ms. prof. st.".split())
_WORD = re.compile(r"\S+")


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each sentence of a whitespace-normalized text; a full stop after a common
    abbreviation (e.g., i.e., et al.) does not end a sentence, nor one before a lowercase word."""
    spans, start = [], 0
    for m in _BOUNDARY.finditer(text):
        words = text[start:m.end()].split()
        if words and words[-1].lower().lstrip("([\"'") in _ABBREVIATIONS:
            continue
        end = m.end() - (len(m.group()) - len(m.group().rstrip()))
        spans.append((start, end))
        start = m.end()
    if start < len(text):
        spans.append((start, len(text)))
    return spans


def _grouped(spans: list[tuple[int, int]], most: int) -> list[tuple[int, int]]:
    """Consecutive spans merged so that at most `most` remain (a very long text stays affordable)."""
    if len(spans) <= most:
        return spans
    size = -(-len(spans) // most)
    return [(spans[i][0], spans[min(i + size, len(spans)) - 1][1]) for i in range(0, len(spans), size)]


def _without(text: str, span: tuple[int, int]) -> str:
    return normalize_whitespace(text[:span[0]] + " " + text[span[1]:])


def _occlude(predictor, text: str, spans: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities of the whole text (L,) and of the text without each span (S, L), exactly as
    Predictor.predict_proba serves them (each window runs alone). A span outside the model's window
    (the middle of a long abstract under head_tail) leaves the window as it was: each distinct window
    is run once, and the bag of a hybrid still sees the difference."""
    variants = [text] + [_without(text, span) for span in spans]
    if predictor.bag is not None and predictor.encoder_weight == 0:  # as predict_proba: the encoder has no say
        probs = predictor.bag_probabilities(variants)
        return probs[0], probs[1:]
    windows = encode_windows(predictor.tokenizer, variants, predictor.max_length, predictor.truncation)
    distinct = {}
    rows = [distinct.setdefault(tuple(w), len(distinct)) for w in windows]
    encoder = predictor.probabilities(predictor.logits_of_windows([list(w) for w in distinct]))[rows]
    probs = predictor.served_probabilities(encoder, variants)
    return probs[0], probs[1:]


def label_index(predictor, labels) -> list[int]:
    """Output indices of the labels asked for; InputError naming an unknown one."""
    known = {lab: i for i, lab in enumerate(predictor.labels)}
    if isinstance(labels, str) or not all(isinstance(lab, str) for lab in labels):
        raise InputError("explain_labels: send a list of label names (GET /labels lists them)")
    unknown = [lab for lab in labels if lab not in known]
    if unknown:
        raise InputError(f"explain_labels: unknown label {unknown[0][:64]!r}; GET /labels lists the "
                         f"{len(known)} labels of this model")
    return [known[lab] for lab in labels]


def explain(predictor, text: str, labels: list[str] | None = None, threshold: float | None = None,
            words: bool = False, policy: str = "tuned") -> dict:
    """How much each sentence (and, with `words`, each word of the top sentences) raised or lowered
    the probability of each predicted label and of each label in `labels`.

    Returns {"sentences": [{"start", "end", "text"}], "labels": [{"label", "probability", "predicted",
    "sentences": [contribution per sentence], "words": [contribution per word]}], "words": [{"start",
    "end", "text", "sentence"}] (with `words`)}. Offsets index the whitespace-normalized text, also
    returned as "text". With nothing predicted, the best-scoring label is explained."""
    asked = label_index(predictor, labels or [])
    text = normalize_whitespace(text)
    spans = _grouped(sentence_spans(text), MAX_UNITS)
    full, without = _occlude(predictor, text, spans)
    chosen = predictor.decide(full[None, :], threshold, policy)[0]
    wanted = [int(i) for i in np.argsort(-full) if chosen[i]] or [int(np.argmax(full))]
    wanted += [i for i in asked if i not in wanted]
    effect = full[None, wanted] - without[:, wanted]  # (S, explained labels)
    result = {"text": text, "sentences": [{"start": s, "end": e, "text": text[s:e]} for s, e in spans]}
    explained = [{"label": predictor.labels[i], "probability": round(float(full[i]), DIGITS),
                  "predicted": bool(chosen[i]), "sentences": [round(float(d), DIGITS) for d in effect[:, k]]}
                 for k, i in enumerate(wanted)]
    if words:
        top = np.argsort(-np.abs(effect).max(axis=1))[:WORD_SENTENCES]
        word_spans = [(m.start() + spans[s][0], m.end() + spans[s][0], int(s))
                      for s in sorted(int(t) for t in top)
                      for m in _WORD.finditer(text[spans[s][0]:spans[s][1]])][:MAX_WORDS]
        _, without_word = _occlude(predictor, text, [(s, e) for s, e, _ in word_spans])
        word_effect = full[None, wanted] - without_word[:, wanted]
        result["words"] = [{"start": s, "end": e, "text": text[s:e], "sentence": k} for s, e, k in word_spans]
        for k, entry in enumerate(explained):
            entry["words"] = [round(float(d), DIGITS) for d in word_effect[:, k]]
    result["labels"] = explained
    return result


def add_explanations(predictor, rows: list[dict], results: list[dict], threshold: float | None = None,
                     progress=None, policy: str = "tuned") -> list[dict]:
    """Each scored result of deployment.inputs.predict_rows (for its read_row `rows`) gets the
    `explanation` the API's `explain: true` answers; progress(done, total) after each row."""
    for done, (row, result) in enumerate(zip(rows, results), 1):
        if "error" not in result:
            result["explanation"] = explain(predictor, row["text"], threshold=threshold, policy=policy)
        if progress:
            progress(done, len(results))
    return results


def highlights(explanation: dict, label: str) -> list[tuple[str, float | None]]:
    """One label's explanation as (text, score in [-1, 1]) pieces for a highlighted-text view: each
    sentence scaled by the largest contribution, the gaps between sentences unscored."""
    entry = next((e for e in explanation["labels"] if e["label"] == label), None)
    if entry is None:
        return []
    text, spans = explanation["text"], explanation["sentences"]
    scale = max((abs(d) for d in entry["sentences"]), default=0.0) or 1.0
    pieces, at = [], 0
    for span, delta in zip(spans, entry["sentences"]):
        if span["start"] > at:
            pieces.append((text[at:span["start"]], None))
        pieces.append((span["text"], round(delta / scale, 3)))
        at = span["end"]
    return pieces
