"""Named plugins of one kind (filters, selection steps, stages, engines), found through entry points.

One form for every registry: an entry-point group (``clip_curation.filters``, ...). The project
declares its own filters, steps, stages and engines in ``pyproject.toml`` exactly as another
installed package declares its plugins, so there is no list of names to keep in sync in the code,
and nothing is imported until a name is asked for (``curate --help`` stays fast). ``add`` registers
an object in this process only (notebooks, tests).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Generic, TypeVar

from curation.core.config import ConfigError

T = TypeVar("T")

GROUP_PREFIX = "clip_curation."


class Registry(Generic[T]):
    """``get(name)`` loads the entry point ``name`` of ``clip_curation.<group>`` (or an ``add``-ed one)."""

    def __init__(self, kind: str, group: str) -> None:
        self.kind = kind
        self.group = GROUP_PREFIX + group
        self._added: dict[str, T] = {}
        self._loaded: dict[str, T] = {}

    def _entry_points(self) -> dict[str, EntryPoint]:
        return {ep.name: ep for ep in entry_points(group=self.group)}

    def names(self) -> list[str]:
        return sorted(set(self._entry_points()) | set(self._added))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (name in self._added or name in self._entry_points())

    def add(self, name: str, obj: T) -> T:
        """Register ``obj`` under ``name`` in this process (it wins over an entry point of that name)."""
        self._added[name] = obj
        return obj

    @contextmanager
    def temporarily(self, name: str, obj: T) -> Iterator[T]:
        """``obj`` under ``name`` for the ``with`` block only (tests stand in for a slow stage)."""
        before = self._added.get(name)
        self._added[name] = obj
        try:
            yield obj
        finally:
            if before is None:
                self._added.pop(name, None)
            else:
                self._added[name] = before

    def get(self, name: str, where: str = "") -> T:
        if name in self._added:
            return self._added[name]
        if name not in self._loaded:
            eps = self._entry_points()
            if name not in eps:
                prefix = f"{where}: " if where else ""
                raise ConfigError(
                    f"{prefix}unknown {self.kind} {name!r}; known: {', '.join(self.names()) or 'none'} "
                    f"(plugins register in the entry-point group {self.group!r})"
                )
            self._loaded[name] = _load(eps[name], self.kind)
        return self._loaded[name]


def _load(ep: EntryPoint, kind: str) -> Any:
    try:
        return ep.load()
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"{kind} {ep.name!r}: its entry point {ep.value!r} does not load: {exc}") from exc
