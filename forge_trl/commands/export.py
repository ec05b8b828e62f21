"""`python -m forge_trl.export checkpoint=<run>/final out=<dir> [overwrite=true]`."""

from __future__ import annotations

import logging
import sys

from forge_trl.errors import ConfigError, run_command

USAGE = "usage: python -m forge_trl.export checkpoint=<run>/final out=<dir> [overwrite=true]"


def parse_args(argv: list[str]) -> dict[str, str]:
    args = {}
    for item in argv:
        key, sep, value = item.partition("=")
        if not sep or key not in ("checkpoint", "out", "overwrite"):
            raise ConfigError(f"unexpected argument '{item}'; {USAGE}")
        args[key] = value
    missing = [k for k in ("checkpoint", "out") if not args.get(k)]
    if missing:
        raise ConfigError(f"missing {missing[0]}=...; {USAGE}")
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    from forge_trl.commands.console import quiet_third_party_logs

    quiet_third_party_logs()

    def work() -> None:
        args = parse_args(sys.argv[1:] if argv is None else argv)
        from forge_trl.export import export_checkpoint

        export_checkpoint(args["checkpoint"], args["out"], overwrite=args.get("overwrite", "false").lower() == "true")

    return run_command(work)


if __name__ == "__main__":
    sys.exit(main())
