"""The ``quantref`` command.

``quantref tour`` runs every chapter (rendering each into its site page) and builds the site;
``quantref chapter N`` runs one chapter; ``quantref export onnx OUT_DIR`` writes the quantized model for
onnxruntime; ``quantref cache path|clear`` shows or clears the trained-model cache.
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


def _chapter_script(root: Path, number: int) -> Path:
    from quantref import render

    scripts = {int(path.name[:2]): path for path in render.chapter_scripts(root)}
    if number not in scripts:
        raise SystemExit(f"quantref chapter: N must be one of {sorted(scripts)}, got {number}")
    return scripts[number]


def cmd_chapter(args: argparse.Namespace) -> int:
    """Run one chapter script as ``python chapters/NN_topic.py`` would."""
    script = _chapter_script(project_root(), args.number)
    sys.argv = [str(script)]
    runpy.run_path(str(script), run_name="__main__")
    return 0


def cmd_tour(args: argparse.Namespace) -> int:
    """Run every chapter into its page, then build the site with ``mkdocs build --strict``."""
    from quantref import render

    root = project_root()
    site_dir = Path(args.site_dir).resolve()
    start = time.perf_counter()
    for script in render.chapter_scripts(root):
        chapter_start = time.perf_counter()
        print(f"\n=== {script.name} ===", flush=True)
        render.render_chapter(script, root / "docs" / "chapters", echo=not args.quiet)
        print(f"=== {script.name}: {time.perf_counter() - chapter_start:.1f} s ===", flush=True)
    print("\n=== building the site (mkdocs build --strict) ===", flush=True)
    build = [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(root / "mkdocs.yml")]
    # Material's end-of-life banner is not about this site; keep the tour's output about the tour.
    environment = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    subprocess.run([*build, "-d", str(site_dir)], check=True, cwd=root, env=environment)
    print(f"\nTour done in {time.perf_counter() - start:.0f} s. The site is in {site_dir}")
    print(f"Serve it (offline) with:  python -m http.server -d {os.path.relpath(site_dir)} 8000  →  http://127.0.0.1:8000")
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
    """Quantize the walkthrough model and write it, its float twin, test inputs and expected outputs as ONNX."""
    from quantref.export import onnx as export_onnx

    try:
        paths = export_onnx.export_onnx(args.out_dir, force=args.force)
    except ValueError as error:
        raise SystemExit(f"quantref export: {error}") from error
    for name, path in paths.items():
        print(f"{name:>12}: {path} ({Path(path).stat().st_size:,} bytes)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``quantref`` command."""
    parser = argparse.ArgumentParser(prog="quantref", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"quantref {quantref.__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    tour = commands.add_parser("tour", help="run every chapter and build the site")
    tour.add_argument("--site-dir", default="site", help="where to write the site (default: ./site)")
    tour.add_argument("--quiet", action="store_true", help="do not echo chapter output")
    tour.set_defaults(func=cmd_tour)

    chapter = commands.add_parser("chapter", help="run one chapter, e.g. `quantref chapter 2`")
    chapter.add_argument("number", type=int)
    chapter.set_defaults(func=cmd_chapter)

    export = commands.add_parser("export", help="write the quantized model for a runtime, e.g. `export onnx OUT_DIR`")
    export.add_argument("format", choices=["onnx"])
    export.add_argument("out_dir")
    export.add_argument("--force", action="store_true", help="write into a non-empty OUT_DIR")
    export.set_defaults(func=cmd_export)

    cache_cmd = commands.add_parser("cache", help="show or clear the trained-model cache")
    cache_cmd.add_argument("action", choices=["path", "clear"])
    cache_cmd.set_defaults(func=cmd_cache)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``quantref`` console script."""
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
