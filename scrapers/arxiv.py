"""arXiv API source (Atom feed): a search query or category list, newest submissions first, paged.

Both response layouts are read with a namespace-aware parser: the older one (opensearch and arxiv
prefixes declared on each element) and the 2025+ one (prefixes declared on <feed>, arxiv:doi and
arxiv:journal_ref inside entries). Element names and namespaces are the same in both; only where the
prefixes are declared and the element order differ, which a real XML parser does not care about.
"""
from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Callable, Iterator

import requests

from papertasks.errors import UserError
from scrapers.http import BadResponse, FetchError, HttpStatusError, PoliteClient, require_http_url
from scrapers.records import BadRecord, clean_text, paper_record, split_arxiv_version
from scrapers.runner import Page, RunStats

log = logging.getLogger(__name__)

DEFAULT_API_URL = "http://export.arxiv.org/api/query"
MAX_PAGE_SIZE = 2000  # the API refuses larger slices
NS = {
    "atom": "http://www.w3.org/2005/Atom",
    "opensearch": "http://a9.com/-/spec/opensearch/1.1/",
    "arxiv": "http://arxiv.org/schemas/atom",
}


@dataclass
class Feed:
    total: int
    start: int
    entries: list[ET.Element]


def search_query(query: str | None, categories: list[str] | None) -> str:
    """`--categories cs.CL cs.LG` -> 'cat:cs.CL OR cat:cs.LG'; with --query too, both must hold."""
    parts = []
    if categories:
        parts.append(" OR ".join(f"cat:{c}" for c in categories))
    if query:
        parts.append(query)
    if not parts:
        raise UserError("give --query or --categories")
    return " AND ".join(f"({p})" for p in parts) if len(parts) > 1 else parts[0]


def parse_feed(xml: bytes) -> Feed:
    """Parse one Atom page; a truncated or non-Atom body raises BadResponse (the client retries it)."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as e:
        raise BadResponse(f"not well-formed XML: {e}") from None
    if root.tag != f"{{{NS['atom']}}}feed":
        raise BadResponse(f"expected an Atom <feed>, got <{root.tag}>")
    total = root.findtext("opensearch:totalResults", namespaces=NS)
    start = root.findtext("opensearch:startIndex", namespaces=NS)
    entries = root.findall("atom:entry", NS)
    errors = [e for e in entries if "/api/errors" in (e.findtext("atom:id", "", NS))]
    if errors:
        raise UserError(f"arXiv API error: {clean_text(errors[0].findtext('atom:summary', '', NS))}")
    if total is None:
        raise BadResponse("no opensearch:totalResults")
    return Feed(int(total), int(start or 0), entries)


def entry_to_record(entry: ET.Element) -> dict:
    """One <entry> -> the output schema (labels = all categories, primary first as arXiv lists them)."""
    arxiv_id, version = split_arxiv_version(entry.findtext("atom:id", "", NS))
    primary = entry.find("arxiv:primary_category", NS)
    categories = [c.get("term") for c in entry.findall("atom:category", NS) if c.get("term")]
    published = entry.findtext("atom:published", None, NS)
    return paper_record(
        id=arxiv_id,
        title=entry.findtext("atom:title", None, NS),
        abstract=entry.findtext("atom:summary", None, NS),
        labels=categories,
        source="arxiv",
        url=f"https://arxiv.org/abs/{arxiv_id}",
        date=published[:10] if published else None,
        version=version,
        primary_category=primary.get("term") if primary is not None else (categories[0] if categories else None),
        published=published,
        updated=entry.findtext("atom:updated", None, NS),
        doi=entry.findtext("arxiv:doi", None, NS),
        journal_ref=clean_text(entry.findtext("arxiv:journal_ref", None, NS)) or None,
        authors=[clean_text(a.findtext("atom:name", "", NS)) for a in entry.findall("atom:author", NS)],
    )


def _raise_api_error(error: HttpStatusError):
    """arXiv answers a bad query with HTTP 400 and an Atom feed whose one entry explains it."""
    try:
        parse_feed(error.body.encode("utf-8"))  # raises UserError with arXiv's own message
    except BadResponse:
        pass
    raise UserError(f"arXiv refused the request: {error}") from None


class ArxivSource:
    """Pages of `page_size` entries sorted by submittedDate, newest first; the cursor is `start`."""

    name = "arxiv"

    def __init__(self, client: PoliteClient, query: str, page_size: int, since: str | None,
                 api_url: str = DEFAULT_API_URL):
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise UserError(f"--page-size must be between 1 and {MAX_PAGE_SIZE}, got {page_size}")
        self.client, self.query, self.page_size, self.since = client, query, page_size, since
        self.api_url = require_http_url(api_url, "--base-url")
        self.identity = {"query": query, "since": since, "api_url": api_url}

    def params(self, start: int) -> dict:
        return {"search_query": self.query, "start": start, "max_results": self.page_size,
                "sortBy": "submittedDate", "sortOrder": "descending"}

    def plan(self, cursor: dict | None) -> list[str]:
        start = (cursor or {}).get("start", 0)
        first = requests.Request("GET", self.api_url, params=self.params(start)).prepare().url
        stop = f", stopping at the first paper submitted before {self.since}" if self.since else ""
        return [f"GET {first}", f"then start={start + self.page_size}, {start + 2 * self.page_size}, ... "
                f"until the results (or --max) run out{stop}"]

    def pages(self, cursor: dict | None, have: Callable[[str], bool], stats: RunStats) -> Iterator[Page]:
        start = (cursor or {}).get("start", 0)
        total = None
        while total is None or start < total:
            try:
                feed = self._fetch_page(start)
            except HttpStatusError as e:
                _raise_api_error(e)
            except FetchError as e:
                if total is None:
                    raise
                log.error("skipping the page at start=%d: %s", start, e)
                stats.failed["page"] += 1
                start += self.page_size
                yield Page([], {"start": start})
                continue
            if feed is None:
                return
            total = feed.total
            records, reached_since = self._records(feed.entries, stats)
            start += len(feed.entries)
            exhausted = reached_since or start >= total
            yield Page(records, None if exhausted else {"start": start})
            if exhausted:
                return

    def _fetch_page(self, start: int) -> Feed | None:
        """The page at `start`; arXiv sometimes answers an empty page before the end, so ask again."""
        for attempt in range(self.client.settings.max_retries + 1):
            feed = self.client.fetch(self.api_url, self.params(start), parse=lambda r: parse_feed(r.content))
            if feed.entries or start >= feed.total:
                return feed
            log.warning("arXiv sent an empty page at start=%d of %d results; asking again", start, feed.total)
        log.warning("arXiv keeps sending empty pages at start=%d: stopping there", start)
        return None

    def _records(self, entries: list[ET.Element], stats: RunStats) -> tuple[list[dict], bool]:
        records = []
        for entry in entries:
            stats.fetched += 1
            try:
                record = entry_to_record(entry)
            except BadRecord as e:
                log.warning("skipping a bad arXiv entry: %s", e)
                stats.failed["record"] += 1
                continue
            if self.since and record["date"] and record["date"] < self.since:
                stats.skipped[f"before {self.since}"] += 1
                return records, True
            records.append(record)
        return records, False
