"""`papertasks refit-head`: the last layer refitted on cached features of the fine-tuned encoder."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, assert_clean_error, run_cli


def test_head_features_give_the_models_own_logits(tiny_model, tiny_data):
    """The hooked features times the head's weights are the model's logits: what is refitted is what is served."""
    from papertasks.modeling import load_trained, torch_probs
    from papertasks.data import read_split
    from papertasks.modeling import last_linear
    from papertasks.refit import head_inputs, head_probabilities

    model, tokenizer, labels = load_trained(tiny_model)
    texts = read_split(tiny_data, "valid")["text"].tolist()[:12]
    features = head_inputs(model, tokenizer, texts, 64, "head_tail", batch_size=5)  # sorted into other batches
    layer = last_linear(model, len(labels))
    probs = head_probabilities(layer.weight.detach().numpy(), layer.bias.detach().numpy(), features, False)
    np.testing.assert_allclose(probs, torch_probs(model, tokenizer, texts, 64, "head_tail"), atol=1e-5)


@pytest.mark.parametrize("kind", ["roberta", "distilbert"])
def test_last_linear_is_the_label_layer_of_other_encoders(kind):
    """RoBERTa's head is dense -> out_proj and DistilBERT's pre_classifier -> classifier: the refit takes the last."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from papertasks.modeling import last_linear

    sizes = dict(roberta=dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32),
                 distilbert=dict(dim=16, n_layers=1, n_heads=2, hidden_dim=32))[kind]
    config = AutoConfig.for_model(kind, vocab_size=50, num_labels=16, **sizes)  # as wide as the hidden layer
    model = AutoModelForSequenceClassification.from_config(config)
    expected = model.classifier.out_proj if kind == "roberta" else model.classifier
    assert last_linear(model, 16) is expected


def test_refit_head_cli_writes_a_model_that_exports(tiny_model, tiny_data, tmp_path):
    from export.onnx_export import export_bundle
    from papertasks.modeling import load_trained
    from papertasks.io import read_json
    from papertasks.modeling import last_linear

    out = tmp_path / "refit"
    args = ("refit-head", "--model", tiny_model, "--data", tiny_data, "--max-train", "64", "--out", out,
            "--epochs", "3", "--loss", "focal", "--oversample-to", "40")
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    before, _, labels = load_trained(tiny_model)
    after, _, labels_after = load_trained(out)
    assert labels_after == labels
    old, new = last_linear(before, len(labels)), last_linear(after, len(labels))
    assert not np.allclose(old.weight.detach().numpy(), new.weight.detach().numpy())
    body_before, body_after = before.base_model.state_dict(), after.base_model.state_dict()
    assert all(np.array_equal(body_before[k].numpy(), body_after[k].numpy()) for k in body_before)

    refit = read_json(out / "training_config.json")["head_refit"]
    assert refit["loss"] == "focal" and refit["train_rows"] > 64  # rare labels' rows repeated
    assert set(refit["valid"]) == {"fine-tuned head", "refitted head"}
    assert read_json(out / "training_config.json")["max_length"] == 64  # the windows of the original training

    again = run_cli(*args[:7], "--out", tmp_path / "again", "--epochs", "1")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "train head features: 64 rows from" in again.stderr  # the features are cached with the model
    assert "head features: computing" not in again.stderr

    export_bundle(str(out), str(tmp_path / "bundle"), data_dir=str(tiny_data), parity_texts=8,
                  max_prob_diff=0.5, min_same_set=0.0)
    card = (tmp_path / "bundle" / "MODEL_CARD.md").read_text()
    assert "papertasks refit-head --model MODEL_DIR --data DATA_DIR --out REFIT_DIR --loss focal" in card
    assert "papertasks export --model REFIT_DIR" in card


def test_a_frozen_encoder_is_train_with_no_epochs_then_refit_head(tiny_data, tmp_path):
    """`train --epochs 0 --frozen-epochs 0 --pooling mean` saves the base encoder untouched with a fresh
    head reading mean-pooled tokens, which `refit-head` then fits on those means (the shipped Papers
    with Code recipe); what it fitted is what the torch model scores."""
    from papertasks.data import read_split
    from papertasks.io import read_json
    from papertasks.modeling import last_linear, load_base, load_trained, torch_probs
    from papertasks.paths import offline_base_model
    from papertasks.refit import head_inputs, head_probabilities

    frozen, refit = tmp_path / "frozen", tmp_path / "refit"
    result = run_cli("train", "--data", tiny_data, "--out", frozen, "--epochs", "0", "--frozen-epochs", "0",
                     "--max-length", "64", "--pooling", "mean")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "no epochs: the base encoder saved with a fresh head" in result.stderr
    model, _, labels = load_trained(frozen)
    assert model.config.papertasks_pooling == "mean"
    _, base = load_base(offline_base_model(), labels)
    body, base_body = model.base_model.state_dict(), base.base_model.state_dict()
    assert all(np.array_equal(body[k].numpy(), base_body[k].numpy()) for k in base_body)
    assert read_json(frozen / "training_config.json")["best_valid_loss"] is None

    result = run_cli("refit-head", "--model", frozen, "--data", tiny_data, "--max-train", "64", "--out", refit,
                     "--epochs", "30")
    assert result.returncode == 0, result.stderr[-3000:]
    valid = read_json(refit / "training_config.json")["head_refit"]["valid"]
    assert valid["refitted head"]["roc_auc_macro"] > valid["fine-tuned head"]["roc_auc_macro"]

    model, tokenizer, labels = load_trained(refit)
    texts = read_split(tiny_data, "valid")["text"].tolist()[:8]
    features = head_inputs(model, tokenizer, texts, 64, "head_tail", batch_size=3)
    layer = last_linear(model, len(labels))
    probs = head_probabilities(layer.weight.detach().numpy(), layer.bias.detach().numpy(), features, False)
    np.testing.assert_allclose(probs, torch_probs(model, tokenizer, texts, 64, "head_tail"), atol=1e-5)

    # Fine-tuning from it (`train --base-model REFIT`) starts from the refitted head, not a fresh one; the
    # record names MiniLM at the root and the commands in between, and the pooling must match.
    from export.model_card import training_commands
    from export.onnx_export import training_summary
    from papertasks.evaluate import warm_started_from_refit
    from papertasks.paths import OFFLINE_BASE_NAME, pretrained_base

    result = run_cli("train", "--data", tiny_data, "--out", tmp_path / "cls", "--base-model", refit, "--epochs", "0",
                     "--frozen-epochs", "0", "--max-length", "64")
    assert result.returncode == 2 and not (tmp_path / "cls").exists()
    assert result.stderr.strip().splitlines()[-1].endswith(
        f"'{refit}' was trained with --pooling mean: its label layer reads those features; pass --pooling mean")
    warm = tmp_path / "warm"
    result = run_cli("train", "--data", tiny_data, "--out", warm, "--base-model", refit, "--epochs", "0",
                     "--frozen-epochs", "0", "--max-length", "64", "--pooling", "mean")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"no epochs: {refit} saved unchanged" in result.stderr
    warm_model, _, _ = load_trained(warm)
    np.testing.assert_array_equal(last_linear(warm_model, len(labels)).weight.detach().numpy(),
                                  layer.weight.detach().numpy())
    summary = training_summary(read_json(warm / "training_config.json"))
    assert pretrained_base(summary) == OFFLINE_BASE_NAME and warm_started_from_refit(summary)
    assert training_commands(summary) == [
        "papertasks train --data DATA_DIR --out START_MODEL_DIR --base-model sentence-transformers/all-MiniLM-L6-v2 "
        "--max-length 64 --truncation head_tail --pooling mean --batch-size 32 --lr 0.0001 --frozen-epochs 0 "
        "--epochs 0 --seed 42",
        "papertasks refit-head --model START_MODEL_DIR --data DATA_DIR --out START_REFIT_DIR --loss bce "
        "--pos-weight-clip 0.0 --oversample-to 0 --epochs 30 --lr 0.003 --batch-size 256 --max-train 64 --seed 42",
        "papertasks train --data DATA_DIR --out MODEL_DIR --base-model START_REFIT_DIR --max-length 64 "
        "--truncation head_tail --pooling mean --batch-size 32 --lr 0.0001 --frozen-epochs 0 --epochs 0 --seed 42"]


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_mean_pooling_reads_the_mean_of_the_real_tokens(kind):
    """The label layer gets the token vectors averaged over the mask: padding changes nothing."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from papertasks.modeling import HFSequenceClassifier, last_linear, masked_mean

    config = AutoConfig.for_model(kind, vocab_size=60, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=32, num_labels=5, papertasks_pooling="mean")
    model = AutoModelForSequenceClassification.from_config(config).eval()
    classifier = HFSequenceClassifier(model).eval()
    ids = torch.tensor([[5, 6, 7, 8]])
    padded = torch.tensor([[5, 6, 7, 8, 1, 1], [9, 10, 1, 1, 1, 1]])
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0]])
    with torch.no_grad():
        alone = classifier(ids, torch.ones_like(ids))
        hidden = model.base_model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
        expected = last_linear(model, 5)(masked_mean(hidden, torch.ones_like(ids)))
        torch.testing.assert_close(alone, expected)
        torch.testing.assert_close(classifier(padded, mask)[:1], alone, atol=1e-5, rtol=1e-5)


def test_refit_head_refuses_overwriting_and_other_labels(tiny_model, tiny_data, tmp_path):
    same = run_cli("refit-head", "--model", tiny_model, "--data", tiny_data, "--out", tiny_model)
    assert_clean_error(same, "refit-head", "--out must be a new folder")
    other = tmp_path / "data"
    other.mkdir()
    for name in ("train.jsonl", "valid.jsonl", "test.jsonl", "report.json"):
        (other / name).write_bytes((tiny_data / name).read_bytes())
    (other / "labels.json").write_text('{"cs.XX": 0}')
    mismatch = run_cli("refit-head", "--model", tiny_model, "--data", other, "--out", tmp_path / "out")
    assert_clean_error(mismatch, "refit-head", "other labels")
    assert not (tmp_path / "out").exists()


def test_refit_bench_runs_the_chosen_variants_as_refit_head_does(tiny_model, tiny_data, tmp_path):
    from papertasks.io import read_json

    bench = [sys.executable, str(REPO / "bench" / "refit_head.py"), "--model", str(tiny_model), "--data", str(tiny_data),
             "--oversample-to", "40", "--epochs", "2"]
    out = tmp_path / "bench.json"
    result = subprocess.run([*bench, "--only", "oversampling to 40", "--out", str(out)], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    variants = json.loads(out.read_text())["variants"]
    assert list(variants) == ["fine-tuned head (as trained)", "oversampling to 40, 2 epochs"]

    cli = run_cli("refit-head", "--model", tiny_model, "--data", tiny_data, "--out", tmp_path / "refit",
                  "--oversample-to", "40", "--epochs", "2")
    assert cli.returncode == 0, cli.stderr[-3000:]
    refit = read_json(tmp_path / "refit" / "training_config.json")["head_refit"]
    assert variants["oversampling to 40, 2 epochs"]["valid"] == refit["valid"]["refitted head"]

    none = subprocess.run([*bench, "--only", "no such loss", "--out", str(tmp_path / "none.json")], capture_output=True,
                          text=True, timeout=600)
    assert none.returncode != 0 and "no variant's name contains" in none.stderr and "Traceback" not in none.stderr
    assert not (tmp_path / "none.json").exists()
