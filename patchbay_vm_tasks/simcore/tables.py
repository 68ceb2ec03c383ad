"""Typed values out of parsed TOML tables, and the unknown-key policy of one read.

Every helper raises `model.SimError(path, key, message)` naming the file and the key.
`TableReader` also holds what one read of a sim collects besides errors: its warnings.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from . import model
from .durations import parse_duration
from .limits import MAX_FILES_READ, shorten
from .tomlfiles import TomlFiles

SimError = model.SimError


def did_you_mean(key: str, allowed: frozenset[str] | set[str]) -> str:
    close = difflib.get_close_matches(key, sorted(allowed), n=1, cutoff=0.7)
    return f"; did you mean {close[0]!r}?" if close else ""


def join_key(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def type_name(value: Any) -> str:
    return {dict: "a table", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


class TableReader:
    """One read of a sim: `strict` makes unknown keys errors, else they go to `warnings`.
    `files`: where its TOML files come from (shared by the reads of one invocation, so
    that each file is parsed once; default: this read's own)."""

    def __init__(self, strict: bool, files: TomlFiles | None = None) -> None:
        self.strict = strict
        self.warnings: list[str] = []
        self.files_read = 0
        self.files = TomlFiles() if files is None else files

    def read_file(self, path: Path, shown: str, key: str | None) -> dict[str, Any]:
        """The TOML of one more file the sim reads (counted: count_file)."""
        self.count_file(shown, key)
        return self.files.read(path, shown)

    def count_file(self, path: str, key: str | None) -> None:
        """One more file read for this sim; past MAX_FILES_READ a SimError (extends that
        name the same files again and again would read them exponentially often)."""
        self.files_read += 1
        if self.files_read > MAX_FILES_READ:
            raise SimError(
                path, key, f"the sim reads more than {MAX_FILES_READ} files; simplify its extends"
            )

    # -- unknown keys ---------------------------------------------------------

    def unknown(self, path: str, key: str, message: str) -> None:
        err = SimError(path, key, message)
        if self.strict:
            raise err
        self.warnings.append(str(err))

    def check_keys(
        self, table: dict[str, Any], allowed: frozenset[str], path: str, prefix: str, what: str
    ) -> None:
        for k in table:
            if k not in allowed:
                self.unknown(
                    path,
                    join_key(prefix, k),
                    f"unknown key {k!r} in {what}{did_you_mean(k, allowed)}",
                )

    # -- typed values ---------------------------------------------------------

    @staticmethod
    def table(value: Any, path: str, key: str, what: str = "a table") -> dict[str, Any]:
        if not isinstance(value, dict):
            raise SimError(path, key, f"must be {what}, got {type_name(value)}")
        return value

    @staticmethod
    def string(value: Any, path: str, key: str) -> str:
        if not isinstance(value, str):
            raise SimError(path, key, f"must be a string, got {type_name(value)}")
        return value

    def opt_string(self, table: dict[str, Any], name: str, path: str, prefix: str) -> str | None:
        value = table.get(name)
        return None if value is None else self.string(value, path, join_key(prefix, name))

    @staticmethod
    def strings(value: Any, path: str, key: str) -> list[str]:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise SimError(path, key, f"must be a list of strings, got {shorten(repr(value))}")
        return list(value)

    def string_table(self, value: Any, path: str, key: str) -> dict[str, str]:
        table = self.table(value, path, key)
        for k, v in table.items():
            self.string(v, path, join_key(key, k))
        return dict(table)

    @staticmethod
    def duration(value: Any, path: str, key: str) -> float:
        try:
            return parse_duration(value)
        except ValueError as exc:
            raise SimError(path, key, str(exc)) from None

    @staticmethod
    def array_of_tables(data: dict[str, Any], name: str, path: str) -> list[dict[str, Any]]:
        value = data.get(name, [])
        if isinstance(value, dict):
            raise SimError(path, name, f"write [[{name}]] (an array of tables), not [{name}]")
        if not isinstance(value, list):
            raise SimError(path, name, f"write [[{name}]] (an array of tables)")
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                raise SimError(path, f"{name}[{i}]", f"must be a table, got {type_name(item)}")
        return value
