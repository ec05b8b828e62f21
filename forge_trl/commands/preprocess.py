"""`forge-trl preprocess out=<cache dir> [overwrite=true] <the training run's overrides>` (also
`python -m forge_trl.preprocess`).

Tokenizes `data.path` once for `task`, the model's tokenizer (`model.name_or_path`), `data.chat_template` and
`data.max_length`, and writes a cache that a run with the same overrides plus `data.format=processed
data.path=<cache dir>` trains from without tokenizing again. See forge_trl/data/preprocess.py for the format.

    forge-trl preprocess out=cache/sft task=sft data=jsonl data.path=train.jsonl data.max_length=512
    python -m forge_trl task=sft data=jsonl data.format=processed data.path=cache/sft data.max_length=512
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from typing import List

from forge_trl.commands.args import KeyValueParser, passthrough, run_config_roots


@dataclass
class PreprocessArgs:
    """Tokenize a training run's data once (tasks sft, pretrain, dpo) into a cache that the same run trains from
    with data.format=processed data.path=<out>."""

    # The cache directory to write.
    out: str
    # Replace a cache that was built for another setup.
    overwrite: bool = False
    # The training run's overrides (task, data.*, model.*, ...), as for `forge-trl train`.
    overrides: List[str] = field(default_factory=list, metadata=passthrough("<run key>=<value>", run_config_roots))


PARSER = KeyValueParser(
    PreprocessArgs,
    "preprocess",
    example="forge-trl preprocess out=cache/sft task=sft data=jsonl data.path=data/sft.jsonl data.max_length=512",
)


def parse_args(argv: list[str]) -> PreprocessArgs:
    return PARSER.parse(argv)


def preprocess(args: PreprocessArgs):
    from forge_trl.commands.compose import compose
    from forge_trl.config import to_typed
    from forge_trl.data.dataset import resolve_layout, resolve_paths
    from forge_trl.data.token_cache import build_cache
    from forge_trl.models.loading import load_tokenizer, resolve_source
    from forge_trl.tasks import get_task

    cfg = to_typed(compose(args.overrides))
    task = get_task(cfg.task.name)()
    layout = resolve_layout(task, cfg.data)
    if cfg.data.eval_path is not None:
        logging.getLogger("forge_trl").warning(
            "preprocess tokenizes data.path only; run it again with data.path=%s for the eval cache",
            cfg.data.eval_path,
        )
    source_path, _ = resolve_paths(cfg.data, layout)
    source = resolve_source(cfg.model.name_or_path)
    tokenizer = load_tokenizer(source.tokenizer_path, trust_remote_code=cfg.model.trust_remote_code)
    return build_cache(
        source_path,
        args.out,
        task_name=task.name,
        layout=layout,
        data=cfg.data,
        tokenizer=tokenizer,
        tokenizer_source=source.requested,
        overwrite=args.overwrite,
    )


def main(argv: list[str] | None = None) -> int:
    def work(args: PreprocessArgs) -> None:
        result = preprocess(args)
        state = "up to date" if result.reused else "written"
        print(
            f"{result.out}: {result.rows} rows {state} ({result.rows_read} read, {result.filtered_empty} "
            f"filtered); train with data.format=processed data.path={result.out}"
        )

    return PARSER.run(argv, work)  # no log file: the cache directory holds only the cache


if __name__ == "__main__":
    sys.exit(main())
