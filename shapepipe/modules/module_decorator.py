"""The ``@module_runner`` decorator (ShapePipe-compatible).

A runner is a function with the six-argument signature::

    @module_runner(version="1.0", input_module="sextractor_runner",
                   file_pattern=["sexcat"], file_ext=[".fits"], depends=["numpy"],
                   executes=[], numbering_scheme=None, run_method="parallel",
                   keys=[Key("MY_KEY", "float", help="what it is")])
    def my_runner(input_file_list, run_dirs, file_number_string, config,
                  module_config_sec, w_log):
        ...
        return stdout, stderr

The decorator only attaches properties to the function; the framework reads them.
``keys`` is an addition to ShapePipe's decorator: it declares the keys of the module's
config section so that missing or mistyped keys are reported before any job runs and
unknown keys warn. Runners written for ShapePipe (without ``keys``) work unchanged.
"""

from shapepipe.pipeline.config import Key

__all__ = ["module_runner", "Key"]

_RUN_METHODS = ("parallel", "serial")


def _as_list(value):
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value else []
    return list(value)


def module_runner(
    input_module=None,
    version="0.0",
    file_pattern="",
    file_ext="",
    depends=None,
    executes=None,
    numbering_scheme=None,
    run_method="parallel",
    keys=None,
    validate=None,
    combine=None,
):
    """Declare a function as a pipeline runner.

    Parameters
    ----------
    input_module : str or list of str, optional
        Module(s) whose output is this runner's default input.
    version : str
        Version of the runner, recorded in the logs.
    file_pattern, file_ext : str or list of str
        Default file patterns and extensions of the inputs, one extension per pattern.
    depends : list of str, optional
        Python packages the runner imports (checked before any job runs).
    executes : list of str, optional
        External programs the runner calls (checked before any job runs).
    numbering_scheme : str, optional
        Default numbering scheme (for example ``-0000000-0`` or ``RE:<regex>``).
    run_method : {"parallel", "serial"}
        ``serial`` runners get one job with every input file.
    keys : list of Key, optional
        The keys of the runner's config section. ``None`` means undeclared (no checks).
    validate : callable, optional
        ``validate(config, section)``, called before any job runs, to check what the keys
        cannot say alone (for example the contents of an auxiliary config file); it raises
        an exception with a one-line message on a problem.
    combine : callable, optional
        ``combine(part_dirs, output_dir, file_number_string, w_log)``: declares that the
        runner supports ``N_SPLIT = k`` (each number run as k part jobs, each told its part
        by ``run_dirs["split"] = (part, k)``). Called once all k parts of a number have
        succeeded, with the k part output directories in part order; it writes the combined
        files into ``output_dir``. Parallel runners only.

    Returns
    -------
    callable
        A decorator returning the function with the properties attached.
    """
    if run_method not in _RUN_METHODS:
        raise ValueError(f"run_method must be one of {_RUN_METHODS}, got {run_method!r}")
    if combine is not None and (not callable(combine) or run_method != "parallel"):
        raise ValueError("combine must be a callable, for a parallel runner")

    def decorator(func):
        func.input_module = _as_list(input_module)
        func.version = version
        func.file_pattern = _as_list(file_pattern)
        func.file_ext = _as_list(file_ext)
        func.depends = _as_list(depends)
        func.executes = _as_list(executes)
        func.numbering_scheme = numbering_scheme
        func.run_method = run_method
        func.keys = None if keys is None else list(keys)
        func.validate_config = validate
        func.combine = combine
        func.is_shapepipe_runner = True
        return func

    return decorator
