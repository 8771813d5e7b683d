"""The Rollout page's form fields: empty keeps the value in force, anything else must be a
whole percentage (refused with a message, as `set_rollout` refuses, before any change)."""

from __future__ import annotations

import pytest

from twintrack.core.live_rollout import InvalidRolloutChange
from twintrack.entrypoints.console.routes.rollout import chosen_window, form_percent


def test_an_empty_percent_keeps_the_value() -> None:
    assert form_percent("the rollout percent", "  ") is None


@pytest.mark.parametrize("text", ["0", "25", " 100 "])
def test_a_whole_percentage_is_taken(text: str) -> None:
    assert form_percent("the rollout percent", text) == int(text)


@pytest.mark.parametrize("text", ["-1", "101", "2.5", "half"])
def test_anything_else_is_refused(text: str) -> None:
    with pytest.raises(InvalidRolloutChange, match="the shadow percent"):
        form_percent("the shadow percent", text)


def test_an_unknown_window_falls_back_to_the_default() -> None:
    assert chosen_window("6h") == "6h"
    assert chosen_window("1y") == "1h"
