"""pynetdicom's DCMTK-named console scripts leave the virtual environment (issue 19, item 10):
with the environment activated, `storescu` and the others are DCMTK's again."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from tests.shadowed_tools import DCMTK_NAMES, remove_shadowing_scripts, scripts_folder

PYNETDICOM_SCRIPT = (
    "#!/venv/bin/python\nimport sys\nfrom pynetdicom.apps.storescu.storescu import main\n"
    "if __name__ == '__main__':\n    sys.exit(main())\n"
)


def test_only_pynetdicoms_scripts_are_removed(tmp_path: Path) -> None:
    """A pynetdicom script named like a DCMTK tool goes; other files of that name stay."""
    (tmp_path / "storescu").write_text(PYNETDICOM_SCRIPT, encoding="utf-8")
    (tmp_path / "findscu").write_bytes(b"\x7fELF\x02\x01\x01 a DCMTK binary")
    (tmp_path / "qrscp").write_text(PYNETDICOM_SCRIPT, encoding="utf-8")  # shadows nothing
    removed = remove_shadowing_scripts(tmp_path)
    assert removed == [tmp_path / "storescu"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["findscu", "qrscp"]
    assert remove_shadowing_scripts(tmp_path) == []


def test_the_test_environment_has_no_shadowing_scripts() -> None:
    """After the test session started, the environment's bin folder holds none of them: an
    administrator who activates it runs DCMTK's tools."""
    folder = scripts_folder()
    if folder is None:
        pytest.skip("not running in a virtual environment")
    assert Path(sys.executable).parent == folder
    for name in DCMTK_NAMES:
        found = shutil.which(name, path=str(folder))
        assert found is None, f"{found} shadows DCMTK's {name}"
