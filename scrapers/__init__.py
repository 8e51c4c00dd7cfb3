"""Scrapers: fetch papers and their labels (arXiv categories, Papers with Code tasks) into JSONL.

Run them through `papertasks scrape SOURCE` (see `scrapers.cli`). Every source writes the schema of
`scrapers.records.paper_record`, through the resumable writer in `scrapers.output`, politely
(`scrapers.http`).
"""
