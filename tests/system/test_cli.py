"""`schedulemaster cron` and the CLI's input checks: commands that start processes run as
subprocesses (a regression that starts one anyway times out), the rest through the CLI's app in
this process (helpers.run_cli)."""

import os
import subprocess
import sys

import pytest

from helpers import run_cli as sm


def process(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "schedulemaster.cli", *args], capture_output=True,
                          text=True, timeout=60)


def test_cron_prints_next_fire_times_local_to_the_zone():
    r = sm("cron", "33 0/8 * * * ?", "--count", "3", "--after", "2026-11-25T10:00:00", "--tz", "Asia/Shanghai")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["2026-11-25T10:00:33", "2026-11-25T10:08:33", "2026-11-25T10:16:33"]


def test_cron_defaults_to_five_lines():
    r = sm("cron", "0 0 12 ? * MON-FRI", "--tz", "UTC")
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 5


@pytest.mark.parametrize("expr,needle", [
    ("0 0 12 ? * 9", "field 6 (day-of-week)"),
    ("* * * * *", "expected 6 or 7 fields"),
    ("0 0 25 * * ?", "field 3 (hours)"),
    ("0 0 12 * * *", "day-of-month and day-of-week"),
    ("'; rm -rf / #", "invalid cron expression"),
])
def test_cron_invalid_expression_exits_2_and_points_at_the_field(expr, needle):
    r = sm("cron", expr)
    assert r.returncode == 2
    assert needle in r.stderr


@pytest.mark.parametrize("args", [
    ["--after", "2026-13-01T00:00:00"], ["--after", "yesterday"], ["--tz", "Mars/Olympus"],
    ["--count", "0"], ["--count", "-3"], ["--count", "100000"], ["--count", "many"],
])
def test_cron_bad_options_exit_2(args):
    r = sm("cron", "0/5 * * * * ?", *args)
    assert r.returncode == 2, r.stdout


@pytest.mark.parametrize("args", [
    ["node", "--name", "a/b"], ["node", "--maxc", "0"], ["node", "--priority", "-1"],
    ["node", "--master", "ftp://x"], ["up", "--api-port", "70000"], ["up", "--timezone", "Nowhere/City"],
    ["up", "--api-port", "4300", "--prefect-port", "4300"],
    ["import", "--from", "mysql://root@127.0.0.1:1/x", "--user-role", "root"],
])
def test_bad_process_options_are_refused_before_anything_starts(args):
    r = process(*args)
    assert r.returncode == 2, (r.stdout, r.stderr)


@pytest.mark.parametrize("value", ["some", "", "ALL; rm -rf /", "x" * 10_000])
def test_a_bad_run_events_setting_is_refused_before_anything_starts(value):
    r = subprocess.run([sys.executable, "-m", "schedulemaster.cli", "master"], capture_output=True, text=True,
                       timeout=60, env={**os.environ, "SM_RUN_EVENTS": value})
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "SM_RUN_EVENTS must be one of all, failed" in r.stderr and len(r.stderr) < 2000


@pytest.mark.parametrize("name,value,says", [
    *(("SM_UI_NEXT_RUNS", v, "SM_UI_NEXT_RUNS must be one of on, off")
      for v in ("yes", "", "on; rm -rf /", "x" * 10_000)),
    *(("SM_METRICS_OPEN", v, "SM_METRICS_OPEN must be true or false") for v in ("1", "open", "x" * 10_000)),
])
def test_a_bad_switch_setting_is_refused_before_anything_starts(name, value, says):
    r = subprocess.run([sys.executable, "-m", "schedulemaster.cli", "master"], capture_output=True, text=True,
                       timeout=60, env={**os.environ, name: value})
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert says in r.stderr and len(r.stderr) < 2000


@pytest.mark.parametrize("cmd", [["--help"], ["up", "--help"], ["master", "--help"], ["node", "--help"],
                                 ["cron", "--help"]])
def test_help_everywhere(cmd):
    r = sm(*cmd)
    assert r.returncode == 0 and "Usage" in r.stdout
