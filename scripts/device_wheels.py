"""Wheels for the lent GPU machine: openai and tenacity, and everything they need to install, at the versions
this environment has, into .whl/ (kept out of git), which a device call carries and scripts/device_env.sh
installs there. That machine runs Python 3.12 on Linux x86-64 and reaches no package registry.

The versions come from this environment, not from the registry's newest: a hand-picked list once got a newer
openai than this environment's, which needed a package (httpx2) the list lacked, and the device call failed on
import. Pinned to what the tests here ran against, the GPU runs the same client.

    .venv/bin/python scripts/device_wheels.py            # (re)fills .whl/
    .venv/bin/python scripts/device_wheels.py --list     # what it would fetch, fetching nothing
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOTS = ("openai", "tenacity")  # what the lent machine lacks (its torch, triton and jinja2 are its own)
# The lent machine's interpreter and platform, for the requirements' markers and for pip's wheel tags.
DEVICE_MARKERS = {"python_version": "3.12", "python_full_version": "3.12.0", "sys_platform": "linux",
                  "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
                  "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64")


def needed(roots=ROOTS) -> dict[str, str]:
    """Each distribution the roots need to install on the lent machine (theirs, their needs', ...): its
    canonical name and the version installed here. A need this environment lacks is an error: its version
    would be a guess."""
    found: dict[str, str] = {}
    todo = [Requirement(r) for r in roots]
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in found or (req.marker is not None and not req.marker.evaluate(DEVICE_MARKERS)):
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            raise SystemExit(f"{name} is not installed here, so its version for the GPU machine is unknown: "
                             f"install it (or kgen's dependencies: scripts/bootstrap) and run this again") from None
        found[name] = dist.version
        todo += [Requirement(r) for r in dist.requires or []]
    return dict(sorted(found.items()))


def download(pins: dict[str, str], dest: Path) -> None:
    """The wheels for Python 3.12 on Linux x86-64, afresh: one version of each (two stop the install there)."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--implementation", "cp", *platforms, "-d", str(dest),
                    *(f"{name}=={version}" for name, version in pins.items())], check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=Path(__file__).resolve().parents[1] / ".whl")
    parser.add_argument("--list", action="store_true", help="print the pins, fetch nothing")
    args = parser.parse_args()
    pins = needed()
    print("\n".join(f"{name}=={version}" for name, version in pins.items()))
    if not args.list:
        download(pins, args.dest)
        print(f"{len(list(args.dest.glob('*.whl')))} wheels in {args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
