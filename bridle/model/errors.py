"""`BridleError`: the base of the project's own errors, so a caller can tell them from a bug.

Each error also derives from the built-in it has always been (`ValueError` for bad input: media, a
checkpoint, a manifest, a recipe; `RuntimeError` for a step that failed), so `except ValueError` keeps
working. A command line reports one as `error: <message>` on stderr and exits non-zero; the exit codes are
in docs/cli.md.
"""

from __future__ import annotations


class BridleError(Exception):
    """An error of bridle's own making: bad input it refuses, or a step that failed; never a bug."""
