"""Planning the import of an original ScheduleMaster database (issue 8, first slice: --dry-run),
against the MariaDB of this machine (127.0.0.1:3306, root, no password) with the original's
schema in its MySQL types (behaviour notes §3)."""

from __future__ import annotations

import subprocess
import sys
import uuid
from datetime import datetime, timedelta

import pymysql
import pytest

from schedulemaster.ms_compat.legacy_import import SourceError, plan_import, read_source
from schedulemaster.ms_compat.store import DEFAULT_CONFIGS

SCHEMA = """
CREATE TABLE schedules (id char(36) NOT NULL PRIMARY KEY, title varchar(100) NOT NULL, metatype int NOT NULL,
  remark varchar(500), runloop tinyint(1) NOT NULL, cronexpression varchar(50), assemblyname varchar(200),
  classname varchar(200), customparamsjson longtext, status int NOT NULL, startdate datetime(6), enddate datetime(6),
  createtime datetime(6) NOT NULL, createuserid int NOT NULL, createusername varchar(50), lastruntime datetime(6),
  nextruntime datetime(6), totalruncount int NOT NULL);
CREATE TABLE schedulehttpoptions (scheduleid char(36) NOT NULL PRIMARY KEY, requesturl varchar(500) NOT NULL,
  method varchar(10) NOT NULL, contenttype varchar(50) NOT NULL, headers longtext, body longtext);
CREATE TABLE schedulekeepers (id int AUTO_INCREMENT PRIMARY KEY, scheduleid char(36) NOT NULL, userid int NOT NULL);
CREATE TABLE schedulereferences (id int AUTO_INCREMENT PRIMARY KEY, scheduleid char(36) NOT NULL,
  childid char(36) NOT NULL);
CREATE TABLE scheduleexecutors (id int AUTO_INCREMENT PRIMARY KEY, scheduleid char(36) NOT NULL,
  workername varchar(100) NOT NULL);
CREATE TABLE schedulelocks (scheduleid char(36) NOT NULL PRIMARY KEY, status int NOT NULL, lockedtime datetime(6),
  lockednode varchar(100));
CREATE TABLE scheduletraces (traceid char(36) NOT NULL PRIMARY KEY, scheduleid char(36) NOT NULL, node varchar(100),
  starttime datetime(6) NOT NULL, endtime datetime(6) NOT NULL, elapsedtime double NOT NULL, result int NOT NULL);
CREATE TABLE scheduledelayeds (id char(36) NOT NULL PRIMARY KEY, sourceapp varchar(50) NOT NULL,
  topic varchar(100) NOT NULL, contentkey varchar(100) NOT NULL, delaytimespan int NOT NULL,
  delayabsolutetime datetime(6) NOT NULL, createtime datetime(6) NOT NULL, createusername varchar(50),
  executetime datetime(6), finishtime datetime(6), status int NOT NULL, failedretrys int NOT NULL,
  remark varchar(255), notifyurl varchar(255) NOT NULL, notifydatatype varchar(50) NOT NULL,
  notifybody varchar(1000) NOT NULL);
CREATE TABLE systemusers (id int AUTO_INCREMENT PRIMARY KEY, username varchar(50) NOT NULL,
  password varchar(50) NOT NULL, realname varchar(50) NOT NULL, phone varchar(15), email varchar(500),
  status int NOT NULL, createtime datetime(6) NOT NULL, lastlogintime datetime(6));
CREATE TABLE systemconfigs (`key` varchar(50) NOT NULL PRIMARY KEY, `group` varchar(50) NOT NULL,
  name varchar(100) NOT NULL, value varchar(1000), sort int NOT NULL, isreuired tinyint(1) NOT NULL,
  remark varchar(500), createtime datetime(6), updatetime datetime(6), updateusername varchar(50));
CREATE TABLE systemlogs (id int AUTO_INCREMENT PRIMARY KEY, category int NOT NULL, message longtext NOT NULL,
  stacktrace longtext, scheduleid char(36), node varchar(100), traceid char(36), createtime datetime(6) NOT NULL);
"""

HTTP, PLUGIN, BAD_CRON, CHILD, DELETED, ODD = (str(uuid.uuid4()) for _ in range(6))
READY_LATE, CREATED, DONE, BAD_URL = (str(uuid.uuid4()) for _ in range(4))


def connect(db: str | None = None):
    return pymysql.connect(host="127.0.0.1", port=3306, user="root", password="", database=db,
                           charset="utf8mb4", autocommit=True)


@pytest.fixture(scope="module")
def source():
    try:
        admin = connect()
    except pymysql.MySQLError as exc:
        pytest.fail(f"MariaDB is not reachable at 127.0.0.1:3306 (root): {exc}")
    db = f"sm_src_{uuid.uuid4().hex[:8]}"
    admin.cursor().execute(f"CREATE DATABASE {db} CHARACTER SET utf8mb4")
    conn = connect(db)
    cur = conn.cursor()
    for statement in filter(str.strip, SCHEMA.split(";")):
        cur.execute(statement)
    now = datetime.now().replace(microsecond=0)
    cur.executemany("INSERT INTO systemusers (username, password, realname, email, status, createtime) "
                    "VALUES (%s, %s, %s, %s, %s, %s)", [
                        ("admin", "96e79218965eb72c92a549dd5a330112", "超级管理员", "admin@example.com", 1, now),
                        ("ops", "0" * 32, "运维", None, 0, now),
                        ("broken", "plaintext", "坏", None, 1, now)])
    cur.executemany("INSERT INTO systemconfigs (`key`, `group`, name, value, sort, isreuired) "
                    "VALUES (%s, 'g', 'n', %s, 0, 0)", [("Http_RequestTimeout", "20"),
                                                         ("DelayTask_DelayPattern", "Relative"),
                                                         ("Legacy_Unknown", "x")])
    task = ("INSERT INTO schedules (id, title, metatype, runloop, cronexpression, assemblyname, classname, "
            "customparamsjson, status, createtime, createuserid, createusername, totalruncount) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 1, 'admin', 0)")
    cur.executemany(task, [
        (HTTP, "订单同步", 2, 1, "0/30 * * * * ?", None, None, '[{"ParamKey":"k","ParamValue":"v"}]', 1, now),
        (PLUGIN, "夜间对账", 1, 1, "0 0 2 * * ?", "Hos.Demo", "Hos.Demo.Reconcile", "[]", 0, now),
        (BAD_CRON, "坏表达式", 2, 1, "61 * * * * ?", None, None, None, 0, now),
        (CHILD, "子任务", 2, 0, None, None, None, "not json", 0, now),
        (DELETED, "已删除", 2, 1, "0 * * * * ?", None, None, None, -1, now),
        (ODD, "奇怪类型", 3, 0, None, None, None, None, 0, now)])
    cur.executemany("INSERT INTO schedulehttpoptions VALUES (%s, %s, 'POST', 'application/json', '[]', '{}')",
                    [(HTTP, "http://127.0.0.1:9/a"), (BAD_CRON, "http://127.0.0.1:9/b")])
    cur.executemany("INSERT INTO schedulekeepers (scheduleid, userid) VALUES (%s, %s)", [(HTTP, 1), (HTTP, 999)])
    cur.executemany("INSERT INTO schedulereferences (scheduleid, childid) VALUES (%s, %s)",
                    [(HTTP, CHILD), (HTTP, DELETED)])
    delayed = ("INSERT INTO scheduledelayeds VALUES (%s, 'shop', 'order', %s, %s, %s, %s, 'admin', NULL, NULL, %s, 0, "
               "NULL, %s, 'application/json', '{}')")
    cur.executemany(delayed, [
        (READY_LATE, "A1", 60, datetime(1, 1, 1), now - timedelta(hours=1), 2, "http://127.0.0.1:9/cb"),
        (CREATED, "A2", 3600, datetime(1, 1, 1), now, 1, "http://127.0.0.1:9/cb"),
        (DONE, "A3", 60, datetime(1, 1, 1), now - timedelta(days=1), 3, "http://127.0.0.1:9/cb"),
        (BAD_URL, "A4", 60, datetime(1, 1, 1), now, 2, "ftp://x/cb")])
    cur.execute("INSERT INTO scheduletraces VALUES (%s, %s, 'w1', %s, %s, 0.5, 1)", (str(uuid.uuid4()), HTTP, now, now))
    conn.close()
    yield f"mysql://root@127.0.0.1:3306/{db}"
    admin.cursor().execute(f"DROP DATABASE {db}")
    admin.close()


def by_key(plan):
    return {i.key: i for i in plan.items}


def test_the_plan_says_what_each_row_becomes(source):
    snap = read_source(source)
    plan = plan_import(snap, known_configs={k for k, *_ in DEFAULT_CONFIGS}, existing_users={},
                       existing_tasks=set(), existing_delayed=set())
    items = by_key(plan)
    assert items[HTTP].action == "create" and items[HTTP].title == "订单同步"
    assert any("keepers [999]" in n for n in items[HTTP].notes)
    assert any("1 child task(s) missing or deleted" in n for n in items[HTTP].notes)
    assert any("comes in Stopped" in n for n in items[HTTP].notes)
    assert items[PLUGIN].action == "create" and any("Python port" in n for n in items[PLUGIN].notes)
    assert items[BAD_CRON].action == "cannot" and "invalid cron" in items[BAD_CRON].notes[0]
    assert items[CHILD].action == "cannot" and any("schedulehttpoptions" in n for n in items[CHILD].notes)
    assert items[ODD].action == "cannot" and DELETED not in items
    assert items["admin"].action == "create" and items["broken"].action == "cannot"
    assert "disabled" in items["ops"].notes
    assert items["Http_RequestTimeout"].action == "update" and items["Legacy_Unknown"].action == "cannot"
    assert items[READY_LATE].action == "create" and any("overdue" in n for n in items[READY_LATE].notes)
    assert items[CREATED].action == "create" and not items[CREATED].notes
    assert DONE not in items and items[BAD_URL].action == "cannot"
    assert plan.history["scheduletraces"] == 1


def test_existing_items_are_kept_or_updated_not_duplicated(source):
    snap = read_source(source)
    plan = plan_import(snap, known_configs=set(), existing_users={"admin": "96e79218965eb72c92a549dd5a330112",
                                                                  "ops": "1" * 32},
                       existing_tasks={HTTP}, existing_delayed={CREATED})
    items = by_key(plan)
    assert items["admin"].action == "keep" and items["ops"].action == "update"
    assert items[HTTP].action == "update" and items[CREATED].action == "keep"


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "schedulemaster.cli", "import", *args], capture_output=True,
                          text=True, timeout=120)


def test_dry_run_prints_the_plan_and_changes_nothing(source, tmp_path):
    r = run_cli("--from", source, "--dry-run", "--with-history", "--data-dir", str(tmp_path / "data"))
    assert r.returncode == 0, r.stderr
    assert "dry run: nothing was changed" in r.stdout and "坏表达式" in r.stdout and "invalid cron" in r.stdout
    assert "scheduletraces 1 rows" in r.stdout and "Next steps" in r.stdout
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("url,needle", [
    ("mysql://root@127.0.0.1:1/none", "cannot read"),
    ("mysql://root@127.0.0.1:3306/information_schema", "not the ScheduleMaster schema"),
    ("not a url", "not a database URL"),
    ("oracle://x@y/z", "cannot use"),
])
def test_unreadable_sources_are_reported(url, needle):
    with pytest.raises(SourceError) as exc:
        read_source(url, timeout=3)
    assert needle in str(exc.value)
    r = run_cli("--from", url, "--dry-run")
    assert r.returncode == 1 and needle in r.stderr


def test_without_dry_run_nothing_is_written_yet(source):
    r = run_cli("--from", source)
    assert r.returncode == 2 and "only --dry-run" in r.stderr
