"""The README's webhook verification recipe works on what the relay really signs."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

from relay.signing import sign

README = Path(__file__).resolve().parent.parent / "README.md"


def _recipe() -> Callable[[str, str, bytes], bool]:
    text = README.read_text()
    block = re.search(r"```python\n(.*?def verify_pulsewire_signature.*?)```", text, re.S)
    assert block, "README lost its webhook verification recipe"
    namespace: dict[str, object] = {}
    exec(block.group(1), namespace)
    verify = namespace["verify_pulsewire_signature"]
    assert callable(verify)
    return verify  # type: ignore[return-value]


def test_readme_recipe_verifies_a_relay_signature() -> None:
    verify = _recipe()
    body = b'{"alert_id": 7, "severity": "red"}'
    header = sign("whsec_test", body)
    assert verify("whsec_test", header, body)
    assert not verify("whsec_other", header, body)
    assert not verify("whsec_test", header, body + b" ")
    stale = sign("whsec_test", body, timestamp=int(time.time()) - 3600)
    assert not verify("whsec_test", stale, body)
