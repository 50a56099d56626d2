"""irqbypass.plugin.KeywordFactory: a kind whose options are its
constructor's keywords, built from a declared table of Option."""

from __future__ import annotations

from typing import Any

import irqbypass
import irqbypass.plugin
import pytest

OPTIONS = {
    "rate": irqbypass.plugin.Option("float", 1.5, min=0.0, max=10.0),
    "count": irqbypass.plugin.Option("int", 3, min=1),
    "mode": irqbypass.plugin.Option("str", "fast", choices=("fast", "slow")),
    "loud": irqbypass.plugin.Option("bool", False),
    "path": irqbypass.plugin.Option("str"),
}


class Made(irqbypass.Producer):
    """Keeps what it was given."""

    def __init__(self, **given: Any) -> None:
        super().__init__(token=given["token"], irq=given["irq"], name=given["name"])
        self.given = given


class Sink(irqbypass.Consumer):
    def __init__(self, *, token: object, name: str | None = None, **given: Any) -> None:
        super().__init__(token=token, name=name)  # type: ignore[arg-type]
        self.given = given

    def add_producer(self, producer: irqbypass.Producer) -> None: ...
    def del_producer(self, producer: irqbypass.Producer) -> None: ...


def spec(side: str = "producer", irq: int | None = None, **options: object) -> Any:
    return irqbypass.plugin.EndpointSpec(
        name="e", kind="k", side=side, token="t", irq=irq, options=options,  # type: ignore[arg-type]
        key_path="producers[0]", file="f.toml",
    )  # fmt: skip


def test_defaults_and_given_values_become_the_keywords() -> None:
    made = irqbypass.plugin.KeywordFactory(Made, OPTIONS)(spec(rate=2, mode="slow"))
    assert made.given == {
        "token": "t", "name": "e", "irq": 0, "rate": 2.0, "count": 3, "mode": "slow",
        "loud": False, "path": None,
    }  # fmt: skip
    assert isinstance(made.given["rate"], float), "a float option is a float, as get_float"
    assert irqbypass.plugin.KeywordFactory(Made, OPTIONS)(spec(irq=7)).irq == 7


def test_a_consumer_gets_no_irq() -> None:
    sink = irqbypass.plugin.KeywordFactory(Sink, OPTIONS)(spec("consumer", loud=True))
    assert "irq" not in sink.given and sink.given["loud"] is True


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"rate": 11.0}, r"options\.rate: 11\.0 is above the maximum 10\.0"),
        ({"count": 0}, r"options\.count: 0 is below the minimum 1"),
        ({"count": 1.5}, r"options\.count: expected an integer"),
        ({"mode": "medium"}, r"options\.mode: 'medium' is not one of 'fast', 'slow'"),
        ({"loud": 1}, r"options\.loud: expected true or false"),
        ({"cuont": 2}, r"options\.cuont: unknown option 'cuont'; did you mean 'count'"),
    ],
)
def test_a_wrong_option_names_its_file_and_key(options: dict[str, object], problem: str) -> None:
    with pytest.raises(irqbypass.ConfigError, match=rf"f\.toml: producers\[0\]\.{problem}"):
        irqbypass.plugin.KeywordFactory(Made, OPTIONS)(spec(**options))


def test_options_are_read_in_the_declared_order() -> None:
    """Two wrong values: the first declared is the one told."""
    with pytest.raises(irqbypass.ConfigError, match=r"options\.rate"):
        irqbypass.plugin.KeywordFactory(Made, OPTIONS)(spec(count=0, rate=-1.0))
