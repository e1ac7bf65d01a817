"""The `llm` annotator: an AlpacaFarm-style pairwise judge over any OpenAI-compatible chat endpoint.

For each pair the two outputs are shown in a seeded random order (recorded as ``swapped``), the judge
answers "Output (a)" or "Output (b)", and the verdict is mapped back to the caller's order. Malformed
verdicts (a refusal, another format) are retried ``max_retries`` times; a pair still without a verdict gets
p = 0.5 and ``verdict`` None, which `rlp annotate` and `rlp eval winrate` leave out with a counted warning
(`without_verdict`), and a judge that gives no valid verdict at all is an error. Requests run in a
thread pool; HTTP 429/5xx and timeouts back off (honouring Retry-After) up to ``max_http_retries`` times.
Verdicts are cached in a JSONL file keyed by sha256(model + rendered prompt), so a re-run only asks what
is missing. The API key is read from the environment variable *named* by ``api_key_env`` and is never
logged, cached or put in an error message. Only the standard library is used for HTTP.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from rlp_align.core.errors import UserError
from rlp_align.core.io import append_jsonl, read_rows
from rlp_align.data.records import Instruction
from rlp_align.judge.annotators.base import Annotator, _check_lengths

log = logging.getLogger(__name__)

# AlpacaFarm's pairwise annotator prompt (alpaca_farm/auto_annotations, "alpaca_eval" style), shortened.
SYSTEM_PROMPT = (
    "You are a helpful instruction-following assistant that prints the best model by selecting the best "
    "outputs for a given instruction."
)
USER_TEMPLATE = """Select the output (a) or (b) that best matches the given instruction. Choose your preferred \
output, which can be subjective. Your answer should ONLY contain: Output (a) or Output (b).

# Instruction:
{instruction}

# Output (a):
{output_a}

# Output (b):
{output_b}

# Which is best, Output (a) or Output (b)?"""

_VERDICT = re.compile(r"output\s*\(?\s*([ab])\s*\)?", re.IGNORECASE)


def parse_verdict(text: str) -> str | None:
    """'a' or 'b' when the reply names exactly one output; None when malformed."""
    found = {m.lower() for m in _VERDICT.findall(text or "")}
    if len(found) == 1:
        return found.pop()
    bare = (text or "").strip().strip(".()").lower()
    return bare if bare in ("a", "b") else None


class LLMJudge(Annotator):
    """Pairwise LLM judge; `compare` only (``can_score`` is False)."""

    name = "llm"
    can_score = False

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str | None = None,
        cache_path: str | None = None,
        max_workers: int = 4,
        timeout_s: float = 60.0,
        max_retries: int = 3,
        max_http_retries: int = 6,
        backoff_s: float = 1.0,
        max_backoff_s: float = 60.0,
        seed: int = 0,
        max_tokens: int = 16,
    ):
        super().__init__(temperature=0.0)
        if not base_url or not model:
            raise UserError("the llm judge needs base_url (e.g. https://api.openai.com/v1) and model")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.api_key_env, self.seed = model, api_key_env, seed
        self.max_workers, self.timeout_s, self.max_retries = max(1, max_workers), timeout_s, max_retries
        self.max_http_retries, self.backoff_s, self.max_backoff_s = max_http_retries, backoff_s, max_backoff_s
        self.max_tokens = max_tokens
        self._key = ""
        if api_key_env:
            self._key = os.environ.get(api_key_env, "")
            if not self._key:
                raise UserError(f"the llm judge reads its API key from ${api_key_env}, which is not set")
        self.cache_path = Path(cache_path) if cache_path else None
        self._cache: dict[str, str] = {}
        if self.cache_path is not None and self.cache_path.exists() and self.cache_path.stat().st_size > 0:
            for _, row in read_rows(self.cache_path):
                if isinstance(row, dict) and row.get("verdict") in ("a", "b"):
                    self._cache[row["key"]] = row["verdict"]
        self._lock = threading.Lock()
        self._sleep = time.sleep  # tests replace it to observe backoff without waiting
        self.stats = {"requests": 0, "cached": 0, "retries_malformed": 0, "ties_malformed": 0, "http_retries": 0}
        self.bad_reply = ""  # the first reply that named no output, for the message when none did

    def __repr__(self) -> str:  # never show the key
        return f"LLMJudge(url={self.url!r}, model={self.model!r}, api_key_env={self.api_key_env!r})"

    def describe(self) -> dict:
        return {"annotator": self.name, "model": self.model, "url": self.url, "seed": self.seed}

    # ---------------------------------------------------------------------------------------------- HTTP
    def _redact(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text

    def _post(self, messages: list[dict[str, str]]) -> str:
        """One chat completion; retries 429/5xx/timeouts with backoff. Returns the reply text."""
        body = json.dumps(
            {"model": self.model, "messages": messages, "temperature": 0, "max_tokens": self.max_tokens}
        ).encode()
        headers = {"Content-Type": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        for attempt in range(self.max_http_retries + 1):
            wait = min(self.max_backoff_s, self.backoff_s * 2**attempt)
            try:
                request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    reply = json.loads(response.read().decode("utf-8"))
                with self._lock:
                    self.stats["requests"] += 1
                return str(reply["choices"][0]["message"]["content"] or "")
            except urllib.error.HTTPError as e:
                if e.code != 429 and e.code < 500:
                    detail = self._redact(e.read().decode("utf-8", "replace")[:300])
                    raise UserError(
                        f"the judge endpoint {self.url} refused the request (HTTP {e.code}): {detail}"
                    ) from None
                retry_after = e.headers.get("Retry-After") if e.headers else None
                try:
                    wait = min(self.max_backoff_s, float(retry_after)) if retry_after else wait
                except ValueError:
                    pass
                reason = f"HTTP {e.code}"
            except (TimeoutError, urllib.error.URLError, ConnectionError) as e:
                reason = f"{type(e).__name__}: {self._redact(str(getattr(e, 'reason', e)))}"
            except (ValueError, KeyError, IndexError, TypeError):
                return ""  # a 200 whose body is not a chat completion: treated as a malformed verdict
            if attempt == self.max_http_retries:
                break
            with self._lock:
                self.stats["http_retries"] += 1
            log.warning("judge request failed (%s); retrying in %.2f s", reason, wait)
            self._sleep(wait)
        raise UserError(
            f"the judge endpoint {self.url} kept failing ({reason}) after {self.max_http_retries} retries; "
            "verdicts obtained so far are in the cache, so a re-run resumes"
        )

    # ---------------------------------------------------------------------------------------------- judging
    def _judge_one(self, instruction: str, a: str, b: str, swapped: bool) -> dict[str, Any]:
        first, second = (b, a) if swapped else (a, b)
        user = USER_TEMPLATE.format(instruction=instruction, output_a=first, output_b=second)
        messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]
        key = hashlib.sha256(json.dumps([self.model, messages]).encode()).hexdigest()
        verdict, cached, attempts = self._cache.get(key), True, 0
        if verdict is None:
            cached = False
            for attempts in range(1, self.max_retries + 2):  # noqa: B007 (attempts is reported)
                reply = self._post(messages)
                verdict = parse_verdict(reply)
                if verdict is not None:
                    break
                with self._lock:
                    self.stats["retries_malformed"] += 1
                    self.bad_reply = self.bad_reply or self._redact(reply.strip())[:200]
            if verdict is not None and self.cache_path is not None:
                with self._lock:
                    self._cache[key] = verdict
                    self.cache_path.parent.mkdir(parents=True, exist_ok=True)
                    append_jsonl(self.cache_path, {"key": key, "model": self.model, "verdict": verdict})
        else:
            with self._lock:
                self.stats["cached"] += 1
        if verdict is None:
            with self._lock:
                self.stats["ties_malformed"] += 1
            log.warning("judge gave no valid verdict after %d attempts; the pair has no label", attempts)
            p_a = 0.5
        else:
            shown_first_won = verdict == "a"
            p_a = float(shown_first_won != swapped)  # map the shown order back to (a, b)
        return {"p_a": p_a, "swapped": swapped, "verdict": verdict, "cached": cached, "attempts": attempts}

    def compare_with_details(
        self, instructions: list[Instruction], a: list[str], b: list[str]
    ) -> tuple[list[float], list[dict[str, Any]]]:
        _check_lengths(instructions, a, b)
        rng = random.Random(self.seed)
        swaps = [rng.random() < 0.5 for _ in instructions]
        with ThreadPoolExecutor(self.max_workers) as pool:
            details = list(
                pool.map(lambda i: self._judge_one(instructions[i].text, a[i], b[i], swaps[i]), range(len(a)))
            )
        if details and all(d["verdict"] is None for d in details):
            raise UserError(f"the judge {self.model} at {self.url} gave no valid verdict for any of the "
                            f"{len(details)} pairs: it must answer 'Output (a)' or 'Output (b)', and it answered "
                            f"{self.bad_reply!r} (a refusal or another format). Check the judge model and its "
                            "prompt; nothing was labelled or written.")
        return [d.pop("p_a") for d in details], details
