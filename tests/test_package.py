"""The package: a wheel that declares its dependencies and console scripts, and dependencies that
are all used and listed alike in requirements.txt and pyproject.toml."""

from __future__ import annotations

import email
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator

import pytest
from conftest import ROOT
from packaging.requirements import Requirement

from pneumo import audit_cli, evaluate_cli, train_cli

# How the package uses each dependency: the module it imports. torchvision is imported by timm,
# not by pneumo; it is pinned beside torch because an unpinned one would pull in another torch.
IMPORTED_AS = {
    "torch": "torch",
    "timm": "timm",
    "accelerate": "accelerate",
    "scikit-learn": "sklearn",
    "rich": "rich",
    "tensorboard": "torch.utils.tensorboard",
    "safetensors": "safetensors",
    "pyyaml": "yaml",
    "pillow": "PIL",
    "numpy": "numpy",
    "matplotlib": "matplotlib",
    "scipy": "scipy",
    "kornia": "kornia",
    "captum": "captum",
}
PINNED_ONLY = {"torchvision"}
SCRIPTS = {
    "pneumo-train": "pneumo.train_cli:main",
    "pneumo-evaluate": "pneumo.evaluate_cli:main",
    "pneumo-audit": "pneumo.audit_cli:main",
    "pneumo-export": "pneumo.export.cli:main",
}
EXTRAS = {
    "export": {"onnx", "onnxruntime"},
    "dicom": {"pydicom"},
    "wandb": {"wandb"},
    "mlflow": {"mlflow-skinny"},
}


def _requirements_txt() -> list[str]:
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    return [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]


def _normalised(requirements: list[str]) -> set[str]:
    return {str(Requirement(r)).lower() for r in requirements}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Iterator[zipfile.ZipFile]:
    """The wheel `pip wheel` builds from pyproject.toml (offline: no build isolation)."""
    # Built from a copy: an in-tree build would leave build/ and *.egg-info/ in the checkout.
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "pneumo", src / "pneumo", ignore=shutil.ignore_patterns("__pycache__"))
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp), str(src)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    (path,) = tmp.glob("pneumo-*.whl")
    with zipfile.ZipFile(path) as zf:
        yield zf


def _dist_info(wheel: zipfile.ZipFile, name: str) -> bytes:
    (path,) = [n for n in wheel.namelist() if n.endswith(f".dist-info/{name}")]
    return wheel.read(path)


def test_the_wheel_requires_exactly_requirements_txt(wheel):
    requires = email.message_from_bytes(_dist_info(wheel, "METADATA")).get_all("Requires-Dist")
    assert _normalised([r for r in requires if "extra ==" not in r]) == _normalised(_requirements_txt())


def test_the_wheel_declares_the_extras_and_requirements_dev_installs_them(wheel):
    metadata = email.message_from_bytes(_dist_info(wheel, "METADATA"))
    requires = [Requirement(r) for r in metadata.get_all("Requires-Dist")]
    for extra, names in EXTRAS.items():
        assert {r.name for r in requires if r.marker and r.marker.evaluate({"extra": extra})} == names
    dev = (ROOT / "requirements-dev.txt").read_text()
    assert all(re.search(rf"^{name}\b", dev, re.MULTILINE) for names in EXTRAS.values() for name in names)


def test_the_wheel_installs_the_console_scripts(wheel):
    entry_points = _dist_info(wheel, "entry_points.txt").decode()
    scripts = dict(re.findall(r"^(\S+) = (\S+)$", entry_points.split("[console_scripts]")[1], re.MULTILINE))
    assert scripts == SCRIPTS


def test_the_wheel_holds_every_module(wheel):
    modules = {n for n in wheel.namelist() if n.startswith("pneumo/")}
    assert modules == {p.relative_to(ROOT).as_posix() for p in (ROOT / "pneumo").rglob("*.py")}


def test_torch_and_torchvision_are_pinned():
    pins = {Requirement(r).name: str(Requirement(r).specifier) for r in _requirements_txt()}
    assert pins["torch"] == "==2.14.1" and pins["torchvision"] == "==0.29.1"


def test_every_dependency_is_used_by_the_package():
    names = {Requirement(r).name.lower() for r in _requirements_txt()}
    assert names == set(IMPORTED_AS) | PINNED_ONLY
    source = "\n".join(p.read_text() for p in (ROOT / "pneumo").rglob("*.py"))
    for name, module in IMPORTED_AS.items():
        assert re.search(rf"^\s*(from|import) {re.escape(module)}\b", source, re.MULTILINE), name


@pytest.mark.parametrize("main", [train_cli.main, evaluate_cli.main, audit_cli.main])
def test_cli_mains_answer_help(main, capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0 and capsys.readouterr().out.startswith("usage: ")
