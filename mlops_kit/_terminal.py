"""Text from another machine, made safe to print on a terminal.

Whatever the team's server prints (an error, `runs list --server`, `server check` details, the
pipeline's progress relayed to `git push`) may hold terminal control sequences: an OSC that sets
the window title or writes the clipboard (OSC 52), a CSI that moves the cursor or clears lines to
hide what came before, a carriage return that overwrites a line. :func:`printable` removes them
all (ESC sequences, C0 controls but tab and newline, DEL, C1 controls); the text itself stays.
"""

from __future__ import annotations

import re

_CONTROL_RE = re.compile(
    r"\x1b\][^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"     # OSC ... BEL/ST (window title, clipboard, hyperlinks)
    r"|\x1b[PX^_][^\x1b\x9c]*(?:\x1b\\|\x9c)?"         # DCS, SOS, PM, APC ... ST
    r"|\x1b\[[0-?]*[ -/]*[@-~]?"                        # CSI (cursor, colours, erase)
    r"|\x1b[ -/]*[0-~]?"                                # other ESC sequences, a lone ESC
    r"|[\x00-\x08\x0b-\x1f\x7f-\x9f]")                  # C0 but tab/newline, DEL, C1 (e.g. 0x9b CSI)


def printable(text: str) -> str:
    """``text`` without terminal control sequences or control characters (tab, newline kept)."""
    return _CONTROL_RE.sub("", text.replace("\r\n", "\n"))
