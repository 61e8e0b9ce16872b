"""The notebooks in notebooks/ run top to bottom against a real running system, so they never rot.

Each notebook is executed in a fresh ipykernel with nbclient; ``SM_API`` points its
``sm.connect()`` at the session's system. A notebook asserts what it shows with plain ``assert``,
so a broken API fails its cell and this test. The files must be saved without outputs.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbclient
import nbformat
import pytest
from nbclient.exceptions import CellExecutionError

from schedulemaster.notebook.legacy_client import LegacyClient

pytestmark = pytest.mark.e2e

NOTEBOOKS_DIR = Path(__file__).resolve().parents[2] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def test_the_notebooks_are_there():
    # a missing or renamed folder must fail, not quietly collect nothing
    assert len(NOTEBOOKS) >= 5, f"expected at least 5 notebooks in {NOTEBOOKS_DIR}, found {NOTEBOOKS}"


def title_prefix(path: Path) -> str:
    """The prefix of the task titles a notebook makes: 01_quickstart.ipynb -> 'nb01-'."""
    m = re.match(r"(\d+)_", path.name)
    assert m, f"{path.name}: a notebook's name starts with its number, e.g. 01_quickstart.ipynb"
    return f"nb{m.group(1)}-"


def check_saved_clean(nb, name: str) -> None:
    assert nb.nbformat == 4, f"{name}: nbformat {nb.nbformat}, expected 4"
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3", f"{name}: kernelspec must be python3"
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        assert cell.get("outputs") == [], f"{name}: cell {i} was saved with outputs"
        assert cell.get("execution_count") is None, f"{name}: cell {i} was saved with an execution count"


def leftover_tasks(api: LegacyClient, prefix: str) -> list[dict]:
    return [row for row in api.iter_tasks(name=prefix) if str(row.get("Title", "")).startswith(prefix)]


def remove_tasks(api: LegacyClient, rows: list[dict]) -> None:
    """Stop and delete what a failed notebook left behind, so it does not fire for the rest of the session."""
    for row in rows:
        try:
            if row.get("Status") != 0:
                api.stop(row["Id"])
            api.delete(row["Id"])
        except Exception:
            pass


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path: Path, system, monkeypatch, tmp_path):
    nb = nbformat.read(path, as_version=4)
    check_saved_clean(nb, path.name)
    prefix = title_prefix(path)
    system.wait_node()

    # the kernel inherits this process's environment: sm.connect() reads SM_API
    monkeypatch.setenv("SM_API", system.api)
    # ... and finds Prefect's credential in the system's data directory, as on the master's machine
    monkeypatch.setenv("SM_DATA_DIR", str(system.data_dir))
    monkeypatch.delenv("PREFECT_API_AUTH_STRING", raising=False)
    for name in ("SM_USER", "SM_PASSWORD", "SM_PREFECT_API_URL"):
        monkeypatch.delenv(name, raising=False)

    client = nbclient.NotebookClient(nb, timeout=180, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    api = LegacyClient(system.api, "admin", "111111")
    try:
        error = None
        try:
            client.execute()
        except CellExecutionError as exc:
            error = ANSI.sub("", str(exc))  # the kernel's traceback, without its colours
        if error is not None:
            pytest.fail(f"{path.name} failed:\n{error}", pytrace=False)
        left = leftover_tasks(api, prefix)
        assert not left, f"{path.name} did not clean up its tasks: {[r['Title'] for r in left]}"
    finally:
        remove_tasks(api, leftover_tasks(api, prefix))
        api.close()
