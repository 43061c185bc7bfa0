"""``python -m cat_seg.data``: print the dataset catalog's tables (layouts, expected file counts,
downloads) as Markdown, the generated part of ``docs/datasets.md``.

Here rather than under ``if __name__ == "__main__"`` of :mod:`.catalog`: the package imports the
catalog (to register the datasets), so running the catalog module itself ran a second copy of it
and Python warned about that."""
import sys
from typing import Optional, Sequence

from ..cli.errors import ArgumentParser
from .catalog import markdown_tables


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Print the tables; it takes no arguments but ``--help`` (anything else is the one-line
    ``error:`` of the programs and exit status 2, rather than being ignored)."""
    parser = ArgumentParser(
        prog="python -m cat_seg.data",
        description="Print the dataset catalog's tables as Markdown: the registered datasets with their label "
                    "files, expected file counts and ignore labels, and the downloads they are made from (the "
                    "generated part of docs/datasets.md). Takes no arguments.")
    parser.parse_args(argv)
    print(markdown_tables(), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
