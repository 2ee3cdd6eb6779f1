"""Raw XML in a scenario (domain.xml, a device's xml), checked offline when the file is loaded.

Why a module of its own: raw XML is a language inside the YAML. Its placeholders must name what the
scenario defines, it must parse as the run will parse it, and it may reach nothing on the host but
the run's leased PCI devices, its own networks and the `host:` names the scenario declares; each
problem points at the line and column inside the YAML string.
"""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from typing import Any
from xml.parsers import expat

from harness.engine import xmlbuild
from harness.errors import HarnessError
from harness.scenario.wording import did_you_mean
from harness.scenario.yaml_tree import ScenarioError, YamlTree

_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([^{}]*)\}")
_PLACEHOLDER_KEY = re.compile(r"([a-z][a-z0-9_]*)\.([a-z]+)")
_DEVICE_ATTRS = ("address", "pci", "ifname")


class RawXmlCheck:
    """What raw XML in one scenario may name: its host devices, networks, device ids and `host:` names."""

    def __init__(self, tree: YamlTree, devices: dict, networks: dict, ids: dict, host: dict):
        self.tree = tree
        self.host = host
        self.known: dict[str, set[str]] = {"guest": {"kernel", "initrd"}}   # placeholder name -> attributes
        for sym in devices:
            self.known.setdefault(sym, set()).update(_DEVICE_ATTRS)
        for sym in networks:
            self.known.setdefault(sym, set()).add("name")
        for dev_id in ids:
            self.known.setdefault(dev_id, set()).add("mac")
        self.stand_ins = xmlbuild.Resolved(   # for what the run will lease and create
            addrs={sym: xmlbuild.PciAddr(0xffff, 0xff, i // 8 % 32, i % 8) for i, sym in enumerate(devices)},
            ifnames={sym: f"hx-lint-{sym}" for sym in devices},
            networks={sym: f"hx-lint-{sym}" for sym in networks},
            macs={dev_id: "52:54:00:00:00:00" for dev_id in ids})

    def problems(self, text: str, path: tuple) -> list[ScenarioError]:
        """Placeholders, then (if they are fine) the XML itself, offline: it must parse, and reach nothing
        on the host but the run's leased PCI devices, its own networks and the `host:` names it declares."""
        found = self.placeholder_problems(text, path)
        if found:
            return found
        problem = self.xml_problem(text, path)
        return [problem] if problem else []

    def placeholder_problems(self, text: str, path: tuple) -> list[ScenarioError]:
        found = []
        for match in _PLACEHOLDER.finditer(text):
            inner = match.group(1)
            if inner is None:
                continue   # {{ or }}
            key = _PLACEHOLDER_KEY.fullmatch(inner)
            where = self.tree.text_mark(path, text, match.start())
            if not key:
                found.append(self.tree.error(
                    where.line, where.column, f"'{match.group(0)}' in raw XML is not a placeholder",
                    "placeholders look like {vf1.address}, {lan.name}, {n1.mac}; write {{ and }} for literal braces"))
                continue
            sym, attr = key.groups()
            if sym not in self.known:
                found.append(self.tree.error(
                    where.line, where.column, f"unknown name '{sym}' in placeholder {match.group(0)}",
                    did_you_mean(sym, list(self.known)) + f"known: {', '.join(sorted(self.known))} "
                    "(host devices, networks, device ids, guest)"))
            elif attr not in self.known[sym]:
                found.append(self.tree.error(
                    where.line, where.column, f"'{sym}' has no '{attr}' (placeholder {match.group(0)})",
                    did_you_mean(attr, sorted(self.known[sym]))
                    + f"{sym} offers: {', '.join(sorted(self.known[sym]))}"))
        return found

    def xml_problem(self, text: str, path: tuple) -> ScenarioError | None:
        """The first problem of the XML with its placeholders filled by stand-ins, if any."""
        filled = xmlbuild.fill(text, self.stand_ins)
        try:
            root, where = _parse_xml(filled)
        except _XMLRefused as e:
            return self.error(path, text, e.line, e.column, f"raw XML: {e.message}",
                              "remove the DOCTYPE: libvirt XML needs no entities")
        except expat.ExpatError as e:
            return self.error(path, text, e.lineno, e.offset + 1,
                              f"raw XML does not parse: {expat.ErrorString(e.code)}",
                              "paste well-formed libvirt XML (one element, quoted attributes, closed tags; declare "
                              "xmlns: prefixes)")
        try:      # and as the run will parse it (ElementTree refuses some things expat takes, e.g. '}' in a URI)
            ET.fromstring(filled)
        except ET.ParseError as e:
            line, column = e.position
            return self.error(path, text, line, column + 1, f"raw XML does not parse: {e}",
                              "paste well-formed libvirt XML; namespace URIs hold no braces")
        for element in root.iter():
            if element.tag == "hostdev" or (element.tag == "interface" and element.get("type") == "hostdev"):
                try:
                    xmlbuild.only_leased_pci(element, self.stand_ins, "raw XML")
                except HarnessError as e:
                    at = next((a for a in element.iter("address") if id(a) in where), element)
                    return self.error(path, text, *where[id(at)], f"raw XML: <{element.tag}> passes through a host "
                                      "PCI device by a literal address (or one that is not an address), not a device "
                                      "leased for the run", e.hint or "")
        allowed = {"networks": set(self.stand_ins.networks.values()) | set(self.host.get("networks", [])),
                   "bridges": set(self.host.get("bridges", [])),
                   "nics": set(self.stand_ins.ifnames.values()) | set(self.host.get("nics", [])),
                   "files": {xmlbuild.GUEST_KERNEL, xmlbuild.GUEST_INITRD}}
        found = xmlbuild.host_resources(root, allowed)
        if (path[-2] == "domain") != (root.tag == "domain"):
            found.insert(0, (root, f"<{root.tag}> is not a {'domain' if path[-2] == 'domain' else 'device'}",
                             "domain.xml is one <domain> element; a device's xml is one device element"))
        if not found:
            return None
        element, message, hint = found[0]
        line, column = where[id(element)]
        return self.error(path, text, line, column, f"raw XML: {message}", hint)

    def error(self, path: tuple, text: str, line: int, column: int, message: str, hint: str) -> ScenarioError:
        """An error at (line, column) of raw XML: placeholders keep lines, so the line is exact."""
        lines = text.rstrip("\n").split("\n")   # an error "at the end" is on the last line written
        line = min(max(line, 1), len(lines))
        offset = sum(len(ln) + 1 for ln in lines[:line - 1]) + min(column - 1, len(lines[line - 1]))
        mark = self.tree.text_mark(path, text, offset)
        return self.tree.error(mark.line, mark.column, message, hint)


class _XMLRefused(Exception):
    def __init__(self, message: str, line: int, column: int):
        super().__init__(message)
        self.message, self.line, self.column = message, line, column


def _parse_xml(text: str) -> tuple[ET.Element, dict[int, tuple[int, int]]]:
    """ElementTree's tree (names as "{uri}local", like ET.fromstring) plus each element's line and column.

    Raises expat.ExpatError where the text is not well-formed, _XMLRefused for a DOCTYPE (entities).
    """
    builder = ET.TreeBuilder()
    where: dict[int, tuple[int, int]] = {}
    parser = expat.ParserCreate(namespace_separator=" ")

    def name(n: str) -> str:
        return "{%s}%s" % tuple(n.split(" ", 1)) if " " in n else n

    def start(tag: str, attrs: dict[str, str]) -> None:
        element = builder.start(name(tag), {name(k): v for k, v in attrs.items()})
        where[id(element)] = (parser.CurrentLineNumber, parser.CurrentColumnNumber + 1)

    def doctype(*_: Any) -> None:
        raise _XMLRefused("a <!DOCTYPE> (with entity definitions) is not allowed", parser.CurrentLineNumber,
                          parser.CurrentColumnNumber + 1)

    parser.StartElementHandler = start
    parser.EndElementHandler = lambda tag: builder.end(name(tag))
    parser.CharacterDataHandler = builder.data
    parser.StartDoctypeDeclHandler = doctype
    parser.buffer_text = True
    parser.Parse(text, True)
    return builder.close(), where
