"""Train a CLIP (via open_clip_train) or the supervised baseline on a curated set, on a fixed budget.

CLIP runs are open_clip_train itself, in a subprocess (``python -m trainer.openclip_entry`` or
``torchrun ... -m trainer.openclip_entry`` for several GPUs) with arguments derived from the
preset and the budget; this module only plans the run, shows its progress, and afterwards writes
``RUN/checkpoint.pt`` and ``RUN/run.json``. Calling it again on an unfinished RUN resumes from the
last saved epoch (``--resume latest``); the plan must match the one the run started with.

RUN layout::

    RUN/plan.json                      what was asked (compared on resume)
    RUN/attempts.json                  one entry per invocation: start, wall time, exit status
    RUN/openclip/out.log               open_clip_train's log (appended across resumes)
    RUN/openclip/console.log           everything the subprocess printed
    RUN/openclip/checkpoints/epoch_latest.pt   training state (model, optimizer, epoch)
    RUN/checkpoint.pt                  final weights for open_clip.create_model_and_transforms
    RUN/run.json                       summary; its presence marks the run finished
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import open_clip
import torch
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from curation.core.config import build
from curation.core.io import atomic_write_json, read_json
from curation.core.progress import bar
from trainer.budget import Budget, plan_budget
from trainer.oclog import StepLine, parse_line, summarize_file
from trainer.presets import Preset
from trainer.runs import (
    CHECKPOINT_FILE,
    RUN_FILE,
    RunInfo,
    code_version,
    load_run,
    save_checkpoint,
    strip_module_prefix,
)
from trainer.shards import ShardSet, open_shards

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
OPENCLIP_NAME = "openclip"  # open_clip_train --name, i.e. RUN/openclip/
PLAN_FILE = "plan.json"
ATTEMPTS_FILE = "attempts.json"
DEVICE_INDEPENDENT = ("device",)  # plan keys that may change between an interrupted run and its resume
EXPECTED_WARNING = "No pretrained weights loaded"  # training from scratch is the point


class TrainError(RuntimeError):
    """Training could not start or did not finish; the message says why and where the log is."""


@dataclass(frozen=True)
class TrainRequest:
    shards: Path
    out: Path
    preset: Preset
    mode: str = "one_epoch"
    samples_seen: int | None = None
    seed: int = 0
    device: str = "auto"
    gpus: int = 1
    supervised: bool = False
    classnames: Path | None = None
    overwrite: bool = False


@dataclass
class RunPlan:
    """Everything that determines the trained weights (plus the device), fixed when a run starts."""

    request: TrainRequest
    shards: ShardSet
    budget: Budget
    device: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return "supervised" if self.request.supervised else "clip"

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "preset": self.request.preset.model_dump(mode="json"),
            "data": str(self.shards.directory),
            "data_samples": self.shards.num_samples,
            "budget": self.budget.to_dict(),
            "seed": self.request.seed,
            "gpus": self.request.gpus,
            "device": self.device,
            **self.extra,
        }


def resolve_train_device(device: str, gpus: int = 1) -> str:
    """``auto`` is CUDA when present (or when several GPUs are asked for); else as given."""
    if device == "auto":
        return "cuda" if gpus > 1 or torch.cuda.is_available() else "cpu"
    if device.split(":")[0] not in ("cpu", "cuda"):
        raise TrainError(f"--device {device}: expected auto, cpu or cuda[:N]")
    return device


def check_launchable(plan: RunPlan) -> None:
    """Before starting training here: CUDA must exist when asked for; never a silent CPU run."""
    if plan.device.startswith("cuda") and not torch.cuda.is_available():
        raise TrainError(f"device {plan.device}: CUDA is not available here (use --device cpu or auto)")
    if plan.request.gpus > 1 and not plan.device.startswith("cuda"):
        raise TrainError(f"--gpus {plan.request.gpus} needs CUDA (open_clip_train's DDP wraps CUDA devices)")


def make_plan(req: TrainRequest) -> RunPlan:
    """Check the request and fix the budget. Devices are checked only when training is launched here
    (``check_launchable``): ``--print-command`` plans for other machines, and a run trained by a
    cluster launch can be exported on a machine without GPUs."""
    shards = open_shards(req.shards)
    budget = plan_budget(req.mode, shards.num_samples, req.preset, req.samples_seen)
    if req.gpus < 1:
        raise TrainError(f"--gpus must be at least 1, got {req.gpus}")
    if req.preset.batch_size % req.gpus:
        raise TrainError(f"batch size {req.preset.batch_size} does not split evenly over {req.gpus} GPUs")
    if req.supervised and req.gpus > 1:
        raise TrainError("the supervised baseline trains on one device; run it without --gpus")
    readers = max(1, req.preset.workers) * req.gpus
    if not budget.resampled and len(shards.tars) < readers:
        raise TrainError(
            f"one_epoch reads each shard once: {len(shards.tars)} shard(s) cannot feed {readers} loader "
            "workers; lower workers (--set workers=N) or reshard into more shards"
        )
    return RunPlan(req, shards, budget, resolve_train_device(req.device, req.gpus))


def plan_from_file(run_dir: Path, device: str) -> RunPlan:
    """The plan a run started with (``RUN/plan.json``), for the training process to rebuild."""
    d = read_json(run_dir / PLAN_FILE)
    req = TrainRequest(
        shards=Path(d["data"]),
        out=run_dir,
        preset=build(Preset, d["preset"], source=str(run_dir / PLAN_FILE)),
        mode=d["budget"]["mode"],
        samples_seen=d["budget"]["samples_seen"],
        seed=d["seed"],
        device=device,
        gpus=d["gpus"],
        supervised=d["kind"] == "supervised",
    )
    plan = make_plan(req)
    plan.extra.update({k: v for k, v in d.items() if k not in plan.to_dict()})
    return plan


def prepare_run_dir(plan: RunPlan) -> bool:
    """Create RUN or check that it holds the same unfinished run; True when resuming."""
    out = plan.request.out
    if (out / RUN_FILE).exists():
        if not plan.request.overwrite:
            raise TrainError(f"{out} already holds a finished run ({RUN_FILE}); pass --overwrite to retrain")
        _clear_run(out)
    plan_path = out / PLAN_FILE
    new = plan.to_dict()
    if plan_path.exists() and not plan.request.overwrite:
        old = read_json(plan_path)
        diff = sorted(
            k for k in set(old) | set(new) if k not in DEVICE_INDEPENDENT and old.get(k) != new.get(k)
        )
        if diff:
            raise TrainError(
                f"{out} holds an unfinished run with a different plan ({', '.join(diff)}); "
                "use another --out or --overwrite"
            )
        return True
    if plan.request.overwrite:
        _clear_run(out)
    elif out.exists() and any(out.iterdir()):
        raise TrainError(f"{out} exists and is not a run directory of this trainer; pick an empty --out")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(plan_path, new)
    return False


def _clear_run(out: Path) -> None:
    """Remove what a previous run of this trainer wrote (only its own files)."""
    for name in (RUN_FILE, PLAN_FILE, ATTEMPTS_FILE, CHECKPOINT_FILE):
        (out / name).unlink(missing_ok=True)
    for sub in (OPENCLIP_NAME, "supervised"):
        if (out / sub).is_dir():
            shutil.rmtree(out / sub)


def record_attempt(out: Path, started: float, resumed: bool, status: str) -> list[dict[str, Any]]:
    path = out / ATTEMPTS_FILE
    attempts = read_json(path) if path.exists() else []
    attempts.append(
        {
            "started": datetime.fromtimestamp(started, UTC).isoformat(timespec="seconds"),
            "wall_s": round(time.time() - started, 3),
            "resumed": resumed,
            "status": status,
        }
    )
    atomic_write_json(path, attempts)
    return attempts


# ---------------------------------------------------------------- CLIP via open_clip_train


def openclip_args(plan: RunPlan) -> list[str]:
    """open_clip_train arguments for the plan (DataComp's set: resume latest, save most recent)."""
    p, b = plan.request.preset, plan.budget
    args = [
        "--train-data", plan.shards.url_spec(),
        "--dataset-type", "webdataset",
        "--train-num-samples", str(b.samples_per_chunk),
        "--epochs", str(b.chunks),
        "--model", p.model,
        "--batch-size", str(p.batch_size // plan.request.gpus),
        "--lr", repr(p.lr), "--wd", repr(p.wd), "--warmup", str(p.warmup),
        "--beta1", repr(p.beta1), "--beta2", repr(p.beta2), "--eps", repr(p.eps),
        "--precision", p.precision,
        "--workers", str(p.workers),
        "--seed", str(plan.request.seed),
        "--device", plan.device.split(":")[0],
        "--logs", str(plan.request.out),
        "--name", OPENCLIP_NAME,
        "--log-every-n-steps", str(p.log_every_n_steps),
        "--save-frequency", str(p.save_frequency),
        "--save-most-recent",
        "--resume", "latest",
        "--aug-cfg", f"scale={tuple(p.image.aug_scale)!r}",
    ]  # fmt: skip
    flags = {
        "--dataset-resampled": b.resampled,
        "--grad-checkpointing": p.grad_checkpointing,
        "--local-loss": p.local_loss,
        "--gather-with-grad": p.gather_with_grad,
        "--ddp-static-graph": plan.request.gpus > 1,
    }
    args += [flag for flag, on in flags.items() if on]
    if p.grad_clip_norm is not None:
        args += ["--grad-clip-norm", repr(p.grad_clip_norm)]
    for flag, value in model_kwargs_args(p):
        args += [flag, *value]
    return args


def model_kwargs_args(preset: Preset) -> list[tuple[str, list[str]]]:
    out = []
    for key, value in preset.model_kwargs().items():
        flag = "--" + key.replace("_", "-")
        out.append((flag, [str(v) for v in value] if isinstance(value, list) else [str(value)]))
    return out


def subprocess_command(plan: RunPlan) -> list[str]:
    entry = ["-m", "trainer.openclip_entry", *openclip_args(plan)]
    if plan.request.gpus > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc_per_node={plan.request.gpus}", *entry]  # fmt: skip
    return [sys.executable, *entry]


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if p)
    # Busy-waiting OpenMP threads stall badly when cores are shared (10x slower steps measured on a
    # loaded 2-core machine); passive waiting costs nothing measurable on an idle one.
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


class ProgressReporter:
    """Turns open_clip_train's step lines into a rich progress bar and concise log lines."""

    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self.progress = bar(
            TextColumn("[bold]train[/bold]"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("samples  loss {task.fields[loss]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            transient=True,
        )
        self.task = self.progress.add_task("train", total=budget.chunks * budget.samples_per_chunk, loss="-")

    def __enter__(self) -> ProgressReporter:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)

    def step(self, s: StepLine) -> None:
        self.progress.update(
            self.task,
            total=self.budget.chunks * s.total,
            completed=s.epoch * s.total + s.done,
            loss=f"{s.loss:.4f}",
        )
        log.info(
            "epoch %d/%d  %d/%d samples  loss %.4f (avg %.4f)  lr %.3g  %.0f samples/s",
            s.epoch + 1, self.budget.chunks, s.done, s.total, s.loss, s.loss_avg, s.lr, s.samples_per_s,
        )  # fmt: skip


def run_training_subprocess(cmd: list[str], log_dir: Path, budget: Budget, what: str) -> None:
    """Run a training process to its end, streaming its step lines to the progress bar; raise on failure.

    Training always runs in a child process: it gets its own environment (``subprocess_env``), the
    same launch works under torchrun, and a crash of the training cannot take the CLI with it.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    log.info("%s: %s", what, shlex.join(cmd[1:]))
    tail: deque[str] = deque(maxlen=40)
    with (
        open(log_dir / "console.log", "a", encoding="utf-8") as console,
        ProgressReporter(budget) as reporter,
        subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            env=subprocess_env(),
        ) as proc,
    ):
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                console.write(line)
                tail.append(line.rstrip())
                step = parse_line(line)
                if step is not None:
                    reporter.step(step)
                elif ("| WARNING |" in line or "| ERROR |" in line) and EXPECTED_WARNING not in line:
                    log.warning("%s: %s", what, line.split("| ", 2)[-1].strip())
        except BaseException:
            proc.terminate()
            raise
        rc = proc.wait()
    if rc != 0:
        raise TrainError(
            f"{what} exited with status {rc}; last output:\n" + "\n".join(tail)
            + f"\n(full output: {log_dir / 'console.log'})"
        )  # fmt: skip


def export_clip_checkpoint(plan: RunPlan) -> tuple[Path, int]:
    """Write RUN/checkpoint.pt from the final training state; returns (path, epochs trained)."""
    state_path = plan.request.out / OPENCLIP_NAME / "checkpoints" / "epoch_latest.pt"
    if not state_path.exists():
        raise TrainError(f"open_clip_train finished without writing {state_path}")
    state = torch.load(state_path, map_location="cpu", weights_only=True)
    if state.get("epoch") != plan.budget.chunks:
        raise TrainError(f"{state_path} is at epoch {state.get('epoch')}, expected {plan.budget.chunks}")
    if plan.request.preset.save_frequency == 0:  # open_clip_train also wrote the final epoch_N.pt: same state
        (state_path.parent / f"epoch_{plan.budget.chunks}.pt").unlink(missing_ok=True)
    path = plan.request.out / CHECKPOINT_FILE
    save_checkpoint(
        path,
        strip_module_prefix(state["state_dict"]),
        kind="clip",
        model=plan.request.preset.model,
        model_kwargs=plan.request.preset.model_kwargs(),
    )
    return path, state["epoch"]


def trained_epochs(plan: RunPlan) -> int:
    """Epochs in the saved training state (0 when none), e.g. after a launch outside this process."""
    state_path = plan.request.out / OPENCLIP_NAME / "checkpoints" / "epoch_latest.pt"
    if not state_path.exists():
        return 0
    return int(torch.load(state_path, map_location="cpu", weights_only=True, mmap=True).get("epoch", 0))


def train_clip(plan: RunPlan) -> dict[str, Any]:
    """Train (unless a launch elsewhere already finished) and return the CLIP fields of run.json."""
    if trained_epochs(plan) < plan.budget.chunks:
        check_launchable(plan)
        cmd = subprocess_command(plan)
        run_training_subprocess(cmd, plan.request.out / OPENCLIP_NAME, plan.budget, "open_clip_train")
    else:
        log.info("training state is already at the last epoch: exporting only")
    checkpoint, epochs = export_clip_checkpoint(plan)
    summary = summarize_file(plan.request.out / OPENCLIP_NAME / "out.log")
    return {
        "checkpoint": checkpoint.name,
        "train_state": f"{OPENCLIP_NAME}/checkpoints/epoch_latest.pt",
        "epochs": epochs,
        "samples_seen": summary.samples_seen,
        "final_loss": summary.final_loss,
        "final_loss_avg": summary.final_loss_avg,
        "model_kwargs": plan.request.preset.model_kwargs(),
        "open_clip_train_args": openclip_args(plan),
    }


# ---------------------------------------------------------------- entry point


def train(req: TrainRequest) -> RunInfo:
    """Plan, train (resuming an unfinished RUN), and write RUN/run.json; returns the finished run."""
    plan = make_plan(req)
    if req.supervised:
        from trainer.supervised import prepare_supervised, run_supervised

        prepare_supervised(plan)
        resumed = prepare_run_dir(plan)
        runner = run_supervised
    else:
        resumed = prepare_run_dir(plan)
        runner = train_clip
    log.info(
        "%s %s run on %s (%d samples): %s, %d samples seen in %d chunk(s), seed %d, %s%s",
        req.preset.name, plan.kind, plan.shards.directory, plan.shards.num_samples, plan.budget.mode,
        plan.budget.samples_seen, plan.budget.chunks, req.seed, plan.device, " (resuming)" if resumed else "",
    )  # fmt: skip
    started = time.time()
    try:
        fields = runner(plan)
    except BaseException as exc:
        record_attempt(req.out, started, resumed, f"failed: {type(exc).__name__}")
        raise
    attempts = record_attempt(req.out, started, resumed, "finished")
    wall = sum(a["wall_s"] for a in attempts)
    info = {
        "kind": plan.kind,
        "model": req.preset.model,
        "preset": req.preset.name,
        "preset_config": req.preset.model_dump(mode="json"),
        "data": str(plan.shards.directory),
        "data_samples": plan.shards.num_samples,
        "subset_manifest": plan.shards.manifest(),
        "mode": plan.budget.mode,
        "budget": plan.budget.to_dict(),
        "samples_seen_requested": plan.budget.samples_seen,
        "seed": req.seed,
        "device": plan.device,
        "gpus": req.gpus,
        "code_version": code_version(),
        "versions": {"torch": torch.__version__, "open_clip": open_clip.__version__},
        "attempts": len(attempts),
        "wall_time_s": round(wall, 3),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        **plan.extra,
        **fields,
    }
    info["samples_per_s"] = round(info["samples_seen"] / wall, 2) if wall > 0 else None
    atomic_write_json(req.out / RUN_FILE, info)
    log.info(
        "finished: %d samples seen in %.1f s (%.0f samples/s), final loss %s -> %s",
        info["samples_seen"], wall, info["samples_per_s"] or 0, info["final_loss"], req.out / CHECKPOINT_FILE,
    )  # fmt: skip
    return load_run(req.out)
