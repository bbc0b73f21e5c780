"""Class lists with synonyms: a class is one name or several (scored as the best of them), reported under its first.

A class file holds one class a line, synonyms separated by ``", "`` (SCLIP, NACLIP) or ``"; "`` (ProxyCLIP; a line
with a ``;`` is split on ``;`` only). Under a protocol with ``class_file_background`` its first line names the
background (label 0), as in those methods' files.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import torch

from textseg.errors import UserError

#: One class: a name, or its names (the first is the one reported).
ClassSpec = Union[str, Sequence[str]]


def split_synonyms(line: str) -> list[str]:
    """The names of one class-file line: split on ``;`` when it has one, else on ``,``; stripped, empties dropped."""
    parts = line.split(";") if ";" in line else line.split(",")
    return [p.strip() for p in parts if p.strip()]


def read_text_lines(path: str | Path, what: str = "class file", hint: str = "") -> list[str]:
    """The lines of a UTF-8 text file (a byte-order mark ignored).

    Raises:
        UserError: naming ``what`` and the file: it is missing (then ``hint`` follows), unreadable or not UTF-8
            (with the line).
    """
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8-sig").splitlines()
    except FileNotFoundError:
        raise UserError(f"{what} {path} not found{hint}") from None
    except UnicodeDecodeError as err:
        line = path.read_bytes()[: err.start].count(b"\n") + 1
        raise UserError(f"{what} {path} line {line} is not UTF-8 text") from None
    except OSError as err:
        raise UserError(f"cannot read {what} {path}: {err.strerror or err}") from None


def read_class_file(path: str | Path, what: str = "class file", hint: str = "") -> list[list[str]]:
    """The classes of a class file, one per non-empty line, each a list of names (:func:`split_synonyms`).

    Raises:
        UserError: the file is missing (then ``hint`` follows), unreadable, not UTF-8 or holds no class.
    """
    lines = read_text_lines(path, what, hint)
    classes = [names for names in (split_synonyms(line) for line in lines) if names]
    if not classes:
        raise UserError(f"{what} {path} holds no class name")
    return classes


def class_names(spec: ClassSpec, where: str) -> list[str]:
    """One class's names as a list of strings (a string is one name)."""
    names = [spec] if isinstance(spec, str) else [str(n) for n in spec]
    if not names:
        raise UserError(f"{where} has no name")
    return names


@dataclass(frozen=True)
class Vocabulary:
    """The classes of a call, with their synonyms, and the background's names.

    Attributes:
        classes: each class's names (label i + 1 = ``classes[i]``).
        background: names scored like classes that mean background (label 0).
    """

    classes: tuple[tuple[str, ...], ...]
    background: tuple[str, ...] = ()

    @classmethod
    def make(cls, classes: Sequence[ClassSpec], background: Sequence[str] = ()) -> "Vocabulary":
        """Check and hold ``classes`` (names or lists of names) and the background's names.

        Raises:
            UserError: no class, an empty name, a name given twice among the classes (ignoring case and spaces), or a
                class named "background" (label 0's name).
        """
        if isinstance(classes, str):
            raise UserError("classes must be a list of names (or of lists of names), not one string")
        specs = [class_names(c, f"class {i + 1}") for i, c in enumerate(classes)]
        if not specs:
            raise UserError("the class list is empty")
        seen: dict[str, str] = {}
        for names in specs:
            for name in names:
                key = name.strip().casefold()
                if not key:
                    raise UserError("the class list contains an empty name")
                if key == "background":
                    raise UserError(f"class {name!r}: 'background' is the name of label 0 (pixels no class matches); "
                                    "name what it should find instead (e.g. 'sky', 'wall'), or list such names as "
                                    "background classes")
                if key in seen:
                    raise UserError(f"class {name!r} is listed twice (as {seen[key]!r} too): each class needs its "
                                    "own names")
                seen[key] = name
        bg = tuple(str(n) for n in background)
        if any(not n.strip() for n in bg):
            raise UserError("the background names contain an empty name")
        return cls(tuple(tuple(n) for n in specs), bg)

    @property
    def names(self) -> list[str]:
        """Each class's reported (first) name."""
        return [names[0] for names in self.classes]

    @property
    def has_synonyms(self) -> bool:
        return any(len(names) > 1 for names in self.classes)

    @property
    def queries(self) -> list[str]:
        """Every name to score: the classes' names in class order, then the background's."""
        return [n for names in self.classes for n in names] + list(self.background)

    def owners(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """(len(queries),) int64: the label each query scores (i + 1 for ``classes[i]``, 0 for the background)."""
        labels = [i + 1 for i, names in enumerate(self.classes) for _ in names] + [0] * len(self.background)
        return torch.tensor(labels, dtype=torch.long, device=device)


def label_scores(query_scores: torch.Tensor, owners: torch.Tensor, num_labels: int) -> torch.Tensor:
    """(num_labels, ...) scores per label from (Q, ...) scores per query: the best of each label's queries; a label
    without a query scores 0."""
    out = query_scores.new_zeros((num_labels, *query_scores.shape[1:]))
    index = owners.view(-1, *([1] * (query_scores.dim() - 1))).expand_as(query_scores)
    return out.scatter_reduce(0, index, query_scores, reduce="amax", include_self=True)


__all__ = ["ClassSpec", "Vocabulary", "class_names", "label_scores", "read_class_file", "read_text_lines",
           "split_synonyms"]
