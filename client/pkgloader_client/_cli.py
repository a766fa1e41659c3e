"""`pkgloader-client`: load packages and look after the cache of a pkgloader server.

Results go to stdout (a table, or JSON with --json); progress and errors go to stderr, an error
as one line. The exit status says what failed (EXIT_CODES; documented in the client README).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from pkgloader_client._client import PackageLoaderClient
from pkgloader_client._config import DEFAULT_TARGET
from pkgloader_client._errors import (
    CacheFull,
    Cancelled,
    ContentDecodingError,
    DeadlineExceeded,
    FetchError,
    HashMismatch,
    InternalError,
    InvalidArgument,
    InvalidPackage,
    NoDiskCache,
    PackageNotFound,
    PackageTooLarge,
    PermissionDenied,
    PkgloaderError,
    ResourceExhausted,
    ServiceUnavailable,
    TransferError,
    Unauthenticated,
    UpstreamRejected,
    UpstreamUnavailable,
)
from pkgloader_client._models import Package, ServingStatus
from pkgloader_client._version import __version__

PROG = "pkgloader-client"

OK = 0
FAILED = 1  # an unexpected failure: internal error on the server, or a local I/O error
USAGE = 2  # argparse's own code for a bad command line
NOT_SERVING = 15
CACHE_DAMAGED = 16
INTERRUPTED = 130

#: Error class → exit status. Every class of the tree is listed (a test pins it).
EXIT_CODES: dict[type[PkgloaderError], int] = {
    PkgloaderError: FAILED,
    InternalError: FAILED,
    InvalidArgument: 3,
    PackageNotFound: 4,
    HashMismatch: 5,
    InvalidPackage: 6,
    FetchError: 7,
    UpstreamRejected: 7,
    UpstreamUnavailable: 7,
    ContentDecodingError: 7,
    PermissionDenied: 8,
    Unauthenticated: 9,
    ResourceExhausted: 10,
    PackageTooLarge: 10,
    CacheFull: 10,
    NoDiskCache: 11,
    ServiceUnavailable: 12,
    DeadlineExceeded: 13,
    TransferError: 14,
    Cancelled: INTERRUPTED,
}

_HEX = re.compile(r"^[0-9a-fA-F]{64}$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def _sha256(text: str) -> str:
    if not _HEX.match(text):
        raise argparse.ArgumentTypeError(f"expected 64 hex digits, got {text!r}")
    return text.lower()


def _duration(text: str) -> float:
    match = _DURATION.match(text)
    if not match:
        raise argparse.ArgumentTypeError(
            f"expected a duration such as 3600, 90m, 12h or 7d, got {text!r}"
        )
    return float(match.group(1)) * _SECONDS[match.group(2)]


def _size(text: str) -> int:
    units = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
    match = re.match(r"^\s*(\d+)\s*([kmgt]?)(?:i?b)?\s*$", text, re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(
            f"expected a size such as 1048576, 512M or 2G, got {text!r}"
        )
    return int(match.group(1)) * units[match.group(2).lower()]


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def parser() -> argparse.ArgumentParser:
    # Connection options are accepted before or after the command: `--server X load ...` and
    # `load ... --server X`. The subcommands' copies default to SUPPRESS so they never overwrite
    # a value given before the command.
    def connection(p: argparse.ArgumentParser, defaults: bool) -> None:
        d: Callable[[Any], Any] = (lambda v: v) if defaults else (lambda v: argparse.SUPPRESS)
        g = p.add_argument_group("connection")
        g.add_argument(
            "--server",
            default=d(os.environ.get("PKGLOADER_SERVER", DEFAULT_TARGET)),
            metavar="HOST:PORT",
            help=f"the server (default $PKGLOADER_SERVER or {DEFAULT_TARGET})",
        )
        g.add_argument(
            "--token",
            default=d(os.environ.get("PKGLOADER_TOKEN")),
            help="sent as `authorization: Bearer TOKEN` (default $PKGLOADER_TOKEN)",
        )
        g.add_argument("--tls", action="store_true", default=d(False), help="connect with TLS")
        g.add_argument("--tls-ca", default=d(None), metavar="PEM", help="CA bundle (implies TLS)")
        g.add_argument("--tls-cert", default=d(None), metavar="PEM", help="client certificate")
        g.add_argument("--tls-key", default=d(None), metavar="PEM", help="client private key")
        g.add_argument(
            "--timeout", type=float, default=d(None), metavar="SECONDS", help="call deadline"
        )
        g.add_argument("--json", action="store_true", default=d(False), help="print JSON")

    root = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    root.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    connection(root, defaults=True)
    commands = root.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        p = commands.add_parser(name, help=help, description=help)
        connection(p, defaults=False)
        return p

    load = command("load", "load a package; print its manifest, or save it with -o")
    load.add_argument("url", help="http(s):// or file:// URL of the package")
    load.add_argument("--sha256", required=True, type=_sha256, help="expected sha256 (hex)")
    load.add_argument("-o", "--output", metavar="FILE", help="stream the package into FILE")
    load.add_argument("--package-id", help="a name for the server's logs")
    load.add_argument("--hash-validation", choices=["none", "warn", "fail"])
    load.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show a progress bar with -o (default: when stderr is a terminal)",
    )

    scan = command("scan", "list the disk cache")
    scan.add_argument("--batch-size", type=int, default=0, help=argparse.SUPPRESS)

    retain = command("retain", "remove cache files by criteria")
    retain.add_argument(
        "--keep",
        action="append",
        default=[],
        type=_sha256,
        metavar="SHA256",
        help="remove every entry not kept (repeatable)",
    )
    retain.add_argument(
        "--remove",
        action="append",
        default=[],
        type=_sha256,
        metavar="SHA256",
        help="remove this entry (repeatable)",
    )
    retain.add_argument(
        "--unused-for",
        type=_duration,
        metavar="DURATION",
        help="remove entries unused for this long (3600, 90m, 12h, 7d)",
    )
    retain.add_argument(
        "--max-total-bytes",
        type=_size,
        metavar="SIZE",
        help="then remove least recently used entries until this fits (512M, 2G)",
    )
    retain.add_argument("--dry-run", action="store_true", help="report, remove nothing")

    evict = command("evict", "drop packages from the server's memory cache")
    evict.add_argument("sha256", nargs="+", type=_sha256)
    evict.add_argument("--delete-files", action="store_true", help="also delete the disk files")

    validate = command("validate", "re-hash every cache file (exit 16 when some are damaged)")
    validate.add_argument("--prune", action="store_true", help="delete damaged files")
    validate.add_argument("--deep", action="store_true", help="also parse every package")

    health = command("health", "the server's health status (exit 15 unless SERVING)")
    health.add_argument("--service", default=None, help='the service to ask for ("" = server)')
    return root


class _Output:
    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        # Piped output gets a wide console: rich's default of 80 columns would cut the 64-digit
        # hashes people copy from these tables.
        width = None if sys.stdout.isatty() else 200
        self.console = Console(soft_wrap=True, highlight=False, width=width)

    def json(self, data: Any) -> None:
        # Plain print: rich would re-wrap and colour the JSON, which then no longer parses.
        print(json.dumps(data, indent=2, sort_keys=True))

    def table(self, table: Table) -> None:
        self.console.print(table)

    def line(self, text: str) -> None:
        self.console.print(text, markup=False)


def _package(out: _Output, package: Package, output: str | None) -> None:
    if out.as_json:
        data = package.to_dict()
        if output:
            data["output"] = output
        out.json(data)
        return
    info = Table(show_header=False, box=None, pad_edge=False)
    info.add_column(style="bold")
    info.add_column()
    info.add_row("sha256", package.sha256)
    info.add_row("size", f"{package.size} ({_human(package.size)})")
    info.add_row("format", package.format)
    info.add_row("source", package.source.value)
    if package.package_id:
        info.add_row("package id", package.package_id)
    if package.manifest.entrypoint:
        info.add_row("entrypoint", package.manifest.entrypoint)
    if output:
        info.add_row("saved to", output)
    for warning in package.warnings:
        info.add_row("warning", warning)
    out.table(info)
    if package.manifest.commands:
        commands = Table(title="commands", title_justify="left")
        commands.add_column("name")
        commands.add_column("runner")
        commands.add_column("atom")
        for c in package.manifest.commands:
            atom = c.annotations.get("wasi", {}).get("atom") or c.annotations.get("atom", "")
            commands.add_row(c.name, c.runner, str(atom) if not isinstance(atom, dict) else "")
        out.table(commands)
    if package.manifest.atoms:
        atoms = Table(title="atoms", title_justify="left")
        atoms.add_column("name")
        atoms.add_column("kind")
        atoms.add_column("size", justify="right")
        for a in package.manifest.atoms:
            atoms.add_row(a.name, a.kind, _human(a.size))
        out.table(atoms)
    if package.manifest.dependencies:
        deps = Table(title="dependencies", title_justify="left")
        deps.add_column("alias")
        deps.add_column("spec")
        for d in package.manifest.dependencies:
            deps.add_row(d.alias, d.spec)
        out.table(deps)
    if package.volumes:
        volumes = Table(title="volumes", title_justify="left")
        volumes.add_column("name")
        volumes.add_column("files", justify="right")
        volumes.add_column("size", justify="right")
        for v in package.volumes:
            volumes.add_row(v.name, str(v.files), _human(v.bytes))
        out.table(volumes)


def _load(client: PackageLoaderClient, args: argparse.Namespace, out: _Output) -> int:
    common = {
        "package_id": args.package_id,
        "hash_validation": args.hash_validation,
        "timeout": args.timeout,
    }
    if not args.output:
        _package(out, client.load(args.url, args.sha256, **common), None)
        return OK
    show = args.progress if args.progress is not None else sys.stderr.isatty()
    console = Console(stderr=True, force_terminal=True if args.progress else None)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not show,
        transient=False,
    ) as bar:
        task = bar.add_task(os.path.basename(args.output), total=None)

        def progress(received: int, total: int) -> None:
            bar.update(task, completed=received, total=total)

        package = client.load_to(args.output, args.url, args.sha256, progress=progress, **common)
    _package(out, package, args.output)
    return OK


def _scan(client: PackageLoaderClient, args: argparse.Namespace, out: _Output) -> int:
    entries = client.scan(batch_size=args.batch_size, timeout=args.timeout)
    if out.as_json:
        out.json([e.to_dict() for e in entries])
        return OK
    table = Table(
        title=f"{len(entries)} cache files, {_human(sum(e.size for e in entries))}",
        title_justify="left",
    )
    table.add_column("sha256", no_wrap=True)
    table.add_column("size", justify="right")
    table.add_column("last used (UTC)")
    table.add_column("in memory")
    for e in sorted(entries, key=lambda e: e.last_used, reverse=True):
        table.add_row(
            e.sha256,
            _human(e.size),
            e.last_used.strftime("%Y-%m-%d %H:%M:%S"),
            "yes" if e.in_memory else "",
        )
    out.table(table)
    return OK


def _retain(client: PackageLoaderClient, args: argparse.Namespace, out: _Output) -> int:
    result = client.retain(
        keep=args.keep,
        remove=args.remove,
        unused_for=args.unused_for,
        max_total_bytes=args.max_total_bytes,
        dry_run=args.dry_run,
        timeout=args.timeout,
    )
    if out.as_json:
        out.json(result.to_dict())
        return OK
    verb = "would remove" if args.dry_run else "removed"
    for e in result.removed:
        out.line(f"{verb} {e.sha256} ({_human(e.size)})")
    out.line(
        f"{verb} {result.removed_files} files ({_human(result.removed_bytes)}); "
        f"kept {result.kept_files} files ({_human(result.kept_bytes)})"
    )
    return OK


def _evict(client: PackageLoaderClient, args: argparse.Namespace, out: _Output) -> int:
    result = client.evict(args.sha256, delete_files=args.delete_files, timeout=args.timeout)
    if out.as_json:
        out.json(result.to_dict())
        return OK
    for sha in args.sha256:
        states = [
            s
            for s, hit in (
                ("evicted from memory", sha in result.evicted),
                ("file deleted", sha in result.deleted),
            )
            if hit
        ]
        out.line(f"{sha}: {', '.join(states) or 'not cached'}")
    return OK


def _validate(client: PackageLoaderClient, args: argparse.Namespace, out: _Output) -> int:
    report = client.validate_cache(prune=args.prune, deep=args.deep, timeout=args.timeout)
    if out.as_json:
        out.json(report.to_dict())
    else:
        for m in report.mismatches:
            out.line(
                f"hash mismatch: {m.source} hashes to {m.actual_sha256}"
                f"{' (pruned)' if m.pruned else ''}"
            )
        for b in report.invalid_packages:
            out.line(
                f"invalid package: {b.source}: {'; '.join(b.problems)}"
                f"{' (pruned)' if b.pruned else ''}"
            )
        out.line(
            f"checked {report.checked_files} files ({_human(report.checked_bytes)}): "
            + (
                "ok"
                if report.ok
                else f"{report.mismatch_count + report.invalid_package_count} damaged"
            )
        )
    return OK if report.ok else CACHE_DAMAGED


def _health(client: PackageLoaderClient, args: argparse.Namespace, out: _Output) -> int:
    status = (
        client.health(timeout=args.timeout)
        if args.service is None
        else client.health(args.service, timeout=args.timeout)
    )
    if out.as_json:
        out.json({"status": status.value})
    else:
        out.line(status.value)
    return OK if status is ServingStatus.SERVING else NOT_SERVING


_COMMANDS: dict[str, Callable[[PackageLoaderClient, argparse.Namespace, _Output], int]] = {
    "load": _load,
    "scan": _scan,
    "retain": _retain,
    "evict": _evict,
    "validate": _validate,
    "health": _health,
}


def exit_code(error: PkgloaderError) -> int:
    for cls in type(error).__mro__:
        if cls in EXIT_CODES:
            return EXIT_CODES[cls]
    return FAILED


def _error_line(error: PkgloaderError) -> str:
    label = error.reason or error.code.name
    message = " ".join(error.message.split())  # one line, whatever the server's message holds
    return f"{PROG}: {label}: {message}"


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    out = _Output(args.json)
    try:
        with PackageLoaderClient(
            args.server,
            token=args.token,
            tls=args.tls or None,
            tls_ca=args.tls_ca,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
        ) as client:
            return _COMMANDS[args.command](client, args, out)
    except PkgloaderError as exc:
        print(_error_line(exc), file=sys.stderr)
        return exit_code(exc)
    except (OSError, ValueError) as exc:
        # Local problems: an unreadable TLS file, an output folder that does not exist.
        print(f"{PROG}: {exc}", file=sys.stderr)
        return FAILED
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
