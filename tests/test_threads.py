"""The thread policy: integers pass, 'all' is every available core, 'auto' counts the cores others leave free."""

import subprocess
import sys
import time

import pytest

from registration.threads import available_cores, free_cores, resolve_threads


def test_explicit_and_named_policies():
    assert resolve_threads(3) == 3
    assert resolve_threads("all") == available_cores()
    assert 1 <= resolve_threads("auto") <= available_cores()
    for bad in (0, -1, 1.5, "many", True, None):
        with pytest.raises(ValueError, match="threads"):
            resolve_threads(bad)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/stat is Linux's")
def test_a_busy_process_takes_a_core_away_from_auto():
    # a child spinning on one core: whatever else the machine does, at most (cores - 1) can be free while it runs
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)  # let it get going
        free = free_cores(window=0.3)
    finally:
        spin.kill()
        spin.wait()
    import os

    assert free is not None and 0.0 <= free <= (os.cpu_count() or 1) - 0.7
