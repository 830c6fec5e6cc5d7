"""config/imports/postfix.py: main.cf and table syntax, the TLS decision table, and
the fixture directory (relayhost, sasl_passwd, fallback relays, sender relays)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from carerix_smtp.config.imports.postfix import (
    expand,
    parse_main_cf,
    parse_table,
    read_postfix,
    split_list,
)
from carerix_smtp.config.tls import Security
from carerix_smtp.errors import ConfigError, InputError

FIXTURE = Path(__file__).parent / "fixtures" / "postfix"


def postfix_dir(tmp_path: Path, main_cf: str, **tables: str) -> Path:
    directory = tmp_path / "postfix"
    directory.mkdir()
    (directory / "main.cf").write_text(main_cf)
    for name, text in tables.items():
        (directory / name).write_text(text)
    return directory


def test_main_cf_syntax() -> None:
    text = (
        "# comment\n"
        "relayhost = [a.example]:587\n"
        "smtp_fallback_relay = b.example,\n"
        "    c.example\n"
        "\n"
        "  # an indented comment does not continue anything\n"
        "empty =\n"
        "spaced=x   \n"
    )
    assert parse_main_cf(text) == {
        "relayhost": "[a.example]:587",
        "smtp_fallback_relay": "b.example, c.example",
        "empty": "",
        "spaced": "x",
    }


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("$myhostname", "mx.example", id="dollar"),
        pytest.param("${config_directory}/x", "/etc/postfix/x", id="braces"),
        pytest.param("$(config_directory)/x", "/etc/postfix/x", id="parens"),
        pytest.param("$nested", "mx.example", id="nested"),
        pytest.param("$unknown", "$unknown", id="unknown-kept"),
        pytest.param("$loop", "$loop", id="loop-stops"),
    ],
)
def test_expand(value: str, expected: str) -> None:
    params = {
        "myhostname": "mx.example",
        "config_directory": "/etc/postfix",
        "nested": "$myhostname",
        "loop": "$loop",
    }
    assert expand(value, params) == expected


def test_table_syntax() -> None:
    text = "# c\n[Smtp.Example]:587  user:pa ss\n@example.org\trelay\n  continued\nbare\n"
    assert parse_table(text) == {
        "[smtp.example]:587": "user:pa ss",
        "@example.org": "relay continued",
        "bare": "",
    }


def test_split_list() -> None:
    assert split_list(" a, b  c,,d ") == ["a", "b", "c", "d"]


def test_the_fixture_directory() -> None:
    plan = read_postfix(FIXTURE)
    servers = {p.entry.name: p for p in plan.servers}
    assert list(servers) == [
        "smtp.relay.example", "bulk.example", "backup.relay.example", "192.0.2.30",
    ]  # fmt: skip
    assert plan.default == "smtp.relay.example"

    relay = servers["smtp.relay.example"]
    assert relay.entry.host == "[smtp.relay.example]:587"  # brackets and port as written
    assert relay.entry.security is Security.STARTTLS  # encrypt
    assert relay.entry.username == "relayuser"
    assert relay.password == "relay:pass"  # split at the first colon only
    assert relay.entry.fallback == ["backup.relay.example", "192.0.2.30"]
    assert relay.entry.helo_name == "mx1.example.net"  # $myhostname expanded

    backup = servers["backup.relay.example"]
    assert backup.entry.host == "[backup.relay.example]:587"  # :submission
    assert (backup.entry.username, backup.password) == ("backupuser", "backuppw")
    assert backup.entry.fallback == []  # a fallback has none of its own

    bulk = servers["bulk.example"]  # found in sasl_passwd by its bare host name
    assert (bulk.entry.host, bulk.entry.username, bulk.password) == (
        "[bulk.example]:2525", "bulkuser", "bulkpw",
    )  # fmt: skip
    assert bulk.entry.fallback == ["backup.relay.example", "192.0.2.30"]
    assert servers["192.0.2.30"].entry.username is None

    assert plan.users == {
        "news@example.org": "bulk.example",
        "billing@example.org": "smtp.relay.example",
    }
    notes = "\n".join(plan.notes)
    assert "@example.com is not one address" in notes
    assert "smtp_tls_security_level = encrypt" in notes
    assert "smtp_tls_CApath not carried over" in notes
    assert "relay:pass" not in repr(plan)


@pytest.mark.parametrize(
    ("settings", "security"),
    [
        pytest.param("smtp_tls_security_level = none", Security.NONE, id="none"),
        pytest.param("smtp_tls_security_level = may", Security.AUTO, id="may"),
        pytest.param("smtp_tls_security_level = encrypt", Security.STARTTLS, id="encrypt"),
        pytest.param("smtp_tls_security_level = verify", Security.STARTTLS, id="verify"),
        pytest.param("smtp_tls_security_level = secure", Security.STARTTLS, id="secure"),
        pytest.param("smtp_tls_security_level = dane", Security.STARTTLS, id="dane"),
        pytest.param("", Security.AUTO, id="unset"),
        pytest.param("smtp_use_tls = yes", Security.AUTO, id="legacy-use"),
        pytest.param("smtp_enforce_tls = yes", Security.STARTTLS, id="legacy-enforce"),
        pytest.param(
            "smtp_tls_wrappermode = yes\nsmtp_tls_security_level = encrypt", Security.SSL,
            id="wrappermode",
        ),
    ],
)  # fmt: skip
def test_tls_level_table(tmp_path: Path, settings: str, security: Security) -> None:
    directory = postfix_dir(tmp_path, f"relayhost = [r.example]:587\n{settings}\n")
    (planned,) = read_postfix(directory).servers
    assert planned.entry.security is security


def test_unknown_tls_level_is_refused(tmp_path: Path) -> None:
    directory = postfix_dir(tmp_path, "relayhost = r\nsmtp_tls_security_level = maybe\n")
    with pytest.raises(ConfigError, match="smtp_tls_security_level 'maybe' is unknown"):
        read_postfix(directory)


def test_level_none_with_a_password_needs_consent(tmp_path: Path) -> None:
    main_cf = (
        "relayhost = [r.example]:25\nsmtp_tls_security_level = none\n"
        "smtp_sasl_auth_enable = yes\nsmtp_sasl_password_maps = texthash:$config_directory/pw\n"
    )
    directory = postfix_dir(tmp_path, main_cf, pw="[r.example]:25 u:p\n")
    with pytest.raises(ConfigError, match="--allow-plaintext-auth"):
        read_postfix(directory)
    (planned,) = read_postfix(directory, allow_plaintext_auth=True).servers
    assert planned.entry.allow_plaintext_auth and planned.password == "p"


def test_sasl_maps_are_ignored_without_auth_enable(tmp_path: Path) -> None:
    main_cf = "relayhost = [r.example]:587\nsmtp_sasl_password_maps = hash:/etc/postfix/pw\n"
    directory = postfix_dir(tmp_path, main_cf, pw="[r.example]:587 u:p\n")
    plan = read_postfix(directory)
    assert plan.servers[0].password is None and plan.servers[0].entry.username is None
    assert any("smtp_sasl_auth_enable is not yes" in n for n in plan.notes)


def test_only_the_compiled_table_is_named_in_the_error(tmp_path: Path) -> None:
    main_cf = (
        "relayhost = [r.example]:587\nsmtp_sasl_auth_enable = yes\n"
        "smtp_sasl_password_maps = hash:/etc/postfix/sasl_passwd\n"
    )
    directory = postfix_dir(tmp_path, main_cf, **{"sasl_passwd.db": "binary"})
    with pytest.raises(InputError, match="only the compiled table is there") as info:
        read_postfix(directory)
    assert str(directory / "sasl_passwd") in str(info.value)


def test_non_file_tables_are_noted(tmp_path: Path) -> None:
    main_cf = (
        "relayhost = [r.example]:587\nsmtp_sasl_auth_enable = yes\n"
        "smtp_sasl_password_maps = mysql:/etc/postfix/mysql.cf\n"
    )
    plan = read_postfix(postfix_dir(tmp_path, main_cf))
    assert any("mysql:/etc/postfix/mysql.cf is not a file table" in n for n in plan.notes)


def test_relayhost_list_adds_fallbacks_and_unbracketed_hosts_stay(tmp_path: Path) -> None:
    directory = postfix_dir(tmp_path, "relayhost = a.example:2525, [b.example]\n")
    plan = read_postfix(directory)
    a, b = plan.servers
    assert (a.entry.host, a.entry.fallback) == ("a.example:2525", ["b.example"])
    assert b.entry.host == "[b.example]"


def test_same_host_on_two_ports_gets_numbered_names(tmp_path: Path) -> None:
    directory = postfix_dir(
        tmp_path, "relayhost = [r.example]:587\nsmtp_fallback_relay = [r.example]:465\n"
    )
    assert [p.entry.name for p in read_postfix(directory).servers] == ["r.example", "r.example-2"]


def test_nothing_to_import_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nothing to import"):
        read_postfix(postfix_dir(tmp_path, "myhostname = mx.example\n"))


def test_missing_main_cf_is_exit_66(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"main\.cf: no such file"):
        read_postfix(tmp_path)


def test_relative_tables_and_a_copied_directory(tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(FIXTURE, copy)
    plan = read_postfix(copy)
    assert {p.entry.name for p in plan.servers} >= {"smtp.relay.example", "bulk.example"}


def test_helo_name_and_ca_file(tmp_path: Path) -> None:
    main_cf = (
        "relayhost = [r.example]:587\nsmtp_helo_name = $myhostname\n"
        "smtp_tls_CAfile = /nowhere/ca.pem\n"
    )
    plan = read_postfix(postfix_dir(tmp_path, main_cf))
    entry = plan.servers[0].entry
    assert entry.helo_name is None and entry.ca_file == "/nowhere/ca.pem"
    assert any("smtp_helo_name = $myhostname: not set" in n for n in plan.notes)
    assert any("/nowhere/ca.pem does not exist here yet" in n for n in plan.notes)
