"""Web-like captions: English alt-texts in several site habits, junk strings, foreign sentences.

Captions name the concept the way alt-texts do: with colour, size and position words, plurals,
occasional synonyms, SEO and forum filler ("free download", "HD wallpaper", years). Junk captions
never name any class (checked against every word form), and foreign captions are natural
French, German, Spanish and Italian sentences, long enough for fastText's lid.176 to tell.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from curation.synth.classes import CONCEPTS, Concept

FAMILIES: dict[str, tuple[str, ...]] = {
    "photo": (
        "{A_desc} photographed {pos} of the frame, shallow depth of field",
        "Close-up photo of {a_desc} on a textured background",
        "Stock photo of {a_desc} against a blurry backdrop, royalty free image",
        "I took this picture of {a_desc} last weekend",
        "Macro shot of {a_desc} in natural light, {year}",
        "Photo of {a_desc} that I took with my phone",
        "A picture showing {a_desc} {pos} of the photo",
        "{Color} {obj} photography, high resolution download for your website",
        "Beautiful {color} {obj} on a colorful background, photo by user{n}",
        "Photograph of {a_desc} with soft shadows and a grainy texture",
    ),
    "seo": (
        "{Color} {obj} clipart free download for your school projects",
        "{Obj} clip art vector illustration, {color} {obj} icon for your design",
        "Free {color} {obj} clipart for teachers and kids | HD wallpaper {year}",
        "Cartoon {obj} drawing with a bold black outline, printable coloring page",
        "{Obj} clipart png image with a simple background - free download",
        "Simple {color} {obj} symbol in flat design style, vector graphic",
        "{Objs} clipart collection: {n} free images for your projects",
        "Download this {color} {obj} icon for free, high quality png with a white background",
        "{A_desc} isolated on a plain background, vector illustration",
        "Flat {obj} icon with a thick outline in {color}, the {year} edition",
    ),
    "chatty": (
        "look at this {obj} my daughter drew for me lol",
        "anyone know where i can get {a_desc} like this one?",
        "found this old picture of {a_desc} on my hard drive, thoughts?",
        "Re: post your best {obj} pictures here (page {n})",
        "my attempt at drawing {a_desc}, please be nice :)",
        "why is there {a_desc} {pos} of this picture??",
        "here is my {obj} picture for the weekly challenge thread, the {color} version",
        "can someone tell me what this {obj} symbol means? thanks in advance",
        "lol this {obj} looks so weird when it is {color}",
        "saw {a_desc} on the way to work today and had to share it with you all",
    ),
    "generic": (
        "{A_desc} {pos} of the image",
        "a picture of {a_desc} on a {bg} background",
        "an image of {a_desc} with a {bg} background",
        "this is {a_desc}, drawn {pos} of the picture",
        "{A_desc} on a {bg} background, {year}",
        "you can see {a_desc} {pos} of this image",
    ),
}

MULTI: tuple[str, ...] = (
    "{A_desc} next to {a_obj2} on a {bg} background",
    "{Obj} and {obj2} clipart set, free download for your projects",
    "a picture of {a_desc} with {a_obj2} beside it",
    "my drawing of {a_obj} and {a_obj2}, what do you think?",
    "{Obj} and {obj2} icons in a flat style, vector illustration",
    "{A_desc} and {a_obj2} side by side",
)

SUFFIXES: tuple[str, ...] = (
    " - free download",
    " | HD wallpaper",
    " ({year})",
    " #art #design",
    " 1920x1080",
    " via Pinterest",
    " | Stock Image",
    " - page {n}",
)

COUNT_WORDS = {2: "two", 3: "three"}
POSITION_PHRASES = {
    "center": "in the center",
    "left": "on the left",
    "right": "on the right",
    "top left": "in the top left corner",
    "top center": "at the top",
    "top right": "in the top right corner",
    "bottom left": "in the bottom left corner",
    "bottom center": "at the bottom",
    "bottom right": "in the bottom right corner",
}
BG_WORDS = ("white", "plain", "colorful", "textured", "light", "dark", "simple")

UNNAMED: tuple[str, ...] = (
    "IMG_{n4}.JPG",
    "DSC{n5}.jpg",
    "image ({n})",
    "Untitled-{n}",
    "photo {n} of {m}",
    "click here to buy now",
    "Free shipping on all orders over $50",
    "About us | Contact | Privacy policy",
    "view full size",
    "{w}x{h}",
    "Posted by user{n} on {year}-{mm:02d}-{dd:02d}",
    "Copyright {year} All rights reserved",
    "screenshot_{year}{mm:02d}{dd:02d}_{n4}.png",
    "Add to cart",
    "no description available",
    "thumbnail",
    "Click to enlarge",
    "Best price guaranteed, order today!",
    "Sale! {pct}% off this week only",
    "my favorite thing ever!!!",
    "What do you guys think?",
    "New arrivals for this season",
    "Check out my profile for more",
    "{n} likes, {m} comments",
    "untitled image {n4}",
    "Scan{n4}.jpg",
    "final_final_v{m}.jpg",
)

# Foreign sentences: {a} is the concept with its indefinite article (German: {acc}/{nom} by case).
FOREIGN_NAMING: dict[str, tuple[str, ...]] = {
    "fr": (
        "Voici {a} sur un fond coloré, parfait pour décorer vos cartes de vœux.",
        "Mon petit frère a dessiné {a} pendant les vacances chez nos grands-parents.",
        "Sur cette image, on voit {a} au milieu d'un décor très simple.",
        "J'ai besoin d'aide pour reproduire {a} avec de la peinture à l'huile.",
        "Quelqu'un sait où je peux acheter {a} comme sur cette photo ? Merci d'avance !",
        "Nous avons choisi {a} comme logo pour notre petite association du quartier.",
        "Cette semaine, les élèves ont appris à dessiner {a} avec une règle et un compas.",
        "Il y a {a} dans le coin de cette photo et je ne comprends pas pourquoi.",
    ),
    "de": (
        "Mein kleiner Bruder hat in den Ferien {acc} für unsere Großeltern gemalt.",
        "Auf diesem Bild sieht man {acc} vor einem ganz einfachen Hintergrund.",
        "Wir haben {acc} als Logo für unseren kleinen Verein im Viertel ausgewählt.",
        "Weiß jemand, wo man {acc} wie auf diesem Foto kaufen kann? Vielen Dank!",
        "Heute haben die Kinder in der Schule gelernt, wie man {acc} mit Lineal und Zirkel zeichnet.",
        "In der Ecke des Fotos ist {nom} zu sehen, aber ich weiß nicht warum.",
        "Ich brauche Hilfe, weil ich {acc} mit Ölfarben malen möchte.",
        "Hier ist {nom} auf einem bunten Hintergrund, perfekt für eure Grußkarten.",
    ),
    "es": (
        "Mi hermano pequeño dibujó {a} durante las vacaciones en casa de los abuelos.",
        "En esta imagen se puede ver {a} sobre un fondo muy sencillo.",
        "Hemos elegido {a} como logotipo para nuestra pequeña asociación del barrio.",
        "¿Alguien sabe dónde puedo comprar {a} como en esta foto? ¡Muchas gracias!",
        "Hoy los niños aprendieron en la escuela a dibujar {a} con regla y compás.",
        "Hay {a} en la esquina de esta foto y no entiendo por qué.",
        "Necesito ayuda para pintar {a} con pintura al óleo, ¿algún consejo?",
        "Aquí tenéis {a} sobre un fondo de colores, perfecto para vuestras tarjetas.",
    ),
    "it": (
        "Il mio fratellino ha disegnato {a} durante le vacanze dai nonni.",
        "In questa immagine si vede {a} su uno sfondo molto semplice.",
        "Abbiamo scelto {a} come logo per la nostra piccola associazione di quartiere.",
        "Qualcuno sa dove posso comprare {a} come in questa foto? Grazie mille!",
        "Oggi i bambini hanno imparato a scuola a disegnare {a} con riga e compasso.",
        "C'è {a} nell'angolo di questa foto e non capisco perché.",
        "Ho bisogno di aiuto per dipingere {a} con i colori a olio, qualche consiglio?",
        "Ecco {a} su uno sfondo colorato, perfetto per i vostri biglietti di auguri.",
    ),
}

FOREIGN_OTHER: dict[str, tuple[str, ...]] = {
    "fr": (
        "Il fait vraiment beau aujourd'hui, nous allons nous promener au bord du lac.",
        "Livraison gratuite pour toute commande supérieure à cinquante euros, profitez-en vite.",
        "Merci à tous pour vos messages, je vous répondrai dès que possible.",
        "Cette photo a été prise l'année dernière pendant notre voyage en Bretagne.",
        "N'oubliez pas de vous abonner à notre page pour ne rien manquer des nouveautés.",
        "Je ne sais pas trop quoi penser de cette image, qu'est-ce que vous en dites ?",
    ),
    "de": (
        "Das Wetter ist heute wirklich schön, wir gehen am Nachmittag am See spazieren.",
        "Kostenloser Versand für alle Bestellungen über fünfzig Euro, nur diese Woche.",
        "Vielen Dank für eure Nachrichten, ich werde so schnell wie möglich antworten.",
        "Dieses Foto wurde letztes Jahr während unseres Urlaubs an der Nordsee aufgenommen.",
        "Vergesst nicht, unsere Seite zu abonnieren, damit ihr keine Neuigkeiten verpasst.",
        "Ich weiß nicht so recht, was ich von diesem Bild halten soll. Was meint ihr dazu?",
    ),
    "es": (
        "Hoy hace un día precioso, vamos a dar un paseo por la orilla del lago.",
        "Envío gratuito en todos los pedidos superiores a cincuenta euros, solo esta semana.",
        "Muchas gracias a todos por vuestros mensajes, os responderé lo antes posible.",
        "Esta foto la sacamos el año pasado durante nuestro viaje por Andalucía.",
        "No olvides suscribirte a nuestra página para no perderte ninguna novedad.",
        "No sé muy bien qué pensar de esta imagen, ¿qué opináis vosotros?",
    ),
    "it": (
        "Oggi è una giornata bellissima, andiamo a fare una passeggiata in riva al lago.",
        "Spedizione gratuita per tutti gli ordini superiori a cinquanta euro, solo questa settimana.",
        "Grazie a tutti per i vostri messaggi, vi risponderò il prima possibile.",
        "Questa foto è stata scattata l'anno scorso durante il nostro viaggio in Toscana.",
        "Non dimenticate di iscrivervi alla nostra pagina per non perdere nessuna novità.",
        "Non so bene cosa pensare di questa immagine, voi che ne dite?",
    ),
}
FOREIGN_LANGS: tuple[str, ...] = tuple(FOREIGN_NAMING)


def article(phrase: str) -> str:
    """English indefinite article for the phrase that follows it."""
    return "an" if phrase[:1].lower() in "aeiou" or phrase.lower().startswith("hour") else "a"


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _pick(rng: np.random.Generator, items: Sequence[str]) -> str:
    return items[int(rng.integers(len(items)))]


@dataclass(frozen=True)
class Attributes:
    """What a truthful caption may say about the picture."""

    color: str
    size: str  # small | medium | large
    position: str
    count: int = 1


def random_attributes(rng: np.random.Generator, colors: Sequence[str]) -> Attributes:
    """Attributes of no picture in particular (for mismatched captions)."""
    return Attributes(
        _pick(rng, colors), _pick(rng, ("small", "medium", "large")), _pick(rng, list(POSITION_PHRASES))
    )


def _noun(rng: np.random.Generator, concept: Concept, synonym_fraction: float) -> str:
    if concept.synonyms and rng.random() < synonym_fraction:
        return _pick(rng, concept.synonyms)
    return concept.name


def _slots(rng: np.random.Generator, concept: Concept, attrs: Attributes, synonym_fraction: float) -> dict:
    obj = _noun(rng, concept, synonym_fraction)
    if attrs.count > 1:
        desc = f"{COUNT_WORDS[attrs.count]} {attrs.color} {concept.plural}"
        a_desc = desc
    else:
        words = []
        if attrs.size != "medium" and rng.random() < 0.5:
            words.append(attrs.size)
        if rng.random() < 0.75:
            words.append(attrs.color)
        desc = " ".join([*words, obj])
        a_desc = f"{article(desc)} {desc}"
    return {
        "obj": obj,
        "Obj": _cap(obj),
        "objs": concept.plural,
        "Objs": _cap(concept.plural),
        "a_obj": f"{article(obj)} {obj}",
        "A_obj": _cap(f"{article(obj)} {obj}"),
        "a_desc": a_desc,
        "A_desc": _cap(a_desc),
        "color": attrs.color,
        "Color": _cap(attrs.color),
        "pos": POSITION_PHRASES[attrs.position],
        "bg": _pick(rng, BG_WORDS),
        "year": int(rng.integers(2005, 2024)),
        "n": int(rng.integers(2, 200)),
    }


def english(
    rng: np.random.Generator,
    concept: Concept,
    attrs: Attributes,
    family: str,
    *,
    second: Concept | None = None,
    synonym_fraction: float = 0.1,
    suffix_prob: float = 0.25,
) -> str:
    """An English alt-text that names ``concept`` (and ``second`` too, if given)."""
    slots = _slots(rng, concept, attrs, synonym_fraction)
    if second is not None:
        obj2 = _noun(rng, second, synonym_fraction)
        slots.update(obj2=obj2, a_obj2=f"{article(obj2)} {obj2}")
        template = _pick(rng, MULTI)
    else:
        template = _pick(rng, FAMILIES[family])
    text = template.format(**slots)
    if rng.random() < suffix_prob:
        text += _pick(rng, SUFFIXES).format(**slots)
    return text


def unnamed(rng: np.random.Generator) -> str:
    """A caption that never names the subject: file names, shop buttons, page chrome, chatter."""
    return _pick(rng, UNNAMED).format(
        n=int(rng.integers(1, 500)),
        m=int(rng.integers(2, 40)),
        n4=int(rng.integers(1000, 9999)),
        n5=int(rng.integers(10000, 99999)),
        w=_pick(rng, ("640", "800", "1024", "1280", "1920")),
        h=_pick(rng, ("480", "600", "768", "720", "1080")),
        year=int(rng.integers(2005, 2024)),
        mm=int(rng.integers(1, 13)),
        dd=int(rng.integers(1, 29)),
        pct=int(rng.integers(2, 8)) * 10,
    )


def foreign(
    rng: np.random.Generator, concept: Concept, lang: str, name_prob: float = 0.7
) -> tuple[str, bool]:
    """A natural sentence in ``lang``; returns (text, whether it names ``concept``)."""
    names = rng.random() < name_prob
    if names:
        f = concept.foreign
        text = _pick(rng, FOREIGN_NAMING[lang]).format(
            a=f.form(lang), nom=f.form(lang, "nom"), acc=f.form(lang, "acc")
        )
    else:
        text = _pick(rng, FOREIGN_OTHER[lang])
    if rng.random() < 0.3:
        text = f"{text} {_pick(rng, FOREIGN_OTHER[lang])}"
    return text, names


def class_word_pattern(concepts: Sequence[Concept] | None = None) -> re.Pattern[str]:
    """Whole-word regex of every English form of every class (name, plural, synonyms)."""
    forms: set[str] = set()
    for c in concepts or list(CONCEPTS.values()):
        forms.update([c.name, c.plural, *c.synonyms])
    alternation = "|".join(sorted((re.escape(f) for f in forms), key=len, reverse=True))
    return re.compile(rf"\b(?:{alternation})\b", re.IGNORECASE)


def plain(concept: Concept) -> str:
    """The plain label-derived caption of a supervised set ("a photo of a star.")."""
    return f"a photo of {article(concept.name)} {concept.name}."
