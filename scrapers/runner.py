"""The loop every source shares: resume from the saved cursor, skip known ids, write, checkpoint, summarize.

A source only knows how to turn a cursor into pages of records; everything about the output file,
--max, --require-tasks, progress and the final summary is handled here, once.
"""
from __future__ import annotations

import logging
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, NamedTuple, Protocol

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from scrapers.http import PoliteClient
from scrapers.output import ResumableJsonl, RunState, fingerprint

log = logging.getLogger(__name__)


class Page(NamedTuple):
    records: Iterable[dict]  # may be lazy: per-paper requests happen as the runner asks for records
    next_cursor: dict | None  # where the page after this one starts; None = the source is exhausted


@dataclass
class RunStats:
    """Counts for the end-of-run summary; sources add their own skip/failure reasons."""

    fetched: int = 0
    written: int = 0
    skipped: Counter = field(default_factory=Counter)
    failed: Counter = field(default_factory=Counter)

    def summary(self, requests_made: int, output: Path, records_in_output: int) -> str:
        def detail(counts: Counter) -> str:
            return f" ({', '.join(f'{k} {v}' for k, v in sorted(counts.items()))})" if counts else ""

        return (f"summary: fetched {self.fetched}, written {self.written}, "
                f"skipped {sum(self.skipped.values())}{detail(self.skipped)}, "
                f"failed {sum(self.failed.values())}{detail(self.failed)}; "
                f"{requests_made} requests; {output} holds {records_in_output} records")


class Source(Protocol):
    name: str
    identity: dict  # the arguments that define the result set (not politeness settings)

    def plan(self, cursor: dict | None) -> list[str]:
        """Lines for --dry-run: the requests the run would start with."""

    def pages(self, cursor: dict | None, have: Callable[[str], bool], stats: RunStats) -> Iterator[Page]:
        """Pages from `cursor` on; `have(id)` lets a source skip papers already written before fetching more."""


@dataclass
class RunOptions:
    output: Path
    max_records: int | None = None
    require_labels: bool = False
    dry_run: bool = False


def run_source(source: Source, client: PoliteClient, options: RunOptions) -> RunStats:
    """Scrape `source` into `options.output`, resuming a previous run of the same command."""
    identity = {"source": source.name, **source.identity}
    this_fingerprint = fingerprint(identity)
    state = RunState.load(options.output)
    same_command = state is not None and state.fingerprint == this_fingerprint
    cursor = state.cursor if same_command else None
    stats = RunStats()

    if options.dry_run:
        if same_command:
            print(f"# resuming {options.output} at {cursor or 'the first page'}" + (" (already complete)" if state.done else ""))
        print("\n".join(source.plan(cursor)))
        return stats

    sink = ResumableJsonl(options.output)
    try:
        if same_command and state.done:
            log.info("%s is already complete for these arguments; delete %s.state.json to fetch again",
                     options.output, options.output.name)
            return stats
        if state is not None and not same_command:
            log.warning("%s was written with other arguments: starting from the first page "
                        "(the %d ids already there are skipped)", options.output, len(sink))
        if _full(sink, options):
            log.info("%s already holds %d records (--max %d)", options.output, len(sink), options.max_records)
            return stats
        with logging_redirect_tqdm(), tqdm(total=options.max_records, initial=len(sink), unit="paper",
                                          desc=source.name, file=sys.stderr, disable=None) as progress:
            for page in source.pages(cursor, sink.__contains__, stats):
                for record in page.records:
                    _write(record, sink, stats, options, progress)
                    if _full(sink, options):
                        return stats  # no checkpoint: a rerun with a larger --max redoes this page, deduplicated
                sink.sync()
                RunState(this_fingerprint, identity, page.next_cursor, page.next_cursor is None).save(options.output)
        return stats
    finally:
        sink.close()
        print(stats.summary(client.requests_made, options.output, len(sink)), file=sys.stderr)


def _full(sink: ResumableJsonl, options: RunOptions) -> bool:
    return options.max_records is not None and len(sink) >= options.max_records


def _write(record: dict, sink: ResumableJsonl, stats: RunStats, options: RunOptions, progress: tqdm) -> None:
    if record["id"] in sink:
        stats.skipped["duplicate"] += 1
    elif options.require_labels and not record["labels"]:
        stats.skipped["no tasks"] += 1
    else:
        sink.append(record)
        stats.written += 1
        progress.update(1)
