"""pynetdicom's console scripts that shadow DCMTK's tools, removed from the virtual environment.

pynetdicom (the `test` and `examples` extras) installs `echoscu`, `storescu`, `storescp`,
`findscu`, `getscu` and `movescu` scripts into the environment's bin folder, under the names
of DCMTK's command-line tools. Once the environment is activated they come first on PATH, and
the README's DCMTK commands (`storescu -aec PACSD +sd +r ...`) fail in pynetdicom's argument
parser. Neither pip nor pynetdicom can leave them out, so the test session removes them (from
a virtual environment only, and only files that are pynetdicom's scripts); the tests use
pynetdicom as a library, never those scripts. After `pip install '.[examples]'`, run
`.venv/bin/python -m tests.shadowed_tools` for the same.
"""

from __future__ import annotations

import sys
from pathlib import Path

# DCMTK's names that pynetdicom's console scripts take (pynetdicom's own `echoscp` and
# `qrscp` shadow nothing and stay).
DCMTK_NAMES = ("echoscu", "findscu", "getscu", "movescu", "storescp", "storescu")


def scripts_folder() -> Path | None:
    """The bin folder of the virtual environment running this, None outside one."""
    if sys.prefix == sys.base_prefix:
        return None
    return Path(sys.executable).parent


def remove_shadowing_scripts(folder: Path | None = None) -> list[Path]:
    """Remove pynetdicom's scripts named like DCMTK's tools from `folder` (default: this
    virtual environment's bin folder); the paths removed."""
    folder = folder or scripts_folder()
    if folder is None:
        return []
    removed = []
    for name in DCMTK_NAMES:
        script = folder / name
        try:
            if "pynetdicom" not in script.read_text(encoding="utf-8", errors="replace")[:4096]:
                continue  # not pynetdicom's (a DCMTK binary does not say "pynetdicom")
            script.unlink()
        except (FileNotFoundError, IsADirectoryError):
            continue  # absent, or removed meanwhile by a parallel test process
        removed.append(script)
    return removed


if __name__ == "__main__":
    for path in remove_shadowing_scripts():
        print(f"removed {path}")
