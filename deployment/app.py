"""Gradio app: paste a paper's title and abstract, get its categories.

Runs on onnxruntime + tokenizers + numpy (no torch, no transformers), from this folder alone, so
the folder can be pushed to a Hugging Face Space as it is: `python app.py`.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

try:  # imported as part of the papertasks package (`papertasks app`)
    from .inputs import (MAX_FILE_BYTES, MAX_TEXT_CHARS, InputError, language_warnings, predict_rows,
                          read_batch_file, results_to_csv)
    from .predictor import BundleError, Predictor
except ImportError:  # run as a Space: `python app.py`
    from inputs import (MAX_FILE_BYTES, MAX_TEXT_CHARS, InputError, language_warnings, predict_rows,
                         read_batch_file, results_to_csv)
    from predictor import BundleError, Predictor

HERE = Path(__file__).resolve().parent
DEFAULT_MODEL = HERE / "model"
TOP_LABELS = 10


def load_examples() -> list[str]:
    path = HERE / "examples.json"
    return [ex["text"] for ex in json.loads(path.read_text())] if path.is_file() else []


def build_demo(predictor: Predictor) -> gr.Blocks:
    def classify(text: str, threshold: float, per_label: bool):
        text = (text or "").strip()
        if not text:
            raise gr.Error("Paste a paper's title and abstract first.")
        if len(text) > MAX_TEXT_CHARS:
            raise gr.Error(f"That text has {len(text):,} characters; an abstract has fewer than {MAX_TEXT_CHARS:,}.")
        result = predictor.predict([text], threshold=None if per_label else threshold, top_k=TOP_LABELS)[0]
        chosen = ", ".join(f"**{lab}**" for lab in result["labels"]) or "_none above the threshold_"
        warnings = "".join(f"\n\n> Warning: {w}" for w in language_warnings(text))
        return result["scores"], f"Predicted: {chosen}{warnings}"

    def classify_file(path: str | None, progress=gr.Progress()):
        """A CSV / JSONL of papers -> a table, a downloadable CSV of predictions and a summary."""
        if not path:
            raise gr.Error("Upload a CSV or JSONL file first (rows with 'text', or 'title' and 'abstract').",
                           print_exception=False)
        name = Path(path).name
        if os.path.getsize(path) > MAX_FILE_BYTES:
            raise gr.Error(f"{name} has {os.path.getsize(path):,} bytes; the limit is {MAX_FILE_BYTES:,}. "
                           "Split the file, or use the REST API's /jobs.", print_exception=False)
        try:
            rows = read_batch_file(Path(path).read_bytes(), name)
        except InputError as e:
            raise gr.Error(str(e), print_exception=False) from None
        progress(0, desc=f"Scoring {len(rows):,} papers")
        results = predict_rows(predictor, rows, top_k=TOP_LABELS,
                               progress=lambda done, total: progress((done, total), desc="Scoring", unit="papers"))
        table = []
        for r in results:
            top = max(r["scores"], key=r["scores"].get) if r["scores"] else ""
            note = r.get("error") or "; ".join(r.get("warnings", []))
            table.append([str(r["id"]), ", ".join(r["labels"]),
                          f"{top} ({r['scores'][top]:.2f})" if top else "", note])
        out = Path(tempfile.mkdtemp(prefix="papertasks-")) / f"{Path(name).stem}-predictions.csv"
        out.write_text(results_to_csv(results), encoding="utf-8")
        failed = sum("error" in r for r in results)
        summary = f"Scored **{len(results) - failed:,}** papers" + (
            f"; {failed:,} {'row' if failed == 1 else 'rows'} had no usable text (see the notes)." if failed else ".")
        return table, str(out), summary

    description = (f"Tags a paper with its arXiv categories ({len(predictor.labels)} labels). "
                   "Paste the title and abstract. The model is an int8 ONNX MiniLM fine-tuned with fastai; "
                   "it runs on the CPU.")
    with gr.Blocks(title="papertasks") as demo:
        gr.Markdown(f"# papertasks\n{description}")
        with gr.Tab("One paper"):
            with gr.Row():
                with gr.Column(scale=3):
                    text = gr.Textbox(label="Title and abstract", lines=12, placeholder="Title. Abstract ...")
                    with gr.Row():
                        per_label = gr.Checkbox(value=True, label="Use the tuned per-label thresholds")
                        threshold = gr.Slider(0.05, 0.95, value=predictor.global_threshold, step=0.01,
                                              label="Threshold (when per-label thresholds are off)")
                    button = gr.Button("Classify", variant="primary")
                with gr.Column(scale=2):
                    chosen = gr.Markdown(label="Predicted labels")
                    scores = gr.Label(label="Top labels", num_top_classes=TOP_LABELS)
            examples = load_examples()
            if examples:
                gr.Examples(examples=[[ex] for ex in examples], inputs=[text])
        with gr.Tab("A file of papers"):
            gr.Markdown(f"Upload a **CSV** or **JSON Lines** file (UTF-8, at most {MAX_FILE_BYTES // 2**20} MB) with a "
                        "`text` column, or `title` and `abstract` columns; an `id` column is kept. "
                        "The tuned per-label thresholds are used.")
            with gr.Row():
                with gr.Column(scale=2):
                    upload = gr.File(label="Papers (CSV or JSONL)", file_types=[".csv", ".tsv", ".jsonl", ".json"],
                                     type="filepath", elem_id="file-upload")
                    file_button = gr.Button("Classify file", variant="primary")
                    file_summary = gr.Markdown(elem_id="file-summary")
                    download = gr.File(label="Predictions (CSV)", elem_id="file-download")
                with gr.Column(scale=3):
                    file_table = gr.Dataframe(headers=["id", "labels", "top label", "note"], label="Predictions",
                                              interactive=False, wrap=True, elem_id="file-table")
        button.click(classify, inputs=[text, threshold, per_label], outputs=[scores, chosen], api_name="classify")
        text.submit(classify, inputs=[text, threshold, per_label], outputs=[scores, chosen], api_name=False)
        file_button.click(classify_file, inputs=[upload], outputs=[file_table, download, file_summary],
                          api_name="classify_file")
    return demo


def launch(model_dir: str | os.PathLike = DEFAULT_MODEL, host: str | None = None, port: int | None = None,
           share: bool = False) -> None:
    try:
        predictor = Predictor(model_dir)
    except BundleError as e:
        raise SystemExit(f"papertasks app: error: {e}") from None
    if predictor.integrity.startswith("unchecked"):
        print(f"papertasks app: warning: {model_dir}: {predictor.integrity.split(': ', 1)[1]}; integrity not checked")
    build_demo(predictor).launch(server_name=host, server_port=port, share=share, max_file_size=MAX_FILE_BYTES)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="bundle folder (default: ./model)")
    parser.add_argument("--host", default=None, help="default: $GRADIO_SERVER_NAME or 127.0.0.1")
    parser.add_argument("--port", type=int, default=None, help="default: $GRADIO_SERVER_PORT or 7860")
    parser.add_argument("--share", action="store_true")
    args = parser.parse_args()
    launch(args.model, args.host, args.port, args.share)


if __name__ == "__main__":
    main()
