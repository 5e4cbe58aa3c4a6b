"""The shape of the code: a family is one place.

No module of bbx outside a family's own files (those whose path names it), and no test helper
module (everything in tests/ that is not a ``test_*.py`` file), names a family in code:
identifiers and string literals, case-insensitively. Comments and docstrings may. A transformers
image-processor class name (``ConvNextImageProcessor``, which other families' checkpoints name
too) is a preprocessing recipe, not the family, and a library's own function (``np.clip``) is the
library's name. A family's own names for the networks it loads are not other families' names
either: its catalog rows spell their checkpoints as the hub does (``openai/clip-vit-base-patch32``
is a CLIP checkpoint, ``facebook/deit-base-patch16-224`` a ViT one), and the timm architectures it
declares or claims as its counterpart, with their pretrained tags, are timm's names
(``vit_small_patch14_dinov2`` in the timm ViT family's table, ``vit_*_dinov2`` as DINOv2's
counterpart, the tag ``tinyclip_yfcc15m``).
"""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

import pytest

from bbx import preprocess, registry
from tests.cli import ROOT

#: modules whose attributes are the library's names, not bbx's (``np.clip``, ``torch.clip``)
LIBRARIES = frozenset({"np", "numpy", "torch", "F", "nn"})
PROCESSOR_NAMES = re.compile(
    r"^(%s)(%s)?$" % ("|".join(preprocess._CLASSES), "|".join(preprocess._SUFFIXES)),  # noqa: UP031
)


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = getattr(node, "body", [])
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def code_words(path: Path) -> tuple[tuple[int, str], ...]:
    """(line, text) of every identifier and string literal of a Python file, docstrings left out."""
    return _code_words(path, path.stat().st_mtime_ns)


@functools.cache
def _code_words(path: Path, mtime_ns: int) -> tuple[tuple[int, str], ...]:
    """:func:`code_words`, parsed once per file version (every family's check reads every file)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _docstrings(tree)
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            out.append((line, node.value))
        elif isinstance(node, ast.Name):
            out.append((line, node.id))
        elif isinstance(node, ast.Attribute):
            if not (isinstance(node.value, ast.Name) and node.value.id in LIBRARIES):
                out.append((line, node.attr))
        elif isinstance(node, ast.arg):
            out.append((line, node.arg))
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.append((line, node.name))
        elif isinstance(node, ast.alias):
            out.extend((line, part) for part in filter(None, (node.name, node.asname)))
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.append((line, node.module))
        elif isinstance(node, ast.keyword) and node.arg:
            out.append((line, node.arg))
    return tuple(out)


def _helpers() -> list[Path]:
    bbx_files = sorted((ROOT / "bbx").rglob("*.py"))
    test_helpers = [p for p in sorted((ROOT / "tests").rglob("*.py")) if not p.name.startswith("test_")]
    return bbx_files + test_helpers


@functools.cache
def own_names(rel: Path) -> frozenset[str]:
    """The names the family whose package holds ``rel`` gives the networks it loads (lowercase):
    its catalog's aliases and hub ids, the timm architectures it declares (and their default
    pretrained tags) or claims as its counterpart (patterns); none outside a family's package."""
    parts = rel.parts
    if len(parts) < 3 or parts[:2] != ("bbx", "families"):
        return frozenset()
    for fam in registry.families():
        if fam.name == parts[2]:
            names = {n.lower() for row in fam.catalog for n in row.names}
            if fam.timm is not None:
                names |= {n.lower() for a in fam.timm.architectures for n in (a.name, a.tag)}
            if fam.timm_counterpart is not None:
                names |= {p.lower() for p in fam.timm_counterpart.patterns}
            return frozenset(names)
    return frozenset()


def naming(family_name: str) -> list[str]:
    """Where code outside the family's own files names ``family_name``."""
    word = family_name.lower()
    found = []
    for path in _helpers():
        rel = path.relative_to(ROOT)
        if word in str(rel).lower():
            continue  # the family's own files
        own = own_names(rel)
        for line, text in code_words(path):
            if text.lower() in own:  # a hub id, an alias: the whole literal
                continue
            for token in re.findall(r"[A-Za-z0-9_]+", text):
                if token.lower() in own:  # a timm architecture inside a longer literal
                    continue
                if word in token.lower() and not PROCESSOR_NAMES.match(token):
                    found.append(f"{rel}:{line}: {text[:80]!r}")
                    break
    return found


@pytest.mark.parametrize("family", [f.name for f in registry.families()])
def test_no_code_outside_a_family_names_it(family):
    assert naming(family) == []


def test_the_checker_sees_names_in_code_and_not_in_docstrings(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        '"""Mentions swin in a docstring."""\n# and swin in a comment\nx = "swin-tiny"\nswin_rows = 1\n'
        "y = np.clip(x, 0, 1) + rows.swin_layer\n"
    )
    words = [t for _, t in code_words(sample)]
    assert "swin-tiny" in words and "swin_rows" in words and "swin_layer" in words and "clip" not in words
    assert not any("docstring" in w for w in words)
    assert PROCESSOR_NAMES.match("ConvNextImageProcessor") and not PROCESSOR_NAMES.match("ConvNextModel")


def test_only_a_familys_own_names_are_exempt():
    """A family's files may spell its own checkpoints and timm architectures, and only those;
    nothing outside a family's package is exempt."""
    timm_families = [f for f in registry.families() if f.timm is not None]
    assert timm_families
    for fam in registry.families():
        own = own_names(Path("bbx", "families", fam.name, "model.py"))
        rows = {n.lower() for row in fam.catalog for n in row.names}
        archs = {n.lower() for a in fam.timm.architectures for n in (a.name, a.tag)} if fam.timm is not None else set()
        counterpart = {p.lower() for p in fam.timm_counterpart.patterns} if fam.timm_counterpart is not None else set()
        assert own == rows | archs | counterpart
    assert own_names(Path("bbx", "checkpoints.py")) == set()  # the seam names no architecture
    assert own_names(Path("tests", "parity.py")) == set()


def test_every_family_is_a_package_with_its_model():
    for fam in registry.families():
        folder = ROOT / "bbx" / "families" / fam.name
        assert (folder / "__init__.py").is_file() and (folder / "model.py").is_file(), fam.name


def test_every_task_model_is_a_module_with_its_catalog():
    """Task modules (bbx/tasks/<name>.py) are checked by the naming test above like any bbx file:
    their code names no family; the rows naming backbones are the JSON beside them."""
    for task in registry.tasks():
        folder = ROOT / "bbx" / "tasks"
        assert (folder / f"{task.name}.py").is_file() and (folder / f"{task.name}.json").is_file(), task.name
        assert task.catalog and all(registry.is_task(r.model_type) for r in task.catalog), task.name
    for fam in registry.families():
        assert all(registry.is_task(t) for t in fam.nested), (fam.name, fam.nested)
