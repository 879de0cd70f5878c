"""English plural forms of class names, for matching captions that say "two snow leopards".

Rules are the simple regular ones plus a short list of irregular and invariant nouns; compounds of
"man" take "-men" (harvestman -> harvestmen; "-mans" is produced too, and a short list of nouns
that only look like compounds, such as human and German, take "-s" alone). Where the
spelling rule is uncertain (``-o``: pianos / potatoes; ``-f``: roofs / wolves) both forms are
produced: a form that never occurs costs nothing, a missed plural costs recall.
"""

from __future__ import annotations

IRREGULAR: dict[str, tuple[str, ...]] = {
    "man": ("men",),
    "woman": ("women",),
    "child": ("children",),
    "person": ("people", "persons"),
    "mouse": ("mice",),
    "louse": ("lice",),
    "goose": ("geese",),
    "tooth": ("teeth",),
    "foot": ("feet",),
    "ox": ("oxen",),
    "die": ("dice",),
    "cactus": ("cacti", "cactuses"),
    "fungus": ("fungi", "funguses"),
    "octopus": ("octopuses", "octopi"),
    "hippopotamus": ("hippopotamuses", "hippopotami"),
    "platypus": ("platypuses",),
    "cherub": ("cherubim", "cherubs"),
    "axis": ("axes",),
    "crisis": ("crises",),
    "thesis": ("theses",),
}

INVARIANT: frozenset[str] = frozenset(
    {
        "sheep", "deer", "moose", "bison", "swine", "salmon", "trout", "shrimp", "aircraft",
        "spacecraft", "series", "species", "fish", "squid", "cod", "offspring", "elk", "buffalo",
        "grouse", "quail", "pike", "carp", "tuna", "mackerel", "sunglasses", "jeans", "pants",
        "trousers", "shorts", "scissors", "pliers", "tongs", "binoculars", "glasses",
    }
)  # fmt: skip

# Nouns in -man that are not compounds of "man" and take a plain -s ("humans", not "humen").
MAN_REGULAR: frozenset[str] = frozenset(
    {
        "human", "german", "roman", "shaman", "talisman", "caiman", "cayman", "ottoman", "dolman",
        "doberman", "pullman", "walkman", "desman", "hetman", "ataman", "dobermann",
    }
)  # fmt: skip

VOWELS = frozenset("aeiou")


def word_plurals(word: str) -> list[str]:
    """Plural forms of one lower-case word (may include the word itself for invariant nouns)."""
    if not word or not word.isalpha():
        return []
    if word in IRREGULAR:
        return list(IRREGULAR[word])
    if word in INVARIANT:
        return [word]
    if word.endswith("man") and len(word) > 3:  # harvestman -> harvestmen, fireman -> firemen
        return [word + "s"] if word in MAN_REGULAR else [word[:-3] + "men", word + "s"]
    forms: list[str] = [word] if word.endswith("fish") else []  # "goldfish", also "goldfishes"
    if word.endswith(("s", "x", "z", "ch", "sh")):
        forms.append(word + "es")
    elif word.endswith("y") and len(word) > 1 and word[-2] not in VOWELS:
        forms.append(word[:-1] + "ies")
    elif word.endswith("fe"):
        forms += [word + "s", word[:-2] + "ves"]
    elif word.endswith("f") and not word.endswith("ff"):
        forms += [word + "s", word[:-1] + "ves"]
    elif word.endswith("o") and len(word) > 1 and word[-2] not in VOWELS:
        forms += [word + "s", word + "es"]
    else:
        forms.append(word + "s")
    return list(dict.fromkeys(f for f in forms if f))


def phrase_plurals(words: list[str]) -> list[list[str]]:
    """Plurals of a multi-word name: the last word (the head noun in English) is pluralised."""
    if not words:
        return []
    head, last = words[:-1], words[-1]
    return [[*head, p] for p in word_plurals(last) if p != last]
