"""Drawable concept classes: a noun, its word forms in five languages, and a silhouette.

Each class draws as a distinct silhouette (what a tiny CLIP can learn in a minute of CPU
training), built from polygons and thick lines in a unit box so that one code path can rotate,
scale, fill, outline or hand-jitter it for every rendering style. Colour is deliberately only a
weak cue: a few classes have a typical palette that is used for part of the images.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

ADD, CUT = 255, 0


@dataclass(frozen=True)
class Part:
    """One drawing primitive in unit coordinates: a filled polygon or a thick polyline."""

    points: np.ndarray  # (N, 2) float
    value: int = ADD  # ADD paints the silhouette, CUT punches a hole
    width: float = 0.0  # > 0: a polyline of that width (unit coordinates)


Shape = list[Part]
ShapeFn = Callable[[np.random.Generator], Shape]


@dataclass(frozen=True)
class Foreign:
    """How a class is named with an indefinite article in another language (German: nom, acc)."""

    fr: str
    de: str
    de_acc: str
    es: str
    it: str

    def form(self, lang: str, case: str = "nom") -> str:
        if lang == "de":
            return self.de_acc if case == "acc" else self.de
        return str(getattr(self, lang))


@dataclass(frozen=True)
class Concept:
    name: str
    plural: str
    synonyms: tuple[str, ...]
    foreign: Foreign
    draw: ShapeFn
    palette: tuple[str, ...] = field(default=())  # typical colour names (a weak prior)

    @property
    def article(self) -> str:
        return "an" if self.name[0] in "aeiou" else "a"


def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 28, a0: float = 0.0, a1: float = 2 * np.pi):
    t = np.linspace(a0, a1, n, endpoint=(a1 - a0) < 2 * np.pi - 1e-6)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


def _poly(*xy: float) -> np.ndarray:
    return np.asarray(xy, dtype=np.float64).reshape(-1, 2)


def _rect(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return _poly(x0, y0, x1, y0, x1, y1, x0, y1)


def circle(rng: np.random.Generator) -> Shape:
    return [Part(_ellipse(0, 0, 1.0, rng.uniform(0.93, 1.0), n=40))]


def square(rng: np.random.Generator) -> Shape:
    h = rng.uniform(0.9, 1.0)
    return [Part(_rect(-1, -h, 1, h))]


def triangle(rng: np.random.Generator) -> Shape:
    j = rng.uniform(-0.15, 0.15, size=3)
    return [Part(_poly(j[0], -1, -1, 0.8 + j[1] * 0.3, 1, 0.8 + j[2] * 0.3))]


def star(rng: np.random.Generator) -> Shape:
    inner = rng.uniform(0.36, 0.46)
    t = -np.pi / 2 + np.arange(10) * np.pi / 5
    r = np.where(np.arange(10) % 2 == 0, 1.0, inner)
    return [Part(np.stack([r * np.cos(t), r * np.sin(t)], axis=1))]


def heart(rng: np.random.Generator) -> Shape:
    t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
    pts = np.stack([x / 16.0, -y / 16.0 * rng.uniform(0.95, 1.08)], axis=1)
    return [Part(pts)]


def cross(rng: np.random.Generator) -> Shape:
    w = rng.uniform(0.3, 0.42)
    return [Part(_rect(-1, -w, 1, w)), Part(_rect(-w, -1, w, 1))]


def arrow(rng: np.random.Generator) -> Shape:
    sw = rng.uniform(0.14, 0.2)
    head = rng.uniform(0.5, 0.62)
    neck = rng.uniform(0.05, 0.25)
    return [Part(_rect(-1, -sw, neck + 0.05, sw)), Part(_poly(neck, -head, 1, 0, neck, head))]


def moon(rng: np.random.Generator) -> Shape:
    off = rng.uniform(0.38, 0.55)
    return [Part(_ellipse(0, 0, 1, 1, n=40)), Part(_ellipse(off, -0.12, 0.88, 0.88, n=40), CUT)]


def sun(rng: np.random.Generator) -> Shape:
    n = int(rng.integers(8, 13))
    parts = [Part(_ellipse(0, 0, 0.5, 0.5, n=32))]
    half = np.pi / n * 0.45
    for k in range(n):
        a = 2 * np.pi * k / n
        parts.append(
            Part(
                _poly(
                    0.58 * np.cos(a - half), 0.58 * np.sin(a - half),
                    1.0 * np.cos(a), 1.0 * np.sin(a),
                    0.58 * np.cos(a + half), 0.58 * np.sin(a + half),
                )
            )
        )  # fmt: skip
    return parts


def tree(rng: np.random.Generator) -> Shape:
    trunk = Part(_rect(-0.13, 0.45, 0.13, 1.0))
    if rng.random() < 0.6:  # pine: stacked triangles
        return [
            trunk,
            Part(_poly(0, -1, -0.55, -0.2, 0.55, -0.2)),
            Part(_poly(0, -0.55, -0.75, 0.5, 0.75, 0.5)),
        ]
    return [trunk, Part(_ellipse(0, -0.25, 0.72, 0.75, n=32))]


def house(rng: np.random.Generator) -> Shape:
    w = rng.uniform(0.62, 0.75)
    return [
        Part(_rect(-w, -0.1, w, 0.95)),
        Part(_poly(-w - 0.22, -0.05, 0, -0.95, w + 0.22, -0.05)),
        Part(_rect(-0.15, 0.45, 0.15, 0.96), CUT),
    ]


def fish(rng: np.random.Generator) -> Shape:
    ry = rng.uniform(0.34, 0.46)
    return [
        Part(_ellipse(-0.2, 0, 0.7, ry, n=36)),
        Part(_poly(0.35, 0, 1.0, -0.5, 1.0, 0.5)),
        Part(_ellipse(-0.6, -0.08, 0.08, 0.08, n=12), CUT),
    ]


def flower(rng: np.random.Generator) -> Shape:
    n = int(rng.integers(5, 8))
    pr = rng.uniform(0.3, 0.36)
    parts = []
    for k in range(n):
        a = 2 * np.pi * k / n + rng.uniform(0, 0.2)
        parts.append(Part(_ellipse(0.62 * np.cos(a), 0.62 * np.sin(a), pr, pr, n=20)))
    parts.append(Part(_ellipse(0, 0, 0.36, 0.36, n=20)))
    parts.append(Part(_ellipse(0, 0, 0.17, 0.17, n=16), CUT))
    return parts


def key(rng: np.random.Generator) -> Shape:
    return [
        Part(_ellipse(-0.62, 0, 0.38, 0.38, n=28)),
        Part(_ellipse(-0.62, 0, 0.18, 0.18, n=20), CUT),
        Part(_rect(-0.28, -0.09, 1.0, 0.09)),
        Part(_rect(0.55, 0.0, 0.67, 0.36)),
        Part(_rect(0.82, 0.0, 0.96, 0.42 * rng.uniform(0.7, 1.0))),
    ]


def umbrella(rng: np.random.Generator) -> Shape:
    parts = [Part(_ellipse(0, -0.05, 1.0, 0.8, n=36, a0=np.pi, a1=2 * np.pi))]
    for k in range(4):  # scalloped rim
        cx = -0.75 + k * 0.5
        parts.append(Part(_ellipse(cx, -0.05, 0.25, 0.12, n=16, a0=0, a1=np.pi), CUT))
    hook = _ellipse(-0.18, 0.78, 0.18, 0.18, n=10, a0=0, a1=np.pi)
    handle = np.vstack([_poly(0, -0.1, 0, 0.78), hook])
    parts.append(Part(handle, width=0.13 * rng.uniform(0.9, 1.1)))
    return parts


def cup(rng: np.random.Generator) -> Shape:
    t = rng.uniform(0.0, 0.12)
    return [
        Part(_ellipse(0.5, 0.0, 0.38, 0.36, n=24)),
        Part(_ellipse(0.5, 0.0, 0.2, 0.18, n=20), CUT),
        Part(_poly(-0.62, -0.75, 0.48, -0.75, 0.4 - t, 0.85, -0.54 + t, 0.85)),
    ]


def lightning(rng: np.random.Generator) -> Shape:
    return [Part(_poly(0.25, -1, -0.55, 0.12, -0.05, 0.12, -0.3, 1, 0.6, -0.22, 0.08, -0.22, 0.45, -1))]


def bell(rng: np.random.Generator) -> Shape:
    return [
        Part(_poly(-0.3, -0.75, 0.3, -0.75, 0.55, 0.1, 0.95, 0.7, -0.95, 0.7, -0.55, 0.1)),
        Part(_ellipse(0, -0.75, 0.3, 0.22, n=20)),
        Part(_ellipse(0, 0.8, 0.2, 0.2, n=16)),
    ]


def hourglass(rng: np.random.Generator) -> Shape:
    return [
        Part(_poly(-0.7, -0.85, 0.7, -0.85, 0.08, 0, 0.7, 0.85, -0.7, 0.85, -0.08, 0)),
        Part(_rect(-0.85, -1, 0.85, -0.85)),
        Part(_rect(-0.85, 0.85, 0.85, 1)),
    ]


def bottle(rng: np.random.Generator) -> Shape:
    return [
        Part(_rect(-0.42, -0.2, 0.42, 1.0)),
        Part(_poly(-0.42, -0.2, -0.15, -0.55, 0.15, -0.55, 0.42, -0.2)),
        Part(_rect(-0.15, -1.0, 0.15, -0.5)),
    ]


def _c(name, plural, syn, fr, de, de_acc, es, it, draw, palette=()) -> Concept:
    return Concept(name, plural, tuple(syn), Foreign(fr, de, de_acc, es, it), draw, tuple(palette))


CONCEPTS: dict[str, Concept] = {
    c.name: c
    for c in [
        _c("circle", "circles", ["disc"], "un cercle", "ein Kreis", "einen Kreis",
           "un círculo", "un cerchio", circle),
        _c("square", "squares", [], "un carré", "ein Quadrat", "ein Quadrat",
           "un cuadrado", "un quadrato", square),
        _c("triangle", "triangles", [], "un triangle", "ein Dreieck", "ein Dreieck",
           "un triángulo", "un triangolo", triangle),
        _c("star", "stars", ["starburst"], "une étoile", "ein Stern", "einen Stern",
           "una estrella", "una stella", star, ["yellow", "gold"]),
        _c("heart", "hearts", ["love heart"], "un cœur", "ein Herz", "ein Herz",
           "un corazón", "un cuore", heart, ["red", "pink"]),
        _c("cross", "crosses", ["plus sign"], "une croix", "ein Kreuz", "ein Kreuz",
           "una cruz", "una croce", cross, ["red"]),
        _c("arrow", "arrows", ["pointer"], "une flèche", "ein Pfeil", "einen Pfeil",
           "una flecha", "una freccia", arrow),
        _c("moon", "moons", ["crescent"], "une lune", "ein Mond", "einen Mond",
           "una luna", "una luna", moon, ["yellow", "white", "gray"]),
        _c("sun", "suns", ["sunshine"], "un soleil", "eine Sonne", "eine Sonne",
           "un sol", "un sole", sun, ["yellow", "orange"]),
        _c("tree", "trees", ["pine", "fir"], "un arbre", "ein Baum", "einen Baum",
           "un árbol", "un albero", tree, ["green"]),
        _c("house", "houses", ["cottage", "hut"], "une maison", "ein Haus", "ein Haus",
           "una casa", "una casa", house, ["brown", "red"]),
        _c("fish", "fish", ["goldfish"], "un poisson", "ein Fisch", "einen Fisch",
           "un pez", "un pesce", fish, ["orange", "blue"]),
        _c("flower", "flowers", ["daisy", "blossom"], "une fleur", "eine Blume", "eine Blume",
           "una flor", "un fiore", flower, ["pink", "purple", "red"]),
        _c("key", "keys", ["door key"], "une clé", "ein Schlüssel", "einen Schlüssel",
           "una llave", "una chiave", key, ["gold", "gray"]),
        _c("umbrella", "umbrellas", ["parasol"], "un parapluie", "ein Regenschirm", "einen Regenschirm",
           "un paraguas", "un ombrello", umbrella),
        _c("cup", "cups", ["mug", "teacup"], "une tasse", "eine Tasse", "eine Tasse",
           "una taza", "una tazza", cup, ["white", "brown"]),
        _c("lightning", "lightning bolts", ["thunderbolt"], "un éclair", "ein Blitz", "einen Blitz",
           "un rayo", "un fulmine", lightning, ["yellow"]),
        _c("bell", "bells", ["church bell"], "une cloche", "eine Glocke", "eine Glocke",
           "una campana", "una campana", bell, ["gold"]),
        _c("hourglass", "hourglasses", ["sand timer"], "un sablier", "eine Sanduhr", "eine Sanduhr",
           "un reloj de arena", "una clessidra", hourglass),
        _c("bottle", "bottles", ["flask"], "une bouteille", "eine Flasche", "eine Flasche",
           "una botella", "una bottiglia", bottle, ["green", "brown"]),
    ]
}  # fmt: skip

DEFAULT_CLASSES: tuple[str, ...] = tuple(list(CONCEPTS)[:16])


def get_concepts(names: list[str] | tuple[str, ...]) -> list[Concept]:
    unknown = [n for n in names if n not in CONCEPTS]
    if unknown:
        raise KeyError(f"unknown synth classes {unknown}; known: {sorted(CONCEPTS)}")
    return [CONCEPTS[n] for n in names]


def normalized_shape(concept: Concept, rng: np.random.Generator) -> Shape:
    """The concept's parts rescaled so the silhouette spans [-1, 1] on its longer side, centred."""
    parts = concept.draw(rng)
    pts = np.vstack([p.points for p in parts if p.value == ADD])
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    centre, half = (lo + hi) / 2, float((hi - lo).max() / 2)
    return [Part((p.points - centre) / half, p.value, p.width / half) for p in parts]
