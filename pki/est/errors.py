"""EST errors, as the router sees them: a refusal the server stated (an HTTP status) or no answer at all."""

from __future__ import annotations

from pki.errors import PkiError

__all__ = ["EstError", "EstPendingTimeout", "EstRefused"]


class EstError(PkiError):
    """Anything that went wrong in an EST exchange (TLS, transport, an answer that is not EST)."""


class EstRefused(EstError):
    """The EST server answered with an HTTP error status (401 wrong password, 403, 400 bad request...)."""

    def __init__(self, url: str, status: int, text: str) -> None:
        self.status = status
        self.text = text
        super().__init__(f"{url}: HTTP {status}" + (f": {text}" if text else ""))


class EstPendingTimeout(EstError):
    """The server still answered 202 (waiting for an operator) after the configured number of polls."""

    def __init__(self, url: str, polls: int) -> None:
        self.polls = polls
        super().__init__(f"{url}: request still pending approval after {polls} polls; approve it on the CA "
                         "('ca pending', 'ca approve') and enroll again")
