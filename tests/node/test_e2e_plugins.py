"""Plugin tasks (MetaType 1) and child chains on a real server, node and receiver."""

from __future__ import annotations

import json
import os
import time

import httpx
import pytest

from helpers import wait_until

pytestmark = pytest.mark.e2e


def bodies(receiver, path):
    return [json.loads(h.body) for h in receiver.at(path)]


def start_runs(system, tid):
    return [r for r in system.flow_runs(tid) if "sm:start" in r["tags"]]


def test_plugin_task_lives_from_start_to_stop(system, receiver):
    tid = system.create_plugin("Counter", params={
        "url": receiver.url("/counter"), "n": 5, "ratio": "0.5", "flag": "True", "bad": "abc"})
    assert system.post("Start", data={"id": tid}).json() == {
        "Success": True, "Status": 1, "Message": "任务启动成功!", "Data": None}
    # the Start itself ran on the node as a Prefect flow run and says so
    start = wait_until(lambda: [r for r in start_runs(system, tid) if r["state_type"] == "COMPLETED"])
    wait_until(lambda: any("已加载并完成初始化" in m for m in system.run_logs(start[0]["id"])))

    hits = [json.loads(h.body) for h in receiver.wait_for("/counter", 3, timeout=30)]
    assert [h["runs"] for h in hits[:3]] == [1, 2, 3]                  # one instance, state kept
    assert len({h["inits"] for h in hits}) == 1                         # initialize once
    h = hits[0]
    assert (h["n"], h["ratio"], h["flag"], h["missing"], h["bad"]) == (5, 0.5, True, 0, 0)
    assert h["task"] == tid and h["node"] == "worker1" and h["previous"] is None

    # the configuration file in the task's own directory is reloaded when it changes
    cfg = system.data_dir / "nodes" / "worker1" / "plugins" / tid / "counter.json"
    cfg.write_text(json.dumps({"limit": 7}))
    cfg.chmod(0o600)  # as the system's own files in its data directory (test_security checks them all)
    os.utime(cfg, ns=(time.time_ns() + 10**9,) * 2)
    seen = len(receiver.at("/counter"))
    wait_until(lambda: any(b["config"] == {"limit": 7} for b in bodies(receiver, "/counter")[seen:]), timeout=20)

    # every firing is a run with the plugin's own log line
    runs = wait_until(lambda: [r for r in system.flow_runs(tid) if "fire" in r["parameters"]
                               and r["state_type"] == "COMPLETED"] or None, timeout=30)
    wait_until(lambda: any(m.startswith("counter run ") for m in system.run_logs(runs[0]["id"])))

    # RunOnce goes to the same node and the same instance
    before = max(b["runs"] for b in bodies(receiver, "/counter"))
    assert system.post("RunOnce", data={"id": tid}).json()["Success"]
    wait_until(lambda: any(r for r in system.flow_runs(tid) if "sm:run-once" in r["tags"]
                           and r["state_type"] == "COMPLETED"), timeout=30)
    assert max(b["runs"] for b in bodies(receiver, "/counter")) > before
    assert len({b["inits"] for b in bodies(receiver, "/counter")}) == 1
    assert system.post("Stop", data={"id": tid}).json()["Success"]


def test_pause_cancels_and_stop_disposes(system, receiver):
    tid = system.create_plugin("Disposable", cron="0/2 * * * * ?",
                               params={"url": receiver.url("/disp"), "sleep": "30"})
    assert system.post("Start", data={"id": tid}).json()["Success"]
    receiver.wait_for("/disp/run", 1, timeout=20)
    t0 = time.monotonic()
    assert system.post("Pause", data={"id": tid}).json()["Success"]
    woke = receiver.wait_for("/disp/woke", 1, timeout=20)
    assert json.loads(woke[0].body) == {"cancelled": True} and time.monotonic() - t0 < 15
    assert system.post("Stop", data={"id": tid}).json()["Success"]
    assert json.loads(receiver.wait_for("/disp/disposed", 1, timeout=20)[0].body) == {"task": tid}


@pytest.mark.parametrize("module, cls, why", [
    ("sm_demo_plugins", "BadInit", "cannot connect to the warehouse"),
    ("sm_demo_plugins", "BadConstructor", "constructor exploded"),
    ("sm_demo_plugins", "NotATask", "is not a TaskBase subclass"),
    ("sm_no_such_plugin_module", "Job", "cannot import module 'sm_no_such_plugin_module'"),
])
def test_a_plugin_that_cannot_start_fails_the_start_and_says_why(system, module, cls, why):
    tid = system.create_plugin(cls, module=module, Title=f"bad {cls}")
    assert system.post("Start", data={"id": tid}).json() == {
        "Success": False, "Status": 0, "Message": "任务启动失败!", "Data": None}
    assert system.detail(tid)["Status"] == 0                            # still Stop
    run = wait_until(lambda: [r for r in start_runs(system, tid) if r["state_type"] == "FAILED"])[0]
    wait_until(lambda: any(why in m for m in system.run_logs(run["id"])))


def test_a_failing_plugin_run_is_a_failed_run_with_its_traceback(system):
    tid = system.create_plugin("Failing", Title="failing plugin")
    assert system.post("Start", data={"id": tid}).json()["Success"]
    run = wait_until(lambda: [r for r in system.flow_runs(tid) if "fire" in r["parameters"]
                              and r["state_type"] == "FAILED"] or None, timeout=30)[0]
    logs = wait_until(lambda: system.run_logs(run["id"]) or None)
    assert any("ValueError: the plugin failed on purpose" in m for m in logs)
    assert any(m.startswith('任务"failing plugin"运行失败！，ERROR：ValueError') for m in logs)
    system.post("Stop", data={"id": tid})


def test_a_three_level_chain_passes_results_down(system, receiver):
    url = receiver.url
    grand = system.create_plugin("plain_job", cron="0 0 0 1 1 ? 2099", params={"url": url("/chain/3")},
                                 Title="grandchild")
    child = system.create_plugin("LegacyNames", cron="0 0 0 1 1 ? 2099", params={"url": url("/chain/2")},
                                 Title="child", Nexts=grand)
    parent = system.create_plugin("Counter", cron="0/3 * * * * ?", params={"url": url("/chain/1")},
                                  Title="parent", Nexts=child)
    for tid in (grand, child, parent):
        assert system.post("Start", data={"id": tid}).json()["Success"]
    first = json.loads(receiver.wait_for("/chain/1", 1, timeout=30)[0].body)
    second = json.loads(receiver.wait_for("/chain/2", 1, timeout=30)[0].body)
    third = json.loads(receiver.wait_for("/chain/3", 1, timeout=30)[0].body)
    assert second["prev"] == {"from": parent, "runs": first["runs"]}
    assert third == {"plain": True, "previous": "legacy-result"}
    # in the UI the child's run hangs under the parent's run
    child_run = wait_until(lambda: [r for r in system.flow_runs(child) if r["parent_task_run_id"]] or None,
                           timeout=30)[0]
    task_run = system.pf("GET", f"/task_runs/{child_run['parent_task_run_id']}").json()
    parent_ids = {r["id"] for r in system.flow_runs(parent)}
    assert task_run["flow_run_id"] in parent_ids
    for tid in (parent, child, grand):
        system.post("Stop", data={"id": tid})


def test_a_failing_parent_runs_no_child(system, receiver):
    child = system.create_plugin("plain_job", cron="0 0 0 1 1 ? 2099", params={"url": receiver.url("/nochild")},
                                 Title="never")
    parent = system.create_plugin("Failing", cron="0/2 * * * * ?", Title="failing parent", Nexts=child)
    for tid in (child, parent):
        assert system.post("Start", data={"id": tid}).json()["Success"]
    wait_until(lambda: len([r for r in system.flow_runs(parent) if r["state_type"] == "FAILED"]) >= 2,
               timeout=30)
    time.sleep(1)
    assert receiver.at("/nochild") == []
    for tid in (parent, child):
        system.post("Stop", data={"id": tid})


def test_cycles_are_refused_with_the_cycle_named(system):
    a = system.create_plugin("plain_job", Title="cycle A")
    b = system.create_plugin("plain_job", Title="cycle B", Nexts=a)
    body = system.post("Edit", data={"Id": a, "Title": "cycle A", "MetaType": "1", "RunLoop": "true",
                                     "CronExpression": "0/2 * * * * ?", "AssemblyName": "sm_demo_plugins",
                                     "ClassName": "plain_job", "Nexts": b}).json()
    assert body["Success"] is False and "cycle A → cycle B → cycle A" in body["Message"]


def _package(version: str) -> bytes:
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("sm_uploaded/__init__.py", "")
        zf.writestr("sm_uploaded/jobs.py", (
            "import json, urllib.request\n"
            "from schedulemaster import TaskBase\n"
            "class Report(TaskBase):\n"
            "    def initialize(self):\n"
            "        self.set_configuration_file('report.json')\n"
            "    def run(self, context):\n"
            "        body = json.dumps({'version': %r, 'config': self.configuration}).encode()\n"
            "        req = urllib.request.Request(context.get_argument('url'), data=body, method='POST')\n"
            "        urllib.request.urlopen(req, timeout=10).read()\n") % version)
        zf.writestr("report.json", '{"shipped": true}')
    return buf.getvalue()


def test_an_uploaded_package_runs_and_a_new_upload_takes_effect_at_the_next_start(system, receiver, tmp_path):
    import subprocess
    import sys

    from helpers import AUTH

    up = httpx.post(f"{system.api}/api/Task/UploadPlugin", headers=AUTH,
                    files={"file": ("sm_uploaded.zip", _package("v1"), "application/zip")}).json()
    assert up["Success"] and up["Data"]["Name"] == "sm_uploaded", up
    tid = system.create_plugin("jobs.Report", module="sm_uploaded", params={"url": receiver.url("/pkg")},
                               Title="uploaded")
    assert system.post("Start", data={"id": tid}).json()["Success"]
    first = json.loads(receiver.wait_for("/pkg", 1, timeout=30)[0].body)
    assert first == {"version": "v1", "config": {"shipped": True}}  # the zip's own config file

    # the CLI uploads v2; the running task keeps v1 until it is started again
    pkg = tmp_path / "sm_uploaded.zip"
    pkg.write_bytes(_package("v2"))
    cli = subprocess.run([sys.executable, "-m", "schedulemaster.cli", "plugin", "upload", str(pkg),
                          "--api", system.api], capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0 and "uploaded sm_uploaded.zip" in cli.stdout, cli.stderr
    n = len(receiver.at("/pkg"))
    receiver.wait_for("/pkg", n + 1, timeout=20)
    assert json.loads(receiver.at("/pkg")[-1].body)["version"] == "v1"
    assert system.post("Stop", data={"id": tid}).json()["Success"]
    assert system.post("Start", data={"id": tid}).json()["Success"]
    wait_until(lambda: json.loads(receiver.at("/pkg")[-1].body)["version"] == "v2", timeout=30)
    system.post("Stop", data={"id": tid})


@pytest.mark.parametrize("files, message", [
    ({"file": ("evil.zip", b"PK\x05\x06" + b"\0" * 18, "application/zip")}, "插件包无效"),
    ({"file": ("notes.txt", b"hello", "text/plain")}, "插件包无效"),
    ({"other": ("sm_x.zip", b"x", "application/zip")}, "请选择要上传的插件包"),
])
def test_bad_uploads_are_refused_in_the_envelope(system, files, message):
    from helpers import AUTH

    body = httpx.post(f"{system.api}/api/Task/UploadPlugin", headers=AUTH, files=files).json()
    assert body["Success"] is False and body["Message"].startswith(message)


def test_upload_needs_auth_and_a_bounded_body(system):
    import socket

    r = httpx.post(f"{system.api}/api/Task/UploadPlugin", files={"file": ("a.zip", b"x", "application/zip")})
    assert r.status_code == 401
    # a declared body beyond the package limit is refused before a byte of it is read
    with socket.create_connection(("127.0.0.1", system.api_port), timeout=10) as sock:
        sock.sendall(b"POST /api/Task/UploadPlugin HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 1000000000\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 413")


def test_params_bound_from_indexed_form_fields_reach_the_plugin(system, receiver):
    data = {"Title": "indexed params", "MetaType": "1", "RunLoop": "true", "CronExpression": "0/2 * * * * ?",
            "AssemblyName": "sm_demo_plugins", "ClassName": "Counter",
            "Params[0].ParamKey": "url", "Params[0].ParamValue": receiver.url("/indexed"),
            "Params[0].ParamRemark": "where to report",
            "Params[1].ParamKey": "n", "Params[1].ParamValue": "9", "Params[1].ParamRemark": ""}
    body = system.post("Create", data=data).json()
    assert body["Success"], body
    tid = body["Data"]
    assert system.post("Start", data={"id": tid}).json()["Success"]
    hit = json.loads(receiver.wait_for("/indexed", 1, timeout=30)[0].body)
    assert hit["n"] == 9 and hit["task"] == tid
    system.post("Stop", data={"id": tid})
