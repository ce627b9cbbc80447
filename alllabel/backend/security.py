"""Who may reach the backend, and which secrets must never be written down.

* Without basic auth the backend is for loopback only: gunicorn refuses to start on another address
  (``refusal``) and the app answers non-loopback peers 403 (``loopback_peer``).
* Basic auth is both a user and a password or nothing (``check_credentials``).
* Secrets (keys, passwords, webhook secrets) are replaced in every log line (``RedactSecrets``).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import threading
from urllib.parse import urlsplit

CREDENTIALS = "BASIC_AUTH_USER and BASIC_AUTH_PASS"
# Environment variables whose values are secrets: never logged, never passed to another program.
SECRET_VARIABLES = ("OPENAI_API_KEY", "LABEL_STUDIO_API_KEY", "BASIC_AUTH_PASS")
URL_VARIABLES = ("LABEL_STUDIO_URL", "OPENAI_BASE_URL")
REDACTED = "[redacted]"
_MIN_SECRET = 6  # shorter values would blank ordinary words out of log lines

_extra: set[str] = set()
_extra_lock = threading.Lock()


def check_credentials(user: str | None, password: str | None) -> None:
    """A user without a password (or the reverse) is a mistake, not an empty password."""
    if bool(user) != bool(password):
        missing = "BASIC_AUTH_PASS" if user else "BASIC_AUTH_USER"
        raise ValueError(
            f"{missing} is not set: basic auth needs both {CREDENTIALS} (or neither, on loopback only)"
        )


def loopback_address(address: str) -> bool:
    """``address``: "host:port", "[v6]:port" or "unix:/path" (gunicorn's bind syntax)."""
    if address.startswith("unix:"):
        return True
    host = (
        address.rsplit(":", 1)[0] if address.startswith("[") or address.count(":") == 1 else address
    )
    host = host.strip("[]")
    return host in ("localhost", "::1") or host.startswith("127.")


def refusal(listen: str, user: str | None, password: str | None) -> str | None:
    """Why the backend must not start: it would listen beyond loopback without credentials."""
    if user and password:
        return None
    exposed = [a for a in listen.split(",") if a and not loopback_address(a)]
    if not exposed:
        return None
    return (
        f"refusing to listen on {', '.join(exposed)} without basic auth: anyone who reaches the port "
        f"could send events and read /status. Set {CREDENTIALS} (and the same user and password in "
        "Label Studio's model settings: Authentication method Basic Auth), or bind to 127.0.0.1"
    )


def loopback_peer(remote_addr: str | None) -> bool:
    """True for a client on this machine (a unix socket has no address)."""
    if not remote_addr:
        return True
    try:
        ip = ipaddress.ip_address(remote_addr)
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or bool(mapped and mapped.is_loopback)


def register_secret(value: str) -> None:
    """A secret made at run time (a webhook secret): redacted from the log from now on."""
    if len(value) >= _MIN_SECRET:
        with _extra_lock:
            _extra.add(value)


def secrets_now() -> list[str]:
    values = [os.environ.get(name) or "" for name in SECRET_VARIABLES]
    for name in URL_VARIABLES:  # http://user:password@host: the password is a secret too
        try:
            values.append(urlsplit(os.environ.get(name) or "").password or "")
        except ValueError:
            pass
    with _extra_lock:
        values += _extra
    # Longest first, so a secret that contains another is replaced whole.
    return sorted({v for v in values if len(v) >= _MIN_SECRET}, key=len, reverse=True)


def redact(text: str) -> str:
    for value in secrets_now():
        text = text.replace(value, REDACTED)
    return text


class RedactSecrets(logging.Filter):
    """Replaces secrets in the formatted message (arguments and exception text included)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


def install_log_redaction(logger: logging.Logger | None = None) -> None:
    """Put the filter on every handler of ``logger`` (the root logger by default), once."""
    for handler in (logger or logging.getLogger()).handlers:
        if not any(isinstance(f, RedactSecrets) for f in handler.filters):
            handler.addFilter(RedactSecrets())
