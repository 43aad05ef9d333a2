"""The course's default stand-in is named once (rsretrieval.defaults) and everything agrees with it."""

import ast
import json
from pathlib import Path

import pytest

from rsretrieval import defaults
from rsretrieval.course import list_notebooks, notebook_parameters
from rsretrieval.models import LOCAL_PRETRAINED, local_pretrained_path
from rsretrieval.recipes import read_recipe_file
from rsretrieval.zoo import ZooSettings, zoo_dir

NOTEBOOKS = list_notebooks()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: Path(p).stem)
def test_notebook_parameters_match_the_defaults(path):
    params = {k: ast.literal_eval(v) for k, v in notebook_parameters(path).items()}
    expected = {"MODEL": defaults.MODEL, "PRETRAINED": defaults.MINICLIP_TAG, "DATASET": defaults.DATASET,
                "RECIPE": defaults.RECIPE}
    wrong = {k: params[k] for k, v in expected.items() if k in params and params[k] != v}
    assert not wrong, f"{Path(path).name}: {wrong} differ from rsretrieval/defaults.py"


def test_the_default_miniclip_ships_and_the_recipe_was_chosen_with_it():
    assert (defaults.MODEL, defaults.MINICLIP_TAG) in LOCAL_PRETRAINED
    assert local_pretrained_path(defaults.MODEL, defaults.MINICLIP_TAG).is_file()
    recipe = read_recipe_file(defaults.RECIPE)
    assert (recipe["model"], recipe["pretrained"]) == (defaults.MODEL, defaults.MINICLIP_TAG)
    assert defaults.DATASET in recipe["datasets"]


def test_the_committed_zoo_was_built_with_the_defaults():
    settings = ZooSettings()
    assert (settings.model, settings.pretrained, settings.recipe) == (defaults.MODEL, defaults.MINICLIP_TAG,
                                                                      defaults.RECIPE)
    stored = json.loads((zoo_dir(defaults.MODEL, defaults.DATASET) / "zoo.json").read_text())["settings"]
    assert (stored["model"], stored["pretrained"], stored["recipe"]) == (settings.model, settings.pretrained,
                                                                         settings.recipe)
