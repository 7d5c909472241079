"""Config flattening and secret scrubbing for MLflow params."""

from alignx.tracking.params import MASK, config_params, flatten, is_secret_key


def test_flatten_nested():
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": [{"e": 3}]}) == {"a.b": 1, "a.c": [1, 2], "d.0.e": 3}


def test_secret_looking_keys_are_scrubbed():
    params = config_params(
        {
            "tracking": {"hf_token": "hf_abc", "password": "pw", "aws_secret_access_key": "s", "apiKey": "k"},
            "eval": {"max_new_tokens": 32},
            "model": {"name": "tiny", "token": None},
        }
    )
    assert params["tracking.hf_token"] == MASK
    assert params["tracking.password"] == MASK
    assert params["tracking.aws_secret_access_key"] == MASK
    assert params["tracking.apiKey"] == MASK
    assert "hf_abc" not in str(params)
    # counts of tokens are not secrets
    assert params["eval.max_new_tokens"] == "32"
    assert params["model.name"] == "tiny"
    assert params["model.token"] == "None"  # nothing to hide


def test_is_secret_key():
    assert is_secret_key("a.b.secret")
    assert is_secret_key("KEY")
    assert not is_secret_key("keyboard.layout")
    assert not is_secret_key("data.max_tokens")
