"""Chat messages to a prompt string, with the model's own Jinja chat template, as transformers renders it.

A chat model only answers well in the exact format it was trained on, and that format is the template
shipped with its tokenizer. The rendering here mirrors transformers 5.23's ``render_jinja_template`` and
``apply_chat_template`` (``transformers/utils/chat_template_utils.py``) without importing transformers:

- an ``ImmutableSandboxedEnvironment`` (templates come from the Hub: untrusted code) with
  ``trim_blocks``/``lstrip_blocks`` and the ``loopcontrols`` extension; a no-op ``{% generation %}`` tag;
- a ``tojson`` filter that does not HTML-escape (``json.dumps`` with ``ensure_ascii=False``), and globals
  ``raise_exception``, ``strftime_now``, a ``dict`` and a ``namespace`` that refuse dunder tricks;
- variables: ``messages``, ``tools``, ``documents`` (None), ``add_generation_prompt``, the tokenizer's named
  special tokens (``bos_token``, ``eos_token``, ...) and any extra keyword, extras winning;
- keys whose value is None are dropped from each message first (OpenAI clients send ``"content": null``).

A template's ``raise_exception`` becomes a :class:`~gpux.errors.UsageError` with its message: it is how a
template says the conversation is malformed (roles out of order, a system message where none is allowed).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from gpux.errors import UsageError

_MESSAGE_HINT = 'e.g. [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]'


def render_chat(template: str, messages: list[dict], *, add_generation_prompt: bool = True,
                special_tokens: dict[str, str] | None = None, tools: list[dict] | None = None,
                **extra: Any) -> str:
    """Render ``messages`` with ``template``; ``special_tokens`` maps e.g. ``"bos_token"`` to ``"<s>"``."""
    import jinja2

    _validate(messages)
    if tools is not None and (not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools)):
        raise UsageError('"tools" must be a list of JSON-schema objects',
                         hint='e.g. "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]')
    compiled = _compile(template)
    chat = [{k: v for k, v in m.items() if v is not None} for m in messages]
    variables = {**(special_tokens or {}), **extra}
    try:
        return compiled.render(messages=chat, tools=tools, documents=None,
                               add_generation_prompt=add_generation_prompt, **variables)
    except _TemplateRaised as e:
        raise UsageError(f"the chat template refused the messages: {e}",
                         hint="fix the conversation the template complains about (roles, order, content)") from None
    except jinja2.exceptions.TemplateError as e:
        raise UsageError(f"the chat template failed: {e}",
                         hint="check the messages against the model's chat format, or pass another template") from None


def _validate(messages: Any) -> None:
    if not isinstance(messages, list) or not messages:
        raise UsageError('"messages" must be a non-empty list of {"role", "content"} objects', hint=_MESSAGE_HINT)
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise UsageError(f"message {i} must be an object, not {type(m).__name__}", hint=_MESSAGE_HINT)
        role = m.get("role")
        if not isinstance(role, str) or not role:
            raise UsageError(f'message {i} needs a "role" string', hint=_MESSAGE_HINT)
        if "content" not in m:
            raise UsageError(f'message {i} needs a "content" string', hint=_MESSAGE_HINT)
        content = m["content"]
        if content is not None and not isinstance(content, str):
            raise UsageError(f'message {i}: "content" must be a string, not {type(content).__name__}',
                             hint=_MESSAGE_HINT)


class _TemplateRaised(Exception):
    """What ``raise_exception`` raises, told apart from Jinja's own errors so its message passes through."""


@lru_cache(maxsize=16)
def _compile(template: str) -> Any:
    """The compiled template, in an environment built as transformers builds it (cached like theirs)."""
    import jinja2
    import jinja2.ext
    import jinja2.nodes
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class _Generation(jinja2.ext.Extension):
        # transformers' AssistantTracker: `{% generation %}...{% endgeneration %}` marks the assistant's
        # tokens for training masks; rendering a prompt only needs its body.
        tags = {"generation"}  # noqa: RUF012 - Jinja reads this class attribute

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller: Any) -> str:
            return str(caller())

    def raise_exception(message: str) -> None:
        raise _TemplateRaised(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None,
               separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt: str) -> str:
        return datetime.now().strftime(fmt)

    class TemplateDict:
        def __call__(self, *args: Any, **kwargs: Any) -> dict:
            return dict(*args, **kwargs)

        def fromkeys(self, *args: Any, **kwargs: Any) -> dict:
            return dict.fromkeys(*args, **kwargs)

    class TemplateNamespace(jinja2.utils.Namespace):
        def __init__(*args: Any, **kwargs: Any) -> None:  # Jinja's Namespace signature: `self` may be a key
            self, rest = args[0], args[1:]
            attrs = dict(*rest, **kwargs)
            for name in attrs:
                TemplateNamespace._check_name(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name: str, value: Any) -> None:
            TemplateNamespace._check_name(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check_name(name: Any) -> None:
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(
                    f"chat templates cannot store underscore-prefixed attributes on a namespace: {name!r}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[_Generation, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    env.globals["dict"] = TemplateDict()
    env.globals["namespace"] = TemplateNamespace
    try:
        return env.from_string(template)
    except jinja2.exceptions.TemplateSyntaxError as e:
        raise UsageError(f"the chat template is not valid Jinja: {e.message} (line {e.lineno})",
                         hint="fix the template, or pass another one") from None


def find_template(folder: Path) -> str | None:
    """The chat template shipped in a model folder, or None; the same precedence as transformers.

    ``chat_template.jinja`` wins over ``tokenizer_config.json``'s ``chat_template``, which is a string or a
    list of ``{"name", "template"}`` of which the one named ``"default"`` is taken.
    """
    folder = Path(folder)
    jinja_file = folder / "chat_template.jinja"
    if jinja_file.is_file():
        return jinja_file.read_text(encoding="utf-8")
    config_file = folder / "tokenizer_config.json"
    if not config_file.is_file():
        return None
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    template = config.get("chat_template") if isinstance(config, dict) else None
    if isinstance(template, str):
        return template
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        default = named.get("default")
        return default if isinstance(default, str) else None
    return None
