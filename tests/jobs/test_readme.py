"""The README's smoke commands run exactly as written, from the README text itself, so it cannot drift
from the code.

A smoke block is a ```bash block right after the line `<!-- smoke: ... -->`. Each runs as one bash script
(`set -e`) in a fresh "clone": a temporary folder holding links to the repository's files and no
`outputs/`, with this environment's `python` first on PATH. The one substitution: the tiny models' folder
(`outputs/tiny`) is the session's `tiny_models` fixture, so the block's own `python -m jobs.tiny_models`
line, which only writes that folder, is left out.
"""

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MARK = re.compile(r"^<!-- smoke\b.*-->$")
TINY = "outputs/tiny"


def smoke_blocks(text: str) -> list[tuple[int, str]]:
    """(line number, script) of every marked block."""
    lines, out = text.splitlines(), []
    for i, line in enumerate(lines):
        if MARK.match(line.strip()):
            assert lines[i + 1].strip() == "```bash", f"README line {i + 2}: a smoke mark must precede a ```bash block"
            end = lines.index("```", i + 2)
            out.append((i + 1, "\n".join(lines[i + 2 : end])))
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


@pytest.mark.slow  # every smoke run of the README, end to end
def test_readme_smoke_blocks_run_as_written(tiny_models, tmp_path):
    with open(os.path.join(ROOT, "README.md")) as f:
        blocks = smoke_blocks(f.read())
    assert len(blocks) >= 3, "the README's first run, training and evaluation smoke blocks"
    clone = fresh_clone(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(PYTHONPATH=ROOT, PATH=os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", ""))
    for line, script in blocks:
        done = subprocess.run(["bash", "-c", runnable(script, str(tiny_models))], cwd=clone, env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"README block at line {line} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        assert "Traceback" not in done.stderr, f"README block at line {line}:\n{done.stderr[-3000:]}"
    print(f"{len(blocks)} README smoke blocks ran")
    assert os.path.isdir(os.path.join(clone, "outputs"))  # every output landed where the commands said


def test_smoke_blocks_are_found_and_rewritten_only_in_the_models_folder():
    text = "intro\n<!-- smoke: x -->\n```bash\npython -m jobs.tiny_models --out outputs/tiny\n" \
           "python -m jobs.animate --base outputs/tiny/base \\\n    --out outputs/a\n```\n```bash\nnot marked\n```\n"
    (line, script), = smoke_blocks(text)
    assert line == 2
    assert runnable(script, "/m").splitlines()[1:] == ["python -m jobs.animate --base /m/base      --out outputs/a"]
