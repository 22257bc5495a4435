"""Helpers shared by the command modules (parsing, console)."""

from __future__ import annotations

from rich.console import Console

console = Console()


def parse_eps(text: str | float) -> float:
    """Parse ε given as a float or a fraction such as ``8/255``."""
    if isinstance(text, float | int):
        return float(text)
    text = text.strip()
    if "/" in text:
        num, den = text.split("/", 1)
        return float(num) / float(den)
    return float(text)
