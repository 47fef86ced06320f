"""Every field of the world's and the imitator's configs has a range, checked the moment a
config is made, so a bad value is one line before anything is built or trained."""

from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from klbudget.config import ConfigError, replace_typed
from klbudget.world import ImitatorConfig, WorldConfig
from klbudget.world.config import WORLD_RULES
from klbudget.world.imitator import IMITATOR_RULES

CONFIGS = [(WorldConfig, WORLD_RULES, "world"), (ImitatorConfig, IMITATOR_RULES, "imitator")]


@pytest.mark.parametrize(("cls", "rules", "what"), CONFIGS, ids=["world", "imitator"])
def test_every_field_has_a_rule(cls, rules, what):
    fields = {f.name for f in dataclasses.fields(cls) if f.type not in ("bool", bool)}
    assert fields == set(rules), fields ^ set(rules)


@pytest.mark.parametrize(("cls", "rules", "what"), CONFIGS, ids=["world", "imitator"])
def test_values_past_each_bound_are_refused_by_name(cls, rules, what):
    for name, rule in rules.items():
        if rule.lo is None and rule.hi is None:
            continue
        typ = type(getattr(cls(), name))
        bad = [math.nan] if typ is float else []
        if rule.lo is not None:
            bad.append(typ(rule.lo) - (0 if rule.lo_open else 1))
        if rule.hi is not None:
            bad.append(typ(rule.hi) + (0 if rule.hi_open else 1))
        for value in bad:
            with pytest.raises(ConfigError, match=f"{what}.{name} = "):
                replace_typed(cls(), {name: value}, what)


def test_relations_between_fields():
    with pytest.raises(ConfigError, match="multiple of n_head"):
        replace_typed(ImitatorConfig(), {"n_embd": 30, "n_head": 4}, "imitator")
    with pytest.raises(ConfigError, match="must exceed block_size"):
        replace_typed(ImitatorConfig(), {"max_position": 256}, "imitator")
    with pytest.raises(ConfigError, match="teacher_min_words"):
        replace_typed(WorldConfig(), {"teacher_min_words": 9, "teacher_max_words": 4}, "world")


numbers = st.one_of(
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True, allow_infinity=True),
)


@given(data=st.data())
def test_any_drawn_value_is_accepted_within_its_rule_or_refused_in_one_line(data):
    cls, rules, what = data.draw(st.sampled_from(CONFIGS))
    name = data.draw(st.sampled_from(sorted(n for n, r in rules.items() if r.lo is not None)))
    value = data.draw(numbers)
    typ = type(getattr(cls(), name))
    if typ is int and isinstance(value, float):
        if not math.isfinite(value) or value != int(value):
            with pytest.raises(ConfigError):
                replace_typed(cls(), {name: value}, what)
            return
        value = int(value)
    try:
        made = replace_typed(cls(), {name: typ(value)}, what)
    except ConfigError as err:
        assert "\n" not in str(err)
        return
    assert rules[name].check(getattr(made, name)) == ""
