"""The documentation's complete examples run as written, and print what they promise."""

import contextlib
import io
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _python_blocks(page: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "docs" / page).read_text(encoding="utf-8"), re.S)


@pytest.mark.slow
def test_your_model_example_quantizes_and_exports_bit_exactly():
    pytest.importorskip("onnxruntime", reason="the example runs the exported model in onnxruntime (test extra)")
    blocks = _python_blocks("your-model.md")
    assert len(blocks) == 1
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        exec(compile(blocks[0], "your-model.md", "exec"), {"__name__": "your_model_example"})
    text = output.getvalue()
    assert "('conv', 'features.0')" in text and "('batch_norm', 'norm')" in text
    assert "logits differing from quantref's prediction: 0" in text
    agreement = float(re.search(r"agree on ([\d.]+)%", text).group(1))
    assert agreement >= 95.0
