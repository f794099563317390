"""An Ollama ``Modelfile`` for a GGUF: the model's Jinja chat template as Ollama's Go template.

The translation renders the Jinja template with marker messages to learn each role's prefix and
suffix and the generation prompt, writes them as a Go template, and then checks the result: for
several conversations, the Go template (as Ollama fills it in) must give exactly the text the
Jinja template gives, BOS aside (llama.cpp adds it). Templates whose output is not a plain
sequence of role blocks (e.g. Llama 2's system prompt inside the first user turn) are refused
with a reason, and the bundle says the Modelfile needs its TEMPLATE written by hand. A template
that adds its own system block to a conversation without a system message (SmolLM2, Qwen2.5) is
translated with that block written before a first message of another role.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

Render = Callable[[Sequence[dict[str, str]], bool], str]
ROLES = ("system", "user", "assistant")
_MARK = "\x00{}\x00"


class Untranslatable(ValueError):
    """The chat template is not a plain sequence of role blocks."""


def _block(render: Render, bos: str, role: str, lead: Sequence[dict[str, str]] = ()) -> tuple[str, str]:
    """(prefix, suffix) of a ``role`` message rendered alone, or after the messages ``lead``."""
    mark = _MARK.format(role)
    try:
        text = render([*lead, {"role": role, "content": mark}], False)
    except Exception as e:  # the template refuses e.g. a lone assistant message
        raise Untranslatable(f"the template cannot render a lone {role} message ({e})") from None
    text = text.removeprefix(bos)
    if text.count(mark) != 1:
        raise Untranslatable(f"the {role} content appears {text.count(mark)} times")
    pre, _, suf = text.partition(mark)
    return pre, suf


def _default_system(render: Render, bos: str, system: tuple[str, str], user_pre: str) -> str:
    """The system block the template writes before a conversation that has none ("" if it writes none):
    a lone user message's prefix, less the user prefix after a system message."""
    lead = [{"role": "system", "content": "s"}]
    try:
        pre = _block(render, bos, "user", lead)[0].removeprefix(system[0] + "s" + system[1])
    except Untranslatable:  # a template without system messages
        return ""
    return user_pre[:-len(pre)] if pre and user_pre != pre and user_pre.endswith(pre) else ""


def _parts(render: Render, bos: str) -> tuple[dict[str, tuple[str, str]], str, str]:
    blocks = {role: _block(render, bos, role) for role in ROLES}
    default = _default_system(render, bos, blocks["system"], blocks["user"][0])
    for role in ("user", "assistant"):  # a lone message carries the default system block: not its own
        pre, suf = blocks[role]
        blocks[role] = (pre.removeprefix(default), suf)
    user = [{"role": "user", "content": _MARK.format("user")}]
    with_prompt = render(user, True).removeprefix(bos)
    without = render(user, False).removeprefix(bos)
    if not with_prompt.startswith(without):
        raise Untranslatable("the generation prompt is not appended at the end")
    return blocks, with_prompt[len(without):], default


def go_template(blocks: dict[str, tuple[str, str]], gen_prompt: str, default_system: str = "") -> str:
    def lit(s: str) -> str:
        return s.replace("{{", '{{ "{{" }}')

    branches = "".join(f'{{{{ {"if" if i == 0 else "else if"} eq .Role "{r}" }}}}{lit(blocks[r][0])}'
                       f'{{{{ .Content }}}}{lit(blocks[r][1])}' for i, r in enumerate(ROLES))
    loop, first = "range .Messages", ""
    if default_system:  # written before a first message that is not the system's
        loop = "range $i, $_ := .Messages"
        first = f'{{{{ if and (eq $i 0) (ne .Role "system") }}}}{lit(default_system)}{{{{ end }}}}'
    return f"{{{{- {loop} }}}}{first}{branches}{{{{ end }}}}{{{{ end }}}}{lit(gen_prompt)}"


def fill_go_template(blocks: dict[str, tuple[str, str]], gen_prompt: str, messages: Sequence[dict[str, str]],
                     default_system: str = "") -> str:
    """What Ollama makes of ``go_template(blocks, gen_prompt, default_system)`` for ``messages`` (used to
    check it)."""
    lead = default_system if messages and messages[0]["role"] != "system" else ""
    return lead + "".join(blocks[m["role"]][0] + m["content"] + blocks[m["role"]][1] for m in messages) + gen_prompt


PROBES: tuple[tuple[dict[str, str], ...], ...] = (
    ({"role": "user", "content": "Hi"},),
    ({"role": "system", "content": "Be brief."}, {"role": "user", "content": "Where does Ada live?"}),
    ({"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}),
    ({"role": "system", "content": "s"}, {"role": "user", "content": "u1\nline"},
     {"role": "assistant", "content": "a1"}, {"role": "user", "content": "u2"}),
)


def translate(render: Render, bos: str = "") -> tuple[str, list[str]]:
    """(Go template, stop strings) for a model whose Jinja template is ``render``; raises Untranslatable."""
    blocks, gen_prompt, default = _parts(render, bos)
    for probe in PROBES:
        want = render(list(probe), True).removeprefix(bos)
        got = fill_go_template(blocks, gen_prompt, probe, default)
        if got != want:
            raise Untranslatable(f"for {len(probe)} messages the Go template gives {got!r}, Jinja {want!r}")
    stops = sorted({s.strip() for s in (blocks["assistant"][1], blocks["user"][0]) if s.strip()})
    return go_template(blocks, gen_prompt, default), stops


def modelfile(gguf_name: str, render: Render | None, bos: str = "", *, adapter: str | None = None,
              eos: str | None = None) -> tuple[str, str | None]:
    """(Modelfile text, None) or (Modelfile without TEMPLATE, the reason it could not be translated)."""
    lines = [f"FROM ./{gguf_name}"] + ([f"ADAPTER ./{adapter}"] if adapter else [])
    reason = None
    stops: list[str] = []
    if render is None:
        reason = "the model has no chat template"
    else:
        try:
            template, stops = translate(render, bos)
            lines.append(f'TEMPLATE """{template}"""')
        except Untranslatable as e:
            reason = str(e)
    if eos and eos not in stops:
        stops.append(eos)
    lines += [f"PARAMETER stop {json.dumps(s)}" for s in stops]
    if reason:
        lines.insert(0, f"# TEMPLATE not written: {reason}. Write it by hand (see ollama.com/docs/template).")
    return "\n".join(lines) + "\n", reason
