"""An original ScheduleMaster database for the import tests and bench/import_db.py: the original's schema
(with the indexes of its ModelBuilderExtensions.CreateIndexes) in MySQL types
(MariaDB on this machine) or PostgreSQL types, filled with rows as a team would have them
(Chinese titles, both MetaTypes and an unknown one, a chain and a cycle, keepers, executors,
delayed tasks in every status, a disabled and a deleted user, traces with logs)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

MYSQL_SCHEMA = """
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
CREATE INDEX ix_scheduletraces_scheduleid ON scheduletraces (scheduleid);
CREATE INDEX ix_scheduletraces_starttime ON scheduletraces (starttime);
CREATE INDEX ix_scheduletraces_result ON scheduletraces (result);
CREATE INDEX ix_systemlogs_traceid ON systemlogs (traceid);
CREATE INDEX ix_systemlogs_createtime ON systemlogs (createtime);
CREATE INDEX ix_scheduledelayeds_createtime ON scheduledelayeds (createtime);
CREATE INDEX ix_scheduledelayeds_contentkey ON scheduledelayeds (contentkey)
"""

# EF Core's PostgreSQL defaults: uuid, boolean, timestamp, text / varchar, serial identities
POSTGRES_SCHEMA = """
CREATE TABLE schedules (id uuid NOT NULL PRIMARY KEY, title varchar(100) NOT NULL, metatype integer NOT NULL,
  remark varchar(500), runloop boolean NOT NULL, cronexpression varchar(50), assemblyname varchar(200),
  classname varchar(200), customparamsjson text, status integer NOT NULL, startdate timestamp, enddate timestamp,
  createtime timestamp NOT NULL, createuserid integer NOT NULL, createusername varchar(50), lastruntime timestamp,
  nextruntime timestamp, totalruncount integer NOT NULL);
CREATE TABLE schedulehttpoptions (scheduleid uuid NOT NULL PRIMARY KEY, requesturl varchar(500) NOT NULL,
  method varchar(10) NOT NULL, contenttype varchar(50) NOT NULL, headers text, body text);
CREATE TABLE schedulekeepers (id serial PRIMARY KEY, scheduleid uuid NOT NULL, userid integer NOT NULL);
CREATE TABLE schedulereferences (id serial PRIMARY KEY, scheduleid uuid NOT NULL, childid uuid NOT NULL);
CREATE TABLE scheduleexecutors (id serial PRIMARY KEY, scheduleid uuid NOT NULL, workername varchar(100) NOT NULL);
CREATE TABLE schedulelocks (scheduleid uuid NOT NULL PRIMARY KEY, status integer NOT NULL, lockedtime timestamp,
  lockednode varchar(100));
CREATE TABLE scheduletraces (traceid uuid NOT NULL PRIMARY KEY, scheduleid uuid NOT NULL, node varchar(100),
  starttime timestamp NOT NULL, endtime timestamp NOT NULL, elapsedtime double precision NOT NULL,
  result integer NOT NULL);
CREATE TABLE scheduledelayeds (id uuid NOT NULL PRIMARY KEY, sourceapp varchar(50) NOT NULL,
  topic varchar(100) NOT NULL, contentkey varchar(100) NOT NULL, delaytimespan integer NOT NULL,
  delayabsolutetime timestamp NOT NULL, createtime timestamp NOT NULL, createusername varchar(50),
  executetime timestamp, finishtime timestamp, status integer NOT NULL, failedretrys integer NOT NULL,
  remark varchar(255), notifyurl varchar(255) NOT NULL, notifydatatype varchar(50) NOT NULL,
  notifybody varchar(1000) NOT NULL);
CREATE TABLE systemusers (id serial PRIMARY KEY, username varchar(50) NOT NULL, password varchar(50) NOT NULL,
  realname varchar(50) NOT NULL, phone varchar(15), email varchar(500), status integer NOT NULL,
  createtime timestamp NOT NULL, lastlogintime timestamp);
CREATE TABLE systemconfigs ("key" varchar(50) NOT NULL PRIMARY KEY, "group" varchar(50) NOT NULL,
  name varchar(100) NOT NULL, value varchar(1000), sort integer NOT NULL, isreuired boolean NOT NULL,
  remark varchar(500), createtime timestamp, updatetime timestamp, updateusername varchar(50));
CREATE TABLE systemlogs (id serial PRIMARY KEY, category integer NOT NULL, message text NOT NULL, stacktrace text,
  scheduleid uuid, node varchar(100), traceid uuid, createtime timestamp NOT NULL);
CREATE INDEX ix_scheduletraces_scheduleid ON scheduletraces (scheduleid);
CREATE INDEX ix_scheduletraces_starttime ON scheduletraces (starttime);
CREATE INDEX ix_systemlogs_traceid ON systemlogs (traceid)
"""


def md5(text: str) -> str:
    import hashlib

    return hashlib.md5(text.encode()).hexdigest()


@dataclass
class Source:
    """The ids of the rows a test looks at, and the passwords behind the hashes."""

    url: str = ""
    ids: dict[str, str] = field(default_factory=lambda: {k: str(uuid.uuid4()) for k in (
        "HTTP", "PLUGIN", "PORTED", "BAD_CRON", "CHILD", "NOHTTP", "DELETED", "ODD", "CYCLE_A", "CYCLE_B",
        "PAUSED", "READY_LATE", "CREATED", "SOON", "DONE", "BAD_URL", "BAD_FORM", "T_OK", "T_FAIL", "T_OPEN",
        "T_GONE")})
    dev_id: int = 7
    passwords: dict[str, str] = field(default_factory=lambda: {"admin": "111111", "dev": "开发-pass", "ops": "ops!"})

    def __getattr__(self, name: str) -> str:
        ids = self.__dict__.get("ids", {})
        if name in ids:
            return ids[name]
        raise AttributeError(name)


def fill(cur, schema: str, src: Source, receiver_url: str, now: datetime, quote: str = "`") -> None:
    """Create the tables and the rows (a DB-API cursor with %s parameters: PyMySQL or psycopg).
    ``now``: the original's wall-clock time (its workers' local time)."""
    for statement in filter(str.strip, schema.split(";")):
        cur.execute(statement)
    now = now.replace(microsecond=0)
    users = [(1, "admin", md5(src.passwords["admin"]), "超级管理员", None, "admin@example.com", 1),
             (2, "ops", md5(src.passwords["ops"]), "运维", "13800000000", "ops@example.com", 0),
             (3, "broken", "plaintext", "坏", None, None, 1),
             (4, "ghost", md5("x"), "已删除", None, None, -1),
             (src.dev_id, "dev", md5(src.passwords["dev"]), "开发", None, "dev@example.com", 1),
             (8, "Иван", md5("привет"), "Иван Петров", None, "ivan@example.com", 1)]  # SQLite's lower() is ASCII
    cur.executemany("INSERT INTO systemusers (id, username, password, realname, phone, email, status, createtime) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)", [u + (now,) for u in users])
    q = quote
    cur.executemany(f"INSERT INTO systemconfigs ({q}key{q}, {q}group{q}, name, value, sort, isreuired) "
                    "VALUES (%s, 'g', 'n', %s, 0, %s)", [
                        ("Http_RequestTimeout", "20", False), ("DelayTask_DelayPattern", "Relative", False),
                        ("DelayTask_RetryTimes", "2", False), ("Email_SmtpServer", "smtp.example.com", False),
                        ("DelayTask_RetrySpans", "abc", False), ("Legacy_Unknown", "x", False)])
    i = src.ids
    task = ("INSERT INTO schedules (id, title, metatype, remark, runloop, cronexpression, assemblyname, classname, "
            "customparamsjson, status, startdate, enddate, createtime, createuserid, createusername, totalruncount) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 'admin', 12)")
    created = datetime(2024, 3, 1, 9, 30, 0)
    params = '[{"ParamKey":"shop","ParamValue":"上海店","ParamRemark":"门店"}]'
    cur.executemany(task, [
        (i["HTTP"], "订单同步", 2, "每30秒", True, "0/30 * * * * ?", None, None, params, 1, None,
         now + timedelta(days=365), created, 1),
        (i["PLUGIN"], "夜间对账", 1, None, True, "0 0 2 * * ?", "Hos.Demo", "Hos.Demo.Reconcile", "[]", 1, None,
         None, created, 1),
        (i["PORTED"], "已移植插件", 1, None, True, "0 0 3 * * ?", "sm_demo_plugins", "Counter", "[]", 1, None,
         None, created, src.dev_id),
        (i["BAD_CRON"], "坏表达式", 2, None, True, "61 * * * * ?", None, None, None, 0, None, None, created, 1),
        (i["CHILD"], "子任务", 2, None, False, None, None, None, "not json", 0, None, None, created, 1),
        (i["NOHTTP"], "缺少HTTP选项", 2, None, False, None, None, None, None, 0, None, None, created, 1),
        (i["DELETED"], "已删除", 2, None, True, "0 * * * * ?", None, None, None, -1, None, None, created, 1),
        (i["ODD"], "奇怪类型", 3, None, False, None, None, None, None, 0, None, None, created, 1),
        (i["CYCLE_A"], "循环A", 2, None, True, "0 0 * * * ?", None, None, None, 0, None, None, created, 1),
        (i["CYCLE_B"], "循环B", 2, None, True, "0 0 * * * ?", None, None, None, 0, None, None, created, 1),
        (i["PAUSED"], "已暂停", 2, None, True, "0 0/5 * * * ?", None, None, None, 2, None, None, created, 1)])
    http = "INSERT INTO schedulehttpoptions VALUES (%s, %s, %s, %s, %s, %s)"
    cur.executemany(http, [
        (i["HTTP"], receiver_url + "/orders", "POST", "application/json",
         '[{"ParamKey":"X-Shop","ParamValue":"sh","ParamRemark":""}]', '{"sync":true}'),
        (i["BAD_CRON"], receiver_url + "/bad", "GET", "text/plain", None, None),
        (i["CHILD"], receiver_url + "/child", "GET", "text/plain", None, None),
        (i["CYCLE_A"], receiver_url + "/a", "GET", "text/plain", None, None),
        (i["CYCLE_B"], receiver_url + "/b", "GET", "text/plain", None, None),
        (i["PAUSED"], receiver_url + "/paused", "GET", "text/plain", None, None)])
    cur.executemany("INSERT INTO schedulekeepers (scheduleid, userid) VALUES (%s, %s)",
                    [(i["HTTP"], 1), (i["HTTP"], src.dev_id), (i["HTTP"], 999), (i["HTTP"], 4)])
    cur.executemany("INSERT INTO schedulereferences (scheduleid, childid) VALUES (%s, %s)", [
        (i["HTTP"], i["CHILD"]), (i["HTTP"], i["DELETED"]), (i["HTTP"], i["NOHTTP"]),
        (i["CYCLE_A"], i["CYCLE_B"]), (i["CYCLE_B"], i["CYCLE_A"])])
    cur.executemany("INSERT INTO scheduleexecutors (scheduleid, workername) VALUES (%s, %s)",
                    [(i["HTTP"], "worker1"), (i["PLUGIN"], "worker9")])
    delayed = ("INSERT INTO scheduledelayeds VALUES (%s, 'shop', %s, %s, %s, %s, %s, 'admin', NULL, NULL, %s, %s, "
               "NULL, %s, %s, %s)")
    never = datetime(1, 1, 1)
    cur.executemany(delayed, [
        (i["READY_LATE"], "订单超时", "A1", 60, never, now - timedelta(hours=1), 2, 1, receiver_url + "/late",
         "application/json", '{"orderNo":"A1"}'),
        (i["CREATED"], "订单超时", "A2", 3600, never, now, 1, 0, receiver_url + "/created", "application/json", "{}"),
        (i["SOON"], "提醒", "A5", 25, never, now, 2, 0, receiver_url + "/soon", "application/json",
         '{"orderNo":"A5"}'),
        (i["DONE"], "订单超时", "A3", 60, never, now - timedelta(days=1), 3, 0, receiver_url + "/done",
         "application/json", "{}"),
        (i["BAD_URL"], "订单超时", "A4", 60, never, now, 2, 0, "ftp://x/cb", "application/json", "{}"),
        (i["BAD_FORM"], "订单超时", "A6", 600, never, now, 2, 0, receiver_url + "/form",
         "application/x-www-form-urlencoded", "not a list")])
    trace = "INSERT INTO scheduletraces VALUES (%s, %s, %s, %s, %s, %s, %s)"
    t0 = now - timedelta(hours=2)
    cur.executemany(trace, [
        (i["T_OK"], i["HTTP"], "worker1", t0, t0 + timedelta(seconds=1), 1.0, 1),
        (i["T_FAIL"], i["HTTP"], "worker1", t0 + timedelta(seconds=30), t0 + timedelta(seconds=31), 0.5, 2),
        (i["T_OPEN"], i["HTTP"], "worker2", t0 + timedelta(seconds=60), never, 0.0, 0),
        (i["T_GONE"], i["DELETED"], "worker1", t0, t0, 0.0, 1)])
    cur.executemany("INSERT INTO systemlogs (category, message, stacktrace, scheduleid, node, traceid, createtime) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s)", [
                        (1, "请求开始 http://shop/orders", None, i["HTTP"], "worker1", i["T_OK"], t0),
                        (3, "请求失败：连接超时", "System.TimeoutException: at HttpSchedule.Run", i["HTTP"], "worker1",
                         i["T_FAIL"], t0 + timedelta(seconds=31)),
                        (1, "系统启动", None, None, "master", None, t0)])
