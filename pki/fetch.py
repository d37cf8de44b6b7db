"""Outbound HTTP for the PKI: SCEP requests, CRL downloads, OCSP queries.

The one module that opens client sockets. Every call has a timeout and a response-size cap, so a slow or
hostile server (or a CRL distribution point that serves a DVD image) cannot hang or exhaust the router; any
failure is one :class:`FetchError` naming the URL. Only ``http`` and ``https`` URLs are fetched.
"""

from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field

from cryptography import x509

from pki.errors import PkiError

__all__ = [
    "DEFAULT_TIMEOUT",
    "MAX_CRL_SIZE",
    "MAX_RESPONSE_SIZE",
    "FetchError",
    "HttpResponse",
    "fetch_crl",
    "http_get",
    "http_post",
    "http_request",
]

#: Seconds for connect and for each read.
DEFAULT_TIMEOUT = 10.0
#: Largest response body accepted by default (SCEP replies and OCSP responses are a few KiB).
MAX_RESPONSE_SIZE = 1024 * 1024
#: Largest CRL accepted (a CA with ~100k revocations produces a few MiB).
MAX_CRL_SIZE = 16 * 1024 * 1024

_USER_AGENT = "espresso-pki/0.1"


class FetchError(PkiError):
    """An HTTP retrieval failed: unreachable, timed out, non-2xx status, too large, or not parseable."""

    def __init__(self, url: str, reason: str, status: int | None = None) -> None:
        self.url = url
        self.reason = reason
        self.status = status
        super().__init__(f"{url}: {reason}")


@dataclass(frozen=True)
class HttpResponse:
    status: int
    content_type: str
    body: bytes = field(repr=False)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Redirects are refused: the URL is configured, and following one could leave the scheme or host set."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        raise urllib.error.HTTPError(req.full_url, code, f"redirect to {newurl} refused", headers, fp)


_OPENER = urllib.request.build_opener(_NoRedirect())


def _check_url(url: str) -> None:
    if not isinstance(url, str):
        raise TypeError("url must be a string")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FetchError(url, "only http:// and https:// URLs with a host are supported")


def http_request(
    method: str,
    url: str,
    body: bytes | None = None,
    content_type: str | None = None,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    max_size: int = MAX_RESPONSE_SIZE,
    accept: str | None = None,
) -> HttpResponse:
    """One request; a 2xx answer with a body no larger than ``max_size``, or :class:`FetchError`."""
    _check_url(url)
    if timeout <= 0 or max_size <= 0:
        raise ValueError("timeout and max_size must be positive")
    headers = {"User-Agent": _USER_AGENT}
    if content_type:
        headers["Content-Type"] = content_type
    if accept:
        headers["Accept"] = accept
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with _OPENER.open(req, timeout=timeout) as resp:
            length = resp.headers.get("Content-Length")
            if length is not None and length.isdigit() and int(length) > max_size:
                raise FetchError(url, f"response of {int(length)} bytes exceeds the {max_size}-byte limit")
            data = resp.read(max_size + 1)
            if len(data) > max_size:
                raise FetchError(url, f"response exceeds the {max_size}-byte limit")
            return HttpResponse(resp.status, resp.headers.get_content_type(), data)
    except FetchError:
        raise
    except urllib.error.HTTPError as exc:
        detail = ""
        try:
            detail = exc.read(200).decode("utf-8", "replace").strip()
        except Exception:  # noqa: BLE001 - the body of an error is only decoration
            pass
        raise FetchError(
            url, f"HTTP {exc.code} {exc.reason}" + (f": {detail}" if detail else ""), status=exc.code
        ) from None
    except urllib.error.URLError as exc:
        raise FetchError(url, f"unreachable: {exc.reason}") from None
    except TimeoutError:
        raise FetchError(url, f"timed out after {timeout:g} s") from None
    except (OSError, ValueError) as exc:  # connection reset, http.client.InvalidURL, IncompleteRead ...
        raise FetchError(url, f"transfer failed: {exc}") from None


def http_get(url: str, *, timeout: float = DEFAULT_TIMEOUT, max_size: int = MAX_RESPONSE_SIZE) -> bytes:
    """GET ``url``; the body."""
    return http_request("GET", url, timeout=timeout, max_size=max_size).body


def http_post(
    url: str,
    body: bytes,
    content_type: str,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    max_size: int = MAX_RESPONSE_SIZE,
) -> bytes:
    """POST ``body`` to ``url``; the response body."""
    return http_request("POST", url, body, content_type, timeout=timeout, max_size=max_size).body


def fetch_crl(
    url: str, *, timeout: float = DEFAULT_TIMEOUT, max_size: int = MAX_CRL_SIZE
) -> x509.CertificateRevocationList:
    """Download a CRL (DER, as RFC 5280 distribution points serve it, or PEM); the caller verifies it."""
    data = http_get(url, timeout=timeout, max_size=max_size)
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_crl(data)
        return x509.load_der_x509_crl(data)
    except ValueError as exc:
        raise FetchError(url, f"not a CRL: {exc}") from None
