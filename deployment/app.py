"""Gradio app: paste a paper's title and abstract, get its arXiv categories or its Papers with Code task.

Runs on onnxruntime + tokenizers + numpy (no torch, no transformers), from this folder alone, so
the folder can be pushed to a Hugging Face Space as it is: `python app.py`. It serves the bundles
listed in models/models.json (see registry.py); "Classify by" picks one.
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
    from .inputs import (MAX_FILE_BYTES, InputError, language_warnings, predict_rows, read_batch_file,
                          results_to_csv, text_from)
    from .predictor import BundleError, Predictor
    from .registry import TOP_CLASSES, ModelEntry, Registry, UnknownModelError
except ImportError:  # run as a Space: `python app.py`
    from inputs import (MAX_FILE_BYTES, InputError, language_warnings, predict_rows, read_batch_file,
                         results_to_csv, text_from)
    from predictor import BundleError, Predictor
    from registry import TOP_CLASSES, ModelEntry, Registry, UnknownModelError

HERE = Path(__file__).resolve().parent
DEFAULT_MODELS = HERE / "models"
TOP_LABELS = 10
THRESHOLD_RANGE = (0.05, 0.95)  # the global-threshold slider
MULTI_LABEL_COLUMNS = ["id", "labels", "top label", "note"]
SINGLE_LABEL_COLUMNS = ["id", "class", "top classes", "note"]


def load_examples() -> list[str]:
    path = HERE / "examples.json"
    return [ex["text"] for ex in json.loads(path.read_text())] if path.is_file() else []


def model_intro(entry: ModelEntry, predictor: Predictor) -> str:
    """What the picked model does, under the picker."""
    kind = "one label per paper" if predictor.single_label else "multi-label"
    return f"**{entry.title}** ({len(predictor.labels)} labels, {kind}). {entry.description}".strip()


def slider_threshold(predictor: Predictor) -> float:
    """The global-threshold slider's value: the bundle's tuned one, within the slider's range (a
    single-label bundle's threshold is 0, its top class always wins, and the slider is hidden)."""
    return min(max(predictor.global_threshold, THRESHOLD_RANGE[0]), THRESHOLD_RANGE[1])


def scores_title(predictor: Predictor) -> str:
    return "Top classes" if predictor.single_label else "Top labels"


def build_demo(registry: Registry) -> gr.Blocks:
    """The app over every model in `registry`; the picker's value is the model's name, also over the API."""
    default_entry, default = registry.entry(), registry.predictor()

    def predictor_for(model: str | None) -> Predictor:
        try:
            return registry.predictor(model or None)
        except (UnknownModelError, BundleError) as e:
            raise gr.Error(str(e), print_exception=False) from None

    def pick(model: str):
        """Show the controls that apply to the picked model, and clear the other model's answer."""
        predictor = predictor_for(model)
        multi = not predictor.single_label
        return (model_intro(registry.entry(model), predictor), gr.Checkbox(visible=multi),
                gr.Slider(visible=multi, value=slider_threshold(predictor)), gr.Slider(visible=not multi),
                gr.Label(value=None, label=scores_title(predictor)), "")

    def classify(text: str, threshold: float, per_label: bool, model: str, top_k: int):
        try:  # the rule every front end applies to a text (deployment.inputs)
            text = text_from(text or "")
        except InputError as e:
            raise gr.Error(str(e), print_exception=False) from None
        predictor = predictor_for(model)
        if predictor.single_label:  # the best class, and the runners-up with their probabilities
            result = predictor.predict([text], top_k=int(top_k or TOP_CLASSES))[0]
            chosen = f"**{result['labels'][0]}**"
        else:
            result = predictor.predict([text], threshold=None if per_label else threshold, top_k=TOP_LABELS)[0]
            chosen = ", ".join(f"**{lab}**" for lab in result["labels"]) or "_none above the threshold_"
        warnings = "".join(f"\n\n> Warning: {w}" for w in language_warnings(text))
        return result["scores"], f"Predicted: {chosen}{warnings}"

    def classify_file(path: str | None, model: str, progress=gr.Progress()):
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
        predictor = predictor_for(model)
        progress(0, desc=f"Scoring {len(rows):,} papers")
        results = predict_rows(predictor, rows, top_k=TOP_LABELS,
                               progress=lambda done, total: progress((done, total), desc="Scoring", unit="papers"))
        shown = TOP_CLASSES if predictor.single_label else 1  # scores in the table; the CSV has TOP_LABELS
        table = []
        for r in results:
            best = list(r["scores"].items())[:shown]  # scores come best first
            note = r.get("error") or "; ".join(r.get("warnings", []))
            table.append([str(r["id"]), ", ".join(r["labels"]), ", ".join(f"{lab} ({p:.2f})" for lab, p in best), note])
        out = Path(tempfile.mkdtemp(prefix="papertasks-")) / f"{Path(name).stem}-predictions.csv"
        out.write_text(results_to_csv(results), encoding="utf-8")
        failed = sum("error" in r for r in results)
        summary = f"Scored **{len(results) - failed:,}** papers" + (
            f"; {failed:,} {'row' if failed == 1 else 'rows'} had no usable text (see the notes)." if failed else ".")
        headers = SINGLE_LABEL_COLUMNS if predictor.single_label else MULTI_LABEL_COLUMNS
        return {"headers": headers, "data": table}, str(out), summary

    multi = not default.single_label
    with gr.Blocks(title="papertasks") as demo:
        gr.Markdown("# papertasks\nTags a paper from its title and abstract. The models are int8 ONNX MiniLMs "
                    "fine-tuned with fastai; they run on the CPU.")
        model = gr.Radio([(e.title, e.name) for e in registry.entries.values()], value=registry.default,
                         label="Classify by", visible=len(registry.entries) > 1, elem_id="model-picker")
        intro = gr.Markdown(model_intro(default_entry, default))
        with gr.Tab("One paper"):
            with gr.Row():
                with gr.Column(scale=3):
                    text = gr.Textbox(label="Title and abstract", lines=12, placeholder="Title. Abstract ...")
                    with gr.Row():
                        per_label = gr.Checkbox(value=True, label="Use the tuned per-label thresholds", visible=multi)
                        threshold = gr.Slider(*THRESHOLD_RANGE, value=slider_threshold(default), step=0.01, visible=multi,
                                              label="Threshold (when per-label thresholds are off)")
                        top_k = gr.Slider(1, TOP_LABELS, value=TOP_CLASSES, step=1, visible=not multi,
                                          label="Classes shown")
                    button = gr.Button("Classify", variant="primary")
                with gr.Column(scale=2):
                    chosen = gr.Markdown(label="Predicted labels")
                    scores = gr.Label(label=scores_title(default), num_top_classes=TOP_LABELS)
            examples = load_examples()
            if examples:
                gr.Examples(examples=[[ex] for ex in examples], inputs=[text])
        with gr.Tab("A file of papers"):
            gr.Markdown(f"Upload a **CSV** or **JSON Lines** file (UTF-8, at most {MAX_FILE_BYTES // 2**20} MB) with a "
                        "`text` column, or `title` and `abstract` columns; an `id` column is kept. "
                        "A multi-label model uses its tuned per-label thresholds; a single-label one picks "
                        "the best class.")
            with gr.Row():
                with gr.Column(scale=2):
                    upload = gr.File(label="Papers (CSV or JSONL)", file_types=[".csv", ".tsv", ".jsonl", ".json"],
                                     type="filepath", elem_id="file-upload")
                    file_button = gr.Button("Classify file", variant="primary")
                    file_summary = gr.Markdown(elem_id="file-summary")
                    download = gr.File(label="Predictions (CSV)", elem_id="file-download")
                with gr.Column(scale=3):
                    file_table = gr.Dataframe(headers=MULTI_LABEL_COLUMNS if multi else SINGLE_LABEL_COLUMNS,
                                              label="Predictions", interactive=False, wrap=True, elem_id="file-table")
        model.change(pick, inputs=[model], outputs=[intro, per_label, threshold, top_k, scores, chosen],
                     api_visibility="private")
        inputs = [text, threshold, per_label, model, top_k]
        button.click(classify, inputs=inputs, outputs=[scores, chosen], api_name="classify")
        text.submit(classify, inputs=inputs, outputs=[scores, chosen], api_visibility="private")
        file_button.click(classify_file, inputs=[upload, model], outputs=[file_table, download, file_summary],
                          api_name="classify_file")
    return demo


def launch(model_dir: str | os.PathLike = DEFAULT_MODELS, host: str | None = None, port: int | None = None,
           share: bool = False) -> None:
    """Serve the bundles listed in model_dir/models.json, or the one bundle model_dir is. The default
    model loads now, so a bad bundle stops the start; the others load when first picked."""
    try:
        registry = Registry.from_path(model_dir)
        registry.predictor()
    except BundleError as e:
        raise SystemExit(f"papertasks app: error: {e}") from None
    build_demo(registry).launch(server_name=host, server_port=port, share=share, max_file_size=MAX_FILE_BYTES)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(DEFAULT_MODELS),
                        help="a folder of bundles with models.json (default: ./models, every model listed there), "
                             "or one bundle folder")
    parser.add_argument("--host", default=None, help="default: $GRADIO_SERVER_NAME or 127.0.0.1")
    parser.add_argument("--port", type=int, default=None, help="default: $GRADIO_SERVER_PORT or 7860")
    parser.add_argument("--share", action="store_true")
    args = parser.parse_args()
    launch(args.model, args.host, args.port, args.share)


if __name__ == "__main__":
    main()
