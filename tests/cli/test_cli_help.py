"""Help text, messages that read right, and shell completion (issue 11).

Every command's ``--help`` is walked from the real click tree; completion is checked
as a function, as the script ``--show-completion`` prints, and once through the
environment-variable protocol the shell uses (a real ``cxsmtp`` process)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import typer.main
from conftest import Isolated, run_cxsmtp
from typer.testing import CliRunner

from carerix_smtp.cli.app import app
from carerix_smtp.cli.completion import complete_server_name, server_names

runner = CliRunner()

# What must not show in any help: Typer's {name} and <str>/<list[str]>/<path>…
# metavars, a lowercase argument name as metavar, words from the code's inside.
FORBIDDEN = {
    "braces metavar": re.compile(r"\{[^}\s]*\}"),
    "python type": re.compile(r"<[a-z][a-z_\[\]|, ]*>"),
    "seed": re.compile(r"\bseed\b", re.IGNORECASE),
    "python keyword argument": re.compile(r"\b[a-z]+_[a-z_]+=(True|False|None)\b"),
}
ARGUMENT_ROW = re.compile(r"^  ([a-z][a-z_]*)(\.\.\.)?  ", re.MULTILINE)


def command_paths() -> list[tuple[str, ...]]:
    paths: list[tuple[str, ...]] = []

    def walk(command: Any, path: tuple[str, ...]) -> None:
        paths.append(path)
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, (*path, name))

    walk(typer.main.get_command(app), ())
    return paths


def test_the_walk_covers_the_tree() -> None:
    paths = command_paths()
    for path in [("send",), ("server", "use"), ("settings", "show"), ("sink",), ("doctor",)]:
        assert path in paths
    assert len(paths) >= 19  # cxsmtp, 9 commands and groups, 9 subcommands


@pytest.mark.parametrize("path", command_paths(), ids=lambda p: " ".join(p) or "cxsmtp")
def test_help_has_no_internal_metavars_or_words(path: tuple[str, ...]) -> None:
    result = runner.invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    text = result.output
    assert text.startswith(f"Usage: cxsmtp {' '.join(path)}".rstrip())
    for what, pattern in FORBIDDEN.items():
        assert not pattern.search(text), f"{what}: {pattern.search(text)!r} in\n{text}"
    arguments = (
        text.split("Arguments:", 1)[1].split("Options:", 1)[0] if "Arguments:" in text else ""
    )
    assert not ARGUMENT_ROW.search(arguments), f"lowercase argument name in\n{text}"


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (("server", "show"), "Usage: cxsmtp server show [OPTIONS] NAME"),
        (("send",), "-s, --server NAME"),
        (("server", "add"), "--set KEY=VALUE"),
        (("server", "use"), "--user ADDRESS"),
        (("enqueue",), "Usage: cxsmtp enqueue [OPTIONS] [SPOOL] [FILE]..."),
        (("settings", "set"), "Usage: cxsmtp settings set [OPTIONS] KEY VALUE"),
        ((), "--config PATH"),
    ],
)
def test_help_uses_readable_metavars(path: tuple[str, ...], expected: str) -> None:
    assert expected in runner.invoke(app, [*path, "--help"]).output


def test_settings_show_json_option_is_described() -> None:
    text = runner.invoke(app, ["settings", "show", "--help"]).output
    (line,) = [line for line in text.splitlines() if "--json" in line]
    assert line.split("--json", 1)[1].strip().startswith("Print one JSON object")


def test_server_use_says_who_sends_through_what() -> None:
    assert runner.invoke(app, ["server", "add", "xs4all", "[127.0.0.1]:2525"]).exit_code == 0
    assert runner.invoke(app, ["server", "add", "other", "[127.0.0.1]:2526"]).exit_code == 0
    result = runner.invoke(app, ["server", "use", "xs4all", "--user", "alice@example.com"])
    assert result.exit_code == 0
    assert result.stdout == "alice@example.com now sends through 'xs4all'\n"
    result = runner.invoke(app, ["server", "use", "other"])
    assert (result.exit_code, result.stdout) == (0, "'other' is now the default server\n")


def test_settings_show_prints_users_as_a_table() -> None:
    empty = runner.invoke(app, ["settings", "show"])
    assert empty.exit_code == 0
    assert "users: none (every sender uses the default server)" in empty.stdout
    runner.invoke(app, ["server", "add", "xs4all", "[127.0.0.1]:2525"])
    runner.invoke(app, ["server", "add", "other", "[127.0.0.1]:2526"])
    runner.invoke(app, ["server", "use", "xs4all", "--user", "alice@example.com"])
    runner.invoke(app, ["server", "use", "other", "--user", "bo@example.com"])
    result = runner.invoke(app, ["settings", "show"])
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    table = lines[lines.index("users:") + 1 :]
    assert [line.split() for line in table] == [
        ["sender", "server"],
        ["alice@example.com", "xs4all"],
        ["bo@example.com", "other"],
    ]
    assert "{" not in result.stdout and "': '" not in result.stdout
    data = json.loads(runner.invoke(app, ["settings", "show", "--json"]).stdout)
    assert data["users"] == {"alice@example.com": "xs4all", "bo@example.com": "other"}


# --- completion ---------------------------------------------------------------------


def write_servers(path: Path, *names: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f'[servers.{n}]\nhost = "[127.0.0.1]:25"\n' for n in names))


def test_completion_function_reads_the_configured_names(isolated: Isolated) -> None:
    write_servers(isolated.config, "xs4all", "other", "xmail")
    assert complete_server_name(None, "") == ["other", "xmail", "xs4all"]
    assert complete_server_name(None, "x") == ["xmail", "xs4all"]
    assert complete_server_name(None, "zz") == []


def test_completion_function_never_fails(isolated: Isolated, tmp_path: Path) -> None:
    assert complete_server_name(None, "") == []  # no config yet
    isolated.config.parent.mkdir(parents=True)
    isolated.config.write_text("[servers\n")
    assert complete_server_name(None, "") == []
    isolated.config.write_text("servers = 3\n")
    assert server_names(isolated.config) == []
    assert server_names(tmp_path) == []  # a directory


def test_completion_uses_config_given_on_the_command_line(tmp_path: Path) -> None:
    other = tmp_path / "other.toml"
    write_servers(other, "elsewhere")
    root = typer.main.get_command(app)
    with root.make_context("cxsmtp", ["--config", str(other)], resilient_parsing=True) as ctx:
        assert complete_server_name(ctx, "") == ["elsewhere"]


def complete(words: str, env: dict[str, str] | None = None) -> list[str]:
    """What bash gets for the last word of ``words`` (a real cxsmtp process)."""
    cword = len(words.split()) - (0 if words.endswith(" ") else 1)
    result = run_cxsmtp(
        env={"_CXSMTP_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(cword)}
        | (env or {})
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return result.stdout.split()


def test_bash_completes_server_names_through_the_env_protocol(
    isolated: Isolated, tmp_path: Path
) -> None:
    write_servers(isolated.config, "xs4all", "other")
    assert complete("cxsmtp server show ") == ["other", "xs4all"]
    assert complete("cxsmtp send /var/spool/x --server x") == ["xs4all"]
    assert complete("cxsmtp test o") == ["other"]
    elsewhere = tmp_path / "elsewhere.toml"
    write_servers(elsewhere, "third")
    assert complete(f"cxsmtp server use --config {elsewhere} ") == ["third"]
    assert "server" in complete("cxsmtp ser")


@pytest.mark.parametrize(
    "path",
    [
        ("server", "show"),
        ("server", "edit"),
        ("server", "remove"),
        ("server", "password"),
        ("server", "use"),
        ("test",),
    ],
    ids=" ".join,
)
def test_name_arguments_complete_server_names(path: tuple[str, ...], isolated: Isolated) -> None:
    write_servers(isolated.config, "xs4all")
    command: Any = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]
    (name_param,) = [p for p in command.params if p.name == "name"]
    with command.make_context(path[-1], ["x"], resilient_parsing=True) as ctx:
        assert [item.value for item in name_param.shell_complete(ctx, "x")] == ["xs4all"]


SHELL_ENV = {"_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"}  # name the shell instead


def test_show_completion_prints_the_bash_script() -> None:
    result = run_cxsmtp("--show-completion", "bash", env=SHELL_ENV)
    assert result.returncode == 0, result.stderr
    assert "_CXSMTP_COMPLETE=complete_bash" in result.stdout
    assert "complete -o default -F _cxsmtp_completion cxsmtp" in result.stdout


def test_install_completion_writes_into_home(isolated: Isolated) -> None:
    home = Path(os.environ["HOME"])
    result = run_cxsmtp("--install-completion", "bash", env=SHELL_ENV)
    assert result.returncode == 0, result.stderr
    assert "bash completion installed in" in result.stdout
    script = home / ".bash_completions" / "cxsmtp.sh"
    assert "_CXSMTP_COMPLETE=complete_bash" in script.read_text()
    assert str(script) in (home / ".bashrc").read_text()
