"""Any Hugging Face encoder through the whole chain, as users fine-tune them: tiny random RoBERTa and
BERT models built here (bench/gpu_smoke.py's builder: a tokenizer trained on real abstracts, 2 small
layers, save_pretrained) go through train -> refit-head -> export -> evaluate -> predict, the app's
registry and the REST API. Also: bf16 mixed precision on a CPU, lr-find, --patience, and the one-line
errors for base models and settings training cannot use, none of which leaves a run folder behind.
"""
from __future__ import annotations

import gzip
import importlib.util
import inspect
import itertools
import json
import os
import re
import shutil

import numpy as np
import pytest

from conftest import REPO, assert_clean_error, run_cli, write_jsonl
from deployment.predictor import Predictor
from papertasks.errors import UserError

FAMILIES = ("roberta", "bert")
SPECIALS = {"roberta": ("<s>", "</s>"), "bert": ("[CLS]", "[SEP]")}
TINY = dict(max_length=64, batch_size=16, lr=1e-3, frozen_epochs=0, epochs=1, max_train=48, max_valid=16)
PRECISION = {"roberta": "bf16", "bert": "fp32"}  # the RoBERTa chain also shows a bf16 checkpoint exports on a CPU


def load_smoke():
    spec = importlib.util.spec_from_file_location("gpu_smoke", REPO / "bench" / "gpu_smoke.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def tiny_encoders(arxiv_file, tmp_path_factory) -> dict:
    """{family: folder} of the tiny random encoders, built once for the session."""
    with gzip.open(arxiv_file, "rt", encoding="utf-8") as f:
        texts = [f"{r['title']}. {r['abstract']}" for r in map(json.loads, itertools.islice(f, 300))]
    root = tmp_path_factory.mktemp("encoders")
    return {family: load_smoke().build_tiny_encoder(family, texts, root / family) for family in FAMILIES}


@pytest.fixture(scope="session")
def chains(tiny_encoders, tiny_data, tmp_path_factory) -> dict:
    """{family: {stage: folder}}: each family trained, head refitted, exported, evaluated (library calls,
    as the CLI makes them)."""
    from export.bundle import record_evaluation
    from export.onnx_export import export_bundle
    from papertasks.evaluate import bundle_metrics, evaluate_bundle
    from papertasks.refit import RefitConfig, refit_head
    from papertasks.train import TrainConfig, train

    found = {}
    for family, base in tiny_encoders.items():
        work = tmp_path_factory.mktemp(family)
        model = train(TrainConfig(data=str(tiny_data), out=str(work / "model"), base_model=str(base),
                                  precision=PRECISION[family], **TINY))
        refit = work / "refit"
        refit_head(RefitConfig(model=str(model), data=str(tiny_data), out=str(refit), epochs=3, max_train=48))
        bundle = work / "models" / family
        export_bundle(str(refit), str(bundle), data_dir=str(tiny_data), parity_texts=16, max_prob_diff=0.5,
                      min_same_set=0.0)
        report = evaluate_bundle(str(bundle), str(tiny_data), str(work / "report"))
        record_evaluation(bundle, report["thresholds"], bundle_metrics(report))
        found[family] = {"model": model, "refit": refit, "bundle": bundle, "models_dir": bundle.parent}
    return found


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_encoders_have_their_familys_tokenization(tiny_encoders, family):
    from transformers import AutoConfig, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_encoders[family])
    config = AutoConfig.from_pretrained(tiny_encoders[family])
    encoded = tokenizer("Graph neural networks for molecules.")
    first, last = SPECIALS[family]
    assert tokenizer.convert_ids_to_tokens(encoded["input_ids"])[::len(encoded["input_ids"]) - 1] == [first, last]
    assert config.model_type == family and config.num_hidden_layers == 2
    if family == "roberta":  # byte-level BPE, pad id 1, positions after the pad id, one segment only
        assert tokenizer.pad_token_id == config.pad_token_id == 1
        assert "token_type_ids" not in encoded and config.type_vocab_size == 1
        assert any(t.startswith("Ġ") for t in tokenizer.convert_ids_to_tokens(encoded["input_ids"]))  # byte-level
    else:
        assert tokenizer.pad_token_id == 0 and "token_type_ids" in encoded


@pytest.mark.parametrize("family", FAMILIES)
def test_head_tail_windows_keep_the_familys_special_tokens(chains, family):
    """Training's windows (the HF tokenizer) and the Space's (the bundle's tokenizer.json) are the
    same ids, cut in the middle with the family's own first and last tokens kept."""
    from deployment.truncation import encode_windows
    from papertasks.modeling import load_trained, text_windows

    _, tokenizer, _ = load_trained(chains[family]["model"])
    text = "Attention is all you need. " + "We study graph neural networks on molecules. " * 40 + "The end."
    window = text_windows(tokenizer, [text], 32, "head_tail")[0]
    served = encode_windows(Predictor(chains[family]["bundle"]).tokenizer, [text], 32, "head_tail")[0]
    assert window == served and len(window) == 32
    assert tokenizer.convert_ids_to_tokens([window[0], window[-1]]) == list(SPECIALS[family])
    assert tokenizer.convert_ids_to_tokens(window[-3:-1]) == tokenizer.tokenize(" The end.")[-2:]  # the tail kept


@pytest.mark.parametrize("family", FAMILIES)
def test_the_chain_exports_what_the_architecture_takes(chains, family):
    """The ONNX graph takes input_ids and attention_mask only (RoBERTa has no segments; BERT's are all 0
    for one text), matches torch on padded batches, and the unchanged Predictor pads with the family's
    pad id."""
    import onnx
    from transformers import AutoModelForSequenceClassification

    from papertasks.modeling import load_trained, torch_probs

    chain = chains[family]
    record = json.loads((chain["model"] / "training_config.json").read_text())
    assert record["precision"] == PRECISION[family] and record["device"] == "cpu"
    hf_model, tokenizer, labels = load_trained(chain["refit"])
    assert type(hf_model).__name__ == f"{family.capitalize()}ForSequenceClassification"
    inputs = [i.name for i in onnx.load(str(chain["bundle"] / "model.onnx")).graph.input]
    assert inputs == ["input_ids", "attention_mask"]
    assert set(inputs) <= set(inspect.signature(type(hf_model).forward).parameters)
    report = json.loads((chain["bundle"] / "export_report.json").read_text())
    assert report["parity"]["onnx_fp32_vs_torch"]["max_prob_diff"] < 1e-4
    assert report["parity"]["onnx_int8_vs_torch"]["max_prob_diff"] < 0.05

    predictor = Predictor(chain["bundle"])
    assert predictor.pad_id == tokenizer.pad_token_id
    texts = ["Graph neural networks.", "A long abstract about speech. " * 30, "Reinforcement learning for robots."]
    reference = torch_probs(hf_model, tokenizer, texts, max_length=64, truncation="head_tail")
    fp32 = Predictor(chain["refit"] / "onnx", allow_unsigned=True).predict_proba(texts, batch_size=3)  # one batch, padded
    np.testing.assert_allclose(fp32, reference, atol=1e-5)
    assert np.abs(predictor.predict_proba(texts) - reference).max() < 0.05
    assert AutoModelForSequenceClassification.from_pretrained(chain["refit"]).config.num_labels == len(labels)
    assert (chain["bundle"] / "metrics.json").is_file()  # evaluate recorded its thresholds and metrics
    assert json.loads((chain["bundle"] / "config.json").read_text())["architecture"].startswith(family.capitalize())


def test_both_families_serve_from_the_app_registry_the_api_and_predict(chains, tmp_path):
    from fastapi.testclient import TestClient

    from deployment.registry import Registry
    from serving.api import create_app

    models_dir = tmp_path / "models"
    for family in FAMILIES:
        shutil.copytree(chains[family]["bundle"], models_dir / family)
    (models_dir / "models.json").write_text(json.dumps(
        {family: {"title": family, "description": f"tiny {family}"} for family in FAMILIES}))
    registry = Registry.from_path(models_dir)
    with TestClient(create_app(str(models_dir))) as client:
        for family in FAMILIES:
            labels = registry.predictor(family).labels
            result = registry.predictor(family).predict(["Graph neural networks for molecules."])[0]
            assert set(result["scores"]) == set(labels)
            answer = client.post("/predict", json={"title": "Graph neural networks", "abstract": "For molecules.",
                                                   "model": family})
            assert answer.status_code == 200, answer.text
            assert answer.json()["model"] == family and set(answer.json()["scores"]) == set(labels)

    papers = write_jsonl(tmp_path / "papers.jsonl", [{"id": "a", "title": "Speech recognition", "abstract": "With "
                                                      "transformers."}, {"id": "b", "text": "Robots that learn."}])
    result = run_cli("predict", papers, "-o", tmp_path / "out.jsonl", "--model", models_dir / "roberta")
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["a", "b"] and all(r["scores"] for r in rows)


def test_bf16_autocasts_on_a_cpu_and_keeps_fp32_weights(tiny_encoders, tiny_data, tmp_path):
    """fastai's own MixedPrecision autocasts on CUDA only; on a CPU the forward pass must run in bf16
    all the same, and the weights (what checkpoints hold) stay fp32."""
    import torch
    from fastai.callback.core import Callback

    from papertasks.train import TrainConfig, build_learner, run_config

    class PredictionDtype(Callback):
        order = 5  # before MixedPrecision (10) turns the predictions back to fp32

        def after_pred(self):
            self.seen = self.pred.dtype

    cfg = run_config(TrainConfig(data=str(tiny_data), out=str(tmp_path / "run"),
                                 base_model=str(tiny_encoders["roberta"]), precision="bf16", **TINY))
    learn, *_ = build_learner(cfg, tmp_path / "run")
    spy = PredictionDtype()
    learn.fit(1, 1e-3, cbs=[spy])
    assert spy.seen == torch.bfloat16
    assert {p.dtype for p in learn.model.parameters()} == {torch.float32}
    assert not (tmp_path / "run").exists()  # building a learner writes nothing


def test_lr_find_suggests_rates_and_saves_the_curve(tiny_encoders, tiny_data, tmp_path):
    out = tmp_path / "run"
    result = run_cli("lr-find", "--data", tiny_data, "--out", out, "--base-model", tiny_encoders["bert"],
                     "--max-train", "64", "--max-length", "32", "--batch-size", "8", "--num-it", "30")
    assert result.returncode == 0, result.stderr[-2000:]
    rates = {name: float(rate) for name, rate in re.findall(r"(valley|slide|minimum|steep) +(\S+)\n", result.stdout)}
    assert list(rates) == ["valley", "slide", "minimum", "steep"] and all(1e-7 <= r <= 10 for r in rates.values())
    assert result.stdout.splitlines()[-1].startswith(f"train with: --lr {rates['valley']:.1e}")
    assert [p.name for p in out.iterdir()] == ["lr_find.png"]  # fastai's snapshot went to a temporary folder
    assert (out / "lr_find.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    from papertasks.train import TrainConfig, find_lr

    with pytest.raises(UserError, match="too few to suggest"):
        find_lr(TrainConfig(data=str(tiny_data), out=str(tmp_path / "short"), base_model=str(tiny_encoders["bert"]),
                            **TINY), num_it=6)
    assert not (tmp_path / "short").exists()


def test_patience_stops_a_phase_and_keeps_the_best_epoch_across_resume(tiny_encoders, tiny_data, tmp_path):
    """At a learning rate too small to move fp32 weights the validation loss cannot improve: patience 1
    stops after the second epoch, the first (best) is kept, and --resume does not train the rest."""
    from papertasks.train import TrainConfig, train

    cfg = dict(TINY, lr=1e-12, epochs=4, max_train=32, max_valid=16)
    base = str(tiny_encoders["roberta"])
    train(TrainConfig(data=str(tiny_data), out=str(tmp_path), base_model=base, patience=1, **cfg))
    record = json.loads((tmp_path / "training_config.json").read_text())
    assert [h["epoch"] for h in record["history"]] == [0, 1]
    assert record["best"] == {"phase": "unfrozen", "epoch": 0} and record["stopped_early"] == {"unfrozen": 1}
    train(TrainConfig(data=str(tiny_data), out=str(tmp_path), base_model=base, patience=1, resume=True, **cfg))
    assert json.loads((tmp_path / "training_config.json").read_text())["history"] == record["history"]


def test_two_processes_train_one_model_under_accelerate_launch(tiny_encoders, tiny_data, tmp_path):
    """`accelerate launch` with 2 CPU processes (gloo), as users run several GPUs: each process trains on
    its shard, and the saved model's validation loss, computed here in one process over the whole
    validation set, is the one the run reported as its best."""
    import subprocess
    import sys

    from papertasks.data import label_matrix, read_split
    from papertasks.modeling import load_trained, torch_probs

    out, valid_rows, seed = tmp_path / "run", 16, 42
    result = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
         "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "papertasks.cli",
         "train", "--data", tiny_data, "--out", out, "--base-model", tiny_encoders["roberta"], "--device", "cpu",
         "--max-length", "64", "--batch-size", "8", "--lr", "1e-3", "--frozen-epochs", "0", "--epochs", "2",
         "--max-train", "32", "--max-valid", str(valid_rows), "--seed", str(seed)],
        cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "process 0 of 2" in result.stderr and "process 1 of 2" in result.stderr, result.stderr[-3000:]
    record = json.loads((out / "training_config.json").read_text())
    assert len(record["history"]) == 2

    model, tokenizer, labels = load_trained(out)
    valid = read_split(tiny_data, "valid").sample(valid_rows, random_state=seed)
    probs = torch_probs(model, tokenizer, valid["text"].tolist(), 64, "head_tail").astype(np.float64)
    y = label_matrix(valid["labels"], labels)
    loss = -np.mean(y * np.log(probs) + (1 - y) * np.log1p(-probs))
    assert loss == pytest.approx(record["best_valid_loss"], abs=1e-5)


@pytest.fixture(scope="session")
def odd_models(tiny_encoders, tmp_path_factory) -> dict:
    """A decoder (GPT-2) with a tokenizer, and the tiny RoBERTa with a tokenizer that has no pad token."""
    from transformers import GPT2Config, GPT2ForSequenceClassification, PreTrainedTokenizerFast

    root = tmp_path_factory.mktemp("odd")
    roberta = PreTrainedTokenizerFast.from_pretrained(tiny_encoders["roberta"])
    decoder = root / "gpt2"
    GPT2ForSequenceClassification(GPT2Config(vocab_size=roberta.vocab_size, n_positions=128, n_embd=32, n_layer=1,
                                             n_head=2, pad_token_id=1)).save_pretrained(decoder)
    roberta.save_pretrained(decoder)
    no_pad = root / "no_pad"
    shutil.copytree(tiny_encoders["roberta"], no_pad)
    PreTrainedTokenizerFast(tokenizer_object=roberta.backend_tokenizer, bos_token="<s>",
                            eos_token="</s>").save_pretrained(no_pad)
    return {"decoder": decoder, "no_pad": no_pad}


@pytest.mark.parametrize("case, message", [
    ("decoder", "a gpt2 model, not an encoder"),
    ("no_pad", "its tokenizer has no pad token"),
    ("hub_offline", "no network to reach the Hugging Face hub"),  # conftest sets HF_HUB_OFFLINE
    ("too_long", "--max-length 512: '"),
    ("fp16_on_cpu", "--precision fp16 needs a CUDA GPU"),
])
def test_what_training_cannot_use_is_one_line_and_leaves_no_folder(case, message, odd_models, tiny_encoders,
                                                                  tiny_data, tmp_path):
    from papertasks.train import TrainConfig, train

    settings = {"decoder": dict(base_model=str(odd_models["decoder"])),
                "no_pad": dict(base_model=str(odd_models["no_pad"])),
                "hub_offline": dict(base_model="distilroberta-base"),
                "too_long": dict(base_model=str(tiny_encoders["roberta"]), max_length=512),
                "fp16_on_cpu": dict(base_model=str(tiny_encoders["roberta"]), device="cpu", precision="fp16")}[case]
    out = tmp_path / "run"
    with pytest.raises(UserError, match=message.replace("(", r"\(")) as error:
        train(TrainConfig(data=str(tiny_data), out=str(out), **{**TINY, **settings}))
    assert "\n" not in str(error.value)
    assert not out.exists()


def test_the_cli_refuses_fp16_on_a_cpu_and_cuda_where_there_is_none(tiny_data, tmp_path):
    import torch

    result = run_cli("train", "--data", tiny_data, "--out", tmp_path / "run", "--device", "cpu", "--precision", "fp16")
    assert_clean_error(result, "train", "--precision fp16 needs a CUDA GPU; on a CPU use --precision bf16 or fp32")
    if not torch.cuda.is_available():
        result = run_cli("lr-find", "--data", tiny_data, "--out", tmp_path / "run", "--device", "cuda")
        assert_clean_error(result, "lr-find", "sees no CUDA GPU here")
    assert not (tmp_path / "run").exists()



def test_default_base_model_is_distilroberta_where_the_hub_answers(monkeypatch):
    """distilroberta-base, the original project's model, when the hub answers; the offline MiniLM when
    it does not; MiniLM named by its hub id is read from its wheel, so the model card's command works offline."""
    import requests

    from papertasks import paths

    class Answer:
        ok = True

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(requests, "head", lambda *a, **k: Answer())
    assert paths.resolve_base_model(None) == "distilroberta-base"

    def unreachable(*args, **kwargs):
        raise requests.ConnectionError("no route to host")

    monkeypatch.setattr(requests, "head", unreachable)
    assert paths.resolve_base_model(None) == paths.offline_base_model()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert paths.resolve_base_model(None) == paths.offline_base_model()
    assert paths.resolve_base_model(paths.OFFLINE_BASE_NAME) == paths.offline_base_model()
    assert paths.resolve_base_model("roberta-base") == "roberta-base"
