"""What an agent may still spend: the tokenbudget-operator's agent API, from Python.

Standard library only: copy this file next to your agent, or put its directory on PYTHONPATH.

    from tokenbudget_client import Client, Forbidden

    budget = Client().budget(label="end_user", subject="alice")
    if budget.exhausted or budget.subject_exhausted:
        ...  # stop: the budget, or this end user's share of it, is spent
    elif budget.remaining_fraction < 0.2:
        ...  # switch to a cheaper model

Configuration, each also a keyword argument of Client:
- TOKENBUDGET_URL: the agent API, e.g.
  http://tokenbudget-operator-agent-api.tokenbudget-system:8082 (required).
- TOKENBUDGET_NAME: the TokenBudget's name (or `name=` at each call).
- TOKENBUDGET_NAMESPACE: its namespace; default the pod's own, from
  /var/run/secrets/kubernetes.io/serviceaccount/namespace.
- TOKENBUDGET_CACHE_SECONDS: how long an answer is kept (default 5; 0: ask every time).
- TOKENBUDGET_TOKEN_FILE: the projected ServiceAccount token (audience tokenbudget.io); default
  /var/run/secrets/tokenbudget.io/token. Read again for every request: kubelet rotates it.

Answers are kept for a few seconds (cache_seconds, default 5): the operator's figures move once
per accounting cycle, so a hot loop asking before every call costs one request per few
seconds. docs/agents.md describes the fields.
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from decimal import Decimal
from typing import Any, Callable, Optional

DEFAULT_TOKEN_FILE = "/var/run/secrets/tokenbudget.io/token"
POD_NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
DEFAULT_CACHE_SECONDS = 5.0
DEFAULT_TIMEOUT_SECONDS = 2.0
# Distinct questions remembered at once (budgets x subjects); past it the cache starts over.
MAX_CACHED = 1024


class BudgetError(Exception):
    """The agent API gave no answer. `code` is the HTTP status (0: no connection), `reason`
    the Kubernetes Status reason (Unauthorized, Forbidden, NotFound, ...)."""

    def __init__(self, message: str, code: int = 0, reason: str = ""):
        super().__init__(message)
        self.code = code
        self.reason = reason


class ConfigurationError(BudgetError):
    """The client lacks its URL, the budget's name or namespace, or the token file."""


class Unauthorized(BudgetError):
    """401: no token, an expired one, or one not minted for the agent API's audience."""


class Forbidden(BudgetError):
    """403: this ServiceAccount may not get that TokenBudget (bind the chart's agent role)."""


class NotFound(BudgetError):
    """404: no such budget, or the budget has no limit per that label."""


class Unavailable(BudgetError):
    """503, a timeout, or no connection: try again shortly (or carry on at your own risk)."""


_ERRORS = {401: Unauthorized, 403: Forbidden, 404: NotFound}


class Budget:
    """One answer of the agent API. Money is a Decimal (exact, in `currency`); counts of
    tokens are ints; a figure the budget does not have is None."""

    def __init__(self, data: dict[str, Any]):
        self.data = data

    def _get(self, key: str) -> Any:
        return self.data.get(key)

    @property
    def phase(self) -> Optional[str]:
        """Active, Warning or Exhausted; None before the operator's first count."""
        return self._get("phase")

    @property
    def exhausted(self) -> bool:
        return self.phase == "Exhausted"

    @property
    def currency(self) -> str:
        return self.data.get("limits", {}).get("currency", "")

    @property
    def remaining_tokens(self) -> Optional[int]:
        return self._get("remainingTokens")

    @property
    def remaining_cost(self) -> Optional[Decimal]:
        value = self._get("remainingCost")
        return None if value is None else Decimal(value)

    @property
    def percent_used(self) -> Optional[int]:
        return self._get("percentUsed")

    @property
    def burn_rate(self) -> Optional[int]:
        """Tokens per hour, recently."""
        return self._get("burnRate")

    @property
    def pace(self) -> Optional[float]:
        """From 0 to 1: the fraction of the current burn rate that lasts until the reset
        (with spec.pacing; None otherwise)."""
        return self._get("pace")

    @property
    def sustainable_rate(self) -> Optional[int]:
        """Tokens per hour that last until the reset (with spec.pacing)."""
        return self._get("sustainableRate")

    @property
    def resets_at(self) -> Optional[str]:
        return self._get("resetsAt")

    @property
    def remaining_fraction(self) -> float:
        """What is left of the tighter limit, from 0 to 1 (1 when nothing is known yet)."""
        percent = self.percent_used
        if percent is None:
            return 1.0
        return max(0.0, 1.0 - percent / 100.0)

    @property
    def subject(self) -> Optional[dict[str, Any]]:
        """The subject asked about: label, value, tokens, cost, remainingTokens,
        remainingCost, exhausted, tracked."""
        return self._get("subject")

    @property
    def subject_exhausted(self) -> bool:
        return bool(self.subject and self.subject.get("exhausted"))

    def __repr__(self) -> str:
        return f"Budget({self.data!r})"


class Client:
    """The agent API of the tokenbudget-operator, for one pod. Safe to share between threads."""

    def __init__(
        self,
        url: Optional[str] = None,
        name: Optional[str] = None,
        namespace: Optional[str] = None,
        token_file: Optional[str] = None,
        cache_seconds: Optional[float] = None,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.url = (url or os.environ.get("TOKENBUDGET_URL") or "").rstrip("/")
        if not self.url:
            raise ConfigurationError("no agent API URL: set TOKENBUDGET_URL or pass url=")
        self.name = name or os.environ.get("TOKENBUDGET_NAME")
        self.namespace = namespace or os.environ.get("TOKENBUDGET_NAMESPACE") or _pod_namespace()
        self.token_file = token_file or os.environ.get("TOKENBUDGET_TOKEN_FILE") or DEFAULT_TOKEN_FILE
        if cache_seconds is None:
            cache_seconds = float(os.environ.get("TOKENBUDGET_CACHE_SECONDS", DEFAULT_CACHE_SECONDS))
        self.cache_seconds = cache_seconds
        self.timeout = timeout
        self._clock = clock
        self._cache: dict[tuple, tuple[float, Budget]] = {}
        self._lock = threading.Lock()

    def budget(self, label: Optional[str] = None, subject: Optional[str] = None,
               name: Optional[str] = None) -> Budget:
        """The budget's standing, and with `label` and `subject` that subject's (an end user,
        a session: `spec.subjects[].label` of the budget and its value). Raises a BudgetError."""
        name = name or self.name
        if not name:
            raise ConfigurationError("no budget name: set TOKENBUDGET_NAME or pass name=")
        if not self.namespace:
            raise ConfigurationError("no namespace: set TOKENBUDGET_NAMESPACE (not in a pod)")
        if (label is None) != (subject is None):
            raise ValueError("label and subject go together")
        key = (self.namespace, name, label, subject)
        now = self._clock()
        with self._lock:
            cached = self._cache.get(key)
            if cached and now < cached[0]:
                return cached[1]
        answer = Budget(self._get(name, label, subject))
        with self._lock:
            if len(self._cache) >= MAX_CACHED:
                self._cache.clear()
            self._cache[key] = (now + self.cache_seconds, answer)
        return answer

    def _get(self, name: str, label: Optional[str], subject: Optional[str]) -> dict[str, Any]:
        path = "/v1/namespaces/{}/tokenbudgets/{}".format(
            urllib.parse.quote(self.namespace, safe=""), urllib.parse.quote(name, safe=""))
        if label is not None:
            path += "?" + urllib.parse.urlencode({"label": label, "subject": subject})
        request = urllib.request.Request(self.url + path, headers={
            "Authorization": f"Bearer {self._token()}", "Accept": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.load(response)
        except urllib.error.HTTPError as e:
            raise _error(e) from None
        except (urllib.error.URLError, OSError) as e:
            raise Unavailable(f"the agent API at {self.url} cannot be reached: {e}") from None

    def _token(self) -> str:
        try:
            with open(self.token_file, encoding="utf-8") as f:
                return f.read().strip()
        except OSError as e:
            raise ConfigurationError(
                f"cannot read the token file {self.token_file}: {e} (mount a projected "
                "serviceAccountToken with audience tokenbudget.io there, or set TOKENBUDGET_TOKEN_FILE)"
            ) from None


def _pod_namespace() -> Optional[str]:
    try:
        with open(POD_NAMESPACE_FILE, encoding="utf-8") as f:
            return f.read().strip() or None
    except OSError:
        return None


def _error(e: urllib.error.HTTPError) -> BudgetError:
    """The Kubernetes Status of an error answer, as the matching exception."""
    try:
        status = json.load(e)
        message, reason = status.get("message", ""), status.get("reason", "")
    except (ValueError, AttributeError, OSError):
        message, reason = e.reason, ""
    kind = _ERRORS.get(e.code, Unavailable if e.code >= 500 else BudgetError)
    return kind(f"{e.code} {reason}: {message}", code=e.code, reason=reason)
