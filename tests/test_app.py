"""The Gradio app and its model registry: answers over HTTP through gradio_client, switches between a
multi-label and a single-label model, refuses bad input, needs no torch."""
from __future__ import annotations

import json
import logging
import os
import re
import sqlite3
import subprocess
import sys
from unittest import mock

import pytest

from apputil import free_port, models_folder, running_app
from conftest import REPO
from deployment.registry import REGISTRY_FILE, TOP_CLASSES, Registry, RegistryError, UnknownModelError

EXAMPLE = json.loads((REPO / "deployment" / "examples.json").read_text())[0]["text"]


def test_app_answers_through_gradio_client(tiny_bundle):
    from gradio_client import Client

    port = free_port()
    command = [sys.executable, str(REPO / "deployment" / "app.py"), "--model", str(tiny_bundle),
               "--host", "127.0.0.1", "--port", str(port)]
    example = json.loads((REPO / "deployment" / "examples.json").read_text())[0]["text"]
    labels = set(json.loads((tiny_bundle / "labels.json").read_text()))
    with running_app(command, port) as url:
        client = Client(url, verbose=False)
        top, chosen = client.predict(example, 0.5, True, api_name="/classify")
        assert top["confidences"] and {c["label"] for c in top["confidences"]} <= labels
        assert chosen.startswith("Predicted:")
        # a global threshold of 0.05 must select at least the best label
        top, chosen = client.predict(example, 0.05, False, api_name="/classify")
        assert f"**{top['label']}**" in chosen
        for bad, message in (("   ", "'text' is empty; send a paper's title and abstract"),
                             ("x" * 30_000, "30,000 characters; the limit is 20,000")):
            with pytest.raises(Exception, match=message):
                client.predict(bad, 0.5, True, api_name="/classify")
        # the server keeps serving after bad input
        assert client.predict(example, 0.5, True, api_name="/classify")[0]["confidences"]


def test_app_and_predictor_run_without_torch(tiny_bundle):
    """The Space installs deployment/requirements.txt only: torch and transformers must not be needed."""
    code = f"""
import sys
sys.modules["torch"] = None; sys.modules["transformers"] = None
sys.path.insert(0, {str(REPO / 'deployment')!r})
import app
from registry import Registry
registry = Registry.from_path({str(tiny_bundle)!r})
assert registry.predictor().predict(["Object detection with transformers."])[0]["scores"]
app.build_demo(registry)
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]


def test_space_folder_is_self_contained():
    readme = (REPO / "deployment" / "README.md").read_text()
    assert readme.startswith("---\n") and "sdk: gradio" in readme and "app_file: app.py" in readme
    lines = (REPO / "deployment" / "requirements.txt").read_text().splitlines()
    packages = {line.split("==")[0].strip() for line in lines if line.strip() and not line.startswith("#")}
    assert {"gradio", "onnxruntime", "tokenizers", "numpy"} <= packages
    assert not packages & {"torch", "transformers", "fastai"}
    imports = [line for f in ("app.py", "inputs.py", "predictor.py", "registry.py", "explain.py", "feedback.py",
                              "limits.py")
               for line in (REPO / "deployment" / f).read_text().splitlines() if line.startswith(("import ", "from "))]
    assert not [line for line in imports if "papertasks" in line or "serving" in line or "torch" in line]


def test_shipped_registry_serves_arxiv_first_and_skips_bundles_not_exported_yet():
    registry = Registry.from_path(REPO / "deployment" / "models")
    listed = json.loads((REPO / "deployment" / "models" / REGISTRY_FILE).read_text())
    assert list(listed)[:2] == ["arxiv", "pwc"] and all(entry["title"] for entry in listed.values())
    assert registry.default == "arxiv" and registry.entry().path == REPO / "deployment" / "models" / "arxiv"
    assert list(registry.entries) == [name for name in listed if (REPO / "deployment" / "models" / name).is_dir()]


def test_registry_lists_present_bundles_loads_them_once_and_refuses_unknown_names(tiny_bundle, tiny_pwc_bundle,
                                                                                  tmp_path, caplog):
    folder = models_folder(tmp_path / "models", arxiv=tiny_bundle, gone=None, pwc=tiny_pwc_bundle)
    with caplog.at_level(logging.WARNING, logger="deployment.registry"):
        registry = Registry.from_path(folder)
    assert list(registry.entries) == ["arxiv", "pwc"] and registry.default == "arxiv"
    assert "lists 'gone'" in caplog.text and "not serving it" in caplog.text
    assert registry.entry("pwc").title == "Papers with Code task"
    assert not registry.predictor().single_label and registry.predictor("pwc").single_label
    assert registry.predictor("pwc") is registry.predictor("pwc")  # loaded once, then kept
    with pytest.raises(UnknownModelError, match="unknown model 'gone'; the models served are: arxiv, pwc"):
        registry.predictor("gone")

    alone = Registry.from_path(tiny_pwc_bundle)  # a bundle folder, not a registry: served alone, by its name
    assert list(alone.entries) == ["pwc"] and alone.predictor().single_label

    for listing, message in (("{not json", "cannot be read"), ("[]", "expected an object"),
                             ('{"../arxiv": {"title": "x"}}', "needs a bundle folder name"),
                             ('{"gone": {"title": "x"}}', "none of the bundles it lists (gone)")):
        (folder / REGISTRY_FILE).write_text(listing)
        with pytest.raises(RegistryError, match=re.escape(message)):
            Registry.from_path(folder)


@pytest.fixture(scope="module")
def two_models(tiny_bundle, tiny_pwc_bundle, tmp_path_factory):
    return models_folder(tmp_path_factory.mktemp("registry") / "models", arxiv=tiny_bundle, pwc=tiny_pwc_bundle)


def test_app_picker_switches_between_a_multi_label_and_a_single_label_model(two_models, tmp_path):
    from gradio_client import Client, handle_file

    registry = Registry.from_path(two_models)
    arxiv, pwc = registry.predictor("arxiv"), registry.predictor("pwc")
    port = free_port()
    command = [sys.executable, str(REPO / "deployment" / "app.py"), "--model", str(two_models),
               "--host", "127.0.0.1", "--port", str(port)]
    with running_app(command, port) as url:
        client = Client(url, verbose=False)
        api = client.view_api(print_info=False, return_format="dict")
        picker = next(p for p in api["named_endpoints"]["/classify"]["parameters"] if p["parameter_name"] == "model")
        assert picker["parameter_default"] == "arxiv" and picker["label"] == "Classify by"

        top, chosen = client.predict(EXAMPLE, 0.5, True, api_name="/classify")  # no model: arXiv, as before
        assert {c["label"] for c in top["confidences"]} <= set(arxiv.labels) and len(top["confidences"]) > TOP_CLASSES
        top, chosen = client.predict(EXAMPLE, 0.5, True, "arxiv", api_name="/classify")
        expected = arxiv.predict([EXAMPLE], top_k=10)[0]
        assert {c["label"]: c["confidence"] for c in top["confidences"]} == expected["scores"]

        top, chosen = client.predict(EXAMPLE, 0.5, True, "pwc", api_name="/classify")
        expected = pwc.predict([EXAMPLE], top_k=TOP_CLASSES)[0]
        assert {c["label"]: c["confidence"] for c in top["confidences"]} == expected["scores"]
        assert len(top["confidences"]) == TOP_CLASSES and len(expected["labels"]) == 1
        assert chosen == f"Predicted: **{expected['labels'][0]}**" and top["label"] == expected["labels"][0]
        top, chosen = client.predict(EXAMPLE, 0.95, False, "pwc", 5, api_name="/classify")  # threshold: ignored
        assert len(top["confidences"]) == 5 and chosen == f"Predicted: **{expected['labels'][0]}**"
        with pytest.raises(Exception, match="not in the list of choices"):
            client.predict(EXAMPLE, 0.5, True, "nope", api_name="/classify")

        papers = tmp_path / "papers.csv"
        papers.write_text("id,title,abstract\np1,Vision transformers,We detect objects in images.\n"
                          "p2,Speech recognition,We transcribe audio with transformers.\np3,,\n", encoding="utf-8")
        table, _, summary = client.predict(handle_file(str(papers)), "pwc", api_name="/classify_file")
        assert table["headers"] == ["id", "class", "top classes", "note"] and "Scored **2** papers" in summary
        rows = table["data"]
        texts = ["Vision transformers. We detect objects in images.",
                 "Speech recognition. We transcribe audio with transformers."]
        assert [r[1] for r in rows[:2]] == [pwc.predict([t])[0]["labels"][0] for t in texts]
        assert [r[2].count("(") for r in rows] == [TOP_CLASSES, TOP_CLASSES, 0] and "is empty" in rows[2][3]
        table, _, _ = client.predict(handle_file(str(papers)), api_name="/classify_file")  # no model: arXiv
        assert table["headers"] == ["id", "labels", "top label", "note"]
        assert all(lab in arxiv.labels for r in table["data"][:2] for lab in r[1].split(", ") if lab)


def test_app_refuses_a_registry_with_nothing_to_serve(tmp_path):
    folder = models_folder(tmp_path / "models", arxiv=None, pwc=None)
    result = subprocess.run([sys.executable, str(REPO / "deployment" / "app.py"), "--model", str(folder)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "papertasks app: error:" in result.stderr and "none of the bundles it lists (arxiv, pwc)" in result.stderr


def test_app_explains_a_label_and_stores_a_correction(tmp_path):
    """Over gradio_client, on the shipped arXiv bundle: /explain answers the highlighted sentences the
    explainer computes, /feedback stores one record, and a bad correction stores nothing."""
    from gradio_client import Client

    from deployment.explain import explain, highlights
    from deployment.feedback import DB_ENV, FeedbackStore
    from deployment.predictor import Predictor

    bundle = REPO / "deployment" / "models" / "arxiv"
    arxiv, db, port = Predictor(bundle), tmp_path / "feedback.sqlite3", free_port()
    predicted = arxiv.predict([EXAMPLE])[0]["labels"]
    command = [sys.executable, str(REPO / "deployment" / "app.py"), "--model", str(bundle),
               "--host", "127.0.0.1", "--port", str(port)]
    with mock.patch.dict(os.environ, {DB_ENV: str(db)}), running_app(command, port) as url:
        client = Client(url, verbose=False)
        pieces, summary = client.predict(EXAMPLE, 0.5, True, "arxiv", None, api_name="/explain")
        expected = explain(arxiv, EXAMPLE)
        assert "".join(p["token"] for p in pieces) == expected["text"]
        shown = [p["class_or_confidence"] for p in pieces if p["class_or_confidence"] is not None]
        assert shown == pytest.approx([s for _, s in highlights(expected, predicted[0]) if s is not None], abs=0.05)
        assert summary.startswith(f"- **{predicted[0]}** ({arxiv.label_names[predicted[0]]}): ")
        pieces, summary = client.predict(EXAMPLE, 0.5, True, "arxiv", "cs.MM", api_name="/explain")
        assert "**cs.MM** (" in summary and "not predicted" in summary
        with pytest.raises(Exception, match="unknown label 'cs.XX'"):
            client.predict(EXAMPLE, 0.5, True, "arxiv", "cs.XX", api_name="/explain")

        for wrong, missing, message in (([], [], "empty correction"), (["cs.MM"], [], "'cs.MM' was not predicted"),
                                        ([], ["cs.XX"], "unknown label 'cs.XX'")):
            with pytest.raises(Exception, match=message):
                client.predict(EXAMPLE, 0.5, True, "arxiv", wrong, missing, api_name="/feedback")
        assert not db.exists()
        message = client.predict(EXAMPLE, 0.5, True, "arxiv", predicted[:1], ["cs.MM"], api_name="/feedback")
        assert message.startswith("Thank you: correction #1 stored")
    [stored] = FeedbackStore(db).records()
    assert stored["predicted"] == predicted and stored["corrected"] == predicted[1:] + ["cs.MM"]
    assert stored["model"] == "arxiv" and stored["text"] == EXAMPLE
    with sqlite3.connect(db) as connection:
        assert connection.execute("SELECT COUNT(*) FROM feedback").fetchone()[0] == 1


def test_the_space_bounds_its_queue_temp_files_and_file_jobs(tiny_bundle):
    """A public Space: a bounded waiting line, temp files deleted after an hour, and file jobs two at a
    time (one at a time, a 1-row file waited 32 s behind a 600-row one)."""
    from deployment.app import FILE_JOBS_AT_ONCE, QUEUE_SIZE, TEMP_FILES, build_demo

    demo = build_demo(Registry.from_path(tiny_bundle))
    assert demo._queue.max_size == QUEUE_SIZE and demo.delete_cache == TEMP_FILES
    limits = {fn.api_name: fn.concurrency_limit for fn in demo.fns.values()}
    assert limits["classify_file"] == FILE_JOBS_AT_ONCE > 1


def test_the_space_limits_each_clients_scoring_calls(tmp_path, monkeypatch):
    """Past its rate, a client's scoring calls (classify, explain, file jobs, corrections: one bucket) are
    refused with when to retry, before they do anything; another client is still served, and behind the
    Space's proxy each client address the proxy appended to X-Forwarded-For counts alone. "off" turns it off; a bad rate stops the start."""
    import gradio as gr
    from fastapi import Request

    from deployment.app import build_demo, launch
    from deployment.feedback import FeedbackStore
    from deployment.limits import RATE_LIMIT_ENV

    bundle = REPO / "deployment" / "models" / "arxiv"
    registry, store = Registry.from_path(bundle), FeedbackStore(tmp_path / "feedback.sqlite3")

    def client(host: str, forwarded: str | None = None) -> gr.Request:
        headers = [(b"x-forwarded-for", forwarded.encode())] if forwarded else []
        return gr.Request(Request({"type": "http", "headers": headers, "client": (host, 50000)}))

    def handlers(demo: gr.Blocks) -> dict:
        return {fn.api_name: fn.fn for fn in demo.fns.values()}

    monkeypatch.delenv(RATE_LIMIT_ENV, raising=False)
    app = handlers(build_demo(registry, store, rate_limit="2/min"))
    proxy = "10.0.0.1"
    assert app["classify"](EXAMPLE, 0.5, True, "arxiv", 3, client(proxy))[1].startswith("Predicted:")
    with pytest.raises(gr.Error, match="Upload a CSV"):  # refused for its input, still counted
        app["classify_file"](None, "arxiv", client(proxy))
    for refused in (lambda: app["classify"](EXAMPLE, 0.5, True, "arxiv", 3, client(proxy)),
                    lambda: app["classify_file"](None, "arxiv", client(proxy)),
                    lambda: app["explain"](EXAMPLE, 0.5, True, "arxiv", None, client(proxy)),
                    lambda: app["feedback"](EXAMPLE, 0.5, True, "arxiv", ["cs.AI"], [], client(proxy))):
        with pytest.raises(gr.Error) as error:
            refused()
        assert re.fullmatch(r"Too many requests from your address \(the limit is 2/min\); retry in (29|30) s\.",
                            error.value.message), error.value.message
    assert not store.path.exists()  # the refused correction stored nothing
    assert app["classify"](EXAMPLE, 0.5, True, "arxiv", 3, client("10.0.0.2"))[1].startswith("Predicted:")
    behind_proxy = client(proxy, forwarded="203.0.113.7")  # the address the Space's proxy saw and appended
    assert app["classify"](EXAMPLE, 0.5, True, "arxiv", 3, behind_proxy)[1].startswith("Predicted:")
    for spoofed in ("198.51.100.1", "198.51.100.2"):  # a client's own first entries change nothing
        call = lambda: app["classify"](EXAMPLE, 0.5, True, "arxiv", 3, client(proxy, f"{spoofed}, 203.0.113.7"))
        if spoofed.endswith("1"):
            assert call()[1].startswith("Predicted:")
        else:
            with pytest.raises(gr.Error, match="Too many requests"):
                call()

    monkeypatch.setenv(RATE_LIMIT_ENV, "off")
    app = handlers(build_demo(registry, store))
    assert all(app["classify"](EXAMPLE, 0.5, True, "arxiv", 3, client(proxy))[0] for _ in range(4))
    monkeypatch.setenv(RATE_LIMIT_ENV, "lots")
    with pytest.raises(SystemExit, match=re.escape(f"papertasks app: error: ${RATE_LIMIT_ENV} 'lots': give requests "
                                                   "per unit, such as 60/min")):
        launch(bundle)
