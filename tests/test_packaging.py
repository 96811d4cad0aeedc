"""The package as users install it: a wheel in a fresh environment finds its presets and embedded
model, and ``import vidcache`` stays light."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parent.parent


def test_import_vidcache_loads_no_torch():
    code = ("import sys, vidcache, vidcache.cli, vidcache.presets, vidcache.models; "
            "print(sorted({'torch', 'diffusers'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", *isolation, "-w", str(out),
                    str(ROOT)], check=True, capture_output=True, timeout=300)
    (found,) = out.glob("vidcache-*.whl")
    return found


def test_wheel_ships_presets_and_the_embedded_model(wheel):
    import zipfile

    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {f"vidcache/presets/{p.name}" for p in (ROOT / "presets").glob("*.toml")}
    assert shipped and shipped <= names
    assert "vidcache/assets/tiny/model_index.json" in names
    assert {f"vidcache/page/page.{ext}" for ext in ("html", "css", "js")} <= names  # vidcache report's template
    assert not any(n.startswith("presets/") for n in names)  # no stray top-level package


def test_installed_wheel_reads_its_presets(wheel, tmp_path):
    """A fresh venv with only the wheel installed (its dependencies reached through a path file to
    this interpreter's site-packages, whose own .pth files, this checkout's editable install among
    them, are not run): ``vidcache presets tiny`` prints the shipped file, read from the wheel."""
    import site
    import sysconfig

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # the wheel first, while the venv sees nothing else (a vidcache found on the path would count as
    # installed and be skipped), then the path file to the dependencies
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--quiet", "--no-deps",
                    "--no-index", str(wheel)], check=True, capture_output=True, timeout=300, env=env)
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    deps = [*site.getsitepackages(), sysconfig.get_paths()["purelib"]]
    (Path(purelib) / "deps-of-the-test-interpreter.pth").write_text("\n".join(dict.fromkeys(deps)) + "\n")
    where = subprocess.run([str(py), "-c", "import vidcache.presets as p; print(p.PRESET_DIR)"], cwd=tmp_path,
                           env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).is_relative_to(venv), where  # the installed copy, not this checkout's
    out = subprocess.run([str(py), "-m", "vidcache", "presets", "tiny", "--json"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    shipped = tomllib.loads((ROOT / "presets" / "tiny.toml").read_text())
    import json

    assert json.loads(out.stdout)["tiny"]["defaults"] == shipped["defaults"]
