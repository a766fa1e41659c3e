"""`pkgloader serve`: every setting is a flag, defaulting to its PKGLOADER_* variable."""

from __future__ import annotations

import argparse
import sys

from pkgloader import __version__
from pkgloader.settings import Settings, SettingsError


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="pkgloader", description=__doc__)
    root.add_argument("--version", action="version", version=f"pkgloader {__version__}")
    commands = root.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the gRPC service")
    for name, help_text in Settings.options():
        serve.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            metavar="VALUE",
            help=f"{help_text} [{Settings.env_name(name)}]",
        )
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if k != "command" and v is not None}
    try:
        settings = Settings.load(overrides=overrides)
    except SettingsError as exc:
        print(f"pkgloader: configuration error: {exc}", file=sys.stderr)
        return 2
    from pkgloader import logs
    from pkgloader.app import serve

    logs.configure(settings.log_level)
    try:
        serve(settings)
    except SettingsError as exc:  # an OTEL_* variable this server cannot follow
        print(f"pkgloader: configuration error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"pkgloader: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
