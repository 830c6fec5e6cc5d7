"""The sink's OAuth2 side (issue 14), spoken to with smtplib over STARTTLS: what it
offers, a good token, and a wrong one answered as Gmail does (334 + base64 JSON
status 401, then 535 5.7.8 after the client's response)."""

from __future__ import annotations

import base64
import json
import smtplib
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from carerix_smtp.errors import UsageError
from carerix_smtp.sink.config import SinkConfig, config_from_options
from carerix_smtp.sink.oauth import parse_oauthbearer, parse_xoauth2
from carerix_smtp.smtp.oauth import oauthbearer_response, xoauth2_response

TOKEN = "tok-123.abc"
USER = "me@example.com"


@pytest.fixture
def client(tmp_path: Path, sink_factory: Any) -> Iterator[Any]:
    """``client(**sink_options)``: smtplib after STARTTLS and EHLO, and the sink."""
    clients: list[smtplib.SMTP] = []

    def connect(**kw: Any) -> tuple[smtplib.SMTP, Any]:
        ca = tmp_path / "ca.pem"
        sink = sink_factory(tls="starttls", ca_out=ca, **kw)
        smtp = smtplib.SMTP("127.0.0.1", sink.port, timeout=5)
        clients.append(smtp)
        smtp.starttls(context=ssl.create_default_context(cafile=str(ca)))
        smtp.ehlo("client.test")
        return smtp, sink

    yield connect
    for smtp in clients:
        smtp.close()


def _auth(smtp: smtplib.SMTP, mechanism: str, blob: bytes) -> tuple[int, bytes]:
    return smtp.docmd("AUTH", f"{mechanism} {base64.b64encode(blob).decode()}")


def test_offers_oauth_only_after_tls(sink_factory: Any) -> None:
    sink = sink_factory(tls="starttls", oauth_tokens=(TOKEN,))
    with smtplib.SMTP("127.0.0.1", sink.port, timeout=5) as smtp:
        smtp.ehlo("client.test")
        assert not smtp.has_extn("auth")


def test_offers_only_the_configured_mechanisms(client: Any) -> None:
    smtp, _ = client(oauth_tokens=(TOKEN,))
    assert smtp.esmtp_features["auth"].split() == ["OAUTHBEARER", "XOAUTH2"]
    assert _auth(smtp, "PLAIN", b"\0u\0p")[0] == 504  # no password mechanism here
    smtp2, _ = client(oauth_tokens=(TOKEN,), auth=("u", "p"), oauth_mechanisms=("XOAUTH2",))
    assert smtp2.esmtp_features["auth"].split() == ["LOGIN", "PLAIN", "XOAUTH2"]


@pytest.mark.parametrize("mechanism", ["OAUTHBEARER", "XOAUTH2"])
def test_good_token_is_accepted(client: Any, mechanism: str) -> None:
    smtp, sink = client(oauth_tokens=("other", TOKEN), oauth_user=USER)
    if mechanism == "XOAUTH2":
        blob = xoauth2_response(USER, TOKEN)
    else:
        blob = oauthbearer_response(USER, TOKEN, "127.0.0.1", sink.port)
    code, _ = _auth(smtp, mechanism, blob)
    assert code == 235
    smtp.sendmail("a@x.example", ["b@y.example"], b"Subject: t\r\n\r\nbody\r\n")
    assert sink.messages[0].auth_user == USER


@pytest.mark.parametrize(
    ("mechanism", "answer"), [("XOAUTH2", ""), ("OAUTHBEARER", "AQ==")], ids=["gmail", "rfc7628"]
)
def test_wrong_token_gets_gmails_error_challenge(client: Any, mechanism: str, answer: str) -> None:
    smtp, _ = client(oauth_tokens=(TOKEN,))
    wrong = (
        xoauth2_response(USER, "wrong")
        if mechanism == "XOAUTH2"
        else oauthbearer_response(USER, "wrong", "h", 1)
    )
    code, text = _auth(smtp, mechanism, wrong)
    assert code == 334
    assert json.loads(base64.b64decode(text))["status"] == "401"
    code, text = smtp.docmd(answer)
    assert code == 535 and text.startswith(b"5.7.8")
    code, _ = _auth(smtp, "XOAUTH2", xoauth2_response(USER, TOKEN))  # may try again
    assert code == 235


def test_wrong_user_is_refused(client: Any) -> None:
    smtp, _ = client(oauth_tokens=(TOKEN,), oauth_user=USER)
    assert _auth(smtp, "XOAUTH2", xoauth2_response("eve@example.com", TOKEN))[0] == 334


def test_malformed_response_is_501(client: Any) -> None:
    smtp, _ = client(oauth_tokens=(TOKEN,))
    assert _auth(smtp, "OAUTHBEARER", b"no gs2 header")[0] == 501


@pytest.mark.parametrize(
    ("blob", "parsed"),
    [
        pytest.param(b"user=u\x01auth=Bearer t\x01\x01", ("u", "t"), id="xoauth2"),
        pytest.param(b"user=u\x01auth=Basic t\x01\x01", None, id="not-bearer"),
        pytest.param(b"auth=Bearer t\x01\x01", None, id="no-user"),
    ],
)
def test_parse_xoauth2(blob: bytes, parsed: tuple[str, str] | None) -> None:
    assert parse_xoauth2(blob) == parsed


def test_parse_oauthbearer_round_trip() -> None:
    blob = oauthbearer_response("a,b=c@x", "T", "h", 25)
    assert parse_oauthbearer(blob) == ("a,b=c@x", "T")
    assert parse_oauthbearer(b"n,,\x01auth=Bearer T\x01\x01") is None  # no authzid


def test_config_and_options() -> None:
    config = config_from_options(
        "127.0.0.1:0", auth=None, fail=[], drop=[], hang=[], oauth_tokens=(TOKEN,),
        auth_required=True,
    )  # fmt: skip
    config.validate()  # AUTH required is satisfiable with a token only
    assert TOKEN not in repr(config) and "oauth_tokens=1" in repr(config)
    with pytest.raises(UsageError, match="OAUTHBEARER and/or XOAUTH2"):
        SinkConfig(oauth_tokens=(TOKEN,), oauth_mechanisms=("PLAIN",)).validate()
    with pytest.raises(UsageError, match="one word"):
        SinkConfig(oauth_tokens=("two words",)).validate()


def test_a_600_byte_token_fits(client: Any) -> None:
    """Longer than aiosmtpd's 512-byte command limit once base64-encoded."""
    token = "t" * 600
    smtp, sink = client(oauth_tokens=(token,))
    blob = oauthbearer_response(USER, token, "127.0.0.1", sink.port)
    assert len(base64.b64encode(blob)) > 512
    assert _auth(smtp, "OAUTHBEARER", blob)[0] == 235
