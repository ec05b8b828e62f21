"""`forge-trl serve checkpoint=<run>/final [port=8000]` (also `python -m forge_trl.serve`): put a model behind an
OpenAI-compatible chat-completions API, the one every chat client, judge and eval harness speaks.

forge does not implement the API: it runs an existing server as a child process.

- backend=transformers (the default) runs transformers' own server, `transformers serve <dir>`
  (transformers.cli.serve: FastAPI + uvicorn, needs `transformers[serving]`). The model is pinned
  (`force_model`): loaded before the server listens, never unloaded, and answered for under its path.
- backend=vllm runs `vllm serve <dir>` where vLLM is installed (CUDA machines).

What is served:
- a forge adapter checkpoint (<run>/final of a LoRA or MoE-LoRA run) is exported first with
  forge_trl.export.export_checkpoint into `<FORGE_TRL_CACHE>/serve/`, keyed by the checkpoint's path and the size and
  mtime of its files; a re-serve of the same weights reuses it, a newer checkpoint at that path replaces it;
- a full-parameter checkpoint, an export directory, a model directory, a hub id or forge-tiny is served as it is.
An export that needs its loader script (mixture_lora; moe_expert_lora outside Qwen3/Llama/Mistral; a reward model)
cannot be loaded by a generic server and is refused in one line. The checkpoint's recorded
`data.chat_template_kwargs` become the server's defaults, so prompts render as they did in training and in the bench.
transformers' server picks its reply parser by model_type (Qwen, Gemma 4); a model of such a family with another chat
template (forge-tiny) gets a parser fitted to its own template instead (`fit_response_template`), written into the
export's tokenizer_config.json, or into a cached view of a directory forge does not own.

The port is checked before anything loads; the server's output goes to `serve.log` in the checkpoint's run directory
(or `log_dir`); SIGINT/SIGTERM stop the server (SIGTERM, then SIGKILL after STOP_TIMEOUT_S) and exit 0. The child
runs in its own session (a Ctrl+C reaches forge only, which stops it) and gets SIGTERM if forge itself dies.
"""

from __future__ import annotations

import errno
import hashlib
import importlib.util
import json
import logging
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

from forge_trl.commands.args import KeyValueParser
from forge_trl.errors import ConfigError, ModelError, require

log = logging.getLogger("forge_trl")

LOG_FILE = "serve.log"
TOKENIZER_CONFIG = "tokenizer_config.json"
# What each backend needs importable, and how to install it.
BACKEND_NEEDS = {
    "transformers": (("fastapi", "uvicorn", "openai"), "pip install 'forge_trl[serve]' (transformers[serving])"),
    "vllm": (("vllm",), "pip install vllm, on a CUDA machine; backend=transformers serves without it"),
}
SERVABLE = "dense_lora, native_moe_expert_lora, full, and moe_expert_lora on Qwen3/Llama/Mistral (exported natively)"
STOP_TIMEOUT_S = 15.0
POLL_S = 0.25
# Exports are re-made when forge changes how it names them (bump it when the export format changes).
CACHE_VERSION = "1"
_CACHE_NAME = re.compile(r"(?P<stem>.+)-(?P<path>[0-9a-f]{8})-[0-9a-f]{12}")


@dataclass
class ServeArgs:
    """Serve a model behind an OpenAI-compatible API (POST /v1/chat/completions, GET /v1/models) through an existing
    server: transformers' own (`transformers serve`) or vLLM. A forge adapter checkpoint is exported on the fly (and
    cached); SIGINT/SIGTERM stop the server; its output goes to serve.log."""

    # The model: a forge run's final/ directory, an export directory, a model directory, a hub id or forge-tiny.
    checkpoint: str
    # The server: transformers (`transformers serve`, CPU or GPU) or vllm (`vllm serve`, where vLLM is installed).
    backend: Literal["transformers", "vllm"] = "transformers"
    # The address to listen on; 127.0.0.1 keeps the server on this machine (0.0.0.0 opens it to the network).
    host: str = "127.0.0.1"
    # The port to listen on.
    port: int = 8000
    # The device (backend=transformers): auto (a GPU when there is one), cpu, cuda, cuda:1, ...
    device: str = "auto"
    # The weights' dtype in the server: auto (as stored; forge exports are float32), bfloat16, float16, float32.
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    # The directory of serve.log; null: the checkpoint's run directory (the parent of final/), else the serve cache.
    log_dir: Optional[str] = None
    # More arguments for the server's command line, as one string, e.g. "--attn-implementation sdpa".
    server_args: str = ""

    def __post_init__(self):
        require(0 < self.port < 65536, "port", f"must be 1..65535, got {self.port}")
        require(bool(self.host.strip()), "host", "must not be empty")
        require(
            self.backend == "transformers" or self.device == "auto",
            "device",
            "applies to backend=transformers; vLLM takes its GPUs from CUDA_VISIBLE_DEVICES",
        )


PARSER = KeyValueParser(ServeArgs, "serve", example="forge-trl serve checkpoint=outputs/sft/final port=8000")


@dataclass
class Served:
    """What the server is given: a directory or hub id, where its log goes, and the chat template's defaults."""

    model: str  # the model argument of the server, which is also the API's model name
    log_dir: Path
    chat_template_kwargs: dict | None = None


# ----- the checkpoint --------------------------------------------------------------------------------------------
def serve_cache() -> Path:
    from forge_trl.models.tiny import cache_root

    return cache_root() / "serve"


def resolve_served(checkpoint: str, log_dir: str | None = None, backend: str = "transformers") -> Served:
    """What to serve for `checkpoint`, refusing what a generic server cannot load before anything loads: a forge
    adapter checkpoint is exported (or its cached export reused); for transformers' server, a local directory whose
    chat template it would misparse is served through a view (`fitted_view`)."""

    def fitted(path: Path, kwargs: dict | None) -> str:
        return str(fitted_view(path, kwargs) if backend == "transformers" else path)

    from forge_trl.export import EXPORT_INFO
    from forge_trl.models.run_info import read_run_info
    from forge_trl.models.tiny import TINY_NAMES, ensure_tiny

    path = Path(checkpoint).expanduser()
    if checkpoint in TINY_NAMES:
        path = ensure_tiny(checkpoint)
    elif not path.exists():
        parts = Path(checkpoint).parts  # a hub id is `name` or `org/name`, and `org` is not a local directory
        if checkpoint.startswith((".", "/", "~")) or len(parts) > 2 or Path(parts[0]).is_dir():
            raise ModelError(
                f"checkpoint '{checkpoint}' does not exist; expected a forge run's final/ directory, an export or "
                "model directory, a hub id (org/name) or forge-tiny"
            )
        return Served(checkpoint, Path(log_dir) if log_dir else serve_cache() / "logs" / _safe_name(checkpoint))
    if not path.is_dir():
        raise ModelError(f"checkpoint '{checkpoint}' is a file; expected a model directory, <run>/final or a hub id")
    path = path.resolve()
    info = read_run_info(path)
    if info is not None:  # a forge checkpoint
        logs = Path(log_dir) if log_dir else path.parent
        kwargs = info.data.get("chat_template_kwargs") or None
        _refuse_head(checkpoint, info.head, f"task={info.task}")
        if info.injection_name == "full":
            return Served(fitted(path, kwargs), logs, kwargs)
        if info.injection_name == "mixture_lora":
            raise _bundle_error(checkpoint, "mixture_lora exports as base model + adapter + load_mixture_lora.py")
        return Served(str(cached_export(path, kwargs)), logs, kwargs)
    if not (path / "config.json").is_file():
        raise ModelError(
            f"checkpoint '{checkpoint}' is not a model directory (no config.json, no forge_run.json); expected "
            "<run>/final, an export directory, a model directory or a hub id"
        )
    refuse_loader_scripts(checkpoint, path)
    run_dir, kwargs = None, None
    export_info = path / EXPORT_INFO
    if export_info.is_file():  # a forge export: its head, and the run it came from (for the log and the template)
        exported = json.loads(export_info.read_text(encoding="utf-8"))
        _refuse_head(checkpoint, exported.get("head", "causal_lm"), "an exported reward model")
        source = Path(exported["source"]) if exported.get("source") else None
        source_info = read_run_info(source) if source is not None and source.is_dir() else None
        if source is not None and source_info is not None:
            run_dir, kwargs = source.parent, source_info.data.get("chat_template_kwargs") or None
    logs = Path(log_dir) if log_dir else run_dir or serve_cache() / "logs" / _safe_name(path.name)
    return Served(fitted(path, kwargs), logs, kwargs)


def _refuse_head(checkpoint: str, head: str, what: str) -> None:
    if head != "causal_lm":
        raise ModelError(
            f"checkpoint '{checkpoint}' is a reward model ({what}, head {head}); serve answers chat completions "
            "with a causal LM (a policy checkpoint)"
        )


def _bundle_error(checkpoint: str, why: str) -> ModelError:
    return ModelError(
        f"checkpoint '{checkpoint}' cannot be served: {why}, which a generic server cannot load; serve takes "
        f"{SERVABLE} (load the bundle in Python with its loader script)"
    )


def refuse_loader_scripts(checkpoint: str, directory: Path) -> None:
    """An export that loads only through its own script (load_mixture_lora.py, load_moe_expert_lora.py,
    load_reward_model.py) is refused."""
    scripts = sorted(p.name for p in directory.glob("load_*.py"))
    if scripts:
        raise _bundle_error(checkpoint, f"its export loads only with {', '.join(scripts)}")


def cache_key(checkpoint: Path) -> str:
    """`<run name>-<8 hex of the path>-<12 hex of the files>`: the files' names, sizes and mtimes (weights,
    forge_run.json, tokenizer), the format version and the transformers version that exported them."""
    from importlib import metadata

    digest = hashlib.sha256(f"{CACHE_VERSION}\0{metadata.version('transformers')}".encode())
    for file in sorted(p for p in checkpoint.iterdir() if p.is_file()):
        stat = file.stat()
        digest.update(f"\0{file.name}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    where = hashlib.sha256(str(checkpoint).encode()).hexdigest()[:8]
    stem = _safe_name(checkpoint.parent.name if checkpoint.name == "final" else checkpoint.name)
    return f"{stem}-{where}-{digest.hexdigest()[:12]}"


def cached_export(checkpoint: Path, template_kwargs: dict | None = None) -> Path:
    """The export of forge checkpoint `checkpoint` in the serve cache (with the response template its chat template
    needs, `fit_response_template`): reused when the checkpoint's files are unchanged, else made."""
    from forge_trl.export import EXPORT_INFO

    out = serve_cache() / "exports" / cache_key(checkpoint)
    if (out / EXPORT_INFO).is_file():
        log.info("serve: reusing the export of %s in %s", checkpoint, out)
    else:
        from forge_trl.export import export_checkpoint

        log.info("serve: exporting %s to %s (once; a re-serve of the same weights reuses it)", checkpoint, out)
        staged = out.with_name(f".{out.name}.staged-{os.getpid()}")
        export_checkpoint(str(checkpoint), str(staged), overwrite=True)
        template = fit_response_template(staged, template_kwargs)
        if template is not None:
            _write_response_template(staged / TOKENIZER_CONFIG, staged / TOKENIZER_CONFIG, template)
        shutil.rmtree(out, ignore_errors=True)
        os.replace(staged, out)
        _prune(out)
    refuse_loader_scripts(str(checkpoint), out)
    return out


def _prune(current: Path) -> None:
    """Remove the cache entries made earlier for the same source path as `current`."""
    path_hash = _CACHE_NAME.fullmatch(current.name)["path"]  # type: ignore[index]
    for entry in current.parent.iterdir():
        match = _CACHE_NAME.fullmatch(entry.name)
        if match and match["path"] == path_hash and entry != current:
            shutil.rmtree(entry, ignore_errors=True)


# ----- the reply parser ------------------------------------------------------------------------------------------
def fit_response_template(directory: Path, template_kwargs: dict | None) -> dict | None:
    """A response template for transformers' server where the one it would pick does not fit, else None.

    transformers' server parses a reply with the tokenizer's `response_template`, or else with one it picks by
    model_type (Qwen2/3/3.5, Gemma 4), which expects that family's chat template (`<|im_start|>assistant`). A model
    of such a family with another chat template (forge-tiny: Qwen3 with `<|user|>`/`<|assistant|>` turns) would get
    its whole prompt back in every reply. The fitted template starts the reply after this chat template's generation
    prompt and ends it at the first special token (end of turn, or a role marker that starts another turn)."""
    config = directory / "config.json"
    if not (directory / TOKENIZER_CONFIG).is_file() or not config.is_file():
        return None
    from types import SimpleNamespace

    from transformers import AutoTokenizer

    try:
        from transformers.cli.serving.utils import get_response_template
    except ImportError:  # a transformers without it picks no parser by model_type
        return None

    model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    picked = get_response_template(tokenizer, SimpleNamespace(config=SimpleNamespace(model_type=model_type)))
    if picked is None or not getattr(tokenizer, "chat_template", None) or "start_anchor" not in picked:
        return None  # no parsing (the reply is the generated text), the tokenizer's own, or a pattern we leave be
    messages = [{"role": "user", "content": "Hello"}]
    kwargs = dict(template_kwargs or {})
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, **kwargs)
    anchors = picked["start_anchor"] if isinstance(picked["start_anchor"], list) else [picked["start_anchor"]]
    if any(anchor in prompt for anchor in anchors):
        return None
    bare = tokenizer.apply_chat_template(messages, add_generation_prompt=False, tokenize=False, **kwargs)
    generation_prompt = prompt[len(bare) :] if prompt.startswith(bare) else ""
    if not generation_prompt.strip():
        log.warning(
            "serve: transformers parses %s replies for another chat template than this model's, and its generation "
            "prompt cannot be told apart; replies may include the prompt",
            model_type,
        )
        return None
    ends = sorted(set(tokenizer.all_special_tokens), key=len, reverse=True)
    log.info(
        "serve: %s's chat template is not the one transformers expects of model_type %s; its replies start after "
        "%r and end at a special token",
        directory.name,
        model_type,
        generation_prompt,
    )
    content = {"close_pattern": "|".join(re.escape(end) for end in ends), "content": "text"}
    return {"defaults": {"role": "assistant"}, "start_anchor": generation_prompt, "fields": {"content": content}}


def _write_response_template(source: Path, target: Path, template: dict) -> None:
    config = json.loads(source.read_text(encoding="utf-8"))
    config["response_template"] = template
    target.unlink(missing_ok=True)  # a view's symlink to the original
    target.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def fitted_view(directory: Path, template_kwargs: dict | None) -> Path:
    """`directory`, or where its chat template needs a response template (`fit_response_template`), a view of it in
    the serve cache: links to its files and a tokenizer_config.json that carries the template."""
    from forge_trl.files import write_dir_atomically

    view = serve_cache() / "views" / cache_key(directory)
    if (view / TOKENIZER_CONFIG).is_file():
        return view
    template = fit_response_template(directory, template_kwargs)
    if template is None:
        return directory

    def fill(tmp: Path) -> None:
        for entry in directory.iterdir():
            if entry.name != TOKENIZER_CONFIG:
                (tmp / entry.name).symlink_to(entry.resolve())
        _write_response_template(directory / TOKENIZER_CONFIG, tmp / TOKENIZER_CONFIG, template)

    write_dir_atomically(view, fill)
    _prune(view)
    log.info("serve: serving %s through %s (its files, and a response template for its chat template)", directory, view)
    return view


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "model"


# ----- the server ------------------------------------------------------------------------------------------------
def check_backend(backend: str) -> None:
    needs, install = BACKEND_NEEDS[backend]
    missing = [name for name in needs if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(f"backend={backend} needs {', '.join(missing)}, not installed here: {install}")


def check_port_free(host: str, port: int) -> None:
    """A one-line error now, rather than after the model has loaded, when `host:port` cannot be listened on."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise ConfigError(f"host: cannot resolve '{host}' ({exc.strerror})") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: TIME_WAIT is not "in use"
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(
                    f"port {port} is already in use on {host}; stop what listens there or pick another port="
                ) from None
            raise ConfigError(f"port: cannot listen on {host}:{port} ({exc.strerror})") from None


def local_host(host: str) -> str:
    """The address a client on this machine uses (a wildcard address listens on loopback too)."""
    host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"[{host}]" if ":" in host else host


def server_command(args: ServeArgs, served: Served) -> list[str]:
    extra = shlex.split(args.server_args)
    kwargs = json.dumps(served.chat_template_kwargs) if served.chat_template_kwargs else None
    if args.backend == "vllm":
        exe = Path(sys.executable).with_name("vllm")
        command = [str(exe)] if exe.is_file() else [sys.executable, "-m", "vllm.entrypoints.cli.main"]
        command += ["serve", served.model, "--host", args.host, "--port", str(args.port), "--dtype", args.dtype]
        return command + (["--default-chat-template-kwargs", kwargs] if kwargs else []) + extra
    # `transformers serve`, as its console script runs it (transformers.cli.transformers:main)
    command = [sys.executable, "-m", "transformers.cli.transformers", "serve", served.model]
    command += ["--host", args.host, "--port", str(args.port), "--device", args.device, "--dtype", args.dtype]
    return command + (["--chat-template-kwargs", kwargs] if kwargs else []) + extra


# Run in the child before the server: it gets SIGTERM when forge dies (even by SIGKILL), so no server outlives it.
_DIE_WITH_PARENT = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_DEATHSIG\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit(0)\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


def _launch(command: list[str], log_path: Path) -> subprocess.Popen:
    exe = shutil.which(command[0]) or command[0]
    if sys.platform.startswith("linux"):
        command = [sys.executable, "-c", _DIE_WITH_PARENT, str(os.getpid()), exe, *command[1:]]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.setdefault("HF_HUB_DISABLE_UPDATE_CHECK", "1")  # the transformers CLI asks PyPI for a newer version
    with log_path.open("ab") as output:
        return subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )


def _is_ready(url: str) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through an HTTP proxy
    try:
        with opener.open(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _stop(child: subprocess.Popen) -> None:
    """SIGTERM (the server shuts down gracefully), SIGKILL after STOP_TIMEOUT_S; then whatever else is left in its
    process group (vLLM's engine processes)."""
    if child.poll() is None:
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            log.warning("serve: the server did not stop within %.0f s of SIGTERM; killing it", STOP_TIMEOUT_S)
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    child.wait()


def _last_line(path: Path) -> str:
    lines = [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines()]
    text = next((line for line in reversed(lines) if line), "")
    return text.split("\r")[-1][-300:]


def run_server(args: ServeArgs, served: Served, log_path: Path) -> None:
    """Start the server, announce it once it answers /health, and stop it on SIGINT/SIGTERM/SIGHUP."""
    base_url = f"http://{local_host(args.host)}:{args.port}/v1"
    stop = threading.Event()
    caught: list[int] = []

    def on_signal(signum, _frame):
        caught.append(signum)
        stop.set()

    handled = [signal.SIGINT, signal.SIGTERM, *([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])]
    previous = {signum: signal.signal(signum, on_signal) for signum in handled}
    ready = False
    try:
        command = server_command(args, served)
        log.info("serve: starting %s", shlex.join(command))
        child = _launch(command, log_path)
        try:
            started = time.monotonic()
            while child.poll() is None and not stop.is_set():
                if not ready and _is_ready(base_url.removesuffix("/v1") + "/health"):
                    ready = True
                    log.info("serve: ready after %.1f s", time.monotonic() - started)
                    announce(args, served, base_url, log_path)
                stop.wait(POLL_S if not ready else 1.0)
        finally:
            _stop(child)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if caught:
        log.info("serve: stopped (%s)", signal.Signals(caught[0]).name)
        return
    when = "while serving" if ready else "before it was ready"
    raise ModelError(
        f"the {args.backend} server exited with status {child.returncode} {when}: {_last_line(log_path)} "
        f"(see {log_path})"
    )


def announce(args: ServeArgs, served: Served, base_url: str, log_path: Path) -> None:
    """The lines a user (or a script) needs: the base URL and model name to give an OpenAI client."""
    print(
        "\n".join(
            [
                f"serving {args.checkpoint} with {args.backend} (OpenAI-compatible API)",
                f"  base_url: {base_url}",
                f"  model:    {served.model}",
                f"  log:      {log_path}",
                f'  try:      curl {base_url}/chat/completions -H "Content-Type: application/json" -d '
                f"'{json.dumps({'model': served.model, 'messages': [{'role': 'user', 'content': 'Hello'}]})}'",
                "Ctrl+C (or SIGTERM) stops it.",
            ]
        ),
        flush=True,
    )


def serve(args: ServeArgs) -> None:
    from forge_trl.commands.console import log_to_file

    check_backend(args.backend)
    check_port_free(args.host, args.port)  # before anything loads
    served = resolve_served(args.checkpoint, args.log_dir, args.backend)
    log_path = log_to_file(served.log_dir / LOG_FILE)
    run_server(args, served, log_path)


def main(argv: list[str] | None = None) -> int:
    return PARSER.run(argv, serve, keeps_log=True)


if __name__ == "__main__":
    sys.exit(main())
