"""Spatial readings of referring sentences, on the rule backend and on a real spaCy pipeline.

Every sentence of CASES is read by both backends. The expected reading is written as ``field=value; ...``; fields
left out are None (``head``: ""). The fourth column is the spaCy reading's fields where the parse legitimately
attaches a phrase differently from word order; an empty column means both backends read the sentence the same.
"""

import dataclasses
import json
import subprocess
import sys

import pytest

from textseg.errors import UserError
from textseg.ris.spatial import SpatialParser, SpatialReading, read_spatial

FIELDS = ("head", "horizontal", "vertical", "ordinal", "size", "depth", "relation", "anchor")

CASES = [
    # absolute position: synonyms, comparatives and superlatives, "middle" / "center"
    ("abs", "the man on the left", "head=man; horizontal=left", ""),
    ("abs", "guy on right", "head=guy; horizontal=right", ""),
    ("abs", "the woman to the right", "head=woman; horizontal=right", ""),
    ("abs", "the leftmost dog", "head=dog; horizontal=left; ordinal=1", ""),
    ("abs", "the rightmost car", "head=car; horizontal=right; ordinal=1", ""),
    ("abs", "the left one", "horizontal=left", ""),
    ("abs", "the right-hand glass", "head=glass; horizontal=right", ""),
    ("abs", "the dog on the left-hand side", "head=dog; horizontal=left", ""),
    ("abs", "the car on the far left", "head=car; horizontal=left; ordinal=1", ""),
    ("abs", "man far left", "head=man; horizontal=left; ordinal=1", ""),
    ("abs", "the man in the middle", "head=man; horizontal=center", ""),
    ("abs", "the centre plate", "head=plate; horizontal=center", ""),
    ("abs", "the central pillar", "head=pillar; horizontal=center", ""),
    ("abs", "the bird at the top", "head=bird; vertical=top", ""),
    ("abs", "the upper shelf", "head=shelf; vertical=top", ""),
    ("abs", "the topmost apple", "head=apple; vertical=top; ordinal=1", ""),
    ("abs", "the highest plane", "head=plane; vertical=top; ordinal=1", ""),
    ("abs", "the plane above everything", "head=plane; vertical=top", ""),
    ("abs", "the shoe at the bottom", "head=shoe; vertical=bottom", ""),
    ("abs", "the lower bunk", "head=bunk; vertical=bottom", ""),
    ("abs", "the lowest drawer", "head=drawer; vertical=bottom; ordinal=1", ""),
    ("abs", "the cat beneath everything else", "head=cat; vertical=bottom", ""),
    ("abs", "the one below all the others", "vertical=bottom", ""),
    ("abs", "the one in between", "horizontal=center", ""),
    ("abs", "the woman on the right side of the image", "head=woman; horizontal=right", ""),
    ("abs", "the man in the centre of the photo", "head=man; horizontal=center", ""),
    ("abs", "the person who is standing furthest to the right", "head=person; horizontal=right; ordinal=1", ""),
    ("abs", "all the way to the left", "horizontal=left; ordinal=1", ""),
    ("abs", "the girl in the photo on the left", "head=girl; horizontal=left", ""),
    ("abs", "the man just right of center", "head=man; horizontal=right", ""),
    ("abs", "the man in the lower half", "head=man; vertical=bottom", ""),
    ("abs", "the small one in the bottom right hand corner", "horizontal=right; vertical=bottom; size=small", ""),
    # size
    ("size", "the big dog", "head=dog; size=large", ""),
    ("size", "the biggest elephant", "head=elephant; size=large", ""),
    ("size", "the larger one", "size=large", ""),
    ("size", "a huge truck", "head=truck; size=large", ""),
    ("size", "the tiny cat", "head=cat; size=small", ""),
    ("size", "the smaller of the two dogs", "head=two dogs; size=small", ""),
    ("size", "the tallest building", "head=building; size=large", ""),
    ("size", "a little girl", "head=girl; size=small", ""),
    # ordinals, as words and digits
    ("ord", "second from the left", "horizontal=left; ordinal=2", ""),
    ("ord", "the third person from the right", "head=person; horizontal=right; ordinal=3", ""),
    ("ord", "2nd from right", "horizontal=right; ordinal=2", ""),
    ("ord", "the second one from top", "vertical=top; ordinal=2", ""),
    ("ord", "the fourth car", "head=car; ordinal=4", ""),
    ("ord", "the second largest pizza", "head=pizza; ordinal=2; size=large", ""),
    ("ord", "the first chair on the left", "head=chair; horizontal=left; ordinal=1", ""),
    ("ord", "the laptop that is second from the left", "head=laptop; horizontal=left; ordinal=2", ""),
    ("ord", "3 from the left", "horizontal=left; ordinal=3", ""),
    # depth
    ("depth", "the person closest to the camera", "head=person; depth=near", ""),
    ("depth", "the nearest boat", "head=boat; depth=near", ""),
    ("depth", "the car in front", "head=car; depth=near", ""),
    ("depth", "the man in the back", "head=man; depth=far", ""),
    ("depth", "the tree in the distance", "head=tree; depth=far", ""),
    ("depth", "the chair in the background", "head=chair; depth=far", ""),
    ("depth", "the farthest zebra", "head=zebra; depth=far", ""),
    ("depth", "the people in the front row", "head=people; depth=near", ""),
    ("depth", "the boat far away", "head=boat; depth=far", ""),
    ("depth", "the guy closest to us", "head=guy; depth=near", ""),
    ("depth", "the man up front", "head=man; depth=near", ""),
    ("depth", "the one furthest back", "depth=far", ""),
    ("depth", "the person on the far side", "head=person; depth=far", ""),
    # relations with an anchor; never an absolute position
    ("rel", "the man to the left of the bus", "head=man; relation=left_of; anchor=bus", ""),
    ("rel", "the cup left of the laptop", "head=cup; relation=left_of; anchor=laptop", ""),
    ("rel", "dog next to the chair", "head=dog; relation=next_to; anchor=chair", ""),
    ("rel", "cup on the table", "head=cup; relation=on; anchor=table", ""),
    ("rel", "cat under the desk", "head=cat; relation=under; anchor=desk", ""),
    ("rel", "person behind the car", "head=person; relation=behind; anchor=car", ""),
    ("rel", "lamp above the bed", "head=lamp; relation=above; anchor=bed", ""),
    ("rel", "bag below the sink", "head=bag; relation=below; anchor=sink", ""),
    ("rel", "the woman standing in front of the white van", "head=woman; relation=in_front_of; anchor=white van", ""),
    ("rel", "the girl between the boy and the woman", "head=girl; relation=between; anchor=boy", ""),
    ("rel", "the car between two trucks", "head=car; relation=between; anchor=two trucks", ""),
    ("rel", "the cat inside the box", "head=cat; relation=inside; anchor=box", ""),
    ("rel", "the man holding an umbrella", "head=man; relation=holding; anchor=umbrella", ""),
    ("rel", "the chair near the window", "head=chair; relation=near; anchor=window", ""),
    ("rel", "the vase on top of the table", "head=vase; relation=on; anchor=table", ""),
    ("rel", "there is a dog to the right of the cat", "head=dog; relation=right_of; anchor=cat", ""),
    ("rel", "the dog next to the left chair", "head=dog; relation=next_to; anchor=left chair", ""),
    ("rel", "the chair closest to the door", "head=chair; relation=near; anchor=door", ""),
    ("rel", "the dog in the middle of the road", "head=dog; relation=inside; anchor=road", ""),
    ("rel", "the woman at the rear of the bus", "head=woman; relation=behind; anchor=bus", ""),
    ("rel", "the glass on the left of the bottle", "head=glass; relation=left_of; anchor=bottle", ""),
    ("rel", "the lamp adjacent to the sofa", "head=lamp; relation=next_to; anchor=sofa", ""),
    ("rel", "the vase atop the cabinet", "head=vase; relation=on; anchor=cabinet", ""),
    ("rel", "the rug underneath the table", "head=rug; relation=under; anchor=table", ""),
    # combinations
    ("combo", "the bottom left plate", "head=plate; horizontal=left; vertical=bottom", ""),
    ("combo", "the top right corner", "horizontal=right; vertical=top", ""),
    ("combo", "the upper-left dog", "head=dog; horizontal=left; vertical=top", ""),
    ("combo", "top center", "horizontal=center; vertical=top", ""),
    ("combo", "center left", "horizontal=left; vertical=middle", ""),
    ("combo", "the middle row", "vertical=middle", ""),
    ("combo", "the small red car on the right", "head=red car; horizontal=right; size=small", ""),
    ("combo", "the second small car from the left next to the bus",
     "head=car; horizontal=left; ordinal=2; size=small; relation=next_to; anchor=bus", ""),
    ("combo", "the big dog in the top left corner of the picture",
     "head=dog; horizontal=left; vertical=top; size=large", ""),
    ("combo", "the tall man standing behind the woman on the right",
     "head=man; horizontal=right; size=large; relation=behind; anchor=woman", ""),
    ("combo", "the man on the right next to the bus", "head=man; horizontal=right; relation=next_to; anchor=bus", ""),
    ("combo", "find the red car on the right", "head=red car; horizontal=right", ""),
    ("combo", "one of the two dogs on the left", "head=two dogs; horizontal=left", ""),
    ("combo", "the leftmost of the three cats", "head=three cats; horizontal=left; ordinal=1", ""),
    ("combo", "the person in the top row, third from the left",
     "head=person; horizontal=left; vertical=top; ordinal=3", ""),
    ("combo", "a couple of birds sitting on a branch on the right",
     "head=birds; horizontal=right; relation=on; anchor=branch", ""),
    # where the parse attaches a phrase to another object than word order does
    ("combo", "the horse with a rider on the left", "head=horse; horizontal=left", "horizontal="),
    ("combo", "the bike that the man on the left is riding", "head=bike; horizontal=left", "horizontal="),
    ("combo", "the cake that the girl on the right is cutting", "head=cake; horizontal=right", "horizontal="),
    ("combo", "the man next to the woman in the middle",
     "head=man; horizontal=center; relation=next_to; anchor=woman", "horizontal="),
    ("combo", "a dog sitting next to a cat on the right",
     "head=dog; horizontal=right; relation=next_to; anchor=cat", "horizontal="),
    ("combo", "man with umbrella left", "head=man", "horizontal=left"),  # telegraphic; the parse keeps "left" free
    ("tricky", "the man who quickly left", "head=man; horizontal=left", "horizontal="),  # the parse sees the verb
    # no spatial words
    ("none", "a red car", "head=red car", ""),
    ("none", "the man in a blue shirt", "head=man", ""),
    ("none", "two dogs playing with a ball", "head=two dogs", ""),
    ("none", "the woman with the umbrella", "head=woman", ""),
    ("none", "a plate of food", "head=plate", ""),
    ("none", "the black cat", "head=black cat", ""),
    ("none", "zebra", "head=zebra", ""),
    ("none", "the person wearing glasses", "head=person", ""),
    ("none", "a white boat", "head=white boat", ""),
    ("none", "the sleeping dog", "head=sleeping dog", ""),
    ("none", "", "", ""),
    ("none", "   ", "", ""),
    # words that look spatial but are not (here)
    ("tricky", "the man who left", "head=man", ""),
    ("tricky", "the woman who has left the room", "head=woman", ""),
    ("tricky", "the only one left", "", ""),
    ("tricky", "the only cookie left on the plate", "head=cookie; relation=on; anchor=plate", ""),
    ("tricky", "the right answer", "head=right answer", ""),
    ("tricky", "a woman in a tank top", "head=woman", ""),
    ("tricky", "a man wearing a top hat", "head=man", ""),
    ("tricky", "the shopping center", "head=shopping center", ""),
    ("tricky", "a middle-aged man", "head=middle-aged man", ""),
    ("tricky", "the man raising his left hand", "head=man", ""),
    ("tricky", "a boy looking back", "head=boy", ""),
    ("tricky", "the dog lying on its back", "head=dog", ""),
    ("tricky", "the front door", "head=front door", ""),
    ("tricky", "the back of the bus", "head=back", ""),
    ("tricky", "the cat right next to the door", "head=cat; relation=next_to; anchor=door", ""),
    ("tricky", "by far the biggest elephant", "head=elephant; size=large", ""),
    ("tricky", "the left-handed pitcher", "head=left-handed pitcher", ""),
    ("tricky", "a little to the left of the tree", "relation=left_of; anchor=tree", ""),
    ("tricky", "a giraffe eating leaves from the top of the tree", "head=giraffe", ""),
    ("tricky", "the man with the big hat", "head=man", ""),
    ("tricky", "the small dog's owner", "head=dog's owner", ""),
    ("tricky", "the umbrella held by the woman on the right", "head=umbrella; horizontal=right", ""),
    ("tricky", "the nearby tree", "head=nearby tree", ""),
    ("tricky", "the chair over there", "head=chair", ""),
    # typos, casing, punctuation, unicode
    ("noisy", "The MAN, on the LEFT!!!", "head=man; horizontal=left", ""),
    ("noisy", "  the dog ON THE RIGHT.  ", "head=dog; horizontal=right", ""),
    ("noisy", "teh dog on teh rigth", "head=dog; horizontal=right", ""),
    ("noisy", "the cup to the lft of the laptop", "head=cup; relation=left_of; anchor=laptop", ""),
    ("noisy", "2ND FROM THE RGHT", "horizontal=right; ordinal=2", ""),
    ("noisy", "bottom-left plate", "head=plate; horizontal=left; vertical=bottom", ""),
    ("noisy", "the upper\u2013left dog", "head=dog; horizontal=left; vertical=top", ""),
    ("noisy", "the dog on the \uff4c\uff45\uff46\uff54", "head=dog; horizontal=left", ""),
    ("noisy", "the caf\u00e9 on the left", "head=caf\u00e9; horizontal=left", ""),
    ("noisy", "the man\u2019s dog on the left", "head=man's dog; horizontal=left", ""),
    ("noisy", "guy left in blue", "head=guy; horizontal=left", ""),
    ("noisy", "BIGGEST ELEPHANT!!", "head=elephant; size=large", ""),
    ("noisy", "the dog on the left \U0001f436", "head=dog; horizontal=left", ""),
    ("noisy", "el ni\u00f1o a la izquierda", "head=el ni\u00f1o", ""),
    ("noisy", "the cat ontop of the fridge", "head=cat; relation=on; anchor=fridge", ""),
    ("noisy", "the person infront of the tv", "head=person; relation=in_front_of; anchor=tv", ""),
]


def reading(spec: str, base: dict | None = None) -> dict:
    """``"head=dog; ordinal=2"`` -> every field (the ones left out None, ``head`` "")."""
    out = dict(base) if base else {field: None for field in FIELDS} | {"head": ""}
    for item in filter(None, (part.strip() for part in spec.split(";"))):
        field, _, value = item.partition("=")
        assert field in FIELDS, f"unknown field {field!r} in the table"
        out[field] = int(value) if field == "ordinal" and value else value or ("" if field == "head" else None)
    return out


@pytest.fixture(scope="module", params=["rules", "spacy"])
def parser(request):
    try:
        return SpatialParser(request.param)
    except UserError as err:
        pytest.skip(f"no English spaCy pipeline installed (tools/install.sh installs one): {err}")


@pytest.mark.parametrize("case", CASES, ids=[f"{n:03d}-{c[0]}" for n, c in enumerate(CASES)])
def test_reading(parser, case):
    _, sentence, expected, spacy_difference = case
    want = reading(expected)
    if parser.backend_used == "spacy":
        want = reading(spacy_difference, want)
    got = parser.read(sentence)
    assert got.sentence == sentence
    assert {field: getattr(got, field) for field in FIELDS} == want


def test_the_table_covers_what_it_claims():
    categories = [c[0] for c in CASES]
    assert len(CASES) >= 70
    assert categories.count("none") >= 10 and categories.count("tricky") >= 8
    assert len({c[1] for c in CASES}) == len(CASES)
    for category, sentence, expected, spacy_difference in CASES:
        base = reading(expected)
        for item in filter(None, (part.strip() for part in spacy_difference.split(";"))):
            field = item.partition("=")[0]  # a written difference really differs from the rule reading
            assert reading(item, base)[field] != base[field], f"{sentence!r}: {item} repeats the rule reading"
        if category == "none":
            assert all(base[field] is None for field in FIELDS[1:]), sentence


def test_reading_to_dict_is_json_ready():
    r = SpatialReading("the 2nd cup left of the laptop", head="cup", ordinal=2, relation="left_of", anchor="laptop")
    d = r.to_dict()
    assert list(d) == ["sentence", *FIELDS]
    assert d == {"sentence": "the 2nd cup left of the laptop", "head": "cup", "horizontal": None, "vertical": None,
                 "ordinal": 2, "size": None, "depth": None, "relation": "left_of", "anchor": "laptop"}
    assert json.loads(json.dumps(d)) == d
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.head = "dog"  # type: ignore[misc]


def test_has_spatial():
    assert not SpatialReading("a red car", head="red car").has_spatial
    assert not SpatialReading("x", anchor="table").has_spatial  # an anchor without a relation says nothing
    assert SpatialReading("the fourth car", head="car", ordinal=4).has_spatial
    assert SpatialReading("x", depth="far").has_spatial
    assert SpatialReading("x", relation="on", anchor="table").has_spatial
    rules = SpatialParser("rules")
    assert rules.read("the small red car on the right").has_spatial
    assert not rules.read("the man who left").has_spatial
    assert not rules.read("").has_spatial


def test_module_helper_uses_the_auto_parser():
    auto = SpatialParser("auto")
    try:
        SpatialParser("spacy")
        assert auto.backend_used == "spacy"
    except UserError:
        assert auto.backend_used == "rules"
    for sentence in ("the second small car from the left next to the bus", "a red car", ""):
        assert read_spatial(sentence) == auto.read(sentence)
    assert read_spatial("the cup left of the laptop").to_dict()["relation"] == "left_of"


def test_backend_errors():
    with pytest.raises(UserError, match="unknown spatial parser backend 'stanza'"):
        SpatialParser("stanza")
    with pytest.raises(UserError, match="en_core_web_nonexistent"):
        SpatialParser("spacy", spacy_model="en_core_web_nonexistent")
    fallback = SpatialParser("auto", spacy_model="en_core_web_nonexistent")
    assert fallback.backend_used == "rules"
    assert fallback.read("the leftmost dog").horizontal == "left"


def test_long_sentence(parser):
    sentence = "the small dog on the left" + " that is looking at the green ball near the red house" * 60
    got = parser.read(sentence)
    assert (got.head, got.horizontal, got.size, got.vertical, got.ordinal) == ("dog", "left", "small", None, None)
    assert len(sentence.split()) > 600 and got.sentence == sentence


def test_rules_backend_does_not_import_spacy():
    code = ("import sys; from textseg.ris.spatial import SpatialParser; "
            "r = SpatialParser('rules').read('the dog on the left'); print(r.horizontal, 'spacy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.split() == ["left", "False"]
