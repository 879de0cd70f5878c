"""Class names and the surface forms that name them in captions.

A class is named by its name, by each alternative of a name written ``a / b`` (open_clip's
ImageNet names do this: "baluster / handrail"), by the synonyms a YAML file lists for it, and by
the plurals of all of these. Parenthetical glosses ("kite (bird of prey)") are dropped by default:
they disambiguate for people, they are not what captions say.

Forms are normalised exactly as captions are (:mod:`curation.builders.captiontext`), so matching is a
plain substring search of ``" form "`` in ``" caption "``. A form may name several classes (a homonym,
such as "crane" when synonyms give it to both crane classes); such forms, and forms nested inside
other classes' forms ("leopard" in "snow leopard"), are reported so users can judge the class list.

Classes whose whole names are equal after normalisation are the same words for two labels (open_clip
lists "missile" at 657 and 744, "sunglasses" at 836 and 837). No caption can tell them apart, so
every caption naming them would be ``ambiguous`` and both classes would never be labelled. They are
merged for matching: the lowest label gets their forms and synonyms, the later ones are never
labelled, a warning is logged and the report lists them (``merged_classes``).
"""

from __future__ import annotations

import importlib.util
import logging
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from curation.builders.captiontext import normalize_phrases
from curation.builders.plurals import phrase_plurals
from curation.core import storage
from curation.core.config import CONF_DIR, ConfigError, read_yaml

log = logging.getLogger(__name__)

WORD_SEP = " "  # words of a normalised form (see curation.builders.captiontext)
PAREN_RE = re.compile(r"\s*\([^)]*\)")


def load_class_names(spec: str | Path) -> list[str]:
    """``imagenet`` (open_clip's 1,000 names) or a text file with one class name per line (line = label)."""
    if str(spec) == "imagenet":
        return imagenet_class_names()
    path = storage.location(spec)
    if not path.is_file():
        raise ConfigError(f"classes: {spec!r} is neither 'imagenet' nor a class-name file")
    names = [line.strip() for line in storage.read_text(path).splitlines()]
    while names and not names[-1]:
        names.pop()
    if not names or any(not n for n in names):
        raise ConfigError(f"{path}: class-name file must have one non-empty name per line")
    return names


def imagenet_class_names() -> list[str]:
    """open_clip's 1,000 ImageNet class names (``open_clip.zero_shot_metadata``).

    The module is plain data, but importing it through the package imports torch (~20 s on a
    laptop); it is loaded from its file instead, so naming classes stays instant.
    """
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("classes: imagenet needs open_clip_torch installed (its zero_shot_metadata)")
    path = Path(next(iter(spec.submodule_search_locations))) / "zero_shot_metadata.py"
    mod_spec = importlib.util.spec_from_file_location("_open_clip_zero_shot_metadata", path)
    assert mod_spec is not None and mod_spec.loader is not None
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return list(module.IMAGENET_CLASSNAMES)


def resolve_conf_path(path: str | Path) -> Path:
    """A relative path as given, or else relative to the project root (``conf/...`` from anywhere);
    a URL as it is."""
    if storage.is_remote(path):
        return storage.location(path)
    path = Path(path)
    if path.is_absolute() or path.exists():
        return path
    root_relative = CONF_DIR.parent / path
    return root_relative if root_relative.exists() else path


def load_synonyms(path: str | Path | None, class_names: list[str]) -> dict[str, list[str]]:
    """YAML ``class name -> [synonyms]``; every key must be one of the class names."""
    if path is None:
        return {}
    resolved = resolve_conf_path(path)
    if storage.is_remote(resolved):
        with storage.local_copy(resolved) as local:
            data = read_yaml(local)
    else:
        data = read_yaml(resolved)
    known = set(class_names)
    unknown = sorted(k for k in data if k not in known)
    if unknown:
        raise ConfigError(f"{path}: synonyms for unknown classes {unknown[:10]} (keys must be class names)")
    out = {}
    for k, v in data.items():
        if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
            raise ConfigError(f"{path}: synonyms of {k!r} must be a list of strings")
        out[k] = v
    return out


def name_alternatives(name: str, parenthetical: Literal["drop", "keep"] = "drop") -> list[str]:
    """The ways a class name itself can be written: split on " / ", glosses dropped or kept."""
    out = []
    for part in name.split(" / "):
        out.append(PAREN_RE.sub("", part).strip() if parenthetical == "drop" else part.strip())
        if parenthetical == "keep":
            out += [m.strip("() ") for m in PAREN_RE.findall(part)]
    return [o for o in out if o]


def merged_duplicates(class_names: list[str]) -> dict[int, int]:
    """Labels whose name equals an earlier label's after normalisation -> that earlier label."""
    first: dict[str, int] = {}
    merged: dict[int, int] = {}
    for label, key in enumerate(normalize_phrases(list(class_names))):
        if key and key in first:
            merged[label] = first[key]
            log.warning(
                "classes %d and %d are both named %r: merged, captions naming it get label %d",
                first[key], label, class_names[label], first[key],
            )  # fmt: skip
        else:
            first.setdefault(key, label)
    return merged


@dataclass
class Vocabulary:
    """Surface forms and the classes each names (CSR: ``form_ptr``, ``form_classes``)."""

    class_names: list[str]
    forms: list[str]  # normalised, words separated by WORD_SEP
    form_ptr: np.ndarray
    form_classes: np.ndarray
    form_origin: list[str]  # "name", "synonym" or "plural" (of the first class that has it)
    merged: dict[int, int] = field(default_factory=dict)  # label never given -> label used instead

    @classmethod
    def build(
        cls,
        class_names: list[str],
        synonyms: dict[str, list[str]] | None = None,
        plurals: bool = True,
        parenthetical: Literal["drop", "keep"] = "drop",
    ) -> Vocabulary:
        synonyms = synonyms or {}
        merged = merged_duplicates(class_names)
        raw: list[tuple[str, int, str]] = []  # (phrase, class, origin)
        for label, name in enumerate(class_names):
            target = merged.get(label, label)
            raw += [(alt, target, "name") for alt in name_alternatives(name, parenthetical)]
            raw += [(s, target, "synonym") for s in synonyms.get(name, [])]
        normed = normalize_phrases([p for p, _, _ in raw])
        classes_of: dict[str, list[int]] = defaultdict(list)
        origin: dict[str, str] = {}

        def add(form: str, label: int, how: str) -> None:
            if label not in classes_of[form]:
                classes_of[form].append(label)
            origin.setdefault(form, how)

        for form, (_, label, how) in zip(normed, raw, strict=True):
            if not form:
                continue
            add(form, label, how)
            if plurals:
                for words in phrase_plurals(form.split(WORD_SEP)):
                    add(WORD_SEP.join(words), label, "plural")
        covered = {c for v in classes_of.values() for c in v} | set(merged)
        empty = [n for lbl, n in enumerate(class_names) if lbl not in covered]
        if empty:
            raise ConfigError(f"classes {empty[:5]} have no usable name after normalisation")
        forms = sorted(classes_of)
        counts = np.array([len(classes_of[f]) for f in forms], dtype=np.int64)
        ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        values = np.array([c for f in forms for c in sorted(classes_of[f])], dtype=np.int32)
        return cls(list(class_names), forms, ptr, values, [origin[f] for f in forms], merged)

    def classes_of(self, form_id: int) -> list[int]:
        return self.form_classes[self.form_ptr[form_id] : self.form_ptr[form_id + 1]].tolist()

    def merged_classes(self) -> list[dict[str, object]]:
        """Duplicate class names merged into the first label that has them (see the module doc)."""
        return [
            {"name": self.class_names[lbl], "label": lbl, "labelled_as": kept}
            for lbl, kept in sorted(self.merged.items())
        ]

    def homonyms(self) -> list[dict[str, object]]:
        """Forms that name more than one class: every caption using them is ambiguous."""
        multi = np.flatnonzero(np.diff(self.form_ptr) > 1)
        return [
            {
                "form": self.forms[i],
                "classes": [self.class_names[c] for c in self.classes_of(i)],
            }
            for i in multi
        ]

    def nested(self) -> list[dict[str, str]]:
        """Forms that occur as whole words inside a form of another class ("leopard" in "snow leopard").

        Matching takes the longest form, so "snow leopard" names only snow leopard; a caption that
        says "leopard" elsewhere as well becomes ambiguous. Listed so a user can add synonyms.
        """
        index = {f: i for i, f in enumerate(self.forms)}
        containing = defaultdict(list)  # word -> forms that have it
        for f in self.forms:
            for w in set(f.split(WORD_SEP)):
                containing[w].append(f)
        rows, seen = [], set()
        for small in self.forms:
            for big in containing[small.split(WORD_SEP)[0]]:
                if big == small or f" {small} " not in f" {big} ":
                    continue
                own, other = set(self.classes_of(index[small])), set(self.classes_of(index[big]))
                pair = (min(own - other, default=-1), min(other))
                if own - other and pair not in seen:
                    seen.add(pair)
                    rows.append(
                        {
                            "form": small,
                            "class": self.class_names[min(own - other)],
                            "inside": big,
                            "inside_class": self.class_names[min(other)],
                        }
                    )
        return rows
