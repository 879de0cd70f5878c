"""`curate ablate`: grid expansion, set preparation, cells, results, power-law fit, HTML report.

(Over 400 lines: one file per command; its tests share the grid fixtures.)
"""

from __future__ import annotations

import io
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from curation.core.config import ConfigError, build
from curation.core.subset import Subset
from trainer.powerlaw import PowerLawError, fit_power_law
from workflows.ablation import (
    CELL_FILE,
    ERROR_FILE,
    AblationConfig,
    AblationResult,
    CellJob,
    CellRecord,
    expand_cells,
    expand_sets,
    prepare_set,
    prepare_sets,
    run_cell,
)
from workflows.ablation_results import read_headlines


def config(**values) -> AblationConfig:
    base = {"pool": "pool", "suite": "suite"}
    return build(AblationConfig, {**base, **values})


# ---------------------------------------------------------------- grid


def test_grid_expands_sets_modes_seeds_and_baselines():
    cfg = config(
        topk=[40, 20, 100],
        modes=["one_epoch", "equal_samples"],
        seeds=[0, 1],
        samples_seen=500,
        named_sets={"basic": "basic.npy"},
        baselines={"shards": "imagenet/train", "budgets": [200, 100], "seeds": [3]},
    )
    sets = expand_sets(cfg)
    assert [s.name for s in sets] == ["top20", "top40", "top100", "random20", "random40", "basic"]
    randoms = [s for s in sets if s.kind == "random"]
    by_name = {s.name: s for s in sets}
    for r in randoms:  # each control matches the size of the top-k set with the same k
        assert by_name[r.control_of].kind == "topk" and by_name[r.control_of].k == r.k
    cells = expand_cells(cfg)
    assert len(cells) == len(sets) * 2 * 2 + 2
    assert len({c.id for c in cells}) == len(cells)
    assert {c.id for c in cells} >= {
        "top20__one_epoch__s0",
        "basic__equal_samples__s1",
        "supervised100__equal_samples__s3",
    }
    equal = [c for c in cells if c.set.kind != "baseline" and c.mode == "equal_samples"]
    assert {c.samples_seen for c in equal} == {500}
    assert all(c.samples_seen is None for c in cells if c.mode == "one_epoch")
    baselines = [c for c in cells if c.set.kind == "baseline"]
    assert [(c.samples_seen, c.seed, c.set.shards) for c in baselines] == [
        (100, 3, "imagenet/train"),
        (200, 3, "imagenet/train"),
    ]


def test_no_random_control_when_disabled():
    sets = expand_sets(config(topk=[50], random_control=False))
    assert [s.kind for s in sets] == ["topk"]


@pytest.mark.parametrize(
    "values",
    [
        {"topk": [0]},
        {"topk": [120]},
        {"named_sets": {"a__b": "x.npy"}},
        {"named_sets": {"<b>": "x.npy"}},
        {"baselines": {"budgets": [100]}},  # budgets without shards
        {"modes": ["two_epochs"]},
        {"named_sets": {"a": "a.npy"}, "named_controls": ["b"]},  # a control of a set not given
        {"unknown_key": 1},
    ],
)
def test_bad_configs_are_rejected_with_the_key(values):
    with pytest.raises(ConfigError):
        config(**values)


def test_named_set_clashing_with_a_generated_name_is_rejected():
    with pytest.raises(ValueError, match="clash"):
        expand_sets(config(topk=[20], named_sets={"top20": "x.npy"}))


# ---------------------------------------------------------------- sets and cells without training


def test_a_named_set_that_does_not_exist_is_an_error_not_a_crash(tmp_path):
    cfg = config(named_sets={"ghost": str(tmp_path / "nope.npy")})
    spec = next(s for s in expand_sets(cfg) if s.kind == "named")
    info = prepare_set(spec, cfg, tmp_path / "out")
    assert info.shards is None and "nope.npy" in (info.error or "")


def _job(tmp_path: Path, set_error: str | None) -> CellJob:
    cell = expand_cells(config(topk=[50], modes=["one_epoch"], random_control=False))[0]
    return CellJob(
        cell=cell,
        shards=None,
        set_size=None,
        set_error=set_error,
        cell_dir=tmp_path / "cells" / cell.id,
        preset="tiny",
        preset_overrides=(),
        suite="suite",
        eval_config=None,
        eval_overrides=(),
        device="cpu",
    )


def test_a_cell_whose_set_failed_is_recorded_failed_and_retried_later(tmp_path):
    job = _job(tmp_path, "ReshardError: no samples")
    rec = run_cell(job)
    assert rec.status == "failed" and "no samples" in (rec.error or "")
    saved = json.loads((job.cell_dir / ERROR_FILE).read_text())
    assert "no samples" in saved["error"] and "Traceback" in saved["traceback"]
    assert not (job.cell_dir / CELL_FILE).exists()
    assert run_cell(job).status == "failed"  # no marker: a rerun tries again


def test_a_finished_cell_is_skipped(tmp_path):
    job = _job(tmp_path, "would fail if run")
    job.cell_dir.mkdir(parents=True)
    done = CellRecord(job.cell.id, "top50", "topk", 50.0, "one_epoch", 0, "finished", subset_size=7)
    (job.cell_dir / CELL_FILE).write_text(json.dumps(done.__dict__))
    rec = run_cell(job)
    assert rec.status == "finished" and rec.reused and rec.subset_size == 7 and rec.error is None


def test_topk_sets_hold_the_best_scores_and_random_controls_have_their_sizes(tmp_path):
    import pyarrow.parquet as pq

    from tests.ablation_fixtures import SCORE, write_quality_pool

    pool = write_quality_pool(tmp_path / "pool", n=60, per_shard=30)
    cfg = config(pool=str(pool), topk=[25, 50, 100], modes=["one_epoch"])
    out = tmp_path / "out"
    infos = prepare_sets(expand_cells(cfg), cfg, out)
    assert all(i.error is None for i in infos.values()), infos
    scores = pq.read_table(pool / "attributes" / SCORE).to_pandas().set_index("uid")[SCORE]
    for k in (25, 50):
        top = Subset.load(out / "sets" / f"top{k}" / "subset.npy")
        rnd = Subset.load(out / "sets" / f"random{k}" / "subset.npy")
        assert len(top) == len(rnd) == round(k / 100 * 60)
        assert set(top.hex()) == set(scores.sort_values(ascending=False).index[: len(top)])
        assert set(rnd.hex()) != set(top.hex())
        sizes = json.loads((out / "sets" / f"random{k}" / "shards" / "sizes.json").read_text())
        assert sum(sizes.values()) == len(rnd)
    assert infos["top100"].size == 60
    # a second preparation reuses the sets (set.json) instead of selecting again
    (out / "sets" / "top25" / "subset.npy").unlink()
    assert prepare_sets(expand_cells(cfg), cfg, out)["top25"].size == infos["top25"].size


def test_named_sets_get_random_controls_of_their_own_size(tmp_path):
    import pyarrow.parquet as pq

    from tests.ablation_fixtures import write_quality_pool

    pool = write_quality_pool(tmp_path / "pool", n=60, per_shard=30)
    uids = [u for f in sorted(pool.glob("*.parquet")) for u in pq.read_table(f)["uid"].to_pylist()]
    method = Subset.from_hex(uids[:17], {"name": "method"}).save(tmp_path / "method.npy")
    cfg = config(
        pool=str(pool),
        topk=[100],
        modes=["one_epoch"],
        named_sets={"method": str(method), "other": str(method)},
        named_controls=["method"],
    )
    sets = {s.name: s for s in expand_sets(cfg)}
    assert "random_other" not in sets  # only the sets named in named_controls
    control = sets["random_method"]
    assert (control.kind, control.control_of, control.subset) == ("random", "method", str(method))
    infos = prepare_sets(expand_cells(cfg), cfg, tmp_path / "out")
    assert infos["random_method"].error is None, infos["random_method"]
    drawn = Subset.load(tmp_path / "out" / "sets" / "random_method" / "subset.npy")
    assert len(drawn) == infos["random_method"].size == 17
    assert set(drawn.hex()) <= set(uids) and set(drawn.hex()) != set(uids[:17])


def test_mix_sets_add_the_noisy_source_to_all_of_the_clean_one(tmp_path):
    import pyarrow.parquet as pq

    from tests.ablation_fixtures import write_quality_pool

    pool = write_quality_pool(tmp_path / "pool", n=60, per_shard=30, sources=("photo", "forum"))
    mix = {"clean": ["photo"], "noisy": ["forum"], "noisy_shares": [0.5, 0.25]}
    cfg = config(pool=str(pool), topk=[100], random_control=False, modes=["one_epoch"], mix=mix)
    cells = expand_cells(cfg)
    assert {c.id for c in cells if c.set.kind == "mix"} == {
        "mix_clean__equal_samples__s0",  # mixes compare at equal samples seen, whatever the modes
        "mix_noisy25__equal_samples__s0",
        "mix_noisy50__equal_samples__s0",
    }
    out = tmp_path / "out"
    infos = prepare_sets(cells, cfg, out)
    assert all(i.error is None for i in infos.values()), infos
    rows = pd.concat([pq.read_table(p).to_pandas() for p in sorted(pool.glob("*.parquet"))])
    by_source = {s: set(g["uid"]) for s, g in rows.groupby("source")}
    clean = set(Subset.load(out / "sets" / "mix_clean" / "subset.npy").hex())
    assert clean == by_source["photo"]
    for name, n_noisy in (("mix_noisy50", 30), ("mix_noisy25", 10)):
        got = Subset.load(out / "sets" / name / "subset.npy")
        assert len(got) == infos[name].size == 30 + n_noisy
        assert set(got.hex()) - by_source["forum"] == by_source["photo"]
        *_, mixed = got.manifest["funnel"]["stages"]  # the card's funnel: pool -> candidates -> mix
        assert (mixed["stage"], mixed["seen"], mixed["kept"]) == ("mix", 60, len(got))
        assert mixed["dropped"] == {"not_drawn": 30 - n_noisy} if n_noisy < 30 else not mixed["dropped"]
    with pytest.raises(ConfigError, match="both clean and noisy"):
        config(mix={"clean": ["a"], "noisy": ["a"]})
    bad = config(pool=str(pool), topk=[100], mix={"clean": ["photo"], "noisy": ["nowhere"]})
    info = prepare_sets(expand_cells(bad), bad, tmp_path / "bad")["mix_noisy50"]
    assert info.error is not None and "nowhere" in info.error


def _members(tar) -> list[tuple[str, bytes]]:
    """A tar's members and contents (resharding stamps its tars with the time they were written)."""
    import tarfile

    with tarfile.open(fileobj=tar) if isinstance(tar, io.BytesIO) else tarfile.open(tar) as f:
        return [(m.name, f.extractfile(m).read()) for m in f if m.isfile()]


def test_sets_and_cells_with_out_on_s3_match_local_ones(tmp_path, s3):
    """OUT on object storage: sets made locally and uploaded before their set.json, cell markers there."""
    from curation.core import storage
    from tests.ablation_fixtures import write_quality_pool

    pool = write_quality_pool(tmp_path / "pool", n=60, per_shard=30)
    cfg = config(pool=str(pool), topk=[50, 100], modes=["one_epoch"])
    local, remote = tmp_path / "out", storage.location(f"{s3.url}/ablation")
    here, there = prepare_sets(expand_cells(cfg), cfg, local), prepare_sets(expand_cells(cfg), cfg, remote)
    assert all(i.error is None for i in there.values()), there
    assert there["top50"].shards == f"{s3.url}/ablation/sets/top50/shards"
    assert there["random50"].subset == f"{s3.url}/ablation/sets/random50/subset.npy"
    for name in ("top50", "random50", "top100"):
        assert there[name].size == here[name].size
        files = sorted(
            p.relative_to(local / "sets" / name).as_posix() for p in (local / "sets" / name).rglob("*")
        )
        files = [f for f in files if (local / "sets" / name / f).is_file()]
        assert s3.keys(f"ablation/sets/{name}") == [f"ablation/sets/{name}/{f}" for f in files]
        for f in ("subset.npy", "shards/sizes.json"):
            assert (
                storage.read_bytes(remote / "sets" / name / f) == (local / "sets" / name / f).read_bytes()
            ), f
        tar = storage.read_bytes(remote / "sets" / name / "shards" / "00000.tar")
        assert _members(io.BytesIO(tar)) == _members(local / "sets" / name / "shards" / "00000.tar")
    storage.remove(remote / "sets" / "top50" / "shards" / "00000.tar")  # set.json: made once, not again
    assert prepare_sets(expand_cells(cfg), cfg, remote)["top50"] == there["top50"]

    job = _job(tmp_path, "ReshardError: no samples")
    job = CellJob(**{**job.__dict__, "cell_dir": remote / "cells" / job.cell.id})
    assert run_cell(job).status == "failed"
    assert s3.keys(f"ablation/cells/{job.cell.id}") == [f"ablation/cells/{job.cell.id}/{ERROR_FILE}"]
    done = CellRecord(job.cell.id, "top50", "topk", 50.0, "one_epoch", 0, "finished", subset_size=7)
    storage.write_bytes(job.cell_dir / CELL_FILE, json.dumps(done.__dict__).encode())
    rec = run_cell(job)
    assert rec.reused and rec.run_dir == f"{s3.url}/ablation/cells/{job.cell.id}/run"


def test_results_and_report_on_s3_equal_local_ones(tmp_path, s3):
    from curation.core import storage
    from workflows.ablation_report import write_outputs

    cfg = config(eval_overrides=["bootstrap.samples=50"], topk=[20, 50, 100])
    cells = _fake_cells(tmp_path / "cells")
    storage.upload_dir(tmp_path / "cells", f"{s3.url}/cells")
    remote_cells = [
        CellRecord(**{**c.__dict__, "eval_dir": c.eval_dir and c.eval_dir.replace(str(tmp_path), s3.url)})
        for c in cells
    ]
    local_out, remote_out = tmp_path / "out", storage.location(f"{s3.url}/out")
    write_outputs(AblationResult(local_out, cells, {}), cfg)
    write_outputs(AblationResult(remote_out, remote_cells, {}), cfg)
    assert s3.keys("out") == ["out/report.html", "out/results.csv", "out/results.json"]
    for name in ("results.csv", "results.json"):
        assert storage.read_bytes(remote_out / name) == (local_out / name).read_bytes(), name
    html = storage.read_text(remote_out / "report.html").replace(str(remote_out), str(local_out))
    assert html == (local_out / "report.html").read_text()
    assert read_headlines(remote_out) == read_headlines(local_out) != []


# ---------------------------------------------------------------- power law


def test_power_law_recovers_a_known_exponent():
    rng = np.random.default_rng(0)
    n = np.geomspace(1e3, 1e7, 12)
    err = 3.0 * n**-0.27 * np.exp(rng.normal(0, 0.01, n.size))
    fit = fit_power_law(n, err)
    assert fit.b == pytest.approx(0.27, abs=0.01)
    assert fit.a == pytest.approx(3.0, rel=0.15)
    assert fit.r2 > 0.99
    assert fit.predict(1e4) == pytest.approx(3.0 * 1e4**-0.27, rel=0.05)


def test_power_law_with_a_floor_recovers_exponent_and_floor():
    n = np.geomspace(1e3, 1e7, 15)
    fit = fit_power_law(n, 5.0 * n**-0.4 + 0.12, offset=True)
    assert fit.b == pytest.approx(0.4, abs=0.01)
    assert fit.c == pytest.approx(0.12, abs=0.005)


@pytest.mark.parametrize(
    ("n", "err"),
    [([100, 100], [0.5, 0.4]), ([100], [0.5]), ([100, 200], [0.5, 0.0]), ([-1, 200], [0.5, 0.4])],
)
def test_power_law_refuses_points_that_cannot_support_it(n, err):
    with pytest.raises(PowerLawError):
        fit_power_law(np.array(n), np.array(err))


# ---------------------------------------------------------------- report (from recorded cells, no training)


def _records(eval_dir: Path, label: str, acc: dict[str, float], n: int = 40) -> list[dict]:
    """Evaluator-like records with per-sample ``correct`` arrays of the given accuracies."""
    roles = {"tiny_id": "in_distribution", "tiny_sketch": "shift", "tiny_v2": "shift"}
    out = []
    (eval_dir / "samples").mkdir(parents=True, exist_ok=True)
    for dataset, a in acc.items():
        correct = np.arange(n) < round(a * n)
        rel = f"samples/{dataset}.npz"
        np.savez(eval_dir / rel, correct=correct)
        out.append(
            {
                "dataset": dataset,
                "label": label,
                "task": "zeroshot_classification",
                "role": roles[dataset],
                "metrics": {"acc1": float(correct.mean())},
                "ci": {"acc1": [max(0.0, correct.mean() - 0.1), min(1.0, correct.mean() + 0.1)]},
                "samples": rel,
            }
        )
    out.append(
        {
            "dataset": "tiny_retrieval",
            "label": label,
            "task": "zeroshot_retrieval",
            "role": "retrieval",
            "metrics": {"image_retrieval_recall@1": 0.25, "text_retrieval_recall@1": 0.5},
        }
    )
    return out


def _fake_cells(root: Path) -> list[CellRecord]:
    cells = []
    specs = [  # id, set, kind, k, mode, samples seen, (id acc, sketch, v2)
        (
            "supervised100__equal_samples__s0",
            "supervised100",
            "baseline",
            None,
            "equal_samples",
            100,
            (0.3, 0.1, 0.2),
        ),
        (
            "supervised400__equal_samples__s0",
            "supervised400",
            "baseline",
            None,
            "equal_samples",
            400,
            (0.6, 0.3, 0.45),
        ),
        (
            "supervised900__equal_samples__s0",
            "supervised900",
            "baseline",
            None,
            "equal_samples",
            900,
            (0.8, 0.5, 0.7),
        ),
    ]
    for k, acc in ((20, 0.45), (50, 0.55), (100, 0.5)):
        specs.append(
            (f"top{k}__one_epoch__s0", f"top{k}", "topk", k, "one_epoch", 10 * k, (acc, acc - 0.05, acc))
        )
        specs.append(
            (
                f"top{k}__equal_samples__s0",
                f"top{k}",
                "topk",
                k,
                "equal_samples",
                1000,
                (acc + 0.05, acc, acc),
            )
        )
        if k < 100:
            specs.append(
                (
                    f"random{k}__one_epoch__s0",
                    f"random{k}",
                    "random",
                    k,
                    "one_epoch",
                    10 * k,
                    (0.4, 0.3, 0.35),
                )
            )
    specs.append(
        ("mix_clean__equal_samples__s0", "mix_clean", "mix", 0, "equal_samples", 1000, (0.5, 0.45, 0.5))
    )
    specs.append(
        ("mix_noisy30__equal_samples__s0", "mix_noisy30", "mix", 30, "equal_samples", 1000, (0.5, 0.2, 0.25))
    )
    for cid, set_name, kind, k, mode, seen, (a_id, a_sk, a_v2) in specs:
        eval_dir = root / cid / "eval"
        records = _records(eval_dir, cid, {"tiny_id": a_id, "tiny_sketch": a_sk, "tiny_v2": a_v2})
        cells.append(
            CellRecord(
                cid, set_name, kind, k, mode, 0, "finished", subset_size=seen, samples_seen=seen,
                wall_s=1.5, train_s=1.0, eval_s=0.5, eval_dir=str(eval_dir), records=records,
            )
        )  # fmt: skip
    cells.append(
        CellRecord(
            "hostile__one_epoch__s0", "hostile", "named", None, "one_epoch", 0, "failed",
            error="ValueError: <script>alert('x')</script> & <img src=http://evil/x.png>",
        )
    )  # fmt: skip
    return cells


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.refs: list[str] = []
        self.imgs = 0

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.imgs += tag == "img"
        self.refs += [v or "" for k, v in attrs if k in ("src", "href", "action", "data")]


def test_results_and_report_from_recorded_cells(tmp_path):
    from workflows.ablation_report import write_outputs

    cfg = config(eval_overrides=["bootstrap.samples=200"], topk=[20, 50, 100])
    cells = _fake_cells(tmp_path / "cells")
    result = AblationResult(tmp_path, cells, {})
    results = write_outputs(result, cfg)

    table = pd.read_csv(tmp_path / "results.csv")
    assert len(table) == len(cells)
    row = table.set_index("cell").loc["top50__one_epoch__s0"]
    assert row["acc_id"] == pytest.approx(0.55)
    assert row["acc_shift_mean"] == pytest.approx((0.5 + 0.55) / 2)
    assert row["acc_shift_mean_ci_low"] < row["acc_shift_mean"] < row["acc_shift_mean_ci_high"]
    assert row["image_retrieval_recall@1"] == pytest.approx(0.25)
    # ER against the line through the three supervised baselines, as trainer.robustness computes it
    fit = results.robustness.fits["tiny_sketch"]
    assert row["er_tiny_sketch"] == pytest.approx(0.5 - float(fit.predict(0.55)))
    assert table.set_index("cell").loc["hostile__one_epoch__s0", "status"] == "failed"
    saved = json.loads((tmp_path / "results.json").read_text())
    assert len(saved["cells"]) == len(cells) and saved["id_dataset"] == "tiny_id"
    assert saved["shifts"] == ["tiny_sketch", "tiny_v2"]
    lines = read_headlines(tmp_path)  # what `curate ablate` and `curate demo` print at the end
    assert lines and lines == [h["text"] for h in saved["headlines"]] and "best top-k is" in lines[0]
    (mix,) = [h for h in saved["headlines"] if "mixed" in h]  # the mixing row: the noisy mix has lower ER
    assert (mix["clean"], mix["mixed"], mix["share"]) == ("mix_clean", "mix_noisy30", 0.0)  # same sizes
    assert mix["er"][1] < mix["er"][0] and mix["dilutes"] is not False
    assert saved["robustness"]["baselines_resampled"] is True

    html = (tmp_path / "report.html").read_text()
    parser = _Links()
    parser.feed(html)
    assert parser.imgs == 3  # threshold, robustness, power law
    assert parser.refs and all(r.startswith("data:image/png;base64,") for r in parser.refs)
    assert not {"script", "link", "iframe", "object", "embed"} & set(parser.tags)
    assert "<script>alert" not in html and "&lt;script&gt;alert" in html
    assert html.count("<tr") >= len(cells) + 1
    for cell in ("top20", "random50", "supervised900"):
        assert f">{cell}<" in html
    assert re.search(r"exponent b</th>", html) and "error = " in html  # the fitted power law is printed
    assert "open_clip_torch" in html and "quality_threshold" in html  # what was run
    assert "mixing at equal samples seen: mix_clean" in html and mix["text"] in html.replace("&#39;", "'")
    fits = re.findall(r"<tr><td class=\"text\">tiny_sketch</td><td>[-\d.]+</td><td>[-\d.]+</td><td>(\d+)</td>"
                      r"<td>([\d.]+)</td><td>([\d.]+)–([\d.]+)%</td>", html)  # fmt: skip
    assert fits == [("3", f"{results.robustness.fits['tiny_sketch'].r2:.3f}", "30.0", "80.0")]
    assert "and the baseline models (refitting the line)" in html


def test_report_without_baselines_says_why_there_is_no_er(tmp_path):
    from workflows.ablation_report import write_outputs

    cells = [c for c in _fake_cells(tmp_path / "cells") if c.kind != "baseline"]
    results = write_outputs(
        AblationResult(tmp_path, cells, {}), config(eval_overrides=["bootstrap.samples=0"])
    )
    assert results.robustness is None
    assert any("effective robustness not computed" in n for n in results.notes)
    html = (tmp_path / "report.html").read_text()
    assert "effective robustness not computed" in html
    assert "er_mean" not in pd.read_csv(tmp_path / "results.csv").columns


# ---------------------------------------- end to end (real selection, training, evaluation)


@pytest.mark.slow
def test_tiny_ablation_end_to_end_rerun_and_a_failing_cell(tmp_path):
    from tests.ablation_fixtures import write_world
    from workflows.ablation import run_ablation

    world = write_world(tmp_path / "world")
    ghost = Subset.from_hex(["0" * 31 + "1", "f" * 32], {"how": "test: uids not in the pool"})
    ghost_path = ghost.save(tmp_path / "ghost.npy")
    cfg = config(
        pool=str(world["pool"]),
        topk=[50],
        named_sets={"ghost": str(ghost_path)},
        modes=["one_epoch"],  # equal_samples runs through the same call: the baselines use it
        preset_overrides=["batch_size=16", "warmup=1", "log_every_n_steps=1", "workers=0"],
        suite=str(world["suite"]),
        eval_overrides=["bootstrap.samples=50", "workers=0"],
        baselines={"shards": str(world["baseline"]), "budgets": [32, 64]},
        device="cpu",
    )
    out = tmp_path / "out"
    result = run_ablation(cfg, out)
    status = {c.id: c.status for c in result.cells}
    assert not any(c.reused for c in result.cells)
    assert status == {
        "top50__one_epoch__s0": "finished",
        "random50__one_epoch__s0": "finished",
        "ghost__one_epoch__s0": "failed",
        "supervised32__equal_samples__s0": "finished",
        "supervised64__equal_samples__s0": "finished",
    }
    table = pd.read_csv(out / "results.csv").set_index("cell")
    assert (
        table.loc["top50__one_epoch__s0", "subset_size"]
        == table.loc["random50__one_epoch__s0", "subset_size"]
        == 48
    )
    assert table.loc["top50__one_epoch__s0", "samples_seen"] == 48
    assert table.loc["supervised64__equal_samples__s0", "samples_seen"] == 64
    assert table["acc_id"].notna().sum() == 4 and table["acc_tiny_sketch"].notna().sum() == 4
    baseline_acc = table.loc[["supervised32__equal_samples__s0", "supervised64__equal_samples__s0"], "acc_id"]
    if baseline_acc.nunique() == 2:  # a line through two baselines: every finished cell has an ER
        assert table["er_mean"].notna().sum() == 4
    else:  # no line through one point: said so, not guessed
        assert "effective robustness not computed" in " ".join(
            json.loads((out / "results.json").read_text())["notes"]
        )
    assert table.loc[["ghost__one_epoch__s0"], "error"].str.len().iloc[0] > 0
    top = Subset.load(out / "sets" / "top50" / "subset.npy")
    assert len(top) == len(Subset.load(out / "sets" / "random50" / "subset.npy"))
    for cid, s in status.items():
        assert (out / "cells" / cid / (CELL_FILE if s == "finished" else ERROR_FILE)).exists()
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 2 and "ghost__one_epoch__s0" in html

    again = run_ablation(cfg, out)  # finished cells are skipped, the failed ones retried (and fail again)
    assert {c.id: (c.status, c.reused) for c in again.cells} == {
        cid: (s, s == "finished") for cid, s in status.items()
    }
    attempts = json.loads((out / "cells" / "top50__one_epoch__s0" / "run" / "attempts.json").read_text())
    assert len(attempts) == 1  # not trained again


@pytest.mark.slow
def test_tiny_ablation_with_out_suite_and_baseline_shards_on_s3(tmp_path, s3):
    """OUT, the suite and the supervised baseline's shards on object storage; cells in the spawn pool."""
    from curation.core import storage
    from tests.ablation_fixtures import write_world
    from workflows.ablation import run_ablation

    world = write_world(tmp_path / "world")
    storage.upload_dir(world["suite"], f"{s3.url}/suite")
    storage.upload_dir(world["baseline"], f"{s3.url}/imagenet_train")
    cfg = config(
        pool=str(world["pool"]),  # selection and resharding read their pool on their own (see the stages)
        topk=[50],
        random_control=False,
        modes=["one_epoch"],
        preset_overrides=["batch_size=16", "warmup=1", "log_every_n_steps=1", "workers=0"],
        suite=f"{s3.url}/suite",
        eval_overrides=["bootstrap.samples=50", "workers=0"],
        baselines={"shards": f"{s3.url}/imagenet_train", "budgets": [32]},
        device="cpu",
        parallel_cells=2,
    )
    out = storage.location(f"{s3.url}/ablation")
    result = run_ablation(cfg, out)
    assert {c.id: c.status for c in result.cells} == {
        "top50__one_epoch__s0": "finished",
        "supervised32__equal_samples__s0": "finished",
    }, [c.error for c in result.cells]
    keys = s3.keys("ablation")
    for cid in ("top50__one_epoch__s0", "supervised32__equal_samples__s0"):
        for name in (CELL_FILE, "run/run.json", "run/checkpoint.pt", "eval/results.jsonl"):
            assert f"ablation/cells/{cid}/{name}" in keys, (cid, name)
    assert {"ablation/results.csv", "ablation/results.json", "ablation/report.html"} <= set(keys)
    assert "ablation/sets/top50/set.json" in keys and "ablation/sets/top50/shards/sizes.json" in keys
    table = pd.read_csv(io.StringIO(storage.read_text(out / "results.csv"))).set_index("cell")
    assert table.loc["top50__one_epoch__s0", "samples_seen"] == 48
    assert table.loc["supervised32__equal_samples__s0", "samples_seen"] == 32
    assert table["acc_id"].notna().sum() == 2
    run = json.loads(storage.read_text(out / "cells" / "top50__one_epoch__s0" / "run" / "run.json"))
    assert run["data"] == f"{s3.url}/ablation/sets/top50/shards"
    again = run_ablation(cfg, out)  # finished cells are skipped
    assert all(c.reused for c in again.cells)


def test_cli_writes_the_table_and_exits_non_zero_when_cells_fail(tmp_path):
    """Also runs the cells in the spawn process pool (-p 2): jobs and records must pickle."""
    from typer.testing import CliRunner

    from pipelines.app import app

    cfg = tmp_path / "ablation.yaml"
    cfg.write_text(
        "pool: {pool}\nsuite: {suite}\ntopk: [50]\nrandom_control: false\nmodes: [one_epoch]\n"
        "named_sets: {{ghost: {ghost}}}\n".format(
            pool=tmp_path / "no_pool", suite=tmp_path / "no_suite", ghost=tmp_path / "ghost.npy"
        )
    )
    out = tmp_path / "out"
    res = CliRunner().invoke(
        app, ["ablate", str(cfg), "-o", str(out), "-p", "2", "--set", "eval_overrides=[bootstrap.samples=0]"]
    )
    assert res.exit_code == 1, res.output
    table = pd.read_csv(out / "results.csv")
    assert list(table["cell"]) == ["top50__one_epoch__s0", "ghost__one_epoch__s0"]
    assert (table["status"] == "failed").all() and table["error"].str.len().min() > 0
    assert (out / "report.html").exists() and (out / "cells" / "ghost__one_epoch__s0" / ERROR_FILE).exists()


def _row(set_: str, kind: str, k: float | None, mode: str, acc: float) -> dict:
    return {
        "set": set_,
        "kind": kind,
        "k": k,
        "mode": mode,
        "status": "finished",
        "acc_id": acc,
        "acc_id_ci_low": acc - 0.02,
        "acc_id_ci_high": acc + 0.02,
    }


def test_headline_compares_best_topk_with_full_pool_and_its_random_control() -> None:
    from workflows.ablation_results import headlines

    rows = [
        _row("top20", "topk", 20, "equal_samples", 0.30),
        _row("top40", "topk", 40, "equal_samples", 0.40),
        _row("top100", "topk", 100, "equal_samples", 0.35),
        _row("random20", "random", 20, "equal_samples", 0.33),
        _row("random40", "random", 40, "equal_samples", 0.42),
        _row("top40", "topk", 40, "one_epoch", 0.20),
    ]
    (eq, one) = headlines(pd.DataFrame(rows))
    assert (eq.best, eq.full, eq.random) == ("top40", "top100", "random40")
    assert eq.beats_full is True and eq.beats_random is False
    assert "does not beat random40 (42.0%)" in eq.sentence()
    assert one.best == "top40" and one.full is None and one.beats_full is None


def test_mix_headline_says_whether_the_noisy_source_dilutes_robustness() -> None:
    from workflows.ablation_results import mix_headlines

    def mix_row(name: str, share: float, er: float, half_width: float) -> dict:
        row = _row(name, "mix", 100 * share, "equal_samples", 0.3)
        return {**row, "acc_shift_mean": 0.2, "er_mean": er, "er_mean_ci_low": er - half_width,
                "er_mean_ci_high": er + half_width}  # fmt: skip

    rows = [mix_row("mix_clean", 0, 0.05, 0.01), mix_row("mix_noisy50", 0.5, 0.01, 0.01)]
    (apart,) = mix_headlines(pd.DataFrame([*rows, _row("top40", "topk", 40, "equal_samples", 0.4)]))
    assert (apart.clean, apart.mixed, apart.share, apart.dilutes) == ("mix_clean", "mix_noisy50", 0.5, True)
    assert "dilutes robustness" in apart.sentence() and "ER +5.0 [+4.0, +6.0] pts" in apart.sentence()
    (overlap,) = mix_headlines(pd.DataFrame([rows[0], mix_row("mix_noisy50", 0.5, 0.04, 0.02)]))
    assert overlap.dilutes is None and "not resolved" in overlap.sentence()
    (higher,) = mix_headlines(pd.DataFrame([rows[0], mix_row("mix_noisy50", 0.5, 0.08, 0.01)]))
    assert higher.dilutes is False and "does not dilute" in higher.sentence()
    assert mix_headlines(pd.DataFrame(rows[1:])) == []  # nothing to compare with


def test_method_headline_says_whether_a_named_set_beats_its_random_control() -> None:
    from workflows.ablation_results import method_headlines

    rows = [
        _row("semdedup", "named", None, "equal_samples", 0.40),
        _row("random_semdedup", "random", None, "equal_samples", 0.30),
        _row("balanced", "named", None, "equal_samples", 0.31),
        _row("random_balanced", "random", None, "equal_samples", 0.30),
        _row("hardmatch", "named", None, "equal_samples", 0.50),  # no control: no headline
        _row("worse", "named", None, "equal_samples", 0.20),
        _row("random_worse", "random", None, "equal_samples", 0.25),
        _row("top30", "topk", 30, "equal_samples", 0.45),
        {**_row("quality", "named", None, "equal_samples", 0.30), "subset_size": 2210},  # as top30's
        {**_row("random30", "random", 30, "equal_samples", 0.35), "subset_size": 2210},
    ]
    by_method = {h.method: h for h in method_headlines(pd.DataFrame(rows))}
    assert sorted(by_method) == ["balanced", "quality", "semdedup", "worse"]
    assert by_method["quality"].control == "random30" and by_method["quality"].helps is False
    assert by_method["semdedup"].helps is True and "it helps" in by_method["semdedup"].sentence()
    assert "40.0% [38.0, 42.0]" in by_method["semdedup"].sentence()
    assert by_method["balanced"].helps is None and "not resolved" in by_method["balanced"].sentence()
    assert by_method["worse"].helps is False and by_method["worse"].control == "random_worse"
