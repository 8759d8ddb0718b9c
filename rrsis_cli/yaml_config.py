"""``--config FILE``: every CLI option can come from a YAML mapping; flags given on the command line win."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from rrsis_cli.errors import UsageError


def read_yaml_options(path: str | Path, allowed: set[str]) -> dict[str, Any]:
    """Option values from a YAML mapping; keys may use dashes or underscores; unknown keys are an error."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise UsageError(f"cannot read config file: {exc.strerror}", path) from exc
    except yaml.YAMLError as exc:
        raise UsageError(f"invalid YAML: {str(exc).splitlines()[0]}", path) from exc
    if not isinstance(data, dict):
        raise UsageError("config file must be a YAML mapping of option names to values", path)
    options = {str(k).replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise UsageError(f"unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(allowed))}", path)
    return options


def merge_options(config_file: str | Path | None, cli_values: dict[str, Any]) -> dict[str, Any]:
    """File values first, then every CLI value that was given (not None)."""
    merged = read_yaml_options(config_file, set(cli_values)) if config_file else {}
    merged.update({k: v for k, v in cli_values.items() if v is not None})
    return merged
