"""``gpux chat``: talk to a text-generation model in the terminal, as ``ollama run`` does.

With a PROMPT it streams one answer and exits. Without one it is an interactive, multi-turn chat:
``/bye`` (or Ctrl-D) leaves, Ctrl-C stops the answer being written (not the chat), ``/clear`` forgets
the conversation. ``--verbose`` prints ollama's figures after each answer: durations, prompt-eval and
eval counts and rates, time to first token.
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any, Optional

import typer

from gpux.cli import common
from gpux.errors import UsageError

if TYPE_CHECKING:
    from gpux.tasks.generation import Generation

HELP = "Commands: /bye (or Ctrl-D) leaves, /clear forgets the conversation, Ctrl-C stops an answer."


def chat(
    model: str = typer.Argument(..., help="A text-generation model: a built name, Hub id, folder or .gguf file."),
    prompt: Optional[str] = typer.Argument(None, help="Answer this one prompt and exit (interactive without it)."),  # noqa: UP007
    system: Optional[str] = typer.Option(None, "--system", help="A system message that opens the chat."),  # noqa: UP007
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", min=1, help="Longest answer, in tokens."),  # noqa: UP007
    temperature: Optional[float] = typer.Option(None, "--temperature", min=0.0, help="0 answers greedily."),  # noqa: UP007
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed for sampling (same seed, same answer)."),  # noqa: UP007
    provider: Optional[str] = typer.Option(None, "--provider", "-p", help="auto, cpu, cuda, ..."),  # noqa: UP007
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="Intra-op threads."),  # noqa: UP007
    verbose: bool = typer.Option(False, "--verbose", help="Print timings and rates after each answer."),
) -> None:
    """Chat with MODEL: stream its answers to the terminal."""
    from gpux.engine.model import load

    bundle = common.bundle_or_pull(model)  # a first pull is not "load duration"; it says so itself
    start = time.perf_counter()
    m = load(bundle, provider, intra_op_threads=threads, log_level=common.ort_log_level())
    task = m.task
    if task is None or m.bundle.manifest.task != "text-generation":
        raise UsageError(f"{m.name} is a {m.bundle.manifest.task or 'raw-tensor'} model, not a text-generation one",
                         hint=f"use `gpux run {model} --input ...` for it")
    load_s = time.perf_counter() - start
    params: dict[str, Any] = {"max_new_tokens": max_new_tokens}
    if temperature is not None:
        params.update(temperature=temperature, do_sample=temperature > 0)
    if seed is not None:
        params["seed"] = seed
    params = {k: v for k, v in params.items() if v is not None}
    history: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    gen: Generation = task  # type: ignore[assignment]
    if prompt is not None:
        _answer(gen, history, prompt, params, verbose, load_s)
        return
    if sys.stdin.isatty():
        common.err_console().print(HELP, markup=False, highlight=False)
        import signal

        # Ctrl-C must stop an answer even when gpux was started with SIGINT ignored (a background job, nohup):
        # Python leaves an inherited SIG_IGN in place, and the terminal's Ctrl-C would then do nothing.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    while True:
        try:
            line = input(">>> ")
        except EOFError:
            break
        except KeyboardInterrupt:
            print("\nUse Ctrl + d or /bye to exit.")
            continue
        text = line.strip()
        if not text:
            continue
        if text in ("/bye", "/exit"):
            break
        if text == "/clear":
            history = history[:1] if system else []
            print("Cleared the conversation.")
            continue
        if text.startswith("/"):
            print(f"Unknown command {text.split()[0]!r}. {HELP}")
            continue
        _answer(gen, history, text, params, verbose, load_s)
        load_s = 0.0


def _answer(gen: Generation, history: list[dict[str, str]], text: str, params: dict[str, Any], verbose: bool,
            load_s: float) -> None:
    """Stream one answer; on Ctrl-C stop it and keep what was said. The turn joins ``history``."""
    from gpux.generate.loop import Timings

    turn = [*history, {"role": "user", "content": text}]
    payload: dict[str, Any] = {"messages": turn} if gen.template else {"inputs": text}
    payload["parameters"] = params
    timings = Timings()
    pieces: list[str] = []
    tokens = 0
    requests = gen.items(payload)
    prompt_tokens = len(requests[0].ids)
    stream = gen.stream_requests(requests, timings)
    try:
        for token in stream:
            tokens += 1
            if token.text:
                pieces.append(token.text)
                sys.stdout.write(token.text)
                sys.stdout.flush()
    except KeyboardInterrupt:
        stream.close()
        timings.end = time.perf_counter()
    sys.stdout.write("\n")
    sys.stdout.flush()
    history[:] = [*turn, {"role": "assistant", "content": "".join(pieces)}]
    if verbose:
        _report(timings, prompt_tokens, tokens, load_s)


def _report(t: Any, prompt_tokens: int, tokens: int, load_s: float) -> None:
    """ollama's --verbose block, on stderr."""
    end = t.end or time.perf_counter()
    first = t.first or end
    prompt_s, eval_s = first - t.start, end - first
    lines = [
        ("total duration", f"{end - t.start + load_s:.3f}s"),
        ("load duration", f"{load_s * 1e3:.1f}ms"),
        ("prompt eval count", f"{prompt_tokens} token(s)"),
        ("prompt eval duration", f"{prompt_s * 1e3:.1f}ms"),
        ("prompt eval rate", f"{prompt_tokens / prompt_s:.2f} tokens/s" if prompt_s > 0 else "-"),
        ("eval count", f"{tokens} token(s)"),
        ("eval duration", f"{eval_s * 1e3:.1f}ms"),
        ("eval rate", f"{(tokens - 1) / eval_s:.2f} tokens/s" if tokens > 1 and eval_s > 0 else "-"),
        ("time to first token", f"{prompt_s * 1e3:.1f}ms"),
    ]
    for name, value in lines:
        sys.stderr.write(f"{name + ':':<22}{value}\n")
