"""TOML configuration: parsed, validated and typed before anything is opened.

Schema (see ``docs/configuration.md``)::

    [plugins]            # all optional
    load = ["irqbypass-mock"]     # allow list of distributions or plugin names
    block = ["some-plugin"]       # block list
    strict = false                # a plugin that fails to load is fatal
    [plugins.audit]               # a plugin's own table, by plugin name: handed to
    deny = ["dev1"]               # its irqbypass_configure hook

    [run]
    duration = 5.0                # seconds `irqbypass run` lasts at most

    [[producers]]                 # and [[consumers]], the same keys
    name = "dev0"                 # unique among all endpoints
    kind = "mock"                 # a kind some plugin registers
    token = "t0"                  # equal tokens pair up; one eventfd per token
    irq = 42                      # optional
    bypass = true                 # false: opened, never registered (never paired)
    optional = false              # true: skip this token's pair, with the reason,
                                  # when the kind is missing or unavailable here
    options = { rate = 100 }      # free table passed to the kind

Every error names the file, the key path and, where it can be found, the line.
Unknown keys are refused with the closest valid one.
"""

from __future__ import annotations

import bisect
import difflib
import functools
import hashlib
import operator
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from ._errors import ConfigError, IrqBypassError
from ._kinds import SIDES, Side
from ._options import show_value

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

MAX_IRQ = 2**31 - 1
MAX_DURATION = 7 * 24 * 3600.0
#: a key path: table, [index], leaf, option; a leaf may be a plugin's name, which
#: may hold a dash (plugins.vhost-user.KEY)
_KEY = re.compile(r"^(\w+)(?:\[(\d+)\])?(?:\.([\w-]+))?(?:\.([\w-]+))?")
_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")  # fullmatch: "$" would let "\n" end it
#: a configuration is a few kB; a bigger "file" (/dev/zero, a log) is refused, not read
MAX_CONFIG_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class PluginSettings:
    load: tuple[str, ...] | None = None
    block: tuple[str, ...] = ()
    strict: bool = False
    #: ``[plugins.NAME]`` tables: each plugin's own settings, by plugin name,
    #: handed to that plugin's ``irqbypass_configure`` hook
    tables: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class EndpointConfig:
    side: Side
    index: int
    name: str
    kind: str
    token: str
    irq: int | None = None
    bypass: bool = True
    optional: bool = False
    options: Mapping[str, Any] = field(default_factory=dict)
    #: every key that makes an entry changed (all but name and index), options
    #: with their TOML types, as one string: two entries are the same when
    #: their fingerprints are equal (one string comparison, taken once, here:
    #: an entry is a value, its options are read and never changed)
    fingerprint: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        text = "\0".join(map(canonical, _compared_values(self)))
        object.__setattr__(self, "fingerprint", text)

    @property
    def key_path(self) -> str:
        """Where the entry is in its file, as errors name it: ``producers[0]``."""
        return f"{self.side}s[{self.index}]"


#: the keys that make an entry changed when they differ (its place in the file does not)
COMPARED_KEYS = ("side", "kind", "token", "irq", "bypass", "optional", "options")
#: an entry's values of COMPARED_KEYS, as a tuple, in one call
_compared_values = operator.attrgetter(*COMPARED_KEYS)


def canonical(value: object) -> str:
    """A value as text that tells its TOML type: repr does, for every TOML
    scalar (``True`` is not ``1``, though Python says they are equal; ``1``
    is not ``1.0``; a string is quoted), with tables' keys sorted (their
    order is no difference) and an int too big for repr in hex."""
    kind = type(value)
    if kind is str or kind is bool or kind is float or value is None:  # most, first
        return repr(value)
    if type(value) is int:  # what TOML parses, before the costlier checks below
        return repr(value) if value.bit_length() <= 4000 else hex(value)
    if isinstance(value, (dict, Mapping)):  # dict first: no ABC check for it
        items = sorted(value.items())
        return "{" + ", ".join(f"{k!r}: {canonical(v)}" for k, v in items) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(map(canonical, value)) + "]"
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 4000:
        return hex(value)  # repr raises beyond 4300 digits
    return repr(value)


def typed_differences(old: EndpointConfig, new: EndpointConfig) -> tuple[str, ...]:
    """The keys in which two entries differ (empty: the same), in TOML types."""
    if old.fingerprint == new.fingerprint:
        return ()
    return tuple(
        key for key in COMPARED_KEYS if canonical(getattr(old, key)) != canonical(getattr(new, key))
    )


@dataclass(frozen=True)
class Config:
    """A validated configuration; ``file`` is where it came from."""

    file: str
    plugins: PluginSettings = PluginSettings()
    duration: float | None = None
    producers: tuple[EndpointConfig, ...] = ()
    consumers: tuple[EndpointConfig, ...] = ()
    text: str = field(default="", repr=False, compare=False)
    #: every entry, producers first, each side in file order
    endpoints: tuple[EndpointConfig, ...] = field(init=False, repr=False, compare=False)
    #: entry name -> entry, built once with the configuration
    by_name: Mapping[str, EndpointConfig] = field(init=False, repr=False, compare=False)
    #: the entries' digest, group by group (see :class:`EntryGroups`)
    groups: EntryGroups = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        entries = self.producers + self.consumers
        object.__setattr__(self, "endpoints", entries)
        object.__setattr__(self, "by_name", {e.name: e for e in entries})
        object.__setattr__(self, "groups", EntryGroups(entries))

    def error(self, key: str, problem: str) -> ConfigError:
        """A ConfigError about ``key`` of this file, with its line where found
        (the text's lines are indexed once, at the first error)."""
        reader = self.__dict__.get("_reader")
        if reader is None:
            reader = _Reader(self.file, self.text)
            object.__setattr__(self, "_reader", reader)
        return reader.error(key, problem)

    def token_names(self) -> list[str]:
        """Every token name, in order of first use."""
        return list(dict.fromkeys(e.token for e in self.endpoints))


#: about 8 * sqrt(N) groups of about sqrt(N) / 8 entries (10 at 20,000 entries)
GROUPS_SHIFT = 3
#: bytes of a group's digest (BLAKE2b-128)
DIGEST = 16


class EntryGroups:
    """The entries of a configuration in groups (by a hash of their name),
    each with a digest of what its entries are.

    Why: a reload compares the running configuration with a new one. Entry by
    entry that is O(N) whatever changed. Here the digests, end to end in one
    bytes object, are compared by halves (one memcmp each) down to the groups
    that differ, and in those the entries' keys (name, place in the file,
    fingerprint) by a set difference: a reload that changes one entry of
    20,000 costs about 20 comparisons of bytes and one of two sets of 10
    keys, all in C. The digest is BLAKE2b (128 bits): two groups that differ
    and digest the same is a collision of a cryptographic hash, not a thing
    that happens. The groups are made once, with the configuration (its parse
    is O(N) anyway). Two configurations compare this way when they have as
    many groups (``count``): one whose size crosses a power of 4 is compared
    entry by entry, once.
    """

    __slots__ = ("count", "digests", "members")

    def __init__(self, entries: Sequence[EndpointConfig]) -> None:
        #: a power of two near 8 * sqrt(len(entries))
        self.count = 1 << ((len(entries).bit_length() + 1) // 2 + GROUPS_SHIFT)
        mask = self.count - 1
        members: list[dict[str, str]] = [{} for _ in range(self.count)]
        for entry in entries:
            key = f"{(entry.name, entry.side, entry.index)!r}{entry.fingerprint}"
            members[hash(entry.name) & mask][key] = entry.name
        #: each group's entries: key -> name (the key says all that is compared)
        self.members = tuple(members)
        #: one digest per group, end to end (the reprs are printable: UTF-8
        #: with surrogates let through, so a hostile name cannot make it raise)
        self.digests = b"".join(
            hashlib.blake2b(
                "\n".join(group).encode("utf-8", "surrogatepass"), digest_size=DIGEST
            ).digest()
            for group in members
        )

    def differing(self, other: EntryGroups) -> list[str] | None:
        """The names of the entries that differ from ``other``'s (added,
        removed, changed or moved), or None when the two are not grouped alike
        (compare entry by entry then). The digests are compared as bytes, by
        halves: a change costs about 2 * log2(count) comparisons (in C)."""
        if other.count != self.count:
            return None
        mine, theirs = self.digests, other.digests
        names: dict[str, None] = {}
        spans = [(0, self.count)]  # groups [lo, hi) whose digests may differ
        while spans:
            lo, hi = spans.pop()
            if mine[lo * DIGEST : hi * DIGEST] == theirs[lo * DIGEST : hi * DIGEST]:
                continue
            if hi - lo > 1:
                middle = (lo + hi) // 2
                spans += [(middle, hi), (lo, middle)]
                continue
            old, new = self.members[lo], other.members[lo]
            for key in old.keys() ^ new.keys():
                names[old.get(key) or new[key]] = None
        return list(names)


def load_config(path: str | Path) -> Config:
    """Read and validate a TOML file (at most :data:`MAX_CONFIG_BYTES`; a pipe
    or ``/dev/stdin`` works too)."""
    if not isinstance(path, (str, Path)):
        raise ConfigError(f"the configuration path {show_value(path)} is not a str or a Path")
    file = str(path)
    if "\0" in file:
        raise ConfigError("the path holds a NUL byte; name the file itself", file=show_value(file))
    try:
        with open(path, "rb") as stream:
            data = stream.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read the file: {exc.strerror}", file=file) from exc
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"more than {MAX_CONFIG_BYTES // (1024 * 1024)} MiB: not a configuration file; "
            "check the path",
            file=file,
        )
    return parse_config(data, file=file)


def parse_config(data: bytes | str, *, file: str = "<string>") -> Config:
    """Parse and validate TOML text (bytes must be UTF-8)."""
    if not isinstance(file, str):
        raise ConfigError(f"file={show_value(file)} is not a str; pass the name to report")
    if isinstance(data, (bytearray, memoryview)):
        data = bytes(data)
    if not isinstance(data, (bytes, str)):
        raise ConfigError(
            f"the configuration is {type(data).__name__}, not TOML text; pass str or bytes",
            file=file,
        )
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = data[: exc.start].count(b"\n") + 1
            raise ConfigError(
                f"not UTF-8: byte 0x{data[exc.start]:02x} at offset {exc.start}; "
                "TOML files must be UTF-8",
                file=file,
                line=line,
            ) from None
    else:
        text = data
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"\(at line (\d+), column (\d+)\)", str(exc))
        where = int(match.group(1)) if match else None
        if where is None and "end of document" in str(exc):
            where = max(1, len(toml_lines(text)))
        problem = re.sub(r"\s*\((at line \d+, column \d+|at end of document)\)", "", str(exc))
        raise ConfigError(f"invalid TOML: {problem}", file=file, line=where) from None
    except RecursionError:
        raise ConfigError("invalid TOML: nested too deeply", file=file) from None
    except ValueError:  # int() refuses a literal of more than 4300 digits
        raise ConfigError(
            "invalid TOML: a number has too many digits; use a value in its key's range",
            file=file,
        ) from None
    return _Reader(file, text).config(raw)


def toml_lines(text: str) -> list[str]:
    """The text's lines as TOML counts them: ended by LF or CRLF only.
    ``str.splitlines`` also ends one at U+2028, U+2029, NEL and other
    characters a TOML comment or string may hold, which moved every line
    after them by one in an error."""
    lines = text.replace("\r\n", "\n").split("\n")
    if lines[-1] == "":  # the text's last newline ends its last line; none follows it
        lines.pop()
    return lines


_HEADER = re.compile(r"\s*(\[\[?)([^\[\]]*)\]")
_SPACE = re.compile(r"\s+")


class _Lines:
    """The text's lines with its table headers indexed once: finding an
    error's line is then a lookup and a scan of its own table, so a file with
    thousands of errors is reported in linear time (it rescanned the whole
    file per error: 3,500 unknown tables took 18 s). The index is built with
    the first error: a valid file never needs it (it was 1.5 us an entry of
    every parse)."""

    def __init__(self, text: str) -> None:
        self.lines = toml_lines(text)

    @property
    def starts(self) -> list[int]:
        """Every line that starts with "[" (a header, or an array's line)."""
        return self._index[0]

    @property
    def headers(self) -> dict[tuple[str, str], list[int]]:
        """("[" or "[[", dotted name without spaces) -> its header lines, in order."""
        return self._index[1]

    @functools.cached_property
    def _index(self) -> tuple[list[int], dict[tuple[str, str], list[int]]]:
        starts: list[int] = []
        headers: dict[tuple[str, str], list[int]] = {}
        for i, line in enumerate(self.lines):
            if not line.lstrip().startswith("["):
                continue
            starts.append(i)
            match = _HEADER.match(line)
            if match:
                key = (match[1], _SPACE.sub("", match[2]))
                headers.setdefault(key, []).append(i)
        return starts, headers

    def next_start(self, after: int) -> int:
        """The first line after ``after`` that starts with "[" (or the end)."""
        at = bisect.bisect_right(self.starts, after)
        return self.starts[at] if at < len(self.starts) else len(self.lines)

    def find(self, start: int, end: int, pattern: str, search: bool = False) -> int | None:
        """The first line from ``start`` to ``end`` that ``pattern`` matches
        (or, with ``search``, holds), a comment line never (an old value kept
        there is not the key's)."""
        compiled = re.compile(pattern)
        test = compiled.search if search else compiled.match
        for i in range(start, end):
            if test(self.lines[i]) and not self.lines[i].lstrip().startswith("#"):
                return i + 1
        return None


class _Range(NamedTuple):
    low: float
    high: float
    #: whether ``low`` itself is in (otherwise only what is above it)
    low_included: bool

    def holds(self, value: float) -> bool:
        """Whether ``value`` is in the range (NaN never is)."""
        above = value >= self.low if self.low_included else value > self.low
        return above and value <= self.high


class _Field(NamedTuple):
    rule: _Rule
    #: the value when the key is absent
    default: object = None


@dataclass(frozen=True, slots=True)
class _Rule:
    """What one value of the file must be: its TOML types, then its form or
    range; a table's keys. Rules are data (the schema below) and
    :meth:`_Reader.read` is the one place that applies them."""

    #: what the value should be, as "expected ..., got ..." says it
    expected: str
    types: tuple[type, ...]
    #: the type every item of an array must have
    items: type | None = None
    #: what a string must match, whole
    pattern: re.Pattern[str] | None = None
    #: the range a number must be in
    within: _Range | None = None
    #: the problem of a value of the right type out of form or range
    #: (``{value}``: the value as :func:`show_value` shows it)
    invalid: str = ""
    convert: Callable[[Any], Any] | None = None
    #: a table's keys, in the order they are checked
    fields: Mapping[str, _Field] | None = None
    #: the keys a table must have
    required: frozenset[str] = frozenset()
    #: where a table's unknown keys that hold tables are kept (a plugin's own
    #: settings); without it every unknown key is refused
    others: str = ""


# -- the schema: every key of the file, its type and its rule -----------------

_ANY = _Rule("anything", (object,))
_TABLE = _Rule("a table", (dict,))
_BOOLEAN = _Rule("true or false", (bool,))
_NAMES = _Rule("a list of strings", (list,), items=str, convert=tuple)
_IDENTIFIER = _Rule(
    "a string",
    (str,),
    pattern=_NAME,
    invalid="{value} is not a valid name: use 1 to 64 letters, digits, '_', '-' or '.'",
)
_IRQ = _Rule(
    f"an integer from 0 to {MAX_IRQ}",
    (int,),
    within=_Range(0, MAX_IRQ, low_included=True),
    # out of range says what a wrong type says ("int" is what _describe calls an int)
    invalid=f"expected an integer from 0 to {MAX_IRQ}, got int {{value}}",
)
_SECONDS = _Rule(
    "seconds",
    (int, float),
    within=_Range(0, MAX_DURATION, low_included=False),
    invalid=f"{{value}} is out of range (0, {MAX_DURATION:.0f}] seconds",
    convert=float,
)
_PLUGINS = _Rule(
    "a table",
    (dict,),
    fields={
        "load": _Field(_NAMES),
        "block": _Field(_NAMES, ()),
        "strict": _Field(_BOOLEAN, False),
    },
    others="tables",
)
_RUN = _Rule("a table", (dict,), fields={"duration": _Field(_SECONDS)})
_ENDPOINT = _Rule(
    "a table",
    (dict,),
    fields={
        "name": _Field(_IDENTIFIER),
        "kind": _Field(_IDENTIFIER),
        "token": _Field(_IDENTIFIER),
        "irq": _Field(_IRQ),
        "bypass": _Field(_BOOLEAN, True),
        "optional": _Field(_BOOLEAN, False),
        "options": _Field(_TABLE, {}),
    },
    required=frozenset(("name", "kind", "token")),
)
#: the file's sections; "" is the file itself, whose own keys are the
#: sections (each section is read on its own: its problem is reported with the
#: others'); then the arrays of entries, each entry read on its own too
_SECTIONS: dict[str, _Field] = {
    "": _Field(
        _Rule(
            "a table",
            (dict,),
            fields=dict.fromkeys(("plugins", "run", "producers", "consumers"), _Field(_ANY)),
        )
    ),
    "plugins": _Field(_PLUGINS, {}),
    "run": _Field(_RUN, {}),
}
_ENTRIES: dict[Side, _Rule] = {
    side: _Rule(f"an array of tables ([[{side}s]])", (list,)) for side in SIDES
}


@dataclass(slots=True)
class _Reader:
    """Reads a parsed file against the schema; its errors name the file, the
    key and, where found, the line."""

    file: str
    text: str
    #: the text's lines, indexed at the first error (a valid file never needs it)
    lines: _Lines | None = None

    def config(self, raw: dict[str, Any]) -> Config:
        """The validated Config. Every problem of the file is reported at
        once: its unknown keys, each section's first problem, each entry's,
        and the entries that clash."""
        found: list[IrqBypassError] = []
        sections: dict[str, Any] = {}
        for key, (rule, default) in _SECTIONS.items():
            try:
                sections[key] = self.read(raw.get(key, default) if key else raw, rule, key)
            except ConfigError as exc:
                found.extend(exc.errors)
        entries: dict[Side, list[EndpointConfig]] = {side: [] for side in SIDES}
        for side, rule in _ENTRIES.items():
            key = f"{side}s"
            try:
                tables = self.read(raw.get(key, []), rule, key)
            except ConfigError as exc:
                found.extend(exc.errors)
                continue
            for index, table in enumerate(tables):
                try:
                    values = self.read(table, _ENDPOINT, f"{key}[{index}]")
                except ConfigError as exc:
                    found.extend(exc.errors)
                    continue
                entries[side].append(EndpointConfig(side=side, index=index, **values))
        found += self.clashes(entries["producer"] + entries["consumer"])
        if found:
            raise in_file_order(found)
        return Config(
            file=self.file,
            plugins=PluginSettings(**sections["plugins"]),
            duration=sections["run"]["duration"],
            producers=tuple(entries["producer"]),
            consumers=tuple(entries["consumer"]),
            text="\n".join(toml_lines(self.text)),
        )

    def read(self, value: Any, rule: _Rule, key: str, name: str = "") -> Any:
        """``value``, the value of ``key`` (or of its key ``name``: the path is
        made only when needed), checked against ``rule`` and converted; a
        table's keys are read in the schema's order, and its first problem is
        raised (its unknown keys all at once)."""
        kind = type(value)  # True is an int too: a bool fits only a rule that names bool
        if (kind not in rule.types and (kind is bool or not isinstance(value, rule.types))) or (
            rule.items is not None and not all(isinstance(item, rule.items) for item in value)
        ):
            problem = f"expected {rule.expected}, got {_describe(value)}"
            raise self.error(f"{key}.{name}" if name else key, problem)
        if (rule.pattern is not None and not rule.pattern.fullmatch(value)) or (
            rule.within is not None and not rule.within.holds(value)
        ):
            problem = rule.invalid.format(value=show_value(value))
            raise self.error(f"{key}.{name}" if name else key, problem)
        fields = rule.fields
        if fields is None:
            return value if rule.convert is None else rule.convert(value)
        if name:
            key = f"{key}.{name}"
        others = {}  # a plugin's own tables, where the rule keeps them
        if not value.keys() <= fields.keys():  # some key the schema does not name
            if rule.others:
                others = {k: v for k, v in value.items() if isinstance(v, dict) and k not in fields}
            problems = []
            for unknown in (k for k in value if k not in fields and k not in others):
                close = difflib.get_close_matches(unknown, fields, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                problems.append(
                    self.error(
                        f"{key}.{unknown}" if key else unknown,
                        f"unknown key {unknown!r}{hint} (valid keys: {', '.join(fields)})",
                    )
                )
            if problems:
                raise in_file_order(problems)
        if not rule.required <= value.keys():
            missing = next(name for name in fields if name in rule.required and name not in value)
            raise self.error(key, f"missing required key {missing!r}")
        read: dict[str, Any] = {rule.others: others} if rule.others else {}
        for name, (rule_, default) in fields.items():
            if name in value:
                read[name] = self.read(value[name], rule_, key, name)
            else:  # a default table is a new one: no two entries share it
                read[name] = default.copy() if isinstance(default, dict) else default
        return read

    def error(self, key: str, problem: str, line: int | None = None) -> ConfigError:
        return ConfigError(problem, file=self.file, key=key, line=line or self.find_line(key))

    def find_line(self, key: str) -> int | None:
        """Best effort: the line of ``key`` (``producers[1].irq``) in the text."""
        match = _KEY.match(key)
        if not match:
            return None
        table, index, leaf, option = match.groups()
        if self.lines is None:
            self.lines = _Lines(self.text)
        lines = self.lines
        if index is not None:
            entries = lines.headers.get(("[[", table), [])
            if int(index) >= len(entries):
                return None
            start = entries[int(index)]
            if leaf is None:
                return start + 1
            entry_end = entries[int(index) + 1] if int(index) + 1 < len(entries) else None
            end = entry_end or len(lines.lines)
            if option is not None:  # options.rate: inline or in a [producers.options] table
                pattern = rf"(^|[{{,\s]){re.escape(option)}\s*="
                found = lines.find(start, end, pattern, search=True)
                if found is not None:
                    return found
            found = lines.find(start, lines.next_start(start), rf"\s*{re.escape(leaf)}\s*=")
            if found is None:  # a sub-table of the entry: [producers.LEAF]
                subs = lines.headers.get(("[", f"{table}.{leaf}"), [])  # in file order
                at = bisect.bisect_right(subs, start)
                found = subs[at] + 1 if at < len(subs) and subs[at] < end else None
            return found or start + 1
        if leaf is not None:  # plugins.audit.deny, or plugins.audit: in [plugins.audit]
            sub = lines.headers.get(("[", f"{table}.{leaf}"))
            if sub and option is None:
                return sub[0] + 1
            if sub:
                end = lines.next_start(sub[0])
                found = lines.find(sub[0] + 1, end, rf"\s*{re.escape(option)}\s*=")
                return found or sub[0] + 1
        headers = lines.headers.get(("[", table))
        if not headers and leaf is None:  # a key of the file itself: a [[header]], or a key
            arrays = lines.headers.get(("[[", table))  # written above every table
            if arrays:
                return arrays[0] + 1
        if not headers:  # a key above every table: run = {...}, run.duration = ...
            first = lines.starts[0] if lines.starts else len(lines.lines)
            dotted = "" if leaf is None else rf"(\s*\.\s*{re.escape(leaf)})?"
            return lines.find(0, first, rf"\s*{re.escape(table)}{dotted}\s*=")
        if leaf is None:
            return headers[0] + 1
        return lines.find(headers[0], lines.next_start(headers[0]), rf"\s*{re.escape(leaf)}\s*=")

    def clashes(self, endpoints: list[EndpointConfig]) -> list[IrqBypassError]:
        """Two entries of one name, two of one side on one token."""
        names: dict[str, EndpointConfig] = {}
        tokens: dict[tuple[str, str], EndpointConfig] = {}
        problems: list[IrqBypassError] = []
        for e in endpoints:
            if e.name in names:
                first = names[e.name]
                problems.append(
                    self.error(
                        f"{e.key_path}.name",
                        f"duplicate name {e.name!r}: {first.key_path} already uses it; "
                        "names must be unique",
                    )
                )
            names.setdefault(e.name, e)
            held = tokens.get((e.side, e.token))
            if held is not None:
                problems.append(
                    self.error(
                        f"{e.key_path}.token",
                        f"token {e.token!r} is already used by {e.side} {held.name!r} "
                        f"({held.key_path}); one {e.side} per token",
                    )
                )
            tokens.setdefault((e.side, e.token), e)
        return problems


def in_file_order(errors: Sequence[IrqBypassError]) -> IrqBypassError:
    """One error for ``errors``, sorted by line (those without one last, in
    the order found): see :meth:`ConfigError.combine`."""
    flat = [e for error in errors for e in getattr(error, "errors", (error,))]
    ordered = sorted(
        enumerate(flat),
        key=lambda pair: (getattr(pair[1], "line", None) or sys.maxsize, pair[0]),
    )
    return ConfigError.combine([e for _, e in ordered])


def _describe(value: object) -> str:
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return f"{type(value).__name__} {show_value(value)}"
