"""The one-rule helpers are used everywhere: file-name slugs come from ``sanitize.file_slug``
(a scan fails on a hand-written slug regex), the localiser's findings derive from ``labels``,
and one function says which method draws a finding (the explainer and the service's pictures)."""

from __future__ import annotations

import ast
from pathlib import Path
from types import SimpleNamespace

import xraytriage
from xraytriage.explain.explainer import Explainer
from xraytriage.explain.methods import method_name
from xraytriage.labels import NIH_BOX_FINDINGS, NIH_FINDINGS
from xraytriage.models.localiser import LocaliserSpec
from xraytriage.serving.picture_store import Drawings

PACKAGE = Path(xraytriage.__file__).parent
HELPER = "sanitize.py"
ALLOWED = {
    # a client's file name made fit to show (keeps spaces and brackets); never used to build a path
    "serving/storage.py",
}


def slug_substitutions(source: str) -> list[int]:
    """Lines of ``re.sub(pattern, "_", text)`` / ``compiled.sub("_", text)`` calls: a slug rule."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if not (
            isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "sub"
        ):
            continue
        module_call = isinstance(node.func.value, ast.Name) and node.func.value.id == "re"
        position = 1 if module_call else 0
        if len(node.args) > position:
            replacement = node.args[position]
            if isinstance(replacement, ast.Constant) and replacement.value == "_":
                lines.append(node.lineno)
    return lines


def test_no_hand_written_slug_regex_outside_the_helper():
    found = {
        f"{path.relative_to(PACKAGE)}:{line}"
        for path in PACKAGE.rglob("*.py")
        if path.name != HELPER and str(path.relative_to(PACKAGE)) not in ALLOWED
        for line in slug_substitutions(path.read_text(encoding="utf-8"))
    }
    assert found == set()


def test_the_scan_catches_both_spellings():
    source = 'import re\nA = re.compile("[^a-z]+")\nx = re.sub(r"[^A-Za-z0-9]+", "_", n)\ny = A.sub("_", n)\nz = re.sub("a", "", n)\n'
    assert slug_substitutions(source) == [3, 4]
    assert slug_substitutions((PACKAGE / HELPER).read_text(encoding="utf-8"))  # the helper itself is seen


def test_the_localiser_findings_derive_from_labels():
    assert LocaliserSpec().findings == NIH_BOX_FINDINGS
    assert len(NIH_BOX_FINDINGS) == 8 and set(NIH_BOX_FINDINGS) <= set(NIH_FINDINGS)
    assert "Hernia" not in NIH_BOX_FINDINGS and "Pneumothorax" in NIH_BOX_FINDINGS


def test_one_rule_says_which_method_draws_a_finding():
    localiser = SimpleNamespace(covers=lambda finding: finding in ("Effusion", "Mass"))
    checkpoint = SimpleNamespace(get_localiser=lambda: localiser)
    for finding in ("Effusion", "Hernia"):
        expected = method_name(localiser, finding)
        assert (
            Explainer.method_for(SimpleNamespace(localiser=localiser, method="gradcam"), finding) == expected
        )
        assert Drawings.method_for(SimpleNamespace(checkpoint=checkpoint), finding) == expected
    assert (
        method_name(localiser, "Effusion") == "localiser" and method_name(localiser, "Hernia") == "Grad-CAM"
    )
    assert method_name(None, "Effusion", "gradcam++") == "Grad-CAM++"
