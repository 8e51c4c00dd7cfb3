"""Bundle integrity: `manifest.json` lists every file of a model bundle with its size and sha256.

`papertasks export` writes it as the last step before the bundle is swapped into place, and
`papertasks evaluate` rewrites it after it updates thresholds.json / metrics.json / MODEL_CARD.md.
`Predictor` checks it at start, so a bundle whose files were changed, truncated by a partial copy or
mixed with another bundle's files is refused with one line naming the files.

A bundle without manifest.json (written before manifests existed, a bare ONNX folder such as the
fp32 export, or one whose manifest was deleted) is refused by `Predictor` unless it is allowed
(`--allow-unsigned`); then its integrity is reported as unchecked (`/health` shows it and
`papertasks serve` / `worker` / the app log a warning). Standard library only: the Space runs it.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path

MANIFEST = "manifest.json"
VERSION = 1
# Files the predictor reads: one of these on disk but not in the manifest is refused, because it
# changes what is served. Other unlisted files (a README dropped beside the bundle) are ignored.
SERVED_FILES = ("model.onnx", "tokenizer.json", "labels.json", "config.json", "thresholds.json", "bag.npz",
                "label_names.json")


class ManifestError(ValueError):
    """The bundle's files do not match its manifest.json (or the manifest is unreadable)."""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _bundle_files(bundle: Path) -> list[str]:
    """Regular files under the bundle (relative POSIX paths), hidden files and the manifest excluded."""
    names = []
    for path in sorted(bundle.rglob("*")):
        rel = path.relative_to(bundle)
        if path.is_file() and not any(part.startswith(".") for part in rel.parts) and rel.as_posix() != MANIFEST:
            names.append(rel.as_posix())
    return names


def build_manifest(bundle_dir: str | os.PathLike) -> dict:
    bundle = Path(bundle_dir)
    files = {name: {"sha256": sha256_file(bundle / name), "bytes": (bundle / name).stat().st_size}
             for name in _bundle_files(bundle)}
    return {"version": VERSION, "algorithm": "sha256",
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "files": files}


def write_manifest(bundle_dir: str | os.PathLike) -> dict:
    """(Re)write bundle_dir/manifest.json for the files there now; atomic (temp file + rename)."""
    bundle = Path(bundle_dir)
    manifest = build_manifest(bundle)
    fd, tmp = tempfile.mkstemp(prefix=f".{MANIFEST}.", suffix=".tmp", dir=bundle)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(manifest, indent=2) + "\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, bundle / MANIFEST)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return manifest


def read_manifest(bundle_dir: str | os.PathLike) -> dict | None:
    """The parsed manifest, None when the bundle has none; ManifestError when it is malformed."""
    path = Path(bundle_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ManifestError(f"{path}: not valid JSON ({e}); re-run `papertasks export`") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not all(isinstance(v, dict) and "sha256" in v for v in files.values()):
        raise ManifestError(f"{path}: no 'files' table of sha256 checksums; re-run `papertasks export`")
    return manifest


def verify_bundle(bundle_dir: str | os.PathLike) -> str:
    """Check every file against manifest.json. Returns a short status for /health
    ('verified: N files' or 'unchecked: no manifest.json'); raises ManifestError naming every
    file that is missing, differs, or is served but not listed."""
    bundle = Path(bundle_dir)
    manifest = read_manifest(bundle)
    if manifest is None:
        return f"unchecked: no {MANIFEST}"
    problems = []
    for name, entry in manifest["files"].items():
        path = bundle / name
        if not path.is_file():
            problems.append(f"{name} is missing")
        elif "bytes" in entry and path.stat().st_size != entry["bytes"]:
            problems.append(f"{name} has {path.stat().st_size} bytes, not {entry['bytes']}")
        elif sha256_file(path) != entry["sha256"]:
            problems.append(f"{name} has a different sha256")
    for name in SERVED_FILES:
        if (bundle / name).is_file() and name not in manifest["files"]:
            problems.append(f"{name} is not listed")
    if problems:
        raise ManifestError(f"{bundle}: files do not match {MANIFEST} ({'; '.join(problems)}): the bundle was "
                            "changed or copied incompletely; copy it again or re-run `papertasks export`")
    return f"verified: {len(manifest['files'])} files"


def bundle_fingerprint(bundle_dir: str | os.PathLike) -> str | None:
    """A short id of the bundle's exact contents (sha256 of its manifest's file table), or None
    without a manifest. The API stamps jobs with it so a worker serving another bundle refuses them."""
    manifest = read_manifest(bundle_dir)
    if manifest is None:
        return None
    table = json.dumps(manifest["files"], sort_keys=True).encode()
    return hashlib.sha256(table).hexdigest()[:16]
