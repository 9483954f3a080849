"""The config file: what a cron job repeats lives there, and flags override it."""

from __future__ import annotations

from conftest import SAMPLES, read_jsonl


def test_config_file_supplies_settings_and_flags_override_them(run_cli, tmp_path):
    """llmbatch.toml gives the provider, model, params and quiet; --model wins over it."""
    config = tmp_path / "cron.toml"
    config.write_text(
        'provider = "fake"\nmodel = "from-config"\nquiet = true\nparams = { temperature = 0 }\n'
        '[prices."flag-model"]\ninput = 1.0\noutput = 2.0\n'
    )
    out = tmp_path / "out.jsonl"
    first = run_cli("run", SAMPLES / "bodies.jsonl", "-o", out, "--config", config)
    assert first.exit_code == 0, first.output
    assert {r["response"]["body"]["model"] for r in read_jsonl(out)} == {"from-config"}
    assert "llmbatch: " not in first.stderr  # quiet: no progress lines, only the summary
    second = run_cli(
        "run", SAMPLES / "bodies.jsonl", "-o", out, "--config", config, "--model", "flag-model", "--fresh"
    )
    assert second.exit_code == 0, second.output
    assert {r["response"]["body"]["model"] for r in read_jsonl(out)} == {"flag-model"}
    assert "unknown" not in second.stderr  # the config's price for the flag's model is used


def test_unknown_config_setting_is_a_usage_error(run_cli, tmp_path):
    """A typo in the config file fails at once with the setting's name, exit 2."""
    config = tmp_path / "bad.toml"
    config.write_text("concurency = 5\n")
    result = run_cli("run", SAMPLES / "bodies.jsonl", "-o", tmp_path / "o.jsonl", "--config", config)
    assert result.exit_code == 2
    assert "unknown setting 'concurency'" in result.stderr
