"""Errors a user can cause; the CLI turns each into one line and an exit code scripts can trust."""

from __future__ import annotations

EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_USAGE = 2
EXIT_RANK_LOST = 3  # under torchrun: a rank failed inside a video the others could not finish


def one_line(err: BaseException) -> str:
    """An unexpected error as users see it without --debug: its type and its message's first line."""
    return f"{type(err).__name__}: {err}".splitlines()[0]


class VidcacheError(Exception):
    """A problem with what the user asked for; ``str(err)`` is the one line shown."""

    exit_code = EXIT_USAGE


class UsageError(VidcacheError):
    exit_code = EXIT_USAGE


class RankLost(VidcacheError):
    """Under torchrun, a video failed on some ranks while the others stayed inside it (waiting in a
    collective for the failed ones): the launch cannot go on in step and stops; a rerun resumes."""

    exit_code = EXIT_RANK_LOST


class OutputError(VidcacheError):
    """A video or report could not be written whole (the writer failed, the file does not decode, the
    disk is full) or must not be (the name holds another job's finished video): that video is
    ``failed``, the batch goes on, and nothing broken is left under a final name."""

    exit_code = EXIT_SOME_FAILED
