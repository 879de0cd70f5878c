"""Quality heads: bare state dicts load as their layers say, a head trained on a pool separates its
labels on held-out samples, the score job writes every sample (null without an embedding)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from typer.testing import CliRunner

from curation.core.pool import Pool
from curation.engines import run_job
from curation.scoring.head import QualityHead, holdout_mask, load_head, roc_auc
from curation.scoring.head_job import HeadScoreJob, ScoreHeadConfig, TrainHeadConfig, train_head_on_pool
from pipelines.app import app
from tests.test_filters import SCORE, write_pool


def test_roc_auc_and_holdout_split():
    assert roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.3, 0.4])) == 1.0
    assert roc_auc(np.array([1, 1, 0, 0]), np.array([0.1, 0.2, 0.3, 0.4])) == 0.0
    assert roc_auc(np.array([0, 1]), np.array([0.5, 0.5])) == 0.5
    uids = [f"{i:032x}" for i in range(2000)]
    held = holdout_mask(uids, 0.3, 0)
    assert 0.25 < held.mean() < 0.35
    assert (holdout_mask(uids[::-1], 0.3, 0) == held[::-1]).all()  # by uid, not by position


def test_a_bare_state_dict_loads_with_sizes_from_its_weights(tmp_path):
    """LAION's aesthetic predictor layout: Linear layers between Dropouts, no activation."""
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(
        torch.nn.Linear(12, 8), torch.nn.Dropout(0.2), torch.nn.Linear(8, 4), torch.nn.Linear(4, 1)
    )
    state = {f"layers.{k}": v for k, v in mlp.state_dict().items()}
    torch.save(state, tmp_path / "aesthetic.pth")
    head = load_head(tmp_path / "aesthetic.pth", activation="none")
    x = np.random.default_rng(0).normal(size=(5, 12)).astype(np.float32)
    mlp.eval()
    np.testing.assert_allclose(head.score(x), mlp(torch.from_numpy(x))[:, 0].detach().numpy(), rtol=1e-5)
    torch.save({"w": torch.zeros(3)}, tmp_path / "bad.pt")
    try:
        load_head(tmp_path / "bad.pt")
        raise AssertionError("a state dict without Linear layers must be refused")
    except ValueError as exc:
        assert "Linear" in str(exc)
    assert isinstance(load_head(tmp_path / "aesthetic.pth"), QualityHead)


def write_labels(root: Path) -> dict[str, bool]:
    """A label column that the embeddings' first coordinate decides (so a head can learn it)."""
    out = root / "attributes" / "labels"
    out.mkdir(parents=True)
    truth = {}
    for path in sorted((root / "attributes" / SCORE).glob("*.parquet")):
        t = pq.read_table(path)
        emb = np.array(t["image_emb"].to_pylist(), dtype=np.float32)
        label = emb[:, 0] + 0.5 * emb[:, 1] > 0
        truth.update(zip(t["uid"].to_pylist(), label.tolist(), strict=True))
        pq.write_table(pa.table({"uid": t["uid"], "is_good": pa.array(label)}), out / path.name)
    return truth


def test_train_on_labels_then_score_every_sample(tmp_path):
    root = tmp_path / "pool"
    root.mkdir()
    write_pool(root)
    truth = write_labels(root)
    emb = {"attribute": SCORE, "column": "image_emb"}
    cfg = TrainHeadConfig.model_validate(
        {
            "embeddings": emb,
            "labels": {"attribute": "labels", "column": "is_good"},
            "hidden": [],
            "lr": 0.02,
        }
    )
    report = train_head_on_pool(root, cfg, tmp_path / "head.pt")
    assert report.n_train + report.n_holdout == len(truth)
    assert report.holdout_auc is not None and report.holdout_auc > 0.95, report
    job = HeadScoreJob(root, ScoreHeadConfig(head=tmp_path / "head.pt", embeddings=emb, name="goodness"))
    run_job(job, "local").funnel().check()
    scores = Pool(root).read_attributes("goodness")
    by_uid = dict(zip(scores["uid"].to_pylist(), scores["goodness"].to_pylist(), strict=True))
    samples = sum(Pool(root).read_samples(s).num_rows for s in Pool(root).shard_ids())
    assert len(by_uid) == samples and sum(v is None for v in by_uid.values()) == samples - len(truth)
    labelled = [u for u in truth if by_uid[u] is not None]
    auc = roc_auc(np.array([truth[u] for u in labelled]), np.array([by_uid[u] for u in labelled]))
    assert auc > 0.95


def test_cli_trains_from_a_positive_uid_list(tmp_path):
    root = tmp_path / "pool"
    root.mkdir()
    write_pool(root)
    truth = write_labels(root)
    (tmp_path / "pos.txt").write_text("\n".join(u for u, v in truth.items() if v) + "\n")
    args = ["train-head", str(root), "--out", str(tmp_path / "h.pt"), "--embeddings", f"{SCORE}:image_emb"]
    result = CliRunner().invoke(app, [*args, "--positives", str(tmp_path / "pos.txt"), "--hidden", "16"])
    assert result.exit_code == 0, result.output
    assert "held-out ROC AUC" in result.output and (tmp_path / "h.json").exists()
    both = CliRunner().invoke(
        app, [*args, "--positives", str(tmp_path / "pos.txt"), "--labels", "labels:is_good"]
    )
    assert both.exit_code != 0
