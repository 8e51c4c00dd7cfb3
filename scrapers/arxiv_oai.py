"""arXiv OAI-PMH source: bulk harvest of one set (`cs`, ...) in the `arXiv` metadata format.

This is arXiv's endorsed way to fetch many thousands of papers. The first request names the set and
dates; every later one carries only `verb` and the `resumptionToken` the previous page ended with,
which is also what the state file keeps so an interrupted harvest goes on from the same page.
"""
from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Callable, Iterator

import requests

from papertasks.errors import UserError
from scrapers.http import BadResponse, PoliteClient, require_http_url
from scrapers.records import BadRecord, clean_text, paper_record
from scrapers.runner import Page, RunStats

log = logging.getLogger(__name__)

DEFAULT_OAI_URL = "https://oaipmh.arxiv.org/oai"
NS = {"oai": "http://www.openarchives.org/OAI/2.0/", "arxiv": "http://arxiv.org/OAI/arXiv/"}


class ExpiredToken(Exception):
    """The server no longer knows the saved resumptionToken (they expire after a while)."""


@dataclass
class OaiPage:
    records: list[ET.Element] = field(default_factory=list)  # <record> elements, deleted ones included
    token: str | None = None  # None or empty = last page


def parse_list_records(xml: bytes) -> OaiPage:
    """One ListRecords answer; `noRecordsMatch` is an empty harvest, other OAI errors are fatal."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as e:
        raise BadResponse(f"not well-formed XML: {e}") from None
    if root.tag != f"{{{NS['oai']}}}OAI-PMH":
        raise BadResponse(f"expected <OAI-PMH>, got <{root.tag}>")
    error = root.find("oai:error", NS)
    if error is not None:
        code = error.get("code")
        if code == "noRecordsMatch":
            return OaiPage()
        if code == "badResumptionToken":
            raise ExpiredToken(clean_text(error.text))
        raise UserError(f"OAI-PMH error {code}: {clean_text(error.text)}")
    listing = root.find("oai:ListRecords", NS)
    if listing is None:
        raise BadResponse("no <ListRecords> and no <error>")
    token = listing.findtext("oai:resumptionToken", None, NS)
    return OaiPage(listing.findall("oai:record", NS), clean_text(token) or None)


def record_to_paper(record: ET.Element) -> dict | None:
    """One <record> -> the output schema; None for a deleted record (header status="deleted")."""
    header = record.find("oai:header", NS)
    if header is not None and header.get("status") == "deleted":
        return None
    meta = record.find("oai:metadata/arxiv:arXiv", NS)
    if meta is None:
        raise BadRecord(f"{record.findtext('oai:header/oai:identifier', '?', NS)}: no arXiv metadata")
    arxiv_id = clean_text(meta.findtext("arxiv:id", "", NS))
    categories = meta.findtext("arxiv:categories", "", NS).split()
    authors = [clean_text(f"{a.findtext('arxiv:forenames', '', NS)} {a.findtext('arxiv:keyname', '', NS)} "
                          f"{a.findtext('arxiv:suffix', '', NS)}")
               for a in meta.findall("arxiv:authors/arxiv:author", NS)]
    return paper_record(
        id=arxiv_id,
        title=meta.findtext("arxiv:title", None, NS),
        abstract=meta.findtext("arxiv:abstract", None, NS),
        labels=categories,
        source="arxiv-oai",
        url=f"https://arxiv.org/abs/{arxiv_id}",
        date=meta.findtext("arxiv:created", None, NS),
        primary_category=categories[0] if categories else None,  # arXiv lists the primary first
        updated=meta.findtext("arxiv:updated", None, NS),
        doi=clean_text(meta.findtext("arxiv:doi", None, NS)) or None,
        journal_ref=clean_text(meta.findtext("arxiv:journal-ref", None, NS)) or None,
        authors=authors,
    )


class ArxivOaiSource:
    """ListRecords pages; the cursor is the resumptionToken that fetches the next page."""

    name = "arxiv-oai"

    def __init__(self, client: PoliteClient, set_spec: str | None, from_date: str | None, until_date: str | None,
                 oai_url: str = DEFAULT_OAI_URL):
        self.client, self.oai_url = client, require_http_url(oai_url, "--base-url")
        self.first_params = {"verb": "ListRecords", "metadataPrefix": "arXiv"}
        for key, value in (("set", set_spec), ("from", from_date), ("until", until_date)):
            if value:
                self.first_params[key] = value
        self.identity = {"oai_url": oai_url, **self.first_params}

    def _params(self, token: str | None) -> dict:
        return {"verb": "ListRecords", "resumptionToken": token} if token else self.first_params

    def plan(self, cursor: dict | None) -> list[str]:
        token = (cursor or {}).get("resumptionToken")
        first = requests.Request("GET", self.oai_url, params=self._params(token)).prepare().url
        return [f"GET {first}", "then GET ?verb=ListRecords&resumptionToken=<token from each page> "
                                "until a page ends with an empty resumptionToken"]

    def pages(self, cursor: dict | None, have: Callable[[str], bool], stats: RunStats) -> Iterator[Page]:
        token = (cursor or {}).get("resumptionToken")
        while True:
            try:
                page = self.client.fetch(self.oai_url, self._params(token),
                                         parse=lambda r: parse_list_records(r.content))
            except ExpiredToken as e:
                if token is None:
                    raise UserError(f"OAI-PMH server rejected the first request: {e}") from None
                log.warning("the saved resumptionToken expired (%s): harvesting again from the first page; "
                            "papers already written are skipped", e)
                token = None
                continue
            yield Page(self._papers(page.records, stats), {"resumptionToken": page.token} if page.token else None)
            if not page.token:
                return
            token = page.token

    def _papers(self, records: list[ET.Element], stats: RunStats) -> list[dict]:
        papers = []
        for record in records:
            stats.fetched += 1
            try:
                paper = record_to_paper(record)
            except BadRecord as e:
                log.warning("skipping a bad OAI record: %s", e)
                stats.failed["record"] += 1
                continue
            if paper is None:
                stats.skipped["deleted"] += 1
            else:
                papers.append(paper)
        return papers
