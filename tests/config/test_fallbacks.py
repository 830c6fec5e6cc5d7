"""config/fallbacks.py: fallback lists name defined servers, none twice, no loop --
checked on load, on add/edit; remove drops the removed server from the lists."""

from __future__ import annotations

from pathlib import Path

import pytest

from carerix_smtp.config.fallbacks import check_fallbacks, dependants, find_cycle
from carerix_smtp.config.file import load_config
from carerix_smtp.config.servers import add_server, describe_server, edit_server, remove_server
from carerix_smtp.errors import ConfigError


@pytest.mark.parametrize(
    ("lists", "cycle"),
    [
        pytest.param({"a": ["b"], "b": []}, [], id="chain"),
        pytest.param({"a": ["b", "c"], "b": ["c"], "c": []}, [], id="diamond"),
        pytest.param({"a": ["a"]}, ["a", "a"], id="self"),
        pytest.param({"a": ["b"], "b": ["a"]}, ["a", "b", "a"], id="two"),
        pytest.param({"a": ["b"], "b": ["c"], "c": ["b"]}, ["b", "c", "b"], id="tail-loop"),
        pytest.param(
            {"x": [], "a": ["c"], "c": ["d"], "d": ["a"]}, ["a", "c", "d", "a"], id="three"
        ),
    ],
)
def test_find_cycle(lists: dict[str, list[str]], cycle: list[str]) -> None:
    assert find_cycle(lists) == cycle


@pytest.mark.parametrize(
    ("lists", "message"),
    [
        pytest.param({"a": ["nope"]}, "server 'a': fallback 'nope' is not defined", id="unknown"),
        pytest.param({"a": ["b", "b"], "b": []}, "fallback 'b' is named twice", id="twice"),
        pytest.param({"a": ["b"], "b": ["a"]}, "fallback loop a -> b -> a", id="loop"),
        pytest.param({"a": ["a"]}, "fallback loop a -> a", id="self"),
    ],
)
def test_check_fallbacks_refuses(lists: dict[str, list[str]], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        check_fallbacks(lists, "c.toml")
    assert str(info.value).startswith("c.toml: ") and "\n" not in str(info.value)


def test_dependants() -> None:
    assert dependants({"a": ["c"], "b": ["c", "a"], "c": []}, "c") == ("a", "b")


def write(path: Path, servers: str) -> Path:
    path.write_text(f'[settings]\ndefault_server = "a"\n{servers}')
    return path


def test_load_keeps_the_order(tmp_path: Path) -> None:
    path = write(
        tmp_path / "c.toml",
        '[servers.a]\nhost = "[a.example]:587"\nfallback = ["c", "b"]\n'
        '[servers.b]\nhost = "[b.example]:587"\n[servers.c]\nhost = "[c.example]:587"\n',
    )
    assert load_config(path).servers["a"].fallback == ["c", "b"]


@pytest.mark.parametrize(
    ("servers", "message"),
    [
        pytest.param(
            '[servers.a]\nhost = "[a.example]"\nfallback = ["zz"]\n',
            "server 'a': fallback 'zz' is not defined",
            id="unknown",
        ),
        pytest.param(
            '[servers.a]\nhost = "[a.example]"\nfallback = ["b"]\n'
            '[servers.b]\nhost = "[b.example]"\nfallback = ["a"]\n',
            "fallback loop a -> b -> a",
            id="loop",
        ),
        pytest.param(
            '[servers.a]\nhost = "[a.example]"\nfallback = "b"\n',
            "fallback must be a list of server names",
            id="not-a-list",
        ),
    ],
)
def test_load_refuses(tmp_path: Path, servers: str, message: str) -> None:
    path = write(tmp_path / "c.toml", servers)
    with pytest.raises(ConfigError, match=message) as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_add_and_edit_refuse_unknown_and_loops_and_leave_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    config = load_config(path)
    add_server(config, "a", "[a.example]:587")
    add_server(config, "b", "[b.example]:587", fallback=["a"])
    before = path.read_bytes()
    with pytest.raises(ConfigError, match="fallback 'nope' is not defined"):
        add_server(load_config(path), "c", "[c.example]:587", fallback=["nope"])
    with pytest.raises(ConfigError, match="fallback loop a -> b -> a"):
        edit_server(load_config(path), "a", fallback=["b"])
    with pytest.raises(ConfigError, match="fallback loop b -> b"):
        edit_server(load_config(path), "b", fallback=["b"])
    assert path.read_bytes() == before
    edit_server(load_config(path), "b", fallback=[])
    assert load_config(path).servers["b"].fallback == []


def test_remove_drops_it_from_the_lists(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    config = load_config(path)
    add_server(config, "a", "[a.example]:587")
    add_server(config, "b", "[b.example]:587")
    add_server(config, "c", "[c.example]:587", fallback=["b", "a"])
    removal = remove_server(config, "b", {})
    assert removal.dropped_from_fallbacks == ("c",)
    assert load_config(path).servers["c"].fallback == ["a"]


def test_describe_shows_the_lists_both_ways(tmp_path: Path) -> None:
    config = load_config(tmp_path / "c.toml")
    add_server(config, "a", "[a.example]:587")
    add_server(config, "b", "[b.example]:587", fallback=["a"])
    assert describe_server(config, config.servers["b"], {})["fallback"] == ["a"]
    shown = describe_server(config, config.servers["a"], {})
    assert (shown["fallback"], shown["fallback_for"]) == ([], ["b"])
