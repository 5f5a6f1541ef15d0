"""Every Python snippet of the README runs as it is printed, and prints what its comments
say (for `print(...)  # expected` lines)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
SNIPPETS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
_PRINT = re.compile(r"^\s*print\(.*\)\s+#\s(.+)$")


def expected_lines(code: str) -> list[str]:
    """The comment of each `print(...)  # comment` line, in order."""
    return [match.group(1).strip() for line in code.splitlines()
            if (match := _PRINT.match(line))]


def says(comment: str, printed: str) -> bool:
    """A comment says what was printed, optionally followed by ": why" or more words."""
    return comment == printed or comment.startswith((printed + ":", printed + " "))


def test_the_readme_has_snippets():
    assert len(SNIPPETS) >= 10


@pytest.mark.parametrize("index", range(len(SNIPPETS)))
def test_a_readme_snippet_runs_and_prints_what_it_says(index, tmp_path):
    code = SNIPPETS[index]
    script = tmp_path / f"snippet_{index}.py"
    script.write_text(code)
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    expected = expected_lines(code)
    printed = done.stdout.strip().splitlines()[-len(expected):] if expected else []
    assert len(printed) == len(expected), done.stdout
    for comment, line in zip(expected, printed):
        assert says(comment, line.strip()), f"printed {line!r}, the README says {comment!r}"
