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

SHARDS and RUN may be URLs (``s3://...``). Shards on object storage are read through webdataset
``pipe:`` URLs (``--train-data 'pipe:PYTHON -m curation.core.storage cat s3://b/shards/{00000..00099}.tar'``,
see :mod:`trainer.shards`); a RUN on object storage is trained in a local temp folder and mirrored
to the URL while training runs and at the end, ``run.json`` last (:mod:`trainer.runsync`), so a run
killed there resumes from the last epoch uploaded.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import open_clip
import torch

from curation.core import storage
from curation.core.io import atomic_write_json, read_json
from curation.core.provenance import code_version
from trainer.launch import run_training_subprocess
from trainer.oclog import summarize_file
from trainer.plan import PLAN_FILE, RunPlan, TrainError, TrainRequest, check_launchable, make_plan
from trainer.presets import Preset
from trainer.runs import (
    CHECKPOINT_FILE,
    RUN_FILE,
    RunInfo,
    load_run,
    save_checkpoint,
    strip_module_prefix,
)

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
OPENCLIP_NAME = "openclip"  # open_clip_train --name, i.e. RUN/openclip/
ATTEMPTS_FILE = "attempts.json"
DEVICE_INDEPENDENT = ("device",)  # plan keys that may change between an interrupted run and its resume


def prepare_run_dir(plan: RunPlan) -> bool:
    """Create RUN or check that it holds the same unfinished run; True when resuming (RUN may be a URL)."""
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
    elif _has_entries(out):
        raise TrainError(f"{out} exists and is not a run directory of this trainer; pick an empty --out")
    storage.ensure_dir(out)
    atomic_write_json(plan_path, new)
    return False


def _has_entries(out: Any) -> bool:
    if storage.is_remote(out):
        return bool(storage.list_files(out))
    return out.exists() and any(out.iterdir())


def _clear_run(out: Any) -> None:
    """Remove what a previous run of this trainer wrote (only its own files)."""
    for name in (RUN_FILE, PLAN_FILE, ATTEMPTS_FILE, CHECKPOINT_FILE):
        storage.remove(out / name)
    for sub in (OPENCLIP_NAME, "supervised"):
        storage.remove(out / sub, recursive=True)


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
    """open_clip_train arguments for the plan (DataComp's set: resume latest, save most recent).

    ``--train-data`` is the shards' brace pattern: local paths, or ``pipe:`` URLs for shards on
    object storage. ``--logs`` must be a local folder (open_clip_train writes to a file system).
    """
    p, b = plan.request.preset, plan.budget
    if storage.is_remote(plan.request.out):
        raise TrainError(
            f"open_clip_train writes its logs and checkpoints to a local folder, not {plan.request.out}: "
            "`curate train` with a URL --out trains in a local folder and uploads; --print-command needs a "
            "local --out"
        )
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
    """Plan, train (resuming an unfinished RUN), and write RUN/run.json; returns the finished run.

    A RUN on object storage is trained in a local temp folder mirrored to it (:mod:`trainer.runsync`).
    """
    if storage.is_remote(req.out):
        storage.check_bucket(req.out, write=True)
    plan = make_plan(req)
    if req.supervised:
        from trainer.supervised import prepare_supervised

        prepare_supervised(plan)
    resumed = prepare_run_dir(plan)
    if not storage.is_remote(req.out):
        _train(plan, resumed)
        return load_run(req.out)
    from trainer.runsync import RunSync

    with tempfile.TemporaryDirectory(prefix="curation-run-") as tmp:
        work = Path(tmp) / (storage.location(req.out).name or "run")
        work.mkdir()
        here = dataclasses.replace(plan, request=dataclasses.replace(req, out=work))
        sync = RunSync(work, storage.location(req.out))
        sync.pull()  # the unfinished run's plan, logs and training state: open_clip_train resumes from it
        with sync:
            try:
                _train(here, resumed, shown_out=storage.url(req.out))
            except TrainError as exc:  # name the run's URL, not the temp folder that is going away
                raise TrainError(str(exc).replace(str(work), storage.url(req.out))) from exc
    return load_run(req.out)


def _train(plan: RunPlan, resumed: bool, shown_out: str | None = None) -> None:
    """Train the planned run in its (local) RUN folder and write RUN/run.json."""
    req = plan.request
    if req.supervised:
        from trainer.supervised import run_supervised

        runner = run_supervised
    else:
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
        "code_version": code_version(mark_dirty=True),
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
        info["samples_seen"], wall, info["samples_per_s"] or 0, info["final_loss"],
        f"{shown_out or req.out}/{CHECKPOINT_FILE}",
    )  # fmt: skip
