"""Keeping credentials out of logs and error messages.

Credentials reach cfhdask in fsspec ``storage_options`` (``key``, ``secret``,
``token``, ``password``, ``client_kwargs.aws_secret_access_key``...) and in
the environment (``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``,
``AZURE_STORAGE_KEY``...).  :func:`register` remembers their values (the URL
resolver :func:`cfhdask.io.urls.url_to_fs` and the CLI's
``--storage-options`` parser call it; the environment is read when this
module is imported, and again at each call), after which

* every :class:`cfhdask.errors.CfhdaskError` message has them replaced by
  ``***`` (:func:`redact`), and
* every log record of the process, from any library (botocore's debug log
  prints request headers), is redacted before any handler sees it (a log
  record factory, installed once).

Values shorter than :data:`MIN_LENGTH` characters are not treated as secrets
(masking ``"x"`` would garble every line).  Nothing here writes anything: the
outputs (store attributes, ``stats.json``, the report) never receive storage
options in the first place; ``tests/cluster/test_cluster_security.py`` greps
them for a planted secret.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["MIN_LENGTH", "SECRET_ENV", "SECRET_OPTION", "redact", "register", "secrets"]

#: Shortest value treated as a secret.
MIN_LENGTH = 8
#: Names of storage options (at any depth) whose values are secrets.
SECRET_OPTION = re.compile(r"^(key|token)$|secret|password|passwd|credential|session_token|"
                           r"access_key|account_key|sas_token|connection_string|signature",
                           re.IGNORECASE)
#: Names of environment variables whose values are secrets.
SECRET_ENV = re.compile(r"SECRET|TOKEN|PASSWORD|PASSWD|ACCESS_KEY|ACCOUNT_KEY|STORAGE_KEY|"
                        r"CONNECTION_STRING|CREDENTIAL", re.IGNORECASE)
MASK = "***"

_lock = threading.Lock()
_secrets: set[str] = set()
_pattern: re.Pattern | None = None
_installed = False


def _values(options: Any, secret: bool = False) -> Iterable[str]:
    if isinstance(options, Mapping):
        for k, v in options.items():
            yield from _values(v, secret or bool(SECRET_OPTION.search(str(k))))
    elif isinstance(options, list | tuple):
        for v in options:
            yield from _values(v, secret)
    elif secret and isinstance(options, str | bytes):
        yield options.decode(errors="replace") if isinstance(options, bytes) else options


def register(options: Mapping[str, Any] | None = None, *, environment: bool = True) -> None:
    """Remember the secret values of ``options`` (and of the environment) for redaction."""
    found = {v for v in _values(options or {}) if len(v) >= MIN_LENGTH}
    if environment:
        found |= {v for k, v in os.environ.items()
                  if SECRET_ENV.search(k) and len(v) >= MIN_LENGTH}
    global _pattern
    with _lock:
        if not found <= _secrets:
            _secrets.update(found)
            ordered = sorted(_secrets, key=len, reverse=True)  # longest first
            _pattern = re.compile("|".join(map(re.escape, ordered)))
        _install()


def secrets() -> frozenset[str]:
    """The values registered so far."""
    return frozenset(_secrets)


def redact(text: Any) -> str:
    """``text`` with every registered secret replaced by ``***``."""
    text = str(text)
    pattern = _pattern
    return pattern.sub(MASK, text) if pattern is not None and text else text


def _install() -> None:
    """Redact every log record at its creation (once per process)."""
    global _installed
    if _installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args, **kwargs) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        if _pattern is None:
            return record
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: leave it to the handler
            return record
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return record

    logging.setLogRecordFactory(factory)
    _installed = True


register()  # the environment's credentials, from the moment cfhdask is imported
