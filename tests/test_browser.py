"""The Gradio app in a real browser: Debian's headless Chromium driven by Playwright (no browser
download). Types an abstract, reads the labels, uploads a CSV, reads the table, downloads the CSV of
predictions, checks a bad upload's message, switches to a single-label model with the picker, and
saves screenshots."""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import sys
from pathlib import Path
from unittest import mock

import pytest

from apputil import free_port, models_folder, running_app
from conftest import REPO
from deployment.inputs import CSV_COLUMNS
from deployment.predictor import Predictor, compose_text
from deployment.registry import TOP_CLASSES

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]

playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(),
                                reason="/usr/bin/chromium is absent (apt-get install chromium; .ci/run does)")


@pytest.fixture(scope="module")
def models(tiny_bundle, tiny_pwc_bundle, tmp_path_factory):
    """arXiv (multi-label) first, so the app opens on it as the Space does; then a single-label model."""
    return models_folder(tmp_path_factory.mktemp("registry") / "models", arxiv=tiny_bundle, pwc=tiny_pwc_bundle)


@pytest.fixture(scope="module")
def app_url(models):
    port = free_port()
    command = [sys.executable, str(REPO / "deployment" / "app.py"), "--model", str(models),
               "--host", "127.0.0.1", "--port", str(port)]
    with running_app(command, port) as url:
        yield url


@contextlib.contextmanager
def browser_page(url: str):
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 1000}, accept_downloads=True)
            page = context.new_page()
            page.set_default_timeout(60_000)
            page.goto(url)
            yield page
        finally:
            browser.close()


@pytest.fixture()
def page(app_url):
    with browser_page(app_url) as page:
        yield page


def table_rows(page) -> list[list[str]]:
    rows = [[c.strip() for c in r.locator("[role=gridcell]").all_inner_texts()]
            for r in page.locator("#file-table [role=row]").all()]
    return [r for r in rows if r]  # the header row has column headers, not cells


def test_browser_classifies_an_abstract_and_a_csv(page, tiny_bundle, tmp_path):
    predictor = Predictor(tiny_bundle)
    abstract = json.loads((REPO / "deployment" / "examples.json").read_text())[0]["text"]

    page.get_by_label("Title and abstract").fill(abstract)
    page.get_by_role("button", name="Classify", exact=True).click()
    answer = page.get_by_text("Predicted:")
    answer.wait_for()
    shown = answer.inner_text().removeprefix("Predicted:").strip()
    expected = [f"{lab} ({predictor.label_names[lab]})" if lab in predictor.label_names else lab
                for lab in predictor.predict([abstract])[0]["labels"]]  # arXiv codes with their taxonomy names
    assert shown == (", ".join(expected) or "none above the threshold"), shown
    top = max(predictor.predict([abstract])[0]["scores"].items(), key=lambda kv: kv[1])[0]
    assert page.get_by_text(top, exact=True).first.is_visible()
    page.screenshot(path=str(tmp_path / "app-one-paper.png"), full_page=True)

    papers = [("p1", "Vision transformers for detection", "We detect objects in images with attention."),
              ("p2", "Parsing with large language models", "We parse sentences with an LLM."),
              ("p3", "", "")]
    upload = tmp_path / "papers.csv"
    with open(upload, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("id", "title", "abstract"), *papers])
    page.get_by_role("tab", name="A file of papers").click()
    page.locator("#file-upload input[type=file]").set_input_files(str(upload))
    page.get_by_role("button", name="Classify file").click()
    page.locator("#file-summary").get_by_text("Scored").wait_for()
    assert "Scored 2 papers; 1 row had no usable text" in page.locator("#file-summary").inner_text()
    rows = table_rows(page)
    assert [r[0] for r in rows] == ["p1", "p2", "p3"], rows
    direct = predictor.predict([compose_text(t, a) for _, t, a in papers[:2]])
    assert [r[1] for r in rows[:2]] == [", ".join(d["labels"]) for d in direct]
    assert "is empty" in rows[2][3]

    link = page.locator("#file-download a[download]")
    with page.expect_download() as download:
        link.first.click()
    saved = tmp_path / "predictions.csv"
    download.value.save_as(saved)
    table = list(csv.DictReader(io.StringIO(saved.read_text(encoding="utf-8"))))
    assert tuple(table[0]) == CSV_COLUMNS and [r["id"] for r in table] == ["p1", "p2", "p3"]
    assert [r["labels"] for r in table[:2]] == [";".join(d["labels"]) for d in direct]
    shot = tmp_path / "app-batch.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    print(f"screenshots: {tmp_path / 'app-one-paper.png'} {shot}")
    if os.environ.get("PAPERTASKS_SCREENSHOT"):  # keep a copy where a person can look at it
        Path(os.environ["PAPERTASKS_SCREENSHOT"]).write_bytes(shot.read_bytes())


def test_browser_shows_a_clear_message_for_a_bad_upload(page, tmp_path):
    bad = tmp_path / "papers.csv"
    bad.write_text("name,year\nResNet,2015\n", encoding="utf-8")
    page.get_by_role("tab", name="A file of papers").click()
    page.locator("#file-upload input[type=file]").set_input_files(str(bad))
    page.get_by_role("button", name="Classify file").click()
    message = page.get_by_text("needs a 'text' column or 'title' and 'abstract' columns (found: name, year)")
    message.first.wait_for()
    assert "Traceback" not in page.content()
    # the app keeps serving: the first tab still answers
    page.get_by_role("tab", name="One paper").click()
    page.get_by_label("Title and abstract").fill("Graph neural networks for molecules.")
    page.get_by_role("button", name="Classify", exact=True).click()
    page.get_by_text("Predicted:").wait_for()


def test_browser_picker_switches_to_a_single_label_model(page, models, tmp_path):
    """Papers with Code task: the threshold controls go, the best classes and the one chosen class come."""
    pwc = Predictor(models / "pwc")
    abstract = json.loads((REPO / "deployment" / "examples.json").read_text())[1]["text"]
    threshold = page.get_by_label("Threshold (when per-label thresholds are off)").first  # its box and its range
    threshold.wait_for()
    assert page.get_by_label("Classes shown").count() == 0  # Gradio leaves hidden components out of the page

    page.locator("#model-picker").get_by_text("Papers with Code task").click()
    page.get_by_label("Classes shown").first.wait_for()
    threshold.wait_for(state="hidden")
    assert page.get_by_label("Use the tuned per-label thresholds").count() == 0
    page.get_by_text(f"({len(pwc.labels)} labels, one label per paper)").wait_for()

    page.get_by_label("Title and abstract").fill(abstract)
    page.get_by_role("button", name="Classify", exact=True).click()
    answer = page.get_by_text("Predicted:")
    answer.wait_for()
    expected = pwc.predict([abstract], top_k=TOP_CLASSES)[0]
    assert answer.inner_text().removeprefix("Predicted:").strip() == expected["labels"][0]
    for label in expected["scores"]:
        assert page.get_by_text(label, exact=True).first.is_visible()
    page.screenshot(path=str(tmp_path / "app-single-label.png"), full_page=True)

    upload = tmp_path / "papers.csv"
    upload.write_text("id,title,abstract\np1,Speech recognition,We transcribe audio with transformers.\n",
                      encoding="utf-8")
    page.get_by_role("tab", name="A file of papers").click()
    page.locator("#file-upload input[type=file]").set_input_files(str(upload))
    page.get_by_role("button", name="Classify file").click()
    page.locator("#file-summary").get_by_text("Scored").wait_for()
    (row,) = table_rows(page)
    assert row[1] == pwc.predict([compose_text("Speech recognition", "We transcribe audio with transformers.")])[0][
        "labels"][0]
    assert row[2].count("(") == TOP_CLASSES
    assert "top classes" in page.locator("#file-table").inner_text()


def test_browser_explains_a_real_abstract_and_sends_a_correction(tmp_path):
    """The shipped arXiv model: classify a real abstract, explain it (highlighted sentences and a line
    per label, with taxonomy names), mark the best label wrong, add a missing one, send; one record."""
    from deployment.feedback import DB_ENV, FeedbackStore

    bundle = REPO / "deployment" / "models" / "arxiv"
    predictor, db, port = Predictor(bundle), tmp_path / "feedback.sqlite3", free_port()
    abstract = json.loads((REPO / "deployment" / "examples.json").read_text())[0]["text"]
    predicted = predictor.predict([abstract])[0]["labels"]
    missing = next(lab for lab in ("cs.MM", "cs.CR", "cs.LG") if lab not in predicted)
    command = [sys.executable, str(REPO / "deployment" / "app.py"), "--model", str(bundle),
               "--host", "127.0.0.1", "--port", str(port)]
    with mock.patch.dict(os.environ, {DB_ENV: str(db)}), running_app(command, port) as url, browser_page(url) as page:
        page.get_by_label("Title and abstract").fill(abstract)
        page.get_by_role("button", name="Classify", exact=True).click()
        page.get_by_text("Predicted:").wait_for()
        page.locator("#explain-button").click()
        summary = page.locator("#explanation-summary")
        summary.get_by_text(predictor.label_names[predicted[0]]).wait_for()
        assert "most from sentence" in summary.inner_text()
        page.locator("#explanation").get_by_text("The code is available at").first.wait_for()
        page.screenshot(path=str(tmp_path / "app-explained.png"), full_page=True)

        page.get_by_text("Correct the labels").click()
        page.locator("#wrong-labels input").click()
        page.get_by_role("option", name=predictor.title(predicted[0])).click()
        page.locator("#missing-labels input").click()
        page.locator("#missing-labels input").fill(missing)
        page.get_by_role("option", name=predictor.title(missing)).click()
        page.locator("#send-correction").click()
        page.locator("#correction-status").get_by_text("Thank you: correction #1 stored").wait_for()
        page.screenshot(path=str(tmp_path / "app-corrected.png"), full_page=True)
    [stored] = FeedbackStore(db).records()
    assert stored["predicted"] == predicted and stored["corrected"] == predicted[1:] + [missing]
