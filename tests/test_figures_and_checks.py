"""What a learner and a screen reader are told: check cells' sentences and the figures' alternative text."""

import numpy as np
import torch
from matplotlib.figure import Figure

from rsretrieval.notebook import _CHECKS, check
from rsretrieval.plots import OKABE_ITO, alt_text, set_alt_text, use_course_style


def test_check_says_what_agrees_differs_or_is_not_done_and_goes_on_with_a_right_answer(capsys):
    def not_written():
        raise NotImplementedError("write f here")

    assert check("f", not_written, {"mr": 1.0}) == {"mr": 1.0}
    assert "not done yet: f still raises NotImplementedError" in capsys.readouterr().out
    assert check("g", lambda: torch.ones(2, 3), torch.ones(2, 3)).shape == (2, 3)
    assert "g agrees with the library's (shape (2, 3)" in capsys.readouterr().out
    wrong = torch.ones(2, 3)
    wrong[1, 2] = 5
    assert torch.equal(check("h", lambda: wrong, torch.ones(2, 3)), torch.ones(2, 3))
    said = capsys.readouterr().out
    assert "h is 5 at (1, 2) where the library's is 1 (1 of 6 values differ" in said
    check("shape", lambda: np.zeros(3), np.zeros(4))
    check("keys", lambda: {"a": 1}, {"a": 1, "b": 2})
    check("dtype", lambda: torch.zeros(2, dtype=torch.float64), torch.zeros(2))
    said = capsys.readouterr().out
    assert "shape has shape (3,), the library's (4,)" in said and "keys lacks 'b'" in said
    assert "dtype is torch.float64, the library's is torch.float32" in said
    assert {k: _CHECKS[k] for k in ("f", "g", "h", "shape")} == {"f": "not done", "g": "ok", "h": "differs",
                                                                  "shape": "differs"}


def test_figures_describe_themselves_in_a_colour_blind_safe_palette():
    use_course_style()
    fig = Figure()
    ax = fig.subplots()
    line, = ax.plot([1, 2], [3, 4], label="full")
    ax.set_xlabel("epoch")
    ax.set_ylabel("val mR (%)")
    ax.legend()
    fig.suptitle("validation curves")
    assert alt_text(fig) == "validation curves. val mR (%) against epoch; series: full"
    assert line.get_color().lower() == OKABE_ITO[0].lower()
    assert alt_text(set_alt_text(fig, "two curves")) == "two curves"
