"""SynthRS: a procedural, seeded image-caption dataset that runs fully offline.

Two domains share one vocabulary of objects, colours, counts and positions:

* ``domain="rs"``: top-down remote-sensing-like scenes named like RSITMD's classes (airport,
  parking, port, ...), each with its own textured ground, landmarks (runway, river, bridge, ...)
  and characteristic, often small objects. Captions follow RSITMD's style, and about 40% of them
  never name the scene.
* ``domain="source"``: object-centred "photos" (one object class per image, on backgrounds that
  vary in colour and texture, objects from small to large) with simpler captions. It is the
  pretraining domain: transfer to the rs domain appears only when the source shares the rs
  vocabulary and visual statistics (``docs/design.md``).
* ``domain="web"``: the source domain's photos plus, for each rs scene, aerial photos of it as the
  web has them: painted like the rs scenes but with a colour cast, haze and blur, from their own
  random stream, and captioned like alt-text ("aerial view of a busy airport", "five planes at
  the airport, seen from above"), never in the rs captions' style.

Layout written by :func:`generate_synthrs` (RSITMD's, so the RSITMD reader loads it)::

    root/dataset_RSITMD.json   Karpathy-style captions and splits
    root/images/<scene>_<k>.png
    root/masks/<scene>_<k>.png 8-bit object ids: 0 = background, k = k-th entry of objects.json
    root/objects.json          {filename: [{"id", "class", "colour", "kind", "bbox", "area_fraction",
                                "position", "size", "ground", "on", "near"}, ...]}
    root/synthrs.json          generator version and parameters (written last)

``bbox`` is ``[x0, y0, x1, y1]`` in pixels, tight around the object's visible mask pixels, with
``x1``/``y1`` exclusive. ``kind`` is ``object`` (countable things) or ``landmark`` (runway, river,
bridge, ...). ``on``/``near`` hold landmark ids; ``position`` is [top|middle|bottom, left|center|right].

Image ``i`` is a pure function of ``(seed, domain, i)``: its scene is ``SCENES[i % len(SCENES)]``
(``SOURCE_SCENES`` for the source domain) and all its randomness comes from
``np.random.default_rng([seed, DOMAINS.index(domain), i])``, so the same seed gives byte-identical
files in any generation order.

Modules: ``vocabulary`` (scenes, objects, words), ``textures`` and ``canvas`` (painting),
``scenes`` (one painter per scene, both domains), ``captions``, ``generate`` (files on disk) and
``masks`` (reading the object masks back).

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> image, objects, mask = render_scene(rng, "airport", 224)
>>> captions = make_captions(rng, "airport", objects)   # five true sentences
"""

from rsretrieval.data.synthrs.captions import make_captions
from rsretrieval.data.synthrs.generate import (
    RS_EDITIONS,
    REGIMES,
    benchmark,
    edition,
    generate_regime,
    generate_synthrs,
    generated_params,
)
from rsretrieval.data.synthrs.masks import object_masks
from rsretrieval.data.synthrs.scenes import render_scene
from rsretrieval.data.synthrs.vocabulary import (
    DOMAINS,
    LANDMARKS,
    OBJECTS,
    PALETTE,
    SCENE_INFO,
    SCENES,
    SOURCE_SCENES,
    VERSIONS,
    WEB_SCENES,
    ObjectClass,
    SceneInfo,
    domain_scenes,
)
from rsretrieval.errors import SynthRSExistsError

__all__ = [
    "generated_params",
    "REGIMES",
    "RS_EDITIONS",
    "edition",
    "generate_regime",
    "DOMAINS",
    "LANDMARKS",
    "OBJECTS",
    "PALETTE",
    "SCENES",
    "SCENE_INFO",
    "SOURCE_SCENES",
    "VERSIONS",
    "WEB_SCENES",
    "ObjectClass",
    "SceneInfo",
    "domain_scenes",
    "SynthRSExistsError",
    "benchmark",
    "generate_synthrs",
    "make_captions",
    "object_masks",
    "render_scene",
]
