"""OAuth2 sign-in (issue 14): the XOAUTH2/OAUTHBEARER formats, the token source
(config/oauth.py), and SmtpSession against the real sink with ``oauth_tokens``
over STARTTLS: mechanism choice, a refused token fetched again once, a second
refusal final (exit 77), never over plain text, never a password mechanism."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from servers import entry_for, token_command, token_runs

from carerix_smtp.config.oauth import TokenSource, check_token_options, token_source
from carerix_smtp.config.tls import Security
from carerix_smtp.errors import ConfigError, ExitCode, SecretError, SmtpPolicyError, UsageError
from carerix_smtp.smtp.auth import AuthFailedError
from carerix_smtp.smtp.oauth import error_status, oauthbearer_response, xoauth2_response
from carerix_smtp.smtp.session import SmtpSession

USER = "me@example.com"
GOOD = "ya29.good-token"
OLD = "ya29.expired-token"

# --- the formats -------------------------------------------------------------------


def test_xoauth2_format() -> None:
    # Google's and Microsoft's documented layout
    assert xoauth2_response(USER, "T") == b"user=me@example.com\x01auth=Bearer T\x01\x01"


@pytest.mark.parametrize(
    ("user", "gs2"),
    [
        pytest.param(USER, b"n,a=me@example.com,", id="plain"),
        pytest.param("a,b=c", b"n,a=a=2Cb=3Dc,", id="rfc5801-escapes"),
    ],
)
def test_oauthbearer_format(user: str, gs2: bytes) -> None:
    blob = oauthbearer_response(user, "T", "smtp.example.com", 587)
    assert blob == gs2 + b"\x01host=smtp.example.com\x01port=587\x01auth=Bearer T\x01\x01"


def _b64(obj: Any) -> str:
    return base64.b64encode(json.dumps(obj).encode()).decode()


@pytest.mark.parametrize(
    ("challenge", "status"),
    [
        pytest.param(_b64({"status": "401", "schemes": "bearer"}), "401", id="gmail"),
        pytest.param(_b64({"status": "invalid_token"}), "invalid_token", id="rfc7628"),
        pytest.param(_b64({"schemes": "bearer"}), "unknown", id="no-status"),
        pytest.param(_b64(["401"]), "unknown", id="not-an-object"),
        pytest.param("not base64!", "unknown", id="garbage"),
    ],
)
def test_error_status(challenge: str, status: str) -> None:
    assert error_status(challenge) == status


# --- the token source --------------------------------------------------------------


def test_token_source_fetches_once_then_refreshes_once(tmp_path: Path) -> None:
    command, runs = token_command(tmp_path, OLD, GOOD, "third")
    source = TokenSource("g", command)
    assert source.token() == OLD and source.token() == OLD and token_runs(runs) == 1
    assert source.refresh(OLD) == GOOD and token_runs(runs) == 2
    # another connection that still held the old token gets the new one, no run
    assert source.refresh(OLD) == GOOD and token_runs(runs) == 2
    assert source.refresh(GOOD) is None and token_runs(runs) == 2  # one refresh per run
    assert GOOD not in repr(source) and OLD not in repr(source)


@pytest.mark.parametrize(
    ("script", "words"),
    [
        pytest.param("import sys; sys.exit(3)", "exited with status 3", id="status"),
        pytest.param("pass", "printed nothing", id="empty"),
        pytest.param("print('two words-secret')", "more than one word", id="two-words"),
    ],
)
def test_token_command_failures_name_the_cause_not_the_output(
    tmp_path: Path, script: str, words: str
) -> None:
    path = tmp_path / "cmd.py"
    path.write_text(script)
    import sys

    with pytest.raises(SecretError) as info:
        TokenSource("g", f"{sys.executable} {path}").token()
    assert words in str(info.value) and "oauth_token_command" in str(info.value)
    assert "secret" not in str(info.value)
    assert "run the server's oauth_token_command by hand" in (info.value.hint or "")
    assert info.value.exit_code == ExitCode.CONFIG


def test_token_source_needs_a_username(tmp_path: Path) -> None:
    command, runs = token_command(tmp_path, GOOD)
    entry = entry_for(1, oauth_token_command=command)
    with pytest.raises(ConfigError, match="needs a username"):
        token_source(entry)
    assert token_runs(runs) == 0
    assert token_source(entry_for(1)) is None  # no command: the password path


def test_token_and_password_options_conflict() -> None:
    check_token_options(None, login=True, password_stdin=True, password_command=True)
    check_token_options("cmd", login=False, password_stdin=False, password_command=False)
    with pytest.raises(UsageError, match="--password-stdin, --password-command"):
        check_token_options("cmd", login=False, password_stdin=True, password_command=True)


# --- sessions against the sink -------------------------------------------------------


@pytest.fixture
def oauth_sink(tmp_path: Path, sink_factory: Any) -> Any:
    """``oauth_sink(**sink_options)``: a STARTTLS sink that accepts GOOD for USER, and
    the entry for it (``entry_kw``) with a token command printing ``tokens``."""

    def make(*tokens: str, entry_kw: dict[str, Any] | None = None, **kw: Any) -> Any:
        ca = tmp_path / "ca.pem"
        options = {"tls": "starttls", "ca_out": ca, "oauth_tokens": (GOOD,), "oauth_user": USER}
        sink = sink_factory(**{**options, **kw})
        command, runs = token_command(tmp_path / "tok", *tokens)
        entry_options = {
            "security": Security.STARTTLS,
            "ca_file": str(ca),
            "username": USER,
            "oauth_token_command": command,
        }
        entry = entry_for(sink, **{**entry_options, **(entry_kw or {})})
        return sink, entry, runs

    return make


def _send_one(session: SmtpSession) -> None:
    result = session.send("a@x.example", ["b@y.example"], b"Subject: t\r\n\r\nbody\r\n")
    assert result.accepted == ["b@y.example"]


def test_oauthbearer_preferred_when_both_offered(oauth_sink: Any) -> None:
    sink, entry, runs = oauth_sink(GOOD)
    with SmtpSession(entry, token_source(entry)) as session:
        assert {"OAUTHBEARER", "XOAUTH2"} <= set(session.auth_mechanisms)
        assert session.auth_mechanism == "OAUTHBEARER"
        _send_one(session)
    assert sink.messages[0].auth_user == USER and token_runs(runs) == 1


def test_xoauth2_when_only_it_is_offered(oauth_sink: Any) -> None:
    sink, entry, _ = oauth_sink(GOOD, oauth_mechanisms=("XOAUTH2",))
    with SmtpSession(entry, token_source(entry)) as session:
        assert "OAUTHBEARER" not in session.auth_mechanisms
        assert session.auth_mechanism == "XOAUTH2"
        _send_one(session)
    assert len(sink.messages) == 1


@pytest.mark.parametrize("mechanisms", [("OAUTHBEARER",), ("XOAUTH2",)], ids=lambda m: m[0])
def test_expired_token_is_fetched_again_once(oauth_sink: Any, mechanisms: tuple[str]) -> None:
    sink, entry, runs = oauth_sink(OLD, GOOD, oauth_mechanisms=mechanisms)
    source = token_source(entry)
    assert source is not None
    with SmtpSession(entry, source) as session:
        assert session.auth_mechanism == mechanisms[0]
        auth = next(t for t in session.trace if t.name == "auth")
        assert auth.facts["token_refreshed"] is True
        _send_one(session)
    assert token_runs(runs) == 2
    # a later connection of the same run reuses the refreshed token: no third run
    with SmtpSession(entry, source) as session:
        _send_one(session)
    assert token_runs(runs) == 2 and len(sink.messages) == 2


def test_second_refusal_is_final_with_the_status(oauth_sink: Any) -> None:
    sink, entry, runs = oauth_sink(OLD, "also-wrong")
    session = SmtpSession(entry, token_source(entry))
    with pytest.raises(AuthFailedError) as info:
        session.open()
    error = info.value
    assert error.exit_code == ExitCode.NOPERM and error.reason == "token-refused"
    assert "status 401" in str(error) and "OAUTHBEARER" in str(error) and error.code == 535
    assert "check the token command: run it by hand" in str(error)
    assert "server show local" in (error.hint or "")
    assert OLD not in str(error) and "also-wrong" not in str(error)
    assert token_runs(runs) == 2 and sink.messages == []
    assert session.closed


def test_wrong_user_is_refused(oauth_sink: Any) -> None:
    _, entry, runs = oauth_sink(GOOD, entry_kw={"username": "other@example.com"})
    with pytest.raises(AuthFailedError, match="status 401"):
        SmtpSession(entry, token_source(entry)).open()
    assert token_runs(runs) == 2  # fetched again once: it may have been the token


def test_never_over_plain_text(oauth_sink: Any) -> None:
    """Even with allow_plaintext_auth (which lets a password through), no token."""
    sink, entry, _ = oauth_sink(
        GOOD,
        tls=None,
        ca_out=None,
        auth_require_tls=False,
        entry_kw={"security": Security.NONE, "allow_plaintext_auth": True, "ca_file": None},
    )
    session = SmtpSession(entry, token_source(entry))
    with pytest.raises(SmtpPolicyError, match="the OAuth2 token was not sent"):
        session.open()
    assert sink.messages == []


def test_never_a_password_mechanism(oauth_sink: Any) -> None:
    """A server that offers only PLAIN/LOGIN: refused, no password sent instead."""
    _, entry, _ = oauth_sink(GOOD, oauth_tokens=(), auth=(USER, "pw"))
    with pytest.raises(AuthFailedError) as info:
        SmtpSession(entry, token_source(entry)).open()
    assert info.value.reason == "no-mechanism"
    assert "OAUTHBEARER, XOAUTH2" in str(info.value)
