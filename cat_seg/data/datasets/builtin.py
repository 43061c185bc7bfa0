"""Registration of every benchmark in detectron2's ``DatasetCatalog`` / ``MetadataCatalog``,
and of your own folders (:func:`register_sem_seg_folder`).

Registering never touches the disk: the folders are looked at only when a dataset is loaded
(``DatasetCatalog.get(name)``). Registering again (another root, a reloaded module) replaces
the previous registration of the same names.
"""
import functools
import numbers
import logging
from typing import List, Optional, Sequence, Union

from detectron2.data import DatasetCatalog, MetadataCatalog

from ..catalog import LAYOUTS, SemSegLayout, dataset_root, raw_id_to_label
from .errors import DatasetError
from .loader import load_sem_seg_files

logger = logging.getLogger(__name__)


def _extra_metadata(layout: SemSegLayout) -> dict:
    """Metadata keys that only some benchmarks have."""
    if layout.class_key == "coco":  # detectron2's COCO-Stuff metadata: predictions in COCO's ids
        return {"stuff_dataset_id_to_contiguous_id": raw_id_to_label("coco")}
    if layout.evaluator_type == "sem_seg_background":
        return {"background_class": layout.num_classes - 1}
    if layout.generated:
        from .. import synthetic

        return synthetic.split_metadata(layout)
    return {}


def _load_split(layout: SemSegLayout, root, given_root: Optional[str]) -> List[dict]:
    """The records of a registered split (at ``DatasetCatalog.get``), checked against the size
    of the complete split: the catalog's count, or for the generated toy benchmark the count
    its generator recorded (:func:`cat_seg.data.synthetic.generated_split_size`, which refuses
    a generation that did not finish)."""
    expected = layout.expected_count
    if layout.generated:
        from .. import synthetic

        expected = synthetic.generated_split_size(layout, root, given_root)
    return load_sem_seg_files(
        layout.name, str(root / layout.label_dir), str(root / layout.image_dir), gt_ext=layout.label_ext,
        image_ext=layout.image_ext, prepare_command=layout.prepare_command, dataset_root=given_root,
        expected_count=expected,
    )


def register_dataset(layout: SemSegLayout, root=None) -> str:
    """Register one split under ``layout.name`` with its files below ``root`` (default
    ``$DETECTRON2_DATASETS``, else ``datasets``); returns the name."""
    given_root = None if root is None else str(root)
    root = dataset_root(root)
    image_root = str(root / layout.image_dir)
    gt_root = str(root / layout.label_dir)
    if layout.name in DatasetCatalog:
        DatasetCatalog.remove(layout.name)
    if layout.name in MetadataCatalog:
        MetadataCatalog.remove(layout.name)
    DatasetCatalog.register(layout.name, functools.partial(_load_split, layout, root, given_root))
    MetadataCatalog.get(layout.name).set(
        image_root=image_root,
        sem_seg_root=gt_root,
        stuff_classes=layout.stuff_classes(),
        ignore_label=layout.ignore_label,
        evaluator_type=layout.evaluator_type,
        class_json=layout.class_json,
        **_extra_metadata(layout),
    )
    return layout.name


def register_sem_seg_folder(name: str, image_root: str, label_root: str, class_json: str, *,
                            ignore_label: int = 255, image_ext: Union[str, Sequence[str]] = "jpg",
                            label_ext: Union[str, Sequence[str]] = "png") -> str:
    """Register a semantic-segmentation split of your own under ``name``, for ``DATASETS.TRAIN``
    / ``DATASETS.TEST`` (with ``class_json`` as ``MODEL.SEM_SEG_HEAD.TRAIN_CLASS_JSON`` /
    ``TEST_CLASS_JSON``); returns ``name``.

    Images are ``<image_root>/<stem>.<image_ext>``, labels ``<label_root>/<stem>.<label_ext>``
    (matched by stem, in one folder each, subfolders not searched; extensions in any case, with
    or without the dot, several as a list: ``image_ext=["jpg", "png"]``): single-channel images
    whose value is the index of the pixel's class in ``class_json`` (a JSON array of class
    names), ``ignore_label`` for pixels not scored. Scored with detectron2's
    semantic-segmentation metrics (mIoU, fwIoU, pACC). Like the built-in registrations it
    does not touch the image folders (they are read when the dataset is loaded), and it does
    not raise for the data's mistakes: a class json that cannot be read, a class named twice
    (compared without case and extra spaces) or an ``ignore_label`` that is not an integer
    outside the class indices make loading the dataset raise :class:`DatasetError` (one error
    line before a run starts; a registration at the top of a script, as the docs show, would
    otherwise end in a traceback). Classes that share their first synonym (the name the model
    sees) are warned about. Registering a name again replaces it; replacing a built-in
    benchmark's name is warned about. See docs/datasets.md, "Your own dataset"."""
    if any(layout.name == name for layout in LAYOUTS):
        logger.warning(f"register_sem_seg_folder: {name!r} is a built-in benchmark's name; your folders replace that "
                       "benchmark in this process (another name keeps both)")
    for catalog in (DatasetCatalog, MetadataCatalog):
        if name in catalog:
            catalog.remove(name)
    try:
        for what, ext in (("image_ext", image_ext), ("label_ext", label_ext)):
            _check_extensions(name, what, ext)
        classes = _own_classes(name, class_json, ignore_label)
    except DatasetError as problem:
        DatasetCatalog.register(name, functools.partial(_raise, problem))
        MetadataCatalog.get(name).set(evaluator_type="sem_seg", class_json=str(class_json))
        return name
    DatasetCatalog.register(name, functools.partial(
        load_sem_seg_files, name, str(label_root), str(image_root), gt_ext=label_ext, image_ext=image_ext,
        prepare_command=None))
    MetadataCatalog.get(name).set(
        image_root=str(image_root), sem_seg_root=str(label_root), stuff_classes=classes,
        ignore_label=int(ignore_label), evaluator_type="sem_seg", class_json=str(class_json))  # a numpy integer too
    return name


def _check_extensions(name: str, what: str, ext) -> None:
    """``image_ext`` / ``label_ext`` of :func:`register_sem_seg_folder`: a non-empty extension
    or a non-empty list of them, else :class:`DatasetError` naming it."""
    names = [ext] if isinstance(ext, str) else ext
    if not isinstance(names, (list, tuple)) or not names or not all(
            isinstance(n, str) and n.strip(". ") for n in names):
        raise DatasetError(f"dataset '{name}': {what}={ext!r}; expected a file extension (\"png\") or a list of them "
                           "([\"jpg\", \"png\"])")


def _raise(error: Exception):
    raise error


def _own_classes(name: str, class_json: str, ignore_label: int) -> List[str]:
    """The classes of a dataset of one's own, checked (:func:`register_sem_seg_folder`)."""
    from ...modeling.clip.prompts import shared_first_synonym_note
    from ...utils import read_class_json

    try:
        classes = read_class_json(class_json, key=f"dataset '{name}': class json")  # its errors name the file
    except (OSError, ValueError) as exc:
        raise DatasetError(str(exc)) from None
    except TypeError:  # not a path at all (None)
        raise DatasetError(f"dataset '{name}': class json {class_json!r}: expected the path of a JSON array of "
                           "class names") from None
    if isinstance(ignore_label, bool) or not isinstance(ignore_label, numbers.Integral):
        raise DatasetError(f"dataset '{name}': ignore_label={ignore_label!r}; expected an integer label value "
                           f"outside 0..{len(classes) - 1} (255)")
    seen = {}
    for index, class_name in enumerate(classes):
        key = " ".join(class_name.lower().split())
        if key in seen:
            raise DatasetError(f"dataset '{name}': {class_json} lists {class_name!r} twice (classes {seen[key]} "
                               f"and {index}, compared without case and extra spaces); each class needs its own name "
                               f"(the per-class results are keyed by it)")
        seen[key] = index
    if 0 <= ignore_label < len(classes):
        raise DatasetError(f"dataset '{name}': ignore_label={ignore_label} is the index of class "
                           f"{classes[ignore_label]!r} of {class_json}; expected a value outside "
                           f"0..{len(classes) - 1} (255)")
    note = shared_first_synonym_note(classes, f"dataset '{name}' ({class_json})")
    if note:
        logger.warning(note)
    return classes


def register_all(root=None) -> List[str]:
    """Register every dataset of the catalog (the paper's and the synthetic toy benchmark).

    ``root`` defaults to ``$DETECTRON2_DATASETS`` (else ``datasets``), read now; call again
    to re-register under another root. Returns the registered names."""
    return [register_dataset(layout, root) for layout in LAYOUTS]
