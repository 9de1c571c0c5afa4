"""Errors that end an inspection, each with the exit code a script can test."""

from __future__ import annotations

# Exit codes shared by every command.
EXIT_OK = 0
EXIT_FINDINGS = 1  # error-level findings (check)
EXIT_CANNOT_INSPECT = 2  # no KSM, no debug info, unreadable dump, bad usage


class KsmInspectError(Exception):
    """Inspection cannot go on; the message is one sentence for the user."""

    exit_code = EXIT_CANNOT_INSPECT


class NoKsmError(KsmInspectError):
    """The kernel was built without CONFIG_KSM."""


class TargetError(KsmInspectError):
    """The dump, the live kernel or the debug info cannot be opened or read."""
