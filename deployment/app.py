"""Gradio app: paste a paper's title and abstract, get its arXiv categories or its Papers with Code task.

Runs on onnxruntime + tokenizers + numpy (no torch, no transformers), from this folder alone, so
the folder can be pushed to a Hugging Face Space as it is: `python app.py`. It serves the bundles
listed in models/models.json (see registry.py); "Classify by" picks one. "Why these labels?" shows
which sentences raised each label (explain.py); "Correct the labels" stores a user's correction
(feedback.py: SQLite at $PAPERTASKS_FEEDBACK_DB, else /data when the Space has it).
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
    from .explain import explain, highlights
    from .feedback import FeedbackStore, StoreError, corrected_labels, record
    from .inputs import (MAX_FILE_BYTES, InputError, language_warnings, predict_rows, read_batch_file,
                          results_to_csv, text_from)
    from .limits import RATE_LIMIT_ENV, RateSpecError, TokenBucket, parse_rate, retry_after
    from .predictor import BundleError, Predictor
    from .registry import TOP_CLASSES, ModelEntry, Registry, UnknownModelError
except ImportError:  # run as a Space: `python app.py`
    from explain import explain, highlights
    from feedback import FeedbackStore, StoreError, corrected_labels, record
    from inputs import (MAX_FILE_BYTES, InputError, language_warnings, predict_rows, read_batch_file,
                         results_to_csv, text_from)
    from limits import RATE_LIMIT_ENV, RateSpecError, TokenBucket, parse_rate, retry_after
    from predictor import BundleError, Predictor
    from registry import TOP_CLASSES, ModelEntry, Registry, UnknownModelError

HERE = Path(__file__).resolve().parent
DEFAULT_MODELS = HERE / "models"
TOP_LABELS = 10
THRESHOLD_RANGE = (0.05, 0.95)  # the global-threshold slider
MULTI_LABEL_COLUMNS = ["id", "labels", "top label", "note"]
SINGLE_LABEL_COLUMNS = ["id", "class", "top classes", "note"]
# A public Space: a bounded waiting line (past it Gradio answers "queue full" at once instead of
# letting waits grow), uploads and downloads deleted an hour after they were made, two file jobs
# at a time, so a small file does not wait behind one large one, and a rate per client, so one
# client in a loop cannot hold the line (and the 2 cores) for everyone.
QUEUE_SIZE = 64
TEMP_FILES = (3600, 3600)  # every hour, delete temp files older than an hour
FILE_JOBS_AT_ONCE = 2
RATE_LIMIT = "30/min"  # scoring calls per client: a burst of 30, then one every 2 s; $PAPERTASKS_RATE_LIMIT, "off"


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


def named(predictor: Predictor, label: str) -> str:
    """A label in bold, with the name people read when the bundle has one: **cs.IT** (Information Theory)."""
    name = predictor.label_names.get(label)
    return f"**{label}** ({name})" if name else f"**{label}**"


def label_choices(predictor: Predictor, labels: list[str]) -> list[tuple[str, str]]:
    """Dropdown choices that show 'cs.IT — Information Theory' and send 'cs.IT'."""
    return [(predictor.title(lab), lab) for lab in labels]


def explanation_summary(predictor: Predictor, explanation: dict) -> str:
    """One line per explained label: its probability and the sentence that raised it most."""
    lines = []
    for entry in explanation["labels"]:
        best = max(range(len(entry["sentences"])), key=entry["sentences"].__getitem__)
        sentence = explanation["sentences"][best]["text"]
        shown = sentence if len(sentence) <= 90 else sentence[:87] + "..."
        lines.append(f"- {named(predictor, entry['label'])}: {entry['probability']:.2f}"
                     f"{'' if entry['predicted'] else ', not predicted'}; most from sentence {best + 1} "
                     f"({entry['sentences'][best]:+.3f}): _{shown}_")
    return "\n".join(lines)


def client_key(request: gr.Request | None) -> str:
    """Whom a call counts against: behind a Space's proxy every call comes from the proxy, which appends
    the address it saw to X-Forwarded-For. The last entry, not the first: a client can write the first
    itself and pick a fresh bucket per call. Run alone, the connection's address."""
    forwarded = dict(getattr(request, "headers", None) or {}).get("x-forwarded-for", "")
    client = getattr(request, "client", None)
    return forwarded.split(",")[-1].strip() or (client.host if client else "") or "unknown"


def build_demo(registry: Registry, store: FeedbackStore | None = None, rate_limit: str | None = None) -> gr.Blocks:
    """The app over every model in `registry`; the picker's value is the model's name, also over the API.
    Corrections go to `store` (default: FeedbackStore(), the database deployment/feedback.py picks).
    `rate_limit` (default: $PAPERTASKS_RATE_LIMIT, else RATE_LIMIT) bounds each client's scoring calls;
    a rate that cannot be read raises RateSpecError."""
    default_entry, default = registry.entry(), registry.predictor()
    store = store or FeedbackStore()
    spec = rate_limit or os.environ.get(RATE_LIMIT_ENV) or RATE_LIMIT
    rate = parse_rate(spec)
    bucket = TokenBucket(*rate) if rate else None

    def within_rate(request: gr.Request | None) -> None:
        """Refuse a scoring call past the client's rate before it does anything."""
        wait = bucket.take(client_key(request)) if bucket is not None else 0.0  # an empty one is falsy (len)
        if wait:
            raise gr.Error(f"Too many requests from your address (the limit is {spec.strip()}); "
                           f"retry in {retry_after(wait)} s.", print_exception=False)

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
                gr.Label(value=None, label=scores_title(predictor)), "", gr.Dropdown(choices=[], value=[]),
                gr.Dropdown(choices=[], value=[]), gr.Dropdown(choices=[], value=None), None, "")

    def checked(text: str) -> str:
        try:  # the rule every front end applies to a text (deployment.inputs)
            return text_from(text or "")
        except InputError as e:
            raise gr.Error(str(e), print_exception=False) from None

    def chosen_threshold(predictor: Predictor, threshold: float, per_label: bool) -> float | None:
        return None if predictor.single_label or per_label else threshold

    def classify(text: str, threshold: float, per_label: bool, model: str, top_k: int, request: gr.Request):
        within_rate(request)
        text = checked(text)
        predictor = predictor_for(model)
        if predictor.single_label:  # the best class, and the runners-up with their probabilities
            result = predictor.predict([text], top_k=int(top_k or TOP_CLASSES))[0]
            chosen = named(predictor, result["labels"][0])
        else:
            result = predictor.predict([text], threshold=None if per_label else threshold, top_k=TOP_LABELS)[0]
            chosen = ", ".join(named(predictor, lab) for lab in result["labels"]) or "_none above the threshold_"
        warnings = "".join(f"\n\n> Warning: {w}" for w in language_warnings(text))
        return result["scores"], f"Predicted: {chosen}{warnings}"

    def correction_choices(text: str, threshold: float, per_label: bool, model: str):
        """After a prediction: its labels can be marked wrong, the others added as missing."""
        predictor = predictor_for(model)
        try:
            text = text_from(text or "")
        except InputError:  # classify has said why
            return gr.Dropdown(choices=[], value=[]), gr.Dropdown(choices=[], value=[]), gr.Dropdown(choices=[])
        labels = predictor.predict([text], threshold=chosen_threshold(predictor, threshold, per_label))[0]["labels"]
        others = [lab for lab in predictor.labels if lab not in labels]
        return (gr.Dropdown(choices=label_choices(predictor, labels), value=[]),
                gr.Dropdown(choices=label_choices(predictor, others), value=[]),
                gr.Dropdown(choices=label_choices(predictor, labels + others), value=labels[0] if labels else None))

    def why(text: str, threshold: float, per_label: bool, model: str, label: str | None, request: gr.Request):
        """Highlighted sentences for `label` (default: the best predicted one) and a line per predicted label."""
        within_rate(request)
        text, predictor = checked(text), predictor_for(model)
        asked = [label] if label else []
        try:
            explanation = explain(predictor, text, labels=asked,
                                  threshold=chosen_threshold(predictor, threshold, per_label))
        except InputError as e:
            raise gr.Error(str(e), print_exception=False) from None
        shown = asked[0] if asked else explanation["labels"][0]["label"]
        return highlights(explanation, shown), explanation_summary(predictor, explanation)

    def send_correction(text: str, threshold: float, per_label: bool, model: str, wrong: list[str] | None,
                        missing: list[str] | None, request: gr.Request):
        """Store what the user says is wrong or missing, with the prediction it corrects (it scores the
        text again and writes a row, so it counts against the rate too)."""
        within_rate(request)
        text, predictor = checked(text), predictor_for(model)
        prediction = predictor.predict([text], threshold=chosen_threshold(predictor, threshold, per_label))[0]
        try:
            corrected = corrected_labels(predictor.labels, prediction["labels"], wrong or [], missing or [])
            row = store.add(record(predictor, registry.entry(model or None).name, text, prediction, corrected))
        except (InputError, StoreError) as e:
            raise gr.Error(str(e), print_exception=False) from None
        return f"Thank you: correction #{row} stored (labels: {', '.join(corrected) or 'none'})."

    def classify_file(path: str | None, model: str, request: gr.Request, progress=gr.Progress()):
        """A CSV / JSONL of papers -> a table, a downloadable CSV of predictions and a summary."""
        within_rate(request)
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
    with gr.Blocks(title="papertasks", delete_cache=TEMP_FILES) as demo:
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
            with gr.Accordion("Why these labels? (each sentence left out in turn)", open=True):
                with gr.Row():
                    explain_label = gr.Dropdown(choices=[], allow_custom_value=True, elem_id="explain-label",
                                                label="Label to explain (default: the best predicted one)")
                    explain_button = gr.Button("Explain", elem_id="explain-button")
                highlighted = gr.HighlightedText(label="Red: the sentence raised the label's probability; blue: "
                                                       "lowered it (the darker, the more)",
                                                 combine_adjacent=False, elem_id="explanation")
                explained = gr.Markdown(elem_id="explanation-summary")
            with gr.Accordion("Correct the labels", open=False):
                with gr.Row():
                    # custom values allowed: API callers name labels without a prediction first;
                    # send_correction checks them
                    wrong = gr.Dropdown(choices=[], multiselect=True, allow_custom_value=True,
                                        label="Predicted labels that are wrong", elem_id="wrong-labels")
                    missing = gr.Dropdown(choices=[], multiselect=True, allow_custom_value=True,
                                          label="Labels that are missing", elem_id="missing-labels")
                send = gr.Button("Send correction", elem_id="send-correction")
                sent = gr.Markdown(elem_id="correction-status")
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
        model.change(pick, inputs=[model], outputs=[intro, per_label, threshold, top_k, scores, chosen, wrong, missing,
                                                    explain_label, highlighted, explained],
                     api_visibility="private")
        inputs = [text, threshold, per_label, model, top_k]
        paper = [text, threshold, per_label, model]
        for event in (button.click(classify, inputs=inputs, outputs=[scores, chosen], api_name="classify"),
                      text.submit(classify, inputs=inputs, outputs=[scores, chosen], api_visibility="private")):
            event.success(correction_choices, inputs=paper, outputs=[wrong, missing, explain_label],
                          api_visibility="private")
        explain_button.click(why, inputs=paper + [explain_label], outputs=[highlighted, explained], api_name="explain")
        send.click(send_correction, inputs=paper + [wrong, missing], outputs=[sent], api_name="feedback")
        file_button.click(classify_file, inputs=[upload, model], outputs=[file_table, download, file_summary],
                          api_name="classify_file", concurrency_limit=FILE_JOBS_AT_ONCE)
    return demo.queue(max_size=QUEUE_SIZE)


def launch(model_dir: str | os.PathLike = DEFAULT_MODELS, host: str | None = None, port: int | None = None,
           share: bool = False) -> None:
    """Serve the bundles listed in model_dir/models.json, or the one bundle model_dir is. The default
    model loads now, so a bad bundle stops the start; the others load when first picked."""
    try:
        registry = Registry.from_path(model_dir)
        registry.predictor()
    except BundleError as e:
        raise SystemExit(f"papertasks app: error: {e}") from None
    try:
        demo = build_demo(registry)
    except RateSpecError as e:
        raise SystemExit(f"papertasks app: error: ${RATE_LIMIT_ENV} {e}") from None
    demo.launch(server_name=host, server_port=port, share=share, max_file_size=MAX_FILE_BYTES)


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
