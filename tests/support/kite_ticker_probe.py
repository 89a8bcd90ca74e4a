"""Run the unmodified official ``KiteTicker`` against a ticker server; print what it saw.

Twisted's reactor cannot be restarted, so every scenario runs in a fresh process::

    python tests/support/kite_ticker_probe.py '{"root": "ws://127.0.0.1:9001", ...}'

Options (JSON object): ``root``, ``api_key``, ``access_token``; ``connections`` (how many
KiteTicker objects share the reactor, default 1); ``subscribe`` (tokens subscribed in
``on_connect``, default mode quote); ``modes`` (``{"ltp": [...], "quote": [...],
"full": [...]}``: subscribed and set to that mode); ``duration`` (seconds to listen after the
first connect, default 4); ``announce`` (print ``CONNECTED`` when the first connection opens);
``stop_retry`` (stop reconnecting after the first close, default true).

The last stdout line is a JSON report: ticks (datetimes as epoch seconds), counts of binary
messages, heartbeats and packet lengths, text messages, order updates, errors and closes.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections import Counter
from typing import Any

from kiteconnect import KiteTicker
from twisted.internet import reactor


def _plain(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.timestamp()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _packet_lengths(payload: bytes) -> list[int]:
    if len(payload) < 2:
        return []
    count = int.from_bytes(payload[:2], "big")
    lengths: list[int] = []
    pos = 2
    for _ in range(count):
        if pos + 2 > len(payload):
            break
        length = int.from_bytes(payload[pos : pos + 2], "big")
        lengths.append(length)
        pos += 2 + length
    return lengths


def main() -> None:
    options: dict[str, Any] = json.loads(sys.argv[1])
    report: dict[str, Any] = {
        "connects": 0,
        "ticks": [],
        "binary_messages": 0,
        "heartbeats": 0,
        "packet_lengths": Counter(),
        "texts": [],
        "order_updates": [],
        "errors": [],
        "closes": [],
    }
    modes: dict[str, list[int]] = options.get("modes", {})
    subscribe: list[int] = list(options.get("subscribe", []))
    for tokens in modes.values():
        subscribe += [t for t in tokens if t not in subscribe]
    duration = float(options.get("duration", 4.0))
    tickers: list[KiteTicker] = []
    started = {"done": False, "finished": False}

    def finish() -> None:
        if started["finished"]:
            return
        started["finished"] = True
        report["packet_lengths"] = {str(k): v for k, v in report["packet_lengths"].items()}
        print(json.dumps(_plain(report)), flush=True)
        for ticker in tickers:
            ticker.stop_retry()
            if ticker.is_connected():
                ticker.close()
        reactor.callLater(0.3, tickers[0].stop)

    def on_connect(ws: KiteTicker, response: Any) -> None:
        report["connects"] += 1
        if subscribe:
            ws.subscribe(subscribe)
        for mode, tokens in modes.items():
            if tokens:
                ws.set_mode(mode, tokens)
        if not started["done"]:
            started["done"] = True
            if options.get("announce"):
                print("CONNECTED", flush=True)
            reactor.callLater(duration, finish)

    def on_ticks(ws: KiteTicker, ticks: list[dict[str, Any]]) -> None:
        report["ticks"].extend(ticks)

    def on_message(ws: KiteTicker, payload: bytes, is_binary: bool) -> None:
        if is_binary:
            report["binary_messages"] += 1
            if len(payload) == 1:
                report["heartbeats"] += 1
            report["packet_lengths"].update(_packet_lengths(payload))
        else:
            report["texts"].append(payload.decode("utf-8", "replace"))

    def on_order_update(ws: KiteTicker, data: dict[str, Any]) -> None:
        report["order_updates"].append(data)

    def on_error(ws: KiteTicker, code: Any, reason: Any) -> None:
        report["errors"].append([code, str(reason)])

    def on_close(ws: KiteTicker, code: Any, reason: Any) -> None:
        report["closes"].append([code, str(reason)])
        if options.get("stop_retry", True):
            ws.stop_retry()
        if not started["done"]:
            started["done"] = True
            reactor.callLater(min(duration, 1.0), finish)

    for _ in range(int(options.get("connections", 1))):
        ticker = KiteTicker(
            options["api_key"],
            options["access_token"],
            root=options["root"],
            reconnect_max_tries=3,
            reconnect_max_delay=5,
            connect_timeout=10,
        )
        ticker.on_connect = on_connect
        ticker.on_ticks = on_ticks
        ticker.on_message = on_message
        ticker.on_order_update = on_order_update
        ticker.on_error = on_error
        ticker.on_close = on_close
        tickers.append(ticker)
    # Safety net: never hang, whatever happens.
    reactor.callLater(duration + 20.0, finish)

    def connect_others() -> None:
        for ticker in tickers[1:]:
            ticker.connect()

    reactor.callWhenRunning(connect_others)
    tickers[0].connect(threaded=False)


if __name__ == "__main__":
    main()
