"""The plugin registry: unit behaviour, entry-point loading, broken/duplicate plugins, autoload
policy, config packages, and name resolution inside launcher worker processes.

Plugin scenarios use real installed distributions: small packages are built and installed with
``pip install --target`` into a temp dir (with their dist-info, so their entry points are
real) and put on ``PYTHONPATH`` of a real ``alignx`` subprocess.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import alignx.registry
from alignx.errors import PluginError
from alignx.registry import KINDS, Registry, conf_dirs, load_plugins
from conftest import REPO, fast, require_example_plugin, run_cli, start_background_fixtures

BUILTINS = {
    ("objective", "sft"),
    ("task", "sentiment"),
    ("task", "arithmetic"),
    ("task", "format"),
    ("adapter", "none"),
    ("adapter", "lora"),
    ("adapter", "dora"),
    ("model", "llama"),
    ("model", "hf"),
    ("dataset", "builtin"),
    ("dataset", "jsonl"),
    ("dataset", "parquet"),
    ("dataset", "hub"),
    ("preference_loss", "sigmoid"),
    ("preference_loss", "orpo"),
}
EXAMPLE = {("objective", "sft_ls"), ("reward", "brevity")}
NO_AUTOLOAD_ENV = {"ALIGNX_DISABLE_PLUGIN_AUTOLOAD": None, "ALIGNX_PLUGINS": None}


def listed(stdout: str) -> dict[tuple[str, str], str]:
    """(kind, name) -> provider, parsed from the table ``alignx plugins`` prints."""
    rows = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.split("│")]
        if len(cells) == 6 and cells[1] in KINDS:
            rows[(cells[1], cells[2])] = cells[3]
    return rows


def output(proc: subprocess.CompletedProcess) -> str:
    return proc.stdout + proc.stderr


def explain(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\n--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-4000:]}"


# -- building and installing throwaway plugin distributions ----------------------------------


def write_plugin(root: Path, dist: str, body: str, *, plugin: bool = True, conf: dict[str, str] | None = None) -> Path:
    """Write a plugin project ``dist`` (module ``dist`` with '-' -> '_') under ``root``; return its dir."""
    module = dist.replace("-", "_")
    ep_name = dist.removeprefix("alignx-")
    project = root / dist
    (project / module).mkdir(parents=True)
    (project / module / "__init__.py").write_text(textwrap.dedent(body))
    packages = [module]
    entry_points = ""
    if plugin:
        entry_points += f'[project.entry-points."alignx.plugins"]\n{ep_name} = "{module}:register"\n'
    package_data = ""
    if conf:
        packages.append(f"{module}.conf")
        (project / module / "conf").mkdir()
        (project / module / "conf" / "__init__.py").write_text("")
        for rel, text in conf.items():
            (project / module / "conf" / rel).parent.mkdir(parents=True, exist_ok=True)
            (project / module / "conf" / rel).write_text(text)
        entry_points += f'[project.entry-points."alignx.conf"]\n{ep_name} = "{module}.conf"\n'
        package_data = f'[tool.setuptools.package-data]\n"{module}.conf" = ["**/*.yaml"]\n'
    (project / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=69"]\nbuild-backend = "setuptools.build_meta"\n\n'
        f'[project]\nname = "{dist}"\nversion = "0.0.1"\n\n{entry_points}\n'
        f"[tool.setuptools]\npackages = {packages!r}\n\n{package_data}".replace("'", '"')
    )
    return project


def pip_install_target(projects: list[Path], site: Path) -> Path:
    """Build and install ``projects`` (no deps, no network) into the directory ``site``."""
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "--no-cache-dir", "--disable-pip-version-check", "--target", str(site), *map(str, projects)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, f"pip install --target failed:\n{proc.stdout}\n{proc.stderr}"
    for project in projects:
        dist = project.name.replace("-", "_")
        assert list(site.glob(f"{dist}-*.dist-info")), f"{project.name} has no dist-info in {site}"
    return site


def on_path(site: Path, **env: str | None) -> dict[str, str | None]:
    return {**NO_AUTOLOAD_ENV, "PYTHONPATH": str(site), **env}


@pytest.fixture(scope="module")
def bad_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """alignx-broken (import raises), alignx-halfway (register() raises after registering one
    reward) and alignx-brokenconf (import raises, but ships a config package), all installed."""
    src = tmp_path_factory.mktemp("bad-src")
    # build from a copy: an in-tree build would leave build/ and *.egg-info in the repository
    broken = shutil.copytree(
        REPO / "tests" / "plugins" / "alignx-broken", src / "alignx-broken",
        ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"),
    )
    halfway = write_plugin(
        src,
        "alignx-halfway",
        '''
        def halfway_reward(prompts, completions):
            return [0.0 for _ in completions]


        def register(registry):
            registry.register("reward", "halfway_reward", halfway_reward)
            raise RuntimeError("halfway gives up after one registration")
        ''',
    )
    brokenconf = write_plugin(
        src,
        "alignx-brokenconf",
        'raise ImportError("alignx-brokenconf code is broken on purpose")\n',
        conf={"objective/brokenconf_obj.yaml": "name: brokenconf_obj\n"},
    )
    return pip_install_target([broken, halfway, brokenconf], tmp_path_factory.mktemp("bad-site"))


@pytest.fixture(scope="module")
def dup_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """alignx-dupe: registers an objective named 'sft', which alignx already provides."""
    src = tmp_path_factory.mktemp("dup-src")
    dupe = write_plugin(
        src,
        "alignx-dupe",
        '''
        class DupeSFT:
            name = "sft"


        def register(registry):
            registry.register("objective", "sft", DupeSFT)
        ''',
    )
    return pip_install_target([dupe], tmp_path_factory.mktemp("dup-site"))


# -- slow subprocess runs, started together at module setup (see start_background_fixtures) ---


@pytest.fixture(scope="module")
def pool():
    with ThreadPoolExecutor(max_workers=3) as executor:
        yield executor


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def bg_joblib(pool, runs_dir) -> tuple[Future, Path]:
    sweep = runs_dir / "joblib-sweep"
    args = ["-m", "objective=sft,sft_ls", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *fast("tracking=none"),
            f"hydra.sweep.dir={sweep}", f"outputs_root={runs_dir / 'joblib-root'}"]
    return pool.submit(run_cli, args, runs_dir, NO_AUTOLOAD_ENV), sweep


@pytest.fixture(scope="module")
def bg_train_bad(pool, runs_dir, bad_site) -> tuple[Future, Path]:
    run = runs_dir / "train-with-broken"
    args = ["train", "objective=sft_ls", *fast("tracking=none"), f"hydra.run.dir={run}", f"outputs_root={run}-root"]
    return pool.submit(run_cli, args, runs_dir, on_path(bad_site)), run


@pytest.fixture(scope="module")
def bg_listing_bad(pool, runs_dir, bad_site) -> Future:
    return pool.submit(run_cli, ["plugins"], runs_dir, on_path(bad_site))


@pytest.fixture(scope="module")
def bg_listing_dup(pool, runs_dir, dup_site) -> Future:
    return pool.submit(run_cli, ["plugins"], runs_dir, on_path(dup_site))


@pytest.fixture(scope="module")
def bg_listing_disabled(pool, runs_dir) -> Future:
    return pool.submit(run_cli, ["plugins"], runs_dir, {"ALIGNX_DISABLE_PLUGIN_AUTOLOAD": "1", "ALIGNX_PLUGINS": None})


@pytest.fixture(scope="module")
def bg_listing_enabled(pool, runs_dir) -> Future:
    return pool.submit(run_cli, ["plugins"], runs_dir, {"ALIGNX_DISABLE_PLUGIN_AUTOLOAD": "1", "ALIGNX_PLUGINS": "example"})


@pytest.fixture(scope="module", autouse=True)
def _start_slow_runs_early(request: pytest.FixtureRequest) -> None:
    start_background_fixtures(
        request,
        ["bg_joblib", "bg_train_bad", "bg_listing_bad", "bg_listing_dup", "bg_listing_disabled", "bg_listing_enabled"],
    )


# -- Registry unit behaviour -----------------------------------------------------------------


def test_register_then_get_returns_the_object():
    registry = Registry()

    def reward(prompts, completions):
        return [1.0] * len(completions)

    assert registry.register("reward", "ones", reward, provider="my-dist") is reward
    assert registry.get("reward", "ones") is reward
    assert ("reward", "ones") in registry
    assert ("objective", "ones") not in registry
    assert registry.names("reward") == ["ones"]
    [entry] = list(registry.entries())
    assert (entry.kind, entry.name, entry.obj, entry.provider) == ("reward", "ones", reward, "my-dist")

    @registry.add("objective")
    class MyObjective:
        name = "mine"

    assert registry.get("objective", "mine") is MyObjective


def test_preference_loss_is_a_kind_holding_declared_specs():
    from alignx.losses import BUILTIN_PREFERENCE_LOSSES, PreferenceLoss

    assert "preference_loss" in KINDS
    registry = Registry()

    def margin(x, *, beta):
        return beta * (x.rejected - x.chosen), x.chosen.detach(), x.rejected.detach()

    spec = registry.add("preference_loss")(PreferenceLoss("margin", margin, needs_reference=False))
    assert registry.get("preference_loss", "margin") is spec
    with pytest.raises(PluginError, match=r"unknown preference_loss 'margn'. Valid preference_losses: margin. Did you mean 'margin'\?"):
        registry.get("preference_loss", "margn")
    with pytest.raises(PluginError, match="duplicate preference_loss 'margin'"):
        registry.register("preference_loss", "margin", spec)
    # alignx's own losses come through its entry point like any plugin's
    builtins = load_plugins()
    for loss in BUILTIN_PREFERENCE_LOSSES:
        assert builtins.get("preference_loss", loss.name) is loss
    assert {e.provider for e in builtins.entries() if e.kind == "preference_loss" and e.name in {"sigmoid", "ipo", "orpo"}} == {"alignx"}


def test_duplicate_name_raises_naming_both_providers():
    registry = Registry()
    registry.register("objective", "sft", object, provider="first-dist")
    with pytest.raises(PluginError) as err:
        registry.register("objective", "sft", int, provider="second-dist")
    message = str(err.value)
    assert "duplicate objective 'sft'" in message
    assert "'first-dist'" in message and "'second-dist'" in message
    assert registry.get("objective", "sft") is object  # the first registration is kept


def test_unknown_name_lists_valid_names_with_a_close_match_hint():
    registry = Registry()
    for name in ("sentiment", "arithmetic", "format"):
        registry.register("task", name, object())
    with pytest.raises(PluginError) as err:
        registry.get("task", "sentimnt")
    message = str(err.value)
    assert "unknown task 'sentimnt'" in message
    assert "arithmetic, format, sentiment" in message
    assert "Did you mean 'sentiment'?" in message
    with pytest.raises(PluginError) as err:
        registry.get("task", "zzzzzz")
    assert "arithmetic, format, sentiment" in str(err.value) and "Did you mean" not in str(err.value)
    with pytest.raises(PluginError, match=r"Valid rewards: \(none\)"):
        registry.get("reward", "anything")


def test_unknown_kind_is_an_error_listing_kinds():
    registry = Registry()
    for call in (lambda: registry.get("objectiv", "sft"), lambda: registry.register("objectiv", "sft", object)):
        with pytest.raises(PluginError) as err:
            call()
        assert "unknown registry kind 'objectiv'" in str(err.value)
        assert all(kind in str(err.value) for kind in KINDS)


# -- load_plugins and conf_dirs in this process ----------------------------------------------


def test_load_plugins_records_each_entrys_distribution(monkeypatch: pytest.MonkeyPatch):
    require_example_plugin()
    for var in NO_AUTOLOAD_ENV:
        monkeypatch.delenv(var, raising=False)
    # the reload replaces the process-wide registry; put the previous one back afterwards
    monkeypatch.setattr(alignx.registry, "_registry", alignx.registry._registry)
    registry = load_plugins(reload=True)
    providers = {(e.kind, e.name): e.provider for e in registry.entries()}
    for key in BUILTINS:
        assert providers.get(key) == "alignx", f"{key} should be provided by 'alignx', got {providers.get(key)}"
    for key in EXAMPLE:
        assert providers.get(key) == "alignx-example", f"{key} should come from 'alignx-example'"
    from alignx.objectives.sft import SFT
    from alignx_example.objective import LabelSmoothedSFT

    assert registry.get("objective", "sft") is SFT
    assert registry.get("objective", "sft_ls") is LabelSmoothedSFT
    assert load_plugins() is registry  # loaded once per process


def test_conf_dirs_include_alignx_and_the_example_plugin(monkeypatch: pytest.MonkeyPatch):
    require_example_plugin()
    for var in NO_AUTOLOAD_ENV:
        monkeypatch.delenv(var, raising=False)
    dirs = {name: (dist, directory) for name, dist, directory in conf_dirs()}
    assert conf_dirs()[0][:2] == ("alignx", "alignx"), "alignx's own config must come first (primary config)"
    dist, directory = dirs["alignx"]
    assert directory.is_absolute() and (directory / "train.yaml").is_file()
    dist, directory = dirs["example"]
    assert dist == "alignx-example"
    assert (directory / "objective" / "sft_ls.yaml").is_file()


def test_conf_dirs_locate_config_without_importing_plugin_code(bad_site: Path, tmp_path: Path):
    """A plugin's config package is found without importing it or its (here broken) parent."""
    require_example_plugin()
    script = textwrap.dedent(
        """
        import sys, warnings
        warnings.simplefilter("error")
        from alignx.registry import conf_dirs
        dirs = {name: str(d) for name, _dist, d in conf_dirs()}
        print(dirs["brokenconf"])
        print(dirs["example"])
        loaded = sorted(m for m in sys.modules if m.startswith(("alignx_", "torch")))
        assert not loaded, loaded
        """
    )
    env = {k: v for k, v in os.environ.items() if k not in NO_AUTOLOAD_ENV}
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env={**env, "PYTHONPATH": str(bad_site)},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, explain(proc)
    brokenconf_dir = Path(proc.stdout.splitlines()[0])
    assert brokenconf_dir == (bad_site / "alignx_brokenconf" / "conf").resolve()
    assert (brokenconf_dir / "objective" / "brokenconf_obj.yaml").is_file()


# -- broken, half-registered and duplicate plugins, through the real CLI ----------------------


def test_broken_plugin_is_named_in_a_warning_and_skipped(bg_listing_bad: Future):
    require_example_plugin()
    proc = bg_listing_bad.result()
    assert proc.returncode == 0, explain(proc)
    assert "alignx: warning: alignx plugin 'broken' (from distribution 'alignx-broken') failed to load" in proc.stderr, explain(proc)
    assert "alignx-broken is broken on purpose" in output(proc)
    # the warning names the plugin, not a line of alignx's own code that happened to emit it
    assert "cli.py" not in proc.stderr and "registry.py" not in proc.stderr, explain(proc)
    # `alignx plugins` lists what failed, with its error
    failed = proc.stdout[proc.stdout.index("plugins that failed to load"):]
    assert re.search(r"broken\s+│\s+alignx-broken\s+│\s+import\s+│.*broken on purpose", failed), explain(proc)
    rows = listed(proc.stdout)
    assert rows.get(("objective", "sft_ls")) == "alignx-example", explain(proc)
    assert {key for key, dist in rows.items() if dist == "alignx"} >= BUILTINS
    assert not any("broken" in dist for dist in rows.values())


def test_training_works_with_a_broken_plugin_installed(bg_train_bad: tuple[Future, Path]):
    require_example_plugin()
    future, run = bg_train_bad
    proc = future.result()
    assert proc.returncode == 0, explain(proc)
    assert "'broken'" in proc.stderr and "alignx-broken" in proc.stderr  # still warned about
    assert (run / "model" / "config.json").is_file()
    assert OmegaConf.load(run / "config.yaml").objective.name == "sft_ls"


def test_plugin_raising_in_register_is_named_and_rolled_back(bg_listing_bad: Future):
    require_example_plugin()
    proc = bg_listing_bad.result()
    assert proc.returncode == 0, explain(proc)
    assert "alignx plugin 'halfway' (from distribution 'alignx-halfway') raised in register()" in output(proc), explain(proc)
    assert "halfway gives up after one registration" in output(proc)
    failed = proc.stdout[proc.stdout.index("plugins that failed to load"):]
    assert re.search(r"halfway\s+│\s+alignx-halfway\s+│\s+register\s+│", failed), explain(proc)
    rows = listed(proc.stdout)
    assert ("reward", "halfway_reward") not in rows, "the partial registration must be rolled back"
    assert "halfway_reward" not in proc.stdout
    assert rows.get(("reward", "brevity")) == "alignx-example"
    assert {key for key, dist in rows.items() if dist == "alignx"} >= BUILTINS


def test_duplicate_name_across_plugins_is_an_error_naming_both(bg_listing_dup: Future):
    proc = bg_listing_dup.result()
    assert proc.returncode != 0, explain(proc)
    assert "duplicate objective 'sft'" in proc.stderr, explain(proc)
    assert "'alignx'" in proc.stderr and "'alignx-dupe'" in proc.stderr, explain(proc)
    assert "Traceback" not in proc.stderr, "a user error is one message, not a traceback"


# -- autoload policy ---------------------------------------------------------------------------


def test_disabled_autoload_loads_only_builtins_and_named_plugins(bg_listing_disabled: Future, bg_listing_enabled: Future):
    require_example_plugin()
    proc = bg_listing_disabled.result()
    assert proc.returncode == 0, explain(proc)
    rows = listed(proc.stdout)
    assert {key for key, dist in rows.items() if dist == "alignx"} >= BUILTINS
    assert set(rows) & EXAMPLE == set(), explain(proc)
    assert "config package 'example'" not in proc.stdout
    assert "config package 'alignx'" in proc.stdout

    proc = bg_listing_enabled.result()
    assert proc.returncode == 0, explain(proc)
    rows = listed(proc.stdout)
    assert {key for key, dist in rows.items() if dist == "alignx"} >= BUILTINS
    assert {key: rows.get(key) for key in EXAMPLE} == {key: "alignx-example" for key in EXAMPLE}, explain(proc)
    assert "config package 'example' from alignx-example" in proc.stdout


# -- launcher workers ----------------------------------------------------------------------------


def test_registry_names_resolve_in_joblib_launcher_workers(bg_joblib: tuple[Future, Path]):
    require_example_plugin()
    future, sweep = bg_joblib
    proc = future.result()
    assert proc.returncode == 0, explain(proc)
    assert "Joblib.Parallel(n_jobs=2" in output(proc), "the joblib launcher was not used"
    objectives = set()
    for job in ("0", "1"):
        assert (sweep / job / "model" / "config.json").is_file(), f"job {job} saved no model\n{explain(proc)}"
        objectives.add(OmegaConf.load(sweep / job / "config.yaml").objective.name)
    assert objectives == {"sft", "sft_ls"}
