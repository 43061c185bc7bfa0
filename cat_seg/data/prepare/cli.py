"""Command-line plumbing shared by the ``datasets/prepare_*.py`` scripts."""
import argparse
import contextlib
import functools
import importlib
import os
import sys
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from ...cli.errors import ArgumentParser
from ...utils import WriteError, int_at_least
from .. import download as downloads
from ..datasets.errors import DatasetError, PrepareError
from ..datasets.loader import misplaced_hint
from ..catalog import ENV_VAR, dataset_root
from .runner import default_workers, run_tasks


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int_at_least(text)
    if value is None:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive integer")
    return value


def build_parser(description: str, benchmarks: Optional[Mapping[str, Sequence]] = None, only: Optional[str] = None
                 ) -> argparse.ArgumentParser:
    """Parser with the options every prepare script has (and ``--benchmark`` if given:
    ``benchmarks`` maps each choice to the catalog layouts it prepares).

    ``only`` (one of ``benchmarks``): the parser of a script under an official CAT-Seg name
    (:data:`OFFICIAL_SCRIPTS`), which prepares that benchmark alone: ``args.benchmark`` is
    ``[only]`` and there is no ``--benchmark`` option: offered, it listed every benchmark of the
    dataset in that script's --help as if it could prepare them (one given now is an
    unrecognized argument). The description is then :func:`one_benchmark_description`'s, not
    ``description``."""
    if only is not None:
        description = one_benchmark_description(benchmarks[only])
    parser = ArgumentParser(description=description)
    parser.add_argument("--root", default=None,
                        help=f"dataset root (default: ${ENV_VAR}, else ./datasets)")
    parser.add_argument("--workers", type=_positive_int, default=default_workers(),
                        help="worker processes (default: all cores)")
    parser.add_argument("--force", action="store_true",
                        help="convert again files that already exist")
    parser.add_argument("--download", action="store_true",
                        help="download and extract missing public archives first (resumable)")
    parser.add_argument("--download-dir", default=None,
                        help="where downloaded archives are kept (default: <root>/downloads)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    if only is not None:
        parser.set_defaults(benchmark=[only])
    elif benchmarks:
        parser.add_argument("--benchmark", action="append", choices=list(benchmarks),
                            help=f"benchmark to prepare, repeatable (default: all of "
                                 f"{', '.join(benchmarks)})")
    return parser


def selected_benchmarks(args, benchmarks: Sequence[str]) -> List[str]:
    """The benchmarks chosen with ``--benchmark``, in canonical order (all by default)."""
    chosen = set(args.benchmark or benchmarks)
    return [b for b in benchmarks if b in chosen]


def one_benchmark_description(layouts) -> str:
    """The --help description of a script under an official CAT-Seg name that prepares one
    benchmark: the catalog ``layouts`` (splits) it makes, e.g. ``[ADE150]``."""
    titles = " and ".join(layout.title for layout in layouts)
    return (f"Prepare {titles} labels for detectron2 (this benchmark only). The script keeps its name "
            f"from the official CAT-Seg code; it is the same as `{layouts[0].prepare_command}`.")


def checked_root(given: Optional[str], create: bool) -> Path:
    """The dataset root (``given`` by ``--root``, else ``$DETECTRON2_DATASETS``, else
    ``./datasets``), checked before anything is read or written under it: a regular file is a
    :class:`DatasetError`, and so is a missing folder unless ``create`` (the script makes it:
    the synthetic generator, a ``--download``). Otherwise the first missing raw file was
    reported under it, as if that download were the problem."""
    root = dataset_root(given)
    if given is not None:
        named = f"--root {given}"
    elif os.environ.get(ENV_VAR):
        named = f"${ENV_VAR}={os.environ[ENV_VAR]}"
    else:
        named = f"the dataset root {os.path.abspath(root)} (the default: no --root given, ${ENV_VAR} not set)"
    if root.exists() and not root.is_dir():
        raise DatasetError(f"{named} is a file; expected the dataset folder")
    if not create and not root.exists():
        raise DatasetError(f"{named} does not exist; expected the folder holding the downloaded datasets "
                           f"(--download downloads the public ones into it)")
    return root


def root_of(args) -> Path:
    """The checked dataset root of a script that reads raw data (:func:`checked_root`); a
    missing one is created by ``--download``."""
    return checked_root(args.root, create=args.download)


def require(root: Path, relpath: str, archive_key: str, what: str = "") -> Path:
    """``root / relpath``, or a :class:`PrepareError` saying it is missing and where it comes
    from (the download table entry ``archive_key``)."""
    path = Path(root) / relpath
    if not path.exists():
        label = f"{what} " if what else ""
        misplaced = misplaced_hint(root, relpath)
        if misplaced:  # the data is there, one folder off: no download to advise
            raise PrepareError(f"missing {label}{path}{misplaced}")
        raise PrepareError(f"missing {label}{path}: {downloads.how_to_get(archive_key, root)}")
    return path


def require_images(tasks: Sequence, root: Path, archive_key: str) -> None:
    """Every task's label has its image (``Task.image``), or a :class:`PrepareError` with how
    many do not, an example, and where the images come from (``archive_key``): said before
    anything is converted, not found out by the dataset that leaves the pairs out later."""
    missing = [task for task in tasks if task.image is not None and not task.image.is_file()]
    if missing:
        first = missing[0]
        raise PrepareError(f"{len(missing)} of the {len(tasks)} label files have no image, e.g. {first.source} has "
                           f"no {first.image}: {downloads.how_to_get(archive_key, root)}")


@contextlib.contextmanager
def benchmark_step(args, benchmark: str, benchmarks: Sequence[str]):
    """Run a step of ``benchmark`` (fetching or listing its raw data): when its raw data is
    missing and no ``--benchmark`` was given (all are prepared), the error also says how to
    prepare the others without it."""
    try:
        yield
    except PrepareError as exc:
        others = [b for b in benchmarks if b != benchmark]
        if args.benchmark or not others:
            raise
        raise PrepareError(f"{exc} (needed for benchmark {benchmark}; to prepare the others without it: "
                           f"{' '.join('--benchmark ' + b for b in others)})") from None


#: what a benchmark converts: ``(title, tasks, convert, layout)`` for :func:`~.runner.run_tasks`
Plan = Tuple[str, list, Callable, object]


def prepare_benchmarks(args, benchmarks: Sequence[str], archives: Mapping[str, Sequence[str]],
                       plans: Mapping[str, Callable[[], List[Plan]]]) -> int:
    """The preparation of a script's selected benchmarks (``--benchmark``, default all of
    ``benchmarks``): fetch their ``archives`` (with ``--download``), list every benchmark's
    ``plans`` (which validates all raw layouts before anything is converted), then convert.
    Without ``--benchmark``, a benchmark's missing download says how to prepare the others
    (:func:`benchmark_step`), and incomplete raw data stops the run with the first problem,
    the other incomplete benchmarks and those that can be prepared."""
    selected = selected_benchmarks(args, benchmarks)
    folder = getattr(args, "download_dir", None)
    if args.download and folder and os.path.exists(folder) and not os.path.isdir(folder):  # said before any download
        raise PrepareError(f"--download-dir {folder}: a file, not a folder; give a folder for the archives")
    for benchmark in selected:
        with benchmark_step(args, benchmark, benchmarks):
            fetch_if_asked(args, archives[benchmark])  # an archive two benchmarks share is fetched once
    listed: List[Plan] = []
    incomplete: Dict[str, PrepareError] = {}
    for benchmark in selected:
        try:
            listed += plans[benchmark]()
        except PrepareError as exc:
            if args.benchmark or len(selected) == 1:  # chosen on purpose: the error alone
                raise
            incomplete[benchmark] = exc  # every benchmark is looked at: the hint names those that are ready
    if incomplete:
        first, error = next(iter(incomplete.items()))
        ready = [b for b in selected if b not in incomplete]
        also = [b for b in incomplete if b != first]
        where = f"needed for benchmark {first}" + (f"; the raw data of {', '.join(also)} is incomplete too"
                                                   if also else "")
        hint = (f"to prepare {'the one' if len(ready) == 1 else 'those'} whose raw data is complete: "
                f"{' '.join('--benchmark ' + b for b in ready)}" if ready else
                "no benchmark's raw data is complete")
        raise PrepareError(f"{error} ({where}; {hint})") from None
    for title, tasks, convert, layout in listed:
        run_tasks(title, tasks, convert, num_classes=layout.num_classes,
                  ignore_label=layout.ignore_label, workers=args.workers, force=args.force,
                  expected_count=layout.expected_count, progress=not args.no_progress)
    return 0


def fetch_if_asked(args, keys: Sequence[str]) -> None:
    """With ``--download``, download and extract the archives ``keys`` that are missing."""
    if args.download:
        downloads.fetch_all(keys, root_of(args), args.download_dir,
                            progress=not args.no_progress)


def run(main: Callable[[Optional[Sequence[str]]], int], argv=None) -> int:
    """Run a script's ``main``: user errors (:class:`DatasetError`, an ``OSError`` on a named
    file such as a read-only output folder) print ``error: ...`` and give exit status 2."""
    from ...cli.errors import print_user_error

    try:
        return main(argv)
    except DatasetError as exc:
        return print_user_error(exc)
    except OSError as exc:
        if exc.filename is None:  # not about a file of the user: an internal error
            raise
        # a folder that cannot be written (read-only, under a regular file, disk full); a
        # WriteError says "cannot write" the output file itself
        message = str(exc) if isinstance(exc, WriteError) else f"{exc.filename}: {exc.strerror or exc}"
        return print_user_error(DatasetError(message))
    except KeyboardInterrupt:
        print("interrupted: finished files are kept; rerun the same command to resume",
              file=sys.stderr)
        return 130


# ``cat-seg-prepare DATASET [options]``: DATASET -> (module under cat_seg.data, what it prepares)
PROGRAMS = {
    "coco-stuff": ("prepare.coco_stuff", "COCO-Stuff 171 (training and validation)"),
    "ade20k": ("prepare.ade20k", "ADE20K-150 and ADE20K-847"),
    "voc": ("prepare.voc", "Pascal VOC-20/20b and Pascal Context 59/459"),
    "synthetic": ("synthetic", "the synthetic toy benchmark (no download)"),
}


#: the official CAT-Seg code's script names kept in ``datasets/`` -> (DATASET of
#: :data:`PROGRAMS`, the one benchmark of it that the script prepares)
OFFICIAL_SCRIPTS = {
    "prepare_ade20k_150.py": ("ade20k", "150"),
    "prepare_ade20k_847.py": ("ade20k", "847"),
    "prepare_ade20k_full.py": ("ade20k", "847"),
    "prepare_pascal_context_59.py": ("voc", "pc59"),
    "prepare_pascal_context_459.py": ("voc", "pc459"),
}


def _program_main(dataset: str) -> Callable[..., int]:
    """The ``main`` of DATASET's preparation module (:data:`PROGRAMS`)."""
    return importlib.import_module(f"cat_seg.data.{PROGRAMS[dataset][0]}").main


def run_official_script(name: str, argv: Optional[Sequence[str]] = None) -> int:
    """``datasets/<name>`` (:data:`OFFICIAL_SCRIPTS`): its dataset's preparation of its one
    benchmark, whose --help says so and offers no ``--benchmark``."""
    dataset, benchmark = OFFICIAL_SCRIPTS[name]
    return run(functools.partial(_program_main(dataset), benchmark=benchmark), argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``cat-seg-prepare DATASET [options]``: the preparation script of DATASET (``--help`` per dataset)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in PROGRAMS:
        listing = "\n".join(f"  {name:<11} {what}" for name, (_, what) in PROGRAMS.items())
        usage = f"usage: cat-seg-prepare DATASET [options]  (cat-seg-prepare DATASET --help)\ndatasets:\n{listing}"
        if argv and argv[0] not in ("-h", "--help"):
            print(f"error: unknown dataset {argv[0]!r}: expected one of {', '.join(PROGRAMS)}", file=sys.stderr)
            return 2
        print(usage, file=sys.stderr if not argv else sys.stdout)
        return 0 if argv else 2
    return run(_program_main(argv[0]), argv[1:])


if __name__ == "__main__":
    sys.exit(main())
