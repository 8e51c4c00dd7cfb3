"""Inference benchmark: torch fp32 (eager) vs ONNX fp32 vs ONNX int8 on the same real abstracts, in one run.

Each engine runs in its own subprocess (so peak memory is its own), on the same texts, at batch 1
and batch 32, reporting texts/s, p50/p95 latency, micro-F1 against the true labels (with the
bundle's thresholds), model size and peak RSS; then the ratios against torch. Variants of the
served int8 path (length-sorted batches or not, 1 thread or all, ORT's transformer fusion) are
measured the same way, so what wins and what does not is on record.

    python bench/inference.py --model models/arxiv --bundle deployment/models/arxiv --data data/arxiv
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
}


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
    order = np.argsort([tokenizer_len(t) for t in texts], kind="stable")
    return [[texts[i] for i in order[s:s + batch_size]] for s in range(0, len(texts), batch_size)], order


def run_engine(engine: str, args) -> dict:
    """Runs in a subprocess: measure one engine, return its numbers."""
    texts, y = load_texts(Path(args.data), args.texts)
    from deployment.predictor import Predictor

    bundle = Predictor(args.bundle)
    max_length = args.max_length or bundle.max_length
    thresholds = bundle.thresholds
    if engine == "torch-fp32":
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        model = AutoModelForSequenceClassification.from_pretrained(args.model).eval()
        tokenizer = AutoTokenizer.from_pretrained(args.model)

        def score(batch):
            with torch.inference_mode():
                enc = tokenizer(batch, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
                return torch.sigmoid(model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits).numpy()
        size = (Path(args.model) / "model.safetensors").stat().st_size
    else:
        folder, threads = Path(args.bundle), None
        if engine == "onnx-fp32":
            folder = Path(args.model) / "onnx"
        elif engine == "onnx-int8-1thread":
            threads = 1
        elif engine == "onnx-int8-fused":
            folder = fused_int8(Path(args.model) / "onnx", Path(args.bundle))
        predictor = Predictor(folder, threads=threads)
        predictor.tokenizer.enable_truncation(max_length)

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
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return result


def fused_int8(fp32_dir: Path, bundle: Path) -> Path:
    """ORT's BERT optimizer on the fp32 export, then the same dynamic int8 quantization."""
    import logging
    import shutil

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers import optimizer

    logging.disable(logging.WARNING)
    config = json.loads((fp32_dir.parent / "config.json").read_text())  # the trained model's HF config
    out = Path(tempfile.mkdtemp(prefix="fused-"))
    for name in ("tokenizer.json", "labels.json", "config.json", "thresholds.json"):
        shutil.copy(bundle / name, out / name)
    model = optimizer.optimize_model(str(fp32_dir / "model.onnx"), model_type="bert",
                                     num_heads=config["num_attention_heads"], hidden_size=config["hidden_size"])
    model.save_model_to_file(str(out / "fp32.onnx"))
    quantize_dynamic(str(out / "fp32.onnx"), str(out / "model.onnx"), weight_type=QuantType.QInt8, per_channel=True,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    return out


def render(results: list[dict]) -> str:
    base = next(r for r in results if r["engine"] == "torch-fp32")
    lines = ["| engine | size MB | peak RSS MB | b1 texts/s | b1 p50 ms | b1 p95 ms | b32 texts/s | b32 p50 ms | "
             "b32 p95 ms | micro-F1 | b1 x torch | b32 x torch |", "|---|" + "---:|" * 11]
    for r in results:
        lines.append(f"| {r['engine']} | {r['size_mb']} | {r['peak_rss_mb']} | {r['batch1']['texts_per_s']:.1f} | "
                     f"{r['batch1']['p50_ms']:.1f} | {r['batch1']['p95_ms']:.1f} | {r['batch32']['texts_per_s']:.1f} | "
                     f"{r['batch32']['p50_ms']:.0f} | {r['batch32']['p95_ms']:.0f} | {r['micro_f1']:.3f} | "
                     f"{r['batch1']['texts_per_s'] / base['batch1']['texts_per_s']:.2f} | "
                     f"{r['batch32']['texts_per_s'] / base['batch32']['texts_per_s']:.2f} |")
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
    args = parser.parse_args()
    if args.engine:
        print(json.dumps(run_engine(args.engine, args)))
        return
    results = []
    for engine in args.engines:
        cmd = [sys.executable, __file__, "--engine", engine, *sys.argv[1:]]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        if proc.returncode:
            sys.exit(f"{engine} failed:\n{proc.stderr[-3000:]}")
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"measured {engine}", file=sys.stderr)
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
