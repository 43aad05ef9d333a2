"""Scenes, object classes, colours and words shared by both domains."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

DOMAINS = ("rs", "source", "web")
# Generator version per domain, so a change to one does not invalidate the other's datasets.
# source 1.1: names grounds, landmarks and places. web 1.0: source photos plus aerial web photos.
VERSIONS: Mapping[str, str] = MappingProxyType({"rs": "1.0", "source": "1.1", "web": "1.0"})
Colour = tuple[int, int, int]


# ----------------------------------------------------------------------------- vocabulary

PALETTE: Mapping[str, Colour] = MappingProxyType({
    "white": (232, 232, 226), "gray": (128, 130, 134), "black": (34, 34, 38), "red": (196, 44, 38),
    "orange": (230, 126, 36), "yellow": (232, 204, 56), "green": (58, 140, 54), "blue": (44, 86, 196),
    "brown": (122, 80, 48),
})


@dataclass(frozen=True)
class ObjectClass:
    """One countable object class: how it is named, coloured and sized.

    Attributes:
        nouns: (singular, plural) synonyms used in captions.
        verbs: (singular, plural, participle) verb phrases ("is parked", "are parked", "parked").
        colours: rs-domain colour names and weights.
        length: rs-domain length range as a fraction of the image side.
        shadow: shadow length as a fraction of the object length (its height).
    """

    nouns: tuple[tuple[str, str], ...]
    verbs: tuple[tuple[str, str, str], ...]
    colours: tuple[tuple[str, float], ...]
    length: tuple[float, float]
    shadow: float


OBJECTS: Mapping[str, ObjectClass] = MappingProxyType({
    "plane": ObjectClass((("plane", "planes"), ("airplane", "airplanes"), ("aircraft", "aircraft")),
                         (("is parked", "are parked", "parked"), ("is standing", "are standing", "standing")),
                         (("white", 6), ("gray", 2), ("red", 1), ("blue", 1)), (0.10, 0.2), 0.05),
    "car": ObjectClass((("car", "cars"),),
                       (("is parked", "are parked", "parked"), ("is stopped", "are stopped", "stopped")),
                       (("white", 3), ("black", 2), ("gray", 2), ("red", 2), ("blue", 2), ("yellow", 1)),
                       (0.042, 0.055), 0.06),
    "truck": ObjectClass((("truck", "trucks"), ("lorry", "lorries")),
                         (("is parked", "are parked", "parked"),),
                         (("white", 3), ("red", 1), ("blue", 1), ("yellow", 1), ("orange", 1)), (0.07, 0.09),
                         0.07),
    "boat": ObjectClass((("boat", "boats"), ("ship", "ships"), ("vessel", "vessels")),
                        (("is moored", "are moored", "moored"), ("is floating", "are floating", "floating")),
                        (("white", 5), ("red", 1), ("blue", 1), ("yellow", 1), ("orange", 1)), (0.06, 0.16),
                        0.03),
    "tank": ObjectClass((("storage tank", "storage tanks"), ("oil tank", "oil tanks"), ("tank", "tanks")),
                        (("stands", "stand", "standing"), ("is located", "are located", "located")),
                        (("white", 6), ("gray", 3), ("yellow", 1)), (0.07, 0.15), 0.12),
    "building": ObjectClass((("building", "buildings"), ("house", "houses")),
                            (("stands", "stand", "standing"), ("is built", "are built", "built"),
                             ("is located", "are located", "located")),
                            (("red", 3), ("gray", 3), ("white", 2), ("orange", 2), ("brown", 2), ("blue", 1)),
                            (0.08, 0.16), 0.14),
    "tree": ObjectClass((("tree", "trees"),), (("grows", "grow", "growing"), ("stands", "stand", "standing")),
                        (("green", 12), ("yellow", 1), ("orange", 1)), (0.05, 0.09), 0.14),
    "court": ObjectClass((("tennis court", "tennis courts"), ("court", "courts")),
                         (("is located", "are located", "located"), ("lies", "lie", "lying")),
                         (("green", 3), ("blue", 2), ("red", 2)), (0.13, 0.18), 0.0),
    "pool": ObjectClass((("swimming pool", "swimming pools"), ("pool", "pools")),
                        (("is located", "are located", "located"), ("lies", "lie", "lying")), (("blue", 1),),
                        (0.05, 0.08), 0.0),
})

# Landmarks are drawn before the objects; their nouns are used in relations ("beside the runway").
LANDMARKS: Mapping[str, str] = MappingProxyType({
    "runway": "runway", "terminal": "terminal", "river": "river", "bridge": "bridge", "pier": "pier",
    "road": "road", "track": "running track", "diamond": "baseball diamond", "church": "church",
    "pond": "pond", "water": "sea", "path": "dirt path",
})


@dataclass(frozen=True)
class SceneInfo:
    """How captions name a scene.

    Attributes:
        nouns: scene words; object-only captions contain none of them.
        prep: preposition for "cars are parked in the parking lot" ("" where that would misplace objects).
        adjectives: scene adjectives ("a busy airport").
        ground: what the ground looks like, without any scene word.
    """

    nouns: tuple[str, ...]
    prep: str
    adjectives: tuple[str, ...]
    ground: tuple[str, ...]


SCENE_INFO: Mapping[str, SceneInfo] = MappingProxyType({
    "airport": SceneInfo(("airport", "airfield"), "at", ("large", "busy"), ("grass and concrete",)),
    "farmland": SceneInfo(("farmland", "farm", "cropland"), "in", ("large", "green"),
                          ("fields of different colours", "fields with crop rows")),
    "forest": SceneInfo(("forest", "woods", "woodland"), "in", ("dense", "green", "thick"),
                        ("dark green tree crowns", "dense green vegetation")),
    "beach": SceneInfo(("beach", "coast", "seaside"), "on", ("sandy", "long"),
                       ("yellow sand and blue water",)),
    "river": SceneInfo(("river",), "", ("winding", "wide"), ("green land and dark water",)),
    "port": SceneInfo(("port", "harbor", "harbour"), "in", ("busy", "large"), ("water and gray concrete",)),
    "parking": SceneInfo(("parking lot", "parking area"), "in", ("large", "busy", "open"), ("gray asphalt",)),
    "denseresidential": SceneInfo(("dense residential area", "crowded neighbourhood",
                                   "residential district"), "in",
                                  ("crowded", "busy"), ("roofs and narrow streets",)),
    "sparseresidential": SceneInfo(("sparse residential area", "quiet neighbourhood", "suburb"), "in",
                                   ("quiet", "green"), ("green lawns",)),
    "industrial": SceneInfo(("industrial area", "factory zone", "industrial park"), "in", ("large", "busy"),
                            ("gray concrete and large roofs",)),
    "playground": SceneInfo(("playground", "sports ground", "stadium"), "at", ("large", "green"),
                            ("green grass",)),
    "storagetanks": SceneInfo(("oil depot", "fuel depot", "storage area"), "in", ("large", "industrial"),
                              ("bare brown ground",)),
    "bridge": SceneInfo(("bridge",), "", ("long", "gray"), ("water and land",)),
    "baseballfield": SceneInfo(("baseball field", "ballpark"), "at", ("green", "large"),
                               ("mown green grass",)),
    "desert": SceneInfo(("desert", "sand sea"), "in", ("vast", "dry", "empty"),
                        ("rippled yellow sand dunes",)),
    "meadow": SceneInfo(("meadow", "grassland"), "in", ("green", "open", "quiet"), ("green grass",)),
    "pond": SceneInfo(("pond", "small lake"), "", ("small", "quiet"), ("grass and still water",)),
    "church": SceneInfo(("church",), "", ("old", "large"), ("gray pavement", "paved squares")),
})
SCENES: tuple[str, ...] = tuple(SCENE_INFO)
SOURCE_SCENES: tuple[str, ...] = tuple(OBJECTS)
# The web domain: the source domain's object photos and, for each rs scene, aerial photos of it
# as the web has them (another look, alt-text captions); never the rs images themselves.
WEB_SCENES: tuple[str, ...] = SOURCE_SCENES + SCENES


def domain_scenes(domain: str) -> tuple[str, ...]:
    """The scene labels of a domain, in the order image ``i`` takes them (``i % len``)."""
    return {"rs": SCENES, "source": SOURCE_SCENES, "web": WEB_SCENES}[domain]
_NUMBERS = ("zero", "one", "two", "three", "four", "five")
_POS = MappingProxyType({
    ("top", "left"): ("in the top left corner", "at the top left"),
    ("top", "right"): ("in the top right corner", "at the top right"),
    ("bottom", "left"): ("in the bottom left corner", "at the bottom left"),
    ("bottom", "right"): ("in the bottom right corner", "at the bottom right"),
    ("top", "center"): ("at the top", "in the upper part of the image"), ("top", None): ("at the top",),
    ("bottom", "center"): ("at the bottom", "in the lower part of the image"),
    ("bottom", None): ("at the bottom",),
    ("middle", "left"): ("on the left", "at the left"), (None, "left"): ("on the left side", "on the left"),
    ("middle", "right"): ("on the right", "at the right"),
    (None, "right"): ("on the right side", "on the right"),
    ("middle", "center"): ("in the center", "in the middle of the image"),
})

# Texture ramps (dark, light) for the grounds.
_RAMPS: Mapping[str, tuple[Colour, Colour]] = MappingProxyType({
    "grass": ((50, 84, 36), (136, 164, 80)), "drygrass": ((104, 110, 62), (184, 176, 118)),
    "canopy": ((14, 36, 18), (74, 112, 52)), "sand": ((184, 160, 118), (240, 224, 184)),
    "dune": ((168, 116, 66), (240, 202, 142)), "water": ((16, 44, 74), (60, 104, 134)),
    "shallow": ((34, 104, 126), (100, 178, 182)), "asphalt": ((56, 57, 60), (122, 122, 124)),
    "concrete": ((140, 138, 130), (210, 206, 198)), "soil": ((112, 88, 62), (176, 150, 112)),
})


