"""Inference benchmark: torch fp32 (eager) vs ONNX fp32 vs ONNX int8 on the same real abstracts, in one run.

Each engine runs in its own subprocess (so peak memory is its own), on the same texts, at batch 1
and batch 32, reporting texts/s, p50/p95 latency, micro-F1 against the true labels (with the
bundle's thresholds), model size and peak RSS; then the ratios against torch. Variants of the
served int8 path (each text run alone or 32 padded together, 1 thread or all, ORT's transformer fusion) are
measured the same way, so what wins and what does not is on record, as are other int8 formats
(signed 8-bit, 7-bit or unsigned weights; the output layer quantized or not), each against the ONNX
fp32 scores of the same texts: on x86 CPUs without VNNI, onnxruntime's u8 x s8 kernels can
overflow, which `reduce_range` and unsigned weights avoid.

From a clone, where the trained folder (`--model`) is absent, the fp32 references come from the bundle:
ONNX fp32 is its int8 graph with the weights dequantized (`export.onnx_export.dequantized_graph`,
so its quality columns are real), torch fp32 is the base model with the bundle's architecture and
label count and a fresh head (the same arithmetic, so the same speed; its quality columns stay
empty). The CPU's own limits are measured in the same run (one fp32 and two int8 matrix products
shaped like the model's feed-forward layer, through onnxruntime), and each engine's rate is given in
multiply-adds per second against them.

    python bench/inference.py --bundle deployment/models/arxiv --data data/arxiv
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

ENGINES = {
    "torch-fp32": "the trained model (from a clone: the base model with a fresh head), eager PyTorch, padded batches",
    "onnx-fp32": "ONNX export (from a clone: the bundle's weights dequantized), onnxruntime",
    "onnx-int8": "the bundle as served (dynamic int8, each text run alone: its scores do not depend on the batch)",
    "onnx-int8-batched": "int8, 32 length-sorted texts padded into one run (faster or not; scores depend on the batch)",
    "onnx-int8-1thread": "int8, intra-op threads = 1",
    "onnx-int8-fused": "int8 of the ORT transformer-optimized graph (fused attention / layer norm / GELU)",
    "onnx-int8-s8": "int8 with signed 8-bit weights (QInt8, `export`'s default), re-quantized from the fp32 export",
    "onnx-int8-reduce-range": "int8 with 7-bit weights (reduce_range=True), re-quantized from the fp32 export",
    "onnx-int8-u8u8": "int8 with unsigned 8-bit weights (QUInt8), re-quantized from the fp32 export",
    "onnx-int8-u8u8-int8-output": "unsigned 8-bit weights with the output layer quantized too (`export` keeps it fp32)",
    "onnx-int8-static": "static int8 (QDQ, activation ranges calibrated on training abstracts, unsigned weights)",
}
REQUANTIZED = {"onnx-int8-fused": dict(fused=True),
               "onnx-int8-s8": dict(weights="s8"),
               "onnx-int8-reduce-range": dict(reduce_range=True),
               "onnx-int8-u8u8": dict(weights="u8"),
               "onnx-int8-u8u8-int8-output": dict(weights="u8", output_layer_fp32=False),
               "onnx-int8-static": dict(static=True)}


CALIBRATION_TEXTS = 200  # training abstracts that set the static int8 ranges


def load_texts(data_dir: Path, n: int, seed: int = 0):
    from papertasks.data import label_matrix, read_labels, read_split

    test = read_split(data_dir, "test").sample(frac=1.0, random_state=seed).head(n)
    return test["text"].tolist(), label_matrix(test["labels"], read_labels(data_dir))


def _timed(fn, batches):
    latencies, outputs = [], []
    for batch in batches:
        t0 = time.perf_counter()
        outputs.append(fn(batch))
        latencies.append(time.perf_counter() - t0)
    return np.concatenate(outputs), np.array(latencies)


def _length_sorted(texts, batch_size, tokenizer_len):
    from papertasks.modeling import length_sorted_batches

    rows = length_sorted_batches([tokenizer_len(t) for t in texts], batch_size)
    return [[texts[i] for i in r] for r in rows], np.concatenate(rows)


def run_engine(engine: str, args) -> dict:
    """Runs in a subprocess: measure one engine, return its numbers."""
    texts, y = load_texts(Path(args.data), args.texts)
    from deployment.predictor import Predictor

    bundle = Predictor(args.bundle)
    max_length = args.max_length or bundle.max_length
    thresholds = bundle.thresholds
    trained = args.model and (Path(args.model) / "model.safetensors").is_file()
    if engine == "torch-fp32":
        from papertasks.modeling import load_base, load_trained, torch_scorer
        from papertasks.paths import resolve_base_model

        if trained:
            model, tokenizer, _ = load_trained(Path(args.model))
        else:  # a clone: the architecture with a fresh head, for speed alone
            tokenizer, model = load_base(resolve_base_model(args.base_model or bundle.config["base_model"]),
                                         bundle.labels)
        score = torch_scorer(model, tokenizer, max_length, bundle.truncation)  # the predictor's windows
        size = sum(p.numel() * p.element_size() for p in model.parameters())
    else:
        folder, threads = Path(args.bundle), None
        if engine == "onnx-fp32":
            folder = Path(args.fp32_dir)
        elif engine == "onnx-int8-1thread":
            threads = 1
        elif engine in REQUANTIZED:
            folder = requantized(Path(args.fp32_dir), Path(args.bundle), args.data, **REQUANTIZED[engine])
        predictor = Predictor(folder, threads=threads, allow_unsigned=True)  # onnx/ and re-quantized copies
        predictor.max_length = max_length  # --max-length: the windows encode_windows builds

        def score(batch):
            if engine == "onnx-int8-batched":
                return 1 / (1 + np.exp(-padded_logits(predictor, batch)))
            return 1 / (1 + np.exp(-predictor._logits(batch)))
        size = (folder / "model.onnx").stat().st_size

    def n_tokens(text):
        return min(len(bundle.tokenizer.encode(text).ids), max_length)

    score(texts[:2])  # warm-up
    result = {"engine": engine, "max_length": max_length, "size_mb": round(size / 2**20, 1),
              "arithmetic": "fp32" if engine in ("torch-fp32", "onnx-fp32") else int8_kind(folder / "model.onnx")}
    single, lat1 = _timed(score, [[t] for t in texts[:args.single]])
    result["batch1"] = {"texts_per_s": args.single / lat1.sum(), "p50_ms": 1000 * np.median(lat1),
                        "p95_ms": 1000 * np.percentile(lat1, 95)}
    batches, order = _length_sorted(texts, 32, n_tokens)
    probs_sorted, lat32 = _timed(score, batches)
    probs = np.empty_like(probs_sorted)
    probs[order] = probs_sorted
    result["batch32"] = {"texts_per_s": len(texts) / lat32.sum(), "p50_ms": 1000 * np.median(lat32),
                         "p95_ms": 1000 * np.percentile(lat32, 95)}
    from sklearn.metrics import f1_score

    result["micro_f1"] = (float(f1_score(y, probs >= thresholds, average="micro", zero_division=0))
                          if engine != "torch-fp32" or trained else None)  # a fresh head scores nothing
    np.save(Path(args.probs_dir) / f"{engine}.npy", probs)
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return result


def padded_logits(predictor, texts: list[str]) -> np.ndarray:
    """The texts' windows padded into one onnxruntime run: how the predictor batched before it ran
    each text alone."""
    from deployment.truncation import encode_windows, padded_windows

    windows = encode_windows(predictor.tokenizer, texts, predictor.max_length, predictor.truncation)
    return predictor.run(*padded_windows(windows, predictor.pad_id))


def requantized(fp32_dir: Path, bundle: Path, data_dir: str, fused: bool = False, reduce_range: bool = False,
                weights: str = "s8", output_layer_fp32: bool = True, static: bool = False) -> Path:
    """The fp32 export quantized again as `export` would with other options (or, fused, after ORT's
    BERT optimizer; or static, calibrated on training abstracts of `data_dir`), in a bundle folder
    beside the served one's tokenizer, labels and thresholds."""
    import logging

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers import optimizer

    from export.bundle import copy_bundle_files
    from export.onnx_export import quantize_int8

    logging.disable(logging.WARNING)
    out = copy_bundle_files(bundle, Path(tempfile.mkdtemp(prefix="requantized-")))
    source = fp32_dir / "model.onnx"
    if static:
        from deployment.predictor import Predictor
        from deployment.truncation import encode_windows
        from export.onnx_export import static_int8
        from papertasks.data import read_split

        served = Predictor(bundle)
        train = read_split(data_dir, "train").sample(n=CALIBRATION_TEXTS, random_state=0)["text"].tolist()
        static_int8(source, out / "model.onnx", encode_windows(served.tokenizer, train, served.max_length,
                                                               served.truncation), served.pad_id)
        return out
    if not fused:
        quantize_int8(source, out / "model.onnx", reduce_range, weights, output_layer_fp32)
        return out
    model = optimizer.optimize_model(str(source), model_type="bert", num_heads=0, hidden_size=0)  # 0: read from the graph
    model.save_model_to_file(str(out / "fp32.onnx"))
    quantize_dynamic(str(out / "fp32.onnx"), str(out / "model.onnx"), weight_type=QuantType.QInt8, per_channel=True,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})  # needed by the fused nodes
    return out


def fp32_reference(model_dir: str | None, bundle: Path, folder: Path) -> tuple[Path, str]:
    """The ONNX fp32 model the bundle was quantized from: the trained folder's export, or, where it
    is absent (a clone), the bundle's own graph with its int8 weights dequantized."""
    from export.bundle import copy_bundle_files
    from export.onnx_export import dequantized_graph

    exported = Path(model_dir or "") / "onnx"
    if model_dir and (exported / "model.onnx").is_file():
        return exported, f"{exported}: the trained model's export"
    copy_bundle_files(bundle, folder)
    dequantized_graph(bundle / "model.onnx", folder / "model.onnx")
    return folder, f"the bundle's int8 weights dequantized ({model_dir or 'no --model'} has no export)"


def macs_per_text(fp32_model: Path, tokens: np.ndarray) -> float:
    """Multiply-adds of one text, averaged over texts of `tokens` tokens: every MatMul with constant
    weights (K x N per token; the pooler and output layer, once per text, are counted per token too,
    under 0.1% of the total) plus attention's two products (2 x n^2 x hidden per layer)."""
    import onnx

    graph = onnx.load(str(fp32_model)).graph
    weights = {t.name: t.dims for t in graph.initializer}
    matmuls = [weights[n.input[1]] for n in graph.node if n.op_type == "MatMul" and len(weights.get(n.input[1], ())) == 2]
    layers = sum(n.op_type == "Softmax" for n in graph.node)
    tokens = np.asarray(tokens, dtype=np.float64)
    return float(np.mean(tokens * sum(int(np.prod(d)) for d in matmuls) + layers * 2 * tokens ** 2 * matmuls[0][0]))


def cpu_peaks(m: int = 4096, k: int = 384, n: int = 1536, repeats: int = 7) -> dict:
    """What this CPU's matrix kernels reach through onnxruntime (all cores), in multiply-adds/s, on one
    product shaped like a feed-forward layer of 32 texts x 128 tokens: fp32 MatMul, and
    MatMulInteger with u8 activations times s8 or u8 weights (the two int8 kernels)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    cases = {"fp32": (TensorProto.FLOAT, rng.standard_normal((m, k), dtype=np.float32),
                      rng.standard_normal((k, n), dtype=np.float32), "MatMul", TensorProto.FLOAT),
             "u8s8": (TensorProto.UINT8, rng.integers(0, 255, (m, k), dtype=np.uint8),
                      rng.integers(-127, 127, (k, n), dtype=np.int8), "MatMulInteger", TensorProto.INT32),
             "u8u8": (TensorProto.UINT8, rng.integers(0, 255, (m, k), dtype=np.uint8),
                      rng.integers(0, 255, (k, n), dtype=np.uint8), "MatMulInteger", TensorProto.INT32)}
    peaks = {}
    for name, (a_type, a, b, op, out_type) in cases.items():
        graph = helper.make_graph([helper.make_node(op, ["a", "b"], ["y"])], name,
                                  [helper.make_tensor_value_info("a", a_type, [m, k])],
                                  [helper.make_tensor_value_info("y", out_type, [m, n])],
                                  [numpy_helper.from_array(b, "b")])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        session.run(None, {"a": a})
        best = min(_seconds(lambda: session.run(None, {"a": a})) for _ in range(repeats))
        peaks[name] = m * k * n / best
    return peaks


def _seconds(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def int8_kind(model_path: Path) -> str:
    """Which int8 product a graph's weight matrices take: "u8s8" (signed weights) or "u8u8"; "fp32" if none."""
    import onnx
    from onnx import TensorProto

    graph = onnx.load(str(model_path)).graph
    types = {t.name: t.data_type for t in graph.initializer}
    for node in graph.node:
        weight = {"MatMulInteger": 1, "DequantizeLinear": 0}.get(node.op_type)
        if weight is not None and types.get(node.input[weight]) in (TensorProto.INT8, TensorProto.UINT8):
            return "u8s8" if types[node.input[weight]] == TensorProto.INT8 else "u8u8"
    return "fp32"


def compare_to_fp32(results: list[dict], probs_dir: Path, thresholds: np.ndarray) -> None:
    """Each engine's scores against ONNX fp32's on the same texts: what quantization alone changes."""
    reference = np.load(probs_dir / "onnx-fp32.npy")
    for r in results:
        if r["micro_f1"] is None:  # torch with a fresh head: nothing to compare
            r["vs_fp32"] = None
            continue
        probs = np.load(probs_dir / f"{r['engine']}.npy")
        diff = np.abs(probs - reference)
        r["vs_fp32"] = {"max_prob_diff": float(diff.max()), "mean_prob_diff": float(diff.mean()),
                        "same_label_set": float(((probs >= thresholds) == (reference >= thresholds)).all(axis=1).mean())}


def render(results: list[dict], macs: float | None = None, peaks: dict | None = None) -> str:
    """Speeds relative to torch fp32, or to the first engine when torch was not measured; with `macs`
    (multiply-adds per text) and `peaks` (cpu_peaks), each engine's batch-32 rate against the peak of
    the arithmetic it does."""
    base = next((r for r in results if r["engine"] == "torch-fp32"), results[0])
    name = "torch" if base["engine"] == "torch-fp32" else base["engine"]
    vs = "vs_fp32" in results[0]
    rate = bool(macs and peaks)
    lines = ["| engine | size MB | peak RSS MB | b1 texts/s | b1 p50 ms | b1 p95 ms | b32 texts/s | b32 p50 ms | "
             f"b32 p95 ms | micro-F1 | b1 x {name} | b32 x {name} |" + (" max diff vs fp32 | mean diff | same labels |" if vs else "")
             + (" b32 GMAC/s | % of peak |" if rate else ""),
             "|---|" + "---:|" * (11 + 3 * vs + 2 * rate)]
    for r in results:
        f1 = "-" if r["micro_f1"] is None else f"{r['micro_f1']:.3f}"
        achieved = r["batch32"]["texts_per_s"] * macs if rate else 0.0
        lines.append(f"| {r['engine']} | {r['size_mb']} | {r['peak_rss_mb']} | {r['batch1']['texts_per_s']:.1f} | "
                     f"{r['batch1']['p50_ms']:.1f} | {r['batch1']['p95_ms']:.1f} | {r['batch32']['texts_per_s']:.1f} | "
                     f"{r['batch32']['p50_ms']:.0f} | {r['batch32']['p95_ms']:.0f} | {f1} | "
                     f"{r['batch1']['texts_per_s'] / base['batch1']['texts_per_s']:.2f} | "
                     f"{r['batch32']['texts_per_s'] / base['batch32']['texts_per_s']:.2f} |"
                     + ((f" {r['vs_fp32']['max_prob_diff']:.4f} | {r['vs_fp32']['mean_prob_diff']:.5f} | "
                         f"{100 * r['vs_fp32']['same_label_set']:.1f}% |" if r["vs_fp32"] else " - | - | - |") if vs else "")
                     + (f" {achieved / 1e9:.1f} | {100 * achieved / peaks[r['arithmetic']]:.0f}% ({r['arithmetic']}) |"
                        if rate else ""))
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None,
                        help="trained Hugging Face folder (with onnx/ from export); absent: references built from the bundle")
    parser.add_argument("--base-model", default=None,
                        help="without --model: the encoder torch fp32 is built from (default: the bundle's base model)")
    parser.add_argument("--bundle", default="deployment/models/arxiv")
    parser.add_argument("--data", default="data/arxiv", help="prepared data: texts come from its test split")
    parser.add_argument("--texts", type=int, default=256, help="texts for the batch-32 runs")
    parser.add_argument("--single", type=int, default=64, help="texts for the batch-1 runs")
    parser.add_argument("--max-length", type=int, default=None,
                        help="truncate at this many tokens instead of the bundle's (speed only: the model was trained at its own)")
    parser.add_argument("--engines", nargs="+", default=list(ENGINES), choices=list(ENGINES))
    parser.add_argument("--out", default="bench/results/inference.json")
    parser.add_argument("--engine", help=argparse.SUPPRESS)  # internal: run one engine and print JSON
    parser.add_argument("--probs-dir", help=argparse.SUPPRESS)  # internal: where engines leave their scores
    parser.add_argument("--fp32-dir", help=argparse.SUPPRESS)  # internal: the ONNX fp32 reference
    args = parser.parse_args()
    if args.engine:
        print(json.dumps(run_engine(args.engine, args)))
        return
    results = []
    with tempfile.TemporaryDirectory(prefix="inference-bench-") as work:
        fp32_dir, fp32_source = fp32_reference(args.model, Path(args.bundle), Path(work) / "fp32")
        peaks = cpu_peaks()
        print("peak multiply-adds/s on this CPU (onnxruntime, all cores): "
              + ", ".join(f"{kind} {rate / 1e9:.1f} G" for kind, rate in peaks.items()), file=sys.stderr)
        for engine in args.engines:
            cmd = [sys.executable, __file__, "--engine", engine, "--probs-dir", work, "--fp32-dir", str(fp32_dir),
                   *sys.argv[1:]]
            proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
            if proc.returncode:
                sys.exit(f"{engine} failed:\n{proc.stderr[-3000:]}")
            results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(f"measured {engine}", file=sys.stderr)
        from deployment.predictor import Predictor

        served = Predictor(args.bundle)
        if "onnx-fp32" in args.engines:
            compare_to_fp32(results, Path(work), served.thresholds)
        texts, _ = load_texts(Path(args.data), args.texts)
        max_length = results[0]["max_length"]
        macs = macs_per_text(fp32_dir / "model.onnx", np.array([min(len(served.tokenizer.encode(t).ids), max_length)
                                                                 for t in texts]))
    table = render(results, macs, peaks)
    print(f"{args.texts} test abstracts (batch 32), {args.single} (batch 1), at most {max_length} tokens, "
          f"{os.cpu_count()} cores; ONNX fp32 is {fp32_source}; {macs / 1e9:.2f} G multiply-adds per text; "
          "peak multiply-adds/s: " + ", ".join(f"{kind} {rate / 1e9:.1f} G" for kind, rate in peaks.items()) + "\n")
    print(table)
    for r in results:
        print(f"- {r['engine']}: {ENGINES[r['engine']]}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"texts": args.texts, "single": args.single, "cores": os.cpu_count(),
                               "max_length": max_length, "fp32_reference": fp32_source, "macs_per_text": macs,
                               "peak_macs_per_s": peaks, "results": results, "table": table}, indent=2))


if __name__ == "__main__":
    main()
