"""How an HTTP task's request is built (behaviour notes §4.4)."""

import pytest

from schedulemaster.flows.http_task import HttpTaskError, parse_params, prepare


def http(**kw):
    base = {"RequestUrl": "http://127.0.0.1:9/x", "Method": "POST", "ContentType": "application/json",
            "Headers": None, "Body": '{"a":\r\n1}'}
    base.update(kw)
    return base


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
