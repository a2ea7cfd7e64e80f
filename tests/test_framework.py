"""Tests of the pipeline framework: configs, inputs, numbering, runs, jobs, plugins."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from shapepipe.pipeline.config import Key, ShapePipeConfig, check_section_keys, read_config
from shapepipe.pipeline.errors import ConfigError, ExecutionError
from shapepipe.pipeline.execute import execute
from shapepipe.pipeline.file_handler import bind_files, create_run_dir, numbering_regex
from shapepipe.pipeline.module_registry import ModuleRegistry
from shapepipe.run import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# -- configuration -------------------------------------------------------------------------
def test_config_env_expansion_and_types(tmp_path, monkeypatch):
    monkeypatch.setenv("SP_TEST_DIR", "/data/x")
    path = tmp_path / "c.ini"
    path.write_text("[A]\nDIR = $SP_TEST_DIR/sub\nOTHER = ${SP_TEST_DIR}y\nN = 3\nF = 1e-3\n"
                    "B = yes\nL = a, b ,c\nT = 01:02:03\nCOST = $$5\n")
    config = read_config(str(path))
    assert config.get("A", "dir") == "/data/x/sub"
    assert config.get("a", "OTHER") == "/data/xy"  # sections and keys are case-insensitive
    assert config.getint("A", "N") == 3
    assert config.getfloat("A", "F") == 1e-3
    assert config.getboolean("A", "B") is True
    assert config.getlist("A", "L") == ["a", "b", "c"]
    assert config.getduration("A", "T") == 3723
    assert config.get("A", "COST") == "$5"


def test_config_unset_variable_names_it(tmp_path, monkeypatch):
    monkeypatch.delenv("SP_NOT_SET_XYZ", raising=False)
    path = tmp_path / "c.ini"
    path.write_text("[FILE]\nINPUT_DIR = $SP_NOT_SET_XYZ/in\n")
    with pytest.raises(ConfigError, match=r"c.ini \[FILE\] INPUT_DIR.*SP_NOT_SET_XYZ is not set"):
        read_config(str(path))


def test_config_type_error_names_file_section_key_value(tmp_path):
    path = tmp_path / "c.ini"
    path.write_text("[MOD]\nN = three\n")
    config = read_config(str(path))
    with pytest.raises(ConfigError) as err:
        config.getint("MOD", "N")
    assert str(err.value) == f"{path} [MOD] N = 'three': expected an integer"


def test_declared_keys_missing_wrong_and_unknown():
    config = ShapePipeConfig("x.ini")
    config.read_string("[M]\nA = 1.5\nB = notanint\nZZZ = 1\n")
    warnings = []
    with pytest.raises(ConfigError, match=r"\[M\] B = 'notanint': expected an integer"):
        check_section_keys(config, "M", [Key("A", "float"), Key("B", "int")], warnings.append)
    with pytest.raises(ConfigError, match=r"\[M\] C: required key is missing"):
        check_section_keys(config, "M", [Key("A", "float"), Key("C", "str")], warnings.append)
    check_section_keys(config, "M", [Key("A", "float"), Key("B", "str")], warnings.append)
    assert len(warnings) == 1 and "ZZZ: unknown key" in warnings[0]
    values = config.read_keys("M", [Key("A", "float"), Key("D", "int", default=7)])
    assert values == {"A": 1.5, "D": 7}


def test_choices_are_checked():
    config = ShapePipeConfig("x.ini")
    config.read_string("[M]\nMODE = FOO\n")
    with pytest.raises(ConfigError, match="expected one of CLASSIC, VALIDATION"):
        config.get_key("M", Key("MODE", choices=["CLASSIC", "VALIDATION"]))


# -- numbering and binding -----------------------------------------------------------------
@pytest.mark.parametrize(
    "scheme, good, bad",
    [
        ("-0000000-0", ["-2000001-0", "-2000001-39"], ["-200001-0", "-2000001-", "_2000001-1"]),
        ("_0", ["_0", "_123"], ["-1", "_a"]),
        ("-000-000", ["-277-282"], ["-27-282", "-277-2821"]),
        (r"RE:\.\d{3}\.\d{3}", [".277.282"], ["-277-282"]),
    ],
)
def test_numbering_schemes(scheme, good, bad):
    regex = numbering_regex(scheme)
    assert all(regex.fullmatch(s) for s in good)
    assert not any(regex.fullmatch(s) for s in bad)


def test_binding_intersection_compound_ext_and_missing(tmp_path):
    for number in ("-0000001-0", "-0000001-1", "-0000002-0"):
        (tmp_path / f"image{number}.fits.fz").write_text("x")
    for number in ("-0000001-0", "-0000002-0", "-0000003-0"):
        (tmp_path / f"weight{number}.fits.fz").write_text("x")
    (tmp_path / "image-0000004-0.fits").write_text("x")  # wrong extension: ignored
    binding = bind_files([str(tmp_path)], ["image", "weight"], [".fits.fz", ".fits.fz"],
                         "-0000000-0")
    assert binding.numbers == ["-0000001-0", "-0000002-0"]
    assert binding.missing == {"-0000001-1": ["weight"], "-0000003-0": ["image"]}
    assert binding.jobs["-0000001-0"][1].endswith("weight-0000001-0.fits.fz")


def test_binding_first_directory_wins_and_number_list(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    (a / "in_1.txt").write_text("a")
    (b / "in_1.txt").write_text("b")
    (b / "in_2.txt").write_text("b")
    binding = bind_files([str(a), str(b)], ["in"], [".txt"], "_0")
    assert binding.jobs["_1"] == [str(a / "in_1.txt")]
    binding = bind_files([str(a), str(b)], ["in"], [".txt"], "_0", number_list=["_2", "_9"])
    assert binding.numbers == ["_2"] and binding.excluded == ["_9"]


def test_natural_job_order(tmp_path):
    for n in (1, 2, 10):
        (tmp_path / f"in_{n}.txt").write_text("x")
    assert bind_files([str(tmp_path)], ["in"], [".txt"], "_0").numbers == ["_1", "_2", "_10"]


def test_run_dirs_never_collide(tmp_path):
    names = {create_run_dir(str(tmp_path), "run") for _ in range(5)}
    assert len(names) == 5
    assert len({create_run_dir(str(tmp_path), "fixed", with_datetime=False) for _ in range(3)}) == 3


# -- end to end: jobs, failures, exit codes ------------------------------------------------
def test_run_outputs_logs_summary_manifest(sp):
    sp.make_inputs(["_1", "_2", "_3"])
    assert sp.run(sp.config("")) == 0
    run_dir = sp.runs()[-1]
    assert sp.outputs() == ["copy_1.txt", "copy_2.txt", "copy_3.txt"]
    logs = os.listdir(os.path.join(run_dir, "tp_copy_runner", "logs"))
    assert {"process_1.log", "process_2.log", "process_3.log"} <= set(logs)
    assert os.path.isfile(os.path.join(run_dir, "logs", "shapepipe.log"))
    assert os.path.isfile(os.path.join(run_dir, "config.ini"))
    summary = sp.summary()
    module = summary["modules"]["tp_copy_runner"]
    assert (module["jobs"], module["succeeded"], module["failed"]) == (3, 3, [])
    manifest = [json.loads(x) for x in open(sp.out / "shapepipe_runs.jsonl")]
    assert len(manifest) == 1
    assert manifest[0]["run_dir"] == run_dir and manifest[0]["status"] == {"tp_copy_runner": "ok"}
    assert not [f for f in os.listdir(os.path.join(run_dir, "tp_copy_runner", "output"))
                if f.startswith(".")]  # no staging left behind


def test_failing_job_is_isolated_and_exit_code_1(sp):
    sp.make_inputs(["_1", "_2", "_3", "_4"])
    cfg = sp.config("[TP_COPY_RUNNER]\nFAIL_ON = _2\nEXIT_CODE_ON = _3\n")
    assert sp.run(cfg) == 1
    assert sp.outputs() == ["copy_1.txt", "copy_4.txt"]  # failed jobs leave no output
    failed = {f["number"]: f["error"] for f in sp.summary()["modules"]["tp_copy_runner"]["failed"]}
    assert "asked to fail on _2" in failed["_2"]
    assert "exit code 3" in failed["_3"] and "broken input" in failed["_3"]
    manifest = json.loads(open(sp.out / "shapepipe_runs.jsonl").readline())
    assert manifest["status"]["tp_copy_runner"] == "partial"
    log = open(os.path.join(sp.runs()[-1], "tp_copy_runner", "logs", "process_2.log")).read()
    assert "Traceback" in log and "ValueError" in log


@pytest.mark.parametrize(
    "body, message",
    [
        ("[TP_COPY_RUNNER]\nSLEEP = abc\n", "[TP_COPY_RUNNER] SLEEP = 'abc': expected a number"),
        ("[JOB]\nTIMEOUT = soon\n", "[JOB] TIMEOUT = 'soon': expected a duration"),
    ],
)
def test_config_errors_exit_2_before_any_job(sp, capsys, body, message):
    sp.make_inputs(["_1"])
    path = sp.config(body)
    assert main(["-c", path]) == 2
    out = capsys.readouterr().out
    assert message in out and path in out
    assert not sp.runs()  # nothing was created


def test_unknown_module_missing_section_and_bad_last(sp, capsys):
    sp.make_inputs(["_1"])
    assert main(["-c", sp.config("", modules="no_such_runner")]) == 2
    assert "MODULE = 'no_such_runner': unknown module" in capsys.readouterr().out
    path = sp.tmp / "bad.ini"
    path.write_text("[EXECUTION]\nMODULE = tp_copy_runner\n")
    assert main(["-c", str(path)]) == 2
    assert "section [FILE] is missing" in capsys.readouterr().out
    cfg = sp.config("[TP_COPY_RUNNER]\nINPUT_DIR = last:tp_serial_runner\n")
    assert main(["-c", cfg]) == 2
    assert "INPUT_DIR = 'last:tp_serial_runner': no successful run" in capsys.readouterr().out


def test_missing_executable_and_package_are_config_errors(sp, tmp_path, capsys):
    plugin = tmp_path / "plug"
    plugin.mkdir()
    (plugin / "needy_runner.py").write_text(
        "from shapepipe.modules.module_decorator import module_runner\n"
        "@module_runner(file_pattern='in', file_ext='.txt', depends=['no_such_pkg_xyz'],"
        " executes=['no-such-program-xyz'])\n"
        "def needy_runner(*args):\n    return None, None\n")
    sp.make_inputs(["_1"])
    cfg = sp.config(f"[EXECUTION]\nMODULE_PATH = {plugin}\n", modules="needy_runner")
    assert main(["-c", cfg]) == 2
    assert "needs the Python package 'no_such_pkg_xyz'" in capsys.readouterr().out


def test_unknown_key_warns(sp, capsys):
    sp.make_inputs(["_1"])
    assert main(["-c", sp.config("[TP_COPY_RUNNER]\nSLEPE = 1\n")]) == 0
    assert "[TP_COPY_RUNNER] SLEPE: unknown key" in capsys.readouterr().out


def test_missing_numbers_reported_not_dropped_silently(sp, capsys):
    sp.make_inputs(["_1", "_2"])
    sp.make_inputs(["_1"], pattern="other")
    cfg = sp.config("[TP_COPY_RUNNER]\nFILE_PATTERN = in, other\nFILE_EXT = .txt, .txt\n")
    assert main(["-c", cfg]) == 0
    out = capsys.readouterr().out
    assert "1 number(s) lack a file for some pattern" in out
    log = open(os.path.join(sp.runs()[-1], "logs", "shapepipe.log")).read()
    assert "missing input: _2: no other" in log
    assert sp.summary()["modules"]["tp_copy_runner"]["missing_inputs"] == 1


# -- chaining ------------------------------------------------------------------------------
def test_chain_in_one_run_run_n_sections_and_serial(sp):
    sp.make_inputs(["_1", "_2"])
    cfg = sp.config(
        "[TP_COPY_RUNNER]\nSLEEP = 0\n"
        "[TP_COPY_RUNNER_RUN_2]\nINPUT_MODULE = tp_copy_runner\nFILE_PATTERN = copy\n",
        modules="tp_copy_runner, tp_copy_runner, tp_serial_runner",
    )
    assert sp.run(cfg) == 0
    run_dir = sp.runs()[-1]
    second = open(os.path.join(run_dir, "tp_copy_runner_run_2", "output", "copy_1.txt")).read()
    assert "section=TP_COPY_RUNNER\n" in second and "section=TP_COPY_RUNNER_RUN_2" in second
    # The serial runner's default input_module is the latest occurrence of tp_copy_runner.
    listing = open(os.path.join(run_dir, "tp_serial_runner", "output", "all.txt")).read()
    assert listing == "copy_1.txt\ncopy_2.txt\n"
    # As in ShapePipe: a repeated runner is numbered from its first occurrence on.
    assert set(sp.summary()["modules"]) == {"tp_copy_runner_run_1", "tp_copy_runner_run_2",
                                            "tp_serial_runner"}


def test_run_n_section_falls_back_to_plain_section(sp):
    sp.make_inputs(["_1"])
    cfg = sp.config(f"[TP_COPY_RUNNER]\nFILE_PATTERN = in, copy\nFILE_EXT = .txt\n"
                    f"ADD_INPUT_DIR = {sp.data}\n", modules="tp_copy_runner, tp_copy_runner")
    # run 2 reads [TP_COPY_RUNNER] (no _RUN_2 section): pattern "in, copy" over both dirs.
    sp.make_inputs(["_1"], pattern="copy")
    assert sp.run(cfg) == 0
    out = open(os.path.join(sp.runs()[-1], "tp_copy_runner_run_2", "output", "copy_1.txt")).read()
    assert out.count("section=TP_COPY_RUNNER\n") == 2


def _input_dirs(run_dir):
    """The input directories a run's modules read, as its run log lists them."""
    with open(os.path.join(run_dir, "logs", "shapepipe.log")) as handle:
        return [line.split("input dir: ", 1)[1].strip() for line in handle
                if "input dir: " in line]


def test_last_all_and_run_forms_across_runs(sp):
    sp.make_inputs(["_1", "_2"])
    assert sp.run(sp.config("")) == 0
    run_a = sp.runs()[-1]
    time.sleep(0.01)
    assert sp.run(sp.config("[TP_COPY_RUNNER]\nFAIL_ON = _1, _2\n")) == 1  # wholly failed
    time.sleep(0.01)
    assert sp.run(sp.config("[TP_COPY_RUNNER]\nNUMBER_LIST = _1\n")) == 0  # only copy_1
    run_c = sp.runs()[-1]
    out_a, out_c = (os.path.join(r, "tp_copy_runner", "output") for r in (run_a, run_c))

    def serial(spec, **kwargs):
        assert sp.run(sp.config("", modules="tp_serial_runner", input_dir=spec, **kwargs)) == 0
        run = sp.runs()[-1]
        listing = open(os.path.join(run, "tp_serial_runner", "output", "all.txt")).read()
        return _input_dirs(run), listing

    # last: the newest run where the module succeeded (the failed run is skipped).
    assert serial("last:tp_copy_runner") == ([out_c], "copy_1.txt\n")
    # all: every successful run, newest first (the first directory holding a number wins).
    assert serial("all:tp_copy_runner") == ([out_c, out_a], "copy_1.txt\ncopy_2.txt\n")
    # <run>:<module> by run directory name and by path: that run only.
    for spec in (f"{os.path.basename(run_a)}:tp_copy_runner", f"{run_a}:tp_copy_runner"):
        assert serial(spec) == ([out_a], "copy_1.txt\ncopy_2.txt\n"), spec
    # A runner's input_module (tp_copy_runner), in a later position, not run earlier in this
    # run: last:.
    assert sp.run(sp.config("", modules="tp_split_runner, tp_serial_runner")) == 0
    assert _input_dirs(sp.runs()[-1]) == [str(sp.data), out_c]


def test_dry_run_lists_jobs_and_writes_nothing(sp, capsys):
    sp.make_inputs(["_1", "_2"])
    assert main(["-c", sp.config("", modules="tp_copy_runner, tp_serial_runner"),
                 "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "jobs: 2" in out and "in_1.txt" in out and "output of tp_copy_runner in this run" in out
    assert not os.path.exists(sp.out) or not sp.runs()


# -- plugins and aliases -------------------------------------------------------------------
def test_list_modules_shows_builtin_path_and_entry_points(sp, capsys, tmp_path, monkeypatch):
    dist = tmp_path / "site" / "sp_plugin_demo-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: sp-plugin-demo\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[shapepipe.modules]\nep_demo_runner = sp_plugin_demo:ep_demo_runner\n")
    (tmp_path / "site" / "sp_plugin_demo.py").write_text(
        "import os\nfrom shapepipe.modules.module_decorator import module_runner\n"
        "@module_runner(version='9.9', file_pattern='in', file_ext='.txt', numbering_scheme='_0')\n"
        "def ep_demo_runner(files, run_dirs, num, config, sec, log):\n"
        "    open(os.path.join(run_dirs['output'], 'ep' + num + '.txt'), 'w').write('x')\n"
        "    return None, None\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert main(["--list-modules", "-c", sp.config("")]) == 0
    out = capsys.readouterr().out
    assert "python_example_runner" in out and "tp_copy_runner" in out
    assert "ep_demo_runner" in out and "9.9" in out
    sp.make_inputs(["_1", "_2"])
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "site"))  # for the worker processes
    assert sp.run(sp.config("", modules="ep_demo_runner")) == 0
    assert sp.outputs("ep_demo_runner") == ["ep_1.txt", "ep_2.txt"]


def test_aliases_resolve():
    registry = ModuleRegistry()
    assert registry.load("python_example_runner").module_name == "python_example_runner"
    from shapepipe.pipeline.module_registry import canonical_name

    assert canonical_name("psfexinterp_runner") == "psfex_interp_runner"
    assert canonical_name("make_cat_runner") == "make_catalog_runner"
    assert canonical_name("vignetmaker_runner2") == "vignetmaker_runner"


# -- timeouts, execute, resume ---------------------------------------------------------------
def test_execute_raises_with_stderr():
    out, _ = execute(["echo", "hi"])
    assert out == "hi\n"
    with pytest.raises(ExecutionError, match="exit code 4: bad thing"):
        execute(["sh", "-c", "echo bad thing >&2; exit 4"])
    with pytest.raises(ExecutionError, match="program not found"):
        execute(["no-such-program-xyz"])


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purpose.
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("workers", [1, 2])
def test_timeout_kills_job_and_external_children(sp, workers):
    sp.make_inputs(["_1", "_2"])
    cfg = sp.config("[JOB]\nTIMEOUT = 1\n[TP_COPY_RUNNER]\nCHILD_SLEEP = 30\n",
                    workers=workers)
    start = time.time()
    assert sp.run(cfg) == 1
    assert time.time() - start < 15
    failed = sp.summary()["modules"]["tp_copy_runner"]["failed"]
    assert [f["error"] for f in failed] == ["timeout after 1 s"] * 2
    log_dir = os.path.join(sp.runs()[-1], "tp_copy_runner", "logs")
    for number in ("_1", "_2"):
        pid = int(open(os.path.join(log_dir, f"sleep{number}.pid")).read())
        assert not _pid_alive(pid), "the external child survived the timeout"


STUCK_RUNNER = """
import os, signal, time
from shapepipe.modules.module_decorator import module_runner

@module_runner(file_pattern="in", file_ext=".txt", numbering_scheme="_0")
def stuck_runner(files, run_dirs, number, config, section, log):
    if number == "_1":  # blocks the alarm, like compiled code that never returns to Python
        signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGALRM])
        time.sleep(60)
    open(os.path.join(run_dirs["output"], "done" + number + ".txt"), "w").write(number)
    return None, None
"""


def test_hard_timeout_kills_stuck_worker_and_others_continue(sp, tmp_path, monkeypatch):
    monkeypatch.setenv("SHAPEPIPE_HARD_KILL_GRACE", "1")
    plugin = tmp_path / "stuck_plugin"
    plugin.mkdir()
    (plugin / "stuck_runner.py").write_text(STUCK_RUNNER)
    sp.make_inputs(["_1", "_2", "_3", "_4", "_5"])
    cfg = sp.config(f"[EXECUTION]\nMODULE_PATH = {plugin}\n[JOB]\nTIMEOUT = 1\n",
                    modules="stuck_runner", workers=2)
    start = time.time()
    assert sp.run(cfg) == 1
    assert time.time() - start < 20
    failed = sp.summary()["modules"]["stuck_runner"]["failed"]
    assert [f["number"] for f in failed] == ["_1"]
    assert "timeout after 1 s" in failed[0]["error"]
    # The other jobs, on both workers, before and after the kill, all completed.
    # (staging left by the killed job, ".job_1", is the reliability work's to clean up)
    done = [f for f in sp.outputs("stuck_runner") if not f.startswith(".")]
    assert done == [f"done_{i}.txt" for i in range(2, 6)]


def test_no_timeout_means_no_limit(sp):
    sp.make_inputs(["_1"])
    assert sp.run(sp.config("[TP_COPY_RUNNER]\nSLEEP = 1.5\n", workers=1)) == 0


def test_resume_after_sigkill_runs_only_missing_jobs(sp):
    numbers = [f"_{i}" for i in range(1, 9)]
    sp.make_inputs(numbers)
    cfg = sp.config("[TP_COPY_RUNNER]\nSLEEP = 0.6\n", workers=2)
    proc = subprocess.Popen([sys.executable, os.path.join(REPO, "shapepipe_run.py"), "-c", cfg,
                             "-q"], start_new_session=True, cwd=REPO)
    run_dir = None
    deadline = time.time() + 30
    while time.time() < deadline:
        runs = sp.runs()
        if runs:
            out = os.path.join(runs[-1], "tp_copy_runner", "output")
            if os.path.isdir(out) and len([f for f in os.listdir(out) if f.endswith(".txt")]) >= 2:
                run_dir = runs[-1]
                break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert run_dir is not None
    out = os.path.join(run_dir, "tp_copy_runner", "output")
    before = {f for f in os.listdir(out) if f.endswith(".txt")}
    assert 2 <= len(before) < len(numbers)
    # Nothing half-written under a final name: every visible output is complete.
    for name in before:
        assert open(os.path.join(out, name)).read().endswith("section=TP_COPY_RUNNER\n")
    assert main(["-c", cfg, "-q", "--resume"]) == 0
    assert sp.runs()[-1] == run_dir  # same run directory
    assert sorted(f for f in os.listdir(out) if f.endswith(".txt")) == sorted(
        f"copy{n}.txt" for n in numbers)
    records = open(os.path.join(run_dir, "tp_copy_runner", "logs", "jobs.txt")).read().split("\n")
    starts = [line.split("\t")[1] for line in records if line.startswith("start")]
    completed_first = {name[4:-4] for name in before}
    for number in completed_first:
        assert starts.count(number) == 1, f"{number} ran again after resume"
    summary = sp.summary(run_dir)["modules"]["tp_copy_runner"]
    assert summary["succeeded"] == len(numbers) and summary["resumed"] >= len(before)


def test_console_script_and_version():
    out = subprocess.run([sys.executable, os.path.join(REPO, "shapepipe_run.py"), "--version"],
                         capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("shapepipe ")
    out = subprocess.run([sys.executable, os.path.join(REPO, "shapepipe_run.py")],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "-c/--config" in out.stderr


def test_example_config_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("SP_RUN", str(tmp_path))
    monkeypatch.chdir(REPO)
    assert main(["-c", "example/config_example.ini", "-q"]) == 0
    run_dir = [d for d in os.listdir(tmp_path) if d.startswith("example_")][0]
    out = open(tmp_path / run_dir / "python_example_runner" / "output" / "pyex_output_1.cat").read()
    assert out == "The obtained value is:12345 and abcde"  # as ShapePipe's example writes
    head = tmp_path / run_dir / "execute_example_runner" / "output" / "head_output_3.txt"
    assert head.read_text().startswith("The obtained value is:")
    serial = (tmp_path / run_dir / "serial_example_runner" / "output"
              / "serial_outputfile_number_string.cat")
    assert serial.read_text().count("The obtained value is:") == 6


def test_module_reference_with_subdirectory(sp):
    sp.make_inputs(["_1", "_2"])
    assert sp.run(sp.config("")) == 0
    out = os.path.join(sp.runs()[-1], "tp_copy_runner", "output")
    os.makedirs(os.path.join(out, "sub"))
    for number in ("_7", "_8"):
        open(os.path.join(out, "sub", f"copy{number}.txt"), "w").write("x\n")
    # Explicit sub-directory: only its files.
    for spec in ("last:tp_copy_runner/sub", "last:tp_copy_runner/output/sub"):
        assert sp.run(sp.config("", modules="tp_serial_runner", input_dir=spec)) == 0
        listing = open(os.path.join(sp.runs()[-1], "tp_serial_runner", "output", "all.txt")).read()
        assert listing == "copy_7.txt\ncopy_8.txt\n", spec
    # No sub-directory named: the output dir and its sub-directories.
    assert sp.run(sp.config("", modules="tp_serial_runner", input_dir="last:tp_copy_runner")) == 0
    listing = open(os.path.join(sp.runs()[-1], "tp_serial_runner", "output", "all.txt")).read()
    assert listing == "copy_1.txt\ncopy_2.txt\ncopy_7.txt\ncopy_8.txt\n"


def test_runner_validate_hook_runs_before_any_job(sp, tmp_path, capsys):
    plugin = tmp_path / "plug2"
    plugin.mkdir()
    (plugin / "checked_runner.py").write_text(
        "from shapepipe.modules.module_decorator import module_runner\n"
        "def check(config, section):\n"
        "    if config.get(section, 'AUX', fallback='') != 'good':\n"
        "        raise ValueError('AUX file has a bad line 3')\n"
        "@module_runner(file_pattern='in', file_ext='.txt', numbering_scheme='_0',"
        " validate=check)\n"
        "def checked_runner(files, run_dirs, num, config, sec, log):\n    return None, None\n")
    sp.make_inputs(["_1"])
    cfg = sp.config(f"[EXECUTION]\nMODULE_PATH = {plugin}\n[CHECKED_RUNNER]\nAUX = bad\n",
                    modules="checked_runner")
    assert main(["-c", cfg]) == 2
    assert "[CHECKED_RUNNER]: AUX file has a bad line 3" in capsys.readouterr().out
    assert not sp.runs()


@pytest.mark.parametrize("backend", ["loky", "multiprocessing", "threading"])
def test_smp_backends_give_same_outputs(sp, backend):
    sp.make_inputs([f"_{i}" for i in range(1, 7)])
    cfg = sp.config(f"[JOB]\nSMP_BACKEND = {backend}\n[TP_COPY_RUNNER]\nFAIL_ON = _3\n")
    assert sp.run(cfg) == 1
    assert sp.outputs() == [f"copy_{i}.txt" for i in (1, 2, 4, 5, 6)]
    assert [f["number"] for f in sp.summary()["modules"]["tp_copy_runner"]["failed"]] == ["_3"]


# -- key combinations checked once, before any job ------------------------------------------
@pytest.mark.parametrize("keys, message", [
    ("DETECTION_WEIGHT = True\n", "DETECTION_WEIGHT = 'True': needs DETECTION_IMAGE = True"),
    ("ZP_FROM_HEADER = True\n", "ZP_FROM_HEADER = 'True': needs ZP_KEY to be set"),
    ("MAKE_POST_PROCESS = True\n", "MAKE_POST_PROCESS = 'True': needs LOG_WCS to be set"),
])
def test_sextractor_key_combinations_fail_before_any_job(sp, capsys, keys, message):
    sp.make_inputs(["-0000001-0"], pattern="image", ext=".fits")
    sex = os.path.join(REPO, "example", "sextractor", "default_exp.sex")
    cfg = sp.config(f"[SEXTRACTOR_RUNNER]\nDOT_SEX_FILE = {sex}\nWEIGHT_IMAGE = False\n"
                    f"FLAG_IMAGE = False\nFILE_PATTERN = image\n{keys}",
                    modules="sextractor_runner")
    assert main(["-c", cfg]) == 2
    out = capsys.readouterr().out
    assert f"[SEXTRACTOR_RUNNER] {message}" in out and cfg in out
    assert not sp.runs()  # no run directory, no job


# -- one resolver of module references ------------------------------------------------------
def test_module_reference_numeric_run_order(tmp_path):
    from shapepipe.pipeline.run_log import RunLog, resolve_module_dir, update_manifest

    out = tmp_path / "out"
    run = out / "r1"
    names = [f"tp_run_{i}" for i in range(1, 11)]
    for name in names + ["me"]:
        os.makedirs(run / name / "output")
    run_dirs = {"run": str(run), "run_log": str(out / "runs.jsonl"),
                "module_output": str(run / "me" / "output")}
    # No manifest entry (a runner called by hand): the directory listing in natural order.
    assert resolve_module_dir("tp", run_dirs) == [str(run / "tp_run_10" / "output")]
    assert resolve_module_dir("tp_run_1", run_dirs) == [str(run / "tp_run_1" / "output")]
    assert resolve_module_dir("r1:tp", run_dirs) == [str(run / "tp_run_10" / "output")]
    # Recorded in the manifest: its module order, from another run by last: as well.
    update_manifest(str(out / "runs.jsonl"), {
        "run_dir": str(run), "run_name": "r", "modules": names + ["me"],
        "status": {n: "ok" for n in names + ["me"]}})
    assert resolve_module_dir("tp", run_dirs) == [str(run / "tp_run_10" / "output")]
    assert RunLog(str(out / "runs.jsonl")).last("tp") == str(run / "tp_run_10" / "output")
    assert RunLog(str(out / "runs.jsonl")).in_run(str(run), "tp_run_9") == str(
        run / "tp_run_9" / "output")


def test_pipeline_and_runner_resolve_references_alike(sp):
    """INPUT_MODULE of the framework and resolve_module_dir inside a job agree: a bare name is
    the latest EARLIER occurrence in this run (not a later one), x_run_N that occurrence."""
    sp.make_inputs(["_1"])
    body = ("[TP_REF_RUNNER]\nREF = tp_copy_runner\nINPUT_MODULE = tp_copy_runner\n"
            "FILE_PATTERN = copy\n"
            "[TP_COPY_RUNNER_RUN_2]\nINPUT_MODULE = tp_copy_runner_run_1\nFILE_PATTERN = copy\n"
            "[TP_COPY_RUNNER_RUN_3]\nINPUT_MODULE = tp_copy_runner_run_1\nFILE_PATTERN = copy\n")
    cfg = sp.config(body, modules="tp_copy_runner, tp_copy_runner, tp_ref_runner, "
                                  "tp_copy_runner")
    assert sp.run(cfg) == 0
    run_dir = sp.runs()[-1]
    expected = os.path.join(run_dir, "tp_copy_runner_run_2", "output")
    ref = open(os.path.join(run_dir, "tp_ref_runner", "output", "ref_1.txt")).read().split()
    assert ref == [expected]
    log = open(os.path.join(run_dir, "logs", "shapepipe.log")).read()
    assert f"input dir: {expected}\n" in log
    # The same reference from a later run (last:) names the last occurrence of the earlier run.
    cfg = sp.config("[TP_REF_RUNNER]\nREF = last:tp_copy_runner\n", modules="tp_ref_runner",
                    name="c2.ini")
    assert sp.run(cfg) == 0
    ref = open(os.path.join(sp.runs()[-1], "tp_ref_runner", "output", "ref_1.txt")).read()
    assert ref.split() == [os.path.join(run_dir, "tp_copy_runner_run_3", "output")]


# -- --resume guards its config ---------------------------------------------------------------
def _manifest(sp):
    return [json.loads(x) for x in open(sp.out / "shapepipe_runs.jsonl")]


def test_resume_refuses_a_changed_config_unless_forced(sp, capsys):
    sp.make_inputs(["_1", "_2"])
    cfg = sp.config("[TP_COPY_RUNNER]\nFAIL_ON = _2\n")
    assert sp.run(cfg) == 1
    run_dir = sp.runs()[-1]
    saved = open(os.path.join(run_dir, "config.ini")).read()
    start = _manifest(sp)[0]["start"]
    jobs_txt = os.path.join(run_dir, "tp_copy_runner", "logs", "jobs.txt")
    records = open(jobs_txt).read()
    # Same settings, only a comment added: resumes (job _2 fails again).
    open(cfg, "a").write("# a comment\n")
    assert main(["-c", cfg, "-q", "--resume"]) == 1
    # Edited: refused before any job, naming what changed.
    cfg = sp.config("[TP_COPY_RUNNER]\nSLEEP = 0\n[JOB]\nSMP_BATCH_SIZE = 1\n")
    records = open(jobs_txt).read()
    assert main(["-c", cfg, "--resume"]) == 2
    out = capsys.readouterr().out
    assert "--resume: the config differs from the one" in out and run_dir in out
    assert "[JOB] SMP_BATCH_SIZE: '2' -> '1'" in out
    assert "[TP_COPY_RUNNER] FAIL_ON: removed (was '_2')" in out
    assert "[TP_COPY_RUNNER] SLEEP: added ('0')" in out and "--resume --force" in out
    assert open(jobs_txt).read() == records  # no job ran
    # Forced: resumes the same run; the saved config stays, the new one is recorded beside.
    assert main(["-c", cfg, "-q", "--resume", "--force"]) == 0
    assert sp.runs() == [run_dir]
    assert open(os.path.join(run_dir, "config.ini")).read() == saved
    forced = open(os.path.join(run_dir, "config_resume_1.ini")).read()
    assert "fail_on" not in forced.lower() and "sleep = 0" in forced.lower()
    entry = _manifest(sp)[0]
    assert entry["start"] == start and entry["status"] == {"tp_copy_runner": "ok"}
    assert [bool(r.get("forced")) for r in entry["resumes"]] == [False, True]
    assert entry["resumes"][1]["saved_as"] == "config_resume_1.ini"
    assert "[JOB] SMP_BATCH_SIZE: '2' -> '1'" in entry["resumes"][1]["changed"]
    assert sp.summary(run_dir)["modules"]["tp_copy_runner"]["succeeded"] == 2
    # --force without --resume is a usage error.
    assert main(["-c", cfg, "--force"]) == 2


def test_resume_picks_the_newest_run_by_the_manifest(sp):
    sp.make_inputs(["_1"])
    cfg = sp.config("")
    assert sp.run(cfg) == 0
    assert sp.run(cfg) == 0
    older, newer = [e["run_dir"] for e in _manifest(sp)]
    # Touching the older run changes its ctime (as adding a file or a log would).
    time.sleep(0.05)
    open(os.path.join(older, "notes.txt"), "w").write("x")
    assert os.path.getctime(older) > os.path.getctime(newer)
    assert main(["-c", cfg, "-q", "--resume"]) == 0
    entries = _manifest(sp)
    assert [e["run_dir"] for e in entries] == [older, newer]  # entries keep their order
    assert "resumes" in entries[1] and "resumes" not in entries[0]


def test_corrupt_manifest_line_is_skipped_with_a_warning(sp, capsys):
    sp.make_inputs(["_1"])
    assert sp.run(sp.config("")) == 0
    manifest = sp.out / "shapepipe_runs.jsonl"
    with open(manifest, "a") as handle:
        handle.write('{"run_dir": "/x", "status": {"tp_co\n')  # a run killed mid-write
    cfg = sp.config("", modules="tp_serial_runner", input_dir="last:tp_copy_runner")
    assert main(["-c", cfg]) == 0
    out = capsys.readouterr().out
    assert f"{manifest}: line 2 is not a valid run entry; skipped" in out
    lines = open(manifest).read().splitlines()
    assert len(lines) == 3 and lines[1].startswith('{"run_dir": "/x"')  # kept as it was


# -- packaging and lint --------------------------------------------------------------------------
def test_license_is_an_spdx_string():
    import tomllib

    with open(os.path.join(REPO, "pyproject.toml"), "rb") as handle:
        project = tomllib.load(handle)
    # A table is deprecated (every install printed a warning block); SPDX strings need
    # setuptools >= 77 to build.
    assert project["project"]["license"] == "MIT"
    assert "setuptools>=77" in project["build-system"]["requires"]


def test_ruff_is_clean_and_run_by_ci():
    ruff = os.path.join(os.path.dirname(sys.executable), "ruff")
    if not os.path.exists(ruff):
        pytest.skip("ruff is not installed (pip install '.[test]')")
    result = subprocess.run([ruff, "check", "."], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
    with open(os.path.join(REPO, "scripts", "run_tests.sh")) as handle:
        assert any(line.strip() == ".venv/bin/ruff check ." for line in handle)
