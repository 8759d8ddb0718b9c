"""Prompts: empty or blank ones are usage errors (exit 2) before anything runs; prompt files take # comments and
drop repeats with a note; prompts the model cannot read whole (too many tokens, no known token) are warned about."""

from __future__ import annotations

import json

import pytest
from front_helpers import run_cli


@pytest.mark.parametrize("prompt", ["", "   ", "\t"], ids=["empty", "spaces", "tab"])
def test_blank_prompt_is_a_usage_error(capsys, no_model, scene, tmp_path, prompt, model):
    """`--prompt "$UNSET"` gives an empty string: exit 2 naming --prompt, nothing loaded, nothing written."""
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "predict", scene, "--model", model, "--prompt", "the roof",
                           "--prompt", prompt, "--out", out)
    assert code == 2 and "--prompt" in err and "empty" in err
    assert no_model == [] and not out.exists()


def test_option_name_read_as_the_prompt_is_a_usage_error(no_model, scene, tmp_path):
    """`--prompt $UNSET --out DIR` (no quotes) makes "--out" the prompt."""
    from rrsis_cli.errors import UsageError
    from rrsis_cli.predict import predict

    with pytest.raises(UsageError, match="--prompt is '--out', an option name"):
        predict([scene], "lavt-tiny", ["--out"], tmp_path / "o")
    assert no_model == [] and not (tmp_path / "o").exists()


def test_prompts_file_comments_blank_lines_and_repeats(capsys, no_model, scene, tmp_path, model):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# prompts for the harbour\nthe roof\n\n   # an indented comment\nthe white tank\n"
                       "the roof\n  the white tank  \n")
    code, out, err = run_cli(capsys, "predict", scene, "--model", model, "--prompts-file", prompts,
                             "--out", tmp_path / "o", "--dry-run", "--json")
    assert code == 0, err
    assert json.loads(out)["prompts"] == ["the roof", "the white tank"]
    assert "2 repeated prompt(s) dropped" in err and "line 6 repeats line 2" in err
    assert no_model == []


def test_prompts_file_with_only_comments_is_a_usage_error(capsys, no_model, scene, tmp_path, model):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# nothing yet\n\n")
    code, _, err = run_cli(capsys, "predict", scene, "--model", model, "--prompts-file", prompts,
                           "--out", tmp_path / "o")
    assert code == 2 and "--prompts-file" in err and "no prompt" in err


LONG = "the large white storage tank on the left of the road next to the small parking lot beside the harbour"


def test_long_and_unknown_prompts_are_warned_about(capsys, scene, tmp_path, model):
    """lavt-tiny reads 20 tokens: the long prompt (22 words) is cut; the emoji prompt is all [UNK]. Both are
    warned about in a real run (the model is loaded), with the token count measured without truncation."""
    from rrsis_cli.models import build_model

    net = build_model("lavt-tiny")
    ids = net.tokenizer.encode(LONG, add_special_tokens=True)
    assert len(ids) > net.max_tokens  # the premise: the model's own tokenize() would cut it
    code, _, err = run_cli(capsys, "predict", scene, "--model", model, "--prompt", LONG, "--prompt", "🛢🛢",
                           "--prompt", "the roof", "--out", tmp_path / "o", "--tile-size", "64")
    assert code == 0, err
    lines = err.splitlines()
    cut = [line for line in lines if "is cut off" in line]
    assert len(cut) == 1 and f"is {len(ids)} tokens but the model reads 20" in cut[0] and "harbour" in cut[0]
    unknown = [line for line in lines if "[UNK]" in line]
    assert len(unknown) == 1 and "🛢🛢" in unknown[0]
    assert not any("the roof" in line for line in lines if line.startswith("warning"))


def test_prompt_warnings_in_a_dry_run_without_the_model(capsys, no_model, scene, tmp_path, model):
    code, _, err = run_cli(capsys, "predict", scene, "--model", model, "--prompt", LONG, "--out",
                           tmp_path / "o", "--dry-run")
    assert code == 0 and "is cut off" in err and no_model == []
