"""User errors of the command-line programs: one ``error: ...`` line, exit status 2.

Interface (used by every ``cat_seg.cli`` program, the prepare scripts and the synthetic
benchmark's generator):

- :class:`UserError`: raise it for a mistake of the user (a bad argument, a missing file, a
  misspelt config key); its message is one line naming the key, file or value and what was
  expected.
- :func:`run_main`: ``sys.exit(run_main(main_impl, argv, user_errors=(...)))`` runs
  ``main_impl(argv)`` and turns :class:`UserError` (and the extra exception types
  ``user_errors``) into that one line on stderr and exit status 2. Any other exception is an
  internal error and keeps its traceback. ``CATSEG_DEBUG=1`` shows the traceback of user
  errors too.
- :func:`print_user_error`: that one line (and exit status 2) for a program whose ``main``
  catches its user errors itself (the demo, the web app, the benchmark tool, the prepare
  scripts).
- :func:`merge_config`: ``merge_config(cfg, config_file, opts)`` merges a YAML file and
  ``KEY VALUE`` pairs into a detectron2 config; a missing file, a bad ``_BASE_``, a YAML error,
  a value of the wrong type or an unknown key raise :class:`UserError` (an unknown key names the
  closest valid key, a bad value what the key takes).
- :func:`check_config_keys`: the unknown-key check itself, for callers that merge on their own.
- :class:`ArgumentParser` / :func:`one_line_argument_errors`: argparse whose errors (an unknown
  option, a bad choice or number) are that same one line, not argparse's usage block.
"""
import argparse
import difflib
import os
import sys
import warnings
from typing import Callable, Iterable, List, Optional, Sequence, Tuple, Type

from cat_seg.utils import error_line

DEBUG_ENV = "CATSEG_DEBUG"


class UserError(Exception):
    """A user mistake; ``str(error)`` is the one-line message (without ``error:``)."""


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors are one ``error: ... (see --help)`` line on
    stderr and exit status 2, like every other user error of the programs (argparse's own
    prints the usage block before the error line)."""

    def error(self, message):
        print(f"error: {error_line(message)} (see --help)", file=sys.stderr, flush=True)
        raise SystemExit(2)


def one_line_argument_errors(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Give a parser built elsewhere (detectron2's ``default_argument_parser``) the errors of
    :class:`ArgumentParser`; returns ``parser``."""
    parser.error = ArgumentParser.error.__get__(parser)
    return parser


def print_user_error(error: BaseException) -> int:
    """Print ``error: <message>`` as one line on stderr and return the exit status 2; with
    ``CATSEG_DEBUG=1`` re-raise ``error`` instead (its traceback). The one way every program
    reports a user error (:func:`run_main` and the programs with a ``main`` of their own)."""
    if os.environ.get(DEBUG_ENV):
        raise error
    print(f"error: {error_line(error, with_type=False)}", file=sys.stderr, flush=True)
    return 2


def run_main(main: Callable[[Optional[Sequence[str]]], Optional[int]], argv: Optional[Sequence[str]] = None,
             user_errors: Tuple[Type[BaseException], ...] = ()) -> int:
    """Run ``main(argv)`` and return its exit status (``None`` counts as 0).

    :class:`UserError` and ``user_errors`` print ``error: <message>`` (one line) on stderr and
    return 2; ``KeyboardInterrupt`` returns 130; anything else propagates with its traceback.
    """
    # torch warns at import time that TorchScript is deprecated (detectron2/open_clip use it):
    # noise, not a message for the user
    warnings.filterwarnings("ignore", message=".*torch.jit.script.* is deprecated")
    try:
        status = main(argv)
    except (UserError, *user_errors) as exc:
        return print_user_error(exc)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        return 130
    return 0 if status is None else int(status)


# ----------------------------------------------------------------------------- config keys
def _leaf_keys(node, prefix: str = "") -> List[str]:
    """Full dotted names of the leaf keys of a (nested) config node / dict."""
    keys = []
    for name, value in node.items():
        full = f"{prefix}{name}"
        if isinstance(value, dict):  # detectron2's CfgNode is a dict
            keys += _leaf_keys(value, full + ".")
        else:
            keys.append(full)
    return keys


def _is_known(cfg, key: str) -> bool:
    """``key`` exists in ``cfg`` (or lies under a node that accepts new keys), or is a
    deprecated/renamed key that detectron2 handles itself."""
    # yacs's own key_is_deprecated logs its warning: the merge that follows logs it already
    if key in cfg.__dict__[type(cfg).DEPRECATED_KEYS] or cfg.key_is_renamed(key):
        return True
    node = cfg
    for part in key.split("."):
        if not isinstance(node, dict):
            return False
        if part not in node:
            return bool(getattr(node, "is_new_allowed", lambda: False)())
        node = node[part]
    return True


def closest_name(name: str, names: Iterable[str]) -> Optional[str]:
    """The one of ``names`` closest to ``name`` ignoring case (``difflib``), or ``None`` when
    none is close: the "did you mean" of a misspelt config key or released-weights name."""
    upper = {n.upper(): n for n in names}
    matches = difflib.get_close_matches(name.upper(), list(upper), n=1, cutoff=0.6)
    return upper[matches[0]] if matches else None


def closest_key(cfg, key: str) -> Optional[str]:
    """The full key of ``cfg`` closest to ``key`` (:func:`closest_name`), or ``None``: a valid
    key, or one of the official keys ``cfg`` accepts without reading (its deprecated keys, such
    as ``MODEL.SEM_SEG_HEAD.TEXT_GUIDANCE_DIM``), which a misspelling of them is closest to.
    When ``key``'s node exists (``MODEL.SEM_SEG_HEAD`` of ``MODEL.SEM_SEG_HEAD.PAD_LENGTH``),
    only that node's keys are candidates: ``MODEL.FOO`` is not "corrected" to a key of another
    node that merely shares the prefix (``MODEL.FPN.NORM``)."""
    candidates = _leaf_keys(cfg) + sorted(cfg.__dict__[type(cfg).DEPRECATED_KEYS])
    parent = key.rpartition(".")[0]
    node = cfg
    for part in parent.split(".") if parent else ():
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, dict):  # the node exists: one of its own keys, by the last part alone, or none
        prefix = parent + "." if parent else ""
        own = [c[len(prefix):] for c in candidates if c.startswith(prefix) and "." not in c[len(prefix):]]
        guess = closest_name(key[len(prefix):], own)
        return prefix + guess if guess else None
    return closest_name(key, candidates)


def check_config_keys(cfg, keys: Iterable[str], source: str) -> None:
    """Raise :class:`UserError` for the first of ``keys`` that ``cfg`` does not have.

    ``source`` says where the key came from (a file name, ``"the command line"``). The
    message names the closest valid key.
    """
    for key in keys:
        if key == "_BASE_" or key == "VERSION" or _is_known(cfg, key):
            continue
        guess = closest_key(cfg, key)
        unread = guess is not None and guess in cfg.__dict__[type(cfg).DEPRECATED_KEYS]
        hint = f"did you mean {guess!r}{' (an official key cat-seg accepts and does not read)' if unread else ''}?" \
            if guess else (
            "not a cat-seg/detectron2 config key (see cat_seg/config.py); the keys of a method of your own are "
            "registered by its script with cat_seg.register_config_keys: run that script (eval.sh, run.sh: "
            "TRAIN_NET=it; docs/architecture.md, 'Building on cat-seg')")
        raise UserError(f"unknown config key {key!r} in {source}; {hint}")


def _existing_config_file(config_file: str) -> str:
    """``config_file`` relative to the working folder, else to the repository
    (:func:`cat_seg.utils.resolve_path`: ``configs/...`` from anywhere); :class:`UserError` when
    it is not a file."""
    from cat_seg.utils import REPO_ROOT, resolve_path

    config_file = resolve_path(config_file)
    if not os.path.isfile(config_file):
        what = "is a directory, expected a YAML file" if os.path.isdir(config_file) else "not found"
        if what == "not found" and not os.path.isabs(config_file) and not os.path.isdir(
                os.path.join(REPO_ROOT, "configs")):
            what += ("; this cat-seg is installed without its repository, whose configs/ it needs: pass "
                     "--config-file with the path into a checkout (e.g. ~/cat-seg/configs/vitb_384.yaml)")
        elif what == "not found":  # a misspelt name: the closest YAML file of that folder
            folder = resolve_path(os.path.dirname(config_file)) or "."
            names = [n for n in os.listdir(folder) if n.endswith((".yaml", ".yml"))] if os.path.isdir(folder) else []
            guess = difflib.get_close_matches(os.path.basename(config_file), names, n=1)
            if guess:
                what += f"; did you mean {os.path.join(os.path.dirname(config_file), guess[0])!r}?"
        raise UserError(f"config file {config_file!r} {what}")
    return config_file


def _read_config_file(config_file: str) -> dict:
    """The keys ``config_file`` sets, those of its ``_BASE_`` files included, as detectron2
    reads them (``load_yaml_with_base``: nested dicts, the file's own values over its bases').

    :class:`UserError` (one line) for a ``_BASE_`` that names no file or leads back into its own
    chain (detectron2 said ``FileNotFoundError`` without naming ``_BASE_``, or recursed until
    ``RecursionError``), a file of the chain that is not a mapping of keys (an empty file, a
    list), a YAML error."""
    from detectron2.config import CfgNode

    from cat_seg.config import ConfigChainError, config_file_chain

    try:
        chain = config_file_chain(config_file)
    except ConfigChainError as exc:
        raise UserError(str(exc)) from None
    for path, data in chain:
        if not isinstance(data, dict):
            held = "nothing" if data is None else f"a YAML {type(data).__name__}"
            raise UserError(f"bad config file {config_file!r}: {path!r} holds {held}; expected a YAML mapping of "
                            f"config keys (KEY: value lines, e.g. _BASE_: configs/vitb_384.yaml)")
    try:
        return CfgNode.load_yaml_with_base(config_file, allow_unsafe=True)
    except Exception as exc:  # YAML syntax, an unreadable file, a key one file sets as a value and another as a section
        raise UserError(f"bad config file {config_file!r}: {error_line(exc)}") from None


def _expected_value(current) -> str:
    """What a config key whose value is ``current`` takes, in words, for a message."""
    if isinstance(current, bool):  # before int: a bool is an int
        return "True or False"
    if isinstance(current, int):
        return "a whole number"
    if isinstance(current, float):
        return "a number"
    if isinstance(current, str):
        return "a string"
    if isinstance(current, (list, tuple)):
        example = repr(list(current))
        return f"a list such as {example}" if current and len(example) <= 40 else "a list"
    return f"a {type(current).__name__}"


def _checked_value(key: str, value, current, source: str):
    """``value`` (as given: a string on the command line, a YAML value in a file) for the
    config key ``key`` whose value is now ``current``, as it is to be merged.

    yacs's rule decides which values a key takes (the same type; a list for a tuple and back;
    ``None``), with one addition: a whole number for a key that holds a float is that float
    (``SOLVER.BASE_LR 1``: yacs refused an ``int`` for a ``float``). Anything else raises
    :class:`UserError` saying what ``key`` takes and what it got (yacs's "Type mismatch" named
    Python types and printed a whole section given a value: ``SOLVER: 5``). ``source`` says
    where ``value`` came from (``config file 'x.yaml'``, ``the command line``)."""
    from detectron2.config import CfgNode
    from yacs.config import _check_and_coerce_cfg_value_type

    from cat_seg.utils import show_keys

    decoded = CfgNode._decode_cfg_value(value)  # as yacs decodes it when merging: "[2, 2]" -> [2, 2]
    shown = decoded if isinstance(value, str) else value  # a YAML mapping as written, not as a CfgNode
    if isinstance(current, dict):
        if isinstance(decoded, dict):
            return value
        keys = show_keys([f"{key}.{name}" for name in current], limit=3)
        raise UserError(f"{key} is a section (a group of keys: {keys}), not a value; got {shown!r} (in {source}); "
                        f"set the keys under it instead")
    if type(current) is float and type(decoded) is int:  # type(): True is no number here
        return float(decoded)
    try:
        _check_and_coerce_cfg_value_type(decoded, current, key, key)
    except ValueError:
        raise UserError(f"{key}: expected {_expected_value(current)}, got {shown!r} (in {source})") from None
    return value


def _check_file_values(node, values: dict, source: str, prefix: str = "") -> None:
    """:func:`_checked_value` for every value of a config file that ``node`` (the config) has
    (``values``: the file's nested keys, as :func:`_read_config_file` gives them); the values to
    be merged replace the given ones in place. Keys ``node`` does not have are left to the merge
    (deprecated keys, new keys of a node that takes them)."""
    for name, value in values.items():
        if name not in node:
            continue
        current = node[name]
        if isinstance(current, dict) and isinstance(value, dict):
            _check_file_values(current, value, source, f"{prefix}{name}.")
        else:
            values[name] = _checked_value(prefix + name, value, current, source)


_NOT_SET = object()  # get_key's answer for a key the config does not hold


def _merge_file_values(cfg, values: dict, config_file: str) -> None:
    """Merge the checked ``values`` of ``config_file`` into ``cfg`` as detectron2's
    ``merge_from_file`` does for a config of its current ``VERSION`` or of none (cat-seg's and
    the official configs name none). A file that names an older ``VERSION`` goes through
    ``merge_from_file``, which converts it. (A file without ``VERSION`` that sets
    ``MODEL.WEIGHT`` or ``TEST.AUG_ON`` was guessed to be of version 1 by ``merge_from_file``;
    here those are unknown keys, whose message names the closest key of today.)"""
    if values.get("VERSION", cfg.VERSION) != cfg.VERSION:
        cfg.merge_from_file(config_file)
    else:
        cfg.merge_from_other_cfg(type(cfg)(values))


def check_pairs(opts: Sequence[str]) -> None:
    """``opts`` are ``KEY VALUE`` pairs (the command line's config overrides), else
    :class:`UserError` quoting them."""
    if len(opts) % 2:
        hint = "; options (--...) go before the KEY VALUE pairs" if any(o.startswith("--") for o in opts) else ""
        raise UserError(f"config overrides must be KEY VALUE pairs, got an odd number of items: "
                        f"{' '.join(opts)}{hint}")


def merge_config(cfg, config_file: Optional[str] = None, opts: Sequence[str] = (),
                 opts_source: str = "the command line"):
    """Merge ``config_file`` (if given; a relative path from the working folder, else the
    repository: :func:`cat_seg.utils.resolve_path`) then the ``KEY VALUE`` list ``opts``
    into ``cfg``.

    Returns ``cfg``. Raises :class:`UserError` for a missing config file, a ``_BASE_`` that
    names no file or leads back to itself, an odd ``opts`` list, a YAML error, an unknown key
    (naming the closest valid key) or a value of the wrong type (saying what the key takes), so
    that a command line gets one line instead of detectron2's traceback. A whole number for a
    key that holds a float is that float (``SOLVER.BASE_LR 1``), in a file as on the command line.

    The file is read once (:func:`_read_config_file`); its keys and values are checked before
    any is merged, and so are those of ``opts``: a mistake in the file leaves ``cfg`` as it was,
    one in ``opts`` as the file made it. ``opts_source`` names ``opts`` in the errors (``the
    opts argument`` for a caller in Python).
    """
    from cat_seg.config import get_key, resolve_paths_near_config

    opts = list(opts)
    if config_file is not None:
        config_file = _existing_config_file(config_file)
        source = f"config file {config_file!r}"
        values = _read_config_file(config_file)
        check_config_keys(cfg, _leaf_keys(values), source)
        _check_file_values(cfg, values, source)
        try:
            _merge_file_values(cfg, values, config_file)
            resolve_paths_near_config(cfg, config_file)  # a checkout's config from any folder
        except Exception as exc:  # what the checks above leave to detectron2 (a renamed key)
            raise UserError(f"bad config file {config_file!r}: {error_line(exc)}") from None
        _say_ignored_keys(_leaf_keys(values))
    check_pairs(opts)
    option = next((key for key in opts[0::2] if str(key).startswith("--")), None)
    if option is not None:  # an option given after --opts, which takes the rest of the line
        raise UserError(f"{option!r} among the config overrides: the KEY VALUE pairs (after --opts, or after "
                        "train_net.py's and eval.sh's own arguments) take the rest of the command line, so they must "
                        "come last (put the other options before them)")
    check_config_keys(cfg, opts[0::2], opts_source)
    checked = []
    for key, value in zip(opts[0::2], opts[1::2]):
        current = get_key(cfg, key, _NOT_SET)  # not set: a deprecated key, or a new key of a node that takes them
        checked += [key, value if current is _NOT_SET else _checked_value(key, value, current, opts_source)]
    try:
        cfg.merge_from_list(checked)
    except Exception as exc:  # what the checks above leave to detectron2 (a renamed key)
        raise UserError(f"bad config override in {opts_source}: {error_line(exc)}") from None
    _say_ignored_keys(opts[0::2])
    return cfg


def _say_ignored_keys(keys: Iterable[str]) -> None:
    """Log why cat-seg does not read the keys of the official code among ``keys``
    (:data:`cat_seg.config.IGNORED_KEYS`; yacs only says "Deprecated config key (ignoring)")."""
    import logging

    from cat_seg.config import IGNORED_KEYS

    said = set()
    for key in keys:
        node = next((k for k in IGNORED_KEYS if key == k or key.startswith(k + ".")), None)
        if node is not None and node not in said:
            said.add(node)
            name = key if key == node else f"{node}.* ({key} ...)"  # a node's keys: said once, as the node
            logging.getLogger("cat_seg.config").warning(f"{name}: not read by cat-seg ({IGNORED_KEYS[node]})")
