"""Delayed tasks without a running system: the callback's request and success rule, the
create validation, and the store's claim / settle / console transitions on a real SQLite file."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta
from types import SimpleNamespace

import aiohttp
import pytest
from aiohttp import web

from helpers import PG, drop_databases, require_postgres, serve_aiohttp, wait_until
from schedulemaster.dispatcher import callback as cb
from schedulemaster.ms_compat.delayed_api import Refused, form_of_json, row_for_create
from schedulemaster.store.delayed_store import DelayStatus, DuplicateIds, Outcome
from schedulemaster.timeutil import utcnow_naive
from schedulemaster.store.db import Store

USER = SimpleNamespace(username="admin")
TZ = "Asia/Shanghai"


# ---- the request -----------------------------------------------------------------------
def test_json_body_is_sent_as_is_without_crlf_with_the_idempotency_key():
    req = cb.build("t-1", "http://h:81/cb?x=1", "application/json", '{"a":\r\n1}')
    assert req.body == b'{"a":1}'
    assert req.headers == {"Idempotency-Key": "t-1", "Content-Type": "application/json; charset=utf-8"}
    assert str(req.url) == "http://h:81/cb?x=1"


def test_any_other_data_type_is_sent_as_json_as_the_original_did():
    assert cb.build("t", "https://h/", "text/plain", "x").headers["Content-Type"] == "application/json; charset=utf-8"


def test_form_body_is_a_json_list_of_key_value_sent_form_encoded():
    req = cb.build("t", "http://h/", "application/x-www-form-urlencoded",
                   '[{"Key":"order","Value":"A 1&2"},{"key":"n","value":3},{"KEY":"empty","VALUE":null}]')
    assert req.body == b"order=A+1%262&n=3&empty="
    assert req.headers["Content-Type"] == "application/x-www-form-urlencoded"


@pytest.mark.parametrize("body", ['{"a":"1"}', "not json", "[1,2]", '[{"Value":"x"}]', '[{"Key":{"a":1}}]', "7"])
def test_a_form_body_that_is_not_the_expected_json_list_is_refused(body):
    with pytest.raises(cb.CallbackError):
        cb.form_pairs(body)


@pytest.mark.parametrize("url", ["ftp://h/x", "/relative", "javascript:alert(1)", "http://", "file:///etc/passwd",
                                 "http://[::1", "h:80/x"])
def test_urls_that_are_not_absolute_http_are_refused(url):
    with pytest.raises(cb.CallbackError):
        cb.check_url(url)


@pytest.fixture
async def answering_server():
    """A real HTTP server whose answer per path says what the success rule must decide."""
    hits: list[str] = []

    async def handler(request: web.Request):
        hits.append(request.path)
        if request.path == "/hang":
            await asyncio.sleep(5)
        status, text = {"/ok": (200, "ok, success"), "/created": (201, '{"result":"success"}'),
                        "/no-word": (200, "done"), "/upper": (200, "SUCCESS"),
                        "/error": (500, "success but broken"), "/hang": (200, "success")}[request.path]
        return web.Response(status=status, text=text)

    app = web.Application()
    app.router.add_route("POST", "/{tail:.*}", handler)
    base, runner = await serve_aiohttp(app)
    yield base, hits
    await runner.cleanup()


async def test_success_arriving_in_a_later_chunk_counts(answering_server):
    async def slow_word(request: web.Request):
        resp = web.StreamResponse()
        await resp.prepare(request)
        await resp.write(b'{"result": ')
        await asyncio.sleep(0.3)
        await resp.write(b'"success"}')
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/chunked", slow_word)
    base, runner = await serve_aiohttp(app)
    async with aiohttp.ClientSession() as session:
        answer = await cb.send(session, cb.build("t", f"{base}/chunked", "application/json", "{}"), 5)
    await runner.cleanup()
    assert answer.success and answer.excerpt == '{"result": "success"}'


@pytest.mark.parametrize("path,success,status", [("/ok", True, 200), ("/created", True, 201),
                                                 ("/no-word", False, 200), ("/upper", False, 200),
                                                 ("/error", False, 500)])
async def test_success_needs_a_2xx_answer_containing_success(answering_server, path, success, status):
    base, _ = answering_server
    async with aiohttp.ClientSession() as session:
        answer = await cb.send(session, cb.build("t", base + path, "application/json", "{}"), timeout=3)
    assert (answer.success, answer.status) == (success, status)
    assert answer.excerpt
    assert (answer.error is None) == success


async def test_a_hanging_receiver_times_out_as_a_failed_attempt(answering_server):
    base, _ = answering_server
    async with aiohttp.ClientSession() as session:
        answer = await cb.send(session, cb.build("t", base + "/hang", "application/json", "{}"), timeout=0.5)
    assert not answer.success and answer.status is None and "timed out" in answer.error


async def test_an_unreachable_receiver_is_a_failed_attempt_not_an_exception():
    async with aiohttp.ClientSession() as session:
        answer = await cb.send(session, cb.build("t", "http://127.0.0.1:9/x", "application/json", "{}"), timeout=2)
    assert not answer.success and answer.error


# ---- create validation --------------------------------------------------------------------
def model(**over):
    m = {"Id": None, "SourceApp": "shop", "Topic": "order", "ContentKey": "A1", "DelayTimeSpan": 30,
         "DelayAbsoluteTime": None, "NotifyUrl": "http://127.0.0.1:1/cb", "NotifyDataType": "application/json",
         "NotifyBody": "{}", "Remark": None, "Executors": None, "DelayPattern": None}
    m.update(over)
    return m


def test_relative_mode_is_due_span_seconds_after_creation():
    now = utcnow_naive()
    row = row_for_create(model(DelayTimeSpan=90), USER, TZ, "Relative", now)
    assert row["dueat"] == now + timedelta(seconds=90) and row["status"] == DelayStatus.Ready
    assert row["pattern"] == "Relative" and row["createusername"] == "admin"
    assert uuid.UUID(row["id"]) and row["notifyhost"] == "127.0.0.1:1"


def test_absolute_mode_takes_the_local_time_and_stores_utc():
    now = datetime(2026, 1, 1, 0, 0, 0)
    row = row_for_create(model(DelayAbsoluteTime=datetime(2026, 1, 1, 9, 30, 5, 700)), USER, TZ, "Absolute", now)
    assert row["dueat"] == datetime(2026, 1, 1, 1, 30, 5)   # Asia/Shanghai is UTC+8; whole seconds


@pytest.mark.parametrize("over,pattern", [
    ({"DelayTimeSpan": 0}, "Relative"), ({"DelayTimeSpan": -5}, "Relative"), ({"DelayTimeSpan": None}, "Relative"),
    ({"DelayTimeSpan": 10 * 366 * 24 * 3600}, "Relative"),
    ({"DelayAbsoluteTime": None}, "Absolute"), ({"DelayAbsoluteTime": datetime(2000, 1, 1)}, "Absolute"),
    ({"DelayAbsoluteTime": datetime(2999, 1, 1)}, "Absolute"),
    ({"DelayPattern": "Sometimes"}, "Relative"),
    ({"NotifyUrl": "ftp://x/y"}, "Relative"),
    ({"NotifyDataType": "application/x-www-form-urlencoded", "NotifyBody": '{"a":1}'}, "Relative"),
    ({"Executors": ["a,b"]}, "Relative"),
    ({"Executors": ["n" * 100] * 30}, "Relative"),
    ({"Topic": "a\x00b"}, "Relative"),
    ({"NotifyBody": '{"a":"\x00"}'}, "Relative"),
    ({"DelayAbsoluteTime": datetime(1, 1, 1)}, "Absolute"),
    ({"DelayAbsoluteTime": datetime(9999, 12, 31, 23, 59, 59)}, "Absolute"),
])
def test_what_a_callback_could_never_survive_is_refused(over, pattern):
    with pytest.raises(Refused):
        row_for_create(model(**over), USER, TZ, pattern, utcnow_naive())


def test_a_client_supplied_id_is_kept_and_the_empty_guid_means_a_new_one():
    given = uuid.uuid4()
    assert row_for_create(model(Id=given), USER, TZ, "Relative", utcnow_naive())["id"] == str(given)
    assert row_for_create(model(Id=uuid.UUID(int=0)), USER, TZ, "Relative", utcnow_naive())["id"] != str(uuid.UUID(int=0))


def test_a_batch_item_binds_like_a_form():
    values = form_of_json({"sourceapp": "a", "DelayTimeSpan": 5, "Executors": ["n1", "n2"], "x": None, "b": True})
    assert values.first("SourceApp") == "a" and values.first("delaytimespan") == "5"
    assert values.many("executors") == ["n1", "n2"] and values.first("b") == "true" and not values.has("x")
    assert form_of_json([1]) is None


# ---- the store -----------------------------------------------------------------------------
@pytest.fixture
def store(tmp_path):
    s = Store(f"sqlite:///{tmp_path / 'store.db'}")
    s.init()
    return s


def new_row(store_now=None, **over):
    row = row_for_create(model(), USER, TZ, "Relative", store_now or utcnow_naive())
    row.update(over)
    return row


def test_creates_are_committed_together_and_duplicates_refused_per_request(store):
    d = store.delayed
    a, b = new_row(), new_row()
    f1, f2 = d.create([a]), d.create([b])
    assert f1.result(10) == [a["id"]] and f2.result(10) == [b["id"]]
    with pytest.raises(DuplicateIds) as exc:
        d.create([new_row(), new_row(id=a["id"])]).result(10)
    assert exc.value.ids == [a["id"]]
    c = new_row()
    with pytest.raises(DuplicateIds):
        d.create([c, dict(c)]).result(10)
    assert d.get(c["id"]) is None          # nothing of a refused request is written
    assert d.query()[0] == 2


def claim_all(d, me="d1", seq=1, **kw):
    now = utcnow_naive()
    return d.claim(me, seq, now + timedelta(seconds=1), now, timedelta(seconds=30), 100, **kw)


def test_claim_takes_due_rows_oldest_first_once(store):
    d = store.delayed
    now = utcnow_naive()
    rows = [new_row(dueat=now - timedelta(seconds=s)) for s in (1, 30, 5)] + [new_row(dueat=now + timedelta(hours=1))]
    d.create(rows).result(10)
    got = claim_all(d)
    assert [c.id for c in got] == [rows[1]["id"], rows[2]["id"], rows[0]["id"]]
    assert claim_all(d, "d2") == []        # held by d1 while its lease runs
    assert not any(c.recovered for c in got)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    """A store's URL on either database (PostgreSQL: a new database, dropped afterwards)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    require_postgres()
    name = f"sm_quiet_{uuid.uuid4().hex[:8]}"
    yield f"{PG}/{name}"  # Store.init creates it
    drop_databases(name)


def test_an_idle_claim_skips_its_query_until_a_commit_or_a_row_comes_due(store_url):
    """After a claim found nothing due, the next ones cost a pragma (SQLite) or a look at a
    LISTEN socket (PostgreSQL) until another connection commits to the table (here: another
    Store on the same database, as the master is) or the first pending row falls due."""
    store = Store(store_url)
    store.init()
    d = store.delayed
    now = utcnow_naive()
    later = new_row(dueat=now + timedelta(seconds=3))
    d.create([later]).result(10)
    assert claim_all(d) == []
    assert d._quiet.holds(now + timedelta(seconds=1))
    other = Store(store_url)
    due = new_row(dueat=now - timedelta(seconds=1))
    other.delayed.create([due]).result(10)
    # noticed at the next claims (PostgreSQL's notice reaches the socket a moment after the commit)
    assert wait_until(lambda: [c.id for c in claim_all(d)] == [due["id"]], timeout=2, interval=0.02)
    assert claim_all(d, seq=2) == []
    assert not d._quiet.holds(now + timedelta(seconds=3))       # `later` is due by then
    got = d.claim("d1", 3, now + timedelta(seconds=3), now, timedelta(seconds=30), 100)
    assert [c.id for c in got] == [later["id"]]


def test_claim_leaves_busy_receivers_for_later(store):
    d = store.delayed
    now = utcnow_naive()
    slow = new_row(dueat=now - timedelta(seconds=2), notifyhost="slow:80")
    fast = new_row(dueat=now - timedelta(seconds=1), notifyhost="fast:80")
    d.create([slow, fast]).result(10)
    assert [c.id for c in claim_all(d, busy_hosts={"slow:80"})] == [fast["id"]]


def settle_one(d, claim, success, retry_times=2, retry_spans=10, me="d1"):
    return d.settle(me, [Outcome(claim, utcnow_naive(), success, 200 if success else 500, "x", None if success else "HTTP 500")],
                    retry_times, retry_spans)[0]


def test_failures_retry_after_span_times_attempt_then_fail_with_the_original_remark(store):
    d = store.delayed
    row = new_row(dueat=utcnow_naive() - timedelta(seconds=1), remark="客户备注")
    d.create([row]).result(10)
    for n in (1, 2):
        [c] = claim_all(d, seq=n)
        before = utcnow_naive()
        s = settle_one(d, c, False)
        assert s.status == DelayStatus.Ready and not s.stale
        got = d.get(row["id"])
        assert got["failedretrys"] == n and got["claimedby"] is None
        assert timedelta(seconds=10 * n - 1) < got["dueat"] - before < timedelta(seconds=10 * n + 1)
        with store.delayed.wengine.begin() as conn:   # make the retry due now
            from sqlalchemy import update

            from schedulemaster.store.delayed_store import T
            conn.execute(update(T).where(T.c.id == row["id"]).values(dueat=utcnow_naive() - timedelta(seconds=1)))
    [c] = claim_all(d, seq=3)
    s = settle_one(d, c, False)
    got = d.get(row["id"])
    assert s.status == DelayStatus.Failed and got["status"] == DelayStatus.Failed and got["dueat"] is None
    assert got["remark"] == "客户备注 | 重试2次后失败结束" and got["attempts"] == 3
    kinds = [a["kind"] for a in reversed(d.attempts_of(row["id"]))]
    assert kinds == ["first", "retry", "retry"]


def test_success_is_final(store):
    d = store.delayed
    row = new_row(dueat=utcnow_naive())
    d.create([row]).result(10)
    [c] = claim_all(d)
    assert settle_one(d, c, True).status == DelayStatus.Successed
    got = d.get(row["id"])
    assert got["status"] == 3 and got["finishtime"] is not None and got["dueat"] is None


def test_console_transitions_follow_the_state_rules(store):
    d = store.delayed
    row = new_row()
    d.create([row]).result(10)
    now = utcnow_naive()
    assert d.transition(row["id"], "reset", now)[0] == "state"         # already Ready
    assert d.transition(row["id"], "void", now)[0] == "ok"
    assert d.get(row["id"])["status"] == DelayStatus.Deleted
    assert d.transition(row["id"], "void", now)[0] == "state"
    assert d.transition(row["id"], "execute", now)[0] == "state"       # voided: not executed
    assert d.transition(row["id"], "reset", now)[0] == "ok"
    got = d.get(row["id"])
    assert got["status"] == DelayStatus.Ready and abs((got["dueat"] - now).total_seconds() - 30) < 1
    assert d.transition(str(uuid.uuid4()), "void", now)[0] == "missing"


def test_execute_on_a_row_being_sent_leaves_its_claim_so_it_is_sent_once(store):
    """执行 while the dispatcher holds a due row (sending it): that send is the execution. A
    claimed row not yet due is released to fire now (the dispatcher re-claims it)."""
    d = store.delayed
    due, later = new_row(dueat=utcnow_naive()), new_row(dueat=utcnow_naive() + timedelta(seconds=30))
    d.create([due, later]).result(10)
    now = utcnow_naive()
    claims = {c.id: c for c in d.claim("d1", 1, now + timedelta(seconds=60), now, timedelta(seconds=30), 100)}
    assert set(claims) == {due["id"], later["id"]}
    assert d.transition(due["id"], "execute", utcnow_naive())[0] == "ok"
    assert d.get(due["id"])["claimedby"] == "d1"                      # still the sender's
    assert claim_all(d, seq=2) == []                                  # nobody claims it twice
    assert settle_one(d, claims[due["id"]], True).status == DelayStatus.Successed
    assert d.transition(later["id"], "execute", utcnow_naive())[0] == "ok"
    got = d.get(later["id"])
    assert got["claimedby"] is None and got["dueat"] <= utcnow_naive()


def test_a_manual_execute_of_a_failed_task_is_one_try_and_marks_the_remark(store):
    d = store.delayed
    row = new_row(status=DelayStatus.Failed, dueat=None, failedretrys=3)
    d.create([row]).result(10)
    assert d.transition(row["id"], "execute", utcnow_naive())[0] == "ok"
    [c] = claim_all(d)
    assert c.manual
    assert settle_one(d, c, False).status == DelayStatus.Failed      # no retries
    assert d.transition(row["id"], "execute", utcnow_naive())[0] == "ok"
    [c] = claim_all(d, seq=2)
    assert settle_one(d, c, True).status == DelayStatus.Successed
    assert d.get(row["id"])["remark"].endswith(" | 手动执行回调成功")


def test_an_outcome_for_a_task_voided_meanwhile_changes_nothing_but_is_recorded(store):
    d = store.delayed
    row = new_row(dueat=utcnow_naive())
    d.create([row]).result(10)
    [c] = claim_all(d)
    d.transition(row["id"], "void", utcnow_naive())
    s = settle_one(d, c, True)
    assert s.stale and d.get(row["id"])["status"] == DelayStatus.Deleted
    assert len(d.attempts_of(row["id"])) == 1


def test_claims_of_a_dead_dispatcher_come_back_marked_recovered(store):
    d = store.delayed
    row = new_row(dueat=utcnow_naive())
    d.create([row]).result(10)
    assert len(claim_all(d, "dead")) == 1
    assert claim_all(d, "next") == []
    assert d.release_all() == 1                      # the single SQLite dispatcher starting up
    [c] = claim_all(d, "next")
    assert c.recovered
    settle_one(d, c, True, me="next")
    assert d.attempts_of(row["id"])[0]["kind"] == "recovered"
    assert settle_one(d, c, True, me="dead").stale   # the dead one's late outcome cannot overwrite


def test_a_clean_stop_gives_back_unfired_claims_without_marking_them_recovered(store):
    d = store.delayed
    row = new_row(dueat=utcnow_naive())
    d.create([row]).result(10)
    claim_all(d, "d1")
    assert d.release("d1", [row["id"]]) == 1
    [c] = claim_all(d, "d2")
    assert not c.recovered


def test_a_claim_handed_straight_back_keeps_the_dead_owner(store):
    """A receiver's share was full, so the claim is undone: a row a dead dispatcher held must
    still count as recovered when it is claimed again."""
    d = store.delayed
    row = new_row(dueat=utcnow_naive())
    d.create([row]).result(10)
    claim_all(d, "dead")
    d.release_all()
    [c] = claim_all(d, "next", seq=1)
    assert d.hand_back("next", [c]) == 1
    [again] = claim_all(d, "next", seq=2)
    assert again.recovered and again.previous_owner == "dead"


def test_a_new_row_takes_the_models_defaults_and_refuses_unknown_or_missing_columns():
    from schedulemaster.store.delayed_store import DelayStatus, ready_row

    now = utcnow_naive()
    base = dict(id="x", sourceapp="a", topic="t", contentkey="k", delayabsolutetime=now, createtime=now,
                notifyurl="http://127.0.0.1:9/", notifydatatype="application/json", notifybody="{}")
    row = ready_row(**base)
    assert (row["status"], row["dueat"], row["attempts"], row["claimedby"]) == (DelayStatus.Ready, now, 0, None)
    with pytest.raises(TypeError, match="unknown columns \\['colour'\\]"):
        ready_row(**base, colour="red")
    with pytest.raises(TypeError, match="missing \\['topic'\\]"):
        ready_row(**{k: v for k, v in base.items() if k != "topic"})
