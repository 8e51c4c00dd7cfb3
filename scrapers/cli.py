"""`papertasks scrape SOURCE`: one sub-subcommand per source, all writing the same resumable JSONL."""
from __future__ import annotations

import argparse
import logging
import os
from datetime import date
from pathlib import Path

from papertasks.errors import UserError
from scrapers.http import FetchError, HttpSettings, PoliteClient

log = logging.getLogger(__name__)

SCRAPE_EPILOG = """\
every source writes JSONL lines: id, title, abstract, labels, source, url, date (+ extras),
ready for `papertasks prepare`. Rerun the same command to resume an interrupted run.

examples:
  papertasks scrape arxiv --categories cs.CL cs.LG --max 500 -o data/raw/arxiv_cscl.jsonl
  papertasks scrape arxiv-oai --set cs --from 2025-01-01 -o data/raw/arxiv_oai_cs.jsonl
  papertasks scrape pwc-dump papers-with-abstracts.json.gz --require-tasks -o data/raw/pwc.jsonl
  papertasks scrape pwc-html --base-url https://web.archive.org/web/2024/https://paperswithcode.com \\
      --listing / -o data/raw/pwc_html.jsonl
  papertasks scrape pwc-api --base-url https://MIRROR/api/v1 --max 200 -o data/raw/pwc_api.jsonl
"""

EPILOGS = {
    "arxiv": """\
labels = the paper's arXiv categories; newest submissions first (sortBy=submittedDate).
For more than a few thousand papers use arxiv-oai (arXiv's bulk interface).

examples:
  papertasks scrape arxiv --categories cs.CL cs.LG --max 500 -o data/raw/arxiv_cscl.jsonl
  papertasks scrape arxiv --categories cs.CV --since 2026-01-01 -o data/raw/arxiv_cv_2026.jsonl
  papertasks scrape arxiv --query 'abs:"retrieval augmented"' --page-size 200 -o data/raw/rag.jsonl
  papertasks scrape arxiv --categories cs.CL --dry-run -o x.jsonl      # show the first request
""",
    "arxiv-oai": """\
labels = the paper's arXiv categories (the first one is the primary). Deleted records are skipped.
The state file keeps the resumptionToken; if it expired, the harvest restarts and skips known ids.

examples:
  papertasks scrape arxiv-oai --set cs --from 2025-01-01 -o data/raw/arxiv_oai_cs.jsonl
  papertasks scrape arxiv-oai --set cs --from 2026-03-01 --until 2026-03-31 -o data/raw/cs_2026_03.jsonl
""",
    "pwc-dump": """\
labels = the paper's task names. The dump is streamed (never loaded whole), .gz or not.

examples:
  papertasks scrape pwc-dump papers-with-abstracts.json.gz --require-tasks -o data/raw/pwc_dump.jsonl
  papertasks scrape pwc-dump https://MIRROR/papers-with-abstracts.json.gz -o data/raw/pwc_dump.jsonl
""",
    "pwc-html": """\
labels = the task names listed on each paper page. robots.txt is respected (disallowed pages
are skipped and counted). Paper links are rebuilt against --base-url, so a web archive works too.

examples:
  papertasks scrape pwc-html --base-url https://web.archive.org/web/2024/https://paperswithcode.com \\
      --listing / -o data/raw/pwc_trending.jsonl
  papertasks scrape pwc-html --base-url https://web.archive.org/web/2024/https://paperswithcode.com \\
      --urls-file slugs.txt --require-tasks -o data/raw/pwc_archive.jsonl
  papertasks scrape pwc-html --base-url https://MIRROR --urls-file paper_urls.txt -o data/raw/pwc_html.jsonl
--urls-file: one per line, a full URL, a /paper/<slug> path or a bare slug; # starts a comment.
""",
    "pwc-api": """\
labels = the names from /papers/{id}/tasks/ (one extra request per paper). Pages are numbered
against --base-url; the absolute `next` links in answers are not followed.

examples:
  papertasks scrape pwc-api --max 200 -o data/raw/pwc_api.jsonl
  papertasks scrape pwc-api --base-url https://MIRROR/api/v1 --query transformer --require-tasks \\
      -o data/raw/pwc_api_transformer.jsonl
""",
}


def iso_date(text: str) -> str:
    """argparse type for YYYY-MM-DD (the form both arXiv interfaces expect)."""
    try:
        if len(text) == 10:
            return date.fromisoformat(text).isoformat()
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"expected a date like 2026-03-01, got {text!r}")


def _common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-o", "--output", required=True, help="JSONL to write (appended to and resumed; OUT.state.json beside it)")
    common.add_argument("--max", type=int, default=None, help="stop once the output holds this many records")
    common.add_argument("--dry-run", action="store_true", help="print the requests the run would start with; write nothing")
    polite = common.add_argument_group("politeness")
    polite.add_argument("--delay", type=float, default=3.0, help="seconds between requests; arXiv asks for 3 (default: %(default)s)")
    polite.add_argument("--timeout", type=float, default=HttpSettings.timeout,
                        help="seconds a request may take, to the last byte of its answer (a streamed dump: the most "
                             "between two reads) before it counts as failed (default: %(default)s)")
    polite.add_argument("--max-body-mb", type=float, default=HttpSettings.max_body_bytes / 2**20,
                        help="largest answer read, in MiB; a larger one fails without being read whole (the pwc-dump "
                             "download is streamed, with no limit) (default: %(default)s)")
    polite.add_argument("--max-retries", type=int, default=5, help="retries after 429/5xx/timeouts/bad bodies (default: %(default)s)")
    polite.add_argument("--backoff", type=float, default=2.0, help="seconds before the first retry; doubles, capped at 120 (default: %(default)s)")
    polite.add_argument("--contact", default=os.environ.get("PAPERTASKS_CONTACT"),
                        help="e-mail put in the User-Agent (default: $PAPERTASKS_CONTACT)")
    return common


def register(subparsers) -> None:
    """Add `scrape` and its sources to the `papertasks` command."""
    from scrapers.arxiv import DEFAULT_API_URL as ARXIV_URL
    from scrapers.arxiv_oai import DEFAULT_OAI_URL
    from scrapers.pwc_api import DEFAULT_API_URL as PWC_API_URL
    from scrapers.pwc_urls import DEFAULT_SITE

    scrape = subparsers.add_parser("scrape", help="fetch papers + labels from arXiv or Papers with Code into JSONL",
                                   description="Fetch papers with their labels into resumable JSONL.",
                                   epilog=SCRAPE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sources = scrape.add_subparsers(dest="source", metavar="SOURCE", required=True)
    common = [_common_options()]

    def add(name: str, help: str, handler):
        p = sources.add_parser(name, help=help, description=help, parents=common, epilog=EPILOGS[name],
                               formatter_class=argparse.RawDescriptionHelpFormatter)
        p.set_defaults(func=handler)
        return p

    p = add("arxiv", "the arXiv API (Atom): a search query or categories, newest first", _arxiv)
    p.add_argument("--query", help="arXiv search_query, e.g. 'ti:transformer AND abs:translation'")
    p.add_argument("--categories", nargs="+", metavar="CAT", help="e.g. cs.CL cs.LG (-> cat:cs.CL OR cat:cs.LG)")
    p.add_argument("--page-size", type=int, default=100, help="max_results per request, at most 2000 (default: %(default)s)")
    p.add_argument("--since", type=iso_date, help="stop at the first paper submitted before this date")
    p.add_argument("--base-url", default=ARXIV_URL, help="the API endpoint (default: %(default)s)")

    p = add("arxiv-oai", "arXiv OAI-PMH bulk harvest (ListRecords, metadataPrefix=arXiv)", _arxiv_oai)
    p.add_argument("--set", dest="set_spec", default="cs", help="OAI set: cs, math, physics:hep-th, ... (default: %(default)s)")
    p.add_argument("--from", dest="from_date", type=iso_date, help="records changed on or after this date")
    p.add_argument("--until", dest="until_date", type=iso_date, help="records changed on or before this date")
    p.add_argument("--base-url", default=DEFAULT_OAI_URL, help="the OAI-PMH endpoint (default: %(default)s)")

    p = add("pwc-dump", "a Papers with Code archive dump (papers-with-abstracts.json[.gz]), streamed", _pwc_dump)
    p.add_argument("dump", help="local path or http(s) URL of the dump")
    p.add_argument("--require-tasks", action="store_true", help="skip papers with no task")

    p = add("pwc-html", "Papers with Code paper pages (HTML) from a URL list or a listing page", _pwc_html)
    p.add_argument("--base-url", default=DEFAULT_SITE, help="the site, a mirror or a web-archive prefix (default: %(default)s)")
    p.add_argument("--urls-file", help="paper URLs, /paper/<slug> paths or slugs, one per line")
    p.add_argument("--listing", action="append", metavar="URL",
                   help="a page listing papers (e.g. / = trending); its /paper/<slug> links are scraped; repeatable")
    p.add_argument("--require-tasks", action="store_true", help="skip papers with no task")

    p = add("pwc-api", "the Papers with Code REST API v1 (/papers/ and /papers/{id}/tasks/)", _pwc_api)
    p.add_argument("--base-url", default=PWC_API_URL, help="the API root, any mirror (default: %(default)s)")
    p.add_argument("--items-per-page", type=int, default=50, help="papers per page (default: %(default)s)")
    p.add_argument("--query", help="the API's q= full-text filter")
    p.add_argument("--require-tasks", action="store_true", help="skip papers with no task")


def _arxiv(args):
    from scrapers.arxiv import ArxivSource, search_query

    _scrape(args, lambda client: ArxivSource(client, search_query(args.query, args.categories), args.page_size,
                                             args.since, args.base_url))


def _arxiv_oai(args):
    from scrapers.arxiv_oai import ArxivOaiSource

    _scrape(args, lambda client: ArxivOaiSource(client, args.set_spec, args.from_date, args.until_date,
                                                args.base_url))


def _pwc_dump(args):
    from scrapers.pwc_dump import PwcDumpSource

    _scrape(args, lambda client: PwcDumpSource(client, args.dump))


def _pwc_html(args):
    from scrapers.pwc_html import PwcHtmlSource

    _scrape(args, lambda client: PwcHtmlSource(client, args.base_url, args.urls_file, args.listing))


def _pwc_api(args):
    from scrapers.pwc_api import PwcApiSource

    _scrape(args, lambda client: PwcApiSource(client, args.base_url, args.items_per_page, args.query))


def _scrape(args, make_source) -> None:
    """Check the shared options, build the client and the source, run, turn a dead end into one line."""
    from scrapers.runner import RunOptions, run_source

    for name, value, minimum in (("--delay", args.delay, 0), ("--max-retries", args.max_retries, 0),
                                 ("--backoff", args.backoff, 0)):
        if value < minimum:
            raise UserError(f"{name} must be >= {minimum}, got {value}")
    for name, value in (("--timeout", args.timeout), ("--max-body-mb", args.max_body_mb)):
        if not value > 0:
            raise UserError(f"{name} must be > 0, got {value}")
    if args.max is not None and args.max < 1:
        raise UserError(f"--max must be >= 1, got {args.max}")
    if not args.contact and not args.dry_run:
        log.warning("no --contact (or $PAPERTASKS_CONTACT): please give an e-mail so site operators can reach you")
    client = PoliteClient(HttpSettings(delay=args.delay, timeout=args.timeout, max_retries=args.max_retries,
                                       backoff=args.backoff, contact=args.contact,
                                       max_body_bytes=int(args.max_body_mb * 2**20)))
    source = make_source(client)
    options = RunOptions(Path(args.output), args.max, getattr(args, "require_tasks", False), args.dry_run)
    try:
        run_source(source, client, options)
    except FetchError as e:
        raise UserError(f"{e}; run the same command again to resume from the last saved page") from None
