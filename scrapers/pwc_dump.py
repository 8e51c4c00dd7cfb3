"""Papers with Code archive dump (`papers-with-abstracts.json[.gz]`), streamed from a file or a URL.

The dump is one JSON array of several hundred thousand papers (GBs uncompressed), so it is read
item by item with ijson and never held in memory. The cursor is the number of array items already
consumed; a rerun skips that many (parsing them again is cheap next to downloading them twice).
"""
from __future__ import annotations

import gzip
import io
import itertools
import logging
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

import ijson
import urllib3

from papertasks.errors import UserError
from scrapers.http import FetchError, PoliteClient, require_http_url
from scrapers.pwc_urls import slug_from_paper_url
from scrapers.records import BadRecord, paper_record
from scrapers.runner import Page, RunStats

log = logging.getLogger(__name__)

ITEMS_PER_CHECKPOINT = 1000
GZIP_MAGIC = b"\x1f\x8b"


def item_to_record(item) -> dict:
    """One dump object -> the output schema; `labels` = its task names."""
    if not isinstance(item, dict):
        raise BadRecord(f"expected a paper object, got {type(item).__name__}")
    paper_url = item.get("paper_url") or ""
    paper_id = slug_from_paper_url(paper_url) or item.get("arxiv_id")
    tasks = [t.get("name", "") if isinstance(t, dict) else str(t) for t in item.get("tasks") or []]
    return paper_record(
        id=paper_id,
        title=item.get("title"),
        abstract=item.get("abstract"),
        labels=tasks,
        source="pwc-dump",
        url=paper_url or item.get("url_abs"),
        date=item.get("date"),
        arxiv_id=item.get("arxiv_id"),
        authors=item.get("authors") or [],
        proceeding=item.get("proceeding"),
    )


class PwcDumpSource:
    """One long 'page' cut into chunks of ITEMS_PER_CHECKPOINT items, each a checkpoint."""

    name = "pwc-dump"

    def __init__(self, client: PoliteClient, location: str):
        self.client, self.location = client, location
        if "://" in location:
            require_http_url(location, "the dump")
        elif not Path(location).is_file():
            raise UserError(f"dump not found: {location}")
        self.identity = {"dump": location}

    def plan(self, cursor: dict | None) -> list[str]:
        skip = (cursor or {}).get("item", 0)
        where = f"GET {self.location} (streamed)" if "://" in self.location else f"read {self.location} (streamed)"
        return [where, f"skip the first {skip} items, then one record per paper object"]

    def pages(self, cursor: dict | None, have: Callable[[str], bool], stats: RunStats) -> Iterator[Page]:
        consumed = (cursor or {}).get("item", 0)
        with self._open() as stream:
            items = ijson.items(stream, "item", use_float=True)
            try:
                for _ in itertools.islice(items, consumed):
                    pass
                while True:
                    chunk = list(itertools.islice(items, ITEMS_PER_CHECKPOINT))
                    consumed += len(chunk)
                    if not chunk:
                        yield Page([], None)
                        return
                    yield Page(self._records(chunk, stats), {"item": consumed})
            except ijson.JSONError as e:
                raise UserError(f"{self.location} is not a valid JSON array of papers (near item {consumed}): {e}") from None

    def _records(self, items: list, stats: RunStats) -> list[dict]:
        records = []
        for item in items:
            stats.fetched += 1
            try:
                records.append(item_to_record(item))
            except BadRecord as e:
                log.warning("skipping a bad dump item: %s", e)
                stats.failed["record"] += 1
        return records

    @contextmanager
    def _open(self) -> Iterator[BinaryIO]:
        """A binary stream of the JSON text, gunzipped when the bytes say so (whatever the name says)."""
        if "://" in self.location:
            response = self.client.fetch(self.location, stream=True)
            response.raw.decode_content = True  # undo a Content-Encoding: gzip on the transfer
            response.raw.auto_close = False  # gzip reads once more past the end: answer b"", not "closed file"
            raw, closer = response.raw, response
        else:
            raw = closer = open(self.location, "rb", buffering=0)
        try:
            stream = io.BufferedReader(raw)
            if stream.peek(2)[:2] == GZIP_MAGIC:
                stream = io.BufferedReader(gzip.GzipFile(fileobj=stream))
            if stream.peek(64).lstrip()[:1] != b"[":
                raise UserError(f"{self.location} is not a JSON array (a PwC dump starts with '[')")
            yield stream
        except (OSError, EOFError, FetchError, urllib3.exceptions.HTTPError) as e:
            raise UserError(f"cannot read {self.location}: {e}") from None
        finally:
            closer.close()
