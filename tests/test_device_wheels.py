"""scripts/device_wheels.py: the wheels the lent GPU machine needs, pinned to this environment's versions."""
import importlib.util
import subprocess
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

pytestmark = pytest.mark.interpreter_free
ROOT = Path(__file__).resolve().parents[1]


def load_script():
    spec = importlib.util.spec_from_file_location("device_wheels", ROOT / "scripts" / "device_wheels.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_pins_are_this_environments_versions_of_everything_openai_and_tenacity_install():
    """Every need of a pinned distribution whose marker holds on the GPU machine (Python 3.12, Linux) is pinned too,
    at the version installed here; extras and other platforms' needs are left out."""
    wheels = load_script()
    pins = wheels.needed()
    assert pins["openai"] == metadata.version("openai") and pins["tenacity"] == metadata.version("tenacity")
    left_out = []
    for name in pins:
        assert pins[name] == metadata.version(name)
        for text in metadata.requires(name) or []:
            need = Requirement(text)
            if need.marker is None or need.marker.evaluate(wheels.DEVICE_MARKERS):
                assert canonicalize_name(need.name) in pins, f"{name} needs {need.name}"
            else:
                left_out.append(canonicalize_name(need.name))
    # openai's extras (its data extra needs numpy and pandas) are read and left off the machine
    assert {"numpy", "pandas"} <= set(left_out) and {"numpy", "pandas"}.isdisjoint(pins)
    assert {"torch", "triton", "jinja2"}.isdisjoint(pins)  # the machine's own


def test_a_need_not_installed_here_stops_with_what_to_do():
    wheels = load_script()
    with pytest.raises(SystemExit, match="not-a-real-kgen-dependency is not installed here.*scripts/bootstrap"):
        wheels.needed(("tenacity", "not-a-real-kgen-dependency"))


def test_the_download_asks_pip_for_exactly_the_pins_as_python_312_linux_wheels(tmp_path, monkeypatch):
    """pip itself is not run here (it would need the registry): the command it would get, and a fresh folder."""
    wheels = load_script()
    dest = tmp_path / ".whl"
    dest.mkdir()
    (dest / "openai-0.0.1-py3-none-any.whl").write_text("")  # a stale version: two of one package stop the install
    commands = []
    monkeypatch.setattr(subprocess, "run", lambda command, check: commands.append(command))
    wheels.download({"openai": "3.57.0", "jiter": "0.19.0"}, dest)
    [command] = commands
    assert dest.is_dir() and not any(dest.iterdir())
    assert command[-2:] == ["openai==3.57.0", "jiter==0.19.0"]
    assert ["--python-version", "3.12"] == command[command.index("--python-version"):][:2]
    assert "--no-deps" in command and "--only-binary=:all:" in command and str(dest) in command
    assert "manylinux2014_x86_64" in command
