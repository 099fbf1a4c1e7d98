"""The manifest that marks a folder as one this tool wrote: each file's SHA-256. ``--force`` replaces only a
folder that has one and is unchanged since (no other entry, every hash as recorded), never the user's own."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


def write_manifest(folder: Path, name: str, kind: str) -> None:
    """Record every regular file now in ``folder`` (but the manifest ``name`` itself) under the format ``kind``."""
    files = {p.name: sha256(p) for p in sorted(folder.iterdir()) if p.name != name}
    (folder / name).write_text(json.dumps({"format": kind, "files": files}, indent=1) + "\n")


def unchanged_output(folder: Path, name: str, kind: str) -> str | None:
    """None when ``folder`` is as ``write_manifest(folder, name, kind)`` left it; else why not."""
    if folder.is_symlink() or not folder.is_dir():
        return "not a folder"
    try:
        manifest = json.loads((folder / name).read_text(encoding="utf-8"))
        recorded = manifest["files"] if manifest.get("format") == kind else None
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        recorded = None
    if not isinstance(recorded, dict) or not all(isinstance(v, str) for v in recorded.values()):
        return f"it has no {name} that flax2torch wrote"
    names = {p.name for p in folder.iterdir()}
    if names != {*recorded, name}:
        return f"it holds {sorted(names)}, not only the {sorted({*recorded, name})} written"
    if any((folder / entry).is_symlink() or not (folder / entry).is_file() for entry in names):
        return "one of its entries is not a regular file"
    changed = [entry for entry in sorted(recorded) if recorded[entry] != sha256(folder / entry)]
    return f"{', '.join(changed)} changed since it was written" if changed else None


def sha256(path: Path) -> str:
    """The hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
