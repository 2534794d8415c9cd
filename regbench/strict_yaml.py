"""YAML as regbench reads it, for suites and `--param` values: the plain scalars of the YAML 1.2
core schema, merge keys, no key given twice, and bounds on size, nesting and what aliases expand
to, so that no input is silently reinterpreted and none takes for ever to read.

PyYAML alone reads YAML 1.1, where `032` is the octal 26, `no` is false, `2e-5` is text and
`2024-01-01` a date. Here `2e-5` is a number and `yes`, `no`, `on` and `off` are text (a flag
wants true or false, and says so); `032` is refused, as YAML 1.1 and 1.2 read it differently.
"""

from __future__ import annotations

import io
import re

import yaml
from yaml.composer import Composer, ComposerError
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.nodes import MappingNode, Node, SequenceNode
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import BaseResolver
from yaml.scanner import Scanner

from regbench.errors import RegbenchError

MAX_CHARS = 1_000_000  # a suite is a page; a larger text is not one
MAX_DEPTH = 32  # collections within collections
MAX_VALUES = 10_000  # every value of the document, an alias counted as all that it stands for
_LEADING_ZERO = "tag:regbench:leading-zero-integer"


class _Resolver(BaseResolver):
    """The YAML 1.2 core schema's implicit types (yaml.org/spec/1.2.2, 10.3.2)."""


for _tag, _pattern, _first in [
    ("tag:yaml.org,2002:null", r"~|null|Null|NULL|", ["~", "n", "N", ""]),
    ("tag:yaml.org,2002:bool", r"true|True|TRUE|false|False|FALSE", list("tTfF")),
    (_LEADING_ZERO, r"[-+]?0[0-9]+", list("-+0")),
    ("tag:yaml.org,2002:int", r"[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+", list("-+0123456789")),
    ("tag:yaml.org,2002:float",
     r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?|[-+]?\.(inf|Inf|INF)|\.(nan|NaN|NAN)",
     list("-+.0123456789")),
    ("tag:yaml.org,2002:merge", r"<<", ["<"]),
]:
    _Resolver.add_implicit_resolver(_tag, re.compile(rf"^(?:{_pattern})$"), _first)


class _BoundedComposer(Composer):
    """The node graph, refused when nested deeper than MAX_DEPTH or when, its aliases expanded,
    it would hold more than MAX_VALUES values (the "billion laughs")."""

    _depth = 0

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise ComposerError(None, None, f"it nests collections deeper than {MAX_DEPTH} "
                                    "levels", self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_document(self):
        node = super().compose_document()
        _expanded_size(node, {}, set())
        return node


def _expanded_size(node: Node, sizes: dict[int, int], open_nodes: set[int]) -> int:
    """The values `node` stands for with every alias expanded, each shared node counted once per
    use but measured once."""
    if id(node) in sizes:
        return sizes[id(node)]
    if id(node) in open_nodes:
        raise ComposerError(None, None, "an alias refers to the collection that holds it",
                            node.start_mark)
    open_nodes.add(id(node))
    size = 1
    if isinstance(node, SequenceNode):
        children = node.value
    elif isinstance(node, MappingNode):
        children = [part for pair in node.value for part in pair]
    else:
        children = []
    for child in children:
        size += _expanded_size(child, sizes, open_nodes)
        if size > MAX_VALUES:
            raise ComposerError(None, None, f"its aliases expand to more than {MAX_VALUES} "
                                "values", node.start_mark)
    open_nodes.discard(id(node))
    sizes[id(node)] = size
    return size


class _StrictConstructor(SafeConstructor):
    """PyYAML's safe types, refusing a key given twice in one mapping, where PyYAML keeps the
    last silently (a regularizer listed twice with different options would lose one). A merge
    key's values are defaults that the mapping's own keys override, as YAML defines them."""

    def construct_mapping(self, node, deep=False):
        seen = []
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise ConstructorError(None, None, f"key {key!r} is given twice",
                                       key_node.start_mark)
            seen.append(key)
        return super().construct_mapping(node, deep)

    def construct_leading_zero(self, node):
        raise ConstructorError(None, None, f"{node.value} has a leading zero, which YAML 1.1 "
                               "reads as an octal number and YAML 1.2 as a decimal one: write "
                               "it without the zero, or in quotes for text", node.start_mark)


_StrictConstructor.add_constructor(_LEADING_ZERO, _StrictConstructor.construct_leading_zero)


class _Loader(Reader, Scanner, Parser, _BoundedComposer, _StrictConstructor, _Resolver):
    def __init__(self, stream):
        Reader.__init__(self, stream)
        Scanner.__init__(self)
        Parser.__init__(self)
        _BoundedComposer.__init__(self)
        _StrictConstructor.__init__(self)
        _Resolver.__init__(self)


def load(text: str, source: str):
    """The value of the YAML document `text`; a `RegbenchError` naming `source` when it is not
    one regbench reads."""
    if len(text) > MAX_CHARS:
        raise RegbenchError(f"{source} holds {len(text)} characters, more than the "
                            f"{MAX_CHARS} a suite may; is it the right file?")
    stream = io.StringIO(text)
    stream.name = source  # where PyYAML's messages say the mistake is
    try:
        return yaml.load(stream, Loader=_Loader)
    except yaml.YAMLError as err:
        raise RegbenchError(f"{source} is not valid YAML: {' '.join(str(err).split())}") from None
