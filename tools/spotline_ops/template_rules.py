"""The template's ``Rules`` evaluated as CloudFormation evaluates them before a deploy: which
assertions a set of parameter values fails, with their ``AssertDescription``.

CloudFormation stops ``sam deploy`` with that description (naming the parameter) before any
resource changes; ``cfn-lint`` checks the section's shape but not its verdicts, so the tests
ask this module what a deploy with given values would say.

    python -m spotline_ops.template_rules template.yaml --parameter ApiAuth=JWT
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from spotline_ops.doctor import load_template

Value = str | list[str] | bool


class RuleError(ValueError):
    """A rule this evaluator cannot read (a function CloudFormation does not allow in Rules)."""


def parameter_values(
    template: Mapping[str, Any], overrides: Mapping[str, str] | None = None
) -> dict[str, Value]:
    """Each parameter's value as a deploy would pass it: the override, else the default; a
    CommaDelimitedList as its list of members (an empty string is one empty member)."""
    values: dict[str, Value] = {}
    for name, spec in template.get("Parameters", {}).items():
        raw = (overrides or {}).get(name, spec.get("Default"))
        if raw is None:
            continue
        text = str(raw)
        is_list = spec.get("Type") == "CommaDelimitedList"
        values[name] = [m.strip() for m in text.split(",")] if is_list else text
    return values


def _members(value: Value) -> list[str]:
    return value if isinstance(value, list) else [str(value)]


def evaluate(expression: Any, values: Mapping[str, Value]) -> Value:
    """One Rules expression: Ref and the functions CloudFormation allows in Rules."""
    if isinstance(expression, str | bool):
        return expression
    if isinstance(expression, list):
        return [str(evaluate(item, values)) for item in expression]
    if not isinstance(expression, dict) or len(expression) != 1:
        raise RuleError(f"not a rule expression: {expression!r}")
    ((function, argument),) = expression.items()
    if function == "Ref":
        if argument not in values:
            raise RuleError(f"Ref to {argument!r}, which is no parameter with a value")
        return values[argument]
    arguments = [evaluate(a, values) for a in argument] if isinstance(argument, list) else []
    if function == "Fn::Equals":
        left, right = arguments
        return left == right
    if function == "Fn::Not":
        return not arguments[0]
    if function == "Fn::And":
        return all(arguments)
    if function == "Fn::Or":
        return any(arguments)
    if function == "Fn::Contains":
        members, wanted = arguments
        return str(wanted) in _members(members)
    if function == "Fn::EachMemberEquals":
        members, wanted = arguments
        return all(member == wanted for member in _members(members))
    if function == "Fn::EachMemberIn":
        members, allowed = arguments
        return all(member in _members(allowed) for member in _members(members))
    raise RuleError(f"{function} is not allowed in Rules")


def failed_assertions(
    template: Mapping[str, Any], overrides: Mapping[str, str] | None = None
) -> list[str]:
    """The AssertDescription of every assertion a deploy with ``overrides`` would fail."""
    values = parameter_values(template, overrides)
    failed = []
    for rule in template.get("Rules", {}).values():
        if "RuleCondition" in rule and not evaluate(rule["RuleCondition"], values):
            continue
        for assertion in rule.get("Assertions", []):
            if not evaluate(assertion["Assert"], values):
                failed.append(" ".join(str(assertion.get("AssertDescription", "")).split()))
    return failed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m spotline_ops.template_rules",
        description="the template's Rules: what a deploy with these parameters would refuse",
    )
    parser.add_argument("template", type=Path)
    parser.add_argument("--parameter", action="append", default=[], metavar="NAME=VALUE")
    args = parser.parse_args(argv)
    try:
        template = load_template(args.template.read_text(encoding="utf-8"))
        overrides = dict(p.split("=", 1) for p in args.parameter)
        failed = failed_assertions(template, overrides)
    except (OSError, ValueError) as exc:
        print(f"template_rules: {exc}", file=sys.stderr)
        return 2
    for description in failed:
        print(f"deploy refused: {description}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
