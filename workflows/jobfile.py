"""A whole curation job in one YAML file: ``curate run conf/pipelines/JOB.yaml --engine spark``.

A job file names a ``workdir`` and its ``steps`` in order, each ``{stage: NAME, with: {...}}``:
the same stage functions the ``curate`` subcommands call (download, score, filter, select,
hardmatch, reshard, card, ...; see :mod:`workflows.jobstages`), with the same config files and
``--set`` overrides. Data paths in ``with`` are relative to ``workdir``; config files are relative
to the current directory (or to the project, for ``conf/...``). ``${name}`` in a value is replaced
by ``vars.name``; ``${workdir}`` (absolute) and ``${conf}`` (the project's conf/) are always defined
and may be used in vars too. So one job file serves several pools:
``curate run JOB.yaml --set vars.pool=/data/pool``.

All shard-parallel steps share one engine (one Spark session, one Ray instance). A step that
finished leaves a marker with the fingerprint of its resolved settings; a rerun skips it, and a
step that stopped half way resumes shard by shard through the runner's own markers, so a rerun
after a failed worker finishes only what is missing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import string
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ConfigDict, Field

from curation.core.config import CONF_DIR, ConfigError, ConfigModel, apply_overrides, build, read_yaml
from curation.core.io import atomic_write_json, read_json
from curation.engines import Engine, JobReport

log = logging.getLogger(__name__)

PROJECT_DIR = CONF_DIR.parent
JOB_DIR = "_job"  # step markers, inside workdir


class StepSpec(ConfigModel):
    """One step: which stage, an optional unique name (default: the stage), its settings."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)

    stage: str
    name: str | None = None
    with_: dict[str, Any] = Field(default_factory=dict, alias="with")

    @property
    def label(self) -> str:
        return self.name or self.stage


class EngineDefaults(ConfigModel):
    """The job's engine when the command line names none."""

    name: str = "local"
    workers: int = Field(1, ge=1)
    master: str | None = None
    address: str | None = None


class JobSpec(ConfigModel):
    name: str
    description: str = ""
    workdir: Path
    vars: dict[str, Any] = Field(default_factory=dict)
    engine: EngineDefaults = Field(default_factory=EngineDefaults)
    steps: list[StepSpec]


class StageSettings(ConfigModel):
    """What every stage's ``with`` may hold besides its paths: a config file, inline settings, overrides.

    The stage's own config is the file, then ``settings`` merged over it, then ``set`` (dotted
    ``key=value`` overrides, as on the command line).
    """

    config: Path | None = None
    settings: dict[str, Any] = Field(default_factory=dict)
    set: list[str] = Field(default_factory=list)

    def stage_config(self, ctx: JobContext, default: Path | None = None) -> dict[str, Any]:
        path = self.config or default
        data = read_yaml(ctx.config_path(path)) if path else {}
        return apply_overrides(deep_merge(data, self.settings), self.set)

    def build(self, model: type[M], ctx: JobContext, default: Path | None = None) -> M:
        return build(model, self.stage_config(ctx, default), source=str(self.config or default or "settings"))


M = TypeVar("M", bound=ConfigModel)
S = TypeVar("S", bound=StageSettings)
StageFn = Callable[[Any, "JobContext"], dict[str, Any]]


@dataclass
class StageDef:
    settings: type[StageSettings]
    run: StageFn


STAGES: dict[str, StageDef] = {}


def job_stage(name: str, settings: type[S]) -> Callable[[Callable[[S, JobContext], dict[str, Any]]], StageFn]:
    """Register a stage function ``fn(settings, ctx) -> summary`` under ``name``."""

    def deco(fn: Callable[[S, JobContext], dict[str, Any]]) -> StageFn:
        STAGES[name] = StageDef(settings, fn)
        return fn

    return deco


class StepFailed(RuntimeError):
    """A step did not finish (e.g. shards failed); a rerun resumes it."""


@dataclass
class JobContext:
    """What a stage gets besides its settings: where the job writes, and the engine it runs on."""

    workdir: Path
    engine: Engine

    def path(self, p: str | Path) -> Path:
        p = Path(p)
        return p if p.is_absolute() else self.workdir / p

    @staticmethod
    def config_path(p: str | Path) -> Path:
        """A config file: as given if it exists (absolute, or from here), else in the project."""
        p = Path(p)
        return p if p.is_absolute() or p.exists() else PROJECT_DIR / p

    def check(self, report: JobReport) -> JobReport:
        """Raise :class:`StepFailed` naming failed shards; the step is then rerun, resuming."""
        if report.failed:
            failed = ", ".join(f"{o.shard} ({o.error})" for o in report.failed[:5])
            raise StepFailed(f"{report.job}: {len(report.failed)} shard(s) failed: {failed}")
        return report


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = deep_merge(out[key], value) if both else value
    return out


def load_job(path: str | Path, overrides: list[str] | None = None) -> JobSpec:
    """The job file with ``--set`` overrides (``workdir=...``, ``vars.pool=...``, ``steps.2.with...``)."""
    return build(JobSpec, apply_overrides(read_yaml(path), overrides or []), source=str(path))


def job_variables(job: JobSpec, workdir: Path) -> dict[str, Any]:
    """``vars`` (themselves expanded against the built-ins) plus ``workdir`` and ``conf``."""
    builtins = {"workdir": str(workdir), "conf": str(CONF_DIR)}
    return {k: substitute(v, builtins, f"vars.{k}") for k, v in job.vars.items()} | builtins


def substitute(value: Any, variables: dict[str, Any], where: str) -> Any:
    """``${name}`` replaced in every string of ``value``; an unknown name is an error that says where.

    A string that is exactly ``${name}`` takes the variable's value with its type (a number stays one).
    """
    if isinstance(value, str) and value.startswith("${") and value.endswith("}") and value[2:-1] in variables:
        return variables[value[2:-1]]
    if isinstance(value, dict):
        return {k: substitute(v, variables, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, variables, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, str):
        try:
            return string.Template(value).substitute({k: str(v) for k, v in variables.items()})
        except KeyError as exc:
            raise ConfigError(f"{where}: ${{{exc.args[0]}}} is not in vars ({', '.join(variables)})") from exc
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from exc
    return value


@dataclass
class PlannedStep:
    index: int
    spec: StepSpec
    settings: StageSettings
    fingerprint: str


def plan_steps(job: JobSpec, workdir: Path) -> list[PlannedStep]:
    """Every step validated against its stage before anything runs (a typo fails in a second)."""
    labels = [s.label for s in job.steps]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"{job.name}: step names must be unique (give repeated stages a name): {labels}")
    variables = job_variables(job, workdir)
    planned = []
    for i, spec in enumerate(job.steps):
        if spec.stage not in STAGES:
            raise ConfigError(f"steps[{i}]: unknown stage {spec.stage!r}; known: {', '.join(sorted(STAGES))}")
        data = substitute(spec.with_, variables, f"steps[{i}].with")
        settings = build(STAGES[spec.stage].settings, data, source=f"steps[{i}] ({spec.label})")
        blob = json.dumps({"stage": spec.stage, "with": data}, sort_keys=True, default=str)
        planned.append(PlannedStep(i, spec, settings, hashlib.sha256(blob.encode()).hexdigest()[:16]))
    return planned


def step_marker(workdir: Path, step: PlannedStep) -> Path:
    return workdir / JOB_DIR / f"{step.index:02d}-{step.spec.label}.done.json"


def pending_steps(job: JobSpec, workdir: Path | None = None) -> list[tuple[PlannedStep, bool]]:
    """Every step, validated, with whether a rerun would skip it (finished with the same settings)."""
    import workflows.jobstages  # noqa: F401  (registers the stages)

    root = Path(workdir or job.workdir).resolve()
    out = []
    for step in plan_steps(job, root):
        marker = step_marker(root, step)
        done = marker.exists() and read_json(marker).get("fingerprint") == step.fingerprint
        out.append((step, done))
    return out


@dataclass
class StepRun:
    label: str
    status: str  # "done" | "skipped" (finished earlier, same settings) | "left out" (--skip)
    seconds: float = 0.0
    summary: dict[str, Any] | None = None


def run_job_file(
    job: JobSpec, engine: Engine, skip: list[str] | None = None, workdir: Path | None = None
) -> list[StepRun]:
    """Run (or resume) every step on ``engine``; raises :class:`StepFailed` at the first failing step."""
    import workflows.jobstages  # noqa: F401  (registers the stages)

    root = Path(workdir or job.workdir).resolve()
    steps = plan_steps(job, root)
    unknown = sorted(set(skip or []) - {s.spec.label for s in steps})
    if unknown:
        raise ConfigError(f"--skip {unknown}: no such step in {job.name}")
    root.mkdir(parents=True, exist_ok=True)
    ctx = JobContext(root, engine)
    runs = []
    for step in steps:
        label, marker = step.spec.label, step_marker(root, step)
        if label in (skip or []):
            runs.append(StepRun(label, "left out"))
            continue
        if marker.exists() and read_json(marker).get("fingerprint") == step.fingerprint:
            log.info("[%s] %s: done in an earlier run, skipped", job.name, label)
            runs.append(StepRun(label, "skipped", summary=read_json(marker).get("summary")))
            continue
        log.info("[%s] %s (%s) on %s", job.name, label, step.spec.stage, engine.name)
        started = time.perf_counter()
        summary = STAGES[step.spec.stage].run(step.settings, ctx)
        seconds = round(time.perf_counter() - started, 2)
        record = {"stage": step.spec.stage, "fingerprint": step.fingerprint, "seconds": seconds}
        atomic_write_json(marker, {**record, "engine": engine.name, "summary": summary})
        runs.append(StepRun(label, "done", seconds, summary))
    return runs
