"""Which JPEG decoder should the score stage use? CPU time per image and the score each one gives.

Every variant turns the same JPEG bytes into the model's uint8 input (decode to RGB, resize the
short side bicubically with antialiasing, centre crop), as the score stage's decode processes do:

* ``pillow``: PIL's decode and the model's PIL steps, exact: the reference;
* ``pillow-draft2``: the same with PIL's ``draft`` (libjpeg's DCT scaling to >= 2x the input), as
  ``jpeg_draft: 2`` did before the stage decoded JPEGs with torchvision;
* ``stage``, ``stage-draft2``: the score stage's decoder (:class:`curation.scoring.loader.PairDecoder`)
  with ``jpeg_draft`` null and 2;
* ``simplejpeg``, ``turbojpeg`` (PyTurboJPEG; needs the system's libturbojpeg), ``opencv``
  (``IMREAD_REDUCED_COLOR_N``): the same DCT scaling rule, then Pillow's resize; ``-exact``: no
  DCT scaling (as ``pillow``); ``-x4``: scaling only while the image stays >= 4x the input;
* ``torchvision``: ``torchvision.io.decode_jpeg`` (no DCT scaling), then torch's uint8 resize;
* ``+torch`` variants: the decoder above, then torch's uint8 antialiased resize instead of Pillow's.

Times are CPU seconds of this process (steady on a shared machine, unlike wall clock), the median of
``--rounds`` rounds that alternate the variants. Scores come from ``--model`` with ``--pretrained``
(a trained checkpoint makes the differences meaningful) and are compared with ``pillow``'s.

    python bench/jpeg_decoders.py --model tiny-rn-32 --pretrained runs/reference/checkpoints/epoch_latest.pt
    python bench/jpeg_decoders.py --model ViT-B-32 --images 128
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from curation.core.models import load_clip
from curation.scoring.encode import PairEncoder
from curation.scoring.loader import ImagePrep, PairDecoder, to_rgb
from tests.image_pool import write_image_pool

Decode = Callable[[bytes], np.ndarray]


def scale_for(size: tuple[int, int], target: tuple[int, int], factor: int = 2) -> int:
    """Largest of 1, 2, 4, 8 that keeps the image at least ``factor`` x the target on both sides."""
    w, h = size
    tw, th = target
    for s in (8, 4, 2):
        if w // s >= factor * tw and h // s >= factor * th:
            return s
    return 1


def variants(prep: ImagePrep) -> dict[str, Decode]:
    h, w = prep.size
    stage, stage_draft = PairDecoder(prep, None), PairDecoder(prep, 2)

    def pillow(b: bytes, draft: int | None) -> np.ndarray:
        with Image.open(io.BytesIO(b)) as img:
            if draft:
                img.draft("RGB", (draft * w, draft * h))
            return np.asarray(prep.pil_steps(to_rgb(img)))

    def pil_resize(rgb: np.ndarray) -> np.ndarray:
        return np.asarray(prep.pil_steps(Image.fromarray(rgb)))

    def torch_resize(chw: torch.Tensor) -> np.ndarray:
        out = F.resize(chw, [min(h, w)], interpolation=F.InterpolationMode.BICUBIC, antialias=True)
        return F.center_crop(out, [h, w]).permute(1, 2, 0).numpy()

    def to_chw(rgb: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)

    out: dict[str, Decode] = {
        "pillow": lambda b: pillow(b, None),
        "pillow-draft2": lambda b: pillow(b, 2),
        "stage": lambda b: stage.image({"jpg": b})[0],
        "stage-draft2": lambda b: stage_draft.image({"jpg": b})[0],
    }
    try:
        import simplejpeg

        def sj(b: bytes, factor: int = 2) -> np.ndarray:
            ih, iw, _, _ = simplejpeg.decode_jpeg_header(b)
            s = scale_for((iw, ih), (w, h), factor) if factor else 1
            return simplejpeg.decode_jpeg(b, "RGB", min_height=ih // s, min_width=iw // s)

        out["simplejpeg-exact"] = lambda b: pil_resize(sj(b, 0))
        out["simplejpeg"] = lambda b: pil_resize(sj(b))
        out["simplejpeg-x4"] = lambda b: pil_resize(sj(b, 4))
        out["simplejpeg+torch"] = lambda b: torch_resize(to_chw(sj(b)))
    except ImportError:
        print("simplejpeg: not installed")
    try:
        import turbojpeg

        tj = turbojpeg.TurboJPEG()

        def tjd(b: bytes) -> np.ndarray:
            iw, ih, _, _ = tj.decode_header(b)
            s = scale_for((iw, ih), (w, h))
            return tj.decode(b, pixel_format=turbojpeg.TJPF_RGB, scaling_factor=(1, s))

        out["turbojpeg"] = lambda b: pil_resize(tjd(b))
        out["turbojpeg-exact"] = lambda b: pil_resize(tj.decode(b, pixel_format=turbojpeg.TJPF_RGB))
    except (ImportError, RuntimeError, OSError) as exc:  # the package, or its system library, is missing
        print(f"turbojpeg: unavailable ({str(exc).splitlines()[0]})")
    import cv2

    cv2.setNumThreads(1)
    reduced = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4}
    reduced[8] = cv2.IMREAD_REDUCED_COLOR_8

    def cvd(b: bytes) -> np.ndarray:
        with Image.open(io.BytesIO(b)) as img:  # header only, for the scale
            s = scale_for(img.size, (w, h))
        return cv2.cvtColor(cv2.imdecode(np.frombuffer(b, np.uint8), reduced[s]), cv2.COLOR_BGR2RGB)

    out["opencv"] = lambda b: pil_resize(cvd(b))
    from torchvision.io import ImageReadMode, decode_jpeg

    def tvd(b: bytes) -> torch.Tensor:
        return decode_jpeg(torch.frombuffer(bytearray(b), dtype=torch.uint8), mode=ImageReadMode.RGB)

    out["torchvision"] = lambda b: torch_resize(tvd(b))
    out["pillow-draft2+torch"] = lambda b: torch_resize(to_chw(_pil_draft_rgb(b, prep)))
    return out


def _pil_draft_rgb(b: bytes, prep: ImagePrep) -> np.ndarray:
    with Image.open(io.BytesIO(b)) as img:
        h, w = prep.size
        img.draft("RGB", (2 * w, 2 * h))
        return np.asarray(img.convert("RGB"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny-vit")
    ap.add_argument("--pretrained", default=None)
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--image-size", type=int, default=256, help="side of the JPEGs (img2dataset: 256)")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    bundle = load_clip(args.model, args.pretrained, device="cpu", precision="fp32")
    size = bundle.model.visual.image_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    prep = ImagePrep.from_preprocess(bundle.preprocess, size)
    with tempfile.TemporaryDirectory() as tmp:
        pool = write_image_pool(Path(tmp) / "pool", 1, args.images, image_size=args.image_size)
        with tarfile.open(pool / "00000.tar") as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]
    keys = sorted(k[:-4] for k in members if k.endswith(".jpg"))
    jpegs = [members[f"{k}.jpg"] for k in keys]
    tokens = bundle.tokenizer([members[f"{k}.txt"].decode() for k in keys])
    encoder = PairEncoder(bundle.model, prep, torch.device("cpu"), "fp32")
    decoders = variants(prep)
    cpu: dict[str, list[float]] = {name: [] for name in decoders}
    images: dict[str, np.ndarray] = {}
    for _ in range(args.rounds):
        for name, decode in decoders.items():
            start = time.process_time()
            images[name] = np.stack([decode(b) for b in jpegs])
            cpu[name].append(1000 * (time.process_time() - start) / len(jpegs))
    scores = {name: encoder(torch.from_numpy(x), tokens)[2].numpy() for name, x in images.items()}
    ref_ms, ref = statistics.median(cpu["pillow"]), scores["pillow"]
    print(
        f"{len(jpegs)} JPEGs of {args.image_size} px -> {size[0]}x{size[1]} ({args.model}, "
        f"pretrained={args.pretrained}); CPU ms per image, median of {args.rounds} rounds [min .. max]"
    )
    for name in decoders:
        ms = statistics.median(cpu[name])
        pixels = np.abs(images[name].astype(int) - images["pillow"].astype(int))
        print(
            f"{name:>20}: {ms:6.3f} ms [{min(cpu[name]):.3f} .. {max(cpu[name]):.3f}]  "
            f"speed ratio vs pillow {ref_ms / ms:5.2f}x  "
            f"max |score diff| {np.abs(scores[name] - ref).max():.2e}  "
            f"mean |pixel diff| {pixels.mean():.3f}"
        )


if __name__ == "__main__":
    main()
