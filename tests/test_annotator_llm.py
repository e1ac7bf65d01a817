"""The llm judge against a local chat-completions server with scripted verdicts and failures."""

import json
import logging
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from rlp_align.core.errors import UserError
from rlp_align.data.records import Instruction, user_prompt
from rlp_align.judge.annotators import AnnotatorConfig, make_annotator
from rlp_align.judge.annotators.llm import parse_verdict

KEY = "sk-test-DO-NOT-LEAK-4242"


class Judge(BaseHTTPRequestHandler):
    """Prefers the output that contains GOOD; ``server.script`` holds failures to play first."""

    def log_message(self, *args):  # keep test output quiet
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        srv = self.server
        with srv.lock:
            srv.requests.append({"auth": self.headers.get("Authorization"), "body": body})
            action = srv.script.pop(0) if srv.script else "ok"
        if self.headers.get("Authorization") != f"Bearer {KEY}":
            return self._send(401, {"error": f"bad key {self.headers.get('Authorization')}"})
        if action == "429":
            return self._send(429, {"error": "slow down"}, {"Retry-After": "2"})
        if action == "500":
            return self._send(500, {"error": "oops"})
        if action == "timeout":
            time.sleep(0.6)
        user = body["messages"][-1]["content"]
        a, b = re.search(r"# Output \(a\):\n(.*)\n\n# Output \(b\):\n(.*)\n\n# Which", user, re.DOTALL).groups()
        if action == "malformed" or "AMBIGUOUS" in user:
            reply = "Both outputs are fine, honestly."
        else:
            reply = "Output (a)" if "GOOD" in a else "Output (b)"
        self._send(200, {"choices": [{"message": {"role": "assistant", "content": reply}}]})

    def _send(self, code, obj, headers=None):
        data = json.dumps(obj).encode()
        try:
            self.send_response(code)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client timed out first
            pass


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Judge)
    srv.daemon_threads = True
    srv.lock, srv.requests, srv.script = threading.Lock(), [], []
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def judge_cfg(server, tmp_path, monkeypatch):
    monkeypatch.setenv("RLP_TEST_JUDGE_KEY", KEY)
    return AnnotatorConfig(kind="llm", base_url=f"http://127.0.0.1:{server.server_port}/v1", model="judge-1",
                           api_key_env="RLP_TEST_JUDGE_KEY", cache_path=str(tmp_path / "cache.jsonl"),
                           max_workers=4, timeout_s=0.3, max_retries=2, seed=0)


def pairs(n):
    insts = [Instruction(user_prompt(f"Question {i}?")) for i in range(n)]
    a = [f"answer {i} GOOD" if i % 3 else f"answer {i}" for i in range(n)]
    b = [f"other {i}" if i % 3 else f"other {i} GOOD" for i in range(n)]
    return insts, a, b, [1.0 if i % 3 else 0.0 for i in range(n)]


def make(cfg, **kw):
    judge = make_annotator(cfg, **kw)
    judge.sleeps = []
    judge._sleep = judge.sleeps.append  # record backoff instead of waiting
    return judge


def test_parse_verdict():
    assert parse_verdict("Output (a)") == "a" and parse_verdict("output (B).") == "b"
    assert parse_verdict("b") == "b" and parse_verdict("Output (a) or Output (b)") is None
    assert parse_verdict("") is None and parse_verdict("I cannot decide") is None


def test_verdicts_are_mapped_back_through_the_randomised_order(server, judge_cfg):
    insts, a, b, expected = pairs(24)
    probs, details = make(judge_cfg).compare_with_details(insts, a, b)
    assert probs == expected
    swaps = [d["swapped"] for d in details]
    assert any(swaps) and not all(swaps)  # both orders were shown
    assert swaps == [d["swapped"] for d in make(judge_cfg, cache_path=None).compare_with_details(insts, a, b)[1]]
    shown = [r["body"]["messages"][-1]["content"] for r in server.requests]
    assert all("Select the output (a) or (b)" in u for u in shown)
    assert all(r["auth"] == f"Bearer {KEY}" for r in server.requests)


def test_malformed_verdicts_are_retried_then_counted_as_ties(server, judge_cfg, caplog):
    insts, a, b, expected = pairs(6)
    insts[2] = Instruction(user_prompt("AMBIGUOUS question?"))
    server.script = ["malformed"]  # the first request of all gets a malformed answer, its retry succeeds
    judge = make(judge_cfg, max_workers=1)
    with caplog.at_level(logging.WARNING):
        probs = judge.compare(insts, a, b)
    assert probs[2] == 0.5 and [p for i, p in enumerate(probs) if i != 2] == expected[:2] + expected[3:]
    assert judge.stats["ties_malformed"] == 1 and judge.stats["retries_malformed"] == 1 + 3
    assert "the pair has no label" in caplog.text
    cached = [json.loads(line) for line in open(judge_cfg.cache_path)]
    assert len(cached) == 5  # the tie is not cached: a later run asks again


def test_rate_limits_timeouts_and_server_errors_back_off_and_recover(server, judge_cfg):
    insts, a, b, expected = pairs(4)
    server.script = ["429", "timeout", "500"]
    judge = make(judge_cfg, max_workers=1)
    assert judge.compare(insts, a, b) == expected
    assert judge.stats["http_retries"] == 3
    assert judge.sleeps[0] == 2.0  # Retry-After honoured
    assert len(server.requests) == 4 + 3


def test_persistent_failure_is_a_user_error_and_cache_makes_reruns_free(server, judge_cfg):
    insts, a, b, expected = pairs(5)
    assert make(judge_cfg).compare(insts, a, b) == expected
    n = len(server.requests)
    again = make(judge_cfg)
    assert again.compare(insts, a, b) == expected and len(server.requests) == n
    assert again.stats["cached"] == 5
    server.script = ["500"] * 50
    with pytest.raises(UserError, match="kept failing"):
        make(judge_cfg, max_workers=1).compare([Instruction(user_prompt("new?"))], ["x GOOD"], ["y"])


def test_the_key_never_appears_in_logs_outputs_or_errors(server, judge_cfg, tmp_path, caplog, capsys):
    from rlp_align.judge.evaluate import WinrateConfig, run_winrate

    rows = [{"prompt": [{"role": "user", "content": f"Q{i}?"}], "response": f"mine {i} GOOD",
             "reference": f"ref {i}", "subset": "s1" if i % 2 else "s2", "constraints": [], "meta": {}}
            for i in range(8)]
    rows[3]["prompt"][0]["content"] = "AMBIGUOUS?"
    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(json.dumps(r) + "\n" for r in rows))
    server.script = ["429", "malformed", "timeout"]
    judge_cfg.timeout_s = 0.3
    with caplog.at_level(logging.DEBUG):
        with pytest.warns(RuntimeWarning, match="no valid verdict for 1 of 8 answers"):
            out = run_winrate(WinrateConfig(answers=str(answers), annotator=judge_cfg, output_dir=str(tmp_path / "wr")))
        # the AMBIGUOUS answer got no verdict: left out of the win-rate, not counted as a tie (was 7.5 / 8)
        assert out["win_rate"]["mean"] == 1.0 and out["win_rate"]["n"] == 7 and out["n_without_verdict"] == 1
        # A server that echoes the Authorization header in its 401 body: the error message is redacted.
        server.script = []
        bad = make(judge_cfg)
        bad._key = KEY + "x"  # a wrong key the server will echo back
        with pytest.raises(UserError) as err:
            bad.compare([Instruction(user_prompt("z?"))], ["a"], ["b"])
        assert "HTTP 401" in str(err.value) and KEY not in str(err.value)
    assert KEY not in caplog.text and "retrying" in caplog.text
    captured = capsys.readouterr()
    assert KEY not in captured.out + captured.err
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(written) >= 4  # answers, cache, winrate.json, judgements.jsonl
    for p in written:
        assert KEY not in p.read_text(), p
    assert KEY not in repr(make(judge_cfg))


def test_missing_key_variable_is_a_user_error(judge_cfg, monkeypatch):
    monkeypatch.delenv("RLP_TEST_JUDGE_KEY")
    with pytest.raises(UserError, match=r"\$RLP_TEST_JUDGE_KEY"):
        make_annotator(judge_cfg)
