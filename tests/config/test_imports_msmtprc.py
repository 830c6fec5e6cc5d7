"""config/imports/msmtprc.py: msmtp's syntax and semantics, table by table, and the
fixture msmtprc (defaults, inheritance, passwordeval, password, default account)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from carerix_smtp.config.imports.msmtprc import (
    command_without_shell,
    find_msmtprc,
    parse_accounts,
    read_msmtprc,
    split_line,
)
from carerix_smtp.config.tls import Security
from carerix_smtp.errors import ConfigError, InputError

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        pytest.param("host smtp.example.com", ("host", "smtp.example.com"), id="plain"),
        pytest.param("  port\t587  ", ("port", "587"), id="tab-and-blanks"),
        pytest.param('password " two  spaces "', ("password", " two  spaces "), id="quoted"),
        pytest.param('passwordeval "pass x"', ("passwordeval", "pass x"), id="quotes-removed"),
        pytest.param('user a"b', ("user", 'a"b'), id="inner-quote-kept"),
        pytest.param("password abc#def", ("password", "abc#def"), id="hash-inside-kept"),
        pytest.param("tls", ("tls", ""), id="empty-argument"),
        pytest.param("# host x", None, id="comment"),
        pytest.param("   # indented comment", None, id="indented-comment"),
        pytest.param("   ", None, id="blank"),
    ],
)
def test_split_line(line: str, expected: tuple[str, str] | None) -> None:
    assert split_line(line) == expected


def test_inheritance_takes_what_the_base_set_not_the_base_defaults() -> None:
    """msmtp: account = the defaults in effect at its line, then each base's explicit
    settings (its mask) in order, then its own lines."""
    text = "\n".join([
        "defaults", "port 25",
        "account a", "host a.example", "user ua",
        "defaults", "port 2525",  # later defaults: for accounts after this line
        "account b", "host b.example", "tls on",
        "account c : a, b", "from c@example.org",
    ])  # fmt: skip
    accounts, notes = parse_accounts(text, "rc")
    by_name = {a.name: a for a in accounts}
    assert by_name["a"].values["port"] == "25"
    assert by_name["b"].values["port"] == "2525"
    c = by_name["c"]
    assert c.values["host"] == "b.example"  # b comes last in the list
    assert c.values["user"] == "ua" and c.values["tls"] == "on"
    assert c.values["port"] == "2525"  # a's port came from defaults: not inherited
    assert c.own == {"from"} and c.bases == ("a", "b")
    assert notes == []


def test_lines_before_any_account_are_the_default_account() -> None:
    accounts, _ = parse_accounts("host old.example\nuser u\n", "rc")
    assert [(a.name, a.values["host"]) for a in accounts] == [("default", "old.example")]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("account b : a\nhost x", "inherits from 'a', which is not (yet)", id="base"),
        pytest.param("account a\nhost x\naccount a\nhost y", "already defined", id="twice"),
        pytest.param("account : a", "account needs a name", id="no-name"),
    ],
)
def test_account_errors_name_file_and_line(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        parse_accounts(text, "/home/u/.msmtprc")
    assert str(info.value).startswith("/home/u/.msmtprc:")


@pytest.mark.parametrize(
    ("lines", "security", "host"),
    [
        pytest.param([], Security.NONE, "[h.example]:25", id="tls-off-default-port"),
        pytest.param(["tls on"], Security.STARTTLS, "[h.example]:25", id="tls-starttls"),
        pytest.param(["tls"], Security.STARTTLS, "[h.example]:25", id="empty-means-on"),
        pytest.param(
            ["tls on", "tls_starttls off"], Security.SSL, "[h.example]:465", id="ssl-465"
        ),
        pytest.param(
            ["tls on", "tls_starttls off", "port 2465"], Security.SSL, "[h.example]:2465",
            id="ssl-own-port",
        ),
        pytest.param(["tls off", "port 587"], Security.NONE, "[h.example]:587", id="off-587"),
    ],
)  # fmt: skip
def test_tls_and_port_become_security_and_a_bracketed_host(
    tmp_path: Path, lines: list[str], security: Security, host: str
) -> None:
    rc = tmp_path / "rc"
    rc.write_text("\n".join(["account a", "host h.example", *lines]) + "\n")
    (planned,) = read_msmtprc(rc).servers
    assert planned.entry.security is security
    assert planned.entry.host == host  # brackets: msmtp never looks up MX records


def test_the_fixture(monkeypatch: pytest.MonkeyPatch) -> None:
    plan = read_msmtprc(FIXTURES / "msmtprc")
    servers = {p.entry.name: p for p in plan.servers}
    assert list(servers) == ["work", "home", "work-alt", "gmail"]  # not "default"
    assert plan.default == "work"  # account default : work

    work = servers["work"].entry
    assert (work.host, work.security, work.username) == (
        "[smtp.work.example]:587", Security.STARTTLS, "jan",
    )  # fmt: skip
    assert work.helo_name == "laptop.work.example"
    assert work.password_command is not None
    assert shlex.split(work.password_command) == [
        "sh", "-c", "gpg -q -d ~/.msmtp-work.gpg | head -n1",
    ]  # fmt: skip
    assert servers["work"].password is None

    home = servers["home"]
    assert (home.entry.host, home.entry.security) == ("[mail.home.example]:465", Security.SSL)
    assert home.password == "hunter2 with spaces"  # for the store, never the entry
    assert home.entry.password_command is None

    alt = servers["work-alt"].entry  # inherited host, port, TLS and domain from work
    assert (alt.host, alt.username, alt.helo_name) == (
        "[smtp.work.example]:587", "jan.alt", "laptop.work.example",
    )  # fmt: skip
    assert alt.password_command == "pass show smtp/work-alt"  # no shell needed

    gmail = servers["gmail"].entry
    assert gmail.oauth_token_command == "oama access jan@gmail.example"
    assert gmail.password_command is None and gmail.username == "jan@gmail.example"

    assert plan.users == {
        "jan@work.example": "work",
        "Jan@home.example": "home",  # domain lower-cased, as the users map keys are
        "alt@work.example": "work-alt",
    }
    notes = "\n".join(plan.notes)
    assert "defaults: logfile not carried over" in notes
    assert notes.count("logfile") == 1  # once, not once per account
    assert "account 'work-alt': tls_fingerprint not carried over" in notes
    assert "'*@gmail.example' is a pattern" in notes
    assert "hunter2" not in repr(plan)


def test_certcheck_off_is_refused_unless_allowed() -> None:
    with pytest.raises(ConfigError, match="tls_certcheck off") as info:
        read_msmtprc(FIXTURES / "msmtprc-insecure")
    assert "--allow-insecure" in str(info.value) and "account 'lab'" in str(info.value)
    (lab,) = read_msmtprc(FIXTURES / "msmtprc-insecure", allow_insecure=True).servers
    assert lab.entry.tls_verify is False and lab.password == "labpw"


def test_password_without_tls_follows_the_plaintext_rule(tmp_path: Path) -> None:
    rc = tmp_path / "rc"
    rc.write_text("account a\nhost h\nauth on\nuser u\npassword p\n")
    with pytest.raises(ConfigError, match="--allow-plaintext-auth"):
        read_msmtprc(rc)
    (planned,) = read_msmtprc(rc, allow_plaintext_auth=True).servers
    assert planned.entry.security is Security.NONE and planned.entry.allow_plaintext_auth


@pytest.mark.parametrize(
    ("body", "note", "username"),
    [
        pytest.param("user u\npassword p", "auth is off, so user, password", None, id="auth-off"),
        pytest.param("auth gssapi\nuser u", "auth gssapi is not supported", None, id="gssapi"),
        pytest.param("auth on", "auth without user", None, id="no-user"),
        pytest.param("auth on\nuser u", "no password in the file", "u", id="no-password"),
        pytest.param("auth cram-md5\nuser u\npasswordeval pass x", "auth cram-md5: cxsmtp", "u",
                     id="method"),
        pytest.param("auth xoauth2\nuser u\npassword tok", "a fixed token expires", "u",
                     id="fixed-token"),
        pytest.param("protocol lmtp", "protocol lmtp is not supported", None, id="lmtp"),
    ],
)  # fmt: skip
def test_what_is_not_carried_over_is_said(
    tmp_path: Path, body: str, note: str, username: str | None
) -> None:
    rc = tmp_path / "rc"
    rc.write_text(f"account a\nhost h\ntls on\n{body}\n")
    plan = read_msmtprc(rc)
    assert any(note in n for n in plan.notes), plan.notes
    assert all(p.entry.username == username for p in plan.servers)
    assert all(p.password is None for p in plan.servers)


def test_eval_lines_are_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    rc = tmp_path / "rc"
    rc.write_text(f"account a\nhost h\neval touch {marker}\n")
    plan = read_msmtprc(rc)
    assert not marker.exists()
    assert any("line 3: eval is not run" in n for n in plan.notes)


def test_account_names_become_valid_server_names(tmp_path: Path) -> None:
    rc = tmp_path / "rc"
    rc.write_text("account my work\nhost h\naccount my/work\nhost h2\n")
    names = [p.entry.name for p in read_msmtprc(rc).servers]
    assert names == ["my-work", "my-work-2"]


def test_an_own_default_account_is_imported_as_default(tmp_path: Path) -> None:
    rc = tmp_path / "rc"
    rc.write_text("account a\nhost a.example\naccount default : a\nport 2525\n")
    plan = read_msmtprc(rc)
    assert [p.entry.host for p in plan.servers] == ["[a.example]:25", "[a.example]:2525"]
    assert plan.default == "default"


@pytest.mark.parametrize(
    ("command", "argv"),
    [
        pytest.param("pass show smtp/x", ["pass", "show", "smtp/x"], id="simple"),
        pytest.param("cat ~/pw", ["sh", "-c", "cat ~/pw"], id="tilde"),
        pytest.param("echo $PW", ["sh", "-c", "echo $PW"], id="variable"),
        pytest.param("gpg -d f | head -1", ["sh", "-c", "gpg -d f | head -1"], id="pipe"),
        pytest.param("a 'b c'", ["sh", "-c", "a 'b c'"], id="quotes"),
    ],
)
def test_passwordeval_keeps_its_shell_when_it_needs_one(command: str, argv: list[str]) -> None:
    assert shlex.split(command_without_shell(command)) == argv


def test_find_msmtprc_order(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    with pytest.raises(InputError, match="no msmtp configuration found"):
        find_msmtprc(env)
    xdg = tmp_path / "xdg" / "msmtp" / "config"
    xdg.parent.mkdir(parents=True)
    xdg.write_text("account a\nhost h\n")
    assert find_msmtprc(env) == xdg
    (tmp_path / ".msmtprc").write_text("account a\nhost h\n")
    assert find_msmtprc(env) == tmp_path / ".msmtprc"


def test_trust_file_tilde_is_home(tmp_path: Path) -> None:
    rc = tmp_path / "rc"
    rc.write_text("account a\nhost h\ntls on\ntls_trust_file ~/ca.pem\n")
    plan = read_msmtprc(rc, env={"HOME": "/home/jan"})
    assert plan.servers[0].entry.ca_file == "/home/jan/ca.pem"
    assert any("does not exist here yet" in n for n in plan.notes)


def test_missing_file_is_exit_66(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        read_msmtprc(tmp_path / "nope")


def test_a_domain_that_is_no_ehlo_name_is_noted(tmp_path: Path) -> None:
    rc = tmp_path / "rc"
    rc.write_text("account a\nhost h\ndomain my laptop\naccount b\nhost h\ndomain 192.0.2.1\n")
    plan = read_msmtprc(rc)
    assert [p.entry.helo_name for p in plan.servers] == [None, None]
    assert any("account 'a': domain 'my laptop'" in n for n in plan.notes)
    assert any("account 'b': domain '192.0.2.1'" in n for n in plan.notes)
