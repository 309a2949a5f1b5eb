"""The package's type hints, checked by `mypy --strict` as a user's project
would be: the package itself, right usages (typecheck/handlers_ok.py) that
must pass, and wrong ones (typecheck/handlers_bad.py) that must fail, each
on its line with the error its `# E:` comment quotes."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest

HERE = Path(__file__).resolve().parent
CASES = HERE / "typecheck"
PACKAGE = HERE.parent / "python" / "tasker_core"
CACHE = HERE.parent / ".mypy_cache"
ERROR = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+): error: (?P<message>.*)$")


def expected_errors(path: Path) -> Dict[int, str]:
    """Line number -> the message fragment its `# E:` comment names."""
    expected = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if "# E: " in line:
            expected[number] = line.split("# E: ", 1)[1].strip()
    return expected


@pytest.mark.timeout(300)
def test_mypy_strict_accepts_right_usages_and_refuses_wrong_ones():
    pytest.importorskip("mypy")
    ok, bad = CASES / "handlers_ok.py", CASES / "handlers_bad.py"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-error-summary",
            "--no-pretty",
            "--cache-dir",
            str(CACHE),
            str(PACKAGE),
            str(ok),
            str(bad),
        ],
        capture_output=True,
        text=True,
        cwd=HERE,
    )
    assert "error: " in run.stdout, f"mypy did not run:\n{run.stdout}\n{run.stderr}"
    found: Dict[str, Dict[int, List[str]]] = {}
    for line in run.stdout.splitlines():
        match = ERROR.match(line)
        if match:
            name = Path(match["file"]).name
            found.setdefault(name, {}).setdefault(int(match["line"]), []).append(match["message"])
    unexpected = {name: errors for name, errors in found.items() if name != bad.name}
    assert not unexpected, f"errors in the package or the right usages:\n{run.stdout}"

    expected = expected_errors(bad)
    assert len(expected) >= 15
    got = found.get(bad.name, {})
    missing = {line: text for line, text in expected.items() if line not in got}
    assert not missing, f"wrong usages mypy accepted (line: expected error): {missing}"
    extra = {line: messages for line, messages in got.items() if line not in expected}
    assert not extra, f"errors no `# E:` comment expects: {extra}"
    for line, fragment in expected.items():
        assert any(fragment in message for message in got[line]), (line, fragment, got[line])
