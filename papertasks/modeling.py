"""The torch side of "what is trained is what is served", written once for train, refit, export,
the embeddings baseline and the benches.

Texts become token windows exactly as the served predictor builds them (deployment/truncation.py,
with the tokenizer.json the bundle ships); batches are sorted by window length and padded only to
their own longest window; models load from a hub id or a local `save_pretrained` folder with a
one-line error when they cannot. It imports torch: stages import it inside the functions that need
it, so `papertasks --help` and the ONNX-only commands never load torch.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch

from deployment.predictor import DEFAULT_MAX_LENGTH, DEFAULT_TRUNCATION, load_labels, normalize_whitespace
from deployment.truncation import encode_windows, padded_windows
from papertasks.errors import UserError
from papertasks.io import read_json
from papertasks.paths import POOLING_KEY, POOLINGS


def served_tokenizer(tokenizer):
    """The fast tokenizer's own `tokenizers` object: the one saved as tokenizer.json and served."""
    from tokenizers import Tokenizer

    return Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())


def pad_id_of(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def pad_windows(windows: list[list[int]], pad_id: int):
    """Token-id windows -> (input_ids, attention_mask) tensors padded on the right to the longest."""
    return tuple(torch.from_numpy(a) for a in padded_windows(windows, pad_id))


def length_sorted_batches(lengths, batch_size: int) -> list[np.ndarray]:
    """Row indices in batches of similar length (stable), so each batch pads only to its own longest."""
    order = np.argsort(lengths, kind="stable")
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


def text_windows(tokenizer, texts: list[str], max_length: int, truncation: str) -> list[list[int]]:
    """The windows the predictor builds for these texts (whitespace-normalized, fitted to max_length)."""
    return encode_windows(served_tokenizer(tokenizer), [normalize_whitespace(t) for t in texts], max_length,
                          truncation)


def masked_mean(hidden, mask):
    """The sentence-transformers pooling: token vectors averaged over the attention mask."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)


def last_linear(hf_model, n_labels: int):
    """The layer that turns features into one logit per label: the last nn.Linear of that width."""
    heads = [m for m in hf_model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == n_labels]
    if not heads:
        raise UserError(f"the model has no linear layer with {n_labels} outputs (one per label)")
    return heads[-1]


class HFSequenceClassifier(torch.nn.Module):
    """Positional (input_ids, attention_mask) in, plain logits out: how fastai calls a model, what
    `refit-head` and the torch references score with, and what the exported ONNX graph takes and
    returns. Pooling "cls" is the model's own head (BERT's pooler on [CLS], RoBERTa's first token);
    "mean" feeds the mean of the last hidden states straight into the label layer, as sentence
    encoders such as all-MiniLM-L6-v2 were trained to be read (the intermediate head layers go unused)."""

    def __init__(self, hf_model):
        super().__init__()
        self.hf_model = hf_model
        self.pooling = getattr(hf_model.config, POOLING_KEY, "cls")
        if self.pooling not in POOLINGS:
            raise UserError(f"{POOLING_KEY} in the model's config.json must be one of {POOLINGS}, not {self.pooling!r}")
        if self.pooling == "mean":
            self.label_layer = last_linear(hf_model, hf_model.config.num_labels)
            self.dropout = torch.nn.Dropout(getattr(hf_model.config, "hidden_dropout_prob", 0.1))

    def forward(self, input_ids, attention_mask):
        if self.pooling == "cls":
            return self.hf_model(input_ids=input_ids, attention_mask=attention_mask).logits
        hidden = self.hf_model.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.label_layer(self.dropout(masked_mean(hidden, attention_mask)))


NO_NETWORK_HINT = "no network to reach the Hugging Face hub, and not in its local cache: pass a local folder " \
                  "(save_pretrained) or run where the hub is reachable"


def _from_pretrained(name: str, load):
    """`load(name)` for a hub id or a local folder; a missing folder, an unknown id or no network
    becomes one line. The tokenizer must be a fast one: its tokenizer.json is what the bundle serves."""
    if (Path(name).is_absolute() or name.startswith(".")) and not Path(name).exists():
        raise UserError(f"cannot load base model '{name}': no such folder")
    try:
        tokenizer, model = load(name)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "couldn't connect" in first:
            first = NO_NETWORK_HINT
        elif "Unrecognized configuration class" in first:
            first = "not an encoder with a sequence-classification head; pass a BERT- or RoBERTa-style encoder"
        raise UserError(f"cannot load base model '{name}': {first}") from None
    if not getattr(tokenizer, "is_fast", False):
        raise UserError(f"'{name}' has no fast tokenizer (tokenizer.json); the served model needs one")
    return tokenizer, model


def hf_problem_type(problem: str) -> str:
    return "multi_label_classification" if problem == "multi-label" else "single_label_classification"


def load_base(base_model: str, labels: list[str], problem: str = "multi-label", pooling: str = "cls"):
    """Tokenizer + a sequence classifier with a fresh head for the problem and `pooling` (POOLINGS),
    refusing what training and serving cannot use: a model that is not an encoder, a tokenizer with
    no pad token."""
    if pooling not in POOLINGS:
        raise UserError(f"--pooling must be one of {', '.join(POOLINGS)}, not {pooling!r}")
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer, model = _from_pretrained(base_model, lambda name: (
        AutoTokenizer.from_pretrained(name),
        AutoModelForSequenceClassification.from_pretrained(
            name, num_labels=len(labels), problem_type=hf_problem_type(problem),
            id2label=dict(enumerate(labels)), label2id={lab: i for i, lab in enumerate(labels)},
            ignore_mismatched_sizes=True)))
    if not hasattr(model.base_model, "embeddings"):  # what hf_splitter and the served windows assume
        raise UserError(f"cannot load base model '{base_model}': a {model.config.model_type} model, not an encoder; "
                        "pass a BERT- or RoBERTa-style encoder")
    if tokenizer.pad_token_id is None:
        raise UserError(f"'{base_model}': its tokenizer has no pad token, so batches cannot be padded; set "
                        "tokenizer.pad_token and save_pretrained it to a folder")
    recorded = getattr(model.config, POOLING_KEY, None)  # a papertasks model warm-starting this run
    if recorded and recorded != pooling:
        raise UserError(f"'{base_model}' was trained with --pooling {recorded}: its label layer reads those features; "
                        f"pass --pooling {recorded}")
    setattr(model.config, POOLING_KEY, pooling)  # saved with the model: export and refit read it back
    return tokenizer, model


def longest_window(tokenizer, model) -> int:
    """The most tokens the model takes: its position embeddings, less RoBERTa's padding offset (its
    positions start after the pad id), and the tokenizer's own limit where it declares one (models
    with relative positions, such as DeBERTa, have only that)."""
    embeddings = model.base_model.embeddings
    positions = getattr(embeddings, "position_embeddings", None)
    if not isinstance(positions, torch.nn.Embedding):
        return tokenizer.model_max_length
    padding_idx = getattr(embeddings, "padding_idx", None)
    offset = padding_idx + 1 if padding_idx is not None else 0
    return min(positions.num_embeddings - offset, tokenizer.model_max_length)


@functools.lru_cache(maxsize=1)
def load_encoder(base_model: str):
    """Tokenizer and the bare encoder in eval mode (frozen embeddings); loaded once for all the
    splits of a run."""
    from transformers import AutoModel, AutoTokenizer

    return _from_pretrained(base_model, lambda name: (AutoTokenizer.from_pretrained(name),
                                                      AutoModel.from_pretrained(name).eval()))


def load_trained(model_dir: Path):
    """A folder written by `train` or `refit-head`: classifier, tokenizer and labels, refusing folders
    whose labels do not fit the head."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise UserError(f"{model_dir}: not a trained model folder (no config.json); run `papertasks train` first")
    labels_path = model_dir / "labels.json"
    if not labels_path.is_file():
        raise UserError(f"{model_dir}: no labels.json beside the model")
    labels = load_labels(labels_path)
    n_outputs = len(read_json(model_dir / "config.json").get("id2label", {}))
    if n_outputs != len(labels):
        raise UserError(f"{model_dir}: labels.json has {len(labels)} labels but the model has {n_outputs} outputs")
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, attn_implementation="eager").eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return model, tokenizer, labels


def training_record(model_dir: Path) -> dict:
    """training_config.json of a trained folder ({} for a model trained elsewhere)."""
    path = Path(model_dir) / "training_config.json"
    return read_json(path) if path.is_file() else {}


def warm_start_record(base_model: str | None) -> dict | None:
    """The training record of the papertasks model `--base-model` names (a folder `train` or
    `refit-head` wrote: a head fitted on frozen features, then fine-tuned), without its epoch
    history; None for a pretrained model. Export reads the pretrained model at the root from it,
    and the model card the commands in between."""
    parent = training_record(Path(base_model)) if base_model and Path(base_model).is_dir() else {}
    return {k: v for k, v in parent.items() if k not in ("history", "data_report")} or None


def trained_window(training: dict) -> tuple[int, str]:
    """The window a model was trained on; a model trained elsewhere gets the predictor's defaults."""
    return int(training.get("max_length", DEFAULT_MAX_LENGTH)), training.get("truncation", DEFAULT_TRUNCATION)


def torch_scorer(model, tokenizer, max_length: int, truncation: str):
    """A function from texts to the trained model's probabilities on the windows the predictor builds
    (same truncation); the tokenizer is converted once, not per batch."""
    classifier = HFSequenceClassifier(model).eval()  # torch.onnx.export can leave it in training mode
    backend, pad_id = served_tokenizer(tokenizer), pad_id_of(tokenizer)
    single_label = model.config.problem_type == "single_label_classification"

    def score(texts: list[str]) -> np.ndarray:
        with torch.no_grad():
            input_ids, mask = pad_windows(encode_windows(backend, texts, max_length, truncation), pad_id)
            logits = classifier(input_ids, mask)
            return (torch.softmax(logits, -1) if single_label else torch.sigmoid(logits)).numpy()
    return score


def torch_probs(model, tokenizer, texts: list[str], max_length: int, truncation: str,
                batch_size: int = 16) -> np.ndarray:
    score = torch_scorer(model, tokenizer, max_length, truncation)
    return np.concatenate([score(texts[i:i + batch_size]) for i in range(0, len(texts), batch_size)])
