"""`forge-trl serve`: a trained final/ is exported on the fly, served by transformers' own OpenAI-compatible server and
answers an OpenAI client exactly as forge's bench generation does; SIGTERM stops it cleanly; mistakes are one line
with exit status 2 before anything loads."""

from __future__ import annotations

import importlib.util
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from forge_trl.commands import run_subcommand
from forge_trl.commands.serve import (
    cache_key,
    check_port_free,
    fit_response_template,
    fitted_view,
    resolve_served,
    serve_cache,
)
from forge_trl.errors import EXIT_USER_ERROR, ConfigError

REPO = Path(__file__).resolve().parent.parent
# The briefly trained tiny model answers this with ordinary tokens (no role marker or end of turn within 8 tokens).
PROMPT = "Hello"
needs_server = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("fastapi", "uvicorn", "openai")),
    reason="needs the serve extra (pip install 'forge_trl[serve]')",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve_in_process(*argv: str) -> int:
    return run_subcommand("serve", list(argv))


def one_line_error(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    return err[0]


@pytest.fixture(scope="module")
def final(tmp_path_factory) -> Path:
    """A briefly trained dense_lora SFT checkpoint of the tiny model."""
    from tests.injection_support import train_in_process

    root = tmp_path_factory.mktemp("serve")
    checkpoint, _, _ = train_in_process(root / "sft", "task=sft", "data=demo_sft", "data.max_rows=16", steps=2)
    return checkpoint


class Announcement:
    """Reads the server command's stdout in a thread; `wait()` returns the base URL and model name it prints."""

    def __init__(self, proc: subprocess.Popen):
        self.proc, self.lines = proc, queue.Queue()
        threading.Thread(target=lambda: [self.lines.put(line) for line in proc.stdout], daemon=True).start()

    def wait(self, timeout: float) -> tuple[str, str]:
        found: dict[str, str] = {}
        deadline = time.monotonic() + timeout
        while len(found) < 2:
            assert self.proc.poll() is None, f"serve exited with {self.proc.returncode}: {self.proc.stderr.read()}"
            assert time.monotonic() < deadline, "serve did not announce a ready server"
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                continue
            key, _, value = line.strip().partition(": ")
            if key in ("base_url", "model"):
                found[key] = value.strip()
        return found["base_url"], found["model"]


def bench_responses(final: Path, tmp_path: Path, base_url: str, model_name: str) -> dict[str, list[str]]:
    """Responses of one bench run over the checkpoint and the server (bench.targets), per target label."""
    from forge_trl.bench.runner import run_bench
    from forge_trl.config.bench import ApiTarget, BenchConfig

    (tmp_path / "prompts.jsonl").write_text(json.dumps({"prompt": PROMPT}) + "\n", encoding="utf-8")
    pair = {"prompt": PROMPT, "chosen": "Hi.", "rejected": "Go away."}
    (tmp_path / "pairs.jsonl").write_text(json.dumps(pair) + "\n", encoding="utf-8")
    cfg = BenchConfig(
        prompts=str(tmp_path / "prompts.jsonl"),
        pairs=str(tmp_path / "pairs.jsonl"),
        max_new_tokens=8,
        plots=False,
        targets=[ApiTarget(base_url=base_url, model=model_name, name="served")],
    )
    run_bench([str(final)], cfg, tmp_path / "bench")
    responses: dict[str, list[str]] = {}
    for line in (tmp_path / "bench" / "bench_results.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        responses.setdefault(record["target"], []).append(record["response"])
    return responses


@needs_server
def test_served_checkpoint_answers_an_openai_client_as_the_bench_does_and_stops_on_sigterm(final, tmp_path):
    from openai import OpenAI

    from forge_trl.bench.metrics import generate
    from forge_trl.models.loading import load_for_inference

    # The export is made once (here), and the server command reuses it.
    served = resolve_served(str(final))
    assert Path(served.model).parent == serve_cache() / "exports" and served.log_dir == final.parent
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "forge_trl.serve", f"checkpoint={final}", f"port={port}"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "NO_PROXY": "127.0.0.1,localhost"},
    )
    try:
        announced = Announcement(proc)
        # forge's own greedy answer, computed while the server starts
        model, tokenizer, _ = load_for_inference(str(final))
        expected = generate(model, tokenizer, [PROMPT], max_new_tokens=8)[0]
        assert expected.strip()

        base_url, model_name = announced.wait(timeout=180)
        assert base_url == f"http://127.0.0.1:{port}/v1" and model_name == served.model
        client = OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=120)
        assert model_name in [m.id for m in client.models.list().data]
        reply = client.chat.completions.create(
            model=model_name, messages=[{"role": "user", "content": PROMPT}], temperature=0, max_tokens=8
        )
        assert reply.choices[0].message.content == expected
        assert reply.usage.completion_tokens <= 8
        # forge's bench with the served model as an API target answers each prompt as it does for the checkpoint.
        assert bench_responses(final, tmp_path, base_url, model_name) == {"served": [expected], "sft": [expected]}

        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, proc.stderr.read()
        assert time.monotonic() - started < 10
    finally:
        if proc.poll() is None:
            proc.kill()  # the server gets SIGTERM when its parent dies
            proc.wait()
    check_port_free("127.0.0.1", port)  # nothing is left listening
    log = (final.parent / "serve.log").read_text(encoding="utf-8")
    assert "reusing the export" in log and "Uvicorn running on" in log
    assert "Application shutdown complete" in log and "stopped (SIGTERM)" in log


@needs_server
def test_a_chat_template_foreign_to_the_family_gets_a_fitted_reply_parser():
    """forge-tiny is a Qwen3 with its own turn markers: transformers' server would parse its replies with Qwen's
    response template and echo the whole prompt back. It is served through a cached view whose tokenizer carries a
    parser for its own template."""
    from transformers import AutoTokenizer

    from forge_trl.models.tiny import ensure_tiny

    tiny = ensure_tiny("forge-tiny")
    view = fitted_view(tiny, None)
    assert view.parent == serve_cache() / "views" and fitted_view(tiny, None) == view
    assert (view / "model.safetensors").resolve() == (tiny / "model.safetensors").resolve()
    tokenizer = AutoTokenizer.from_pretrained(str(view))
    messages = [{"role": "user", "content": "Hi"}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    reply = tokenizer("hello world", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert tokenizer.parse_response(reply, prefix=prompt)["content"] == "hello world"


QWEN_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@needs_server
@pytest.mark.parametrize("model_type, template", [("qwen3", QWEN_TEMPLATE), ("llama", None)])
def test_a_model_whose_replies_the_server_parses_right_is_left_as_it_is(tmp_path, model_type, template):
    """Qwen's own turn markers on a Qwen model, or a family transformers parses no replies of: nothing to fit."""
    from transformers import AutoTokenizer

    from forge_trl.models.tiny import ensure_tiny

    tokenizer = AutoTokenizer.from_pretrained(str(ensure_tiny("forge-tiny")))
    tokenizer.chat_template = template or tokenizer.chat_template
    tokenizer.save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type}))
    assert fit_response_template(tmp_path, None) is None
    assert fitted_view(tmp_path, None) == tmp_path


def test_a_busy_port_is_one_line_and_exit_2_before_anything_loads(tmp_path, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        status = serve_in_process(f"checkpoint={tmp_path / 'never_read'}", f"port={port}")
    assert status == EXIT_USER_ERROR
    assert f"port {port} is already in use" in one_line_error(capsys)


def test_a_missing_checkpoint_is_one_line_and_exit_2(tmp_path, capsys):
    missing = tmp_path / "run" / "final"
    assert serve_in_process(f"checkpoint={missing}", f"port={free_port()}") == EXIT_USER_ERROR
    assert f"checkpoint '{missing}' does not exist" in one_line_error(capsys)


@pytest.mark.parametrize(
    "files, message",
    [
        ({"load_mixture_lora.py": ""}, "its export loads only with load_mixture_lora.py"),
        ({"load_moe_expert_lora.py": ""}, "serve takes dense_lora, native_moe_expert_lora, full"),
        ({"forge_export.json": json.dumps({"head": "seq_cls", "source": "gone"})}, "is a reward model"),
    ],
)
def test_exports_a_generic_server_cannot_load_are_refused_in_one_line(tmp_path, capsys, files, message):
    export = tmp_path / "export"
    export.mkdir()
    (export / "config.json").write_text("{}")
    for name, text in files.items():
        (export / name).write_text(text)
    assert serve_in_process(f"checkpoint={export}", f"port={free_port()}") == EXIT_USER_ERROR
    assert message in one_line_error(capsys)


def test_a_mixture_lora_checkpoint_is_refused_before_it_is_exported(tmp_path, capsys):
    final = tmp_path / "run" / "final"
    final.mkdir(parents=True)
    info = {"format_version": 2, "task": "sft", "head": "causal_lm", "base_model": "forge-tiny"}
    (final / "forge_run.json").write_text(json.dumps({**info, "injection": {"name": "mixture_lora"}}))
    exports = serve_cache() / "exports"
    before = set(exports.iterdir()) if exports.exists() else set()
    assert serve_in_process(f"checkpoint={final}", f"port={free_port()}") == EXIT_USER_ERROR
    assert "mixture_lora exports as base model + adapter + load_mixture_lora.py" in one_line_error(capsys)
    assert (set(exports.iterdir()) if exports.exists() else set()) == before


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed here")
def test_backend_vllm_without_vllm_is_one_line(capsys):
    assert serve_in_process("checkpoint=forge-tiny", "backend=vllm") == EXIT_USER_ERROR
    assert "backend=vllm needs vllm, not installed here" in one_line_error(capsys)


def test_the_export_cache_key_follows_the_weights(tmp_path):
    final = tmp_path / "run" / "final"
    final.mkdir(parents=True)
    weights = final / "adapter_model.safetensors"
    weights.write_bytes(b"0" * 16)
    key = cache_key(final)
    assert key.startswith("run-") and cache_key(final) == key
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 1))
    newer = cache_key(final)
    assert newer != key and newer.rsplit("-", 1)[0] == key.rsplit("-", 1)[0]  # same path part, new content part


def test_a_port_in_use_on_another_address_family_member_is_caught():
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        with pytest.raises(ConfigError, match="already in use"):
            check_port_free("127.0.0.1", busy.getsockname()[1])
