import json

import pytest

from symoe_agents.errors import ProfileError
from symoe_agents.profiles import load_profiles, profile_vocabulary


def write(d, name, data):
    (d / f"{name}.json").write_text(json.dumps(data) if not isinstance(data, str) else data)


def test_loads_the_pool_in_pool_order_and_ignores_others(tmp_path):
    write(tmp_path, "b", {"model": "b", "skills": {"law": -1, "math": 2}, "validation_accuracy": 0.5})
    write(tmp_path, "a", {"model": "a", "skills": {"math": 3}})
    write(tmp_path, "z", {"model": "z", "skills": {"art": 1}})
    profiles = load_profiles(tmp_path, ["b", "a"])
    assert list(profiles) == ["b", "a"]
    assert profiles["b"].total == 1 and profiles["a"].validation_accuracy is None
    assert profile_vocabulary(profiles) == ["law", "math"]


@pytest.mark.parametrize(
    "content, fragment",
    [
        ("{not json", "not valid JSON"),
        ({"model": "a", "skills": {"x": "high"}}, "skills.x"),
        ({"model": "a", "skills": {}, "accuracy": 1}, "accuracy"),
        ({"model": "a", "skills": {}, "validation_accuracy": 1.5}, "validation_accuracy"),
    ],
)
def test_bad_profile_names_the_file(tmp_path, content, fragment):
    write(tmp_path, "a", content)
    with pytest.raises(ProfileError) as err:
        load_profiles(tmp_path, ["a"])
    assert str(tmp_path / "a.json") in str(err.value) and fragment in str(err.value)


def test_missing_profile_for_a_pool_model(tmp_path):
    write(tmp_path, "a", {"model": "a", "skills": {}})
    with pytest.raises(ProfileError, match="no profile for expert\\(s\\) b"):
        load_profiles(tmp_path, ["a", "b"])
    with pytest.raises(ProfileError, match="not found"):
        load_profiles(tmp_path / "nope", ["a"])
