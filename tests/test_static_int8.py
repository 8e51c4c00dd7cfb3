"""Static int8 (`export.onnx_export.static_int8`): activation ranges fixed by calibration, so a text's
scores do not depend on the texts batched with it."""
from __future__ import annotations

import onnx

from deployment.predictor import Predictor
from deployment.truncation import encode_windows
from export.bundle import copy_bundle_files
from export.onnx_export import static_int8


def test_static_int8_scores_a_text_alike_in_any_batch(tiny_model, tiny_bundle, tiny_data, tmp_path):
    from papertasks.data import read_split

    fp32 = Predictor(tiny_model / "onnx", allow_unsigned=True)
    train = read_split(tiny_data, "train")["text"].tolist()[:24]
    folder = copy_bundle_files(tiny_bundle, tmp_path / "static")
    static_int8(tiny_model / "onnx" / "model.onnx", folder / "model.onnx",
                encode_windows(fp32.tokenizer, train, fp32.max_length, fp32.truncation), fp32.pad_id)
    ops = {n.op_type for n in onnx.load(str(folder / "model.onnx")).graph.node}
    assert "QuantizeLinear" in ops and "DynamicQuantizeLinear" not in ops

    static = Predictor(folder, allow_unsigned=True)
    texts = read_split(tiny_data, "valid")["text"].tolist()[:32]
    alone = static.probabilities(static._logits(texts[:1]))[0]
    for batch in (texts[:8], texts[:32], [texts[0], "a short title only"]):
        assert abs(static.probabilities(static._logits(batch))[0] - alone).max() < 1e-5
