"""Helpers shared by the command modules (parsing, console)."""

from __future__ import annotations

from rich.console import Console

console = Console()


def parse_budgets(text: str) -> list[int]:
    """Comma-separated query budgets → sorted unique ints, with a CLI-friendly error."""
    import typer

    try:
        out = sorted({int(b) for b in text.split(",") if b.strip()})
    except ValueError as exc:
        raise typer.BadParameter(f"--budgets must be comma-separated integers, got {text!r}") from exc
    if not out or out[0] <= 0:
        raise typer.BadParameter(f"--budgets must be positive integers, got {text!r}")
    return out


def parse_eps(text: str | float) -> float:
    """Parse ε given as a float or a fraction such as ``8/255``."""
    if isinstance(text, float | int):
        return float(text)
    text = text.strip()
    if "/" in text:
        num, den = text.split("/", 1)
        return float(num) / float(den)
    return float(text)
