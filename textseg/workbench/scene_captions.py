"""Template captions for scenes and unambiguous referring expressions for single objects."""

from __future__ import annotations

import re

import numpy as np

from textseg.workbench.scenes import Scene, SceneObject

# "singular/plural" names per VOC class id; the first is the canonical class name in prose.
_SYNONYM_TEXT: dict[int, str] = {
    1: "aeroplane/aeroplanes, plane/planes, airplane/airplanes, jet/jets",
    2: "bicycle/bicycles, bike/bikes, cycle/cycles",
    3: "bird/birds, songbird/songbirds, little bird/little birds",
    4: "boat/boats, sailboat/sailboats, sailing boat/sailing boats, yacht/yachts",
    5: "bottle/bottles, champagne bottle/champagne bottles, wine bottle/wine bottles",
    6: "bus/buses, coach/coaches, city bus/city buses",
    7: "car/cars, automobile/automobiles, sedan/sedans",
    8: "cat/cats, kitty/kitties, kitten/kittens",
    9: "chair/chairs, seat/seats, wooden chair/wooden chairs",
    10: "cow/cows, calf/calves, heifer/heifers",
    11: "dining table/dining tables, table/tables, table setting/table settings",
    12: "dog/dogs, puppy/puppies, hound/hounds, doggy/doggies",
    13: "horse/horses, pony/ponies, stallion/stallions",
    14: "motorbike/motorbikes, motorcycle/motorcycles, motor bike/motor bikes",
    15: "person/people, human/humans, pedestrian/pedestrians, figure/figures",
    16: "potted plant/potted plants, houseplant/houseplants, plant in a pot/plants in pots",
    17: "sheep/sheep, lamb/lambs, ewe/ewes",
    18: "sofa/sofas, couch/couches, settee/settees",
    19: "train/trains, locomotive/locomotives, railway train/railway trains",
    20: "tv monitor/tv monitors, tv/tvs, television/televisions, monitor/monitors",
}
SYNONYMS: dict[int, tuple[tuple[str, str], ...]] = {
    c: tuple(tuple(pair.split("/")) for pair in text.split(", ")) for c, text in _SYNONYM_TEXT.items()
}

BACKGROUND_WORDS: dict[str, tuple[str, ...]] = {
    "gradient": ("a gradient background", "a smooth colour gradient", "a faded backdrop"),
    "striped": ("a striped background", "stripes", "a striped wall"),
    "checkered": ("a checkered background", "a checkerboard", "a chequered floor"),
    "noisy": ("a blotchy background", "a mottled backdrop", "a noisy texture"),
}
COUNT_WORDS = ("no", "one", "two", "three", "four")
SCENE_TEMPLATES = (
    "{things}",
    "a picture of {things}",
    "{things} on {background}",
    "here you can see {things}",
    "a photo showing {things}",
    "{things}, drawn as emoji on {background}",
    "an illustration with {things}",
    "look, {things}!",
)
OBJECT_TEMPLATES = ("{a_name}", "a picture of {a_name}", "an emoji of {a_name}", "{name}", "this is {a_name}")
# Objects whose visible part is smaller than this share of their glyph are not mentioned or referred to.
MIN_VISIBLE_FRACTION = 0.5


def _choice(rng: np.random.Generator, items):
    return items[int(rng.integers(len(items)))]


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def tokenize(sentence: str) -> list[str]:
    """Lower-case word tokens, as in the refer API's ``tokens`` field."""
    return re.findall(r"[a-z0-9]+(?:[-'][a-z0-9]+)*", sentence.lower())


def mentionable(obj: SceneObject, size: int) -> bool:
    """Visible enough to be named: half its glyph and at least 0.5% of the image."""
    return obj.visible_fraction() >= MIN_VISIBLE_FRACTION and obj.visible_area >= 0.005 * size * size


def scene_caption(scene: Scene, rng: np.random.Generator) -> str:
    """A caption naming the visible VOC objects (with counts and synonyms), maybe distractors, a relation and
    the background. Word order and templates vary so nouns must be found, not read off a fixed slot."""
    size = scene.size
    visible = [o for o in scene.objects if mentionable(o, size)]
    labelled = [o for o in visible if o.class_id > 0]
    classes = sorted({o.class_id for o in labelled}, key=lambda c: min(i for i, o in enumerate(scene.objects) if o.class_id == c))
    phrases = []
    for c in classes:
        n = sum(o.class_id == c for o in labelled)
        singular, plural = _choice(rng, SYNONYMS[c])
        phrases.append(_article(singular) if n == 1 else f"{COUNT_WORDS[min(n, 4)]} {plural}")
    extras = [o for o in visible if o.class_id < 0]
    for o in extras:
        if rng.random() < 0.5:
            phrases.append(_article(o.name))
    order = rng.permutation(len(phrases)) if phrases else []
    phrases = [phrases[i] for i in order]
    if len(labelled) == 2 and labelled[0].class_id != labelled[1].class_id and rng.random() < 0.5:
        rel = _relation_phrase(labelled[0], labelled[1], rng)
        if rel:
            return rel if rng.random() < 0.5 else f"{rel} on {_choice(rng, BACKGROUND_WORDS[scene.background])}"
    if not phrases:
        things = "nothing in particular"
    elif len(phrases) == 1:
        things = phrases[0]
    else:
        things = ", ".join(phrases[:-1]) + " and " + phrases[-1]
    template = _choice(rng, SCENE_TEMPLATES)
    return template.format(things=things, background=_choice(rng, BACKGROUND_WORDS[scene.background]))


def _relation_phrase(a: SceneObject, b: SceneObject, rng: np.random.Generator) -> str | None:
    """"a dog next to a bus"-style phrase if their geometry supports one."""
    (ax, ay), (bx, by) = a.centroid(), b.centroid()
    na, nb = _choice(rng, SYNONYMS[a.class_id])[0], _choice(rng, SYNONYMS[b.class_id])[0]
    side = a.alpha.shape[0] * 0.15
    if ay < by - side:
        word = "above"
    elif ay > by + side:
        word = "below"
    elif ax < bx - side:
        word = _choice(rng, ("to the left of", "next to", "beside"))
    elif ax > bx + side:
        word = _choice(rng, ("to the right of", "next to", "beside"))
    else:
        return None
    return f"{_article(na)} {word} {_article(nb)}"


def object_caption(obj: SceneObject, rng: np.random.Generator) -> str:
    """Short caption for an object-centric image: a VOC synonym or the glyph's Unicode name."""
    name = _choice(rng, SYNONYMS[obj.class_id])[0] if obj.class_id > 0 else obj.name
    return _choice(rng, OBJECT_TEMPLATES).format(name=name, a_name=_article(name))


def referring_expressions(scene: Scene, rng: np.random.Generator, *, margin: float = 0.1, ratio: float = 1.5) -> dict[int, list[str]]:
    """Referring expressions per object index that pick out exactly that object.

    Only labelled objects visible by at least :data:`MIN_VISIBLE_FRACTION` are targets. Same-class objects
    (any visible part) are told apart by horizontal or vertical position (centroids ``margin`` x image side
    apart), by size (visible area ratio >= ``ratio``) or by a relation to an object of a class that occurs
    once in the scene.
    """
    size = scene.size
    gap = margin * size
    present = [(i, o) for i, o in enumerate(scene.objects) if o.class_id > 0 and o.visible_area > 0]
    out: dict[int, list[str]] = {}
    for i, target in present:
        if not mentionable(target, size):
            continue
        noun_s = [s for s, _ in SYNONYMS[target.class_id]]
        rivals = [o for j, o in present if j != i and o.class_id == target.class_id]
        tx, ty = target.centroid()
        many = len(rivals) >= 2
        attrs: list[str] = []
        if not rivals:
            attrs.append("")
        if rivals and all(tx < o.centroid()[0] - gap for o in rivals):
            attrs += ["leftmost" if many else "left", "on the left"]
        if rivals and all(tx > o.centroid()[0] + gap for o in rivals):
            attrs += ["rightmost" if many else "right", "on the right"]
        if rivals and all(ty < o.centroid()[1] - gap for o in rivals):
            attrs += ["topmost" if many else "upper", "at the top"]
        if rivals and all(ty > o.centroid()[1] + gap for o in rivals):
            attrs += ["lowest" if many else "lower", "at the bottom"]
        if rivals and all(target.visible_area >= ratio * o.visible_area for o in rivals):
            attrs.append("biggest" if many else "bigger")
        if rivals and all(o.visible_area >= ratio * target.visible_area for o in rivals):
            attrs.append("smallest" if many else "smaller")
        # Relations to a unique-class anchor, true for the target and false for every rival.
        counts = {}
        for _, o in present:
            counts[o.class_id] = counts.get(o.class_id, 0) + 1
        for j, anchor in present:
            if anchor.class_id == target.class_id or counts[anchor.class_id] != 1 or not mentionable(anchor, size):
                continue
            ax, ay = anchor.centroid()
            anchor_noun = SYNONYMS[anchor.class_id][0][0]
            tests = (
                ("above", lambda x, y: y < ay - gap),
                ("below", lambda x, y: y > ay + gap),
                ("left of", lambda x, y: x < ax - gap),
                ("right of", lambda x, y: x > ax + gap),
            )
            for word, holds in tests:
                if holds(tx, ty) and not any(holds(*o.centroid()) for o in rivals):
                    attrs.append(f"@{word} the {anchor_noun}")
        sentences = []
        for attr in attrs:
            noun = _choice(rng, noun_s)
            if attr == "":
                sentences.append(_choice(rng, (f"the {noun}", noun, f"{_article(noun)}")))
            elif attr.startswith("@"):
                sentences.append(f"the {noun} {attr[1:]}")
            elif attr.startswith(("on ", "at ")):
                sentences.append(f"the {noun} {attr}")
            else:
                sentences.append(f"the {attr} {noun}")
        if sentences:
            unique = list(dict.fromkeys(sentences))
            out[i] = unique[:3]
    return out
