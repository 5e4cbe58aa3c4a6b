"""The catalog: which families bbx implements and which public checkpoints it knows by name.

Families are discovered, never listed: every package under ``bbx/families/`` exports a
:class:`bbx.family.Family` as ``FAMILY`` (torch-free), with its ``model_type`` values and its
catalog rows. Adding a family is adding its package. The tables are built on first use and
refuse duplicates: a ``model_type`` claimed by two families, a name given to two checkpoints.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import pkgutil
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from bbx.errors import ModelError
from bbx.family import CatalogRow, Family, TimmArch


@functools.cache
def families() -> tuple[Family, ...]:
    """Every family package under ``bbx/families/``, in name order."""
    import bbx.families as package

    found = []
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if not info.ispkg or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        fam = getattr(module, "FAMILY", None)
        if not isinstance(fam, Family) or fam.name != info.name:
            raise RuntimeError(f"bbx/families/{info.name} must define FAMILY = Family(name={info.name!r}, ...)")
        found.append(fam)
    return tuple(found)


@functools.cache
def _by_model_type() -> Mapping[str, Family]:
    table: dict[str, Family] = {}
    for fam in families():
        for mt in fam.model_types:
            if mt in table:
                raise RuntimeError(f"model_type {mt!r} is claimed by {table[mt].name} and {fam.name}")
            table[mt] = fam
    return MappingProxyType(table)


def supported_model_types() -> list[str]:
    """The ``model_type`` values of transformers checkpoints bbx reads (families of timm-layout
    networks have an internal model_type of their own, which no transformers config carries)."""
    return sorted(mt for mt, fam in _by_model_type().items() if fam.timm is None)


# --- timm architectures ---------------------------------------------------------------------------


@functools.cache
def _timm_archs() -> Mapping[str, tuple[Family, TimmArch]]:
    """timm architecture name -> the family implementing it; an architecture claimed twice is refused."""
    table: dict[str, tuple[Family, TimmArch]] = {}
    for fam in families():
        if fam.timm is None:
            continue
        for arch in fam.timm.architectures:
            if arch.name in table:
                raise RuntimeError(
                    f"timm architecture {arch.name!r} is claimed by {table[arch.name][0].name} and {fam.name}"
                )
            if not fam.timm.claims(arch.name):
                raise RuntimeError(f"family {fam.name}: timm architecture {arch.name!r} matches none of its patterns")
            table[arch.name] = (fam, arch)
    return MappingProxyType(table)


def timm_arch(name: Any) -> tuple[Family, TimmArch] | None:
    """The family and entry of a timm architecture bbx implements; None otherwise."""
    return _timm_archs().get(name) if isinstance(name, str) else None


def timm_architectures() -> list[str]:
    return sorted(_timm_archs())


def timm_patterns() -> list[str]:
    """The architecture-name patterns of every family of timm-layout networks (for messages)."""
    return [p for fam in families() if fam.timm is not None for p in fam.timm.patterns]


def timm_family_claiming(name: str) -> Family | None:
    """The family whose patterns cover a timm architecture name (implemented or not)."""
    return next((f for f in families() if f.timm is not None and f.timm.claims(name)), None)


def timm_counterpart(name: str) -> Family | None:
    """The transformers-layout family that is the same network as timm's architecture ``name``."""
    return next((f for f in families() if f.timm_counterpart is not None and f.timm_counterpart.claims(name)), None)


def is_supported(model_type: Any) -> bool:
    return isinstance(model_type, str) and model_type in _by_model_type()


def family_of(model_type: Any, where: str = "") -> Family:
    """The family implementing ``model_type``; ModelError listing the supported ones otherwise."""
    if is_supported(model_type):
        return _by_model_type()[model_type]
    if model_type is None:
        what = "no model_type" if where else "config.json has no model_type"  # where names the file
    elif not isinstance(model_type, str):
        what = f"model_type must be a string, got {model_type!r}"
    else:
        what = f"unsupported model_type {model_type!r}"
    at = f" ({where})" if where else ""
    raise ModelError(f"{what}{at}; bbx supports: {', '.join(supported_model_types())}")


def checkpoints() -> tuple[CatalogRow, ...]:
    """Every catalog row, family by family in name order, each family's rows as it lists them."""
    return tuple(row for fam in families() for row in fam.catalog)


@functools.cache
def _aliases() -> Mapping[str, CatalogRow]:
    table: dict[str, CatalogRow] = {}
    for row in checkpoints():
        if not is_supported(row.config.get("model_type")):
            raise RuntimeError(f"catalog row {row.alias}: model_type {row.config.get('model_type')!r} has no family")
        for name in row.names:
            key = name.lower()
            if key in table and table[key] is not row:
                raise RuntimeError(f"registry: {name!r} names two checkpoints")
            table[key] = row
    return MappingProxyType(table)


def lookup(name: str) -> CatalogRow | None:
    """The row an alias (or an aliased hub repo id) names, case-insensitively; None if unknown."""
    return _aliases().get(name.lower())


def default_preprocessor(model_type: str | None) -> dict[str, Any] | None:
    """The preprocessing of the first public checkpoint of ``model_type`` (else of its family):
    what a checkpoint folder without ``preprocessor_config.json`` gets."""
    if not is_supported(model_type):
        return None
    fam = family_of(model_type)
    for row in fam.catalog:
        if row.model_type == model_type:
            return row.preprocessor_dict()
    return fam.catalog[0].preprocessor_dict() if fam.catalog else None


def suggestions(name: str, n: int = 3) -> list[str]:
    """The closest aliases to a name that is not one."""
    names = [row.alias for row in checkpoints()]
    lowered = {a.lower(): a for a in names}
    close = difflib.get_close_matches(name.lower(), list(lowered), n=n, cutoff=0.5)
    if not close:
        close = [a for a in lowered if name.lower() in a or a in name.lower()][:n]
    return [lowered[c] for c in close]
