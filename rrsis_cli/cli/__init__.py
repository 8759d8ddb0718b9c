"""The ``rrsis`` command line (Typer): the root app, the command map, and :func:`main`.

One module per command group (:mod:`~rrsis_cli.cli.predict`, :mod:`~rrsis_cli.cli.evaluate`,
:mod:`~rrsis_cli.cli.train`, :mod:`~rrsis_cli.cli.models`, ...); each command parses its options, calls the
library and prints. Options shared by several commands are declared once in :mod:`rrsis_cli.cli.options`, the
global ones and the Typer machinery in :mod:`rrsis_cli.cli.base`. Nothing here imports torch.

Exit codes: 0 all done · 1 fatal error / nothing done · 2 usage error · 3 partial (some inputs failed, the rest
were written) · 130 interrupted.
"""

from __future__ import annotations

import sys
import traceback
from typing import Annotated

import typer

from rrsis_cli import __version__, console
from rrsis_cli.cli import bench, convert, data, evaluate, manifest, models, overlay, predict, publish, train
from rrsis_cli.cli.base import (
    EXIT_CODES_HELP,
    HELPERS_PANEL,
    DebugOption,
    LogFormat,
    LogFormatOption,
    QuietOption,
    RrsisTyper,
    VerboseOption,
)
from rrsis_cli.errors import EXIT_FATAL, EXIT_INTERRUPTED, EXIT_USAGE, RrsisError, Stopped

app = RrsisTyper(
    name="rrsis",
    help="Referring remote sensing image segmentation: GeoTIFF + sentence -> georeferenced mask.\n\n"
    + EXIT_CODES_HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        print(f"rrsis {__version__}")
        raise typer.Exit(0)


@app.callback()
def root(
    version: Annotated[bool | None, typer.Option("--version", callback=_version, is_eager=True,
                                                    help="Print the version and exit.")] = None,
    debug: DebugOption = False,
    verbose: VerboseOption = False,
    quiet: QuietOption = False,
    log_format: LogFormatOption = None,
) -> None:
    console.configure(quiet=quiet, debug=debug, log_format=(log_format or LogFormat.text).value, verbose=verbose)


# The command map (`rrsis --help` lists the commands in workflow order, see base.WORKFLOW_ORDER).
app.command(epilog=predict.EPILOG)(predict.predict)
app.command(epilog=evaluate.EPILOG)(evaluate.evaluate)
app.command(epilog=train.EPILOG)(train.train)
app.command(rich_help_panel=HELPERS_PANEL)(overlay.overlay)
app.add_typer(manifest.app, name="manifest", rich_help_panel=HELPERS_PANEL)
app.command(rich_help_panel=HELPERS_PANEL)(publish.publish)
app.add_typer(models.app, name="models", rich_help_panel=HELPERS_PANEL)
app.command(rich_help_panel=HELPERS_PANEL)(convert.convert)
app.add_typer(data.app, name="data", rich_help_panel=HELPERS_PANEL)
app.command(rich_help_panel=HELPERS_PANEL)(bench.bench)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: runs the app and maps project errors to exit codes in one place. Library warnings
    and log records go through the console meanwhile (one line each; JSON with --log-format json)."""
    with console.routed_warnings():
        _main(argv)


def _main(argv: list[str] | None) -> None:
    try:
        code = app(args=argv, standalone_mode=False)  # typer.Exit(n) comes back as the return value here
        if code == EXIT_INTERRUPTED:  # typer turns Ctrl-C (KeyboardInterrupt) into Exit(130)
            console.error("interrupted")
        sys.exit(code if isinstance(code, int) else 0)
    except RrsisError as exc:
        if console.SETTINGS.debug:
            traceback.print_exc()
        console.error(exc.one_line())
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        console.error("interrupted")
        sys.exit(EXIT_INTERRUPTED)
    except Stopped as exc:
        console.error(f"stopped by {exc.name}", exit_code=exc.exit_code)
        sys.exit(exc.exit_code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        console.error("aborted")
        sys.exit(EXIT_INTERRUPTED)
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, exit 1
        if hasattr(exc, "show") and isinstance(getattr(exc, "exit_code", None), int):
            exc.show()  # a click/typer usage error (exit code 2)
            sys.exit(EXIT_USAGE if exc.exit_code == 2 else exc.exit_code)
        if console.SETTINGS.debug:
            traceback.print_exc()
        else:
            console.error(f"{type(exc).__name__}: {exc} (run with --debug for the traceback)")
        sys.exit(EXIT_FATAL)
