"""The documents in `docs/` agree with the code, and every document the code cites is in the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from devices.simulator.scenarios import default_rules
from schemas.catalogue import CATALOGUE, DeviceKind

ROOT = Path(__file__).resolve().parent.parent
DOMAIN = (ROOT / "docs" / "domain.md").read_text()
SCANNED = (
    "schemas",
    "pulsewire",
    "ingest",
    "relay",
    "devices",
    "dashboards",
    "tests",
    "bench",
    "scripts",
    "docs",
)
SUFFIXES = {".py", ".yaml", ".yml", ".sql", ".toml", ".md", ".html", ".js", ".css", ""}
# A file name ending in .md, not part of a URL or of a longer name.
MD_REF = re.compile(r"(?<![\w/.:@-])([\w][\w./-]*\.md)\b")


def _number(text: str) -> float:
    return float(text.replace(",", ""))


def metric_rows() -> set[tuple[str, str, float, float]]:
    rows = re.findall(r"^\| `(\w+)` \| ([^|]+?) \| (-?[\d,.]+) to (-?[\d,.]+) \|", DOMAIN, re.MULTILINE)
    return {(name, unit, _number(low), _number(high)) for name, unit, low, high in rows}


@pytest.mark.parametrize("kind", list(DeviceKind))
def test_every_metric_is_documented_with_its_unit_and_range(kind: DeviceKind) -> None:
    documented = metric_rows()
    missing = [
        (m.name, m.unit, m.low, m.high)
        for m in CATALOGUE[kind].values()
        if (m.name, m.unit, float(m.low), float(m.high)) not in documented
    ]
    assert not missing, f"docs/domain.md lacks or misstates: {missing}"


def test_every_default_rule_is_documented_with_its_severity_and_class() -> None:
    rows = re.findall(
        r"^\| `([\w.]+)` \| [^|]+ \| (red|yellow|info) \| (clinical|technical) \|", DOMAIN, re.M
    )
    documented = {key: (severity, klass) for key, severity, klass in rows}
    for rules in default_rules().values():
        for key, rule in rules.items():
            assert documented.get(key) == (rule["severity"], rule["class"]), key


def _scanned_files() -> list[Path]:
    files = [ROOT / "README.md"]
    for top in SCANNED:
        files += [
            p
            for p in sorted((ROOT / top).rglob("*"))
            if p.is_file()
            and p.suffix in SUFFIXES
            and "vendor" not in p.parts
            and "__pycache__" not in p.parts
        ]
    # This file names outside documents on purpose, to test the check.
    return [p for p in files if p != Path(__file__).resolve()]


def test_documents_cited_anywhere_are_in_the_repository() -> None:
    missing = []
    for path in _scanned_files():
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        for match in MD_REF.finditer(text):
            ref = match[1]
            if not ((ROOT / ref).is_file() or (path.parent / ref).is_file()):
                line = text.count("\n", 0, match.start()) + 1
                missing.append(f"{path.relative_to(ROOT)}:{line}: {ref}")
    assert not missing, "cited documents that are not in the repository:\n" + "\n".join(missing)


def test_the_citation_check_catches_an_outside_document(tmp_path: Path) -> None:
    outside = "design" + ".md"  # built, so this file does not itself cite a missing document
    text = f"# Thresholds from {outside}, see also docs/domain.md and https://example.org/notes" + ".md\n"
    refs = [m[1] for m in MD_REF.finditer(text)]
    assert refs == [outside, "docs/domain.md"]
    assert not (ROOT / outside).exists() and (ROOT / "docs" / "domain.md").is_file()
