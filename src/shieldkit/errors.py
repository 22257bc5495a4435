"""The shieldkit error hierarchy.

Every error a *user* can cause (a bad flag, a broken file, a run folder made from other inputs) is a
:class:`ShieldkitError`. The CLI's single top-level handler (``shieldkit.cli.main``) prints such an error as
1-3 lines — what is wrong, naming the file or flag, and the fix — and exits with code 2; anything else is a
bug and prints one line plus "re-run with --debug for the traceback". The Python API raises the same
classes, so a library user can catch ``ShieldkitError`` once.

The classes subclass the built-in exception a caller would naturally expect (``ValueError`` for a bad
value, ``FileNotFoundError`` for a missing file), so code written against the earlier API keeps working.
"""

from __future__ import annotations


class ShieldkitError(Exception):
    """Base class: an error the user can fix. ``hint`` is the one-line fix shown under the message."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def lines(self) -> list[str]:
        """The 1-3 lines the CLI prints (message first, the fix last)."""
        out = [ln for ln in str(self.message).strip().splitlines() if ln.strip()][:2]
        if self.hint:
            out.append(f"fix: {self.hint}")
        return out[:3]


class InputError(ShieldkitError, ValueError):
    """A flag, argument or config value is invalid (out of range, wrong type, unknown key)."""


class MissingInputError(ShieldkitError, FileNotFoundError):
    """A file or folder the command needs does not exist."""


class CorruptFileError(ShieldkitError, ValueError):
    """A file exists but cannot be read as what it claims to be (truncated safetensors, bad YAML, …)."""


class IncompatibleError(ShieldkitError, ValueError):
    """Inputs that are each valid but do not fit together (model card vs dataset: classes, channels, size)."""


class IntegrityError(ShieldkitError, RuntimeError):
    """An output folder was made from other inputs than this run's (fingerprint mismatch), or a computation
    produced non-finite values; nothing is mixed or written."""


class DependencyError(ShieldkitError, RuntimeError):
    """A required package, device or external tool is not available (e.g. ``--device cuda`` without CUDA)."""
