"""The README's set-up commands and CI stay in step."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _setup_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Set up", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.DOTALL)
    assert block is not None, "README's Set up section has no bash block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_readme_opens_with_two_commands() -> None:
    commands = _setup_commands()
    assert len(commands) == 2
    assert commands[0].endswith("critprint demo")
    assert "pytest" in commands[1]


def test_ci_runs_readme_test_command() -> None:
    script = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    lines = [line.strip() for line in script.splitlines() if line.strip() and not line.startswith("#")]
    assert _setup_commands()[1] in lines


def test_zoo_doc_lists_every_model() -> None:
    import json

    manifest = json.loads((ROOT / "src" / "critprint" / "zoo" / "manifest.json").read_text(encoding="utf-8"))
    doc = (ROOT / "docs" / "zoo.md").read_text(encoding="utf-8")
    missing = [entry["name"] for entry in manifest if f"`{entry['name']}`" not in doc]
    assert missing == []
