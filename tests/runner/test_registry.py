"""``--impl`` resolution: built-ins, module:attr (instance, class, factory), clear errors."""

from __future__ import annotations

import pytest

from harness.implementations.registry import ImplError, resolve, resolve_one

from .fakes import FakeImpl


class NotAnImpl:
    name = "x"


def make_fake() -> FakeImpl:
    return FakeImpl(name="factory-made")


def needs_args(x: int) -> FakeImpl:
    return FakeImpl()


def test_module_attr_instance_class_and_factory() -> None:
    assert resolve_one("runner.fakes:FAKE").name == "fake"
    assert isinstance(resolve_one("runner.fakes:FakeImpl"), FakeImpl)
    made = resolve_one("runner.test_registry:make_fake")
    assert made.name == "factory-made"


def test_builtins_are_instances_not_classes() -> None:
    ref = resolve_one("reference")
    assert ref.name == "reference" and not isinstance(ref, type)


def test_comma_separated_selection_keeps_order() -> None:
    sel = resolve("reference, runner.fakes:FAKE")
    assert sel.names == ("reference", "fake")


def test_default_selection_is_every_available_builtin() -> None:
    sel = resolve(None)
    assert set(sel.names) <= {"kernel", "reference"} and "reference" in sel.names
    assert all(name in ("kernel", "reference") for name, _ in sel.missing)


def test_default_without_builtins_is_an_error() -> None:
    def nothing(name: str) -> FakeImpl:
        raise ImplError(f"--impl {name}: not here")

    with pytest.raises(ImplError, match="no implementation is available here"):
        resolve(None, loader=nothing)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nope", "--impl 'nope': unknown implementation; use one of kernel, reference"),
        ("no_such_mod_h7x:X", "cannot import module no_such_mod_h7x"),
        (
            "runner.fakes:Missing",
            "module runner.fakes has no attribute Missing",
        ),
        ("runner.test_registry:NotAnImpl", "is not an Implementation"),
        ("runner.test_registry:needs_args", "with no arguments failed"),
        (":x", "expected kernel, reference or module:attr"),
        (" , ", "--impl is empty"),
        ("reference,reference", "already selected"),
    ],
)
def test_bad_names_give_one_clear_line(spec: str, message: str) -> None:
    with pytest.raises(ImplError) as err:
        resolve(spec)
    text = str(err.value)
    assert message in text and "\n" not in text
