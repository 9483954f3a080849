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


def test_a_config_value_of_the_wrong_type_is_one_line_and_exit_2(run_cli, tmp_path):
    """`concurrency = "five"`: one clear line naming the file and the key, no traceback."""
    config = tmp_path / "bad.toml"
    config.write_text('concurrency = "five"\n')
    result = run_cli("run", SAMPLES / "bodies.jsonl", "-o", tmp_path / "o.jsonl", "--config", config)
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: {config}: concurrency must be an integer, not 'five'"


def test_values_out_of_range_are_refused_from_flags_and_file_alike(run_cli, tmp_path):
    """A negative rate is refused with the flag's name, or the file's key."""
    config = tmp_path / "bad.toml"
    config.write_text("rpm = -3\n")
    from_file = run_cli("run", SAMPLES / "bodies.jsonl", "-o", tmp_path / "o.jsonl", "--config", config)
    from_flag = run_cli("run", SAMPLES / "bodies.jsonl", "-o", tmp_path / "o.jsonl", "--rpm", "-3")
    assert from_file.exit_code == from_flag.exit_code == 2
    assert f"{config}: rpm must be more than 0" in from_file.stderr
    assert "--rpm must be more than 0" in from_flag.stderr


def test_flags_override_the_config_both_ways(run_cli, tmp_path):
    """`--no-live` beats `live = true`, and a switch the file turns on can be turned
    off again: `quiet = true` in the file, `--fresh` given: both apply."""
    config = tmp_path / "c.toml"
    config.write_text('provider = "fake"\nquiet = true\n')
    out = tmp_path / "out.jsonl"
    first = run_cli("run", SAMPLES / "bodies.jsonl", "-o", out, "--config", config)
    assert first.exit_code == 0
    again = run_cli("run", SAMPLES / "bodies.jsonl", "-o", out, "--config", config, "--fresh", "--no-live")
    assert again.exit_code == 0
    assert "resuming" not in again.stderr
    assert len(read_jsonl(out)) == len(read_jsonl(SAMPLES / "bodies.jsonl"))
