"""The whole demo (pretrain -> SFT -> ORPO) meets its acceptance bars on held-out data. About 4-5 minutes on
2 CPU cores, so it is marked slow: `make test-all` or `pytest -m slow` runs it."""

import pytest


@pytest.mark.slow
def test_demo_pipeline_improves_each_stage(tmp_path):
    from forge_trl.commands.demo import main

    summary = main(["--out", str(tmp_path / "demo")])
    by_stage = {row["stage"]: row for row in summary["stages"]}
    pretrain, sft, orpo = by_stage["pretrain"], by_stage["sft"], by_stage["orpo"]
    assert sft["checker_accuracy"] >= 0.8 and sft["checker_accuracy"] > pretrain["checker_accuracy"]
    assert orpo["preference_accuracy"] >= 0.9 and orpo["preference_accuracy"] > sft["preference_accuracy"]
    assert summary["total_seconds"] < 600
