/// The live dashboard at `/dashboard`: one page, compiled into the server, that asks for an admin
/// key (kept in the browser tab's session storage, never in a URL), then reads the admin API every
/// two seconds and draws each tier's queue against its promise, the last hour of it, the pools and
/// the workers, the latest failures with their errors; and runs a what-if forecast on demand (`POST /v1/admin/forecast`). Plain HTML, CSS and a small script: nothing to build, nothing fetched from elsewhere.
enum DashboardPage {
    static let html = #"""
        <!doctype html>
        <html lang="en">
        <head>
        <meta charset="utf-8">
        <meta name="viewport" content="width=device-width, initial-scale=1">
        <title>Kiln</title>
        <link rel="icon" href="data:,">
        <style>
          :root { --ok: #1b7f3b; --warn: #b76e00; --bad: #b3261e; --line: #d0d4da; --ink: #1c1f23; --soft: #5f6670; }
          body { font: 14px/1.4 system-ui, sans-serif; color: var(--ink); margin: 0; background: #f6f7f9; }
          header { display: flex; gap: 1rem; align-items: baseline; padding: .8rem 1.2rem; background: #fff; border-bottom: 1px solid var(--line); }
          header h1 { font-size: 1.1rem; margin: 0; }
          .meta { color: var(--soft); }
          main { padding: 1rem 1.2rem; display: grid; gap: 1rem; }
          .tiers { display: grid; grid-template-columns: repeat(auto-fill, minmax(190px, 1fr)); gap: .8rem; }
          .card, section { background: #fff; border: 1px solid var(--line); border-radius: 6px; padding: .8rem; }
          .card h2 { font-size: 1rem; margin: 0 0 .3rem; display: flex; justify-content: space-between; }
          .card .promise { color: var(--soft); font-weight: normal; }
          .card .queued { font-size: 1.6rem; font-weight: 600; }
          .bar { height: 8px; background: #e8eaee; border-radius: 4px; position: relative; margin: .4rem 0 .2rem; }
          .bar span { position: absolute; left: 0; top: 0; bottom: 0; border-radius: 4px; background: var(--ok); }
          .card.risk .bar span { background: var(--warn); }
          .card.past .bar span { background: var(--bad); }
          .card.past .share { color: var(--bad); font-weight: 600; }
          section h2 { font-size: 1rem; margin: 0 0 .5rem; }
          table { border-collapse: collapse; width: 100%; }
          th, td { text-align: left; padding: .25rem .5rem; border-bottom: 1px solid #eef0f2; }
          th { color: var(--soft); font-weight: 500; }
          svg { width: 100%; height: 160px; }
          #login { max-width: 360px; margin: 4rem auto; background: #fff; border: 1px solid var(--line); border-radius: 6px; padding: 1.2rem; }
          #login input { width: 100%; box-sizing: border-box; padding: .4rem; margin: .4rem 0 .8rem; }
          .error { color: var(--bad); }
          .legend span { margin-right: 1rem; }
          [hidden] { display: none !important; }
        </style>
        </head>
        <body>
        <form id="login" hidden>
          <h1>Kiln</h1>
          <label for="key">Admin key</label>
          <input id="key" type="password" autocomplete="current-password" required>
          <button type="submit">Show the dashboard</button>
          <p id="login-error" class="error"></p>
        </form>
        <div id="board" hidden>
          <header><h1>Kiln</h1><span class="meta" id="summary"></span><span class="meta" id="updated"></span>
            <button id="logout" type="button">Sign out</button></header>
          <main>
            <div class="tiers" id="tiers"></div>
            <section><h2>Share of promise used by the oldest queued job, last hour (1 = at the promise)</h2>
              <svg id="chart" viewBox="0 0 600 160" preserveAspectRatio="none"></svg><div class="legend" id="legend"></div></section>
            <section><h2>Pools</h2><table id="pools"></table></section>
            <section><h2>Workers</h2><table id="workers"></table></section>
            <section><h2>Next in dispatch order</h2><table id="next"></table></section>
            <section><h2>Latest failures</h2><table id="failures"></table></section>
            <section><h2>What if we add GPUs?</h2>
              <form id="whatif">
                <label>Add <input id="add-gpus" type="number" min="0" max="100000" value="8" required> GPUs</label>
                <label>for the next <select id="hours"><option value="1">hour</option><option value="4">4 hours</option>
                  <option value="12">12 hours</option></select></label>
                <button type="submit" id="forecast-run">Simulate</button>
              </form>
              <p class="meta" id="forecast-inputs">Runs the simulator from the queue as it is and the last hour's arrivals.</p>
              <table id="forecast"></table></section>
          </main>
        </div>
        <script>
        "use strict";
        const colors = ["#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf"];
        const history = [];  // {at, shares: {tier: share}}, the last hour
        let timer = null;

        function el(tag, text) { const node = document.createElement(tag); if (text !== undefined) node.textContent = text; return node; }
        function row(table, cells, header) {
          const tr = el("tr");
          for (const cell of cells) tr.appendChild(el(header ? "th" : "td", String(cell)));
          table.appendChild(tr);
        }
        function duration(seconds) {
          if (seconds >= 3600 && seconds % 3600 === 0) return (seconds / 3600) + " h";
          if (seconds >= 60 && seconds % 60 === 0) return (seconds / 60) + " min";
          return seconds + " s";
        }

        async function get(path) {
          const key = sessionStorage.getItem("kiln-admin-key");
          const response = await fetch(path, { headers: { "Authorization": "Bearer " + key } });
          if (response.status === 401 || response.status === 403) { throw new Error("unauthorized"); }
          if (!response.ok) throw new Error(path + ": " + response.status);
          return response.json();
        }

        async function refresh() {
          try {
            const [queue, fleet, workers, failed] = await Promise.all([
              get("/v1/admin/queue?limit=10"), get("/v1/admin/fleet"), get("/v1/admin/workers"),
              get("/v1/admin/generations?state=failed&limit=10")]);
            draw(queue, fleet, workers.data, failed.data);
          } catch (error) {
            if (error.message === "unauthorized") { signOut("That key is not an admin key."); return; }
            document.getElementById("updated").textContent = "not updated: " + error.message;
          }
        }

        function draw(queue, fleet, workers, failed) {
          const now = new Date();
          document.getElementById("summary").textContent =
            "policy " + queue.policy + " · " + queue.queued + " queued · " + queue.dispatched + " dispatched";
          document.getElementById("updated").textContent = "updated " + now.toLocaleTimeString();
          const shares = {};
          const tiers = document.getElementById("tiers");
          tiers.replaceChildren();
          for (const tier of queue.tiers) {
            const rows = queue.rows.filter(r => r.tier === tier.name);
            const queued = rows.reduce((sum, r) => sum + r.queued, 0);
            const share = Math.max(0, ...rows.map(r => r.max_urgency || 0));
            shares[tier.name] = share;
            const card = el("div");
            card.className = "card" + (share >= 1 ? " past" : share >= 0.75 ? " risk" : "");
            card.dataset.tier = tier.name;
            const title = el("h2", tier.name);
            title.appendChild(el("span", "promise " + duration(tier.max_wait_seconds))).className = "promise";
            card.appendChild(title);
            const count = el("div", String(queued)); count.className = "queued"; card.appendChild(count);
            card.appendChild(el("div", "queued"));
            const bar = el("div"); bar.className = "bar";
            const fill = el("span"); fill.style.width = Math.min(share, 1) * 100 + "%"; bar.appendChild(fill); card.appendChild(bar);
            const text = el("div", (share * 100).toFixed(0) + "% of the promise used by the oldest"); text.className = "share";
            card.appendChild(text);
            tiers.appendChild(card);
          }
          history.push({ at: now.getTime(), shares });
          while (history.length && history[0].at < now.getTime() - 3600 * 1000) history.shift();
          chart(queue.tiers.map(t => t.name), now.getTime());

          const pools = document.getElementById("pools");
          pools.replaceChildren();
          if (fleet.pools.length === 0) row(pools, ["no capacity pools: the fleet is whatever workers register"]);
          else {
            row(pools, ["pool", "cluster", "kind", "now", "wanted", "why"], true);
            for (const p of fleet.pools) row(pools, [p.name, p.cluster, p.kind, p.actual, p.desired, p.reason]);
          }
          const table = document.getElementById("workers");
          table.replaceChildren();
          row(table, ["worker", "cluster", "accelerator", "state", "serves", "running"], true);
          const placed = Object.fromEntries(fleet.workers.map(w => [w.id, w]));
          for (const w of workers) {
            const f = placed[w.id] || {};
            row(table, [w.id, w.cluster, w.accelerator + (w.gpus ? " ×" + w.gpus : ""), w.state, f.model || "any model", f.running ?? ""]);
          }
          const next = document.getElementById("next");
          next.replaceChildren();
          row(next, ["generation", "tier", "model", "share of promise used"], true);
          for (const n of queue.next) row(next, [n.id, n.tier, n.model, (n.urgency * 100).toFixed(0) + "%"]);
          const failures = document.getElementById("failures");
          failures.replaceChildren();
          if (failed.length === 0) row(failures, ["no generation has failed"]);
          else {
            row(failures, ["when", "generation", "tier", "model", "attempts", "error"], true);
            for (const f of failed) {
              const when = f.completed_at ? new Date(f.completed_at).toLocaleTimeString() : "";
              const version = f.version ? " " + f.version.slice(0, 19) : "";
              row(failures, [when, f.id, f.tier, f.model + version, f.attempts, f.error ? f.error.code + ": " + f.error.message : ""]);
            }
          }
        }

        function chart(tiers, now) {
          const svg = document.getElementById("chart");
          const ns = "http://www.w3.org/2000/svg";
          svg.replaceChildren();
          const top = Math.max(1.25, ...history.flatMap(h => Object.values(h.shares))) * 1.05;
          const x = at => 600 - (now - at) / (3600 * 1000) * 600;
          const y = share => 160 - share / top * 160;
          const line = document.createElementNS(ns, "line");
          for (const [k, v] of Object.entries({ x1: 0, x2: 600, y1: y(1), y2: y(1), stroke: "#b3261e", "stroke-dasharray": "4 4" })) line.setAttribute(k, v);
          svg.appendChild(line);
          const legend = document.getElementById("legend");
          legend.replaceChildren();
          tiers.forEach((tier, i) => {
            const points = history.map(h => x(h.at).toFixed(1) + "," + y(h.shares[tier] || 0).toFixed(1)).join(" ");
            const path = document.createElementNS(ns, "polyline");
            for (const [k, v] of Object.entries({ points, fill: "none", stroke: colors[i % colors.length], "stroke-width": 2 })) path.setAttribute(k, v);
            svg.appendChild(path);
            const entry = el("span", "■ " + tier); entry.style.color = colors[i % colors.length]; legend.appendChild(entry);
          });
        }

        async function forecast(event) {
          event.preventDefault();
          const added = Number(document.getElementById("add-gpus").value);
          const hours = Number(document.getElementById("hours").value);
          const note = document.getElementById("forecast-inputs");
          const table = document.getElementById("forecast");
          note.textContent = "simulating…";
          const response = await fetch("/v1/admin/forecast", {
            method: "POST",
            headers: { "Authorization": "Bearer " + sessionStorage.getItem("kiln-admin-key"), "Content-Type": "application/json" },
            body: JSON.stringify({ add_gpus: added, hours })
          });
          const body = await response.json();
          table.replaceChildren();
          if (!response.ok) { note.textContent = body.error ? body.error.message : "the forecast failed: " + response.status; return; }
          const i = body.inputs;
          note.textContent = "From " + i.queued + " queued, " + Math.round(i.arrivals_per_hour) + " arrivals an hour (over the last " +
            duration(Math.round(i.arrival_window_seconds)) + "), " + i.gpus + " GPUs now; each job runs its model's recent mean.";
          const percent = value => (value * 100).toFixed(1) + "%";
          row(table, ["tier", "promise", "on time, " + body.now.gpus + " GPUs", "with " + body.added.gpus,
            "p95 wait ÷ promise", "with " + body.added.gpus, "queued after " + duration(hours * 3600), "with " + body.added.gpus], true);
          body.now.tiers.forEach((tier, index) => {
            const more = body.added.tiers[index];
            row(table, [tier.name, duration(tier.max_wait_seconds), percent(tier.attainment), percent(more.attainment),
              tier.wait_p95_promise.toFixed(2), more.wait_p95_promise.toFixed(2), tier.queued_at_end, more.queued_at_end]);
          });
        }

        // The server's samples of the last hour, so that the chart starts full; the page adds its own.
        async function loadHistory() {
          try {
            const past = await get("/v1/admin/queue/history");
            history.length = 0;
            for (const sample of past.samples) {
              history.push({ at: Date.parse(sample.at), shares: Object.fromEntries(sample.tiers.map(t => [t.name, t.oldest_share])) });
            }
          } catch (error) {
            document.getElementById("updated").textContent = "no history: " + error.message;
          }
        }

        function show() {
          const signedIn = !!sessionStorage.getItem("kiln-admin-key");
          document.getElementById("login").hidden = signedIn;
          document.getElementById("board").hidden = !signedIn;
          clearInterval(timer);
          if (signedIn) { loadHistory().then(refresh); timer = setInterval(refresh, 2000); }
        }
        function signOut(message) {
          sessionStorage.removeItem("kiln-admin-key");
          document.getElementById("login-error").textContent = message || "";
          show();
        }
        document.getElementById("login").addEventListener("submit", event => {
          event.preventDefault();
          sessionStorage.setItem("kiln-admin-key", document.getElementById("key").value);
          document.getElementById("key").value = "";
          show();
        });
        document.getElementById("logout").addEventListener("click", () => signOut());
        document.getElementById("whatif").addEventListener("submit", event => forecast(event).catch(error => {
          document.getElementById("forecast-inputs").textContent = "the forecast failed: " + error.message;
        }));
        show();
        </script>
        </body>
        </html>
        """#
}
