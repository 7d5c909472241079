"""Secrets never leave the process: which keys are secret, how values, overrides, text, logs,
Hydra's files and a credentialed tracking URL are masked, down to a real job against a real server."""

from __future__ import annotations

import io
import logging
import subprocess
import sys

import pytest
from mlflow import MlflowClient
from omegaconf import OmegaConf

from alignx.secrets import (
    MASK,
    SecretFilter,
    install_secret_filter,
    is_secret_key,
    redact,
    redact_overrides,
    redact_text,
    strip_url_credentials,
)
from alignx.tracking import config_params, overrides_tag, redacted_config_yaml
from alignx.tracking.connection import TrackingUnavailable, check_server
from conftest import REPO, fast, run_cli, seed_store
from test_tracking_server import _free_port, _start_server, _stop

SECRET_KEYS = [
    "tracking.password", "hf_token", "HF_TOKEN", "HFToken", "apiKey", "api_key", "apikey", "private_key",
    "hf_key", "KEY", "aws_secret_access_key", "headers.Authorization", "credentials", "db-passwd",
    "MLFLOW_TRACKING_PASSWORD", "client_secret",
]
NOT_SECRET = [
    "model.num_key_value_heads", "eval.max_new_tokens", "data.max_tokens", "keyboard.layout", "key_value",
    "tokenizer", "pad_token", "eos_token_id", "monkey", "sort_key_fn", "optim.lr",
]


@pytest.mark.parametrize("key", SECRET_KEYS)
def test_secret_keys(key):
    assert is_secret_key(key)


@pytest.mark.parametrize("key", NOT_SECRET)
def test_keys_that_only_look_secret(key):
    assert not is_secret_key(key)


def test_config_params_mask_secrets_and_keep_counts():
    params = config_params({
        "model": {"num_key_value_heads": 2, "hidden_size": 32},
        "eval": {"max_new_tokens": 8},
        "tracking": {
            "uri": "http://alice:pw-123@mlflow.example:5000",
            "headers": {"Authorization": "Bearer tok-abc"},
            "credentials": {"user": "alice", "region": "eu"},
            "password": None,
        },
    })
    assert params["model.num_key_value_heads"] == "2"
    assert params["eval.max_new_tokens"] == "8"
    assert params["tracking.uri"] == "http://***@mlflow.example:5000"
    assert params["tracking.headers.Authorization"] == MASK
    assert params["tracking.credentials.user"] == params["tracking.credentials.region"] == MASK
    assert params["tracking.password"] == "None"  # nothing to hide
    assert not {"pw-123", "tok-abc", "alice"} & set(" ".join(params.values()).replace("@", " ").split())


def test_redact_a_config_tree():
    tree = {
        "seed": 0,
        "model": {"num_key_value_heads": 2, "token": None},
        "tracking": {"uri": "http://u:p4ss@h:1/x", "hf_token": "hf_abc", "headers": {"Authorization": "Basic eHl6"},
                     "credentials": {"user": "bob", "nested": ["k1", "k2"]}},
        "hydra_like": {"task": ["+tracking.password=hunter2", "seed=1"], "dirname": "seed=1,tracking.password=hunter2"},
    }
    out = redact(tree)
    assert out == {
        "seed": 0,
        "model": {"num_key_value_heads": 2, "token": None},
        "tracking": {"uri": "http://***@h:1/x", "hf_token": MASK, "headers": {"Authorization": MASK},
                     "credentials": {"user": MASK, "nested": [MASK, MASK]}},
        "hydra_like": {"task": ["+tracking.password=***", "seed=1"], "dirname": "seed=1,tracking.password=***"},
    }
    assert tree["tracking"]["hf_token"] == "hf_abc"  # a copy: the config itself is untouched


def test_redact_overrides_and_the_overrides_tag():
    overrides = ["+tracking.password=hunter2", "++a.hf_token=hf_x", "optim.lr=1e-3", "~tracking.password",
                 "tracking.uri=http://u:pw@h:5000", "tracking.credentials.user=bob", "+headers.Authorization=Bearer t k"]
    assert redact_overrides(overrides) == [
        "+tracking.password=***", "++a.hf_token=***", "optim.lr=1e-3", "~tracking.password",
        "tracking.uri=http://***@h:5000", "tracking.credentials.user=***", "+headers.Authorization=***",
    ]
    assert overrides_tag(["+tracking.password=hunter2", "seed=1"]) == "+tracking.password=*** seed=1"


def test_redact_text():
    text = ("connect to http://alice:s3cr%40t@127.0.0.1:5000/api failed; hf_token=abc123, lr=0.1 "
            "{'password': 'p w', \"api_key\": \"zz9\"} Authorization: Bearer XYZ unknown key: optim.lrr "
            "sorted(rows, key=len) a=password=yy")
    assert redact_text(text) == (
        "connect to http://***@127.0.0.1:5000/api failed; hf_token=***, lr=0.1 "
        "{'password': ***, \"api_key\": ***} Authorization: *** unknown key: optim.lrr "
        "sorted(rows, key=len) a=password=***"
    )


def test_strip_url_credentials():
    assert strip_url_credentials("http://alice:s3cr%40t@127.0.0.1:5000/path?q=1") == (
        "http://127.0.0.1:5000/path?q=1", "alice", "s3cr@t")
    assert strip_url_credentials("https://token-only@host") == ("https://host", "token-only", None)
    assert strip_url_credentials("http://127.0.0.1:5000") == ("http://127.0.0.1:5000", None, None)


def test_redacted_config_yaml():
    text = redacted_config_yaml({"seed": 0, "tracking": {"password": "hunter2", "uri": "http://a:b@h"},
                                 "model": {"num_key_value_heads": 2}})
    assert OmegaConf.to_container(OmegaConf.create(text)) == {
        "seed": 0, "tracking": {"password": MASK, "uri": "http://***@h"}, "model": {"num_key_value_heads": 2}}
    assert text.startswith("seed: 0")


def test_secret_filter_masks_messages_and_tracebacks():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("alignx.test_secrets")
    logger.addHandler(handler)
    try:
        install_secret_filter()
        assert any(isinstance(f, SecretFilter) for f in handler.filters)
        install_secret_filter()  # idempotent
        assert sum(isinstance(f, SecretFilter) for f in handler.filters) == 1
        logger.warning("connecting to %s with hf_token=%s", "http://bob:pw-77@h:1", "hf_live_1")
        try:
            raise RuntimeError("server said: password=letmein")
        except RuntimeError:
            logger.exception("request failed for http://bob:pw-77@h:1")
    finally:
        logger.removeHandler(handler)
    out = stream.getvalue()
    assert "connecting to http://***@h:1 with hf_token=***" in out
    assert "RuntimeError: server said: password=***" in out  # the traceback too
    assert not {"pw-77", "hf_live_1", "letmein"} & set(out.replace("@", " ").replace(":", " ").split())


def test_unreachable_server_message_has_no_password():
    port = _free_port()  # nothing listens here
    with pytest.raises(TrackingUnavailable) as info:
        check_server(f"http://alice:hunter2-pw@127.0.0.1:{port}", timeout=2)
    message = str(info.value)
    assert f"http://127.0.0.1:{port} is unreachable" in message
    assert "hunter2-pw" not in message and "alice" not in message


def test_the_tracker_masks_whatever_a_caller_passes(tmp_path, empty_store):
    """The last gate before the store: unmasked tags, params, run name and YAML text from any caller."""
    seed_store(empty_store, tmp_path)
    from alignx.tracking import MlflowTracker, default_tracking_uri

    uri = default_tracking_uri(tmp_path)
    tracker = MlflowTracker(uri, "gate", run_name="0: +tracking.password=hunter2-pw",
                            tags={"alignx.overrides": "seed=1 +a.hf_token=hf_live_1", "hf_token": "hf_live_1"},
                            artifact_location=(tmp_path / "mlartifacts").as_uri())
    tracker.log_params({"tracking.password": "hunter2-pw", "tracking.uri": "http://u:url-pw@h:1", "model.token": "None",
                        "model.num_key_value_heads": "2"})
    tracker.set_tags({"alignx.note": "Authorization: Bearer tok-abc123"})
    tracker.log_text("tracking:\n  password: hunter2-pw\n", "config/extra.yaml")
    tracker.finish()
    run = MlflowClient(tracking_uri=uri).get_run(tracker.run_id)
    assert run.info.run_name == "0: +tracking.password=***"
    assert run.data.tags["alignx.overrides"] == "seed=1 +a.hf_token=***" and run.data.tags["hf_token"] == MASK
    assert run.data.tags["alignx.note"] == "Authorization: ***"
    assert run.data.params == {"tracking.password": MASK, "tracking.uri": "http://***@h:1", "model.token": "None",
                               "model.num_key_value_heads": "2"}
    (stored,) = (tmp_path / "mlartifacts").rglob("extra.yaml")
    text = stored.read_text()
    assert text == "tracking:\n  password: ***\n"


def test_check_server_sends_url_credentials_as_basic_auth(monkeypatch):
    """A health endpoint that answers only to alice:s3cr3t (a stand-in for an authenticating proxy)."""
    import base64
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    expected = "Basic " + base64.b64encode(b"alice:s3cr3t").decode()

    class Health(BaseHTTPRequestHandler):
        def do_GET(self):
            ok = self.path == "/health" and self.headers.get("Authorization") == expected
            self.send_response(200 if ok else 401)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        check_server(f"http://alice:s3cr3t@127.0.0.1:{port}", timeout=5)  # answers: no error
        with pytest.raises(TrackingUnavailable, match="Unauthorized") as info:
            check_server(f"http://alice:wrong-pw@127.0.0.1:{port}", timeout=5)
        assert "wrong-pw" not in str(info.value) and f"http://127.0.0.1:{port} is unreachable" in str(info.value)
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")  # MLflow's own variables work too
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "s3cr3t")
        check_server(f"http://127.0.0.1:{port}", timeout=5)
    finally:
        server.shutdown()
        server.server_close()


# A Hydra multirun of a task that trains nothing, with alignx's primary config and callbacks:
# the launcher, Hydra's files, the sweep's MLflow parent run and the job's own log line all see the secrets.
SWEEP_APP = """
import logging, sys
import hydra

@hydra.main(config_path=sys.argv.pop(1), config_name="train", version_base="1.3")
def task(cfg):
    logging.getLogger("alignx").warning("job %s logs in with password=%s", cfg.seed, cfg.tracking.password)

task()
"""


def test_a_sweep_keeps_secrets_out_of_hydra_files_logs_and_its_parent_run(tmp_path, empty_store):
    sweep, outs = tmp_path / "sweep", tmp_path / "outs"
    seed_store(empty_store, outs)
    proc = subprocess.run(
        [sys.executable, "-c", SWEEP_APP, str(REPO / "conf"), "-m", "seed=1,2", "+tracking.password=hunter2-pw",
         "+tracking.mirror=http://alice:url-pw@127.0.0.1:1", f"hydra.sweep.dir={sweep}", f"outputs_root={outs}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    output = proc.stderr + proc.stdout
    # the launcher prints each job's overrides (escaped as Hydra quotes them)
    assert "#0 : seed=1 +tracking.password=*** +tracking.mirror=http\\://***@127.0.0.1\\:1" in output
    assert "job 2 logs in with password=***" in output
    assert "hunter2-pw" not in output and "url-pw" not in output
    files = [p for p in sweep.rglob("*") if p.is_file()]
    assert {p.relative_to(sweep).as_posix() for p in files} >= {
        "multirun.yaml", "0/.hydra/config.yaml", "0/.hydra/hydra.yaml", "0/.hydra/overrides.yaml", "1/.hydra/overrides.yaml",
        ".alignx/jobs/1.json"}
    for path in files:
        text = path.read_text()
        assert "hunter2-pw" not in text and "url-pw" not in text, path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outs", "sweep"]  # masking claimed no other directory
    assert OmegaConf.load(sweep / "1" / ".hydra" / "overrides.yaml")[0] == "seed=2"
    assert OmegaConf.load(sweep / "1" / ".hydra" / "config.yaml").tracking.password == MASK
    hydra_cfg = OmegaConf.load(sweep / "1" / ".hydra" / "hydra.yaml").hydra
    assert "+tracking.password=***" in list(hydra_cfg.overrides.task)
    # rebuilt from the masked overrides as Hydra builds it (a sweep job's overrides come back escaped)
    assert hydra_cfg.job.override_dirname == (
        f"+tracking.mirror=http\\://***@127.0.0.1\\:1,+tracking.password=***,outputs_root={outs},seed=2")
    multirun = OmegaConf.load(sweep / "multirun.yaml")
    assert multirun.tracking.password == MASK
    assert multirun.model.num_key_value_heads == OmegaConf.load(REPO / "conf" / "model" / "tiny.yaml").num_key_value_heads
    # the sweep's parent run: masked params and overrides tag, and nothing anywhere in the store
    client = MlflowClient(tracking_uri=f"sqlite:///{outs / 'mlflow.db'}")
    (parent,) = client.search_runs([client.get_experiment_by_name("alignx").experiment_id])
    assert parent.data.tags["alignx.sweep"] == "true"
    assert parent.data.params["tracking.password"] == MASK
    assert parent.data.params["tracking.mirror"] == "http://***@127.0.0.1:1"
    assert parent.data.tags["alignx.overrides"] == (
        f"seed=1,2 +tracking.password=*** +tracking.mirror=http://***@127.0.0.1:1 outputs_root={outs}")
    for db in outs.glob("mlflow.db*"):
        data = db.read_bytes().decode("latin-1")
        assert "hunter2-pw" not in data and "url-pw" not in data, db


# -- a real job, with a credentialed tracking URL to a real server ----------------------------

JOB_SECRETS = ("hunter2-pw", "tok-abc123", "url-pw-9")


@pytest.fixture(scope="module")
def secret_job(tmp_path_factory, empty_store):
    """One CLI job with secrets in three places, logging to a server through ``user:password@``."""
    tmp = tmp_path_factory.mktemp("secret_job")
    server, uri = _start_server(tmp, empty_store=empty_store)
    port = uri.rsplit(":", 1)[1]
    try:
        proc = run_cli(
            [*fast("trainer.max_steps=2", "eval.num_prompts=4"), "+tracking.password=hunter2-pw",
             "+tracking.headers.Authorization=Bearer tok-abc123", f"tracking.uri=http://alice:url-pw-9@127.0.0.1:{port}",
             f"hydra.run.dir={tmp / 'run'}", f"outputs_root={tmp / 'outs'}"],
            cwd=tmp,
        )
        yield tmp, uri, proc
    finally:
        _stop(server)


def _leaks(text: str) -> list[str]:
    return [s for s in JOB_SECRETS if s in text]


def test_job_with_credentialed_tracking_url_keeps_secrets_off_disk_and_out_of_the_store(secret_job):
    tmp, uri, proc = secret_job
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"in {uri}" in proc.stdout  # the summary names the server, without the password
    assert _leaks(proc.stdout + proc.stderr) == []
    run_dir = tmp / "run"
    assert (run_dir / "model" / "model.safetensors").is_file()
    assert not (tmp / "outputs").exists()  # nothing claimed a default run or sweep dir
    files = [p for p in run_dir.rglob("*") if p.is_file() and p.suffix in {".yaml", ".json", ".log", ".txt"}]
    assert {".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml"} <= {p.relative_to(run_dir).as_posix() for p in files}
    for path in files:
        assert _leaks(path.read_text()) == [], path
    assert "+tracking.password=***" in (run_dir / ".hydra" / "overrides.yaml").read_text()
    client = MlflowClient(tracking_uri=uri)
    run = client.search_runs([client.get_experiment_by_name("alignx").experiment_id])[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["tracking.password"] == MASK
    assert run.data.params["tracking.headers.Authorization"] == MASK
    assert run.data.params["tracking.uri"] == f"http://***@127.0.0.1:{uri.rsplit(':', 1)[1]}"
    assert run.data.params["model.num_key_value_heads"] == "2"
    assert "+tracking.password=***" in run.data.tags["alignx.overrides"]
    assert _leaks(" ".join(run.data.tags.values())) == []
    # nothing in the server's database or artifact store, in any table or file
    for db in tmp.glob("server.db*"):  # the database and any journal beside it
        assert _leaks(db.read_bytes().decode("latin-1")) == [], db
    stored = [p for p in (tmp / "server-artifacts").rglob("*") if p.is_file() and p.suffix in {".yaml", ".json", ".txt"}]
    assert any(p.name == "resolved.yaml" for p in stored)
    for path in stored:
        assert _leaks(path.read_text()) == [], path


# -- masking by exact key patterns and credential-shaped values -------------------------------

MORE_SECRET_KEYS = ["basic_auth", "aws_access_key", "secret_key", "ssh_private_key", "db.passphrase", "openai_api_key"]
MORE_NOT_SECRET = ["prompt_key", "sort_key", "cache_key", "author", "max_tokens", "num_tokens", "pad_token_id",
                   "keys", "key_value_heads", "tokenizer_name"]


@pytest.mark.parametrize("key", MORE_SECRET_KEYS)
def test_more_secret_keys(key):
    assert is_secret_key(key)


@pytest.mark.parametrize("key", MORE_NOT_SECRET)
def test_field_names_ending_in_key_or_tokens_are_not_secret(key):
    assert not is_secret_key(key)


CREDENTIAL_VALUES = ["hf_" + "aB3" * 11, "sk-" + "x7Y" * 10, "AKIA" + "ABCDEFGHIJ234567", "ghp_" + "Q1w" * 12]


@pytest.mark.parametrize("value", CREDENTIAL_VALUES)
def test_credential_shaped_values_are_masked_under_any_key(value):
    params = config_params({"dataset": {"notes": f"pulled with {value} yesterday", "name": value}})
    assert params == {"dataset.notes": f"pulled with {MASK} yesterday", "dataset.name": MASK}
    assert redact_overrides([f"+dataset.revision={value}"]) == [f"+dataset.revision={MASK}"]


def test_values_that_only_resemble_credentials_are_kept():
    kept = ["hf_tiny", "sk-learn", "distilgpt2", "AKIA", "task-sk-1", "0123456789abcdef0123456789abcdef",
            "hf_model_with_a_long_name_but_underscores"]
    assert config_params({"v": kept}) == {"v": str(kept)}
    assert redact_text(" ".join(kept)) == " ".join(kept)


def _shipped_configs():
    """(label, overrides) for every option of every config group under conf/ and every preset."""
    conf = REPO / "conf"
    out = [("defaults", [])]
    for group in sorted(p for p in conf.iterdir() if p.is_dir() and p.name not in ("hydra", "__pycache__")):
        for option in sorted(group.glob("*.yaml")):
            out.append((f"{group.name}={option.stem}", [f"{group.name}={option.stem}"]))
    return out


#: the keys a shipped config deliberately holds a secret under (none today: credentials come from
#: the environment or the tracking URL, never from conf/)
DELIBERATELY_SECRET: set[str] = set()


def test_no_key_of_any_shipped_config_is_masked():
    """Compose every group option and preset as a job would, turn it into MLflow params, and check
    that masking touched nothing but deliberately secret keys: a setting hidden as ``***``
    (``model.num_key_value_heads`` once was) is a setting nobody can compare runs by."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from alignx.secrets import is_secret_path

    labels, checked = [], 0
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        for label, overrides in _shipped_configs():
            cfg = compose("train", overrides=overrides)
            tree = OmegaConf.to_container(cfg, resolve=False)
            flat = {k: v for k, v in _flat(tree).items()}
            params = config_params(tree)
            assert set(params) == set(flat)
            masked = sorted(k for k, v in params.items() if MASK in v and k not in DELIBERATELY_SECRET)
            assert masked == [], f"{label}: masked {masked}"
            assert not [k for k in flat if is_secret_path(k) and k not in DELIBERATELY_SECRET], label
            labels.append(label)
            checked += len(params)
    GlobalHydra.instance().clear()
    groups = {lbl.split("=")[0] for lbl in labels}
    assert {"objective", "model", "adapter", "dataset", "experiment", "hparams_search", "reward"} <= groups
    assert "experiment=quickstart" in labels and "model=tiny" in labels
    assert checked > 1000


def _flat(tree):
    from alignx.tracking import flatten

    return flatten(tree)
