"""Keyring backends for tests (swapping the backend is allowed; the network is not faked).

``FileKeyring`` keeps passwords in a JSON file named by ``CXSMTP_TEST_KEYRING``
so that subprocesses of the installed ``cxsmtp`` share them with the test.
``HangingKeyring`` never answers, like a locked Secret Service waiting in unlock().
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from keyring.backend import KeyringBackend
from keyring.errors import PasswordDeleteError


class FileKeyring(KeyringBackend):
    priority = 1  # type: ignore[assignment]

    @property
    def path(self) -> Path:
        return Path(os.environ["CXSMTP_TEST_KEYRING"])

    def _load(self) -> dict[str, str]:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}

    def get_password(self, service: str, username: str) -> str | None:
        return self._load().get(f"{service}/{username}")

    def set_password(self, service: str, username: str, password: str) -> None:
        data = self._load()
        data[f"{service}/{username}"] = password
        self.path.write_text(json.dumps(data))

    def delete_password(self, service: str, username: str) -> None:
        data = self._load()
        if data.pop(f"{service}/{username}", None) is None:
            raise PasswordDeleteError("not found")
        self.path.write_text(json.dumps(data))


class HangingKeyring(KeyringBackend):
    priority = 1  # type: ignore[assignment]
    _never = threading.Event()

    def get_password(self, service: str, username: str) -> str | None:
        self._never.wait()
        return None

    def set_password(self, service: str, username: str, password: str) -> None:
        self._never.wait()

    def delete_password(self, service: str, username: str) -> None:
        self._never.wait()
