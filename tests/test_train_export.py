"""Training with the fastai glue, resume, and the ONNX export with its parity check."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from conftest import TINY_TRAIN, assert_clean_error, run_cli
from deployment.predictor import BundleError, Predictor
from papertasks.errors import UserError


def test_trained_folder_is_a_hugging_face_model(tiny_model, tiny_data):
    from transformers import AutoModelForSequenceClassification

    for name in ("model.safetensors", "config.json", "tokenizer.json", "labels.json", "training_config.json"):
        assert (tiny_model / name).is_file(), name
    labels = json.loads((tiny_model / "labels.json").read_text())
    assert labels == json.loads((tiny_data / "labels.json").read_text())
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model)
    assert model.config.num_labels == len(labels)
    assert model.config.problem_type == "multi_label_classification"
    config = json.loads((tiny_model / "training_config.json").read_text())
    assert len(config["history"]) == 1 and config["best"] == {"phase": "unfrozen", "epoch": 0}


def test_splitter_gives_embeddings_encoder_head(tiny_model):
    from transformers import AutoModelForSequenceClassification

    from papertasks.learner import hf_splitter
    from papertasks.modeling import HFSequenceClassifier

    model = HFSequenceClassifier(AutoModelForSequenceClassification.from_pretrained(tiny_model))
    groups = hf_splitter(model)
    assert len(groups) == 3
    assert sum(p.numel() for g in groups for p in g) == sum(p.numel() for p in model.parameters())
    head = {id(p) for p in groups[2]}
    assert id(model.hf_model.classifier.weight) in head


def test_resume_continues_from_the_last_checkpoint(tiny_data, tmp_path):
    from papertasks.train import TrainConfig, train

    cfg = {**TINY_TRAIN, "max_train": 32, "max_valid": 16}
    train(TrainConfig(data=str(tiny_data), out=str(tmp_path), **cfg))
    first = json.loads((tmp_path / "training_config.json").read_text())["history"]
    train(TrainConfig(data=str(tiny_data), out=str(tmp_path), **{**cfg, "epochs": 2}, resume=True))
    history = json.loads((tmp_path / "training_config.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [0, 1]  # epoch 0 was not trained again
    assert history[0] == first[0]


def test_resume_without_checkpoint_and_bad_base_model_are_clean_errors(tiny_data, tmp_path):
    from papertasks.train import TrainConfig, train

    with pytest.raises(UserError, match="no checkpoint"):
        train(TrainConfig(data=str(tiny_data), out=str(tmp_path), resume=True))
    result = run_cli("train", "--data", tiny_data, "--out", tmp_path / "m", "--base-model", tmp_path / "missing")
    assert_clean_error(result, "train", "cannot load base model")


def test_export_bundle_sizes_and_parity(tiny_bundle, tiny_model):
    for name in ("model.onnx", "tokenizer.json", "labels.json", "thresholds.json", "config.json",
                 "export_report.json", "MODEL_CARD.md"):
        assert (tiny_bundle / name).is_file(), name
    report = json.loads((tiny_bundle / "export_report.json").read_text())
    assert report["parity"]["onnx_fp32_vs_torch"]["max_prob_diff"] < 1e-3
    assert report["parity"]["onnx_fp32_vs_torch"]["same_label_set"] == 1.0
    assert report["sizes"]["onnx_int8_mb"] < 0.3 * report["sizes"]["onnx_fp32_mb"]
    assert (tiny_model / "onnx" / "model.onnx").is_file()  # fp32 kept beside the trained model
    assert report["parity"]["measured_on"]["int8_kernels"] in ("VNNI", "AVX2 without VNNI", "unknown")
    card = (tiny_bundle / "MODEL_CARD.md").read_text()
    assert "ONNX int8" in card and "papertasks train --data DATA_DIR" in card
    assert f"int8 kernels: {report['parity']['measured_on']['int8_kernels']}" in card


def test_export_keeps_the_output_layer_in_fp32(tiny_bundle, tiny_model):
    import onnx

    from export.onnx_export import output_layer

    layer = output_layer(tiny_model / "onnx" / "model.onnx")
    assert layer and "classifier" in layer
    graph = onnx.load(str(tiny_bundle / "model.onnx")).graph
    ops = {node.name: node.op_type for node in graph.node}
    assert ops.get(layer, ops.get(f"{layer}_MatMul")) in ("MatMul", "Gemm")  # float, not MatMulInteger
    assert sum(op == "MatMulInteger" for op in ops.values()) >= 6  # the encoder's layers are int8
    assert json.loads((tiny_bundle / "export_report.json").read_text())["quantization"]["output_layer"] == "fp32"
    assert "the output layer kept in fp32" in (tiny_bundle / "MODEL_CARD.md").read_text()


def _int8_weight_range(bundle) -> int:
    import onnx
    from onnx import numpy_helper

    weights = [numpy_helper.to_array(t) for t in onnx.load(str(bundle / "model.onnx")).graph.initializer
               if t.data_type == onnx.TensorProto.INT8]
    return max(int(np.abs(w.astype(np.int16)).max()) for w in weights)


def test_reduce_range_export_keeps_weights_to_7_bits(tiny_model, tiny_bundle, tmp_path):
    bundle = tmp_path / "bundle"
    result = run_cli("export", "--model", tiny_model, "--out", bundle, "--work-dir", tmp_path / "fp32",
                     "--parity-texts", "8", "--max-prob-diff", "0.5", "--min-same-set", "0", "--reduce-range")
    assert result.returncode == 0, result.stderr[-2000:]
    assert _int8_weight_range(tiny_bundle) > 64 >= _int8_weight_range(bundle)
    assert json.loads((bundle / "export_report.json").read_text())["quantization"]["reduce_range"] is True
    card = (bundle / "MODEL_CARD.md").read_text()
    assert "7-bit weights" in card and "--reduce-range" in card
    assert Predictor(bundle).predict_proba(["Graph neural networks for molecules."]).shape == (1, len(Predictor(bundle).labels))


def test_unsigned_weights_export(tiny_model, tiny_bundle, tmp_path):
    import onnx

    bundle = tmp_path / "bundle"
    result = run_cli("export", "--model", tiny_model, "--out", bundle, "--work-dir", tmp_path / "fp32",
                     "--parity-texts", "8", "--max-prob-diff", "0.5", "--min-same-set", "0", "--weights", "u8")
    assert result.returncode == 0, result.stderr[-2000:]
    types = {t.data_type for t in onnx.load(str(bundle / "model.onnx")).graph.initializer}
    assert onnx.TensorProto.UINT8 in types and onnx.TensorProto.INT8 not in types
    assert onnx.TensorProto.INT8 in {t.data_type for t in onnx.load(str(tiny_bundle / "model.onnx")).graph.initializer}
    assert json.loads((bundle / "export_report.json").read_text())["quantization"]["weights"] == "u8, per channel"
    card = (bundle / "MODEL_CARD.md").read_text()
    assert "unsigned weights" in card and "--weights u8" in card
    assert "--out deployment/models/bundle --weights u8" in card  # the bundle's name, not its staging folder's
    texts = ["Graph neural networks for molecules.", "Speech recognition for low-resource languages."]
    np.testing.assert_allclose(Predictor(bundle).predict_proba(texts), Predictor(tiny_bundle).predict_proba(texts),
                               atol=0.05)  # the same model, weights rounded another way
    bad = run_cli("export", "--model", tiny_model, "--out", tmp_path / "bad", "--weights", "u4")
    assert bad.returncode == 2 and "invalid choice: 'u4'" in bad.stderr and not (tmp_path / "bad").exists()


def test_onnx_matches_torch_on_padded_batches(tiny_model, tiny_bundle):
    """Batches of very different lengths exercise padding and the dynamic axes (the fp32 ONNX that
    building tiny_bundle leaves in <model>/onnx)."""
    from papertasks.modeling import load_trained, torch_probs

    model, tokenizer, _ = load_trained(tiny_model)
    texts = ["Graph neural networks.", "A long abstract " * 40, "Speech recognition with transformers for low-resource languages."]
    reference = torch_probs(model, tokenizer, texts, max_length=64, truncation="head_tail")  # as the bundle
    onnx = Predictor(tiny_model / "onnx", allow_unsigned=True).predict_proba(texts, batch_size=2)
    np.testing.assert_allclose(onnx, reference, atol=1e-4)


def test_failed_parity_leaves_the_old_bundle(tiny_model, tiny_bundle, tmp_path):
    target = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, target)
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    result = run_cli("export", "--model", tiny_model, "--out", target, "--max-prob-diff", "-1", "--parity-texts", "4")
    assert_clean_error(result, "export", "parity check failed")
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]  # no staging folder left behind


CPUINFO = "processor\t: 0\nmodel name\t: {name}\nflags\t\t: fpu sse2 {flags}\n\nprocessor\t: 1\n"


@pytest.mark.parametrize("flags, kernels", [("avx2 fma", "AVX2 without VNNI"), ("avx2 avx512f avx512_vnni", "VNNI"),
                                            ("avx2 avx_vnni", "VNNI"), ("neon asimd", "unknown")])
def test_cpu_int8_kernels_read_from_the_flags(flags, kernels):
    from export.onnx_export import cpu_int8_kernels

    found = cpu_int8_kernels(CPUINFO.format(name="AMD EPYC", flags=flags))
    assert found == {"cpu": "AMD EPYC", "int8_kernels": kernels}
    assert cpu_int8_kernels("")["int8_kernels"] == "unknown"


def _parity(int8_diff: float, kernels: str) -> dict:
    return {"onnx_fp32_vs_torch": {"max_prob_diff": 1e-6, "same_label_set": 1.0},
            "onnx_int8_vs_torch": {"max_prob_diff": int8_diff, "same_label_set": 0.965},
            "measured_on": {"cpu": "x", "int8_kernels": kernels},
            "tolerance": {"fp32_max_prob_diff": 1e-3, "int8_max_prob_diff": 0.15, "int8_min_same_label_set": 0.85}}


def test_failed_int8_parity_on_a_cpu_without_vnni_says_why_and_what_to_try():
    from export.onnx_export import check_parity

    signed, unsigned = {"weights": "s8, per channel", "reduce_range": False}, {"weights": "u8, per channel", "reduce_range": False}
    check_parity(_parity(0.1, "AVX2 without VNNI"), signed)  # within tolerance: no error
    with pytest.raises(UserError, match="int8 differs from torch by 0.273") as without_vnni:
        check_parity(_parity(0.273, "AVX2 without VNNI"), signed)
    message = str(without_vnni.value)
    assert "without VNNI" in message and "--weights u8" in message and "--reduce-range" in message
    with pytest.raises(UserError) as seven_bit:
        check_parity(_parity(0.273, "AVX2 without VNNI"), {**signed, "reduce_range": True})
    assert "--weights u8" in str(seven_bit.value) and "--reduce-range (" not in str(seven_bit.value)
    for kernels, quantization in (("VNNI", signed), ("AVX2 without VNNI", unsigned)):  # no saturation to blame
        with pytest.raises(UserError) as other:
            check_parity(_parity(0.273, kernels), quantization)
        assert "saturate" not in str(other.value) and "--max-prob-diff" in str(other.value)


def test_labels_that_do_not_fit_the_model_are_refused(tiny_model, tiny_bundle, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model, ignore=shutil.ignore_patterns("checkpoints", "onnx"))
    labels = json.loads((model / "labels.json").read_text())
    (model / "labels.json").write_text(json.dumps({**labels, "extra.label": len(labels)}))
    assert_clean_error(run_cli("export", "--model", model, "--out", tmp_path / "b"), "export",
                       f"{len(labels) + 1} labels but the model has {len(labels)} outputs")
    assert not (tmp_path / "b").exists()

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    (bundle / "labels.json").write_text(json.dumps({**labels, "extra.label": len(labels)}))
    with pytest.raises(BundleError, match="outputs"):
        Predictor(bundle)
    assert_clean_error(run_cli("predict", tiny_model / "labels.json", "-o", tmp_path / "p.jsonl", "--model", bundle),
                       "predict", "outputs")
