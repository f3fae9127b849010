"""The fleet's user data: the one compose definition copied verbatim, and the compose plugin's
download verified by its checksum before it is installed."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import sync_compose

from devstack.cfn import REPO_ROOT, load_template

COMPOSE = REPO_ROOT / "gpu_worker" / "docker-compose.yml"
USER_DATA_LIMIT_BYTES = 16 * 1024  # EC2's limit on user data before base64


@pytest.fixture(scope="module")
def user_data() -> tuple[str, dict[str, Any]]:
    resources = load_template()["Resources"]
    data = resources["WorkerLaunchTemplate"]["Properties"]["LaunchTemplateData"]["UserData"]
    script, variables = data["Fn::Base64"]["Fn::Sub"]
    return script, variables


def test_the_template_carries_the_compose_file_verbatim(
    user_data: tuple[str, dict[str, Any]],
) -> None:
    _, variables = user_data
    assert variables["ComposeFile"] == COMPOSE.read_text(encoding="utf-8")
    assert sync_compose.main(["--check"]) == 0


def test_the_user_data_fits_ec2s_limit(user_data: tuple[str, dict[str, Any]]) -> None:
    script, variables = user_data
    rendered = script.replace("${ComposeFile}", variables["ComposeFile"])
    # The stack's values (URLs, names) replace the ${...} references: allow 100 bytes each.
    references = len(re.findall(r"\$\{[A-Za-z:]+\}", rendered))
    assert len(rendered.encode()) + 100 * references < USER_DATA_LIMIT_BYTES


def test_render_replaces_only_the_block_and_is_idempotent() -> None:
    template = "Resources:\n  X:\n    ComposeFile: |\n      old: 1\n\n      more: 2\n    Next: 3\n"
    once = sync_compose.render(template, "services:\n  worker: {}\n")
    wanted = "Resources:\n  X:\n    ComposeFile: |\n      services:\n        worker: {}\n"
    assert once == wanted + "    Next: 3\n"
    assert sync_compose.render(once, "services:\n  worker: {}\n") == once


def test_render_refuses_a_template_without_the_block() -> None:
    with pytest.raises(sync_compose.NoComposeBlock, match=re.escape("0 'ComposeFile: |' lines")):
        sync_compose.render("Resources: {}\n", "services: {}\n")


def test_check_fails_when_the_copy_drifts_and_sync_mends_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    template = tmp_path / "template.yaml"
    compose = tmp_path / "docker-compose.yml"
    template.write_text((REPO_ROOT / "template.yaml").read_text(encoding="utf-8"))
    compose.write_text(COMPOSE.read_text(encoding="utf-8") + "# a change\n")
    monkeypatch.setattr(sync_compose, "TEMPLATE", template)
    monkeypatch.setattr(sync_compose, "COMPOSE", compose)
    assert sync_compose.main(["--check"]) == 1
    assert "make sync-compose" in capsys.readouterr().err
    assert sync_compose.main([]) == 0
    assert sync_compose.main(["--check"]) == 0
    assert "              # a change\n" in template.read_text(encoding="utf-8")


def test_sync_without_a_block_exits_2_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    template = tmp_path / "template.yaml"
    template.write_text("Resources: {}\n")
    monkeypatch.setattr(sync_compose, "TEMPLATE", template)
    assert sync_compose.main([]) == 2
    assert capsys.readouterr().err.count("\n") == 1


# -- the compose plugin's download ------------------------------------------------------------


def _install_block(script: str) -> str:
    """The user data's plugin install, as bash runs it (Sub turns ${!X} into ${X})."""
    start = script.index("if ! docker compose version")
    end = script.index("\nfi\n", start) + len("\nfi\n")
    return script[start:end].replace("${!", "${")


def _fake_bin(folder: Path, *, machine: str, payload: bytes) -> dict[str, str]:
    """docker without compose, uname -m, and a curl that 'downloads' payload to its -o path."""
    folder.mkdir()
    (folder / "payload").write_bytes(payload)
    scripts = {
        "docker": "#!/bin/sh\nexit 1\n",
        "uname": f"#!/bin/sh\necho {machine}\n",
        "curl": (
            "#!/bin/sh\n"
            f'echo "$@" >> {folder / "curl.args"}\n'
            'while [ $# -gt 0 ]; do if [ "$1" = -o ]; then out=$2; fi; shift; done\n'
            f'cp {folder / "payload"} "$out"\n'
        ),
    }
    for name, text in scripts.items():
        (folder / name).write_text(text)
        (folder / name).chmod(0o755)
    return {**os.environ, "PATH": f"{folder}:{os.environ['PATH']}"}


def _run(block: str, env: dict[str, str], plugins: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block],
        env={**env, "COMPOSE_PLUGINS": str(plugins)},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_a_download_that_fails_its_checksum_is_never_installed(
    user_data: tuple[str, dict[str, Any]], tmp_path: Path
) -> None:
    env = _fake_bin(tmp_path / "bin", machine="x86_64", payload=b"not the release\n")
    plugins = tmp_path / "plugins"
    done = _run(_install_block(user_data[0]), env, plugins)
    assert done.returncode != 0
    assert "FAILED" in done.stderr
    assert not (plugins / "docker-compose").exists()


def test_a_machine_without_a_known_checksum_stops_the_script(
    user_data: tuple[str, dict[str, Any]], tmp_path: Path
) -> None:
    env = _fake_bin(tmp_path / "bin", machine="riscv64", payload=b"anything\n")
    plugins = tmp_path / "plugins"
    done = _run(_install_block(user_data[0]), env, plugins)
    assert done.returncode == 1
    assert "no docker compose checksum for riscv64" in done.stderr
    assert not plugins.exists()


@pytest.mark.parametrize("machine", ["x86_64", "aarch64"])
def test_a_download_matching_its_checksum_is_installed_executable(
    user_data: tuple[str, dict[str, Any]], tmp_path: Path, machine: str
) -> None:
    block = _install_block(user_data[0])
    (listed,) = re.findall(rf"{machine}\) COMPOSE_SHA256=([0-9a-f]{{64}}) ;;", block)
    payload = b"#!/bin/sh\necho compose\n"
    # The release's bytes are not here: put this payload's hash where the release's stands.
    block = block.replace(listed, hashlib.sha256(payload).hexdigest())
    env = _fake_bin(tmp_path / "bin", machine=machine, payload=payload)
    plugins = tmp_path / "plugins"
    done = _run(block, env, plugins)
    assert done.returncode == 0, done.stderr
    installed = plugins / "docker-compose"
    assert installed.read_bytes() == payload and installed.stat().st_mode & 0o777 == 0o755
    # The release's file for this machine, from the pinned release.
    (args,) = (tmp_path / "bin" / "curl.args").read_text().splitlines()
    assert args.endswith(
        f"https://github.com/docker/compose/releases/download/v2.29.7/docker-compose-linux-{machine}"
    )
