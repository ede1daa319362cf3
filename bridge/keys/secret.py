"""Reading a passphrase or PIN from its configured source."""

from __future__ import annotations

import os

from bridge.keys.errors import SecretUnavailable
from bridge.keys.files import read_private_file
from bridge.keys.reference import SecretSource


def read_secret(source: SecretSource, what: str) -> bytes:
    """The secret from ``source`` without its trailing newline; never empty.

    SECURITY: a secret file must be 0600 (see :func:`read_private_file`); the value is never
    logged or put in an error message, only where it came from.
    """
    if source.file is not None:
        value = read_private_file(source.file, f"{what} file").rstrip(b"\r\n")
    else:
        env = os.environ.get(source.env)
        if env is None:
            raise SecretUnavailable(f"{what}: environment variable {source.env} is not set")
        value = env.encode()
    if not value:
        raise SecretUnavailable(f"{what} from {source.describe()} is empty")
    return value
