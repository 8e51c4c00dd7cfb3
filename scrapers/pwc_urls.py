"""Papers with Code URLs against any base (the old site, a mirror, a web archive): slugs in, URLs out.

A mirror or an archive keeps the `/paper/<slug>` tail of every link but may prefix it
(`https://web.archive.org/web/2024/https://paperswithcode.com/paper/<slug>`), so paper links are
matched on that tail and rebuilt by plain concatenation with the base (urljoin would drop the prefix).
"""
from __future__ import annotations

import re

PAPER_PATH = re.compile(r"/paper/(?P<slug>[^/?#]+)/?(?:[?#].*)?$")
DEFAULT_SITE = "https://paperswithcode.com"


def slug_from_paper_url(url: str) -> str | None:
    """'https://paperswithcode.com/paper/searching-for-mobilenetv3' -> 'searching-for-mobilenetv3'."""
    match = PAPER_PATH.search(url or "")
    return match["slug"] if match else None


def paper_page_url(site: str, slug: str) -> str:
    return f"{site.rstrip('/')}/paper/{slug}"


def resolve(site: str, link: str) -> str:
    """An absolute URL stays; '/path' and bare slugs are taken relative to `site`."""
    link = link.strip()
    if "://" in link:
        return link
    if link.startswith("/"):
        return site.rstrip("/") + link
    return paper_page_url(site, link)
