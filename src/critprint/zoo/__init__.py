"""Small restoration models trained by this project and shipped with it.

The models, their training photos and held-out scores are listed in
``manifest.json`` beside this file; ``python -m critprint.zoo.train`` rebuilds
them. Each weight file is a plain safetensors state dict that spandrel
detects.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from critprint.errors import ModelLoadError

__all__ = ["ZooEntry", "ZOO_DIR", "list_models", "get_entry", "model_path"]

ZOO_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class ZooEntry:
    """One bundled model as the manifest describes it."""

    name: str
    task: str
    architecture: str
    scale: int
    channels: int
    file: str
    details: dict[str, Any]
    group: str = "source"
    """``source``, or the hard-negative family the model belongs to."""

    def to_dict(self) -> dict[str, Any]:
        """Return the entry as ``name``, ``task``, ``architecture``, ``scale``, ``channels``, ``group`` and ``path``."""
        return {
            "name": self.name,
            "task": self.task,
            "architecture": self.architecture,
            "scale": self.scale,
            "channels": self.channels,
            "group": self.group,
            "path": str(ZOO_DIR / self.file),
        }


@cache
def list_models() -> tuple[ZooEntry, ...]:
    """Return the bundled models in manifest order."""
    manifest = ZOO_DIR / "manifest.json"
    if not manifest.exists():
        return ()
    entries = []
    for item in json.loads(manifest.read_text(encoding="utf-8")):
        entries.append(
            ZooEntry(
                name=item["name"],
                task=item["task"],
                architecture=item["architecture"],
                scale=int(item["scale"]),
                channels=int(item["channels"]),
                file=item["file"],
                details=item,
                group=item.get("group", "source"),
            )
        )
    return tuple(entries)


def get_entry(name: str) -> ZooEntry:
    """Return the bundled model called ``name``.

    Raises:
        ModelLoadError: If no bundled model has that name.
    """
    for entry in list_models():
        if entry.name == name:
            return entry
    names = ", ".join(entry.name for entry in list_models()) or "none"
    raise ModelLoadError(f"unknown bundled model {name!r}; expected one of: {names}")


def model_path(name: str) -> Path:
    """Return the path of a bundled model's weight file."""
    return ZOO_DIR / get_entry(name).file
