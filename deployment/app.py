"""Gradio app: paste a paper's title and abstract, get its categories.

Runs on onnxruntime + tokenizers + numpy (no torch, no transformers), from this folder alone, so
the folder can be pushed to a Hugging Face Space as it is: `python app.py`.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

try:  # imported as part of the papertasks package (`papertasks app`)
    from .predictor import BundleError, Predictor
except ImportError:  # run as a Space: `python app.py`
    from predictor import BundleError, Predictor

HERE = Path(__file__).resolve().parent
DEFAULT_MODEL = HERE / "model"
MAX_CHARS = 20_000
TOP_LABELS = 10


def load_examples() -> list[str]:
    path = HERE / "examples.json"
    return [ex["text"] for ex in json.loads(path.read_text())] if path.is_file() else []


def build_demo(predictor: Predictor) -> gr.Blocks:
    def classify(text: str, threshold: float, per_label: bool):
        text = (text or "").strip()
        if not text:
            raise gr.Error("Paste a paper's title and abstract first.")
        if len(text) > MAX_CHARS:
            raise gr.Error(f"That text has {len(text):,} characters; an abstract has fewer than {MAX_CHARS:,}.")
        result = predictor.predict([text], threshold=None if per_label else threshold, top_k=TOP_LABELS)[0]
        chosen = ", ".join(f"**{lab}**" for lab in result["labels"]) or "_none above the threshold_"
        return result["scores"], f"Predicted: {chosen}"

    description = (f"Tags a paper with its arXiv categories ({len(predictor.labels)} labels). "
                   "Paste the title and abstract. The model is an int8 ONNX MiniLM fine-tuned with fastai; "
                   "it runs on the CPU.")
    with gr.Blocks(title="papertasks") as demo:
        gr.Markdown(f"# papertasks\n{description}")
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
        button.click(classify, inputs=[text, threshold, per_label], outputs=[scores, chosen], api_name="classify")
        text.submit(classify, inputs=[text, threshold, per_label], outputs=[scores, chosen], api_name=False)
    return demo


def launch(model_dir: str | os.PathLike = DEFAULT_MODEL, host: str | None = None, port: int | None = None,
           share: bool = False) -> None:
    try:
        predictor = Predictor(model_dir)
    except BundleError as e:
        raise SystemExit(f"papertasks app: error: {e}") from None
    build_demo(predictor).launch(server_name=host, server_port=port, share=share)


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
