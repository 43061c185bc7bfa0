"""Command-line programs of cat-seg, installed as console commands by ``pip install``.

Each module has a ``main(argv=None) -> int``; the scripts in ``demo/``, ``tools/``,
``datasets/`` and ``train_net.py`` are thin wrappers around them.
"""
