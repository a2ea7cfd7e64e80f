"""Worker start-up helpers (sextractor/memory.py, utils/startup.py), each in a child process.

The allocator settings apply to the whole process: the checks run in a fresh interpreter so
that the test process keeps glibc's defaults.
"""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = r"""
import json, os, sys, threading
import numpy as np
from shapepipe.modules.sextractor import memory

def rss():
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

mb = 2**20
populate = sys.argv[1] == "populate"
out = {"reuse": memory.reuse_freed_memory()}
if populate:
    # Not from another thread (other glibc arena): nothing done.
    box = []
    t = threading.Thread(target=lambda: box.append(memory.populate_heap(64 * mb)))
    t.start(); t.join()
    out["thread"] = box[0]
    r0 = rss()
    out["populated"] = memory.populate_heap(64 * mb)
    out["populate_rss_mb"] = (rss() - r0) / mb
    out["again"] = memory.populate_heap(32 * mb)  # already as much: nothing done
r0 = rss()
a = np.ones(6 * 2**20)  # 48 MB
out["array_rss_mb"] = (rss() - r0) / mb
out["sum"] = float(a.sum())
print(json.dumps(out))
"""


def _child(mode):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    run = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True,
                         env=env, timeout=60, check=True)
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only (/proc, glibc)")
def test_populate_heap_serves_the_next_arrays():
    plain = _child("plain")
    if not plain["reuse"]:
        pytest.skip("not glibc: the allocator cannot be configured")
    # Without it, a new 48 MB array is faulted in: the resident set grows by its size.
    assert plain["array_rss_mb"] > 40
    out = _child("populate")
    if out["populated"] == 0:
        pytest.skip("kernel without MADV_POPULATE_WRITE (Linux < 5.14)")
    assert out["thread"] == 0
    assert out["populated"] == 64 * 2**20
    assert out["populate_rss_mb"] > 60  # resident now, and kept after the free
    assert out["again"] == 0
    # The array is carved from the pages already resident.
    assert out["array_rss_mb"] < 8
    assert out["sum"] == 6 * 2**20


STARTUP_CHILD = r"""
import gc, json, sys
from shapepipe.utils.startup import startup_phase

freeze = sys.argv[1] == "freeze"
runs = []
gc.callbacks.append(lambda phase, info: runs.append(phase) if phase == "stop" else None)
with startup_phase(freeze=freeze):
    during = gc.isenabled()
    junk = [[i] for i in range(50000)]  # many tracked objects, as an import makes
    n_runs = len(runs)
after = gc.isenabled()
frozen = gc.get_freeze_count()
with startup_phase(freeze=freeze):  # a second job: nothing frozen again
    more = [[i] for i in range(1000)]
print(json.dumps({"during": during, "runs": n_runs, "after": after, "frozen": frozen,
                  "frozen_again": gc.get_freeze_count() - frozen}))
"""


@pytest.mark.parametrize("freeze", [False, True])
def test_startup_phase_pauses_and_freezes(freeze):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    run = subprocess.run([sys.executable, "-c", STARTUP_CHILD, "freeze" if freeze else "no"],
                         capture_output=True, text=True, env=env, timeout=60, check=True)
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["during"] is False and out["runs"] == 0  # no collection inside the block
    assert out["after"] is True  # the collector runs again afterwards
    if freeze:
        assert out["frozen"] >= 50000  # the block's objects are no longer scanned
        assert out["frozen_again"] == 0  # once per process
    else:
        assert out["frozen"] == 0
