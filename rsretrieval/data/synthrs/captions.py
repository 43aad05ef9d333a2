"""Captions that are true of a rendered scene, in both domains' styles."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from rsretrieval.data.synthrs.scenes import _GROUND_PLACES, _OBJECT_PLACES, _SOURCE_GROUNDS
from rsretrieval.data.synthrs.textures import _pick
from rsretrieval.data.synthrs.vocabulary import _NUMBERS, _POS, LANDMARKS, OBJECTS, SCENE_INFO

# ----------------------------------------------------------------------------- captions

_NEAR = ("beside", "near", "next to", "close to")
# scenes that can be "covered with" their ground
_AREAS = frozenset({"farmland", "forest", "parking", "denseresidential", "sparseresidential", "industrial",
                    "desert", "meadow", "storagetanks"})


def _counted(rng: np.random.Generator, k: int, adj: str, noun: tuple[str, str]) -> str:
    """``a white car``, ``three cars``, ``many red cars``: counts are exact, "many" means more than five."""
    if k == 1:
        word = "one" if rng.random() < 0.2 else "an" if (adj or noun[0])[0] in "aeiou" else "a"
        return f"{word} {adj}{noun[0]}"
    word = _NUMBERS[k] if k < len(_NUMBERS) else _pick(rng, ("many", "several", "lots of"))
    return f"{word} {adj}{noun[1]}"


def _np(rng: np.random.Generator, objs: list[dict[str, Any]], sizes: bool = False) -> tuple[str, bool]:
    """A noun phrase naming every object of one class, with true counts and colours; and whether plural."""
    noun = _pick(rng, OBJECTS[objs[0]["class"]].nouns)
    size = ""
    size_words = {o.get("size") for o in objs}
    if sizes and len(size_words) == 1 and size_words <= {"small", "large"} and rng.random() < 0.6:
        size = f"{size_words.pop()} "
    counts = sorted(Counter(o["colour"] for o in objs).items(), key=lambda t: (-t[1], t[0]))
    if len(counts) == 1 and rng.random() < 0.75:
        return _counted(rng, counts[0][1], f"{size}{counts[0][0]} ", noun), counts[0][1] > 1
    if 1 < len(counts) <= 3 and rng.random() < 0.6:
        parts = [_counted(rng, k, f"{size}{c} ", noun) for c, k in counts]
        return ", ".join(parts[:-1]) + " and " + parts[-1], True
    return _counted(rng, len(objs), size, noun), len(objs) > 1


def _box(objs: list[dict[str, Any]]) -> tuple[float, float, float, float]:
    return (min(o["bbox"][0] for o in objs), min(o["bbox"][1] for o in objs),
            max(o["bbox"][2] for o in objs), max(o["bbox"][3] for o in objs))


def _centre(o: dict[str, Any]) -> tuple[float, float]:
    return (o["bbox"][0] + o["bbox"][2]) / 2, (o["bbox"][1] + o["bbox"][3]) / 2


def _relations(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> list[str]:
    """Relations that hold for every object of ``a`` with respect to group ``b``."""
    bx0, by0, bx1, by1 = _box(b)
    out = []
    for word, test in (("to the left of", lambda x, y: x < bx0), ("to the right of", lambda x, y: x > bx1),
                       ("above", lambda x, y: y < by0), ("below", lambda x, y: y > by1)):
        if all(test(*_centre(o)) for o in a):
            out.append(word)

    def gap(p: dict[str, Any], q: dict[str, Any]) -> bool:
        (p0, p1, p2, p3), (q0, q1, q2, q3) = p["bbox"], q["bbox"]
        reach = 0.75 * max(p2 - p0, p3 - p1, q2 - q0, q3 - q1)
        return max(q0 - p2, p0 - q2, q1 - p3, p1 - q3, 0) <= reach

    if all(any(gap(p, q) for q in b) for p in a):
        out.append("near")
    return out


def _places(rng: np.random.Generator, objs: list[dict[str, Any]],
            marks: dict[int, dict[str, Any]]) -> list[str]:
    """Locative phrases true for every object of the group: on/near a landmark, or a part of the image."""
    out = []
    on = {o.get("on") for o in objs}
    if len(on) == 1 and None not in on:
        out.append(f"on the {LANDMARKS[marks[on.pop()]['class']]}")
    near = set.intersection(*(set(o.get("near") or ()) for o in objs))
    out += [f"{_pick(rng, _NEAR)} the {LANDMARKS[marks[i]['class']]}" for i in sorted(near)]
    vs, hs = {o["position"][0] for o in objs}, {o["position"][1] for o in objs}
    key = (vs.pop() if len(vs) == 1 else None, hs.pop() if len(hs) == 1 else None)
    if key in _POS:
        out.append(_pick(rng, _POS[key]))
    return out


def _be(phrase: str, plural: bool) -> str:
    """``is``/``are`` for "there is/are ...": agrees with the first conjunct, as English does."""
    return "is" if phrase.split(" ", 1)[0] in ("a", "an", "one") else "are" if plural else "is"


def _verb(rng: np.random.Generator, cls: str, plural: bool, form: int | None = None) -> str:
    v = _pick(rng, OBJECTS[cls].verbs)
    return v[2] if form == 2 else v[1] if plural else v[0]


def _with(rng: np.random.Generator, groups: list[list[dict[str, Any]]], sizes: bool = False) -> str:
    picked = [groups[i] for i in sorted(rng.permutation(len(groups))[: int(rng.integers(1, 3))])]
    return _join([_np(rng, g, sizes)[0] for g in picked])


def _join(phrases: list[str]) -> str:
    """Join noun phrases; "as well as" keeps colour lists ("a red car and a white car") readable."""
    if len(phrases) < 2:
        return phrases[0]
    glue = " as well as " if any(" and " in p for p in phrases) else " and "
    return ", ".join(phrases[:-1]) + glue + phrases[-1]


def _object_sentence(rng: np.random.Generator, scene: str, groups: list[list[dict[str, Any]]],
                     marks: dict[int, dict[str, Any]]) -> str | None:
    """One sentence about objects only (no scene word); None if the drawn template does not apply."""
    a = groups[int(rng.integers(len(groups)))]
    cls = a[0]["class"]
    np_a, pl = _np(rng, a)
    places = _places(rng, a, marks)
    t = int(rng.integers(5))
    if t == 0 and places:
        return f"{np_a} {_verb(rng, cls, pl)} {_pick(rng, places)}"
    if t == 1 and places:
        return f"there {_be(np_a, pl)} {np_a} {_pick(rng, places)}"
    if t == 2 and len(groups) > 1:
        b = _pick(rng, [g for g in groups if g is not a])
        rels = _relations(a, b)
        if rels:
            rel = _pick(rng, rels)
            rel = _pick(rng, _NEAR) if rel == "near" else rel
            return f"{np_a} {_verb(rng, cls, pl)} {rel} {_np(rng, b)[0]}"
    if t == 3 and len(groups) > 1:
        picked = [groups[i] for i in sorted(rng.permutation(len(groups))[: int(rng.integers(2, 4))])]
        return f"{_join([_np(rng, g)[0] for g in picked])} can be seen"
    if t == 4 and len({o["ground"] for o in a}) == 1:
        return f"{np_a} {_verb(rng, cls, pl)} on the {a[0]['ground']}"
    return None


def _scene_sentence(rng: np.random.Generator, scene: str, groups: list[list[dict[str, Any]]],
                    marks: dict[int, dict[str, Any]]) -> str | None:
    """One sentence that names the scene."""
    info = SCENE_INFO[scene]
    noun = _pick(rng, info.nouns)
    art = "an" if noun[0] in "aeiou" else "a"
    t = int(rng.integers(5 if groups else 1))
    if t == 0:
        adj = _pick(rng, [a for a in info.adjectives if a not in noun] or info.adjectives)
        if groups and rng.random() < 0.7:
            tail = f" with {_with(rng, groups)}"
        else:
            tail = f" covered with {_pick(rng, info.ground)}" if scene in _AREAS else " seen from above"
        return f"{'an' if adj[0] in 'aeiou' else 'a'} {adj} {noun}{tail}"
    a = groups[int(rng.integers(len(groups)))]
    cls = a[0]["class"]
    np_a, pl = _np(rng, a)
    places = _places(rng, a, marks)
    if t == 1 and places:
        return f"{art} {noun} with {np_a} {_verb(rng, cls, pl, 2)} {_pick(rng, places)}"
    if not info.prep:
        return None
    where = f"{info.prep} the {noun}"
    if t == 2:
        place = f"{_pick(rng, places)} " if places and rng.random() < 0.5 else ""
        return f"{np_a} {_verb(rng, cls, pl)} {place}{where}"
    if t == 3:
        return f"there {_be(np_a, pl)} {np_a} {where}"
    if places:
        return f"{where}, {np_a} {_verb(rng, cls, pl)} {_pick(rng, places)}"
    return None


def _fallback(scene: str, named: bool, k: int) -> str:
    """Texture sentences for images with few objects; ``k`` walks through distinct variants."""
    info = SCENE_INFO[scene]
    ground = info.ground[k % len(info.ground)]
    if named:
        noun = info.nouns[k % len(info.nouns)]
        adj = info.adjectives[(k // len(info.nouns)) % len(info.adjectives)]
        named_as = noun if adj in noun else f"{adj} {noun}"
        forms = (f"{'an' if named_as[0] in 'aeiou' else 'a'} {named_as}",
                 f"this is a remote sensing image of a {noun}",
                 f"an overhead view of a {noun}", f"a {noun} seen from above")
    else:
        forms = (f"the ground is covered with {ground}", f"most of the image is {ground}",
                 f"an overhead view of {ground}", f"the image shows {ground}",
                 f"we can see {ground} from above")
    return forms[(k // max(1, len(info.nouns) * len(info.adjectives)) if named else k) % len(forms)]


def _mentions(text: str, words: Sequence[str]) -> bool:
    return any(re.search(rf"\b{re.escape(w)}\b", text) for w in words)


def _finish(sentence: str) -> str:
    s = " ".join(sentence.split())
    return s[0].upper() + s[1:] + "."


def _groups(objects: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    by: dict[str, list[dict[str, Any]]] = {}
    for o in objects:
        if o["kind"] == "object":
            by.setdefault(o["class"], []).append(o)
    return list(by.values())


UNNAMED_SHARE = 0.4  # two of five rs captions never name the scene, about as in RSITMD
CAPTION_CLAUSES = 1  # statements per rs caption (2: a second one about another object class or the ground)
_GLUE = (", and ", ", while ", "; ", " and ")
_MAX_WORDS = 20  # keeps most two-statement captions inside MiniCLIP's 32-token context


def _classes(text: str) -> frozenset[str]:
    """The object classes a sentence names."""
    return frozenset(c for c, info in OBJECTS.items() if _mentions(text, [w for pair in info.nouns for w in pair]))


def _second_clause(rng: np.random.Generator, scene: str, first: str, groups: list[list[dict[str, Any]]],
                   marks: dict[int, dict[str, Any]]) -> str | None:
    """A true statement that never names the scene and tells something ``first`` does not: another object
    class where the image has one, else its ground (None: nothing new and short enough to say)."""
    said = _classes(first)
    for _ in range(40):
        s = _object_sentence(rng, scene, groups, marks) if groups else None
        if s and not _classes(s) <= said and len((first + s).split()) <= _MAX_WORDS:
            return s
    grounds = [g for g in SCENE_INFO[scene].ground if g not in first]
    return f"the ground is covered with {_pick(rng, grounds)}" if grounds and "covered with" not in first else None


def _rs_captions(rng: np.random.Generator, scene: str, objects: Sequence[dict[str, Any]],
                 n: int, unnamed_share: float = UNNAMED_SHARE, clauses: int = CAPTION_CLAUSES) -> list[str]:
    groups = _groups(objects)
    marks = {o["id"]: o for o in objects if o["kind"] == "landmark"}
    nouns = SCENE_INFO[scene].nouns
    unnamed = int(n * unnamed_share)  # 0.4: two of five, as always
    named = rng.permutation([True] * (n - unnamed) + [False] * unnamed)  # these captions never name the scene
    out: list[str] = []
    for want in named:
        for attempt in range(100):
            if attempt < 40 and (groups or want):
                s = (_scene_sentence if want else _object_sentence)(rng, scene, groups, marks)
            else:  # few objects: describe the ground, walking through distinct variants
                s = _fallback(scene, bool(want), attempt - 40)
            if s and clauses > 1 and _mentions(s, nouns) == bool(want):
                more = _second_clause(rng, scene, s, groups, marks)
                s = s + _pick(rng, _GLUE) + more if more else s
            if s and _mentions(s, nouns) == bool(want) and _finish(s) not in out:
                out.append(_finish(s))
                break
    return out


def _a(phrase: str) -> str:
    return f"{'an' if phrase[0] in 'aeiou' else 'a'} {phrase}"


def _source_captions(rng: np.random.Generator, objects: Sequence[dict[str, Any]], n: int) -> list[str]:
    groups = _groups(objects)
    marks = {o["id"]: o for o in objects if o["kind"] == "landmark"}
    ground = groups[0][0]["ground"]
    named = ground in _SOURCE_GROUNDS
    label = groups[0][0]["class"]
    places = _OBJECT_PLACES[label] + (_GROUND_PLACES[ground] if named else ())
    place = _pick(rng, places) if rng.random() < 0.7 else None  # one place per image, as one web page has
    out: list[str] = []
    for attempt in range(300):
        if len(out) == n:
            break
        bg = _pick(rng, _SOURCE_GROUNDS[ground][1]) if named else _a(ground)  # "green grass", "an orange background"
        a = groups[0] if rng.random() < 0.7 else groups[int(rng.integers(len(groups)))]  # mostly the label
        np_a, pl = _np(rng, a, sizes=True)
        wheres = _places(rng, a, marks)
        t = int(rng.integers(10)) if attempt < 150 else 10
        s: str | None = None
        if t == 0:
            s = f"{np_a} on {bg}"
        elif t == 1 and wheres:
            s = f"{np_a} {_pick(rng, wheres)}"
        elif t == 2:
            s = f"there {_be(np_a, pl)} {np_a} on {bg}"
        elif t == 3 and len(groups) > 1:
            b = _pick(rng, [g for g in groups if g is not a])
            rels = _relations(a, b)
            if rels:
                rel = _pick(rng, rels)
                s = f"{np_a} {_pick(rng, _NEAR) if rel == 'near' else rel} {_np(rng, b, True)[0]}"
        elif t == 4 and len(groups) > 1:
            s = f"{_join([_np(rng, g, True)[0] for g in groups])} on {bg}"
        elif t == 5 and wheres:
            s = f"{np_a} {_verb(rng, a[0]['class'], pl)} {_pick(rng, wheres)}"
        elif t == 6 and named and rng.random() < 0.4:
            s = f"{np_a} on the ground covered with {_SOURCE_GROUNDS[ground][1][0]}"
        elif t == 6:
            s = f"{bg} with {_with(rng, groups, True)}"
        elif t in (7, 8) and place:
            info = SCENE_INFO[place]
            noun = _pick(rng, info.nouns)
            if t == 7:
                s = f"{np_a} {_verb(rng, a[0]['class'], pl)} {info.prep or _pick(rng, _NEAR)} the {noun}"
            else:
                adj = _pick(rng, [w for w in info.adjectives if w not in noun] or [""])
                s = f"{_a(f'{adj} {noun}'.strip())} with {np_a}"
        elif t == 9:
            s = f"{_join([_np(rng, g)[0] for g in groups])} can be seen " + _pick(rng, (f"on {bg}", "from above", ""))
        elif t == 10:  # rare: the templates ran out of distinct sentences
            s = _pick(rng, (f"{np_a} seen from above on {bg}", f"an image of {np_a}", f"a picture of {np_a}",
                            f"a view of {np_a} on {bg}"))
        if s and _finish(s) not in out:
            out.append(_finish(s))
    return out


def _web_aerial_captions(rng: np.random.Generator, scene: str, objects: Sequence[dict[str, Any]],
                         n: int) -> list[str]:
    """Alt-text of an aerial web photo: short, naming the place the page is about, sometimes what is in it."""
    groups = _groups(objects)
    info = SCENE_INFO[scene]
    out: list[str] = []
    for attempt in range(300):
        if len(out) == n:
            break
        noun = _pick(rng, info.nouns)
        adj = _pick(rng, [w for w in info.adjectives if w not in noun] or [""])
        place = _a(f"{adj} {noun}".strip()) if rng.random() < 0.5 else _a(noun)
        a = _pick(rng, groups) if groups else None
        np_a, pl = _np(rng, a, sizes=True) if a else ("", False)
        prep = info.prep or _pick(rng, _NEAR)
        t = int(rng.integers(8)) if attempt < 150 else 8
        s: str | None = None
        if t == 0:
            s = f"{_pick(rng, ('aerial view of', 'aerial photo of', 'top view of'))} {place}"
        elif t == 1 and a:
            s = f"{np_a} {_verb(rng, a[0]['class'], pl)} {prep} the {noun}"
        elif t == 2 and a:
            s = f"{_pick(rng, ('satellite image of', 'drone photo of', 'aerial view of'))} {place} with {np_a}"
        elif t == 3:
            s = f"{place} seen from above"
        elif t == 4 and a:
            s = f"{np_a} {prep} the {noun}, seen from above"
        elif t == 5:
            s = f"{place}: {_pick(rng, info.ground)}"
        elif t == 6 and len(groups) > 1:
            s = f"{_join([_np(rng, g)[0] for g in groups])} {prep} the {noun}"
        elif t == 7 and a:
            s = f"{np_a} from above"
        elif t == 8:  # rare: the templates ran out of distinct sentences; walk through distinct variants
            k = attempt - 150
            forms = ("an overhead photo of", "a picture of", "a map view of")
            adjs = ("", *info.adjectives)
            noun = info.nouns[(k // len(forms)) % len(info.nouns)]
            adj = adjs[(k // (len(forms) * len(info.nouns))) % len(adjs)]
            s = f"{forms[k % len(forms)]} {_a(f'{adj} {noun}'.strip())}"
        if s and _finish(s) not in out:
            out.append(_finish(s))
    return out


def make_captions(rng: np.random.Generator, scene: str, objects: Sequence[dict[str, Any]], domain: str = "rs",
                  n: int = 5, *, unnamed_share: float = UNNAMED_SHARE, clauses: int = CAPTION_CLAUSES) -> list[str]:
    """Write ``n`` distinct captions that describe an image's objects truthfully.

    Every noun phrase counts all objects of its class (or of that class and colour): "two white
    planes" means exactly two white planes; "many"/"several"/"lots of" mean more than five.

    Args:
        rng: random generator (the image's own, after rendering).
        scene: the image's scene label.
        objects: the objects returned by :func:`render_scene`.
        domain: ``"rs"`` (RSITMD-like captions, ~40% without any scene word), ``"source"`` or
            ``"web"`` (source captions for object photos, alt-text for aerial photos).
        n: number of captions.
        unnamed_share: (rs) the share of captions that never name the scene.
        clauses: (rs) statements per caption; 2 adds one about another object class (or the ground), so
            that a caption tells more of its image (the regime study's caption factor, docs/design.md).

    Returns:
        ``n`` capitalised sentences ending with a full stop.
    """
    if domain == "rs":
        return _rs_captions(rng, scene, objects, n, unnamed_share, clauses)
    if domain == "web" and scene in SCENE_INFO:
        return _web_aerial_captions(rng, scene, objects, n)
    return _source_captions(rng, objects, n)


