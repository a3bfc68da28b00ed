"""Secrets kept out of every message a run records, whatever route they take.

:func:`cat_framework.rundir.redact` masks a config's secrets by key name, but a secret reaches
messages by other routes too: a server that echoes the key in its error body (``Incorrect API
key provided: sk-...``), a URL that carries credentials (``http://user:PASS@host/v1``) named in
an error. So backends :func:`register_secret` the keys they hold, the runner registers every
value the config's redaction masks, and :func:`scrub` masks them (and words holding a fragment
of one: a partial echo), key-shaped words and URL credentials in the failure ``status.json``
records, in every log line and in the CLI's error message.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable

REDACTED = "**********"
#: shorter values are never registered: masking ``EMPTY`` or ``k`` everywhere garbles messages
MIN_SECRET = 8
#: a word holding this many consecutive characters of a secret is an echo of it
FRAGMENT = 8
#: ``scheme://userinfo@``: the userinfo (user, password or token) is masked whole
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)[^/@\s\"'<>?#]+@")
#: words shaped like well-known API keys, also when a server echoes them partly masked
_KEY_SHAPED = re.compile(
    r"\b(?:sk-[A-Za-z0-9_\-*]{16,}|hf_[A-Za-z0-9]{30,}|gh[pousr]_[A-Za-z0-9]{30,}"
    r"|xox[abpr]-[A-Za-z0-9\-]{10,})"
)
_BEARER = re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=\-]{8,}")
_WORD = re.compile(r"\S+")

_secrets: set[str] = set()
_lock = threading.Lock()


def register_secret(value: str | None) -> None:
    """Mask ``value`` in every message scrubbed from now on in this process (values shorter
    than :data:`MIN_SECRET` are ignored: no real key is that short)."""
    if isinstance(value, str) and len(value.strip("* \t\n")) >= MIN_SECRET:  # not a mask
        with _lock:
            _secrets.add(value.strip())


def mask_url(text: str) -> str:
    """``text`` with the credentials of every URL in it masked (``http://**********@host``)."""
    return _USERINFO.sub(lambda m: f"{m['scheme']}{REDACTED}@", text)


def _echoes(word: str, fragments: set[str]) -> bool:
    return any(word[i : i + FRAGMENT] in fragments for i in range(len(word) - FRAGMENT + 1))


def scrub(text: str, secrets: Iterable[str | None] = ()) -> str:
    """``text`` with every registered secret and every one of ``secrets`` masked, together with
    words that echo part of one, key-shaped words, bearer tokens and URL credentials."""
    with _lock:
        known = {*_secrets}
    known |= {s.strip() for s in secrets if isinstance(s, str) and len(s.strip("* ")) >= MIN_SECRET}
    for secret in sorted(known, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    text = mask_url(text)
    text = _KEY_SHAPED.sub(REDACTED, text)
    text = _BEARER.sub(lambda m: f"{m[1]} {REDACTED}", text)
    fragments = {s[i : i + FRAGMENT] for s in known for i in range(len(s) - FRAGMENT + 1)}
    if not fragments:
        return text
    return _WORD.sub(lambda m: REDACTED if _echoes(m[0], fragments) else m[0], text)


__all__ = ["MIN_SECRET", "REDACTED", "mask_url", "register_secret", "scrub"]
