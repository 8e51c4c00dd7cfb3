"""What every stage's command-line module shares: each option's default is read from where it is
declared (a config dataclass or the function the command calls), never written again in a parser."""
from __future__ import annotations

import argparse
import dataclasses
import inspect


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
