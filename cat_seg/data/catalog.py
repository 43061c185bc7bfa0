"""The catalog of every dataset cat-seg knows: one table each for layouts, benchmarks,
vocabularies and downloads, read by registration, preparation, download, evaluation and the
toy-benchmark generator (see ``docs/datasets.md``).

* Vocabularies (class names, index = label id) are the JSON arrays shipped with the package
  in ``cat_seg/data/vocabularies/<key>.json``; configs name them ``datasets/<key>.json`` as
  the official code does (:func:`cat_seg.utils.read_class_json` resolves those names).
* ``raw_label_ids.json`` holds, per vocabulary that needs it, the raw dataset id of each
  class (COCO category id, ADE20K-full object id, Pascal Context id), used to convert raw
  annotations into label ids.
* :data:`ARCHIVES`: the public downloads; :data:`LAYOUTS`: where each registered split lives,
  how it is scored, its expected number of label files, the archives it is made from and,
  for evaluation splits, its benchmark key (``ade150``, ...).

This module imports nothing else from cat-seg, so any module can read it.
"""
import functools
import json
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

ENV_VAR = "DETECTRON2_DATASETS"
DEFAULT_ROOT = "datasets"
VOCABULARY_DIR = Path(__file__).resolve().parent / "vocabularies"
_RAW_LABEL_IDS = Path(__file__).resolve().parent / "raw_label_ids.json"


def dataset_root(root: Optional[Union[str, os.PathLike]] = None) -> Path:
    """The dataset root: ``root`` if given, else ``$DETECTRON2_DATASETS``, else ``datasets``."""
    if root is None:
        root = os.environ.get(ENV_VAR) or DEFAULT_ROOT
    return Path(root).expanduser()


# ---------------------------------------------------------------------------- vocabularies
def vocabulary_keys() -> List[str]:
    """Stems of the packaged vocabularies, e.g. ``["ade150", "ade847", "coco", ...]``."""
    return sorted(p.stem for p in VOCABULARY_DIR.glob("*.json"))


def vocabulary_key(name: str) -> str:
    """``"coco"``, ``"coco.json"`` or ``"datasets/coco.json"`` -> ``"coco"``."""
    stem = Path(name).name
    return stem[: -len(".json")] if stem.endswith(".json") else stem


def vocabulary_path(name: str) -> Path:
    """The packaged json of vocabulary ``name`` (a key, file name or ``datasets/<key>.json``,
    as configs written for the official code name them; a path in another folder names a file
    of the user's, never a packaged list).

    Raises ``KeyError`` naming the known keys."""
    key = vocabulary_key(name)
    path = VOCABULARY_DIR / f"{key}.json"
    folder = Path(os.path.normpath(name)).parent
    if folder not in (Path("."), Path("datasets")):
        raise KeyError("only a name or datasets/<name>.json names a packaged class list")
    if not path.is_file():
        raise KeyError(f"unknown class list {name!r}; known: {', '.join(vocabulary_keys())}")
    return path


@functools.lru_cache(maxsize=None)
def _read_vocabulary(key: str) -> Tuple[str, ...]:
    with open(vocabulary_path(key), encoding="utf-8") as f:
        return tuple(json.load(f))


def class_names(name: str) -> List[str]:
    """Class names of the packaged vocabulary ``name`` in label order (see
    :func:`vocabulary_path` for the accepted names)."""
    return list(_read_vocabulary(vocabulary_key(name)))


@functools.lru_cache(maxsize=None)
def _raw_label_ids() -> Dict[str, Tuple[int, ...]]:
    with open(_RAW_LABEL_IDS, encoding="utf-8") as f:
        return {key: tuple(ids) for key, ids in json.load(f).items()}


def raw_label_ids(key: str) -> List[int]:
    """The raw dataset id of each class of vocabulary ``key``, in label order: ``coco`` (COCO
    category id 1..182, the 171 used ones), ``ade847`` (ADE20K-full object id), ``pc59``
    (Pascal Context id 1..459)."""
    ids = _raw_label_ids()
    if key not in ids:
        raise KeyError(f"no raw label ids for {key!r}; known: {', '.join(ids)}")
    return list(ids[key])


def raw_id_to_label(key: str) -> Dict[int, int]:
    """Raw dataset id -> label id of vocabulary ``key`` (see :func:`raw_label_ids`)."""
    return {raw: label for label, raw in enumerate(raw_label_ids(key))}


# ---------------------------------------------------------------------------- downloads
@dataclass(frozen=True)
class Archive:
    """A public download: ``url`` saved as ``filename``, unpacked into ``extract_to`` (relative
    to the dataset root; a file that is no archive is just placed there), after which
    ``provides`` exists. ``manual`` downloads need a registration and are never fetched."""

    url: str
    filename: str
    extract_to: str
    provides: str
    md5: Optional[str] = None
    size: Optional[int] = None
    manual: bool = False
    note: str = ""


# fmt: off
ARCHIVES = {
    "coco_train2017": Archive(
        "http://images.cocodataset.org/zips/train2017.zip", "train2017.zip",
        "coco-stuff/images", "coco-stuff/images/train2017"),
    "coco_val2017": Archive(
        "http://images.cocodataset.org/zips/val2017.zip", "val2017.zip",
        "coco-stuff/images", "coco-stuff/images/val2017"),
    "coco_stuffthingmaps": Archive(
        "http://calvin.inf.ed.ac.uk/wp-content/uploads/data/cocostuffdataset/"
        "stuffthingmaps_trainval2017.zip", "stuffthingmaps_trainval2017.zip",
        "coco-stuff/annotations", "coco-stuff/annotations/val2017"),
    "ade20k_challenge": Archive(
        "http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip",
        "ADEChallengeData2016.zip", "", "ADEChallengeData2016"),
    "ade20k_full": Archive(
        "https://groups.csail.mit.edu/vision/datasets/ADE20K/request_data/",
        "ADE20K_2021_17_01.zip", "", "ADE20K_2021_17_01", manual=True,
        note="needs a free registration on the ADE20K site; the download link arrives by e-mail"),
    "voc2012": Archive(
        "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
        "VOCtrainval_11-May-2012.tar", "", "VOCdevkit/VOC2012/JPEGImages",
        md5="6cd6e144f989b92b3379bac3b3de84fd"),
    "voc2012_aug": Archive(
        "https://www.dropbox.com/s/oeu149j8qtbs1x0/SegmentationClassAug.zip?dl=1",
        "SegmentationClassAug.zip", "VOCdevkit/VOC2012",
        "VOCdevkit/VOC2012/SegmentationClassAug",
        note="SBD-augmented VOC masks as distributed for DeepLab"),
    "voc2010": Archive(
        "http://host.robots.ox.ac.uk/pascal/VOC/voc2010/VOCtrainval_03-May-2010.tar",
        "VOCtrainval_03-May-2010.tar", "", "VOCdevkit/VOC2010/JPEGImages",
        md5="da459979d0c395079b5c75ee67908abb"),
    "pascal_context_59": Archive(
        "https://codalabuser.blob.core.windows.net/public/trainval_merged.json",
        "trainval_merged.json", "VOCdevkit/VOC2010", "VOCdevkit/VOC2010/trainval_merged.json",
        note="Detail API annotations of Pascal Context"),
    "pascal_context_459": Archive(
        "https://cs.stanford.edu/~roozbeh/pascal-context/trainval.tar.gz", "trainval.tar.gz",
        "VOCdevkit/VOC2010", "VOCdevkit/VOC2010/trainval",
        note="per-image .mat files with the 459-class LabelMap, and labels.txt"),
    "pascal_context_459_val_list": Archive(
        "https://drive.google.com/uc?export=download&id=1BCbiOKtLvozjVnlTJX51koIveUZHCcUh",
        "pascalcontext_val.txt", "VOCdevkit/VOC2010", "VOCdevkit/VOC2010/pascalcontext_val.txt",
        note="the list of 5104 validation ids distributed with CAT-Seg (datasets/ of its "
             "repository), mirrored on Google Drive"),
}
# fmt: on


def get_archive(key: str) -> Archive:
    """The entry ``key`` of :data:`ARCHIVES`."""
    try:
        return ARCHIVES[key]
    except KeyError:
        raise KeyError(f"unknown download {key!r}; known: {', '.join(ARCHIVES)}") from None


# ---------------------------------------------------------------------------- layouts
@dataclass(frozen=True)
class SemSegLayout:
    """Where one registered semantic-segmentation split lives and how it is scored."""

    name: str  # registered detectron2 name
    image_dir: str  # relative to the dataset root
    label_dir: str  # relative to the dataset root
    image_ext: str
    label_ext: str
    class_key: str  # vocabulary (cat_seg/data/vocabularies/<class_key>.json)
    num_classes: int  # classes scored by the evaluator
    ignore_label: int
    evaluator_type: str  # "sem_seg" or "sem_seg_background"
    prepare_args: str  # `cat-seg-prepare` arguments that create label_dir ("ade20k --benchmark 150")
    expected_count: Optional[int] = None  # number of label files of the full benchmark
    archives: Tuple[str, ...] = ()  # ARCHIVES keys the split is prepared from
    benchmark: Optional[str] = None  # short key of an evaluation benchmark ("ade150", ...)
    title: str = ""  # human-readable benchmark name
    # made by cat-seg's generator (cat_seg.data.synthetic), whose record of a generation gives
    # the split's size and its seen / unseen classes (instead of expected_count)
    generated: bool = False

    @property
    def prepare_command(self) -> str:
        """What to run to create ``label_dir``, for the messages that say so: in a cat-seg
        checkout (the working folder has the dataset's script in ``datasets/``, as the docs'
        commands assume) ``python datasets/prepare_ade20k.py --benchmark 150``, elsewhere (an
        installed package) the installed command ``cat-seg-prepare ade20k --benchmark 150``."""
        dataset, _, options = self.prepare_args.partition(" ")
        script = f"datasets/prepare_{dataset.replace('-', '_')}.py"
        if os.path.isfile(script):
            return f"python {script} {options}".rstrip()
        return f"cat-seg-prepare {self.prepare_args}"

    @property
    def class_json(self) -> str:
        """The vocabulary as configs name it, e.g. ``datasets/coco.json``."""
        return f"datasets/{self.class_key}.json"

    def stuff_classes(self) -> List[str]:
        """Class names scored by the evaluator (metadata ``stuff_classes``).

        Equal to the vocabulary except for VOC-20b, whose vocabulary has 59 prompts (20 VOC
        classes + 39 background concepts) while the evaluator scores 20 classes +
        ``background``."""
        names = class_names(self.class_key)
        if self.evaluator_type == "sem_seg_background":
            names = names[: self.num_classes - 1] + ["background"]
        if len(names) != self.num_classes:
            raise ValueError(f"{self.name}: {len(names)} class names, expected {self.num_classes}")
        return names


#: Names a dataset's folder is sometimes given instead of the catalog's (the official README's
#: tree calls COCO-Stuff's ``coco/``, its loader reads ``coco-stuff/``, as the catalog does):
#: a missing folder's error names such a folder when it finds one.
FOLDER_ALIASES: Dict[str, Tuple[str, ...]] = {"coco-stuff": ("coco",)}

_VOC2012 = "VOCdevkit/VOC2012"
_VOC2010 = "VOCdevkit/VOC2010"

# The training set and the six test sets of the paper, and the embedded toy benchmark.
# fmt: off
LAYOUTS = (
    SemSegLayout(
        "coco_2017_train_stuff_all_sem_seg", "coco-stuff/images/train2017",
        "coco-stuff/annotations_detectron2/train2017", "jpg", "png", "coco", 171, 255,
        "sem_seg", "coco-stuff", 118287,
        archives=("coco_train2017", "coco_stuffthingmaps")),
    SemSegLayout(
        "coco_2017_test_stuff_all_sem_seg", "coco-stuff/images/val2017",
        "coco-stuff/annotations_detectron2/val2017", "jpg", "png", "coco", 171, 255,
        "sem_seg", "coco-stuff", 5000,
        archives=("coco_val2017", "coco_stuffthingmaps")),
    SemSegLayout(
        "ade20k_150_test_sem_seg", "ADEChallengeData2016/images/validation",
        "ADEChallengeData2016/annotations_detectron2/validation", "jpg", "png", "ade150", 150,
        255, "sem_seg", "ade20k --benchmark 150", 2000,
        archives=("ade20k_challenge",), benchmark="ade150", title="ADE20K-150"),
    SemSegLayout(
        "ade20k_full_sem_seg_freq_val_all", "ADE20K_2021_17_01/images_detectron2/validation",
        "ADE20K_2021_17_01/annotations_detectron2/validation", "jpg", "tif", "ade847", 847,
        65535, "sem_seg", "ade20k --benchmark 847", 2000,
        archives=("ade20k_full",), benchmark="ade847", title="ADE20K-847"),
    SemSegLayout(
        "voc_2012_test_sem_seg", f"{_VOC2012}/JPEGImages",
        f"{_VOC2012}/annotations_detectron2/val", "jpg", "png", "voc20", 20, 255, "sem_seg",
        "voc --benchmark voc", 1449,
        archives=("voc2012", "voc2012_aug"), benchmark="voc20", title="PASCAL VOC-20"),
    SemSegLayout(
        "voc_2012_test_background_sem_seg", f"{_VOC2012}/JPEGImages",
        f"{_VOC2012}/annotations_detectron2_bg/val", "jpg", "png", "voc20b", 21, 255,
        "sem_seg_background", "voc --benchmark voc", 1449,
        archives=("voc2012", "voc2012_aug"), benchmark="voc20b", title="PASCAL VOC-20b"),
    SemSegLayout(
        "context_59_test_sem_seg", f"{_VOC2010}/JPEGImages",
        f"{_VOC2010}/annotations_detectron2/pc59_val", "jpg", "png", "pc59", 59, 255, "sem_seg",
        "voc --benchmark pc59", 5105,
        archives=("voc2010", "pascal_context_59"), benchmark="pc59", title="PASCAL Context-59"),
    SemSegLayout(
        "context_459_test_sem_seg", f"{_VOC2010}/JPEGImages",
        f"{_VOC2010}/annotations_detectron2/pc459_val", "jpg", "tif", "pc459", 459, 459,
        "sem_seg", "voc --benchmark pc459", 5104,
        archives=("voc2010", "pascal_context_459", "pascal_context_459_val_list"),
        benchmark="pc459", title="PASCAL Context-459"),
    SemSegLayout(
        "synthetic_train_sem_seg", "synthetic/images/train", "synthetic/annotations/train", "jpg",
        "png", "synthetic_train", 12, 255, "sem_seg", "synthetic", generated=True),
    SemSegLayout(
        "synthetic_val_sem_seg", "synthetic/images/val", "synthetic/annotations/val", "jpg",
        "png", "synthetic_val", 16, 255, "sem_seg", "synthetic",
        benchmark="synthetic", title="Synthetic toy (val)", generated=True),
)
# fmt: on

LAYOUTS_BY_NAME: Dict[str, SemSegLayout] = {layout.name: layout for layout in LAYOUTS}

# Evaluation benchmarks by short key, in table order.
BENCHMARKS: "OrderedDict[str, SemSegLayout]" = OrderedDict(
    (layout.benchmark, layout) for layout in LAYOUTS if layout.benchmark
)
# The six benchmarks of the paper's protocol (eval.sh default order).
PAPER_BENCHMARKS: List[str] = ["ade150", "ade847", "voc20", "voc20b", "pc59", "pc459"]


def get_layout(name: str) -> SemSegLayout:
    """The layout of the registered dataset ``name``."""
    try:
        return LAYOUTS_BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(LAYOUTS_BY_NAME)}") from None


# ---------------------------------------------------------------------------- docs
def markdown_tables() -> str:
    """The layouts and downloads as Markdown tables (the generated part of ``docs/datasets.md``)."""
    lines = [
        "| registered name | benchmark | label files (under the dataset root) | count | ignore | made from |",
        "|---|---|---|---|---|---|",
    ]
    for layout in LAYOUTS:
        made_from = ", ".join(f"`{key}`" for key in layout.archives) or f"`cat-seg-prepare {layout.prepare_args}`"
        lines.append(
            f"| `{layout.name}` | {layout.benchmark or ''} | `{layout.label_dir}/*.{layout.label_ext}` "
            f"| {layout.expected_count or 'generated'} | {layout.ignore_label} | {made_from} |"
        )
    lines += ["", "| download | file | extracted into | note |", "|---|---|---|---|"]
    for key, archive in ARCHIVES.items():
        note = ("manual: " if archive.manual else "") + archive.note
        lines.append(f"| `{key}` | [{archive.filename}]({archive.url}) "
                     f"| `{archive.extract_to or '.'}` | {note} |")
    return "\n".join(lines) + "\n"
