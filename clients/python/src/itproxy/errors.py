"""The exceptions the client raises: one base class, and the control API's refusals with their code."""

from __future__ import annotations


class ItproxyError(Exception):
    """Anything the itproxy client could not do; the message says what and what to do."""


class DaemonNotRunning(ItproxyError):
    """No daemon answers on the state directory's control socket."""


class CommandFailed(ItproxyError):
    """An ``itproxy`` command (``up``, ``down``) exited non-zero; ``output`` is what it printed."""

    def __init__(self, message: str, output: str) -> None:
        super().__init__(f"{message}\n{output}".rstrip())
        self.output = output


class ApiError(ItproxyError):
    """The control API refused a request; nothing changed.

    ``code`` is the stable code of docs/api.yaml (``invalid_target``, ``no_app``, ...),
    ``status`` the HTTP status it came with.
    """

    def __init__(self, code: str, message: str, status: int) -> None:
        super().__init__(f"{message} ({code})")
        self.code = code
        self.message = message
        self.status = status


class NotReady(ApiError):
    """An app did not start or become ready in time (code ``not_ready``); the message has its last log lines."""


def api_error(code: str, message: str, status: int) -> ApiError:
    """The exception for an API error body."""
    cls = NotReady if code == "not_ready" else ApiError
    return cls(code, message, status)
