"""A whole curation job in one YAML file: ``curate run conf/pipelines/JOB.yaml --engine spark``.

A job file names a ``workdir`` and its ``steps`` in order, each ``{stage: NAME, with: {...}}``:
the same stage functions the ``curate`` subcommands call (download, score, filter, select,
hardmatch, reshard, card, ...: every :class:`curation.core.stagedef.StageDef` registered in
``clip_curation.stages``), with the same config files and
``--set`` overrides. Data paths in ``with`` are relative to ``workdir``; config files are relative
to the current directory (or to the project, for ``conf/...``). ``${name}`` in a value is replaced
by ``vars.name``; ``${workdir}`` (absolute) and ``${conf}`` (the project's conf/) are always defined
and may be used in vars too. So one job file serves several pools:
``curate run JOB.yaml --set vars.pool=/data/pool``.

``workdir`` (and any path) may be a URL (``s3://bucket/job``): every step then reads and writes
object storage (see docs/storage.md). A ``storage_options`` block gives per-protocol fsspec options
(``{s3: {endpoint_url: ...}}``); they are never written into a marker or an output.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ConfigDict, Field
from upath import UPath

from curation.core import storage
from curation.core.config import CONF_DIR, ConfigError, ConfigModel, apply_overrides, build, read_yaml
from curation.core.io import atomic_write_json, read_json
from curation.core.stagedef import STAGES, StageDef
from curation.engines import Engine

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
    workdir: storage.Location
    storage_options: dict[str, dict[str, Any]] = Field(default_factory=dict)
    vars: dict[str, Any] = Field(default_factory=dict)
    engine: EngineDefaults = Field(default_factory=EngineDefaults)
    steps: list[StepSpec]


STEP_CONFIG_KEYS = ("config", "settings", "set")  # in a step's `with`: the stage's config, not its inputs


@dataclass
class JobContext:
    """What a step's values are resolved against: the job's workdir (data) and the project (configs)."""

    workdir: Path

    def path(self, p: str | Path) -> Path:
        p = storage.location(p)
        return p if p.is_absolute() else self.workdir / str(p)

    @staticmethod
    def config_path(p: str | Path) -> Path:
        """A config file: as given if it exists (absolute, or from here), else in the project."""
        p = Path(p)
        return p if p.is_absolute() or p.exists() else PROJECT_DIR / p

    def resolve(self, inputs: ConfigModel) -> ConfigModel:
        """Relative paths among a stage's inputs made relative to the workdir."""
        updates: dict[str, Any] = {}
        for name in type(inputs).model_fields:
            value = getattr(inputs, name)
            if isinstance(value, UPath | Path):
                updates[name] = self.path(value)
            elif isinstance(value, list) and value and all(isinstance(v, UPath | Path) for v in value):
                updates[name] = [self.path(v) for v in value]
        return inputs.model_copy(update=updates)


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
    stage: StageDef[Any, Any]
    inputs: ConfigModel
    config: Any
    config_file: Path | None
    fingerprint: str


def plan_steps(job: JobSpec, workdir: Path) -> list[PlannedStep]:
    """Every step validated against its stage (inputs and config) before anything runs."""
    labels = [s.label for s in job.steps]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"{job.name}: step names must be unique (give repeated stages a name): {labels}")
    variables = job_variables(job, workdir)
    ctx = JobContext(workdir)
    planned = []
    for i, spec in enumerate(job.steps):
        where = f"steps[{i}] ({spec.label})"
        stage = STAGES.get(spec.stage, f"steps[{i}]")
        data = substitute(spec.with_, variables, f"steps[{i}].with")
        given = {k: v for k, v in data.items() if k not in STEP_CONFIG_KEYS}
        inputs = ctx.resolve(stage.make_inputs(given, where))
        config_file = ctx.config_path(data["config"]) if data.get("config") else None
        settings, overrides = data.get("settings") or {}, data.get("set") or []
        if not isinstance(settings, dict) or not isinstance(overrides, list):
            raise ConfigError(f"{where}: `settings` must be a mapping and `set` a list of key=value")
        config = stage.load_config(config_file, settings, overrides)
        blob = json.dumps({"stage": spec.stage, "with": data}, sort_keys=True, default=str)
        fingerprint = hashlib.sha256(blob.encode()).hexdigest()[:16]
        file = config_file or stage.default_config_path
        planned.append(PlannedStep(i, spec, stage, inputs, config, file, fingerprint))
    return planned


def step_marker(workdir: Path, step: PlannedStep) -> Path:
    return workdir / JOB_DIR / f"{step.index:02d}-{step.spec.label}.done.json"


def job_root(job: JobSpec, workdir: str | Path | None = None) -> Path:
    """The job's workdir (absolute if local), with the job's storage options applied."""
    storage.configure(job.storage_options)
    root = storage.location(workdir or job.workdir)
    return root if storage.is_remote(root) else root.resolve()


def pending_steps(job: JobSpec, workdir: Path | None = None) -> list[tuple[PlannedStep, bool]]:
    """Every step, validated, with whether a rerun would skip it (finished with the same settings)."""
    root = job_root(job, workdir)
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
    """Run (or resume) every step on ``engine``; raises :class:`StageFailed` at the first failing step."""
    root = job_root(job, workdir)
    steps = plan_steps(job, root)
    unknown = sorted(set(skip or []) - {s.spec.label for s in steps})
    if unknown:
        raise ConfigError(f"--skip {unknown}: no such step in {job.name}")
    storage.check_bucket(root, write=True)
    storage.ensure_dir(root)
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
        summary = step.stage.run(step.inputs, step.config, engine).check(label).summary
        seconds = round(time.perf_counter() - started, 2)
        record = {"stage": step.spec.stage, "fingerprint": step.fingerprint, "seconds": seconds}
        atomic_write_json(marker, {**record, "engine": engine.name, "summary": summary})
        runs.append(StepRun(label, "done", seconds, summary))
    return runs
