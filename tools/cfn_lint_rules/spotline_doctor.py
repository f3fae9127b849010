"""The doctor's checks (tools/spotline_ops/doctor.py) as cfn-lint rules, so that `cfn-lint`,
`sam validate --lint` and editors with the cfn-lint extension show them beside the resource.

Loaded with ``cfn-lint --append-rules tools/cfn_lint_rules`` (the repository's .cfnlintrc says
so for every cfn-lint run started here). The doctor's errors are E9001; its warnings, which a
person may accept (a DLQ only an alarm watches), are informational (I9001) so they never fail a
lint. The rules read the template as the doctor does: the SAM source, before the transform.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any

from cfnlint.rules import CloudFormationLintRule, RuleMatch

# The doctor lives in this checkout, not in the environment cfn-lint runs from (.venv-sam has
# no spotline): put its folders on the path.
_REPO = Path(__file__).resolve().parents[2]
for _folder in (_REPO / "functions", _REPO / "tools"):
    if str(_folder) not in sys.path:
        sys.path.insert(0, str(_folder))

from spotline_ops.doctor import Finding, View, diagnose, load_template  # noqa: E402

DOCS = "README.md, Dead letters: Doctor"  # where the checks and their fixes are explained


@functools.lru_cache(maxsize=8)
def _findings_of_file(path: str, modified_ns: int) -> tuple[Finding, ...]:
    text = Path(path).read_text(encoding="utf-8")
    return tuple(diagnose(View(load_template(text), {})))


def findings(cfn: Any) -> tuple[Finding, ...]:
    """The doctor's findings on the template cfn-lint is linting (its source file if it has one:
    the doctor reads SAM before the transform), computed once for both rules."""
    filename = getattr(cfn, "filename", None)
    if filename and Path(filename).is_file():
        try:
            return _findings_of_file(str(filename), Path(filename).stat().st_mtime_ns)
        except ValueError:  # not a template the doctor can read: cfn-lint reports why
            return ()
    return tuple(diagnose(View(cfn.template, {})))


def _matches(cfn: Any, level: str) -> list[RuleMatch]:
    resources = cfn.template.get("Resources") or {}
    matches = []
    for finding in findings(cfn):
        if finding.level != level:
            continue
        path = ["Resources", finding.resource] if finding.resource in resources else ["Resources"]
        matches.append(RuleMatch(path, f"{finding.check}: {finding.message} (fix: {finding.fix})"))
    return matches


class DoctorErrors(CloudFormationLintRule):
    """A misconfiguration the doctor calls an error."""

    id = "E9001"
    shortdesc = "spotline doctor: error"
    description = "A misconfiguration that bites in practice (python -m spotline_ops.doctor)"
    source_url = DOCS
    tags = ["spotline", "doctor"]

    def match(self, cfn: Any) -> list[RuleMatch]:
        return _matches(cfn, "error")


class DoctorWarnings(CloudFormationLintRule):
    """A finding the doctor calls a warning: worth a look, acceptable on purpose."""

    id = "I9001"
    shortdesc = "spotline doctor: warning"
    description = "Worth a look, may be intended (python -m spotline_ops.doctor)"
    source_url = DOCS
    tags = ["spotline", "doctor"]

    def match(self, cfn: Any) -> list[RuleMatch]:
        return _matches(cfn, "warning")
