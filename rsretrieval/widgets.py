"""Interactive views for notebooks, each with a static fallback.

In a live Jupyter front end the widget is interactive. Executed headless (papermill, CI,
nbconvert) a widget has no front end to draw it, so every function also returns a static
matplotlib figure of the same content, which is what an HTML export shows.
"""

from __future__ import annotations

from typing import Any

from rsretrieval.data.dataset import CaptionDataset


def _has_widgets() -> bool:
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return True


def dataset_browser(data: CaptionDataset, start: int = 0) -> tuple[Any | None, Any]:
    """A slider over the images of ``data`` showing each with its captions and scene.

    Returns:
        (widget or None when ipywidgets is missing, static Figure of image ``start``).
    """
    from rsretrieval.plots import plot_image_captions

    captions = data.image_to_texts

    def figure(i: int):
        return plot_image_captions([data.image_paths[i]], [[data.captions[j] for j in captions[i]]], n=1)

    static = figure(start)
    if not _has_widgets():
        return None, static
    import ipywidgets as w
    from IPython.display import display

    out = w.Output()
    slider = w.IntSlider(value=start, min=0, max=data.num_images - 1, description="image")
    label = w.HTML()

    def show(change: dict | None = None) -> None:
        i = slider.value
        label.value = f"<b>{data.image_paths[i].name}</b> &middot; scene <code>{data.scenes[i]}</code>"
        with out:
            out.clear_output(wait=True)
            display(figure(i))

    slider.observe(show, names="value")
    show()
    return w.VBox([slider, label, out]), static


def search_box(index: Any, k: int = 5, example: str = "two white planes beside the terminal") -> tuple[Any | None, Any]:
    """A text box: type a query, see the top-k images with scores and scenes.

    Returns:
        (widget or None when ipywidgets is missing, static Figure of ``example``'s results).
    """
    from rsretrieval.plots import plot_search_results

    def figure(query: str):
        hits = index.search_text(query, k)
        return plot_search_results(f"query: {query}", [h.path for h in hits], [h.score for h in hits],
                                   [h.scene for h in hits])

    static = figure(example)
    if not _has_widgets():
        return None, static
    import ipywidgets as w
    from IPython.display import display

    box = w.Text(value=example, description="query", layout=w.Layout(width="70%"), continuous_update=False)
    out = w.Output()

    def show(change: dict | None = None) -> None:
        with out:
            out.clear_output(wait=True)
            try:
                display(figure(box.value))
            except ValueError as exc:  # an empty query
                print(exc)

    box.observe(show, names="value")
    show()
    return w.VBox([box, out]), static


class LiveCurve:
    """A run's validation curve redrawn after every epoch, beside reference runs (e.g. the zoo's).

    Pass it as ``run_method(..., on_epoch=curve)``; executed headless, the last drawing stays in the
    cell's output. ``curve.figure()`` is the static figure of what was drawn.
    """

    def __init__(self, name: str, reference: list[dict[str, Any]] | None = None, title: str = "") -> None:
        self.name, self.reference, self.title = name, reference or [], title
        self.records: list[dict[str, Any]] = []
        self._handle = None

    def figure(self):
        from rsretrieval.plots import plot_val_curves

        return plot_val_curves(self.reference, live={self.name: self.records}, title=self.title)

    def __call__(self, record: dict[str, Any]) -> None:
        from IPython.display import display

        self.records.append(dict(record))
        fig = self.figure()
        if self._handle is None:
            self._handle = display(fig, display_id=True)
        else:
            self._handle.update(fig)
