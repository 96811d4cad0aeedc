"""Errors a user can cause; the CLI turns each into one line and an exit code scripts can trust."""

from __future__ import annotations

EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_USAGE = 2


class VidcacheError(Exception):
    """A problem with what the user asked for; ``str(err)`` is the one line shown."""

    exit_code = EXIT_USAGE


class UsageError(VidcacheError):
    exit_code = EXIT_USAGE
