"""The ``snapload`` command line.

Each subcommand is registered by a ``register(subparsers)`` function listed in ``COMMANDS`` as
``"module:function"``. The function adds its parser and sets ``handler`` (``args -> exit status``)
with ``set_defaults``. Every listed module is imported when the CLI starts, so modules import heavy
dependencies (torch) inside their handlers, keeping ``inspect`` and ``verify`` fast.

Exit status: 0 success; 1 a snapshot or checkpoint problem (bad checksum, corrupt file, refused
pickle); 2 a usage problem (bad arguments, missing file) — always a message, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
import warnings
from collections.abc import Sequence
from typing import Any

from snapload import _native
from snapload._remote import is_url
from snapload._remote import verify as verify_url
from snapload._info import open as snapshot_info
from snapload._progress import ProgressBar, format_bytes, format_rate
from snapload.errors import SnapshotError

COMMANDS: tuple[str, ...] = (
    "snapload.cli:register_convert",
    "snapload.cli:register_inspect",
    "snapload.cli:register_verify",
    "snapload._cli_cache:register_warm",
    "snapload._cli_cache:register_status",
    "snapload._cli_cache:register_bench",
    "snapload._plan.cli:register",
)


class UsageError(Exception):
    """Raised by a handler for a problem with how it was called (exit status 2)."""


# --------------------------------------------------------------------------------------------
# convert


def register_convert(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "convert",
        help="convert a safetensors file, torch checkpoint or Hugging Face folder to a snapshot",
        description="Convert SRC (a .safetensors file, a torch .pt/.bin file loaded with "
        "weights_only=True, or a Hugging Face model folder) into the snapshot DST.",
    )
    p.add_argument("src", metavar="SRC", help="a .safetensors file, a .pt/.bin file or a Hugging Face model folder")
    p.add_argument("dst", metavar="DST", help="the snapshot file to write (its folder must exist)")
    p.add_argument("--dtype", choices=("bfloat16", "float16"), help="cast floating-point tensors")
    p.add_argument("--alignment", type=int, default=4096, metavar="N", help="tensor alignment in bytes (default 4096)")
    p.set_defaults(handler=run_convert)


def run_convert(args: argparse.Namespace) -> int:
    from snapload._convert import convert  # imports torch

    bar = ProgressBar("converting ", sys.stderr)
    start = time.perf_counter()
    try:
        info = convert(args.src, args.dst, dtype=args.dtype, alignment=args.alignment, progress=bar)
    except ValueError as e:  # bad --alignment and the like, reported by the writer
        raise UsageError(str(e)) from None
    finally:
        bar.close()
    seconds = time.perf_counter() - start
    aliases = sum(t.alias_of is not None for t in info.tensors)
    print(
        f"converted {args.src} -> {args.dst}: {_count(len(info.tensors), 'tensor')}"
        f"{_aliases(aliases)}, {format_bytes(info.data_bytes)} "
        f"in {seconds:.2f} s ({format_rate(info.data_bytes, seconds)})"
    )
    return 0


# --------------------------------------------------------------------------------------------
# inspect


def register_inspect(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "inspect",
        help="list a snapshot's tensors and metadata",
        description="Read and validate PATH's header (no tensor data is read, torch is not imported) and "
        "list its tensors (name, dtype, shape, size, offset or alias) and metadata.",
    )
    p.add_argument("path", metavar="PATH", help="a snapshot file")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(handler=run_inspect)


def reject_directory(path: str) -> None:
    """A plain message for a folder given instead of a snapshot file (exit status 2)."""
    if os.path.isdir(path):
        raise UsageError(f"{path}: is a directory, not a snapshot file")


def open_snapshot(path: str) -> Any:
    """``_native.Snapshot(path)``: the header read and validated, errors naming ``path``."""
    reject_directory(path)
    return _native.Snapshot(path)


def describe(path: str) -> dict[str, Any]:
    """A snapshot's header as plain JSON-ready data (reads the header only)."""
    reject_directory(path)
    info = snapshot_info(path)
    return {
        "path": path,
        "format_version": _native.FORMAT_VERSION,
        "alignment": info.alignment,
        "file_size": info.file_size,
        "data_start": info.data_start,
        "data_bytes": info.data_bytes,
        "metadata": info.metadata,
        "tensors": [
            {
                "name": t.name,
                "dtype": t.dtype,
                "shape": list(t.shape),
                "offset": t.offset,
                "length": t.length,
                "crc32c": f"{t.crc32c:08x}",
                "alias_of": t.alias_of,
            }
            for t in info.tensors
        ],
    }


def run_inspect(args: argparse.Namespace) -> int:
    d = describe(args.path)
    if args.json:
        print(json.dumps(d, indent=2))
        return 0
    rows = [("name", "dtype", "shape", "size", "offset")]
    for t in d["tensors"]:
        shape = "[" + ", ".join(map(str, t["shape"])) + "]"
        if t["alias_of"] is None:
            rows.append((t["name"], t["dtype"], shape, format_bytes(t["length"]), str(t["offset"])))
        else:
            rows.append((t["name"], t["dtype"], shape, "-", f"alias of {t['alias_of']}"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    print(f"{d['path']}: snapshot v{d['format_version']}, alignment {d['alignment']}, file {format_bytes(d['file_size'])}")
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4])
    if d["metadata"]:
        print("metadata:")
        for k, v in d["metadata"].items():
            print(f"  {k}: {_one_line(v)}")
    aliases = sum(t["alias_of"] is not None for t in d["tensors"])
    print(
        f"total: {_count(len(d['tensors']), 'tensor')}{_aliases(aliases)}, "
        f"{format_bytes(d['data_bytes'])} of tensor data"
    )
    return 0


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _aliases(n: int) -> str:
    return "" if n == 0 else " (1 alias)" if n == 1 else f" ({n} aliases)"


def _one_line(value: str, limit: int = 100) -> str:
    """Metadata values can be whole JSON documents (hf.config); show their start on one line."""
    flat = " ".join(value.split())
    if len(flat) <= limit:
        return flat
    return f"{flat[:limit]}... ({len(value)} chars; --json shows all)"


# --------------------------------------------------------------------------------------------
# verify


def register_verify(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "verify",
        help="check every tensor's CRC32C",
        description="Read every tensor of PATH and check it against the CRC32C recorded in the header, "
        "in parallel. Exit status 1 names the first tensor that does not match. Does not import torch.",
    )
    p.add_argument("path", metavar="PATH", help="a snapshot file")
    p.add_argument("--threads", type=int, default=0, metavar="N", help="worker threads (default: one per core)")
    p.set_defaults(handler=run_verify)


def run_verify(args: argparse.Namespace) -> int:
    if args.threads < 0:
        raise UsageError("--threads must be 0 (one per core) or more")
    if is_url(args.path):  # streamed through a small ring and dropped, never held whole
        start = time.perf_counter()
        count, nbytes = verify_url(args.path, args.threads)
        seconds = time.perf_counter() - start
        print(f"OK {args.path}: {_count(count, 'tensor')}, {format_bytes(nbytes)} verified in {seconds:.2f} s ({format_rate(nbytes, seconds)})")
        return 0
    snap = open_snapshot(args.path)
    tensors = snap.tensors()
    nbytes = sum(row[4] for row in tensors if row[6] is None)
    start = time.perf_counter()
    mapping = snap.map()
    snap.verify(mapping, args.threads)  # raises ChecksumMismatchError naming the tensor
    seconds = time.perf_counter() - start
    print(
        f"OK {args.path}: {_count(len(tensors), 'tensor')}, {format_bytes(nbytes)} verified "
        f"in {seconds:.2f} s ({format_rate(nbytes, seconds)})"
    )
    return 0


# --------------------------------------------------------------------------------------------
# entry point


def build_parser() -> argparse.ArgumentParser:
    from snapload import __version__

    parser = argparse.ArgumentParser(prog="snapload", description="Page-aligned weight snapshots.")
    parser.add_argument("--version", action="version", version=f"snapload {__version__}")
    parser.set_defaults(handler=None)
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for entry in COMMANDS:
        module, _, func = entry.partition(":")
        getattr(importlib.import_module(module), func)(subparsers)
    return parser


def _error(message: str) -> None:
    print(f"snapload: error: {message}", file=sys.stderr)


def _os_message(e: OSError) -> str:
    if e.filename is not None and e.strerror:
        return f"{e.filename}: {e.strerror}"
    return str(e)


def _show_warning(message: Any, category: Any, filename: Any, lineno: Any, file: Any = None, line: Any = None) -> None:
    print(f"snapload: warning: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, or a usage error argparse already printed
        return e.code if isinstance(e.code, int) else 2
    if args.handler is None:
        parser.print_help(sys.stderr)
        return 2
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        try:
            return int(args.handler(args))
        except UsageError as e:
            _error(str(e))
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as e:
            _error(_os_message(e))
        except SnapshotError as e:
            _error(str(e))
            return 1
        except BrokenPipeError:  # output piped into `head` and the like: stop quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 1
        except OSError as e:
            _error(_os_message(e))
            return 1
        except KeyboardInterrupt:
            _error("interrupted")
            return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
