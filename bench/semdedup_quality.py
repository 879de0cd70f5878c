"""Benchmark: SemDeDup against the synthetic crawl's injected semantic copies, for a sweep of eps.

Needs a crawl with ``semantic_dup`` pairs (``curate synth OUT -c conf/synth/methods.yaml``), its pool,
and an embedding stage; the named descriptors below are made with ``curate copydesc``'s settings when
absent (``layout``: the copy descriptor's 16x16 layout part alone, ``hist_weight: 0``; ``copyenc``:
the copy encoder, trained first with ``curate train-encoder``'s defaults into ``POOL/../copy.pt``
unless ``--encoder`` names one). Runs the ``semdedup`` filter once (every eps is read off the same
``max_sim``) and prints, per eps, recall of the semantic copies and the false drop rate
(``curation.synth.truth.semdedup_figures``), then the same per source, and how many false drops are
between two clip-art renders of one class (flat pictures that often look alike); ``--montage`` draws
some false drops and missed copies. Asserts nothing.

    python bench/semdedup_quality.py --synth out/synth --pool out/pool --embeddings copyenc:copyenc --k 16
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from curation.core.config import load_config  # noqa: E402
from curation.core.pool import Pool  # noqa: E402
from curation.engines import run_job  # noqa: E402
from curation.filtering.copy_encoder import TrainEncoderConfig  # noqa: E402
from curation.filtering.copydesc import CopyDescConfig  # noqa: E402
from curation.filtering.copydesc_job import CopyDescJob  # noqa: E402
from curation.filtering.job import FilterJob  # noqa: E402
from curation.synth.truth import family_of, semdedup_figures  # noqa: E402

DESCRIPTORS = {
    "layout": {"column": "layout", "hist_weight": 0.0},
    "layout8": {"column": "layout8", "hist_weight": 0.0, "thumb": 8},
    "copydesc": {"column": "copydesc"},
    "copyenc": {"column": "copyenc", "kind": "encoder", "thumb": TrainEncoderConfig().thumb},
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--synth", type=Path, required=True)
    p.add_argument("--pool", type=Path, required=True)
    p.add_argument("--embeddings", default="layout:layout", help="STAGE:COLUMN")
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--eps", default="0.02,0.04,0.06,0.08,0.1,0.12,0.15,0.2")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--encoder", type=Path, help="copyenc: this encoder instead of training one")
    p.add_argument("--train-config", type=Path, help="copyenc: curate train-encoder's settings file")
    p.add_argument("--montage", type=Path, help="write a picture of false drops and missed copies here")
    p.add_argument("--montage-eps", type=float, default=0.05)
    args = p.parse_args()
    stage, column = args.embeddings.split(":")
    pool = Pool(args.pool)
    if stage in DESCRIPTORS and not pool.attributes_dir(stage).exists():
        settings = dict(DESCRIPTORS[stage])
        if settings.get("kind") == "encoder":
            settings["encoder"] = str(args.encoder or train_encoder(args.pool, args.train_config))
        run_job(CopyDescJob(args.pool, CopyDescConfig(**settings)), "local", workers=args.workers)
    eps = [float(e) for e in args.eps.split(",")]
    name = f"bench_semdedup_{stage}_k{args.k}"
    spec = {"kind": "semdedup", "embeddings": {"attribute": stage, "column": column}, "k": args.k, "eps": eps}
    run_job(FilterJob(args.pool, [spec], name), "local", workers=args.workers).funnel().check()
    table = pool.read_attributes(name)
    gt = pq.read_table(args.synth / "ground_truth.parquet")
    junk = dict(zip(gt["uid"].to_pylist(), gt["junk"].to_pylist(), strict=True))
    fam = family_of(gt)
    rows = [
        (u, m, n)
        for u, m, n in zip(
            table["uid"].to_pylist(),
            table["semdedup_max_sim"].to_pylist(),
            table["semdedup_nearest"].to_pylist(),
            strict=True,
        )
        if m is not None
    ]
    print(f"{args.embeddings}, k={args.k}: {len(rows)} samples searched")
    print(f"{'eps':>6}{'copies':>8}{'found':>7}{'recall':>8}{'false drops':>13}{'rate':>8}{'dropped':>9}")
    for e in eps:
        fig = semdedup_figures(
            [r[0] for r in rows], [r[2] if r[1] > 1 - e else None for r in rows], junk, fam
        )
        print(
            f"{e:>6g}{fig['semantic_copies']:>8}{fig['found']:>7}{fig['recall']:>8.1%}"
            f"{fig['false_drops']:>13}{fig['false_drop_rate']:>8.2%}{fig['dropped']:>9}"
        )
    by_source(rows, eps, gt, junk, fam)
    if args.montage:
        montage(pool, rows, args.montage_eps, junk, fam, args.montage)


def train_encoder(pool: Path, config: Path | None) -> Path:
    from curation.filtering.encoder_train import train_encoder_on_pool

    out = pool.parent / "copy.pt"
    if not out.exists():
        cfg = load_config(TrainEncoderConfig, config) if config else TrainEncoderConfig()
        report = train_encoder_on_pool(pool, cfg, out)
        top1, secs = report["view_top1"], report["seconds"]
        print(f"encoder trained: {report['images']} images, {secs} s, view top-1 {top1}")
    return out


def by_source(rows: list, eps: list[float], gt: pa.Table, junk: dict, fam: dict[str, str]) -> None:
    """The same figures per source, and how many false drops are two clip-art renders of one class."""
    info = {r["uid"]: r for r in gt.select(["uid", "source", "class_name"]).to_pylist()}
    sources = sorted({info[r[0]]["source"] for r in rows})
    print("per source (recall / false drop rate among its samples); false drops between two clip-art")
    print("renders of one class, and the overall rate without them:")
    print(f"{'eps':>6}" + "".join(f"{s:>18}" for s in sources) + f"{'clipart pairs':>15}{'rate without':>14}")
    for e in eps:
        cells = []
        for source in sources:
            part = [r for r in rows if info[r[0]]["source"] == source]
            fig = semdedup_figures(
                [r[0] for r in part], [r[2] if r[1] > 1 - e else None for r in part], junk, fam
            )
            cells.append(f"{fig['recall']:>9.1%} /{fig['false_drop_rate']:>6.2%}")
        false = [(u, d) for u, m, d in rows if m > 1 - e and fam.get(d) != fam[u]]
        flat = sum(
            info[u]["source"] == info[d]["source"] == "clipart"
            and info[u]["class_name"] == info[d]["class_name"]
            for u, d in false
        )
        rate = (len(false) - flat) / max(1, len(rows))
        print(f"{e:>6g}" + "".join(f"{c:>18}" for c in cells) + f"{flat:>15}{rate:>14.2%}")


def montage(
    pool: Pool, rows: list, e: float, junk: dict, fam: dict[str, str], out: Path, n: int = 10
) -> None:
    """Left: ``n`` seeded false drops (top: the sample kept, bottom: the one dropped for it). Right:
    ``n`` semantic copies not found (top: the original, bottom: the copy)."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    false = [(d, u) for u, m, d in rows if m > 1 - e and fam.get(d) != fam[u]]
    dropped = {u for u, m, d in rows if m > 1 - e}
    missed = [
        (fam[u], u)
        for u, *_ in rows
        if junk.get(u) == "semantic_dup" and u not in dropped and fam[u] not in dropped
    ]
    pick = [false[i] for i in rng.permutation(len(false))[:n]] + [
        missed[i] for i in rng.permutation(len(missed))[:n]
    ]
    images = pool_images(pool, {u for pair in pick for u in pair})
    side, gap = 96, 16
    sheet = Image.new("RGB", (len(pick) * side + gap, 2 * side + 20), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((4, 2), f"false drops at eps {e:g} (kept above, dropped below)", fill="black")
    draw.text((n * side + gap + 4, 2), "semantic copies not found (original above, copy below)", fill="black")
    for i, pair in enumerate(pick):
        x = i * side + (gap if i >= n else 0)
        for j, u in enumerate(pair):
            sheet.paste(images[u].resize((side, side)), (x, 20 + j * side))
    sheet.save(out, quality=85)
    print(f"montage -> {out}: {len(false)} false drops, {len(missed)} copies not found at eps {e:g}")


def pool_images(pool: Pool, uids: set[str]) -> dict:
    """The pictures of ``uids`` from the pool's tars."""
    from PIL import Image

    found = {}
    for shard in pool.shard_ids():
        rows = pool.read_samples(shard, ["key", "uid"])
        keys = {
            k: u for k, u in zip(rows["key"].to_pylist(), rows["uid"].to_pylist(), strict=True) if u in uids
        }
        for sample in pool.iter_tar(shard) if keys else ():
            if sample.key in keys and "jpg" in sample.files:
                found[keys[sample.key]] = Image.open(io.BytesIO(sample.files["jpg"])).convert("RGB")
    return found


if __name__ == "__main__":
    main()
