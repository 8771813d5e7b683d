"""The browser tests' fixture: no Chromium skips them on a laptop and fails them in CI."""

from __future__ import annotations

import shutil

import pytest

from tests.e2e.console.conftest import required_chromium


@pytest.fixture
def no_chromium(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)


@pytest.mark.usefixtures("no_chromium")
@pytest.mark.parametrize("ci", ["true", "TRUE", "1"])
def test_in_ci_a_missing_browser_fails(monkeypatch: pytest.MonkeyPatch, ci: str) -> None:
    monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        required_chromium()


@pytest.mark.usefixtures("no_chromium")
@pytest.mark.parametrize("ci", [None, "", "false"])
def test_elsewhere_a_missing_browser_skips(monkeypatch: pytest.MonkeyPatch, ci: str | None) -> None:
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.skip.Exception, match="no chromium on PATH"):
        required_chromium()


def test_a_browser_on_path_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    assert required_chromium() == "/usr/bin/chromium"
