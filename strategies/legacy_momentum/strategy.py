# Old-desk momentum strategy: reads market data as JSON lines on stdin, trades through desk_client.
# Buys 10 shares after two upticks in a row when flat, sells them on the next downtick.
# SYMBOLS (from config.json "env") limits it to a few symbols; empty means every symbol it is sent.
import json
import os
import sys

from desk_client import place_order

wanted = [s for s in os.environ.get("SYMBOLS", "").split(",") if s]
last_price = {}
upticks = {}
holding = {}

for line in sys.stdin:
    line = line.strip()
    if not line:
        continue
    tick = json.loads(line)
    symbol = tick["symbol"]
    if wanted and symbol not in wanted:
        continue
    price = float(tick["price"])
    previous = last_price.get(symbol)
    last_price[symbol] = price
    if previous is None:
        continue
    if price > previous:
        upticks[symbol] = upticks.get(symbol, 0) + 1
    else:
        upticks[symbol] = 0
    if upticks[symbol] >= 2 and not holding.get(symbol):
        result = place_order(symbol, 10, "buy", "market", "day")
        print("buy", symbol, result, flush=True)
        if result["status"] == "accepted":
            holding[symbol] = True
    elif price < previous and holding.get(symbol):
        result = place_order(symbol, 10, "sell", "market", "day")
        print("sell", symbol, result, flush=True)
        if result["status"] == "accepted":
            holding[symbol] = False
