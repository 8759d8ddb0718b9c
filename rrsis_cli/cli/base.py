"""The machinery every command group shares: a Typer whose commands take the global options in either position,
the help layout (workflow order, flags without a type metavar), and ``--config`` support (:func:`given_by_user`).

Global options (--debug, --verbose, --quiet, --log-format) are defined once, here. They are accepted before the
subcommand (the root callback in :mod:`rrsis_cli.cli`) and after it: every command and command group is
registered on an :class:`RrsisTyper`, which adds them to each command it registers, so
``rrsis predict ... --quiet`` and ``rrsis --quiet predict ...`` are the same.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from enum import Enum
from typing import Annotated, Any

import typer
import typer.core

from rrsis_cli import console

EXIT_CODES_HELP = (
    "Exit codes: 0 all done (empty masks included); 1 fatal error, nothing done; 2 usage error; "
    "3 partial (some inputs failed, the rest were written); 130 interrupted."
)
GLOBAL_PANEL = "Global options (before or after the command)"
HELPERS_PANEL = "Helpers"
# Commands in workflow order, then the helpers.
WORKFLOW_ORDER = ("predict", "evaluate", "train", "overlay", "manifest", "models", "convert", "data", "bench")


class LogFormat(str, Enum):
    text = "text"
    json = "json"


DebugOption = Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.",
                                           rich_help_panel=GLOBAL_PANEL)]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors; no progress bars.",
                                           rich_help_panel=GLOBAL_PANEL)]
VerboseOption = Annotated[bool, typer.Option("--verbose", "-v", help="Also debug-level messages (resolved model, "
                                             "tile size, decisions).", rich_help_panel=GLOBAL_PANEL)]
LogFormatOption = Annotated[LogFormat | None, typer.Option(
    "--log-format", help="text (the default), or json lines on stderr (cron).", rich_help_panel=GLOBAL_PANEL)]


def apply_global_options(debug: bool = False, quiet: bool = False, log_format: LogFormat | None = None,
                         verbose: bool = False) -> None:
    """Options given after a (sub)command add to those given before it: a flag can only switch on, and
    --log-format replaces the earlier format. The root callback resets them first, once per invocation."""
    console.configure(debug=debug or None, quiet=quiet or None, log_format=log_format.value if log_format else None,
                      verbose=verbose or None)


def with_global_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """``func`` with the global options appended to its parameters (keyword-only, so they never clash with
    its own); they are applied, then ``func`` runs with its own arguments."""
    signature = inspect.signature(func, eval_str=True)  # typer reads real annotations from __signature__
    keyword = inspect.Parameter.KEYWORD_ONLY
    extra = [inspect.Parameter("global_debug", keyword, default=False, annotation=DebugOption),
             inspect.Parameter("global_verbose", keyword, default=False, annotation=VerboseOption),
             inspect.Parameter("global_quiet", keyword, default=False, annotation=QuietOption),
             inspect.Parameter("global_log_format", keyword, default=None, annotation=LogFormatOption)]

    @functools.wraps(func)
    def command(*args: Any, global_debug: bool = False, global_quiet: bool = False,
                global_log_format: LogFormat | None = None, global_verbose: bool = False, **kwargs: Any) -> Any:
        apply_global_options(global_debug, global_quiet, global_log_format, global_verbose)
        return func(*args, **kwargs)

    command.__signature__ = signature.replace(parameters=[*signature.parameters.values(), *extra])  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in command.__signature__.parameters.values()}  # type: ignore[attr-defined]
    return command


def _group() -> None:
    pass


def _flags_without_metavar(params: list[Any]) -> list[Any]:
    """`--overwrite`, not `--overwrite <bool>`: typer prints the metavar (else <bool>) in the type column."""
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    return params


class RrsisCommand(typer.core.TyperCommand):
    def get_params(self, ctx: typer.Context) -> list[Any]:
        return _flags_without_metavar(super().get_params(ctx))


class RrsisGroup(typer.core.TyperGroup):
    def get_params(self, ctx: typer.Context) -> list[Any]:
        return _flags_without_metavar(super().get_params(ctx))

    def list_commands(self, ctx: typer.Context) -> list[str]:
        names = super().list_commands(ctx)
        rank = {name: i for i, name in enumerate(WORKFLOW_ORDER)}
        return sorted(names, key=lambda name: rank.get(name, len(rank)))


class RrsisTyper(typer.Typer):
    """A Typer whose commands, and the group itself (``rrsis models --quiet list``), take the global options."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("cls", RrsisGroup)
        super().__init__(*args, **kwargs)
        self.callback()(with_global_options(_group))  # the root app replaces it with its own callback

    def command(self, *args: Any, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        kwargs.setdefault("cls", RrsisCommand)
        register = super().command(*args, **kwargs)

        def decorator(func: Callable[..., Any]) -> Callable[..., Any]:
            register(with_global_options(func))
            return func

        return decorator


def given_by_user(ctx: typer.Context, values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with every parameter the user did not give (on the command line or in the environment)
    replaced by None, so that a ``--config`` file fills it before the defaults do. Options keep their real
    defaults in the signature, which is what ``--help`` shows."""
    def given(name: str) -> bool:
        source = ctx.get_parameter_source(name)
        return source is not None and source.name != "DEFAULT"

    return {name: value if given(name) else None for name, value in values.items()}


def option_values(local_values: dict[str, Any], *leave_out: str) -> dict[str, Any]:
    """A command's parameters (its ``locals()`` on entry) as plain values (enums by value), without ``leave_out``."""
    return {k: (v.value if isinstance(v, Enum) else v) for k, v in local_values.items() if k not in leave_out}
