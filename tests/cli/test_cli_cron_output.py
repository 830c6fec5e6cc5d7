"""``cxsmtp send`` under cron (issue 11): time-stamped lines off a terminal, the
`cxsmtp test NAME` hint, a repeated server error told once (``--quiet``), a provider's
4xx rate limit as normal operation (exit 0).  Real subprocesses (stdout and stderr
are pipes: a non-terminal) against cxsmtp's own sink or a port where nothing listens.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port
from servers import entry_for, make_spool, names

from carerix_smtp.config.file import Config, save_config
from carerix_smtp.sink.config import FailRule

STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d "
STAMPED = re.compile(STAMP + r"cxsmtp: ")
HINT = "; run `cxsmtp test local` for a diagnosis"
HISTORY = "send-history.json"


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def use(isolated: Any, port: int, **kw: Any) -> None:
    save_config(Config(path=isolated.config, servers={"local": entry_for(port, **kw)}))


def error_lines(result: Any) -> list[str]:
    return [line for line in lines(result.stderr) if "cxsmtp: error: " in line]


def test_every_text_line_off_a_terminal_starts_with_the_local_iso_time(
    tmp_path: Path, isolated: Any, cxsmtp: Any
) -> None:
    use(isolated, free_port())
    spool = make_spool(tmp_path, 2)
    result = cxsmtp("send", str(spool), env={"TZ": "CET-1"})  # POSIX TZ: UTC+1, no DST
    assert result.returncode == 75
    out, err = lines(result.stdout), lines(result.stderr)
    assert out and err
    for line in out + err:
        assert STAMPED.match(line), line
        assert line[19:26] == "+01:00 ", line  # local time with its offset
    (error,) = error_lines(result)
    assert re.fullmatch(STAMP + r"cxsmtp: error: server local: cannot connect to .*", error)
    assert error.endswith(HINT)
    assert names(spool) == ["m00000.eml", "m00001.eml"]


def test_an_error_from_the_cli_guard_is_stamped_too(tmp_path: Path, cxsmtp: Any) -> None:
    missing = tmp_path / "no-such-spool"
    result = cxsmtp("send", str(missing))
    assert result.returncode == 78
    error, *hints = lines(result.stderr)
    assert re.fullmatch(STAMP + rf"cxsmtp: error: spool {re.escape(str(missing))}: .*", error)
    assert all(re.fullmatch(STAMP + r"cxsmtp: hint: .*", hint) for hint in hints)


def test_json_stays_one_object_without_a_stamp(tmp_path: Path, isolated: Any, cxsmtp: Any) -> None:
    use(isolated, free_port())
    spool = make_spool(tmp_path, 1)
    result = cxsmtp("send", str(spool), "--json")
    assert result.returncode == 75
    data = json.loads(result.stdout)  # the whole of stdout is one JSON object
    assert data["status"] == "unreachable"
    assert [e["kind"] for e in data["server_errors"]] == ["connect"]
    assert all(STAMPED.match(line) for line in lines(result.stderr))


def test_auth_refused_names_the_server_and_the_diagnosis(
    tmp_path: Path, isolated: Any, sink_factory: Any, cxsmtp: Any
) -> None:
    sink = sink_factory(auth=("user", "secret"), auth_required=True, auth_require_tls=False)
    use(isolated, sink.port, username="user", allow_plaintext_auth=True)
    spool = make_spool(tmp_path, 1)
    result = cxsmtp("send", str(spool), env={"CXSMTP_PASSWORD_LOCAL": "wrong"})
    assert result.returncode == 77
    (error,) = error_lines(result)
    assert "cxsmtp: error: server local: " in error and "535" in error
    assert error.endswith(HINT)


def test_a_providers_rate_limit_is_normal_operation_exit_0(
    tmp_path: Path, isolated: Any, sink_factory: Any, cxsmtp: Any
) -> None:
    sink = sink_factory(fail=[FailRule("mail", 450)])
    use(isolated, sink.port)
    spool = make_spool(tmp_path, 7)
    result = cxsmtp("send", str(spool))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # nothing for cron to mail
    summary, deferring = lines(result.stdout)
    assert re.fullmatch(STAMP + r"cxsmtp: deferred: sent 0, deferred 5, failed 0 \(.*", summary)
    assert "server local: 5 messages in a row deferred (last: MAIL FROM refused: 450" in deferring
    assert len(names(spool / "deferred")) == 5 and len(names(spool)) == 2
    quiet = cxsmtp("send", str(spool), "--quiet")  # the 2 left: deferred too, silently
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "", "")
    data = json.loads(cxsmtp("send", str(spool), "--json").stdout)
    assert data["status"] == "nothing-to-do"
    assert len(names(spool / "deferred")) == 7 and sink.messages == []


def _age_history(isolated: Any, seconds: float) -> None:
    """Move every time in the history back: as if ``seconds`` had passed."""
    path = isolated.state_dir / HISTORY
    data = json.loads(path.read_text())
    for error in data["servers"].values():
        for key in ("first_seen", "last_seen", "last_printed"):
            error[key] -= seconds
    path.write_text(json.dumps(data))


def test_quiet_tells_a_repeated_error_once_a_day_and_the_recovery(
    tmp_path: Path, isolated: Any, sink_factory: Any, cxsmtp: Any
) -> None:
    use(isolated, free_port())
    spool = make_spool(tmp_path, 2)
    first = cxsmtp("send", str(spool), "--quiet")
    assert first.returncode == 75 and first.stdout == ""
    (error,) = error_lines(first)
    assert error.endswith(HINT) and "still failing" not in error
    for _ in range(2):  # the same error on the next runs: not again
        again = cxsmtp("send", str(spool), "--quiet")
        assert (again.returncode, again.stdout, again.stderr) == (75, "", "")
    loud = cxsmtp("send", str(spool))  # without --quiet: every time, as before
    assert loud.returncode == 75 and len(error_lines(loud)) == 1
    assert "still failing since " in error_lines(loud)[0]

    _age_history(isolated, 25 * 3600)  # a day later: once more, saying since when
    daily = cxsmtp("send", str(spool), "--quiet")
    (error,) = error_lines(daily)
    assert daily.returncode == 75
    assert re.search(r"\(still failing since \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d\)", error)
    assert error.endswith(HINT)
    assert cxsmtp("send", str(spool), "--quiet").stderr == ""

    use(isolated, free_port())  # another error: told at once
    changed = cxsmtp("send", str(spool), "--quiet")
    assert changed.returncode == 75 and len(error_lines(changed)) == 1

    sink = sink_factory()
    use(isolated, sink.port)
    recovered = cxsmtp("send", str(spool), "--quiet")
    assert recovered.returncode == 0 and recovered.stderr == ""
    (line,) = lines(recovered.stdout)
    assert re.fullmatch(
        STAMP + r"cxsmtp: server local works again after 1 d 1 h \(failing since .*\)", line
    )
    assert len(sink.messages) == 2
    history = json.loads((isolated.state_dir / HISTORY).read_text())
    assert history["last_run"]["status"] == "ok" and history["last_run"]["exit_code"] == 0
    assert history["servers"]["local"]["recovered_at"] is not None
    assert (isolated.state_dir / HISTORY).stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("quiet", [True, False], ids=["quiet", "loud"])
def test_an_error_after_a_recovery_is_news_again(
    tmp_path: Path, isolated: Any, sink_factory: Any, cxsmtp: Any, quiet: bool
) -> None:
    flags = ["--quiet"] if quiet else []
    port = free_port()
    use(isolated, port)
    spool = make_spool(tmp_path, 1)
    assert len(error_lines(cxsmtp("send", str(spool), *flags))) == 1
    sink = sink_factory()
    use(isolated, sink.port)
    assert cxsmtp("send", str(spool), *flags).returncode == 0
    make_spool(tmp_path, 1)
    use(isolated, port)
    result = cxsmtp("send", str(spool), *flags)
    (error,) = error_lines(result)
    assert result.returncode == 75 and "still failing" not in error
