"""The Typer app, the two consoles and the one way every command ends on an error."""

from __future__ import annotations

import traceback
from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Generate videos with Wan, HunyuanVideo and CogVideoX, fast, with feature caching.",
)
err_console = Console(stderr=True)
out_console = Console()


def _print_version(value: bool) -> None:
    if value:
        from .. import __version__

        typer.echo(f"vidcache {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="Print vidcache's version and exit."),
) -> None:
    """Generate videos with Wan, HunyuanVideo and CogVideoX, fast, with feature caching."""


def fail(err: BaseException | str, debug: bool, code: int, show: bool = True) -> NoReturn:
    """One red line on stderr (a traceback first with ``--debug``), then exit ``code``."""
    if debug:
        traceback.print_exc()
    if show:
        err_console.print(f"[red]error:[/red] {escape(str(err))}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def warn(message: str) -> None:
    err_console.print(f"[yellow]warning:[/yellow] {escape(message)}", highlight=False, soft_wrap=True)


def note(message: str) -> None:
    err_console.print(escape(message), highlight=False, soft_wrap=True)


def progress(transient: bool = True):
    """The progress display every long command shows on stderr."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=err_console, transient=transient)


def guarded(debug: bool, show: bool = True):
    """A context that turns vidcache's errors into their exit code and anything else into exit 1,
    one line each (``--debug``: with the traceback)."""
    import contextlib

    from ..errors import VidcacheError, one_line

    @contextlib.contextmanager
    def ctx():
        try:
            yield
        except VidcacheError as err:
            fail(err, debug, err.exit_code, show=show)
        except typer.Exit:
            raise
        except Exception as err:  # noqa: BLE001 - a traceback only with --debug
            fail(one_line(err), debug, 1, show=show)

    return ctx()
