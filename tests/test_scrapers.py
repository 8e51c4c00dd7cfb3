"""Scraper tests: every source against a local HTTP server that serves the REAL saved responses in ../shared.

The expected values (titles, ids, categories, DOIs, task names) are what those saved pages say.
Fault tests (429 + Retry-After, 5xx, truncated XML, timeouts, SIGKILL + resume) run on the same server.
"""
from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from xml.sax.saxutils import escape

import pytest

from papertasks.cli import main
from papertasks.errors import UserError
from scraper_server import Reply, ScriptedServer
from scrapers.arxiv import parse_feed, entry_to_record, search_query
from scrapers.output import ResumableJsonl
from scrapers.pwc_html import paper_links, parse_paper_page

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
FIXTURES = SHARED / "fixtures"
NEW_ATOM = "arxiv_atom/arxiv_api_new_format_nicotine_2026-07.xml"
LEGACY_ATOM = "arxiv_atom/arxiv_api_legacy_format_cs.RO_2025-10.xml"
MOBILENET = "pwc_html/paper_searching-for-mobilenetv3_2023-10-09.html"
DREAMGAUSSIAN = "pwc_html/paper_dreamgaussian-generative-gaussian-splatting_2023-10-06.html"
HOME = "pwc_html/home_trending_2023-10-01.html"
FAST = ["--delay", "0", "--backoff", "0.05", "--timeout", "5", "--contact", "tests@example.org"]
ATOM = "application/atom+xml"

# The 10 entries of the new-format file, in the order the file lists them.
NEW_IDS = ["1509.01687", "1206.3474", "2511.17570", "2004.14943", "1902.05515",
           "2603.02047", "0901.0089", "2212.06330", "q-bio/0509018", "0902.1417"]
MOBILENET_TASKS = ["Classification", "Dichotomous Image Segmentation", "Image Classification",
                   "Neural Architecture Search", "Object Detection", "Semantic Segmentation"]


@pytest.fixture
def shared(tmp_path):
    """Copy a file from ../shared/fixtures into tmp_path and return the copy's path."""
    if not FIXTURES.is_dir():
        pytest.skip(f"real fixtures not found at {FIXTURES} (the shared/ folder beside the repo)")

    def copy(relative: str) -> Path:
        target = tmp_path / "fixtures" / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(FIXTURES / relative, target)
        return target

    return copy


@pytest.fixture
def server():
    srv = ScriptedServer()
    yield srv
    srv.close()


def scrape(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["scrape", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def read_jsonl(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    assert text == "" or text.endswith("\n"), "torn last line"
    return [json.loads(line) for line in text.splitlines()]


def atom_pages(feed: str, page_size: int, order: list[str] | None = None) -> dict[int, str]:
    """Cut a real Atom feed into pages of `page_size` entries, byte for byte, keyed by `start`.

    The feed's own header is kept, with totalResults/startIndex/itemsPerPage set to match, so both
    layouts keep their exact element and prefix style. `order` re-sorts entries by id (e.g. newest first).
    """
    first, last = feed.index("<entry>"), feed.rindex("</entry>") + len("</entry>")
    entries = re.findall(r"(?s)<entry>.*?</entry>", feed[first:last])
    if order:
        entries.sort(key=lambda e: order.index(re.search(r"abs/(.+?)v\d+</id>", e)[1]))
    head, tail = feed[:first], feed[last:]
    pages = {}
    for start in range(0, len(entries) + 1, page_size):
        page_head = head
        for tag, value in (("totalResults", len(entries)), ("startIndex", start), ("itemsPerPage", page_size)):
            page_head = re.sub(rf"(<opensearch:{tag}[^>]*>)\d+(<)", rf"\g<1>{value}\g<2>", page_head)
        pages[start] = page_head + "\n  ".join(entries[start:start + page_size]) + tail
    return pages


def serve_atom(server: ScriptedServer, pages: dict[int, str]) -> str:
    for start, body in pages.items():
        server.add("/api/query", Reply(body, content_type=ATOM), start=start)
    return f"{server.url}/api/query"


# ---------------------------------------------------------------- arXiv: parsing the real layouts


def test_arxiv_new_format_fields(shared):
    feed = parse_feed(shared(NEW_ATOM).read_bytes())
    records = [entry_to_record(e) for e in feed.entries]
    assert (feed.total, feed.start) == (58, 0)
    assert [r["id"] for r in records] == NEW_IDS
    first = records[0]
    assert first["title"] == "Single Molecule Transistor based Nanopore for the detection of Nicotine"
    assert first["doi"] == "10.1063/1.4904358"
    assert first["journal_ref"] == "Journal of Applied Physics 116, 244307 (2014)"
    assert first["labels"] == ["cond-mat.mes-hall", "physics.comp-ph"]
    assert first["primary_category"] == "cond-mat.mes-hall"
    assert (first["version"], first["date"], first["authors"]) == ("v1", "2015-09-05", ["S. J. Ray"])
    assert first["abstract"].startswith("A nanopore based detection methodology was proposed")
    old_style = records[8]
    assert (old_style["id"], old_style["version"], old_style["doi"]) == ("q-bio/0509018", "v2", "10.1088/1478-3975/3/2/007")
    assert old_style["journal_ref"] == "Physical Biology, 3(2):147-159, 2006"
    revised = records[1]
    assert (revised["version"], revised["published"], revised["updated"]) == (
        "v2", "2012-06-15T14:07:14Z", "2013-07-09T09:20:29Z")
    assert records[2]["doi"] is None and records[2]["labels"] == ["physics.soc-ph", "cs.CY"]
    assert records[2]["url"] == "https://arxiv.org/abs/2511.17570"


def test_arxiv_legacy_format_fields(shared):
    feed = parse_feed(shared(LEGACY_ATOM).read_bytes())
    first, second = (entry_to_record(e) for e in feed.entries)
    assert (feed.total, len(feed.entries)) == (5619, 2)
    assert first["id"] == "2510.14968" and first["version"] == "v1"
    assert first["title"] == ("RDD: Retrieval-Based Demonstration Decomposer for Planner Alignment in "
                              "Long-Horizon Tasks")
    assert first["labels"] == ["cs.RO", "cs.AI", "cs.CV", "cs.LG", "cs.SY", "eess.SY"]
    assert first["primary_category"] == "cs.RO"
    assert first["abstract"].startswith("To tackle long-horizon tasks, recent hierarchical vision-language-action (VLAs) frameworks")
    assert first["abstract"].endswith("Code and more results are available at rdd-neurips.github.io.")
    assert "\n" not in first["abstract"] and "  " not in first["abstract"]
    assert first["doi"] is None and first["journal_ref"] is None
    assert first["authors"] == ["Mingxuan Yan", "Yuping Wang", "Zechun Liu", "Jiachen Li"]
    assert (second["id"], second["labels"], second["date"]) == ("2510.14827", ["cs.RO"], "2025-10-16")


def test_search_query_from_categories_and_query():
    assert search_query(None, ["cs.CL", "cs.LG"]) == "cat:cs.CL OR cat:cs.LG"
    assert search_query("ti:bert", ["cs.CL"]) == "(cat:cs.CL) AND (ti:bert)"
    with pytest.raises(UserError):
        search_query(None, None)


# ---------------------------------------------------------------- arXiv over HTTP


def test_arxiv_pages_request_shape_and_completion(shared, server, tmp_path, capsys):
    url = serve_atom(server, atom_pages(shared(NEW_ATOM).read_text(), page_size=3))
    out = tmp_path / "arxiv.jsonl"
    code, _, err = scrape(capsys, "arxiv", "--categories", "cs.CL", "cs.LG", "--page-size", "3",
                          "--base-url", url, "-o", str(out), *FAST)
    assert code == 0, err
    records = read_jsonl(out)
    assert [r["id"] for r in records] == NEW_IDS
    assert all(list(r)[:7] == ["id", "title", "abstract", "labels", "source", "url", "date"] for r in records)
    assert [h.query["start"] for h in server.hits] == ["0", "3", "6", "9"]
    first = server.hits[0]
    assert first.query["search_query"] == "cat:cs.CL OR cat:cs.LG"
    assert (first.query["max_results"], first.query["sortBy"], first.query["sortOrder"]) == ("3", "submittedDate", "descending")
    assert first.headers["User-Agent"] == "papertasks-scraper/0.1 (paper-abstract dataset builder; mailto:tests@example.org)"
    assert "fetched 10, written 10, skipped 0, failed 0; 4 requests" in err
    assert json.loads((tmp_path / "arxiv.jsonl.state.json").read_text())["done"] is True

    code, _, err = scrape(capsys, "arxiv", "--categories", "cs.CL", "cs.LG", "--page-size", "3",
                          "--base-url", url, "-o", str(out), *FAST)
    assert code == 0 and len(server.hits) == 4, "a finished run must not fetch again"
    assert "holds 10 records" in err and len(read_jsonl(out)) == 10


def test_arxiv_since_stops_at_first_older_paper(shared, server, tmp_path, capsys):
    newest_first = ["2603.02047", "2511.17570", "2212.06330", "2004.14943", "1902.05515",
                    "1509.01687", "1206.3474", "0902.1417", "0901.0089", "q-bio/0509018"]
    url = serve_atom(server, atom_pages(shared(NEW_ATOM).read_text(), 3, order=newest_first))
    out = tmp_path / "since.jsonl"
    code, _, err = scrape(capsys, "arxiv", "--query", "all:nicotine", "--since", "2019-01-01", "--page-size", "3",
                          "--base-url", url, "-o", str(out), *FAST)
    assert code == 0, err
    assert [r["id"] for r in read_jsonl(out)] == newest_first[:5]
    assert [h.query["start"] for h in server.hits] == ["0", "3"], "pages after the cut-off must not be fetched"
    assert "skipped 1 (before 2019-01-01 1)" in err


def test_arxiv_legacy_layout_over_http_respects_max(shared, server, tmp_path, capsys):
    server.add("/api/query", Reply(shared(LEGACY_ATOM).read_bytes(), content_type=ATOM))
    out = tmp_path / "ro.jsonl"
    args = ["arxiv", "--categories", "cs.RO", "--page-size", "2", "--max", "2", "--base-url",
            f"{server.url}/api/query", "-o", str(out), *FAST]
    assert scrape(capsys, *args)[0] == 0
    assert [r["id"] for r in read_jsonl(out)] == ["2510.14968", "2510.14827"]
    assert len(server.hits) == 1, "--max 2 is reached on the first page of a 5619-result search"
    code, _, err = scrape(capsys, *args)
    assert code == 0 and len(server.hits) == 1, "the output already holds --max records: nothing to fetch"
    assert "holds 2 records" in err and len(read_jsonl(out)) == 2


def test_dry_run_prints_first_request_and_writes_nothing(server, tmp_path, capsys):
    out = tmp_path / "dry.jsonl"
    code, stdout, _ = scrape(capsys, "arxiv", "--categories", "cs.CL", "--dry-run", "--base-url",
                             f"{server.url}/api/query", "-o", str(out))
    assert code == 0
    assert f"GET {server.url}/api/query?search_query=cat%3Acs.CL&start=0&max_results=100" in stdout
    assert not out.exists() and not server.hits and list(tmp_path.iterdir()) == []


def test_arxiv_error_feed_is_one_clear_line(server, tmp_path, capsys):
    error_feed = """<?xml version="1.0" encoding="UTF-8"?>
<feed xmlns="http://www.w3.org/2005/Atom">
  <opensearch:totalResults xmlns:opensearch="http://a9.com/-/spec/opensearch/1.1/">1</opensearch:totalResults>
  <entry>
    <id>http://arxiv.org/api/errors#incorrect_id_format_for_1234.12345v</id>
    <title>Error</title>
    <summary>incorrect id format for 1234.12345v</summary>
  </entry>
</feed>"""
    server.add("/api/query", Reply(error_feed, status=400, content_type=ATOM))
    code, _, err = scrape(capsys, "arxiv", "--query", "id:1234.12345v", "--base-url", f"{server.url}/api/query",
                          "-o", str(tmp_path / "e.jsonl"), *FAST)
    assert code == 2
    assert "papertasks scrape: error: arXiv API error: incorrect id format for 1234.12345v" in err
    assert len(server.hits) == 1, "a 400 is not retried"


# ---------------------------------------------------------------- faults on the same server


def test_429_retry_after_is_honoured(shared, server, tmp_path, capsys):
    page = shared(LEGACY_ATOM).read_bytes()
    server.add("/api/query", Reply(b"slow down", status=429, headers={"Retry-After": "1"}), Reply(page, content_type=ATOM))
    out = tmp_path / "x.jsonl"
    code, _, err = scrape(capsys, "arxiv", "--categories", "cs.RO", "--page-size", "2", "--max", "2",
                          "--base-url", f"{server.url}/api/query", "-o", str(out), *FAST)
    assert code == 0, err
    assert len(server.hits) == 2
    assert server.hits[1].at - server.hits[0].at >= 1.0, "must wait the Retry-After seconds"
    assert len(read_jsonl(out)) == 2


def test_500_then_success(shared, server, tmp_path, capsys):
    page = shared(LEGACY_ATOM).read_bytes()
    server.add("/api/query", Reply(b"oops", status=500), Reply(b"oops", status=502), Reply(page, content_type=ATOM))
    out = tmp_path / "x.jsonl"
    code, _, err = scrape(capsys, "arxiv", "--categories", "cs.RO", "--page-size", "2", "--max", "2",
                          "--base-url", f"{server.url}/api/query", "-o", str(out), *FAST)
    assert code == 0, err
    assert len(server.hits) == 3
    gaps = [b.at - a.at for a, b in zip(server.hits, server.hits[1:])]
    assert gaps[0] >= 0.05 and gaps[1] >= 0.1, f"exponential backoff 0.05 s then 0.1 s, got {gaps}"
    assert [r["id"] for r in read_jsonl(out)] == ["2510.14968", "2510.14827"]


def test_truncated_xml_is_retried(shared, server, tmp_path, capsys, caplog):
    page = shared(LEGACY_ATOM).read_bytes()
    server.add("/api/query", Reply(page[: len(page) // 2], content_type=ATOM), Reply(page, content_type=ATOM))
    out = tmp_path / "x.jsonl"
    code, _, err = scrape(capsys, "arxiv", "--categories", "cs.RO", "--page-size", "2", "--max", "2",
                          "--base-url", f"{server.url}/api/query", "-o", str(out), *FAST)
    assert code == 0, err
    assert len(server.hits) == 2 and len(read_jsonl(out)) == 2
    assert "not well-formed XML" in caplog.text


def test_page_still_truncated_after_retries_is_skipped_and_run_goes_on(shared, server, tmp_path, capsys):
    pages = atom_pages(shared(NEW_ATOM).read_text(), 3)
    url = serve_atom(server, pages)
    server.add("/api/query", Reply(pages[3][:500], content_type=ATOM), start=3)
    out = tmp_path / "x.jsonl"
    code, _, err = scrape(capsys, "arxiv", "--query", "all:nicotine", "--page-size", "3", "--max-retries", "1",
                          "--base-url", url, "-o", str(out), *FAST)
    assert code == 0, err
    assert [r["id"] for r in read_jsonl(out)] == NEW_IDS[:3] + NEW_IDS[6:]
    assert "failed 1 (page 1)" in err
    assert len(server.requests_to("/api/query", start=3)) == 2


def test_slow_response_times_out_and_is_retried(shared, server, tmp_path, capsys):
    page = shared(LEGACY_ATOM).read_bytes()
    server.add("/api/query", Reply(page, content_type=ATOM, delay=5), Reply(page, content_type=ATOM))
    out = tmp_path / "x.jsonl"
    began = time.monotonic()
    code, _, err = scrape(capsys, "arxiv", "--categories", "cs.RO", "--page-size", "2", "--max", "2",
                          "--base-url", f"{server.url}/api/query", "-o", str(out), *FAST, "--timeout", "0.5")
    assert code == 0, err
    assert time.monotonic() - began < 4, "the stalled answer must be abandoned after --timeout"
    assert len(server.hits) == 2 and len(read_jsonl(out)) == 2


def test_timeouts_exhausted_is_one_clear_error(shared, server, tmp_path, capsys):
    server.add("/api/query", Reply(b"", delay=5))
    code, _, err = scrape(capsys, "arxiv", "--categories", "cs.RO", "--base-url", f"{server.url}/api/query",
                          "-o", str(tmp_path / "x.jsonl"), *FAST, "--timeout", "0.3", "--max-retries", "1")
    assert code == 2
    assert "papertasks scrape: error: GET" in err and "failed after 2 attempts: ReadTimeout" in err
    assert "Traceback" not in err


def test_a_dripping_answer_is_cut_off_at_the_timeout(server, tmp_path, capsys):
    """--timeout is a deadline for the whole answer: a server sending a byte every 0.25 s used to hold the
    run for as long as it liked (the timeout only bounded each read)."""
    server.add("/api/query", Reply(b"<" * 40, content_type=ATOM, drip=0.25))
    began = time.monotonic()
    code, _, err = scrape(capsys, "arxiv", "--categories", "cs.RO", "--base-url", f"{server.url}/api/query",
                          "-o", str(tmp_path / "x.jsonl"), *FAST, "--timeout", "1", "--max-retries", "0")
    assert time.monotonic() - began < 3, "the answer must be abandoned at --timeout, not when the server is done"
    assert code == 2 and "failed after 1 attempts: ReadTimeout" in err and "Traceback" not in err


def test_dripping_headers_are_cut_off_at_the_timeout(server, tmp_path, capsys):
    """The deadline covers the status line and headers too: requests' own timeout bounds each read, so a
    server sending its head a byte every 0.1 s (about 13 s in all) used to hold the run until it was done."""
    server.add("/api/query", Reply(b"<", content_type=ATOM, head_drip=0.1))
    began = time.monotonic()
    code, _, err = scrape(capsys, "arxiv", "--categories", "cs.RO", "--base-url", f"{server.url}/api/query",
                          "-o", str(tmp_path / "x.jsonl"), *FAST, "--timeout", "1", "--max-retries", "0")
    assert time.monotonic() - began < 3, "the answer must be abandoned at --timeout, not when the server is done"
    assert code == 2 and "Traceback" not in err
    assert "failed after 1 attempts: ReadTimeout (no complete answer within 1 s)" in err
    assert not [t for t in threading.enumerate() if isinstance(t, threading.Timer)], "a watchdog outlived its request"


@pytest.mark.parametrize("declared", [True, False])
def test_a_huge_answer_is_refused_without_reading_it_whole(declared, server, tmp_path, capsys):
    """300 MiB, said in Content-Length or not: refused at the limit (64 MiB by default), never read whole, not retried."""
    server.add("/api/query", Reply(b"x" * 2**20, content_type=ATOM, repeat=300, length=declared))
    limit = [] if declared else ["--max-body-mb", "1"]
    code, _, err = scrape(capsys, "arxiv", "--categories", "cs.RO", "--base-url", f"{server.url}/api/query",
                          "-o", str(tmp_path / "x.jsonl"), *FAST, *limit)
    assert code == 2 and "Traceback" not in err
    expected = ("says it is 314,572,800 bytes, over the 64 MiB limit" if declared
                else "goes on past 1,048,576 bytes, over the 1 MiB limit")
    assert f"papertasks scrape: error: GET {server.url}/api/query" in err and expected in err
    assert "raise --max-body-mb" in err and len(server.hits) == 1


def test_empty_page_before_the_end_is_asked_again(shared, server, tmp_path, capsys):
    pages = atom_pages(shared(NEW_ATOM).read_text(), 10)
    empty = pages[10].replace("<opensearch:totalResults>0<", "<opensearch:totalResults>10<")
    server.add("/api/query", Reply(empty, content_type=ATOM), Reply(pages[0], content_type=ATOM), start=0)
    out = tmp_path / "x.jsonl"
    code, _, err = scrape(capsys, "arxiv", "--query", "all:nicotine", "--page-size", "10",
                          "--base-url", f"{server.url}/api/query", "-o", str(out), *FAST)
    assert code == 0, err
    assert [r["id"] for r in read_jsonl(out)] == NEW_IDS


# ---------------------------------------------------------------- resume


def test_sigkill_mid_run_then_resume_loses_and_repeats_nothing(shared, server, tmp_path):
    pages = atom_pages(shared(NEW_ATOM).read_text(), 2)
    url = serve_atom(server, pages)
    server.add("/api/query", Reply(pages[4], content_type=ATOM, delay=60), start=4)  # page 3 stalls
    out = tmp_path / "killed.jsonl"
    command = [sys.executable, "-m", "papertasks.cli", "scrape", "arxiv", "--query", "all:nicotine",
               "--page-size", "2", "--base-url", url, "-o", str(out), *FAST]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    first = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        server.wait_for("/api/query", timeout=30, start=4)
        time.sleep(0.2)
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=10)
    assert first.returncode == -signal.SIGKILL
    assert [r["id"] for r in read_jsonl(out)] == NEW_IDS[:4], "pages 1-2 were on disk before the kill"
    assert json.loads((tmp_path / "killed.jsonl.state.json").read_text())["cursor"] == {"start": 4}

    server.add("/api/query", Reply(pages[4], content_type=ATOM), start=4)
    hits_before = len(server.hits)
    second = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert second.returncode == 0, second.stderr
    assert [h.query["start"] for h in server.hits[hits_before:]] == ["4", "6", "8"], "resumed at page 3"
    ids = [r["id"] for r in read_jsonl(out)]
    assert ids == NEW_IDS and len(set(ids)) == len(ids)


def test_resume_after_crash_between_write_and_checkpoint(shared, server, tmp_path, capsys):
    url = serve_atom(server, atom_pages(shared(NEW_ATOM).read_text(), 2))
    out = tmp_path / "crash.jsonl"
    args = ["arxiv", "--query", "all:nicotine", "--page-size", "2", "--base-url", url, "-o", str(out), *FAST]
    assert scrape(capsys, *args)[0] == 0
    lines = out.read_text(encoding="utf-8").splitlines(keepends=True)
    # A crash after writing 5 records, the last one torn, while the state still says "page 2".
    out.write_text("".join(lines[:5]) + lines[5][:40], encoding="utf-8")
    state_file = tmp_path / "crash.jsonl.state.json"
    state = json.loads(state_file.read_text())
    state.update(cursor={"start": 2}, done=False)
    state_file.write_text(json.dumps(state))

    code, _, err = scrape(capsys, *args)
    assert code == 0, err
    assert [r["id"] for r in read_jsonl(out)] == NEW_IDS
    assert "skipped 3 (duplicate 3)" in err and "written 5" in err


def test_output_is_locked_against_a_second_writer(tmp_path):
    out = tmp_path / "locked.jsonl"
    first = ResumableJsonl(out)
    try:
        with pytest.raises(UserError, match="being written by another scrape"):
            ResumableJsonl(out)
    finally:
        first.close()


# ---------------------------------------------------------------- arXiv OAI-PMH


def oai_record(entry: dict) -> str:
    """One record in arXiv's OAI `arXiv` metadata format, filled from a real Atom entry."""
    authors = "".join(f"<author><keyname>{escape(a.rsplit(' ', 1)[-1])}</keyname>"
                      f"<forenames>{escape(a.rsplit(' ', 1)[0])}</forenames></author>" for a in entry["authors"])
    optional = "".join(f"<{tag}>{escape(entry[key])}</{tag}>" for tag, key in
                       (("journal-ref", "journal_ref"), ("doi", "doi")) if entry.get(key))
    updated = f"<updated>{entry['updated'][:10]}</updated>" if entry["updated"] != entry["published"] else ""
    return (f"<record><header><identifier>oai:arXiv.org:{entry['id']}</identifier>"
            f"<datestamp>{entry['updated'][:10]}</datestamp><setSpec>cs</setSpec></header><metadata>\n"
            '<arXiv xmlns="http://arxiv.org/OAI/arXiv/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
            'xsi:schemaLocation="http://arxiv.org/OAI/arXiv/ http://arxiv.org/OAI/arXiv.xsd">\n'
            f"<id>{entry['id']}</id><created>{entry['published'][:10]}</created>{updated}<authors>{authors}</authors>"
            f"<title>{escape(entry['raw_title'])}</title><categories>{' '.join(entry['labels'])}</categories>"
            f"{optional}<license>http://arxiv.org/licenses/nonexclusive-distrib/1.0/</license>"
            f"<abstract>{escape(entry['raw_abstract'])}</abstract></arXiv>\n</metadata></record>\n")


def oai_response(body: str, request_attrs: str = 'verb="ListRecords"') -> str:
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            '<OAI-PMH xmlns="http://www.openarchives.org/OAI/2.0/" '
            'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
            'xsi:schemaLocation="http://www.openarchives.org/OAI/2.0/ http://www.openarchives.org/OAI/2.0/OAI-PMH.xsd">\n'
            f"<responseDate>2026-07-17T20:35:09Z</responseDate>\n<request {request_attrs}>"
            f"https://oaipmh.arxiv.org/oai</request>\n{body}</OAI-PMH>\n")


@pytest.fixture
def oai_entries(shared):
    """Real papers (from the saved Atom feed) to fill OAI records with: id -> fields."""
    feed = parse_feed(shared(NEW_ATOM).read_bytes())
    entries = {}
    for element in feed.entries:
        record = entry_to_record(element)
        ns = {"a": "http://www.w3.org/2005/Atom"}
        record["raw_title"] = element.findtext("a:title", "", ns)
        record["raw_abstract"] = element.findtext("a:summary", "", ns)
        entries[record["id"]] = record
    return entries


def test_oai_harvest_follows_resumption_tokens(oai_entries, server, tmp_path, capsys):
    deleted = ("<record><header status=\"deleted\"><identifier>oai:arXiv.org:2101.00001</identifier>"
               "<datestamp>2021-01-05</datestamp><setSpec>cs</setSpec></header></record>\n")
    page1 = oai_response("<ListRecords>\n" + oai_record(oai_entries["1509.01687"]) + deleted
                         + oai_record(oai_entries["q-bio/0509018"])
                         + '<resumptionToken cursor="0" completeListSize="4">7312345|1001</resumptionToken>\n'
                         "</ListRecords>\n", 'verb="ListRecords" metadataPrefix="arXiv" set="cs" from="2005-01-01"')
    page2 = oai_response("<ListRecords>\n" + oai_record(oai_entries["2511.17570"])
                         + '<resumptionToken cursor="3" completeListSize="4"/>\n</ListRecords>\n',
                         'verb="ListRecords" resumptionToken="7312345|1001"')
    server.add("/oai", Reply(page1, content_type="text/xml"), metadataPrefix="arXiv")
    server.add("/oai", Reply(page2, content_type="text/xml"), resumptionToken="7312345|1001")
    out = tmp_path / "oai.jsonl"
    code, _, err = scrape(capsys, "arxiv-oai", "--set", "cs", "--from", "2005-01-01", "--base-url",
                          f"{server.url}/oai", "-o", str(out), *FAST)
    assert code == 0, err
    assert [h.query for h in server.hits] == [
        {"verb": "ListRecords", "metadataPrefix": "arXiv", "set": "cs", "from": "2005-01-01"},
        {"verb": "ListRecords", "resumptionToken": "7312345|1001"},
    ]
    records = read_jsonl(out)
    assert [r["id"] for r in records] == ["1509.01687", "q-bio/0509018", "2511.17570"]
    first = records[0]
    assert first["title"] == "Single Molecule Transistor based Nanopore for the detection of Nicotine"
    assert (first["doi"], first["journal_ref"]) == ("10.1063/1.4904358", "Journal of Applied Physics 116, 244307 (2014)")
    assert (first["labels"], first["primary_category"]) == (["cond-mat.mes-hall", "physics.comp-ph"], "cond-mat.mes-hall")
    assert (first["date"], first["updated"], first["authors"], first["source"]) == ("2015-09-05", None, ["S. J. Ray"], "arxiv-oai")
    assert records[1]["updated"] == "2006-06-15"
    assert records[2]["authors"][0] == "Christopher Mitchell" and records[2]["labels"] == ["physics.soc-ph", "cs.CY"]
    assert "skipped 1 (deleted 1)" in err
    assert json.loads((tmp_path / "oai.jsonl.state.json").read_text())["done"] is True


def test_oai_no_records_match_is_an_empty_harvest(server, tmp_path, capsys):
    server.add("/oai", Reply(oai_response(
        '<error code="noRecordsMatch">The combination of the values of the from, until, set and metadataPrefix '
        "arguments results in an empty list.</error>\n"), content_type="text/xml"))
    out = tmp_path / "empty.jsonl"
    code, _, err = scrape(capsys, "arxiv-oai", "--set", "cs", "--from", "2099-01-01", "--base-url",
                          f"{server.url}/oai", "-o", str(out), *FAST)
    assert code == 0, err
    assert out.read_text() == "" and "written 0" in err


def test_oai_expired_token_restarts_without_duplicates(oai_entries, server, tmp_path, capsys):
    page = oai_response("<ListRecords>\n" + oai_record(oai_entries["1509.01687"]) + oai_record(oai_entries["2511.17570"])
                        + '<resumptionToken cursor="0" completeListSize="2"/>\n</ListRecords>\n')
    server.add("/oai", Reply(page, content_type="text/xml"), metadataPrefix="arXiv")
    server.add("/oai", Reply(oai_response('<error code="badResumptionToken">expired</error>\n'),
                             content_type="text/xml"), resumptionToken="stale|1001")
    out = tmp_path / "oai.jsonl"
    args = ["arxiv-oai", "--set", "cs", "--base-url", f"{server.url}/oai", "-o", str(out), *FAST]
    assert scrape(capsys, *args)[0] == 0
    state_file = tmp_path / "oai.jsonl.state.json"
    state = json.loads(state_file.read_text())
    state.update(cursor={"resumptionToken": "stale|1001"}, done=False)
    state_file.write_text(json.dumps(state))

    code, _, err = scrape(capsys, *args)
    assert code == 0, err
    assert [h.query.get("resumptionToken") for h in server.hits[1:]] == ["stale|1001", None]
    assert [r["id"] for r in read_jsonl(out)] == ["1509.01687", "2511.17570"]
    assert "skipped 2 (duplicate 2)" in err


def test_oai_bad_argument_is_a_user_error(server, tmp_path, capsys):
    server.add("/oai", Reply(oai_response('<error code="badArgument">Illegal set: nope</error>\n'), content_type="text/xml"))
    code, _, err = scrape(capsys, "arxiv-oai", "--set", "nope", "--base-url", f"{server.url}/oai",
                          "-o", str(tmp_path / "x.jsonl"), *FAST)
    assert code == 2 and "error: OAI-PMH error badArgument: Illegal set: nope" in err


# ---------------------------------------------------------------- Papers with Code: HTML pages


def test_parse_mobilenetv3_page(shared):
    url = "https://paperswithcode.com/paper/searching-for-mobilenetv3"
    record = parse_paper_page(shared(MOBILENET).read_bytes(), "searching-for-mobilenetv3", url)
    assert record["title"] == "Searching for MobileNetV3"
    assert record["abstract"].startswith("We present the next generation of MobileNets based on a combination of "
                                         "complementary search techniques as well as a novel architecture design.")
    assert record["abstract"].endswith("MobileNetV3-Large LR-ASPP is 30\\% faster than MobileNetV2 R-ASPP at "
                                       "similar accuracy for Cityscapes segmentation.")
    # The page's div.paper-tasks links six tasks (the edit dialog repeats them: they must not double).
    assert record["labels"] == MOBILENET_TASKS
    assert (record["date"], record["arxiv_id"]) == ("2019-05-06", "1905.02244")
    assert len(record["authors"]) == 12 and record["authors"][0] == "Andrew Howard"


def test_parse_dreamgaussian_page_with_no_tasks(shared):
    record = parse_paper_page(shared(DREAMGAUSSIAN).read_bytes(), "dreamgaussian-generative-gaussian-splatting", "u")
    assert record["title"] == "DreamGaussian: Generative Gaussian Splatting for Efficient 3D Content Creation"
    assert record["abstract"].startswith("Recent advances in 3D content creation mostly leverage optimization-based")
    assert record["labels"] == []
    assert (record["date"], record["arxiv_id"]) == ("2023-09-28", "2309.16653")


def test_trending_listing_links(shared):
    site = "https://mirror.example"
    links = paper_links(shared(HOME).read_bytes(), site)
    assert len(links) == 10
    assert links[:3] == [f"{site}/paper/dreamgaussian-generative-gaussian-splatting",
                         f"{site}/paper/propainter-improving-propagation-and", f"{site}/paper/demystifying-clip-data"]
    page0 = paper_links(shared("pwc_html/home_trending_page0_2023-10-01.html").read_bytes(), site)
    assert len(page0) == 9 and page0[0] == f"{site}/paper/cgce-a-chinese-generative-chat-evaluation"


def test_pwc_html_listing_with_robots_and_failures(shared, server, tmp_path, capsys):
    server.add("/robots.txt", Reply("User-agent: *\nDisallow: /paper/qwen-technical-report\n", content_type="text/plain"))
    server.add("/", Reply(shared(HOME).read_bytes(), content_type="text/html; charset=utf-8"))
    server.add("/paper/searching-for-mobilenetv3", Reply(shared(MOBILENET).read_bytes(), content_type="text/html"))
    server.add("/paper/dreamgaussian-generative-gaussian-splatting",
               Reply(shared(DREAMGAUSSIAN).read_bytes(), content_type="text/html"))
    urls_file = tmp_path / "urls.txt"
    urls_file.write_text("# papers to fetch\nsearching-for-mobilenetv3\n")
    out = tmp_path / "html.jsonl"
    code, _, err = scrape(capsys, "pwc-html", "--base-url", server.url, "--listing", "/", "--urls-file", str(urls_file),
                          "-o", str(out), *FAST)
    assert code == 0, err
    records = {r["id"]: r for r in read_jsonl(out)}
    assert list(records) == ["searching-for-mobilenetv3", "dreamgaussian-generative-gaussian-splatting"]
    assert records["searching-for-mobilenetv3"]["labels"] == MOBILENET_TASKS
    assert records["searching-for-mobilenetv3"]["url"] == f"{server.url}/paper/searching-for-mobilenetv3"
    assert records["dreamgaussian-generative-gaussian-splatting"]["labels"] == []
    assert not server.requests_to("/paper/qwen-technical-report"), "robots.txt disallows it"
    assert len(server.requests_to("/robots.txt")) == 1
    # 10 listed + 1 from the file = 11: 2 written, 1 disallowed, 8 not on this server (404, not retried)
    assert "written 2, skipped 1 (disallowed by robots.txt 1), failed 8 (page 8)" in err
    assert len(server.hits) == 1 + 1 + 10


def test_pwc_html_on_an_archive_prefix_with_require_tasks(shared, server, tmp_path, capsys):
    prefix = "/web/2023/https://paperswithcode.com"
    server.add(f"{prefix}/paper/searching-for-mobilenetv3", Reply(shared(MOBILENET).read_bytes(), content_type="text/html"))
    server.add(f"{prefix}/paper/dreamgaussian-generative-gaussian-splatting",
               Reply(shared(DREAMGAUSSIAN).read_bytes(), content_type="text/html"))
    urls_file = tmp_path / "urls.txt"
    urls_file.write_text("/paper/dreamgaussian-generative-gaussian-splatting\n"
                         "https://paperswithcode.com/paper/searching-for-mobilenetv3\n".replace(
                             "https://paperswithcode.com", server.url + prefix))
    out = tmp_path / "archive.jsonl"
    code, _, err = scrape(capsys, "pwc-html", "--base-url", server.url + prefix, "--urls-file", str(urls_file),
                          "--require-tasks", "-o", str(out), *FAST)
    assert code == 0, err
    assert [r["id"] for r in read_jsonl(out)] == ["searching-for-mobilenetv3"]
    assert "skipped 1 (no tasks 1)" in err
    assert len(server.requests_to(f"{prefix}/paper/dreamgaussian-generative-gaussian-splatting")) == 1


# ---------------------------------------------------------------- Papers with Code: REST API


@pytest.fixture
def pwc_api(shared, server):
    """The real /papers/ page 1 (50 papers; its `next` names paperswithcode.com), a last page with the real
    GAN paper, the real empty task list for every paper, and a task list for the GAN paper."""
    page1 = shared("pwc_api_json/paper_list_response.json").read_bytes()
    gan = json.loads(shared("pwc_api_json/paper_get_response.json").read_text())
    page2 = {"count": 51, "next": None, "previous": "https://paperswithcode.com/api/v1/papers/?items_per_page=50",
             "results": [gan]}
    gan_tasks = {"count": 2, "next": None, "previous": None, "results": [
        {"id": "image-generation", "name": "Image Generation", "description": ""},
        {"id": "domain-adaptation", "name": "Domain Adaptation", "description": ""}]}
    server.add(re.compile(r"/api/v1/papers/[^/]+/tasks/"),
               Reply(shared("pwc_api_json/paper_task_list_response.json").read_bytes(), content_type="application/json"))
    server.add("/api/v1/papers/generative-adversarial-networks/tasks/", Reply(json.dumps(gan_tasks), content_type="application/json"))
    server.add("/api/v1/papers/", Reply(page1, content_type="application/json"), page=1)
    server.add("/api/v1/papers/", Reply(json.dumps(page2), content_type="application/json"), page=2)
    return f"{server.url}/api/v1"


def test_pwc_api_pages_and_tasks(pwc_api, server, tmp_path, capsys):
    out = tmp_path / "api.jsonl"
    code, _, err = scrape(capsys, "pwc-api", "--base-url", pwc_api, "-o", str(out), *FAST)
    assert code == 0, err
    records = read_jsonl(out)
    assert len(records) == 51
    first = records[0]
    assert (first["id"], first["title"], first["date"]) == (
        "neural-networks-and-physical-systems-with",
        "Neural networks and physical systems with emergent collective computational abilities", "1982-01-15")
    assert first["labels"] == [] and first["url"] == f"{server.url}/paper/neural-networks-and-physical-systems-with"
    gan = records[-1]
    assert (gan["id"], gan["arxiv_id"], gan["title"]) == ("generative-adversarial-networks", "1406.2661",
                                                          "Generative Adversarial Networks")
    assert gan["labels"] == ["Image Generation", "Domain Adaptation"] and gan["date"] == "2014-06-10"
    assert [h.query for h in server.requests_to("/api/v1/papers/")] == [
        {"page": "1", "items_per_page": "50"}, {"page": "2", "items_per_page": "50"}]
    assert sum("/tasks/" in h.path for h in server.hits) == 51


def test_pwc_api_require_tasks_and_lazy_max(pwc_api, server, tmp_path, capsys):
    code, _, err = scrape(capsys, "pwc-api", "--base-url", pwc_api, "--require-tasks",
                          "-o", str(tmp_path / "tasks.jsonl"), *FAST)
    assert code == 0, err
    assert [r["id"] for r in read_jsonl(tmp_path / "tasks.jsonl")] == ["generative-adversarial-networks"]
    assert "skipped 50 (no tasks 50)" in err
    server.hits.clear()
    assert scrape(capsys, "pwc-api", "--base-url", pwc_api, "--max", "5", "-o", str(tmp_path / "five.jsonl"), *FAST)[0] == 0
    assert len(read_jsonl(tmp_path / "five.jsonl")) == 5
    assert len(server.hits) == 1 + 5, "tasks are fetched only for papers that get written"


def test_pwc_api_numeric_and_unusable_paper_ids(server, tmp_path, capsys):
    """A numeric id (a mirror's) used to crash the run, at the same page on every rerun; it is taken as text
    now, and a paper whose id or title cannot be used is skipped and counted."""
    papers = [{"id": 12345, "title": "A paper with a number for an id", "abstract": "We test."},
              {"id": ["a", "list"], "title": "An id that is a list"},
              {"id": "a-slug", "title": "A slug as usual", "abstract": "We test again."},
              {"id": "numeric-title", "title": 7}]
    server.add(re.compile(r"/api/v1/papers/[^/]+/tasks/"), Reply(json.dumps(
        {"count": 2, "next": None, "results": [{"id": 9, "name": None}, {"id": "nlp", "name": "NLP"}]}),
        content_type="application/json"))
    server.add("/api/v1/papers/", Reply(json.dumps({"count": 4, "next": None, "results": papers}),
                                        content_type="application/json"))
    out = tmp_path / "api.jsonl"
    code, _, err = scrape(capsys, "pwc-api", "--base-url", f"{server.url}/api/v1", "-o", str(out), *FAST)
    assert code == 0, err
    assert "fetched 4, written 2, skipped 0, failed 2 (record 2)" in err
    records = read_jsonl(out)
    assert [(r["id"], r["labels"], r["url"]) for r in records] == [
        ("12345", ["9", "NLP"], f"{server.url}/paper/12345"), ("a-slug", ["9", "NLP"], f"{server.url}/paper/a-slug")]
    assert server.requests_to("/api/v1/papers/12345/tasks/")
    code, _, err = scrape(capsys, "pwc-api", "--base-url", f"{server.url}/api/v1", "-o", str(out), *FAST)
    assert code == 0 and "holds 2 records" in err, err


# ---------------------------------------------------------------- Papers with Code: archive dump


def dump_from_api_results(shared) -> list[dict]:
    """The dump layout (papers-with-abstracts.json), filled with the 50 real papers of the API fixture."""
    papers = json.loads(shared("pwc_api_json/paper_list_response.json").read_text())["results"]
    dump = [{"paper_url": f"https://paperswithcode.com/paper/{p['id']}", "arxiv_id": p["arxiv_id"],
             "title": p["title"], "abstract": p["abstract"], "url_abs": p["url_abs"], "url_pdf": p["url_pdf"],
             "proceeding": p["proceeding"], "authors": p["authors"], "tasks": [], "date": p["published"],
             "methods": []} for p in papers]
    dump[1]["tasks"] = ["Combinatorial Optimization"]
    dump[2]["tasks"] = ["Speech Recognition", "Language Modelling"]
    return dump


def test_pwc_dump_gz_file_streamed(shared, tmp_path, capsys):
    dump_path = tmp_path / "papers-with-abstracts.json.gz"
    with gzip.open(dump_path, "wt", encoding="utf-8") as f:
        json.dump(dump_from_api_results(shared), f)
    out = tmp_path / "dump.jsonl"
    code, _, err = scrape(capsys, "pwc-dump", str(dump_path), "--require-tasks", "-o", str(out), *FAST)
    assert code == 0, err
    records = read_jsonl(out)
    assert [(r["id"], r["labels"]) for r in records] == [
        ("optimization-by-simulated-annealing", ["Combinatorial Optimization"]),
        ("learning-internal-representations-by-error", ["Speech Recognition", "Language Modelling"])]
    assert records[0]["title"] == "Optimization by Simulated Annealing" and records[0]["date"] == "1983-05-13"
    assert "fetched 50, written 2, skipped 48 (no tasks 48)" in err


def test_pwc_dump_from_url(shared, server, tmp_path, capsys):
    dump = dump_from_api_results(shared)
    server.add("/papers-with-abstracts.json.gz", Reply(gzip.compress(json.dumps(dump).encode()), content_type="application/gzip"))
    out = tmp_path / "dump.jsonl"
    code, _, err = scrape(capsys, "pwc-dump", f"{server.url}/papers-with-abstracts.json.gz", "-o", str(out), *FAST)
    assert code == 0, err
    records = read_jsonl(out)
    assert len(records) == 50 and records[3]["id"] == "theory-and-practice" and records[3]["arxiv_id"] == "cs/9301114"


@pytest.mark.parametrize("content, message", [
    (None, "dump not found"),
    ('{"papers": []}', "is not a JSON array"),
    ('[{"paper_url": "https://paperswithcode.com/paper/a", "title": "A", "tasks": []}, {"paper_url": "ht', "not a valid JSON array"),
])
def test_pwc_dump_bad_input_is_one_line(tmp_path, capsys, content, message):
    dump_path = tmp_path / "dump.json"
    if content is not None:
        dump_path.write_text(content)
    code, _, err = scrape(capsys, "pwc-dump", str(dump_path), "-o", str(tmp_path / "o.jsonl"), *FAST)
    assert code == 2
    assert "papertasks scrape: error: " in err and message in err and "Traceback" not in err


# ---------------------------------------------------------------- CLI surface


def test_bad_url_scheme_is_one_line(tmp_path, capsys):
    code, _, err = scrape(capsys, "pwc-api", "--base-url", "ftp://mirror.example/api/v1", "-o", str(tmp_path / "x.jsonl"))
    assert code == 2 and "error: --base-url must be an http:// or https:// URL, got 'ftp://mirror.example/api/v1'" in err


@pytest.mark.parametrize("source", ["arxiv", "arxiv-oai", "pwc-dump", "pwc-html", "pwc-api"])
def test_help_has_examples(source, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["scrape", source, "--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    assert "examples:" in out and f"papertasks scrape {source} " in out and "--delay" in out


# ---------------------------------------------------------------- scraped JSONL feeds `prepare` directly


def test_scraped_jsonl_goes_straight_into_prepare(shared, server, capsys, tmp_path):
    """Two real arXiv responses scraped through the CLI, then `papertasks prepare` on the outputs as they are."""
    new_url = serve_atom(server, atom_pages(shared(NEW_ATOM).read_text(encoding="utf-8"), 10))
    outputs = [tmp_path / "new.jsonl", tmp_path / "legacy.jsonl"]
    assert scrape(capsys, "arxiv", "--query", "all:nicotine", "--page-size", "10", "--max", "10",
                  "--base-url", new_url, "-o", str(outputs[0]), *FAST)[0] == 0
    server.add("/legacy", Reply(shared(LEGACY_ATOM).read_bytes(), content_type=ATOM))
    assert scrape(capsys, "arxiv", "--categories", "cs.RO", "--page-size", "2", "--max", "2",
                  "--base-url", f"{server.url}/legacy", "-o", str(outputs[1]), *FAST)[0] == 0
    scraped = [r for out in outputs for r in read_jsonl(out)]
    assert len(scraped) == 12

    data = tmp_path / "data"
    assert main(["prepare", *map(str, outputs), "--out", str(data), "--labels-json", str(tmp_path / "labels.json"),
                 "--valid-frac", "0.2", "--test-frac", "0.2"]) == 0
    prepared = [json.loads(line) for name in ("train", "valid", "test") for line in open(data / f"{name}.jsonl")]
    assert sorted(r["id"] for r in prepared) == sorted(r["id"] for r in scraped)
    by_id = {r["id"]: r for r in scraped}
    for row in prepared:
        assert row["text"].startswith(by_id[row["id"]]["title"][:40])
        assert set(row["labels"]) <= set(by_id[row["id"]]["labels"])
    vocab = json.loads((tmp_path / "labels.json").read_text())
    assert "cs.RO" in vocab and "cond-mat.mes-hall" in vocab


# ---------------------------------------------------------------- Papers with Code: scraped tasks feed the task model's data


def test_scraped_pwc_tasks_merge_into_the_leaderboard_data_for_prepare(shared, server, pwc_api, tmp_path, capsys):
    """Pages and API, scraped through the CLI, then `prepare` with real Papers with Code leaderboard papers:
    a task named on a page and in the leaderboard file is one label (the names agree), so a user with a
    network can add fresher scraped papers to the data the shipped `pwc` bundle was trained on."""
    server.add("/paper/searching-for-mobilenetv3", Reply(shared(MOBILENET).read_bytes(), content_type="text/html"))
    urls_file = tmp_path / "urls.txt"
    urls_file.write_text("searching-for-mobilenetv3\n")
    html, api = tmp_path / "html.jsonl", tmp_path / "api.jsonl"
    assert scrape(capsys, "pwc-html", "--base-url", server.url, "--urls-file", str(urls_file), "-o", str(html), *FAST)[0] == 0
    assert scrape(capsys, "pwc-api", "--base-url", pwc_api, "--require-tasks", "-o", str(api), *FAST)[0] == 0

    leaderboard = SHARED / "data" / "pwc_leaderboard_tasks.jsonl.gz"
    if not leaderboard.is_file():
        pytest.skip(f"{leaderboard} not found")
    rows = []
    with gzip.open(leaderboard, "rt", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            if {"Image Classification", "Object Detection", "Image Generation"} & set(row["tasks"]):
                rows.append(row)
            if len(rows) == 150:
                break
    sample = tmp_path / "leaderboard.jsonl"
    sample.write_text("".join(json.dumps(r) + "\n" for r in rows))

    data = tmp_path / "data"
    assert main(["prepare", str(sample), str(html), str(api), "--out", str(data), "--min-count", "5",
                 "--labels-json", str(tmp_path / "labels.json"), "--valid-frac", "0.2", "--test-frac", "0.2"]) == 0
    report = json.loads((data / "report.json").read_text())
    assert report["problem"] == "multi-label"
    prepared = {r["id"]: r for name in ("train", "valid", "test") for r in read_jsonl(data / f"{name}.jsonl")}
    mobilenet, gan = prepared["searching-for-mobilenetv3"], prepared["generative-adversarial-networks"]
    assert {"Image Classification", "Object Detection"} <= set(mobilenet["labels"]) <= set(MOBILENET_TASKS)
    assert "Image Generation" in gan["labels"]
    counts = report["label_frequency"]["Image Classification"]
    assert sum(counts.values()) == 1 + sum("Image Classification" in r["tasks"] for r in rows)
