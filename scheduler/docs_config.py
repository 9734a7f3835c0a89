"""The README's configuration table, generated from the settings models.

`python -m scheduler.docs_config` prints the table; `--write README.md`
replaces what lies between `<!-- config-table:start -->` and
`<!-- config-table:end -->`; `--check README.md` exits 1 when that differs
from the models (the CI and `tests/unit/test_readme.py` run it).

Sources: `scheduler.settings.Settings` (with the Redis connection fields it
inherits) and each job's `config_model` in the registry named by `--jobs`
(default: the `jobs` setting's default, `jobs:registry`), loaded by name so
`scheduler` never imports `jobs`.

Guarantees: the output depends only on the models, never on the environment
(defaults come from the field definitions; a `default_factory` is described,
or called only when it reads nothing); secret defaults are masked.
Does not guarantee: anything about settings read outside these models.
"""

from __future__ import annotations

import argparse
import enum
import json
import sys
import types
import typing
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined
from pydantic_settings import BaseSettings, NoDecode

from .settings import Settings, _default_replica_id, mask_url

__all__ = ["END", "START", "ConfigTableMissing", "config_table", "render_model", "replace_table"]

START = "<!-- config-table:start -->"
END = "<!-- config-table:end -->"

#: default factories that read the machine or the clock, described instead of called.
_FACTORY_TEXT: dict[Callable[..., Any], str] = {_default_replica_id: "host name-pid"}


class ConfigTableMissing(LookupError):
    def __init__(self, path: str) -> None:
        super().__init__(f"{path}: no {START} ... {END} markers (put them where the table belongs)")


def _type_text(annotation: Any, metadata: list[Any]) -> str:
    """A reader's name for a field's type: what to write in the environment variable."""
    args = typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _type_text(args[0], [*metadata, *args[1:]])
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        text = " or ".join(_type_text(a, metadata) for a in inner)
        return f"{text} (optional)" if len(inner) < len(args) else text
    if origin is typing.Literal:
        return " / ".join(str(a) for a in args)
    if annotation is SecretStr:
        return "secret string"
    if annotation is bool:
        return "bool"
    if annotation in (int, float, str):
        return str(annotation.__name__)
    if isinstance(annotation, type) and issubclass(annotation, Path):
        return "file path"
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return " / ".join(str(m.value) for m in annotation)
    # NoDecode on a set/tuple means our own validator splits on commas; lists stay JSON (the jobs' json_list).
    comma = any(m is NoDecode or isinstance(m, NoDecode) for m in metadata) and origin in (frozenset, set, tuple)
    if origin in (list, tuple, set, frozenset):
        return "comma-separated list" if comma else "JSON list"
    if origin is dict:
        return "JSON object"
    return getattr(annotation, "__name__", str(annotation))


def _default_text(info: FieldInfo, type_text: str) -> str:
    if info.default_factory is not None:
        factory = info.default_factory
        if factory in _FACTORY_TEXT:
            return _FACTORY_TEXT[factory]
        value = factory()  # type: ignore[call-arg]
    elif info.default is PydanticUndefined:
        return "required"
    else:
        value = info.default
    if value is None:
        return "none"
    if isinstance(value, SecretStr):
        secret = value.get_secret_value()
        if not secret:
            return "none"
        # A URL keeps its shape (a default URL is an example, not a secret); anything else is starred.
        return f"`{mask_url(secret)}`" if "://" in secret else "`***`"
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, frozenset | set | tuple | list):
        items = sorted(value) if isinstance(value, frozenset | set) else list(value)
        if not items:
            return "empty"
        if type_text.startswith("JSON"):
            return f"`{json.dumps(items)}`"
        return "`" + ",".join(str(i) for i in items) + "`"
    if isinstance(value, dict):
        return "empty" if not value else f"`{json.dumps(value)}`"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if value == "":
        return "empty"
    return f"`{value}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ").strip()


def render_model(model: type[BaseSettings]) -> list[str]:
    """Markdown table rows (name, env variable, type, default, meaning) for one settings model."""
    prefix = str(model.model_config.get("env_prefix", ""))
    rows = []
    for name, info in model.model_fields.items():
        env = (info.validation_alias if isinstance(info.validation_alias, str) else prefix + name).upper()
        type_text = _type_text(info.annotation, list(info.metadata))
        cells = (f"`{name}`", f"`{env}`", type_text, _default_text(info, type_text), info.description or "")
        rows.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return rows


_HEADER = ["| name | env variable | type | default | meaning |", "|---|---|---|---|---|"]


def _job_models(jobs_ref: str) -> Iterable[tuple[str, type[BaseSettings]]]:
    from .embed import load_registry

    for spec in load_registry(jobs_ref):
        if spec.config_model is not None:
            yield spec.id, spec.config_model


def config_table(jobs_ref: str | None = None) -> str:
    """The whole generated section: the scheduler's settings, then one table per job."""
    ref = jobs_ref or str(Settings.model_fields["jobs"].default)
    lines = [
        "<!-- generated by `make docs-config` (python -m scheduler.docs_config --write README.md); do not edit -->",
        "",
        "**Scheduler and Redis connection** (environment variables or a `.env` file; seconds unless the name says otherwise)",
        "",
        *_HEADER,
        *render_model(Settings),
    ]
    for job_id, model in _job_models(ref):
        lines += ["", f"**Job `{job_id}`**", "", *_HEADER, *render_model(model)]
    return "\n".join(lines) + "\n"


def replace_table(text: str, table: str, path: str = "README.md") -> str:
    """`text` with the section between the markers replaced by `table`."""
    start = text.find(START)
    end = text.find(END, start + len(START)) if start >= 0 else -1
    if start < 0 or end < 0:
        raise ConfigTableMissing(path)
    return text[: start + len(START)] + "\n" + table + text[end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scheduler.docs_config", description=__doc__.split("\n")[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--write", metavar="FILE", help="replace the table between the markers in FILE")
    group.add_argument("--check", metavar="FILE", help="exit 1 if FILE's table differs from the models")
    parser.add_argument("--jobs", metavar="MODULE:ATTR", help="the JobRegistry whose job settings to include")
    args = parser.parse_args(argv)
    table = config_table(args.jobs)
    target = args.write or args.check
    if target is None:
        sys.stdout.write(table)
        return 0
    path = Path(target)
    try:
        text = path.read_text(encoding="utf-8")
        updated = replace_table(text, table, target)
    except (OSError, ConfigTableMissing) as exc:
        print(f"docs_config: {exc}", file=sys.stderr)
        return 2
    if args.check:
        if updated != text:
            print(f"docs_config: {target}'s configuration table is out of date; run `make docs-config`", file=sys.stderr)
            return 1
        return 0
    if updated != text:
        path.write_text(updated, encoding="utf-8")
        print(f"docs_config: rewrote the configuration table in {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
