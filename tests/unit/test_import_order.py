"""Every module of the package imports on its own, whatever was imported before it.

An import cycle hides behind the order a program happens to import in (the app imported the
console before the console imported the API's helpers): each module is imported here first,
with every `twintrack` module forgotten in between, in one subprocess.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import importlib, pkgutil, sys, traceback
    import twintrack

    walk = pkgutil.walk_packages(twintrack.__path__, "twintrack.")
    names = sorted(m.name for m in walk if not m.name.endswith(".__main__"))  # runs the CLI
    failed = []
    for name in names:
        for loaded in [m for m in sys.modules if m == "twintrack" or m.startswith("twintrack.")]:
            del sys.modules[loaded]
        try:
            importlib.import_module(name)
        except Exception:
            failed.append(name + ": " + traceback.format_exc().strip().splitlines()[-1])
    print(len(names))
    print("\\n".join(failed))
    """
)


def test_each_module_imports_first() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120, check=True
    )
    count, *failed = done.stdout.strip().splitlines()
    assert int(count) > 100  # the walk found the package
    assert [f for f in failed if f] == []
