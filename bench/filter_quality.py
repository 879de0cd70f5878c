"""Measure the quality filters against the synthetic crawl's ground truth; prints figures, asserts nothing.

    python bench/filter_quality.py --synth SYNTH_OUT --pool POOL [--emb-stage STAGE | --model tiny-vit
        --pretrained CKPT] [--threshold 0.95]

``SYNTH_OUT`` is what ``curate synth`` wrote (``ground_truth.parquet``). ``POOL`` is its
download; if it does not exist, the crawl is served on 127.0.0.1 and downloaded into it with
``curate download``'s synthetic config. Near-duplicate detection needs image embeddings:
``--emb-stage`` names an attribute stage with ``image_emb`` (what ``curate score`` writes);
if it does not exist they are computed here with ``--model`` / ``--pretrained`` through open_clip
(random init when no checkpoint is given), in the score stage's layout.

``--embed thumb`` embeds with a 16x16 RGB thumbnail descriptor instead, for comparison;
``--embed copydesc`` runs the copy-descriptor stage (``curate copydesc``, conf/copydesc/default.yaml)
into ``--emb-stage`` and searches its ``copydesc`` column (what conf/filters/synthetic_scored.yaml
does).

Figures: language (share of foreign captions dropped, of English ones dropped), exact dedup (every
copy found, one deterministic representative per group), near dedup (share of copies found,
false merges) with a threshold sweep, image size rules per junk kind, and the funnel per source.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from curation.core.config import CONF_DIR, load_config
from curation.core.pool import Pool, iter_tar_samples
from curation.engines import run_job
from curation.filtering.copydesc import CopyDescConfig
from curation.filtering.copydesc_job import CopyDescJob
from curation.filtering.dedup import SearchParams, near_duplicate_groups
from curation.filtering.embeddings import EmbeddingRef, gather_embeddings
from curation.filtering.global_view import uid_keys
from curation.filtering.job import FilterJob
from curation.synth.truth import family_of, near_dup_figures

log = logging.getLogger("filter_quality")
Encoder = Callable[[list], np.ndarray]  # PIL images -> (n, d) L2-normalised rows


def download(synth: Path, pool: Path) -> None:
    """Serve the synthetic crawl on 127.0.0.1 and download it with ``curate download``'s synthetic config."""
    from curation.download import DownloadConfig, download_crawl
    from curation.synth import rebase_urls, serve

    cfg = load_config(DownloadConfig, CONF_DIR / "download" / "synthetic.yaml")
    crawl = pool.parent / f".{pool.name}-crawl.parquet"
    with serve(synth) as server:
        pq.write_table(rebase_urls(pq.read_table(synth / "crawl.parquet"), server.base_url), crawl)
        report = download_crawl(crawl, pool, cfg)
    crawl.unlink()
    if report.failed:
        raise RuntimeError(f"download failed for shards {[o.shard for o in report.failed]}")


def clip_encoder(model: str, pretrained: str | None) -> Encoder:
    """open_clip image embeddings, L2-normalised (what the score stage stores as ``image_emb``)."""
    import torch

    from curation.core.models import load_clip

    clip = load_clip(model, pretrained, device="cpu")

    def encode(images: list) -> np.ndarray:
        with torch.no_grad():
            batch = torch.stack([clip.preprocess(im) for im in images])
            return clip.model.encode_image(batch, normalize=True).numpy()

    return encode


def thumbnail_encoder(size: int = 16) -> Encoder:
    """A pixel descriptor for comparison: RGB ``size`` x ``size`` box-filtered thumbnail, mean-centred."""
    from PIL import Image

    def encode(images: list) -> np.ndarray:
        thumbs = [
            np.asarray(im.resize((size, size), Image.Resampling.BOX), np.float32).ravel() for im in images
        ]
        x = np.stack(thumbs)
        x -= x.mean(axis=1, keepdims=True)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-6)

    return encode


def embed(pool: Pool, stage: str, encode: Encoder) -> None:
    """Image embeddings of every pool sample in the score stage's layout (float16 fixed-size lists)."""
    from PIL import Image

    out = pool.attributes_dir(stage)
    out.mkdir(parents=True, exist_ok=True)
    for shard in pool.shard_ids():
        uids, images = [], []
        for sample in pool.iter_tar(shard):
            data = sample.files.get("jpg") or sample.files.get("png") or sample.files.get("webp")
            if data is not None:
                uids.append(sample.meta()["uid"])
                images.append(Image.open(io.BytesIO(data)).convert("RGB"))
        chunks = [encode(images[i : i + 256]).astype(np.float16) for i in range(0, len(images), 256)]
        matrix = np.concatenate(chunks) if chunks else np.zeros((0, 1), np.float16)
        flat = pa.array(matrix.ravel(), pa.float16())
        table = pa.table({"uid": uids, "image_emb": pa.FixedSizeListArray.from_arrays(flat, matrix.shape[1])})
        pq.write_table(table, out / f"{shard}.parquet")


def share(mask: np.ndarray) -> float:
    return round(float(mask.mean()), 4) if len(mask) else float("nan")


def language_figures(table: pa.Table, kinds: np.ndarray, langs: np.ndarray) -> dict:
    """Foreign captions dropped; English ones dropped, overall and by the ground truth's junk kind."""
    dropped = ~np.array(table["language_keep"].to_pylist())
    foreign, english = kinds == "foreign", langs == "en"
    by_kind = {
        k: f"{int(dropped[english & (kinds == k)].sum())}/{int((english & (kinds == k)).sum())}"
        for k in np.unique(kinds[english])
    }
    return {
        "foreign": int(foreign.sum()),
        "foreign_dropped": share(dropped[foreign]),
        "english": int(english.sum()),
        "english_dropped": share(dropped[english]),
        "english_dropped_by_junk_kind": by_kind,
    }


def exact_figures(table: pa.Table, kinds: np.ndarray, fam: dict[str, str]) -> dict:
    """Every byte-identical copy grouped with its original; one kept per group; smallest uid kept."""
    uids = table["uid"].to_pylist()
    rep = {u: r or u for u, r in zip(uids, table["exact_dup_of"].to_pylist(), strict=True)}
    keep = dict(zip(uids, table["exact_dup_keep"].to_pylist(), strict=True))
    groups: dict[str, list[str]] = {}
    for u in uids:
        groups.setdefault(rep[u], []).append(u)
    copies = [u for u, k in zip(uids, kinds, strict=True) if k == "exact_dup"]
    wrong = [u for u in uids if not keep[u] and fam[u] != fam[rep[u]]]
    return {
        "copies": len(copies),
        "found": sum(rep[u] == rep.get(fam[u]) and (not keep[u] or not keep[fam[u]]) for u in copies),
        "groups_of_2+": sum(len(g) > 1 for g in groups.values()),
        "groups_with_one_kept": sum(sum(keep[m] for m in g) == 1 for g in groups.values()) == len(groups),
        "representative_is_smallest_uid": all(r == min(g) for r, g in groups.items()),
        "wrongly_dropped": len(wrong),
    }


def near_dup_sweep(pool: Pool, ref: EmbeddingRef, junk: dict[str, str], fam: dict[str, str]) -> list[dict]:
    """Recall and false merges over thresholds, on the same embeddings, without re-running the job."""
    emb = gather_embeddings(pool, ref, "sweep")
    rows = emb.valid_rows()
    uids = emb.uids.take(pa.array(rows, pa.int64()))
    out = []
    for thr in (0.9, 0.92, 0.93, 0.94, 0.95, 0.97, 0.98, 0.99, 0.995, 0.998, 0.999):
        groups = near_duplicate_groups(emb.vectors[rows], uid_keys(uids), SearchParams(threshold=thr))
        reps = uids.take(pa.array(groups.rep, pa.int64())).to_pylist()
        out.append({"threshold": thr, **near_dup_figures(uids.to_pylist(), reps, junk, fam)})
    return out


def cluster_figures(args: argparse.Namespace, pool: Pool, encode: Encoder, gt: pa.Table) -> dict:
    """DataComp's image-based filter with the synthetic ImageNet analogue of a few classes as target:
    how many pool samples of the target classes are kept, and how many of the other classes."""
    from PIL import Image

    classes = args.cluster_classes.split(",")
    names = (args.synth / "classnames.txt").read_text().split("\n")
    wanted = {names.index(c) for c in classes}
    images = []
    for path in sorted((args.synth / "imagenet" / "train").glob("*.tar")):
        for sample in iter_tar_samples(path):
            if int(sample.files["cls"]) in wanted:
                images.append(Image.open(io.BytesIO(sample.files["jpg"])).convert("RGB"))
    target = args.pool.parent / f".{args.pool.name}-target.npy"
    np.save(target, encode(images))
    spec = {
        "kind": "image_cluster",
        "embeddings": {"attribute": args.emb_stage, "column": "image_emb"},
        "target": str(target),
        "k": args.cluster_k,
    }
    name = f"bench_cluster_{time.strftime('%Y%m%d_%H%M%S')}"
    report = run_job(FilterJob(args.pool, [spec], name), "local")
    report.funnel().check()
    table = pool.read_attributes(name)
    cls = dict(zip(gt["uid"].to_pylist(), gt["class_name"].to_pylist(), strict=True))
    clean = {u for u, k in zip(gt["uid"].to_pylist(), gt["junk"].to_pylist(), strict=True) if k == "clean"}
    keep = dict(zip(table["uid"].to_pylist(), table["image_cluster_keep"].to_pylist(), strict=True))
    in_t = np.array([keep[u] for u in keep if u in clean and cls[u] in classes])
    out_t = np.array([keep[u] for u in keep if u in clean and cls[u] not in classes])
    return {
        "target_classes": classes,
        "target_images": len(images),
        "k": args.cluster_k,
        "clean_target_class_kept": share(in_t),
        "clean_other_class_kept": share(out_t),
        "precision_of_kept_clean": round(float(in_t.sum() / max(1, in_t.sum() + out_t.sum())), 4),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--synth", type=Path, required=True)
    ap.add_argument("--pool", type=Path, required=True)
    ap.add_argument("--emb-stage", default="bench_emb")
    ap.add_argument("--emb-column", default=None, help="embedding column (default image_emb; copydesc)")
    ap.add_argument("--embed", choices=["clip", "thumb", "copydesc"], default="clip", help="how to embed")
    ap.add_argument("--model", default="tiny-vit")
    ap.add_argument("--pretrained", default=None)
    ap.add_argument("--threshold", type=float, default=0.95)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cluster-classes", default=None, help="e.g. circle,star,fish,cup: run image_cluster")
    ap.add_argument("--cluster-k", type=int, default=64)
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    if not args.pool.exists():
        t = time.perf_counter()
        download(args.synth, args.pool)
        print(f"downloaded the crawl into {args.pool} in {time.perf_counter() - t:.0f} s")
    pool = Pool(args.pool)
    if args.embed in ("clip", "copydesc"):
        encode, what = (
            clip_encoder(args.model, args.pretrained),
            f"{args.model} ({args.pretrained or 'random'})",
        )
    else:
        encode, what = thumbnail_encoder(), "16x16 RGB thumbnails"
    column = args.emb_column or ("copydesc" if args.embed == "copydesc" else "image_emb")
    if args.embed == "copydesc":
        t = time.perf_counter()
        conf = CONF_DIR / "copydesc" / "default.yaml"
        cfg = load_config(CopyDescConfig, conf, [f"column={args.emb_stage}"])
        run_job(CopyDescJob(args.pool, cfg), "local", workers=args.workers).funnel().check()
        column = args.emb_stage
        print(f"copy descriptors of the pool in {time.perf_counter() - t:.0f} s")
    elif not pool.attributes_dir(args.emb_stage).exists():
        t = time.perf_counter()
        embed(pool, args.emb_stage, encode)
        print(f"embedded the pool with {what} in {time.perf_counter() - t:.0f} s")
    ref = EmbeddingRef(attribute=args.emb_stage, column=column)

    gt = pq.read_table(args.synth / "ground_truth.parquet")
    junk = dict(zip(gt["uid"].to_pylist(), gt["junk"].to_pylist(), strict=True))
    lang = dict(zip(gt["uid"].to_pylist(), gt["lang"].to_pylist(), strict=True))
    fam = family_of(gt)
    specs = [
        {"kind": "caption_length", "name": "caption"},
        {"kind": "image_size", "min_side": 32, "max_aspect": 3.0},
        {"kind": "language"},
        {"kind": "exact_dup"},
        {
            "kind": "near_dup",
            "embeddings": {"attribute": args.emb_stage, "column": column},
            "threshold": args.threshold,
        },
    ]
    name = f"bench_run_{time.strftime('%Y%m%d_%H%M%S')}"
    t = time.perf_counter()
    report = run_job(FilterJob(args.pool, specs, name), "local", workers=args.workers)
    seconds = time.perf_counter() - t
    funnel = report.funnel()
    funnel.check()  # raises unless every stage balances, overall and per source
    table = pool.read_attributes(name)
    uids = table["uid"].to_pylist()
    kinds = np.array([junk.get(u, "unknown") for u in uids])
    langs = np.array([lang.get(u, "?") for u in uids])
    size_dropped = ~np.array(table["image_size_keep"].to_pylist())
    near_rep = [
        None if reason == "missing_embedding" else (r or u)
        for u, r, reason in zip(
            uids, table["near_dup_of"].to_pylist(), table["near_dup_reason"].to_pylist(), strict=True
        )
    ]
    figures = {
        "samples": len(uids),
        "filter_seconds": round(seconds, 1),
        "funnel_balanced": True,
        "language": language_figures(table, kinds, langs),
        "image_size_dropped": {
            k: share(size_dropped[kinds == k]) for k in ("tiny", "extreme_aspect", "clean")
        },
        "exact_dup": exact_figures(table, kinds, fam),
        "near_dup": {"threshold": args.threshold, **near_dup_figures(uids, near_rep, junk, fam)},
        "near_dup_sweep": near_dup_sweep(pool, ref, junk, fam),
    }
    if args.cluster_classes:
        figures["image_cluster"] = cluster_figures(args, pool, encode, gt)
    print(json.dumps(figures, indent=1))
    for row in funnel.rows():
        print(row)
    if args.json:
        args.json.write_text(json.dumps({**figures, "funnel": funnel.rows()}, indent=1))


if __name__ == "__main__":
    main()
