"""Every Python snippet of the README and of docs/ runs as it is printed and prints what its
comments say (for `print(...)  # expected` lines), so no example rots when the API moves.

A block is a program when every name it uses is defined in it (imported, assigned or a
builtin): it runs in a fresh interpreter. A docs block that uses names it does not define
shows a call in context (a fragment): it must compile, and every name it imports from
fanwise must exist. A program that must not run here (it serves until Ctrl-C, or needs a
cluster) is fenced as ```python fragment and is checked like a fragment. Every README
block is a program."""

import builtins
import importlib
import re
import subprocess
import symtable
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_BLOCK = re.compile(r"^```python( fragment)?\n(.*?)^```", re.S | re.M)
_PRINT = re.compile(r"^\s*print\(.*\)\s+#\s(.+)$")
_MODULE_NAMES = {"__file__", "__name__", "__doc__", "__builtins__", "__spec__"}


@dataclass(frozen=True)
class Snippet:
    page: str
    number: int
    code: str
    marked_fragment: bool

    def __str__(self) -> str:
        return f"{self.page}#{self.number}"


def snippets() -> list[Snippet]:
    found = []
    for page in PAGES:
        for number, match in enumerate(_BLOCK.finditer(page.read_text()), 1):
            found.append(Snippet(page.relative_to(ROOT).as_posix(), number, match.group(2),
                                 bool(match.group(1))))
    return found


SNIPPETS = snippets()


def undefined_names(code: str) -> set[str]:
    """Names the code reads without importing or assigning them anywhere at module level."""
    top = symtable.symtable(code, "<snippet>", "exec")
    defined = {symbol.get_name() for symbol in top.get_symbols()
               if symbol.is_assigned() or symbol.is_imported() or symbol.is_namespace()}
    used: set[str] = set()
    tables = [top]
    while tables:
        table = tables.pop()
        tables.extend(table.get_children())
        for symbol in table.get_symbols():
            if symbol.is_referenced() and (table is top or symbol.is_global()):
                used.add(symbol.get_name())
    return used - defined - set(dir(builtins)) - _MODULE_NAMES


def is_program(snippet: Snippet) -> bool:
    return not snippet.marked_fragment and not undefined_names(snippet.code)


def fanwise_imports(code: str) -> list[tuple[str, str | None]]:
    """(module, name) for every `from fanwise... import name` and `import fanwise...`."""
    imports = []
    for line in code.splitlines():
        if match := re.match(r"\s*from (fanwise[\w.]*) import \(?([\w, ]+)", line):
            imports += [(match.group(1), name.strip().split(" as ")[0])
                        for name in match.group(2).split(",") if name.strip()]
        elif match := re.match(r"\s*import (fanwise[\w.]*)", line):
            imports.append((match.group(1), None))
    return imports


def expected_lines(code: str) -> list[str]:
    """The comment of each `print(...)  # comment` line, in order."""
    return [match.group(1).strip() for line in code.splitlines()
            if (match := _PRINT.match(line))]


def says(comment: str, printed: str) -> bool:
    """A comment says what was printed, optionally followed by ": why" or more words."""
    return comment == printed or comment.startswith((printed + ":", printed + " "))


PROGRAMS = [snippet for snippet in SNIPPETS if is_program(snippet)]
FRAGMENTS = [snippet for snippet in SNIPPETS if not is_program(snippet)]


def test_the_readme_and_docs_have_runnable_snippets():
    assert sum(s.page == "README.md" for s in PROGRAMS) >= 7
    assert sum(s.page != "README.md" for s in PROGRAMS) >= 10


def test_every_readme_snippet_is_a_program():
    assert [str(s) for s in FRAGMENTS if s.page == "README.md"] == []


def test_a_block_that_uses_a_name_it_does_not_define_is_a_fragment():
    assert undefined_names("from x import y\nprint(y(client))") == {"client"}
    assert undefined_names("def f(a):\n    return a + b\nb = 1\nf(2)") == set()
    assert undefined_names("class C:\n    n = 1\n    m = n + k\n") == {"k"}


@pytest.mark.parametrize("snippet", PROGRAMS, ids=str)
def test_a_program_snippet_runs_and_prints_what_it_says(snippet, tmp_path):
    script = tmp_path / "snippet.py"
    script.write_text(snippet.code)
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    expected = expected_lines(snippet.code)
    printed = done.stdout.strip().splitlines()[-len(expected):] if expected else []
    assert len(printed) == len(expected), done.stdout
    for comment, line in zip(expected, printed):
        assert says(comment, line.strip()), f"printed {line!r}, {snippet} says {comment!r}"


@pytest.mark.parametrize("snippet", FRAGMENTS, ids=str)
def test_a_fragment_compiles_and_imports_names_that_exist(snippet):
    compile(snippet.code, str(snippet), "exec")
    for module_name, name in fanwise_imports(snippet.code):
        module = importlib.import_module(module_name)
        assert name is None or hasattr(module, name), f"{snippet}: {module_name}.{name}"


_LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchors(page: Path) -> set[str]:
    """GitHub's anchors of a page's headings: lowercased, punctuation dropped, spaces to -."""
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
            for heading in re.findall(r"^#+ (.+)$", text, re.M)}


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(ROOT).as_posix())
def test_every_relative_link_points_to_a_file_and_heading_that_exist(page):
    broken = []
    for target in _LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists() or anchor and linked.suffix == ".md" and (
                anchor not in anchors(linked)):
            broken.append(target)
    assert broken == []
