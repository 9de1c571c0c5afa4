"""Errors that end an inspection, each with the exit code a script can test."""

from __future__ import annotations

import drgn

# Exit codes shared by every command.
EXIT_OK = 0
EXIT_FINDINGS = 1  # error-level findings (check)
EXIT_CANNOT_INSPECT = 2  # no KSM, no debug info, unreadable dump, bad usage


class KsmInspectError(Exception):
    """Inspection cannot go on; the message is one sentence for the user."""

    exit_code = EXIT_CANNOT_INSPECT


class CannotTell(KsmInspectError):
    """A drgn helper or the dump cannot answer: "cannot tell: REASON"."""

    def __init__(self, reason: str):
        super().__init__(f"cannot tell: {reason}")
        self.reason = reason


class NoKsmError(KsmInspectError):
    """The kernel was built without CONFIG_KSM."""


class UsageError(KsmInspectError):
    """A setting the user gave (an environment variable) cannot be used."""


class TargetError(KsmInspectError):
    """The dump, the live kernel or the debug info cannot be opened or read."""


# What a drgn helper raises when it cannot do its job on this kernel, as
# opposed to memory that says something: no page-table walker for the
# architecture (NotImplementedError, e.g. i386), a type, member or symbol the
# helper needs that this configuration or this drgn's idea of it lacks
# (LookupError, AttributeError), a variable the compiler folded away
# (ObjectAbsentError). The answer is then "cannot tell". Caught only around
# calls of drgn's helpers, never around ksminspect's own code.
HELPER_LIMITS = (NotImplementedError, LookupError, AttributeError, drgn.ObjectAbsentError)
