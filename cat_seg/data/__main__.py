"""``python -m cat_seg.data``: print the dataset catalog's tables (layouts, expected file counts,
downloads) as Markdown, the generated part of ``docs/datasets.md``.

Here rather than under ``if __name__ == "__main__"`` of :mod:`.catalog`: the package imports the
catalog (to register the datasets), so running the catalog module itself ran a second copy of it
and Python warned about that."""
from .catalog import markdown_tables

print(markdown_tables(), end="")
