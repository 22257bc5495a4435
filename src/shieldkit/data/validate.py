"""Dataset input checks for the Python API and the CLI (issue 14: moved here from
:mod:`shieldkit.utils.validate`, which sits below the data layer and must not know the registry).

Same contract as the generic validators: pure (creates nothing), returns the parsed value, raises
:class:`~shieldkit.errors.InputError` / :class:`~shieldkit.errors.MissingInputError` naming the flag.
"""

from __future__ import annotations

from pathlib import Path

from shieldkit.data.registry import DATASETS, list_datasets
from shieldkit.errors import InputError
from shieldkit.utils.validate import _suggest, check_existing_dir


def check_dataset(name: str | None, root: str | Path | None = None, flag: str = "--data",
                  root_flag: str = "--data-root") -> str | None:
    """A registered dataset name (with a suggestion); a local dataset needs an existing ``root``."""
    if name is None:
        return None
    if name not in DATASETS:
        raise InputError(f"{flag} {name}: unknown dataset", hint=_suggest(name, list_datasets()))
    if root is not None:
        check_existing_dir(root, root_flag)
    elif not DATASETS[name]["embedded"]:
        raise InputError(f"{flag} {name}: reads a local folder, pass {root_flag}",
                         hint=f"expected layout: {DATASETS[name]['layout']}"[:200])
    return name
