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

  // Numbers as a reader wants them: prices to the cent, quantities without trailing zeros.
  function priceText(v) { return v === "" || v === null || v === undefined || isNaN(Number(v)) ? (v || "") : Number(v).toFixed(2); }
  function qtyText(v) {
    if (v === "" || v === null || v === undefined || isNaN(Number(v))) return v || "";
    const s = String(v);
    return s.indexOf(".") >= 0 ? s.replace(/0+$/, "").replace(/\.$/, "") : s;
  }
  // Axis labels with as many decimals as the tick step needs (never two equal labels), and
  // thousands separators: 100,050 / 99,987.5 / -0.015%.
  function decimalsFor(step) {
    // The fewest decimals that write the tick step exactly (0.025 -> 3, 500 -> 0), at most 6.
    if (!step || !isFinite(step)) return 2;
    let d = 0;
    while (d < 6 && Math.abs(Math.round(step * Math.pow(10, d)) - step * Math.pow(10, d)) > 1e-6 * Math.pow(10, d)) d++;
    return d;
  }
  function axisNumber(suffix) {
    return function (u, splits, axisIdx, space, step) {
      const d = decimalsFor(step);
      return splits.map(function (v) {
        if (v === null || v === undefined) return "";
        const text = v.toLocaleString("en-US", { minimumFractionDigits: d, maximumFractionDigits: d });
        return (text === "-0" || /^-0\.0*$/.test(text) ? text.slice(1) : text) + suffix;
      });
    };
  }
  const axisMoney = axisNumber(""), axisPct = axisNumber("%");
  function axisSize(u, values) {
    // Room for the longest label (about 7 px a character at the axis font) plus the tick.
    const longest = (values || []).reduce(function (n, v) { return Math.max(n, String(v).length); }, 4);
    return Math.ceil(longest * 7.2) + 18;
  }

  // -- charts (uPlot): axis labels spaced so they never overlap, sized to the box (phones too) ----
  const charts = [];
  function chartWidth(box) { return Math.max(260, (box.clientWidth || 900) - 18); }
  function makeChart(box, series, data, yFormat, height, yRange) {
    const chart = new uPlot({
      scales: yRange ? { y: { range: yRange } } : {},
      width: chartWidth(box), height: height || 260,
      series: [{}].concat(series),
      axes: [{ space: 100, size: 52 }, { size: axisSize, space: 40, values: yFormat }],
      cursor: { drag: { x: true, y: false } },
    }, data, box);
    charts.push([chart, box]);
    box.dataset.points = String(data[0].length);
    return chart;
  }
  window.addEventListener("resize", debounce(function () {
    charts.forEach(function (c) { c[0].setSize({ width: chartWidth(c[1]), height: c[0].height }); });
  }, 200));
  function pairs(points) { return [points.map(function (p) { return p[0]; }), points.map(function (p) { return Number(p[1]); })]; }
  function drawdownChart(box, points, existing) {
    const data = pairs(points);
    if (existing) { existing.setData(data); box.dataset.points = String(data[0].length); return existing; }
    // From 0 down to a little below the deepest fall (at least 0.05 %): a flat 0 is not a 0-100 % chart.
    const range = function (u, min) { return [Math.min(min === null ? 0 : min, -0.05) * 1.15, 0]; };
    return makeChart(box, [{ label: "drawdown %", stroke: "#b91c1c", width: 1.5, fill: "rgba(185,28,28,0.12)" }], data, axisPct, 180, range);
  }
  function marker(label, color) {
    return { label: label, stroke: color, fill: color, width: 0, paths: function () { return null; },
             points: { show: true, size: 11, width: 2, stroke: color, fill: color } };
  }
  function priceChart(box, data, existing) {
    // One x axis: the price path's times and the trades' times (uPlot wants aligned series).
    const prices = new Map(data.price.map(function (p) { return [p[0], Number(p[1])]; }));
    const buys = new Map(), sells = new Map();
    data.trades.forEach(function (t) { (t[1] === "sell" ? sells : buys).set(t[0], Number(t[2])); });
    const xs = Array.from(new Set([].concat(Array.from(prices.keys()), Array.from(buys.keys()), Array.from(sells.keys())))).sort(function (a, b) { return a - b; });
    const pick = function (m) { return xs.map(function (x) { return m.has(x) ? m.get(x) : null; }); };
    const series = [xs, pick(prices), pick(buys), pick(sells)];
    box.dataset.markers = String(buys.size + sells.size);
    box.dataset.buys = String(buys.size);
    box.dataset.sells = String(sells.size);
    if (existing) { existing.setData(series); box.dataset.points = String(xs.length); return existing; }
    return makeChart(box, [
      { label: (data.benchmark_symbol || "price"), stroke: "#374151", width: 1.5, spanGaps: true, points: { show: false } },
      marker("buy", "#15803d"), marker("sell", "#b91c1c"),
    ], series, axisMoney, 260);
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
  function link(base, key) {
    const td = el("td");
    const a = el("a", key);
    a.href = base + encodeURIComponent(key);
    td.appendChild(a);
    return td;
  }
  function untraded(id, rows, base) {
    const p = document.getElementById(id);
    if (!p) return;
    p.replaceChildren();
    if (!rows.length) return;
    p.appendChild(document.createTextNode("Not traded yet (not ranked): "));
    rows.forEach(function (r, i) {
      const a = el("a", r.key);
      a.href = base + encodeURIComponent(r.key);
      a.dataset.key = r.key;
      p.appendChild(a);
      if (i < rows.length - 1) p.appendChild(document.createTextNode(", "));
    });
  }
  function boardRows(rows, kind) {
    return rows.map(function (r) {
      const tr = document.createElement("tr");
      tr.dataset.key = r.key;
      tr.appendChild(el("td", r.rank));
      if (kind === "strategies") {
        tr.appendChild(link("/strategy/", r.key));
        tr.appendChild(link("/members/", r.member_id));
      } else {
        tr.appendChild(link("/members/", r.key));
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
      replaceBody(document.getElementById("members-board"), boardRows(data.members, "members"), "nothing traded yet", 9);
      replaceBody(document.getElementById("strategies-board"), boardRows(data.strategies, "strategies"), "nothing traded yet", 9);
      untraded("untraded-members", data.untraded_members, "/members/");
      untraded("untraded-strategies", data.untraded_strategies, "/strategy/");
    }, 500);
    on("fill", function (f) {
      const tr = row([timeText(f.ts_ns / 1e6), f.strategy_id, f.client_order_id, f.side, f.symbol, qtyText(f.qty), priceText(f.price)], [5, 6]);
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
    let drawdown = null, price = null;
    function drawChart(data) {
      const series = chartData(data);
      if (chart) chart.setData(series);
      else chart = makeChart(chartBox, [{ label: "equity", stroke: "#2563eb", width: 2 },
        { label: "buy & hold " + (data.benchmark_symbol || ""), stroke: "#9ca3af", width: 1.5, dash: [6, 4] }], series, axisMoney, 280);
      chartBox.dataset.points = String(series[0].length);
      drawdown = drawdownChart(document.getElementById("drawdown-chart"), data.drawdown, drawdown);
      price = priceChart(document.getElementById("price-chart"), data, price);
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
      const halt = document.getElementById("halt-state");
      halt.textContent = data.status.halted ? "HALTED" : (data.desk_halted ? "HALTED (the whole desk)" : "open");
      halt.className = data.status.halted || data.desk_halted ? "halted" : "trading";
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
        const tr = row([timeText(f.ts_ns / 1e6), f.client_order_id, f.side, f.symbol, qtyText(f.qty), priceText(f.price), priceText(f.fee)], [4, 5, 6]);
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
        operator(button.dataset.url).then(refresh);
      });
    });
  }

  // -- member ----------------------------------------------------------------------------------------
  function member() {
    const id = document.body.dataset.member;
    const equityBox = document.getElementById("equity-chart");
    let equity = null, drawdown = null;
    function draw(data) {
      const series = pairs(data.equity);
      if (equity) { equity.setData(series); equityBox.dataset.points = String(series[0].length); }
      else equity = makeChart(equityBox, [{ label: "combined equity", stroke: "#2563eb", width: 2 }], series, axisMoney, 280);
      drawdown = drawdownChart(document.getElementById("drawdown-chart"), data.drawdown, drawdown);
      const states = document.getElementById("member-strategies");
      data.strategies.forEach(function (s) {
        const tr = states.querySelector('tr[data-strategy="' + CSS.escape(s.strategy_id) + '"]');
        if (!tr) return;
        tr.cells[1].textContent = s.state;
        tr.cells[1].className = "state state-" + s.state;
        tr.cells[2].textContent = s.halted ? "halted" : (data.desk_halted ? "halted (desk)" : "open");
        tr.cells[2].className = "halt-state " + (s.halted || data.desk_halted ? "halted" : "trading");
      });
    }
    const refresh = debounce(async function () { draw(await getJSON("/api/members/" + encodeURIComponent(id))); }, 700);
    getJSON("/api/members/" + encodeURIComponent(id)).then(draw);
    on("fill", function (f) { if (f.member_id === id) refresh(); });
    document.querySelectorAll(".op-control").forEach(function (button) {
      button.addEventListener("click", function () { operator(button.dataset.url).then(refresh); });
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
      tr.cells[1].textContent = priceText(p.price);
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
  if (page === "member") member();
  connect();
})();
