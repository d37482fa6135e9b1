"""Reading the shell commands and diffs out of the project's markdown (README.md, docs/*.md),
as a new user would copy them. Shared by tests/test_readme.py and tests/test_docs.py (not a
test module itself: pytest collects only test_*.py)."""
from __future__ import annotations

import re
import shlex


def fenced_blocks(text: str, language: str) -> list[str]:
    """The bodies of the ```<language> blocks of ``text``, in order."""
    return re.findall(rf"^```{re.escape(language)}\n(.*?)^```", text, flags=re.S | re.M)


def bash_commands(text: str) -> list[str]:
    """The commands of the ```bash blocks, continuation lines joined, comments dropped."""
    commands = []
    for block in fenced_blocks(text, "bash"):
        pending = ""
        for line in block.replace("\\\n", " ").splitlines():
            pending = f"{pending}\n{line}" if pending else line
            try:
                words = shlex.split(pending, comments=True)
            except ValueError:  # a quoted string goes on over the next line
                continue
            if words:
                commands.append(pending.strip())
            pending = ""
    return commands


def program(command: str) -> str:
    return shlex.split(command, comments=True)[0]


def words(command: str) -> list[str]:
    return shlex.split(command, comments=True)
