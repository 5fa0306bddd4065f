"""What CI installs is pinned: each package of reconcile-imports[dev] (the distribution; its
console script is ``reconcile``) has its version in constraints.txt."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

CONSTRAINTS = Path(__file__).resolve().parent.parent / "constraints.txt"
DISTRIBUTION = "reconcile-imports"


def _pins() -> dict[str, str]:
    pins = {}
    for text in CONSTRAINTS.read_text().splitlines():
        line = text.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not pinned with =="
            pins[canonicalize_name(name)] = version
    return pins


def _closure(root: str, extras: set[str]) -> dict[str, str]:
    """Every installed distribution that ``root[extras]`` requires, directly or not."""
    found: dict[str, str] = {}
    pending = [(root, extras)]
    while pending:
        name, wanted = pending.pop()
        distribution = metadata.distribution(name)
        for text in distribution.requires or []:
            requirement = Requirement(text)
            marker = requirement.marker
            environments = [{"extra": extra} for extra in wanted or {""}]
            if marker is not None and not any(marker.evaluate(env) for env in environments):
                continue
            key = canonicalize_name(requirement.name)
            if key == canonicalize_name(root):
                pending.append((root, set(requirement.extras)))
                continue
            if key not in found:
                found[key] = metadata.version(requirement.name)
                pending.append((requirement.name, set(requirement.extras)))
    return found


def test_every_installed_dependency_is_pinned() -> None:
    """Each package of reconcile-imports[dev] is installed at the version constraints.txt pins."""
    pins = _pins()
    installed = _closure(DISTRIBUTION, {"dev"})
    assert installed, f"{DISTRIBUTION}[dev] is not installed"
    unpinned = sorted(set(installed) - set(pins))
    assert not unpinned, f"add to constraints.txt (pip freeze): {unpinned}"
    drifted = {
        name: (version, pins[name]) for name, version in installed.items() if version != pins[name]
    }
    assert not drifted, f"installed (left) differs from constraints.txt (right): {drifted}"


def test_ci_and_the_image_install_with_the_constraints() -> None:
    """.ci/run and the Dockerfile both pass constraints.txt to pip."""
    root = CONSTRAINTS.parent
    assert re.search(r"pip install .*-c constraints\.txt", (root / ".ci" / "run").read_text())
    # The image's pip installs into a virtual environment of its own: pip --python ... install.
    dockerfile = (root / "Dockerfile").read_text()
    assert re.search(r"pip (--python \S+ )?install .*-c constraints\.txt", dockerfile)


def test_the_pins_are_sorted_case_insensitively() -> None:
    """constraints.txt lists its pins in case-insensitive order, so a new one has one place."""
    pins = [line for text in CONSTRAINTS.read_text().splitlines() if (line := text.split("#")[0])]
    assert pins == sorted(pins, key=str.lower)  # whole lines, as pip freeze sorts them


def test_the_installed_distribution_is_this_package() -> None:
    """pyproject.toml's version is the package's (``reconcile --version``), and the distribution
    installed provides the ``reconcile`` script."""
    import tomllib

    import reconciler

    project = tomllib.loads((CONSTRAINTS.parent / "pyproject.toml").read_text())["project"]
    assert (project["name"], project["version"]) == (DISTRIBUTION, reconciler.__version__)
    distribution = metadata.distribution(DISTRIBUTION)
    scripts = {e.name: e.value for e in distribution.entry_points if e.group == "console_scripts"}
    assert scripts == {"reconcile": "reconciler.cli:main"}
