"""Inference benchmark: torch fp32 (eager) vs ONNX fp32 vs ONNX int8 on the same real abstracts, in one run.

Each engine runs in its own subprocess (so peak memory is its own), on the same texts, at batch 1
and batch 32, reporting texts/s, p50/p95 latency, micro-F1 against the true labels (with the
bundle's thresholds), model size and peak RSS; then the ratios against torch. Variants of the
served int8 path (length-sorted batches or not, 1 thread or all, ORT's transformer fusion) are
measured the same way, so what wins and what does not is on record, as are other int8 formats
(signed 8-bit, 7-bit or unsigned weights; the output layer quantized or not), each against the ONNX
fp32 scores of the same texts: on x86 CPUs without VNNI, onnxruntime's u8 x s8 kernels can
overflow, which `reduce_range` and unsigned weights avoid.

    python bench/inference.py --model models/arxiv_refit480 --bundle deployment/models/arxiv --data data/arxiv
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
    "torch-fp32": "the trained model, eager PyTorch",
    "onnx-fp32": "ONNX export, onnxruntime",
    "onnx-int8": "the bundle as served (dynamic int8, length-sorted batches)",
    "onnx-int8-unsorted": "int8, batches in input order (padded to the longest of 32 random texts)",
    "onnx-int8-1thread": "int8, intra-op threads = 1",
    "onnx-int8-fused": "int8 of the ORT transformer-optimized graph (fused attention / layer norm / GELU)",
    "onnx-int8-s8": "int8 with signed 8-bit weights (QInt8, `export`'s default), re-quantized from the fp32 export",
    "onnx-int8-reduce-range": "int8 with 7-bit weights (reduce_range=True), re-quantized from the fp32 export",
    "onnx-int8-u8u8": "int8 with unsigned 8-bit weights (QUInt8), re-quantized from the fp32 export",
    "onnx-int8-u8u8-int8-output": "unsigned 8-bit weights with the output layer quantized too (`export` keeps it fp32)",
}
REQUANTIZED = {"onnx-int8-fused": dict(fused=True),
               "onnx-int8-s8": dict(weights="s8"),
               "onnx-int8-reduce-range": dict(reduce_range=True),
               "onnx-int8-u8u8": dict(weights="u8"),
               "onnx-int8-u8u8-int8-output": dict(weights="u8", output_layer_fp32=False)}


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
    if engine == "torch-fp32":
        from papertasks.modeling import load_trained, torch_scorer

        model, tokenizer, _ = load_trained(Path(args.model))
        score = torch_scorer(model, tokenizer, max_length, bundle.truncation)  # the predictor's windows
        size = (Path(args.model) / "model.safetensors").stat().st_size
    else:
        folder, threads = Path(args.bundle), None
        if engine == "onnx-fp32":
            folder = Path(args.model) / "onnx"
        elif engine == "onnx-int8-1thread":
            threads = 1
        elif engine in REQUANTIZED:
            folder = requantized(Path(args.model) / "onnx", Path(args.bundle), **REQUANTIZED[engine])
        predictor = Predictor(folder, threads=threads, allow_unsigned=True)  # onnx/ and re-quantized copies
        predictor.max_length = max_length  # --max-length: the windows encode_windows builds

        def score(batch):
            return 1 / (1 + np.exp(-predictor._logits(batch)))
        size = (folder / "model.onnx").stat().st_size

    def n_tokens(text):
        return min(len(bundle.tokenizer.encode(text).ids), max_length)

    score(texts[:2])  # warm-up
    result = {"engine": engine, "max_length": max_length, "size_mb": round(size / 2**20, 1)}
    single, lat1 = _timed(score, [[t] for t in texts[:args.single]])
    result["batch1"] = {"texts_per_s": args.single / lat1.sum(), "p50_ms": 1000 * np.median(lat1),
                        "p95_ms": 1000 * np.percentile(lat1, 95)}
    if engine == "onnx-int8-unsorted":
        batches, order = [texts[s:s + 32] for s in range(0, len(texts), 32)], np.arange(len(texts))
    else:
        batches, order = _length_sorted(texts, 32, n_tokens)
    probs_sorted, lat32 = _timed(score, batches)
    probs = np.empty_like(probs_sorted)
    probs[order] = probs_sorted
    result["batch32"] = {"texts_per_s": len(texts) / lat32.sum(), "p50_ms": 1000 * np.median(lat32),
                         "p95_ms": 1000 * np.percentile(lat32, 95)}
    from sklearn.metrics import f1_score

    result["micro_f1"] = float(f1_score(y, probs >= thresholds, average="micro", zero_division=0))
    np.save(Path(args.probs_dir) / f"{engine}.npy", probs)
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return result


def requantized(fp32_dir: Path, bundle: Path, fused: bool = False, reduce_range: bool = False,
                weights: str = "s8", output_layer_fp32: bool = True) -> Path:
    """The fp32 export quantized again as `export` would with other options (or, fused, after ORT's
    BERT optimizer), in a bundle folder beside the served one's tokenizer, labels and thresholds."""
    import logging

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers import optimizer

    from export.bundle import copy_bundle_files
    from export.onnx_export import quantize_int8

    logging.disable(logging.WARNING)
    out = copy_bundle_files(bundle, Path(tempfile.mkdtemp(prefix="requantized-")))
    source = fp32_dir / "model.onnx"
    if not fused:
        quantize_int8(source, out / "model.onnx", reduce_range, weights, output_layer_fp32)
        return out
    config = json.loads((fp32_dir.parent / "config.json").read_text())  # the trained model's HF config
    model = optimizer.optimize_model(str(source), model_type="bert",
                                     num_heads=config["num_attention_heads"], hidden_size=config["hidden_size"])
    model.save_model_to_file(str(out / "fp32.onnx"))
    quantize_dynamic(str(out / "fp32.onnx"), str(out / "model.onnx"), weight_type=QuantType.QInt8, per_channel=True,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})  # needed by the fused nodes
    return out


def compare_to_fp32(results: list[dict], probs_dir: Path, thresholds: np.ndarray) -> None:
    """Each engine's scores against ONNX fp32's on the same texts: what quantization alone changes."""
    reference = np.load(probs_dir / "onnx-fp32.npy")
    for r in results:
        probs = np.load(probs_dir / f"{r['engine']}.npy")
        diff = np.abs(probs - reference)
        r["vs_fp32"] = {"max_prob_diff": float(diff.max()), "mean_prob_diff": float(diff.mean()),
                        "same_label_set": float(((probs >= thresholds) == (reference >= thresholds)).all(axis=1).mean())}


def render(results: list[dict]) -> str:
    """Speeds relative to torch fp32, or to the first engine when torch was not measured."""
    base = next((r for r in results if r["engine"] == "torch-fp32"), results[0])
    name = "torch" if base["engine"] == "torch-fp32" else base["engine"]
    vs = "vs_fp32" in results[0]
    lines = ["| engine | size MB | peak RSS MB | b1 texts/s | b1 p50 ms | b1 p95 ms | b32 texts/s | b32 p50 ms | "
             f"b32 p95 ms | micro-F1 | b1 x {name} | b32 x {name} |" + (" max diff vs fp32 | mean diff | same labels |" if vs else ""),
             "|---|" + "---:|" * (14 if vs else 11)]
    for r in results:
        lines.append(f"| {r['engine']} | {r['size_mb']} | {r['peak_rss_mb']} | {r['batch1']['texts_per_s']:.1f} | "
                     f"{r['batch1']['p50_ms']:.1f} | {r['batch1']['p95_ms']:.1f} | {r['batch32']['texts_per_s']:.1f} | "
                     f"{r['batch32']['p50_ms']:.0f} | {r['batch32']['p95_ms']:.0f} | {r['micro_f1']:.3f} | "
                     f"{r['batch1']['texts_per_s'] / base['batch1']['texts_per_s']:.2f} | "
                     f"{r['batch32']['texts_per_s'] / base['batch32']['texts_per_s']:.2f} |"
                     + (f" {r['vs_fp32']['max_prob_diff']:.4f} | {r['vs_fp32']['mean_prob_diff']:.5f} | "
                        f"{100 * r['vs_fp32']['same_label_set']:.1f}% |" if vs else ""))
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/arxiv", help="trained Hugging Face folder (with onnx/ from export)")
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
    args = parser.parse_args()
    if args.engine:
        print(json.dumps(run_engine(args.engine, args)))
        return
    results = []
    with tempfile.TemporaryDirectory(prefix="inference-bench-") as probs_dir:
        for engine in args.engines:
            cmd = [sys.executable, __file__, "--engine", engine, "--probs-dir", probs_dir, *sys.argv[1:]]
            proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
            if proc.returncode:
                sys.exit(f"{engine} failed:\n{proc.stderr[-3000:]}")
            results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(f"measured {engine}", file=sys.stderr)
        if "onnx-fp32" in args.engines:
            from deployment.predictor import Predictor

            compare_to_fp32(results, Path(probs_dir), Predictor(args.bundle).thresholds)
    table = render(results)
    print(f"{args.texts} test abstracts (batch 32), {args.single} (batch 1), at most {results[0]['max_length']} tokens, "
          f"{os.cpu_count()} cores\n")
    print(table)
    for r in results:
        print(f"- {r['engine']}: {ENGINES[r['engine']]}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"texts": args.texts, "single": args.single, "cores": os.cpu_count(),
                               "max_length": results[0]["max_length"],
                               "results": results, "table": table}, indent=2))


if __name__ == "__main__":
    main()
