"""``[PLOT:name]`` sections drawn with matplotlib (object API, no pyplot global state).

Keys (ShapePipe's): TYPE (plot, scatter, hist), FORMAT (png by default), TITLE,
XLABEL, YLABEL, XLIM/YLIM (``lower,upper``) and per data set ``_i``: X, Y, SCATTER,
LABEL, COLOR, MARKER, MARKERSIZE, LINE, ALPHA, BIN, plus HTYPE and LOG for histograms.
TITLE and LABEL may contain ``@expression@``, replaced by the expression's value.
"""

import numpy as np
from matplotlib.figure import Figure

from shapepipe.modules.setools.setools_file import SetoolsError
from shapepipe.utils.atomic import atomic_path

__all__ = ["make_plot"]


def _index_order(index):
    return (0, int(index), "") if index.isdigit() else (1, 0, index)


def _indices(section, key):
    return sorted(section.options.get(key, {}), key=_index_order)


def _float(section, key, index, default):
    value = section.get(key, index)
    if value is None:
        return default
    try:
        return float(value)
    except ValueError:
        raise section.location_of(key, index).error(
            f"{key} must be a number, got '{value}'"
        ) from None


def _limits(section, key):
    value = section.get(key)
    if value is None:
        return None
    parts = [p.strip() for p in value.split(",")]
    try:
        lo, hi = (float(p) for p in parts)
    except ValueError:
        raise section.location_of(key).error(
            f"{key} must be 'lower,upper' (two numbers), got '{value}'"
        ) from None
    return lo, hi


def _format_number(value):
    value = np.asarray(value).item()
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _text(section, key, index, evaluate):
    parts = section.get(key, index)
    if parts is None:
        return None
    loc = section.location_of(key, index)
    out = []
    for part in parts:
        if isinstance(part, str):
            out.append(part)
        else:
            value = evaluate(part, loc)
            if np.ndim(value) != 0:
                raise loc.error(f"'@...@' in {key} must give one number, got "
                                f"{np.size(value)} values")
            out.append(_format_number(value))
    return "".join(out)


def _data(section, key, index, evaluate):
    node = section.get(key, index, share_single=True)
    loc = section.location_of(key, index)
    if node is None:
        raise section.location.error(f"{key}_{index} is missing (needed for data set {index})")
    return np.atleast_1d(evaluate(node, loc)), loc


def _same_length(a, b, loc, names):
    if a.shape[0] != b.shape[0]:
        raise loc.error(f"{names[0]} has {a.shape[0]} values and {names[1]} has "
                        f"{b.shape[0]}: they must select the same objects")


def _draw_plot(section, ax, evaluate):
    for index in _indices(section, "Y"):
        x, _ = _data(section, "X", index, evaluate)
        y, loc = _data(section, "Y", index, evaluate)
        _same_length(x, y, loc, ("X", "Y"))
        ax.plot(
            x,
            y,
            label=_text(section, "LABEL", index, evaluate),
            color=section.get("COLOR", index),
            marker=section.get("MARKER", index, "+"),
            markersize=_float(section, "MARKERSIZE", index, 1.0),
            ls=section.get("LINE", index, ""),
            alpha=_float(section, "ALPHA", index, None),
        )


def _draw_scatter(section, ax, fig, evaluate):
    artist = None
    for index in _indices(section, "SCATTER"):
        x, _ = _data(section, "X", index, evaluate)
        y, loc_y = _data(section, "Y", index, evaluate)
        c, loc = _data(section, "SCATTER", index, evaluate)
        _same_length(x, y, loc_y, ("X", "Y"))
        _same_length(x, c, loc, ("X", "SCATTER"))
        artist = ax.scatter(
            x,
            y,
            c=c,
            label=_text(section, "LABEL", index, evaluate),
            marker=section.get("MARKER", index, "+"),
            alpha=_float(section, "ALPHA", index, None),
        )
    if artist is not None:
        fig.colorbar(artist, ax=ax)


def _draw_hist(section, ax, evaluate):
    htype = section.get("HTYPE", "0", "bar")
    log = str(section.get("LOG", "0", "False")).strip().lower() in ("true", "1", "yes")
    for index in _indices(section, "Y"):
        y, _ = _data(section, "Y", index, evaluate)
        y = y[np.isfinite(y)]
        bins = section.get("BIN", index)
        if bins is None:
            bins = 50
        else:
            try:
                bins = int(bins)
            except ValueError:
                raise section.location_of("BIN", index).error(
                    f"BIN must be an integer, got '{bins}'") from None
        ax.hist(
            y,
            bins=bins,
            color=section.get("COLOR", index),
            label=_text(section, "LABEL", index, evaluate),
            alpha=_float(section, "ALPHA", index, None),
            histtype=htype,
            log=log,
        )


def make_plot(section, evaluate, output_stem):
    """Draw one ``[PLOT:name]`` section and save it.

    Parameters
    ----------
    section : PlotSection
        The parsed section.
    evaluate : callable
        ``evaluate(node, location)`` returns an expression's value over the catalogue.
    output_stem : str
        Output path without extension; ``.<FORMAT>`` (lower case) is appended.

    Returns
    -------
    str
        The file written.
    """
    fmt = section.get("FORMAT", "0", "png").strip().lower()
    path = f"{output_stem}.{fmt}"
    fig = Figure()
    ax = fig.subplots()
    try:
        title = _text(section, "TITLE", "0", evaluate)
        if title:
            fig.suptitle(title)
        kind = section.plot_type
        if kind == "plot":
            _draw_plot(section, ax, evaluate)
        elif kind == "scatter":
            _draw_scatter(section, ax, fig, evaluate)
        else:
            _draw_hist(section, ax, evaluate)
        for key, setter in (("XLIM", ax.set_xlim), ("YLIM", ax.set_ylim)):
            limits = _limits(section, key)
            if limits is not None:
                setter(*limits)
        if "LABEL" in section.options:
            ax.legend()
        if section.get("XLABEL"):
            ax.set_xlabel(section.get("XLABEL"))
        if section.get("YLABEL"):
            ax.set_ylabel(section.get("YLABEL"))
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt)
    except SetoolsError:
        raise
    except (ValueError, TypeError) as exc:
        # matplotlib's own complaints (bad colour, marker, format) name no location.
        raise section.location.error(f"matplotlib refused the plot: {exc}") from None
    return path
