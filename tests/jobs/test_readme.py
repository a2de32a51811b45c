"""The smoke commands of README.md and of every docs/*.md page run exactly as written, from the pages'
text itself, so they cannot drift from the code.

A smoke block is a ```bash block right after the line `<!-- smoke: ... -->`. Each runs as one bash script
(`set -e`) in a fresh "clone": a temporary folder holding links to the repository's files and no
`outputs/`, with this environment's `python` first on PATH. Every block runs from the clone's root, the
docs pages' blocks too (their commands are written from the repository root, as the README's are). The
one substitution: the tiny models' folder (`outputs/tiny`) is the session's `tiny_models` fixture, so the
block's own `python -m jobs.tiny_models` line, which only writes that folder, is left out.
"""

import glob
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MARK = re.compile(r"^<!-- smoke\b.*-->$")
TINY = "outputs/tiny"


def smoke_blocks(text: str, name: str = "README.md") -> list[tuple[int, str]]:
    """(line number, script) of every marked block of one page (`name` only labels messages)."""
    lines, out = text.splitlines(), []
    for i, line in enumerate(lines):
        if MARK.match(line.strip()):
            assert lines[i + 1].strip() == "```bash", f"{name}:{i + 2}: a smoke mark must precede a ```bash block"
            end = lines.index("```", i + 2)
            out.append((i + 1, "\n".join(lines[i + 2 : end])))
    return out


def pages() -> list[str]:
    """README.md and every docs/*.md page, as paths relative to the repository root."""
    return ["README.md", *sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))]


def all_smoke_blocks() -> list[tuple[str, int, str]]:
    """(page, line number, script) of every marked block of README.md and the docs pages."""
    out = []
    for page in pages():
        with open(os.path.join(ROOT, page)) as f:
            out += [(page, line, script) for line, script in smoke_blocks(f.read(), page)]
    return out


def runnable(script: str, tiny: str) -> str:
    """The script with the tiny models' folder substituted and the line that writes it left out."""
    kept = [ln for ln in script.replace("\\\n", " ").splitlines() if "jobs.tiny_models" not in ln]
    return "set -euo pipefail\n" + "\n".join(kept).replace(TINY, tiny)


def fresh_clone(tmp_path) -> str:
    clone = tmp_path / "clone"
    clone.mkdir()
    for name in os.listdir(ROOT):
        if name not in ("outputs", ".git", ".venv") and not name.startswith("."):
            os.symlink(os.path.join(ROOT, name), clone / name)
    return str(clone)


BLOCKS = all_smoke_blocks()


def test_there_are_smoke_blocks():
    assert len(BLOCKS) >= 3, "the README's first run, and the training and evaluation pages' smoke blocks"


@pytest.mark.slow  # one smoke run of the README or the docs, end to end; one test a block (each its own time limit)
@pytest.mark.parametrize("page,line,script", BLOCKS, ids=[f"{page}:{line}" for page, line, _ in BLOCKS])
def test_smoke_block_runs_as_written(page, line, script, tiny_models, tmp_path):
    clone = fresh_clone(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(PYTHONPATH=ROOT, PATH=os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", ""))
    done = subprocess.run(["bash", "-c", runnable(script, str(tiny_models))], cwd=clone, env=env,
                          capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, f"{page}:{line}: smoke block failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert "Traceback" not in done.stderr, f"{page}:{line}:\n{done.stderr[-3000:]}"
    assert os.path.isdir(os.path.join(clone, "outputs"))  # every output landed where the commands said


def test_smoke_blocks_are_found_and_rewritten_only_in_the_models_folder():
    text = "intro\n<!-- smoke: x -->\n```bash\npython -m jobs.tiny_models --out outputs/tiny\n" \
           "python -m jobs.animate --base outputs/tiny/base \\\n    --out outputs/a\n```\n```bash\nnot marked\n```\n"
    (line, script), = smoke_blocks(text)
    assert line == 2
    assert runnable(script, "/m").splitlines()[1:] == ["python -m jobs.animate --base /m/base      --out outputs/a"]


def test_smoke_blocks_are_collected_from_the_readme_and_every_docs_page(tmp_path):
    blocks = all_smoke_blocks()
    assert {page for page, _, _ in blocks} >= {"README.md", "docs/training.md", "docs/evaluation.md"}
    assert any("jobs.animate" in script for page, _, script in blocks if page == "README.md")  # the first run
    assert {"docs", "jobs", "README.md"} <= set(os.listdir(fresh_clone(tmp_path)))  # the blocks' tree, docs/ too
