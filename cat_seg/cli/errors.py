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
  ``KEY VALUE`` pairs into a detectron2 config; a missing file, a YAML error, a bad value or
  an unknown key raise :class:`UserError` (an unknown key names the closest valid key).
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

DEBUG_ENV = "CATSEG_DEBUG"


class UserError(Exception):
    """A user mistake; ``str(error)`` is the one-line message (without ``error:``)."""


_TRACEBACK = "Traceback (most recent call last):"
_WORKER_TRACEBACK = "Original " + _TRACEBACK  # how torch's DataLoader re-raises a worker's error


def last_traceback_error(text: str) -> Optional[Tuple[str, str]]:
    """``(type, message)`` of the error that ends the last traceback printed in ``text``: its
    frames are indented, the error (``type: message``, possibly several lines) starts at the
    first line after them that is not; ``("", line)`` for an error line without a type.
    ``None`` when ``text`` holds no traceback."""
    if _TRACEBACK not in text:
        return None
    lines = text.rsplit(_TRACEBACK, 1)[1].splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() and not line[0].isspace()), None)
    if start is None:
        return None
    error = "\n".join(lines[start:])
    kind, separator, message = error.partition(": ")
    return (kind, message) if separator else ("", error)


def one_line(message) -> str:
    """``message`` with its line breaks folded into spaces. An error re-raised from a
    ``DataLoader`` worker (its message is the worker's traceback) gives the original error's
    message only."""
    text = str(message)
    if _WORKER_TRACEBACK in text:
        error = last_traceback_error(text)
        if error is not None:
            text = error[1]
    return " ".join(text.split())


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors are one ``error: ... (see --help)`` line on
    stderr and exit status 2, like every other user error of the programs (argparse's own
    prints the usage block before the error line)."""

    def error(self, message):
        print(f"error: {one_line(message)} (see --help)", file=sys.stderr, flush=True)
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
    print(f"error: {one_line(error)}", file=sys.stderr, flush=True)
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
    """The valid full key of ``cfg`` closest to ``key`` (:func:`closest_name`), or ``None``."""
    return closest_name(key, _leaf_keys(cfg))


def check_config_keys(cfg, keys: Iterable[str], source: str) -> None:
    """Raise :class:`UserError` for the first of ``keys`` that ``cfg`` does not have.

    ``source`` says where the key came from (a file name, ``"the command line"``). The
    message names the closest valid key.
    """
    for key in keys:
        if key == "_BASE_" or key == "VERSION" or _is_known(cfg, key):
            continue
        guess = closest_key(cfg, key)
        hint = f"did you mean {guess!r}?" if guess else "not a cat-seg/detectron2 config key (see cat_seg/config.py)"
        raise UserError(f"unknown config key {key!r} in {source}; {hint}")


def _not_a_mapping(config_file: str) -> Optional[str]:
    """The first file of ``config_file``'s ``_BASE_`` chain whose YAML is not a mapping of
    config keys (an empty file, a list), with what it holds; ``None`` when there is none or a
    file cannot be read (its own error is reported then)."""
    from cat_seg.config import config_file_chain

    for path, data in config_file_chain(config_file):
        if not isinstance(data, dict):
            held = "nothing" if data is None else f"a YAML {type(data).__name__}"
            return f"{path!r} holds {held}"
    return None


def _file_keys(config_file: str) -> List[str]:
    """The dotted keys set by a YAML config file (its ``_BASE_`` files included)."""
    from detectron2.config import CfgNode

    return _leaf_keys(CfgNode.load_yaml_with_base(config_file, allow_unsafe=True))


def merge_config(cfg, config_file: Optional[str] = None, opts: Sequence[str] = ()):
    """Merge ``config_file`` (if given; a relative path from the working folder, else the
    repository: :func:`cat_seg.utils.resolve_path`) then the ``KEY VALUE`` list ``opts``
    into ``cfg``.

    Returns ``cfg``. Raises :class:`UserError` for a missing config file, an odd ``opts``
    list, a YAML error, an unknown key (naming the closest valid key) or a value of the wrong
    type, so that a command line gets one line instead of detectron2's traceback.
    """
    opts = list(opts)
    if config_file is not None:
        from cat_seg.utils import REPO_ROOT, resolve_path

        # a path relative to the working folder, else to the repository (configs/... from anywhere)
        config_file = resolve_path(config_file)
        if not os.path.isfile(config_file):
            what = "is a directory, expected a YAML file" if os.path.isdir(config_file) else "not found"
            if what == "not found" and not os.path.isabs(config_file) and not os.path.isdir(
                    os.path.join(REPO_ROOT, "configs")):
                what += ("; this cat-seg is installed without its repository, whose configs/ it needs: pass "
                         "--config-file with the path into a checkout (e.g. ~/cat-seg/configs/vitb_384.yaml)")
            raise UserError(f"config file {config_file!r} {what}")
        try:
            cfg.merge_from_file(config_file)
            from cat_seg.config import resolve_paths_near_config

            resolve_paths_near_config(cfg, config_file)  # a checkout's config from any folder
        except Exception as exc:  # unknown key, YAML syntax, bad value, unreadable _BASE_
            empty = _not_a_mapping(config_file)
            if empty:
                raise UserError(f"bad config file {config_file!r}: {empty}; expected a YAML mapping of config keys "
                                f"(KEY: value lines, e.g. _BASE_: configs/vitb_384.yaml)") from None
            try:
                check_config_keys(cfg, _file_keys(config_file), f"config file {config_file!r}")
            except UserError:
                raise
            except Exception:  # the file itself cannot be read: report the merge error below
                pass
            raise UserError(f"bad config file {config_file!r}: {type(exc).__name__}: {one_line(exc)}") from None
        _say_ignored_keys(_file_keys(config_file))
    if len(opts) % 2:
        hint = "; options (--...) go before the KEY VALUE pairs" if any(o.startswith("--") for o in opts) else ""
        raise UserError(f"config overrides must be KEY VALUE pairs, got an odd number of items: "
                        f"{' '.join(opts)}{hint}")
    check_config_keys(cfg, opts[0::2], "the command line")
    try:
        cfg.merge_from_list(opts)
    except Exception as exc:  # a value of the wrong type or a value that does not parse
        raise UserError(f"bad config override on the command line: {type(exc).__name__}: {one_line(exc)}") from None
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
            logging.getLogger("cat_seg.config").warning(f"{key}: not read by cat-seg ({IGNORED_KEYS[node]})")
