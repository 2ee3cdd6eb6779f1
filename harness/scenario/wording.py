"""How the loader's messages name things: a value, its type, a data path, the closest valid choice.

Why a module of its own: every stage words its errors the same way (the YAML tree, the schema
errors, the semantic checks), and so does the acknowledgements file (harness/report/diff_acks.py).
"""
from __future__ import annotations

import difflib
from typing import Any

DOC = "docs/scenario-format.md"   # where hints send a person for the scenario format

JSON_TYPES = {"object": "a mapping", "array": "a list", "string": "a string", "integer": "an integer",
              "number": "a number", "boolean": "true or false", "null": "nothing (an empty value)"}


def type_name(value: Any) -> str:
    """What a value was read as, with the value where it helps: "a string ('x')", "an integer (3)"."""
    if value is None:
        return "an empty value"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return f"a string ({short(value)})"
    if isinstance(value, int):
        return f"an integer ({value})"
    if isinstance(value, float):
        return f"a number ({value})"
    if isinstance(value, bytes):
        return "binary data"
    return f"a {type(value).__name__} ({value})"   # YAML dates and times


def short(value: Any) -> str:
    """A value as a message quotes it, cut to 60 characters."""
    text = repr(value) if not isinstance(value, str) else f"'{value[:60]}'"
    return text if len(text) <= 60 else text[:57] + "..."


def did_you_mean(word: str, choices: list[str]) -> str:
    """The start of a hint naming the closest choice, or nothing when none is close."""
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'? " if close else ""


def path_label(path: tuple, data: Any) -> str:
    """A person's name for a data path: "scenario 'x' step 3.1 attach.interface"."""
    words = []
    rest = list(path)
    if rest[:1] == ["scenarios"] and len(rest) >= 2 and isinstance(rest[1], int):
        sc = data["scenarios"][rest[1]] if isinstance(data, dict) else None
        name = sc.get("name") if isinstance(sc, dict) else None
        words.append(f"scenario '{name}'" if isinstance(name, str) else f"scenario {rest[1] + 1}")
        rest = rest[2:]
    numbers = []
    while len(rest) >= 2 and rest[0] == "steps" and isinstance(rest[1], int):
        numbers.append(str(rest[1] + 1))
        rest = rest[2:]
        if rest[:2] == ["repeat", "steps"]:
            rest = rest[1:]
    if numbers:
        words.append("step " + ".".join(numbers))
    if rest[:2] == ["domain", "devices"] and len(rest) >= 3:
        words.append(f"domain device {rest[2] + 1}")
        rest = rest[3:]
    if rest:
        words.append("".join(f"#{p + 1}" if isinstance(p, int) else f".{p}" for p in rest).lstrip("."))
    return " ".join(words)
