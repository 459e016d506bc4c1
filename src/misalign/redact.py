"""Keeping secrets out of files, logs and reports: URLs lose credentials, configs lose secret-named keys."""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

SECRET_RE = re.compile(r"key|token|secret|password|passwd|credential|authorization", re.I)
"""Config keys (and command-line options) whose values are never written anywhere."""


def redact_url(text: str) -> str:
    """A URL without ``user:password@`` and without its query string (either may carry a key); other text as is."""
    if "://" not in text:
        return text
    head, sep, tail = text.partition("=")
    if sep and "://" not in head and "://" in tail:  # MODEL=URL, or --option=URL
        return f"{head}={redact_url(tail)}"
    try:
        parts = urlsplit(text)
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
    except ValueError:
        return "[redacted URL]"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def scrub(value: Any) -> Any:
    """``value`` without mapping keys that name secrets, and with credentials stripped from URLs."""
    if isinstance(value, dict):
        return {k: scrub(v) for k, v in value.items() if not SECRET_RE.search(str(k))}
    if isinstance(value, list | tuple):
        return [scrub(v) for v in value]
    if isinstance(value, str):
        return redact_url(value)
    return value


def redact_command(command: Any) -> str:
    """A command line as a shell string, values of secret-looking options and URL credentials hidden."""
    if isinstance(command, str):
        try:
            args = shlex.split(command)
        except ValueError:
            args = [command]
    elif isinstance(command, Iterable):
        args = [str(a) for a in command]
    else:
        return ""
    return shlex.join(redact_args(args))


def redact_args(args: list[str]) -> list[str]:
    """Command-line arguments with the values of secret-looking options and URL credentials hidden (an option
    ending in ``-env``, such as ``--api-key-env``, names a variable, not a secret, and is kept)."""
    out, hide = [], False
    for a in args:
        if hide:
            out.append("REDACTED")
            hide = False
        elif a.startswith("-") and SECRET_RE.search(name := a.split("=", 1)[0]) and not name.endswith("-env"):
            if "=" in a:
                out.append(a.split("=", 1)[0] + "=REDACTED")
            else:
                out.append(a)
                hide = True
        else:
            out.append(redact_url(a))
    return out
