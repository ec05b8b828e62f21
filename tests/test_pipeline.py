"""Pipeline paths (`make path-a` ... `make pipelines`): stage planning, chaining through final/, reuse, bench."""

from __future__ import annotations

import json

import pytest
import yaml

from forge_trl.commands import pipeline
from forge_trl.config import to_typed
from forge_trl.errors import ConfigError
from forge_trl.models.run_info import read_run_info


def test_all_five_paths_share_their_common_stages():
    stages = pipeline.plan(["a", "b", "c", "d", "e"], with_pretrain=True)
    wiring = {s.name: (s.task, s.parent, s.reward) for s in stages}
    assert wiring == {
        "pretrain": ("pretrain", None, None),
        "sft": ("sft", "pretrain", None),
        "sft-dpo": ("dpo", "sft", None),
        "sft-orpo": ("orpo", "sft", None),
        "sft-rm": ("rm", "sft", None),
        "sft-rm-ppo": ("ppo", "sft", "sft-rm"),  # path C: PPO trains the SFT policy against the RM
        "sft-dpo-rm": ("rm", "sft-dpo", None),
        "sft-dpo-rm-ppo": ("ppo", "sft-dpo", "sft-dpo-rm"),  # path D: the DPO policy
        "sft-orpo-rm": ("rm", "sft-orpo", None),
        "sft-orpo-rm-ppo": ("ppo", "sft-orpo", "sft-orpo-rm"),
    }
    order = [s.name for s in stages]
    for name, (_, parent, reward) in wiring.items():  # every stage comes after what it starts from
        for needed in (parent, reward):
            assert needed is None or order.index(needed) < order.index(name)


def test_stage_overrides_chain_final_dirs_and_pick_the_data_layout(tmp_path):
    args = pipeline.parse_args(["paths=d", "model=qwen3_0_6b", f"data={tmp_path}", "out=/runs", "task.max_steps=9"])
    for layout in ("sft", "preference", "prompt_only"):
        (tmp_path / f"{layout}.jsonl").write_text("{}\n")
    ppo = next(s for s in pipeline.plan(args.paths, args.runs_pretrain) if s.task == "ppo")
    overrides = pipeline.stage_overrides(ppo, args, tmp_path.parent / "runs")
    assert "model.name_or_path=" + str(tmp_path.parent / "runs" / "sft-dpo" / "final") in overrides
    assert "task.reward_model.checkpoint_path=" + str(tmp_path.parent / "runs" / "sft-dpo-rm" / "final") in overrides
    assert f"data.path={tmp_path / 'prompt_only.jsonl'}" in overrides and "data.layout=prompt_only" in overrides
    assert "task.max_steps=9" in overrides
    assert not args.runs_pretrain and not any(o.startswith("task.learning_rate") for o in overrides)  # task defaults


def test_recipes_are_config_applied_per_stage(tmp_path):
    """The built-in random-init models get conf/recipe/demo.yaml; recipe= names another one or none; every recipe
    entry is an ordinary run override, so a misspelt key in a recipe fails when its stage composes."""
    from forge_trl.commands.compose import compose
    from forge_trl.commands.recipes import load_recipe

    demo = load_recipe("demo")
    tiny = pipeline.parse_args(["paths=a"])
    sft = next(s for s in pipeline.plan(tiny.paths, tiny.runs_pretrain) if s.task == "sft")
    assert set(demo["sft"]) <= set(pipeline.stage_overrides(sft, tiny, tmp_path))
    assert to_typed(compose(pipeline.stage_overrides(sft, tiny, tmp_path))).task.learning_rate == 5e-4
    bare = pipeline.parse_args(["paths=a", "recipe=none"])
    assert not set(demo["sft"]) & set(pipeline.stage_overrides(sft, bare, tmp_path))

    mine = tmp_path / "mine.yaml"
    mine.write_text("sft:\n  task.learning_rate: 1.0e-5\n  task.nmu_train_epochs: 1\n")
    custom = pipeline.parse_args(["paths=a", "model=qwen3_0_6b", f"recipe={mine}"])
    overrides = pipeline.stage_overrides(sft, custom, tmp_path)
    assert "task.learning_rate=1e-05" in overrides
    with pytest.raises(ConfigError, match="task.nmu_train_epochs"):
        compose(overrides)
    with pytest.raises(ConfigError, match="recipe 'nope' not found; available: demo"):
        pipeline.parse_args(["paths=a", "recipe=nope"])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["model=tiny"], "missing paths=..."),
        (["paths="], "paths=... is required"),
        (["paths=a,f"], "unknown path 'f'"),
        (["paths=a", "pretrain=maybe"], "pretrain: expected auto|true|false"),
        (["paths=a", "stray"], "unexpected argument 'stray'"),
        (["path=a"], "unknown key 'path'; did you mean 'paths'?"),
        (["paths=a", "bench.max_rowz=3"], "unknown key 'bench.max_rowz'; did you mean 'bench.max_rows'?"),
    ],
)
def test_bad_pipeline_arguments_are_config_errors(argv, message):
    with pytest.raises(ConfigError, match=message):
        pipeline.parse_args(argv)


def test_a_data_dir_missing_a_stage_file_fails_before_training(tmp_path, capsys):
    (tmp_path / "sft.jsonl").write_text("{}\n")
    assert pipeline.main(["paths=a", "pretrain=false", f"data={tmp_path}", f"out={tmp_path / 'out'}"]) == 2
    assert "stage sft-dpo needs" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_path_d_chains_four_stages_benches_them_and_reuses_them_on_rerun(tmp_path, capsys):
    out = tmp_path / "runs"
    argv = [
        "paths=d",
        "pretrain=false",
        f"out={out}",
        "task.max_steps=2",
        "data.max_rows=16",
        "plot=false",
        "bench.max_rows=4",
        "bench.max_new_tokens=6",
        "bench.plots=false",
    ]
    assert pipeline.main(argv) == 0
    first = capsys.readouterr().out
    for stage, parent in (("sft-dpo", "sft"), ("sft-dpo-rm", "sft-dpo"), ("sft-dpo-rm-ppo", "sft-dpo")):
        info = read_run_info(out / stage / "final")
        assert info.parent == str((out / parent / "final").resolve())
        assert info.reward_model == (str((out / "sft-dpo-rm" / "final").resolve()) if stage.endswith("ppo") else None)
    ppo_cfg = yaml.safe_load((out / "sft-dpo-rm-ppo" / "final" / "resolved_config.yaml").read_text())
    assert ppo_cfg["task"]["reward_model"]["checkpoint_path"] == str(out / "sft-dpo-rm" / "final")

    summary = json.loads((out / "pipeline_summary.json").read_text())
    rows = {row["label"]: row for row in summary["checkpoints"]}
    assert list(rows) == ["base", "sft", "sft-dpo", "sft-dpo-rm", "sft-dpo-rm-ppo"]
    assert rows["sft-dpo-rm"]["kind"] == "reward model" and "rm_accuracy" in rows["sft-dpo-rm"]
    # PPO is scored by its own RM, next to the policy it started from.
    assert "rm_score" in rows["sft-dpo-rm-ppo"] and "rm_score_gain" in rows["sft-dpo-rm-ppo"]
    assert "| sft-dpo-rm-ppo |" in first

    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("*/final/forge_run.json")}
    assert pipeline.main(argv) == 0
    assert capsys.readouterr().out.count("reusing") == 4
    assert mtimes == {p: p.stat().st_mtime_ns for p in out.glob("*/final/forge_run.json")}
