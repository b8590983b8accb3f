"""The package as a new user meets it: importing from the source tree, the sdist."""
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

import fastnn


def test_importing_the_source_tree_says_what_to_do(tmp_path):
    """`import fastnn` inside a clone (no compiled extension there) explains itself instead
    of "cannot import name '_native' from partially initialized module"."""
    source = Path(fastnn.__file__).parent
    shutil.copytree(source, tmp_path / "fastnn",
                    ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__", "_native.c"))
    # an editable install's finder would find the extension elsewhere: leave it out
    code = ("import sys; sys.meta_path[:] = [f for f in sys.meta_path "
            "if 'editable' not in repr(f).lower()]; import fastnn")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: fastnn's compiled extension (fastnn._native) is not "
                           f"in {tmp_path / 'fastnn'}: this is the source tree"), proc.stderr
    assert "pip install ." in last and "build_ext --inplace" in last


def tar_member(path, name):
    """The text of the member `name` (below the sdist's top folder) of the tarball `path`."""
    with tarfile.open(path) as tar:
        member = next(m for m in tar.getmembers() if m.name.split("/", 1)[-1] == name)
        return tar.extractfile(member).read().decode()


def test_the_sdist_carries_the_license_and_everything_its_tests_need(tmp_path):
    root = Path(__file__).resolve().parent.parent
    if not (root / "pyproject.toml").exists():
        pytest.skip("not run from a source tree")
    proc = subprocess.run([sys.executable, "-m", "build", "--sdist", "--outdir", str(tmp_path),
                           str(root)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (sdist,) = tmp_path.glob("fastnn-*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    tests = {p.relative_to(root).as_posix() for p in (root / "tests").glob("*.py")}
    bench = {p.relative_to(root).as_posix() for p in (root / "bench").glob("*.py")}
    csrc = {p.relative_to(root).as_posix() for p in (root / "csrc").glob("*.[ch]")}
    assert {"LICENSE", "README.md", "pyproject.toml", "setup.py"} <= names
    assert tests | bench | csrc <= names, sorted((tests | bench | csrc) - names)
    metadata = tar_member(sdist, "PKG-INFO")
    assert "License-Expression: MIT" in metadata and "Classifier:" in metadata
    assert "Author: the fastnn developers" in metadata



def readme_python_blocks():
    root = Path(__file__).resolve().parent.parent
    readme = root / "README.md"
    if not readme.exists():
        return []
    blocks, current, start = [], None, 0
    for number, line in enumerate(readme.read_text().splitlines(), 1):
        if current is None and line.strip() == "```python":
            current, start = [], number
        elif current is not None and line.strip() == "```":
            blocks.append(pytest.param("\n".join(current) + "\n", id=f"line{start}"))
            current = None
        elif current is not None:
            current.append(line)
    return blocks


@pytest.mark.parametrize("code", readme_python_blocks())
def test_every_readme_python_block_runs_as_written(tmp_path, code):
    """Each ```python block of the README, in a fresh process in an empty folder."""
    if "distributed" in code:
        pytest.importorskip("mpi4py", reason="the distributed example needs mpi4py")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
