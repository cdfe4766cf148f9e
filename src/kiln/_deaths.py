"""What an agent's last process left for its next one: how it died, and what it had loaded.

A process killed by a fatal signal (``os.abort()``, a segfault in native code) cannot report
anything itself; Python's ``faulthandler`` writes the signal to a file as it dies, and
``os._exit`` is wrapped to leave a line. The restarted agent reads the file, so the driver's
``AgentLostError`` can say "killed by SIGABRT" instead of "the actor died".

A restarted agent also re-imports, in the background, the libraries its capabilities had
loaded (``note_loaded`` / ``previously_loaded``): after a SIGKILL, importing torch and
sentence-transformers again took ~10 of the ~19 s before the gateway's agent answered, and
they were only started when the first request arrived.
"""

from __future__ import annotations

import faulthandler
import json
import os
import re
import sys
import tempfile
from typing import Any


def _death_file(name: str, suffix: str = ".death") -> str:
    folder = os.path.join(tempfile.gettempdir(), "kiln-agents")
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, re.sub(r"[^A-Za-z0-9_.-]", "_", name) + suffix)


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


def top_modules() -> list[str]:
    """Top-level packages imported in this process, in import order, stdlib left out."""
    seen: dict[str, None] = {}
    for module in list(sys.modules):
        top = module.partition(".")[0]
        if top and not top.startswith("_") and top not in sys.stdlib_module_names:
            seen.setdefault(top, None)
    return list(seen)


def note_loaded(name: str, actor_id: str, capability: str, modules: list[str]) -> None:
    """Remember that ``capability`` ran here and imported ``modules`` (for the next process)."""
    path = _death_file(name, ".loaded")
    record = previously_loaded(name, actor_id)
    record[capability] = modules
    try:
        with open(path + ".tmp", "w") as f:
            json.dump({"actor": actor_id, "capabilities": record}, f)
        os.replace(path + ".tmp", path)
    except OSError:
        pass


def previously_loaded(name: str, actor_id: str) -> dict[str, list[str]]:
    """{capability: modules it imported} of the previous process of this same actor."""
    try:
        with open(_death_file(name, ".loaded")) as f:
            record = json.load(f)
    except (OSError, ValueError):
        return {}
    if record.get("actor") != actor_id:
        return {}
    return {str(k): [str(m) for m in v] for k, v in (record.get("capabilities") or {}).items()}
