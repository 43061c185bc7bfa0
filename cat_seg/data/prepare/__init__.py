"""Shared machinery of the preparation scripts (``datasets/prepare_*.py``).

* :mod:`.io`: crash-safe writes (temporary name + rename) and checked label reading;
* :mod:`.runner`: per-file tasks with skip-if-done, ``--force``, worker processes, tqdm
  progress and a summary with a label-histogram sanity check;
* :mod:`.cli`: the common command-line options and error handling;
* :mod:`.coco_stuff`, :mod:`.ade20k`, :mod:`.voc`, :mod:`.pascal_context`: the conversions
  of the raw annotations into label maps (described in ``docs/datasets.md``).
"""
