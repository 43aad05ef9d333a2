"""Scene-label augmentation: the scene category as metadata, at training time and at test time.

Our reconstruction of CMER's scene-label augmentation (arguments: ``docs/cmer.md``).

(a) Training time (:class:`SceneAugmentedTask`): with probability ``prob`` a training caption gets
its image's scene as a prompt-like prefix, ``"an aerial image of an airport: two white planes ..."``
(:func:`scene_caption`), plus an optional auxiliary scene-classification loss.

(b) Test time (:func:`evaluate_with_scenes`): every gallery image and text query gets a *predicted*
scene (zero-shot against scene prompts, never its gold test label) and :func:`scene_rerank`
re-ranks (``hard``: the search space shrinks to the predicted scene; ``soft``: ``+ weight * log
p(same scene)``, the weight chosen on validation by :func:`choose_weight_on_val`). A gold-label
oracle row is reported beside them as an upper bound, labelled as not a valid protocol.
"""

from __future__ import annotations

import functools
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rsretrieval.data.dataset import CaptionDataset, normalize_scene
from rsretrieval.evaluation.metrics import retrieval_metrics
from rsretrieval.cmer.recycling import RecyclingLoss
from rsretrieval.models.utils import encode_pair, logit_scale
from rsretrieval.training.tasks import Batch, ContrastiveTask, Inputs

__all__ = [
    "DEFAULT_TEMPLATES",
    "DEFAULT_WEIGHTS",
    "KNOWN_SCENE_PHRASES",
    "ORACLE_ROW",
    "PREFIX_TEMPLATES",
    "RERANK_MODES",
    "SceneAugmentedTask",
    "SceneEvalResult",
    "choose_weight_on_val",
    "evaluate_with_scenes",
    "keyword_scene_probs",
    "predict_scenes",
    "scene_accuracy",
    "scene_caption",
    "scene_ids_for",
    "scene_phrases",
    "scene_prefix",
    "scene_prompt_features",
    "scene_prompts",
    "scene_rerank",
    "vocabulary_of",
    "with_article",
    "zero_shot_scene_probs",
]

UNKNOWN = "unknown"

# Natural words for the normalised scene labels of RSITMD, RSICD, UCM-Captions and Sydney
# The first phrase is the canonical one; more are synonyms for variety.
KNOWN_SCENE_PHRASES: dict[str, tuple[str, ...]] = {
    "agricultural": ("agricultural land", "farmland"),
    "airplane": ("airplanes",),
    "airport": ("airport",),
    "bareland": ("bare land",),
    "baseballdiamond": ("baseball diamond",),
    "baseballfield": ("baseball field",),
    "beach": ("beach",),
    "boat": ("boats",),
    "bridge": ("bridge",),
    "buildings": ("buildings",),
    "center": ("city center",),
    "chaparral": ("chaparral", "shrubland"),
    "church": ("church",),
    "commercial": ("commercial area",),
    "denseresidential": ("dense residential area",),
    "desert": ("desert",),
    "farmland": ("farmland",),
    "forest": ("forest",),
    "freeway": ("freeway",),
    "golfcourse": ("golf course",),
    "harbor": ("harbor",),
    "industrial": ("industrial area",),
    "intersection": ("intersection",),
    "meadow": ("meadow",),
    "mediumresidential": ("medium residential area",),
    "mobilehomepark": ("mobile home park",),
    "mountain": ("mountain",),
    "ocean": ("ocean",),
    "overpass": ("overpass",),
    "park": ("park",),
    "parking": ("parking lot",),
    "parkinglot": ("parking lot",),
    "plane": ("airplanes",),
    "playground": ("playground",),
    "pond": ("pond",),
    "port": ("port",),
    "railwaystation": ("railway station",),
    "residential": ("residential area",),
    "resort": ("resort",),
    "river": ("river",),
    "runway": ("runway",),
    "school": ("school",),
    "sparseresidential": ("sparse residential area",),
    "square": ("square",),
    "stadium": ("stadium",),
    "storagetanks": ("storage tanks",),
    "tenniscourt": ("tennis court",),
    "viaduct": ("viaduct",),
}

# Training-time prefixes (``{}`` = scene phrase with its article); ``style="fixed"`` uses the first.
PREFIX_TEMPLATES: tuple[str, ...] = (
    "an aerial image of {}:",
    "a remote sensing image of {}:",
    "a satellite image of {}:",
    "an aerial view of {}:",
)
# Test-time zero-shot prompts, averaged (CLIP's prompt ensembling).
DEFAULT_TEMPLATES: tuple[str, ...] = (
    "an aerial image of {}.",
    "a remote sensing image of {}.",
    "a satellite image of {}.",
    "an aerial photograph of {}.",
)

_UNCOUNTABLE = {"farmland", "cropland", "woodland", "grassland", "land", "shrubland", "chaparral", "woods",
                "aircraft"}
# Words a glued-together unknown label may be split into (plus every word of the phrases above).
_EXTRA_WORDS = {"area", "land", "lot", "field", "ground", "water", "lake", "road", "roads", "house", "houses",
                "farm", "crop", "snow", "cloud", "sea", "ice", "island", "wetland", "rail", "way", "green",
                "terminal", "city", "sports", "tank", "tanks", "building", "storage", "oil", "container",
                "dense", "sparse", "medium", "high", "low", "rise", "solar", "wind", "power", "plant",
                "station", "court", "track", "circle", "roundabout", "garden", "golf", "course", "paddy"}


# ------------------------------------------------------------------------------------------ words

def _is_synthrs(vocabulary: str | None) -> bool:
    return vocabulary == "synthrs"


def vocabulary_of(data: CaptionDataset) -> str | None:
    """The scene vocabulary of a split's dataset (its registry entry's ``scene_vocabulary``), None if unregistered."""
    from rsretrieval.data.registry import get_dataset_info
    from rsretrieval.errors import DatasetNotFoundError

    try:
        return get_dataset_info(data.name).scene_vocabulary
    except DatasetNotFoundError:
        return None


@functools.lru_cache(maxsize=1)
def _word_list() -> frozenset[str]:
    words = set(_EXTRA_WORDS)
    for phrases in KNOWN_SCENE_PHRASES.values():
        for p in phrases:
            words.update(p.split())
    return frozenset(words)


def _split_label(label: str) -> str:
    """Words of an unknown label: split on separators and camelCase, else segment a glued label
    (``oilrefinery`` stays whole unless every piece is a known word; fewest pieces win)."""
    spaced = re.sub(r"([a-z])([A-Z])", r"\1 \2", label)
    parts = [p for p in re.split(r"[^A-Za-z0-9]+", spaced) if p]
    if len(parts) > 1:
        return " ".join(p.lower() for p in parts)
    word = label.lower()
    vocab = _word_list()
    best: list[list[str] | None] = [[]] + [None] * len(word)  # best[k]: fewest-word split of word[:k]
    for end in range(1, len(word) + 1):
        for start in range(end):
            piece = word[start:end]
            if best[start] is not None and piece in vocab:
                cand = best[start] + [piece]
                if best[end] is None or len(cand) < len(best[end]):
                    best[end] = cand
    return " ".join(best[-1]) if best[-1] else word


def scene_phrases(scene: str, vocabulary: str | None = None) -> tuple[str, ...]:
    """Natural noun phrases for a scene label, canonical first; ``()`` for ``unknown``.

    Args:
        scene: a scene label (normalised or not: ``DenseResidential`` works).
        vocabulary: ``"synthrs"`` to use SynthRS's own scene nouns (``SCENE_INFO[scene].nouns``, the
            words its captions use; the plural object nouns for its source-domain scenes); anything
            else (default) uses :data:`KNOWN_SCENE_PHRASES` for RSITMD/RSICD/UCM/Sydney labels, and
            the label split into words for labels it does not know.

    Example:
        >>> scene_phrases("denseresidential")
        ('dense residential area',)
    """
    key = normalize_scene(scene)
    if not key or key == UNKNOWN:
        return ()
    if _is_synthrs(vocabulary):
        from rsretrieval.data.synthrs import OBJECTS, SCENE_INFO

        if key in SCENE_INFO:
            return tuple(SCENE_INFO[key].nouns)
        if key in OBJECTS:
            return tuple(dict.fromkeys(plural for _, plural in OBJECTS[key].nouns))
    if key in KNOWN_SCENE_PHRASES:
        return KNOWN_SCENE_PHRASES[key]
    return (_split_label(scene),)


def with_article(phrase: str) -> str:
    """``airport`` -> ``an airport``; plurals and mass nouns (``storage tanks``, ``farmland``) stay bare."""
    last = phrase.split()[-1]
    if phrase in _UNCOUNTABLE or last in _UNCOUNTABLE or (last.endswith("s") and not last.endswith("ss")):
        return phrase
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


# ------------------------------------------------------------------------------------------ (a) captions

Rng = random.Random | np.random.Generator


def _randint(rng: Rng, n: int) -> int:
    return int(rng.integers(n)) if isinstance(rng, np.random.Generator) else rng.randrange(n)


def _uniform(rng: Rng) -> float:
    return float(rng.random())


def _prefix_variants(scene: str, style: str, vocabulary: str | None,
                     templates: Sequence[str] = PREFIX_TEMPLATES) -> list[str]:
    phrases = scene_phrases(scene, vocabulary)
    if not phrases:
        return []
    if style == "fixed":
        return [templates[0].format(with_article(phrases[0]))]
    if style == "varied":
        return [t.format(with_article(p)) for t in templates for p in phrases]
    raise ValueError(f"style={style!r}: use 'fixed' (one template, canonical words) or 'varied'")


def scene_prefix(scene: str, rng: Rng, style: str = "varied", vocabulary: str | None = None) -> str:
    """The prefix :func:`scene_caption` puts before a caption (``""`` for an unknown scene).

    ``style="fixed"`` always gives ``"an aerial image of <canonical phrase>:"`` and draws nothing
    from ``rng``; ``"varied"`` draws one (template, synonym) pair from ``rng``.
    """
    variants = _prefix_variants(scene, style, vocabulary)
    if not variants:
        return ""
    return variants[0] if len(variants) == 1 else variants[_randint(rng, len(variants))]


def scene_caption(caption: str, scene: str, rng: Rng, style: str = "varied",
                  vocabulary: str | None = None) -> str:
    """A caption rewritten with its image's scene as a prompt-like prefix.

    Args:
        caption: the original caption.
        scene: its image's scene label (``unknown`` leaves the caption unchanged).
        rng: a ``random.Random`` or ``numpy.random.Generator``; the same seed gives the same text.
        style: ``"fixed"`` or ``"varied"`` (see :func:`scene_prefix`).
        vocabulary: ``"synthrs"`` for SynthRS's scene nouns, else real-dataset words (:func:`scene_phrases`).

    Example:
        >>> scene_caption("Two white planes are parked.", "airport", random.Random(0), style="fixed")
        'an aerial image of an airport: two white planes are parked.'
    """
    prefix = scene_prefix(scene, rng, style, vocabulary)
    return _prefixed(prefix, caption) if prefix else caption


def _prefixed(prefix: str, caption: str) -> str:
    body = caption.strip()
    if body[:1].isupper() and not body[1:2].isupper():  # "Two planes" -> "two planes", keep "UAV ..."
        body = body[0].lower() + body[1:]
    return f"{prefix} {body}"


def scene_ids_for(scenes: Sequence[str], scene_names: Sequence[str]) -> torch.Tensor:
    """[N] index of each label in ``scene_names``, -1 for ``unknown`` or a label not among them."""
    index = {normalize_scene(s): k for k, s in enumerate(scene_names)}
    return torch.tensor([index.get(normalize_scene(s), -1) for s in scenes], dtype=torch.long)


def _known_scenes(scenes: Sequence[str]) -> list[str]:
    return sorted({normalize_scene(s) for s in scenes} - {UNKNOWN, ""})


class SceneAugmentedTask(ContrastiveTask):
    """Training with scene metadata: captions prefixed with their image's scene (prob ``prob``) + an
    optional scene loss. Our reconstruction of CMER's training-time scene-label augmentation.

    The prefixes are written into the caption strings before tokenising
    (:meth:`rewrite_captions`), so any tokenizer works. Every batch draws its own
    ``random.Random`` seed from torch's global RNG, which :func:`~rsretrieval.training.fit` seeds
    and checkpoints: the rewrites repeat in every run with the same seed and after an exact resume.

    Args:
        model: the CLIP model.
        loss: the batch loss (default InfoNCE; a :class:`~rsretrieval.cmer.recycling.RecyclingLoss`
            also stores the scene ids with its queue entries).
        scenes: scene label of each training image, by image index (``train_data.scenes``).
        tokenizer: the model's tokenizer (encodes the scene prompts of the auxiliary loss).
        prob: chance that a caption is prefixed with its scene.
        style: ``"varied"`` (random template and synonym) or ``"fixed"``.
        vocabulary: ``"synthrs"`` for SynthRS's scene words, else real-dataset words.
        scene_loss_weight: weight of the auxiliary scene classification loss (0: off).
        scene_template: the prompt of each scene in the auxiliary loss (one per scene, to keep it cheap).
    """

    def __init__(
        self,
        model: nn.Module,
        loss: nn.Module | None = None,
        *,
        scenes: Sequence[str],
        tokenizer: Callable[[list[str]], torch.Tensor],
        prob: float = 0.5,
        style: str = "varied",
        vocabulary: str | None = None,
        scene_loss_weight: float = 0.0,
        scene_template: str = DEFAULT_TEMPLATES[0],
    ) -> None:
        super().__init__(model, loss)
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"prob={prob}: use a probability in [0, 1]")
        self.scene_names = _known_scenes(scenes)
        if not self.scene_names:
            raise ValueError("no known scene among the training images (all 'unknown'): scene augmentation "
                             "has nothing to add; use another loss")
        self.prob, self.scene_loss_weight = prob, scene_loss_weight
        self.register_buffer("image_scene", scene_ids_for(scenes, self.scene_names), persistent=False)
        self.prefixes: list[list[str]] = [_prefix_variants(s, style, vocabulary) for s in self.scene_names]
        prompts = [scene_template.format(with_article(scene_phrases(s, vocabulary)[0]))
                   for s in self.scene_names]
        self.register_buffer("prompt_tokens", tokenizer(prompts), persistent=False)  # [S, L]
        self.image_cache: Any = None  # a FeatureCache once read_images_from is called

    def scene_loss(self, image_features: torch.Tensor, text_features: torch.Tensor,
                   logit_scale: torch.Tensor, scene_ids: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of images and captions over the scene prompts, as encoded now by the model."""
        if not (scene_ids >= 0).any():
            return image_features.sum() * 0.0
        prompts = self.model.encode_text(self.prompt_tokens, normalize=True)  # [S, D], with gradient
        logits = [logit_scale * f @ prompts.t() for f in (image_features, text_features)]  # 2 x [B, S]
        return sum(F.cross_entropy(x, scene_ids, ignore_index=-1) for x in logits) / 2

    def scenes_of(self, image_ids: torch.Tensor) -> torch.Tensor:
        """[B] scene id of each training image id (-1: unknown)."""
        if int(image_ids.max()) >= len(self.image_scene) or int(image_ids.min()) < 0:
            raise ValueError(f"image id {int(image_ids.max())} outside the {len(self.image_scene)} training "
                             "images this task knows scenes for: build it from the training split's scenes")
        return self.image_scene[image_ids.to(self.image_scene.device)]

    def rewrite_captions(self, captions: list[str], image_ids: torch.Tensor) -> list[str]:
        """Each caption prefixed with its image's scene with probability ``prob`` (training mode only).

        Draws from one ``random.Random`` per batch, in row order: ``random() < prob``, then the
        variant, as :func:`scene_caption` draws.
        """
        if not self.training or self.prob == 0:
            return captions
        rng = random.Random(int(torch.randint(0, 2**62, (1,))))  # one draw of the seeded global RNG
        out = list(captions)
        for r, s in enumerate(self.scenes_of(image_ids).tolist()):
            if s < 0 or not self.prefixes[s] or _uniform(rng) >= self.prob:
                continue
            variants = self.prefixes[s]
            out[r] = _prefixed(variants[0] if len(variants) == 1 else variants[_randint(rng, len(variants))],
                               captions[r])
        return out

    def read_images_from(self, cache: Any) -> SceneAugmentedTask:
        """Read a side branch's image features from its frozen-feature cache (:mod:`rsretrieval.cmer.cache`)
        instead of running the image tower: captions are rewritten, so only images can be cached."""
        from rsretrieval.cmer.cache import check_cache_fits

        check_cache_fits(self.model, cache)
        self.image_cache = cache
        self.inputs = Inputs(pixels=False, tokens=True)
        return self

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        scene = self.scenes_of(batch.image_ids)  # [B], -1 = unknown
        if self.image_cache is not None:
            from rsretrieval.cmer.cache import cached_image_features

            img = cached_image_features(self.model, self.image_cache, batch.image_ids)
            txt = self.model.encode_text(batch.tokens, normalize=True)
        else:
            img, txt = encode_pair(self.model, batch.pixels, batch.tokens)
        scale = logit_scale(self.model)
        if isinstance(self.loss, RecyclingLoss):
            out = dict(self.loss(img, txt, scale, batch.image_ids, scene_ids=scene))
        else:
            out = dict(self.loss(img, txt, scale, batch.image_ids))
        if self.scene_loss_weight:
            out["scene_loss"] = self.scene_loss_weight * self.scene_loss(img, txt, scale, scene)
        return out


# ------------------------------------------------------------------------------------------ (b) test time

def scene_prompts(scene: str, templates: Sequence[str] = DEFAULT_TEMPLATES,
                  vocabulary: str | None = None) -> list[str]:
    """Every (template, synonym) prompt of a scene: ``["an aerial image of an airport.", ...]``."""
    return [t.format(with_article(p)) for t in templates for p in scene_phrases(scene, vocabulary)]


def scene_prompt_features(
    model: nn.Module,
    scene_names: Sequence[str],
    tokenizer: Callable[[list[str]], torch.Tensor],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    vocabulary: str | None = None,
) -> torch.Tensor:
    """[S, D] one L2-normalised class embedding per scene: the mean of its prompts' embeddings."""
    from rsretrieval.evaluation import encode_texts

    rows = []
    for s in scene_names:
        prompts = scene_prompts(s, templates, vocabulary)
        if not prompts:
            raise ValueError(f"scene {s!r} has no words to prompt with; leave 'unknown' out of scene_names")
        rows.append(encode_texts(model, prompts, tokenizer=tokenizer, progress=False).mean(dim=0))
    return F.normalize(torch.stack(rows), dim=-1)


def _temperature(model: nn.Module, temperature: float | None) -> float:
    if temperature is not None:
        return float(temperature)
    scale = getattr(model, "logit_scale", None)
    return float(scale.detach().exp().clamp(max=100)) if scale is not None else 100.0


def zero_shot_scene_probs(
    model: nn.Module,
    features: torch.Tensor,
    scene_names: Sequence[str],
    tokenizer: Callable[[list[str]], torch.Tensor],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    *,
    vocabulary: str | None = None,
    temperature: float | None = None,
    prompt_features: torch.Tensor | None = None,
) -> torch.Tensor:
    """Zero-shot scene probabilities of image *or* text embeddings: [N, S], rows sum to 1.

    ``softmax(t * normalize(features) @ prompts.T)`` with ``t`` the model's logit scale (CLIP's
    zero-shot classifier). Images and texts share the embedding space, so the same prompts classify
    both. No gold label is read.

    Args:
        model: encodes the prompts (``encode_text``).
        features: [N, D] image or text embeddings.
        scene_names: the candidate scenes (the category list, e.g. the training split's
            ``scene_names``; leave out ``unknown``).
        tokenizer: the model's tokenizer.
        templates: prompt templates, averaged per scene.
        vocabulary: ``"synthrs"`` or None (see :func:`scene_phrases`).
        temperature: softmax scale; default the model's logit scale.
        prompt_features: [S, D] precomputed :func:`scene_prompt_features` (skips encoding).
    """
    if prompt_features is None:
        prompt_features = scene_prompt_features(model, scene_names, tokenizer, templates, vocabulary)
    feats = F.normalize(torch.as_tensor(features).float().cpu(), dim=-1)
    logits = _temperature(model, temperature) * feats @ prompt_features.float().cpu().t()  # [N, S]
    return logits.softmax(dim=-1)


def keyword_scene_probs(captions: Sequence[str], scene_names: Sequence[str], vocabulary: str | None = None,
                        smoothing: float = 0.1) -> torch.Tensor:
    """[N, S] scene probabilities from the scene words a query mentions (uniform where it names none).

    A query naming k scenes gets ``(1 - smoothing) / k`` on each of them plus ``smoothing / S``
    everywhere; a query naming none gets the uniform row, which :func:`scene_rerank` treats as
    "no prediction" (it filters nothing for that query).
    """
    S = len(scene_names)
    patterns = []
    for s in scene_names:
        words = {w for p in scene_phrases(s, vocabulary) for w in (p, p.rstrip("s"))}  # "storage tank(s)"
        alternatives = "|".join(re.escape(w) for w in sorted(words))
        patterns.append(re.compile(r"\b(?:" + alternatives + r")(?:s|es)?\b"))
    out = torch.full((len(captions), S), 1.0 / S)
    for j, cap in enumerate(captions):
        hits = [k for k, p in enumerate(patterns) if p.search(cap.lower())]
        if hits:
            out[j] = smoothing / S
            out[j, hits] += (1 - smoothing) / len(hits)
    return out


def predict_scenes(probs: torch.Tensor, scene_names: Sequence[str]) -> list[str]:
    """The most probable scene name of each row ([N, S] probabilities)."""
    return [scene_names[k] for k in probs.argmax(dim=-1).tolist()]


def scene_accuracy(pred: Sequence[str], gold: Sequence[str]) -> float | None:
    """Percent of items whose predicted scene equals the gold one, over items with a known gold label.

    For *reporting* only: select nothing with it on test data. Returns None when no gold label is known.
    """
    if len(pred) != len(gold):
        raise ValueError(f"{len(pred)} predictions for {len(gold)} gold labels")
    pairs = [(normalize_scene(p), normalize_scene(g)) for p, g in zip(pred, gold)
             if normalize_scene(g) not in (UNKNOWN, "")]
    if not pairs:
        return None
    return 100.0 * sum(p == g for p, g in pairs) / len(pairs)


def _hard_prediction(probs: torch.Tensor) -> torch.Tensor:
    """argmax per row, -1 for a flat row (no prediction)."""
    pred = probs.argmax(dim=-1)
    flat = (probs.max(dim=-1).values - probs.min(dim=-1).values) < 1e-9
    return pred.masked_fill(flat, -1)


RERANK_MODES = ("none", "soft", "soft_linear", "hard")


def scene_rerank(
    similarity: torch.Tensor,
    image_scene_probs: torch.Tensor,
    text_scene_probs: torch.Tensor,
    mode: str = "soft",
    weight: float = 0.01,
) -> torch.Tensor:
    """Re-score a similarity matrix with predicted scenes: [n_images, n_texts] in, same shape out.

    With ``p_same[i, j] = sum_s p_img[i, s] p_txt[j, s]`` (the chance both have the same scene if the
    two predictions are independent):

    - ``"none"``: unchanged.
    - ``"soft"``: ``sim + weight * log p_same`` (a product of experts: CLIP's cosines times a logit
      scale of ~100 are log-odds, so ``weight ~ 1/100`` weighs both experts alike).
    - ``"soft_linear"``: ``sim + weight * p_same``.
    - ``"hard"``: a candidate whose predicted scene (argmax) differs from the query's is moved below
      every matching candidate; the order inside each group is kept, so this shrinks the search
      space to the predicted scene for both directions at once. A flat (uniform) row predicts
      nothing and filters nothing. ``weight`` is unused.

    Args:
        similarity: [n_images, n_texts] scores (cosine).
        image_scene_probs: [n_images, S] rows summing to 1.
        text_scene_probs: [n_texts, S] rows summing to 1.
        mode: one of ``none``, ``soft``, ``soft_linear``, ``hard``.
        weight: λ for the soft modes.
    """
    sim = torch.as_tensor(similarity).float()
    p_img, p_txt = image_scene_probs.float().to(sim.device), text_scene_probs.float().to(sim.device)
    if p_img.shape[0] != sim.shape[0] or p_txt.shape[0] != sim.shape[1] or p_img.shape[1] != p_txt.shape[1]:
        raise ValueError(f"similarity {tuple(sim.shape)} does not fit image probs {tuple(p_img.shape)} "
                         f"and text probs {tuple(p_txt.shape)}")
    if mode == "none":
        return sim.clone()
    if mode in ("soft", "soft_linear"):
        p_same = p_img @ p_txt.t()  # [n_images, n_texts]
        bonus = p_same.clamp_min(1e-8).log() if mode == "soft" else p_same
        return sim + weight * bonus
    if mode == "hard":
        pi, pt = _hard_prediction(p_img), _hard_prediction(p_txt)
        match = (pi[:, None] == pt[None, :]) | (pi[:, None] < 0) | (pt[None, :] < 0)  # [n_images, n_texts]
        gap = float(sim.max() - sim.min()) + 1.0  # larger than any score difference
        return sim - gap * (~match).float()
    raise ValueError(f"mode={mode!r}: use one of {', '.join(RERANK_MODES)}")


# ------------------------------------------------------------------------------------------ reporting

ORACLE_ROW = "oracle hard (gold labels: upper bound, NOT a valid protocol)"


@dataclass
class SceneEvalResult:
    """Retrieval with and without scene re-ranking on one split.

    Attributes:
        rows: row name -> metrics (six recalls, mR, rsum). ``none``, ``soft``, ``soft_linear``,
            ``hard`` use predicted scenes only; :data:`ORACLE_ROW` uses the gold labels and is an
            upper bound, not a result.
        image_scene_accuracy: % of images whose predicted scene is the gold one (report only).
        text_scene_accuracy: % of captions whose predicted scene is their image's gold scene.
        weight: λ used by the soft modes.
        scene_names: the candidate scenes.
        image_scene_probs: [n_images, S]; text_scene_probs: [n_texts, S].
    """

    rows: dict[str, dict[str, float]]
    image_scene_accuracy: float | None
    text_scene_accuracy: float | None
    weight: float
    scene_names: list[str]
    image_scene_probs: torch.Tensor | None = field(default=None, repr=False)
    text_scene_probs: torch.Tensor | None = field(default=None, repr=False)

    def table(self) -> str:
        from rsretrieval.evaluation import compare_table

        acc = lambda a: "n/a" if a is None else f"{a:.1f}%"  # noqa: E731
        names = {k: (f"{k} (λ={self.weight:g})" if k.startswith("soft") else k) for k in self.rows}
        return (compare_table({names[k]: v for k, v in self.rows.items()})
                + f"\npredicted-scene accuracy: images {acc(self.image_scene_accuracy)}, "
                  f"texts {acc(self.text_scene_accuracy)} (zero-shot; gold labels used for this report only)")

    def __str__(self) -> str:
        return self.table()


def _one_hot_or_flat(ids: torch.Tensor, n: int) -> torch.Tensor:
    """[N, n] one-hot rows; a flat row (no prediction, filters nothing) where the id is -1."""
    out = torch.full((len(ids), n), 1.0 / n)
    known = ids >= 0
    out[known] = F.one_hot(ids[known], n).float()
    return out


def _vocabulary_of(data: CaptionDataset, vocabulary: str | None) -> str | None:
    return vocabulary if vocabulary is not None else vocabulary_of(data)


def _scene_inputs(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    data: CaptionDataset,
    scene_names: Sequence[str],
    model: nn.Module,
    tokenizer: Callable,
    templates: Sequence[str],
    vocabulary: str | None,
    text_source: str,
    temperature: float | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
    """Similarity and predicted scene probabilities from features, captions and category names only.

    No gold label is read here: everything :func:`evaluate_with_scenes` ranks comes from this.
    """
    names = [s for s in scene_names if normalize_scene(s) not in (UNKNOWN, "")]
    if not names:
        raise ValueError("scene_names holds no known scene")
    img = F.normalize(torch.as_tensor(image_features).float().cpu(), dim=-1)
    txt = F.normalize(torch.as_tensor(text_features).float().cpu(), dim=-1)
    if img.shape[0] != data.num_images or txt.shape[0] != data.num_captions:
        raise ValueError(f"features do not match {data!r}: {img.shape[0]} image rows, "
                         f"{txt.shape[0]} text rows")
    vocab = _vocabulary_of(data, vocabulary)
    prompts = scene_prompt_features(model, names, tokenizer, templates, vocab)
    zero_shot = functools.partial(zero_shot_scene_probs, model, scene_names=names, tokenizer=tokenizer,
                                  prompt_features=prompts, temperature=temperature)
    p_img = zero_shot(img)
    if text_source not in ("embedding", "words", "both"):
        raise ValueError(f"text_source={text_source!r}: use 'embedding', 'words' or 'both'")
    p_txt = zero_shot(txt) if text_source != "words" else None
    if text_source != "embedding":
        words = keyword_scene_probs(data.captions, names, vocab)
        p_txt = words if p_txt is None else F.normalize(p_txt * words, p=1, dim=-1)
    return img @ txt.t(), p_img, p_txt, names


def evaluate_with_scenes(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    data: CaptionDataset,
    scene_names: Sequence[str],
    model: nn.Module,
    tokenizer: Callable[[list[str]], torch.Tensor],
    modes: Sequence[str] = ("none", "soft", "hard"),
    *,
    weight: float = 0.01,
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    vocabulary: str | None = None,
    text_source: str = "embedding",
    temperature: float | None = None,
    oracle: bool = True,
) -> SceneEvalResult:
    """Retrieval metrics with no / soft / hard scene re-ranking side by side, plus scene accuracy.

    The ``modes`` rows use *predicted* scenes only: zero-shot for every gallery image, and for each
    text query zero-shot (``text_source="embedding"``), from the scene words it contains
    (``"words"``) or both multiplied (``"both"``). ``data.scenes`` (gold labels) is read only for
    the scene-accuracy report and for the oracle row (gold scenes in hard mode), which is an upper
    bound and **not a valid protocol**: a real query comes with no scene label.

    Args:
        image_features: [n_images, D] of ``data``'s images.
        text_features: [n_texts, D] of ``data``'s captions.
        data: the split (its ``text_to_image`` is the retrieval ground truth).
        scene_names: the candidate scene categories; take them from the *training* split
            (``train.scene_names``), the prior knowledge a deployed system has.
        model, tokenizer: encode the scene prompts.
        modes: rows to compute among ``none``, ``soft``, ``soft_linear``, ``hard``.
        weight: λ of the soft modes (both use this one value: evaluate them in separate calls to give
            each its own); choose it on val with :func:`choose_weight_on_val`.
        templates: zero-shot prompt templates.
        vocabulary: scene words (see :func:`scene_phrases`); default from ``data.name``.
        text_source: how text queries get a scene (above).
        temperature: zero-shot softmax scale; default the model's logit scale.
        oracle: add the gold-label row.
    """
    sim, p_img, p_txt, names = _scene_inputs(image_features, text_features, data, scene_names, model,
                                             tokenizer, templates, vocabulary, text_source, temperature)
    rows = {m: retrieval_metrics(scene_rerank(sim, p_img, p_txt, m, weight), data.text_to_image)
            for m in modes}
    # --- gold labels below this line: reporting and the oracle row only
    gold_img = [normalize_scene(s) for s in data.scenes]
    gold_txt = [gold_img[i] for i in data.text_to_image]
    if oracle:
        ids_img = scene_ids_for(gold_img, names)
        ids_txt = scene_ids_for(gold_txt, names)
        ids_img, ids_txt = _one_hot_or_flat(ids_img, len(names)), _one_hot_or_flat(ids_txt, len(names))
        rows[ORACLE_ROW] = retrieval_metrics(scene_rerank(sim, ids_img, ids_txt, "hard"),
                                             data.text_to_image)
    return SceneEvalResult(
        rows=rows,
        image_scene_accuracy=scene_accuracy(predict_scenes(p_img, names), gold_img),
        text_scene_accuracy=scene_accuracy(predict_scenes(p_txt, names), gold_txt),
        weight=weight,
        scene_names=list(names),
        image_scene_probs=p_img,
        text_scene_probs=p_txt,
    )


# λ grids per soft mode: log p_same spans ~[-18, 0] and cosines differ by ~0.01-0.3, so the log form
# needs ~10x smaller weights than the linear one, whose bonus lies in [0, 1].
DEFAULT_WEIGHTS: dict[str, tuple[float, ...]] = {
    "soft": (0.0, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1),
    "soft_linear": (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5),
}


def choose_weight_on_val(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    val_data: CaptionDataset,
    scene_names: Sequence[str],
    model: nn.Module,
    tokenizer: Callable[[list[str]], torch.Tensor],
    *,
    weights: Sequence[float] | None = None,
    mode: str = "soft",
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    vocabulary: str | None = None,
    text_source: str = "embedding",
    temperature: float | None = None,
) -> tuple[float, dict[float, float]]:
    """λ with the best validation mR for a soft mode; ties go to the smaller λ.

    Uses the validation split's retrieval ground truth (as checkpoint selection does) and predicted
    scenes; never its gold scene labels, never the test split. ``weights`` defaults to the mode's grid
    in :data:`DEFAULT_WEIGHTS`.

    Returns:
        ``(best_weight, {weight: val mR})``.
    """
    if mode not in ("soft", "soft_linear"):
        raise ValueError(f"mode={mode!r}: only the soft modes have a weight")
    sim, p_img, p_txt, _ = _scene_inputs(image_features, text_features, val_data, scene_names, model,
                                         tokenizer, templates, vocabulary, text_source, temperature)
    scores = {float(w): retrieval_metrics(scene_rerank(sim, p_img, p_txt, mode, w),
                                          val_data.text_to_image)["mr"]
              for w in (weights if weights is not None else DEFAULT_WEIGHTS[mode])}
    best = max(sorted(scores), key=lambda w: (scores[w], -w))
    return best, scores

