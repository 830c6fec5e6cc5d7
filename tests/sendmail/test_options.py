"""sendmail's argv (carerix_smtp/sendmail/options.py): what each form means."""

from __future__ import annotations

from typing import Any

import pytest

from carerix_smtp.errors import ExitCode, UsageError
from carerix_smtp.sendmail.options import parse_options

CASES: list[tuple[str, list[str], dict[str, Any]]] = [
    ("php-mail", ["-t", "-i"], {"extract": True, "dot_ends": False, "recipients": []}),
    ("grouped-flags", ["-ti"], {"extract": True, "dot_ends": False}),
    ("oi", ["-oi", "a@x.example"], {"dot_ends": False, "recipients": ["a@x.example"]}),
    ("no-i-dot-ends", ["a@x.example"], {"dot_ends": True, "extract": False}),
    ("f-separate", ["-f", "b@x.example", "r@y.example"], {"sender": "b@x.example"}),
    ("f-attached", ["-fb@x.example", "r@y.example"], {"sender": "b@x.example"}),
    ("f-angle", ["-f", "<b@x.example>"], {"sender": "b@x.example"}),
    ("f-null", ["-f", "<>"], {"sender": ""}),
    ("r-sender", ["-r", "b@x.example"], {"sender": "b@x.example"}),
    ("F-name", ["-F", "Jan Z", "r@y.example"], {"full_name": "Jan Z"}),
    ("F-attached", ["-FCronDaemon"], {"full_name": "CronDaemon"}),
    ("tf-group", ["-tfb@x.example"], {"extract": True, "sender": "b@x.example"}),
    ("bm", ["-bm", "r@y.example"], {"mode": "deliver"}),
    ("bp", ["-bp"], {"mode": "list"}),
    ("q", ["-q"], {"mode": "run-queue"}),
    ("v", ["-v", "r@y.example"], {"verbose": True}),
    (
        "double-dash",
        ["-i", "--", "-odd@y.example", "r@y.example"],
        {"recipients": ["-odd@y.example", "r@y.example"]},
    ),
    ("comma-list", ["a@x.example, b@y.example"], {"recipients": ["a@x.example", "b@y.example"]}),
    (
        "options-after-recipient",
        ["r@y.example", "-i"],
        {"recipients": ["r@y.example"], "dot_ends": False},
    ),
    (
        "cron",
        ["-FCronDaemon", "-i", "-B8BITMIME", "-oem", "root@y.example"],
        {"full_name": "CronDaemon", "ignored": ["-B 8BITMIME", "-oem"]},
    ),
    (
        "ignored-with-values",
        ["-B", "8BITMIME", "-N", "never", "-R", "hdrs", "-X", "/tmp/x", "-O", "A=B", "r@y.example"],
        {"ignored": ["-B 8BITMIME", "-N never", "-R hdrs", "-X /tmp/x", "-O A=B"]},
    ),
    (
        "ignored-o-forms",
        ["-oem", "-odi", "-odb", "-oQ/var/spool/x", "-om", "-oo", "-oL9", "r@y.example"],
        {"ignored": ["-oem", "-odi", "-odb", "-oQ/var/spool/x", "-om", "-oo", "-oL9"]},
    ),
    ("ignored-flags", ["-m", "-n", "-U", "r@y.example"], {"ignored": ["-m", "-n", "-U"]}),
]


@pytest.mark.parametrize(("argv", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_parses(argv: list[str], expected: dict[str, Any]) -> None:
    opts = parse_options(argv)
    for key, value in expected.items():
        assert getattr(opts, key) == value, key


BAD = [
    ("unknown-letter", ["-x"], "-x"),
    ("unknown-in-group", ["-tx"], "-x (in -tx)"),
    ("bi-newaliases", ["-bi"], "-bi"),
    ("bd-daemon", ["-bd"], "-bd"),
    ("q-interval", ["-q15m"], "-q15m"),
    ("o-unknown", ["-oA/etc/aliases"], "-oA/etc/aliases"),
    ("C-config", ["-C", "/etc/mail/x.cf"], "-C"),
]


@pytest.mark.parametrize(("argv", "named"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_unknown_option_is_named(argv: list[str], named: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_options(argv)
    assert f"unknown option {named}" in str(info.value)
    assert info.value.exit_code == ExitCode.USAGE
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("letter", ["f", "F", "r", "B"])
def test_missing_value(letter: str) -> None:
    with pytest.raises(UsageError, match=f"-{letter} needs a value"):
        parse_options([f"-{letter}"])
