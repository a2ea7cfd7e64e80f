"""``shapepipe_run``: command line -> configuration -> pipeline -> exit code.

Exit codes: 0 every job of every module succeeded; 1 some job failed; 2 configuration or
usage error (reported before any job runs, in one line naming file, section, key, value).
The orchestration itself is :class:`shapepipe.pipeline.pipeline.Pipeline`.
"""

import logging
import sys

from shapepipe.pipeline import job_handler
from shapepipe.pipeline.args import parse_args
from shapepipe.pipeline.config import parse_list, read_config
from shapepipe.pipeline.errors import ConfigError
from shapepipe.pipeline.module_registry import ModuleRegistry
from shapepipe.pipeline.pipeline import Occurrence, Pipeline  # noqa: F401  (public names)
from shapepipe.pipeline.run_log import RunLog


def _setup_console(args, verbose_config=True):
    log = logging.getLogger("shapepipe")
    log.setLevel(logging.DEBUG)
    log.propagate = False
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()
    console = logging.StreamHandler(sys.stdout)
    if args.quiet:
        console.setLevel(logging.ERROR)
    elif args.verbose:
        console.setLevel(logging.DEBUG)
    else:
        console.setLevel(logging.INFO if verbose_config else logging.WARNING)
    console.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(console)
    return log


def list_modules(args, stream=None):
    """Print the available runners with their origin and version."""
    stream = stream or sys.stdout
    paths = []
    if args.config:
        config = read_config(args.config)
        paths = parse_list(config.get("EXECUTION", "MODULE_PATH", fallback=""))
    registry = ModuleRegistry(paths, args.config or "<command line>")
    for name, origin in registry.all_names().items():
        try:
            version = registry.load(name).version
        except ConfigError as exc:
            version = f"(cannot load: {exc})"
        stream.write(f"{name:32s} {version:8s} {origin}\n")
    return 0


def _executor_factory(pipeline):
    def factory(occ):
        if occ.runner.run_method == "serial":
            # One job: in this process, or in one worker process when it has a TIMEOUT.
            return lambda ctx, jobs, progress: job_handler.run_smp(
                ctx, jobs, progress, 1, "loky", pipeline.log)
        if pipeline.mode == "MPI":
            from shapepipe.pipeline import mpi

            return mpi.run_mpi
        return lambda ctx, jobs, progress: job_handler.run_smp(
            ctx, jobs, progress, pipeline.smp_workers(len(jobs)), pipeline.backend, pipeline.log
        )

    return factory


def main(argv=None):
    """Entry point of ``shapepipe_run``.

    Parameters
    ----------
    argv : list of str, optional
        Arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        The exit code.
    """
    try:
        args = parse_args(argv)
    except SystemExit as exc:  # argparse: --help, --version, usage errors
        return exc.code if isinstance(exc.code, int) else 2
    log = _setup_console(args)
    mpi_state = None
    restore_signals = job_handler.install_signal_handlers()
    try:
        if args.list_modules:
            return list_modules(args)
        config = read_config(args.config)
        pipeline = Pipeline(config, args)
        _setup_console(args, pipeline.verbose)
        if pipeline.mode == "MPI":
            from shapepipe.pipeline import mpi

            mpi_state = mpi.start(config.where("EXECUTION", "MODE", "MPI"))
            if mpi_state.rank != 0:
                return mpi.worker_loop(mpi_state)
            if mpi_state.size == 1:
                log.warning("MODE = MPI with a single rank: jobs run one at a time on rank 0 "
                            "(start with mpiexec -n N to use N ranks)")
            else:
                log.info("MODE = MPI: %d ranks (rank 0 dispatches and runs jobs)",
                         mpi_state.size)
        run_log = RunLog(pipeline.manifest)
        pipeline.validate(run_log)
        if args.dry_run:
            pipeline.dry_run(run_log)
            return 0
        return pipeline.run(_executor_factory(pipeline))
    except ConfigError as exc:
        log.error("ERROR: %s", exc)
        return 2
    except KeyboardInterrupt as exc:  # SIGINT -> 130, SIGTERM -> 143
        log.error("interrupted")
        return getattr(exc, "exit_code", 130)
    finally:
        restore_signals()
        if mpi_state is not None and mpi_state.rank == 0:
            from shapepipe.pipeline import mpi

            mpi.stop_workers(mpi_state)


if __name__ == "__main__":
    sys.exit(main())
