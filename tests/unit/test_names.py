import pytest

from agent_swarm.errors import InvalidName
from agent_swarm.names import validate_env_name, validate_name


@pytest.mark.parametrize("ok", ["a", "0", "fix-login", "a" * 63, "x-1-2"])
def test_valid_names(ok: str) -> None:
    assert validate_name(ok) == ok


@pytest.mark.parametrize("bad", ["", "-a", "A", "a_b", "a" * 64, "a;rm", "$(x)", "a b", "_a"])
def test_invalid_names_have_a_hint(bad: str) -> None:
    with pytest.raises(InvalidName) as ei:
        validate_name(bad, "task name")
    assert "task name" in str(ei.value)
    assert ei.value.hint and "lowercase" in ei.value.hint


@pytest.mark.parametrize("ok", ["A", "_", "GITHUB_TOKEN", "a1"])
def test_valid_env_names(ok: str) -> None:
    assert validate_env_name(ok) == ok


@pytest.mark.parametrize("bad", ["", "1A", "A-B", "A B", "A=B", "$A"])
def test_invalid_env_names(bad: str) -> None:
    with pytest.raises(InvalidName):
        validate_env_name(bad)
