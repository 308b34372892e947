"""The wheel installs everything under the one name herdbook, so a user's own ``db`` package
(or any other top-level ``feedback``, ``training``, ``streamlit_app``) cannot shadow ours."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_wheel_works_beside_a_users_own_db_package(tmp_path):
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-build-isolation", str(ROOT), "-w", tmp_path],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert "is absent from the `packages` configuration" not in built.stdout + built.stderr  # no wall of warnings
    (wheel,) = tmp_path.glob("herdbook-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "herdbook/training/tiny_tokenizer/vocab.json" in names  # the demo's tokenizer travels
    top_level = {name.split("/")[0] for name in names if not name.startswith("herdbook-")}
    assert top_level == {"herdbook"}, top_level
    assert "herdbook/app/main.py" in names and "herdbook/db/migrations/versions/0001_initial_schema.py" in names

    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", site, wheel], check=True
    )  # fmt: skip
    work = tmp_path / "users-project"
    (work / "db").mkdir(parents=True)
    (work / "db" / "__init__.py").write_text("USERS_OWN = True\n")
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "OXEN_CONFIG_DIR": str(tmp_path / "oxen")}

    def python(*args):
        return subprocess.run([sys.executable, *args], cwd=work, env=env, capture_output=True, text=True)

    imported = python(
        "-c",
        "import db, herdbook, herdbook.cli, herdbook.jobs, herdbook.db.models; "
        "assert db.USERS_OWN; print(herdbook.__file__)",
    )
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.strip().startswith(str(site))
    assert python("-m", "herdbook.cli", "init", "--home", "h").returncode == 0
    status = python("-m", "herdbook.cli", "status", "--home", "h")
    assert status.returncode == 0, status.stderr
    assert "candidates" in status.stdout
