"""Plain HTTP requests for the tests: every answer comes back (errors too), redirects are not followed."""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request

__all__ = ["HTTP_TIMEOUT", "http_request"]

#: Seconds one request may take.
HTTP_TIMEOUT = 10.0


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # the tests look at the redirect itself


def http_request(
    url: str,
    headers: dict | None = None,
    *,
    method: str = "GET",
    data: bytes | None = None,
    context: ssl.SSLContext | None = None,
    timeout: float = HTTP_TIMEOUT,
) -> tuple[int, dict, bytes]:
    """Send one request; (status, headers, body), whatever the status."""
    opener = urllib.request.build_opener(_NoRedirect, urllib.request.HTTPSHandler(context=context))
    request = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with opener.open(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, dict(error.headers), error.read()
