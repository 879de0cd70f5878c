import subprocess
import sys

from typer.testing import CliRunner

from pipelines.app import app


def test_help_lists_every_registered_subcommand():
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    names = [c.name for c in app.registered_commands]
    assert "filter" in names
    for name in names:
        assert name in result.output


def test_python_dash_m_curation_works():
    out = subprocess.run(
        [sys.executable, "-m", "pipelines", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip()


HEAVY = (
    "torch",
    "open_clip",
    "webdataset",
    "pyspark",
    "ray",
    "matplotlib",
    "duckdb",
    "faiss",
    "fasttext",
    "pandas",
)


def test_cli_start_imports_no_heavy_library():
    """Every ``curate`` start (even ``--help``) imports all pipelines modules: they must stay light."""
    probe = (
        "import sys, typer, pipelines.app\n"
        "typer.main.get_command(pipelines.app.app)\n"
        "assert 'pipelines.score' in sys.modules and 'pipelines.card' in sys.modules\n"
        f"bad = sorted(m for m in {HEAVY!r} if m in sys.modules)\n"
        "assert not bad, f'imported at CLI start: {bad}'\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_filter_command_runs_and_prints_the_funnel(metadata_pool):
    result = CliRunner().invoke(app, ["filter", str(metadata_pool), "--set", "filters.0.min_words=2"])
    assert result.exit_code == 0, result.output
    assert (
        metadata_pool / "attributes" / "basic" / "00000.parquet"
    ).exists()  # name from conf/filters/basic.yaml
    assert "funnel" in result.output


def test_bad_override_is_a_clear_config_error(metadata_pool):
    result = subprocess.run(
        [sys.executable, "-m", "pipelines", "filter", str(metadata_pool), "--set", "nmae=x"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "nmae: unknown key" in result.stderr
