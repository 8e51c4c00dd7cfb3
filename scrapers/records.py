"""The one output schema every source writes, so `papertasks prepare` reads any scrape the same way."""
from __future__ import annotations

import re

ARXIV_ID_WITH_VERSION = re.compile(r"(?P<id>(?:[a-z\-]+(?:\.[A-Z]{2})?/\d{7}|\d{4}\.\d{4,5}))(?P<version>v\d+)?$")


class BadRecord(ValueError):
    """One entry that cannot become a record (no id, no title...): logged, counted failed, skipped."""


def clean_text(text: str | None) -> str:
    """Collapse every run of whitespace (arXiv wraps titles and abstracts at ~80 columns)."""
    return " ".join((text or "").split())


def split_arxiv_version(raw: str) -> tuple[str, str | None]:
    """'http://arxiv.org/abs/2510.14968v1' -> ('2510.14968', 'v1'); old style 'q-bio/0509018v2' too."""
    match = ARXIV_ID_WITH_VERSION.search(raw.strip())
    if not match:
        raise BadRecord(f"not an arXiv id: {raw!r}")
    return match["id"], match["version"]


def paper_record(*, id: str, title: str | None, abstract: str | None, labels: list[str], source: str,
                 url: str | None, date: str | None, **extras) -> dict:
    """Build one output line: `id, title, abstract, labels, source, url, date`, then source extras."""
    for field, value in (("title", title), ("abstract", abstract)):
        if value is not None and not isinstance(value, str):
            raise BadRecord(f"{id}: its {field} is not text but {type(value).__name__} {str(value)[:40]!r}")
    title, abstract = clean_text(title), clean_text(abstract)
    if not id:
        raise BadRecord("no id")
    if not title:
        raise BadRecord(f"{id}: no title")
    unique_labels = list(dict.fromkeys(clean_text(label) for label in labels if clean_text(label)))
    return {"id": id, "title": title, "abstract": abstract, "labels": unique_labels, "source": source,
            "url": url, "date": date or None, **extras}
