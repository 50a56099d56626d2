"""Typed reading of an endpoint's free ``options`` table, for kind factories.

Every accessor checks type and range and raises :class:`~irqbypass.ConfigError`
naming the file and key; :meth:`Options.finish` refuses keys nobody read, with
the closest valid name, so a typo never passes silently. ``required=True``
makes a missing key an error (``irqbypass check`` reports it), instead of a
default the factory would have to test for ``None``.

:class:`Settings` is the base of a kind's settings: one frozen dataclass of its
options, checked once when made, which its Python constructor and its
``from_spec`` (inside :meth:`Options.refusals`) both build.
"""

from __future__ import annotations

import contextlib
import difflib
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal, overload

from ._errors import ConfigError, InvalidEndpointError, printable

#: the highest fd number (an int in C: ``os.dup`` and the ioctls refuse more)
MAX_FD = 2**31 - 1

#: what each accessor takes (a bool is never taken for a number) and how an
#: error names it: the one table :meth:`Options._value` checks a value against
_KINDS: dict[str, tuple[Any, str]] = {
    "int": ((int,), "an integer"),
    "float": ((int, float), "a number"),
    "bool": ((bool,), "true or false"),
    "str": ((str,), "a string"),
}


class Options:
    """A reader over one ``options`` table; call :meth:`finish` when done."""

    def __init__(
        self, values: Mapping[str, Any], *, where: str = "options", file: str | None = None
    ) -> None:
        self._values = dict(values)
        self._where = where
        self._file = file
        self._read: set[str] = set()

    def error(self, key: str, problem: str) -> ConfigError:
        """A ConfigError about ``key`` of this table, naming its file and key path; raise
        it."""
        return ConfigError(problem, file=self._file, key=f"{self._where}.{key}")

    def missing(self, key: str) -> ConfigError:
        """The error for a required key that is not there."""
        return self.error(key, f"missing required option {key!r}; set it in this entry's options")

    def _value(
        self,
        key: str,
        kind: str,
        default: Any,
        required: bool,
        low: float | None = None,
        high: float | None = None,
        choices: Sequence[str] | None = None,
    ) -> Any:
        """``key``'s value checked as ``kind`` (a key of :data:`_KINDS`), in
        ``low``..``high``, one of ``choices``; ``default`` when missing, or the
        missing-key error when ``required``. Every typed accessor is this."""
        self._read.add(key)
        value = self._values.get(key)
        if value is None:
            if required:
                raise self.missing(key)
            return default
        types, expected = _KINDS[kind]
        if not isinstance(value, types) or (isinstance(value, bool) and kind != "bool"):
            raise self.error(key, f"expected {expected}, got {_describe(value)}")
        if kind == "float":
            try:
                finite = math.isfinite(value)
            except OverflowError:  # an integer beyond any float
                finite = False
            if not finite:
                raise self.error(key, f"expected a finite number, got {show_value(value)}")
        elif kind == "str":
            if "\0" in value:  # a path, a name or a word for the kernel: none holds a NUL
                raise self.error(key, f"{show_value(value)} holds a NUL byte; remove it")
            if choices is not None and value not in choices:
                allowed = ", ".join(map(repr, choices))
                raise self.error(key, f"{show_value(value)} is not one of {allowed}")
        if low is not None and value < low:
            raise self.error(key, f"{show_value(value)} is below the minimum {low}")
        if high is not None and value > high:
            raise self.error(key, f"{show_value(value)} is above the maximum {high}")
        return float(value) if kind == "float" else value  # (the messages show it as given)

    @overload
    def get_int(
        self, key: str, default: int, *, min: int | None = None, max: int | None = None
    ) -> int: ...
    @overload
    def get_int(
        self,
        key: str,
        *,
        required: Literal[True],
        min: int | None = None,
        max: int | None = None,
    ) -> int: ...
    def get_int(
        self,
        key: str,
        default: int = 0,
        *,
        required: bool = False,
        min: int | None = None,
        max: int | None = None,
    ) -> int:
        """An integer; ``required=True``: there is no default, a missing key is an error."""
        number: int = self._value(key, "int", default, required, min, max)
        return number

    @overload
    def get_float(
        self, key: str, default: float, *, min: float | None = None, max: float | None = None
    ) -> float: ...
    @overload
    def get_float(
        self,
        key: str,
        *,
        required: Literal[True],
        min: float | None = None,
        max: float | None = None,
    ) -> float: ...
    def get_float(
        self,
        key: str,
        default: float = 0.0,
        *,
        required: bool = False,
        min: float | None = None,
        max: float | None = None,
    ) -> float:
        """A number (an int is taken too); ``required`` as for :meth:`get_int`."""
        number: float = self._value(key, "float", default, required, min, max)
        return number

    @overload
    def get_bool(self, key: str, default: bool) -> bool: ...
    @overload
    def get_bool(self, key: str, *, required: Literal[True]) -> bool: ...
    def get_bool(self, key: str, default: bool = False, *, required: bool = False) -> bool:
        """true or false; ``required`` as for :meth:`get_int`."""
        flag: bool = self._value(key, "bool", default, required)
        return flag

    @overload
    def get_str(
        self, key: str, *, required: Literal[True], choices: Sequence[str] | None = None
    ) -> str: ...
    @overload
    def get_str(self, key: str, default: str, *, choices: Sequence[str] | None = None) -> str: ...
    @overload
    def get_str(
        self, key: str, default: None = None, *, choices: Sequence[str] | None = None
    ) -> str | None: ...
    def get_str(
        self,
        key: str,
        default: str | None = None,
        *,
        required: bool = False,
        choices: Sequence[str] | None = None,
    ) -> str | None:
        """A string (one of ``choices`` if given); None when missing and no
        default; ``required=True``: a missing key is an error, the type ``str``.
        A NUL byte is refused: what a string option names (a path, a device, a
        name the kernel takes) cannot hold one, and ``run`` could not use it."""
        text: str | None = self._value(key, "str", default, required, choices=choices)
        return text

    def get_fd(self, key: str) -> int | None:
        """An fd number this process inherited (0 to :data:`MAX_FD`: what
        ``os.dup`` and an ioctl take), or None when missing."""
        value = self.get_raw(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_FD:
            raise self.error(
                key, f"expected an inherited fd number from 0 to {MAX_FD}, got {show_value(value)}"
            )
        return value

    def get_raw(self, key: str) -> Any:
        """The value as TOML gave it, for kinds with their own structured options."""
        self._read.add(key)
        return self._values.get(key)

    def finish(self) -> None:
        """Refuse every key no accessor asked for."""
        unknown = sorted(set(self._values) - self._read)
        if not unknown:
            return
        key = unknown[0]
        problem = f"unknown option {key!r}"
        close = difflib.get_close_matches(key, sorted(self._read), n=1)
        if close:
            problem += f"; did you mean {close[0]!r}?"
        elif self._read:
            problem += f" (valid options: {', '.join(sorted(self._read))})"
        else:
            problem += " (this kind takes no options)"
        raise self.error(key, problem)

    @contextlib.contextmanager
    def refusals(self) -> Iterator[None]:
        """Inside, a kind refusing a value (an :class:`InvalidEndpointError`, from
        its :class:`Settings` or its constructor) becomes this table's
        ConfigError: about the option the refusal names, in the words it has for
        a configuration file, else about the whole table."""
        try:
            yield
        except _Refusal as exc:
            if exc.option is None:
                raise ConfigError(exc.message, file=self._file, key=self._where) from exc
            raise self.error(exc.option, exc.in_config or exc.message) from exc
        except InvalidEndpointError as exc:
            raise ConfigError(exc.message, file=self._file, key=self._where) from exc


class _Refusal(InvalidEndpointError):
    """A refused setting that knows its option, and what to tell a file about it."""

    def __init__(
        self,
        message: str,
        *,
        option: str | None,
        in_config: str | None,
        errno: int | None = None,
    ) -> None:
        super().__init__(message, errno=errno)
        self.option = option
        self.in_config = in_config


class Settings:
    """The base of a kind's settings: a frozen dataclass of its options,
    checked once, when made (``__post_init__`` calls :meth:`check`).

    The Python constructor makes it inside :meth:`naming` (a refusal then says
    whose it is); ``from_spec`` reads the options table with :class:`Options`
    and makes the endpoint inside :meth:`Options.refusals`, so one check serves
    both and a file's error names the option."""

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Raise :meth:`refuse` for a value that cannot work (the kind says which)."""

    @staticmethod
    def refuse(
        problem: str,
        *,
        option: str | None = None,
        in_config: str | None = None,
        errno: int | None = None,
    ) -> InvalidEndpointError:
        """The error to raise: ``problem`` says what is wrong and what to do;
        ``option`` is the key of the options table it is about, and
        ``in_config`` what to tell a configuration file instead (its words);
        ``errno`` where the kernel has one (else EINVAL)."""
        return _Refusal(problem, option=option, in_config=in_config, errno=errno)

    @staticmethod
    @contextlib.contextmanager
    def naming(what: str) -> Iterator[None]:
        """Inside, a refusal says whose it is: ``what: problem``."""
        try:
            yield
        except _Refusal as exc:
            raise _Refusal(
                f"{what}: {exc.message}",
                option=exc.option,
                in_config=exc.in_config,
                errno=exc.errno,
            ) from None
        except InvalidEndpointError as exc:
            raise _Refusal(
                f"{what}: {exc.message}", option=None, in_config=None, errno=exc.errno
            ) from None


def show_value(value: object, limit: int = 80) -> str:
    """``repr(value)`` fit for an error message: an integer too long to print
    (str() refuses more than 4300 digits) is described by its size, a value whose
    repr() raises by its type, and a long value is shortened, so a hostile file
    or object cannot make the message fail or huge."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 256:
        sign = "-" if value < 0 else ""
        return f"{sign}<an integer of {value.bit_length()} bits>"
    try:
        text = repr(value)
    except Exception:  # a hostile object: its repr must not hide the real error
        text = f"<{type(value).__name__} object whose repr() fails>"
    if not isinstance(text, str):  # a __repr__ returning something else raised already
        text = f"<{type(value).__name__}>"
    if not text.isprintable():  # repr() of a str escapes; another object's may not
        text = printable(text)
    return text if len(text) <= limit else f"{text[: limit - 20]}...{text[-12:]}"


def show_error(exc: BaseException, limit: int = 2000) -> str:
    """``str(exc)`` fit for an error message: an exception whose ``str()``
    raises is described by its type, and a huge message is shortened, so a
    plugin's exception can never make the report about it fail."""
    try:
        text = str(exc)
    except Exception:  # an exception that cannot be printed is still reported
        text = f"<{type(exc).__name__} whose str() fails>"
    text = printable(text)
    return text if len(text) <= limit else f"{text[: limit - 40]}... ({len(text)} characters)"


def show_exception(exc: BaseException) -> str:
    """``Type: message``, as :func:`show_error` makes the message."""
    return f"{type(exc).__name__}: {show_error(exc)}"


def _describe(value: object) -> str:
    return f"{type(value).__name__} {show_value(value)}"
