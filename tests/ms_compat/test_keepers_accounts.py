"""Keepers' failure mail through a real SMTP sink; the accounts and settings API extensions."""

from __future__ import annotations

import email
import email.policy
import time

import pytest
from aiosmtpd.controller import Controller

from helpers import AUTH, free_port, md5, wait_until


class Sink:
    def __init__(self):
        self.messages: list[email.message.EmailMessage] = []
        self.envelopes: list[tuple[str, list[str]]] = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd's hook name)
        self.messages.append(email.message_from_bytes(envelope.content, policy=email.policy.default))
        self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        return "250 OK"


@pytest.fixture(scope="module")
def smtp():
    sink = Sink()
    ctl = Controller(sink, hostname="127.0.0.1", port=free_port())
    ctl.start()
    yield ctl, sink
    ctl.stop()


def api(system, method, path, **kw):
    import httpx

    return httpx.request(method, f"{system.api}/api/{path}", headers=AUTH, timeout=30, **kw).json()


def save_config(system, **values):
    return api(system, "POST", "System/SaveConfig", data=values)


def mail_through(system, port: int) -> None:
    """Mail goes to an SMTP server on 127.0.0.1:port."""
    assert save_config(system, Email_SmtpServer="127.0.0.1", Email_SmtpPort=str(port),
                       Email_FromAccount="sm@example.com")["Success"]


def create_user(system, name, email_addr=None, **extra):
    data = {"UserName": name, "RealName": f"{name} 真名", "Password": "secret1", **extra}
    if email_addr:
        data["Email"] = email_addr
    body = api(system, "POST", "Account/Create", data=data)
    assert body["Success"], body
    return body["Data"]


def test_keepers_with_an_email_get_the_failure_mail(system, smtp):
    ctl, sink = smtp
    mail_through(system, ctl.port)
    with_mail = create_user(system, "keeper_a", "keeper.a@example.com")
    without_mail = create_user(system, "keeper_b")
    tid = system.create_plugin("Failing", cron="0/2 * * * * ?", Title="夜间对账",
                               Keepers=[str(with_mail), str(without_mail), "9999"])
    assert system.post("Start", data={"id": tid}).json()["Success"]
    wait_until(lambda: sink.messages or None, timeout=40)
    system.post("Stop", data={"id": tid})
    msg = sink.messages[0]
    assert msg["Subject"] == "任务运行异常 — 夜间对账"
    assert sink.envelopes[0] == ("sm@example.com", ["keeper.a@example.com"])   # only keepers with an email
    assert "keeper_a 真名" in msg["To"] and "ScheduleMaster" in msg["From"]
    html = msg.get_body(("html",)).get_content()
    assert "夜间对账" in html and "the plugin failed on purpose" in html and "Traceback" in html


def test_a_failed_run_once_mails_the_keepers_too(system, smtp):
    ctl, sink = smtp
    mail_through(system, ctl.port)
    keeper = create_user(system, "keeper_once", "once@example.com")
    tid = system.create_plugin("Failing", cron="0 0 0 1 1 ? 2099", Title="只运行一次", Keepers=str(keeper))
    assert system.post("Start", data={"id": tid}).json()["Success"]
    assert system.post("RunOnce", data={"id": tid}).json()["Success"]
    wait_until(lambda: any(m["Subject"] == "任务运行异常 — 只运行一次" for m in sink.messages), timeout=40)
    assert ("sm@example.com", ["once@example.com"]) in sink.envelopes
    system.post("Stop", data={"id": tid})


def test_a_retried_firing_mails_the_keepers_once_after_its_last_attempt(system, smtp, receiver):
    ctl, sink = smtp
    mail_through(system, ctl.port)
    keeper = create_user(system, "keeper_retry", "retry@example.com")
    receiver.on("/keepers/retry", 503, "busy")
    tid = system.create_http(receiver.url("/keepers/retry"), cron="0/15 * * * * ?", Title="重试三次",
                             Keepers=str(keeper), Retries="2", RetryIntervalSeconds="1", FailOnNon2xx="true",
                             RunNow="true")
    wait_until(lambda: any(x["parameters"]["fire"].get("attempt") == 3
                           for x in system.flow_runs(tid) if "fire" in x["parameters"]), timeout=60)
    system.post("Stop", data={"id": tid})
    time.sleep(5)  # what was in flight is recorded, and its mail queued

    def mails():
        return [m for m in sink.messages if m["Subject"] == "任务运行异常 — 重试三次"]

    firings: dict[str, list[int]] = {}
    for x in system.flow_runs(tid):
        fire = x["parameters"].get("fire") or {}
        if fire:
            firings.setdefault(fire["firing_id"], []).append(fire.get("attempt"))
    ended = [f for f, attempts in firings.items() if 3 in attempts]
    assert ended and all(sorted(firings[f]) == [1, 2, 3] for f in ended), firings
    # one mail per firing, after its third attempt; none for the two before
    wait_until(lambda: len(mails()) >= len(ended) or None, timeout=30)
    assert len(mails()) == len(ended), (firings, [m.get_body(("html",)).get_content()[:400] for m in mails()])


def test_keepers_hear_after_failures_in_a_row(system, smtp, receiver):
    ctl, sink = smtp
    mail_through(system, ctl.port)
    keeper = create_user(system, "keeper_streak", "streak@example.com")
    receiver.on("/keepers/streak", 500, "down")
    tid = system.create_http(receiver.url("/keepers/streak"), cron="* * * * * ?", Title="连续失败",
                             Keepers=str(keeper), FailOnNon2xx="true", AlarmAfterFailures="3", RunNow="true")
    wait_until(lambda: (lambda r: r if len(r) >= 7 else None)(
        [x for x in system.flow_runs(tid) if "fire" in x["parameters"]]), timeout=60)
    system.post("Stop", data={"id": tid})
    time.sleep(3)  # what the last recorded failures would mail is queued by now

    def mails():
        return [m for m in sink.messages if m["Subject"] == "任务运行异常 — 连续失败"]

    failed = len([x for x in system.flow_runs(tid) if "fire" in x["parameters"]])
    wait_until(lambda: len(mails()) == failed // 3 or None, timeout=30)
    assert len(mails()) == failed // 3 >= 2, (failed, len(mails()))
    assert "3 failures in a row" in mails()[0].get_body(("html",)).get_content()


def test_keepers_hear_of_a_firing_later_than_its_alarm_late_seconds(system, smtp, receiver):
    """Each run takes 2.5 s and the task fires every second (OverlapPolicy queue): the firing
    that waited starts ~1.5 s late, past AlarmLateSeconds 1, and is told; one on time is not."""
    ctl, sink = smtp
    mail_through(system, ctl.port)
    keeper = create_user(system, "keeper_late", "late@example.com")
    receiver.on("/keepers/late", 200, "success", delay=2.5)
    tid = system.create_http(receiver.url("/keepers/late"), cron="* * * * * ?", Title="迟到告警",
                             Keepers=str(keeper), AlarmLateSeconds="1", RunNow="true")

    def mails():
        return [m for m in sink.messages if m["Subject"] == "任务运行异常 — 迟到告警"]

    wait_until(lambda: mails() or None, timeout=40)
    system.post("Stop", data={"id": tid})
    html = mails()[0].get_body(("html",)).get_content()
    assert "after its instant (AlarmLateSeconds 1)" in html
    runs = [x for x in system.flow_runs(tid) if "fire" in x["parameters"]]
    assert min(x["parameters"]["fire"]["lateness_ms"] for x in runs) < 1000  # the first was on time ...
    on_time = [x for x in runs if x["parameters"]["fire"]["lateness_ms"] < 1000]
    assert all("late_alarm" not in x["parameters"]["fire"] for x in on_time)  # ... and not flagged


def test_an_unreachable_smtp_server_does_not_hurt_the_runs(system, receiver):
    closed = free_port()
    mail_through(system, closed)
    keeper = create_user(system, "keeper_c", "keeper.c@example.com")
    tid = system.create_plugin("Failing", cron="0/2 * * * * ?", Title="no smtp", Keepers=str(keeper))
    assert system.post("Start", data={"id": tid}).json()["Success"]
    runs = wait_until(lambda: (lambda r: r if len(r) >= 3 else None)(
        [x for x in system.flow_runs(tid) if "fire" in x["parameters"]]), timeout=40)
    system.post("Stop", data={"id": tid})
    fires = sorted(x["parameters"]["fire"]["lateness_ms"] for x in runs)
    assert all(x["state_type"] == "FAILED" for x in runs)
    assert fires[len(fires) // 2] < 1000   # still on time: the mail is off the firing path
    master_log = system.data_dir / "logs" / "master.log"
    wait_until(lambda: "notifying the keepers of " + tid in master_log.read_text(errors="replace"))
    assert save_config(system, Email_SmtpServer="")["Success"]


def test_accounts_round_trip_and_the_new_secret_works(system):
    uid = create_user(system, "Ops_User", "ops@example.com", Phone="+86 10 1234")
    assert api(system, "POST", "Account/Create", data={"UserName": "ops_user", "RealName": "dup",
                                                        "Password": "secret1"}) == {
        "Success": False, "Status": 0, "Message": "用户名已存在!", "Data": None}   # case-insensitive
    rows = api(system, "GET", "Account/QueryList", params={"pageNumber": 1, "pageSize": 100, "name": "ops"})
    row = next(r for r in rows["Data"]["rows"] if r["Id"] == uid)
    assert (row["UserName"], row["Email"], row["Status"]) == ("Ops_User", "ops@example.com", 1)
    secret = md5("Ops_User" + md5("secret1") + "Ops_User")
    import httpx
    ok = httpx.get(f"{system.api}/api/Task/QueryList", params={"pageNumber": 1, "pageSize": 1},
                   headers={"ms_auth_user": "Ops_User", "ms_auth_secret": secret})
    assert ok.status_code == 200
    assert api(system, "POST", "Account/Edit", data={"Id": uid, "RealName": "运维", "Email": "new@example.com"})["Success"]
    assert api(system, "POST", "Account/Disable", data={"id": uid})["Success"]
    denied = httpx.get(f"{system.api}/api/Task/QueryList", params={"pageNumber": 1, "pageSize": 1},
                       headers={"ms_auth_user": "Ops_User", "ms_auth_secret": secret})
    assert denied.status_code == 401
    assert api(system, "POST", "Account/Enable", data={"id": uid})["Success"]
    assert api(system, "POST", "Account/Delete", params={"id": uid})["Success"]
    assert api(system, "POST", "Account/Edit", data={"Id": uid, "RealName": "x"})["Message"] == "账号不存在!"


@pytest.mark.parametrize("data, message", [
    ({"UserName": "a b", "RealName": "x", "Password": "secret1"}, "用户名只能包含"),
    ({"UserName": "shorty", "RealName": "x", "Password": "123"}, "密码至少 6 位!"),
    ({"UserName": "mailbad", "RealName": "x", "Password": "secret1", "Email": "not-an-email"}, "邮箱格式不正确!"),
    ({"UserName": "<script>", "RealName": "x", "Password": "secret1"}, "用户名只能包含"),
])
def test_bad_account_input_is_refused_and_changes_nothing(system, data, message):
    before = api(system, "GET", "Account/QueryList", params={"pageNumber": 1, "pageSize": 1000})["Data"]["total"]
    body = api(system, "POST", "Account/Create", data=data)
    assert body["Success"] is False and body["Message"].startswith(message)
    assert api(system, "GET", "Account/QueryList", params={"pageNumber": 1, "pageSize": 1000})["Data"]["total"] == before


def test_account_validation_and_auth_use_the_legacy_shapes(system):
    import httpx

    r = httpx.post(f"{system.api}/api/Account/Create", data={"RealName": "x" * 51}, headers=AUTH)
    assert r.status_code == 400 and set(r.json()["errors"]) == {"UserName", "RealName"}
    r = httpx.get(f"{system.api}/api/Account/QueryList", headers={"ms_auth_user": "admin", "ms_auth_secret": "x"})
    assert r.status_code == 401
    me = api(system, "POST", "Account/Disable", data={"id": 1})
    assert me["Success"] is False and "当前登录" in me["Message"]


def test_settings_read_masked_validated_and_all_or_nothing(system):
    assert save_config(system, Email_FromAccountPwd="hunter2")["Success"]
    rows = {r["Key"]: r for r in api(system, "GET", "System/Configs")["Data"]}
    assert rows["Email_FromAccountPwd"]["Value"] == "******" and rows["Http_RequestTimeout"]["Value"] == "10"
    assert save_config(system, Email_FromAccountPwd="******")["Success"]        # unchanged
    bad = save_config(system, Http_RequestTimeout="15", DelayTask_DelayPattern="Sometimes")
    assert bad["Success"] is False and "DelayTask_DelayPattern" in bad["Message"]
    rows = {r["Key"]: r for r in api(system, "GET", "System/Configs")["Data"]}
    assert rows["Http_RequestTimeout"]["Value"] == "10"                         # nothing saved
    assert save_config(system, NoSuchKey="1")["Message"].startswith("未知的配置项")
    assert save_config(system, Http_RequestTimeout="x" * 2000)["Success"] is False
    assert save_config(system, Http_RequestTimeout="12")["Success"]
    assert save_config(system, Http_RequestTimeout="10")["Success"]


def test_a_prefect_notification_block_is_an_extra_failure_channel(system, receiver):
    import subprocess
    import sys

    code = ("from prefect.blocks.notifications import CustomWebhookNotificationBlock as B\n"
            f"B(name='sm', url={receiver.url('/hook')!r}, json_data={{'text': '{{{{body}}}}'}}).save('sm-hook')\n")
    made = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, **system.client_env,
                                                    "PREFECT_API_URL": system.prefect})
    assert made.returncode == 0, made.stderr
    tid = system.create_plugin("Failing", cron="0/2 * * * * ?", Title="webhook watched",
                               NotifyBlocks="custom-webhook/sm-hook")
    assert system.post("Start", data={"id": tid}).json()["Success"]
    hit = receiver.wait_for("/hook", 1, timeout=40)[0]
    system.post("Stop", data={"id": tid})
    import json
    assert "任务运行异常 — webhook watched" in json.loads(hit.body)["text"]


@pytest.mark.parametrize("value, message", [
    ("custom-webhook/no-such-block", "通知块不存在：custom-webhook/no-such-block"),
    ("not a slug", "通知块名称无效"),
    ("../../etc", "通知块名称无效"),
])
def test_unknown_or_malformed_notify_blocks_are_refused(system, value, message):
    body = system.post("Create", data={"Title": "x", "MetaType": "1", "RunLoop": "true",
                                       "CronExpression": "0/2 * * * * ?", "AssemblyName": "m",
                                       "ClassName": "c", "NotifyBlocks": value}).json()
    assert body["Success"] is False and body["Message"].startswith(message)


def _cli(system, *args, env=None):
    from helpers import run_cli

    return run_cli(*args, "--api", system.api, env=env)


def test_the_account_and_config_cli(system):
    made = _cli(system, "account", "create", "cli_user", "--real-name", "命令行", "--new-password", "secret9",
                "--email", "cli@example.com")
    assert made.returncode == 0 and "账号创建成功!" in made.stdout, made.stderr
    listed = _cli(system, "account", "list", "--name", "cli_user")
    assert listed.returncode == 0 and "cli@example.com" in listed.stdout
    dup = _cli(system, "account", "create", "CLI_USER", "--real-name", "x", "--new-password", "secret9")
    assert dup.returncode == 1 and "用户名已存在!" in dup.stderr
    as_new = _cli(system, "config", "list", env={"SM_USER": "cli_user", "SM_PASSWORD": "secret9"})
    assert as_new.returncode == 1 and "403" in as_new.stderr  # a new account is an operator
    uid = made.stdout.split("id=")[1].split()[0]
    bad_role = _cli(system, "account", "edit", uid, "--real-name", "命令行", "--role", "root")
    assert bad_role.returncode == 1 and "Role" in bad_role.stderr
    promoted = _cli(system, "account", "edit", uid, "--real-name", "命令行", "--email", "cli@example.com",
                    "--role", "admin")
    assert promoted.returncode == 0, promoted.stderr
    assert "admin" in _cli(system, "account", "list", "--name", "cli_user").stdout
    as_new = _cli(system, "config", "list", env={"SM_USER": "cli_user", "SM_PASSWORD": "secret9"})
    assert as_new.returncode == 0 and "Http_RequestTimeout" in as_new.stdout
    wrong = _cli(system, "config", "list", env={"SM_USER": "cli_user", "SM_PASSWORD": "nope"})
    assert wrong.returncode == 1 and "401" in wrong.stderr
    bad = _cli(system, "config", "set", "Http_RequestTimeout=soon")
    assert bad.returncode == 1 and "Http_RequestTimeout 的值无效" in bad.stderr
    malformed = _cli(system, "config", "set", "no-equals-sign")
    assert malformed.returncode == 2
    assert _cli(system, "config", "set", "Http_RequestTimeout=10").returncode == 0
    unreachable = subprocess_unreachable()
    assert unreachable.returncode == 1 and "cannot reach" in unreachable.stderr


def subprocess_unreachable():
    import subprocess
    import sys

    from helpers import free_port

    return subprocess.run([sys.executable, "-m", "schedulemaster.cli", "account", "list", "--api",
                           f"http://127.0.0.1:{free_port()}"], capture_output=True, text=True, timeout=60)


def test_the_keeper_mail_block_mails_a_team_list(system, smtp):
    import os
    import subprocess
    import sys

    ctl, sink = smtp
    code = ("from schedulemaster.blocks.keeper_mail import KeeperMail\n"
            f"KeeperMail(to=['oncall@example.com', 'team@example.com'], smtp_server='127.0.0.1', "
            f"smtp_port={ctl.port}, from_account='sm@example.com').save('oncall')\n")
    made = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **system.client_env, "PREFECT_API_URL": system.prefect})
    assert made.returncode == 0, made.stderr
    tid = system.create_plugin("Failing", cron="0/2 * * * * ?", Title="团队告警", NotifyBlocks="keeper-mail/oncall")
    assert system.post("Start", data={"id": tid}).json()["Success"]
    wait_until(lambda: any(m["Subject"] == "任务运行异常 — 团队告警" for m in sink.messages), timeout=40)
    system.post("Stop", data={"id": tid})
    i = next(i for i, m in enumerate(sink.messages) if m["Subject"] == "任务运行异常 — 团队告警")
    assert sink.envelopes[i][1] == ["oncall@example.com", "team@example.com"]
    assert "the plugin failed on purpose" in sink.messages[i].get_body(("html",)).get_content()
