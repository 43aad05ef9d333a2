"""Recipes: the settings each method trains with, stored as data and taken by name.

A recipe is a JSON file in this folder, named by its stem, made for one model and dataset:

- ``mini-synthrs``: chosen by ``python -m rsretrieval recipes sweep`` for MiniCLIP on SynthRS,
  each method's choice stored beside the validation results it was chosen from;
- ``pe-rsitr``: PE-RSITR's published training settings (ViT-B-32 on RSITMD / RSICD / UCM).

Its ``methods`` maps a method name (or ``"*"``: what every method takes unless its own entry says
otherwise; or ``"<method>+<loss>"``: the method trained with another loss, e.g. ``mrs_adapter+hmmc``,
whose learning rate need not be InfoNCE's) to ``train``
(:class:`~rsretrieval.training.TrainConfig` fields), ``method_kwargs``, ``loss``, ``loss_kwargs``
and ``val_fraction``. Explicit arguments always override the recipe (:meth:`Recipe.config`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from rsretrieval.training import TrainConfig

RECIPE_DIR = Path(__file__).parent
_ENTRY_KEYS = {"train", "method_kwargs", "loss", "loss_kwargs", "val_fraction", "sweep"}


@dataclass(frozen=True)
class Recipe:
    """One method's settings under a named recipe."""

    name: str
    method: str
    train: dict[str, Any] = field(default_factory=dict)
    method_kwargs: dict[str, Any] = field(default_factory=dict)
    loss: str | None = None
    loss_kwargs: dict[str, Any] = field(default_factory=dict)
    val_fraction: float | None = None  # None: the loader's default; 0: no validation (train on all of train)
    sweep: dict[str, Any] | None = None  # the validation results the choice was made from

    def config(self, **overrides: Any) -> TrainConfig:
        """The recipe's :class:`TrainConfig`; ``overrides`` (not None) win over it."""
        return TrainConfig(**{**self.train, **{k: v for k, v in overrides.items() if v is not None}})

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "method": self.method, "train": self.train, "method_kwargs": self.method_kwargs,
                "loss": self.loss, "loss_kwargs": self.loss_kwargs, "val_fraction": self.val_fraction}


def recipe_path(name: str) -> Path:
    return RECIPE_DIR / f"{name}.json"


def list_recipes() -> list[str]:
    """The recipes this library ships (file stems of this folder)."""
    return sorted(p.stem for p in RECIPE_DIR.glob("*.json"))


def read_recipe_file(name: str) -> dict[str, Any]:
    """A recipe file's whole content: its description, what it was made for, and its methods."""
    path = recipe_path(name)
    if not path.is_file():
        raise ValueError(f"unknown recipe {name!r}; known: {', '.join(list_recipes()) or 'none'} "
                         f"(files in {RECIPE_DIR}); `python -m rsretrieval recipes sweep` writes one")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}): restore it from git or rerun the sweep") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("methods"), dict):
        raise ValueError(f"{path} has no 'methods' mapping: restore it from git or rerun the sweep")
    return doc


def recipe_key(method: str, loss: str | None = None) -> str:
    """The entry a method trained with ``loss`` is stored under: ``method``, or ``method+loss`` for a
    loss other than the method's default."""
    if loss is None:
        return method
    from rsretrieval.methods import get_method

    return method if loss == get_method(method).default_loss else f"{method}+{loss}"


def load_recipe(name: str, method: str, loss: str | None = None) -> Recipe:
    """``method``'s entry of recipe ``name`` (its ``method+loss`` entry, where the recipe has one for
    ``loss``), over the recipe's ``"*"`` entry.

    Raises:
        ValueError: no such recipe, the recipe has no entry for ``method``, or the entry is malformed.
    """
    doc = read_recipe_file(name)
    key = recipe_key(method, loss)
    star, own = doc["methods"].get("*"), doc["methods"].get(key if key in doc["methods"] else method)
    entry = None if star is None and own is None else \
        {**(star or {}), **(own or {}), "train": {**(star or {}).get("train", {}), **(own or {}).get("train", {})}}
    if entry is None:
        raise ValueError(f"recipe {name!r} has no entry for method {method!r} (it has: "
                         f"{', '.join(doc['methods'])}); run `python -m rsretrieval recipes sweep --method {method}` "
                         "or pass the settings explicitly")
    unknown = set(entry) - _ENTRY_KEYS
    train_unknown = set(entry.get("train", {})) - {f.name for f in fields(TrainConfig)}
    if unknown or train_unknown:
        raise ValueError(f"{recipe_path(name)}: method {method!r} has unknown key(s) "
                         f"{sorted(unknown | train_unknown)}; known: {sorted(_ENTRY_KEYS)} and TrainConfig's fields")
    return Recipe(name=name, method=method, train=dict(entry.get("train", {})),
                  method_kwargs=dict(entry.get("method_kwargs", {})), loss=entry.get("loss"),
                  loss_kwargs=dict(entry.get("loss_kwargs", {})), val_fraction=entry.get("val_fraction"),
                  sweep=entry.get("sweep"))


__all__ = ["RECIPE_DIR", "Recipe", "list_recipes", "load_recipe", "read_recipe_file", "recipe_key", "recipe_path"]


def data_kwargs(recipe: str | None) -> dict[str, Any]:
    """``load_dataset`` keywords a recipe asks for (its validation share, e.g. PE-RSITR's 20%)."""
    if not recipe:
        return {}
    share = read_recipe_file(recipe)["methods"].get("*", {}).get("val_fraction")
    return {} if share is None else {"val_fraction": share}
