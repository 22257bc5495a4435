"""Helpers shared by the command modules (parsing, console)."""

from __future__ import annotations

from rich.console import Console

from shieldkit.utils.validate import parse_eps, parse_int_list

console = Console()

__all__ = ["console", "parse_budgets", "parse_eps"]


def parse_budgets(text: str, flag: str = "--budgets") -> list[int]:
    """Comma-separated query budgets → sorted unique positive ints (``InputError`` naming the flag)."""
    return parse_int_list(text, flag)
