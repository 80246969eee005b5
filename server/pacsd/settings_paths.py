"""Relative paths in a configuration file, resolved against the file's folder (issue 19).

A path written in /etc/pacsd/pacsd.yaml means the same place whatever the working directory of
the command that reads the file: `pacsd serve` under systemd and `pacsd worklist add --config
/etc/pacsd/pacsd.yaml` typed in /srv/other use one index database and one storage root.

The resolution works on the YAML document, before validation, so only the values the file
writes move. The embedded defaults (`./var/...`) and PACSD_* environment overrides are left as
they are: relative to the working directory. Every setting typed as a path (`Path`,
`Path | None`, `list[Path]`, in any section, list or nested section) is resolved, and so is the
file of a `sqlite:///` database URL.
"""

from __future__ import annotations

import os
import types
import typing
from pathlib import Path
from typing import Annotated, Any, get_args, get_origin

from pydantic import BaseModel

from pacsd.settings_secrets import mask_url

SQLITE_PREFIX = "sqlite:///"
URL_FIELDS = frozenset({"url"})  # string settings holding a database URL


def resolve_relative_paths(
    model: type[BaseModel], document: dict[str, Any], config_file: Path
) -> dict[str, Any]:
    """`document` (the YAML of `config_file`) with its relative paths made absolute against
    the file's folder; values that are not what the model expects are left to validation."""
    return _resolve_section(model, document, config_folder(config_file))


def config_folder(config_file: Path) -> Path:
    """The folder of `config_file`, absolute and without `..` (symbolic links kept)."""
    return Path(os.path.abspath(config_file)).parent


def _resolve_section(
    model: type[BaseModel], section: dict[str, Any], folder: Path
) -> dict[str, Any]:
    resolved = dict(section)
    for name, value in section.items():
        field = model.model_fields.get(name) if isinstance(name, str) else None
        if field is None:
            continue
        if name in URL_FIELDS and isinstance(value, str):
            resolved[name] = resolve_sqlite_url(value, folder)
        else:
            resolved[name] = _resolve_value(field.annotation, value, folder)
    return resolved


def _resolve_value(annotation: Any, value: Any, folder: Path) -> Any:
    for kind in _alternatives(annotation):
        if kind is Path and isinstance(value, str | Path):
            return _resolve_path(value, folder)
        if get_origin(kind) is list and isinstance(value, list):
            [element] = get_args(kind) or (Any,)
            return [_resolve_value(element, item, folder) for item in value]
        if isinstance(kind, type) and issubclass(kind, BaseModel) and isinstance(value, dict):
            return _resolve_section(kind, value, folder)
    return value


def _alternatives(annotation: Any) -> list[Any]:
    """The types an annotation admits: `Annotated` unwrapped, unions split."""
    if get_origin(annotation) is Annotated:
        return _alternatives(get_args(annotation)[0])
    if get_origin(annotation) in (typing.Union, types.UnionType):
        return [kind for member in get_args(annotation) for kind in _alternatives(member)]
    return [annotation]


def _resolve_path(value: str | Path, folder: Path) -> str | Path:
    if str(value) == "" or Path(value).is_absolute():
        return value
    return str(folder / value)


def resolve_sqlite_url(url: str, folder: Path) -> str:
    """A `sqlite:///RELATIVE` URL with its file under `folder`; any other URL as it is."""
    if not url.startswith(SQLITE_PREFIX):
        return url
    database, separator, query = url.removeprefix(SQLITE_PREFIX).partition("?")
    if not database or database.startswith("/") or database == ":memory:":
        return url
    if database.startswith("file:"):  # an SQLite URI filename (uri=true): left to SQLite
        return url
    return f"{SQLITE_PREFIX}{folder / database}{separator}{query}"


def where_used(database_url: str, storage_root: Path, config_file: Path | None) -> str:
    """One line for admin commands: the index database and storage root used, absolute (a
    relative one is under the working directory), and the configuration they came from."""
    database = mask_url(resolve_sqlite_url(database_url, Path.cwd()))
    root = os.path.abspath(storage_root)
    source = os.path.abspath(config_file) if config_file is not None else "the embedded default"
    return f"database {database}, storage root {root} (configuration: {source})"


def paths_note(config_file: Path | None) -> list[str]:
    """Comment lines for `pacsd config show`: where relative paths are resolved."""
    cwd = Path.cwd()
    if config_file is None:
        return [
            "# configuration: the embedded default; its relative paths (./var/...) are under",
            f"# the working directory, {cwd}",
        ]
    return [
        f"# configuration: {config_file}; relative paths written in it are resolved against",
        f"# {config_folder(config_file)}; defaults and PACSD_* overrides that are relative",
        f"# are under the working directory, {cwd}",
    ]
