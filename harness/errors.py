"""One error type for everything a person must act on: what went wrong, and the fix."""
from __future__ import annotations


class HarnessError(Exception):
    """An error with a hint. The CLI prints both and exits non-zero; no traceback."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message + (f"\n  hint: {self.hint}" if self.hint else "")


class InfrastructureError(HarnessError):
    """The bed, libvirtd, the connection or the tiny guest failed under a scenario: not a verdict on libvirt."""
