"""The package's layout rules (issue 17 item 6): orchestration in pipeline/, no import cycle in
the simulator, no test-data simulators in production packages, one spelling of catalog."""

import ast
import os

import shapepipe

PACKAGE = os.path.dirname(shapepipe.__file__)


def _imports(path):
    """Modules a file imports, at any level (function-level imports included)."""
    names = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_no_import_cycle_in_the_simulator():
    sim = os.path.join(PACKAGE, "sim")
    modules = {name[:-3] for name in os.listdir(sim) if name.endswith(".py")} - {"__init__"}
    graph = {m: {i.split(".")[2] for i in _imports(os.path.join(sim, m + ".py"))
                 if i.startswith("shapepipe.sim.") and i.split(".")[2] in modules} - {m}
             for m in modules}

    def reaches(start, target, seen=()):
        return any(n == target or (n not in seen and reaches(n, target, (*seen, n)))
                   for n in graph[start])

    assert [m for m in modules if reaches(m, m)] == []


def test_orchestration_lives_in_pipeline_and_run_is_thin():
    from shapepipe import run
    from shapepipe.pipeline import pipeline

    assert run.Pipeline is pipeline.Pipeline
    assert "class Pipeline" not in open(run.__file__).read()


def test_simulators_live_in_sim_old_paths_reexport():
    from shapepipe.modules.ngmix import simulate
    from shapepipe.modules.psfex import synth
    from shapepipe.modules.sextractor import testdata
    from shapepipe.sim import psf_stars, shear_stamps, small_ccd

    assert simulate.make_stamp_set is shear_stamps.make_stamp_set
    assert synth.make_star_catalogue is psf_stars.make_star_catalogue
    assert testdata.make_ccd is small_ccd.make_ccd
    for shim in (simulate, synth, testdata):  # nothing but re-exports left there
        assert all(not isinstance(n, (ast.FunctionDef, ast.ClassDef))
                   for n in ast.parse(open(shim.__file__).read()).body)


def test_one_spelling_and_no_two_catalogue_classes():
    files, classes = [], {}
    for root, _, names in os.walk(PACKAGE):
        for name in names:
            if name.endswith(".py"):
                files.append(name)
                for node in ast.parse(open(os.path.join(root, name)).read()).body:
                    if isinstance(node, ast.ClassDef):
                        classes.setdefault(node.name, []).append(name)
    assert [f for f in files if "catalogue" in f] == []
    assert "Catalogue" not in classes
