"""The console's gate metric chooser offers exactly the metrics a gate accepts."""

import re
from pathlib import Path

from evaluation.metrics import METRICS

DOMAINS_JS = Path(__file__).resolve().parents[2] / "service" / "console" / "domains.js"


def test_the_console_offers_every_gate_metric():
    declared = re.search(r"export const GATE_METRICS = \[([^\]]*)\]", DOMAINS_JS.read_text())
    assert declared is not None
    assert tuple(re.findall(r"'(\w+)'", declared.group(1))) == METRICS
