"""The models the app and the REST API serve: bundle folders beside a models.json that lists them.

models.json maps each bundle's folder name to the title the picker shows and a description, in the
order they are offered; the first one present is the default. A listed folder that is missing is
skipped with a warning, so the Space starts with whatever has been exported so far. Each bundle is
loaded on first use and then kept. Standard library and predictor.py only: the Space runs it.

To serve another exported bundle, put it in deployment/models/NAME/ and add to models.json:
    "NAME": {"title": "What the picker shows", "description": "One sentence on what it tags"}
"""
from __future__ import annotations

import json
import logging
import re
import threading
from dataclasses import dataclass
from pathlib import Path

try:  # imported as part of the papertasks package, or as a sibling module in the Space
    from .predictor import BundleError, Predictor
except ImportError:
    from predictor import BundleError, Predictor

log = logging.getLogger(__name__)

REGISTRY_FILE = "models.json"
TOP_CLASSES = 3  # a single-label model answers with its best classes, this many unless asked otherwise
_FOLDER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # a bundle folder beside models.json, never a path


class RegistryError(BundleError):
    """models.json is unreadable or malformed, or none of the bundles it lists is present."""


class UnknownModelError(LookupError):
    """A request named a model that is not served; the message lists the ones that are."""


@dataclass(frozen=True)
class ModelEntry:
    name: str  # the bundle's folder name: what API callers send as `model`
    title: str
    description: str
    path: Path


def read_registry(models_dir: str | Path) -> list[ModelEntry]:
    """The bundles models_dir/models.json lists whose folders are present, in the listed order."""
    path = Path(models_dir) / REGISTRY_FILE
    try:
        listed = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RegistryError(f"{path}: cannot be read ({e})") from None
    example = '{"arxiv": {"title": "arXiv category", "description": "..."}}'
    if not isinstance(listed, dict) or not listed:
        raise RegistryError(f"{path}: expected an object of bundle folder -> title and description, like {example}")
    entries = []
    for name, info in listed.items():
        if not _FOLDER_NAME.match(name) or not isinstance(info, dict) or not isinstance(info.get("title"), str):
            raise RegistryError(f"{path}: entry {name!r} needs a bundle folder name as its key and a 'title', "
                                f"like {example}")
        folder = path.parent / name
        if not folder.is_dir():
            log.warning("%s lists %r, but %s is missing: not serving it", path, name, folder)
            continue
        entries.append(ModelEntry(name, info["title"], str(info.get("description", "")), folder))
    if not entries:
        raise RegistryError(f"{path}: none of the bundles it lists ({', '.join(listed)}) is in {path.parent}")
    return entries


class Registry:
    """The served models by name; each one's Predictor is loaded on first use and kept."""

    def __init__(self, entries: list[ModelEntry]):
        self.entries = {entry.name: entry for entry in entries}
        self.default = entries[0].name
        self._predictors: dict[str, Predictor] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_path(cls, path: str | Path) -> Registry:
        """A folder with models.json serves the bundles it lists; any other folder is one bundle,
        served alone under its folder's name."""
        folder = Path(path)
        if (folder / REGISTRY_FILE).is_file():
            return cls(read_registry(folder))
        name = folder.resolve().name
        return cls([ModelEntry(name, name, "", folder)])

    def entry(self, name: str | None = None) -> ModelEntry:
        """The named model, or the default one for None."""
        entry = self.entries.get(self.default if name is None else name)
        if entry is None:
            raise UnknownModelError(f"unknown model {str(name)[:64]!r}; the models served are: "
                                    f"{', '.join(self.entries)}")
        return entry

    def predictor(self, name: str | None = None) -> Predictor:
        """The named model's Predictor, loaded now if this is its first use (BundleError if its bundle is bad)."""
        entry = self.entry(name)
        predictor = self._predictors.get(entry.name)
        if predictor is None:
            with self._lock:  # two first requests at once load the bundle once
                predictor = self._predictors.get(entry.name)
                if predictor is None:
                    predictor = self._predictors[entry.name] = Predictor(entry.path)
                    if predictor.integrity.startswith("unchecked"):
                        log.warning("%s: %s; file integrity not checked", entry.path,
                                    predictor.integrity.split(": ", 1)[1])
        return predictor
