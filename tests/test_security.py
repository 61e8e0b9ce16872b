"""Secure by default: every finding of the security review replayed against a running system.

Each test is the attack as it was found, and asserts the refusal.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import uuid

import httpx
import pytest

from helpers import System

pytestmark = pytest.mark.e2e

# the project's own endpoints on the Prefect port, and Prefect's, as an attacker would call them
PROJECT_ENDPOINTS = [
    ("POST", "/schedulemaster/import/users", {"options": {"dry_run": True}, "items": []}),
    ("POST", "/schedulemaster/import/settings", {"options": {"dry_run": True}, "items": []}),
    ("POST", "/schedulemaster/firings", []),
    ("POST", "/schedulemaster/failures", {}),
    ("GET", "/schedulemaster/nodes", None),
    ("POST", "/schedulemaster/nodes/register", {}),
    ("POST", "/schedulemaster/claims", {}),
    ("POST", "/schedulemaster/claims/release", {}),
    ("POST", "/schedulemaster/claims/latest", {"task_ids": []}),
    ("GET", "/schedulemaster/plugins/anything", None),
]


@pytest.mark.parametrize("method,path,body", PROJECT_ENDPOINTS, ids=[p for _, p, _ in PROJECT_ENDPOINTS])
def test_project_endpoints_refuse_a_caller_without_credentials(system, method, path, body):
    r = httpx.request(method, f"{system.prefect}{path}", json=body, timeout=30)
    assert r.status_code == 401, (path, r.status_code, r.text[:200])
    wrong = httpx.request(method, f"{system.prefect}{path}", json=body, timeout=30, auth=("sm", "guess"))
    assert wrong.status_code == 401


def test_prefects_own_api_refuses_a_caller_without_credentials(system, receiver):
    tid = system.create_http(receiver.url("/sec-prefect"), cron="0 0 3 * * ?", Title="sec prefect door")
    try:
        run = httpx.post(f"{system.prefect}/deployments/{tid}/create_flow_run", timeout=30, json={
            "parameters": {"task": {"HttpRequestUrl": receiver.url("/stolen")}}})
        assert run.status_code == 401
        assert httpx.delete(f"{system.prefect}/deployments/{tid}", timeout=30).status_code == 401
        assert system.detail(tid) is not None  # still there
        assert system.pf("GET", f"/deployments/{tid}").status_code == 200  # the credential opens it
        # health probes stay open (supervisors and load balancers poll them)
        assert httpx.get(f"{system.prefect}/health", timeout=30).status_code == 200
    finally:
        system.post("Delete", data={"id": tid})
    assert not receiver.at("/stolen")


def test_cors_answers_only_the_uis_own_origin(system):
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    foreign = httpx.options(f"{system.prefect}/deployments/filter", timeout=30,
                            headers={"Origin": "http://evil.example", **preflight})
    assert "access-control-allow-origin" not in foreign.headers
    ui = f"http://127.0.0.1:{system.prefect_port}"
    own = httpx.options(f"{system.prefect}/deployments/filter", timeout=30, headers={"Origin": ui, **preflight})
    assert own.status_code == 200 and own.headers["access-control-allow-origin"] == ui
    simple = system.pf("POST", "/deployments/filter", json={"limit": 1}, headers={"Origin": "http://evil.example"})
    assert simple.status_code == 200 and "access-control-allow-origin" not in simple.headers


def test_the_generated_credential_and_the_data_directory_are_owner_only(system):
    assert "PREFECT_SERVER_API_AUTH_STRING" not in system.env  # the session's system generated its own
    auth = system.data_dir / "prefect-auth"
    assert len(system.auth_string) >= 40 and system.auth_string.startswith("sm:")
    assert stat.S_IMODE(auth.stat().st_mode) == 0o600
    for dirpath, dirnames, filenames in os.walk(system.data_dir):
        for d in dirnames:
            assert stat.S_IMODE(os.stat(os.path.join(dirpath, d)).st_mode) == 0o700, os.path.join(dirpath, d)
        for f in filenames:
            mode = stat.S_IMODE(os.stat(os.path.join(dirpath, f)).st_mode)
            assert mode & 0o077 == 0, (os.path.join(dirpath, f), oct(mode))
    # `up` said where the credential is, and never printed it
    out = "".join(system.output)
    assert str(auth) in out and system.auth_string not in out
    for log in (system.data_dir / "logs").glob("*.log"):
        assert system.auth_string.split(":", 1)[1] not in log.read_text(errors="replace"), log.name


def _master(tmp_path, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "schedulemaster.cli", "master", "--data-dir", str(tmp_path / "d"),
                           "--api-port", "1", "--prefect-port", "2"],
                          capture_output=True, text=True, timeout=60, env={**os.environ, **env})


def test_a_master_exposed_with_a_weak_credential_refuses_to_start(tmp_path):
    os.environ.pop("PREFECT_SERVER_API_AUTH_STRING", None)
    r = _master(tmp_path, SM_PREFECT_HOST="0.0.0.0", PREFECT_SERVER_API_AUTH_STRING="u:short")
    assert r.returncode == 2 and "other machines reach" in r.stderr, r.stderr[-500:]
    r = _master(tmp_path, SM_PREFECT_HOST="0.0.0.0", PREFECT_SERVER_API_AUTH_STRING="")
    assert r.returncode == 2 and "empty" in r.stderr


def test_a_data_directory_made_by_an_older_version_is_tightened(tmp_path):
    from schedulemaster.credentials import secure_tree

    d = tmp_path / "old"
    (d / "logs").mkdir(parents=True)
    (d / "schedulemaster.db").write_text("x")
    (d / "logs" / "master.log").write_text("x")
    d.chmod(0o755)
    (d / "schedulemaster.db").chmod(0o644)
    secure_tree(d)
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert stat.S_IMODE((d / "schedulemaster.db").stat().st_mode) == 0o600
    assert stat.S_IMODE((d / "logs" / "master.log").stat().st_mode) == 0o600


def test_the_credential_is_found_where_up_keeps_it(tmp_path, monkeypatch):
    from schedulemaster import credentials

    for key in ("PREFECT_API_AUTH_STRING", "PREFECT_SERVER_API_AUTH_STRING"):
        monkeypatch.delenv(key, raising=False)
    value, created = credentials.server_auth_string(tmp_path / "dd", "127.0.0.1")
    assert created and credentials.server_auth_string(tmp_path / "dd", "127.0.0.1") == (value, False)
    monkeypatch.setenv("SM_DATA_DIR", str(tmp_path / "dd"))
    assert credentials.client_auth_string() == value
    monkeypatch.setenv("PREFECT_API_AUTH_STRING", "given:one")
    assert credentials.client_auth_string() == "given:one"
    assert not credentials.is_loopback("0.0.0.0") and credentials.is_loopback("::1")
    assert credentials.is_loopback("127.0.0.2") and not credentials.is_loopback("db.example")


def test_a_node_is_its_token_not_its_incarnation(system):
    """A node's identity is a secret given at registration; its incarnation is readable (run
    labels, the store) and no longer enough to claim or release its firings, or to record."""
    import sqlite3

    nodes = system.pf("GET", "/schedulemaster/nodes").json()
    worker = next(n for n in nodes if n["name"] == "worker1")
    assert "incarnation" not in worker and "token" not in worker
    with sqlite3.connect(system.data_dir / "schedulemaster.db") as db:  # as if it had leaked
        incarnation, hashed = db.execute(
            "SELECT incarnation, token_hash FROM sm_nodes WHERE name = 'worker1'").fetchone()
    assert len(hashed) == 64
    claim = {"node": "worker1", "incarnation": incarnation, "firings": [
        {"firing_id": "impostor-1", "task_id": str(uuid.uuid4()), "scheduled": "2030-01-01T00:00:00Z"}]}
    for headers in ({}, {"x-sm-node-token": "guess"}, {"x-sm-node-token": hashed}):
        for path in ("/schedulemaster/claims", "/schedulemaster/claims/release"):
            r = system.pf("POST", path, json=claim, headers=headers)
            assert r.status_code == 403, (path, headers, r.text)
        assert system.pf("POST", "/schedulemaster/firings", json=[], headers=headers).status_code == 403
    system.wait_node()  # the real worker1 went on claiming
