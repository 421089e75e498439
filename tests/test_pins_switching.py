"""Switching policies built without arguments behave as the default settings say."""

from __future__ import annotations

from perforate import DendriteConfig
from perforate.switching import (
    BudgetSwitching,
    FixedSwitching,
    Improvement,
    PatienceSwitching,
    resolve_switching,
)


def _public(policy) -> dict:
    return {
        k: v
        for k, v in vars(policy).items()
        if not k.startswith("_") and isinstance(v, (int, float, bool, str))
    }


def test_constructor_defaults_equal_the_default_config():
    cfg = DendriteConfig()
    imp = Improvement.from_config(cfg)
    for cls, mode in (
        (BudgetSwitching, "budget"),
        (PatienceSwitching, "patience"),
        (FixedSwitching, "fixed"),
    ):
        built = cls() if cls is FixedSwitching else cls(imp)
        configured = resolve_switching(cfg.replace(switch_mode=mode))
        assert type(configured) is cls
        assert _public(built) == _public(configured), cls.__name__
        assert _public(built)  # something was compared


def test_improvement_defaults():
    imp = Improvement()
    assert imp.maximize is True
    assert Improvement.from_config(DendriteConfig()) == Improvement(True, 1e-3, 0.0)
