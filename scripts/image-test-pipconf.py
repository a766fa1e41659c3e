"""Write the pip.conf that `make image-test` passes to the image build as a secret.

    image-test-pipconf.py OUT.conf     # prints the CA bundle file to pass as secret `pip-ca`

It carries this machine's pip index settings (`pip config list`: index-url, extra-index-url,
trusted-host, proxy, timeout, retries) into the build, with `cert` pointing at the CA secret's
mount point. Settings that name this machine's files (find-links, file:// indexes, constraint)
are left out: the build cannot see them.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

CA_MOUNT = "/run/secrets/pip-ca"
KEPT = ("index-url", "extra-index-url", "trusted-host", "proxy", "timeout", "retries")
DEFAULT_CA = "/etc/ssl/certs/ca-certificates.crt"


def host_config() -> dict[str, str]:
    """pip's effective `key -> value` (later sources win, as in pip: files, then environment)."""
    listing = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=True
    ).stdout
    config: dict[str, str] = {}
    for scope in ("global", "install", ":env:"):
        for line in listing.splitlines():
            match = re.match(r"^([^.]+)\.([\w-]+)='(.*)'$", line)
            if match and match.group(1) == scope:
                config[match.group(2)] = match.group(3)
    return config


def main(argv: list[str]) -> int:
    out = Path(argv[1])
    config = host_config()
    lines = ["[global]", f"cert = {CA_MOUNT}"]
    for key in KEPT:
        if key not in config:
            continue
        values = config[key].split()
        if key.endswith("index-url"):
            values = [v for v in values if v.startswith(("http://", "https://"))]
        if values:
            lines.append(f"{key} = {' '.join(values)}")
    out.write_text("\n".join(lines) + "\n")
    print(config.get("cert") or os.environ.get("PIP_CERT") or DEFAULT_CA)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
