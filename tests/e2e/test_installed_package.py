"""The released wheel installs into a fresh virtual environment with every extra through
plain pip resolution (PyPI plus the built wheel, no --no-deps), its entry points answer
--version, and the demo runs against the INSTALLED package (issue 12 item 5, ADR 0021).

How the demo runs from the install: the devnet and code generators are not in the production
wheel, so the test environment gets one development-only addition, a ``.pth`` file that
installs a meta-path finder serving exactly ``bridge.devnet`` (and its submodules) from the
checkout. Everything else, in the demo process and in every daemon it spawns, is imported
from site-packages: the demo runs from a directory outside the checkout with
PYTHONSAFEPATH=1, so no source directory is ever on sys.path (asserted). The chaincode server
runs in a second fresh environment installed from contracts/fabric/requirements.txt, which
proves the chaincode's declared dependencies suffice.

Cost: about 30 s to build; the two environments install concurrently from PyPI (1 to 4
minutes on our loaded 2-core machine with a warm pip cache, dominated by index queries; the
first install on a new machine also downloads ~80 wheels); the demo takes 1-2 minutes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bridge.devnet.processes import REPO_ROOT

# pytest-timeout's 20-minute backstop (pyproject.toml) leaves too little room here: this module
# builds a wheel, creates venvs and installs about 80 wheels (its own limits add up past 20 minutes).
pytestmark = [pytest.mark.e2e, pytest.mark.ops, pytest.mark.fabric, pytest.mark.timeout(3600)]

EXTRAS = "evm,fabric,cometbft,hsm,postgres,tracing"
ENTRY_POINTS = ("bridge", "bridge-coordinator", "bridge-relayer", "bridge-verifier")
PY311 = shutil.which("python3.11") or sys.executable

FINDER = """
# Development only (tests/e2e/test_installed_package.py): bridge.devnet from the checkout.
import importlib.abc, importlib.machinery, sys

class _DevnetFromCheckout(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "bridge.devnet":
            return None
        return importlib.machinery.PathFinder.find_spec(name, [{src!r}])

sys.meta_path.insert(0, _DevnetFromCheckout())
"""

CHECK = """
import sys, bridge, bridge.v1, bridge.devnet, bridge.ledgers.evm.artifacts as art
assert "site-packages" in bridge.__file__ and "site-packages" in bridge.v1.__file__
assert "site-packages" in str(art.ARTIFACTS_DIR), art.ARTIFACTS_DIR
assert bridge.devnet.__file__.startswith({src!r}), bridge.devnet.__file__
assert not any(p.startswith({root!r}) for p in sys.path), sys.path
print("ok")
"""


def _run(argv: list[str], timeout: float, **kw: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, check=False, **kw
    )
    assert result.returncode == 0, (argv, result.stdout[-4000:], result.stderr[-4000:])
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    _run(
        [
            sys.executable,
            "-m",
            "build",
            "--no-isolation",  # sdist, then the wheel built from the sdist (as make release)
            "--outdir",
            str(out),
            str(REPO_ROOT),
        ],
        timeout=300,
    )
    (built,) = out.glob("kstb-*.whl")
    return built


class ChaincodeEnv:
    """The chaincode server's environment, installed from contracts/fabric/requirements.txt
    in the background while the wheel's environment installs (both mostly wait on PyPI)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        _run([PY311, "-m", "venv", str(root)], timeout=120)
        self._proc = subprocess.Popen(
            [
                str(root / "bin" / "pip"),
                "install",
                "--disable-pip-version-check",
                "-q",
                "-r",
                str(REPO_ROOT / "contracts" / "fabric" / "requirements.txt"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def wait(self) -> Path:
        out, _ = self._proc.communicate(timeout=900)
        assert self._proc.returncode == 0, out[-4000:]
        return self.root


@pytest.fixture(scope="module")
def chaincode_env(tmp_path_factory: pytest.TempPathFactory) -> ChaincodeEnv:
    return ChaincodeEnv(tmp_path_factory.mktemp("ccvenv") / "chaincode")


@pytest.fixture(scope="module")
def venv(
    wheel: Path, chaincode_env: ChaincodeEnv, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    env_dir = tmp_path_factory.mktemp("venv") / "kstb"
    _run([PY311, "-m", "venv", str(env_dir)], timeout=120)
    site = next((env_dir / "lib").glob("python3*/site-packages"))
    (site / "_kstb_devnet_from_checkout.py").write_text(
        FINDER.format(src=str(REPO_ROOT / "bridge"))
    )
    (site / "_kstb_devnet_from_checkout.pth").write_text("import _kstb_devnet_from_checkout\n")
    started = time.monotonic()
    _run(
        [
            str(env_dir / "bin" / "pip"),
            "install",
            "--disable-pip-version-check",
            "-q",
            f"{wheel}[{EXTRAS}]",
        ],
        timeout=900,
    )
    print(f"wheel install with [{EXTRAS}]: {time.monotonic() - started:.1f}s")
    return env_dir


def test_the_wheel_holds_no_dev_tools_and_ships_what_daemons_read(wheel: Path) -> None:
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    assert not [n for n in names if n.startswith(("bridge/devnet/", "bridge/tools/", "tests/"))]
    assert "bridge/ledgers/evm/_artifacts/BridgeEndpoint.json" in names
    assert "bridge/ledgers/fabric/pb/gateway/gateway_pb2_grpc.py" in names
    meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
    requires = [
        line.lower()
        for line in zipfile.ZipFile(wheel).read(meta).decode().splitlines()
        if line.startswith("Requires-Dist:")
    ]
    runtime = "\n".join(r for r in requires if "extra ==" not in r)
    joined = "\n".join(requires)
    # Dev tools are never runtime requirements, and no extra pulls the protobuf<6 wheels.
    for dev in ("pytest", "ruff", "mypy", "grpcio-tools"):
        assert dev not in runtime, dev
    for pkg in ("hyperledger-fabric-protos", "fabric-chaincode-python"):
        assert pkg not in joined, pkg
    assert 'web3==8.0.0; extra == "evm"' in joined


def test_extras_resolve_cleanly_and_every_entry_point_answers_version(venv: Path) -> None:
    _run([str(venv / "bin" / "pip"), "check"], timeout=120)
    freeze = _run([str(venv / "bin" / "pip"), "freeze"], timeout=120).stdout.lower()
    assert "protobuf==7." in freeze
    assert "hyperledger-fabric-protos" not in freeze
    for name in ENTRY_POINTS:
        out = _run([str(venv / "bin" / name), "--version"], timeout=60).stdout.strip()
        assert out == f"{name} 0.1.0"


def test_the_demo_runs_from_the_installed_package(
    venv: Path, chaincode_env: ChaincodeEnv, tmp_path_factory: pytest.TempPathFactory
) -> None:
    if not (REPO_ROOT / ".cache" / "fabric").exists():
        pytest.skip("Fabric binaries not built (make fabric)")
    cc_env = chaincode_env.wait()
    outside = tmp_path_factory.mktemp("outside")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))},
        "PYTHONSAFEPATH": "1",
        "KSTB_PLAINTEXT_KEYS_FOR_DEVELOPMENT": "1",
        "KSTB_CHAINCODE_PYTHON": str(cc_env / "bin" / "python"),
        "PATH": f"{venv / 'bin'}:{os.environ.get('PATH', '')}",
    }
    python = str(venv / "bin" / "python")
    check = CHECK.format(src=str(REPO_ROOT / "bridge"), root=str(REPO_ROOT))
    probe = subprocess.run(
        [python, "-c", check],
        cwd=outside,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert probe.stdout.strip() == "ok", probe.stderr
    result = subprocess.run(
        [python, "-m", "bridge.devnet.demo", "--workdir", str(outside / "demo")],
        cwd=outside,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, (result.stdout[-6000:], result.stderr[-6000:])
    assert "demo complete" in result.stdout, result.stdout[-3000:]
