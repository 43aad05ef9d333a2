"""The offline stand-in that commands, the library and the notebooks default to, named once.

Moving the course to another MiniCLIP or recipe is an edit here and in the notebooks'
parameter literals (``tests/test_defaults.py`` holds the two together), not a hunt through
defaults spread over the CLI, the zoo, the sweeps and the search engine.
"""

MODEL = "mini"
MINICLIP_TAG = "synthrs"  # rsretrieval/models: LOCAL_PRETRAINED[(MODEL, MINICLIP_TAG)]
DATASET = "synthrs"
RECIPE = "mini-synthrs"  # rsretrieval/recipes/<RECIPE>.json, chosen on DATASET's validation split
