"""The course's GitHub repository in one place, and the rewrite that makes a fork point to itself.

    python tools/fork.py check                           # every link agrees with [tool.course]
    python tools/fork.py rewrite owner/name [--branch main]   # `make fork REPO=owner/name`

`[tool.course]` in pyproject.toml names the repository (`owner/name`) and its branch. Three kinds
of link depend on it: the Colab badges (`colab.research.google.com/github/<repo>/blob/<branch>/...`),
the install cell's `pip install "... @ git+https://github.com/<repo>"` and the README's
`git clone https://github.com/<repo>`. `rewrite` changes them in every text file of the course
(notebooks, README, CONTRIBUTING, tests), then the setting itself; `check` lists every link that
disagrees with the setting. Links to other projects (anomalib, papers) are left alone.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
SUFFIXES = {".md", ".ipynb", ".py", ".toml", ".yml", ".yaml", ".txt", ".cfg"}
SKIP_DIRS = {".git", ".venv", "build", "data", "node_modules", "vendor", ".pytest_cache", "__pycache__"}
EXAMPLES = {"tests/test_fork.py", "tests/test_site.py"}  # hold other repositories' links on purpose
SLUG = r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+?"
COLAB = re.compile(rf"colab\.research\.google\.com/github/({SLUG})/blob/([A-Za-z0-9_.-]+)/([^\s)\"'\\]*)")
PIP = re.compile(rf"git\+https://github\.com/({SLUG})(?:\.git)?(?:@([\w./-]+))?(?=[\"'\s\\]|$)")
CLONE = re.compile(rf"git clone https://github\.com/({SLUG})(?:\.git)?(?=\s|$)")
SECTION = re.compile(r"^\[tool\.course\]\s*$", re.M)


@dataclass(frozen=True)
class Course:
    """Where the course lives on GitHub: `slug` is `owner/name`, `branch` the one Colab opens."""

    slug: str
    branch: str = "main"

    @property
    def url(self) -> str:
        """The repository's web address."""
        return f"https://github.com/{self.slug}"

    @property
    def name(self) -> str:
        """The repository's name: the folder `git clone` makes."""
        return self.slug.split("/")[1]

    def colab(self, path: str) -> str:
        """The Colab link that opens `path` (e.g. `notebooks/01_x.ipynb`) from this repository."""
        return f"https://colab.research.google.com/github/{self.slug}/blob/{self.branch}/{path}"

    @property
    def pip(self) -> str:
        """What the install cell gives pip after `@`: this repository (at `branch` unless it is main)."""
        return f"git+{self.url}" + ("" if self.branch == "main" else f"@{self.branch}")


def configured(root: Path = REPO) -> Course:
    """The `[tool.course]` setting of `root/pyproject.toml`; ValueError saying what to add if it is missing."""
    table = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8")).get("tool", {}).get("course", {})
    if "repository" not in table:
        raise ValueError(f"{root / 'pyproject.toml'} has no [tool.course] repository = \"owner/name\"; add it")
    return Course(valid_slug(table["repository"]), table.get("branch", "main"))


def valid_slug(slug: str) -> str:
    """`slug` if it looks like `owner/name`, else ValueError with an example."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+", slug or "") or slug.endswith(".git"):
        raise ValueError(f"{slug!r} is not a GitHub repository; write it as owner/name, e.g. REPO=jane/anomaly-course")
    return slug


def text_files(root: Path) -> list[Path]:
    """The course's text files under `root` (links live there); build outputs, data and the venv are skipped."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not (Path(folder) / d).is_symlink())
        found += [Path(folder) / f for f in sorted(files) if Path(f).suffix in SUFFIXES
                  and (Path(folder) / f).relative_to(root).as_posix() not in EXAMPLES]
    return found


def links(text: str) -> list[tuple[str, str, str | None]]:
    """Every course link in `text` as (kind, repository, branch or None): kinds colab, pip, clone."""
    return ([("colab", m.group(1), m.group(2)) for m in COLAB.finditer(text)]
            + [("pip", m.group(1), m.group(2) or "main") for m in PIP.finditer(text)]
            + [("clone", m.group(1), None) for m in CLONE.finditer(text)])


def disagreements(root: Path = REPO) -> list[str]:
    """One line per course link under `root` that does not point to the configured repository and branch.

    A Colab link must also name a notebook that exists, so a badge cannot point to a renamed lab.
    """
    course, found = configured(root), []
    for path in text_files(root):
        text = path.read_text(encoding="utf-8")
        for kind, slug, branch in links(text):
            if slug != course.slug or (branch is not None and branch != course.branch):
                found.append(f"{path.relative_to(root)}: {kind} link to {slug}@{branch} (configured: "
                             f"{course.slug}@{course.branch})")
        for match in COLAB.finditer(text):
            target = match.group(3)
            if re.fullmatch(r"notebooks/\d\d_[\w.-]+\.ipynb", target) and not (root / target).is_file():
                found.append(f"{path.relative_to(root)}: Colab link to {match.group(3)}, which does not exist")
    return found


def rewrite_text(text: str, old: Course, new: Course) -> str:
    """`text` with every link to the `old` repository pointing to the `new` one (other links untouched)."""
    text = COLAB.sub(lambda m: new.colab(m.group(3)).removeprefix("https://") if m.group(1) == old.slug
                     else m.group(0), text)
    text = PIP.sub(lambda m: new.pip if m.group(1) == old.slug else m.group(0), text)
    text = CLONE.sub(lambda m: f"git clone {new.url}" if m.group(1) == old.slug else m.group(0), text)
    return re.sub(rf"(git clone {re.escape(new.url)}\s*\n)cd {re.escape(old.name)}\b", rf"\1cd {new.name}", text)


def set_configured(root: Path, new: Course) -> None:
    """Write `new` into `[tool.course]` of `root/pyproject.toml`, keeping the rest of the file as it is."""
    path = root / "pyproject.toml"
    text = path.read_text(encoding="utf-8")
    start = SECTION.search(text)
    if start is None:
        raise ValueError(f"{path} has no [tool.course] table; add one with repository = \"owner/name\"")
    end = re.compile(r"^\[", re.M).search(text, start.end())
    end = end.start() if end else len(text)
    table = re.sub(r'^repository\s*=\s*"[^"]*"', f'repository = "{new.slug}"', text[start.end():end], flags=re.M)
    table = re.sub(r'^branch\s*=\s*"[^"]*"', f'branch = "{new.branch}"', table, flags=re.M)
    path.write_text(text[:start.end()] + table + text[end:], encoding="utf-8")


def rewrite(root: Path, slug: str, branch: str | None = None) -> list[Path]:
    """Point every course link under `root` to `slug` (and `branch`), then save the setting; return changed files."""
    old = configured(root)
    new = Course(valid_slug(slug), branch or old.branch)
    changed = []
    for path in text_files(root):
        text = path.read_text(encoding="utf-8")
        updated = rewrite_text(text, old, new)
        if updated != text:
            path.write_text(updated, encoding="utf-8")
            changed.append(path)
    set_configured(root, new)
    return changed


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, check or rewrite, return the exit status (1 with a message on failure)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("check", help="list links that disagree with [tool.course]")
    rew = sub.add_parser("rewrite", help="point every course link to another repository")
    rew.add_argument("repo", help="owner/name of your fork on GitHub")
    rew.add_argument("--branch", default=None, help="the branch Colab opens (default: keep the configured one)")
    parser.add_argument("--root", type=Path, default=REPO, help="the course folder (default: this one)")
    args = parser.parse_args(argv)
    try:
        if args.command == "rewrite":
            changed = rewrite(args.root, args.repo, args.branch)
            print(f"{len(changed)} file(s) now point to {configured(args.root).url}:")
            print("\n".join(f"  {p.relative_to(args.root)}" for p in changed))
        problems = disagreements(args.root)
        print("\n".join(problems) or f"every course link points to {configured(args.root).url} "
                                    f"(branch {configured(args.root).branch})")
        return 1 if problems else 0
    except (ValueError, OSError) as err:
        print(f"fork.py {args.command}: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
