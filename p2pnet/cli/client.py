# -*- test-case-name: tests.test_cli -*-
"""A blocking client of a node's control API, found through its data directory."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote

from p2pnet.control import CONTROL_FILE, control_file


class CliError(Exception):
    """An error the command reports as one line; ``status`` is its exit status."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


class NotFound(CliError):
    """The key is absent (exit status 1)."""


class ControlClient:
    """Requests to the node whose data directory is ``data_dir``."""

    def __init__(self, data_dir: str, timeout: float = 60.0) -> None:
        self.data_dir = data_dir
        self.timeout = timeout
        path = control_file(data_dir)
        try:
            with open(path, encoding="utf-8") as f:
                info = json.load(f)
            self.url = str(info["url"]).rstrip("/")
            self.token = str(info["token"])
        except FileNotFoundError:
            raise CliError(f"no node is running on {data_dir} (no {CONTROL_FILE}); start one "
                           f"with: twistd p2pnode --data-dir {data_dir}") from None
        except PermissionError:
            raise CliError(f"cannot read {path}: it belongs to the node's owner") from None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CliError(f"cannot read {path}: {e}") from None

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[bytes, str]:
        """The answer's body and content type; :class:`CliError` for any error."""
        req = urllib.request.Request(self.url + path, data=body, method=method)
        req.add_header("Authorization", f"Bearer {self.token}")
        if body is not None:
            req.add_header("Content-Type", "application/octet-stream")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as answer:
                return answer.read(), answer.headers.get("Content-Type", "")
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                message = str(json.loads(raw)["error"])
            except (ValueError, KeyError, TypeError):
                message = raw.decode("utf-8", "replace").strip() or e.reason
            if e.code == 404 and message == "not found":
                raise NotFound("not found") from None
            raise CliError(f"{message} (HTTP {e.code})") from None
        except urllib.error.URLError as e:
            raise CliError(f"the node of {self.data_dir} does not answer at {self.url} "
                           f"({e.reason}); is it running?") from None
        except TimeoutError:
            raise CliError(f"the node of {self.data_dir} did not answer within "
                           f"{self.timeout:g}s") from None
        except OSError as e:
            raise CliError(f"cannot talk to the node at {self.url}: {e}") from None

    def json(self, method: str, path: str, body: bytes | None = None) -> Any:
        data, _ = self.request(method, path, body)
        try:
            return json.loads(data)
        except ValueError:
            raise CliError(f"the node sent something that is not JSON: {data[:80]!r}") from None


def key_path(area: str, key: str) -> str:
    """``/area/KEY`` with the key percent-encoded."""
    if not key:
        raise CliError("a key cannot be empty", 2)
    return f"/{area}/{quote(os.fsencode(key), safe='')}"
