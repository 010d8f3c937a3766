"""`shape-proxy explain` on no_matching_rule says why each rule failed (newuser LOW): the first
`when` condition that does not match, or the claim it misses (real `shape-proxy explain`
process on config/examples/admin.yaml).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def _explain(claims: dict[str, Any]) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHAPE_PROXY_")}
    out = subprocess.run(
        [sys.executable, "-m", "proxy", "explain", "--config", "config/examples/admin.yaml",
         "--claims", json.dumps(claims), "/v1/shape?table=items&offset=-1"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.stdout, out.stderr
    report: dict[str, Any] = json.loads(out.stdout)
    return report


def test_each_rule_says_which_condition_failed() -> None:
    report = _explain({"iss": "https://auth.example.com/", "sub": "u1", "role": "admin"})
    assert report["reason"] == "no_matching_rule", report
    assert report["rules"] == [
        {"rule": "admin", "why": "when mfa: the token has no mfa claim (wants true)"},
        {"rule": "member", "why": 'when role: the claim is "admin", the rule wants "member"'},
    ]


def test_an_allowed_request_lists_no_rules() -> None:
    report = _explain({"iss": "https://auth.example.com/", "sub": "u1", "role": "member",
                       "org_id": 1})  # fmt: skip
    assert report["allowed"] and report["rule"] == "member" and "rules" not in report
