"""The control API over the daemon's Unix socket (HTTP/1.1 + JSON, docs/api.yaml)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import httpx

from .errors import DaemonNotRunning, ItproxyError, api_error


class ControlClient:
    """Calls the control API on ``<state_dir>/control.sock``."""

    def __init__(self, state_dir: Path, timeout: float = 30.0) -> None:
        self.state_dir = state_dir
        self.socket = state_dir / "control.sock"
        self._http = httpx.Client(
            transport=httpx.HTTPTransport(uds=str(self.socket)),
            base_url="http://itproxy",
            timeout=timeout,
            trust_env=False,
        )

    def close(self) -> None:
        self._http.close()

    def text(self, path: str) -> str:
        """The text answer to ``GET path`` (``/v1/metrics``)."""
        try:
            resp = self._http.get(path)
        except (httpx.ConnectError, FileNotFoundError) as e:
            raise DaemonNotRunning(f"no itproxy daemon answers on {self.socket} ({e})") from e
        if resp.status_code >= 400:
            raise ItproxyError(f"GET {path}: the daemon answered {resp.status_code}: {resp.text[:200]!r}")
        return resp.text

    def call(
        self,
        method: str,
        path: str,
        body: Optional[Mapping[str, Any]] = None,
        params: Optional[Mapping[str, Any]] = None,
        timeout: Optional[float] = None,
    ) -> Any:
        """The JSON answer to ``method path``, or the API's refusal raised as :class:`ApiError`."""
        kwargs: Dict[str, Any] = {}
        if body is not None:
            kwargs["json"] = dict(body)
        if params:
            kwargs["params"] = {k: v for k, v in params.items() if v is not None}
        if timeout is not None:
            kwargs["timeout"] = timeout
        try:
            resp = self._http.request(method, path, **kwargs)
        except (httpx.ConnectError, FileNotFoundError) as e:
            raise DaemonNotRunning(
                f"no itproxy daemon answers on {self.socket} ({e}); start one with "
                f"`itproxy up --state-dir {self.state_dir}` or itproxy.Env.up()"
            ) from e
        except httpx.TimeoutException as e:
            raise ItproxyError(f"the daemon did not answer {method} {path} in time ({e})") from e
        try:
            data = resp.json()
        except ValueError as e:
            raise ItproxyError(
                f"{method} {path}: the daemon answered {resp.status_code} with a body that is not JSON: "
                f"{resp.text[:200]!r}"
            ) from e
        if resp.status_code >= 400:
            err = data.get("error", {}) if isinstance(data, dict) else {}
            raise api_error(
                str(err.get("code", "unknown")),
                str(err.get("message", resp.text)),
                resp.status_code,
            )
        return data
