"""docs/getting-started.md, as a newcomer follows it: every ``bash`` block in order, in one shell, in an empty
folder with an empty HOME, against the fake provider the page itself starts on loopback.

Blocks fenced as ``sh`` (cloning, installing, real providers' keys) are shown, not run. The page's ports are
replaced by free ones so that the test never meets another server; nothing else is changed.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from tests.workers.processes import BIN, free_port

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "getting-started.md"
PORTS = ("8900", "8000")


def runnable_blocks(text: str) -> list[str]:
    """The bodies of the page's ```bash blocks, in order."""
    return re.findall(r"^```bash\n(.*?)^```$", text, flags=re.S | re.M)


def test_the_page_has_runnable_blocks() -> None:
    blocks = runnable_blocks(PAGE.read_text())
    assert len(blocks) >= 4
    script = "\n".join(blocks)
    for command in ("defeater fake-provider", "defeater run", "defeater api", "defeater submit", "defeater gate"):
        assert command in script


@pytest.mark.timeout(600)
def test_every_command_of_the_page_runs(tmp_path: Path) -> None:
    script = "\n".join(runnable_blocks(PAGE.read_text()))
    for port in PORTS:
        script = re.sub(rf"\b{port}\b", str(free_port()), script)
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DEFEATER_", "XDG_"))}
    env |= {"HOME": str(home), "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}"}
    for key in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "FAKE_PROVIDER_KEY"):
        env.pop(key, None)  # the page says which keys to set
    wrapped = f"set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n{script}"
    process = subprocess.Popen(
        ["bash", "-c", wrapped], cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        output, _ = process.communicate(timeout=540)
    finally:  # the page's servers run in the background of that shell: its whole process group goes
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert process.returncode == 0, output[-6000:]
    assert (work / "report.html").exists(), output[-3000:]
    assert (work / "gate.xml").exists() and (work / "gate.md").exists(), output[-3000:]
