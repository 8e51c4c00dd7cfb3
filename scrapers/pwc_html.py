"""Papers with Code paper pages (HTML) from a URL list or a listing page, on any mirror or web archive.

Selectors follow the real pages (October 2023 captures): the title is `div.paper-title h1`, the
abstract `div.paper-abstract p`, the tasks the links inside `div.paper-tasks` (a `<div>`; the
edit-tasks dialog repeats them in `<ul class="paper-tasks">`, which must not be read twice), and
the date `datePublished` in the JSON-LD block. robots.txt is respected for every page.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Callable, Iterator

from bs4 import BeautifulSoup

from papertasks.errors import UserError
from scrapers.http import FetchError, PoliteClient, require_http_url
from scrapers.pwc_urls import DEFAULT_SITE, paper_page_url, resolve, slug_from_paper_url
from scrapers.records import BadRecord, clean_text, paper_record, split_arxiv_version
from scrapers.robots import RobotsRules
from scrapers.runner import Page, RunStats

log = logging.getLogger(__name__)


def paper_links(listing_html: bytes, site: str) -> list[str]:
    """Every distinct `/paper/<slug>` link of a listing page, in page order, rebuilt against `site`."""
    soup = BeautifulSoup(listing_html, "lxml")
    slugs = (slug_from_paper_url(a["href"]) for a in soup.find_all("a", href=True))
    return [paper_page_url(site, slug) for slug in dict.fromkeys(s for s in slugs if s)]


def parse_paper_page(html: bytes, slug: str, url: str) -> dict:
    """One paper page -> the output schema; `labels` = the task names (possibly none)."""
    soup = BeautifulSoup(html, "lxml")
    title = soup.select_one("div.paper-title h1")
    if title is None:
        raise BadRecord(f"{url}: no div.paper-title h1 (not a paper page?)")
    abstract = " ".join(p.get_text(" ") for p in soup.select("div.paper-abstract p"))
    tasks = [a.get_text(" ") for a in soup.select("div.paper-tasks a[href*='/task/']")]
    arxiv_link = soup.select_one("div.paper-abstract a[href*='arxiv.org/abs/']")
    return paper_record(
        id=slug,
        title=title.get_text(" "),
        abstract=abstract,
        labels=tasks,
        source="pwc-html",
        url=url,
        date=_date_published(soup),
        arxiv_id=split_arxiv_version(arxiv_link["href"])[0] if arxiv_link else None,
        authors=[clean_text(a.get_text(" ")) for a in soup.select("div.paper-title span.author-span")],
    )


def _date_published(soup: BeautifulSoup) -> str | None:
    """`datePublished` of the JSON-LD ScholarlyArticle (PwC nests it in "@graph")."""
    for script in soup.select('script[type="application/ld+json"]'):
        try:
            data = json.loads(script.string or "")
        except ValueError:
            continue
        graph = data.get("@graph") if isinstance(data, dict) else None
        for node in [data, *(graph if isinstance(graph, list) else [graph])]:
            if isinstance(node, dict) and node.get("datePublished"):
                return str(node["datePublished"])[:10]
    return None


class PwcHtmlSource:
    """All the paper URLs in one page of work; rerunning skips slugs already written, so no cursor is needed."""

    name = "pwc-html"

    def __init__(self, client: PoliteClient, site: str = DEFAULT_SITE, urls_file: str | None = None,
                 listings: list[str] | None = None):
        self.client, self.site = client, require_http_url(site.rstrip("/"), "--base-url")
        self.robots = RobotsRules(client)
        if not urls_file and not listings:
            raise UserError("give --urls-file FILE and/or --listing URL")
        self.listings = [require_http_url(resolve(self.site, link), "--listing") for link in listings or []]
        self.urls = self._read_urls_file(Path(urls_file)) if urls_file else []
        self.identity = {"site": self.site, "listings": self.listings,
                         "urls_sha256": hashlib.sha256("\n".join(self.urls).encode()).hexdigest()}

    def _read_urls_file(self, path: Path) -> list[str]:
        if not path.is_file():
            raise UserError(f"--urls-file not found: {path}")
        urls = []
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            url = require_http_url(resolve(self.site, line), f"{path}:{lineno}")
            if not slug_from_paper_url(url):
                raise UserError(f"{path}:{lineno}: not a /paper/<slug> URL: {line}")
            urls.append(url)
        return urls

    def plan(self, cursor: dict | None) -> list[str]:
        lines = [f"GET {url} (listing: then each /paper/<slug> it links to)" for url in self.listings]
        lines += [f"GET {url}" for url in self.urls[:20]]
        if len(self.urls) > 20:
            lines.append(f"... and {len(self.urls) - 20} more paper pages")
        return lines + ["robots.txt of each site is fetched first; disallowed pages are skipped"]

    def pages(self, cursor: dict | None, have: Callable[[str], bool], stats: RunStats) -> Iterator[Page]:
        yield Page(self._records(have, stats), None)

    def _records(self, have: Callable[[str], bool], stats: RunStats) -> Iterator[dict]:
        for url in dict.fromkeys(self.urls + self._listed_urls(stats)):
            slug = slug_from_paper_url(url)
            if have(slug):
                stats.skipped["duplicate"] += 1
            elif not self.robots.allowed(url):
                log.info("robots.txt disallows %s: skipped", url)
                stats.skipped["disallowed by robots.txt"] += 1
            else:
                try:
                    html = self.client.fetch(url, parse=lambda r: r.content)
                    stats.fetched += 1
                    yield parse_paper_page(html, slug, url)
                except FetchError as e:
                    log.error("skipping %s: %s", url, e)
                    stats.failed["page"] += 1
                except BadRecord as e:
                    log.error("skipping %s", e)
                    stats.failed["record"] += 1

    def _listed_urls(self, stats: RunStats) -> list[str]:
        urls = []
        for listing in self.listings:
            if not self.robots.allowed(listing):
                log.warning("robots.txt disallows the listing %s: skipped", listing)
                stats.skipped["disallowed by robots.txt"] += 1
                continue
            try:
                urls += paper_links(self.client.fetch(listing, parse=lambda r: r.content), self.site)
            except FetchError as e:
                log.error("skipping the listing %s: %s", listing, e)
                stats.failed["listing"] += 1
        return urls
