"""A stage declared once: its inputs, its config model, its default config file and one run function.

Every way of running a stage calls the same ``run(inputs, config, engine)``: its ``curate``
subcommand, a job file step (``curate run``), the ablation and the demo (which is a job file). So a
stage is wired in one place: a :class:`StageDef` in its capability's ``stage.py`` plus one
entry-point line in ``clip_curation.stages``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from curation.core.config import CONF_DIR, ConfigError, ConfigModel, apply_overrides, build, read_yaml
from curation.core.registry import Registry

if TYPE_CHECKING:
    from curation.engines import Engine, JobReport

I = TypeVar("I", bound=ConfigModel)  # noqa: E741
C = TypeVar("C")


class StageFailed(RuntimeError):
    """A stage did not finish (shards failed, a reshard left incomplete); a rerun resumes it."""


class NoConfig(ConfigModel):
    """The config of a stage that takes none (a card is made from recorded stats only)."""


@dataclass
class StageResult:
    """What a run returns: a small summary (recorded in a job's step marker) and its shard jobs."""

    summary: dict[str, Any]
    reports: list[JobReport] = field(default_factory=list)

    @classmethod
    def from_reports(cls, *reports: JobReport, **extra: Any) -> StageResult:
        """A summary of per-stage samples seen and kept (what a job's step marker records)."""
        funnel = {s.stage: {"seen": s.total.seen, "kept": s.total.kept} for r in reports for s in r.stats}
        return cls({**funnel, **extra}, list(reports))

    def check(self, name: str) -> StageResult:
        """Raise :class:`StageFailed` naming the failed shards, if any."""
        for report in self.reports:
            if report.failed:
                failed = ", ".join(f"{o.shard} ({o.error})" for o in report.failed[:5])
                raise StageFailed(f"{name}: {len(report.failed)} shard(s) of {report.job} failed: {failed}")
        return self


@dataclass(frozen=True)
class StageDef(Generic[I, C]):
    """``inputs`` are the paths and per-run values (a command's arguments, a job step's ``with``);
    ``config`` the stage's settings, read from ``default_config`` (relative to ``conf/``) unless a
    file is given."""

    name: str
    inputs: type[I]
    run: Callable[[I, C, Engine], StageResult]
    config: type[C] = NoConfig  # type: ignore[assignment]
    default_config: str | None = None

    @property
    def default_config_path(self) -> Path | None:
        return CONF_DIR / self.default_config if self.default_config else None

    def config_data(
        self, path: Path | None = None, settings: dict[str, Any] | None = None, overrides: list[str] = ()
    ) -> dict[str, Any]:
        """The config file (or the default), ``settings`` merged over it, then ``--set`` overrides."""
        path = path or self.default_config_path
        data = read_yaml(path) if path else {}
        return apply_overrides(deep_merge(data, settings or {}), list(overrides))

    def load_config(
        self, path: Path | None = None, settings: dict[str, Any] | None = None, overrides: list[str] = ()
    ) -> C:
        data = self.config_data(path, settings, overrides)
        if self.config is NoConfig and data:
            raise ConfigError(f"{self.name}: takes no config (got {sorted(data)})")
        source = str(path or self.default_config_path or f"{self.name} settings")
        return build(self.config, data, source=source)  # type: ignore[arg-type]

    def make_inputs(self, data: dict[str, Any], where: str = "") -> I:
        return build(self.inputs, data, source=where or self.name)


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = deep_merge(out[key], value) if both else value
    return out


STAGES: Registry[StageDef[Any, Any]] = Registry("stage", "stages")
