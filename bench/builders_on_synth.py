"""The three builders on a synthetic crawl (``curate synth OUT``), with figures checked against its truth.

- hardmatch on ``OUT/crawl.parquet``: precision and recall against ``OUT/ground_truth.parquet``;
- ImageNet-Captions on ``OUT/imagenet``: join rate, and every row's status checked against an
  independent pandas computation of the join;
- mixing ``OUT/crawl.parquet`` by source: proportions read back from the written subset.

    python bench/builders_on_synth.py OUT --work /tmp/builders
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from curation.builders.hardmatch import HardmatchConfig, run_hardmatch
from curation.builders.imagenet_captions import ImagenetCaptionsConfig, run_imagenet_captions
from curation.builders.mixing import MixConfig, run_mix
from curation.core.subset import Subset

ROOT = Path(__file__).resolve().parent.parent


def hardmatch(synth: Path, work: Path) -> None:
    cfg = HardmatchConfig(
        classes=str(synth / "classnames.txt"), synonyms=ROOT / "conf" / "hardmatch" / "synth_synonyms.yaml"
    )
    t0 = time.perf_counter()
    _, report = run_hardmatch(
        synth / "crawl.parquet",
        cfg,
        work / "hardmatch",
        ground_truth=synth / "ground_truth.parquet",
        overwrite=True,
    )
    assert report is not None
    gt = report["ground_truth"]
    print(f"hardmatch: {report['input_captions']} captions, {report['labelled']} labelled, "
          f"dropped {report['dropped']} ({time.perf_counter() - t0:.1f} s)")  # fmt: skip
    print(f"  precision {gt['precision']:.4f} ({gt['precision_definition']}), "
          f"vs pictured class {gt['precision_vs_image_class']:.4f}")  # fmt: skip
    print(f"  recall {gt['recall']:.4f} of {gt['recall_denominator']} captions naming their class "
          f"({gt['naming_own_class_but_ambiguous']} ambiguous, "
          f"{gt['naming_own_class_but_unmatched']} unmatched); "
          f"single-class recall {gt['recall_single_class_captions']:.4f}")  # fmt: skip
    print(f"  most ambiguous: {[r['class_name'] for r in report['most_ambiguous_classes'][:5]]}")


def imagenet_captions(synth: Path, work: Path) -> None:
    inet = synth / "imagenet"
    out = work / "imagenet_captions"
    _, report = run_imagenet_captions(
        inet / "index.parquet", inet / "flickr_meta.parquet", inet / "train", out, ImagenetCaptionsConfig(),
        overwrite=True,
    )  # fmt: skip
    assert report is not None
    index = pq.read_table(inet / "index.parquet").to_pandas()
    meta = pq.read_table(inet / "flickr_meta.parquet").to_pandas()
    expected = np.where(
        index["flickr_id"].isna(),
        "no_flickr_id",
        np.where(index["flickr_id"].isin(meta["photo_id"]), "joined", "no_metadata"),
    )
    rows = pq.read_table(sorted(out.glob("[0-9]*.parquet"))).to_pandas()
    got = rows["status"].where(rows["status"].isin(["no_flickr_id", "no_metadata"]), "joined").to_numpy()
    exact = bool(
        (rows["image_id"].to_numpy() == index["image_id"].to_numpy()).all() and (got == expected).all()
    )
    print(f"imagenet-captions: {report['index_rows']} index rows, join rate {report['join_rate']:.4f}, "
          f"{report['samples']} samples; reasons {report['not_joined_or_dropped']}; "
          f"join statuses equal to an independent pandas join: {exact}")  # fmt: skip
    print(f"  e.g. {report['examples'][0]!r}")


def mixing(synth: Path, work: Path) -> None:
    weights = {"photo": 0.5, "clipart": 0.3, "forum": 0.2}
    truth = pd.read_parquet(synth / "crawl.parquet", columns=["uid", "source"]).set_index("uid")["source"]
    for total in (1000, 4000):
        cfg = MixConfig(inputs=[{"path": synth / "crawl.parquet"}], weights=weights, total=total, seed=0)
        path, _ = run_mix(cfg, work / f"mix_{total}.npy")
        again, _ = run_mix(cfg, work / f"mix_{total}_again.npy")
        uids = Subset.load(path).hex()
        got = truth.loc[uids].value_counts(normalize=True).to_dict()
        err = max(abs(got.get(s, 0.0) - w) for s, w in weights.items())
        same = np.array_equal(Subset.load(path).uids, Subset.load(again).uids)
        print(f"mix N={total}: proportions {json.dumps({s: round(v, 4) for s, v in got.items()})}, "
              f"max error {err:.4f}, same again with the same seed: {same}")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("synth", type=Path)
    ap.add_argument("--work", type=Path, default=Path("/tmp/builders_on_synth"))
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    hardmatch(args.synth, args.work)
    imagenet_captions(args.synth, args.work)
    mixing(args.synth, args.work)


if __name__ == "__main__":
    main()
