"""config/imports/plan.py: entry names, and applying a plan to a config: refusals
without --replace, dry runs that write nothing, the default, passwords to the store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from carerix_smtp.config.credentials import credentials_path, read_password
from carerix_smtp.config.file import Config, ServerEntry, load_config, save_config
from carerix_smtp.config.imports.plan import ImportPlan, PlannedServer, apply_plan, entry_name
from carerix_smtp.config.passwords import SERVICE
from carerix_smtp.errors import ConfigError, InputError


@pytest.mark.parametrize(
    ("text", "taken", "expected"),
    [
        pytest.param("smtp.example.com", set(), "smtp.example.com", id="host"),
        pytest.param("my work", set(), "my-work", id="space"),
        pytest.param("2001:db8::1", set(), "2001-db8-1", id="ipv6"),
        pytest.param("a", {"a"}, "a-2", id="taken"),
        pytest.param("a", {"a", "a-2"}, "a-3", id="taken-twice"),
        pytest.param("///", set(), "server", id="nothing-left"),
    ],
)
def test_entry_name(text: str, taken: set[str], expected: str) -> None:
    assert entry_name(text, taken) == expected


def planned(name: str, password: str | None = None, **fields: Any) -> PlannedServer:
    fields.setdefault("host", f"[{name}.example]:587")
    return PlannedServer(ServerEntry(name=name, **fields), f"account {name!r}", password)


def make_plan(*servers: PlannedServer, **kw: Any) -> ImportPlan:
    return ImportPlan(source="test-rc", servers=list(servers), **kw)


def keyring_data(isolated: Any) -> dict[str, str]:
    path = isolated.keyring_file
    return json.loads(path.read_text()) if path.exists() else {}


def test_apply_saves_entries_users_default_and_passwords(isolated: Any) -> None:
    config = Config(path=isolated.config)
    plan = make_plan(
        planned("a", "pw-a", username="ua"),
        planned("b"),
        users={"x@example.org": "b"},
        default="b",
    )
    result = apply_plan(config, plan)
    saved = load_config(isolated.config)
    assert set(saved.servers) == {"a", "b"} and saved.users == {"x@example.org": "b"}
    assert saved.settings.default_server == "b" and result.default == "b"
    assert keyring_data(isolated) == {f"{SERVICE}/a": "pw-a"}
    assert "pw-a" not in isolated.config.read_text()
    assert [o.password_store.store if o.password_store else None for o in result.servers] == [
        "keyring", None,
    ]  # fmt: skip


def test_dry_run_writes_nothing(isolated: Any) -> None:
    config = Config(path=isolated.config)
    result = apply_plan(config, make_plan(planned("a", "pw", username="u")), dry_run=True)
    assert result.dry_run and result.servers[0].name == "a"
    assert not isolated.config.exists() and keyring_data(isolated) == {}
    assert config.servers == {}


def test_existing_entry_is_refused_without_replace(isolated: Any) -> None:
    save_config(Config(path=isolated.config, servers={"a": ServerEntry("a", "old.example")}))
    before = isolated.config.read_bytes()
    plan = make_plan(planned("a", "pw", username="u"), planned("b"))
    with pytest.raises(ConfigError, match="already has server 'a'; add --replace"):
        apply_plan(load_config(isolated.config), plan)
    assert isolated.config.read_bytes() == before and keyring_data(isolated) == {}
    result = apply_plan(load_config(isolated.config), plan, replace=True)
    assert [o.replaced for o in result.servers] == [True, False]
    assert load_config(isolated.config).servers["a"].host == "[a.example]:587"


def test_a_sender_moved_to_another_server_is_refused_without_replace(isolated: Any) -> None:
    existing = Config(
        path=isolated.config,
        servers={"old": ServerEntry("old", "old.example")},
        users={"x@example.org": "old"},
    )
    save_config(existing)
    plan = make_plan(planned("new"), users={"x@example.org": "new"})
    with pytest.raises(ConfigError, match=r"x@example\.org already sends through 'old'"):
        apply_plan(load_config(isolated.config), plan)
    apply_plan(load_config(isolated.config), plan, replace=True)
    assert load_config(isolated.config).users == {"x@example.org": "new"}


def test_an_existing_default_stays(isolated: Any) -> None:
    servers = {n: ServerEntry(n, f"{n}.example") for n in ("p", "q")}
    config = Config(path=isolated.config, servers=servers)
    config.settings.default_server = "q"
    save_config(config)
    result = apply_plan(load_config(isolated.config), make_plan(planned("a"), default="a"))
    assert result.default is None and result.default_kept == "q"
    assert load_config(isolated.config).settings.default_server == "q"


def test_without_a_default_the_first_imported_becomes_it(isolated: Any) -> None:
    result = apply_plan(Config(path=isolated.config), make_plan(planned("a"), planned("b")))
    assert result.default == "a"
    assert load_config(isolated.config).settings.default_server == "a"


def test_password_store_file(isolated: Any) -> None:
    config = Config(path=isolated.config)
    result = apply_plan(config, make_plan(planned("a", "pw", username="u")), store="file")
    assert result.servers[0].password_store is not None
    assert result.servers[0].password_store.store == "file"
    assert read_password(credentials_path(isolated.config), "a") == "pw"
    assert keyring_data(isolated) == {}


def test_password_variable_collision_is_refused(isolated: Any) -> None:
    save_config(Config(path=isolated.config, servers={"a.b": ServerEntry("a.b", "x.example")}))
    with pytest.raises(ConfigError, match="same password variable CXSMTP_PASSWORD_A_B"):
        apply_plan(load_config(isolated.config), make_plan(planned("a_b")))


def test_fallback_must_name_something(isolated: Any) -> None:
    plan = make_plan(planned("a", fallback=["ghost"]))
    with pytest.raises(ConfigError, match="fallback 'ghost' is neither imported nor configured"):
        apply_plan(Config(path=isolated.config), plan)


def test_a_ca_file_that_is_not_pem_is_refused(isolated: Any, tmp_path: Path) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate\n")
    with pytest.raises(InputError, match="not a PEM certificate bundle"):
        apply_plan(Config(path=isolated.config), make_plan(planned("a", ca_file=str(bad))))
    assert not isolated.config.exists()


def test_an_empty_plan_is_refused(isolated: Any) -> None:
    with pytest.raises(ConfigError, match="test-rc: no server found to import"):
        apply_plan(Config(path=isolated.config), make_plan())
