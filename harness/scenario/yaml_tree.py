"""One YAML file as a tree of plain data that remembers where every value was written.

Why a module of its own: a scenario (and the acknowledgements file, harness/report/diff_acks.py) is
read as strict UTF-8 -> YAML nodes -> plain data, with limits that keep hostile files (alias and merge
bombs, runaway nesting) from hanging collection, and every value keeps its line and column so that
each later check can point at the line to fix. This is also where a located ScenarioError and its
snippet are made.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from harness.errors import HarnessError
from harness.scenario.model import Mark
from harness.scenario.wording import DOC, short, type_name

#: Limits that keep hostile or broken files (alias and merge bombs, runaway nesting) from hanging collection.
MAX_BYTES = 128 << 10   # the catalog's largest file has 1.2 KiB; parsing 1 MiB of YAML takes seconds
MAX_DEPTH = 64
MAX_NODES = 5_000      # values once aliases and merges are expanded; the catalog's largest file has 160

_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_SCALAR_TAGS = {f"tag:yaml.org,2002:{kind}" for kind in ("str", "int", "float", "bool", "null", "timestamp")}
_LINE_BREAK = re.compile(r"\r\n|[\n\r\x85\u2028\u2029]")


class ScenarioError(HarnessError):
    """A scenario file problem, located (1-based line and column) and explained with a hint."""

    def __init__(self, message: str, hint: str | None = None, *, file: str, line: int = 1,
                 column: int = 1, snippet: str | None = None):
        super().__init__(message, hint)
        self.file = file
        self.line = max(1, line)
        self.column = max(1, column)
        self.snippet = snippet

    @property
    def mark(self) -> Mark:
        return Mark(self.file, self.line, self.column)

    def __str__(self) -> str:
        out = f"{self.file}:{self.line}:{self.column}: {self.message}"
        if self.hint:
            out += f"\n  hint: {self.hint}"
        if self.snippet:
            out += "\n" + self.snippet
        return out


class YamlTree:
    """One file's text (for snippets), the YAML node behind every data path, and errors located in it."""

    def __init__(self, filename: str, text: str | bytes):
        self.file = filename
        self.raw = text
        self.lines: list[str] = []
        self.nodes: dict[tuple, Node] = {}       # data path -> value node
        self.key_nodes: dict[tuple, Node] = {}   # data path -> the key node that introduced it
        self.count = 0
        self.constructor = yaml.constructor.SafeConstructor()

    # -- errors ----------------------------------------------------------------------------

    def error(self, line: int, column: int, message: str, hint: str) -> ScenarioError:
        return ScenarioError(message, hint, file=self.file, line=line, column=column,
                             snippet=snippet(self.lines, line))

    def node_error(self, node: Node, message: str, hint: str) -> ScenarioError:
        return self.yaml_mark_error(node.start_mark, message, hint)

    def yaml_mark_error(self, mark: yaml.Mark, message: str, hint: str) -> ScenarioError:
        """An error at a PyYAML mark (0-based line and column)."""
        return self.error(mark.line + 1, mark.column + 1, message, hint)

    def mark(self, path: tuple, key: bool = False) -> Mark:
        """Where `path` was written (its key with key=True); falls back to the closest parent."""
        if key and path in self.key_nodes:
            start = self.key_nodes[path].start_mark
            return Mark(self.file, start.line + 1, start.column + 1)
        for n in range(len(path), -1, -1):
            if path[:n] in self.nodes:
                start = self.nodes[path[:n]].start_mark
                return Mark(self.file, start.line + 1, start.column + 1)
        return Mark(self.file, 1, 1)

    def at(self, path: tuple, message: str, hint: str, key: bool = False) -> ScenarioError:
        where = self.mark(path, key)
        return self.error(where.line, where.column, message, hint)

    def text_mark(self, path: tuple, text: str, offset: int) -> Mark:
        """The line and column of text[offset] inside a YAML string, where the style allows knowing it."""
        node = self.nodes[path]
        start = node.start_mark
        before = text[:offset]
        if node.style == "|":
            line = start.line + 2 + before.count("\n")
            content = text.split("\n")[before.count("\n")]
            source = self.lines[line - 1] if line <= len(self.lines) else content
            col = len(source) - len(content) + len(before.rsplit("\n", 1)[-1]) + 1
            return Mark(self.file, line, max(col, 1))
        if node.style in (None, "'", '"') and "\n" not in text and start.line == node.end_mark.line:
            return Mark(self.file, start.line + 1, start.column + 1 + (node.style is not None) + offset)
        return Mark(self.file, start.line + 1, start.column + 1)

    # -- text and YAML ---------------------------------------------------------------------

    def compose_file(self, too_large: str, empty: str) -> Node:
        """The file's YAML node tree, its lines kept for snippets; `too_large` and `empty` are the hints for
        a file over MAX_BYTES and for one that holds no value."""
        if len(self.raw) > MAX_BYTES:
            raise self.error(1, 1, f"the file is larger than {MAX_BYTES >> 10} KiB", too_large)
        text = self.decode()
        self.lines = split_lines(text)
        root = self.compose(text)
        if root is None:
            raise self.error(1, 1, "the file is empty", empty)
        return root

    def plain_data(self, root: Node) -> Any:
        """The whole tree as plain data (dicts, lists, scalars), recording the node behind every path."""
        return self.build(root, (), 0, set())

    def decode(self) -> str:
        if isinstance(self.raw, str):
            return self.raw
        try:
            return self.raw.decode("utf-8")
        except UnicodeDecodeError as e:
            good = self.raw[:e.start].decode("utf-8")
            line = len(_LINE_BREAK.findall(good)) + 1
            column = len(_LINE_BREAK.split(good)[-1]) + 1
            self.lines = split_lines(self.raw.decode("utf-8", errors="replace"))
            raise self.error(line, column, f"the file is not valid UTF-8 (byte 0x{self.raw[e.start]:02x})",
                             "save the file as UTF-8") from None

    def compose(self, text: str) -> Node | None:
        """The YAML node tree; nesting and size are checked on the event stream first (compose recurses,
        and composing, building and validating cost time per value)."""
        try:
            depth = values = 0
            for event in yaml.parse(text, Loader=yaml.SafeLoader):
                if isinstance(event, yaml.NodeEvent):
                    values += 1
                    if values > MAX_NODES:
                        raise self.yaml_mark_error(event.start_mark, f"the file has more than {MAX_NODES} values",
                                                   "scenarios need no more than a few hundred: split the file")
                if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                    depth += 1
                    if depth > MAX_DEPTH:
                        raise self.yaml_mark_error(event.start_mark, f"nesting deeper than {MAX_DEPTH} levels",
                                                   "scenarios are shallow; look for runaway brackets or indentation")
                elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                    depth -= 1
            return yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as e:
            raise self.yaml_error(e) from None
        except yaml.reader.ReaderError as e:
            before = text[:e.position]
            line, column = len(_LINE_BREAK.findall(before)) + 1, len(_LINE_BREAK.split(before)[-1]) + 1
            raise self.error(line, column, f"the file contains a character YAML does not allow ({e.character!r})",
                             "remove control characters; the file must be printable UTF-8 text") from None
        except yaml.YAMLError as e:
            raise self.error(1, 1, f"invalid YAML: {e}", f"check the file's syntax; see {DOC}") from None

    def yaml_error(self, e: yaml.MarkedYAMLError) -> ScenarioError:
        """A PyYAML error at its problem mark, with a hint for the usual causes."""
        mark = e.problem_mark or e.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = e.problem or e.context or "syntax error"
        said = f"{e.context or ''} {problem}"
        source = self.lines[line - 1] if line <= len(self.lines) else ""
        message = f"invalid YAML: {problem}"
        if "found another document" in problem:
            message = "the file holds more than one YAML document"
            hint = "remove the `---` line; several scenarios go in one file under `scenarios:`"
        elif "\t" in problem or "\\t" in problem:
            hint = "indent with spaces: YAML does not allow tabs"
        elif re.search(r":\s+[<>]", source):
            hint = 'quote values that start with > or <, e.g. libvirt: ">=9.0.0"'
        elif "mapping values are not allowed" in problem:
            hint = "a value containing ': ' needs quotes, or the indentation is off on this line or the one above"
        elif "duplicate anchor" in said:
            message = f"invalid YAML: {(e.context or '').split(';')[0]}"
            hint = "an &anchor name can be defined once: rename this one"
        elif "undefined alias" in said:
            hint = "define the &anchor before any *alias that uses it"
        else:
            hint = "check the indentation (spaces only) and quoting here"
        if e.context and e.context_mark and e.context_mark is not mark:
            hint += f" ({e.context} at line {e.context_mark.line + 1})"
        return self.error(line, column, message, hint)

    def build(self, node: Node, path: tuple, depth: int, stack: set[int]) -> Any:
        """Plain data from a node, recording the node per path; rejects what JSON cannot hold."""
        self.tick(node, path)
        if depth > MAX_DEPTH:
            raise self.node_error(node, f"nesting deeper than {MAX_DEPTH} levels (through YAML aliases)",
                                  "scenarios are shallow; look for aliases (*name) that nest each other")
        self.nodes[path] = node
        if isinstance(node, ScalarNode):
            return self.scalar(node)
        if id(node) in stack:
            raise self.node_error(node, "a YAML alias refers to a value that contains it",
                                  "recursive aliases have no finite value; copy the part you need instead")
        stack.add(id(node))
        try:
            if isinstance(node, SequenceNode):
                self.check_tag(node, _SEQ_TAG)
                return [self.build(child, path + (i,), depth + 1, stack) for i, child in enumerate(node.value)]
            self.check_tag(node, _MAP_TAG)
            out = {}
            for key, (key_node, value_node) in self.pairs(node, path, stack, 0).items():
                self.key_nodes[path + (key,)] = key_node
                out[key] = self.build(value_node, path + (key,), depth + 1, stack)
            return out
        finally:
            stack.discard(id(node))

    def tick(self, node: Node, path: tuple) -> None:
        """Count one value built or one merged key: aliases and `<<` merges each cost what they expand to."""
        self.count += 1
        if self.count > MAX_NODES:   # blame the top-level key whose value explodes, not the anchor deep inside
            raise self.node_error(self.key_nodes.get(path[:1], node),
                                  f"the file expands to more than {MAX_NODES} values",
                                  "YAML aliases (*name) or `<<` merges are multiplying; scenarios need no more "
                                  "than a few hundred values")

    def check_tag(self, node: Node, expected: str) -> None:
        if node.tag != expected:
            raise self.node_error(node, f"unsupported YAML tag '{node.tag}'",
                                  "scenarios use plain mappings, lists and scalars; remove the tag")

    def pairs(self, node: MappingNode, path: tuple, stack: set[int], depth: int) -> dict[str, tuple[Node, Node]]:
        """A mapping's key -> (key node, value node), with `<<` merges applied and duplicates refused.

        PyYAML silently keeps the last of two equal keys; here that is an error, since a
        duplicated step key or device usually means a lost edit. Every key, merged ones included,
        counts against MAX_NODES, and merges nest at most MAX_DEPTH deep (a merge bomb doubles per level).
        """
        if depth > MAX_DEPTH:
            raise self.node_error(self.key_nodes.get(path[:1], node),
                                  f"`<<` merges nested deeper than {MAX_DEPTH} levels",
                                  "merge a mapping that is itself plain, not a chain of merges")
        merged: dict[str, tuple[Node, Node]] = {}
        own: dict[str, tuple[Node, Node]] = {}
        for key_node, value_node in node.value:
            self.tick(key_node, path)
            if key_node.tag == _MERGE_TAG:
                sources = value_node.value if isinstance(value_node, SequenceNode) else [value_node]
                for src in reversed(sources):   # earlier merge sources win
                    self.tick(src, path)
                    if not isinstance(src, MappingNode):
                        raise self.node_error(src, "a `<<` merge needs a mapping (or a list of mappings)",
                                              "merge an anchored mapping, e.g. `<<: *base`")
                    if id(src) in stack:
                        raise self.node_error(src, "a YAML merge refers to the mapping that contains it",
                                              "recursive merges have no finite value")
                    stack.add(id(src))
                    merged.update(self.pairs(src, path, stack, depth + 1))
                    stack.discard(id(src))
                continue
            key = self.key(key_node)
            if key in own:
                first = own[key][0].start_mark
                raise self.node_error(key_node, f"duplicate key '{key}'",
                                      f"'{key}' is already set at line {first.line + 1}; YAML would silently keep "
                                      "only the last one: remove or rename one of them")
            own[key] = (key_node, value_node)
        return merged | own

    def key(self, node: Node) -> str:
        if not isinstance(node, ScalarNode):
            raise self.node_error(node, "a mapping key must be a plain name, not a list or mapping",
                                  "check the indentation and the brackets")
        value = self.scalar(node)
        if not isinstance(value, str):
            raise self.node_error(node, f"key '{node.value}' is read as {type_name(value)}, not a name",
                                  f"quote it (\"{node.value}\") if it is meant as text")
        return value

    def scalar(self, node: ScalarNode) -> Any:
        if node.tag not in _SCALAR_TAGS:
            raise self.node_error(node, f"unsupported YAML tag '{node.tag}' on {short(node.value)}",
                                  "remove the tag, or quote the value if it is meant as text")
        try:
            value = self.constructor.construct_object(node)
        except Exception as e:   # PyYAML's scalar constructors raise ValueError, KeyError, ... on bad input
            raise self.node_error(node, f"cannot read {short(node.value)} as {node.tag.rsplit(':', 1)[-1]}: "
                                  f"{str(e)[:200]}", "quote the value if it is meant as text") from None
        if isinstance(value, float) and not math.isfinite(value):   # .inf, .nan, 1e999: no JSON, no deadline
            raise self.node_error(node, f"{short(node.value)} is not a finite number",
                                  "write a plain number such as 30, or quote the value if it is meant as text")
        if isinstance(value, int) and value.bit_length() > 63:   # 0xfff...: even repr() of it can fail
            raise self.node_error(node, f"{short(node.value)} is too large a number",
                                  "scenario numbers are small (counts, MiB, seconds); quote it if it is meant as text")
        return value


def value_at(data: Any, path: tuple | None, default: Any = None) -> Any:
    """The plain data at a path (as YamlTree.mark takes it); `default` for no path."""
    if path is None:
        return default
    for key in path:
        data = data[key]
    return data


def split_lines(text: str) -> list[str]:
    """Lines as PyYAML counts them (its marks must agree with our snippets)."""
    lines = _LINE_BREAK.split(text)
    return lines[:-1] if len(lines) > 1 and lines[-1] == "" else lines


def snippet(lines: list[str], line: int) -> str | None:
    """Three numbered lines around `line`, the offending one marked with '>'."""
    if not lines:
        return None
    numbers = [n for n in (line - 1, line, line + 1) if 1 <= n <= len(lines)] or [len(lines)]
    width = len(str(numbers[-1]))
    out = []
    for n in numbers:
        text = lines[n - 1]
        text = text if len(text) <= 160 else text[:157] + "..."
        out.append(f"  {'>' if n == line else ' '} {n:>{width}} | {text}".rstrip())
    return "\n".join(out)


def snippet_from_file(path: str, line: int) -> str | None:
    try:
        text = Path(path).read_bytes().decode("utf-8", errors="replace")
    except OSError:
        return None
    return snippet(split_lines(text), line)

