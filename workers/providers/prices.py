"""Cost per call from a price table: USD per million tokens, by model. Users extend it with a JSON file.

The built-in table prices only the fake provider's models (so the demo shows spend); put real prices in the file
named by ``DEFEATER_PROVIDERS__PRICES_FILE``:
``{"<model or prefix*>": {"input": 2.5, "output": 10, "cached_input": 0.25}}``.
An exact model name wins over the longest matching ``prefix*`` entry. A model with no price has no cost (null).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from workers.providers.base import Usage


@dataclass(frozen=True)
class Price:
    input: float
    output: float
    cached_input: float | None = None


BUILT_IN: dict[str, Price] = {
    "fake-*": Price(input=1.0, output=4.0, cached_input=0.1),
    "judge-*": Price(input=1.0, output=4.0, cached_input=0.1),
}


class PriceTable:
    def __init__(self, prices: dict[str, Price] | None = None) -> None:
        self.exact = {k: v for k, v in (prices or BUILT_IN).items() if not k.endswith("*")}
        self.prefixes = sorted(
            ((k[:-1], v) for k, v in (prices or BUILT_IN).items() if k.endswith("*")), key=lambda kv: -len(kv[0])
        )

    @classmethod
    def load(cls, path: str | None) -> PriceTable:
        """The built-in table, extended (and overridden) by the JSON file at ``path``."""
        prices = dict(BUILT_IN)
        if path:
            for model, entry in json.loads(Path(path).read_text()).items():
                prices[model] = Price(**entry)
        return cls(prices)

    def price(self, model: str) -> Price | None:
        if model in self.exact:
            return self.exact[model]
        return next((p for prefix, p in self.prefixes if model.startswith(prefix)), None)

    def cost(self, model: str, usage: Usage) -> float | None:
        """USD for one call, or None when the model has no price or the usage is unknown."""
        price = self.price(model)
        if price is None or usage.input_tokens is None:
            return None
        cached = usage.cached_tokens or 0
        cached_rate = price.cached_input if price.cached_input is not None else price.input
        fresh = max(usage.input_tokens - cached, 0)
        total = fresh * price.input + cached * cached_rate + (usage.output_tokens or 0) * price.output
        return total / 1_000_000
