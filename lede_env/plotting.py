"""The one way this project makes a matplotlib figure: an Agg-backed `Figure` without pyplot, so that plotting from the
CLI, the tests and the notebooks touches no global backend state."""

from __future__ import annotations


def new_figure(width: float, height: float, dpi: int = 110):
    """A constrained-layout `matplotlib.figure.Figure` of ``width`` x ``height`` inches; save it with ``savefig``."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=dpi, layout="constrained")


def to_png(fig) -> bytes:
    """The figure as PNG bytes (in a notebook: ``IPython.display.Image(to_png(fig))``)."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
