"""docs/architecture.md and docs/development.md stay true: every module, file and name they point at exists."""
from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ["docs/architecture.md", "docs/development.md"]


def _tree_paths(text: str) -> list[str]:
    """The files of the indented tree under '## The tree': 'dir/  a.py (...), b.py' -> dir/a.py, dir/b.py."""
    block = text.split("## The tree", 1)[1].split("\n## ", 1)[0]
    paths, folder = [], ""
    for line in block.splitlines():
        m = re.match(r"^ {6}(\S+/)\s+(.*)$", line)
        if m:
            folder, rest = m.group(1), m.group(2)
        elif line.startswith(" " * 22) and folder:
            rest = line.strip()
        else:
            if re.match(r"^ {6}\S", line):
                folder = ""
                rest = line.strip()  # top-level files: "ops.py  io.py ..."
            else:
                continue
        rest = re.sub(r"\([^()]*(\([^()]*\)[^()]*)*\)", "", rest)  # drop the explanations in parentheses
        for name in re.findall(r"[\w./]+\.(?:py|css|js)\b", rest):
            paths.append(f"src/sumofparts/{folder}{name}")
    return paths


def test_every_file_of_the_tree_exists():
    paths = _tree_paths((ROOT / "docs/architecture.md").read_text(encoding="utf-8"))
    assert len(paths) > 80  # the parser found the tree
    missing = [p for p in paths if not (ROOT / p).is_file()]
    assert not missing, missing
    # and the tree is complete: every module of the package is named
    named = set(paths)
    actual = {str(p.relative_to(ROOT)) for p in (ROOT / "src/sumofparts").rglob("*.py") if p.name != "__init__.py"
              and p.name != "__main__.py"}
    assert not actual - named, sorted(actual - named)


@pytest.mark.parametrize("doc", DOCS)
def test_every_module_and_path_named_exists(doc):
    text = (ROOT / doc).read_text(encoding="utf-8")
    for dotted in sorted(set(re.findall(r"`(sumofparts(?:\.\w+)+)`", text))):
        parts = dotted.split(".")
        for i in range(len(parts), 0, -1):  # a module, or an attribute of one
            try:
                obj = importlib.import_module(".".join(parts[:i]))
            except ModuleNotFoundError:
                continue
            for attr in parts[i:]:
                assert hasattr(obj, attr), f"{doc}: {dotted}"
                obj = getattr(obj, attr)
            break
        else:
            pytest.fail(f"{doc}: {dotted} does not exist")
    for path in sorted(set(re.findall(r"`((?:src|tests|docs|scripts|benchmarks)/[\w./-]+)`", text))):
        assert (ROOT / path).exists(), f"{doc}: {path}"
