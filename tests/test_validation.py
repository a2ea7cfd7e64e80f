"""Config faults are exit 2 before any job (and before any worker process or run directory),
in one line naming file, section, key and value; runner code comes only from where it should."""

import os
import stat

import pytest

from shapepipe.pipeline import job_handler
from shapepipe.run import main


def _fails_before_any_job(sp, cfg, capsys, *expected):
    assert main(["-c", cfg]) == 2
    out = capsys.readouterr().out
    line = [x for x in out.splitlines() if x.startswith("ERROR: ")]
    assert len(line) == 1, out
    for text in expected:
        assert text in line[0], line[0]
    assert not os.path.isdir(sp.out) or not sp.runs()  # no run directory
    return line[0]


# -- issue 21 item 7: validation gaps ---------------------------------------------------------
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "00:nan:00"])
def test_timeout_must_be_finite(sp, capsys, value):
    sp.make_inputs(["_1"])
    cfg = sp.config(f"[JOB]\nTIMEOUT = {value}\n")
    _fails_before_any_job(sp, cfg, capsys, cfg, f"[JOB] TIMEOUT = '{value}': expected a duration")


def test_bad_numbering_regex(sp, capsys):
    sp.make_inputs(["_1"])
    cfg = sp.config("[TP_COPY_RUNNER]\nNUMBERING_SCHEME = RE:(_\\d+\n")
    _fails_before_any_job(sp, cfg, capsys, cfg,
                          "[TP_COPY_RUNNER] NUMBERING_SCHEME = 'RE:(_\\\\d+': invalid regular")


def test_output_dir_that_is_a_file_or_cannot_be_created(sp, capsys, tmp_path):
    sp.make_inputs(["_1"])
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    cfg = sp.config(f"[FILE]\nOUTPUT_DIR = {blocker}\n")
    _fails_before_any_job(sp, cfg, capsys, f"[FILE] OUTPUT_DIR = '{blocker}': exists and is "
                                           "not a directory")
    cfg = sp.config(f"[FILE]\nOUTPUT_DIR = {blocker}/sub/out\n")
    _fails_before_any_job(sp, cfg, capsys, f"[FILE] OUTPUT_DIR = '{blocker}/sub/out': cannot "
                                           "be created")
    assert blocker.read_text() == "x"


def test_number_list_file_not_utf8(sp, capsys, tmp_path):
    sp.make_inputs(["_1"])
    numbers = tmp_path / "numbers.txt"
    numbers.write_bytes(b"_1\n\xff\xfe_2\n")
    cfg = sp.config(f"[FILE]\nNUMBER_LIST = {numbers}\n")
    _fails_before_any_job(sp, cfg, capsys, f"[FILE] NUMBER_LIST = '{numbers}': not a UTF-8 "
                                           "text file")


def test_sections_differing_only_in_case_are_an_error(sp, capsys):
    sp.make_inputs(["_1"])
    cfg = sp.config("[TP_COPY_RUNNER]\nSLEEP = 0\n")
    with open(cfg, "a") as handle:
        handle.write("[tp_copy_runner]\nFAIL_ON = _1\n")
    _fails_before_any_job(sp, cfg, capsys, f"{cfg} [tp_copy_runner]: section defined twice",
                          "[TP_COPY_RUNNER]")


@pytest.mark.parametrize("section, key, value", [
    ("FILE", "LOG_NAME", "../escaped"), ("FILE", "RUN_LOG_NAME", "sub/runs"),
    ("DEFAULT", "RUN_NAME", ".."), ("FILE", "LOG_NAME", "a\\b"),
])
def test_names_used_as_file_names_reject_paths(sp, capsys, section, key, value):
    sp.make_inputs(["_1"])
    cfg = sp.config(f"[{section}]\n{key} = {value}\n")
    _fails_before_any_job(sp, cfg, capsys, f"[{section}] {key} = {value!r}: expected a name")


# -- issue 21 item 4: setools section names are names -----------------------------------------
@pytest.mark.parametrize("header", ["[MASK:../../../../escaped_mask]", "[STAT:/some/abs/path]",
                                    "[PLOT:a\\b]"])
def test_setools_section_names_with_paths_rejected_before_any_job(sp, capsys, tmp_path,
                                                                  header):
    selection = tmp_path / "sel.setools"
    kind = header[1:].split(":")[0]
    body = {"MASK": "FLAGS == 0", "STAT": '"n" = len(FLAGS)', "PLOT": "TYPE = hist\nX = FLAGS"}
    selection.write_text(f"{header}\n{body[kind]}\n")
    cfg = sp.config(f"[SETOOLS_RUNNER]\nSETOOLS_CONFIG_PATH = {selection}\n",
                    modules="setools_runner")
    _fails_before_any_job(sp, cfg, capsys, "[SETOOLS_RUNNER]", str(selection),
                          "is used as a file name")


def test_setools_syntax_error_before_any_job(sp, capsys, tmp_path):
    selection = tmp_path / "sel.setools"
    selection.write_text("[MASK:stars]\nFLAGS == == 0\n")
    cfg = sp.config(f"[SETOOLS_RUNNER]\nSETOOLS_CONFIG_PATH = {selection}\n",
                    modules="setools_runner")
    _fails_before_any_job(sp, cfg, capsys, "[SETOOLS_RUNNER]", "[MASK:stars] line 2")


# -- issue 21 item 3: workers -------------------------------------------------------------------
def test_no_worker_pool_before_validation(sp, capsys, monkeypatch):
    started = []
    real = job_handler.run_smp

    def spy(ctx, jobs, progress, workers, *args, **kwargs):
        started.append(workers)
        return real(ctx, jobs, progress, workers, *args, **kwargs)

    monkeypatch.setattr(job_handler, "run_smp", spy)
    sp.make_inputs(["_1", "_2"])
    cfg = sp.config("", modules="no_such_runner", workers=8)
    _fails_before_any_job(sp, cfg, capsys, "unknown module")
    cfg = sp.config("[TP_COPY_RUNNER]\nSLEEP = x\n", workers=8)
    _fails_before_any_job(sp, cfg, capsys, "SLEEP = 'x'")
    assert started == []
    assert main(["-c", sp.config("", workers=2), "-q"]) == 0
    assert started == [2]  # a valid config: workers started, after validation


def test_workers_capped_at_job_count_and_warned_above_cores(sp, capsys, monkeypatch):
    seen = []
    real = job_handler.run_smp

    def spy(ctx, jobs, progress, workers, *args, **kwargs):
        seen.append((len(jobs), workers))
        return real(ctx, jobs, progress, workers, *args, **kwargs)

    monkeypatch.setattr(job_handler, "run_smp", spy)
    sp.make_inputs(["_1", "_2", "_3"])
    many = (os.cpu_count() or 1) + 50
    assert main(["-c", sp.config("", workers=many)]) == 0
    assert seen == [(3, 3)]
    assert f"[JOB] SMP_BATCH_SIZE = '{many}': more workers than the" in capsys.readouterr().out


# -- issue 21 item 5: MODULE_PATH ---------------------------------------------------------------
SHADOW = "import os\nopen(os.environ['SP_SHADOW_MARK'], 'w').write('ran')\n"
PLUGIN = """
import sqlitedict
from shapepipe.modules.module_decorator import module_runner
from my_helpers import VALUE  # a package of the runner's own, next to it


@module_runner(file_pattern="in", file_ext=".txt", numbering_scheme="_0")
def shadow_runner(files, run_dirs, number, config, section, log):
    import os
    open(os.path.join(run_dirs["output"], "out" + number + ".txt"), "w").write(
        sqlitedict.__file__ + " " + VALUE)
    return None, None
"""


def test_module_path_cannot_shadow_installed_packages(sp, tmp_path, monkeypatch, capsys):
    plugin = tmp_path / "plugins"
    plugin.mkdir()
    (plugin / "shadow_runner.py").write_text(PLUGIN)
    (plugin / "sqlitedict.py").write_text(SHADOW)  # must never run
    (plugin / "my_helpers.py").write_text("VALUE = 'own helper'\n")
    mark = tmp_path / "shadow_ran"
    monkeypatch.setenv("SP_SHADOW_MARK", str(mark))
    sp.make_inputs(["_1"])
    cfg = sp.config(f"[EXECUTION]\nMODULE_PATH = {plugin}\n", modules="shadow_runner")
    monkeypatch.setattr("sys.path", list(__import__("sys").path))  # restored after the test
    assert main(["-c", cfg, "-q"]) == 0
    assert not mark.exists()
    out = open(os.path.join(sp.runs()[-1], "shadow_runner", "output", "out_1.txt")).read()
    assert str(plugin) not in out.split()[0] and out.endswith(" own helper")
    assert "writable by other users" not in capsys.readouterr().out
    # A directory anyone may write to: warned (the run goes on).
    os.chmod(plugin, os.stat(plugin).st_mode | stat.S_IWOTH)
    assert main(["-c", cfg]) == 0
    assert f"MODULE_PATH {plugin} is writable by other users" in capsys.readouterr().out
