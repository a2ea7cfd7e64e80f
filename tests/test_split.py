"""N_SPLIT: a number's job split into k part jobs, combined once all parts succeeded."""

import os

import pytest

from shapepipe.run import main
from shapepipe.utils.rng import make_rng

NUMBERS = ["_1", "_2"]


def _inputs(sp, n_lines=(10, 7)):
    for number, n in zip(NUMBERS, n_lines):
        (sp.data / f"in{number}.txt").write_text("".join(f"obj{number}-{i}\n" for i in range(n)))


def _expected(sp, number, seed=7):
    lines = (sp.data / f"in{number}.txt").read_text().upper().splitlines()
    return "".join(f"{line} {make_rng(seed, i).random():.17g}\n" for i, line in enumerate(lines))


def _records(run_dir, module="tp_split_runner"):
    with open(os.path.join(run_dir, module, "logs", "jobs.txt")) as handle:
        return [line.rstrip("\n").split("\t") for line in handle]


def test_split_parts_then_combine(sp):
    _inputs(sp)
    cfg = sp.config("[TP_SPLIT_RUNNER]\nN_SPLIT = 3\n"
                    "[TP_SERIAL_RUNNER]\nINPUT_MODULE = tp_split_runner\nFILE_PATTERN = lines\n",
                    modules="tp_split_runner, tp_serial_runner")
    assert sp.run(cfg) == 0
    run_dir = sp.runs()[-1]
    module_dir = os.path.join(run_dir, "tp_split_runner")
    # The combined outputs only, in output/; equal to what one job per number gives.
    assert sp.outputs("tp_split_runner") == ["lines_1.txt", "lines_2.txt"]
    for number in NUMBERS:
        with open(os.path.join(module_dir, "output", f"lines{number}.txt")) as handle:
            assert handle.read() == _expected(sp, number)
        # Each part got (part, k) and kept its outputs in the parts directory.
        for part in (1, 2, 3):
            log = open(os.path.join(module_dir, "logs", f"process{number}_part{part}of3.log"))
            assert f"split ({part}, 3)" in log.read()
            assert sorted(os.listdir(os.path.join(module_dir, "parts", number,
                                                  f"{part}_of_3"))) == [
                f"lines{number}.txt", f"meta{number}.json"]
    # The next module sees the combined files, never the parts.
    listing = open(os.path.join(run_dir, "tp_serial_runner", "output", "all.txt")).read()
    assert listing == "lines_1.txt\nlines_2.txt\n"
    module = sp.summary()["modules"]["tp_split_runner"]
    assert (module["jobs"], module["succeeded"], module["failed"]) == (6, 6, [])
    assert (module["split"], module["numbers"], module["combined"]) == (3, 2, 2)
    # Unsplit: every job is told (1, 1), and the output is the same.
    assert sp.run(sp.config("", modules="tp_split_runner", name="plain.ini")) == 0
    plain = sp.runs()[-1]
    for number in NUMBERS:
        log = open(os.path.join(plain, "tp_split_runner", "logs", f"process{number}.log"))
        assert "split (1, 1)" in log.read()
        assert open(os.path.join(plain, "tp_split_runner", "output", f"lines{number}.txt")
                    ).read() == _expected(sp, number)
    assert not os.path.exists(os.path.join(plain, "tp_split_runner", "parts"))


def test_split_more_parts_than_objects(sp):
    _inputs(sp, n_lines=(2, 0))
    assert sp.run(sp.config("[TP_SPLIT_RUNNER]\nN_SPLIT = 4\n", modules="tp_split_runner")) == 0
    out = os.path.join(sp.runs()[-1], "tp_split_runner", "output")
    assert open(os.path.join(out, "lines_1.txt")).read() == _expected(sp, "_1")
    assert open(os.path.join(out, "lines_2.txt")).read() == ""  # no object, still a file


def test_failed_part_blocks_its_combine_and_resume_redoes_only_what_is_missing(sp):
    _inputs(sp)
    control = sp.tmp / "faults.txt"
    control.write_text("_1:2\n_2:combine\n")
    cfg = sp.config(f"[TP_SPLIT_RUNNER]\nN_SPLIT = 3\nCONTROL = {control}\n",
                    modules="tp_split_runner")
    assert sp.run(cfg) == 1
    run_dir = sp.runs()[-1]
    # _1: a part failed, no combine; _2: the combine failed half-way and left nothing.
    assert sp.outputs("tp_split_runner") == []
    module = sp.summary()["modules"]["tp_split_runner"]
    assert module["status"] == "failed" and module["combined"] == 0
    failed = {(f["number"], f["part"]): f["error"] for f in module["failed"]}
    assert set(failed) == {("_1", 2), ("_2", "combine")}
    assert "asked to fail part 2 of _1" in failed[("_1", 2)]
    assert failed[("_2", "combine")].startswith("combine: RuntimeError: asked to fail")
    before = _records(run_dir)
    # Faults gone (the config is unchanged): only part 2 of _1 runs again, then both combines.
    control.unlink()
    assert main(["-c", cfg, "-q", "--resume"]) == 0
    assert sp.runs() == [run_dir]
    new = [r for r in _records(run_dir)[len(before):] if r[0] == "start"]
    assert sorted(r[1] for r in new) == ["_1_combine3", "_1_part2of3", "_2_combine3"]
    for number in NUMBERS:
        assert open(os.path.join(run_dir, "tp_split_runner", "output", f"lines{number}.txt")
                    ).read() == _expected(sp, number)
    module = sp.summary()["modules"]["tp_split_runner"]
    assert module["status"] == "ok" and module["combined"] == 2 and module["resumed"] == 5
    # Nothing left to do: a second resume neither reruns a part nor recombines.
    count = len(_records(run_dir))
    assert main(["-c", cfg, "-q", "--resume"]) == 0
    assert len(_records(run_dir)) == count
    assert sp.summary()["modules"]["tp_split_runner"]["combined"] == 2


@pytest.mark.parametrize("body, message", [
    ("[TP_SPLIT_RUNNER]\nN_SPLIT = 0\n", "[TP_SPLIT_RUNNER] N_SPLIT = '0': expected an integer "
                                        ">= 1"),
    ("[TP_SPLIT_RUNNER]\nN_SPLIT = two\n", "[TP_SPLIT_RUNNER] N_SPLIT = 'two': expected an "
                                          "integer >= 1"),
    ("[TP_COPY_RUNNER]\nN_SPLIT = 2\n", "[TP_COPY_RUNNER] N_SPLIT = '2': tp_copy_runner cannot "
                                       "split its jobs"),
])
def test_n_split_validated_before_any_job(sp, capsys, body, message):
    _inputs(sp)
    module = body.split("]")[0][1:].lower()
    cfg = sp.config(body, modules=module)
    assert main(["-c", cfg]) == 2
    out = capsys.readouterr().out
    assert message in out and cfg in out
    assert not sp.runs()


def test_dry_run_shows_parts(sp, capsys):
    _inputs(sp)
    cfg = sp.config("[TP_SPLIT_RUNNER]\nN_SPLIT = 3\n", modules="tp_split_runner")
    assert main(["-c", cfg, "--dry-run"]) == 0
    assert "jobs: 2 x 3 parts (N_SPLIT), then combined" in capsys.readouterr().out
