"""What a plugin's distribution requires of the core, checked when it loads.

A plugin declares the core releases it works with as an ordinary dependency
(``irqbypass>=0.1,<0.2``); pip honours it at install time, but an environment
can still end up holding a plugin for another core (``pip install --no-deps``, a
core upgraded under its plugins, a copied site-packages). The host reads the
plugin's ``Requires-Dist`` and refuses a plugin whose range excludes the running
core, with a message naming both, instead of failing later in some hook.

Why not the ``packaging`` library: importing it costs tens of milliseconds on
every command. This module understands what a plugin's requirement on the core
holds in practice: the PEP 440 comparison operators (``==``, ``!=``, ``<=``,
``>=``, ``<``, ``>``, ``~=``, ``===``, and ``==X.*``/``!=X.*``) on release,
pre-, post- and dev-release versions. A requirement with an environment marker
(``; python_version < '3.11'``, ``; extra == 'x'``) is not checked: it may not
apply here. A version it cannot read is reported as unreadable, never guessed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["CoreRequirement", "core_requirement", "parse_version"]

_NAME = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*(.*)$")
_CLAUSE = re.compile(r"\s*(===|==|!=|<=|>=|~=|<|>)\s*([^\s,;]+)\s*$")
_VERSION = re.compile(
    r"v?(?:(\d+)!)?(\d+(?:\.\d+)*)"
    r"(?:[-_.]?(a|alpha|b|beta|c|rc|pre|preview)[-_.]?(\d*))?"
    r"(?:-(\d+)|[-_.]?(?:post|rev|r)[-_.]?(\d*))?"
    r"(?:[-_.]?dev[-_.]?(\d*))?"
    r"(?:\+[a-z0-9]+(?:[-_.][a-z0-9]+)*)?$",
    re.IGNORECASE,
)
_PRE = {"a": 0, "alpha": 0, "b": 1, "beta": 1, "c": 2, "rc": 2, "pre": 2, "preview": 2}

Key = tuple[object, ...]


def parse_version(text: str) -> Key:
    """A sort key for a PEP 440 version (``0.2.0rc1 < 0.2 < 0.2.post1``);
    ValueError for what is no such version."""
    match = _VERSION.match(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a PEP 440 version")
    epoch, release, pre_l, pre_n, post_a, post_b, dev = match.groups()
    numbers = [int(n) for n in release.split(".")]
    while len(numbers) > 1 and numbers[-1] == 0:
        numbers.pop()  # 0.1.0 == 0.1
    post = post_a if post_a is not None else post_b
    # dev before pre before the release before post, as PEP 440 orders them
    if pre_l is not None:
        pre: tuple[int, int] = (_PRE[pre_l.lower()], int(pre_n or 0))
    elif dev is not None and post is None:
        pre = (-1, 0)
    else:
        pre = (3, 0)
    return (
        int(epoch or 0),
        tuple(numbers),
        pre,
        -1 if post is None else int(post or 0),
        float("inf") if dev is None else int(dev or 0),
    )


def _release(text: str) -> list[int]:
    match = _VERSION.match(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a PEP 440 version")
    return [int(n) for n in match.group(2).split(".")]


def _same_release(version: str, prefix: list[int]) -> bool:
    """``version``'s release begins with ``prefix`` (``0.1`` is ``0.1.0``)."""
    release = _release(version)
    return release[: len(prefix)] + [0] * (len(prefix) - len(release)) == prefix


def _satisfies(version: str, op: str, wanted: str) -> bool:
    """Whether ``version`` meets one clause, ``op wanted`` (PEP 440)."""
    if op == "===":
        return version.strip() == wanted
    if wanted.endswith(".*") and op in ("==", "!="):
        return _same_release(version, _release(wanted[:-2])) == (op == "==")
    if op == "~=":  # ~=0.1.2 means >=0.1.2, ==0.1.*
        at_least = parse_version(version) >= parse_version(wanted)
        prefix = _release(wanted)[:-1]
        if not prefix:
            raise ValueError(f"~={wanted} needs at least two release numbers")
        return at_least and _same_release(version, prefix)
    have, want = parse_version(version), parse_version(wanted)
    return {
        "==": have == want,
        "!=": have != want,
        "<=": have <= want,
        ">=": have >= want,
        # PEP 440: <0.2 excludes 0.2's pre-releases (not 0.2 itself below 0.2.post1);
        # >0.1 excludes 0.1's post-releases (not 0.1.0.dev1 above 0.1.dev0)
        "<": have < want and not (_is_pre(have) and not _is_pre(want) and have[:2] == want[:2]),
        ">": have > want and not (have[3] != -1 and want[3] == -1 and have[:3] == want[:3]),
    }[op]


def _is_pre(key: Key) -> bool:
    """Whether a :func:`parse_version` key is a pre- or dev-release."""
    return key[2] != (3, 0) or key[4] != float("inf")


@dataclass(frozen=True)
class CoreRequirement:
    """One ``Requires-Dist`` entry naming the core, as the plugin wrote it."""

    text: str
    specifier: str

    def problem(self, version: str) -> str | None:
        """Why core ``version`` does not satisfy this requirement, or None."""
        try:
            for clause in filter(None, (c.strip() for c in self.specifier.split(","))):
                match = _CLAUSE.match(clause)
                if match is None:
                    raise ValueError(f"{clause!r} is no version clause")
                if not _satisfies(version, *match.groups()):
                    return f"it requires {self.text}, and this is irqbypass {version}"
        except ValueError as exc:
            return f"its requirement {self.text!r} cannot be read ({exc})"
        return None


def core_requirement(requires: Iterable[str] | None, core: str) -> CoreRequirement | None:
    """The unconditional requirement on distribution ``core`` among a
    distribution's ``Requires-Dist`` entries, or None."""
    for entry in requires or ():
        text, _, marker = entry.partition(";")
        match = _NAME.match(text)
        if match is None or marker.strip():
            continue
        name, _extras, specifier = match.groups()
        if re.sub(r"[-_.]+", "-", name).lower() == core:
            specifier = specifier.strip().removeprefix("(").removesuffix(")")
            return CoreRequirement(" ".join(text.split()), specifier)
    return None
