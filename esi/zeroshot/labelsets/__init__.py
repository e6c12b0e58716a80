"""Label sets for zero-shot evaluation, kept as data (``<name>.json``) and resolved at run time.

A label set file holds ``name``, ``aliases``, ``vocabulary`` (the native label vocabulary of the
records it applies to: ``scp``, ``snomed``, ``cpsc2018``), ``membership`` and ``classes`` (``id``,
``display`` used in prompts, optional ``codes`` per vocabulary). Membership kinds:

- ``scp_column``: a class's native codes are the SCP statements whose ``column`` in
  ``scp_statements.csv`` equals the class id (PTB-XL superclass / subclass);
- ``scp_statement``: each class is one SCP statement (optionally only those with ``flag`` == 1);
- ``codes``: the native codes are listed in the file per vocabulary (CinC SNOMED, CPSC2018).

The PTB-XL memberships are derived from ``scp_statements.csv`` at run time rather than copied
into the file, so the label set always agrees with the dataset's own statement table.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

MEMBERSHIP_KINDS = ("scp_column", "scp_statement", "codes")


class LabelSetError(ValueError):
    """Unknown label set / class, or a label set that cannot be resolved for the given data."""


@dataclass(frozen=True)
class LabelClass:
    id: str
    display: str
    codes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()

    def names(self) -> set[str]:
        """Every name a user may use for the class (id, display name, aliases), lower-cased."""
        return {n.lower() for n in (self.id, self.display, *self.aliases)}


@dataclass(frozen=True)
class LabelSet:
    name: str
    vocabulary: str
    membership: Mapping[str, Any]
    classes: tuple[LabelClass, ...]
    description: str = ""
    aliases: tuple[str, ...] = ()
    resolved: bool = False

    @property
    def class_ids(self) -> list[str]:
        return [c.id for c in self.classes]

    @property
    def displays(self) -> list[str]:
        return [c.display for c in self.classes]

    @property
    def needs_scp_statements(self) -> bool:
        return self.membership.get("kind") in ("scp_column", "scp_statement")

    def select(self, names: Iterable[str]) -> LabelSet:
        """A label set restricted to the named classes (id, display name or alias, any case)."""
        chosen: list[LabelClass] = []
        for name in names:
            matches = [c for c in self.classes if name.strip().lower() in c.names()]
            if not matches:
                raise LabelSetError(
                    f"label set {self.name!r} has no class {name!r}; classes: {', '.join(self.class_ids)}"
                )
            chosen.extend(c for c in matches if c not in chosen)
        return replace(self, classes=tuple(chosen))

    def resolve(self, scp_statements: str | Path | pd.DataFrame | None = None) -> LabelSet:
        """Fill in each class's native codes (PTB-XL sets need ``scp_statements.csv``)."""
        if self.resolved:
            return self
        kind = self.membership.get("kind")
        if kind == "codes":
            return replace(self, resolved=True)
        if scp_statements is None:
            raise LabelSetError(
                f"label set {self.name!r} derives its classes from scp_statements.csv; pass its path "
                "(it lies in the PTB-XL root)"
            )
        table = _read_scp_statements(scp_statements)
        classes = []
        if kind == "scp_column":
            column = self.membership["column"]
            if column not in table.columns:
                raise LabelSetError(f"scp_statements.csv has no column {column!r} (label set {self.name!r})")
            for cls in self.classes:
                codes = tuple(sorted(table.index[table[column].astype(str) == cls.id]))
                if not codes:
                    raise LabelSetError(
                        f"label set {self.name!r}: no SCP statement has {column} == {cls.id!r} in "
                        "scp_statements.csv"
                    )
                classes.append(replace(cls, codes={"scp": codes}))
        else:
            flag = self.membership.get("flag")
            listed = set(table.index) if flag is None else set(table.index[table[flag] == 1])
            unknown = [c.id for c in self.classes if c.id not in set(table.index)]
            if unknown:
                raise LabelSetError(f"label set {self.name!r}: statements {unknown} not in scp_statements.csv")
            extra = sorted(listed - set(self.class_ids))
            if extra:
                warnings.warn(
                    f"label set {self.name!r}: scp_statements.csv flags {extra} too; they are not evaluated",
                    stacklevel=2,
                )
            classes = [replace(c, codes={"scp": (c.id,)}) for c in self.classes]
        return replace(self, classes=tuple(classes), resolved=True)

    def codes_for(self, vocabulary: str) -> list[set[str]]:
        """Per class, the native codes of ``vocabulary`` that make a record positive."""
        if not self.resolved:
            raise LabelSetError(f"label set {self.name!r} is not resolved; call resolve() first")
        if not any(vocabulary in c.codes for c in self.classes):
            have = sorted({v for c in self.classes for v in c.codes})
            raise LabelSetError(
                f"label set {self.name!r} has no codes for label vocabulary {vocabulary!r} (it has {have})"
            )
        return [set(c.codes.get(vocabulary, ())) for c in self.classes]

    def targets(
        self, labels: Sequence[Mapping[str, float]], vocabulary: str, *, min_confidence: float = 0.0
    ) -> np.ndarray:
        """Binary (N, C) targets from records' native labels (code -> confidence).

        PTB-XL likelihoods of 0 mean "possible"; the PTB-XL benchmark counts every listed code, so
        ``min_confidence`` defaults to 0 (keep all).
        """
        code_sets = self.codes_for(vocabulary)
        out = np.zeros((len(labels), len(code_sets)), dtype=np.int8)
        for i, record_labels in enumerate(labels):
            present = {str(code) for code, conf in record_labels.items() if conf is None or conf >= min_confidence}
            for j, codes in enumerate(code_sets):
                out[i, j] = bool(present & codes)
        return out


def _read_scp_statements(source: str | Path | pd.DataFrame) -> pd.DataFrame:
    if isinstance(source, pd.DataFrame):
        return source
    path = Path(source)
    if path.is_dir():
        path = path / "scp_statements.csv"
    if not path.is_file():
        raise LabelSetError(f"scp_statements.csv not found at {path}")
    return pd.read_csv(path, index_col=0)


def labelsets_dir() -> Path:
    return Path(str(resources.files("esi.zeroshot.labelsets")))


def _parse(data: dict[str, Any], source: str) -> LabelSet:
    missing = [k for k in ("name", "vocabulary", "membership", "classes") if k not in data]
    if missing:
        raise LabelSetError(f"{source}: label set file lacks {missing}")
    kind = data["membership"].get("kind")
    if kind not in MEMBERSHIP_KINDS:
        raise LabelSetError(f"{source}: membership kind {kind!r} not in {MEMBERSHIP_KINDS}")
    classes = []
    for item in data["classes"]:
        if "id" not in item or "display" not in item:
            raise LabelSetError(f"{source}: every class needs 'id' and 'display' ({item!r})")
        codes = {str(v): tuple(str(c) for c in cs) for v, cs in (item.get("codes") or {}).items()}
        if kind == "codes" and not codes:
            raise LabelSetError(f"{source}: class {item['id']!r} lists no codes")
        classes.append(LabelClass(str(item["id"]), str(item["display"]), codes, tuple(item.get("aliases", ()))))
    ids = [c.id for c in classes]
    if len(set(ids)) != len(ids):
        raise LabelSetError(f"{source}: duplicate class ids")
    return LabelSet(
        name=str(data["name"]), vocabulary=str(data["vocabulary"]), membership=dict(data["membership"]),
        classes=tuple(classes), description=str(data.get("description", "")),
        aliases=tuple(str(a) for a in data.get("aliases", ())),
    )


def available_labelsets() -> dict[str, LabelSet]:
    """All shipped label sets by name."""
    out = {}
    for path in sorted(labelsets_dir().glob("*.json")):
        labelset = _parse(json.loads(path.read_text(encoding="utf-8")), path.name)
        out[labelset.name] = labelset
    return out


def load_labelset(name: str) -> LabelSet:
    """A shipped label set by name or alias (``superclass``, ``ptbxl_form``, ``cinc``, ...) or a JSON path."""
    path = Path(name)
    if path.suffix == ".json" and path.is_file():
        return _parse(json.loads(path.read_text(encoding="utf-8")), str(path))
    shipped = available_labelsets()
    for labelset in shipped.values():
        if name.lower() in {labelset.name.lower(), *(a.lower() for a in labelset.aliases)}:
            return labelset
    listing = ", ".join(f"{n} ({'/'.join(ls.aliases)})" if ls.aliases else n for n, ls in shipped.items())
    raise LabelSetError(f"unknown label set {name!r}; available: {listing}")
