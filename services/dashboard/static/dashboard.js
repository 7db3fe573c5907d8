// Quant Desk dashboard: live updates (server-sent events from /events) and operator actions.
// Everything a member controls is put in the page with textContent, never as HTML.
"use strict";
(function () {
  const page = document.body.dataset.page;
  const csrf = (document.querySelector('meta[name="csrf-token"]') || {}).content || "";

  function el(tag, text, cls) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (cls) node.className = cls;
    return node;
  }
  function row(cells, numeric) {
    const tr = document.createElement("tr");
    cells.forEach(function (c, i) { tr.appendChild(el("td", c, numeric && numeric.indexOf(i) >= 0 ? "num" : "")); });
    return tr;
  }
  function timeText(ms) { return ms ? new Date(Number(ms)).toLocaleTimeString() : ""; }
  function showTimes(root) {
    (root || document).querySelectorAll("[data-ts-ms]").forEach(function (node) {
      if (node.id !== "heartbeat-age") node.textContent = timeText(node.dataset.tsMs);
    });
  }
  function debounce(fn, ms) {
    let timer = null;
    return function () { clearTimeout(timer); timer = setTimeout(fn, ms); };
  }
  function replaceBody(table, rows, emptyText, columns) {
    const body = table.tBodies[0];
    body.replaceChildren();
    if (!rows.length) {
      const tr = el("tr", null, "empty");
      const td = el("td", emptyText);
      td.colSpan = columns;
      tr.appendChild(td);
      body.appendChild(tr);
    }
    rows.forEach(function (r) { body.appendChild(r); });
  }
  function prepend(table, tr, keep) {
    const body = table.tBodies[0];
    body.querySelectorAll("tr.empty").forEach(function (e) { e.remove(); });
    body.insertBefore(tr, body.firstChild);
    while (body.rows.length > keep) body.deleteRow(body.rows.length - 1);
  }
  async function getJSON(url) {
    const response = await fetch(url, { headers: { Accept: "application/json" } });
    if (!response.ok) throw new Error(url + ": " + response.status);
    return response.json();
  }

  // -- live events ---------------------------------------------------------------------------
  const handlers = {};
  function on(type, fn) { (handlers[type] = handlers[type] || []).push(fn); }
  function connect() {
    const status = document.getElementById("live-status");
    const source = new EventSource("/events");
    source.onopen = function () { status.textContent = "live"; status.className = "live-status on"; };
    source.onerror = function () { status.textContent = "reconnecting…"; status.className = "live-status off"; };
    ["fill", "order", "heartbeat", "price"].forEach(function (type) {
      source.addEventListener(type, function (message) {
        const event = JSON.parse(message.data);
        (handlers[type] || []).forEach(function (fn) { fn(event); });
      });
    });
  }

  // -- operator actions ------------------------------------------------------------------------
  async function operator(url, form) {
    const result = document.getElementById("op-result");
    const response = await fetch(url, {
      method: "POST",
      headers: { "X-CSRF-Token": csrf },
      body: new URLSearchParams(form || {}),
      credentials: "same-origin",
    });
    let body = {};
    try { body = await response.json(); } catch (e) { body = { error: response.statusText }; }
    if (result) {
      result.textContent = response.ok ? (body.message || "done") : "refused (" + response.status + "): " + (body.error || "");
      result.className = "op-result " + (response.ok ? "ok" : "refused");
    }
    return response.ok;
  }

  // -- leaderboard -----------------------------------------------------------------------------
  function boardRows(rows, kind) {
    return rows.map(function (r) {
      const tr = document.createElement("tr");
      tr.dataset.key = r.key;
      tr.appendChild(el("td", r.rank));
      if (kind === "strategies") {
        const td = el("td");
        const a = el("a", r.key);
        a.href = "/strategy/" + encodeURIComponent(r.key);
        td.appendChild(a);
        tr.appendChild(td);
        tr.appendChild(el("td", r.member_id));
      } else {
        tr.appendChild(el("td", r.key));
        tr.appendChild(el("td", r.strategies, "num"));
      }
      [r.return_pct, r.total_pnl, r.equity, r.max_drawdown_pct, r.sharpe, r.trades].forEach(function (v) {
        tr.appendChild(el("td", v, "num"));
      });
      return tr;
    });
  }
  function leaderboard() {
    const refresh = debounce(async function () {
      const data = await getJSON("/api/leaderboard");
      replaceBody(document.getElementById("members-board"), boardRows(data.members, "members"), "nothing booked yet", 9);
      replaceBody(document.getElementById("strategies-board"), boardRows(data.strategies, "strategies"), "nothing booked yet", 9);
    }, 500);
    on("fill", function (f) {
      const tr = row([timeText(f.ts_ns / 1e6), f.strategy_id, f.client_order_id, f.side, f.symbol, f.qty, f.price], [5, 6]);
      tr.dataset.execution = f.execution_id;
      prepend(document.getElementById("live-fills"), tr, 25);
      refresh();
    });
  }

  // -- strategy ----------------------------------------------------------------------------------
  function strategy() {
    const id = document.body.dataset.strategy;
    const chartBox = document.getElementById("equity-chart");
    let chart = null;
    function chartData(data) {
      const bench = new Map(data.benchmark.map(function (p) { return [p[0], Number(p[1])]; }));
      const xs = data.equity.map(function (p) { return p[0]; });
      return [xs, data.equity.map(function (p) { return Number(p[1]); }), xs.map(function (x) { return bench.has(x) ? bench.get(x) : null; })];
    }
    function drawChart(data) {
      const series = chartData(data);
      if (chart) { chart.setData(series); return; }
      chart = new uPlot({
        width: Math.max(320, chartBox.clientWidth || 900), height: 300,
        series: [{}, { label: "equity", stroke: "#2563eb", width: 2 },
                 { label: "buy & hold " + (data.benchmark_symbol || ""), stroke: "#9ca3af", width: 1.5, dash: [6, 4] }],
        axes: [{}, { size: 80 }],
      }, series, chartBox);
      chartBox.dataset.points = String(series[0].length);
    }
    function tables(data) {
      replaceBody(document.getElementById("positions"), data.positions.map(function (p) {
        return row([p.symbol, p.qty, p.avg_cost, p.last_price, p.market_value, p.realized_pnl, p.unrealized_pnl], [1, 2, 3, 4, 5, 6]);
      }), "no positions", 7);
      replaceBody(document.getElementById("orders"), data.orders.map(function (o) {
        return row([o.client_order_id, o.symbol, o.side, o.type, o.qty, o.limit_price, o.status, o.filled_qty, o.avg_price, o.text], [4, 5, 7, 8]);
      }), "no orders", 10);
      const logs = document.getElementById("logs");
      logs.textContent = data.logs.length ? data.logs.join("\n") : "(no output yet)";
    }
    const refresh = debounce(async function () {
      const data = await getJSON("/api/strategy/" + encodeURIComponent(id));
      drawChart(data);
      tables(data);
      chartBox.dataset.points = String(data.equity.length);
    }, 700);
    getJSON("/api/strategy/" + encodeURIComponent(id)).then(drawChart);
    on("fill", function (f) {
      if (f.strategy_id !== id) return;
      const fills = document.getElementById("fills");
      if (!fills.querySelector('tr[data-execution="' + CSS.escape(f.execution_id) + '"]')) {
        const tr = row([timeText(f.ts_ns / 1e6), f.client_order_id, f.side, f.symbol, f.qty, f.price, f.fee], [4, 5, 6]);
        tr.dataset.execution = f.execution_id;
        prepend(fills, tr, 50);
      }
      refresh();
    });
    on("order", function (o) { if (o.strategy_id === id) refresh(); });
    on("heartbeat", function (h) {
      if (h.strategy_id !== id) return;
      document.getElementById("heartbeat").textContent = "bars " + h.bars_seen + " · orders " + h.orders_sent + " · errors " + h.errors;
      document.getElementById("heartbeat-age").dataset.tsMs = String(Math.floor(h.ts_ns / 1e6));
    });
    function heartbeatAge() {
      const age = document.getElementById("heartbeat-age");
      if (age.dataset.tsMs) age.textContent = "last beat " + Math.max(0, Math.round((Date.now() - Number(age.dataset.tsMs)) / 1000)) + " s ago";
    }
    heartbeatAge();
    setInterval(heartbeatAge, 1000);
    document.querySelectorAll(".op-control").forEach(function (button) {
      button.addEventListener("click", function () {
        operator("/operator/strategy/" + encodeURIComponent(button.dataset.strategy) + "/" + button.dataset.action).then(refresh);
      });
    });
  }

  // -- desk --------------------------------------------------------------------------------------
  function desk() {
    const prices = document.getElementById("prices");
    on("price", function (p) {
      let tr = prices.querySelector('tr[data-symbol="' + CSS.escape(p.symbol) + '"]');
      if (!tr) {
        tr = row([p.symbol, "", "", "feed"], [1]);
        tr.dataset.symbol = p.symbol;
        tr.cells[1].classList.add("price");
        prices.tBodies[0].querySelectorAll("tr.empty").forEach(function (e) { e.remove(); });
        prices.tBodies[0].appendChild(tr);
      }
      tr.cells[1].textContent = p.price;
      tr.cells[2].textContent = timeText(p.ts_ns / 1e6);
    });
    async function refreshRisk() {
      const data = await getJSON("/api/desk");
      const kill = document.getElementById("kill-switch");
      if (data.risk) {
        kill.textContent = data.risk.global_halted ? "HALTED: new orders refused" : "trading: orders accepted";
        kill.className = data.risk.global_halted ? "halted" : "trading";
        const halted = document.getElementById("halted-strategies");
        if (halted) halted.textContent = data.risk.halted_strategies.join(", ") || "none";
      }
      const services = document.getElementById("services");
      data.services.forEach(function (s) {
        const tr = services.querySelector('tr[data-service="' + CSS.escape(s.name) + '"]');
        if (!tr) return;
        tr.cells[1].textContent = s.up ? "up" : "DOWN";
        tr.cells[1].className = s.up ? "up" : "down";
        tr.cells[3].textContent = s.rtt_ms;
        tr.cells[5].textContent = s.requests;
        tr.cells[6].textContent = s.errors;
      });
    }
    setInterval(refreshRisk, 5000);
    document.querySelectorAll(".op-risk").forEach(function (button) {
      button.addEventListener("click", function () {
        operator("/operator/risk/" + button.dataset.action, { reason: "dashboard" }).then(refreshRisk);
      });
    });
  }

  showTimes();
  if (page === "leaderboard") leaderboard();
  if (page === "strategy") strategy();
  if (page === "desk") desk();
  connect();
})();
