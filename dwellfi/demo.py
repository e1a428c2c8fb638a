"""The demo account's credentials on disk, where `make run` shows them (DEBUG only)."""

import os
from pathlib import Path

DEMO_CREDENTIALS_FILE = (
    Path(__file__).resolve().parent.parent / "var" / "demo-credentials.txt"
)


def write_demo_credentials(values: dict[str, str]) -> None:
    """Keep the demo account's credentials for `make run` (mode 0600)."""
    DEMO_CREDENTIALS_FILE.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(DEMO_CREDENTIALS_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.writelines(f"{key}={value}\n" for key, value in values.items())


def read_demo_credentials() -> dict[str, str]:
    """The stored demo credentials; empty when there are none."""
    try:
        text = DEMO_CREDENTIALS_FILE.read_text()
    except FileNotFoundError:
        return {}
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
