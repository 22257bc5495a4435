"""`python -m shieldkit ...` (also what `torchrun -m shieldkit` runs)."""

from shieldkit.cli.main import app

if __name__ == "__main__":
    app()
