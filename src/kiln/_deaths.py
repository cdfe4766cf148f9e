"""How an agent's last process died, told by its next one.

A process killed by a fatal signal (``os.abort()``, a segfault in native code) cannot report
anything itself; Python's ``faulthandler`` writes the signal to a file as it dies, and
``os._exit`` is wrapped to leave a line. The restarted agent reads the file, so the driver's
``AgentLostError`` can say "killed by SIGABRT" instead of "the actor died".
"""

from __future__ import annotations

import faulthandler
import os
import re
import tempfile
from typing import Any


def _death_file(name: str) -> str:
    folder = os.path.join(tempfile.gettempdir(), "kiln-agents")
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, re.sub(r"[^A-Za-z0-9_.-]", "_", name) + ".death")


_fault_file: Any = None


def record_deaths(name: str, actor_id: str) -> dict[str, Any]:
    """Read what the previous process of this agent left (it died from a signal, called
    ``os._exit``, or restarted itself), then arm the records for this process.

    Ray keeps an actor's id across its restarts; a new actor of the same name (a new cluster,
    a new ``kiln up``) must not inherit a stranger's death, so records carry the actor id.
    """
    global _fault_file
    path = _death_file(name)
    previous: dict[str, Any] = {}
    try:
        with open(path) as f:
            owner, _, text = f.read().partition("\n")
        text = text.strip()
        if owner == actor_id and text:
            previous = {"detail": _summarise_death(text), "record": text[-2000:]}
    except OSError:
        pass
    try:
        _fault_file = open(path, "w")  # noqa: SIM115 - held open for faulthandler, for life
        _fault_file.write(actor_id + "\n")
        _fault_file.flush()
        faulthandler.enable(file=_fault_file, all_threads=True)
    except OSError:
        return previous
    real_exit = os._exit

    def recorded_exit(code: int) -> None:
        # os._exit skips every handler; leave a line so the next process can say what happened
        note_death(name, f"the process called os._exit({code})")
        real_exit(code)
    os._exit = recorded_exit
    return previous


def note_death(name: str, line: str) -> None:
    try:
        with open(_death_file(name), "a") as f:
            f.write(line + "\n")
    except OSError:
        pass


_SIGNALS = {"Aborted": "SIGABRT (os.abort() or a failed assertion in native code)",
            "Segmentation fault": "SIGSEGV (a segmentation fault)",
            "Bus error": "SIGBUS", "Floating point exception": "SIGFPE",
            "Illegal instruction": "SIGILL"}


def _summarise_death(text: str) -> str:
    for key, signal in _SIGNALS.items():
        if f"Fatal Python error: {key}" in text:
            return f"killed by {signal}"
    return text.splitlines()[-1]
