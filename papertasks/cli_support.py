"""What every stage's command-line module shares: each option's default is read from where it is
declared (a config dataclass or the function the command calls), never written again in a parser;
and the bounds of counts and fractions, checked where they are used, with the same one-line messages."""
from __future__ import annotations

import argparse
import dataclasses
import inspect

from papertasks.errors import UserError


def declared_defaults(source) -> dict:
    """Defaults of a dataclass's fields or of a function's keyword parameters."""
    if dataclasses.is_dataclass(source):
        return {f.name: f.default for f in dataclasses.fields(source) if f.default is not dataclasses.MISSING}
    return {name: p.default for name, p in inspect.signature(source).parameters.items()
            if p.default is not inspect.Parameter.empty}


def use_defaults(parser: argparse.ArgumentParser, *sources, **renamed) -> None:
    """Give the parser's options the defaults declared in `sources` (the first that declares a name
    wins); `renamed` maps an option's dest to the name it has there. --help shows them as usual."""
    dests = {action.dest for action in parser._actions}
    found = {}
    for source in reversed(sources):
        found.update(declared_defaults(source))
    found.update({dest: found[name] for dest, name in renamed.items()})
    parser.set_defaults(**{dest: value for dest, value in found.items() if dest in dests})


def check_count(flag: str, value: int, most: int | None = None) -> None:
    """A count flag (--batch-size, --workers, --top-k, --max-rows, ...) must be at least 1 and, for processes, at
    most the cores: 0 or less would do nothing (or garbage), more than the cores only adds contention."""
    if value < 1:
        raise UserError(f"{flag} {value}: give at least 1")
    if most is not None and value > most:
        raise UserError(f"{flag} {value}: this machine has {most} cores; give at most {most}")


def check_fraction(flag: str, value: float) -> None:
    """A fraction flag (--valid-frac, --test-frac) must lie strictly between 0 and 1."""
    if not 0 < value < 1:
        raise UserError(f"{flag} {value}: give a fraction between 0 and 1 (both excluded), such as 0.1")
