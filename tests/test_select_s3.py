"""``select`` with its pool, input subsets and output on object storage (moto S3 on 127.0.0.1, memory://):
the subset, its manifest and its funnel are the same as the same run on local disk.

By nature only the fields that record a location (the manifest's ``pool``, a ``subset``/``size_of``
path inside its ``spec``) and the run time (``seconds``) differ.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from curation.core import storage
from curation.core.stagedef import STAGES
from curation.core.subset import Subset
from curation.engines import open_engine, run_job
from curation.filtering.job import FilterJob
from curation.selection.run import SelectSpec, run_selection
from tests.s3kit import SECRET
from tests.selpools import write_datacomp_pool, write_image_pool

EXT = "@EXT@"  # where the external subset is: replaced by its local path or its URL


def image_pool(root: Path) -> Path:
    """img2dataset layout, ``clip`` scores and ``filters`` verdicts (with the runner's markers)."""
    pool = write_image_pool(root, n_shards=3, per_shard=40)
    spec = [{"kind": "caption_length", "name": "caption", "min_words": 2, "min_chars": 6}]
    assert not run_job(FilterJob(pool, spec, name="filters"), "local").failed
    return pool


# gathered frame (attribute tables): filter verdicts, a threshold, a mix, a named subset
IMAGE_STEPS: list[dict[str, Any]] = [
    {"filter": {"stage": "filters"}},
    {"threshold": {"score": "clip:clip_score", "max": 0.45}},
    {
        "concat": {  # the mix: the top 40% once, a seeded random 30% twice
            "name": "mix",
            "of": [
                {"topk": {"score": "clip:clip_score", "fraction": 0.4}},
                {"repeat": {"times": 2, "of": {"random": {"fraction": 0.3, "seed": 3}}}},
            ],
        }
    },
    {"subset": {"path": EXT}},
]
# the pool parquet read straight (DataComp metadata pool): top-k, threshold, a mix, a subset, size_of
DATACOMP_STEPS: list[dict[str, Any]] = [
    {"threshold": {"score": "clip_b32_similarity_score", "min": 0.2}},
    {
        "union": [
            {"topk": {"score": "clip_l14_similarity_score", "fraction": 0.3, "semantics": "datacomp"}},
            {"repeat": {"times": 3, "of": {"random": {"size_of": EXT, "seed": 1}}}},
        ]
    },
    {"subset": {"path": EXT}},
]


def with_path(steps: Any, path: str) -> Any:
    return json.loads(json.dumps(steps).replace(EXT, path))


def external_subset(pool: Path, out: Path) -> Path:
    """Two of every three pool samples, every fifth of them twice (multiplicities must carry over)."""
    uids = sorted(run_selection(pool, SelectSpec(steps=[{"all": {}}])).subset.hex())[::3]
    uids = [u for i, u in enumerate(uids) if i % 3] + uids[::5]
    return Subset.from_hex(uids, {"name": "ext"}).save(out)


def run_stage(pool: str | Path, steps: Any, out: str | Path) -> dict[str, Any]:
    stage = STAGES.get("select")
    spec = SelectSpec(name="s3test", steps=steps)
    inputs = stage.make_inputs({"pool": str(pool), "out": str(out)}, "test")
    with open_engine("local") as eng:
        return stage.run(inputs, spec, eng).summary


def without_locations(manifest: dict[str, Any], ext: str) -> dict[str, Any]:
    """The manifest less what differs by nature: the pool's location, the run time, and the external
    subset's location wherever the spec or a decision names it."""
    m = {k: v for k, v in manifest.items() if k not in ("pool", "seconds")}
    return json.loads(json.dumps(m).replace(json.dumps(ext), json.dumps(EXT)))


@pytest.mark.parametrize("kind", ["image", "datacomp"])
def test_select_on_s3_is_byte_identical_to_local(s3, tmp_path: Path, kind: str) -> None:
    local = tmp_path / "local"
    pool = image_pool(local / "pool") if kind == "image" else write_datacomp_pool(local / "pool", 3, 200)
    ext = external_subset(pool, local / "sets" / "ext.npy")
    storage.upload_dir(local, f"{s3.url}/data")
    steps = IMAGE_STEPS if kind == "image" else DATACOMP_STEPS

    here = run_stage(pool, with_path(steps, str(ext)), local / "sel" / "top.npy")
    there = run_stage(
        f"{s3.url}/data/pool", with_path(steps, f"{s3.url}/data/sets/ext.npy"), f"{s3.url}/sel/top.npy"
    )

    assert here["uids"] == there["uids"] > 0 and here["funnel"] == there["funnel"]
    assert there["subset"] == f"{s3.url}/sel/top.npy"
    assert s3.keys("sel") == ["sel/top.json", "sel/top.npy", "sel/top.stats.json"]  # no work dir left
    for name in ("top.npy", "top.stats.json"):
        assert storage.read_bytes(f"{s3.url}/sel/{name}") == (local / "sel" / name).read_bytes(), name
    mine, theirs = (
        json.loads((local / "sel" / "top.json").read_text()),
        storage.read_text(f"{s3.url}/sel/top.json"),
    )
    assert SECRET not in theirs
    theirs = json.loads(theirs)
    assert theirs["pool"] == f"{s3.url}/data/pool" and mine["pool"] == str(pool.resolve())
    assert without_locations(theirs, f"{s3.url}/data/sets/ext.npy") == without_locations(mine, str(ext))
    assert Subset.load(f"{s3.url}/sel/top.npy").manifest == theirs
    assert theirs["count"] > theirs["unique"]  # the mix and the subset's multiplicities upsample
    written = s3.keys("")
    assert not [k for k in written if SECRET.encode() in storage.read_bytes(f"{s3.url}/{k}")]
    if kind == "image":
        assert theirs["frame"] == "gathered attribute tables" and theirs["source_mix"]
    else:
        assert theirs["frame"] == "pool parquet"


def test_metaclip_balance_with_pool_and_entries_on_s3(s3, tmp_path: Path) -> None:
    """The match job writes its attribute tables into the remote pool; the entry list is a URL."""
    local = tmp_path / "local"
    pool = write_image_pool(local / "pool", n_shards=2, per_shard=50)
    (local / "entries.txt").write_text("cat\ndog\nred\nblue\nbeach\nphoto of\n")
    storage.upload_dir(local, f"{s3.url}/data")
    step = {"metaclip_balance": {"t": 6, "seed": 2, "entries": EXT}}

    here = run_selection(pool, SelectSpec(name="mc", steps=[with_path(step, str(local / "entries.txt"))]))
    there = run_selection(
        f"{s3.url}/data/pool", SelectSpec(name="mc", steps=[with_path(step, f"{s3.url}/data/entries.txt")])
    )
    assert len(there.subset) > 0 and here.subset.uids.tobytes() == there.subset.uids.tobytes()
    assert here.decisions == there.decisions and here.funnel.to_dict() == there.funnel.to_dict()
    assert there.decisions[0]["head_entries"] >= 1 and there.funnel.stages[-1].total.dropped
    stage = there.decisions[0]["match_stage"]
    assert f"data/pool/attributes/{stage}/_done/00001.done" in s3.keys(f"data/pool/attributes/{stage}")


def test_remote_work_dir_is_reused_and_cleaned(tmp_path: Path) -> None:
    """memory:// pool and work dir: the gathered shards are committed there, a rerun reuses them."""
    pool = write_image_pool(tmp_path / "pool", n_shards=2, per_shard=30)
    root = f"memory://{tmp_path.name}"
    storage.upload_dir(pool, f"{root}/pool")
    spec = SelectSpec(steps=[{"topk": {"score": "clip:clip_score", "fraction": 0.5}}])
    work = f"{root}/work"
    first = run_selection(f"{root}/pool", spec, work_dir=work)
    done = storage.list_files(f"{work}/gather/_done", "*.done")
    assert [p.name for p in done] == ["00000.done", "00001.done"]
    stamps = [storage.read_bytes(p) for p in done]
    again = run_selection(f"{root}/pool", spec, work_dir=work)  # resumes: nothing to redo
    assert [storage.read_bytes(p) for p in done] == stamps
    assert first.subset.uids.tobytes() == again.subset.uids.tobytes()
    assert first.subset.uids.tobytes() == run_selection(pool, spec).subset.uids.tobytes()
    from curation.selection.run import clean_work_dir

    clean_work_dir(work)
    assert not storage.list_files(f"{work}/gather", "*")
