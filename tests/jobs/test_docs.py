"""The documentation site builds, and the README stays a front door that links into it.

`mkdocs build --strict` fails on any warning: a link to a page or an anchor that does not exist, a page in
docs/ missing from mkdocs.yml's nav (validation settings in mkdocs.yml). Fast: no Ray, no torch.
"""

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_the_docs_site_builds_strictly(tmp_path):
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert (tmp_path / "site" / "index.html").is_file()


def test_every_docs_page_is_in_the_nav():
    with open(os.path.join(ROOT, "mkdocs.yml")) as f:
        nav = f.read()
    pages = sorted(name for name in os.listdir(os.path.join(ROOT, "docs")) if name.endswith(".md"))
    assert [p for p in pages if f": {p}" not in nav] == []


def test_the_readme_is_a_front_door_whose_docs_links_resolve():
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    lines = text.splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines: move the reference into docs/"
    assert "make demo" in "\n".join(lines[:20]) and "make test" in "\n".join(lines[:20])  # the two commands at the top
    targets = [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t)]  # relative links only
    docs = [t for t in targets if t.startswith("docs/")]
    assert docs, "the README links into docs/"
    missing = [t for t in docs if not os.path.isfile(os.path.join(ROOT, t.split("#")[0]))]
    assert missing == [], f"README.md links to docs pages that do not exist: {missing}"
