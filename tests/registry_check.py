"""Comfy Registry checks: the validator, the published archive, and the version policy.

Standard library only, so the Makefile, the publish workflow and the tests can all run it:

    python tests/registry_check.py validate        # `comfy node validate`; exit 1 on any finding
    python tests/registry_check.py pack DIR        # `comfy node pack`, archive moved to DIR/
    python tests/registry_check.py release         # version, CHANGELOG heading and tag agree
    python tests/registry_check.py version [FILE]  # print [project] version (FILE '-' = stdin)

comfy-cli (a test extra) is run as ``python -m comfy_cli`` from this interpreter, with
``DO_NOT_TRACK`` and ``COMFY_NO_UPDATE_CHECK`` set: with both, `node validate` and `node pack`
make no network connection (checked under ``strace -e connect`` and in a network namespace
with no interfaces) and write nothing to the user's comfy-cli config.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ARCHIVE = "node.zip"  # comfy-cli writes this name into the current directory; it has no option
QUIET_ENV = {"DO_NOT_TRACK": "1", "COMFY_NO_UPDATE_CHECK": "1", "NO_COLOR": "1", "COLUMNS": "200"}
CLEAN = "All validation checks passed successfully"

_VERSION = re.compile(r"^\d+\.\d+\.\d+$")  # the registry wants semantic X.Y.Z
# "## 0.2.0 - 2026-12-08", "## [0.2.0] — 2026-12-08", "## 0.1.0 — not yet published"
_HEADING = re.compile(r"^##\s+\[?(\d+\.\d+\.\d+)\]?(?:\s+[-—–]\s+(.+?))?\s*$", re.M)
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class RegistryCheckError(RuntimeError):
    """A registry check failed; the message says what to change."""


def project_version(pyproject_text: str) -> str:
    """The ``version`` of the ``[project]`` table (without needing tomllib on Python 3.10)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: the [project] table's own `version = "..."` line
        table = re.search(r"^\[project\]\s*$(.*?)(?=^\[|\Z)", pyproject_text, re.M | re.S)
        found = table and re.search(r'^version\s*=\s*"([^"]*)"', table.group(1), re.M)
        if not found:
            raise RegistryCheckError("pyproject.toml: no [project] version") from None
        return found.group(1)
    version = tomllib.loads(pyproject_text).get("project", {}).get("version")
    if not isinstance(version, str):
        raise RegistryCheckError("pyproject.toml: no [project] version")
    return version


def changelog_headings(changelog_text: str) -> dict[str, str]:
    """Version -> what follows it on its ``## X.Y.Z`` heading (a date, or a note; '' if none)."""
    headings: dict[str, str] = {}
    for version, rest in _HEADING.findall(changelog_text):
        if version in headings:
            raise RegistryCheckError(f"CHANGELOG.md: two headings for {version}")
        headings[version] = rest
    return headings


def check_versions(pyproject_text: str, changelog_text: str, package_version: str, *,
                   release: bool = False) -> str:
    """Check the version policy and return the version.

    Always: ``[project] version`` is X.Y.Z, equals the package's ``__version__``, has a
    ``## X.Y.Z`` CHANGELOG heading, and no heading names a later version. With ``release``
    (the publish workflow), the heading must also carry the release date: publishing a
    version whose entry still says "not yet published" is refused.
    """
    version = project_version(pyproject_text)
    if not _VERSION.match(version):
        raise RegistryCheckError(f"pyproject.toml: version {version!r} is not X.Y.Z (semantic, as the registry needs)")
    if package_version != version:
        raise RegistryCheckError(f"__init__.py says __version__ = {package_version!r} but pyproject.toml says "
                                 f"{version!r}; bump them together")
    headings = changelog_headings(changelog_text)
    if version not in headings:
        raise RegistryCheckError(f"CHANGELOG.md has no '## {version} — YYYY-MM-DD' heading for pyproject's version "
                                 f"{version}: rename '## Unreleased' to it in the commit that bumps the version")
    later = [v for v in headings if _key(v) > _key(version)]
    if later:
        raise RegistryCheckError(f"CHANGELOG.md has headings for {later}, later than pyproject's version {version}")
    if release and not _DATE.match(headings[version] or ""):
        raise RegistryCheckError(f"CHANGELOG.md: '## {version}' must be dated ('## {version} — YYYY-MM-DD') "
                                 f"before it is published, not {headings[version]!r}")
    return version


def _key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


def package_version(root: Path = ROOT) -> str:
    """``__version__`` from the package's ``__init__.py``, read as text (importing needs torch)."""
    found = re.search(r'^__version__\s*=\s*"([^"]*)"', (root / "__init__.py").read_text(), re.M)
    if not found:
        raise RegistryCheckError("__init__.py: no __version__")
    return found.group(1)


def check_release_tag(version: str, root: Path = ROOT) -> None:
    """A ``vX.Y.Z`` tag that already exists must point at HEAD: a version is published once."""
    tag = f"v{version}"
    found = _git(root, "rev-parse", "-q", "--verify", f"refs/tags/{tag}^{{commit}}", check=False)
    if found and found != _git(root, "rev-parse", "HEAD"):
        raise RegistryCheckError(f"tag {tag} already exists on another commit ({found[:12]}): bump the version")


def comfy(args: list[str], cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """Run comfy-cli from this interpreter, without telemetry, update check or prompts."""
    try:
        import comfy_cli  # noqa: F401  (only to give a clear error when it is missing)
    except ModuleNotFoundError:
        raise RegistryCheckError(f"comfy-cli is not installed for {sys.executable}: "
                                 "pip install -e '.[test]' (or pip install comfy-cli)") from None
    env = {**os.environ, **QUIET_ENV}
    return subprocess.run([sys.executable, "-m", "comfy_cli", "--skip-prompt", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def validate(root: Path = ROOT) -> str:
    """``comfy node validate``; returns its output, raises on any finding or failure.

    comfy-cli 1.23 exits 0 even when its security scan (ruff S102 exec, S307 eval, E702 two
    statements on a line, over every file in the checkout) finds something, so the output is
    read: anything besides its progress lines and the all-clear line is a finding.
    """
    done = comfy(["node", "validate"], cwd=root)
    out = (done.stdout + done.stderr).strip()
    expected = {"Validating node configuration...", "Running security checks..."}
    rest = [line for line in out.splitlines() if line.strip() and line.strip() not in expected]
    # the all-clear is printed after "Running security checks..." (sometimes on the same line)
    clean = len(rest) == 1 and rest[0].endswith(CLEAN) and rest[0].startswith(("✓", "Running security checks..."))
    if done.returncode != 0 or not clean:
        raise RegistryCheckError(f"comfy node validate (exit {done.returncode}) reported:\n{out}")
    return out


def pack(dest: Path, root: Path = ROOT) -> Path:
    """Build the registry archive with ``comfy node pack`` and move it to ``dest/node.zip``.

    comfy-cli always writes ``node.zip`` into the checkout, so a ``node.zip`` already there
    (the user's) is refused rather than overwritten, and concurrent packs of one checkout are
    serialised by a lock file in the temporary directory.
    """
    if not (root / ".git").exists():
        raise RegistryCheckError(f"{root} is not a git checkout: comfy node pack archives git-tracked files")
    dest.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha1(str(root).encode()).hexdigest()[:12]
    with open(Path(tempfile.gettempdir()) / f"instructav2av-pack-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        made = root / ARCHIVE
        if made.exists():
            raise RegistryCheckError(f"{made} exists; comfy node pack would overwrite it: move it away first")
        try:
            done = comfy(["node", "pack"], cwd=root)
            if done.returncode != 0 or not made.is_file():
                raise RegistryCheckError(f"comfy node pack failed (exit {done.returncode}):\n{done.stdout}{done.stderr}")
            target = dest / ARCHIVE
            shutil.move(made, target)
        finally:
            made.unlink(missing_ok=True)
    return target


def _git(root: Path, *args: str, check: bool = True) -> str:
    done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True)
    if check and done.returncode != 0:
        raise RegistryCheckError(f"git {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout.strip() if done.returncode == 0 else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("validate", help="comfy node validate; exit 1 on any finding")
    p = sub.add_parser("pack", help="comfy node pack into DIR/node.zip and print its size")
    p.add_argument("dir", type=Path)
    sub.add_parser("release", help="the version policy, strictly (dated heading, tag) as the publish workflow runs it")
    sub.add_parser("check", help="the version policy as the tests run it")
    p = sub.add_parser("version", help="print the [project] version of pyproject.toml (or FILE, '-' for stdin)")
    p.add_argument("file", nargs="?", default=str(ROOT / "pyproject.toml"))
    args = parser.parse_args(argv)
    try:
        if args.command == "validate":
            print(validate())
        elif args.command == "pack":
            path = pack(args.dir)
            print(f"{path}: {path.stat().st_size / 1e6:.1f} MB")
        elif args.command in ("release", "check"):
            version = check_versions((ROOT / "pyproject.toml").read_text(), (ROOT / "CHANGELOG.md").read_text(),
                                     package_version(), release=args.command == "release")
            if args.command == "release":
                check_release_tag(version)
            print(version)
        else:
            print(project_version(sys.stdin.read() if args.file == "-" else Path(args.file).read_text()))
    except RegistryCheckError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
