"""spool/status_cache.py: a status pass reuses what the last one saw of a directory
only while that directory is unchanged, and always says what a fresh listing says."""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from servers import eml, make_spool

from carerix_smtp.config.file import Config
from carerix_smtp.send.status import collect_status, status_cache_path
from carerix_smtp.spool import held, status_cache
from carerix_smtp.spool.spool import Spool


@pytest.fixture
def small_spools_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every spool gets a cache file (not only those of MIN_ENTRIES messages), and a
    directory counts as settled at once (the 2 s "racy" margin would need a wait)."""
    monkeypatch.setattr(status_cache, "MIN_ENTRIES", 1)
    monkeypatch.setattr(status_cache, "RACY_NS", 0)


def _spool(tmp_path: Path) -> Path:
    spool = make_spool(tmp_path, 6)
    Spool(spool).prepare()
    future = time.time() + 3600
    for name, sub in (("d1.eml", "deferred"), ("f1.eml", "failed"), ("h1.eml", "held")):
        (spool / sub / name).write_bytes(eml(7))
        (spool / sub / (name + ".json")).write_text("{}")
    os.utime(spool / "deferred" / "d1.eml", (future, future))
    (spool / "sent" / "s1.eml").write_bytes(eml(8))
    return spool


def _seen(spool: Path, cache: Path | None) -> dict[str, Any]:
    status = Spool(spool).status(cache=cache)
    order = [(c.kind, c.name, c.size, c.mtime) for c in status.queue.candidates()]
    return {**status.to_json(), "order": order, "due_now": status.due_now}


def test_a_cached_pass_says_what_a_fresh_listing_says(
    tmp_path: Path, small_spools_cached: None, listed: Counter[str]
) -> None:
    spool, cache = _spool(tmp_path), tmp_path / "state" / "cache"
    fresh = _seen(spool, None)
    assert _seen(spool, cache) == fresh and cache.exists()
    kept = (".", "deferred", "held", "failed")
    before = [listed[rel] for rel in kept]
    written = cache.stat()
    assert _seen(spool, cache) == fresh
    assert [listed[rel] for rel in kept] == before  # not listed again
    assert cache.stat().st_ino == written.st_ino  # nor the file written again
    assert oct(cache.stat().st_mode & 0o777) == "0o600"


def test_an_unchanged_directory_is_not_listed_again(
    tmp_path: Path, small_spools_cached: None
) -> None:
    """Proof that the columns are reused: a file changed in place (which producers must
    not do: they rename) is not seen until its directory changes."""
    spool, cache = _spool(tmp_path), tmp_path / "cache"
    before = _seen(spool, cache)
    with open(spool / "m00000.eml", "ab") as handle:
        handle.write(b"x" * 1000)
    assert _seen(spool, cache) == before
    (spool / "new.eml").write_bytes(eml(9))  # a name added: the queue is listed again
    after = _seen(spool, cache)
    assert after == _seen(spool, None)
    assert after["queued"]["bytes"] == before["queued"]["bytes"] + 1000 + len(eml(9))


def test_every_change_of_a_name_is_seen(tmp_path: Path, small_spools_cached: None) -> None:
    spool, cache = _spool(tmp_path), tmp_path / "cache"
    _seen(spool, cache)
    (spool / "m00001.eml").unlink()
    os.rename(spool / "held" / "h1.eml", spool / "sent" / "h1.eml")
    (spool / "failed" / "f2.eml").write_bytes(eml(10))
    assert _seen(spool, cache) == _seen(spool, None)


@pytest.mark.parametrize("how", ["retry", "flush"])
def test_a_next_attempt_time_changed_in_place_is_seen(
    tmp_path: Path, small_spools_cached: None, how: str
) -> None:
    """`cxsmtp retry` and `queue flush` set a deferred message's mtime in place: they
    touch deferred/, so a cached pass sees it due now."""
    spool, cache = _spool(tmp_path), tmp_path / "cache"
    assert _seen(spool, cache)["due_now"] == 0
    if how == "retry":
        Spool(spool).retry(["d1.eml"])
    else:
        assert held.make_due(Spool(spool).layout, time.time()) == 1
    seen = _seen(spool, cache)
    assert seen["due_now"] == 1 and seen == _seen(spool, None)


def test_a_directory_changed_just_before_the_pass_is_not_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two changes in one clock tick leave a directory's times as they were: one that
    changed less than RACY_NS before the listing is listed again next time."""
    monkeypatch.setattr(status_cache, "MIN_ENTRIES", 1)
    spool, cache = _spool(tmp_path), tmp_path / "cache"  # every directory just made
    _seen(spool, cache)
    with open(spool / "m00000.eml", "ab") as handle:
        handle.write(b"x" * 1000)
    assert _seen(spool, cache) == _seen(spool, None)


@pytest.mark.parametrize(
    "damage",
    [b"", b"garbage", b"cxsmtp-status-cache 1\n{}\n", "truncated", "bit flip"],
)
def test_a_damaged_cache_is_ignored_and_written_again(
    tmp_path: Path, small_spools_cached: None, damage: bytes | str
) -> None:
    spool, cache = _spool(tmp_path), tmp_path / "cache"
    fresh = _seen(spool, cache)
    data = cache.read_bytes()
    if damage == "truncated":
        data = data[:-7]
    elif damage == "bit flip":
        data = data[:-3] + bytes([data[-3] ^ 1]) + data[-2:]
    else:
        assert isinstance(damage, bytes)
        data = damage
    cache.write_bytes(data)
    assert _seen(spool, cache) == fresh
    assert cache.read_bytes().startswith(status_cache.MAGIC) and cache.read_bytes() != data


def test_small_spools_get_no_cache_file(tmp_path: Path) -> None:
    spool, cache = _spool(tmp_path), tmp_path / "cache"
    _seen(spool, cache)
    assert not cache.exists() and status_cache.MIN_ENTRIES == 5_000


def test_collect_status_keeps_its_cache_in_the_state_dir(
    tmp_path: Path, small_spools_cached: None, listed: Counter[str]
) -> None:
    """``cxsmtp status`` keeps the file in the user's state directory, never in the
    spool (status only reads the spool)."""
    spool, state = _spool(tmp_path), tmp_path / "state"
    spool.chmod(0o555)  # as a spool this user may only read (root ignores it: see below)

    def config() -> Config:
        return Config(path=tmp_path / "config.toml")

    first = collect_status(spool, config, state).to_json()
    cache = status_cache_path(state, spool)
    assert cache.parent == state / "status-cache" and cache.exists()
    before = listed["."]
    assert collect_status(spool, config, state).to_json() == first
    assert listed["."] == before  # the queue was not listed again
    assert not [p for p in spool.rglob("*") if "cache" in p.name]
    spool.chmod(0o755)
