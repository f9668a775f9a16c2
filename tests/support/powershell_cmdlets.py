"""Builds tests/data/powershell-cmdlets.json: the cmdlets agent-swarm's PowerShell uses, with
the parameters Microsoft documents for them (test-only; run by hand when a script needs a new
cmdlet).

Sources, both public Microsoft repositories of the cmdlet reference (platyPS markdown, one page
per cmdlet, a ``### -Name`` section per parameter with its aliases in a YAML block):

* ``MicrosoftDocs/windows-powershell-docs``: the Windows modules (Hyper-V, NetTCPIP, DISM…),
  docsets ``winserver2019-ps`` and ``winserver2022-ps``;
* ``MicrosoftDocs/PowerShell-Docs``: PowerShell's own modules, ``reference/5.1`` (Windows
  PowerShell, what agent-swarm runs first) and ``reference/7.4``; the common parameters from
  ``about_CommonParameters`` (5.1).

A cmdlet is allowed with a parameter only when every docset of its source documents both (so
a script runs on Windows 10 1809 / Server 2019 and later, under PowerShell 5.1 and 7). The
JSON names the repository, commit and paths it was made from.

Usage::

    python tests/support/powershell_cmdlets.py \\
        --windows-docs PATH/windows-powershell-docs \\
        --powershell-docs PATH/PowerShell-Docs \\
        [-o tests/data/powershell-cmdlets.json]

(each PATH a clone or bare git directory of the repository).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

WINDOWS_DOCS = "MicrosoftDocs/windows-powershell-docs"
POWERSHELL_DOCS = "MicrosoftDocs/PowerShell-Docs"
WINDOWS_DOCSETS = ("docset/winserver2019-ps", "docset/winserver2022-ps")
POWERSHELL_DOCSETS = ("reference/5.1", "reference/7.4")
COMMON_PARAMETERS = "reference/5.1/Microsoft.PowerShell.Core/About/about_CommonParameters.md"

# cmdlet -> the repository that documents it
CMDLETS: dict[str, str] = {
    **{
        name: WINDOWS_DOCS
        for name in (
            "Add-VMDvdDrive", "Add-VMHardDiskDrive", "Add-VMNetworkAdapter", "Checkpoint-VM",
            "Connect-VMNetworkAdapter", "Get-VM", "Get-VMDvdDrive", "Get-VMHardDiskDrive",
            "Get-VMNetworkAdapter", "Get-VMSnapshot", "Get-VMSwitch", "New-VM", "Remove-VM",
            "Remove-VMSavedState", "Restore-VMSnapshot", "Resume-VM", "Set-VM",
            "Set-VMDvdDrive", "Set-VMFirmware", "Set-VMHardDiskDrive", "Start-VM", "Stop-VM",
            "Suspend-VM", "Get-NetNeighbor", "Get-WindowsOptionalFeature",
        )
    },
    **{
        name: POWERSHELL_DOCS
        for name in (
            "Add-Content", "ConvertTo-Json", "ForEach-Object", "Get-CimInstance",
            "Get-Command", "Get-Content", "Get-FileHash", "Get-ItemProperty", "Get-Module",
            "Get-Service", "Invoke-WebRequest", "Join-Path", "Move-Item", "New-Item",
            "Remove-Item", "Remove-Job", "Set-Location", "Set-StrictMode", "Sort-Object",
            "Split-Path", "Test-Path", "Wait-Job", "Where-Object", "Write-Host",
        )
    },
}  # fmt: skip

_SECTION_END = re.compile(r"^## (?!#)")
_PARAM = re.compile(r"^### -([A-Za-z][A-Za-z0-9]*)\s*$")
_ALIASES = re.compile(r"^Aliases:\s*(.*)$")
_VALUES = re.compile(r"^Accepted values:\s*(.*)$")


class Repo:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.commit = self._git("rev-parse", "HEAD").strip()
        self.files = self._git("ls-tree", "-r", "--name-only", self.commit).splitlines()

    def _git(self, *args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(self.path), *args],
            capture_output=True,
            text=True,
            check=True,
            encoding="utf-8",
        ).stdout

    def show(self, path: str) -> str:
        return self._git("show", f"{self.commit}:{path}")

    def find(self, docset: str, cmdlet: str) -> str | None:
        suffix = f"/{cmdlet}.md".lower()
        found = [f for f in self.files if f.startswith(docset + "/") and f.lower().endswith(suffix)]
        return sorted(found)[0] if found else None


def parameters(markdown: str) -> dict[str, dict[str, list[str]]]:
    """``{parameter: {"aliases": [...], "values": [...]}}`` of one cmdlet page (its
    ``## PARAMETERS`` section); ``values``: the "Accepted values" it lists, if any."""
    out: dict[str, dict[str, list[str]]] = {}
    in_params = False
    current: str | None = None
    for line in markdown.splitlines():
        if line.startswith("## "):
            in_params = line.strip().upper() == "## PARAMETERS"
            current = None
            continue
        if not in_params:
            continue
        m = _PARAM.match(line)
        if m:
            current = m.group(1)
            out[current] = {"aliases": [], "values": []}
            continue
        if current is None:
            continue
        for key, rx in (("aliases", _ALIASES), ("values", _VALUES)):
            a = rx.match(line.strip())
            if a and not out[current][key]:
                out[current][key] = [x.strip() for x in a.group(1).split(",") if x.strip()]
    return out


def common_parameters(markdown: str) -> dict[str, list[str]]:
    """The common and risk-management parameters of Windows PowerShell 5.1 (those documented
    as added in PowerShell 7 are left out)."""
    out: dict[str, list[str]] = {}
    sections = re.split(r"^### -", markdown, flags=re.MULTILINE)[1:]
    for section in sections:
        head, _, body = section.partition("\n")
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", head.strip()):
            continue
        body = body.split("\n## ")[0]  # up to the next section of the page
        if re.search(r"added\s+in\s+PowerShell\s+7", " ".join(body.split())):
            continue
        aliases = re.search(r"^Aliases:\s*(.*)$", body, flags=re.MULTILINE)
        names = aliases.group(1).split(",") if aliases else []
        out[head.strip()] = [x.strip() for x in names if x.strip()]
    return out


def build(windows_docs: Path, powershell_docs: Path) -> dict[str, object]:
    repos = {WINDOWS_DOCS: Repo(windows_docs), POWERSHELL_DOCS: Repo(powershell_docs)}
    docsets = {WINDOWS_DOCS: WINDOWS_DOCSETS, POWERSHELL_DOCS: POWERSHELL_DOCSETS}
    cmdlets: dict[str, object] = {}
    for name, source in sorted(CMDLETS.items()):
        repo = repos[source]
        pages = []
        params: dict[str, dict[str, list[str]]] | None = None
        for docset in docsets[source]:
            page = repo.find(docset, name)
            if page is None:
                raise SystemExit(f"{name} is not documented in {source} {docset}")
            pages.append(page)
            these = parameters(repo.show(page))
            if params is None:
                params = these
            else:  # documented in every docset, aliases and accepted values too
                params = {
                    p: {
                        "aliases": sorted(set(v["aliases"]) & set(these[p]["aliases"])),
                        # a value list in one docset only: the one that lists them
                        "values": sorted(
                            set(v["values"]) & set(these[p]["values"])
                            if v["values"] and these[p]["values"]
                            else set(v["values"]) | set(these[p]["values"])
                        ),
                    }
                    for p, v in params.items()
                    if p in these
                }
        cmdlets[name] = {"source": source, "paths": pages, "parameters": params}
    common = common_parameters(repos[POWERSHELL_DOCS].show(COMMON_PARAMETERS))
    return {
        "about": (
            "Cmdlets agent-swarm's PowerShell scripts may use, with the parameters (their "
            "aliases, and the values they accept where the reference lists them) Microsoft's "
            "cmdlet reference documents in every listed docset. "
            "Made by tests/support/powershell_cmdlets.py; checked against by "
            "tests/unit/test_hyperv_scripts.py."
        ),
        "sources": [
            {
                "repository": source,
                "commit": repos[source].commit,
                "docsets": list(docsets[source]),
            }
            for source in (WINDOWS_DOCS, POWERSHELL_DOCS)
        ],
        "common_parameters": {
            "repository": POWERSHELL_DOCS,
            "path": COMMON_PARAMETERS,
            "parameters": common,
        },
        "cmdlets": cmdlets,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--windows-docs", type=Path, required=True)
    ap.add_argument("--powershell-docs", type=Path, required=True)
    ap.add_argument(
        "-o",
        "--output",
        type=Path,
        default=Path(__file__).resolve().parents[1] / "data" / "powershell-cmdlets.json",
    )
    args = ap.parse_args(argv)
    data = build(args.windows_docs, args.powershell_docs)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n", encoding="utf-8")
    print(f"{args.output}: {len(data['cmdlets'])} cmdlets")  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    sys.exit(main())
