"""Nouns and noun phrases from captions and referring expressions.

Two backends:

* ``"spacy"``: spaCy noun chunks (``chunk.root.lemma_``), used when spaCy and an English pipeline are installed.
* ``"rule"``: a dependency-free fallback: a tokenizer, closed-class word lists, suffix heuristics and a noun
  phrase rule. A noun phrase is a run of content words (adjectives and noun candidates) between boundaries
  (determiners, pronouns, prepositions, conjunctions, numbers, verbs, adverbs, punctuation); its head is the last
  noun candidate of the run.

Output conventions (both backends):

* :meth:`NounExtractor.extract_nouns` returns lower-case, singular head nouns with adjectives and other modifiers
  dropped ("a red double-decker bus next to two small dogs" -> ``["bus", "dog"]``), deduplicated, in order of
  appearance. Exception: known multi-word class names (:data:`COMPOUND_NOUNS`: "potted plant", "dining table",
  "tv monitor", "motor bike", COCO's "traffic light", ...) stay one noun, because splitting them would give a
  different class ("plant", "table").
* Scene / framing / quantity words (:data:`STOP_NOUNS`: "background", "picture", "photo", "group", "left", ...)
  are never returned: "two sheep on a striped background" -> ``["sheep"]``. A noun that appears in nearly every
  caption carries no signal for a contrastive loss across images.
* :meth:`NounExtractor.head_noun_phrase` (referring expressions, Global-Local CLIP style) keeps modifiers, since
  they disambiguate the referent: "the bigger bus on the left" -> ``"bigger bus"`` with the rule backend (the
  first noun phrase, determiners dropped); with spaCy the noun chunk containing the ROOT token (else the chunk
  containing the ROOT's first child, else the whole sentence), as the chunk's lower-case text.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Callable, Iterable, Literal

from textseg.errors import UserError

logger = logging.getLogger(__name__)

Backend = Literal["auto", "spacy", "rule"]

SPACY_INSTALL_HINT = (
    "spaCy's English pipelines are not on PyPI: run `pip install spacy` and then "
    "`python -m spacy download en_core_web_sm`, or pass spacy_model=<installed pipeline package or directory>"
)

# Multi-word class names of VOC / COCO / Context that must stay one noun (stored singular, space-separated).
COMPOUND_NOUNS: frozenset[str] = frozenset(
    {
        "potted plant", "dining table", "tv monitor", "motor bike", "traffic light", "fire hydrant", "stop sign",
        "parking meter", "sports ball", "baseball bat", "baseball glove", "tennis racket", "wine glass", "hot dog",
        "cell phone", "teddy bear", "hair drier", "hair dryer", "fire truck", "ice cream", "christmas tree",
        "traffic sign", "street light", "computer mouse", "remote control", "police car",
    }
)

# Words that name a picture's background or surface; training on the workbench keeps them as nouns (its captions
# name the background on purpose), see ``loss.keep_background_nouns``.
BACKGROUND_NOUNS: frozenset[str] = frozenset({"background", "backdrop", "texture", "pattern", "gradient"})

STOP_NOUNS: frozenset[str] = BACKGROUND_NOUNS | frozenset(
    {
        "foreground", "picture", "image", "photo", "photograph", "pic", "view", "scene", "shot",
        "closeup", "close-up", "group", "pair", "couple", "bunch", "lot", "number", "kind", "type", "sort", "piece",
        "front", "back", "side", "top", "bottom", "left", "right", "middle", "center", "centre", "corner", "way",
        "thing", "something", "someone", "somebody", "anything", "nothing", "everything", "area", "part", "there",
        "here", "it", "one", "ones", "lots", "variety", "set", "illustration", "drawing", "emoji", "icon",
    }
)

_DETERMINERS = {
    "a", "an", "the", "this", "that", "these", "those", "some", "any", "each", "every", "all", "both", "no",
    "another", "such", "its", "his", "her", "their", "our", "my", "your", "either", "neither", "what", "which",
    "whose", "much", "many", "few", "several", "more", "most", "less", "least", "lots", "plenty",
}
_PRONOUNS = {
    "i", "you", "he", "she", "it", "we", "they", "me", "him", "them", "us", "who", "whom", "itself", "himself",
    "herself", "themselves", "myself", "yourself", "ourselves", "someone", "somebody", "something", "anyone",
    "anything", "everyone", "everybody", "everything", "nothing", "nobody", "one", "ones", "mine", "yours",
    "hers", "theirs", "ours", "there", "here",
}
_PREPOSITIONS = {
    "on", "in", "at", "of", "with", "without", "to", "near", "above", "below", "under", "over", "behind", "beside",
    "besides", "by", "from", "into", "onto", "through", "across", "along", "around", "against", "between",
    "among", "amongst", "beneath", "underneath", "inside", "outside", "within", "upon", "atop", "toward",
    "towards", "off", "out", "up", "down", "past", "about", "after", "before", "during", "like", "than", "via",
    "per", "for", "next", "beyond", "throughout", "alongside",
}
_CONJUNCTIONS = {"and", "or", "but", "nor", "while", "as", "so", "yet", "if", "because", "although", "though",
                 "whereas", "where", "when", "whether", "then", "plus", "&"}
_NUMBERS = {
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
    "thirteen", "fourteen", "fifteen", "twenty", "thirty", "hundred", "thousand", "dozen", "dozens", "first",
    "second", "third", "fourth", "fifth", "last", "single", "double", "triple", "multiple", "numerous",
}
_ADVERBS = {
    "not", "very", "too", "also", "just", "only", "really", "quite", "almost", "nearly", "together", "away",
    "again", "still", "even", "well", "here", "there", "now", "then", "alone", "apart", "somewhat", "rather",
    "outdoors", "indoors", "upside", "nearby", "ahead", "aside", "back", "forward", "closely",
}
_AUXILIARIES = {
    "is", "are", "was", "were", "be", "been", "being", "am", "has", "have", "had", "having", "do", "does", "did",
    "can", "could", "will", "would", "shall", "should", "may", "might", "must", "isn't", "aren't", "doesn't",
    "don't", "can't", "won't", "there's", "it's", "that's", "here's", "let", "lets",
}
# Verbs frequent in captions. All forms of the first list are verbs there; for the second list the base form is
# often a noun ("a walk", "a fly", "a drive") so only the -s / -ed forms count as verbs.
_VERB_BASES = (
    "sit stand lie lay hold ride eat carry wear sleep hang lean contain appear seem become get go come make take "
    "see grow graze perch depict gather chase sniff prepare decorate arrange put keep leave hide peek try have "
    "stare pose look draw"
).split()
_VERB_BASES_INFLECTED_ONLY = (
    "play fly run walk swim jump float wait pull push throw catch kick talk smile laugh fill drive travel "
    "reach serve show lick bite hug climb cross"
).split()
_IRREGULAR_VERB_FORMS = {
    "sat", "stood", "lying", "laid", "held", "rode", "ridden", "ate", "eaten", "drank", "drunk", "ran", "flew",
    "flown", "swam", "worn", "wore", "slept", "hung", "made", "taken", "took", "seen", "saw", "shown", "grown",
    "grew", "driven", "drove", "thrown", "threw", "caught", "cut", "written", "wrote", "went", "gone", "came",
    "got", "gotten", "drawn", "drew", "became", "kept", "led", "put", "hid", "hidden", "bit", "bitten", "found", "looks",
    "flies",
}
_ADJECTIVES = {
    # colours (colour words that are also common nouns, e.g. "orange", stay noun candidates: a modifier
    # noun before the head is harmless, and "an orange on a plate" must keep it)
    "red", "green", "blue", "yellow", "purple", "pink", "brown", "black", "white", "grey", "gray", "beige",
    "golden", "dark", "light", "bright", "pale", "colorful", "colourful", "multicolored", "multicoloured",
    "transparent", "shiny", "striped", "spotted", "dotted", "checkered", "plaid", "plain",
    # sizes and shapes
    "big", "small", "large", "little", "tiny", "huge", "giant", "enormous", "tall", "short", "long", "wide",
    "narrow", "thick", "thin", "fat", "high", "low", "round", "flat", "bigger", "smaller", "larger", "taller",
    "shorter", "longer", "wider", "higher", "lower", "biggest", "smallest", "largest", "tallest", "shortest",
    "longest", "closer", "closest", "further", "furthest", "farther", "farthest", "nearer", "nearest",
    # positions
    "left", "right", "top", "bottom", "front", "middle", "center", "centre", "upper", "lower", "inner", "outer",
    "far", "central", "leftmost", "rightmost", "topmost", "lowest", "highest", "side", "opposite", "other",
    # other frequent adjectives
    "old", "new", "young", "older", "younger", "oldest", "youngest", "open", "closed", "empty", "full", "wooden",
    "plastic", "cute", "happy", "sad", "pretty", "beautiful", "nice", "good", "bad", "hot", "cold", "warm", "wet",
    "dry", "clean", "dirty", "same", "different", "various", "fresh", "busy", "quiet", "modern", "ancient",
    "main", "whole", "own", "real", "simple", "strange", "funny", "cartoon", "stuffed", "fluffy", "furry",
    "wild", "domestic", "adult", "baby", "male", "female", "sliced", "cooked", "frozen", "fried", "ripe",
    "sunny", "cloudy", "snowy", "grassy", "sandy", "rocky", "shaggy", "hairy", "curly", "blond", "blonde",
    "smiling", "sleepy", "angry", "particular", "smooth", "rough", "soft", "hard", "lonely", "lovely", "ugly", "large-sized", "small-sized", "potted",
}
_NOUN_ING = {
    "building", "ceiling", "painting", "clothing", "ring", "string", "thing", "wing", "swing", "evening",
    "morning", "spring", "pudding", "stuffing", "wedding", "awning", "icing", "railing", "bedding", "dressing",
    "king", "sling", "ping", "ding", "sibling", "duckling", "seedling", "dumpling", "earring", "topping",
    "frosting", "parking", "sing", "bing", "lightning", "opening", "drawing", "crossing", "sign",
}
_NOUN_ED = {"speed", "steed", "breed", "tweed", "seed", "weed", "feed", "bed", "shed", "sled", "reed", "sped"}
_NOUN_LY = {
    "butterfly", "dragonfly", "firefly", "housefly", "family", "jelly", "belly", "lily", "bully", "ally", "rally",
    "holly", "italy", "fly", "trolly", "gully", "doily", "anomaly", "assembly", "monopoly",
}

_IRREGULAR_PLURALS = {
    "people": "person", "men": "man", "women": "woman", "children": "child", "feet": "foot", "teeth": "tooth",
    "mice": "mouse", "geese": "goose", "oxen": "ox", "knives": "knife", "wives": "wife", "lives": "life",
    "leaves": "leaf", "loaves": "loaf", "shelves": "shelf", "wolves": "wolf", "calves": "calf", "halves": "half",
    "scarves": "scarf", "thieves": "thief", "elves": "elf", "hooves": "hoof", "buses": "bus", "busses": "bus",
    "gases": "gas", "lenses": "lens", "cacti": "cactus", "fungi": "fungus", "dice": "die", "indices": "index",
    "movies": "movie", "cookies": "cookie", "zombies": "zombie", "brownies": "brownie", "selfies": "selfie",
    "shoes": "shoe", "toes": "toe", "canoes": "canoe", "oboes": "oboe", "hoes": "hoe",
}
_UNINFLECTED = {
    "sheep", "deer", "fish", "moose", "bison", "aircraft", "series", "species", "gas", "news", "pants", "jeans",
    "scissors", "shorts", "trousers", "clothes", "binoculars", "goggles", "headphones", "tennis",
    "chess", "bus", "lens", "cactus", "octopus", "platypus", "hippopotamus", "asparagus", "walrus", "iris",
    "swiss", "police", "salmon", "trout", "squid", "shrimp", "cattle", "furniture", "luggage", "equipment",
}

_TOKEN_RE = re.compile(r"[a-z0-9]+(?:[-'][a-z0-9]+)*'?|[^\sa-z0-9]")


def _inflections(base: str) -> set[str]:
    forms = {base + "ed", base + "d" if base.endswith("e") else base + "ed"}
    if base.endswith(("s", "sh", "ch", "x", "o")):
        forms.add(base + "es")
    elif base.endswith("y") and base[-2] not in "aeiou":
        forms |= {base[:-1] + "ies", base[:-1] + "ied"}
    else:
        forms.add(base + "s")
    return forms


_VERB_FORMS: frozenset[str] = frozenset(
    set(_VERB_BASES)
    | {form for base in _VERB_BASES + _VERB_BASES_INFLECTED_ONLY for form in _inflections(base)}
    | _IRREGULAR_VERB_FORMS
)

_BOUNDARY = "B"
_ADJ = "A"
_NOUN = "N"


def singularize(word: str) -> str:
    """Return a simple singular form of a lower-case English noun ("dogs" -> "dog", "puppies" -> "puppy").

    Also "glasses" -> "glass" (drinking glasses are far more common in captions than spectacles).
    """
    if word in _IRREGULAR_PLURALS:
        return _IRREGULAR_PLURALS[word]
    if word in _UNINFLECTED or len(word) <= 2 or not word.endswith("s"):
        return word
    if "-" in word:  # "double-deckers" -> "double-decker"
        head, _, last = word.rpartition("-")
        return f"{head}-{singularize(last)}"
    if word.endswith(("ss", "us", "is", "ous")):
        return word
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("sses", "xes", "ches", "shes", "zzes")):
        return word[:-2]
    if word.endswith("oes") and len(word) > 4:  # tomatoes, potatoes
        return word[:-2]
    return word[:-1]


def _word_class(token: str) -> str:
    if not re.match(r"[a-z0-9]", token):
        return _BOUNDARY  # punctuation
    if token.isdigit() or re.fullmatch(r"\d+(?:st|nd|rd|th)?", token):
        return _BOUNDARY
    if (
        token in _DETERMINERS
        or token in _PRONOUNS
        or token in _PREPOSITIONS
        or token in _CONJUNCTIONS
        or token in _NUMBERS
        or token in _ADVERBS
        or token in _AUXILIARIES
        or token in _VERB_FORMS
    ):
        return _BOUNDARY
    if token in _ADJECTIVES:
        return _ADJ
    if token.endswith("ing") and token not in _NOUN_ING and len(token) > 4:
        return _BOUNDARY  # gerund / participle: "a man riding a horse"
    if token.endswith("ed") and token not in _NOUN_ED and len(token) > 4:
        return _ADJ  # participle used as an adjective ("a striped shirt") or a verb; never a head noun
    if token.endswith("ly") and token not in _NOUN_LY and len(token) > 4:
        return _BOUNDARY  # adverb
    if token.endswith(("ous", "ful", "ish", "less")) and len(token) > 5:
        return _ADJ
    return _NOUN


def _tokenize(text: str) -> list[str]:
    """Lower-case word and punctuation tokens; a possessive "'s" becomes its own boundary token."""
    tokens: list[str] = []
    for tok in _TOKEN_RE.findall(text.lower().replace("\u2019", "'")):
        if tok.endswith("'s") and len(tok) > 2 and tok not in _AUXILIARIES:
            tokens.extend([tok[:-2], "'s"])
        elif tok.endswith("'") and len(tok) > 1:
            tokens.extend([tok[:-1], "'s"])
        else:
            tokens.append(tok)
    return tokens


def _merge_compounds(tokens: list[str]) -> list[str]:
    """Join adjacent tokens that form a known multi-word class name ("potted", "plants" -> "potted plants")."""
    out: list[str] = []
    i = 0
    while i < len(tokens):
        if i + 1 < len(tokens) and f"{tokens[i]} {singularize(tokens[i + 1])}" in COMPOUND_NOUNS:
            out.append(f"{tokens[i]} {tokens[i + 1]}")
            i += 2
        else:
            out.append(tokens[i])
            i += 1
    return out


def _rule_phrases(text: str) -> list[tuple[list[str], str]]:
    """Noun phrases of ``text`` as ``(modifier+head tokens, head token)``, in order, determiners dropped."""
    phrases: list[tuple[list[str], str]] = []
    run: list[tuple[str, str]] = []

    def close() -> None:
        nouns = [i for i, (_, cls) in enumerate(run) if cls == _NOUN]
        if nouns:
            last = nouns[-1]
            phrases.append(([w for w, _ in run[: last + 1]], run[last][0]))
        run.clear()

    for tok in _merge_compounds(_tokenize(text)):
        cls = _NOUN if " " in tok else _word_class(tok)
        if cls == _BOUNDARY:
            close()
        else:
            run.append((tok, cls))
    close()
    return phrases


def _normalize_head(head: str) -> str:
    if " " in head:  # compound: singularise its last word only
        first, _, last = head.rpartition(" ")
        return f"{first} {singularize(last)}"
    return singularize(head)


class NounExtractor:
    """Extracts head nouns from captions and the head noun phrase from referring expressions.

    Args:
        backend: ``"spacy"``, ``"rule"``, or ``"auto"`` (spaCy when ``spacy.load(spacy_model)`` succeeds, else
            the rule backend; the choice is logged once per process).
        spacy_model: a spaCy pipeline name or a path to a pipeline directory.
        nlp: an already loaded spaCy-like callable (``nlp(text)`` returns a doc with ``noun_chunks``); when
            given, the spaCy path is used with it and ``backend``/``spacy_model`` are ignored.
        stop_nouns: nouns never returned (default :data:`STOP_NOUNS`).

    Raises:
        UserError: ``backend="spacy"`` and spaCy or the pipeline cannot be loaded.
    """

    _logged_auto = False

    def __init__(
        self,
        backend: Backend = "auto",
        spacy_model: str = "en_core_web_sm",
        *,
        nlp: Callable[[str], Any] | None = None,
        stop_nouns: Iterable[str] | None = None,
    ) -> None:
        if backend not in ("auto", "spacy", "rule"):
            raise UserError(f"unknown noun extraction backend {backend!r}; use 'auto', 'spacy' or 'rule'")
        self.stop_nouns = frozenset(STOP_NOUNS if stop_nouns is None else stop_nouns)
        self.nlp = nlp
        if nlp is None and backend in ("auto", "spacy"):
            self.nlp, reason = _load_spacy(spacy_model)
            if self.nlp is None and backend == "spacy":
                raise UserError(f"noun backend 'spacy' unavailable ({reason}). {SPACY_INSTALL_HINT}")
            if backend == "auto" and not NounExtractor._logged_auto:
                NounExtractor._logged_auto = True
                if self.nlp is None:
                    logger.info("noun extraction: rule-based fallback (spaCy unavailable: %s)", reason)
                else:
                    logger.info("noun extraction: spaCy pipeline %s", spacy_model)
        self.backend: str = "spacy" if self.nlp is not None else "rule"

    def extract_nouns(self, caption: str, max_nouns: int = 3) -> list[str]:
        """Lower-case singular head nouns of ``caption``, deduplicated, in order, at most ``max_nouns``."""
        if self.nlp is not None:
            candidates = self._spacy_heads(caption)
        else:
            candidates = [_normalize_head(head) for _, head in _rule_phrases(caption)]
        out: list[str] = []
        for noun in candidates:
            if noun and noun not in self.stop_nouns and noun not in out:
                out.append(noun)
                if len(out) >= max_nouns:
                    break
        return out

    def head_noun_phrase(self, sentence: str) -> str:
        """The noun phrase naming the referent of a referring expression (see the module docstring)."""
        text = sentence.strip().lower()
        if self.nlp is not None:
            return self._spacy_root_chunk(text)
        for words, head in _rule_phrases(text):
            if _normalize_head(head) not in self.stop_nouns:
                return " ".join(words)
        return text

    # spaCy path -------------------------------------------------------------------------------------------

    def _spacy_heads(self, caption: str) -> list[str]:
        doc = self.nlp(caption.strip().lower())  # type: ignore[misc]
        heads: list[str] = []
        for chunk in doc.noun_chunks:
            root = chunk.root
            if getattr(root, "pos_", "NOUN") == "PRON":
                continue
            lemma = (root.lemma_ or root.text).lower()
            if lemma == "-pron-":
                continue
            words = chunk.text.lower().split()
            if len(words) >= 2 and f"{words[-2]} {lemma}" in COMPOUND_NOUNS:
                lemma = f"{words[-2]} {lemma}"
            heads.append(lemma)
        return heads

    def _spacy_root_chunk(self, text: str) -> str:
        doc = self.nlp(text)  # type: ignore[misc]
        chunks = list(doc.noun_chunks)
        root = next((tok for tok in doc if tok.dep_ == "ROOT"), None)
        if root is None:
            return text
        targets = [root]
        first_child = next(iter(root.children), None)
        if first_child is not None:
            targets.append(first_child)
        for tok in targets:
            for chunk in chunks:
                if chunk.start <= tok.i < chunk.end:
                    return chunk.text
        return text


def _load_spacy(model: str) -> tuple[Any | None, str]:
    """``(nlp, "")`` or ``(None, reason)``."""
    import importlib.util
    from pathlib import Path

    if importlib.util.find_spec("spacy") is None:
        return None, "spaCy is not installed"
    # spacy.load finds a pipeline by package name or path; checking first spares the 3 s import of spaCy (and
    # thinc, torch) in every data worker when no pipeline is installed
    if not Path(model).exists():
        try:
            found = importlib.util.find_spec(model) is not None
        except (ImportError, ValueError):  # "a.b" with no package "a", or an empty name
            found = False
        if not found:
            return None, f"spaCy pipeline {model!r} is not installed"
    try:
        import spacy  # type: ignore[import-not-found]
    except ImportError as err:
        return None, f"spaCy cannot be imported: {err}"
    try:
        return spacy.load(model), ""
    except (OSError, ImportError, ValueError) as err:
        return None, f"cannot load spaCy pipeline {model!r}: {err}"


_default: NounExtractor | None = None


def default_extractor() -> NounExtractor:
    """The process-wide ``NounExtractor("auto")`` used by the module-level helpers."""
    global _default
    if _default is None:
        _default = NounExtractor("auto")
    return _default


def extract_nouns(caption: str, max_nouns: int = 3) -> list[str]:
    """Head nouns of ``caption`` with the default (auto) extractor; see :meth:`NounExtractor.extract_nouns`."""
    return default_extractor().extract_nouns(caption, max_nouns)


def head_noun_phrase(sentence: str) -> str:
    """Referent noun phrase with the default (auto) extractor; see :meth:`NounExtractor.head_noun_phrase`."""
    return default_extractor().head_noun_phrase(sentence)
