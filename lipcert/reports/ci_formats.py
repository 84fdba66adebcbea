"""Gate results for CI systems: GitHub Actions workflow commands and JUnit XML.

GitHub Actions reads `::error title=...::message` lines from a step's output and shows them
as annotations; JUnit XML (one test case per gate) is what most CI systems (GitLab, Jenkins,
Azure) display as a test report.
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree

from lipcert.certify.gates import Gate

FORMATS = ("text", "github", "junit")


def github_annotations(gates: list[Gate], title: str = "lipcert certify") -> list[str]:
    """One workflow command per gate: ::error for a failed one, ::notice for a passed one."""
    lines = []
    for gate in gates:
        kind = "notice" if gate.passed else "error"
        lines.append(f"::{kind} title={_property(title)}::{_data(gate.message())}")
    return lines


def junit_xml(gates: list[Gate], *, model: str, seconds: float) -> str:
    """A JUnit XML document: one test suite, one test case per gate."""
    failures = sum(not gate.passed for gate in gates)
    suite = ElementTree.Element(
        "testsuite",
        name=f"lipcert certify {model}",
        tests=str(len(gates)),
        failures=str(failures),
        errors="0",
        time=f"{seconds:.3f}",
    )
    for gate in gates:
        name = f"{gate.name} >= {gate.threshold_text}"
        case = ElementTree.SubElement(suite, "testcase", classname="lipcert.gates", name=name)
        if not gate.passed:
            failure = ElementTree.SubElement(case, "failure", message=gate.message())
            failure.text = gate.message()
    ElementTree.indent(suite)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ElementTree.tostring(
        suite, encoding="unicode"
    )


def _data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _property(text: str) -> str:
    return _data(text).replace(":", "%3A").replace(",", "%2C")
