"""Released CAT-Seg weights by short name (``MODEL.WEIGHTS catseg-vitb``, ``--weights catseg-vitl``).

:data:`RELEASED_WEIGHTS` is the one table of released checkpoints. A name is resolved to a
local file by :func:`resolve_weights`, which ``CATSegCheckpointer.load`` calls for every
``MODEL.WEIGHTS`` value (anything that is not a registered name is returned unchanged):

* the file is downloaded once with ``huggingface_hub.hf_hub_download`` into the Hugging Face
  cache (``HF_HUB_CACHE`` / ``HF_HOME``; a dropped connection resumes within the process, a
  killed process's download starts over), and later runs read it
  from the cache without touching the network;
* ``HF_ENDPOINT`` (a mirror) and ``HF_HUB_OFFLINE`` are honoured when the call is made;
* size / sha256 are checked where the table knows them;
* offline (or unreachable hub) without a cached copy: one :class:`WeightsUnavailableError`
  line saying which URL to download and where to pass it, within seconds (short metadata
  timeout, no retries).

The official checkpoints hold the whole model, CLIP included, and the checkpointer refuses a
checkpoint that lacks any model tensor; so a released name needs no separate CLIP weights:
:func:`clip_weights_from_checkpoint` sets ``CLIP_WEIGHTS none`` for any ``MODEL.WEIGHTS``
(a released name or a file), which skips downloading OpenAI's CLIP before the checkpoint
replaces it.
"""
import functools
import logging
import os
from dataclasses import dataclass
from typing import Dict, Optional

from .api import CATSegError
from .checkpoint.errors import CheckpointError
from .utils import error_line, file_digest, resolve_path

logger = logging.getLogger(__name__)

#: Seconds to wait for the hub's metadata (HEAD) answer before concluding it is unreachable.
#: ``HF_HUB_ETAG_TIMEOUT`` in the environment replaces it (huggingface_hub reads it for its downloads).
METADATA_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class ReleasedWeights:
    """One released checkpoint.

    Attributes:
        name: the short name accepted by ``MODEL.WEIGHTS`` / ``--weights``.
        repo_id, repo_type, filename, revision: where it lives on the Hugging Face Hub.
        config_file: the config it belongs to (relative to the repository / package); the
            CLIP it holds is that config's (:attr:`clip_arch`).
        size: expected size in bytes, ``None`` where unverified.
        sha256: expected sha256 (hex), ``None`` where unverified.
        description: one line for listings.
    """

    name: str
    repo_id: str
    repo_type: str
    filename: str
    config_file: str
    size: Optional[int] = None
    sha256: Optional[str] = None
    revision: str = "main"
    description: str = ""

    @functools.cached_property
    def clip_arch(self) -> Optional[str]:
        """``MODEL.SEM_SEG_HEAD.CLIP_PRETRAINED`` of :attr:`config_file`, read from it (the
        config is the one place that says which CLIP a checkpoint holds); ``None`` where that
        file is not there (the package installed without a checkout: configs are not package
        data)."""
        from detectron2.config import get_cfg

        from .cli.errors import merge_config
        from .config import add_cat_seg_config

        path = resolve_path(self.config_file)
        if not os.path.isfile(path):
            return None
        return merge_config(add_cat_seg_config(get_cfg()), path).MODEL.SEM_SEG_HEAD.CLIP_PRETRAINED

    @property
    def url(self) -> str:
        """The download URL (what to fetch by hand when offline), on the hub ``HF_ENDPOINT``
        names when it is set (a mirror), else huggingface.co."""
        from huggingface_hub import hf_hub_url

        return hf_hub_url(self.repo_id, self.filename, repo_type=self.repo_type, revision=self.revision,
                          endpoint=hub_endpoint())


# The official CAT-Seg release (github.com/KU-CVLAB/CAT-Seg, "Weights Preparation") hosts the
# checkpoints in the Hugging Face *space* hamacojr/CAT-Seg-weights. Size and sha256 could not
# be checked from here (no network access when this table was written): both unverified.
RELEASED_WEIGHTS: Dict[str, ReleasedWeights] = {
    entry.name: entry
    for entry in (
        ReleasedWeights(
            name="catseg-vitb",
            repo_id="hamacojr/CAT-Seg-weights",
            repo_type="space",
            filename="model_base.pth",
            config_file="configs/vitb_384.yaml",
            description="CAT-Seg (B): CLIP ViT-B/16, trained on COCO-Stuff",
        ),
        ReleasedWeights(
            name="catseg-vitl",
            repo_id="hamacojr/CAT-Seg-weights",
            repo_type="space",
            filename="model_large.pth",
            config_file="configs/vitl_336.yaml",
            description="CAT-Seg (L): CLIP ViT-L/14 at 336 px, trained on COCO-Stuff",
        ),
    )
}


class WeightsUnavailableError(CATSegError, CheckpointError):
    """Released weights could not be obtained or failed their check (one-line message).

    A :class:`~cat_seg.api.CATSegError` for the demo / app / API and a ``ValueError`` (through
    :class:`~cat_seg.checkpoint.CheckpointError`) for ``train_net``'s one-line errors."""


def get_released(name: str) -> Optional[ReleasedWeights]:
    """The table entry of ``name`` (case-insensitive), or ``None`` when it is not a released name."""
    if not isinstance(name, str):
        return None
    return RELEASED_WEIGHTS.get(name.strip().lower())


def is_released_name(weights) -> bool:
    return get_released(weights) is not None


def check_released_config(cfg) -> None:
    """When ``cfg.MODEL.WEIGHTS`` is a released name, the config's CLIP must be the one that
    checkpoint holds (:class:`WeightsUnavailableError` otherwise): said before the download
    (900 MB for ViT-L), not by the load after it."""
    from .modeling.clip.builder import CLIPLoadError, resolve_clip_arch

    entry = get_released(cfg.MODEL.WEIGHTS)
    if entry is None or entry.clip_arch is None:  # not a released name, or its config is not here
        return
    try:
        fits = resolve_clip_arch(cfg.MODEL.SEM_SEG_HEAD.CLIP_PRETRAINED).name == resolve_clip_arch(entry.clip_arch).name
    except (ValueError, CLIPLoadError):  # an unknown CLIP name: the value checks say so, in one line
        return
    if not fits:
        raise WeightsUnavailableError(
            f"MODEL.WEIGHTS {entry.name} holds a CAT-Seg with CLIP {entry.clip_arch} ({entry.config_file}), but this "
            f"config's CLIP is {cfg.MODEL.SEM_SEG_HEAD.CLIP_PRETRAINED!r} (MODEL.SEM_SEG_HEAD.CLIP_PRETRAINED): use "
            f"--config-file {entry.config_file}")


def clip_weights_from_checkpoint(cfg) -> None:
    """On the unfrozen ``cfg``: ``CLIP_WEIGHTS none`` when ``MODEL.WEIGHTS`` is set. The
    checkpointer loads every parameter strictly (CLIP included), so the CLIP weights would be
    downloaded (350 MB for ViT-B, 900 MB for ViT-L) only to be overwritten, and cannot be
    offline; so a ``CLIP_WEIGHTS`` set with ``MODEL.WEIGHTS`` is not read either. The one place
    the API, the demo, the web app and ``train_net`` do this."""
    from .modeling.clip.builder import NO_WEIGHTS

    if cfg.MODEL.WEIGHTS and str(cfg.MODEL.SEM_SEG_HEAD.CLIP_WEIGHTS) not in NO_WEIGHTS:
        cfg.MODEL.SEM_SEG_HEAD.CLIP_WEIGHTS = "none"


def hub_endpoint() -> str:
    """The hub to download from: the one ``HF_ENDPOINT`` names (a mirror), read when called,
    else huggingface.co; without a trailing slash, as huggingface_hub reads the variable."""
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` is set (read at call time, not at huggingface_hub's import)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def weights_file_missing(weights: str) -> bool:
    """``MODEL.WEIGHTS`` names a local checkpoint that does not exist: not empty, not a URL
    (detectron2 downloads those), not a released name, and no such file."""
    return bool(weights) and "://" not in weights and not is_released_name(weights) and not os.path.isfile(weights)


def released_name_suggestion(weights: str) -> str:
    """`` (did you mean catseg-vitb?)`` for a ``MODEL.WEIGHTS`` value that is no file and close
    to a released name (``catseg-vit-b``), else ``""``; appended to "not found" in the error
    about a missing weights file (:func:`weights_file_missing`: ``train_net``, the API). A path
    (it names a folder) is not a misspelt name."""
    from .cli.errors import closest_name

    if not isinstance(weights, str) or os.path.dirname(weights):
        return ""
    guess = closest_name(weights.strip(), RELEASED_WEIGHTS)
    return f" (did you mean {guess}?)" if guess else ""


def hub_cache_dir() -> str:
    """The Hugging Face hub cache, read from the environment at call time (huggingface_hub
    reads it once at import) with huggingface_hub's rule: ``HF_HUB_CACHE``, else the older
    ``HUGGINGFACE_HUB_CACHE``, else ``HF_HOME/hub``, variables and ``~`` expanded; so that the
    ``hf download`` this module suggests fills the cache it reads."""
    for variable in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(variable):
            return os.path.expanduser(os.path.expandvars(os.environ[variable]))
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.path.expandvars(os.environ["HF_HOME"])), "hub")
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def _check(entry: ReleasedWeights, path: str, fresh: bool):
    """Size always (cheap), sha256 after a fresh download (the cache blob is then trusted)."""
    if entry.size is not None and os.path.getsize(path) != entry.size:
        raise WeightsUnavailableError(
            f"{entry.name}: {path} has {os.path.getsize(path)} bytes, expected {entry.size}; "
            f"delete it and run again to download {entry.url} anew"
        )
    if fresh and entry.sha256 is not None:
        actual = file_digest(path, "sha256")
        if actual != entry.sha256.lower():
            raise WeightsUnavailableError(
                f"{entry.name}: sha256 of {path} is {actual}, expected {entry.sha256}; "
                f"delete it and run again to download {entry.url} anew"
            )


def _cached(entry: ReleasedWeights) -> Optional[str]:
    """The file of ``entry`` in the hub cache, or None. A released file never changes: once
    cached it is used without asking the hub."""
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(repo_id=entry.repo_id, filename=entry.filename, repo_type=entry.repo_type,
                                    cache_dir=hub_cache_dir(), revision=entry.revision)
    return cached if isinstance(cached, str) and os.path.isfile(cached) else None


def _metadata_timeout() -> float:
    """:data:`METADATA_TIMEOUT_S`, or ``HF_HUB_ETAG_TIMEOUT`` when set (a slow connection's
    setting, which huggingface_hub applies to its own downloads)."""
    try:
        return float(os.environ["HF_HUB_ETAG_TIMEOUT"])
    except (KeyError, ValueError):
        return METADATA_TIMEOUT_S


def _probe(entry: ReleasedWeights) -> None:
    """Raise :class:`WeightsUnavailableError` (one line: why, and how to get the file) when
    ``entry`` cannot be downloaded now: ``HF_HUB_OFFLINE`` set, or the hub does not answer a
    metadata request within :func:`_metadata_timeout` seconds (one try: ``hf_hub_download`` retries
    an unreachable hub with back-off for about a minute before giving up)."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub import constants as hf_constants

    if hub_offline() or hf_constants.is_offline_mode():
        raise WeightsUnavailableError(f"{entry.name}: not in the Hugging Face cache and HF_HUB_OFFLINE is set; "
                                      f"{_how_to_get(entry)}")
    endpoint = hub_endpoint()
    try:
        url = hf_hub_url(entry.repo_id, entry.filename, repo_type=entry.repo_type, revision=entry.revision,
                         endpoint=endpoint)
        get_hf_file_metadata(url, timeout=_metadata_timeout(), endpoint=endpoint, retry_on_errors=False)
    except Exception as e:  # no network, hub error, HTTP 404: all end the same way for the user
        raise WeightsUnavailableError(f"{entry.name}: cannot download ({_short_reason(e)}); "
                                      f"{_how_to_get(entry)}") from None


def _how_to_get(entry: ReleasedWeights) -> str:
    cache = hub_cache_dir()
    return (f"download {entry.url} and pass its path as --weights / MODEL.WEIGHTS "
            f"(or put it in the hub cache {cache} with: hf download {entry.repo_id} {entry.filename} "
            f"--repo-type {entry.repo_type} --cache-dir {cache})")


#: what an HTTP status of the hub means for a download, added to its reason
_HTTP_HINTS = {
    401: "the repository is private or gated, or the token is not valid: log in with `hf auth login` or set HF_TOKEN",
    403: "the token may not read this repository (a gated one needs its terms accepted on its page)",
    404: "the file is not on the hub at this revision",
}


def _short_reason(error: Exception) -> str:
    """One line on why a hub request failed: for an HTTP error its status, the hub's own
    message and what the status means (``huggingface_hub``'s message spreads that over
    several lines with a request id); else the error, at most 300 characters."""
    response = getattr(error, "response", None)
    status = getattr(response, "status_code", None)
    if isinstance(status, int):
        server = error_line(str(getattr(error, "server_message", None) or ""), limit=200)
        return " - ".join(part for part in (f"HTTP {status}", server, _HTTP_HINTS.get(status)) if part)
    return error_line(error, limit=300)


def check_released_weights(weights: str) -> Optional[str]:
    """For a released name: its file is in the hub cache or can be downloaded now (else
    :class:`WeightsUnavailableError`, one line); nothing is downloaded. Anything else passes.
    Returns the cached file of a released name (``None`` when not cached or not a name)."""
    entry = get_released(weights)
    if entry is None:
        return None
    cached = _cached(entry)
    if cached is None:
        _probe(entry)
    return cached


def resolve_weights(weights: str) -> str:
    """``MODEL.WEIGHTS`` value -> local checkpoint path.

    A released name (:data:`RELEASED_WEIGHTS`) is downloaded on first use and then read from the
    hub cache; anything else (a path, a URL detectron2 handles, ``""``) is returned unchanged.
    Raises :class:`WeightsUnavailableError` with one line when the file can be neither found in
    the cache nor downloaded.
    """
    entry = get_released(weights)
    if entry is None:
        return weights
    from .checkpoint.official import checkpoint_file_problem

    cached = _cached(entry)
    damaged = cached is not None and checkpoint_file_problem(cached)
    if cached is not None and not damaged:
        _check(entry, cached, fresh=False)
        return cached
    if damaged:  # a cut-short blob: deleting the snapshot link only made the hub link it again
        logger.warning(f"{entry.name}: the cached file is damaged ({damaged}; blob {os.path.realpath(cached)}); "
                       "downloading it again")
    _probe(entry)
    from huggingface_hub import hf_hub_download

    try:
        path = hf_hub_download(repo_id=entry.repo_id, filename=entry.filename, repo_type=entry.repo_type,
                               cache_dir=hub_cache_dir(), revision=entry.revision, force_download=bool(damaged),
                               endpoint=hub_endpoint(), etag_timeout=_metadata_timeout())
    except Exception as e:  # the connection lost while downloading, disk full, ...
        raise WeightsUnavailableError(f"{entry.name}: cannot download ({_short_reason(e)}); "
                                      f"{_how_to_get(entry)}") from None
    _check(entry, path, fresh=True)
    return path
