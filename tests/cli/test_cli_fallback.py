"""Fallback relays on the command line (issue 14): ``server add/edit --fallback``,
``--no-fallback``, loops refused, ``server show``/``remove``, ``send`` (text and
--json) when the primary is down, and ``test NAME --all`` -- as real subprocesses."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from conftest import Isolated, error_lines, run_cxsmtp, strip_timestamps
from servers import closed_port, entry_for, make_spool, message_ids, names
from typer.testing import CliRunner

from carerix_smtp.cli.app import app
from carerix_smtp.config.file import Config, Settings, load_config, save_config

runner = CliRunner()


def cli(*args: str) -> Any:
    """In-process (the runner): the configuration commands; ``send`` and ``test`` below
    run as real subprocesses."""
    return runner.invoke(app, list(args))


def lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.strip()]


def add(*args: str) -> Any:
    return cli("server", "add", *args)


def test_add_edit_show_and_clear(isolated: Isolated) -> None:
    assert add("a", "[127.0.0.1]:2525").exit_code == 0
    assert add("b", "[127.0.0.1]:2526").exit_code == 0
    done = add("c", "[127.0.0.1]:2527", "--fallback", "b", "--fallback", "a")
    assert done.exit_code == 0, done.output
    assert load_config(isolated.config).servers["c"].fallback == ["b", "a"]
    shown = cli("server", "show", "c", "--json")
    assert shown.exit_code == 0 and json.loads(shown.output)["fallback"] == ["b", "a"]
    text = cli("server", "show", "a")
    assert any(line.split() == ["fallback_for", "c"] for line in lines(text.output)), text.output
    edited = cli("server", "edit", "c", "--fallback", "a")
    assert edited.exit_code == 0 and load_config(isolated.config).servers["c"].fallback == ["a"]
    assert "changed server 'c'" in edited.output
    cleared = cli("server", "edit", "c", "--no-fallback")
    assert cleared.exit_code == 0 and load_config(isolated.config).servers["c"].fallback == []


def test_unknown_loop_and_empty_refused_with_one_line(isolated: Isolated) -> None:
    add("a", "[127.0.0.1]:2525")
    add("b", "[127.0.0.1]:2526", "--fallback", "a")
    before = isolated.config.read_bytes()
    cases = [
        (("server", "add", "c", "[127.0.0.1]:1", "--fallback", "zz"), 78, "'zz' is not defined"),
        (("server", "edit", "a", "--fallback", "b"), 78, "fallback loop a -> b -> a"),
        (("server", "edit", "a", "--fallback", "a"), 78, "fallback loop a -> a"),
        (("server", "edit", "a", "--fallback", ""), 64, "use --no-fallback"),
        (("server", "edit", "a", "--fallback", "b", "--no-fallback"), 64, "cannot be combined"),
    ]
    for argv, code, text in cases:
        result = cli(*argv)
        assert result.exit_code == code, (argv, result.output)
        (line,) = lines(result.output)
        assert line.startswith("cxsmtp: error: ") and text in line, line
    assert isolated.config.read_bytes() == before


def test_loop_in_the_file_is_refused_on_load(isolated: Isolated) -> None:
    isolated.config.parent.mkdir(parents=True, exist_ok=True)
    isolated.config.write_text(
        '[servers.a]\nhost = "[a.example]"\nfallback = ["b"]\n'
        '[servers.b]\nhost = "[b.example]"\nfallback = ["a"]\n'
    )
    result = run_cxsmtp("server", "list")  # a real process: exit code and stderr
    assert result.returncode == 78 and result.stdout == ""
    (line,) = lines(result.stderr)
    assert "fallback loop a -> b -> a" in line and str(isolated.config) in line


def test_remove_drops_it_from_fallback_lists_and_says_so(isolated: Isolated) -> None:
    add("a", "[127.0.0.1]:2525")
    add("b", "[127.0.0.1]:2526", "--fallback", "a")
    result = cli("server", "remove", "a")
    assert result.exit_code == 0, result.output
    assert "removed 'a' from the fallback relays of server 'b'" in result.output
    assert load_config(isolated.config).servers["b"].fallback == []


def save(isolated: Isolated, *entries: Any) -> None:
    config = Config(path=isolated.config, settings=Settings(default_server=entries[0].name))
    config.servers = {e.name: e for e in entries}
    save_config(config)


def test_send_through_fallback_text_and_json(
    isolated: Isolated, tmp_path: Path, sink_factory: Any
) -> None:
    relay = sink_factory()
    save(
        isolated,
        entry_for(closed_port(), "primary", fallback=["relay"]),
        entry_for(relay, "relay"),
    )
    spool = make_spool(tmp_path, 3)
    result = run_cxsmtp("send", str(spool))
    assert result.returncode == 0, result.stderr
    out = strip_timestamps(result.stdout)
    assert "cxsmtp: ok: sent 3" in out
    assert "server primary was skipped (" in out and "went through fallback relay (3 sent" in out
    assert any("went through fallback relay" in line for line in error_lines(result.stderr))
    assert len(message_ids(relay)) == 3 and len(names(spool / "sent")) == 3

    more = make_spool(tmp_path, 2)
    result = run_cxsmtp("send", str(more), "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    rows = {row["name"]: row for row in data["servers"]}
    assert rows["primary"]["fallback"] == "relay" and rows["primary"]["sent"] == 0
    assert "refused" in rows["primary"]["skipped_reason"]
    assert rows["relay"]["sent"] == 2 and rows["relay"]["used_for"] == ["primary"]


def test_send_without_usable_fallback_is_75(
    isolated: Isolated, tmp_path: Path, sink_factory: Any
) -> None:
    save(
        isolated,
        entry_for(closed_port(), "primary", fallback=["dead"]),
        entry_for(closed_port(), "dead"),
    )
    spool = make_spool(tmp_path, 2)
    result = run_cxsmtp("send", str(spool), "--json")
    assert result.returncode == 75, result.stderr
    data = json.loads(result.stdout)
    assert data["status"] == "unreachable" and len(data["errors"]) == 2
    assert len(names(spool)) == 2


def test_test_all_exit_code_is_the_first_failure(isolated: Isolated, sink_factory: Any) -> None:
    relay = sink_factory()
    save(
        isolated,
        entry_for(closed_port(), "primary", fallback=["relay"]),
        entry_for(relay, "relay"),
    )
    result = run_cxsmtp("test", "primary", "--all", "--timeout", "5")
    assert result.returncode == 69, result.stdout + result.stderr
    assert "primary (" in result.stdout and "relay (" in result.stdout
    last = result.stdout.strip().splitlines()[-1]
    assert last == "all: primary failed (exit 69), relay passed; mail would go through relay"

    result = run_cxsmtp("test", "primary", "--all", "--json")
    assert result.returncode == 69
    data = json.loads(result.stdout)
    assert (data["server"], data["usable"], data["passed"]) == ("primary", "relay", False)
    assert [s["server"] for s in data["servers"]] == ["primary", "relay"]
    assert [s["passed"] for s in data["servers"]] == [False, True]


def test_test_all_passes_when_every_server_passes(isolated: Isolated, sink_factory: Any) -> None:
    one, two = sink_factory(), sink_factory()
    save(isolated, entry_for(one, "primary", fallback=["relay"]), entry_for(two, "relay"))
    result = run_cxsmtp("test", "primary", "--all", "--json")
    assert result.returncode == 0, result.stdout
    data = json.loads(result.stdout)
    assert data["passed"] and data["usable"] == "primary" and len(data["servers"]) == 2
    # without --all only the entry itself is tested
    single = run_cxsmtp("test", "primary", "--json")
    assert single.returncode == 0 and json.loads(single.stdout)["server"] == "primary"
    assert "servers" not in json.loads(single.stdout)
