"""robots.txt for HTML pages: fetched once per site through the polite client, then asked per URL.

APIs and dumps are meant for programs; HTML pages are not, so only the HTML source consults this.
"""
from __future__ import annotations

import logging
from urllib.parse import urlsplit
from urllib.robotparser import RobotFileParser

from scrapers.http import AGENT_NAME, FetchError, HttpStatusError, PoliteClient

log = logging.getLogger(__name__)


class RobotsRules:
    """Answers `allowed(url)` for our User-Agent, caching one robots.txt per scheme://host."""

    def __init__(self, client: PoliteClient):
        self.client = client
        self._by_site: dict[str, RobotFileParser] = {}

    def allowed(self, url: str) -> bool:
        parts = urlsplit(url)
        site = f"{parts.scheme}://{parts.netloc}"
        if site not in self._by_site:
            self._by_site[site] = self._load(site)
        return self._by_site[site].can_fetch(AGENT_NAME, url)

    def _load(self, site: str) -> RobotFileParser:
        rules = RobotFileParser(f"{site}/robots.txt")
        try:
            response = self.client.fetch(f"{site}/robots.txt")
        except HttpStatusError as e:
            # The robotparser convention: 401/403 = everything forbidden, other 4xx = no rules.
            if e.status in (401, 403):
                rules.disallow_all = True
            else:
                rules.allow_all = True
        except FetchError as e:
            log.warning("robots.txt of %s unreachable (%s): skipping that site's pages", site, e)
            rules.disallow_all = True
        else:
            rules.parse(response.text.splitlines())
        return rules
