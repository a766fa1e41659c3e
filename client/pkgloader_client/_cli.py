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
import time
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.tree import Tree as RichTree

from pkgloader_client._client import PackageLoaderClient
from pkgloader_client._config import DEFAULT_TARGET
from pkgloader_client._errors import (
    AtomNotFound,
    CacheFull,
    Cancelled,
    ContentDecodingError,
    ContentHashMismatch,
    DeadlineExceeded,
    DependencyCycle,
    DuplicateVersions,
    FetchError,
    HashMismatch,
    InternalError,
    InvalidArgument,
    InvalidPackage,
    InvalidSpecifier,
    InvalidTree,
    NoDiskCache,
    NoMatchingVersion,
    NotFound,
    PackageNotCached,
    PackageNotFound,
    PackageTooLarge,
    PathNotFound,
    PermissionDenied,
    PkgloaderError,
    RegistryRejected,
    RegistryUnavailable,
    ResolveError,
    ResourceExhausted,
    ServiceUnavailable,
    TransferError,
    Unauthenticated,
    UnknownPackage,
    UpstreamRejected,
    UpstreamUnavailable,
    VolumeNotFound,
)
from pkgloader_client._models import EntryKind, Package, PackageTree, ServingStatus
from pkgloader_client._sizes import parse_size
from pkgloader_client._version import __version__

PROG = "pkgloader-client"
#: The server's metrics port (PKGLOADER_METRICS_LISTEN) serves /status; 9090 is the manifests'.
DEFAULT_STATUS_URL = "http://127.0.0.1:9090/status"

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
    InvalidSpecifier: 3,
    UnknownPackage: 4,
    NoMatchingVersion: 4,
    RegistryUnavailable: 7,
    RegistryRejected: 7,
    ResolveError: 17,
    DependencyCycle: 17,
    DuplicateVersions: 17,
    # Contents calls: "not there" is the same exit as a package upstream does not have, and a
    # corrupt atom or file the same as a package whose hash does not match.
    NotFound: 4,
    PackageNotCached: 4,
    AtomNotFound: 4,
    VolumeNotFound: 4,
    PathNotFound: 4,
    ContentHashMismatch: 5,
    # LoadTree: a corrupt atom exits as a package whose hash does not match does; a tree that
    # cannot be assembled has its own status.
    InvalidTree: 18,
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
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


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
        help="then remove least recently used entries until this fits (20G = 20e9, 16Gi = 16*2^30)",
    )
    retain.add_argument("--dry-run", action="store_true", help="report, remove nothing")

    evict = command("evict", "drop packages from the server's memory cache")
    evict.add_argument("sha256", nargs="+", type=_sha256)
    evict.add_argument("--delete-files", action="store_true", help="also delete the disk files")

    validate = command("validate", "re-hash every cache file (exit 16 when some are damaged)")
    validate.add_argument("--prune", action="store_true", help="delete damaged files")
    validate.add_argument("--deep", action="store_true", help="also parse every package")

    tree = command(
        "tree", "load everything a package needs to run; print its packages, commands and mounts"
    )
    tree.add_argument(
        "spec",
        metavar="SPEC",
        help="namespace/name@requirement, sha256:<hex> or a URL (with --sha256: that package)",
    )
    tree.add_argument(
        "--sha256", type=_sha256, help="SPEC is the URL of a package with this sha256 (hex)"
    )
    tree.add_argument(
        "--resolution",
        metavar="FILE",
        help="use this resolution (Resolve's JSON, e.g. from `resolve --json`) as given",
    )
    tree.add_argument(
        "--atoms",
        metavar="DIR",
        help="save each atom the commands run into DIR as <sha256>.wasm (verified)",
    )
    tree.add_argument("--hash-validation", choices=["none", "warn", "fail"])
    tree.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show progress while the tree loads (default: when stderr is a terminal)",
    )

    resolve = command("resolve", "resolve a package and its dependencies (no download)")
    resolve.add_argument(
        "specifier", metavar="SPEC", help="namespace/name[@requirement], a URL, or sha256:HEX"
    )

    health = command("health", "the server's health status (exit 15 unless SERVING)")
    health.add_argument("--service", default=None, help='the service to ask for ("" = server)')

    def contents(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--url",
            help="where the server loads the package from when it is not cached (with sha256)",
        )

    atom = command("atom", "save one atom of a cached package (-o FILE, or - for stdout)")
    atom.add_argument("sha256", type=_sha256, help="the package's sha256 (hex)")
    atom.add_argument("name", help="the atom's name, as the manifest has it")
    atom.add_argument("-o", "--output", required=True, metavar="FILE", help="FILE, or - for stdout")
    atom.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show a progress bar (default: when stderr is a terminal)",
    )
    contents(atom)

    cat = command("cat", "write one file of a package's volume to stdout")
    cat.add_argument("sha256", type=_sha256, help="the package's sha256 (hex)")
    cat.add_argument("volume", help="the volume, as stored (atom, metadata, /settings, ...)")
    cat.add_argument("path", help="the file's full path in the volume (/README.md)")
    contents(cat)

    ls = command("ls", "list a directory of a package's volume")
    ls.add_argument("sha256", type=_sha256, help="the package's sha256 (hex)")
    ls.add_argument("volume", help="the volume, as stored (atom, metadata, /settings, ...)")
    ls.add_argument("path", nargs="?", default="/", help="the directory (default /)")
    ls.add_argument("-r", "--recursive", action="store_true", help="list the whole subtree")
    contents(ls)

    status = command("status", "the server's /status page (on its metrics port) as a table")
    status.add_argument(
        "--url",
        default=os.environ.get("PKGLOADER_STATUS_URL", DEFAULT_STATUS_URL),
        help=f"the status page (default $PKGLOADER_STATUS_URL or {DEFAULT_STATUS_URL})",
    )
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


def _tree(client: PackageLoaderClient, args: argparse.Namespace, out: _Output) -> int:
    resolution = None
    if args.resolution:
        with open(args.resolution, encoding="utf-8") as file:
            data = json.load(file)
        # `resolve --json` and grpcurl's ResolveResponse hold it under "resolution".
        resolution = data.get("resolution", data) if isinstance(data, dict) else data
        if not isinstance(resolution, dict):
            raise ValueError(f"{args.resolution}: not a JSON object")
    show = args.progress if args.progress is not None else sys.stderr.isatty()
    console = Console(stderr=True, force_terminal=True if args.progress else None)
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not show,
        transient=False,
    ) as bar:
        # Until the tree arrives the server is resolving and downloading: no total is known.
        task = bar.add_task(f"loading {args.spec}", total=None)

        def progress(received: int, total: int) -> None:
            if received == 0:
                description = "atoms" if args.atoms else "loaded"
                bar.update(task, description=description, total=total or None)
            bar.update(task, completed=received)

        tree = client.load_tree(
            None if args.sha256 else args.spec,
            url=args.spec if args.sha256 else None,
            sha256=args.sha256,
            resolution=resolution,
            atoms_dir=args.atoms,
            hash_validation=args.hash_validation,
            timeout=args.timeout,
            progress=progress,
        )
        if not args.atoms:
            bar.update(task, total=1, completed=1)
    if out.as_json:
        out.json(tree.to_dict())
        return OK
    out.console.print(_tree_view(tree))
    return OK


def _tree_view(tree: PackageTree) -> RichTree:
    """The tree as people read it: packages, then commands (what runs), then mounts."""
    view = RichTree(f"[bold]{escape(tree.id)}[/bold]")
    sizes = {p.id: p for p in tree.packages}
    packages = view.add("[bold]packages[/bold]")
    for p in tree.packages:
        packages.add(f"{escape(p.id)}  {_human(p.size)}  {p.source.value}  [dim]{p.sha256}[/dim]")
    commands = view.add(f"[bold]commands[/bold] ({len(tree.commands)})")
    for c in tree.commands:
        marks = " [green](entrypoint)[/green]" if c.name == tree.entrypoint else ""
        where = c.package if c.package == c.declared_in else f"{c.package} (from {c.declared_in})"
        node = commands.add(
            f"{escape(c.name)}{marks} → {escape(where)}: atom {escape(c.atom_name)}"
        )
        node.add(f"[dim]{c.atom_sha256}  {_human(c.atom_size)}  {escape(c.runner)}[/dim]")
    mounts = view.add(f"[bold]mounts[/bold] ({_human(tree.file_system_bytes)})")
    for m in tree.mounts:
        source = f"{m.volume}:{m.original_path}" if m.original_path != "/" else m.volume
        known = "" if m.package in sizes else " [red](not loaded)[/red]"
        mounts.add(f"{escape(m.mount_path)} ← {escape(m.package)} {escape(source)}{known}")
    for sha, path in tree.atom_files.items():
        view.add(f"saved {sha[:16]}… to {escape(path)}")
    for warning in tree.warnings:
        view.add(f"[yellow]warning[/yellow]: {escape(warning)}")
    return view


def _resolve(client: PackageLoaderClient, args: argparse.Namespace, out: _Output) -> int:
    resolution = client.resolve(args.specifier, timeout=args.timeout)
    if out.as_json:
        # The ResolveResponse as grpcurl prints it: its `resolution` can be sent back as it is.
        out.json(resolution.to_dict())
        return OK
    out.line(f"root: {resolution.root}")
    if resolution.entrypoint:
        out.line(f"entrypoint: {resolution.entrypoint}")
    for warning in resolution.warnings:
        out.line(f"warning: {warning}")
    packages = Table(title="packages", title_justify="left")
    packages.add_column("id")
    packages.add_column("sha256", no_wrap=True)
    packages.add_column("size", justify="right")
    packages.add_column("url")
    for n in resolution.nodes:
        size = _human(n.webc_size) if n.webc_size is not None else ""
        packages.add_row(n.id, n.webc_sha256, size, n.webc_url or "(cached)")
    out.table(packages)
    if resolution.edges:
        deps = Table(title="dependencies", title_justify="left")
        deps.add_column("package")
        deps.add_column("alias")
        deps.add_column("resolved to")
        for e in resolution.edges:
            deps.add_row(e.from_, e.alias, e.to)
        out.table(deps)
    if resolution.commands:
        commands = Table(title="commands", title_justify="left")
        commands.add_column("name")
        commands.add_column("declared in")
        for c in resolution.commands:
            commands.add_row(c.name, c.package)
        out.table(commands)
    if resolution.mounts:
        mounts = Table(title="mounts", title_justify="left")
        mounts.add_column("path")
        mounts.add_column("package")
        mounts.add_column("volume")
        mounts.add_column("from")
        for m in resolution.mounts:
            mounts.add_row(m.mount_path, m.package, m.volume, m.original_path or "/")
        out.table(mounts)
    return OK


def _atom(client: PackageLoaderClient, args: argparse.Namespace, out: _Output) -> int:
    common = {"url": args.url, "timeout": args.timeout}
    if args.output == "-":
        client.get_atom_to(sys.stdout.buffer, args.sha256, args.name, **common)
        return OK  # stdout holds the atom: nothing else may go there
    show = args.progress if args.progress is not None else sys.stderr.isatty()
    console = Console(stderr=True, force_terminal=True if args.progress else None)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=console,
        disable=not show,
    ) as bar:
        task = bar.add_task(args.name, total=None)

        def progress(received: int, total: int) -> None:
            bar.update(task, completed=received, total=total)

        info = client.get_atom_to(args.output, args.sha256, args.name, progress=progress, **common)
    if out.as_json:
        data = info.to_dict()
        data["output"] = args.output
        out.json(data)
    else:
        out.line(f"{info.name}: {info.size} bytes ({_human(info.size)}), sha256 {info.sha256}")
        out.line(f"saved to {args.output}")
    return OK


def _cat(client: PackageLoaderClient, args: argparse.Namespace, out: _Output) -> int:
    client.read_file_to(
        sys.stdout.buffer, args.sha256, args.volume, args.path, url=args.url, timeout=args.timeout
    )
    return OK


def _ls(client: PackageLoaderClient, args: argparse.Namespace, out: _Output) -> int:
    listing = client.list_directory(
        args.sha256,
        args.volume,
        args.path,
        recursive=args.recursive,
        url=args.url,
        timeout=args.timeout,
    )
    if out.as_json:
        out.json(listing.to_dict())
        return OK
    for e in listing.entries:
        if e.kind is EntryKind.DIRECTORY:
            out.line(f"{'':>10}  {e.path}/")
        else:
            out.line(f"{e.size:>10}  {e.path}")
    if listing.truncated:
        print(
            f"{PROG}: listed {len(listing.entries)} of {listing.total_entries} entries "
            "(the server caps a listing); list a subdirectory for the rest",
            file=sys.stderr,
        )
    return OK


_COMMANDS: dict[str, Callable[[PackageLoaderClient, argparse.Namespace, _Output], int]] = {
    "load": _load,
    "scan": _scan,
    "retain": _retain,
    "evict": _evict,
    "validate": _validate,
    "health": _health,
    "tree": _tree,
    "resolve": _resolve,
    "atom": _atom,
    "cat": _cat,
    "ls": _ls,
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


def _status(args: argparse.Namespace, out: _Output) -> int:
    """GET the status page (plain HTTP on the metrics port, not gRPC) and print it."""
    with urllib.request.urlopen(args.url, timeout=args.timeout or 10) as response:  # noqa: S310 - the operator's own URL
        data = json.load(response)
    if out.as_json:
        out.json(data)
        return OK
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in data.items():
        if key == "sources":
            continue
        if key.endswith("_bytes") and isinstance(value, int):
            value = f"{value} ({_human(value)})"
        elif isinstance(value, dict):
            value = ", ".join(f"{k} {v}" for k, v in sorted(value.items())) or "-"
        elif value is None or value == "":
            value = "-"
        table.add_row(key.replace("_", " "), str(value))
    out.table(table)
    if data.get("sources"):
        sources = Table(title="resolver sources", title_justify="left")
        for column in ("kind", "location", "last success"):
            sources.add_column(column)
        for source in data["sources"]:
            last = source.get("last_success")
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(last)) + " UTC" if last else "-"
            sources.add_row(source["kind"], source["location"], when)
        out.table(sources)
    return OK


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    out = _Output(args.json)
    if args.command == "status":
        try:
            return _status(args, out)
        except (OSError, ValueError) as exc:
            print(f"{PROG}: status: {exc}", file=sys.stderr)
            return EXIT_CODES[ServiceUnavailable]
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
