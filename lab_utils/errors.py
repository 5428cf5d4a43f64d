"""The lab's exceptions share one base, so a notebook or a script can catch "anything the lab
refused, with a message that says how to fix it" in one ``except LabError``.

Each error also keeps the built-in base it always had (``ValueError`` for bad input,
``RuntimeError`` for a missing service or tool), so existing ``except ValueError`` code still
catches it. The classes live next to the code that raises them; this module only holds the base.
"""

from __future__ import annotations


class LabError(Exception):
    """A problem the user can fix; the message names the thing and the fix."""
