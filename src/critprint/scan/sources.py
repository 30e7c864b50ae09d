"""Sources of a scan: model files, folders of them, and manifests.

A manifest is a JSON-lines file (``.jsonl``), one model per line::

    {"path": "uploads/a.safetensors", "name": "upload-a", "task": "denoise"}
    {"path": "uploads/b.onnx", "options": {"protocol": "paper"}}

``path`` is required. A relative path is read from the manifest's folder, and
``zoo:NAME`` names a bundled model. ``name`` defaults to the file's stem and
``task`` to the one inferred from the model. ``options`` may set the keys of
:data:`ITEM_OPTIONS`.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from critprint.errors import InvalidInputError
from critprint.protocol import PRESETS, TASKS
from critprint.registry import check_name

__all__ = ["MODEL_SUFFIXES", "ITEM_OPTIONS", "ScanItem", "collect_items", "read_manifest", "default_name"]

logger = logging.getLogger(__name__)

MODEL_SUFFIXES = (".pth", ".pt", ".ckpt", ".safetensors", ".onnx")
"""Files a folder source contributes; other files in it are left out."""

ITEM_OPTIONS: dict[str, type | tuple[type, ...]] = {
    "protocol": str,
    "size": int,
    "iterations": int,
    "seed": int,
    "torchscript": bool,
    "arch": str,
    "arch_kwargs": dict,
}
"""Per-model options a manifest may set, with their JSON types."""


@dataclass(frozen=True)
class ScanItem:
    """One model of a scan.

    Attributes:
        name: Unique within the scan; the key of its result line, and the
            fingerprint name when registering.
        path: The model file, or ``zoo:NAME``.
        task: The restoration task, or None to infer it from the model.
        options: Per-model settings (:data:`ITEM_OPTIONS`) over the scan's.
    """

    name: str
    path: str
    task: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return the item as a JSON-compatible dictionary."""
        return asdict(self)


def default_name(path: str) -> str:
    """Return a fingerprint name made from a model path: its stem, with other characters as '-'.

    >>> default_name("uploads/acme denoiser v2.safetensors"), default_name("zoo:dncnn")
    ('acme-denoiser-v2', 'dncnn')
    """
    stem = path[len("zoo:"):] if path.startswith("zoo:") else Path(path).stem
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).lstrip("._-")[:128]
    return name or "model"


def _check_options(options: Any, where: str) -> dict[str, Any]:
    if not isinstance(options, dict):
        raise InvalidInputError(f"{where}: options must be a JSON object, got {type(options).__name__}")
    for key, value in options.items():
        if key not in ITEM_OPTIONS:
            raise InvalidInputError(
                f"{where}: unknown option {key!r}; valid options are {', '.join(sorted(ITEM_OPTIONS))}"
            )
        expected = ITEM_OPTIONS[key]
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise InvalidInputError(f"{where}: option {key!r} expects {getattr(expected, '__name__', expected)}, "
                                    f"got {value!r}")
    protocol = options.get("protocol")
    if protocol is not None and protocol not in PRESETS:
        raise InvalidInputError(f"{where}: unknown protocol {protocol!r}; valid protocols are {', '.join(PRESETS)}")
    return dict(options)


def read_manifest(path: Path) -> list[ScanItem]:
    """Read a JSON-lines manifest.

    Raises:
        InvalidInputError: On a line that is not a JSON object with a
            ``path``, or with an unknown key, task or option.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise InvalidInputError(f"cannot read manifest {path}: {error.strerror}") from None
    items = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"manifest {path} line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise InvalidInputError(f"{where} is not JSON ({error.msg}); write one JSON object per line") from None
        if not isinstance(record, dict) or not isinstance(record.get("path"), str):
            raise InvalidInputError(f'{where}: expected an object with a "path" string, got {line.strip()[:80]}')
        unknown = set(record) - {"path", "name", "task", "options"}
        if unknown:
            raise InvalidInputError(
                f"{where}: unknown key {sorted(unknown)[0]!r}; valid keys are path, name, task, options"
            )
        model = record["path"]
        if not model.startswith("zoo:"):
            model = str((path.parent / model).absolute())
        name = record.get("name", default_name(model))
        if not isinstance(name, str):
            raise InvalidInputError(f"{where}: name must be a string, got {name!r}")
        try:
            check_name(name)
        except InvalidInputError as error:
            raise InvalidInputError(f"{where}: {error}") from None
        task = record.get("task")
        if task is not None and task not in TASKS:
            raise InvalidInputError(f"{where}: unknown task {task!r}; valid tasks are {', '.join(TASKS)}")
        items.append(ScanItem(name, model, task, _check_options(record.get("options", {}), where)))
    return items


def _folder_items(folder: Path) -> list[ScanItem]:
    items = []
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix.lower() in MODEL_SUFFIXES:
            items.append(ScanItem(default_name(str(path)), str(path.absolute())))
        elif path.is_file():
            logger.debug("skipping %s: not a model file (%s)", path, ", ".join(MODEL_SUFFIXES))
    return items


def collect_items(sources: list[str]) -> list[ScanItem]:
    """Expand sources into scan items, in the order given.

    Args:
        sources: Model files, ``zoo:NAME``, folders (searched recursively for
            :data:`MODEL_SUFFIXES`) and ``.jsonl`` manifests. Paths become
            absolute, so workers started elsewhere (Ray) find the same files.

    Raises:
        InvalidInputError: If a source does not exist, a manifest is
            malformed, nothing is found, or two models get the same name.
    """
    items: list[ScanItem] = []
    for source in sources:
        if source.startswith("zoo:"):
            items.append(ScanItem(default_name(source), source))
            continue
        path = Path(source).expanduser()
        if path.is_dir():
            found = _folder_items(path)
            if not found:
                logger.warning("folder %s contains no model file (%s)", path, ", ".join(MODEL_SUFFIXES))
            items.extend(found)
        elif path.suffix.lower() == ".jsonl":
            items.extend(read_manifest(path))
        elif path.exists():
            items.append(ScanItem(default_name(source), str(path.absolute())))
        else:
            raise InvalidInputError(f"scan source {source!r} does not exist; pass model files, folders or a .jsonl manifest")
    if not items:
        raise InvalidInputError(
            f"no model found in {', '.join(sources)}; model files end in {', '.join(MODEL_SUFFIXES)}"
        )
    seen: dict[str, str] = {}
    for item in items:
        if item.name in seen:
            raise InvalidInputError(
                f"two models of the scan are both named {item.name!r} ({seen[item.name]} and {item.path}); "
                "give them distinct names in a .jsonl manifest"
            )
        seen[item.name] = item.path
    return items
