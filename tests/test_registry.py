"""Comfy Registry readiness: the validator is clean, the archive holds what a ComfyUI user runs
and nothing else, the registry metadata is complete, and the version policy holds."""

from __future__ import annotations

import re
import subprocess
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import pytest
import tomllib
from registry_check import (
    ROOT,
    RegistryCheckError,
    changelog_headings,
    check_versions,
    pack,
    package_version,
    validate,
)

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
IS_GIT = (ROOT / ".git").exists()
needs_git = pytest.mark.skipif(not IS_GIT, reason="comfy node pack archives git-tracked files: needs a git checkout")


# --- the validator -------------------------------------------------------------------------------

def test_comfy_node_validate_prints_no_finding():
    out = validate()
    assert "All validation checks passed successfully" in out
    assert "warning" not in out.lower() and "error" not in out.lower(), out


def test_validate_reports_an_exec_finding(tmp_path):
    # the same check on a tiny pack with an exec: it must not pass (comfy-cli itself exits 0 on it)
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "p"\nversion = "1.0.0"\n')
    (tmp_path / "bad.py").write_text('exec("print(1)")\n')
    with pytest.raises(RegistryCheckError, match="S102"):
        validate(tmp_path)


# --- the archive ---------------------------------------------------------------------------------

def _package_dirs() -> set[str]:
    """Folders of the packages pyproject installs (instructav2av.X.Y -> X/Y; the root is '')."""
    root = PYPROJECT["tool"]["setuptools"]["package-dir"]["instructav2av"]
    assert root == ".", "the pack's root folder is the package"
    return {p.removeprefix("instructav2av").lstrip(".").replace(".", "/")
            for p in PYPROJECT["tool"]["setuptools"]["packages"]}


def _runs_in_comfyui(path: str, packages: set[str]) -> bool:
    """What a ComfyUI user's install needs: the rule .comfyignore implements, stated independently."""
    folder, _, name = path.rpartition("/")
    if path in {"__init__.py", "pyproject.toml", "requirements.txt", "README.md", "LICENSE"}:
        return True
    if folder in packages and folder and not name.startswith("."):  # package code and its data
        return True
    if not folder and name.endswith(".py"):  # modules at the package root (pipeline.py, ...)
        return True
    if re.fullmatch(r"workflows/[^/]+\.(json|jpg)|workflows/api/[^/]+\.json", path):
        return True
    return path.startswith("assets/demo/")


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    if not IS_GIT:
        pytest.skip("comfy node pack archives git-tracked files: needs a git checkout")
    return pack(tmp_path_factory.mktemp("pack"))


@needs_git
def test_archive_holds_what_a_comfyui_user_runs_and_nothing_else(archive):
    names = set(zipfile.ZipFile(archive).namelist())
    tracked = subprocess.run(["git", "-C", str(ROOT), "ls-files"], capture_output=True, text=True,
                             check=True).stdout.split()
    packages = _package_dirs()
    expected = {p for p in tracked if _runs_in_comfyui(p, packages)}
    assert not sorted(expected - names), f"missing from the archive: {sorted(expected - names)}"
    assert not sorted(names - expected), f"in the archive but not needed by a user: {sorted(names - expected)}"
    for top in ("tests/", "bench/", "docs/", ".github/", ".ci/"):
        assert not [n for n in names if n.startswith(top)], top
    # the pieces the issue names, explicitly
    for needed in ("__init__.py", "nodes/__init__.py", "assets/demo/editor.safetensors", "assets/demo/clip.mp4",
                   "workflows/instructav2av_demo_cpu.json", "workflows/instructav2av_demo_cpu.jpg",
                   "workflows/api/instructav2av_demo_cpu.json", "LICENSE", "requirements.txt"):
        assert needed in names, needed
    for workflow in (n for n in names if re.fullmatch(r"workflows/[^/]+\.json", n)):
        assert workflow[:-5] + ".jpg" in names, f"{workflow} has no thumbnail"


@needs_git
def test_readme_states_the_archive_size(archive):
    stated = re.search(r"archive is ([\d.]+) MB", (ROOT / "README.md").read_text())
    assert stated, "README.md must state the registry archive's size ('... archive is N MB ...')"
    size = archive.stat().st_size / 1e6
    assert abs(float(stated.group(1)) - size) <= max(0.5, 0.05 * size), (
        f"README says {stated.group(1)} MB, `comfy node pack` makes {size:.1f} MB: update README.md")


@needs_git
def test_pack_refuses_to_overwrite_a_node_zip_in_the_checkout(tmp_path):
    # a throwaway git checkout, so the real one's node.zip (if any) is never touched
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "pyproject.toml").write_text('[project]\nname = "p"\nversion = "1.0.0"\n')
    subprocess.run(["git", "-C", str(repo), "init", "-q"], check=True)
    subprocess.run(["git", "-C", str(repo), "add", "pyproject.toml"], check=True)
    (repo / "node.zip").write_bytes(b"the user's")
    with pytest.raises(RegistryCheckError, match="exists"):
        pack(tmp_path / "out", root=repo)
    assert (repo / "node.zip").read_bytes() == b"the user's"
    (repo / "node.zip").unlink()
    made = pack(tmp_path / "out", root=repo)
    assert zipfile.ZipFile(made).namelist() == ["pyproject.toml"] and not (repo / "node.zip").exists()


# --- registry metadata ---------------------------------------------------------------------------

def test_tool_comfy_metadata_is_complete_and_the_icon_ships():
    comfy = PYPROJECT["tool"]["comfy"]
    assert comfy["PublisherId"] and comfy["DisplayName"]
    repo = PYPROJECT["project"]["urls"]["Repository"]
    owner_repo = re.fullmatch(r"https://github\.com/([^/]+/[^/]+)", repo)
    assert owner_repo, repo
    # the registry takes a URL: the raw file on the default branch of this repository
    prefix = f"https://raw.githubusercontent.com/{owner_repo.group(1)}/main/"
    assert comfy["Icon"].startswith(prefix), comfy["Icon"]
    icon = ROOT / comfy["Icon"].removeprefix(prefix)
    assert icon.suffix in {".svg", ".png", ".jpg", ".gif"} and icon.is_file(), icon
    svg = ET.parse(icon).getroot()
    assert int(svg.get("width")) <= 800 and int(svg.get("height")) <= 400  # the registry's limit
    if IS_GIT:
        tracked = subprocess.run(["git", "-C", str(ROOT), "ls-files", "--error-unmatch", str(icon)],
                                 capture_output=True)
        assert tracked.returncode == 0, f"{icon} is not committed: the URL would not resolve"
    assert re.fullmatch(r"[A-Za-z][A-Za-z0-9]*(?:[-_.][A-Za-z0-9]+)*", PYPROJECT["project"]["name"])


def test_publish_workflow_uses_the_registry_action_on_a_version_change():
    text = (ROOT / ".github" / "workflows" / "publish.yml").read_text()
    assert "uses: Comfy-Org/publish-node-action@" in text
    assert "secrets.REGISTRY_ACCESS_TOKEN" in text
    assert '- "pyproject.toml"' in text and "registry_check.py release" in text


# --- the version policy --------------------------------------------------------------------------

def test_pyproject_version_has_a_changelog_heading():
    version = check_versions((ROOT / "pyproject.toml").read_text(), (ROOT / "CHANGELOG.md").read_text(),
                             package_version())
    assert version == PYPROJECT["project"]["version"]


PY = '[project]\nname = "instructav2av"\nversion = "{}"\n'
LOG = "# Changelog\n\n## Unreleased\n- b\n\n## 0.2.0 — 2026-12-08\n- a\n\n## 0.1.0 — 2026-11-01\n- first\n"


def test_version_policy_passes_a_consistent_release():
    assert check_versions(PY.format("0.2.0"), LOG, "0.2.0", release=True) == "0.2.0"
    assert changelog_headings(LOG) == {"0.2.0": "2026-12-08", "0.1.0": "2026-11-01"}


@pytest.mark.parametrize("version, log, package, release, message", [
    ("0.3.0", LOG, "0.3.0", False, "no '## 0.3.0"),  # bumped without a CHANGELOG entry
    ("0.1.0", LOG, "0.1.0", False, "later than"),  # the CHANGELOG is ahead of pyproject
    ("0.2.0", LOG, "0.1.0", False, "__version__"),  # __init__.py not bumped
    ("0.2", LOG, "0.2", False, "not X.Y.Z"),
    ("0.2.0", LOG.replace("0.2.0 — 2026-12-08", "0.2.0 — not yet published"), "0.2.0", True, "dated"),
    ("0.2.0", LOG + "\n## 0.2.0\n", "0.2.0", False, "two headings"),
])
def test_version_policy_refuses(version, log, package, release, message):
    with pytest.raises(RegistryCheckError, match=message):
        check_versions(PY.format(version), log, package, release=release)
