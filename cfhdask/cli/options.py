"""Command-line options whose defaults and help come from :mod:`cfhdask.settings`.

Every option that mirrors a setting defaults to ``None`` on the parser, so
that "not given" is told apart from "given the default value"; its help shows
the current default (the user's Dask config included).  :func:`overrides`
collects the options given, and :func:`cfhdask.settings.resolve` applies them
on top of the section, with errors naming the flag.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Iterable
from typing import Any

from cfhdask.errors import CfhdaskInputError
from cfhdask.secrets import register as register_secrets
from cfhdask.settings import Settings, resolve, settings

__all__ = ["CLUSTER_FIELDS", "add_cluster_options", "add_log_options", "add_setting",
           "cluster_kwargs", "csv_list", "overrides", "parse_storage_options"]


def csv_list(value: str) -> list[str]:
    """``"a,b, c"`` -> ``["a", "b", "c"]``; ``""`` -> ``[]``."""
    return [v.strip() for v in str(value).split(",") if v.strip()]


def _field(section: str, name: str):
    model = Settings.model_fields[section].annotation
    try:
        return model.model_fields[name]
    except KeyError:  # pragma: no cover - a programming error
        raise KeyError(f"no setting {section}.{name}") from None


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ",".join(map(str, value)) or "none"
    return "none" if value is None else str(value)


def add_setting(group, flag: str, section: str, name: str | None = None, *,
                help: str | None = None, dest: str | None = None, **kwargs: Any) -> None:
    """Add ``flag`` for setting ``section.name``; help and default shown from the settings.

    Parameters
    ----------
    group : argparse parser or argument group
    flag : str
        e.g. ``"--n-perm"``; ``name`` defaults to its words joined by ``_``.
    section : str
        Settings section (``"stats"``).
    help : str, optional
        Help text (default: the field's description).
    dest : str, optional
        Attribute on the parsed namespace (default: ``name``).
    **kwargs
        ``type``, ``choices``, ``metavar``...; ``kind="bool"`` makes a
        ``--flag/--no-flag`` pair, ``kind="list"`` a comma-separated list.
    """
    name = name or flag.lstrip("-").replace("-", "_")
    info = _field(section, name)
    default = getattr(getattr(settings(), section), name)
    text = (help or info.description or "").rstrip(".")
    null = re.search(r" ?\(null: ([^)]*)\)", text)
    if null and default is None:
        text = text.replace(null.group(0), "") + f" (default: {null.group(1)})"
    else:
        text = (text.replace(null.group(0), "") if null else text) + \
            f" (default: {_shown(default)})"
    text = text.replace("%", "%%")
    kind = kwargs.pop("kind", None)
    if kind == "bool":
        group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                           dest=dest or name, help=text)
    elif kind == "list":
        group.add_argument(flag, type=csv_list, default=None, dest=dest or name,
                           metavar=kwargs.pop("metavar", "A,B"), help=text, **kwargs)
    else:
        group.add_argument(flag, default=None, dest=dest or name, help=text, **kwargs)


def overrides(args: argparse.Namespace, names: Iterable[str]) -> dict[str, Any]:
    """The options among ``names`` that were given (not None)."""
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


#: Options of :func:`add_cluster_options` -> fields of the ``cluster`` settings.
CLUSTER_FIELDS = {"scheduler": "scheduler", "scheduler_file": "scheduler_file",
                  "cluster": "kind", "n_workers": "n_workers",
                  "threads_per_worker": "threads_per_worker", "wait_workers": "wait_workers",
                  "tls_ca_file": "tls_ca_file", "tls_cert": "tls_cert", "tls_key": "tls_key"}


def add_cluster_options(p: argparse.ArgumentParser) -> None:
    """Options shared by every command that computes on Dask."""
    g = p.add_argument_group(
        "Dask cluster (default: an embedded LocalCluster on this machine; batch-job settings "
        "in the Dask config, section cfhdask.cluster.jobqueue, see deploy/README.md)")
    add_setting(g, "--scheduler", "cluster", metavar="ADDRESS")
    add_setting(g, "--scheduler-file", "cluster", metavar="FILE")
    add_setting(g, "--cluster", "cluster", "kind", dest="cluster",
                choices=["local", "slurm", "pbs", "kubernetes"],
                help="Start a cluster of this kind: an embedded LocalCluster, SLURM/PBS worker "
                     "jobs (checked with the batch system, replaced before their walltime, "
                     "cancelled on exit), or Kubernetes pods")
    add_setting(g, "--n-workers", "cluster", type=int)
    add_setting(g, "--threads-per-worker", "cluster", type=int)
    add_setting(g, "--wait-workers", "cluster", type=int, metavar="N")
    add_setting(g, "--tls-ca-file", "cluster", metavar="PEM")
    add_setting(g, "--tls-cert", "cluster", metavar="PEM")
    add_setting(g, "--tls-key", "cluster", metavar="PEM")


def cluster_kwargs(args: argparse.Namespace) -> dict:
    """Keyword arguments of :func:`cfhdask.cluster.dask_client` from parsed options.

    Only the options given are returned; they are validated first, so a bad
    combination is an error naming the flags before anything starts.
    """
    given = {opt: getattr(args, opt) for opt in CLUSTER_FIELDS
             if getattr(args, opt, None) is not None}
    resolve("cluster", {CLUSTER_FIELDS[k]: v for k, v in given.items()}, style="cli")
    return given


def add_log_options(p: argparse.ArgumentParser) -> None:
    """``-v``/``-q``, accepted before and after the sub-command."""
    p.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                   help="more log output (-v info is the default, -vv debug)")
    p.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                   help="only warnings and errors")


def parse_storage_options(text: str | None) -> dict:
    """The ``--storage-options`` JSON object as a dict."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        # the message quotes no part of the text, which may hold credentials
        raise CfhdaskInputError(f"--storage-options: not valid JSON ({exc.msg} at character "
                                f"{exc.pos})") from None
    if not isinstance(value, dict):
        raise CfhdaskInputError("--storage-options: must be a JSON object")
    register_secrets(value)  # never in a log line or an error message
    return value
