"""How an HTTP task's request is built (docs/legacy-behaviour.md, HTTP tasks)."""

import pytest

from schedulemaster.deployments.spec import HttpTarget
from schedulemaster.flows.http_task import HttpTaskError, parse_params, prepare


def http(**kw):
    base = {"RequestUrl": "http://127.0.0.1:9/x", "Method": "POST", "ContentType": "application/json",
            "Headers": None, "Body": '{"a":\r\n1}'}
    base.update(kw)
    return HttpTarget(**base)


def test_json_body_has_crlf_removed_and_charset_added():
    r = prepare(http(), {}, "key-1")
    assert r.content == b'{"a":1}'
    assert r.headers["Content-Type"] == "application/json; charset=utf-8"
    assert r.headers["Idempotency-Key"] == "key-1"
    assert r.timeout == 10.0


def test_form_body_is_rendered_from_schedule_params_and_appended_for_get():
    body = '[{"ParamKey":"a","ParamValue":"1 2"},{"ParamKey":"b","ParamValue":"x&y"}]'
    post = prepare(http(ContentType="application/x-www-form-urlencoded", Body=body), {}, "k")
    assert post.content == b"a=1+2&b=x%26y"
    get = prepare(http(Method="GET", ContentType="application/x-www-form-urlencoded", Body=body), {}, "k")
    assert get.url == "http://127.0.0.1:9/x?a=1+2&b=x%26y" and get.content == b"a=1+2&b=x%26y"


def test_other_content_types_send_an_empty_body():
    assert prepare(http(ContentType="text/xml", Body="<a/>"), {}, "k").content == b""


def test_custom_headers_and_timeout_precedence():
    headers = '[{"ParamKey":"x-token","ParamValue":"abc"},{"ParamKey":"sm-timeout","ParamValue":"3"}]'
    r = prepare(http(Headers=headers), {"Http_RequestTimeout": "7"}, "k")
    assert r.headers["x-token"] == "abc" and r.headers["sm-timeout"] == "3" and r.timeout == 3.0
    assert prepare(http(), {"Http_RequestTimeout": "7"}, "k").timeout == 7.0
    assert prepare(http(), {"Http_RequestTimeout": "0"}, "k").timeout == 10.0
    assert prepare(http(), {"Http_RequestTimeout": "junk"}, "k").timeout == 10.0


def test_content_headers_cannot_be_set_as_request_headers():
    with pytest.raises(HttpTaskError, match="Content-Type"):
        prepare(http(Headers='[{"ParamKey":"Content-Type","ParamValue":"x"}]'), {}, "k")


@pytest.mark.parametrize("url", ["", "ftp://x/y", "not a url", "http://", "javascript:alert(1)"])
def test_bad_urls_fail_the_firing_with_a_message(url):
    with pytest.raises(HttpTaskError, match="invalid url"):
        prepare(http(RequestUrl=url), {}, "k")


@pytest.mark.parametrize("text", ["{", "{}", "[1,2]", '"x"'])
def test_malformed_param_lists_are_refused(text):
    with pytest.raises(HttpTaskError):
        parse_params(text)


def test_param_lists_bind_case_insensitively_and_skip_empty_keys():
    assert parse_params('[{"paramkey":"a","paramvalue":5},{"ParamKey":"","ParamValue":"x"}]') == [("a", "5")]


async def test_a_pooled_connection_closed_by_the_server_is_retried_once_on_a_new_one():
    import asyncio

    from schedulemaster.flows.http_task import new_session, perform_http

    seen: list[tuple[int, str]] = []  # (connection number, idempotency key)
    conns = 0

    async def handle(reader, writer):
        nonlocal conns
        conns += 1
        me = conns
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            key = next(line.split(b":", 1)[1].strip().decode() for line in head.split(b"\r\n")
                       if line.lower().startswith(b"idempotency-key"))
            length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length")), 0)
            await reader.readexactly(length)
            seen.append((me, key))
            if me == 1 and len(seen) > 1:  # the keep-alive close race: no answer, connection gone
                writer.close()
                return
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 7\r\n\r\nsuccess")
            await writer.drain()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    http = HttpTarget(RequestUrl=f"http://127.0.0.1:{port}/x", Method="POST", ContentType="application/json",
                      Body="{}")
    async with new_session(4) as session:
        first = await perform_http(session, http, settings={}, idempotency_key="k1")
        second = await perform_http(session, http, settings={}, idempotency_key="k2")
    server.close()
    assert first.ok and second.ok and second.status_code == 200
    assert seen == [(1, "k1"), (1, "k2"), (2, "k2")]  # the same firing, once more, on a new connection
    assert any("重试一次" in msg for _, msg, _ in second.logs)
