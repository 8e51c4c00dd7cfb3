"""The one predictor: tokenize -> onnxruntime -> sigmoid -> thresholds.

The Gradio app, `papertasks predict` and `papertasks evaluate` all call this class, so what is
measured is what is served. It needs only numpy, tokenizers and onnxruntime (no torch), so this
folder can be pushed as a Hugging Face Space as it is.

A bundle folder holds: model.onnx (int8), tokenizer.json, labels.json (label -> index),
thresholds.json (optional: {"global": t, "per_label": {label: t}, "relative_to_top": r}) and config.json
(max_length, truncation, problem_type and what the model was trained on). A multi-label bundle
scores each label with a sigmoid; a single-label one (multi-class or binary) with a softmax.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

try:  # imported as part of the papertasks package, or as a sibling module in the Space
    from .bag import BagOfNgrams, text_ids
    from .truncation import encode_windows
except ImportError:
    from bag import BagOfNgrams, text_ids
    from truncation import encode_windows

_WHITESPACE = re.compile(r"\s+")
# How a multi-label bundle decides: "tuned" (its per-label thresholds and relative cut, as evaluate
# chose them on validation) or "global" (its one tuned threshold for every label).
POLICIES = ("tuned", "global")


# For a bundle (or a trained folder) that does not record its window; bundles from before head_tail cut the head.
DEFAULT_MAX_LENGTH = 256
DEFAULT_TRUNCATION = "head"
LABEL_NAMES_FILE = "label_names.json"  # optional: label -> the name people read (export/taxonomy.py writes it)
# "1": use bundles without manifest.json (their files unchecked); set by --allow-unsigned, or in a Space's settings
ALLOW_UNSIGNED_ENV = "PAPERTASKS_ALLOW_UNSIGNED"


class BundleError(ValueError):
    """The model folder is missing files or is inconsistent (labels vs model outputs)."""


def normalize_whitespace(text: str) -> str:
    return _WHITESPACE.sub(" ", text or "").strip()


def compose_text(title: str | None, abstract: str | None) -> str:
    """Title and abstract as the model saw them in training: 'Title. Abstract'."""
    title, abstract = normalize_whitespace(title or ""), normalize_whitespace(abstract or "")
    if title and abstract:
        sep = " " if title[-1] in ".?!" else ". "
        return f"{title}{sep}{abstract}"
    return title or abstract


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"{path.parent}: missing {path.name}; is this a model bundle written by `papertasks export`?")
    except json.JSONDecodeError as e:
        raise BundleError(f"{path}: not valid JSON ({e})")


def load_labels(path: Path) -> list[str]:
    """labels.json maps label -> output index; return the labels in output order."""
    mapping = _read_json(path)
    labels = sorted(mapping, key=mapping.get)
    if [mapping[k] for k in labels] != list(range(len(labels))):
        raise BundleError(f"{path}: label indices must be 0..{len(labels) - 1} with no gaps")
    return labels


def tuned_decisions(probs: np.ndarray, cut: np.ndarray, relative_to_top: float = 0.0) -> np.ndarray:
    """Labels at or above their threshold and, with `relative_to_top` r > 0, scored at least r times
    the paper's best score: low per-label thresholds of rare labels then add labels to papers with
    no confident one instead of to every paper (evaluate measures this rule, as it is served)."""
    chosen = probs >= cut
    if relative_to_top > 0:
        chosen &= probs >= relative_to_top * probs.max(axis=1, keepdims=True)
    return chosen


def onnx_feed(input_names, input_ids: np.ndarray, attention_mask: np.ndarray) -> dict:
    """The inputs of an exported graph, those of `input_names` it takes (RoBERTa has no segments):
    token_type_ids all 0, as each input is one text."""
    feed = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": np.zeros_like(input_ids)}
    return {k: v for k, v in feed.items() if k in input_names}


class Predictor:
    """Scores texts with an ONNX sequence classifier and applies the bundle's thresholds."""

    def __init__(self, model_dir: str | os.PathLike, model_file: str = "model.onnx",
                 threads: int | None = None, allow_unsigned: bool | None = None):
        """`allow_unsigned`: accept a folder without manifest.json (None: as $PAPERTASKS_ALLOW_UNSIGNED says);
        else it is refused, since a deleted manifest would turn the integrity check off unseen."""
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.model_dir = Path(model_dir)
        if not self.model_dir.is_dir():
            raise BundleError(f"{self.model_dir}: no such model folder")
        self.labels = load_labels(self.model_dir / "labels.json")
        self.config = _read_json(self.model_dir / "config.json")
        self.max_length = int(self.config.get("max_length", DEFAULT_MAX_LENGTH))
        self.truncation = self.config.get("truncation", DEFAULT_TRUNCATION)
        self.single_label = self.config.get("problem_type") == "single_label_classification"
        model_path = self.model_dir / model_file
        if not model_path.is_file():
            raise BundleError(f"{self.model_dir}: missing {model_file}")
        tokenizer_path = self.model_dir / "tokenizer.json"
        if not tokenizer_path.is_file():
            raise BundleError(f"{self.model_dir}: missing tokenizer.json")

        self.tokenizer = Tokenizer.from_file(str(tokenizer_path))
        self.pad_id = self.tokenizer.token_to_id(self.config.get("pad_token", "[PAD]")) or 0

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types for corrupt files
            raise BundleError(f"{model_path}: onnxruntime cannot load it ({e})") from None
        self.input_names = [i.name for i in self.session.get_inputs()]
        n_outputs = self.session.get_outputs()[0].shape[-1]
        if isinstance(n_outputs, int) and n_outputs != len(self.labels):
            raise BundleError(f"{self.model_dir}: labels.json has {len(self.labels)} labels "
                              f"but the model has {n_outputs} outputs")

        names = _read_json(self.model_dir / LABEL_NAMES_FILE) if (self.model_dir / LABEL_NAMES_FILE).is_file() else {}
        if not isinstance(names, dict):
            raise BundleError(f"{self.model_dir / LABEL_NAMES_FILE}: expected an object of label -> name")
        self.label_names = {k: str(v) for k, v in names.items() if k in self.labels}

        thresholds = self.model_dir / "thresholds.json"
        self.thresholds_info = _read_json(thresholds) if thresholds.is_file() else {"global": 0.5, "per_label": {}}
        self.global_threshold = float(self.thresholds_info.get("global", 0.5))
        per_label = self.thresholds_info.get("per_label", {})
        self.thresholds = np.array([per_label.get(lab, self.global_threshold) for lab in self.labels], dtype=np.float32)
        self.relative_to_top = float(self.thresholds_info.get("relative_to_top", 0.0))

        self.bag, self.encoder_weight = None, 1.0
        hybrid = self.config.get("hybrid")
        if hybrid:  # encoder + bag of n-grams (deployment/bag.py)
            bag_path = self.model_dir / hybrid["file"]
            if not bag_path.is_file():
                raise BundleError(f"{self.model_dir}: config.json names a hybrid, but {hybrid['file']} is missing")
            self.bag = BagOfNgrams.load(bag_path, self.tokenizer.get_vocab_size())
            self.encoder_weight = float(hybrid["encoder_weight"])

        # Checksums last, so a structural problem (labels vs outputs) keeps its own, more specific message.
        try:  # imported as part of the papertasks package, or as a sibling module in the Space
            from .manifest import MANIFEST, ManifestError, verify_bundle
        except ImportError:
            from manifest import MANIFEST, ManifestError, verify_bundle
        try:
            self.integrity = verify_bundle(self.model_dir)
        except ManifestError as e:
            raise BundleError(str(e)) from None
        if allow_unsigned is None:
            allow_unsigned = os.environ.get(ALLOW_UNSIGNED_ENV) == "1"
        if self.integrity.startswith("unchecked") and not allow_unsigned:
            raise BundleError(f"{self.model_dir}: no {MANIFEST}, so its files cannot be checked; export it with "
                              f"`papertasks export`, or pass --allow-unsigned ({ALLOW_UNSIGNED_ENV}=1) to use it "
                              "unchecked")

    def _logits(self, texts: list[str]) -> np.ndarray:
        return self.logits_of_windows(encode_windows(self.tokenizer, texts, self.max_length, self.truncation))

    def logits_of_windows(self, windows: list[list[int]]) -> np.ndarray:
        """Raw model outputs for token-id windows already fitted to max_length (one row each).

        Each window runs alone, unpadded: dynamic int8 quantizes a layer's activations with the range
        of the whole tensor it is in, so a text batched with others would get other scores (up to 0.03
        in probability on the arXiv bundle). Alone, a paper's answer is the same whatever it is sent
        with; batched int8 was 16% faster at batch 32 on a 2-core CPU (bench/inference.py)."""
        return np.concatenate([self._run_window(ids) for ids in windows]) if windows else \
            np.zeros((0, len(self.labels)), dtype=np.float32)

    def _run_window(self, ids: list[int]) -> np.ndarray:
        input_ids = np.asarray([ids], dtype=np.int64)
        return self.run(input_ids, np.ones_like(input_ids))

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """The ONNX model's logits for these token ids, fed the inputs its architecture takes."""
        return self.session.run(None, onnx_feed(self.input_names, input_ids, attention_mask))[0]

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        if self.single_label:
            shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
            return shifted / shifted.sum(axis=1, keepdims=True)
        return 1.0 / (1.0 + np.exp(-logits))

    def predict_proba(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        """Sigmoid (multi-label) or softmax (single-label) probabilities, shape (len(texts), n_labels), in
        input order. The encoder runs each text alone (`logits_of_windows`); `batch_size` texts are
        tokenized and scored by a hybrid's bag at a time."""
        texts = [normalize_whitespace(t) for t in texts]
        probs = np.empty((len(texts), len(self.labels)), dtype=np.float32)
        for start in range(0, len(texts), batch_size):
            rows = slice(start, start + batch_size)
            batch = texts[rows]
            if self.bag is not None and self.encoder_weight == 0:  # validation gave the encoder no say: skip it
                probs[rows] = self.bag_probabilities(batch)
            else:
                probs[rows] = self.served_probabilities(self.probabilities(self._logits(batch)), batch)
        return probs

    def served_probabilities(self, encoder_probs: np.ndarray, texts: list[str]) -> np.ndarray:
        """What is served from the encoder's probabilities of (normalized) `texts`: averaged with the
        bag's for a hybrid bundle, as they are for a plain one."""
        if self.bag is None:
            return encoder_probs
        return self.encoder_weight * encoder_probs + (1 - self.encoder_weight) * self.bag_probabilities(texts)

    def encoder_only(self) -> "Predictor":
        """This hybrid bundle scoring with its encoder alone (`evaluate --encoder-only`, the cost bench):
        the same ONNX model, the bag of n-grams left out."""
        if self.bag is None:
            raise BundleError(f"{self.model_dir} is not a hybrid bundle: it has no bag of n-grams to leave out")
        self.bag, self.encoder_weight = None, 1.0
        return self

    def bag_probabilities(self, texts: list[str]) -> np.ndarray:
        """The bag-of-n-grams half of a hybrid bundle alone, on whole (normalized) texts."""
        return self.bag.probabilities(text_ids(self.tokenizer, texts))

    def title(self, label: str) -> str:
        """A label as people read it: 'cs.IT — Information Theory' when the bundle names it."""
        return f"{label} — {self.label_names[label]}" if label in self.label_names else label

    def decide(self, probs: np.ndarray, threshold: float | None = None, policy: str = "tuned") -> np.ndarray:
        """Boolean label matrix under `policy` (POLICIES), or one `threshold` for every label if given.
        A single-label bundle picks its top label (unless `threshold` asks for a minimum score)."""
        if policy not in POLICIES:
            raise ValueError(f"policy {policy!r}: use one of {', '.join(POLICIES)}")
        if self.single_label:
            top = probs == probs.max(axis=1, keepdims=True)
            return top if threshold is None else top & (probs >= threshold)
        if threshold is not None:
            return probs >= threshold
        if policy == "global":
            return probs >= self.global_threshold
        return tuned_decisions(probs, self.thresholds, self.relative_to_top)

    def predict(self, texts: list[str], threshold: float | None = None, top_k: int | None = None,
                batch_size: int = 32, policy: str = "tuned") -> list[dict]:
        """For each text: {'labels': [...above threshold, best first], 'scores': {label: p}}."""
        probs = self.predict_proba(texts, batch_size=batch_size)
        chosen = self.decide(probs, threshold, policy)
        results = []
        for row, keep in zip(probs, chosen):
            order = np.argsort(-row)
            ranked = order[:top_k] if top_k else order
            results.append({
                "labels": [self.labels[i] for i in order if keep[i]],
                "scores": {self.labels[i]: round(float(row[i]), 4) for i in ranked},
            })
        return results
