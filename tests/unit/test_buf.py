"""The public API's contract checks (issue 12 item 7): ``buf lint`` passes on ``proto/``,
the protos do not break the last release (``buf breaking`` against the committed image),
a breaking change is caught, the example Go client's generated code matches the protos and
its protocol core matches the golden vectors.

buf and the plugins come from ``deploy/buf/build.sh`` (``make buf``, a prerequisite of
``make test``); outside CI a test that needs them skips when they are absent, in CI it fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from bridge.tools import buf
from bridge.tools.gen_go_client import CLIENT_DIR, GEN_DIR, drifted, generate

pytestmark = [pytest.mark.unit, pytest.mark.ops]


def _need(ok: bool, what: str) -> None:
    if ok:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{what} is missing in CI (make buf builds it)")
    pytest.skip(f"{what} is not there: run `make buf`")


@pytest.fixture
def tools() -> None:
    _need(not buf.missing_tools(), f"{buf.missing_tools()} in {buf.bin_dir()}")


def test_the_python_pin_is_the_build_scripts() -> None:
    script = buf.BUILD_SCRIPT.read_text()
    assert f'BUF_VERSION="{buf.BUF_VERSION}"' in script
    package = json.loads((buf.ROOT / "deploy" / "buf" / "package.json").read_text())
    assert package["dependencies"] == {"@bufbuild/buf": buf.BUF_VERSION}
    lock = json.loads((buf.ROOT / "deploy" / "buf" / "package-lock.json").read_text())
    assert lock["packages"]["node_modules/@bufbuild/buf"]["version"] == buf.BUF_VERSION


def test_every_proto_has_the_language_options() -> None:
    for path in sorted((buf.PROTO_DIR / "bridge" / "v1").glob("*.proto")):
        text = path.read_text()
        for option in ("go_package", "java_package", "java_multiple_files", "csharp_namespace"):
            assert re.search(rf"^option {option} = ", text, re.M), f"{path.name}: no {option}"


@pytest.mark.usefixtures("tools")
def test_lint_passes() -> None:
    result = buf.run_buf(["lint"], buf.PROTO_DIR)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.usefixtures("tools")
def test_the_protos_do_not_break_the_last_release() -> None:
    last = buf.last_release()
    result = buf.run_buf(["breaking", "--against", str(last)], buf.PROTO_DIR)
    assert result.returncode == 0, f"breaks {last.name}:\n{result.stdout}{result.stderr}"


@pytest.mark.usefixtures("tools")
@pytest.mark.parametrize(
    ("old", "new", "rules"),
    [
        # a renumbered field: the wire breaks
        (
            "string idempotency_key = 1;",
            "string idempotency_key = 30;",
            "FIELD_SAME_NUMBER|FIELD_NO_DELETE",
        ),
        # a renamed field: generated code and JSON break
        ("string security_id = 2;", "string isin = 2;", "FIELD_SAME_NAME"),
        # a removed enum value
        ("  TRANSFER_STATE_QUEUED = 9;\n", "", "ENUM_VALUE_NO_DELETE"),
        # a changed language option: every Java client's imports break
        (
            'option java_package = "dev.kstb.bridge.v1";',
            'option java_package = "dev.kstb.v1";',
            "FILE_SAME_JAVA_PACKAGE",
        ),
    ],
)
def test_a_breaking_change_is_refused(tmp_path: Path, old: str, new: str, rules: str) -> None:
    work = tmp_path / "proto"
    shutil.copytree(buf.PROTO_DIR, work, ignore=shutil.ignore_patterns("releases"))
    transfer = work / "bridge" / "v1" / "transfer.proto"
    text = transfer.read_text()
    assert old in text
    transfer.write_text(text.replace(old, new, 1))
    result = buf.run_buf(
        ["breaking", "--against", str(buf.last_release()), "--error-format=json"], work
    )
    assert result.returncode != 0
    found = {json.loads(line)["type"] for line in result.stdout.splitlines() if line.strip()}
    assert found & set(rules.split("|")), result.stdout + result.stderr


@pytest.mark.usefixtures("tools")
def test_the_go_client_code_matches_the_protos(tmp_path: Path) -> None:
    out = generate(tmp_path)
    assert drifted(out, GEN_DIR) == []
    victim = next(out.rglob("transfer.pb.go"))
    victim.write_text(victim.read_text() + "// edited\n")
    assert drifted(out, GEN_DIR) == [str(victim.relative_to(out))]


def test_the_go_core_matches_the_golden_vectors() -> None:
    go = shutil.which("go") or (
        "/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None
    )
    _need(go is not None, "the Go toolchain")
    assert go is not None
    env = dict(os.environ, GOFLAGS="-mod=readonly -buildvcs=false", GOTOOLCHAIN="local")
    result = subprocess.run(
        [go, "test", "-count=1", "./kstb/"],
        cwd=CLIENT_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.usefixtures("tools")
def test_a_release_image_is_never_overwritten_nor_cut_out_of_order() -> None:
    from bridge.tools.proto_release import main

    last = buf.last_release()
    before = last.read_bytes()
    assert main(["--version", last.name.removeprefix("v").removesuffix(".binpb")]) == 1
    assert last.read_bytes() == before
    assert main(["--version", "0.0.9"]) == 1
    assert main(["--version", "1.0"]) == 1
    assert not (buf.RELEASES_DIR / "v0.0.9.binpb").exists()
    assert not (buf.RELEASES_DIR / "v1.0.binpb").exists()
