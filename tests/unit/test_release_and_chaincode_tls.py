"""The release builds from the commit (review s18 F6) and the chaincode server and its CCaaS
package refuse plaintext unless asked for by name (F13), ADR 0021 §8-§9."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path

import pytest

from bridge.devnet.processes import REPO_ROOT
from bridge.tools.release import ReleaseRefused, export_tree, project_version, write_release

pytestmark = [pytest.mark.unit, pytest.mark.ops]

sys.path.insert(0, str(REPO_ROOT / "contracts" / "fabric"))
from kstb_chaincode.__main__ import (  # noqa: E402
    PLAINTEXT_ENV,
    PlaintextRefused,
    tls_material,
)

ROOT_PEM = b"-----BEGIN CERTIFICATE-----\nMIIBdevnet\n-----END CERTIFICATE-----\n"


def _git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
        check=True,
        capture_output=True,
    )


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A minimal checkout with the paths the release packages, committed."""
    repo = tmp_path / "repo"
    files = {
        "pyproject.toml": '[project]\nname = "kstb"\nversion = "0.3.0"\n',
        "requirements.lock": "x==1\n",
        "deploy/helm/kstb/Chart.yaml": 'apiVersion: v2\nname: kstb\nversion: 0.1.0\nappVersion: "0.1.0"\n',
        "deploy/helm/kstb/templates/a.yaml": "kind: X\n",
        "deploy/systemd/kstb-x.service": "[Service]\n",
        "contracts/fabric/requirements.txt": "y==2\n",
        "contracts/fabric/kstb_chaincode/__init__.py": "V = 1\n",
        ".gitignore": "/dist/\n",
    }
    for name, text in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "init")
    return repo


def _members(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive) as tar:
        return {m.name: f.read() for m in tar.getmembers() if (f := tar.extractfile(m)) is not None}


def test_a_clean_tree_exports_exactly_the_commit(repo: Path, tmp_path: Path) -> None:
    (repo / "dist").mkdir()
    (repo / "dist" / "old.whl").write_text("ignored output\n")  # ignored: not dirty
    export = export_tree(repo, tmp_path / "out")
    assert (export.version, export.dirty) == ("0.3.0", False)
    assert export.epoch > 0
    assert not (export.root / "dist").exists()
    assert (export.root / "contracts/fabric/kstb_chaincode/__init__.py").read_text() == "V = 1\n"


@pytest.mark.parametrize("change", ["untracked", "modified", "staged", "deleted", "renamed"])
def test_a_dirty_tree_is_refused_naming_the_paths(repo: Path, tmp_path: Path, change: str) -> None:
    target = repo / "contracts/fabric/kstb_chaincode/__init__.py"
    if change == "untracked":
        (repo / "contracts/fabric/kstb_chaincode/evil.py").write_text("BACKDOOR = True\n")
    elif change == "deleted":
        target.unlink()
    elif change == "renamed":
        _git(repo, "mv", str(target), str(target.with_name("moved.py")))
    else:
        target.write_text("V = 2  # local edit\n")
        if change == "staged":
            _git(repo, "add", "-A")
    with pytest.raises(ReleaseRefused, match=r"differs from HEAD .*kstb_chaincode/"):
        export_tree(repo, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing half-exported


def test_allow_dirty_marks_every_version_dirty(repo: Path, tmp_path: Path) -> None:
    (repo / "contracts/fabric/kstb_chaincode/extra.py").write_text("X = 1\n")
    export = export_tree(repo, tmp_path / "out", allow_dirty=True)
    assert (export.version, export.dirty) == ("0.3.0+dirty", True)
    assert project_version(export.root) == "0.3.0+dirty"  # the wheel's version too
    dist = tmp_path / "dist"
    write_release(dist, "cc:9999", None, root=export.root, version=export.version)
    chart = _members(dist / "kstb-0.3.0+dirty.tgz")["kstb/Chart.yaml"].decode()
    assert "version: 0.3.0+dirty\n" in chart and 'appVersion: "0.3.0+dirty"' in chart
    source = _members(dist / "kstb-chaincode-0.3.0+dirty.tar.gz")
    assert "kstb-chaincode-0.3.0+dirty/kstb_chaincode/extra.py" in source


def test_the_chart_takes_its_version_from_the_package(repo: Path, tmp_path: Path) -> None:
    export = export_tree(repo, tmp_path / "out")
    write_release(tmp_path / "d", "cc:9999", None, root=export.root, version=export.version)
    chart = _members(tmp_path / "d" / "kstb-0.3.0.tgz")["kstb/Chart.yaml"].decode()
    assert "version: 0.3.0\n" in chart and 'appVersion: "0.3.0"' in chart  # not 0.1.0


def test_the_committed_chart_version_is_the_package_version() -> None:
    """One source: a checkout's chart deploys the image of its own package version."""
    with (REPO_ROOT / "pyproject.toml").open("rb") as fh:
        version = tomllib.load(fh)["project"]["version"]
    chart = (REPO_ROOT / "deploy/helm/kstb/Chart.yaml").read_text()
    assert f"\nversion: {version}\n" in chart and f'\nappVersion: "{version}"\n' in chart


def _connection(package: Path) -> dict[str, object]:
    code = _members(package)["code.tar.gz"]
    with tarfile.open(fileobj=io.BytesIO(code)) as tar:
        f = tar.extractfile("connection.json")
        assert f is not None
        data: dict[str, object] = json.loads(f.read())
        return data


def test_the_ccaas_package_requires_mutual_tls_or_is_not_written(
    repo: Path, tmp_path: Path
) -> None:
    export = export_tree(repo, tmp_path / "out")
    root_file = tmp_path / "cc-ca.pem"
    root_file.write_bytes(ROOT_PEM)
    name = "kstb-chaincode-0.3.0-ccaas.tar.gz"
    for sub, tls, plain in (("none", None, False), ("tls", root_file, False), ("dev", None, True)):
        write_release(tmp_path / sub, "cc:9999", tls, root=export.root, plaintext_chaincode=plain)
    assert not (tmp_path / "none" / name).exists()
    assert name not in (tmp_path / "none" / "SHA256SUMS").read_text()
    conn = _connection(tmp_path / "tls" / name)
    assert conn["tls_required"] is True and conn["client_auth_required"] is True
    assert conn["root_cert"] == ROOT_PEM.decode()
    assert _connection(tmp_path / "dev" / name)["tls_required"] is False


def test_chaincode_tls_material_needs_all_three_files_unless_flagged(tmp_path: Path) -> None:
    envs = {}
    for name in (
        "CHAINCODE_TLS_KEY_FILE",
        "CHAINCODE_TLS_CERT_FILE",
        "CHAINCODE_TLS_CLIENT_CA_FILE",
    ):
        (tmp_path / name).write_bytes(name.encode())
        envs[name] = str(tmp_path / name)
    key, cert, ca = tls_material(envs)
    assert (key, cert, ca) == (
        b"CHAINCODE_TLS_KEY_FILE",
        b"CHAINCODE_TLS_CERT_FILE",
        b"CHAINCODE_TLS_CLIENT_CA_FILE",
    )
    no_ca = {k: v for k, v in envs.items() if "CLIENT_CA" not in k}
    for env, missing in (({}, "CHAINCODE_TLS_KEY_FILE"), (no_ca, "CHAINCODE_TLS_CLIENT_CA_FILE")):
        with pytest.raises(PlaintextRefused, match=f"mutual TLS .*{missing}"):
            tls_material(env)
        for wrong in ("yes", "true", "0"):
            with pytest.raises(PlaintextRefused):
                tls_material({**env, PLAINTEXT_ENV: wrong})
    assert tls_material({PLAINTEXT_ENV: "1"}) == (None, None, None)
    assert tls_material({**no_ca, PLAINTEXT_ENV: "1"})[2] is None
    only_key = {"CHAINCODE_TLS_KEY_FILE": envs["CHAINCODE_TLS_KEY_FILE"], PLAINTEXT_ENV: "1"}
    with pytest.raises(PlaintextRefused, match="go together"):
        tls_material(only_key)


@pytest.mark.parametrize("tls", ["none", "no client CA"])
def test_the_chaincode_server_process_refuses_to_start_without_mutual_tls(
    tmp_path: Path, tls: str
) -> None:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": str(REPO_ROOT / "contracts" / "fabric"),
        "CHAINCODE_SERVER_ADDRESS": "127.0.0.1:1",
        "CORE_CHAINCODE_ID": "kstb_0.1.0:00",
    }
    if tls == "no client CA":
        for name in ("CHAINCODE_TLS_KEY_FILE", "CHAINCODE_TLS_CERT_FILE"):
            (tmp_path / name).write_text("pem")
            env[name] = str(tmp_path / name)
    result = subprocess.run(
        [sys.executable, "-m", "kstb_chaincode"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "refusing to start: mutual TLS to the peers is required" in result.stderr
    assert PLAINTEXT_ENV in result.stderr
