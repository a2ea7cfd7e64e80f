"""The orchestration of a run: plan the modules, resolve their inputs, validate, run, record.

``shapepipe.run`` is the command line; this module is what it drives. It knows nothing about
astronomy: runners are loaded through the module registry and called by the job handler.
"""

import configparser
import hashlib
import json
import logging
import os
import sys
import time
from dataclasses import dataclass

from shapepipe import __version__
from shapepipe.pipeline import job_handler, split
from shapepipe.pipeline.config import check_section_keys, config_changes, read_saved_config
from shapepipe.pipeline.errors import ConfigError
from shapepipe.pipeline.file_handler import (
    bind_files,
    create_run_dir,
    natural_key,
    newest_run_dir,
    numbering_regex,
    read_number_list,
)
from shapepipe.pipeline.module_registry import (
    ModuleRegistry,
    canonical_name,
    check_requirements,
)
from shapepipe.pipeline.run_log import (
    RunLog,
    read_manifest,
    resolve_reference,
    update_manifest,
)
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
        self.warnings = []
        self.registry = ModuleRegistry(self.module_paths, self.path, warn=self._warn)
        self.occurrences = self._plan_modules()
        self.resume_target = None

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
        self.run_name = _name(c, "DEFAULT", "RUN_NAME", "shapepipe_run")
        self.run_datetime = c.getboolean("DEFAULT", "RUN_DATETIME", fallback=True)
        self.verbose = c.getboolean("DEFAULT", "VERBOSE", fallback=True)
        self.output_dir = os.path.abspath(os.path.expanduser(c.get("FILE", "OUTPUT_DIR")))
        self.input_dir = c.getlist("FILE", "INPUT_DIR")
        if not self.input_dir:
            raise ConfigError(f"{c.where('FILE', 'INPUT_DIR')}: expected at least one directory")
        self.log_name = _name(c, "FILE", "LOG_NAME", "shapepipe")
        self.run_log_name = _name(c, "FILE", "RUN_LOG_NAME", "shapepipe_runs")
        _check_output_dir(self.output_dir, c.where("FILE", "OUTPUT_DIR", c.get("FILE",
                                                                               "OUTPUT_DIR")))
        self.manifest = os.path.join(self.output_dir, self.run_log_name + ".jsonl")
        self.workers = c.getint("JOB", "SMP_BATCH_SIZE", fallback=1)
        if self.workers < 1:
            raise ConfigError(
                f"{c.where('JOB', 'SMP_BATCH_SIZE', str(self.workers))}: expected >= 1"
            )
        self.cores = os.cpu_count() or 1
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

    def _numbering_where(self, occ):
        """Where an occurrence's NUMBERING_SCHEME comes from, for messages."""
        c = self.config
        for section in (occ.section, "FILE" if occ.position == 0 else None):
            if section and c.has_option(section, "NUMBERING_SCHEME"):
                return c.where(section, "NUMBERING_SCHEME", c.get(section, "NUMBERING_SCHEME"))
        if occ.runner.numbering_scheme:
            return (f"{c.where('EXECUTION', 'MODULE', occ.written)}: the runner's "
                    f"numbering_scheme {occ.runner.numbering_scheme!r}")
        return c.where("FILE", "NUMBERING_SCHEME", self.numbering(occ))

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

    def n_split(self, occ):
        """N_SPLIT of an occurrence: the number of part jobs per number (1: not split).

        Raises
        ------
        ConfigError
            Not an integer >= 1, or set for a runner that declares no ``combine``.
        """
        c = self.config
        if not c.has_option(occ.section, "N_SPLIT"):
            return 1
        raw = c.get(occ.section, "N_SPLIT")
        where = c.where(occ.section, "N_SPLIT", raw)
        if occ.runner.combine is None:
            raise ConfigError(f"{where}: {occ.name} cannot split its jobs (its @module_runner "
                              "declares no combine)")
        try:
            k = int(raw.strip())
        except ValueError:
            k = 0
        if k < 1:
            raise ConfigError(f"{where}: expected an integer >= 1")
        return k

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

    def resolve_inputs(self, occ, run_log, run_dir=None):
        """Resolve an occurrence's input directories (rules: ``run_log.resolve_reference``).

        A module reference may name a sub-directory of the module's output
        (``last:setools_runner/rand_split``); without one, the output directory is followed
        by its immediate sub-directories (runners such as setools write into some).

        Returns
        -------
        list of str
            Directories; an item ``@<dir_name>`` stands for the output of an earlier
            occurrence of this run when ``run_dir`` is None (planning, dry run).
        """
        earlier = [o.dir_name for o in self.occurrences[: occ.position]]
        dirs = []
        for spec, (section, key) in self.input_specs(occ):
            module_ref = spec.startswith("module:")
            spec = spec.removeprefix("module:")
            try:
                dirs.extend(resolve_reference(spec, run_log, earlier, run_dir,
                                              expand_subdirs=True, module_ref=module_ref))
            except ConfigError as exc:
                raise ConfigError(f"{self.config.where(section, key, spec)}: {exc}") from None
        return dirs

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
            try:
                numbering_regex(self.numbering(occ))
            except ValueError as exc:
                raise ConfigError(f"{self._numbering_where(occ)}: {exc}") from None
            self.n_split(occ)
            self._timeout(occ.section)
            self.resolve_inputs(occ, run_log)
        if getattr(self.args, "resume", False):
            self.find_resume()
        if self.mode == "SMP" and self.workers > self.cores:
            self._warn(f"{self.config.where('JOB', 'SMP_BATCH_SIZE', str(self.workers))}: more "
                       f"workers than the {self.cores} cores of this machine (each module "
                       "uses at most one worker per job)")

    def smp_workers(self, n_jobs):
        """Worker processes for a module of ``n_jobs`` jobs: SMP_BATCH_SIZE, at most one per job.

        A pool larger than the job count only costs memory and start-up time (1000 workers
        asked for 2 jobs started 120 processes and grew past 2 GB).
        """
        return max(1, min(self.workers, n_jobs))

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
            k = self.n_split(occ) if occ.runner.run_method != "serial" else 1
            stream.write(f"   jobs: {len(numbers)}"
                         + (" (serial: one job with every file)" if occ.runner.run_method
                            == "serial" else "")
                         + (f" x {k} parts (N_SPLIT), then combined" if k > 1 else "") + "\n")
            for number in numbers:
                stream.write(f"     {number}: {', '.join(binding.jobs[number])}\n")
            if binding.missing:
                stream.write(f"   numbers missing for some pattern: {len(binding.missing)}\n")
                for number in sorted(binding.missing, key=natural_key):
                    stream.write(f"     {number}: no {', '.join(binding.missing[number])}\n")

    # -- resume ----------------------------------------------------------------------------
    def find_resume(self):
        """The run ``--resume`` continues, checked against this config (before any job).

        The newest run of this RUN_NAME in the manifest (the order runs were started in;
        directory times change when files are added, so they are not used), else, for a
        run the manifest does not know, the newest directory of that name.

        Returns
        -------
        tuple
            ``(run_dir, manifest entry or None, changed settings)``; the changes are empty
            unless ``--force`` accepted them.

        Raises
        ------
        ConfigError
            No such run, or the config differs from the one the run was started with and
            ``--force`` was not given (the message lists the sections and keys changed).
        """
        entries = [e for e in read_manifest(self.manifest)
                   if e.get("run_name") == self.run_name
                   and os.path.dirname(os.path.abspath(e.get("run_dir", "/"))) == self.output_dir
                   and os.path.isdir(e["run_dir"])]
        previous = entries[-1] if entries else None
        run_dir = previous["run_dir"] if previous else newest_run_dir(self.output_dir,
                                                                       self.run_name)
        if run_dir is None:
            raise ConfigError(
                f"{self.path}: --resume: no run named {self.run_name!r} in {self.output_dir}")
        saved = os.path.join(run_dir, "config.ini")
        if os.path.isfile(saved):
            try:
                changes = config_changes(read_saved_config(saved), self.config)
            except (configparser.Error, UnicodeDecodeError) as exc:
                raise ConfigError(f"{saved}: --resume: cannot read the run's saved config "
                                  f"({' '.join(str(exc).split())})") from None
        elif previous and previous.get("config_hash") not in (None, _file_hash(self.path)):
            changes = [f"{self.path} (hash differs from {previous['config_hash']})"]
        else:
            changes = []
        if changes and not self.args.force:
            shown = "; ".join(changes[:8]) + (f"; and {len(changes) - 8} more"
                                               if len(changes) > 8 else "")
            raise ConfigError(
                f"{self.path}: --resume: the config differs from the one {run_dir} was started "
                f"with: {shown}. Resume with it anyway with --resume --force, or run without "
                "--resume"
            )
        self.resume_target = (os.path.abspath(run_dir), previous, changes)
        return self.resume_target

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
            run_dir, previous, changes = self.resume_target or self.find_resume()
        else:
            run_dir = create_run_dir(self.output_dir, self.run_name, self.run_datetime)
        os.makedirs(os.path.join(run_dir, "logs"), exist_ok=True)
        os.makedirs(os.path.join(run_dir, "tmp"), exist_ok=True)
        self._attach_run_log(os.path.join(run_dir, "logs", self.log_name + ".log"))
        for message in self.warnings:  # already on the console: into the run log too
            self._file_log(f"WARNING {message}")
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
        if args.resume:
            # The run keeps its identity: original config, hash and start time. A resume
            # is recorded beside it; a forced one with its own copy of the config.
            resume = {"time": _now(), "config": os.path.abspath(self.path),
                      "config_hash": entry["config_hash"]}
            if changes:
                resume.update(forced=True, changed=changes,
                              saved_as=self._save_config(run_dir, resumed=True))
                self.log.warning("--resume --force: the config differs from the run's "
                                 "(%d setting(s)); saved as %s", len(changes),
                                 resume["saved_as"])
                for change in changes:
                    self._file_log(f"   resumed with changed setting: {change}")
            if not os.path.isfile(os.path.join(run_dir, "config.ini")):
                self._save_config(run_dir)
            if previous:
                for key in ("config", "config_hash", "start"):
                    entry[key] = previous.get(key, entry[key])
                entry["resumes"] = previous.get("resumes", [])
            entry.setdefault("resumes", []).append(resume)
        else:
            self._save_config(run_dir)
        summary_path = os.path.join(run_dir, "summary.json")
        summary = _read_json(summary_path) if args.resume else {}
        summary.update({"run_dir": run_dir, "shapepipe_version": __version__, "mode": self.mode})
        summary.setdefault("config", os.path.abspath(self.path))
        if args.resume:
            summary["resumes"] = entry["resumes"]
        modules_summary = summary.setdefault("modules", {})
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
        except KeyboardInterrupt as exc:  # SIGINT or SIGTERM: recorded, then the exit code
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
        k = self.n_split(occ)
        if occ.runner.run_method == "serial":
            jobs = [("_serial", [binding.jobs[n] for n in numbers])]
        elif k > 1:
            jobs = split.part_jobs(numbers, binding.jobs, k)
            record.update(split=k, numbers=len(numbers), combined=0)
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
            split=k,
        )
        progress = job_handler.Progress(occ.dir_name, len(jobs), quiet=self.args.quiet)
        self.log.info("   %d job(s) to run", len(jobs))
        results = executor_factory(occ)(ctx, jobs, progress) if jobs else {}
        failed = [{"number": n, "error": results[n][1]}
                  for n in sorted(results, key=natural_key) if not results[n][0]]
        record["succeeded"] = record["resumed"] + sum(1 for r in results.values() if r[0])
        if k > 1 and occ.runner.run_method != "serial":
            failed = [dict(zip(("number", "part"), split.parse_part_key(f["number"])[:2]),
                           error=f["error"]) for f in failed]
            failed += self._combine(occ, ctx, numbers, k, record)
        record["failed"] = failed
        for item in failed:
            part = f" (part {item['part']})" if "part" in item else ""
            self.log.error("   job %s%s failed: %s", item["number"], part, item["error"])
        # A split module's outputs are its combined numbers: none combined, nothing to use.
        useful = record["combined"] if "combined" in record else record["succeeded"]
        if not failed:
            record["status"] = "ok"
        elif useful:
            record["status"] = "partial"
        else:
            record["status"] = "failed"
        record["time"] = round(time.perf_counter() - start, 3)
        self.log.info("   %s: %d succeeded, %d failed, %.2f s", occ.dir_name, record["succeeded"],
                      len(failed), record["time"])
        return record

    def _combine(self, occ, ctx, numbers, k, record):
        """Combine the parts of every number whose k parts all succeeded (main process).

        Numbers combined in an earlier attempt (``--resume``) are counted, not redone.

        Returns
        -------
        list of dict
            Failure records of the combines that failed.
        """
        records = read_records(ctx.record_path)
        ready = split.pending_combines(records, numbers, k)
        already = sum(1 for n in numbers
                      if records.get(split.combine_key(n, k), ("",))[0] == "done")
        failed = []
        for number in ready:
            ok, error, _ = split.run_combine(ctx, occ.runner.combine, number, k)
            if ok:
                already += 1
            else:
                failed.append({"number": number, "part": "combine", "error": error})
        record["combined"] = already
        if ready:
            self.log.info("   combined the %d parts of %d number(s), %d failed", k,
                          len(ready) - len(failed), len(failed))
        return failed

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

    def _save_config(self, run_dir, resumed=False):
        """Save the config as read (expanded) into the run directory; never overwrite.

        ``config.ini`` is the config the run was started with; a forced resume with a
        different config saves it as ``config_resume_<k>.ini`` (k = 1, 2, ...).

        Returns
        -------
        str
            The file name written.
        """
        name, k = "config.ini", 0
        while resumed and (k == 0 or os.path.exists(os.path.join(run_dir, name))):
            k += 1
            name = f"config_resume_{k}.ini"
        path = os.path.join(run_dir, name)
        with atomic_path(path) as tmp:
            with open(tmp, "w", encoding="utf-8") as handle:
                self.config.write(handle)
        return name


def _name(config, section, key, default):
    """A value used as a file or directory name: no path separators, no ``..``."""
    value = config.get(section, key, fallback=default).strip()
    if not value or "/" in value or "\\" in value or ".." in value or "\0" in value:
        raise ConfigError(f"{config.where(section, key, value)}: expected a name (it names a "
                          "file or directory: no '/', '\\' or '..')")
    return value


def _check_output_dir(path, where):
    """OUTPUT_DIR must be a directory, or creatable: checked before any run directory."""
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise ConfigError(f"{where}: exists and is not a directory")
        if not os.access(path, os.W_OK | os.X_OK):
            raise ConfigError(f"{where}: directory is not writable")
        return
    parent = os.path.dirname(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{where}: cannot be created ({parent} is not a writable directory)")


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
