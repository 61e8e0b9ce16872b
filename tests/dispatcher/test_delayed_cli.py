"""`schedulemaster delayed ...` against the whole system and a real receiver (through the CLI's
app in this process: helpers.run_cli; the entry point itself once as a subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import httpx
import pytest

from helpers import AUTH, Ran, run_cli, wait_until

COMMANDS = ["list", "show", "create", "create-batch", "void", "execute", "reset"]


def sm(*args: str, api: str | None = None, stdin: str | None = None) -> Ran:
    return run_cli("delayed", *args, *(["--api", api] if api else []), stdin=stdin)


def api(system, method: str, path: str, **kw) -> dict:
    r = httpx.request(method, f"{system.api}/api/{path}", headers=AUTH, timeout=30, **kw)
    r.raise_for_status()
    return r.json()


def detail(system, task_id: str) -> dict | None:
    return api(system, "GET", "DelayTask/QueryDetail", params={"id": task_id})["Data"]


def listed(system, **params) -> dict:
    return api(system, "GET", "DelayTask/QueryList", params={"pageNumber": 1, "pageSize": 1000, **params})["Data"]


def uniq(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def create(system, receiver, path: str, topic: str, *extra: str, key: str = "k1", body: str = '{"n":1}') -> str:
    r = sm("create", "--url", receiver.url(path), "--body", body, "--topic", topic, "--content-key", key, *extra,
           api=system.api)
    assert r.returncode == 0, (r.stdout, r.stderr)
    task_id = r.stdout.strip()
    assert str(uuid.UUID(task_id)) == task_id
    return task_id


def status_of(system, task_id: str) -> int:
    return detail(system, task_id)["Status"]


def wait_status(system, task_id: str, status: int, timeout: float = 30) -> dict:
    return wait_until(lambda: (d := detail(system, task_id)) and d["Status"] == status and d, timeout=timeout)


def shown_status(out: str) -> str:
    return next(line for line in out.splitlines() if line.startswith("Status:")).split(":", 1)[1].strip()


# ---- help ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("cmd", [[], *[[c] for c in COMMANDS]])
def test_help_of_the_group_and_every_command(cmd):
    r = sm(*cmd, "--help")
    assert r.returncode == 0 and "Usage" in r.stdout, r.stderr
    if not cmd:
        assert "延时任务" in r.stdout and all(c in r.stdout for c in COMMANDS)
    if cmd == ["create-batch"]:
        assert "all-or-none" in r.stdout


def test_the_group_is_listed_in_the_top_level_help():
    r = subprocess.run([sys.executable, "-m", "schedulemaster.cli", "--help"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and "delayed" in r.stdout


# ---- create, show, list -------------------------------------------------------------------------
def test_create_relative_fires_and_show_reports_the_success(system, receiver):
    path, topic = f"/{uniq('rel')}", uniq("rel")
    started = time.time()
    tid = create(system, receiver, path, topic, "--after", "2s", "--remark", "from the cli",
                 "--executor", "worker1", body='{"order":42}')
    hits = receiver.wait_for(path, 1, timeout=30)
    assert hits[0].at - started >= 1.5  # not before its delay
    assert hits[0].body == b'{"order":42}'
    assert hits[0].headers["content-type"].startswith("application/json")
    assert hits[0].headers["idempotency-key"] == tid
    wait_status(system, tid, 3)

    r = sm("show", tid, api=system.api)
    assert r.returncode == 0, r.stderr
    assert shown_status(r.stdout).startswith("3 succeeded")
    fields = dict(line.split(":", 1) for line in r.stdout.splitlines() if line[:1].isalpha() and ":" in line)
    assert fields["Id"].strip() == tid and fields["Topic"].strip() == topic
    assert fields["DelayPattern"].strip() == "Relative" and fields["DelayTimeSpan"].strip() == "2"
    assert fields["NotifyUrl"].strip() == receiver.url(path)
    assert fields["SourceApp"].strip() == "cli" and fields["Remark"].strip() == "from the cli"
    assert fields["Executors"].strip() == "worker1"
    table = r.stdout[r.stdout.index("Attempt"):]
    assert "first" in table and "True" in table and "200" in table and "success" in table

    # the id is accepted in any case and in braces, as the API accepts it
    r = sm("show", "{" + tid.upper() + "}", api=system.api)
    assert r.returncode == 0 and tid in r.stdout


def test_create_at_an_absolute_time(system, receiver):
    path, topic = f"/{uniq('abs')}", uniq("abs")
    at = (datetime.now(ZoneInfo(system.timezone)) + timedelta(seconds=3)).strftime("%Y-%m-%d %H:%M:%S")
    tid = create(system, receiver, path, topic, "--at", at, "--form", key="abs-key",
                 body='[{"Key":"a","Value":"1"},{"Key":"b","Value":"x y"}]')
    d = detail(system, tid)
    assert d["DelayPattern"] == "Absolute" and d["DelayAbsoluteTime"] == at
    assert d["NotifyDataType"] == "application/x-www-form-urlencoded"
    hits = receiver.wait_for(path, 1, timeout=30)
    assert hits[0].body == b"a=1&b=x+y"
    wait_status(system, tid, 3)
    r = sm("show", tid, api=system.api)
    assert r.returncode == 0 and shown_status(r.stdout).startswith("3 succeeded")


def test_an_absolute_time_in_the_past_is_the_apis_refusal(system, receiver):
    topic = uniq("past")
    r = sm("create", "--url", receiver.url("/past"), "--body", "{}", "--topic", topic, "--content-key", "k",
           "--at", "2001-01-01 00:00:00", api=system.api)
    assert r.returncode == 1 and "早于当前时间" in r.stderr
    assert listed(system, topic=topic)["total"] == 0


def test_list_filters_find_what_was_created(system, receiver):
    topic = uniq("list")
    a = create(system, receiver, "/never-a", topic, "--after", "1h", key=f"{topic}-a")
    b = create(system, receiver, "/never-b", topic, "--after", "1h", "--source-app", "billing", key=f"{topic}-b")

    def run(*args: str) -> tuple[str, int]:
        r = sm("list", "--topic", topic, *args, api=system.api)
        assert r.returncode == 0, r.stderr
        total = int(r.stdout.strip().splitlines()[-1].removeprefix("total "))
        return r.stdout, total

    out, total = run()
    assert total == 2 and a in out and b in out and "2 ready" in out
    out, total = run("--content-key", f"{topic}-a")
    assert total == 1 and a in out and b not in out
    out, total = run("--source-app", "billing")
    assert total == 1 and b in out and a not in out
    assert run("--status", "ready")[1] == 2
    assert run("--status", "2")[1] == 2
    assert run("--status", "succeeded")[1] == 0
    assert run("--status", "0")[1] == 0
    today = datetime.now(ZoneInfo(system.timezone)).date()
    assert run("--from", str(today), "--to", str(today))[1] == 2  # --to a date: up to the end of that day
    assert run("--to", str(today - timedelta(days=1)))[1] == 0
    assert run("--from", f"{today + timedelta(days=1)} 00:00:00")[1] == 0
    out, total = run("--size", "1", "--page", "2")
    assert total == 2 and (a in out) != (b in out)  # one row per page, the total still counts both
    # with no filter at all, the newest come first
    r = sm("list", "--size", "2", api=system.api)
    assert r.returncode == 0 and b in r.stdout
    for tid in (a, b):
        assert sm("void", tid, api=system.api).returncode == 0


# ---- create-batch -------------------------------------------------------------------------------
def batch_items(receiver, topic: str, n: int, **extra) -> list[dict]:
    return [{"SourceApp": "batch", "Topic": topic, "ContentKey": f"{topic}-{i}", "NotifyUrl": receiver.url("/never"),
             "NotifyDataType": "application/json", "NotifyBody": json.dumps({"i": i}), "DelayTimeSpan": 3600,
             **extra} for i in range(n)]


def void_topic(system, topic: str) -> None:
    for row in listed(system, topic=topic)["rows"]:
        if row["Status"] == 2:
            api(system, "POST", "DelayTask/Void", data={"id": row["Id"]})


def test_create_batch_from_a_json_array(system, receiver, tmp_path):
    topic = uniq("batch-json")
    items = batch_items(receiver, topic, 3)
    items[0]["Id"] = given = str(uuid.uuid4())
    at = (datetime.now(ZoneInfo(system.timezone)) + timedelta(hours=2)).strftime("%Y-%m-%d %H:%M:%S")
    items[1] = {**items[1], "DelayPattern": "Absolute", "DelayAbsoluteTime": at}
    items[2]["Executors"] = ["worker1"]
    f = tmp_path / "tasks.json"
    f.write_text(json.dumps(items, ensure_ascii=False, indent=2), encoding="utf-8")
    r = sm("create-batch", str(f), api=system.api)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "created 3 delayed tasks"
    data = listed(system, topic=topic)
    assert data["total"] == 3 and given in {row["Id"] for row in data["rows"]}
    by_key = {row["ContentKey"]: row for row in data["rows"]}
    assert by_key[f"{topic}-1"]["DelayPattern"] == "Absolute" and by_key[f"{topic}-1"]["DelayAbsoluteTime"] == at
    assert by_key[f"{topic}-2"]["Executors"] == ["worker1"]
    # the same file again: its Id exists, so that batch is refused whole
    r = sm("create-batch", str(f), api=system.api)
    assert r.returncode == 1 and "任务ID已存在" in r.stderr and "nothing was created" in r.stderr
    assert listed(system, topic=topic)["total"] == 3
    void_topic(system, topic)


def test_create_batch_from_json_lines_on_a_file_and_on_stdin(system, receiver, tmp_path):
    topic = uniq("batch-jsonl")
    items = batch_items(receiver, topic, 4)
    f = tmp_path / "tasks.jsonl"
    f.write_text("\ufeff" + "\n".join(json.dumps(i, ensure_ascii=False) for i in items[:3]) + "\n\n",
                 encoding="utf-8")
    r = sm("create-batch", str(f), api=system.api)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "created 3 delayed tasks"
    r = sm("create-batch", "-", api=system.api, stdin=json.dumps(items[3]) + "\n")
    assert r.returncode == 0 and r.stdout.strip() == "created 1 delayed task", r.stderr
    assert listed(system, topic=topic)["total"] == 4
    void_topic(system, topic)


def test_create_batch_in_chunks_and_a_failing_chunk_keeps_the_ones_before(system, receiver, tmp_path):
    topic = uniq("chunks")
    f = tmp_path / "five.jsonl"
    f.write_text("\n".join(json.dumps(i) for i in batch_items(receiver, topic, 5)))
    r = sm("create-batch", str(f), "--chunk-size", "2", api=system.api)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "created 5 delayed tasks"
    assert listed(system, topic=topic)["total"] == 5

    topic2 = uniq("chunks-bad")
    items = batch_items(receiver, topic2, 5)
    items[4]["DelayTimeSpan"] = "soon"  # the third chunk's only item: a 400 from the API
    f.write_text("\n".join(json.dumps(i) for i in items))
    r = sm("create-batch", str(f), "--chunk-size", "2", api=system.api)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "DelayTimeSpan" in r.stderr
    assert "chunk 3/3 (items [4]-[4] of the file" in r.stderr
    assert "4 delayed tasks from the chunks before it were created" in r.stderr
    assert listed(system, topic=topic2)["total"] == 4

    topic3 = uniq("chunks-refused")
    items = batch_items(receiver, topic3, 5)
    items[2]["NotifyUrl"] = "ftp://example.com/x"  # refused by the API: Success false, chunk 2 of 3
    f.write_text(json.dumps(items))
    r = sm("create-batch", str(f), "--chunk-size", "2", api=system.api)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "chunk 2/3 (items [2]-[3]" in r.stderr and "2 delayed tasks from the chunks before it" in r.stderr
    assert listed(system, topic=topic3)["total"] == 2
    for t in (topic, topic2, topic3):
        void_topic(system, t)


# ---- void, execute, reset ----------------------------------------------------------------------
def test_void_then_show_and_reset(system, receiver):
    topic = uniq("void")
    tid = create(system, receiver, "/never-void", topic, "--after", "1h")
    r = sm("void", tid, api=system.api)
    assert r.returncode == 0 and r.stdout.strip() == "任务已作废!", r.stderr
    r = sm("show", tid, api=system.api)
    assert r.returncode == 0 and shown_status(r.stdout).startswith("0 voided")
    assert "no attempts yet" in r.stdout
    r = sm("list", "--topic", topic, "--status", "voided", api=system.api)
    assert r.returncode == 0 and tid in r.stdout and r.stdout.strip().endswith("total 1")
    # voiding twice is the API's refusal
    r = sm("void", tid, api=system.api)
    assert r.returncode == 1 and "当前状态下不能作废" in r.stderr
    # reset brings it back to ready, due its span from now
    r = sm("reset", tid, api=system.api)
    assert r.returncode == 0 and r.stdout.strip() == "任务已重置!", r.stderr
    assert status_of(system, tid) == 2
    r = sm("reset", tid, api=system.api)
    assert r.returncode == 1 and "无需重置" in r.stderr
    assert sm("void", tid, api=system.api).returncode == 0
    # a task that does not exist
    r = sm("show", str(uuid.uuid4()), api=system.api)
    assert r.returncode == 1 and "no delayed task" in r.stderr
    r = sm("void", str(uuid.uuid4()), api=system.api)
    assert r.returncode == 1 and "任务不存在" in r.stderr


def test_execute_wait_on_a_failed_task_then_reset(system, receiver):
    assert api(system, "POST", "System/SaveConfig", data={"DelayTask_RetryTimes": "0"})["Success"]
    try:
        time.sleep(6)  # the dispatcher re-reads the settings every 5 s
        path, topic = f"/{uniq('exec')}", uniq("exec")
        receiver.on(path, 500, "boom")
        tid = create(system, receiver, path, topic, "--after", "1")
        wait_status(system, tid, 4)
        r = sm("show", tid, api=system.api)
        assert r.returncode == 0 and shown_status(r.stdout).startswith("4 failed")
        assert "HTTP 500" in r.stdout

        # still failing: one manual try, reported, exit 1
        r = sm("execute", tid, "--wait", "--timeout", "20", api=system.api)
        assert r.returncode == 1, (r.stdout, r.stderr)
        assert "任务已提交执行!" in r.stdout and "attempt 2 (manual) failed" in r.stdout
        assert status_of(system, tid) == 4

        # the receiver answers success now
        receiver.on(path, 200, "success")
        r = sm("execute", tid, "--wait", "--timeout", "20", api=system.api)
        assert r.returncode == 0, (r.stdout, r.stderr)
        assert "attempt 3 (manual) succeeded" in r.stdout and "3 succeeded" in r.stdout
        d = detail(system, tid)
        assert d["Status"] == 3 and len(d["AttemptLog"]) == 3 and d["AttemptLog"][0]["Success"] is True
        assert len(receiver.at(path)) == 3

        # a succeeded task cannot be executed; reset makes it fire again after its span
        r = sm("execute", tid, api=system.api)
        assert r.returncode == 1 and "当前状态下不能执行" in r.stderr
        r = sm("reset", tid, api=system.api)
        assert r.returncode == 0 and r.stdout.strip() == "任务已重置!"
        receiver.wait_for(path, 4, timeout=30)
        d = wait_status(system, tid, 3)
        assert d["FailedRetrys"] == 0 and len(d["AttemptLog"]) == 4
    finally:
        assert api(system, "POST", "System/SaveConfig", data={"DelayTask_RetryTimes": "3"})["Success"]


def test_execute_wait_gives_up_after_its_timeout(system, receiver):
    path, topic = f"/{uniq('slow')}", uniq("slow")
    receiver.on(path, 200, "success", delay=4.0)
    tid = create(system, receiver, path, topic, "--after", "1h")
    started = time.monotonic()
    r = sm("execute", tid, "--wait", "--timeout", "1", api=system.api)
    assert r.returncode == 1 and "no new attempt within 1 s" in r.stderr, (r.stdout, r.stderr)
    assert time.monotonic() - started < 10
    wait_status(system, tid, 3)


# ---- bad input ----------------------------------------------------------------------------------
CREATE = ["create", "--url", "http://127.0.0.1:9/never", "--body", "{}", "--content-key", "k"]


@pytest.mark.parametrize("args,needle", [
    (["--after", "5x"], "duration '5x'"),
    (["--after", "-3"], "duration '-3'"),
    (["--after", "0"], "at least 1 second"),
    (["--after", "4000d"], "ten years"),
    (["--after", "5", "--at", "2030-01-01 00:00:00"], "exactly one of --after"),
    ([], "exactly one of --after"),
    (["--at", "2030-02-30 10:00:00"], "--at '2030-02-30 10:00:00'"),
    (["--at", "tomorrow"], "--at 'tomorrow'"),
    (["--at", "2030-01-01"], "YYYY-MM-DD HH:MM:SS"),
    (["--after", "5", "--id", "not-a-guid"], "--id 'not-a-guid' is not a GUID"),
    (["--after", "5", "--form"], "--form"),
])
def test_bad_create_input_exits_2_and_creates_nothing(system, receiver, args, needle):
    topic = uniq("bad")
    r = sm(*CREATE, "--topic", topic, *args, api=system.api)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1 and needle in r.stderr
    assert listed(system, topic=topic)["total"] == 0
    # and nothing was sent at all: an "API" that records every request sees none
    prefix = f"/{uniq('fake-api')}"
    r = sm(*CREATE, "--topic", topic, *args, api=receiver.url(prefix))
    assert r.returncode == 2 and not [h for h in receiver.hits if h.path.startswith(prefix)]


def bad_files(tmp_path):
    (tmp_path / "text.txt").write_text("hello world\nthis is not JSON\n")
    (tmp_path / "scalar.json").write_text("42")
    (tmp_path / "array.json").write_text('[{"Topic": "x"}, "not an object"]')
    (tmp_path / "broken.json").write_text('[{"Topic": "x"},')
    (tmp_path / "lines.jsonl").write_text('{"Topic": "x"}\n[1, 2]\n')
    (tmp_path / "empty.json").write_text("\n\n")
    (tmp_path / "none.json").write_text("[]")
    (tmp_path / "latin1.json").write_bytes(b'[{"Topic": "\xe9"}]')


@pytest.mark.parametrize("name,needle", [
    ("missing.json", "no such file"),
    ("text.txt", "line 1 is not JSON"),
    ("scalar.json", "line 1 is not a JSON object"),
    ("array.json", "array item [1] is not a JSON object"),
    ("broken.json", "is not valid JSON"),
    ("lines.jsonl", "line 2 is not a JSON object"),
    ("empty.json", "is empty"),
    ("none.json", "holds no delayed tasks"),
    ("latin1.json", "not UTF-8"),
    (".", "is a directory"),
])
def test_bad_batch_files_exit_2_and_call_nothing(system, receiver, tmp_path, name, needle):
    bad_files(tmp_path)
    before = listed(system, pageSize=1)["total"]
    r = sm("create-batch", str(tmp_path / name), api=system.api)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1 and needle in r.stderr
    assert listed(system, pageSize=1)["total"] == before
    prefix = f"/{uniq('fake-api')}"
    r = sm("create-batch", str(tmp_path / name), api=receiver.url(prefix))
    assert r.returncode == 2 and not [h for h in receiver.hits if h.path.startswith(prefix)]


@pytest.mark.parametrize("args,needle", [
    (["show", "not-a-guid"], "id 'not-a-guid' is not a GUID"),
    (["void", "12345"], "is not a GUID"),
    (["execute", "abc", "--wait"], "is not a GUID"),
    (["reset", "0000"], "is not a GUID"),
    (["list", "--status", "bogus"], "--status 'bogus'"),
    (["list", "--status", "7"], "--status '7'"),
    (["list", "--from", "yesterday"], "--from 'yesterday'"),
    (["list", "--to", "2024-02-30"], "--to '2024-02-30'"),
])
def test_bad_ids_and_filters_exit_2_without_calling_the_api(receiver, args, needle):
    prefix = f"/{uniq('fake-api')}"
    r = sm(*args, api=receiver.url(prefix))
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1 and needle in r.stderr
    assert not [h for h in receiver.hits if h.path.startswith(prefix)]


@pytest.mark.parametrize("args", [["list", "--size", "1001"], ["list", "--size", "0"], ["list", "--page", "0"],
                                  ["execute", str(uuid.uuid4()), "--timeout", "0"],
                                  ["create-batch", "x.json", "--chunk-size", "10001"]])
def test_out_of_range_options_exit_2(receiver, args):
    prefix = f"/{uniq('fake-api')}"
    r = sm(*args, api=receiver.url(prefix))
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert not [h for h in receiver.hits if h.path.startswith(prefix)]
