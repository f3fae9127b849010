"""The doctor's checks as cfn-lint rules (tools/cfn_lint_rules, loaded through .cfnlintrc): what
`cfn-lint`, `sam validate --lint` and editors show."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from devstack.cfn import REPO_ROOT, TEMPLATE_PATH, load_template
from spotline_ops import doctor

sys.path.insert(0, str(REPO_ROOT / "tools" / "cfn_lint_rules"))
import spotline_doctor

CFN_LINT = str(Path(sys.executable).parent / "cfn-lint")


def lint(template: Path) -> tuple[int, list[dict[str, Any]]]:
    """cfn-lint as a user runs it here (the checkout's .cfnlintrc), informational included."""
    done = subprocess.run(
        [CFN_LINT, str(template), "--include-checks", "I", "--format", "json"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.stderr == "", done.stderr
    return done.returncode, json.loads(done.stdout)


def rule_ids(matches: list[dict[str, Any]]) -> list[str]:
    return [m["Rule"]["Id"] for m in matches if m["Rule"]["Id"].endswith("9001")]


def test_the_checkouts_cfnlintrc_appends_the_doctor_rules() -> None:
    config = (REPO_ROOT / ".cfnlintrc").read_text(encoding="utf-8")
    assert "append_rules:\n  - tools/cfn_lint_rules\n" in config


def test_the_projects_template_shows_the_doctors_warnings_as_information() -> None:
    _, matches = lint(TEMPLATE_PATH)
    wanted = doctor.diagnose(doctor.View(doctor.load_template(TEMPLATE_PATH.read_text()), {}))
    assert not any(f.is_error for f in wanted)
    assert sorted(rule_ids(matches)) == ["I9001"] * len(wanted)
    shown = {m["Message"] for m in matches if m["Rule"]["Id"] == "I9001"}
    assert shown == {f"{f.check}: {f.message} (fix: {f.fix})" for f in wanted}


def test_a_doctor_error_is_a_lint_error_at_its_resource(tmp_path: Path) -> None:
    text = TEMPLATE_PATH.read_text(encoding="utf-8")
    start = text.index("  MaxReceiveCount:\n")
    default = text.index("Default:", start)
    end = text.index("\n", default)
    bad = tmp_path / "template.yaml"
    bad.write_text(text[:default] + "Default: 3" + text[end:], encoding="utf-8")
    code, matches = lint(bad)
    errors = [m for m in matches if m["Rule"]["Id"] == "E9001"]
    assert len(errors) == 1 and errors[0]["Message"].startswith("max-receive-count: ")
    assert errors[0]["Level"] == "Error" and code & 2  # an error fails the lint
    line = text[: text.index("  JobsQueue:\n")].count("\n") + 1
    assert errors[0]["Location"]["Start"]["LineNumber"] == line


def test_a_template_without_a_file_is_read_from_cfn_lints_view() -> None:
    template = load_template()
    template["Resources"]["JobsDeadLetterQueue"]["Properties"]["MessageRetentionPeriod"] = 60
    cfn = SimpleNamespace(filename=None, template=template)
    found = spotline_doctor.findings(cfn)
    assert any(f.check == "dlq-retention" and f.is_error for f in found)
    matches = spotline_doctor.DoctorErrors().match(cfn)
    assert any(m.path == ["Resources", "JobsDeadLetterQueue"] for m in matches)


def test_a_file_the_doctor_cannot_read_is_left_to_cfn_lint(tmp_path: Path) -> None:
    template = tmp_path / "template.yaml"
    template.write_text("just: text\n")
    cfn = SimpleNamespace(filename=str(template), template={"Resources": {}})
    assert spotline_doctor.findings(cfn) == ()


@pytest.mark.parametrize("rule", [spotline_doctor.DoctorErrors, spotline_doctor.DoctorWarnings])
def test_each_rule_has_a_custom_id_and_says_where_it_comes_from(rule: type) -> None:
    assert rule.id[1:] == "9001" and rule.id[0] in "EI"
    assert "spotline_ops.doctor" in rule.description
