"""Benchmark: a quality head trained on part of the synthetic crawl's ground truth detects overlaid
text and watermarks on the held-out part (ROC AUC, overall and per overlay kind).

Needs a crawl made with overlays (``curate synth OUT -c conf/synth/methods.yaml``) and its pool
with an embedding stage (default: ``curate copydesc POOL -c conf/copydesc/lowlevel.yaml``, run here
when absent). Positives are the ground truth's ``overlay != none``; ``--holdout`` of the samples
(by uid hash) are held out. Prints figures; asserts nothing.

    python bench/quality_head.py --synth out/synth --pool out/pool
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from curation.core.config import CONF_DIR, load_config  # noqa: E402
from curation.core.pool import Pool  # noqa: E402
from curation.engines import run_job  # noqa: E402
from curation.filtering.copydesc import CopyDescConfig  # noqa: E402
from curation.filtering.copydesc_job import CopyDescJob  # noqa: E402
from curation.scoring.head import holdout_mask, load_head, roc_auc  # noqa: E402
from curation.scoring.head_job import TrainHeadConfig, labelled_embeddings, train_head_on_pool  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--synth", type=Path, required=True)
    p.add_argument("--pool", type=Path, required=True)
    p.add_argument("--embeddings", default="lowlevel:lowlevel", help="STAGE:COLUMN")
    p.add_argument("--holdout", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    stage, column = args.embeddings.split(":")
    if stage == "lowlevel" and not Pool(args.pool).attributes_dir(stage).exists():
        cfg = load_config(CopyDescConfig, CONF_DIR / "copydesc" / "lowlevel.yaml")
        run_job(CopyDescJob(args.pool, cfg), "local").funnel().check()
    gt = pq.read_table(args.synth / "ground_truth.parquet", columns=["uid", "overlay"]).to_pandas()
    kind_of = dict(zip(gt["uid"].str.lower(), gt["overlay"], strict=True))
    with tempfile.TemporaryDirectory() as tmp:
        positives = Path(tmp) / "positives.txt"
        positives.write_text("\n".join(gt.loc[gt["overlay"].isin(["text", "watermark"]), "uid"]) + "\n")
        for hidden in ([], [128]):
            cfg = TrainHeadConfig.model_validate(
                {
                    "embeddings": {"attribute": stage, "column": column},
                    "positives": positives,
                    "hidden": hidden,
                    "holdout": args.holdout,
                    "seed": args.seed,
                }
            )
            report = train_head_on_pool(args.pool, cfg, Path(tmp) / "head.pt")
            vectors, labels, uids = labelled_embeddings(Pool(args.pool), cfg)
            held = holdout_mask(uids, cfg.holdout, cfg.seed)
            scores = load_head(Path(tmp) / "head.pt").score(vectors[held])
            kinds = np.array([kind_of.get(u, "none") for u in np.array(uids)[held]])
            per_kind = {
                k: roc_auc(
                    labels[held][(kinds == k) | (kinds == "none")], scores[(kinds == k) | (kinds == "none")]
                )
                for k in ("text", "watermark")
            }
            name = "linear" if not hidden else f"MLP {hidden}"
            print(
                f"{name:<12} train {report.n_train:>5}  held out {report.n_holdout:>5}  "
                f"positives {report.positives:>4}  AUC {report.holdout_auc:.4f}  "
                f"(text {per_kind['text']:.4f}, watermark {per_kind['watermark']:.4f})"
            )


if __name__ == "__main__":
    main()
