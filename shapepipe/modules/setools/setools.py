"""Apply a ``.setools`` file to a catalogue: masks, plots, statistics, random splits.

Semantics (ShapePipe's, with its gaps closed):

- ``[MASK:name]``: the ``{other}`` lines AND the selections of other masks into the
  sample the section works on; every comparison line is evaluated on that sample (so
  ``mean(COL)`` there is the mean over the sample) and the lines are ANDed. An empty
  section selects the whole sample. ``COL{mask}`` is always the column on the full
  selection of ``mask``. Masks may be used before the section defining them (cycles
  are reported when the file is read).
- Outputs, in ``output_dir``: ``mask/<name><num>.fits`` (unless ``NO_SAVE``),
  ``plot/<name><num>.<format>``, ``stat/<name><num>.txt`` and
  ``rand_split/<name>_ratio_<p><num>.fits`` for the two samples of a random split, where
  ``<num>`` is the file number string of the input (``-2000001-3``).
"""

import logging
import os

import numpy as np

from shapepipe.modules.setools.catalog import ObjectTable
from shapepipe.modules.setools.expression import ExpressionError
from shapepipe.modules.setools.plot import make_plot
from shapepipe.modules.setools.setools_file import SetoolsError, SetoolsFile, read_setools
from shapepipe.utils.atomic import write_text
from shapepipe.utils.rng import make_rng

__all__ = ["SETools", "run_setools", "split_sizes"]

_LOG = logging.getLogger(__name__)


def split_sizes(n_objects, ratio):
    """Sizes of the two samples of a random split: ``round(ratio * n)`` (half up), rest.

    Parameters
    ----------
    n_objects : int
        Objects to split.
    ratio : float
        Fraction in the first sample.

    Returns
    -------
    tuple of int
    """
    first = int(np.floor(ratio * n_objects + 0.5))
    return first, n_objects - first


def _format_stat(value):
    value = np.asarray(value).item()
    return str(value)


class SETools:
    """A ``.setools`` file applied to one catalogue.

    Parameters
    ----------
    catalogue : str or ObjectTable or numpy structured array
        The catalogue file (FITS_LDAC or FITS table), or the objects themselves.
    setools : str or SetoolsFile
        The ``.setools`` file or its parsed form.

    Examples
    --------
    >>> st = SETools("sexcat-2000001-3.fits", "star_selection.setools")  # doctest: +SKIP
    >>> stars = st.mask("star_selection")          # boolean array over the objects
    >>> st.statistics()["star_stat"]["Nb stars"]
    """

    def __init__(self, catalogue, setools):
        if isinstance(catalogue, ObjectTable):
            self.catalogue = catalogue
        elif isinstance(catalogue, (str, os.PathLike)):
            self.catalogue = ObjectTable.read(catalogue)
        else:
            self.catalogue = ObjectTable(catalogue)
        self.setools = setools if isinstance(setools, SetoolsFile) else read_setools(setools)
        self._masks = {}

    # ------------------------------------------------------------------ evaluation

    def evaluate(self, node, location, sample=None):
        """Value of an expression.

        Parameters
        ----------
        node : expression Node
            Parsed expression.
        location : Location
            Where it comes from (for error messages).
        sample : numpy.ndarray, optional
            Indices of the objects plain column names refer to (default: all).

        Returns
        -------
        numpy.ndarray or scalar
        """
        try:
            with np.errstate(all="ignore"):
                return node.evaluate(_Env(self, sample))
        except SetoolsError:
            raise
        except (ExpressionError, TypeError, ValueError, IndexError) as exc:
            raise location.error(str(exc)) from None

    def mask(self, name):
        """Boolean selection of ``[MASK:name]`` over the catalogue's objects."""
        if name not in self._masks:
            if name not in self.setools.masks:
                known = ", ".join(self.setools.masks) or "none"
                raise SetoolsError(f"{self.setools.path}: unknown mask '{name}' "
                                   f"(masks defined: {known})")
            self._masks[name] = self._compute_mask(self.setools.masks[name])
        return self._masks[name]

    @property
    def masks(self):
        """Every mask of the file, ``{name: boolean array}``, in file order."""
        return {name: self.mask(name) for name in self.setools.masks}

    def _compute_mask(self, section):
        n_objects = len(self.catalogue)
        base = np.ones(n_objects, dtype=bool)
        for ref, _ in section.refs:
            base &= self.mask(ref)
        sample = np.flatnonzero(base)
        keep = np.ones(sample.size, dtype=bool)
        for node, loc in section.conditions:
            result = np.asarray(self.evaluate(node, loc, sample))
            if result.ndim == 0:
                keep &= bool(result)
                continue
            if result.shape != (sample.size,):
                raise loc.error(
                    f"the comparison gives an array of shape {result.shape} but the section "
                    f"selects among {sample.size} objects; compare columns of the section's "
                    "sample (without {mask}) or values reduced by a function"
                )
            keep &= result
        selection = np.zeros(n_objects, dtype=bool)
        selection[sample[keep]] = True
        return selection

    def statistics(self):
        """Values of every ``[STAT:name]`` section, ``{section: {statistic: value}}``."""
        out = {}
        for name, section in self.setools.stats.items():
            values = {}
            for stat_name, node, loc in section.entries:
                value = self.evaluate(node, loc)
                if np.ndim(value) != 0:
                    raise loc.error(
                        f"a statistic must be one number, this gives {np.size(value)} values "
                        "(reduce it with mean(), len(), ...)"
                    )
                values[stat_name] = np.asarray(value).item()
            out[name] = values
        return out

    def random_split(self, name, seed=0, label=""):
        """Indices of the two samples of ``[RAND_SPLIT:name]``.

        The first sample has ``round(RATIO * n)`` objects drawn without replacement
        from the ``n`` objects of the MASK selection, with a generator seeded by
        ``seed``, ``label`` (the file number) and the section name; the second has the
        rest. Both are in catalogue order.

        Returns
        -------
        first, second : numpy.ndarray
            Object indices.
        """
        section = self.setools.rand_splits[name]
        selection = np.ones(len(self.catalogue), dtype=bool)
        for mask_name in section.masks:
            selection &= self.mask(mask_name)
        candidates = np.flatnonzero(selection)
        n_first, _ = split_sizes(candidates.size, section.ratio)
        rng = make_rng(seed, label, name)
        chosen = np.zeros(candidates.size, dtype=bool)
        chosen[rng.choice(candidates.size, size=n_first, replace=False)] = True
        return candidates[chosen], candidates[~chosen]

    # --------------------------------------------------------------------- outputs

    def process(self, output_dir, file_number_string="", seed=0, log=None):
        """Compute every section and write the outputs.

        Parameters
        ----------
        output_dir : str
            Directory receiving ``mask/``, ``plot/``, ``stat/``, ``rand_split/``.
        file_number_string : str
            Appended to every output name (``-2000001-3``).
        seed : int
            Seed of the random splits (combined with ``file_number_string``).
        log : logging.Logger, optional
            Where to report what is written.

        Returns
        -------
        list of str
            The files written.
        """
        log = log or _LOG
        setools = self.setools
        num = file_number_string
        written = []

        masks = self.masks
        if setools.masks:
            directory = _subdir(output_dir, "mask")
            for name, section in setools.masks.items():
                log.info("mask %s: %d of %d objects", name, int(masks[name].sum()),
                         len(self.catalogue))
                if not section.save:
                    continue
                path = os.path.join(directory, f"{name}{num}.fits")
                self.catalogue.write_selection(masks[name], path)
                written.append(path)

        if setools.plots:
            directory = _subdir(output_dir, "plot")
            for name, section in setools.plots.items():
                written.append(make_plot(section, self.evaluate,
                                         os.path.join(directory, f"{name}{num}")))

        if setools.rand_splits:
            directory = _subdir(output_dir, "rand_split")
            for name, section in setools.rand_splits.items():
                first, second = self.random_split(name, seed=seed, label=num)
                if first.size == 0 or second.size == 0:
                    # As ShapePipe: an empty sample is useless downstream, write neither.
                    log.warning("random split %s: %d + %d objects, one sample is empty, "
                                "nothing written", name, first.size, second.size)
                    continue
                p_first, p_second = section.percent
                for percent, index in ((p_first, first), (p_second, second)):
                    path = os.path.join(directory, f"{name}_ratio_{percent}{num}.fits")
                    self.catalogue.write_selection(index, path)
                    written.append(path)
                log.info("random split %s (seed %d, %s): %d + %d objects", name, seed,
                         num or "no label", first.size, second.size)

        if setools.stats:
            directory = _subdir(output_dir, "stat")
            for name, values in self.statistics().items():
                lines = ["# Statistics"]
                lines += [f"{key} = {_format_stat(value)}" for key, value in values.items()]
                path = os.path.join(directory, f"{name}{num}.txt")
                write_text("\n".join(lines) + "\n", path)
                written.append(path)
        return written


class _Env:
    """What expressions see: columns (of a sample, or of a mask's selection)."""

    def __init__(self, setools, sample):
        self.setools = setools
        self.sample = sample

    def column(self, name, mask=None):
        values = self.setools.catalogue.column(name)
        if mask is not None:
            return values[self.setools.mask(mask)]
        if self.sample is not None:
            return values[self.sample]
        return values


def _subdir(output_dir, name):
    path = os.path.join(output_dir, name)
    os.makedirs(path, exist_ok=True)
    return path


def run_setools(catalogue_path, setools_path, output_dir, file_number_string="", seed=0,
                log=None):
    """Apply a ``.setools`` file to a catalogue and write the outputs.

    Parameters
    ----------
    catalogue_path : str
        FITS_LDAC catalogue (e.g. ``sexcat-2000001-3.fits``) or FITS table.
    setools_path : str or SetoolsFile
        The selection file.
    output_dir : str
        Receives ``mask/``, ``plot/``, ``stat/``, ``rand_split/``.
    file_number_string : str
        Appended to output names.
    seed : int
        Seed of random splits.
    log : logging.Logger, optional

    Returns
    -------
    list of str
        Files written.
    """
    setools = setools_path if isinstance(setools_path, SetoolsFile) else read_setools(
        setools_path)
    return SETools(catalogue_path, setools).process(output_dir, file_number_string, seed, log)
