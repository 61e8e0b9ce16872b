"""Plugin packages: what an upload accepts, what it refuses, and how a node unpacks one."""

from __future__ import annotations

import io
import stat
import zipfile

import pytest

from schedulemaster import packages as P


def make_zip(files: dict[str, bytes | str], links: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return buf.getvalue()


GOOD = make_zip({"orders_sync/__init__.py": "from .job import Job\n",
                 "orders_sync/job.py": "from schedulemaster import TaskBase\nclass Job(TaskBase):\n    def run(self, c): return 1\n",
                 "orders.json": '{"limit": 3}'})


def test_a_good_package_is_stored_and_replaces_the_previous_upload(tmp_path):
    store = P.PackageStore(tmp_path)
    first = store.save("orders_sync.zip", GOOD)
    assert first.name == "orders_sync" and first.size == len(GOOD) and len(first.sha256) == 64
    second = store.save("orders_sync.whl", GOOD)
    assert store.path("orders_sync").name == "orders_sync.whl" and second.sha256 == first.sha256
    assert sorted(p.name for p in tmp_path.iterdir()) == ["orders_sync.whl"]


@pytest.mark.parametrize("filename, data, why", [
    ("evil.zip", make_zip({"../evil.py": "x = 1"}), "outside its directory"),
    ("evil.zip", make_zip({"/etc/evil.py": "x = 1"}), "outside its directory"),
    ("evil.zip", make_zip({"a/../../evil.py": "x = 1"}), "outside its directory"),
    ("evil.zip", make_zip({"C:/evil.py": "x = 1"}), "outside its directory"),
    ("link.zip", make_zip({"m.py": "x = 1"}, links={"escape": "/etc/passwd"}), "symbolic link"),
    ("notzip.zip", b"this is not a zip file at all", "not a zip archive"),
    ("empty.zip", make_zip({"readme.txt": "no code"}), "no Python module"),
    ("bad name!.zip", GOOD, "not an importable module name"),
    ("1abc.zip", GOOD, "not an importable module name"),
    ("orders.tar.gz", GOOD, "must be a .zip or .whl"),
    ("", GOOD, "must be a .zip or .whl"),
])
def test_hostile_or_broken_packages_are_refused_and_nothing_is_stored(tmp_path, filename, data, why):
    store = P.PackageStore(tmp_path)
    with pytest.raises(P.PackageError) as err:
        store.save(filename, data)
    assert why in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_a_zip_bomb_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(P, "MAX_UNPACKED_BYTES", 10 * 1024 * 1024)
    bomb = make_zip({"m.py": "x = 1", "zeros.bin": b"\0" * (11 * 1024 * 1024)})
    assert len(bomb) < 100_000
    with pytest.raises(P.PackageError, match="unpacks to more than"):
        P.PackageStore(tmp_path).save("bomb.zip", bomb)


def test_an_oversized_package_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(P, "MAX_PACKAGE_BYTES", 1000)
    with pytest.raises(P.PackageError, match="larger than 1000 bytes"):
        P.PackageStore(tmp_path).save("orders_sync.zip", GOOD + b"\0" * 1000)


def test_safe_extract_replaces_the_task_dir_and_stays_inside(tmp_path):
    archive = tmp_path / "orders_sync.zip"
    archive.write_bytes(GOOD)
    dest = tmp_path / "task"
    dest.mkdir()
    (dest / "stale.py").write_text("old upload")
    P.safe_extract(archive, dest)
    assert (dest / "orders_sync" / "job.py").is_file() and (dest / "orders.json").is_file()
    assert not (dest / "stale.py").exists()
    evil = tmp_path / "evil.zip"
    evil.write_bytes(make_zip({"../../outside.py": "x = 1"}))
    with pytest.raises(P.PackageError):
        P.safe_extract(evil, tmp_path / "task2")
    assert not (tmp_path.parent / "outside.py").exists() and not (tmp_path / "task2").exists()
