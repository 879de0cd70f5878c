"""Evaluation suites: named groups of test sets in CLIP_benchmark's webdataset layout.

A test set is a directory ``NAME/`` with ``classnames.txt``, ``zeroshot_classification_templates.txt``,
``test/{0..K}.tar`` and ``test/nshards.txt`` (optionally ``train/`` for linear probes and
``dataset_type.txt``), exactly what ``clip_benchmark_export_wds`` writes, so the public copies of
ImageNet-1k, ImageNetV2, -Sketch, -R, -A and ObjectNet drop in unchanged. A suite is a directory
with ``suite.yaml`` giving each test set a role (``in_distribution``, ``shift`` or ``retrieval``),
which is what effective robustness needs: which set is the reference and which are shifts of it.

Everything is validated up front, so a typo in ``suite.yaml`` or a missing file fails in a second
with a message naming the file, not an hour into a run.
"""

from __future__ import annotations

import contextlib
import re
import tarfile
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np
import yaml
from pydantic import Field, ValidationError, field_validator
from upath import UPath

from curation.core import storage
from curation.core.config import ConfigModel, format_validation_error
from curation.core.safepath import UnsafePathError, child, safe_name
from trainer.errors import EvalInputError

SUITE_FILE = "suite.yaml"
CLASSNAMES_FILE = "classnames.txt"
TEMPLATES_FILE = "zeroshot_classification_templates.txt"
DATASET_TYPE_FILE = "dataset_type.txt"
NSHARDS_FILE = "nshards.txt"
IMAGE_EXTENSIONS = ("webp", "png", "jpg", "jpeg")
SUPPORTED_TYPES = ("classification", "retrieval")  # CLIP_benchmark also has "multilabel" (VOC): not here
SHIPPED_SUBSETS_DIR = Path(__file__).resolve().parent.parent / "conf" / "eval" / "class_subsets"


class SuiteError(EvalInputError):
    """A suite or test set that cannot be evaluated; the message names the offending file or key."""


class Role(StrEnum):
    IN_DISTRIBUTION = "in_distribution"
    SHIFT = "shift"
    RETRIEVAL = "retrieval"


class TestSetEntry(ConfigModel):
    """One ``test_sets`` entry of ``suite.yaml``."""

    __test__ = False  # not a pytest test class, despite the name

    name: str = Field(min_length=1)
    path: str = Field(min_length=1)
    role: Role
    # Restrict classification to these class indices (ImageNet-A/-R on a 1000-class label space):
    # an inline index list, a file of indices (relative to the suite), or a shipped list name.
    class_subset: list[int] | str | None = None
    split: str = "test"

    @field_validator("class_subset")
    @classmethod
    def _non_empty(cls, v: list[int] | str | None) -> list[int] | str | None:
        if isinstance(v, list) and not v:
            raise ValueError("class_subset is empty")
        return v


class SuiteFile(ConfigModel):
    """The schema of ``suite.yaml``."""

    name: str = Field(min_length=1)
    test_sets: list[TestSetEntry] = Field(min_length=1)


@dataclass(frozen=True)
class TestSet:
    """A validated test set, ready to stream."""

    __test__ = False

    name: str
    root: Path
    role: Role
    split: str
    shards: tuple[Path, ...]
    classnames: tuple[str, ...]
    templates: tuple[str, ...]
    class_subset: tuple[int, ...] | None  # sorted unique class indices, or None for all classes

    @property
    def task(self) -> str:
        return "zeroshot_retrieval" if self.role is Role.RETRIEVAL else "zeroshot_classification"

    @property
    def has_train_split(self) -> bool:
        return (self.root / "train" / NSHARDS_FILE).exists()

    def split_shards(self, split: str) -> tuple[Path, ...]:
        return _shards(self.root, split)


@dataclass(frozen=True)
class Suite:
    name: str
    root: Path
    test_sets: tuple[TestSet, ...]

    def by_role(self, role: Role) -> list[TestSet]:
        return [t for t in self.test_sets if t.role is role]

    @property
    def in_distribution(self) -> TestSet | None:
        ids = self.by_role(Role.IN_DISTRIBUTION)
        return ids[0] if ids else None


def resolve_suite(name_or_dir: str | Path, named: Mapping[str, str]) -> Path | UPath:
    """Turn ``--suite`` into a directory (or a URL): an existing path wins, then a name from config."""
    path = storage.location(name_or_dir)
    if path.exists():
        return path
    key = str(name_or_dir)
    if key in named:
        target = storage.location(named[key])
        if not target.exists():
            hint = " (generate it with `curate synth`)" if key == "synthetic" else ""
            raise SuiteError(
                f"suite {key!r} is configured at {target}, which does not exist{hint}; "
                f"pass --suite DIR or set suites.{key}=DIR"
            )
        return target
    known = ", ".join(sorted(named)) or "none"
    raise SuiteError(f"suite {key!r} is neither a directory nor a configured suite name (known: {known})")


@contextlib.contextmanager
def local_suite(path: str | Path | UPath) -> Iterator[Path]:
    """A suite (or test set) folder on this machine: ``path`` itself, or a copy of the one at a URL
    (under the same folder name, which names a lone test set), removed afterwards."""
    loc = storage.location(path)
    if not storage.is_remote(loc):
        yield Path(loc)
        return
    if not loc.exists():
        raise SuiteError(f"{storage.url(loc)}: no suite there")
    with storage.local_dir(loc) as copy, tempfile.TemporaryDirectory(prefix="curation-suite-") as tmp:
        named = Path(tmp) / (loc.name or "suite")
        named.symlink_to(copy, target_is_directory=True)
        yield named


def load_suite(path: str | Path) -> Suite:
    """Load a suite directory (with ``suite.yaml``) or a single test set directory."""
    root = Path(path)
    if not root.is_dir():
        raise SuiteError(f"{root}: not a directory")
    if (root / SUITE_FILE).exists():
        return _load_suite_file(root)
    if (root / "test" / NSHARDS_FILE).exists() or (root / CLASSNAMES_FILE).exists():
        role = Role.RETRIEVAL if _dataset_type(root) == "retrieval" else Role.IN_DISTRIBUTION
        entry = TestSetEntry(name=root.name, path=".", role=role)
        return Suite(root.name, root, (load_test_set(root, entry),))
    raise SuiteError(
        f"{root}: neither a suite (no {SUITE_FILE}) nor a test set "
        f"(no test/{NSHARDS_FILE}, no {CLASSNAMES_FILE})"
    )


def _load_suite_file(root: Path) -> Suite:
    source = root / SUITE_FILE
    try:
        data = yaml.safe_load(source.read_text())
    except yaml.YAMLError as exc:
        raise SuiteError(f"{source}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise SuiteError(f"{source}: top level must be a mapping with 'name' and 'test_sets'")
    try:
        spec = SuiteFile.model_validate(data)
    except ValidationError as exc:
        raise SuiteError(format_validation_error(exc, str(source))) from exc
    names = [t.name for t in spec.test_sets]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise SuiteError(f"{source}: duplicate test set names: {', '.join(dupes)}")
    n_id = sum(t.role is Role.IN_DISTRIBUTION for t in spec.test_sets)
    if n_id > 1:
        raise SuiteError(
            f"{source}: {n_id} test sets have role in_distribution; shifts need exactly one reference"
        )
    if n_id == 0 and any(t.role is Role.SHIFT for t in spec.test_sets):
        raise SuiteError(f"{source}: shift test sets need one test set with role in_distribution")
    sets = tuple(load_test_set(_test_set_dir(root, t, source), t, suite_root=root) for t in spec.test_sets)
    return Suite(spec.name, root, sets)


def _test_set_dir(root: Path, entry: TestSetEntry, source: Path) -> Path:
    """A test set's folder: inside the suite (a suite.yaml may come with downloaded data; link a
    folder that lives elsewhere into the suite instead of naming an outside path)."""
    try:
        return child(root, entry.path, f"test set {entry.name!r}: path")
    except UnsafePathError as exc:
        raise SuiteError(f"{source}: {exc}; link that folder into the suite instead") from exc


def load_test_set(root: Path, entry: TestSetEntry, suite_root: Path | None = None) -> TestSet:
    """Validate one test set directory against its suite entry."""
    where = f"test set {entry.name!r} ({root})"
    if not root.is_dir():
        raise SuiteError(f"{where}: directory does not exist")
    if _dataset_type(root) not in SUPPORTED_TYPES:
        raise SuiteError(
            f"{where}: dataset_type {_dataset_type(root)!r} is not supported ({', '.join(SUPPORTED_TYPES)})"
        )
    shards = _shards(root, entry.split)
    classnames: tuple[str, ...] = ()
    templates: tuple[str, ...] = ()
    subset = None
    if entry.role is not Role.RETRIEVAL:
        classnames = tuple(_read_lines(root / CLASSNAMES_FILE, where))
        templates = tuple(_read_lines(root / TEMPLATES_FILE, where))
        bad = [t for t in templates if "{c}" not in t]
        if bad:
            raise SuiteError(f"{where}: templates without the '{{c}}' placeholder: {bad[:3]}")
        if entry.class_subset is not None:
            subset = _class_subset(entry.class_subset, len(classnames), suite_root or root, where)
    elif entry.class_subset is not None:
        raise SuiteError(f"{where}: class_subset makes no sense for a retrieval set")
    return TestSet(entry.name, root, entry.role, entry.split, shards, classnames, templates, subset)


def _shards(root: Path, split: str) -> tuple[Path, ...]:
    nshards_file = root / split / NSHARDS_FILE
    if not nshards_file.exists():
        raise SuiteError(f"{root}: missing {split}/{NSHARDS_FILE} (CLIP_benchmark webdataset layout)")
    text = nshards_file.read_text().strip()
    try:
        n = int(text)
    except ValueError as exc:
        raise SuiteError(f"{nshards_file}: expected an integer, got {text!r}") from exc
    if n < 1:
        raise SuiteError(f"{nshards_file}: needs at least one shard, got {n}")
    shards = tuple(root / split / f"{i}.tar" for i in range(n))
    missing = [s.name for s in shards if not s.exists()]
    if missing:
        raise SuiteError(f"{root / split}: nshards.txt says {n} shards but {', '.join(missing[:5])} missing")
    return shards


def _read_lines(path: Path, where: str) -> list[str]:
    if not path.exists():
        raise SuiteError(f"{where}: missing {path.name}")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        raise SuiteError(f"{where}: {path.name} is empty")
    return lines


def _dataset_type(root: Path) -> str:
    path = root / DATASET_TYPE_FILE
    return path.read_text().strip().lower() if path.exists() else "classification"


def shipped_subsets() -> list[str]:
    return sorted(p.stem for p in SHIPPED_SUBSETS_DIR.glob("*.txt"))


def read_index_file(path: Path) -> list[int]:
    """One integer per line; blank lines and ``#`` comments are ignored."""
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if line:
            try:
                out.append(int(line))
            except ValueError as exc:
                raise SuiteError(f"{path}:{n}: not an integer class index: {line!r}") from exc
    return out


def _class_subset(spec: Sequence[int] | str, n_classes: int, base: Path, where: str) -> tuple[int, ...]:
    if isinstance(spec, str):
        try:
            candidates = [child(base, spec, "class_subset"), SHIPPED_SUBSETS_DIR / f"{safe_name(spec)}.txt"]
        except UnsafePathError as exc:
            raise SuiteError(f"{where}: {exc}") from exc
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            raise SuiteError(
                f"{where}: class_subset {spec!r} is neither a file under {base} nor a shipped list "
                f"({', '.join(shipped_subsets())})"
            )
        indices = read_index_file(path)
    else:
        indices = list(spec)
    arr = np.asarray(indices, dtype=np.int64)
    if arr.size == 0:
        raise SuiteError(f"{where}: class_subset is empty")
    if arr.min() < 0 or arr.max() >= n_classes:
        raise SuiteError(f"{where}: class_subset indices must lie in [0, {n_classes}) (classnames.txt)")
    if np.unique(arr).size != arr.size:
        raise SuiteError(f"{where}: class_subset has duplicate indices")
    return tuple(int(i) for i in np.sort(arr))


def count_samples(shards: Sequence[Path]) -> int:
    """Number of samples (distinct keys, grouped as webdataset groups them), from tar headers only."""
    total = 0
    for shard in shards:
        keys = set()
        with tarfile.open(shard) as tar:
            for member in tar:
                match = _KEY_RE.match(member.name)
                if member.isfile() and match:
                    keys.add(match.group(1))
        total += len(keys)
    return total


# webdataset's grouping rule: the key is the path up to the first dot of the file's base name.
_KEY_RE = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")
