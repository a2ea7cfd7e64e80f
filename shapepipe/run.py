"""``shapepipe_run``: command line -> configuration -> pipeline -> exit code.

Exit codes: 0 every job of every module succeeded; 1 some job failed; 2 configuration or
usage error (reported before any job runs, in one line naming file, section, key, value).
"""

import hashlib
import json
import logging
import os
import sys
import time
from dataclasses import dataclass

from shapepipe import __version__
from shapepipe.pipeline import job_handler
from shapepipe.pipeline.args import parse_args
from shapepipe.pipeline.config import check_section_keys, parse_list, read_config
from shapepipe.pipeline.errors import ConfigError
from shapepipe.pipeline.file_handler import (
    bind_files,
    create_run_dir,
    natural_key,
    newest_run_dir,
    read_number_list,
)
from shapepipe.pipeline.module_registry import (
    ModuleRegistry,
    canonical_name,
    check_requirements,
    split_run_suffix,
)
from shapepipe.pipeline.run_log import RunLog, parse_dir_spec, update_manifest
from shapepipe.pipeline.worker import ModuleContext, read_records
from shapepipe.utils.atomic import atomic_path

#: Used when neither the section, [FILE] nor the runner gives a NUMBERING_SCHEME:
#: -0000000, -0000000-0, _0, -000-000 ...
DEFAULT_NUMBERING = r"RE:[-_]?\d+(?:[-_.]\d+)*"
SMP_BACKENDS = ("loky", "multiprocessing", "threading")


@dataclass
class Occurrence:
    """One entry of ``[EXECUTION] MODULE``."""

    written: str  # as written in the config (may be an alias)
    name: str  # canonical runner name
    index: int  # 1 for the first occurrence of this runner, 2 for the second...
    position: int  # position in the MODULE list
    section: str
    runner: object
    repeated: bool = False  # the runner is listed more than once in MODULE

    @property
    def dir_name(self):
        """Output directory name: ``<name>``, or ``<name>_run_<N>`` for a repeated runner.

        As in ShapePipe, every occurrence of a runner listed more than once is numbered,
        the first included (``x_run_1``, ``x_run_2``); a runner listed once keeps its name.
        """
        return f"{self.name}_run_{self.index}" if self.repeated else self.name


class Pipeline:
    """A configured run: validation, input resolution, job execution, bookkeeping.

    Parameters
    ----------
    config : ShapePipeConfig
        The configuration.
    args : argparse.Namespace
        Command-line options.
    """

    def __init__(self, config, args):
        self.config = config
        self.args = args
        self.path = config.path
        self.log = logging.getLogger("shapepipe")
        self._read_general()
        if self.mode == "SMP" and self.workers > 1 and self.backend == "loky" \
                and not getattr(args, "dry_run", False):
            # Worker start-up overlaps with loading the runners and validating.
            job_handler.warm_pool(self.workers)
        self.registry = ModuleRegistry(self.module_paths, self.path)
        self.occurrences = self._plan_modules()
        self.warnings = []

    # -- configuration ----------------------------------------------------------------
    def _read_general(self):
        c = self.config
        for section in ("EXECUTION", "FILE"):
            if not c.has_section(section):
                raise ConfigError(f"{self.path}: section [{section}] is missing")
        self.module_list = c.getlist("EXECUTION", "MODULE")
        if not self.module_list:
            raise ConfigError(f"{c.where('EXECUTION', 'MODULE')}: expected at least one module")
        self.mode = c.get("EXECUTION", "MODE", fallback="SMP").strip().upper()
        if self.mode not in ("SMP", "MPI"):
            raise ConfigError(
                f"{c.where('EXECUTION', 'MODE', self.mode)}: expected SMP or MPI"
            )
        self.module_paths = c.getlist("EXECUTION", "MODULE_PATH", fallback=[])
        self.run_name = c.get("DEFAULT", "RUN_NAME", fallback="shapepipe_run").strip()
        if not self.run_name or "/" in self.run_name:
            raise ConfigError(f"{c.where('DEFAULT', 'RUN_NAME', self.run_name)}: expected a name")
        self.run_datetime = c.getboolean("DEFAULT", "RUN_DATETIME", fallback=True)
        self.verbose = c.getboolean("DEFAULT", "VERBOSE", fallback=True)
        self.output_dir = os.path.abspath(os.path.expanduser(c.get("FILE", "OUTPUT_DIR")))
        self.input_dir = c.getlist("FILE", "INPUT_DIR")
        if not self.input_dir:
            raise ConfigError(f"{c.where('FILE', 'INPUT_DIR')}: expected at least one directory")
        self.log_name = c.get("FILE", "LOG_NAME", fallback="shapepipe").strip()
        self.run_log_name = c.get("FILE", "RUN_LOG_NAME", fallback="shapepipe_runs").strip()
        self.manifest = os.path.join(self.output_dir, self.run_log_name + ".jsonl")
        self.workers = c.getint("JOB", "SMP_BATCH_SIZE", fallback=1)
        if self.workers < 1:
            raise ConfigError(
                f"{c.where('JOB', 'SMP_BATCH_SIZE', str(self.workers))}: expected >= 1"
            )
        self.backend = c.get("JOB", "SMP_BACKEND", fallback="loky").strip().lower()
        if self.backend not in SMP_BACKENDS:
            raise ConfigError(
                f"{c.where('JOB', 'SMP_BACKEND', self.backend)}: expected one of "
                + ", ".join(SMP_BACKENDS)
            )
        self.timeout = self._timeout("JOB")
        if self.timeout and self.backend == "threading" and self.workers > 1:
            raise ConfigError(
                f"{c.where('JOB', 'TIMEOUT')}: a timeout cannot stop a thread; "
                "use SMP_BACKEND = loky or multiprocessing"
            )
        if c.has_option("FILE", "CORRECT_FILE_PATTERN"):
            # Accepted for compatibility with ShapePipe configs; patterns are matched as
            # literal prefixes here, so no correction is ever needed.
            c.getboolean("FILE", "CORRECT_FILE_PATTERN")

    def _timeout(self, section, fallback=None):
        if not self.config.has_option(section, "TIMEOUT"):
            return fallback
        raw = self.config.get(section, "TIMEOUT").strip()
        if raw.lower() in ("", "none"):
            return None
        seconds = self.config.getduration(section, "TIMEOUT")
        return seconds or None

    def _plan_modules(self):
        written_list = [w.strip().lower() for w in self.module_list]
        totals = {}
        for written in written_list:
            totals[canonical_name(written)] = totals.get(canonical_name(written), 0) + 1
        counts = {}
        occurrences = []
        for position, written in enumerate(written_list):
            name = canonical_name(written)
            counts[name] = counts.get(name, 0) + 1
            index = counts[name]
            repeated = totals[name] > 1
            candidates = []
            if repeated:
                candidates.append(f"{written}_run_{index}")
            if written != name:
                candidates.append(written)
            if repeated and written != name:
                candidates.append(f"{name}_run_{index}")
            candidates.append(name)
            section = next(
                (s.upper() for s in candidates if self.config.has_section(s)), name.upper()
            )
            runner = self.registry.load(name)
            occurrences.append(Occurrence(written, name, index, position, section, runner,
                                          repeated))
        return occurrences

    # -- per-module properties ------------------------------------------------------------
    def _prop_list(self, occ, key, runner_value):
        c = self.config
        if c.has_option(occ.section, key):
            value = c.getlist(occ.section, key)
        elif occ.position == 0 and c.has_option("FILE", key):
            value = c.getlist("FILE", key)
        elif runner_value:
            value = list(runner_value)
        else:
            value = c.getlist("FILE", key, fallback=[])
        value = value + c.getlist(occ.section, f"ADD_{key}", fallback=[])
        return value

    def numbering(self, occ):
        """NUMBERING_SCHEME of an occurrence (section > [FILE] if first > runner > [FILE])."""
        c = self.config
        if c.has_option(occ.section, "NUMBERING_SCHEME"):
            return c.get(occ.section, "NUMBERING_SCHEME").strip()
        if occ.position == 0 and c.has_option("FILE", "NUMBERING_SCHEME"):
            return c.get("FILE", "NUMBERING_SCHEME").strip()
        if occ.runner.numbering_scheme:
            return occ.runner.numbering_scheme
        return c.get("FILE", "NUMBERING_SCHEME", fallback=DEFAULT_NUMBERING).strip()

    def patterns(self, occ):
        """(FILE_PATTERN list, FILE_EXT list) of an occurrence."""
        return (
            self._prop_list(occ, "FILE_PATTERN", occ.runner.file_pattern),
            self._prop_list(occ, "FILE_EXT", occ.runner.file_ext),
        )

    def number_list(self, occ):
        """NUMBER_LIST of an occurrence (section, else [FILE] for the first module)."""
        c = self.config
        for section in (occ.section, "FILE" if occ.position == 0 else None):
            if section and c.has_option(section, "NUMBER_LIST"):
                return read_number_list(c.get(section, "NUMBER_LIST"),
                                        c.where(section, "NUMBER_LIST"))
        return None

    def input_specs(self, occ):
        """Where the inputs come from: list of ``(spec, origin_key)``."""
        c = self.config
        if c.has_option(occ.section, "INPUT_DIR"):
            specs = [(s, (occ.section, "INPUT_DIR")) for s in c.getlist(occ.section, "INPUT_DIR")]
        elif occ.position == 0:
            specs = [(s, ("FILE", "INPUT_DIR")) for s in self.input_dir]
        else:
            modules = c.getlist(occ.section, "INPUT_MODULE", fallback=occ.runner.input_module)
            if modules:
                specs = [(f"module:{m}", (occ.section, "INPUT_MODULE")) for m in modules]
            else:
                previous = self.occurrences[occ.position - 1]
                specs = [(f"module:{previous.dir_name}", (occ.section, "INPUT_DIR"))]
        specs += [(s, (occ.section, "ADD_INPUT_DIR"))
                  for s in c.getlist(occ.section, "ADD_INPUT_DIR", fallback=[])]
        return specs

    def _earlier(self, occ, module):
        """The earlier occurrence in this run that ``module`` names, or None."""
        base, n = split_run_suffix(module.strip().lower())
        base = canonical_name(base)
        for other in reversed(self.occurrences[: occ.position]):
            if other.name == base and (n is None or other.index == n):
                return other
        return None

    def resolve_inputs(self, occ, run_log, run_dir=None):
        """Resolve an occurrence's input directories.

        A module reference may name a sub-directory of the module's output
        (``last:setools_runner/rand_split``); without one, the output directory is followed
        by its immediate sub-directories (runners such as setools write into some).

        Returns
        -------
        list of str
            Directories; an item ``@<dir_name>`` stands for the output of an earlier
            occurrence of this run when ``run_dir`` is None (planning, dry run).
        """
        dirs = []
        for spec, (section, key) in self.input_specs(occ):
            where = self.config.where(section, key, spec.removeprefix("module:"))
            if spec.startswith("module:"):
                kind, run, module = "last", None, spec[len("module:"):]
            else:
                kind, run, module = parse_dir_spec(spec)
            if kind == "path":
                path = os.path.abspath(os.path.expanduser(spec))
                if os.path.isdir(path):
                    dirs.append(path)
                    continue
                kind, module = "this_run", spec  # a module that runs earlier in this run?
            module, subdir = _split_subdir(module)
            earlier = self._earlier(occ, module) if kind in ("last", "this_run") else None
            if earlier is not None:
                found = [self._module_output(earlier, run_dir)]
            elif kind == "this_run":
                raise ConfigError(f"{where}: directory not found")
            elif kind == "last":
                found = [run_log.last(module)] if run_log.last(module) else []
            elif kind == "all":
                found = run_log.all(module)
            else:
                found = [run_log.in_run(run, module)] if run_log.in_run(run, module) else []
            if not found:
                raise ConfigError(
                    f"{where}: {module} did not run earlier in this run and no successful "
                    f"run of it is recorded in {self.manifest}"
                    if spec.startswith("module:")
                    else f"{where}: no successful run of {module} found in {self.manifest}"
                )
            for directory in found:
                dirs.extend(_with_subdirs(directory, subdir))
        return dirs

    @staticmethod
    def _module_output(occ, run_dir):
        if run_dir is None:
            return f"@{occ.dir_name}"
        return os.path.join(run_dir, occ.dir_name, "output")

    def validate(self, run_log):
        """Check every module before any job runs (raises ConfigError on the first problem)."""
        for occ in self.occurrences:
            where = self.config.where("EXECUTION", "MODULE", occ.written)
            check_requirements(occ.runner, where)
            check_section_keys(self.config, occ.section, occ.runner.keys, self._warn)
            if occ.runner.validate_config is not None:
                try:
                    occ.runner.validate_config(self.config, occ.section)
                except ConfigError:
                    raise
                except Exception as exc:  # the runner's own check: report, do not crash
                    raise ConfigError(f"{self.config.where(occ.section)}: {exc}") from None
            patterns, exts = self.patterns(occ)
            if occ.runner.run_method != "serial" or patterns:
                if not patterns:
                    raise ConfigError(
                        f"{self.config.where(occ.section, 'FILE_PATTERN')}: {occ.name} declares "
                        "no file pattern; set FILE_PATTERN"
                    )
                if len(exts) not in (1, len(patterns)):
                    raise ConfigError(
                        f"{self.config.where(occ.section, 'FILE_EXT', ','.join(exts))}: "
                        f"expected {len(patterns)} extensions, one per FILE_PATTERN"
                    )
            self.number_list(occ)
            self._timeout(occ.section)
            self.resolve_inputs(occ, run_log)

    def _warn(self, message):
        self.warnings.append(message)
        self.log.warning(message)

    # -- dry run -------------------------------------------------------------------------
    def dry_run(self, run_log, stream=None):
        """Print, per module, the resolved input directories and the job list."""
        stream = stream or sys.stdout
        for occ in self.occurrences:
            dirs = self.resolve_inputs(occ, run_log)
            patterns, exts = self.patterns(occ)
            stream.write(f"== {occ.dir_name} ({occ.name} {occ.runner.version}, "
                         f"section [{occ.section}], {occ.runner.run_method})\n")
            for d in dirs:
                label = f"output of {d[1:]} in this run" if d.startswith("@") else d
                stream.write(f"   input: {label}\n")
            stream.write(f"   patterns: {list(zip(patterns, exts))}, "
                         f"numbering {self.numbering(occ)!r}\n")
            if any(d.startswith("@") for d in dirs):
                stream.write("   jobs: known once the earlier modules have run\n")
                continue
            binding = bind_files(dirs, patterns, exts, self.numbering(occ), self.number_list(occ),
                                 self.config.where(occ.section))
            numbers = binding.numbers
            stream.write(f"   jobs: {len(numbers)}"
                         + (" (serial: one job with every file)" if occ.runner.run_method
                            == "serial" else "") + "\n")
            for number in numbers:
                stream.write(f"     {number}: {', '.join(binding.jobs[number])}\n")
            if binding.missing:
                stream.write(f"   numbers missing for some pattern: {len(binding.missing)}\n")
                for number in sorted(binding.missing, key=natural_key):
                    stream.write(f"     {number}: no {', '.join(binding.missing[number])}\n")

    # -- execution -------------------------------------------------------------------------
    def run(self, executor_factory):
        """Create (or resume) the run directory and run every module.

        Returns
        -------
        int
            Exit code: 0 all jobs succeeded, 1 some job failed.
        """
        args = self.args
        if args.resume:
            run_dir = newest_run_dir(self.output_dir, self.run_name)
            if run_dir is None:
                raise ConfigError(
                    f"{self.path}: --resume: no run named {self.run_name!r} in {self.output_dir}"
                )
        else:
            run_dir = create_run_dir(self.output_dir, self.run_name, self.run_datetime)
        os.makedirs(os.path.join(run_dir, "logs"), exist_ok=True)
        os.makedirs(os.path.join(run_dir, "tmp"), exist_ok=True)
        self._attach_run_log(os.path.join(run_dir, "logs", self.log_name + ".log"))
        for message in self.warnings:  # already on the console: into the run log too
            self._file_log(f"WARNING {message}")
        self._save_config(run_dir)
        summary_path = os.path.join(run_dir, "summary.json")
        summary = _read_json(summary_path) if args.resume else {}
        summary.update({"run_dir": run_dir, "config": os.path.abspath(self.path),
                        "shapepipe_version": __version__, "mode": self.mode})
        modules_summary = summary.setdefault("modules", {})
        entry = {
            "run_dir": run_dir,
            "run_name": self.run_name,
            "config": os.path.abspath(self.path),
            "config_hash": _file_hash(self.path),
            "modules": [o.dir_name for o in self.occurrences],
            "status": {o.dir_name: "pending" for o in self.occurrences},
            "start": _now(),
            "end": None,
        }
        update_manifest(self.manifest, entry)
        self.log.info("shapepipe %s: run %s%s", __version__, run_dir,
                      " (resumed)" if args.resume else "")
        run_log = RunLog(self.manifest, current_run_dir=run_dir)
        any_failed = False
        try:
            for occ in self.occurrences:
                entry["status"][occ.dir_name] = "running"
                update_manifest(self.manifest, entry)
                record = self._run_module(occ, run_dir, run_log, executor_factory)
                modules_summary[occ.dir_name] = record
                entry["status"][occ.dir_name] = record["status"]
                any_failed |= record["status"] != "ok"
                _write_json(summary, summary_path)
                update_manifest(self.manifest, entry)
        except KeyboardInterrupt as exc:
            summary["interrupted"] = entry["interrupted"] = str(exc) or "SIGINT"
            raise
        finally:
            entry["end"] = _now()
            for name, status in entry["status"].items():
                if status in ("running", "pending"):
                    entry["status"][name] = "interrupted"
            update_manifest(self.manifest, entry)
            summary["exit_code"] = 1 if any_failed else 0
            _write_json(summary, summary_path)
        self.log.info("run finished: %s",
                      "some jobs FAILED" if any_failed else "all jobs succeeded")
        self.log.info("summary: %s", summary_path)
        return 1 if any_failed else 0

    def _run_module(self, occ, run_dir, run_log, executor_factory):
        start = time.perf_counter()
        module_dir = os.path.join(run_dir, occ.dir_name)
        for sub in ("output", "logs"):
            os.makedirs(os.path.join(module_dir, sub), exist_ok=True)
        record = {"runner": occ.name, "version": occ.runner.version, "section": occ.section,
                  "jobs": 0, "succeeded": 0, "failed": [], "resumed": 0, "missing_inputs": 0}
        self.log.info("== %s (%s %s)", occ.dir_name, occ.name, occ.runner.version)
        try:
            dirs = self.resolve_inputs(occ, run_log, run_dir)
            patterns, exts = self.patterns(occ)
            binding = bind_files(dirs, patterns, exts, self.numbering(occ), self.number_list(occ),
                                 self.config.where(occ.section))
        except ConfigError as exc:
            self.log.error("%s: %s", occ.dir_name, exc)
            record.update(status="failed", error=str(exc), time=time.perf_counter() - start)
            return record
        for d in dirs:
            self.log.info("   input dir: %s", d)
        if binding.missing:
            record["missing_inputs"] = len(binding.missing)
            self.log.warning(
                "%s: %d number(s) lack a file for some pattern and are not run (list in %s)",
                occ.dir_name, len(binding.missing), self.log_file,
            )
            for number in sorted(binding.missing, key=natural_key):
                self._file_log(f"   missing input: {number}: no "
                               + ", ".join(binding.missing[number]))
        if binding.excluded:
            self.log.warning("%s: NUMBER_LIST entries with no input files: %s",
                             occ.dir_name, ", ".join(binding.excluded))
        numbers = binding.numbers
        if not numbers:
            message = (f"no input files match patterns {patterns} / {exts} with numbering "
                       f"{self.numbering(occ)!r} in {', '.join(dirs)}")
            self.log.error("%s: %s", occ.dir_name, message)
            record.update(status="failed", error=message, time=time.perf_counter() - start)
            return record
        if occ.runner.run_method == "serial":
            jobs = [("_serial", [binding.jobs[n] for n in numbers])]
        else:
            jobs = [(n, binding.jobs[n]) for n in numbers]
        record["jobs"] = len(jobs)
        if self.args.resume:
            done = {n for n, (state, _) in read_records(
                os.path.join(module_dir, "logs", "jobs.txt")).items() if state == "done"}
            before = len(jobs)
            jobs = [job for job in jobs if job[0] not in done]
            record["resumed"] = before - len(jobs)
            if record["resumed"]:
                self.log.info("   resume: %d job(s) already complete", record["resumed"])
        ctx = ModuleContext(
            runner_name=occ.name,
            module_paths=self.registry.module_paths,
            module_dir=module_dir,
            run_dir=run_dir,
            run_log=self.manifest,
            section=occ.section,
            config=self.config,
            timeout=self._timeout(occ.section, self.timeout),
            verbose=self.verbose,
        )
        progress = job_handler.Progress(occ.dir_name, len(jobs), quiet=self.args.quiet)
        self.log.info("   %d job(s) to run", len(jobs))
        results = executor_factory(occ)(ctx, jobs, progress) if jobs else {}
        failed = [{"number": n, "error": results[n][1]}
                  for n in sorted(results, key=natural_key) if not results[n][0]]
        record["succeeded"] = record["resumed"] + sum(1 for r in results.values() if r[0])
        record["failed"] = failed
        for item in failed:
            self.log.error("   job %s failed: %s", item["number"], item["error"])
        if not failed:
            record["status"] = "ok"
        elif record["succeeded"]:
            record["status"] = "partial"
        else:
            record["status"] = "failed"
        record["time"] = round(time.perf_counter() - start, 3)
        self.log.info("   %s: %d succeeded, %d failed, %.2f s", occ.dir_name, record["succeeded"],
                      len(failed), record["time"])
        return record

    # -- logs -----------------------------------------------------------------------------
    def _attach_run_log(self, path):
        self.log_file = path
        handler = logging.FileHandler(path, mode="a", encoding="utf-8")
        handler.setLevel(logging.DEBUG)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        self.log.addHandler(handler)
        self._file_handler = handler

    def _file_log(self, message):
        record = logging.LogRecord("shapepipe", logging.INFO, "", 0, message, None, None)
        self._file_handler.handle(record)

    def _save_config(self, run_dir):
        with atomic_path(os.path.join(run_dir, "config.ini")) as tmp:
            with open(tmp, "w", encoding="utf-8") as handle:
                self.config.write(handle)


def _split_subdir(module):
    """``setools_runner/output/mask`` -> (``setools_runner``, ``mask``)."""
    module, _, subdir = module.strip().partition("/")
    subdir = subdir.strip("/")
    if subdir == "output" or subdir.startswith("output/"):
        subdir = subdir[len("output"):].strip("/")
    return module, subdir


def _with_subdirs(directory, subdir):
    """A module output directory, narrowed to ``subdir`` or followed by its sub-directories."""
    if subdir:
        return [directory + "/" + subdir if directory.startswith("@")
                else os.path.join(directory, subdir)]
    if directory.startswith("@") or not os.path.isdir(directory):
        return [directory]
    subdirs = sorted(e.path for e in os.scandir(directory)
                     if e.is_dir() and not e.name.startswith("."))
    return [directory, *subdirs]


def _now():
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _file_hash(path):
    with open(path, "rb") as handle:
        return "sha256:" + hashlib.sha256(handle.read()).hexdigest()


def _read_json(path):
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _write_json(data, path):
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2, sort_keys=True)
            handle.write("\n")


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
            ctx, jobs, progress, pipeline.workers, pipeline.backend, pipeline.log
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
    except KeyboardInterrupt as exc:
        log.error("interrupted")
        return getattr(exc, "exit_code", 130)
    finally:
        restore_signals()
        if mpi_state is not None and mpi_state.rank == 0:
            from shapepipe.pipeline import mpi

            mpi.stop_workers(mpi_state)


if __name__ == "__main__":
    sys.exit(main())
