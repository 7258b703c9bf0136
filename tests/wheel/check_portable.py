"""Fails unless every wheel named on the command line installs on old Linux (`make test-wheel`).

A wheel is portable when `auditwheel show` finds that its binaries need no glibc newer than
``MAX_GLIBC`` and no shared library outside the manylinux policy, and when the wheel's own file
name claims that tag (pip installs by the name, so a mis-tagged wheel is as bad as a non-portable
one). A wheel built against the build machine's glibc (``manylinux_2_34`` on Debian 12) fails.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

#: manylinux_2_28 is the newest tag the release wheel may carry (RHEL 8, Debian 10, Ubuntu 18.10).
MAX_GLIBC = (2, 28)
_TAG = re.compile(r"^manylinux_(\d+)_(\d+)_x86_64$")
#: the legacy aliases pip still writes and reads
_LEGACY = {"manylinux2014_x86_64": "manylinux_2_17_x86_64", "manylinux2010_x86_64": "manylinux_2_12_x86_64"}


def problems(wheel: Path) -> list[str]:
    """What makes ``wheel`` non-portable; empty when it is portable."""
    audit = subprocess.run(
        [sys.executable, "-m", "auditwheel", "show", "--json", str(wheel)], capture_output=True, text=True
    )
    if audit.returncode != 0:
        return [f"auditwheel show failed: {audit.stderr.strip() or audit.stdout.strip()}"]
    report = json.loads(audit.stdout)
    found = []
    tag = report["overall_tag"]
    match = _TAG.match(tag)
    if match is None:
        found.append(f"auditwheel says the binaries fit {tag!r}, not a manylinux tag")
    elif (int(match[1]), int(match[2])) > MAX_GLIBC:
        found.append(
            f"the binaries need glibc {match[1]}.{match[2]} > {MAX_GLIBC[0]}.{MAX_GLIBC[1]} ({tag}): "
            f"{report['versioned_symbols']}"
        )
    if report["external_libs"]:
        found.append(f"the binaries link shared libraries outside the manylinux policy: {report['external_libs']}")
    platform_tags = {_LEGACY.get(t, t) for t in wheel.name.removesuffix(".whl").split("-")[-1].split(".")}
    if tag not in platform_tags:
        found.append(f"the file name claims {sorted(platform_tags)} but auditwheel finds {tag!r}")
    return found


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: check_portable.py WHEEL...", file=sys.stderr)
        return 2
    failed = False
    for name in argv:
        wheel = Path(name)
        found = problems(wheel)
        for problem in found:
            print(f"{wheel.name}: not portable: {problem}", file=sys.stderr)
        if not found:
            print(f"{wheel.name}: portable")
        failed = failed or bool(found)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
