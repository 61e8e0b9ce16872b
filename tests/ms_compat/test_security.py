"""Secure by default: every finding of the security review replayed against a running system.

Each test is the attack as it was found, and asserts the refusal.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import uuid
from datetime import datetime, timezone

import httpx
import pytest


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
    ("HEAD", "/schedulemaster/plugins/anything", None),
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


def test_the_import_dry_run_is_no_password_oracle(system):
    from helpers import AUTH, md5

    assert system.get("QueryList", {"pageNumber": 1, "pageSize": 1}, headers=AUTH).status_code == 200  # admin / 111111

    def dry(kind: str, items: list[dict]) -> list[dict]:
        r = system.pf("POST", f"/schedulemaster/import/{kind}", json={"options": {"dry_run": True}, "items": items})
        assert r.status_code == 200, r.text
        return [{k: o[k] for k in ("action", "message")} for o in r.json()["outcomes"]]

    admin = {"id": 1, "username": "admin", "realname": "超级管理员", "phone": None, "email": None, "status": 1,
             "createtime": "2024-01-01T00:00:00"}
    right, wrong = dry("users", [dict(admin, password=md5("111111")), dict(admin, password=md5("guess"))])
    assert right == wrong, (right, wrong)
    right, wrong = dry("settings", [{"key": "Email_FromAccountPwd", "value": ""},
                                    {"key": "Email_FromAccountPwd", "value": "guess"}])
    assert right == wrong, (right, wrong)
    assert system.get("QueryList", {"pageNumber": 1, "pageSize": 1}, headers=AUTH).status_code == 200  # unchanged


# ---- hostile input at Create / Edit / DelayTask Create --------------------------------------

def _http_task(receiver, **fields) -> dict[str, str]:
    return {"Title": "hostile", "MetaType": "2", "RunLoop": "true", "CronExpression": "0/5 * * * * ?",
            "HttpRequestUrl": receiver.url("/hostile"), "HttpMethod": "POST",
            "HttpContentType": "application/json", "HttpBody": "{}", **fields}


DEEP = "[" * 3000 + "]" * 3000
HOSTILE_TASKS = [
    ("HttpHeaders", {"HttpHeaders": '[{"ParamKey":"X-A","ParamValue":"v\\r\\nHost: evil"}]'}),
    ("HttpHeaders", {"HttpHeaders": '[{"ParamKey":"X-A\\r\\nHost","ParamValue":"v"}]'}),
    ("HttpHeaders", {"HttpHeaders": '[{"ParamKey":"Content-Length","ParamValue":"5"}]'}),
    ("HttpHeaders", {"HttpHeaders": '[{"ParamKey":"Host","ParamValue":"evil"}]'}),
    ("HttpHeaders", {"HttpHeaders": '[{"ParamKey":"Transfer-Encoding","ParamValue":"chunked"}]'}),
    ("HttpRequestUrl", {"HttpRequestUrl": "http://127.0.0.1:8000/x\r\nHost: evil"}),
    ("HttpRequestUrl", {"HttpRequestUrl": "http://127.0.0.1:0/x"}),
    ("HttpRequestUrl", {"HttpRequestUrl": "http://127.0.0.1:99999/x"}),
    ("HttpRequestUrl", {"HttpRequestUrl": "http://169.254.169.254/latest/meta-data/"}),
    ("HttpRequestUrl", {"HttpRequestUrl": "http://[fe80::1]/x"}),
    ("HttpRequestUrl", {"HttpRequestUrl": "http://metadata.google.internal/computeMetadata/v1/"}),
    ("HttpMethod", {"HttpMethod": "FOO"}),
    ("cron", {"CronExpression": "0 0 0 31 2 ?"}),
    ("cron", {"CronExpression": "0 0 0 1 1 ? 2001"}),
    ("cron", {"CronExpression": "0 0 0 31W 2 ?"}),
    ("EndDate", {"EndDate": "0001-01-01 00:00:00"}),
    ("Keepers", {"Keepers": "-1"}),
    ("Keepers", {"Keepers": "0"}),
    ("Title", {"Title": "a\x00b"}),
    ("CustomParamsJson", {"CustomParamsJson": DEEP}),
    ("HttpHeaders", {"HttpHeaders": DEEP}),
    ("HttpBody", {"HttpContentType": "application/x-www-form-urlencoded", "HttpBody": DEEP[:1000]}),
]


@pytest.mark.parametrize("field,fields", HOSTILE_TASKS, ids=[f"{f}-{i}" for i, (f, _) in enumerate(HOSTILE_TASKS)])
def test_hostile_task_fields_are_refused_with_the_field_named(system, receiver, field, fields):
    before = system.get("QueryList", {"pageNumber": 1, "pageSize": 1}).json()["total"]
    r = system.post("Create", data=_http_task(receiver, **fields))
    assert r.status_code in (200, 400), r.text
    body = r.json()
    if r.status_code == 200:
        assert body["Success"] is False and field.lower() in body["Message"].lower(), body
    else:
        assert any(field.lower() in k.lower() for k in body["errors"]), body
    assert system.get("QueryList", {"pageNumber": 1, "pageSize": 1}).json()["total"] == before


def test_hostile_fields_are_refused_at_edit_and_the_task_is_unchanged(system, receiver):
    tid = system.create_http(receiver.url("/hostile-edit"), cron="0 0 3 * * ?", Title="edit me")
    try:
        for _field, fields in HOSTILE_TASKS[:6]:
            r = system.post("Edit", data=_http_task(receiver, Id=tid, **fields)).json()
            assert r["Success"] is False, r
        d = system.detail(tid)
        assert d["Title"] == "edit me"
        spec = system.pf("GET", f"/deployments/{tid}").json()["parameters"]["task"]
        assert spec["Http"]["Headers"] in (None, "") and spec["Http"]["RequestUrl"] == receiver.url("/hostile-edit")
    finally:
        system.post("Delete", data={"id": tid})


def test_metadata_addresses_can_be_allowed_by_a_setting(system, receiver):
    from helpers import AUTH

    cfg = lambda **v: httpx.post(f"{system.api}/api/System/SaveConfig", data=v, headers=AUTH, timeout=30).json()  # noqa: E731
    assert cfg(Http_AllowedNetworks="not a network")["Success"] is False
    assert cfg(Http_AllowedNetworks="169.254.0.0/16")["Success"] is True
    try:
        r = system.post("Create", data=_http_task(receiver, HttpRequestUrl="http://169.254.1.1/x",
                                                    CronExpression="0 0 3 * * ?", Title="allowed now")).json()
        assert r["Success"], r
        system.post("Delete", data={"id": r["Data"]})
        assert cfg(Http_DeniedNetworks="10.99.0.0/16")["Success"] is True
        r = system.post("Create", data=_http_task(receiver, HttpRequestUrl="http://10.99.1.1/x")).json()
        assert r["Success"] is False and "HttpRequestUrl" in r["Message"]
    finally:
        cfg(Http_AllowedNetworks="", Http_DeniedNetworks="")


HOSTILE_CALLBACKS = [
    {"NotifyUrl": "http://169.254.169.254/latest/meta-data/"},
    {"NotifyUrl": "http://127.0.0.1:8000/x\r\nHost: evil"},
    {"NotifyUrl": "http://127.0.0.1:0/x"},
    {"NotifyUrl": "http://metadata.google.internal/"},
    {"NotifyDataType": "application/x-www-form-urlencoded", "NotifyBody": DEEP[:1000]},
]


@pytest.mark.parametrize("fields", HOSTILE_CALLBACKS, ids=[str(i) for i in range(len(HOSTILE_CALLBACKS))])
def test_hostile_delayed_callbacks_are_refused(system, receiver, fields):
    from helpers import AUTH

    key = f"hostile-{uuid.uuid4()}"
    data = {"SourceApp": "sec", "Topic": "hostile", "ContentKey": key, "DelayTimeSpan": "60",
            "NotifyUrl": receiver.url("/cb"), "NotifyDataType": "application/json", "NotifyBody": "{}", **fields}
    r = httpx.post(f"{system.api}/api/DelayTask/Create", data=data, headers=AUTH, timeout=30).json()
    assert r["Success"] is False and "Notify" in r["Message"], r
    rows = httpx.get(f"{system.api}/api/DelayTask/QueryList", headers=AUTH, timeout=30,
                     params={"contentKey": key, "pageNumber": 1, "pageSize": 10}).json()["Data"]
    assert rows["total"] == 0


# ---- bodies, throttling ----------------------------------------------------------------------

def test_a_large_body_is_refused_before_it_is_read(system):
    """Without credentials, a 10 MiB batch is answered 401 before its body is read: the
    client is still sending when the answer comes."""
    import socket
    import time

    for path in ("/api/DelayTask/CreateBatch", "/api/Task/UploadPlugin"):
        with socket.create_connection(("127.0.0.1", system.api_port), timeout=10) as sock:
            sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         f"Content-Length: {10 * 1024 * 1024}\r\n\r\n".encode() + b"[" * 1024)
            t0 = time.monotonic()
            answer = sock.recv(4096)
            assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
            assert time.monotonic() - t0 < 10


def test_a_body_that_stops_arriving_is_cut_off(system):
    import socket

    with socket.create_connection(("127.0.0.1", system.api_port), timeout=60) as sock:
        sock.sendall(b"POST /api/Task/Create HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                     b"Content-Length: 1000\r\n\r\nTitle=half")
        answer = sock.recv(4096)  # the server answers, then closes; it does not wait for good
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]


def _parallel_failures(system, count: int, wait: float, headers_of) -> int:
    """Send ``count`` wrong logins at once; how many were answered within ``wait`` seconds."""
    import asyncio

    async def run() -> int:
        async with httpx.AsyncClient(timeout=60) as client:
            calls = [asyncio.create_task(client.get(f"{system.api}/api/Task/QueryList", headers=headers_of(i),
                                                    params={"pageNumber": 1, "pageSize": 1})) for i in range(count)]
            done, pending = await asyncio.wait(calls, timeout=wait)
            for p in pending:
                p.cancel()
            assert all(d.result().status_code == 401 for d in done)
            return len(done)

    return asyncio.run(run())


def test_login_throttling_holds_under_parallel_attempts_and_rotating_forwarded_for(system):
    """30 wrong guesses at once: without turns all were answered at once; with them, after 5
    free failures each waits 0.1 s more than the last, so within 3 s at most about 12 answer
    (a slower machine answers fewer, never more)."""
    name = f"victim-{uuid.uuid4().hex[:6]}"
    answered = _parallel_failures(system, 30, 3.0, lambda i: {"ms_auth_user": name, "ms_auth_secret": f"guess{i}"})
    assert answered <= 15, answered
    name = f"victim-{uuid.uuid4().hex[:6]}"
    answered = _parallel_failures(system, 30, 3.0, lambda i: {"ms_auth_user": name, "ms_auth_secret": f"guess{i}",
                                                              "X-Forwarded-For": f"10.0.{i}.1"})
    assert answered <= 15, answered  # the header is not believed: one address, one budget


# ---- roles and the audit trail on a running system -------------------------------------------

def test_an_operator_runs_tasks_a_viewer_reads_and_prefect_sees_who_did_it(system, receiver):
    import time

    from helpers import wait_until

    import schedulemaster as sm

    admin = sm.LegacyClient(system.api, "admin", "111111")
    suffix = uuid.uuid4().hex[:6]
    admin.create_user(f"op{suffix}", "secret1", "operator", role="operator")
    admin.create_user(f"vw{suffix}", "secret1", "viewer", role="viewer")
    op = sm.LegacyClient(system.api, f"op{suffix}", "secret1")
    viewer = sm.LegacyClient(system.api, f"vw{suffix}", "secret1")
    since = time.time()
    tid = op.create_task(Title=f"operated {suffix}", MetaType=2, RunLoop=True, CronExpression="0 0 3 * * ?",
                         HttpRequestUrl=receiver.url("/operated"), HttpMethod="GET",
                         HttpHeaders='[{"ParamKey":"Authorization","ParamValue":"Bearer s3cr3t"}]')
    op.start(tid)
    assert viewer.task(tid)["Status"] == 1
    with pytest.raises(sm.LegacyForbidden):
        viewer.stop(tid)
    with pytest.raises(sm.LegacyForbidden):
        op.users()
    op.stop(tid)
    op.call("POST", "Task/Delete", data={"id": tid})
    trail = admin.audit(resource=tid)
    assert [(e["Action"], e["Actor"], e["Outcome"]) for e in trail] == [
        ("delete", f"op{suffix}", "ok"), ("stop", f"op{suffix}", "ok"), ("stop", f"vw{suffix}", "forbidden"),
        ("start", f"op{suffix}", "ok"), ("create", f"op{suffix}", "ok")]
    assert trail[-1]["Changes"]["HttpHeaders"] == "******" and "s3cr3t" not in json.dumps(trail)

    def events() -> list[dict]:
        r = system.pf("POST", "/events/filter", json={"filter": {
            "event": {"prefix": ["schedulemaster.audit.task."]},
            "related": {"resources_in_roles": [[f"schedulemaster.user.op{suffix}", "actor"]]},
            "occurred": {"since": datetime.fromtimestamp(since - 5, timezone.utc).isoformat()}}, "limit": 50})
        return r.json().get("events", []) if r.status_code == 200 else []

    got = wait_until(lambda: (e := events()) and len(e) >= 4 and e, timeout=30)
    assert {e["event"] for e in got} == {f"schedulemaster.audit.task.{a}" for a in ("create", "start", "stop", "delete")}
    assert all(e["resource"]["prefect.resource.id"] == f"schedulemaster.task.{tid}" for e in got)
    assert "s3cr3t" not in json.dumps(got)
    admin.close(), op.close(), viewer.close()
