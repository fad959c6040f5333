"""The README's quick start, run as written against `loraplex serve` (the demo), so docs can't drift.

The blocks come from the README (the fenced block after each `<!-- quickstart:... -->` marker); the
only change is the port: the test server listens on a free port instead of 8080. Every command's
output must equal the `# ...` comment line(s) that follow it in the README.
"""

import contextlib
import io
import re
import subprocess
from pathlib import Path

import httpx
import pytest
from server_harness import spawn_serve

README = Path(__file__).resolve().parents[2] / "README.md"


def block(marker: str) -> str:
    match = re.search(rf"<!-- quickstart:{marker} -->\s*```\w+\n(.*?)```", README.read_text(), re.DOTALL)
    assert match, f"README has no quickstart:{marker} block"
    return match.group(1)


def commands_with_expected_output(text: str) -> list[tuple[str, str]]:
    """(command, expected output) pairs: a command (with `\\` continuations) then its `# ` lines."""
    pairs: list[tuple[str, list[str]]] = []
    command: list[str] = []
    for line in text.splitlines():
        if line.startswith("# "):
            pairs[-1][1].append(line[2:])
        elif command and command[-1].endswith("\\"):
            command.append(line)
        elif line.strip():
            command = [line]
            pairs.append(("", []))
        if command and not line.startswith("# "):
            pairs[-1] = ("\n".join(command), pairs[-1][1])
    return [(cmd, "\n".join(out)) for cmd, out in pairs]


@pytest.fixture(scope="module")
def demo_server():
    process, url = spawn_serve(timeout=120)
    yield int(url.rsplit(":", 1)[1]), process
    process.terminate()
    process.communicate(timeout=30)


def with_port(text: str, port: int) -> str:
    return text.replace("localhost:8080", f"127.0.0.1:{port}")


def test_no_model_id_serves_the_demo_with_its_adapters(demo_server):
    port, process = demo_server
    info = httpx.get(f"http://127.0.0.1:{port}/info").json()
    assert info["model_id"] == "loraplex-demo" and info["adapters"]["gpu"] == 3


def test_curl_block(demo_server):
    port, _ = demo_server
    pairs = commands_with_expected_output(block("curl"))
    assert len(pairs) == 3
    for command, expected in pairs:
        result = subprocess.run(
            ["bash", "-c", with_port(command, port)], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == expected, command


@pytest.mark.parametrize("marker", ["python", "client"])
def test_python_block(demo_server, marker):
    port, _ = demo_server
    source = block(marker)
    code = "\n".join(line for line in source.splitlines() if not line.startswith("# "))
    expected = "\n".join(line[2:] for line in source.splitlines() if line.startswith("# "))
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        exec(compile(with_port(code, port), "README quickstart", "exec"), {})  # noqa: S102 - the README's own code
    assert output.getvalue().strip() == expected
