"""Check the installed Python packages for known vulnerabilities with pip-audit.

Run by ``make audit-deps`` (and so by CI). It audits exactly what is installed in the project's
virtual environment (``pip list``, editable mpoxscan left out, local version labels such as
``+cpu`` dropped), with pip-audit in a tool environment of its own (``.venv/pip-audit``).

Exit status: 1 when a vulnerability is found that ``.ci/pip-audit-allow.txt`` does not accept;
0 when none is, and also 0, with a loud SKIPPED message, when the vulnerability database
cannot be reached (no network, or a proxy that does not pass PyPI's per-version JSON API): a
network failure of the checker must not fail CI. See docs/security.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

PIP_AUDIT = "pip-audit==2.10.1"
#: Below this share of packages actually checked, the service is taken to be unreachable.
MIN_CHECKED_SHARE = 0.5


def main() -> int:
    """Run the audit; see the module docstring for the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=Path, default=Path(".venv"))
    parser.add_argument(
        "--allow", type=Path, default=Path(__file__).with_name("pip-audit-allow.txt")
    )
    parser.add_argument("--timeout", type=int, default=15, help="seconds per request")
    args = parser.parse_args()

    allowed = read_allow_list(args.allow)
    tool = ensure_pip_audit(args.venv / "pip-audit")
    if tool is None:
        return skipped(f"could not install {PIP_AUDIT} (no access to PyPI?)")
    with tempfile.TemporaryDirectory() as work:
        requirements = Path(work) / "installed.txt"
        requirements.write_text(installed_requirements(args.venv))
        report_path = Path(work) / "report.json"
        command = [
            str(tool),
            "--requirement", str(requirements),
            "--no-deps", "--disable-pip",
            "--progress-spinner", "off",
            "--timeout", str(args.timeout),
            "--format", "json", "--output", str(report_path),
        ]  # fmt: skip
        for vuln_id in allowed:
            command += ["--ignore-vuln", vuln_id]
        run = subprocess.run(command, capture_output=True, text=True)
        if not report_path.exists():
            last = (run.stderr.strip().splitlines() or ["no output"])[-1]
            return skipped(f"pip-audit could not query the vulnerability service: {last}")
        report = json.loads(report_path.read_text())
    return judge(report, allowed)


def read_allow_list(path: Path) -> dict[str, str]:
    """``{vulnerability id: reason}``; every line needs a reason after ``#``."""
    allowed: dict[str, str] = {}
    if not path.exists():
        return allowed
    for number, line in enumerate(path.read_text().splitlines(), 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        vuln_id, _, reason = text.partition("#")
        if not reason.strip():
            sys.exit(f"{path}:{number}: say why {vuln_id.strip()} is accepted, after a '#'")
        allowed[vuln_id.strip()] = reason.strip()
    return allowed


def ensure_pip_audit(tool_venv: Path) -> Path | None:
    """pip-audit in its own virtual environment, installed on first use."""
    executable = tool_venv / "bin" / "pip-audit"
    if executable.exists():
        return executable
    steps = [
        [sys.executable, "-m", "venv", str(tool_venv)],
        [str(tool_venv / "bin" / "pip"), "install", "--quiet", PIP_AUDIT],
    ]
    for step in steps:
        if subprocess.run(step, capture_output=True, text=True).returncode != 0:
            return None
    return executable


def installed_requirements(venv: Path) -> str:
    """``name==version`` of every installed package but editable ones (mpoxscan itself)."""
    listing = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "list", "--format=json", "--exclude-editable"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    # PyPI knows torch 2.13.0, not the local build label of torch 2.13.0+cpu.
    pins = [f"{p['name']}=={p['version'].split('+')[0]}" for p in json.loads(listing)]
    return "\n".join(sorted(pins)) + "\n"


def judge(report: dict, allowed: dict[str, str]) -> int:
    """Print the outcome; 1 on a vulnerability not allowed, else 0 (also when skipped)."""
    dependencies = report.get("dependencies", [])
    unchecked = [d for d in dependencies if d.get("skip_reason")]
    checked = len(dependencies) - len(unchecked)
    if not dependencies or checked < MIN_CHECKED_SHARE * len(dependencies):
        reason = unchecked[0]["skip_reason"] if unchecked else "no packages listed"
        return skipped(
            f"only {checked} of {len(dependencies)} packages could be checked ({reason})"
        )
    found = [
        (d["name"], d["version"], v["id"], v.get("fix_versions", []))
        for d in dependencies
        for v in d.get("vulns", [])
        if v["id"] not in allowed and not set(v.get("aliases", [])) & set(allowed)
    ]
    for name in (d["name"] for d in unchecked):
        print(f"audit-deps: warning: {name} could not be checked")
    if found:
        for name, version, vuln_id, fixes in found:
            print(f"audit-deps: {name} {version}: {vuln_id} (fixed in {', '.join(fixes) or '?'})")
        print(
            "audit-deps: FAILED: upgrade the package in requirements.lock, or accept the "
            "vulnerability in .ci/pip-audit-allow.txt with a reason"
        )
        return 1
    print(f"audit-deps: ok: {checked} packages, no known vulnerabilities not accepted")
    return 0


def skipped(why: str) -> int:
    print(f"audit-deps: SKIPPED: {why}. Run `make audit-deps` where PyPI's JSON API is reachable.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
