"""SETools: select, plot and summarise catalogue objects with ``.setools`` files.

The science package of ``setools_runner``; it knows nothing about the pipeline::

    from shapepipe.modules.setools import SETools, run_setools
    st = SETools("sexcat-2000001-3.fits", "example/setools/star_selection.setools")
    stars = st.mask("star_selection")              # boolean array over the objects
    run_setools("sexcat-2000001-3.fits", "star_selection.setools", "out", "-2000001-3")
"""

from shapepipe.modules.setools.catalog import ObjectTable
from shapepipe.modules.setools.expression import ExpressionError, parse_expression
from shapepipe.modules.setools.setools import SETools, run_setools, split_sizes
from shapepipe.modules.setools.setools_file import SetoolsError, parse_setools, read_setools
from shapepipe.modules.setools.stats import robust_mode, sigma_mad

__all__ = [
    "ObjectTable",
    "ExpressionError",
    "SETools",
    "SetoolsError",
    "parse_expression",
    "parse_setools",
    "read_setools",
    "robust_mode",
    "run_setools",
    "sigma_mad",
    "split_sizes",
]
