"""Every ```python block of README.md runs, as written.

The blocks are read from the README at test time, so an edit that breaks an example fails here. They
run in the order they appear, in one shared namespace (a block may use the names an earlier block
made: the README's snippets continue its first example), in a temporary working directory. Blocks
in any other language (bash, text) are not run.
"""
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
RUN = ("python", "py", "python3")  # info strings whose blocks are executed

# An opening fence (``` or ~~~, up to 3 spaces of indent) with its info string, the body, and the
# closing fence of the same kind.
_FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^\n`]*)\n(?P<body>.*?)"
                    r"^ {0,3}(?P=fence)[ \t]*$", re.M | re.S)


def code_blocks(text: str) -> list[tuple[str, int, str]]:
    """``(language, first line of the body, body)`` for every fenced block of ``text``, in order."""
    blocks = []
    for m in _FENCE.finditer(text):
        language = (m.group("info").split() or [""])[0].lower()
        line = text.count("\n", 0, m.start("body")) + 1
        blocks.append((language, line, m.group("body")))
    return blocks


def python_blocks(text: str) -> list[tuple[int, str]]:
    return [(line, body) for language, line, body in code_blocks(text) if language in RUN]


def test_block_extraction():
    text = "a\n```python\nx = 1\n```\n\n```bash\nls\n```\n```\nplain\n```\n~~~py\ny = x\n~~~\n"
    assert code_blocks(text) == [("python", 3, "x = 1\n"), ("bash", 7, "ls\n"), ("", 10, "plain\n"),
                                 ("py", 13, "y = x\n")]
    assert python_blocks(text) == [(3, "x = 1\n"), (13, "y = x\n")]


def test_readme_blocks_are_all_found():
    """Every opening fence of the README is matched (an unclosed or odd fence would hide the blocks
    after it from the test below)."""
    text = README.read_text(encoding="utf-8")
    fences = re.findall(r"^ {0,3}(?:`{3,}|~{3,})", text, re.M)
    assert len(fences) == 2 * len(code_blocks(text))
    assert len(python_blocks(text)) >= 3  # the example, evaluate and contextual decomposition


def test_readme_python_blocks_run(tmp_path, monkeypatch):
    pytest.importorskip("sklearn")  # load_digits
    matplotlib = pytest.importorskip("matplotlib")  # fastattr.cd.plot_hierarchy
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__readme__"}
    with torch.random.fork_rng():  # the blocks' torch.randn calls leave other tests' global RNG alone
        torch.manual_seed(0)
        try:
            for line, body in python_blocks(README.read_text(encoding="utf-8")):
                # Padded with blank lines so a traceback points at the README's own line numbers.
                code = compile("\n" * (line - 1) + body, str(README), "exec")
                try:
                    exec(code, namespace)
                except Exception as e:
                    raise AssertionError(f"README.md's python block at line {line} failed: "
                                         f"{type(e).__name__}: {e}") from e
        finally:
            plt.close("all")
    # What the blocks say they compute.
    x = namespace["x"]
    assert namespace["attr"].shape == x.shape and namespace["beta"].shape == (x.shape[0], 16, 10)
    assert torch.allclose(namespace["beta"] + namespace["gamma"], namespace["model"](x).detach()
                          .unsqueeze(1).expand(-1, 16, -1), atol=1e-4)
    assert torch.allclose(namespace["p"], torch.tensor([0.6, 0.4, 0.0]), atol=1e-6)
    assert namespace["loss"].requires_grad and torch.isfinite(namespace["loss"])
