"""The config loader: profiles load, overrides apply, and every error names key and file."""
import argparse
from pathlib import Path

import pytest

from plumbing.config import REPO_ROOT, ConfigError, add_profile_option, load_config


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "profile.yaml"
    path.write_text(text)
    return path


MINIMAL = """
data_dir: {data_dir}
lake: {{root: "${{data_dir}}/lake"}}
events: {{history_uri: /h, landing_dir: /l}}
mlflow: {{backend_store_uri: "sqlite:///x.db", artifacts_uri: /a}}
"""


@pytest.mark.parametrize("profile", ["local", "s3", str(REPO_ROOT / "conf/production.example.yaml")])
def test_every_shipped_profile_loads(profile):
    cfg = load_config(profile, environ={})
    assert cfg.lake.root


def test_data_dir_placeholder_is_substituted(tmp_path):
    cfg = load_config(_write(tmp_path, MINIMAL.format(data_dir=tmp_path)), environ={})
    assert cfg.lake.root == f"{tmp_path}/lake"


def test_env_override_sets_nested_key_with_yaml_typing():
    cfg = load_config("local", environ={"TESSERA__REDIS__PORT": "6400", "TESSERA__SPARK__UI_ENABLED": "true"})
    assert cfg.redis.port == 6400
    assert cfg.spark.ui_enabled is True


def test_unknown_key_names_key_and_file(tmp_path):
    path = _write(tmp_path, MINIMAL.format(data_dir=tmp_path) + "redis: {prot: 1}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={})
    assert "redis.prot: unknown key" in str(err.value)
    assert str(path) in str(err.value)


def test_missing_value_names_key_and_file(tmp_path):
    text = MINIMAL.format(data_dir=tmp_path).replace('lake: {root: "${data_dir}/lake"}\n', "")
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={})
    assert "lake: Field required" in str(err.value)
    assert str(path) in str(err.value)


def test_wrong_type_names_key_value_and_file(tmp_path):
    path = _write(tmp_path, MINIMAL.format(data_dir=tmp_path) + "redis: {port: not-a-port}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={})
    message = str(err.value)
    assert "redis.port" in message and "'not-a-port'" in message and str(path) in message


def test_wrong_type_from_environment_names_the_variable():
    with pytest.raises(ConfigError) as err:
        load_config("local", environ={"TESSERA__SERVING__WORKERS": "many"})
    assert "serving.workers" in str(err.value)
    assert "environment variable TESSERA__SERVING__WORKERS" in str(err.value)


def test_unknown_profile_lists_known_ones():
    with pytest.raises(ConfigError, match="unknown profile 'nope'.*local"):
        load_config("nope", environ={})


def test_broken_yaml_names_file(tmp_path):
    path = _write(tmp_path, "lake: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path, environ={})


def test_storage_options_point_at_the_local_endpoint_for_s3_profile():
    opts = load_config("s3", environ={}).storage_options()
    assert opts["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9010"
    assert opts["AWS_ALLOW_HTTP"] == "true"


def test_s3_keys_fall_back_only_with_the_profiles_own_endpoint(monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    local_endpoint = load_config("s3", environ={})
    assert local_endpoint.s3_keys() == ("testing", "testing")
    assert local_endpoint.storage_options()["AWS_ACCESS_KEY_ID"] == "testing"
    aws = load_config(REPO_ROOT / "conf/production.example.yaml", environ={})
    assert aws.s3.endpoint_url is None
    assert aws.s3_keys() == (None, None)  # boto3's and Hadoop's own credential chains apply
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    assert local_endpoint.s3_keys() == ("key", "secret")


def test_profile_option_defaults_to_the_environments_profile(monkeypatch):
    monkeypatch.setenv("TESSERA_PROFILE", "s3")
    parser = argparse.ArgumentParser()
    add_profile_option(parser)
    assert parser.parse_args([]).profile == "s3"
    assert parser.parse_args(["--profile", "local"]).profile == "local"
    monkeypatch.delenv("TESSERA_PROFILE")
    parser = argparse.ArgumentParser()
    add_profile_option(parser)
    assert parser.parse_args([]).profile == "local"
