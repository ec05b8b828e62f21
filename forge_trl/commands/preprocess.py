"""`python -m forge_trl.preprocess out=<cache dir> [overwrite=true] <the training run's overrides>`.

Tokenizes `data.path` once for `task`, the model's tokenizer (`model.name_or_path`), `data.chat_template` and
`data.max_length`, and writes a cache that a run with the same overrides plus `data.format=processed
data.path=<cache dir>` trains from without tokenizing again. See forge_trl/data/preprocess.py for the format.

    python -m forge_trl.preprocess out=cache/sft task=sft data=jsonl data.path=train.jsonl data.max_length=512
    python -m forge_trl task=sft data=jsonl data.format=processed data.path=cache/sft data.max_length=512
"""

from __future__ import annotations

import logging
import sys

from forge_trl.errors import ConfigError, run_command

USAGE = ("usage: python -m forge_trl.preprocess out=<cache dir> [overwrite=true] task=<sft|pretrain|dpo> "
         "[data.path=<jsonl or dataset dir>] [model.name_or_path=...] [data.max_length=N] [other run overrides]")
OWN_KEYS = ("out", "overwrite")


def parse_args(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """(this command's own keys, the Hydra overrides for the run config)."""
    own, overrides = {}, []
    for item in argv:
        key, sep, value = item.partition("=")
        if item in ("-h", "--help"):
            raise ConfigError(USAGE)
        if not sep:
            raise ConfigError(f"unexpected argument '{item}'; {USAGE}")
        if key in OWN_KEYS:
            own[key] = value
        else:
            overrides.append(item)
    if not own.get("out"):
        raise ConfigError(f"missing out=...; {USAGE}")
    if own.get("overwrite", "false").lower() not in ("true", "false"):
        raise ConfigError(f"overwrite: expected true|false, got '{own['overwrite']}'")
    return own, overrides


def preprocess(own: dict[str, str], overrides: list[str]):
    from forge_trl.commands.compose import compose
    from forge_trl.config import to_typed
    from forge_trl.data.dataset import resolve_layout, resolve_paths
    from forge_trl.data.token_cache import build_cache
    from forge_trl.models.loading import load_tokenizer, resolve_source
    from forge_trl.tasks import get_task

    cfg = to_typed(compose(overrides))
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
    return build_cache(source_path, own["out"], task_name=task.name, layout=layout, data=cfg.data,
                       tokenizer=tokenizer, tokenizer_source=source.requested,
                       overwrite=own.get("overwrite", "false").lower() == "true")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    from forge_trl.commands.console import quiet_third_party_logs

    quiet_third_party_logs()

    def work() -> None:
        own, overrides = parse_args(sys.argv[1:] if argv is None else argv)
        result = preprocess(own, overrides)
        state = "up to date" if result.reused else "written"
        print(f"{result.out}: {result.rows} rows {state} ({result.rows_read} read, {result.filtered_empty} "
              f"filtered); train with data.format=processed data.path={result.out}")

    return run_command(work)


if __name__ == "__main__":
    sys.exit(main())
