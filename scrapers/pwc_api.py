"""Papers with Code REST API v1: `/papers/` pages, then `/papers/{id}/tasks/` for each paper's tasks.

Pages are requested by number against `--base-url`. The `next` link in each answer only says
whether another page exists: it is never followed, because it names the original host
(https://paperswithcode.com/api/v1/...), which would send a run aimed at a mirror back to the
closed site. The cursor is the page number.
"""
from __future__ import annotations

import logging
from typing import Callable, Iterator
from urllib.parse import quote

import requests

from papertasks.errors import UserError
from scrapers.http import BadResponse, FetchError, HttpStatusError, PoliteClient, require_http_url
from scrapers.pwc_urls import DEFAULT_SITE, paper_page_url
from scrapers.records import BadRecord, paper_record
from scrapers.runner import Page, RunStats

log = logging.getLogger(__name__)

DEFAULT_API_URL = f"{DEFAULT_SITE}/api/v1"


def parse_listing(response: requests.Response) -> dict:
    """A paginated answer: {count, next, previous, results: [...]}; anything else is a bad body."""
    try:
        data = response.json()
    except ValueError as e:
        raise BadResponse(f"not JSON: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("results"), list):
        raise BadResponse("no 'results' list")
    return data


def name_of(value) -> str | None:
    """An id or a name from the API as text: the API's are strings (slugs), a mirror's may be whole numbers;
    None for anything else (nothing, a list, an object)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return (value.strip() or None) if isinstance(value, str) else None


def paper_id(paper) -> str:
    """The paper's id as text; BadRecord (the paper is skipped and counted) when it has none that is usable."""
    found = name_of(paper.get("id")) if isinstance(paper, dict) else None
    if found is None:
        raise BadRecord(f"a paper without a usable id: {str(paper)[:100]}")
    return found


def paper_to_record(paper: dict, tasks: list[str], site: str) -> dict:
    slug = paper_id(paper)
    return paper_record(
        id=slug,
        title=paper.get("title"),
        abstract=paper.get("abstract"),
        labels=tasks,
        source="pwc-api",
        url=paper_page_url(site, slug),
        date=paper.get("published"),
        arxiv_id=paper.get("arxiv_id"),
        authors=paper.get("authors") or [],
        proceeding=paper.get("proceeding"),
        url_abs=paper.get("url_abs"),
    )


class PwcApiSource:
    """One page of `items_per_page` papers per checkpoint; each paper costs one more request (its tasks)."""

    name = "pwc-api"

    def __init__(self, client: PoliteClient, api_url: str = DEFAULT_API_URL, items_per_page: int = 50,
                 query: str | None = None):
        self.client = client
        self.api_url = require_http_url(api_url.rstrip("/"), "--base-url")
        if items_per_page < 1:
            raise UserError(f"--items-per-page must be at least 1, got {items_per_page}")
        self.items_per_page, self.query = items_per_page, query
        # The paper pages live on the site the API belongs to: https://host/api/v1 -> https://host
        self.site = self.api_url.removesuffix("/api/v1")
        self.identity = {"api_url": self.api_url, "query": query}

    def _params(self, page: int) -> dict:
        params = {"page": page, "items_per_page": self.items_per_page}
        if self.query:
            params["q"] = self.query
        return params

    def plan(self, cursor: dict | None) -> list[str]:
        page = (cursor or {}).get("page", 1)
        first = requests.Request("GET", f"{self.api_url}/papers/", params=self._params(page)).prepare().url
        return [f"GET {first}", f"then GET {self.api_url}/papers/<id>/tasks/ for each paper on the page",
                f"then page={page + 1}, {page + 2}, ... while the answer has a 'next' link"]

    def pages(self, cursor: dict | None, have: Callable[[str], bool], stats: RunStats) -> Iterator[Page]:
        page = (cursor or {}).get("page", 1)
        last_page = None  # known from `count` once a page has been read
        while True:
            try:
                listing = self.client.fetch(f"{self.api_url}/papers/", self._params(page), parse=parse_listing)
            except HttpStatusError as e:
                raise UserError(f"the PwC API refused the request: {e}") from None
            except FetchError as e:
                if last_page is None or page >= last_page:
                    raise
                log.error("skipping papers page %d: %s", page, e)
                stats.failed["page"] += 1
                page += 1
                yield Page([], {"page": page})
                continue
            if isinstance(listing.get("count"), int):
                last_page = -(-listing["count"] // self.items_per_page)
            more = bool(listing.get("next"))
            yield Page(self._records(listing["results"], have, stats), {"page": page + 1} if more else None)
            if not more:
                return
            page += 1

    def _records(self, papers: list, have: Callable[[str], bool], stats: RunStats) -> Iterator[dict]:
        for paper in papers:
            stats.fetched += 1
            try:
                slug = paper_id(paper)
                if have(slug):
                    stats.skipped["duplicate"] += 1
                    continue
                yield paper_to_record(paper, self._task_names(slug), self.site)
            except (FetchError, BadRecord) as e:
                log.error("skipping a paper: %s", e)
                stats.failed["record"] += 1

    def _task_names(self, slug: str) -> list[str]:
        url = f"{self.api_url}/papers/{quote(slug, safe='')}/tasks/"
        names, page = [], 1
        while True:
            listing = self.client.fetch(url, {"page": page} if page > 1 else None, parse=parse_listing)
            names += [name_of(t.get("name")) or name_of(t.get("id")) or "" for t in listing["results"]
                      if isinstance(t, dict)]
            if not listing.get("next"):
                return names
            page += 1
