"""An agent that asks its budget before each call (docs/agents.md).

The OpenAI client, instrumented by opentelemetry-instrumentation-openai-v2 (traces), with its
token usage exported by the Prometheus exporter as `gen_ai_client_token_usage` (the
OpenTelemetry format a BudgetBinding reads, docs/metrics-formats.md), with the end user as a
label so that a budget's `spec.subjects` can limit each end user.

Before each call it asks the operator's agent API (clients/python/tokenbudget_client.py):
- the budget or this end user's share of it is exhausted: the session stops;
- less than 20% left, or a pace below 1 (spend slower to last until the reset): the cheaper
  model;
- the agent API cannot be reached: carry on with the cheaper model (the operator still
  enforces the budget on the workload; this is the agent being polite, not the fence).
"""

from __future__ import annotations

import os
import sys

from openai import OpenAI
from opentelemetry import metrics
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import start_http_server

import tokenbudget_client as tb

MODEL = os.environ.get("AGENT_MODEL", "gpt-4o")
CHEAP_MODEL = os.environ.get("AGENT_CHEAP_MODEL", "gpt-4o-mini")
CHEAP_BELOW = float(os.environ.get("AGENT_CHEAP_BELOW", "0.2"))
SUBJECT_LABEL = "end_user"

# The instrumentation traces each call. Its token histogram has no end-user attribute and no
# hook to add one, so its metrics go to a provider that exports nothing, and the agent records
# the same instrument, with the same attributes plus end_user, on the exported one. (Both on
# one exporter would count every token twice.)
reader = PrometheusMetricReader()
provider = MeterProvider(metric_readers=[reader])
metrics.set_meter_provider(provider)
OpenAIInstrumentor().instrument(meter_provider=MeterProvider())
token_usage = provider.get_meter("agent").create_histogram(
    "gen_ai.client.token.usage", unit="{token}", description="Measures number of input and output tokens used")


def record(response, model: str, end_user: str) -> None:
    """Tokens of one response, as the GenAI semantic conventions name them, per end user."""
    usage = response.usage
    base = {"gen_ai.operation.name": "chat", "gen_ai.system": "openai",
            "gen_ai.request.model": model, "gen_ai.response.model": response.model,
            SUBJECT_LABEL: end_user}
    token_usage.record(usage.prompt_tokens, {**base, "gen_ai.token.type": "input"})
    token_usage.record(usage.completion_tokens, {**base, "gen_ai.token.type": "output"})


def choose_model(budget: tb.Budget) -> str:
    if budget.remaining_fraction < CHEAP_BELOW or (budget.pace is not None and budget.pace < 1):
        return CHEAP_MODEL
    return MODEL


class SessionOver(Exception):
    """This end user's session stops: their share of the budget is spent."""


class BudgetOver(Exception):
    """The whole budget is spent: the agent stops."""


def ask(client: OpenAI, budgets: tb.Client, end_user: str, prompt: str) -> str:
    try:
        budget = budgets.budget(label=SUBJECT_LABEL, subject=end_user)
    except tb.Unavailable as e:
        print(f"budget unknown ({e}): using {CHEAP_MODEL}", file=sys.stderr)
        model = CHEAP_MODEL
    else:
        if budget.exhausted:
            raise BudgetOver(f"the budget is exhausted until {budget.resets_at}")
        if budget.subject_exhausted:
            raise SessionOver(f"{end_user} has used up their share until {budget.resets_at}")
        model = choose_model(budget)
    response = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                              user=end_user)
    record(response, model, end_user)
    return f"[{model}] {response.choices[0].message.content}"


def main() -> None:
    # What the BudgetBinding scrapes.
    start_http_server(int(os.environ.get("METRICS_PORT", "9464")), addr=os.environ.get("METRICS_ADDR", "0.0.0.0"))
    client, budgets = OpenAI(), tb.Client()
    # One request per line: "<end user><TAB><prompt>", or a prompt alone for END_USER. A
    # refused end user does not stop the others.
    default_user = os.environ.get("END_USER", "anonymous")
    for line in iter(sys.stdin.readline, ""):
        end_user, _, prompt = line.rstrip("\n").rpartition("\t")
        end_user = end_user or default_user
        try:
            print(f"{end_user}: {ask(client, budgets, end_user, prompt)}", flush=True)
        except SessionOver as e:
            print(f"{end_user}: refused: {e}", flush=True)
        except BudgetOver as e:
            print(f"stopped: {e}", flush=True)
            return


if __name__ == "__main__":
    main()
