"""The ``quantref`` command.

``quantref tour`` runs every chapter (rendering each into its site page), renders the conformance page and builds
the site; ``quantref chapter N`` runs one chapter; ``quantref export onnx|tflite OUT_DIR`` writes the quantized model
for onnxruntime or LiteRT; ``quantref compress OUT_DIR`` writes the Deep-Compressed model file;
``quantref vectors OUT_DIR`` writes test vectors for other backends and
``quantref check OUT_DIR RESULTS`` checks a backend's results against them; ``quantref cache path|clear`` shows or
clears the trained-model cache.
"""

from __future__ import annotations

import argparse
import os
import runpy
import subprocess
import sys
import time
from pathlib import Path

import quantref


def project_root() -> Path:
    """The directory holding ``chapters/`` and ``mkdocs.yml``: the current directory if it has them, else the
    checkout that quantref was installed from (``pip install -e .``).

    Raises:
      FileNotFoundError: if neither has them (quantref was installed from a wheel, without its chapters).
    """
    for candidate in (Path.cwd(), Path(quantref.__file__).resolve().parents[1]):
        if (candidate / "chapters").is_dir() and (candidate / "mkdocs.yml").is_file():
            return candidate
    raise FileNotFoundError(
        "no chapters/ and mkdocs.yml here or next to the quantref package; run from a quantref checkout "
        "(git clone, then pip install -e .)"
    )


class CommandError(Exception):
    """Bad input to a command: :func:`main` prints ``quantref <command>: <message>`` and exits with code 2."""


def _project_root() -> Path:
    try:
        return project_root()
    except FileNotFoundError as error:
        raise CommandError(str(error)) from error


def _chapter_script(root: Path, number: int) -> Path:
    from quantref import render

    scripts = {int(path.name[:2]): path for path in render.chapter_scripts(root)}
    if number not in scripts:
        raise CommandError(f"N must be one of {sorted(scripts)}, got {number}")
    return scripts[number]


def cmd_chapter(args: argparse.Namespace) -> int:
    """Run one chapter script as ``python chapters/NN_topic.py`` would."""
    script = _chapter_script(_project_root(), args.number)
    sys.argv = [str(script)]
    runpy.run_path(str(script), run_name="__main__")
    return 0


def site_scripts(root: Path) -> list[tuple[Path, Path]]:
    """Every script the site renders, with the directory its page goes to: the chapters into ``docs/chapters``,
    then the executed non-chapter pages (``docs/conformance.py``) into ``docs``.

    Args:
      root: the repository root.

    Returns:
      ``(script, out_dir)`` pairs, in rendering order.
    """
    from quantref import render

    pages = [(script, root / "docs" / "chapters") for script in render.chapter_scripts(root)]
    conformance = root / "docs" / "conformance.py"
    return pages + ([(conformance, root / "docs")] if conformance.is_file() else [])


def cmd_tour(args: argparse.Namespace) -> int:
    """Run every chapter into its page, render the conformance page, then build the site with ``mkdocs build
    --strict``."""
    from quantref import render

    root = _project_root()
    site_dir = Path(args.site_dir).resolve()
    start = time.perf_counter()
    for script, out_dir in site_scripts(root):
        chapter_start = time.perf_counter()
        print(f"\n=== {script.name} ===", flush=True)
        render.render_chapter(script, out_dir, echo=not args.quiet)
        print(f"=== {script.name}: {time.perf_counter() - chapter_start:.1f} s ===", flush=True)
    print("\n=== building the site (mkdocs build --strict) ===", flush=True)
    build = [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(root / "mkdocs.yml")]
    # Material's end-of-life banner is not about this site; keep the tour's output about the tour.
    environment = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    subprocess.run([*build, "-d", str(site_dir)], check=True, cwd=root, env=environment)
    print(f"\nTour done in {time.perf_counter() - start:.0f} s. The site is in {site_dir}")
    print(
        f"Serve it (offline) with:  python -m http.server -d {os.path.relpath(site_dir)} 8000  →  http://127.0.0.1:8000"
    )
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    """Print the cache directory, or remove what quantref wrote there."""
    from quantref import cache

    if args.action == "path":
        print(cache.cache_dir())
    else:
        removed = cache.clear_cache()
        print(f"removed {len(removed)} file(s) from {cache.cache_dir()}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Quantize the walkthrough model and write it, its float twin, test inputs and expected outputs for a runtime."""
    import importlib

    from quantref import _files, data, nn, ptq, train

    try:
        # Before the minutes of work: the output directory must be usable, and the exporter importable.
        _files.check_output_dir(args.out_dir, force=args.force)
        try:
            exporter = importlib.import_module(f"quantref.export.{args.format}")
        except ImportError as error:
            extra = _EXPORT_EXTRAS[args.format]
            raise CommandError(f"export {args.format} needs {error.name}: pip install 'quantref[{extra}]'") from None
        splits = data.load_splits()
        folded = nn.fold_batch_norm(train.load_or_train(progress=False), splits.x_calib[:1])
        # TFLite's scheme is int8 activations (asymmetric) with int8 per-channel symmetric weights.
        signed = args.format == "tflite"
        qmodel = ptq.quantize_model(folded, splits.x_calib, observer=args.observer, activation_signed=signed)
        write = getattr(exporter, f"export_{args.format}")
        paths = write(
            qmodel, args.out_dir, test_x=splits.x_test, test_y=splits.y_test, float_model=folded, force=args.force
        )
    except (ValueError, TypeError) as error:
        raise CommandError(str(error)) from error
    for name, path in paths.items():
        print(f"{name:>12}: {path} ({Path(path).stat().st_size:,} bytes)")
    return 0


#: The optional extra each exporter needs.
_EXPORT_EXTRAS = {"onnx": "tour", "tflite": "litert"}


def cmd_compress(args: argparse.Namespace) -> int:
    """Deep-compress the walkthrough model (prune, share weights, Huffman-code) and write ``model.qrc``."""
    from quantref import _files, compression, data, train

    try:
        _files.check_output_dir(args.out_dir, force=args.force)
        splits = data.load_splits()
        result = compression.deep_compression(
            train.load_or_train(progress=False), splits.x_train, splits.y_train, progress=False
        )
        paths = compression.write_compressed(result.compressed, args.out_dir, force=args.force)
    except (ValueError, TypeError) as error:
        raise CommandError(str(error)) from error
    for name, path in paths.items():
        print(f"{name:>12}: {path} ({Path(path).stat().st_size:,} bytes)")
    return 0


def cmd_vectors(args: argparse.Namespace) -> int:
    """Write the test vectors (``manifest.json`` and ``cases/*.npz``) into OUT_DIR."""
    from quantref import vectors

    start = time.perf_counter()
    try:
        # OUT_DIR is checked before any case is computed; the set is swapped in atomically at the end.
        manifest_path = vectors.write_vectors(args.out_dir, force=args.force)
        manifest = vectors.load_manifest(args.out_dir)
    except (ValueError, TypeError) as error:
        raise CommandError(str(error)) from error
    operators: dict[str, int] = {}
    for case in manifest["cases"]:
        operators[case["operator"]] = operators.get(case["operator"], 0) + 1
    for operator, count in operators.items():
        print(f"{operator:>40}: {count} case(s)")
    print(
        f"wrote {len(manifest['cases'])} cases (format {manifest['format_version']}, quantref "
        f"{manifest['quantref_version']}) to {manifest_path.parent} in {time.perf_counter() - start:.1f} s"
    )
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """Compare a backend's RESULTS with the vectors in OUT_DIR; exit 0 if every case matches, 1 otherwise."""
    from quantref import vectors

    try:
        report = vectors.check(args.out_dir, args.results, cases=args.case, max_report=args.max_report)
    except (ValueError, TypeError) as error:
        raise CommandError(str(error)) from error
    print(vectors.format_check(report, verbose=args.verbose))
    return 0 if report.ok else 1


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


DESCRIPTION = (
    "The quantref command: run the chapters and build the site, export the quantized model, write test vectors "
    "for other backends and check their results, manage the trained-model cache."
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``quantref`` command."""
    parser = argparse.ArgumentParser(prog="quantref", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"quantref {quantref.__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    tour = commands.add_parser("tour", help="run every chapter and build the site")
    tour.add_argument("--site-dir", default="site", help="where to write the site (default: ./site)")
    tour.add_argument("--quiet", action="store_true", help="do not echo chapter output")
    tour.set_defaults(func=cmd_tour)

    chapter = commands.add_parser("chapter", help="run one chapter, e.g. `quantref chapter 2`")
    chapter.add_argument("number", type=int)
    chapter.set_defaults(func=cmd_chapter)

    export = commands.add_parser(
        "export", help="write the quantized model for a runtime: `export onnx OUT_DIR` or `export tflite OUT_DIR`"
    )
    export.add_argument("format", choices=["onnx", "tflite"])
    export.add_argument("out_dir")
    export.add_argument(
        "--force", action="store_true", help="replace quantref's files in a non-empty OUT_DIR (other files are kept)"
    )
    export.add_argument("--observer", default="min_max", help="calibration method for the activations")
    export.set_defaults(func=cmd_export)

    compress = commands.add_parser(
        "compress", help="Deep-compress the walkthrough model (prune, share weights, Huffman) into OUT_DIR/model.qrc"
    )
    compress.add_argument("out_dir")
    compress.add_argument(
        "--force", action="store_true", help="replace quantref's files in a non-empty OUT_DIR (other files are kept)"
    )
    compress.set_defaults(func=cmd_compress)

    vectors = commands.add_parser("vectors", help="write test vectors for other backends into OUT_DIR")
    vectors.add_argument("out_dir")
    vectors.add_argument(
        "--force",
        action="store_true",
        help="replace quantref's files (manifest.json, the cases it lists) in a non-empty OUT_DIR; others are kept",
    )
    vectors.set_defaults(func=cmd_vectors)

    check = commands.add_parser(
        "check", help="check a backend's results against the vectors (exit 0: all match, 1: mismatches, 2: error)"
    )
    check.add_argument("out_dir", help="the directory written by `quantref vectors`")
    check.add_argument("results", help="a directory of <case id>.npz, or one .npz with members <case id>/<output>")
    check.add_argument(
        "--case",
        action="append",
        metavar="PATTERN",
        help="check only these case ids (glob patterns allowed; repeatable)",
    )
    check.add_argument(
        "--max-report", type=_non_negative_int, default=10, help="worst elements listed per output (default 10)"
    )
    check.add_argument("--verbose", action="store_true", help="also list the cases that pass")
    check.set_defaults(func=cmd_check)

    cache_cmd = commands.add_parser("cache", help="show or clear the trained-model cache")
    cache_cmd.add_argument("action", choices=["path", "clear"])
    cache_cmd.set_defaults(func=cmd_cache)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``quantref`` console script: 0 on success, 1 when ``check`` finds mismatches, 2 for bad
    input (a one-line message on stderr; argparse's own usage errors also exit with 2)."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CommandError as error:
        message = str(error)
    except OSError as error:  # the file system refused (permissions, a full disk, a vanished file): not a traceback
        where = f"{error.filename}: " if error.filename else ""
        message = f"{where}{error.strerror or error}"
    except KeyboardInterrupt:
        print(f"quantref {args.command}: interrupted", file=sys.stderr)
        return 130
    print(f"quantref {args.command}: {' '.join(message.split())}", file=sys.stderr)  # one line
    return 2


if __name__ == "__main__":
    sys.exit(main())
